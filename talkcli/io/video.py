"""Streaming video I/O through ffmpeg pipes: probe, read frames, write H.264 with optional audio.

* ``probe_video`` reads ffprobe's JSON when an ffprobe is found, else (imageio-ffmpeg ships
  none) it parses ``ffmpeg -i``'s stream dump and counts the video packets with a stream copy to
  the null muxer; either way no frame is decoded, and the packet count is the exact frame count
  for the usual codecs (H.264/HEVC/VP9/AV1/MJPEG store one frame per packet).
* ``VideoReader`` decodes to raw RGB24 on a pipe and yields (H, W, 3) uint8 frames one at a time
  (or in batches); ``fps=`` resamples with ffmpeg's ``fps`` filter, ``size=`` rescales.
* ``VideoWriter`` takes raw RGB24 frames on ffmpeg's stdin and encodes H.264 yuv420p (libx264) to
  a temporary name beside the output; ``close()`` checks that the file holds exactly the frames
  written, muxes the audio (AAC) if any, and renames it into place. On an error or Ctrl-C the
  temporary files are deleted, so a partial video never appears under the final name.

Audio muxing never uses ``-shortest``: the video keeps exactly the frames written and the audio is
kept whole (with a warning if it is longer than the video by more than one frame) unless
``trim_audio=True`` asks to cut it to the video's length. yuv420p needs even sizes: odd widths or
heights are refused with a clear error rather than padded, so what is read back is what was
written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, TypeVar

import numpy as np

from talkcli.errors import ExternalToolError, InputFileError, OutputError, UserError
from talkcli.io.audio import SAMPLE_RATE, audio_duration, save_wav
from talkcli.io.ffmpeg import (
    ffmpeg_command,
    has_encoder,
    probe_json,
    raise_for_ffmpeg,
    run_ffmpeg,
)
from talkcli.io.files import (
    FILE_MODE,
    check_output_path,
    disk_full,
    require_file,
    temporary_sibling,
)

X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)
X264_TUNES = (
    "film",
    "animation",
    "grain",
    "stillimage",
    "fastdecode",
    "zerolatency",
    "psnr",
    "ssim",
)
log = logging.getLogger(__name__)  # notes and warnings; the CLI shows them (install_log_handler)
# Default x264 settings, chosen with benchmarks/bench_writer.py at 1024x1024 on 2 cores.
# Quiet machine (frames/s, file size for 100 frames): plain veryfast 55.8 (3.7 MB), veryfast +
# zerolatency 52.7 (10.5 MB), superfast 62.3 (12.8 MB), ultrafast 162 (14.1 MB). With other jobs
# on the cores, plain veryfast fell to 23-34 while zerolatency (sliced threads) held 31-36: pass
# tune="zerolatency" when the encoder shares a busy CPU; the default keeps files ~3x smaller.
DEFAULT_PRESET = "veryfast"
DEFAULT_TUNE: str | None = None
# Containers the writer produces (H.264 + AAC); the first is the recommended one.
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")
# Conversions RGB <-> YUV: accurate rounding and full chroma interpolation (cheap, less drift).
SWS_FLAGS = "bicubic+accurate_rnd+full_chroma_int"


@dataclass
class VideoInfo:
    """What ``probe_video`` learns about a file. ``duration`` is the video's: n_frames / fps."""

    path: Path
    width: int
    height: int
    fps: float
    n_frames: int
    duration: float
    has_audio: bool
    truncated: bool = False  # ffmpeg found the file cut short (frames listed but missing)


# ---------------------------------------------------------------------------------------------
# probing


def fps_fraction(fps: float) -> Fraction:
    """A frame rate as an exact fraction for ffmpeg: 25 -> 25/1, 29.97... -> 30000/1001."""
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def _parse_rate(text: str) -> float:
    """ffmpeg prints rates like "25", "29.97", "1k"; NTSC rates are rounded, snap them back."""
    value = float(text[:-1]) * 1000 if text.endswith("k") else float(text)
    for base in (24, 30, 48, 60, 120, 240):
        ntsc = base * 1000 / 1001
        if abs(value - ntsc) < 0.006:
            return ntsc
    return value


