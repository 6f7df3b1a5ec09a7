"""Audio decoding to 16 kHz mono float32, durations, and atomic WAV writing.

Any input ffmpeg can read is accepted (wav, flac, mp3, m4a/aac, ogg/opus, and the audio track of a
video). ffmpeg resamples and mixes down to the mean of the channels (``f32le`` on stdout);
WAV/FLAC files already at the requested rate take a fast path through soundfile. Every problem
with the file (missing, a folder, undecodable, no audio stream, no samples) is an
``InputFileError``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from talkcli.errors import InputFileError, OutputError
from talkcli.io.ffmpeg import raise_for_ffmpeg, run_ffmpeg, stderr_reason
from talkcli.io.files import atomic_output, require_file

SAMPLE_RATE = 16000

_SOUNDFILE_SUFFIXES = {".wav", ".flac"}


def _soundfile_info(path: Path):
    """soundfile's info for a WAV/FLAC it can open, else None (ffmpeg takes over)."""
    if path.suffix.lower() not in _SOUNDFILE_SUFFIXES:
        return None
    try:
        import soundfile as sf

        return sf.info(str(path))
    except Exception:  # not a file libsndfile reads: let ffmpeg try and explain
        return None


def _no_samples(path: Path) -> InputFileError:
    return InputFileError(path, "contains no audio samples", "pass a recording that is not empty")


def _decode_ffmpeg(path: Path, sample_rate: int) -> np.ndarray:
    proc = run_ffmpeg(
        [
            "-i",
            str(path),
            "-map",
            "0:a:0",
            "-vn",
            "-sn",
            "-dn",
            # Mix down with coefficients normalised to sum 1 (stereo: the mean of L and R, like
            # the soundfile path); plain -ac 1 uses sqrt(1/2) each, which can clip.
            "-af",
            f"aresample=osr={sample_rate}:ochl=mono:rematrix_maxval=1.0",
            "-ac",
            "1",
            "-ar",
            str(sample_rate),
            "-c:a",
            "pcm_f32le",
            "-f",
            "f32le",
            "pipe:1",
        ],
        what="decode audio",
        input_path=path,
        check=False,
    )
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0 and "matches no streams" in err:
        raise InputFileError(path, "has no audio stream", "pass a file with sound")
    if proc.returncode != 0 and stderr_reason(err) == "End of file":
        # e.g. an Ogg/Matroska file whose headers are complete but that holds no audio packet
        raise InputFileError(
            path, "contains no audio samples (the file ends before any audio)", "pass a recording"
        )
    if proc.returncode != 0:
        raise_for_ffmpeg(
            proc.returncode,
            err,
            what="decode audio",
            input_path=path,
            hint="check that it is an audio or video file ffmpeg can read",
        )
    n = len(proc.stdout) // 4
    return np.frombuffer(proc.stdout[: 4 * n], dtype="<f4").astype(np.float32)  # (T,)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to mono float32 samples in [-1, 1] at ``sample_rate`` Hz, shape (T,).

    Accepts anything ffmpeg reads, including a video file (its first audio stream). Raises
    ``InputFileError`` when the file is missing, a folder, empty, undecodable, has no audio
    stream or decodes to zero samples.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    p = require_file(path, "audio file")
    from talkcli.guards import check_samples

    try:  # header only: refuse what would not fit in memory before decoding it
        seconds = probe_audio(p)["duration"]
    except InputFileError:
        seconds = None  # decoding below reports what is wrong with the file
    if seconds is not None:
        check_samples(p, seconds, sample_rate)
    info = _soundfile_info(p)
    if info is not None and info.samplerate == sample_rate:
        import soundfile as sf

        data, _ = sf.read(str(p), dtype="float32", always_2d=True)  # (T, C)
        samples = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    else:
        samples = _decode_ffmpeg(p, sample_rate)
    if samples.size == 0:
        raise _no_samples(p)
    samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(np.clip(samples, -1.0, 1.0), dtype=np.float32)


_DURATION = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.MULTILINE)
_AUDIO_STREAM = re.compile(r"^\s*Stream #0:\d+\S*: Audio: (.*)$", re.MULTILINE)


def probe_audio(path: str | Path) -> dict:
    """Header facts of a file's audio without decoding it: ``{"duration", "rate", "channels"}``.

    The duration is the container's (exact for WAV/FLAC, an estimate for VBR MP3); ``duration``
    is None when the container does not say. Raises ``InputFileError`` when there is no audio.
    """
    p = require_file(path, "audio file")
    info = _soundfile_info(p)
    if info is not None:
        if info.frames == 0:
            raise _no_samples(p)
        return {
            "duration": info.frames / info.samplerate,
            "rate": info.samplerate,
            "channels": info.channels,
        }
    proc = run_ffmpeg(["-v", "info", "-i", str(p)], what="read audio", input_path=p, check=False)
    err = proc.stderr.decode("utf-8", "replace")
    if "Input #0" not in err:
        raise_for_ffmpeg(proc.returncode or 1, err, what="read audio", input_path=p)
    stream = _AUDIO_STREAM.search(err)
    if stream is None:
        raise InputFileError(p, "has no audio stream", "pass a file with sound")
    rate = re.search(r"(\d+) Hz", stream.group(1))
    channels = re.search(r"Hz, (mono|stereo|[\d.]+(?:\(\w+\))?|\d+ channels)", stream.group(1))
    m = _DURATION.search(err)
    duration = None
    if m:
        h, mi, se = m.groups()
        duration = int(h) * 3600 + int(mi) * 60 + float(se)
    return {
        "duration": duration,
        "rate": int(rate.group(1)) if rate else None,
        "channels": channels.group(1) if channels else None,
    }


def audio_duration(path: str | Path) -> float:
    """Duration in seconds of the (first) audio stream of ``path``.

    Exact from the header for WAV/FLAC; otherwise the file is decoded (at 16 kHz, so the result is
    exact to 1/16000 s after the codec's own padding is removed), because container headers of
    e.g. VBR MP3 only estimate it.
    """
    p = require_file(path, "audio file")
    info = _soundfile_info(p)
    if info is not None:
        if info.frames == 0:
            raise _no_samples(p)
        return info.frames / info.samplerate
    return len(load_audio(p, SAMPLE_RATE)) / SAMPLE_RATE


def save_wav(
    path: str | Path, samples: np.ndarray, sample_rate: int, *, subtype: str = "PCM_16"
) -> None:
    """Write ``samples`` ((T,) mono or (T, C)) as a WAV file, atomically.

    Float samples are expected in [-1, 1] (clipped for integer subtypes). ``subtype`` is a
    soundfile subtype: "PCM_16" (default, plays everywhere) or "FLOAT" (lossless float32).
    """
    import soundfile as sf

    data = np.asarray(samples)
    if data.ndim not in (1, 2):
        raise ValueError(f"samples must be (T,) or (T, C), got shape {data.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
        if subtype.startswith("PCM"):
            data = np.clip(data, -1.0, 1.0)
    with atomic_output(path) as tmp:
        try:
            sf.write(str(tmp), data, sample_rate, subtype=subtype, format="WAV")
        except (OSError, RuntimeError) as exc:
            raise OutputError(f"{path}: could not write WAV ({exc})") from exc
