"""MFCC features and the per-frame MFCC windows the audio-to-latent model reads (thesis 4.3.3).

* ``mfcc(samples) -> (M, 12)``: python_speech_features ``mfcc(samples, 16000, winlen=0.025,
  winstep=0.01, numcep=13)`` with the first coefficient dropped (the thesis computes 13 and uses
  the last 12). Row ``r`` describes samples ``[160 r, 160 r + 400)`` (10 ms step, 25 ms window).
* ``mfcc_windows(samples, fps) -> float32 (T, 12, 28)``: one 280 ms window per video frame,
  centred on the frame. ``T = ceil(len(samples) / 16000 * fps)``; frame ``t`` uses MFCC rows
  ``[s, s + 28)`` with ``s = floor(100 * (t + 0.5) / fps - 14 + 0.5)`` (at 25 fps rows
  ``4t - 12 .. 4t + 15``: the 7-frame window with frame ``t`` in the middle). Rows outside
  ``[0, M)`` repeat the nearest valid row. Both formulas are evaluated exactly (rational
  arithmetic), so frame counts never depend on float rounding.
* ``iter_mfcc_windows(samples, fps, chunk_frames)`` yields the same windows chunk by chunk and
  computes only the MFCC rows each chunk needs, from the samples of a whole signal or of a
  ``SampleSource`` read segment by segment (``animate`` streams its decoded audio through it):
  memory stays bounded for any audio length. ``mfcc_windows`` is the concatenation of its
  chunks.

Values are raw MFCCs: normalisation belongs to the model (``Audio2Latent`` keeps the training
set's per-coefficient mean and standard deviation as buffers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import numpy as np

from talkcli.constants import SAMPLE_RATE

WINLEN = 0.025  # seconds
WINSTEP = 0.01  # seconds
NUMCEP = 13  # computed; the first is dropped
N_MFCC = NUMCEP - 1  # 12 coefficients used
MFCC_RATE = 100  # MFCC rows per second (1 / WINSTEP)
WINDOW = 28  # MFCC rows per window: 280 ms
FRAME_LEN = 400  # samples per MFCC row (25 ms at 16 kHz)
FRAME_STEP = 160  # samples between rows (10 ms)
PREEMPH = 0.97
CHUNK_ROWS = 4096  # MFCC rows computed at once (~40 s of audio, a few MB)

# What a checkpoint records so that ``animate`` computes exactly the features it was trained on.
FEATURE_SETTINGS: dict[str, object] = {
    "library": "python_speech_features",
    "sample_rate": SAMPLE_RATE,
    "winlen": WINLEN,
    "winstep": WINSTEP,
    "numcep": NUMCEP,
    "drop_first": True,
    "n_mfcc": N_MFCC,
    "window": WINDOW,
    "window_rule": "s = floor(100 * (t + 0.5) / fps - 14 + 0.5); rows [s, s + 28), edges repeated",
}


def _check_samples(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"samples must be mono (T,), got shape {x.shape}")
    if x.size == 0:
        raise ValueError("samples are empty: no audio to compute MFCCs from")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"samples must be floats in [-1, 1], got {x.dtype}")
    return x


def _fps(fps: float) -> Fraction:
    if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return Fraction(fps)  # exact value of the float


def n_mfcc_rows(n_samples: int) -> int:
    """Number of MFCC rows python_speech_features makes from ``n_samples`` samples (>= 1)."""
    if n_samples <= FRAME_LEN:
        return 1
    return 1 + -(-(n_samples - FRAME_LEN) // FRAME_STEP)


def n_frames(n_samples: int, fps: float) -> int:
    """Video frames covered by ``n_samples`` samples: ``ceil(n_samples / 16000 * fps)``."""
    return math.ceil(Fraction(int(n_samples), SAMPLE_RATE) * _fps(fps))


def window_starts(frames: np.ndarray | range | int, fps: float) -> np.ndarray:
    """First MFCC row of the window of each frame: ``floor(100 (t + 0.5) / fps - 13.5)``.

    ``frames``: frame indices, or a count T for frames ``0 .. T-1``. Returns int64 (T,).
    """
    return window_starts_at(frames, fps, MFCC_RATE, WINDOW)


def window_starts_at(
    frames: np.ndarray | range | int, fps: float, rate: int, window: int
) -> np.ndarray:
    """First feature row of each frame's window for features at ``rate`` rows per second and
    windows of ``window`` rows, centred on the frame: ``floor(rate (t + 0.5) / fps - window / 2
    + 0.5)`` (the MFCC rule; at 50 Hz with 14 rows: ``floor(50 (t + 0.5) / fps - 6.5)``).
    Returns int64 (T,), computed exactly."""
    idx = range(frames) if isinstance(frames, int) else frames
    f = _fps(fps)
    p, q = f.numerator, f.denominator
    # floor(rate (2t + 1) q / (2 p) - (window - 1) / 2) = floor((rate (2t+1) q - (window-1) p) / 2p)
    return np.array(
        [(rate * (2 * int(t) + 1) * q - (window - 1) * p) // (2 * p) for t in idx], dtype=np.int64
    )


def windows_from_rows(
    rows: np.ndarray, frames: np.ndarray | range | int, fps: float, kind: str
) -> np.ndarray:
    """The windows of ``frames`` from feature rows (M, D) of ``kind`` -> float32 (T, D, W):
    ``windows_from_mfcc`` for ``mfcc``, the same rule at the kind's rate and window otherwise
    (rows outside ``[0, M)`` repeat the nearest valid row)."""
    spec = feature_kind(kind)
    if spec.name == "mfcc":
        return windows_from_mfcc(rows, frames, fps)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"feature rows must be (M, D) with M >= 1, got {rows.shape}")
    starts = window_starts_at(frames, fps, spec.rate, spec.window)  # (T,)
    idx = np.clip(starts[:, None] + np.arange(spec.window)[None, :], 0, rows.shape[0] - 1)
    return np.ascontiguousarray(rows[idx].transpose(0, 2, 1), dtype=np.float32)  # (T, D, W)


@dataclass(frozen=True)
class FeatureKind:
    """One kind of speech features: its rows per second and rows per 280 ms window."""

    name: str
    rate: int  # rows per second
    window: int  # rows per window (280 ms)
    ssl: bool  # a self-supervised speech model (talkcli.audio.ssl), else MFCC


# The feature registry: ``mfcc`` is the thesis' (the default); the others are read by a
# Wav2Vec2 / HuBERT model from a local folder (talkcli.audio.ssl, the ``ssl`` extra).
FEATURE_KINDS: dict[str, FeatureKind] = {
    "mfcc": FeatureKind("mfcc", MFCC_RATE, WINDOW, ssl=False),
    "wav2vec2": FeatureKind("wav2vec2", 50, 14, ssl=True),
    "hubert": FeatureKind("hubert", 50, 14, ssl=True),
}


def feature_kind(name: str) -> FeatureKind:
    """The registry entry ``name`` (ValueError naming the kinds otherwise)."""
    try:
        return FEATURE_KINDS[name]
    except KeyError:
        raise ValueError(
            f"unknown feature kind {name!r}: expected one of {', '.join(FEATURE_KINDS)}"
        ) from None


def _preemphasised(samples: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Pre-emphasised samples ``[lo, hi)`` (zero beyond the end), exactly as psf computes them
    for the whole signal: ``y[0] = x[0]``, ``y[i] = x[i] - 0.97 x[i - 1]``."""
    from python_speech_features.sigproc import preemphasis

    n = len(samples)
    start = max(lo - 1, 0)
    seg = preemphasis(samples[start : min(hi, n)], PREEMPH)
    if lo > 0:
        seg = seg[1:]
    if len(seg) < hi - lo:  # psf pads the framed signal with zeros
        seg = np.concatenate([seg, np.zeros(hi - lo - len(seg), dtype=seg.dtype)])
    return seg


