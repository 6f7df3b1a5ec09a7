"""PSNR and SSIM on uint8 RGB frames (thesis eq. 5.1; Wang et al. 2004).

* ``psnr``: 10 log10(255^2 / MSE) over all pixels and channels of a frame; for a video, the mean
  of the per-frame values. The squared error is summed in integers, so it is exact (identical
  frames give +inf, as scikit-image's ``peak_signal_noise_ratio`` does).
* ``ssim``: Gaussian window sigma 1.5 (11 taps: scipy's radius int(3.5 sigma + 0.5) = 5),
  K1 0.01, K2 0.03, data range 255, population (not sample) covariance, the map averaged over the
  pixels whose window lies inside the image (skimage crops 5 pixels at each border) and then over
  the three channels: scikit-image's ``structural_similarity(a, b, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)``. Computed in
  float64 with torch (valid separable convolutions on batches of frames) so videos are fast and
  agree with skimage to ~1e-12.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * 1.5 + 0.5), scipy.ndimage's truncate=3.5 (skimage's default)
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0
_SSIM_BATCH_BYTES = 256 << 20  # float64 working set per chunk of frames


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


def _ssim_maps_mean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over the valid region for (B, 1, H, W) float64 planes -> (B,)."""
    taps = gaussian_taps().to(x.device)
    k = taps.numel()
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5, H, W)
    wh = taps.view(1, 1, 1, k).expand(5, 1, 1, k)
    wv = taps.view(1, 1, k, 1).expand(5, 1, k, 1)
    f = F.conv2d(F.conv2d(stack, wh, groups=5), wv, groups=5)  # (B, 5, H-10, W-10)
    ux, uy, uxx, uyy, uxy = f.unbind(dim=1)
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
    per_frame = 3 * 5 * h * w * 8 * 3  # planes, maps, float64, temporaries
    chunk = max(1, _SSIM_BATCH_BYTES // per_frame)
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, chunk):
        xa = _tensor(fa[s : s + chunk], device)  # (B, 3, H, W)
        xb = _tensor(fb[s : s + chunk], device)
        xa = xa.reshape(-1, 1, h, w).double()  # (3B, 1, H, W)
        xb = xb.reshape(-1, 1, h, w).double()
        per_channel = _ssim_maps_mean(xa, xb).view(-1, 3)  # (B, 3)
        out[s : s + len(per_channel)] = per_channel.mean(dim=1).cpu().numpy()
    return out


def ssim(a: np.ndarray, b: np.ndarray, device: str | torch.device = "cpu") -> float:
    """SSIM of one frame, or the mean of per-frame SSIMs of a video."""
    return float(np.mean(ssim_frames(a, b, device)))
