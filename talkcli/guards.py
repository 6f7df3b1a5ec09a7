"""Checks that run before work starts, so bad input ends in one line and exit 2.

One home for the project's guards, used by every command and library entry point:

* numbers: ``check_number`` (finite, inside a range from ``talkcli.ranges``, the bounds the CLI
  declares too); the CLI itself rejects nan/inf for every float option and every numeric option
  declares ``min=`` and ``max=`` (tests/test_hardening.py and tests/test_ranges.py walk the whole
  command tree);
* sizes derived from inputs: ``check_image_size``, ``check_frame_count``, ``check_samples``
  against ``LIMITS``, never a MemoryError an hour in;
* outputs: ``guard_outputs`` refuses an output that is (or would overwrite) an input, a model
  file, another output of the same run, a folder, or sits in a missing or read-only folder;
* values: ``check_finite_array`` for loaded arrays (latents, pivots, PCA bases) and
  ``check_finite_loss`` inside optimisation and training loops (a NaN loss stops the run, naming
  the step, before anything is written).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkcli.constants import SAMPLE_RATE
from talkcli.errors import InputFileError, UserError
from talkcli.ranges import SEED_MAX as SEED_MAX  # --seed's max; its home is talkcli.ranges


@dataclass(frozen=True)
class Limits:
    """Sizes talkcli refuses up front (each message names the limit)."""

    image_pixels: int = 100_000_000  # 10000 x 10000; PIL's bomb check starts at 89 Mpx
    video_frames: int = 216_000  # 2 hours at 30 fps, after resampling to --fps
    audio_samples: int = 4 * 3600 * SAMPLE_RATE  # four hours at 16 kHz (~0.9 GB as float32)
    frames_bytes: int = 4 << 30  # decoded frames a command holds in memory at once (invert, PTI)
    batch_jobs: int = 1_000_000  # jobs in one list (animate --jobs, --all-pairs); planned in ~1 min
    eval_bytes: int = 8 << 30  # estimated working memory of one `evaluate` batch of frames
    dataset_videos: int = 1_000_000  # input videos of one `train prepare` (planned in seconds)


LIMITS = Limits()


# -- numbers --------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_number(
    option: str,
    value: float | int | None,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
) -> float | int | None:
    """``value`` if it is finite and in [lo, hi] (``lo_open``: (lo, hi]); None passes through.

    For library callers that bypass the CLI (which checks ranges itself); the message names the
    option: ``--lr nan: expected a finite number in (0, 10]``.
    """
    if value is None:
        return None
    left = "(" if lo_open else "["
    low = _fmt(lo) if lo is not None else "-inf"
    high = _fmt(hi) if hi is not None else "inf"
    span = f"{left}{low}, {high}]"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{option} {value!r}: expected a number in {span}") from None
    bad = not math.isfinite(v)
    bad = bad or (lo is not None and (v <= lo if lo_open else v < lo))
    bad = bad or (hi is not None and v > hi)
    if bad:
        raise UserError(f"{option} {_fmt(value)}: expected a finite number in {span}")
    return value


def check_finite_loss(value: float, step: int, what: str) -> None:
    """Stop an optimisation whose loss became NaN or infinite (exit 2, nothing written)."""
    if not math.isfinite(float(value)):
        raise UserError(
            f"{what}: the loss became {float(value)} at step {step}; nothing was written "
            "(lower --lr, check the loss weights and the inputs)"
        )


def check_finite_array(array: Any, source: str | Path, what: str) -> None:
    """Refuse a loaded array (latents, pivots, a PCA basis) that holds NaN or infinite values."""
    import numpy as np

    a = np.asarray(array)
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise InputFileError(
            source, f"{what} hold {bad} NaN or infinite value(s)", "recreate the file"
        )


# -- sizes derived from inputs -------------------------------------------------------------------


def check_image_size(source: str | Path, width: int, height: int) -> None:
    """Refuse an image too large to process, before decoding it."""
    pixels = int(width) * int(height)
    if pixels > LIMITS.image_pixels:
        raise InputFileError(
            source,
            f"image is {width}x{height} ({pixels / 1e6:.0f} Mpx), over talkcli's limit of "
            f"{LIMITS.image_pixels / 1e6:.0f} Mpx",
            "downscale it first (a face needs far fewer pixels)",
        )


def check_frame_count(source: str | Path, n_frames: float, fps: float) -> int:
    """Refuse a video that would yield more frames than ``LIMITS.video_frames`` at ``fps``."""
    n = int(math.ceil(n_frames))
    if n > LIMITS.video_frames:
        raise InputFileError(
            source,
            f"would give {n} frames at {fps:g} fps, over talkcli's limit of "
            f"{LIMITS.video_frames} per video",
            "cut it into shorter clips or lower --fps",
        )
    return n


def check_frames_in_memory(source: str | Path, n_frames: int, width: int, height: int) -> None:
    """Refuse to hold more than ``LIMITS.frames_bytes`` of decoded RGB frames in memory."""
    need = int(n_frames) * int(width) * int(height) * 3
    if need > LIMITS.frames_bytes:
        fit = max(LIMITS.frames_bytes // (int(width) * int(height) * 3), 1)
        raise InputFileError(
            source,
            f"{n_frames} frames of {width}x{height} need {need / 2**30:.1f} GiB in memory, over "
            f"talkcli's limit of {LIMITS.frames_bytes / 2**30:.0f} GiB",
            f"pass --max-frames {fit} or fewer",
        )


def check_samples(source: str | Path, seconds: float, sample_rate: int) -> None:
    """Refuse audio that would decode to more than ``LIMITS.audio_samples`` samples."""
    n = seconds * float(sample_rate)
    if n > LIMITS.audio_samples:
        hours = LIMITS.audio_samples / SAMPLE_RATE / 3600
        raise InputFileError(
            source,
            f"{seconds / 3600:.1f} h of audio at {sample_rate} Hz would decode to {n / 1e6:.0f} M "
            f"samples, over talkcli's limit of {LIMITS.audio_samples / 1e6:.0f} M "
            f"({hours:.0f} h at 16 kHz)",
            "cut it into shorter parts",
        )


# -- outputs --------------------------------------------------------------------------------------


def same_file(a: str | Path, b: str | Path) -> bool:
    """True if ``a`` and ``b`` name the same file (links and ``..`` resolved; hard links too)."""
    ka, kb = _file_key(Path(a).expanduser()), _file_key(Path(b).expanduser())
    return ka is not None and ka == kb


def _file_key(path: Path) -> tuple | None:
    """(device, inode) of an existing file, else its resolved path; None if unresolvable."""
    try:
        st = path.stat()
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        pass
    try:
        return ("path", str(path.resolve()))
    except (OSError, RuntimeError):  # a symlink loop
        return None
