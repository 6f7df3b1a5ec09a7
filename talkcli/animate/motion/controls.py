"""Named controls on top of any motion (issue 16): blinks, head motion, static offsets, replays.

A run that uses ``--blinks``, ``--head-motion``, ``--control``/``--pose`` or ``--driving-mode
controls`` (or replays a trajectory that recorded controls) gets a ``ControlPlan``: the
directions file (``talkcli.models.directions``) and what to apply. Per frame the plan's
``ControlTrack`` sums, in the directions' name order (K controls, each in its unit):

* the static offsets (``--control NAME=VALUE``, ``--pose yaw=..,pitch=..,roll=..``);
* the blinks on ``eyes_open`` (``motion.blinks.BlinkTrack``);
* the head motion from the speech on ``yaw``/``pitch``/``roll`` (``motion.head.HeadMotion``);
* an external stream of controls: measured from a driving clip (``--driving-mode controls``) or
  recorded in a replayed trajectory;

and ``apply_controls`` adds ``(c_k / per_unit_k) * d_k`` (``Directions.displacement``) to the
W+ frames of the motion, after ``--motion-scale``/``--smooth``/``--edit`` (which keep shaping only
the audio model's displacement). Listeners (``--save-trajectory``) receive the applied controls
(n, K) chunk by chunk. Everything streams: memory does not depend on the video's length.

Without any control option nothing here runs and no directions file is read, so the default
output stays byte for byte what it was.

Where the directions come from (``find_directions``): ``--directions FILE``; else the file
``talkcli directions find`` cached for this generator (``cached_directions_path(<cache root>,
<generator sha256>)``); else the registry's ``directions`` file in the weights folder; else a
one-line error saying to run ``talkcli directions find`` or pass ``--directions``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkcli.animate.motion.blinks import DEFAULT_EYES_OPEN, BlinkTrack
from talkcli.animate.motion.head import AXES, HeadMotion, speech_envelopes
from talkcli.errors import UserError
from talkcli.models.directions import (
    POSE_NAMES,
    Directions,
    cached_directions_path,
    load_directions,
)

DIRECTIONS_REGISTRY_NAME = "directions"
POSE_LIMIT_DEG = 90.0  # |--pose| and degree controls
RATIO_LIMIT = 10.0  # |--control| of ratio (and other) controls
DRIVING_NAMES = ("yaw", "pitch", "roll", "eyes_open", "mouth_open", "smile")

Listener = Callable[[np.ndarray], None]  # receives applied controls (n, K) float32


def parse_controls(controls: Iterable[str], pose: str | None) -> dict[str, float]:
    """``--control NAME=VALUE`` (repeatable, or comma-separated) and ``--pose yaw=..`` -> one
    ``{name: value}`` (values of a name given twice add up); ranges checked."""
    from talkcli.models.directions import parse_assignments

    values: dict[str, float] = {}
    for text in controls:
        for name, v in parse_assignments(text, "--control").items():
            values[name] = values.get(name, 0.0) + v
    if pose:
        got = parse_assignments(pose, "--pose")
        wrong = [n for n in got if n not in POSE_NAMES]
        if wrong:
            raise UserError(
                f"--pose {pose!r}: {', '.join(wrong)} is not a pose angle (use yaw, pitch, roll; "
                "other controls go in --control NAME=VALUE)"
            )
        for name, v in got.items():
            values[name] = values.get(name, 0.0) + v
    check_control_values(values)
    return values


def check_control_values(values: dict[str, float]) -> None:
    """Degrees within +-90, other units within +-10 (a one-line UserError otherwise)."""
    for name, v in values.items():
        limit = POSE_LIMIT_DEG if name in POSE_NAMES else RATIO_LIMIT
        if not np.isfinite(v) or abs(v) > limit:
            raise UserError(f"--control {name}={v:g}: must be within -{limit:g}..{limit:g}")


def find_directions(
    explicit: Path | None,
    cache_root: Path,
    generator_sha256: str | None,
    weights_dir: Path | None,
    why: str = "the control options",
) -> Path:
    """The directions file of a run (see the module docstring for the order)."""
    from talkcli.io.files import require_file
    from talkcli.weights import registry

    if explicit is not None:
        return require_file(explicit, "directions file")
    if generator_sha256:
        cached = cached_directions_path(cache_root, generator_sha256)
        if cached.is_file():
            return cached
    found = registry.locate(DIRECTIONS_REGISTRY_NAME, weights_dir)
    if found is not None:
        registry.note_in_use(found)
        return found
    raise UserError(
        f"{why} need a directions file for this generator: run `talkcli directions find` "
        "(or pass --directions FILE)"
    )


def identity_eyes_open(align_meta: dict[str, Any] | None) -> tuple[float, str]:
    """The identity's open-eye ratio from its 68 alignment landmarks, and where it came from;
    ``DEFAULT_EYES_OPEN`` when there are none (5 points, an aligned photo, a trajectory)."""
    from talkcli.face.measures import eye_aspect_ratio

    points = (align_meta or {}).get("landmarks")
    if points is not None and np.asarray(points).shape == (68, 2):
        value = float(eye_aspect_ratio(np.asarray(points, dtype=np.float64)))
        if np.isfinite(value) and 0.1 <= value <= 0.6:
            return value, "measured"
    return DEFAULT_EYES_OPEN, "default"


class _Rows:
    """An iterator of (n, K) chunks re-cut to any requested number of rows."""

    def __init__(self, chunks: Iterable[np.ndarray], k: int) -> None:
        self._it = iter(chunks)
        self._buf = np.zeros((0, k), dtype=np.float64)

    def take(self, count: int) -> np.ndarray:
        while len(self._buf) < count:
            nxt = next(self._it, None)
            if nxt is None:
                raise ValueError(f"the control stream ended {count - len(self._buf)} rows early")
            self._buf = np.concatenate([self._buf, np.asarray(nxt, dtype=np.float64)])
        out, self._buf = self._buf[:count], self._buf[count:]
        return out


@dataclass
class ControlPlan:
    """What a run applies through its directions (built before any work, checked up front)."""

    directions: Directions
    source: str  # the directions file, or "trajectory" for a replayed file's own
    static: dict[str, float] = field(default_factory=dict)
    blinks: float = 0.0  # per minute
    head_motion: float = 0.0  # SCALE
    seed: int = 0
    driving: bool = False  # --driving-mode controls
    notes: list[str] = field(default_factory=list)

    def check(self) -> ControlPlan:
        """Every control asked for exists in the directions (one-line error naming it)."""
        for name in self.static:
            self.directions.index(name)
        if self.blinks > 0:
            self.directions.index("eyes_open")
        if self.head_motion > 0:
            if not any(n in self.directions.names for n in AXES):
                self.directions.index("yaw")  # the error lists what the file has
            missing = [n for n in AXES if n not in self.directions.names]
            if missing:
                self.notes.append(f"--head-motion: no {', '.join(missing)} direction; not moved")
        return self

    def static_row(self) -> np.ndarray:
        """(K,) the static offsets in the directions' order."""
        row = np.zeros(len(self.directions.names), dtype=np.float64)
        for name, v in self.static.items():
            row[self.directions.index(name)] += v
        return row


