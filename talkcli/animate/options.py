"""Options of an ``animate`` run: one dataclass shared by the CLI, batch rows and library callers.

``AnimateOptions.check()`` enforces the same ranges as the command's options (library callers and
``--jobs`` rows bypass typer); ``shaping()`` lists the options that change the output video, which
the run manifest records and ``--resume`` compares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talkcli.device import DTYPE_CHOICES as DTYPES  # auto, fp32, fp16, bf16
from talkcli.errors import UserError
from talkcli.guards import check_number
from talkcli.ranges import ANIMATE as ANIMATE_RANGES
from talkcli.ranges import Range

DETECTORS = ("auto", "fan", "mtcnn")
DRIVING_MODES = ("latent", "controls")  # issue 16: --driving-mode
DEFAULT_PRESET = "veryfast"  # = talkcli.io.video.DEFAULT_PRESET (this module stays light)
RESOLUTIONS = (256, 512, 1024)  # --resolution choices (the library takes any power of two)
PREVIEW_RESOLUTION = 256  # --preview: clamped to the generator's size (tiny packs)
PREVIEW_SECONDS = 5.0
PREVIEW_PRESET = "ultrafast"
EDIT_STRENGTH_MAX = 100.0
# Frames per chunk of the W+ streams (audio-model call, trajectory file read): 5 s at 25 fps,
# bounded memory and good batching. Not an option: the video does not depend on it.
CHUNK_FRAMES = 125

# Ranges shared by the CLI (typer min=/max=) and check() for library callers and --jobs rows.
RANGES: dict[str, Range] = ANIMATE_RANGES


@dataclass(frozen=True)
class Edit:
    """``--edit FILE:STRENGTH``: a W or W+ direction added to every frame, times ``strength``."""

    path: Path
    strength: float

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "strength": self.strength}


def parse_edit(text: str) -> Edit:
    """``"smile.npy:1.5"`` -> Edit; the strength is after the last colon."""
    file, sep, strength = str(text).rpartition(":")
    if not sep or not file:
        raise UserError(f"--edit {text!r}: expected FILE:STRENGTH, e.g. smile.npy:1.5")
    try:
        value = float(strength)
    except ValueError:
        raise UserError(f"--edit {text!r}: the strength {strength!r} is not a number") from None
    check_number("--edit strength", value, -EDIT_STRENGTH_MAX, EDIT_STRENGTH_MAX)
    return Edit(Path(file).expanduser(), value)


_LAYERS_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


def parse_layers(text: str) -> tuple[int, int]:
    """``"A-B"`` (or ``"A"``) -> (A, B), style layers counted from 0, both included."""
    m = _LAYERS_RE.match(str(text))
    if not m:
        raise UserError(f"--edit-layers {text!r}: expected A-B, e.g. 0-7 (layers count from 0)")
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) is not None else a
    if b < a:
        raise UserError(f"--edit-layers {text}: the first layer must not exceed the last")
    return a, b


@dataclass
class AnimateOptions:
    """Everything that shapes one video (see ``talkcli animate --help`` for each)."""

    fps: float = 25.0
    motion_scale: float = 1.0
    feature_model: str | None = None  # Wav2Vec2/HuBERT folder of an SSL audio model (issue 17)
    smooth: float = 0.0  # Gaussian sigma in frames on the displacements; 0 = off
    seed: int = 0
    batch_size: int = 4
    dtype: str = "auto"  # talkcli.device.resolve_dtype: bf16 where native, else fp32
    compile: str = "auto"  # talkcli.compiled: torch.compile of the synthesis where it pays
    crf: int = 18
    preset: str = DEFAULT_PRESET
    paste_back: bool = False
    feather: float = 0.1
    aligned: bool = False
    landmarks: Path | None = None
    detector: str = "auto"
    face_index: int | None = None
    tune: bool = False
    tune_steps: int = 350  # PTIConfig's default
    edits: list[Edit] = field(default_factory=list)
    edit_layers: tuple[int, int] | None = None
    driving_neutral: int = 0
    driving_aligned: bool = False
    resolution: int | None = None  # frame size: None = the generator's (stops synthesis early)
    preview_seconds: float | None = None  # render only the first N seconds (None: all)
    preview: bool = False  # --preview: the resolution is clamped to the generator's size

    def as_preview(self, seconds: float = PREVIEW_SECONDS) -> AnimateOptions:
        """``--preview``: 256 (or the generator's size if smaller), the first ``seconds``,
        x264 ultrafast (unless another ``--preset`` was asked for); -> a new options object."""
        from dataclasses import replace

        return replace(
            self,
            preview=True,
            resolution=self.resolution or PREVIEW_RESOLUTION,
            preview_seconds=seconds if self.preview_seconds is None else self.preview_seconds,
            preset=PREVIEW_PRESET if self.preset == DEFAULT_PRESET else self.preset,
        )

    def frame_resolution(self, size: int) -> int | None:
        """The resolution to render for a generator of ``size`` (None: its full size)."""
        if self.resolution is None:
            return None
        return min(int(self.resolution), int(size)) if self.preview else int(self.resolution)

    # issue 16: named controls through a directions file (defaults: none, today's output)
    directions: Path | None = None  # --directions FILE (else the cached / registry file)
    blinks: float = 0.0  # --blinks PER_MIN
    head_motion: float = 0.0  # --head-motion SCALE
    controls: dict[str, float] = field(default_factory=dict)  # --control / --pose, in units
    driving_mode: str = "latent"  # --driving-mode latent|controls

    def check(self) -> AnimateOptions:
        """Ranges and choices (one-line UserError naming the option); returns self."""
        for name, (lo, hi) in RANGES.items():
            check_number("--" + name.replace("_", "-"), getattr(self, name), lo, hi)
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        from talkcli.compiled import check_compile_mode
        from talkcli.io.video import X264_PRESETS

        check_compile_mode(self.compile)

        if self.preset not in X264_PRESETS:
            raise UserError(f"--preset {self.preset!r}: expected one of {', '.join(X264_PRESETS)}")
        if self.detector not in DETECTORS:
            raise UserError(f"--detector {self.detector!r}: expected one of {', '.join(DETECTORS)}")
        if self.resolution is not None and (
            int(self.resolution) < 4 or int(self.resolution) & (int(self.resolution) - 1)
        ):
            raise UserError(f"--resolution {self.resolution}: expected a power of two, e.g. 256")
        if self.aligned and self.landmarks is not None:
            raise UserError("--aligned and --landmarks exclude each other (an aligned photo)")
        for edit in self.edits:
            check_number("--edit strength", edit.strength, -EDIT_STRENGTH_MAX, EDIT_STRENGTH_MAX)
        if self.edit_layers is not None and self.edit_layers[0] > self.edit_layers[1]:
            raise UserError(f"--edit-layers {self.edit_layers}: the first exceeds the last")
        self._check_controls()
        return self

    def _check_controls(self) -> None:
        """issue 16: --driving-mode and the --control/--pose values."""
        if self.driving_mode not in DRIVING_MODES:
            raise UserError(
                f"--driving-mode {self.driving_mode!r}: expected one of {', '.join(DRIVING_MODES)}"
            )
        from talkcli.animate.motion.controls import check_control_values

        check_control_values(self.controls)

    @property
    def uses_controls(self) -> bool:
        """Whether the run applies named controls (then, and only then, directions are read)."""
        return bool(
            self.blinks > 0
            or self.head_motion > 0
            or self.controls
            or self.driving_mode == "controls"
        )

    def _shaping_controls(self) -> dict[str, Any]:
        """issue 16's options for the manifest, only when used (older manifests still match)."""
        if not self.uses_controls:
            return {}
        return {
            "directions": str(self.directions) if self.directions else None,
            "blinks": float(self.blinks),
            "head_motion": float(self.head_motion),
            "controls": {k: float(v) for k, v in sorted(self.controls.items())},
            "driving_mode": self.driving_mode,
        }

    def shaping(self) -> dict[str, Any]:
        """The options that change the video (manifest ``options``; ``--resume`` compares)."""
        return {
            "fps": float(self.fps),
            "motion_scale": float(self.motion_scale),
            "smooth": float(self.smooth),
            "seed": int(self.seed),
            "batch_size": int(self.batch_size),
            "dtype": self.dtype,
            "crf": int(self.crf),
            "preset": self.preset,
            "paste_back": bool(self.paste_back),
            "feather": float(self.feather),
            "aligned": bool(self.aligned),
            "landmarks": str(self.landmarks) if self.landmarks else None,
            "detector": self.detector,
            "face_index": self.face_index,
            "tune": bool(self.tune),
            "tune_steps": int(self.tune_steps) if self.tune else None,
            "edits": [e.as_dict() for e in self.edits],
            "edit_layers": list(self.edit_layers) if self.edit_layers else None,
            "driving_neutral": int(self.driving_neutral),
            "driving_aligned": bool(self.driving_aligned),
            **({"resolution": int(self.resolution)} if self.resolution is not None else {}),
            **({"preview": True} if self.preview else {}),
            **(
                {"preview_seconds": float(self.preview_seconds)}
                if self.preview_seconds is not None
                else {}
            ),
            **self._shaping_controls(),
        }

    @property
    def moves(self) -> bool:
        """Whether displacements are transformed (else frames use the trajectory unchanged)."""
        return self.motion_scale != 1.0 or self.smooth > 0 or bool(self.edits)
