"""LMD: landmark distance between generated and reference frames (thesis chapter 5).

Landmarks are FAN's 68 iBUG points (face-alignment through the registry, ``fan-2d`` + ``s3fd``),
detected on each frame and expressed in pixels of one common size (the evaluation size): LMD is
the Euclidean distance between corresponding points, averaged over the mouth points 48-67 and
over frames; ``lmd_face`` averages over all 68 points. Frames where either side shows no face are
left out (NaN per frame) and counted.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from talkcli.face.landmarks import LandmarkDetector, choose_face
from talkcli.metrics.pixel import as_frames

MOUTH = tuple(range(48, 68))
FACE = tuple(range(68))


@functools.lru_cache(maxsize=2)
def _cached_fan(weights_dir: str | None, device: str) -> LandmarkDetector:
    """FAN + S3FD through the registry (face-alignment), loaded once per folder and device."""
    from talkcli.face.landmarks import FANDetector

    return FANDetector(weights_dir, device)


def get_detector(
    model: LandmarkDetector | str | Path | None = None, device: str = "cpu"
) -> LandmarkDetector:
    """A landmark detector: the one given, FAN from a weights folder holding its files
    (``hub/checkpoints/2DFAN4-...``, ``s3fd-...``), or FAN from the registry (loaded once)."""
    if model is not None and not isinstance(model, str | Path):
        return model
    weights_dir = model  # None: the registry's usual folders
    return _cached_fan(None if weights_dir is None else str(weights_dir), str(device))


def detect_landmarks(
    frames: np.ndarray, detector: LandmarkDetector, size: tuple[int, int] | None = None
) -> np.ndarray:
    """68 landmarks of the largest face in each frame -> (N, 68, 2) float64, NaN where no face.

    ``size`` = (W, H) rescales the coordinates from the frames' size to that size.
    """
    a = as_frames(frames)
    h, w = a.shape[1:3]
    sx, sy = (1.0, 1.0) if size is None else (size[0] / w, size[1] / h)
    out = np.full((len(a), 68, 2), np.nan)
    for i, frame in enumerate(a):
        faces = detector.detect(frame)
        if not faces:
            continue
        face = choose_face(faces)
        lm = np.asarray(face.landmarks, dtype=np.float64)
        if lm.shape != (68, 2):
            raise ValueError(
                f"LMD needs 68-point landmarks (FAN); the {getattr(detector, 'name', '?')} "
                f"detector gives {lm.shape[0]}"
            )
        out[i] = lm * [sx, sy]
    return out


def landmark_distances(
    lm_a: np.ndarray, lm_b: np.ndarray, points: tuple[int, ...] = MOUTH
) -> np.ndarray:
    """Per-frame mean Euclidean distance over ``points`` of (N, 68, 2) landmarks -> (N,)."""
    a, b = np.asarray(lm_a, dtype=np.float64), np.asarray(lm_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1:] != (68, 2):
        raise ValueError(f"expected two (N, 68, 2) landmark arrays, got {a.shape} and {b.shape}")
    idx = list(points)
    return np.linalg.norm(a[:, idx] - b[:, idx], axis=2).mean(axis=1)


def _lmd(generated, reference, points, model, size) -> float:
    g, r = as_frames(generated, "generated"), as_frames(reference, "reference")
    if len(g) != len(r):
        raise ValueError(f"{len(g)} generated frames but {len(r)} reference frames")
    det = get_detector(model)
    common = size or (g.shape[2], g.shape[1])
    d = landmark_distances(
        detect_landmarks(g, det, common), detect_landmarks(r, det, common), points
    )
    return float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")


def lmd(
    generated: np.ndarray,
    reference: np.ndarray,
    model: LandmarkDetector | str | Path | None = None,
    size: tuple[int, int] | None = None,
) -> float:
    """Mouth LMD (points 48-67) in pixels of ``size`` (W, H; default the generated frames' size);
    NaN if no frame pair shows a face on both sides. ``model``: a landmark detector, a weights
    folder with FAN's files, or None for the registry's."""
    return _lmd(generated, reference, MOUTH, model, size)


def lmd_face(
    generated: np.ndarray,
    reference: np.ndarray,
    model: LandmarkDetector | str | Path | None = None,
    size: tuple[int, int] | None = None,
) -> float:
    """LMD over all 68 points."""
    return _lmd(generated, reference, FACE, model, size)
