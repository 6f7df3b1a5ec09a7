"""LSE-C/LSE-D through syncnet_python's own file round trips (``--lse-protocol syncnet``).

The default protocol (``direct``, ``talkcli.metrics.sync``) scores face crops cut from the
decoded frames. Published LSE numbers come from joonson/syncnet_python's scripts, whose frames
and crops pass through lossy files first; this module reproduces those steps so the numbers can
be matched (the SyncNet computation itself is ``talkcli.metrics.sync``'s, shared):

``run_pipeline.py``
  1. ``ffmpeg -y -i VIDEO -qscale:v 2 -async 1 -r 25 video.avi`` (AVI: MPEG-4 part 2 video at
     quantiser 2, the muxer's default audio codec, MP3);
  2. ``ffmpeg -y -i video.avi -qscale:v 2 -threads 1 -f image2 %06d.jpg`` (JPEG frames);
  3. ``ffmpeg -y -i video.avi -ac 1 -vn -acodec pcm_s16le -ar 16000 audio.wav``;
  4. ``crop_video``: each JPEG read with ``cv2.imread`` (BGR), cropped (``sync.crop_face``),
     resized to 224 and written with ``cv2.VideoWriter`` (XVID, 25 fps); the audio cut to the
     track with ``ffmpeg -ss 0.000 -to T`` and muxed in with ``-c copy``;

``SyncNetInstance.evaluate`` (``run_syncnet.py``)
  5. ``ffmpeg -y -i crop.avi -threads 1 -f image2 %06d.jpg`` (JPEG at ffmpeg's default quality)
     and ``ffmpeg -y -i crop.avi -async 1 -ac 1 -vn -acodec pcm_s16le -ar 16000 audio.wav``;
  6. the JPEG crops (``cv2.imread``) and the 16-bit samples scored as in ``sync``.

Face boxes come from talkcli (the aligned frame's fixed box, or a detector run on the JPEG frames
of step 2), not syncnet_python's S3FD tracker and scene detection: the whole clip is one track.
Files live in a temporary folder removed afterwards; frames are read back in batches, so memory
stays bounded whatever the length.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from talkcli.constants import SAMPLE_RATE
from talkcli.errors import ExternalToolError, InputFileError
from talkcli.io.ffmpeg import run_ffmpeg
from talkcli.metrics.sync import SYNC_FPS, crop_face, lip_embeddings, lse_from_lip, smooth_boxes
from talkcli.models.syncnet import CROP_SIZE, SyncNet

READ_BATCH = 32
# boxes (n, 4) x1 y1 x2 y2 for n frames, from the (width, height) and a stream of RGB frames
BoxSource = Callable[[int, int, int, Iterator[np.ndarray]], np.ndarray]


def _jpegs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def _read_bgr(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path))  # (H, W, 3) uint8 BGR, as syncnet_python reads it
    if image is None:
        raise ExternalToolError(f"could not read back the temporary frame {path}")
    return image


def pipeline_files(video: Path, work: Path) -> tuple[list[Path], Path]:
    """Steps 1-3: the video re-encoded as run_pipeline.py does, its JPEG frames and 16 kHz WAV."""
    avi, frames, wav = work / "video.avi", work / "frames", work / "audio.wav"
    frames.mkdir()
    what = "re-encode the video as syncnet_python does"
    args = ["-y", "-i", str(video), "-qscale:v", "2", "-async", "1", "-r", str(SYNC_FPS)]
    run_ffmpeg([*args, str(avi)], what=what, input_path=video)
    jpeg = ["-y", "-i", str(avi), "-qscale:v", "2", "-threads", "1", "-f", "image2"]
    run_ffmpeg([*jpeg, str(frames / "%06d.jpg")], what="write its JPEG frames", input_path=video)
    rate = str(SAMPLE_RATE)
    audio = ["-y", "-i", str(avi), "-ac", "1", "-vn", "-acodec", "pcm_s16le", "-ar", rate]
    run_ffmpeg([*audio, str(wav)], what="extract its audio", input_path=video)
    return _jpegs(frames), wav


def write_crop_video(frames: list[Path], xys: np.ndarray, wav: Path, work: Path) -> Path:
    """Step 4: the crops as an XVID AVI (cv2.VideoWriter, as crop_video) with the track's audio."""
    import cv2

    silent, cut, out = work / "cropt.avi", work / "crop_audio.wav", work / "crop.avi"
    writer = cv2.VideoWriter(
        str(silent), cv2.VideoWriter_fourcc(*"XVID"), SYNC_FPS, (CROP_SIZE, CROP_SIZE)
    )
    if not writer.isOpened():
        raise ExternalToolError("OpenCV cannot write XVID video here (its FFmpeg backend is off)")
    try:
        for path, xys_i in zip(frames, xys, strict=True):
            writer.write(crop_face(_read_bgr(path), *xys_i))
    finally:
        writer.release()
    end = len(frames) / SYNC_FPS
    run_ffmpeg(
        ["-y", "-i", str(wav), "-ss", "0.000", "-to", f"{end:.3f}", str(cut)],
        what="cut the audio to the face track",
        input_path=wav,
    )
    run_ffmpeg(
        ["-y", "-i", str(silent), "-i", str(cut), "-c:v", "copy", "-c:a", "copy", str(out)],
        what="mux the face track",
        input_path=silent,
    )
    return out