class ControlTrack:
    """Per-frame controls (n, K) float64 of a plan, frame range after frame range, in order."""

    def __init__(
        self,
        plan: ControlPlan,
        fps: float,
        *,
        open_value: float = DEFAULT_EYES_OPEN,
        audio: Any = None,  # a SampleSource (DecodedAudio) for --head-motion
        external: Iterable[np.ndarray] | None = None,  # (n, K) driving or replayed controls
        external_in_frames: bool = False,  # the frames hold them already (an unchanged replay)
    ) -> None:
        d = plan.directions
        self.k = len(d.names)
        self.fps = float(fps)
        self.static = plan.static_row()  # (K,)
        self.blinks = BlinkTrack(plan.blinks, fps, plan.seed, open_value) if plan.blinks else None
        self.eyes = d.names.index("eyes_open") if plan.blinks else -1
        self.head = None
        if plan.head_motion > 0:
            if audio is None:
                raise UserError("--head-motion follows the speech: pass --audio")
            self.head = HeadMotion(plan.head_motion, fps, plan.seed)
            self.axes = [(i, d.names.index(n)) for i, n in enumerate(AXES) if n in d.names]
        self.audio = audio
        self.external = _Rows(external, self.k) if external is not None else None
        self.external_in_frames = external_in_frames
        self.frame = 0

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Controls of the next ``count`` frames: (all (count, K) float64, the part to add to
        the frames, or None when the frames already hold them all)."""
        c = np.repeat(self.static[None], count, axis=0)  # (count, K)
        if self.blinks is not None:
            c[:, self.eyes] += self.blinks.values(self.frame, count)
        if self.head is not None:
            angles = self.head.step(speech_envelopes(self.audio, self.frame, count, self.fps))
            for axis, k in self.axes:
                c[:, k] += angles[:, axis]
        added: np.ndarray | None = c.copy()
        if self.external is not None:
            ext = self.external.take(count)
            c += ext
            if not self.external_in_frames:
                added = c
        if self.external_in_frames and not np.any(added):
            added = None  # an unchanged replay: its frames stay bit for bit
        self.frame += count
        return c, added


def apply_controls(
    chunks: Iterable[np.ndarray],  # W+ (n, n_latent, 512)
    directions: Directions,
    track: ControlTrack,
    listeners: list[Listener],
) -> Iterator[np.ndarray]:
    """W+ chunks + ``directions.displacement(controls)`` frame by frame; each chunk's controls
    (n, K) float32 go to ``listeners`` (read at iteration time: add them before rendering)."""
    for w in chunks:
        c, added = track.take(len(w))  # (n, K)
        for listener in listeners:
            listener(c.astype(np.float32))
        if added is None:
            yield w
            continue
        yield (w + directions.displacement(added.astype(np.float32))).astype(np.float32, copy=False)


@dataclass
class AppliedControls:
    """The controls a motion applies: their directions and who receives them per chunk."""

    directions: Directions
    listeners: list[Listener] = field(default_factory=list)
    plan: ControlPlan | None = None

    def describe(self) -> dict[str, Any]:
        """The manifest's ``controls`` block."""
        p = self.plan
        out: dict[str, Any] = {"names": list(self.directions.names)}
        if p is not None:
            out.update(
                directions=p.source,
                static=dict(p.static),
                blinks_per_min=p.blinks,
                head_motion=p.head_motion,
                driving=p.driving,
                notes=list(p.notes),
            )
        return out