_STREAM = re.compile(r"^\s*Stream #0:\d+\S*: (Video|Audio): (.*)$")


def _parse_input_dump(stderr: str) -> dict:
    """Width, height, fps, rotation and audio presence from ``ffmpeg -i``'s dump of input #0."""
    facts: dict = {"has_audio": False}
    in_input = False
    in_video = False
    for line in stderr.splitlines():
        if line.startswith("Input #0"):
            in_input = True
            continue
        if in_input and (line.startswith(("Output #", "Stream mapping", "Input #1"))):
            break
        if not in_input:
            continue
        m = _STREAM.match(line)
        if m:
            kind, rest = m.groups()
            in_video = False
            if kind == "Audio":
                facts["has_audio"] = True
            elif "width" not in facts:  # first video stream (the one -map 0:v:0 picks)
                in_video = True
                size = re.search(r", (\d+)x(\d+)[ ,\[]", rest + " ")
                if size:
                    facts["width"], facts["height"] = int(size.group(1)), int(size.group(2))
                rate = re.search(r"([\d.]+k?) fps", rest) or re.search(r"([\d.]+k?) tbr", rest)
                if rate:
                    facts["fps"] = _parse_rate(rate.group(1))
            continue
        if in_video:
            rot = re.search(r"rotation of (-?[\d.]+) degrees", line, re.IGNORECASE)
            if rot:
                facts["rotation"] = float(rot.group(1))
    return facts


def _progress_frames(stdout: bytes) -> int | None:
    """The last ``frame=N`` of ffmpeg's ``-progress`` output."""
    found = re.findall(rb"^frame=\s*(\d+)", stdout, re.MULTILINE)
    return int(found[-1]) if found else None


def _no_video_stream(path: Path) -> InputFileError:
    return InputFileError(path, "has no video stream", "pass a video file")


def _count_frames(path: Path, video_filter: str | None = None) -> int:
    """Frames ffmpeg produces from the first video stream: packets (stream copy, no decoding),
    or, with ``video_filter``, frames out of that filter after decoding (exact, slower)."""
    codec = ["-vf", video_filter, "-fps_mode", "passthrough"] if video_filter else ["-c", "copy"]
    proc = run_ffmpeg(
        ["-i", str(path), "-map", "0:v:0", *codec, "-f", "null", "-", "-progress", "pipe:1"],
        what="count video frames",
        input_path=path,
        check=False,
    )
    if proc.returncode != 0 and b"matches no streams" in proc.stderr:
        raise _no_video_stream(path)
    raise_for_ffmpeg(proc.returncode, proc.stderr, what="read video", input_path=path)
    n = _progress_frames(proc.stdout)
    if n is None:
        raise ExternalToolError(f"{path}: ffmpeg reported no frame count")
    return n


def _banner_rate(rate: str | None) -> float | None:
    """An exact ffprobe rate ("30000/1001") at the precision ffmpeg's stream dump prints it
    (``print_fps``: 2 decimals, "k" for thousands), read back like the dump, so that both
    probing paths give the same fps; None for "0/0" (unknown)."""
    num, _, den = (rate or "").partition("/")
    try:
        value = float(Fraction(int(num), int(den or 1)))
    except (ValueError, ZeroDivisionError):
        return None
    if value <= 0:
        return None
    hundredths = round(struct.unpack("f", struct.pack("f", value * 100))[0])  # C's lrintf
    if not hundredths:
        text = f"{value:.4f}"
    elif hundredths % 100:
        text = f"{value:.2f}"
    elif hundredths % 100_000:
        text = f"{value:.0f}"
    else:
        text = f"{value / 1000:.0f}k"
    return _parse_rate(text)


def _stream_rotation(stream: dict) -> float | None:
    """Degrees of a stream's display matrix (ffprobe >= 5 side data, or the older rotate tag)."""
    for side in stream.get("side_data_list") or ():
        if "rotation" in side:
            return float(side["rotation"])
    rotate = (stream.get("tags") or {}).get("rotate")
    return -float(rotate) if rotate is not None else None


