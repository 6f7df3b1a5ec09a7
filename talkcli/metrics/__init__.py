"""Evaluation metrics, each a plain function on uint8 (H, W, 3) RGB frames (or (N, H, W, 3)).

``psnr``, ``ssim`` (pixel), ``lpips`` (perceptual), ``fid`` / ``inception_features`` /
``frechet_distance`` (set-level, pytorch-fid), ``lmd`` / ``lmd_face`` (FAN landmarks), ``cpbd``
(sharpness of one grey frame), ``lse`` (SyncNet LSE-C/LSE-D of face crops + audio). Model files
come from the registry unless ``model=`` gives one. ``talkcli.metrics.evaluate`` runs them over
videos for ``talkcli evaluate``.
"""

import importlib
from typing import Any

_HOMES = {
    "cpbd": "sharpness",
    "fid": "frechet",
    "frechet_distance": "frechet",
    "inception_features": "frechet",
    "lmd": "landmarks",
    "lmd_face": "landmarks",
    "lpips": "perceptual",
    "lse": "sync",
    "psnr": "pixel",
    "ssim": "pixel",
}


def __getattr__(name: str) -> Any:
    """Import a metric's module on first use: ``talkcli.metrics.inputs`` and the report code
    (used by ``evaluate compare``) then start without torch."""
    if name in _HOMES:
        return getattr(importlib.import_module(f"talkcli.metrics.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'talkcli.metrics' has no attribute {name!r}")


__all__ = [
    "cpbd",
    "fid",
    "frechet_distance",
    "inception_features",
    "lmd",
    "lmd_face",
    "lpips",
    "lse",
    "psnr",
    "ssim",
]
