"""Motion statistics of a talking-head video from its landmarks (issue 16, ``evaluate``).

From per-frame measures (``talkcli.face.measures``: yaw/pitch/roll by solvePnP, eye and mouth
ratios from FAN's 68 points):

* ``blink_rate``: blinks per minute, counted as dips of the eye aspect ratio: a dip starts when
  the ratio falls below ``BLINK_ENTER`` x its median (the open eye) and ends when it rises above
  ``BLINK_EXIT`` x the median (hysteresis, so one blink is one dip however noisy);
* ``pose_std``: the standard deviation of yaw, pitch and roll (degrees) over the frames with a face;
* ``mouth_audio_correlation``: Pearson's r between the mouth opening and the audio's energy
  envelope (RMS over each frame's 1/fps of samples, in dB);
* ``pose_error``: for pairs, the mean absolute difference of yaw, pitch and roll (degrees) between
  generated and reference frames with a face on both sides.

Frames without a face are NaN and left out.
"""

from __future__ import annotations

import math

import numpy as np

BLINK_ENTER = 0.7  # a blink starts below 70 % of the open-eye ratio...
BLINK_EXIT = 0.85  # ...and ends above 85 % of it
MOTION_COLUMNS = ("blink_rate", "yaw_std", "pitch_std", "roll_std", "mouth_audio_r", "pose_error")
MEASURED = ("yaw", "pitch", "roll", "eyes_open", "mouth_open")


def blink_dips(eyes_open: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) frame ranges of the eye-ratio dips (module docstring); NaN frames (no face)
    neither start nor end a dip."""
    x = np.asarray(eyes_open, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if len(finite) == 0:
        return []
    base = float(np.median(finite))
    dips: list[tuple[int, int]] = []
    start: int | None = None
    for t, v in enumerate(x):
        if not math.isfinite(v):
            continue
        if start is None and v < BLINK_ENTER * base:
            start = t
        elif start is not None and v > BLINK_EXIT * base:
            dips.append((start, t))
            start = None
    if start is not None:
        dips.append((start, len(x)))
    return dips


def blink_rate(eyes_open: np.ndarray, fps: float) -> float:
    """Blinks per minute over the whole sequence (NaN without any measured frame)."""
    x = np.asarray(eyes_open, dtype=np.float64)
    if not np.isfinite(x).any() or len(x) == 0:
        return math.nan
    return len(blink_dips(x)) * 60.0 * fps / len(x)


def pose_std(pose: np.ndarray) -> tuple[float, float, float]:
    """(T, 3) yaw, pitch, roll in degrees -> their standard deviations over measured frames."""
    p = np.asarray(pose, dtype=np.float64)
    out = []
    for c in range(3):
        v = p[:, c][np.isfinite(p[:, c])]
        out.append(float(np.std(v)) if len(v) > 1 else math.nan)
    return out[0], out[1], out[2]


def energy_envelope(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames,) RMS energy in dB of each frame's 1/fps of mono ``audio`` (silence: -100 dB)."""
    a = np.asarray(audio, dtype=np.float64).reshape(-1)
    out = np.full(n_frames, -100.0)
    for t in range(n_frames):
        s, e = int(round(t * sample_rate / fps)), int(round((t + 1) * sample_rate / fps))
        chunk = a[s:e]
        if len(chunk):
            out[t] = 10.0 * math.log10(max(float(np.mean(chunk * chunk)), 1e-10))
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r over the entries where both are finite (NaN if fewer than 3 or constant)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 0 else math.nan


def pose_error(pose_gen: np.ndarray, pose_ref: np.ndarray) -> float:
    """Mean absolute yaw/pitch/roll difference (degrees) over frames measured on both sides."""
    d = np.abs(np.asarray(pose_gen, np.float64) - np.asarray(pose_ref, np.float64))  # (T, 3)
    ok = np.all(np.isfinite(d), axis=1)
    return float(d[ok].mean()) if ok.any() else math.nan


def motion_statistics(
    measures: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    reference: np.ndarray | None = None,
) -> dict[str, float]:
    """``MOTION_COLUMNS`` from (T, 5) measures in ``MEASURED`` order (NaN rows: no face); the
    audio correlation needs ``audio``, the pose error ``reference`` measures (T, 5)."""
    m = np.asarray(measures, np.float64)
    yaw, pitch, roll = pose_std(m[:, :3])
    out = {"blink_rate": blink_rate(m[:, 3], fps), "yaw_std": yaw, "pitch_std": pitch,
           "roll_std": roll}  # fmt: skip
    if audio is not None:
        env = energy_envelope(audio, sample_rate, fps, len(m))
        out["mouth_audio_r"] = correlation(m[:, 4], env)
    if reference is not None:
        n = min(len(m), len(reference))
        out["pose_error"] = pose_error(m[:n, :3], np.asarray(reference)[:n, :3])
    return out


def measure_frames(landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, 68, 2) landmarks (NaN: no face) in frames of ``size`` (W, H) -> (B, 5) ``MEASURED``."""
    from talkcli.face.measures import measure_many

    lms = [None if not np.all(np.isfinite(lm)) else lm for lm in np.asarray(landmarks)]
    return measure_many(lms, (int(size[1]), int(size[0])), MEASURED)