def mfcc_rows(samples: np.ndarray, start: int, stop: int) -> np.ndarray:
    """MFCC rows ``[start, stop)`` of ``mfcc(samples)``, computed from those samples only.

    The values of the full ``mfcc(samples)`` sliced (to float64 rounding: the pre-emphasis is
    recomputed from the sample before the slice). Returns float64 (stop - start, 12).
    """
    from python_speech_features import mfcc as psf_mfcc

    x = _check_samples(samples)
    m = n_mfcc_rows(len(x))
    if not 0 <= start <= stop <= m:
        raise ValueError(f"rows [{start}, {stop}) outside the {m} MFCC rows of this audio")
    out = np.empty((stop - start, N_MFCC), dtype=np.float64)
    for a in range(start, stop, CHUNK_ROWS):
        b = min(a + CHUNK_ROWS, stop)
        seg = _preemphasised(x, a * FRAME_STEP, (b - 1) * FRAME_STEP + FRAME_LEN)
        rows = psf_mfcc(
            seg, SAMPLE_RATE, winlen=WINLEN, winstep=WINSTEP, numcep=NUMCEP, preemph=0.0
        )  # (b - a, 13): pre-emphasis done above
        out[a - start : b - start] = rows[:, 1:]
    return out


def mfcc(samples: np.ndarray) -> np.ndarray:
    """MFCCs of 16 kHz mono ``samples`` (T,): float64 (M, 12), the first of 13 dropped.

    Equals ``python_speech_features.mfcc(samples, 16000, winlen=0.025, winstep=0.01,
    numcep=13)[:, 1:]``, computed in chunks of ~40 s of audio.
    """
    x = _check_samples(samples)
    return mfcc_rows(x, 0, n_mfcc_rows(len(x)))