def _parse_probe_json(data: dict) -> dict:
    """What ``_parse_input_dump`` reads from the dump, from ffprobe's JSON instead (the first
    video stream's size, rate and rotation; audio presence), plus ``n_frames``: the packets of
    the first video stream (``-count_packets``), as the ffmpeg path counts them."""
    facts: dict = {"has_audio": False}
    first_video = True
    for stream in data.get("streams") or ():
        kind = stream.get("codec_type")
        if kind == "audio":
            facts["has_audio"] = True
        elif kind == "video":
            if first_video and "nb_read_packets" in stream:
                facts["n_frames"] = int(stream["nb_read_packets"])
            first_video = False
            if "width" in facts:
                continue
            if stream.get("width") and stream.get("height"):
                facts["width"], facts["height"] = int(stream["width"]), int(stream["height"])
            avg = _banner_rate(stream.get("avg_frame_rate"))
            rate = avg if avg is not None else _banner_rate(stream.get("r_frame_rate"))
            if rate is not None:
                facts["fps"] = rate
            rotation = _stream_rotation(stream)
            if rotation is not None:
                facts["rotation"] = rotation
    facts["has_video"] = not first_video
    return facts


def _probe_with_ffprobe(p: Path) -> dict | None:
    """Facts of ``p`` from ffprobe's JSON, or None (no ffprobe, or it failed: use ffmpeg)."""
    data = probe_json(p, count_packets=True)
    if data is None:
        return None
    facts = _parse_probe_json(data)
    if not facts.pop("has_video"):
        raise _no_video_stream(p)
    return facts if "n_frames" in facts else None