def controlled_motion(
    motion: Any,  # talkcli.animate.motion.Motion
    plan: ControlPlan,
    fps: float,
    *,
    open_value: float = DEFAULT_EYES_OPEN,
    audio: Any = None,  # SampleSource for --head-motion
) -> Any:
    """``motion`` with the plan's controls added to its frames (``motion.controls`` set)."""
    track = ControlTrack(
        plan,
        fps,
        open_value=open_value,
        audio=audio,
        external=motion.external_controls,
        external_in_frames=motion.external_in_frames,
    )
    applied = AppliedControls(plan.directions, plan=plan)
    motion.chunks = apply_controls(motion.chunks, plan.directions, track, applied.listeners)
    motion.controls = applied
    return motion


def replay_displacement(
    chunks: Iterable[np.ndarray], controls: Iterable[np.ndarray], directions: Directions, sign: int
) -> Iterator[np.ndarray]:
    """W+ chunks with ``sign * directions.displacement(controls)`` (a replayed trajectory's
    recorded controls taken out, -1, before reshaping its audio motion)."""
    rows = _Rows(controls, len(directions.names))
    for w in chunks:
        c = rows.take(len(w)).astype(np.float32)
        yield (w + np.float32(sign) * directions.displacement(c)).astype(np.float32, copy=False)


def same_directions(a: Directions, b: Directions) -> bool:
    """The same names, calibration and vectors (a replay may add controls only through the
    directions its recorded ones went through)."""
    return (
        a.names == b.names
        and np.array_equal(a.per_unit, b.per_unit)
        and a.directions.shape == b.directions.shape
        and np.array_equal(a.directions, b.directions)
    )


def load_plan_directions(path: Path, latent_shape: tuple[int, int]) -> Directions:
    """``load_directions`` checked against the generator's W+ shape."""
    return load_directions(path, *latent_shape)
