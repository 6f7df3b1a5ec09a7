"""LPIPS between frames, with the project's LPIPS (``talkcli.models.perceptual``)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from talkcli.io.images import to_tensor_images
from talkcli.metrics.pixel import check_pair
from talkcli.models.perceptual import LPIPS, load_lpips

BATCH = 8


@functools.lru_cache(maxsize=4)
def _cached_lpips(net: str, weights_dir: str | None, device: str) -> LPIPS:
    return load_lpips(net, weights_dir=weights_dir, device=device)


def get_lpips(
    net: str = "alex",
    model: LPIPS | None = None,
    weights_dir: str | Path | None = None,
    device: str = "cpu",
) -> LPIPS:
    """The given LPIPS module, else LPIPS-``net`` from the registry, searched in ``weights_dir``
    first (loaded once)."""
    if model is not None:
        if model.net_name != net:
            raise ValueError(f"the LPIPS model is LPIPS-{model.net_name}, not LPIPS-{net}")
        return model
    return _cached_lpips(net, None if weights_dir is None else str(weights_dir), str(device))


def lpips_frames(
    a: np.ndarray,
    b: np.ndarray,
    net: str = "alex",
    model: LPIPS | None = None,
    batch_size: int = BATCH,
    device: str = "cpu",
    weights_dir: str | Path | None = None,
) -> np.ndarray:
    """Per-frame LPIPS of two (N, H, W, 3) uint8 RGB batches -> (N,) float64."""
    fa, fb = check_pair(a, b)
    m = get_lpips(net, model, weights_dir, device=device)
    dev = m.shift.device
    out = np.empty(len(fa), dtype=np.float64)
    for s in range(0, len(fa), batch_size):
        x = to_tensor_images(fa[s : s + batch_size]).to(dev)  # (B, 3, H, W) in [-1, 1]
        y = to_tensor_images(fb[s : s + batch_size]).to(dev)
        with torch.no_grad():
            out[s : s + len(x)] = m(x, y).double().cpu().numpy()
    return out


def lpips(
    a: np.ndarray,
    b: np.ndarray,
    net: str = "alex",
    model: LPIPS | None = None,
    weights_dir: str | Path | None = None,
) -> float:
    """LPIPS of one frame pair, or the mean over the frames of two videos (0 = identical)."""
    return float(np.mean(lpips_frames(a, b, net, model, weights_dir=weights_dir)))
