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
