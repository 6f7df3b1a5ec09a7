"""Inverse warp and paste-back: put an aligned (generated) face back into its source image.

The alignment sidecar stores ``matrix``, the 3x3 map from aligned pixel coordinates to source
pixel coordinates. ``paste_back`` warps the aligned image into the source frame with it (only over
the bounding box of the face square, so cost scales with the face, not the frame) and blends it in
with a feathered square mask computed once per (size, feather) and cached.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from talkcli.errors import UserError
from talkcli.face.ffhq import AlignMeta


@functools.lru_cache(maxsize=8)
def paste_mask(size: int, feather: float = 0.1) -> np.ndarray:
    """(size, size) float32 mask: 1 inside, a smooth ramp over ``feather * size`` to 0 at the edge.

    Separable smoothstep profile; the outer 1% of the square stays 0 so bilinear sampling of the
    aligned image's edge never shows.
    """
    if not 0.0 <= feather <= 0.5:
        raise UserError(f"feather must be between 0 and 0.5, got {feather}")
    t = np.arange(size, dtype=np.float64) + 0.5
    dist = np.minimum(t, size - t)  # distance to the nearest edge, pixels
    zero = max(1.0, 0.01 * size)
    ramp = max(feather * size, 1e-6)
    u = np.clip((dist - zero) / ramp, 0.0, 1.0)
    prof = u * u * (3.0 - 2.0 * u)
    mask = np.outer(prof, prof).astype(np.float32)
    mask.setflags(write=False)
    return mask


def _matrix_of(meta: AlignMeta | Mapping[str, Any] | np.ndarray) -> tuple[np.ndarray, int | None]:
    if isinstance(meta, AlignMeta):
        return np.asarray(meta.matrix, dtype=np.float64), meta.size
    if isinstance(meta, Mapping):
        return np.asarray(meta["matrix"], dtype=np.float64), int(meta["size"])
    return np.asarray(meta, dtype=np.float64), None


def paste_back(
    source: np.ndarray,
    aligned: np.ndarray,
    meta_or_matrix: AlignMeta | Mapping[str, Any] | np.ndarray,
    *,
    feather: float = 0.1,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Warp ``aligned`` (S, S, 3) uint8 back into ``source`` (H, W, 3) uint8; a new image.

    ``meta_or_matrix`` is an ``AlignMeta``, a sidecar dict (``matrix`` and ``size``), or the 3x3
    aligned->source matrix. If the aligned image's size differs from the size it was aligned at
    (e.g. a 256 generator output for a 1024 alignment), the matrix is rescaled. ``mask`` (S, S)
    float in [0, 1] overrides the default feathered square.
    """
    source = np.asarray(source)
    aligned = np.asarray(aligned)
    if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
        raise UserError(f"paste_back: source must be (H, W, 3) uint8, got {source.shape}")
    if aligned.ndim != 3 or aligned.shape[2] != 3 or aligned.dtype != np.uint8:
        raise UserError(f"paste_back: aligned must be (S, S, 3) uint8, got {aligned.shape}")
    if aligned.shape[0] != aligned.shape[1]:
        raise UserError(f"paste_back: aligned image must be square, got {aligned.shape[:2]}")
    matrix, meta_size = _matrix_of(meta_or_matrix)
    if matrix.shape != (3, 3):
        raise UserError(f"paste_back: matrix must be 3x3, got {matrix.shape}")
    size = aligned.shape[0]
    if meta_size is not None and meta_size != size:
        r = meta_size / size  # aligned index k' -> index (k' + 0.5) r - 0.5 at the meta size
        matrix = matrix @ np.array([[r, 0, 0.5 * r - 0.5], [0, r, 0.5 * r - 0.5], [0, 0, 1]])
    if mask is None:
        mask = paste_mask(size, feather)
    elif mask.shape != (size, size):
        raise UserError(f"paste_back: mask must be {(size, size)}, got {mask.shape}")

    h, w = source.shape[:2]
    corners = np.array(
        [[-0.5, -0.5], [size - 0.5, -0.5], [size - 0.5, size - 0.5], [-0.5, size - 0.5]]
    )
    src_corners = (matrix[:2, :2] @ corners.T).T + matrix[:2, 2]
    x0 = max(int(math.floor(src_corners[:, 0].min())), 0)
    y0 = max(int(math.floor(src_corners[:, 1].min())), 0)
    x1 = min(int(math.ceil(src_corners[:, 0].max())) + 1, w)
    y1 = min(int(math.ceil(src_corners[:, 1].max())) + 1, h)
    out = source.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    # aligned -> ROI pixel; cv2 warps forward with this map (it inverts it internally)
    m = (np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1]]) @ matrix)[:2]
    roi_size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(
        aligned, m, roi_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    alpha = cv2.warpAffine(
        np.ascontiguousarray(mask, dtype=np.float32),
        m,
        roi_size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    roi = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = cv2.blendLinear(warped, roi, alpha, 1.0 - alpha)
    return out


def inverse_warp(
    aligned: np.ndarray,
    meta_or_matrix: AlignMeta | Mapping[str, Any] | np.ndarray,
    source_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``aligned`` into a blank source-sized frame -> (image (H, W, 3), coverage (H, W))."""
    w, h = source_size
    blank = np.zeros((h, w, 3), np.uint8)
    ones = np.ones(aligned.shape[:2], np.float32)
    img = paste_back(blank, aligned, meta_or_matrix, mask=ones)
    cov = paste_back(blank, np.full_like(aligned, 255), meta_or_matrix, mask=ones)[..., 0]
    return img, cov.astype(np.float32) / 255.0
