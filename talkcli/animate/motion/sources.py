"""The three motions ``animate`` renders, each a ``Motion``: a stream of W+ chunks with its sound.

* ``audio_motion``: speech -> the audio model's displacements (``motion.audio``);
* ``driving_motion``: another face's clip -> pSp displacements from its neutral frame
  (``motion.driving``); the clip's sound becomes the soundtrack, cut to the video;
* ``replay_motion``: a saved trajectory (``talkcli.animate.trajectory.TrajectoryFile``), as it
  is, or re-shaped around the run's identity when ``--motion-scale``/``--smooth``/``--edit``
  are given.

Displacements are shaped the same way whatever their source (``shaping.compose``):
w_t = w_I + motion_scale * smooth(d_t) + edits.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talkcli.animate.motion.shaping import compose
from talkcli.animate.options import AnimateOptions

if TYPE_CHECKING:
    from talkcli.animate.motion.driving import DrivingSource
    from talkcli.animate.trajectory import TrajectoryFile
    from talkcli.io.audio import DecodedAudio
    from talkcli.models.audio2latent import Audio2Latent


@dataclass
class Motion:
    """A stream of W+ chunks to render, how long it is, and the video's sound."""

    chunks: Iterable[np.ndarray]  # W+ (n, n_latent, 512) float32, in frame order
    total: int  # frames the stream yields
    source: Path  # the file the motion comes from (named if it gives fewer frames)
    soundtrack: Path | None = None
    sound_seconds: float | None = None
    trim_audio: bool = False  # cut the soundtrack to the video's length
    driving: DrivingSource | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # issue 16: named controls (``motion.controls``): an (n, K) stream measured from a driving
    # clip or recorded in a replayed trajectory, and the applied controls' listeners once wrapped
    external_controls: Iterable[np.ndarray] | None = None
    external_in_frames: bool = False  # the frames already hold the external controls
    controls: Any = None  # talkcli.animate.motion.controls.AppliedControls


def shaped(
    displacements: Iterable[np.ndarray],  # chunks (n, n_latent, 512)
    w_identity: np.ndarray,  # (n_latent, 512)
    opts: AnimateOptions,
    offset: np.ndarray | None,  # (n_latent, 512) from edit_offset
) -> Iterator[np.ndarray]:
    """``compose`` with the run's ``--motion-scale`` and ``--smooth``."""
    return compose(
        displacements, w_identity, motion_scale=opts.motion_scale, smooth=opts.smooth, offset=offset
    )


def audio_motion(
    model: Audio2Latent,
    audio: DecodedAudio,
    source: Path,
    w_identity: np.ndarray,  # (n_latent, 512)
    opts: AnimateOptions,
    offset: np.ndarray | None = None,
) -> Motion:
    """Speech -> W+: one frame per ``1 / fps`` s of audio; the speech is the soundtrack."""
    from talkcli.animate.motion.audio import audio_displacements
    from talkcli.audio.features import n_frames

    d = audio_displacements(model, audio, w_identity, opts.fps)
    return Motion(
        chunks=shaped(d, w_identity, opts, offset),
        total=n_frames(audio.n_samples, opts.fps),
        source=source,
        soundtrack=source,
        sound_seconds=audio.duration,
    )


def driving_motion(
    clip: Path,
    opts: AnimateOptions,
    models: Any,  # the run's models: encoder, detector
    tmp_dir: Path,
    w_identity: np.ndarray,  # (n_latent, 512)
    offset: np.ndarray | None = None,
) -> Motion:
    """A driving clip -> W+ (aligned first, unless ``--driving-aligned``; timed as
    ``driving_align``); the clip's own sound, if any, is the soundtrack, cut to the video."""
    from talkcli.animate.motion.driving import prepare_driving

    t = time.perf_counter()
    driving = prepare_driving(clip, opts, models, tmp_dir, opts.batch_size)
    timings = {"driving_align": time.perf_counter() - t}
    motion = Motion(
        chunks=shaped(driving.chunks(opts.fps), w_identity, opts, offset),
        total=driving.n_frames,
        source=clip,
        driving=driving,
        timings=timings,
    )
    if driving.has_audio:
        from talkcli.io.audio import probe_audio

        motion.soundtrack, motion.trim_audio = clip, True
        motion.sound_seconds = probe_audio(clip)["duration"]
    return motion


def replay_motion(
    traj: TrajectoryFile,
    source: Path,
    w_identity: np.ndarray,  # (n_latent, 512): the run's identity (the file's, without a photo)
    opts: AnimateOptions,
    offset: np.ndarray | None = None,
    *,
    soundtrack: Path | None = None,
    sound_seconds: float | None = None,
) -> Motion:
    """A saved trajectory -> W+: its frames unchanged, or, when the options move them, its
    displacements from its own identity shaped around ``w_identity``."""
    frames: Iterable[np.ndarray] = traj.chunks()
    recorded = traj.directions  # issue 16: controls recorded with the frames, or None
    if opts.moves and recorded is not None:  # reshape the audio motion only, not the controls
        from talkcli.animate.motion.controls import replay_displacement

        frames = replay_displacement(frames, traj.control_chunks(), recorded, -1)
    if opts.moves:
        d = (w - traj.w_identity[None] for w in frames)  # (n, n_latent, 512)
        chunks: Iterable[np.ndarray] = shaped(d, w_identity, opts, offset)
    else:
        chunks = frames
    motion = Motion(chunks, traj.n_frames, source, soundtrack, sound_seconds)
    if recorded is not None:
        motion.external_controls = traj.control_chunks()
        motion.external_in_frames = not opts.moves
    return motion
