"""Facial quantities measured from landmarks: head pose, eye and mouth opening, smile (issue 16).

The one home for the measured side of the named controls (``talkcli/models/directions.py``):
``directions find`` fits directions against these, ``animate --driving-mode controls`` drives with
them, ``evaluate`` reports their statistics. From 68 iBUG points:

* ``yaw``, ``pitch``, ``roll`` in degrees: ``cv2.solvePnP`` of a 3D mean-face model (below) with a
  pinhole camera (focal length = image width, centre = image centre). Camera axes as OpenCV's
  (x right, y down, z away from the camera), so a frontal face is (0, 0, 0); positive yaw turns the
  face towards the image's right, positive pitch tilts the chin down, positive roll turns the face
  clockwise in the image;
* ``eyes_open``: eye aspect ratio (Soukupova & Cech 2016), ``(|p2-p6| + |p3-p5|) / (2 |p1-p4|)``,
  mean of both eyes (~0.3 open, ~0.05 closed);
* ``mouth_open``: inner-lip height (mean of the three inner gaps 61-67, 62-66, 63-65) / mouth width
  (outer corners 48-54);
* ``smile``: mouth width / inter-ocular distance (eye centres).

From MTCNN's 5 points (eyes, nose, mouth corners) only ``yaw`` and ``roll`` are measurable
(``FIVE_POINT_NAMES``); the others are NaN.
"""

from __future__ import annotations

import math

import numpy as np

QUANTITIES: tuple[str, ...] = ("yaw", "pitch", "roll", "eyes_open", "mouth_open", "smile")
FIVE_POINT_NAMES: tuple[str, ...] = ("yaw", "roll")

# 3D mean face (millimetre-like units) in OpenCV camera axes (x right, y down, z away from the
# camera; nose tip at the origin), for iBUG points: nose tip 30, chin 8, outer eye corners 36/45,
# inner eye corners 39/42, mouth corners 48/54, nose base 33. The widely used 6-point model
# (learnopencv's head-pose example) with y and z flipped into camera axes, plus three points.
MODEL_68: dict[int, tuple[float, float, float]] = {
    30: (0.0, 0.0, 0.0),
    8: (0.0, 330.0, 65.0),
    36: (-225.0, -170.0, 135.0),
    45: (225.0, -170.0, 135.0),
    39: (-75.0, -170.0, 120.0),
    42: (75.0, -170.0, 120.0),
    48: (-150.0, 150.0, 125.0),
    54: (150.0, 150.0, 125.0),
    33: (0.0, 60.0, 60.0),
}
# The same model on MTCNN's 5 points: left eye centre, right eye centre, nose, mouth corners.
_MODEL_5: np.ndarray = np.array(
    [
        (-150.0, -170.0, 127.5),
        (150.0, -170.0, 127.5),
        (0.0, 0.0, 0.0),
        (-150.0, 150.0, 125.0),
        (150.0, 150.0, 125.0),
    ]
)
_LEFT_EYE = (36, 37, 38, 39, 40, 41)  # p1..p6 of the subject's right eye (image left)
_RIGHT_EYE = (42, 43, 44, 45, 46, 47)


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def _check(lm: np.ndarray) -> np.ndarray:
    pts = np.asarray(lm, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] not in (68, 5):
        raise ValueError(f"landmarks must be (68, 2) or (5, 2), got {pts.shape}")
    return pts


def eye_aspect_ratio(landmarks: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes from 68 points."""
    lm = _check(landmarks)

    def one(idx: tuple[int, ...]) -> float:
        p = lm[list(idx)]
        width = max(_dist(p[0], p[3]), 1e-9)
        return (_dist(p[1], p[5]) + _dist(p[2], p[4])) / (2.0 * width)

    return 0.5 * (one(_LEFT_EYE) + one(_RIGHT_EYE))


def mouth_open_ratio(landmarks: np.ndarray) -> float:
    """Inner-lip height (mean of the gaps 61-67, 62-66, 63-65) / mouth width (48-54)."""
    lm = _check(landmarks)
    height = np.mean([_dist(lm[a], lm[b]) for a, b in ((61, 67), (62, 66), (63, 65))])
    return float(height / max(_dist(lm[48], lm[54]), 1e-9))


def smile_ratio(landmarks: np.ndarray) -> float:
    """Mouth width (48-54) / inter-ocular distance (eye centres)."""
    lm = _check(landmarks)
    left, right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    return _dist(lm[48], lm[54]) / max(_dist(left, right), 1e-9)


def _euler_degrees(rvec: np.ndarray) -> tuple[float, float, float]:
    """Rotation vector -> (yaw, pitch, roll) degrees for R = Rz(roll) Ry(yaw) Rx(pitch)."""
    import cv2

    r, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64))
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, -r[2, 0]))))
    pitch = math.degrees(math.atan2(r[2, 1], r[2, 2]))
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return yaw, -pitch, roll


def head_pose(landmarks: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees by solvePnP against the mean-face model; ``image_size`` is
    (height, width). With 5 points, pitch is NaN (not determined by them reliably)."""
    import cv2

    lm = _check(landmarks)
    h, w = int(image_size[0]), int(image_size[1])
    camera = np.array([[w, 0.0, w / 2.0], [0.0, w, h / 2.0], [0.0, 0.0, 1.0]], dtype=np.float64)
    if lm.shape[0] == 68:
        idx = list(MODEL_68)
        model = np.array([MODEL_68[i] for i in idx], dtype=np.float64)
        image = lm[idx]
    else:
        model, image = _MODEL_5, lm
    image = np.ascontiguousarray(image)
    # SQPNP finds the global optimum; plain ITERATIVE (DLT start) flips to a ~180 degree roll on
    # faces ~10 % off the rigid model (a wide smile, landmark noise), so it only refines here.
    ok, rvec, tvec = cv2.solvePnP(model, image, camera, np.zeros(4), flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return math.nan, math.nan, math.nan
    if lm.shape[0] == 68:
        refine = {"useExtrinsicGuess": True, "flags": cv2.SOLVEPNP_ITERATIVE}
        ok, rvec, _ = cv2.solvePnP(model, image, camera, np.zeros(4), rvec, tvec, **refine)
        if not ok:
            return math.nan, math.nan, math.nan
    yaw, pitch, roll = _euler_degrees(rvec)
    return yaw, (pitch if lm.shape[0] == 68 else math.nan), roll


def measure_face(landmarks: np.ndarray, image_size: tuple[int, int]) -> dict[str, float]:
    """Every quantity of ``QUANTITIES`` for one face; NaN where 5 points cannot tell."""
    lm = _check(landmarks)
    yaw, pitch, roll = head_pose(lm, image_size)
    if lm.shape[0] == 5:
        return {"yaw": yaw, "pitch": math.nan, "roll": roll, "eyes_open": math.nan,
                "mouth_open": math.nan, "smile": math.nan}  # fmt: skip
    return {
        "yaw": yaw,
        "pitch": pitch,
        "roll": roll,
        "eyes_open": eye_aspect_ratio(lm),
        "mouth_open": mouth_open_ratio(lm),
        "smile": smile_ratio(lm),
    }


def measure_many(
    landmarks: list[np.ndarray | None], image_size: tuple[int, int], names: tuple[str, ...]
) -> np.ndarray:
    """(T, len(names)) float64 of the named quantities per frame; NaN rows where no face."""
    out = np.full((len(landmarks), len(names)), np.nan)
    for t, lm in enumerate(landmarks):
        if lm is None:
            continue
        values = measure_face(lm, image_size)
        out[t] = [values[n] for n in names]
    return out
