"""Every numeric option's (min, max): one home for the CLI and the library configs.

The commands declare ``min=``/``max=`` from these tables (``talkcli.commands.options``) and the
library configs (``AlignConfig``, ``AnimateOptions``, ``EvalConfig``, ``FitConfig``,
``PrepareConfig``, ``ProjectionConfig``, ``PTIConfig``) check the same entries for callers that
bypass the CLI; ``tests/test_ranges.py`` walks the command tree and proves they agree.

Tables are keyed by command path (``COMMANDS``), then by the option's parameter name (the
dataclass field where the library has one). Bounds keep their literal type: an int option has int
bounds, a float option float bounds (messages print them with ``:g``). Layer 0: imports nothing
from talkcli.
"""

from __future__ import annotations

from typing import NamedTuple


class Range(NamedTuple):
    """Inclusive bounds of a numeric option."""

    lo: float
    hi: float


SEED_MAX = 2**32 - 1  # numpy's generators take 32-bit seeds

# shared by several commands
SEED = Range(0, SEED_MAX)
FPS = Range(1.0, 120.0)
SMOOTH = Range(0.0, 50.0)
FACE_INDEX = Range(0, 99)
L2_WEIGHT = Range(0.0, 1e6)

ALIGN: dict[str, Range] = {
    "size": Range(8, 4096),
    "fps": FPS,
    "detect_every": Range(1, 1000),
    "detect_batch": Range(1, 64),  # frames held for one detector call (memory: 64 source frames)
    "smooth": SMOOTH,
    "face_index": FACE_INDEX,
}

ANIMATE: dict[str, Range] = {
    "fps": FPS,
    "motion_scale": Range(-10.0, 10.0),
    "smooth": SMOOTH,
    "seed": SEED,
    "batch_size": Range(1, 256),
    "crf": Range(0, 51),
    "feather": Range(0.0, 0.5),
    "tune_steps": Range(0, 100_000),
    "face_index": FACE_INDEX,
    "driving_neutral": Range(0, 1_000_000),
    "preview_seconds": Range(0.1, 3600.0),
    # issue 16: named controls
    "blinks": Range(0.0, 60.0),  # per minute
    "head_motion": Range(0.0, 5.0),  # 1 = natural amplitude
}

EVALUATE: dict[str, Range] = {
    "fps": FPS,
    "resolution": Range(16, 4096),
    "max_frames": Range(1, 10_000_000),
    "batch": Range(1, 256),
    "threads": Range(1, 256),
    "seed": SEED,
}

INVERT: dict[str, Range] = {
    "steps": Range(0, 100_000),
    "first_steps": Range(0, 1_000_000),
    "lr": Range(1e-7, 10.0),
    "l2_weight": L2_WEIGHT,
    "batch_size": Range(1, 1024),
    "max_frames": Range(1, 100_000),
    "seed": SEED,
}

TUNE_PTI: dict[str, Range] = {
    "max_frames": Range(1, 10_000),
    "steps": Range(0, 100_000),
    "lr": Range(1e-8, 1.0),
    "l2_weight": L2_WEIGHT,
    "stop_lpips": Range(0.0, 1.0),
    "batch": Range(1, 256),
    "project_steps": Range(1, 100_000),
    "seed": SEED,
}

TRAIN_PREPARE: dict[str, Range] = {
    "fps": FPS,
    "align_size": Range(32, 1024),
    "smooth": SMOOTH,
    "speaker_level": Range(0, 32),
    "batch_size": Range(1, 4096),
    "seed": SEED,
    "feature_layer": Range(0, 64),  # hidden states of a Wav2Vec2/HuBERT model (large: 24)
}

TRAIN_PCA: dict[str, Range] = {
    "components": Range(1, 100_000),
    "max_frames": Range(2, 100_000_000),
}

TRAIN_FIT: dict[str, Range] = {
    "epochs": Range(1, 100_000),
    "batch_size": Range(1, 4096),
    "seq_len": Range(1, 2000),
    "lr": Range(1e-9, 1.0),
    "latent_weight": Range(0.0, 1e9),
    "lpips_weight": Range(0.0, 1e9),
    "lpips_frames": Range(0, 2000),
    "lpips_size": Range(16, 1024),
    "lr_decay": Range(0.01, 1.0),
    "lr_patience": Range(0, 10_000),
    "components": TRAIN_PCA["components"],
    "pca_frames": Range(2, 100_000_000),
    "seed": SEED,
    "workers": Range(0, 64),
    "steps_per_epoch": Range(0, 1_000_000_000),
    "identity_dropout": Range(0.0, 1.0),
    "identity_augment": Range(0.0, 1.0),
}

MEDIA_TO_WAV: dict[str, Range] = {"rate": Range(8000, 192_000)}

WEIGHTS_TINY: dict[str, Range] = {"size": Range(16, 1024), "seed": SEED}

DIRECTIONS_FIND: dict[str, Range] = {
    "samples": Range(16, 1_000_000),
    "seed": SEED,
    "truncation": Range(0.05, 1.0),
    "batch_size": Range(1, 256),
    "detect_size": Range(32, 1024),
    "calibrate_samples": Range(2, 10_000),
    "calibrate_step": Range(0.01, 10.0),
}

DIRECTIONS_FROM_LABELS: dict[str, Range] = {"seed": SEED}

COMMANDS: dict[str, dict[str, Range]] = {
    "align": ALIGN,
    "animate": ANIMATE,
    "evaluate run": EVALUATE,
    "invert": INVERT,
    "tune-pti": TUNE_PTI,
    "train prepare": TRAIN_PREPARE,
    "train pca": TRAIN_PCA,
    "train fit": TRAIN_FIT,
    "media to-wav": MEDIA_TO_WAV,
    "weights tiny": WEIGHTS_TINY,
    "directions find": DIRECTIONS_FIND,
    "directions from-labels": DIRECTIONS_FROM_LABELS,
}


def option_name(field: str) -> str:
    """The CLI spelling of a parameter name: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")
