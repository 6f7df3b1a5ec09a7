"""PSNR and SSIM on uint8 RGB frames (thesis eq. 5.1; Wang et al. 2004).

* ``psnr``: 10 log10(255^2 / MSE) over all pixels and channels of a frame; for a video, the mean
  of the per-frame values. The squared error is summed in integers, so it is exact (identical
  frames give +inf, as scikit-image's ``peak_signal_noise_ratio`` does).
* ``ssim``: Gaussian window sigma 1.5 (11 taps: scipy's radius int(3.5 sigma + 0.5) = 5),
  K1 0.01, K2 0.03, data range 255, population (not sample) covariance, the map averaged over the
  pixels whose window lies inside the image (skimage crops 5 pixels at each border) and then over
  the three channels: scikit-image's ``structural_similarity(a, b, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)``. Computed in
  float64 with torch on batches of frames, the separable Gaussian as banded matrix products
  (BLAS; torch's float64 convolution is 4x slower on CPU): it agrees with skimage to ~1e-12, runs
  at about skimage's speed on one core and uses every BLAS thread there is.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * 1.5 + 0.5), scipy.ndimage's truncate=3.5 (skimage's default)
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0
_SSIM_BATCH_BYTES = 256 << 20  # float64 working set per chunk of frames
_BLOCK = 64  # output samples per banded matrix product


def as_frames(x: np.ndarray, name: str = "frames") -> np.ndarray:
    """(H, W, 3) or (N, H, W, 3) uint8 RGB -> (N, H, W, 3) uint8; anything else is a ValueError."""
    a = np.asarray(x)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(
            f"{name} must be (H, W, 3) or (N, H, W, 3) uint8 RGB, got {a.shape} {a.dtype}"
        )
    return a


def check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two frame batches of the same shape, as (N, H, W, 3) uint8."""
    fa, fb = as_frames(a, "a"), as_frames(b, "b")
    if fa.shape != fb.shape:
        raise ValueError(f"frames differ in shape: {fa.shape} vs {fb.shape} (resize first)")
    return fa, fb


def psnr_frames(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB, (N,) float64 (+inf where the frames are identical)."""
    fa, fb = check_pair(a, b)
    out = np.empty(len(fa), dtype=np.float64)
    size = fa[0].size
    for i in range(len(fa)):
        d = fa[i].astype(np.int32) - fb[i].astype(np.int32)
        sse = int(np.einsum("ijk,ijk->", d, d, dtype=np.int64))  # exact
        out[i] = math.inf if sse == 0 else 10.0 * math.log10(DATA_RANGE**2 * size / sse)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of one frame, or the mean of per-frame PSNRs of a video (thesis eq. 5.1)."""
    return float(np.mean(psnr_frames(a, b)))


def gaussian_taps(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> torch.Tensor:
    """scipy.ndimage's normalised 1-D Gaussian kernel, (2 radius + 1,) float64."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 / sigma**2 * x * x)
    return phi / phi.sum()


def _banded(taps: torch.Tensor, block: int) -> torch.Tensor:
    """(block + k - 1, block) matrix M with M[j + i, j] = taps[i]: x_window @ M filters a block."""
    k = taps.numel()
    m = torch.zeros(block + k - 1, block, dtype=taps.dtype, device=taps.device)
    for j in range(block):
        m[j : j + k, j] = taps
    return m


def _filter_last(x: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Valid correlation of the last axis with the taps in ``band``: (..., L) -> (..., L - k + 1).

    Overlapping windows of block + k - 1 samples times the banded matrix: a float64 matrix
    product (BLAS), several times faster than torch's float64 convolution on CPU, and exact up
    to float64 rounding (the extra terms are zeros). The last, partial block is done the same way
    on a window that ends at the last sample.
    """
    block = band.shape[1]
    k = band.shape[0] - block + 1
    n_out = x.shape[-1] - k + 1
    full = n_out // block
    parts = []
    if full:
        windows = x.unfold(-1, block + k - 1, block)  # (..., >= full, block + k - 1)
        parts.append((windows[..., :full, :] @ band).flatten(-2))
    rest = n_out - full * block
    if rest:
        tail = x[..., full * block :]  # rest + k - 1 samples
        parts.append(tail @ band[: rest + k - 1, :rest])
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def _ssim_maps_mean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over the valid region for (B, H, W) float64 planes -> (B,)."""
    band = _banded(gaussian_taps().to(x.device), _BLOCK)
    stack = torch.stack([x, y, x * x, y * y, x * y], dim=1)  # (B, 5, H, W)
    f = _filter_last(_filter_last(stack, band).transpose(-1, -2), band).transpose(-1, -2)
    ux, uy, uxx, uyy, uxy = f.unbind(dim=1)  # (B, H - 10, W - 10) each
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2))


def _tensor(frames: np.ndarray, device: str | torch.device) -> torch.Tensor:
    arr = np.require(frames, requirements=("C", "W"))  # torch wants writable memory
    return torch.from_numpy(arr).to(device).permute(0, 3, 1, 2)


def ssim_frames(a: np.ndarray, b: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """Per-frame SSIM (mean over the three channels), (N,) float64."""
    fa, fb = check_pair(a, b)
    n, h, w, _ = fa.shape
    if min(h, w) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs frames of at least 11x11 pixels, got {w}x{h}")
    per_frame = 3 * 5 * h * w * 8 * 4  # planes, maps, float64, temporaries
    chunk = max(1, _SSIM_BATCH_BYTES // per_frame)
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, chunk):
        xa = _tensor(fa[s : s + chunk], device).reshape(-1, h, w).double()  # (3B, H, W)
        xb = _tensor(fb[s : s + chunk], device).reshape(-1, h, w).double()
        per_channel = _ssim_maps_mean(xa, xb).view(-1, 3)  # (B, 3)
        out[s : s + len(per_channel)] = per_channel.mean(dim=1).cpu().numpy()
    return out


def ssim(a: np.ndarray, b: np.ndarray, device: str | torch.device = "cpu") -> float:
    """SSIM of one frame, or the mean of per-frame SSIMs of a video."""
    return float(np.mean(ssim_frames(a, b, device)))