def _probe_with_ffmpeg(p: Path) -> dict:
    """Facts of ``p`` from ffmpeg alone: its stream dump, and the video packets counted by a
    stream copy to the null muxer (``-progress``), in one run."""
    proc = run_ffmpeg(
        ["-v", "info", "-i", str(p), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
        + ["-progress", "pipe:1", "-nostats"],
        what="read video",
        input_path=p,
        check=False,
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0 and "matches no streams" in stderr:
        raise _no_video_stream(p)
    raise_for_ffmpeg(
        proc.returncode, stderr, what="read video", input_path=p, hint="is it a video file?"
    )
    facts = _parse_input_dump(stderr)
    facts["n_frames"] = _progress_frames(proc.stdout) or 0
    facts["truncated"] = bool(_TRUNCATED.search(stderr))
    return facts


# what ffmpeg's demuxers say when a file ends before the data its header lists (mp4/mov:
# "partial file"; Matroska/WebM: "File ended prematurely"; others: "Truncating packet")
_TRUNCATED = re.compile(r"partial file|ended prematurely|truncating packet", re.IGNORECASE)


def probe_video(path: str | Path) -> VideoInfo:
    """Size, frame rate, exact frame count, duration and audio presence of a video file.

    Reads ffprobe's JSON when there is an ffprobe, else ffmpeg's stream dump (the same facts;
    ``TALKCLI_NO_FFPROBE=1`` forces the latter). Raises ``InputFileError`` for a missing, empty
    or unreadable file, a file with no video stream, or one with zero frames.
    """
    p = require_file(path, "video file")
    facts = _probe_with_ffprobe(p)
    if facts is None:
        facts = _probe_with_ffmpeg(p)
    if "width" not in facts:
        raise InputFileError(p, "could not read the video's frame size", "is it a video file?")
    width, height = facts["width"], facts["height"]
    if round(abs(facts.get("rotation", 0.0))) % 180 == 90:  # ffmpeg auto-rotates when decoding
        width, height = height, width
    fps = facts.get("fps")
    if not fps or fps <= 0:
        raise InputFileError(p, "could not read the video's frame rate", "is it a video file?")
    n_frames = facts["n_frames"]
    if n_frames == 0:
        raise InputFileError(p, "contains no video frames", "pass a complete video")
    return VideoInfo(
        path=p,
        width=width,
        height=height,
        fps=fps,
        n_frames=n_frames,
        duration=n_frames / fps,
        has_audio=facts["has_audio"],
        truncated=facts.get("truncated", False),
    )


# ---------------------------------------------------------------------------------------------
# reading


def _read_log(log) -> str:
    """Everything ffmpeg wrote to its stderr log file so far (empty if there is none)."""
    if log is None:
        return ""
    log.seek(0)
    return log.read().decode("utf-8", "replace")


class VideoReader:
    """Stream RGB frames, (H, W, 3) uint8, out of a video file through an ffmpeg pipe.

    >>> with VideoReader("in.mp4", fps=25, size=(256, 256)) as reader:
    ...     for frame in reader:          # (256, 256, 3) uint8
    ...         ...

    ``fps`` resamples the frame rate (ffmpeg's ``fps`` filter: frames are dropped or repeated),
    ``size`` = (W, H) rescales. ``info`` describes the file as stored; ``fps``, ``width``,
    ``height`` and ``len()`` describe the frames this reader yields. The reader is a single pass:
    iterating again continues where the last iteration stopped.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.info = probe_video(path)
        self.path = self.info.path
        self._resample = fps is not None and abs(fps - self.info.fps) > 1e-6 * self.info.fps
        self.fps = float(fps) if fps is not None else self.info.fps
        if fps is not None:
            fps_fraction(fps)  # validates
        if size is not None:
            w, h = (int(v) for v in size)
            if w <= 0 or h <= 0:
                raise ValueError(f"size must be positive (W, H), got {size}")
            self.width, self.height = w, h
        else:
            self.width, self.height = self.info.width, self.info.height
        self._rescale = (self.width, self.height) != (self.info.width, self.info.height)
        self._len: int | None = None if self._resample else self.info.n_frames
        self._proc: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None
        self._done = False
        self.frames_read = 0

    # -- ffmpeg process ------------------------------------------------------------------------
    def _fps_filter(self) -> str:
        return f"fps=fps={fps_fraction(self.fps)}"

    def _filters(self) -> list[str]:
        filters = []
        if self._resample:
            filters.append(self._fps_filter())
        if self._rescale:
            shrink = self.width <= self.info.width and self.height <= self.info.height
            algo = "area" if shrink else "bicubic"
            filters.append(f"scale={self.width}:{self.height}:flags={algo}+accurate_rnd")
        return filters

    def _start(self) -> subprocess.Popen:
        if self._proc is None:
            args = ["-i", str(self.path), "-map", "0:v:0", "-an", "-sn", "-dn"]
            filters = self._filters()
            if filters:
                args += ["-vf", ",".join(filters)]
            args += ["-sws_flags", SWS_FLAGS, "-fps_mode", "passthrough"]
            args += ["-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"]
            self._stderr = tempfile.TemporaryFile()
            try:
                self._proc = subprocess.Popen(
                    ffmpeg_command(args),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=self._stderr,
                    start_new_session=True,  # Ctrl-C reaches Python, which stops ffmpeg
                )
            except OSError as exc:
                raise ExternalToolError(f"could not run ffmpeg: {exc.strerror}") from exc
        return self._proc

    def _stderr_text(self) -> str:
        return _read_log(self._stderr)

    def _finish(self) -> None:
        """The pipe hit its end: reap ffmpeg and turn a failure into an error."""
        self._done = True
        proc = self._proc
        if proc is None:
            return
        if proc.stdout is not None:
            proc.stdout.close()
        rc = proc.wait()
        raise_for_ffmpeg(rc, self._stderr_text(), what="decode video", input_path=self.path)
        if not self._resample and self.frames_read < self.info.n_frames:
            log.warning(
                f"{self.path}: decoded only {self.frames_read} of {self.info.n_frames} frames "
                "(the file may be truncated or damaged)"
            )

    def _read_into(self, out: np.ndarray) -> bool:
        """Fill ``out`` (H, W, 3) with the next frame; False at the end of the stream."""
        if self._done:
            return False
        proc = self._start()
        view = memoryview(out).cast("B")
        got = 0
        while got < len(view):
            n = proc.stdout.readinto(view[got:])
            if not n:
                break
            got += n
        if got == len(view):
            self.frames_read += 1
            return True
        self._finish()
        if got:
            raise InputFileError(self.path, "video stream ended in the middle of a frame")
        return False

    # -- public API ----------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of frames this reader yields in total (exact; with ``fps=`` counted by a
        decoding pass through the same filter, done once)."""
        if self._len is None:
            self._len = _count_frames(self.path, self._fps_filter())
        return self._len

    def __iter__(self):
        while True:
            frame = np.empty((self.height, self.width, 3), dtype=np.uint8)
            if not self._read_into(frame):
                return
            yield frame

    def read_batch(self, n: int) -> np.ndarray:
        """Up to ``n`` next frames as (n', H, W, 3) uint8; n' < n only at the end (0 when done)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        out = np.empty((n, self.height, self.width, 3), dtype=np.uint8)
        k = 0
        while k < n and self._read_into(out[k]):
            k += 1
        return out[:k]

    def close(self) -> None:
        """Stop ffmpeg (if still running) and release the pipe. Safe to call twice."""
        proc, self._proc = self._proc, None
        self._done = True
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()
            proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def read_video(path: str | Path, fps: float | None = None, size=None) -> np.ndarray:
    """All frames of a (short) video as one (N, H, W, 3) uint8 array."""
    with VideoReader(path, fps=fps, size=size) as reader:
        frames = list(reader)
        if not frames:
            return np.empty((0, reader.height, reader.width, 3), dtype=np.uint8)
        return np.stack(frames)


# ---------------------------------------------------------------------------------------------
# writing

AudioSource = str | Path | np.ndarray | tuple[np.ndarray, int]


def _check_even(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise UserError(f"video size {width}x{height} is not valid")
    if width % 2 or height % 2:
        raise UserError(
            f"video size {width}x{height}: H.264 yuv420p needs an even width and height "
            f"(use e.g. {width + width % 2}x{height + height % 2})"
        )


class VideoWriter:
    """Encode RGB frames to H.264 yuv420p (libx264) through ffmpeg's stdin, atomically.

    >>> with VideoWriter("out.mp4", fps=25, audio="speech.wav") as writer:
    ...     for batch in batches:        # (N, 1024, 1024, 3) uint8 or (1024, 1024, 3)
    ...         writer.write(batch)
    ... # on leaving the block: exact frame count checked, audio muxed (AAC), file renamed

    ``size`` is (W, H), else taken from the first frame; both must be even. ``audio`` is a file
    ffmpeg can read, an array of 16 kHz mono samples, or ``(samples, sample_rate)``; with a file,
    ``audio_seconds`` gives its duration when the caller knows it (else it is decoded once). The
    video has exactly the frames written; audio longer than it by more than one frame is kept
    whole (and a warning names both durations) unless ``trim_audio=True`` cuts it to the video's
    length.
    Leaving the ``with`` block on an exception (or Ctrl-C) deletes everything written; so does
    dropping an unclosed writer. x264 defaults: preset veryfast, crf 18 (>= 25 frames/s at
    1024x1024 on 2 cores; ``tune="zerolatency"`` holds the rate better on a busy CPU, with ~3x
    larger files).
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        size: tuple[int, int] | None = None,
        *,
        audio: AudioSource | None = None,
        crf: int = 18,
        preset: str = DEFAULT_PRESET,
        audio_bitrate: str = "192k",
        trim_audio: bool = False,
        tune: str | None = DEFAULT_TUNE,
        audio_seconds: float | None = None,
    ) -> None:
        self.path = check_output_path(path)
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise OutputError(
                f"{self.path}: unsupported video file extension "
                f"{self.path.suffix or '(none)'!r} (use one of {', '.join(VIDEO_SUFFIXES)})"
            )
        self.fps = float(fps)
        self._rate = fps_fraction(self.fps)
        if not (isinstance(crf, int) and 0 <= crf <= 51):
            raise ValueError(f"crf must be an integer in 0..51, got {crf!r}")
        if preset not in X264_PRESETS:
            raise ValueError(f"preset must be one of {', '.join(X264_PRESETS)}, got {preset!r}")
        if tune is not None and tune not in X264_TUNES:
            raise ValueError(f"tune must be None or one of {', '.join(X264_TUNES)}, got {tune!r}")
        self.crf, self.preset, self.tune = crf, preset, tune
        self.audio_bitrate = audio_bitrate
        self.trim_audio = trim_audio
        self.size: tuple[int, int] | None = None
        if size is not None:
            w, h = (int(v) for v in size)
            _check_even(w, h)
            self.size = (w, h)
        if not has_encoder("libx264"):
            raise ExternalToolError(
                "this ffmpeg has no libx264 encoder (install a full ffmpeg build, "
                "or `pip install imageio-ffmpeg`)"
            )
        self._audio_path: Path | None = None
        self._audio_samples: tuple[np.ndarray, int] | None = None
        self.audio_duration: float | None = None
        if audio is not None:
            self._set_audio(audio, audio_seconds)
        self.frames_written = 0
        self._proc: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None
        self._temps: list[Path] = []
        self._video_tmp: Path | None = None
        self._closed = False

    def _set_audio(self, audio: AudioSource, seconds: float | None = None) -> None:
        if isinstance(audio, (str, Path)):
            self._audio_path = require_file(audio, "audio file")
            if seconds is not None:  # the caller decoded it already (animate streams it)
                self.audio_duration = float(seconds)
                return
            self.audio_duration = audio_duration(self._audio_path)  # decodes: fails early
            return
        samples, rate = audio if isinstance(audio, tuple) else (audio, SAMPLE_RATE)
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1 or samples.size == 0 or rate <= 0:
            raise ValueError(
                f"audio samples must be a non-empty (T,) array with a positive rate, "
                f"got shape {samples.shape} at {rate} Hz"
            )
        self._audio_samples = (samples, int(rate))
        self.audio_duration = samples.size / rate

    # -- encoder process -----------------------------------------------------------------------
    def _new_temp(self, path: Path) -> Path:
        try:
            tmp = temporary_sibling(path)
        except OSError as exc:
            raise OutputError(
                f"{self.path}: cannot write in {self.path.parent} ({exc.strerror})"
            ) from exc
        self._temps.append(tmp)
        return tmp

    def _movflags(self, path: Path) -> list[str]:
        return ["-movflags", "+faststart"] if path.suffix.lower() != ".mkv" else []

    def _start(self) -> subprocess.Popen:
        w, h = self.size
        self._video_tmp = self._new_temp(self.path)
        args = ["-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}"]
        args += ["-framerate", str(self._rate), "-i", "pipe:0", "-map", "0:v:0"]
        args += ["-sws_flags", SWS_FLAGS, "-c:v", "libx264", "-preset", self.preset]
        if self.tune:
            args += ["-tune", self.tune]
        args += ["-crf", str(self.crf), "-pix_fmt", "yuv420p", "-fps_mode", "passthrough"]
        if self.audio_duration is None:  # else the mux step writes the final file
            args += self._movflags(self.path)
        args.append(str(self._video_tmp))
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                ffmpeg_command(args),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                start_new_session=True,  # Ctrl-C reaches Python, which aborts and deletes
            )
        except OSError as exc:
            raise ExternalToolError(f"could not run ffmpeg: {exc.strerror}") from exc
        return self._proc

    def _stderr_text(self) -> str:
        return _read_log(self._stderr)

    def _encoder_failed(self) -> None:
        proc = self._proc
        rc = proc.wait() if proc is not None else 1
        text = self._stderr_text()
        if "No space left on device" in text:  # say how much the video had reached
            tmp = self._video_tmp
            written = tmp.stat().st_size if tmp is not None and tmp.exists() else None
            raise disk_full(self.path, f"encode video at frame {self.frames_written}", written)
        raise_for_ffmpeg(rc or 1, text, what="encode video", output_path=self.path)

    # -- public API ----------------------------------------------------------------------------
    def write(self, frames: np.ndarray) -> None:
        """Append one frame (H, W, 3) or a batch (N, H, W, 3) of uint8 RGB frames."""
        if self._closed:
            raise ValueError(f"{self.path}: write() after close()")
        a = np.asarray(frames)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"frames must be (H, W, 3) or (N, H, W, 3) RGB, got shape {a.shape}")
        if a.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8, got {a.dtype} "
                "(convert with np.clip(x * 255, 0, 255).astype(np.uint8))"
            )
        if a.shape[0] == 0:
            return
        h, w = a.shape[1:3]
        if self.size is None:
            _check_even(w, h)
            self.size = (w, h)
        if (w, h) != self.size:
            raise ValueError(
                f"frame size {w}x{h} does not match the video size {self.size[0]}x{self.size[1]}"
            )
        proc = self._proc or self._start()
        try:
            proc.stdin.write(memoryview(np.ascontiguousarray(a)).cast("B"))
        except (BrokenPipeError, OSError):
            self._encoder_failed()
            raise
        self.frames_written += a.shape[0]

    def close(self) -> Path:
        """Finish encoding, check the frame count, mux the audio, rename into place.

        Returns the final path. On any failure everything written so far is deleted.
        """
        if self._closed:
            return self.path
        try:
            final_tmp = self._finish()
            os.chmod(final_tmp, FILE_MODE)  # temporary files are 0600; give the usual mode
            os.replace(final_tmp, self.path)
            self._temps.remove(final_tmp)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._proc = None
        self._cleanup()
        return self.path

    def _finish(self) -> Path:
        if self.frames_written == 0 or self._proc is None:
            raise OutputError(f"{self.path}: no frames were written")
        proc = self._proc
        try:
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        if proc.wait() != 0:
            self._encoder_failed()
        video = self._video_tmp
        n = _count_frames(video)
        if n != self.frames_written:
            raise ExternalToolError(
                f"{self.path}: ffmpeg wrote {n} frames, expected {self.frames_written}"
            )
        if self.audio_duration is None:
            return video
        return self._mux_audio(video)

    def _mux_audio(self, video: Path) -> Path:
        video_duration = self.frames_written / self.fps
        audio_path = self._audio_path
        if audio_path is None:
            samples, rate = self._audio_samples
            audio_path = self._new_temp(self.path.with_name(self.path.stem + ".audio.wav"))
            save_wav(audio_path, samples, rate, subtype="FLOAT")
        excess = self.audio_duration - video_duration
        frame = 1.0 / self.fps
        audio_in = ["-i", str(audio_path)]
        if self.trim_audio and excess > 0:
            audio_in = ["-t", f"{video_duration:.6f}", *audio_in]
            if excess > frame:
                log.info(
                    f"{self.path.name}: audio cut to the video's {video_duration:.3f} s "
                    f"(source audio {self.audio_duration:.3f} s)"
                )
        elif excess > frame:
            log.warning(
                f"{self.path.name}: the audio ({self.audio_duration:.3f} s) is longer than the "
                f"video ({video_duration:.3f} s, {self.frames_written} frames at {self.fps:g} "
                "fps); keeping the full audio (pass trim_audio=True to cut it)"
            )
        elif -excess > frame:
            log.warning(
                f"{self.path.name}: the audio ({self.audio_duration:.3f} s) is shorter than the "
                f"video ({video_duration:.3f} s); the end of the video is silent"
            )
        out = self._new_temp(self.path)
        args = ["-y", "-i", str(video), *audio_in, "-map", "0:v:0", "-map", "1:a:0"]
        args += ["-c:v", "copy", "-c:a", "aac", "-b:a", self.audio_bitrate]
        args += [*self._movflags(self.path), str(out)]
        run_ffmpeg(args, what="add the audio track", output_path=self.path)
        return out

    def abort(self) -> None:
        """Stop ffmpeg and delete every temporary file; nothing appears under the final name."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.wait()
        self._closed = True
        self._cleanup()

    def _cleanup(self) -> None:
        for tmp in self._temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._temps.clear()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self.abort()


__all__ = [
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "probe_video",
    "read_video",
    "fps_fraction",
]


T = TypeVar("T")


class _Failed:
    """An exception raised by the reader thread of ``read_ahead``, handed to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


def read_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` (e.g. decoded frame batches) in a reader thread, ``depth`` ahead.

    Decoding (ffmpeg pipe reads, numpy copies: the GIL is mostly released) then overlaps the
    consumer's work (pSp encoding). Memory stays bounded by ``depth`` items; the reader's
    exception is raised in the consumer; closing the iterator early stops the reader, which
    closes ``items`` in its own thread (a generator's ``with VideoReader`` ends there).
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # handed over, raised by the consumer
            put(_Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name="talkcli-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=10)
