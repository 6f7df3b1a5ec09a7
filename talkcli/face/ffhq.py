"""FFHQ alignment math: the one home of NVlabs' ``recreate_aligned_images`` in talkcli.

Given landmarks (68 iBUG points or 5 MTCNN points), ``ffhq_quad`` builds the oriented crop square
exactly as NVlabs' ffhq-dataset does; ``align_image_exact`` reproduces the whole procedure step
by step (shrink, crop, reflect-pad with blur and median blend, QUAD warp to 4096², Lanczos to the
output size); ``align_image_fast`` gives nearly the same picture with one OpenCV warp straight
from the source, for video.

Coordinates: pixel *index* coordinates (pixel (i, j) has its centre at x=i, y=j), as the
landmarks are. Every result carries an ``AlignMeta`` with the quad in source pixels (FFHQ corner
order: top-left, bottom-left, bottom-right, top-right of the aligned image) and the 3x3 matrix that
maps aligned pixel coordinates to source pixel coordinates (used by the inverse warp/paste-back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import scipy.ndimage
from PIL import Image

from talkcli.errors import UserError

TRANSFORM_SIZE = 4096  # NVlabs' intermediate warp size

# -- landmarks -> quad ---------------------------------------------------------------------------


def anchor_points(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eye centres and mouth corners ``(eye_left, eye_right, mouth_left, mouth_right)``.

    ``landmarks`` is (68, 2) iBUG (eyes = mean of 36:42 and 42:48, mouth corners 48 and 54) or
    (5, 2) MTCNN order (left eye, right eye, nose, left mouth corner, right mouth corner), where
    "left" is the image-left side, as in iBUG.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] not in (68, 5):
        raise UserError(f"landmarks must have shape (68, 2) or (5, 2), got {tuple(lm.shape)}")
    if not np.all(np.isfinite(lm)):
        raise UserError("landmarks contain NaN or infinite values")
    if lm.shape[0] == 68:
        return lm[36:42].mean(axis=0), lm[42:48].mean(axis=0), lm[48].copy(), lm[54].copy()
    return lm[0].copy(), lm[1].copy(), lm[3].copy(), lm[4].copy()


@dataclass(frozen=True)
class QuadParams:
    """The oriented crop square: centre ``c`` and half-axes ``x`` (rightwards), ``y`` (downwards).

    ``y`` is ``x`` rotated by 90 degrees, so the quad is always a square of side ``qsize``.
    """

    c: np.ndarray  # (2,)
    x: np.ndarray  # (2,)
    y: np.ndarray  # (2,)

    @property
    def quad(self) -> np.ndarray:
        """(4, 2) corners: c-x-y, c-x+y, c+x+y, c+x-y (NVlabs order)."""
        c, x, y = self.c, self.x, self.y
        return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])

    @property
    def qsize(self) -> float:
        return float(np.hypot(*self.x) * 2)

    def as_vector(self) -> np.ndarray:
        """(6,) = [cx, cy, xx, xy, yx, yy], for smoothing over time."""
        return np.concatenate([self.c, self.x, self.y])

    @classmethod
    def from_vector(cls, v: np.ndarray) -> QuadParams:
        v = np.asarray(v, dtype=np.float64)
        return cls(v[0:2].copy(), v[2:4].copy(), v[4:6].copy())

    @classmethod
    def from_quad(cls, quad: np.ndarray) -> QuadParams:
        q = np.asarray(quad, dtype=np.float64).reshape(4, 2)
        c = q.mean(axis=0)
        x = (q[3] - q[0] + q[2] - q[1]) / 4
        y = (q[1] - q[0] + q[2] - q[3]) / 4
        return cls(c, x, y)


def quad_params(landmarks: np.ndarray) -> QuadParams:
    """NVlabs' oriented crop rectangle (``rotate_level=True``) from 68 or 5 landmarks."""
    eye_left, eye_right, mouth_left, mouth_right = anchor_points(landmarks)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if not norm > 1e-9:
        raise UserError("degenerate landmarks: eyes and mouth give no face orientation")
    x = x / norm
    x = x * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return QuadParams(c, x, y)


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """(4, 2) FFHQ quad in source pixels for 68 or 5 landmarks."""
    return quad_params(landmarks).quad


# -- the plan shared by the exact and the fast path ----------------------------------------------


