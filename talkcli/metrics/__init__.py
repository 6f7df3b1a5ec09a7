"""Evaluation metrics, each a plain function on uint8 (H, W, 3) RGB frames (or (N, H, W, 3)).

``psnr``, ``ssim`` (pixel), ``lpips`` (perceptual), ``fid`` / ``inception_features`` /
``frechet_distance`` (set-level, pytorch-fid), ``lmd`` / ``lmd_face`` (FAN landmarks), ``cpbd``
(sharpness of one grey frame), ``lse`` (SyncNet LSE-C/LSE-D of face crops + audio). Model files
come from the registry unless ``model=`` gives one. ``talkcli.metrics.evaluate`` runs them over
videos for ``talkcli evaluate``.
"""

from talkcli.metrics.fid import fid, frechet_distance, inception_features
from talkcli.metrics.landmarks import lmd, lmd_face
from talkcli.metrics.perceptual import lpips
from talkcli.metrics.pixel import psnr, ssim
from talkcli.metrics.sharpness import cpbd
from talkcli.metrics.sync import lse

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