def crop_files(crop_video: Path, work: Path) -> tuple[list[Path], Path]:
    """Step 5: the crop video's JPEG frames (default quality) and its audio, as evaluate()."""
    frames, wav = work / "crops", work / "crop.wav"
    frames.mkdir()
    jpeg = ["-y", "-i", str(crop_video), "-threads", "1", "-f", "image2"]
    run_ffmpeg(
        [*jpeg, str(frames / "%06d.jpg")], what="write the crop frames", input_path=crop_video
    )
    audio = ["-y", "-i", str(crop_video), "-async", "1", "-ac", "1", "-vn", "-acodec", "pcm_s16le"]
    run_ffmpeg(
        [*audio, "-ar", str(SAMPLE_RATE), str(wav)],
        what="extract the crop audio",
        input_path=crop_video,
    )
    return _jpegs(frames), wav


def _rgb_batches(frames: list[Path]) -> Iterator[np.ndarray]:
    """The JPEG files as (B, H, W, 3) uint8 RGB batches (``lip_embeddings`` flips to BGR)."""
    for s in range(0, len(frames), READ_BATCH):
        yield np.stack([_read_bgr(p)[..., ::-1] for p in frames[s : s + READ_BATCH]])


def protocol_crops(video: Path, boxes: BoxSource, max_frames: int | None, work: Path) -> Path:
    """Steps 1-4: the crop video syncnet_python's run_pipeline.py would write for ``video``."""
    frames, wav = pipeline_files(video, work)
    if max_frames is not None:
        frames = frames[:max_frames]
    if not frames:
        raise InputFileError(video, "gave no frames at 25 fps", "is it a complete video?")
    height, width = _read_bgr(frames[0]).shape[:2]
    rgb = (_read_bgr(p)[..., ::-1] for p in frames)  # RGB, as the detectors take them
    xys = smooth_boxes(boxes(len(frames), width, height, rgb))  # (T, 3)
    return write_crop_video(frames, xys, wav, work)


def lse_syncnet_protocol(
    video: Path, boxes: BoxSource, net: SyncNet, max_frames: int | None = None
) -> dict[str, float | int]:
    """LSE-D, LSE-C and the offset of ``video`` through syncnet_python's file round trips."""
    from talkcli.io.audio import load_audio

    with tempfile.TemporaryDirectory(prefix="talkcli-syncnet-") as tmp:
        work = Path(tmp)
        crops, wav = crop_files(protocol_crops(video, boxes, max_frames, work), work)
        audio = load_audio(wav)  # the 16-bit samples / 32768: float_to_pcm16 gives them back
        lip = lip_embeddings(_rgb_batches(crops), net)  # (frames - 4, D)
        try:
            return lse_from_lip(lip, len(crops), audio, net)
        except ValueError as exc:
            raise InputFileError(video, f"LSE: {exc}") from None