def windows_from_mfcc(rows: np.ndarray, frames: np.ndarray | range | int, fps: float) -> np.ndarray:
    """Gather the 280 ms windows of ``frames`` from MFCC rows (M, 12) -> float32 (T, 12, 28).

    Rows outside ``[0, M)`` repeat the nearest valid row.
    """
    if rows.ndim != 2 or rows.shape[1] != N_MFCC or rows.shape[0] == 0:
        raise ValueError(f"MFCC rows must be (M, {N_MFCC}) with M >= 1, got {rows.shape}")
    starts = window_starts(frames, fps)  # (T,)
    idx = np.clip(starts[:, None] + np.arange(WINDOW)[None, :], 0, rows.shape[0] - 1)  # (T, 28)
    return np.ascontiguousarray(rows[idx].transpose(0, 2, 1), dtype=np.float32)  # (T, 12, 28)


class SampleSource(Protocol):
    """Mono 16 kHz float samples read in segments: ``talkcli.io.audio.DecodedAudio`` is one
    (the whole signal is then never in memory)."""

    n_samples: int

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` (T,), float32 or float64."""
        ...


class _ArraySource:
    """A whole signal in memory as a ``SampleSource``."""

    def __init__(self, samples: np.ndarray) -> None:
        self.samples = _check_samples(samples)
        self.n_samples = len(self.samples)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.samples[start:stop]


def _window_chunk(source: SampleSource, frames: range, fps: float) -> np.ndarray:
    """The windows of ``frames`` (n, 12, 28) float32, from the samples they need only.

    The segment read starts one MFCC row early so that row ``lo``'s pre-emphasis sees its
    previous sample, and ends where row ``hi - 1`` ends (or at the end of the audio, where psf
    pads with zeros alike): rows ``[lo, hi)`` of the whole signal are rows ``[lo - base,
    hi - base)`` of the segment, the same values bit for bit.
    """
    n = source.n_samples
    m = n_mfcc_rows(n)
    starts = window_starts(frames, fps)  # (n,)
    lo = int(np.clip(starts[0], 0, m - 1))
    hi = int(np.clip(starts[-1] + WINDOW, lo + 1, m))
    base = max(lo - 1, 0)
    seg = source.read(base * FRAME_STEP, min((hi - 1) * FRAME_STEP + FRAME_LEN, n))
    rows = mfcc_rows(seg, lo - base, hi - base)  # (hi - lo, 12)
    idx = np.clip(starts[:, None] + np.arange(WINDOW)[None, :], 0, m - 1) - lo  # (n, 28)
    return np.ascontiguousarray(rows[idx].transpose(0, 2, 1), dtype=np.float32)  # (n, 12, 28)


def iter_mfcc_windows(
    samples: np.ndarray | SampleSource, fps: float = 25.0, chunk_frames: int = 500
) -> Iterator[np.ndarray]:
    """Yield ``mfcc_windows(samples, fps)`` in chunks of up to ``chunk_frames`` frames.

    ``samples`` is the signal (T,) or a ``SampleSource`` read segment by segment (``animate``
    streams a ``DecodedAudio`` through here). Each chunk computes only the MFCC rows its windows
    touch, from only the samples those rows cover, so memory is bounded by the chunk size
    whatever the audio length. Chunks are float32 (n, 12, 28), in frame order; the values do not
    depend on the chunking.
    """
    is_source = hasattr(samples, "read") and hasattr(samples, "n_samples")
    source = samples if is_source else _ArraySource(samples)
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if source.n_samples < 1:
        raise ValueError("samples are empty: no audio to compute MFCCs from")
    total = n_frames(source.n_samples, fps)
    for t0 in range(0, total, chunk_frames):
        yield _window_chunk(source, range(t0, min(t0 + chunk_frames, total)), fps)


def mfcc_windows(samples: np.ndarray, fps: float = 25.0) -> np.ndarray:
    """One 280 ms MFCC window per video frame: float32 (T, 12, 28), T = ceil(len / 16000 * fps).

    Frame ``t`` uses MFCC rows ``[s, s + 28)``, ``s = floor(100 (t + 0.5) / fps - 14 + 0.5)``,
    edge rows repeated (see the module docstring).
    """
    chunks = list(iter_mfcc_windows(samples, fps))
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, N_MFCC, WINDOW), np.float32)