@dataclass
class CropPlan:
    """NVlabs' shrink / crop / pad decisions for one quad on one source size."""

    source_size: tuple[int, int]  # (w, h) of the original image
    output_size: int
    shrink: int  # >1 when the source is downscaled first
    shrunk_size: tuple[int, int]  # (w, h) after shrinking (== source_size when shrink <= 1)
    qsize: float  # quad side in processed (shrunk) pixels
    border: int
    crop: tuple[int, int, int, int] | None  # (x0, y0, x1, y1) in shrunk pixels, None: no crop
    pad: tuple[int, int, int, int]  # (left, top, right, bottom), applied when ``padded``
    padded: bool
    quad: np.ndarray  # (4, 2) quad in the processed image (after shrink, crop, pad)
    processed_size: tuple[int, int]  # (w, h) of the image that is warped

    @property
    def crop_origin(self) -> tuple[int, int]:
        return (self.crop[0], self.crop[1]) if self.crop is not None else (0, 0)


def plan_crop(quad: np.ndarray, source_size: tuple[int, int], output_size: int) -> CropPlan:
    """Replay NVlabs' shrink, crop and pad arithmetic without touching pixels."""
    quad = np.array(quad, dtype=np.float64).reshape(4, 2)
    w, h = int(source_size[0]), int(source_size[1])
    qsize = float(np.hypot(*(quad[3] - quad[0])))  # == 2|x|

    shrink = int(np.floor(qsize / output_size * 0.5))
    size = (w, h)
    if shrink > 1:
        size = (int(np.rint(float(w) / shrink)), int(np.rint(float(h) / shrink)))
        quad /= shrink
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, size[0]),
        min(crop[3] + border, size[1]),
    )
    crop_used: tuple[int, int, int, int] | None = None
    if crop[2] - crop[0] < size[0] or crop[3] - crop[1] < size[1]:
        crop_used = crop
        quad -= crop[0:2]
        size = (crop[2] - crop[0], crop[3] - crop[1])

    pad = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    pad = (
        max(-pad[0] + border, 0),
        max(-pad[1] + border, 0),
        max(pad[2] - size[0] + border, 0),
        max(pad[3] - size[1] + border, 0),
    )
    padded = max(pad) > border - 4
    if padded:
        pad = tuple(int(p) for p in np.maximum(pad, int(np.rint(qsize * 0.3))))
        size = (size[0] + pad[0] + pad[2], size[1] + pad[1] + pad[3])
        quad += pad[:2]
    shrunk = (
        (int(np.rint(float(w) / shrink)), int(np.rint(float(h) / shrink))) if shrink > 1 else (w, h)
    )
    return CropPlan(
        source_size=(w, h),
        output_size=output_size,
        shrink=shrink,
        shrunk_size=shrunk,
        qsize=qsize,
        border=border,
        crop=crop_used,
        pad=pad,  # type: ignore[arg-type]
        padded=padded,
        quad=quad,
        processed_size=size,
    )


def _aligned_to_processed(quad_proc: np.ndarray, size: int) -> np.ndarray:
    """3x3: aligned pixel index -> processed-image pixel index, as PIL's QUAD + resize sample.

    PIL maps output pixel i (centre i+0.5) of the 4096 warp to q0+0.5 + A(i+0.5) in continuous
    coordinates (index + 0.5); the Lanczos resize maps output k to warp centre (k+0.5)*T/S. The
    transform size cancels: index(k) = q0 + (q3-q0)(k+0.5)/S + (q1-q0)(l+0.5)/S.
    """
    q = quad_proc
    ax = (q[3] - q[0]) / size  # per aligned x step
    ay = (q[1] - q[0]) / size  # per aligned y step
    t = q[0] + 0.5 * ax + 0.5 * ay
    return np.array([[ax[0], ay[0], t[0]], [ax[1], ay[1], t[1]], [0.0, 0.0, 1.0]])


def _processed_to_source(plan: CropPlan) -> np.ndarray:
    """3x3: processed (shrunk, cropped, padded) pixel index -> original source pixel index."""
    ox, oy = plan.crop_origin
    px, py = (plan.pad[0], plan.pad[1]) if plan.padded else (0, 0)
    shift = np.array([[1.0, 0, ox - px], [0, 1.0, oy - py], [0, 0, 1.0]])
    if plan.shrink > 1:
        rx = plan.source_size[0] / plan.shrunk_size[0]
        ry = plan.source_size[1] / plan.shrunk_size[1]
        # PIL resize: shrunk index m has its centre at source (m + 0.5) * r - 0.5.
        scale = np.array([[rx, 0, 0.5 * rx - 0.5], [0, ry, 0.5 * ry - 0.5], [0, 0, 1.0]])
        return scale @ shift
    return shift


