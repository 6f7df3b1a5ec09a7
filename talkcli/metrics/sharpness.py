"""CPBD sharpness (Narvekar & Karam 2011), vectorised, agreeing with the ``cpbd`` package (1.0.7).

The published package (github.com/0x64746b/python-cpbd, a port of the authors' MATLAB code)
loops over pixels in Python (seconds per frame); this is the same computation with numpy:

1. edges for the block decision: scikit-image ``canny(image)`` with its defaults (sigma 1, and
   on a float64 image in 0..255 the default thresholds 0.1 / 0.2);
2. edges for width measurement: Octave's Sobel (horizontal-derivative kernel / 8, reflect border),
   squared strength, threshold 2 sqrt(mean), simple thinning (local maximum across rows or
   columns);
3. Marziliano widths at Sobel edges whose gradient angle (``atan2`` of ``np.gradient``, degrees,
   0 where the x-gradient is 0) quantises (45 degree steps, half to even) to 0 or +-180: steps
   left and right while the intensity keeps rising (0) / falling (180), at most 101 each;
4. 64x64 blocks (partial blocks at the right/bottom are ignored) with more than 0.2 % Canny edges;
   per block, the just-noticeable width is 5 if int(max - min) <= 50 else 3; each edge's blur
   probability 1 - exp(-(w / w_jnb)^3.6) goes to a 101-bin histogram (bin = round(100 p));
5. CPBD = the fraction of edges with bin < 64 (0 when there are no edge blocks, e.g. frames
   smaller than 64x64).

Frames are converted to grey as PIL's ``convert('L')`` does (the package reads images with
``mode='L'``): L = (19595 R + 38470 G + 7471 B + 32768) >> 16.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 0.002
BETA = 3.6
BLOCK = 64
MAX_MARGIN = 100  # the package's `range(100 + 1)` loops: widths of at most 101 per side
WIDTH_JNB = np.concatenate([5 * np.ones(51), 3 * np.ones(205)])
_SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 8.0  # (h1.T)


def rgb_to_gray(frames: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) uint8 luma exactly as PIL's ``Image.convert('L')``."""
    a = np.asarray(frames)
    if a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected (..., 3) uint8 RGB, got {a.shape} {a.dtype}")
    r, g, b = (a[..., i].astype(np.uint32) for i in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16).astype(np.uint8)


def octave_sobel_edges(image: np.ndarray) -> np.ndarray:
    """The package's ``octave.sobel``: thinned, thresholded horizontal Sobel edges (H, W) bool."""
    from scipy.ndimage import convolve

    strength = np.square(convolve(image, _SOBEL_X))  # scipy's default mode='reflect'
    strength[strength <= 2 * np.sqrt(np.mean(strength))] = 0
    zc, zr = np.zeros((strength.shape[0], 1)), np.zeros((1, strength.shape[1]))
    x = (strength > np.c_[zc, strength[:, :-1]]) & (strength > np.c_[strength[:, 1:], zc])
    y = (strength > np.r_[zr, strength[:-1, :]]) & (strength > np.r_[strength[1:, :], zr])
    return x | y


def _runs_left(flags: np.ndarray) -> np.ndarray:
    """For each column k, how many consecutive True end at k (counting leftwards), per row."""
    idx = np.arange(flags.shape[1])
    last_false = np.maximum.accumulate(np.where(flags, -1, idx), axis=1)
    return idx - last_false


def _runs_right(flags: np.ndarray) -> np.ndarray:
    """For each column k, how many consecutive True start at k (counting rightwards), per row."""
    return _runs_left(flags[:, ::-1])[:, ::-1]


