"""Video-driven animation (``--driving clip.mp4``): the motion of another face drives the identity.

The driving clip is aligned frame by frame (``talkcli.face.align.align_video_file``: detection,
STIT smoothing of the crop over time) at pSp's input size into a temporary folder, or taken as
it is with ``--driving-aligned``; its frames are encoded by pSp in batches and their
displacements from the neutral frame (the first, or ``--driving-neutral N``) are added to the
identity code: w_t = w_I + (E(x_t) - E(x_N)). Frames stream from ffmpeg in batches, so memory
stays bounded; the clip's audio becomes the soundtrack.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talkcli.animate.options import AnimateOptions
from talkcli.errors import InputFileError

ENCODER_SIZE = 256  # pSp's input: the driving faces are aligned and read at this size


@dataclass
class DrivingSource:
    """A driving clip ready to stream: ``n_frames`` displacements from ``chunks()``."""

    clip: Path
    aligned: Path  # the aligned clip actually read
    n_frames: int
    has_audio: bool
    neutral: int
    detector: str
    models: Any
    batch_size: int

    def _reader(self, fps: float):
        from talkcli.io.video import VideoReader

        return VideoReader(self.aligned, fps=fps, size=(ENCODER_SIZE, ENCODER_SIZE))

    def chunks(self, fps: float) -> Iterator[np.ndarray]:
        """Displacements (n, n_latent, 512) float32, E(x_t) - E(x_neutral), in clip order."""
        import torch

        E = self.models.encoder()
        b = self.batch_size
        with torch.no_grad(), self._reader(fps) as reader:
            # The neutral code is taken from the batch that holds the neutral frame, encoded as
            # the stream below encodes it, so that frame's displacement is exactly zero.
            start = 0
            batch = reader.read_batch(b)
            while len(batch) and start + len(batch) <= self.neutral:
                start += len(batch)
                batch = reader.read_batch(b)
            if start + len(batch) <= self.neutral:
                raise InputFileError(
                    self.clip,
                    f"--driving-neutral {self.neutral}: the clip has only {start + len(batch)} "
                    "frames",
                )
            codes = E.encode_images(batch).float().cpu().numpy()  # (b, n_latent, 512)
            w_neutral = codes[self.neutral - start]
        with torch.no_grad(), self._reader(fps) as reader:
            while True:
                batch = reader.read_batch(self.batch_size)  # (b, 256, 256, 3)
                if not len(batch):
                    return
                codes = E.encode_images(batch).float().cpu().numpy()  # (b, n_latent, 512)
                yield (codes - w_neutral[None]).astype(np.float32)


def prepare_driving(
    clip: Path,
    opts: AnimateOptions,
    models: Any,  # talkcli.animate.pipeline.Models
    tmp_dir: Path,
    batch_size: int = 8,
) -> DrivingSource:
    """Align the driving clip (unless ``--driving-aligned``) and count its frames at
    ``opts.fps``; refuses a ``--driving-neutral`` beyond the clip."""
    from talkcli.guards import check_frame_count
    from talkcli.io.video import VideoReader, probe_video

    info = probe_video(clip)
    check_frame_count(clip, info.duration * opts.fps, opts.fps)
    if opts.driving_aligned:
        if info.width != info.height:
            raise InputFileError(
                clip,
                f"is {info.width}x{info.height}, but an aligned clip is square",
                "drop --driving-aligned to align it",
            )
        aligned, detector = clip, "aligned"
        with VideoReader(clip, fps=opts.fps) as reader:
            n = len(reader)
    else:
        from talkcli.face.align import AlignConfig, Detectors, align_video_file

        cfg = AlignConfig(
            size=ENCODER_SIZE,
            detector=models.detector_backend(),
            fps=opts.fps,
            smooth=1.0,  # STIT: sigma 1 frame on the crop centre, 3 on its axes
            exact_warp=False,
            weights_dir=models.weights_dir,
            device=str(models.device),
        )
        detectors = Detectors(cfg)
        detectors._detector = models.detector()  # the run's detector, loaded once
        res = align_video_file(clip, tmp_dir, cfg, detectors)
        aligned, n, detector = res.output, res.frames, models.detector_backend()
    if n < 1:
        raise InputFileError(clip, "has no video frames")
    if opts.driving_neutral >= n:
        raise InputFileError(
            clip,
            f"--driving-neutral {opts.driving_neutral}: the clip has {n} frames at {opts.fps:g} "
            f"fps (0-{n - 1})",
        )
    return DrivingSource(
        clip=clip,
        aligned=Path(aligned),
        n_frames=int(n),
        has_audio=bool(info.has_audio),
        neutral=int(opts.driving_neutral),
        detector=detector,
        models=models,
        batch_size=batch_size,
    )


# -- --driving-mode controls (issue 16) ---------------------------------------------------------


@dataclass
class DrivingControls:
    """``--driving-mode controls``: the driving face's yaw, pitch, roll, eyes_open, mouth_open
    and smile measured per frame from its landmarks (``talkcli.face.measures``), taken relative
    to the neutral frame (``--driving-neutral``, the first by default), in the order of
    ``names`` (the directions'; names it cannot measure stay 0). Frames without a face hold the
    last measured values; with 5-point landmarks (MTCNN) only yaw and roll are measured."""

    clip: Path
    n_frames: int
    neutral: int
    detector: Any  # a LandmarkDetector
    names: tuple[str, ...]
    batch_size: int = 8
    face_index: int | None = None

    def _measure(self, frame: np.ndarray) -> np.ndarray | None:
        """(len(names),) float64 of one frame (NaN where not measurable), None without a face."""
        from talkcli.face.landmarks import choose_face
        from talkcli.face.measures import measure_face

        faces = self.detector.detect(frame)
        if not faces:
            return None
        face = choose_face(faces, self.face_index)
        values = measure_face(face.landmarks, frame.shape[:2])
        return np.array([values.get(n, np.nan) for n in self.names], dtype=np.float64)

    def _frames(self, fps: float) -> Iterator[np.ndarray]:
        from talkcli.io.video import VideoReader

        with VideoReader(self.clip, fps=fps) as reader:
            while True:
                batch = reader.read_batch(self.batch_size)  # (b, H, W, 3)
                if not len(batch):
                    return
                yield from batch

    def neutral_values(self, fps: float) -> np.ndarray:
        """The neutral frame's measures (a one-line error when it shows no face)."""
        for t, frame in enumerate(self._frames(fps)):
            if t == self.neutral:
                found = self._measure(frame)
                if found is None:
                    raise InputFileError(
                        self.clip,
                        f"no face in the neutral frame {self.neutral}",
                        "pick a frame with the face (--driving-neutral N)",
                    )
                return found
        raise InputFileError(self.clip, f"has no frame {self.neutral}")

    def chunks(self, fps: float, size: int = 32) -> Iterator[np.ndarray]:
        """Controls (n, K) float64 relative to the neutral frame, in clip order."""
        neutral = self.neutral_values(fps)
        last = np.zeros(len(self.names))
        rows: list[np.ndarray] = []
        for frame in self._frames(fps):
            m = self._measure(frame)
            if m is not None:
                rel = m - neutral
                last = np.where(np.isfinite(rel), rel, last)
            rows.append(last.copy())
            if len(rows) == size:
                yield np.stack(rows)
                rows = []
        if rows:
            yield np.stack(rows)


def driving_controls_motion(
    clip: Path,
    opts: AnimateOptions,
    models: Any,  # the run's models: the detector
    w_identity: np.ndarray,  # (n_latent, 512)
    offset: np.ndarray | None,  # (n_latent, 512) from --edit
    plan: Any,  # talkcli.animate.motion.controls.ControlPlan
) -> Any:
    """``--driving-mode controls``: the identity's code (plus ``--edit``) on every frame, moved
    only by the driving face's measured controls through the directions (so the driver's
    identity cannot leak); ``--smooth`` and ``--motion-scale`` shape those controls."""
    from talkcli.animate.motion.shaping import smooth_stream
    from talkcli.animate.motion.sources import Motion
    from talkcli.animate.options import CHUNK_FRAMES
    from talkcli.guards import check_frame_count
    from talkcli.io.video import VideoReader, probe_video

    info = probe_video(clip)
    check_frame_count(clip, info.duration * opts.fps, opts.fps)
    with VideoReader(clip, fps=opts.fps) as reader:
        n = len(reader)
    if n < 1:
        raise InputFileError(clip, "has no video frames")
    if opts.driving_neutral >= n:
        raise InputFileError(
            clip, f"--driving-neutral {opts.driving_neutral}: the clip has {n} frames (0-{n - 1})"
        )
    source = DrivingControls(
        clip, n, int(opts.driving_neutral), models.detector(), plan.directions.names,
        batch_size=int(opts.batch_size), face_index=opts.face_index,
    )  # fmt: skip
    if getattr(source.detector, "name", "") == "mtcnn":
        plan.notes.append("--driving-mode controls with MTCNN's 5 points: only yaw and roll")
    base = np.asarray(w_identity, dtype=np.float32)
    if offset is not None:
        base = base + offset

    def frames() -> Iterator[np.ndarray]:
        for a in range(0, n, CHUNK_FRAMES):
            yield np.repeat(base[None], min(CHUNK_FRAMES, n - a), axis=0)

    scale = float(opts.motion_scale)
    measured = (c * scale for c in smooth_stream(source.chunks(opts.fps), float(opts.smooth)))
    motion = Motion(chunks=frames(), total=n, source=clip, external_controls=measured)
    if info.has_audio:
        from talkcli.io.audio import probe_audio

        motion.soundtrack, motion.trim_audio = clip, True
        motion.sound_seconds = probe_audio(clip)["duration"]
    return motion