# -- results -------------------------------------------------------------------------------------


@dataclass
class AlignMeta:
    """What the sidecar JSON records about one aligned image."""

    quad: np.ndarray  # (4, 2) source pixels, FFHQ corner order
    size: int
    source_size: tuple[int, int]  # (w, h)
    matrix: np.ndarray  # (3, 3) aligned pixel -> source pixel
    warp: str  # "exact" | "fast"
    shrink: int = 1
    crop: tuple[int, int, int, int] | None = None
    pad: tuple[int, int, int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def inverse_matrix(self) -> np.ndarray:
        """(3, 3) source pixel -> aligned pixel."""
        return np.linalg.inv(self.matrix)

    def to_dict(self) -> dict[str, Any]:
        return {
            "quad": np.asarray(self.quad, dtype=float).tolist(),
            "size": int(self.size),
            "source_size": [int(self.source_size[0]), int(self.source_size[1])],
            "matrix": np.asarray(self.matrix, dtype=float).tolist(),
            "warp": self.warp,
            "shrink": int(self.shrink),
            "crop": list(self.crop) if self.crop is not None else None,
            "pad": list(self.pad) if self.pad is not None else None,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignMeta:
        return cls(
            quad=np.asarray(data["quad"], dtype=np.float64),
            size=int(data["size"]),
            source_size=(int(data["source_size"][0]), int(data["source_size"][1])),
            matrix=np.asarray(data["matrix"], dtype=np.float64),
            warp=str(data.get("warp", "exact")),
            shrink=int(data.get("shrink", 1)),
            crop=tuple(data["crop"]) if data.get("crop") else None,  # type: ignore[arg-type]
            pad=tuple(data["pad"]) if data.get("pad") else None,  # type: ignore[arg-type]
        )


def _check_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise UserError(f"expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise UserError(f"image too small to align: {img.shape[1]}x{img.shape[0]}")
    return img


def _check_size(size: int) -> int:
    if not isinstance(size, int | np.integer) or size < 8 or size > TRANSFORM_SIZE:
        raise UserError(f"--size must be an integer between 8 and {TRANSFORM_SIZE}, got {size}")
    return int(size)


def _meta(quad: np.ndarray, plan: CropPlan, size: int, warp: str) -> AlignMeta:
    matrix = _processed_to_source(plan) @ _aligned_to_processed(plan.quad, size)
    return AlignMeta(
        quad=np.asarray(quad, dtype=np.float64).reshape(4, 2).copy(),
        size=size,
        source_size=plan.source_size,
        matrix=matrix,
        warp=warp,
        shrink=plan.shrink,
        crop=plan.crop,
        pad=plan.pad if plan.padded else None,
    )


# -- the exact path ------------------------------------------------------------------------------


def _reflect_pad_blend(img: np.ndarray, pad: tuple[int, int, int, int], qsize: float) -> np.ndarray:
    """NVlabs' padding: reflect, blur towards the edges, blend to the median; uint8 out."""
    img = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
    h, w, _ = img.shape
    yy, xx, _ = np.ogrid[:h, :w, :1]
    mask = np.maximum(
        1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
        1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]),
    )
    blur = qsize * 0.02
    img += (scipy.ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(
        mask * 3.0 + 1.0, 0.0, 1.0
    )
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
    return np.uint8(np.clip(np.rint(img), 0, 255))


def align_quad_exact(
    img: np.ndarray, quad: np.ndarray, size: int = 1024, transform_size: int = TRANSFORM_SIZE
) -> tuple[np.ndarray, AlignMeta]:
    """NVlabs' procedure for a given quad (source pixels) -> ((size, size, 3) uint8, meta)."""
    img = _check_image(img)
    size = _check_size(size)
    quad = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    h, w = img.shape[:2]
    plan = plan_crop(quad, (w, h), size)

    pil = Image.fromarray(img, "RGB")
    if plan.shrink > 1:
        pil = pil.resize(plan.shrunk_size, Image.Resampling.LANCZOS)
    if plan.crop is not None:
        pil = pil.crop(plan.crop)
    if plan.padded:
        pil = Image.fromarray(_reflect_pad_blend(np.asarray(pil), plan.pad, plan.qsize), "RGB")
    assert pil.size == plan.processed_size, (pil.size, plan.processed_size)
    out = pil.transform(
        (transform_size, transform_size),
        Image.Transform.QUAD,
        tuple((plan.quad + 0.5).flatten()),
        Image.Resampling.BILINEAR,
    )
    if size < transform_size:
        out = out.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(out), _meta(quad, plan, size, "exact")


def align_image_exact(
    img: np.ndarray, landmarks: np.ndarray, size: int = 1024, transform_size: int = TRANSFORM_SIZE
) -> tuple[np.ndarray, AlignMeta]:
    """FFHQ-align ``img`` (H, W, 3) uint8 RGB from 68 or 5 landmarks, exactly as NVlabs."""
    quad = ffhq_quad(landmarks)
    out, meta = align_quad_exact(img, quad, size, transform_size)
    meta.extra["landmarks"] = np.asarray(landmarks, dtype=float).tolist()
    return out, meta


# -- the fast path -------------------------------------------------------------------------------


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """numpy 'reflect' (edge not repeated) indices into range(n)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def align_quad_fast(
    img: np.ndarray,
    quad: np.ndarray,
    size: int = 1024,
    *,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, AlignMeta]:
    """Nearly ``align_quad_exact`` with one OpenCV warp straight from the source.

    Same shrink/crop/pad plan and the same output geometry (``meta.matrix`` is identical). When
    the face is larger than the output, it warps at twice the size and Lanczos-reduces (as the
    4096 warp + Lanczos does). The padding's reflection, blur and median blend are computed in
    the aligned frame (a blur of sigma 0.02·qsize in the source is a blur of 0.02·size after the
    similarity warp), on a coarse grid except for the sharp warp itself.
    """
    img = _check_image(img)
    size = _check_size(size)
    quad = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    h, w = img.shape[:2]
    plan = plan_crop(quad, (w, h), size)
    meta = _meta(quad, plan, size, "fast")
    al2proc = _aligned_to_processed(plan.quad, size)  # aligned -> padded processed index
    pad_l, pad_t = (plan.pad[0], plan.pad[1]) if plan.padded else (0, 0)

    # The processed image before padding (shrunk + cropped), as a region of the source.
    crop = plan.crop or (0, 0, plan.shrunk_size[0], plan.shrunk_size[1])
    cw, ch = crop[2] - crop[0], crop[3] - crop[1]
    p2s = _processed_to_source(plan) @ np.array([[1.0, 0, pad_l], [0, 1.0, pad_t], [0, 0, 1]])
    corners = transform_points(p2s, np.array([[-0.5, -0.5], [cw - 0.5, ch - 0.5]]))
    x0, y0 = (max(int(math.floor(v + 0.5)), 0) for v in corners[0])
    x1 = min(int(math.ceil(corners[1, 0] - 0.5)) + 1, w)
    y1 = min(int(math.ceil(corners[1, 1] - 0.5)) + 1, h)
    region = img[y0:y1, x0:x1]
    al2work = np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1]]) @ meta.matrix
    work = np.ascontiguousarray(region)
    if plan.shrink > 1:  # as NVlabs: Lanczos shrink (of the needed region only)
        work = np.asarray(Image.fromarray(work, "RGB").resize((cw, ch), Image.Resampling.LANCZOS))
        fx, fy = cw / region.shape[1], ch / region.shape[0]
        al2work = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]]) @ al2work
    # Work pixels per aligned pixel. Above 1, warp at twice the output size and Lanczos-reduce,
    # as NVlabs' 4096 warp + Lanczos does (measured >= 40 dB of the exact path up to 5x).
    step = math.hypot(al2work[0, 0], al2work[1, 0])
    k = 1 if step <= 1.05 else 2

    margin = int(math.ceil(3 * 0.02 * size)) + 2 if plan.padded else 0
    canvas = size + 2 * margin
    # canvas pixel (at k x resolution) -> aligned pixel: (i + 0.5) / k - 0.5 - margin
    up = np.array(
        [[1 / k, 0, 0.5 / k - 0.5 - margin], [0, 1 / k, 0.5 / k - 0.5 - margin], [0, 0, 1]]
    )
    out = cv2.warpAffine(
        work,
        (al2work @ up)[:2],
        (canvas * k, canvas * k),
        flags=interpolation | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    if k > 1:
        out = np.asarray(
            Image.fromarray(out, "RGB").resize((canvas, canvas), Image.Resampling.LANCZOS)
        )
    shift = np.array([[1.0, 0, -margin], [0, 1.0, -margin], [0, 0, 1]])
    if not plan.padded:
        return out, meta

    # NVlabs' blend, out = W*a1 + B*a2 + median*a3 with a1 = (1-wb)(1-wm), a2 = wb(1-wm),
    # a3 = wm, wb = clip(3*mask+1), wm = clip(mask). The mask is piecewise linear and B is a wide
    # blur, so everything except the sharp warp W is computed on a grid up to 8x coarser.
    pw, ph = plan.processed_size
    pl, pt, pr, pb = plan.pad
    sigma = 0.02 * size  # the blur of 0.02 * qsize processed pixels, after the warp
    low = max(canvas // int(np.clip(sigma // 2.5, 1, 8)), 16)  # >= 2.5 coarse px per sigma
    f = canvas / low
    grid = (np.arange(low, dtype=np.float64) + 0.5) * f - 0.5  # low-res centres in canvas px
    mp = al2proc @ shift
    gx = mp[0, 0] * grid[None, :] + mp[0, 1] * grid[:, None] + mp[0, 2]
    gy = mp[1, 0] * grid[None, :] + mp[1, 1] * grid[:, None] + mp[1, 2]
    mask = np.maximum(
        1.0 - np.minimum(gx / pl, (pw - 1 - gx) / pr), 1.0 - np.minimum(gy / pt, (ph - 1 - gy) / pb)
    ).astype(np.float32)
    wb = np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    wm = np.clip(mask, 0.0, 1.0)
    if not wb.any():
        return np.ascontiguousarray(out[margin : margin + size, margin : margin + size]), meta
    blurred = cv2.resize(out, (low, low), interpolation=cv2.INTER_AREA).astype(np.float32)
    blurred = cv2.GaussianBlur(blurred, (0, 0), sigma / f, borderType=cv2.BORDER_REFLECT)
    # median of the padded processed image, from a regular subsample of it
    stride = max(1, int(math.sqrt(pw * ph / 65536.0)))
    wh, ww = work.shape[:2]
    xs = _reflect_index(np.round((np.arange(0, pw, stride) - pl) * ww / cw).astype(np.int64), ww)
    ys = _reflect_index(np.round((np.arange(0, ph, stride) - pt) * wh / ch).astype(np.int64), wh)
    median = np.median(work[ys][:, xs].reshape(-1, 3).astype(np.float32), axis=0)
    smooth = blurred * (wb * (1.0 - wm))[..., None] + median[None, None, :] * wm[..., None]
    a1 = cv2.resize((1.0 - wb) * (1.0 - wm), (canvas, canvas), interpolation=cv2.INTER_LINEAR)
    smooth = cv2.resize(smooth, (canvas, canvas), interpolation=cv2.INTER_LINEAR)
    sl = slice(margin, margin + size)
    res = out[sl, sl].astype(np.float32)
    res *= a1[sl, sl, None]
    res += smooth[sl, sl]
    return cv2.convertScaleAbs(res), meta  # round and saturate to uint8


def align_image_fast(
    img: np.ndarray, landmarks: np.ndarray, size: int = 1024
) -> tuple[np.ndarray, AlignMeta]:
    """``align_image_exact``'s fast approximation (one warp from the source), for video."""
    quad = ffhq_quad(landmarks)
    out, meta = align_quad_fast(img, quad, size)
    meta.extra["landmarks"] = np.asarray(landmarks, dtype=float).tolist()
    return out, meta


# -- helpers for the inverse direction and for video --------------------------------------------


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine/projective matrix to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    hom = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ np.asarray(matrix).T
    return hom[:, :2] / hom[:, 2:3]


def smooth_quad_params(
    params: list[QuadParams] | np.ndarray, center_sigma: float, axis_sigma: float | None = None
) -> list[QuadParams]:
    """Gaussian smoothing over time of (c, x, y), as STIT (sigma 1 for c, 3 for x and y).

    ``axis_sigma`` defaults to ``3 * center_sigma``; 0 disables smoothing.
    """
    if isinstance(params, np.ndarray):
        vec = np.asarray(params, dtype=np.float64).reshape(-1, 6)
    else:
        vec = np.stack([p.as_vector() for p in params]) if params else np.zeros((0, 6))
    if axis_sigma is None:
        axis_sigma = 3.0 * center_sigma
    out = vec.copy()
    if len(vec) > 1:
        if center_sigma > 0:
            out[:, 0:2] = scipy.ndimage.gaussian_filter1d(
                vec[:, 0:2], center_sigma, axis=0, mode="nearest"
            )
        if axis_sigma > 0:
            out[:, 2:6] = scipy.ndimage.gaussian_filter1d(
                vec[:, 2:6], axis_sigma, axis=0, mode="nearest"
            )
    return [QuadParams.from_vector(v) for v in out]