def marziliano_widths(edges: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The package's ``marziliano_method`` without Python loops: (H, W) widths, 0 off edges."""
    h, w = image.shape
    widths = np.zeros(image.shape)
    if w < 3 or h < 3:
        return widths
    gy, gx = np.gradient(image)
    # The package measures nothing when every angle is 0: atan2(gy, gx) is 0 exactly where
    # gx > 0 and gy == 0, and the package sets 0 where gx == 0 (90 if gy == pi/2, unreachable).
    special = (gx == 0) & (gy == np.pi / 2)
    if not (np.any((gx < 0) | ((gx > 0) & (gy != 0))) or special.any()):
        return widths
    inner = np.zeros(image.shape, dtype=bool)
    inner[1:-1, 1:-1] = edges[1:-1, 1:-1] == 1
    rows, cols = np.nonzero(inner)
    gxe, gye = gx[rows, cols], gy[rows, cols]
    angles = np.where(gxe != 0, np.arctan2(gye, gxe) * (180 / np.pi), 0.0)
    angles[special[rows, cols]] = 90
    quantised = 45 * np.round(angles / 45)
    d = image[:, 1:] - image[:, :-1]  # (H, W-1): d[:, k] = I[k+1] - I[k]
    for falling, where in ((False, quantised == 0), (True, np.abs(quantised) == 180)):
        if not where.any():
            continue
        r, c = rows[where], cols[where]
        step = d < 0 if falling else d > 0
        # left of column c the package walks d[c-2], d[c-3], ...; right of it d[c+1], d[c+2], ...
        run_l = _runs_left(step)
        run_r = _runs_right(step)
        left = np.where(c >= 2, run_l[r, np.maximum(c - 2, 0)], 0)
        right = np.where(c + 1 <= w - 2, run_r[r, np.minimum(c + 1, w - 2)], 0)
        widths[r, c] = np.minimum(left, MAX_MARGIN) + np.minimum(right, MAX_MARGIN) + 2
    return widths


def cpbd(gray: np.ndarray) -> float:
    """CPBD sharpness of one grey frame, (H, W) uint8 -> float in [0, 1] (higher is sharper)."""
    from skimage.feature import canny

    g = np.asarray(gray)
    if g.ndim != 2 or g.dtype != np.uint8:
        raise ValueError(f"cpbd expects an (H, W) uint8 grey image, got {g.shape} {g.dtype}")
    image = g.astype(np.float64)
    canny_edges = canny(image)
    widths = marziliano_widths(octave_sobel_edges(image), image)
    return _sharpness(image, canny_edges, widths)


def _sharpness(image: np.ndarray, edges: np.ndarray, widths: np.ndarray) -> float:
    h, w = image.shape
    bh, bw = h // BLOCK, w // BLOCK
    if bh == 0 or bw == 0:
        return 0.0
    crop = (slice(0, bh * BLOCK), slice(0, bw * BLOCK))

    def blocks(a: np.ndarray) -> np.ndarray:  # (bh, bw, 64*64)
        return a[crop].reshape(bh, BLOCK, bw, BLOCK).transpose(0, 2, 1, 3).reshape(bh, bw, -1)

    edge_blocks = np.count_nonzero(blocks(edges), axis=2) > BLOCK * BLOCK * THRESHOLD
    pix = blocks(image)
    contrast = (pix.max(axis=2) - pix.min(axis=2)).astype(int)
    jnb = WIDTH_JNB[contrast]  # (bh, bw)
    bw_ = blocks(widths)
    sel = edge_blocks[..., None] & (bw_ != 0)
    if not sel.any():
        return 0.0
    w_sel = bw_[sel]
    jnb_sel = np.broadcast_to(jnb[..., None], bw_.shape)[sel]
    prob = 1 - np.exp(-(np.abs(w_sel / jnb_sel) ** BETA))
    buckets = np.rint(prob * 100).astype(int)
    return float(np.count_nonzero(buckets < 64) / len(buckets))


def cpbd_frames(frames: np.ndarray) -> np.ndarray:
    """Per-frame CPBD of (N, H, W, 3) uint8 RGB or (N, H, W) grey frames -> (N,) float64."""
    a = np.asarray(frames)
    if a.ndim == 4:
        a = rgb_to_gray(a)
    if a.ndim != 3:
        raise ValueError(f"expected (N, H, W, 3) RGB or (N, H, W) grey frames, got {a.shape}")
    return np.array([cpbd(f) for f in a], dtype=np.float64)
