"""Audio decoding to 16 kHz mono float32, durations, and atomic WAV writing.

Any input ffmpeg can read is accepted (wav, flac, mp3, m4a/aac, ogg/opus, and the audio track of a
video). ffmpeg resamples and mixes down to the mean of the channels (``f32le`` on stdout);
WAV/FLAC files already at the requested rate take a fast path through soundfile. ``load_audio``
returns the whole signal; ``DecodedAudio`` decodes to a temporary file and reads it back in
segments (bounded memory for any length). Every problem with the file (missing, a folder,
undecodable, no audio stream, no samples, NaN/infinite samples, amplitudes that are not audio) is
an ``InputFileError``, raised while decoding, before any work starts: a bad soundtrack must never
be what fails last (ffmpeg's AAC encoder stops with "Invalid argument" on NaN, inf or 1e30).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from talkcli.constants import SAMPLE_RATE  # re-exported: talkcli.io.audio.SAMPLE_RATE
from talkcli.errors import InputFileError, OutputError
from talkcli.io.ffmpeg import probe_json, raise_for_ffmpeg, run_ffmpeg, stderr_reason
from talkcli.io.files import atomic_output, require_file

_SOUNDFILE_SUFFIXES = {".wav", ".flac"}

# The largest |sample| accepted from a decoded file. Integer formats decode into [-1, 1]; float
# WAV/FLAC may legally go a little over full scale (inter-sample overs, a mix not yet limited:
# a few dB, rarely 10x), and those samples are clipped to [-1, 1]. A peak over 1e3 (60 dB over
# full scale) is not such an over but a file in the wrong scale (int16 values stored as float:
# 32767) or garbage (1e30, which also makes the AAC encoder fail); it is refused, naming the peak.
# ffmpeg's AAC encoder still encodes peaks of 3e4, so nothing accepted can break the soundtrack.
MAX_PEAK = 1e3
_SCAN_BLOCK = 1 << 22  # samples checked at a time in DecodedAudio's temporary file (16 MiB)


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


def check_sample_values(
    path: str | Path, samples: np.ndarray, sample_rate: int, start: int = 0
) -> None:
    """Refuse decoded samples that hold NaN/inf or a peak over ``MAX_PEAK`` (``InputFileError``
    naming the file, what is wrong and where); ``start`` is the block's first sample index."""
    finite = np.isfinite(samples)
    if not finite.all():
        first = (start + int(np.argmin(finite))) / sample_rate
        raise InputFileError(
            path,
            f"holds NaN/infinite samples (the first at {first:.3f} s)",
            "re-encode it from a good source",
        )
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > MAX_PEAK:
        raise InputFileError(
            path,
            f"peak amplitude {peak:.3g} is not audio; expected samples in [-1, 1]",
            "re-encode it with its level in range",
        )


def _check_raw_file(path: Path, raw: Path, n_samples: int, sample_rate: int) -> None:
    """``check_sample_values`` over a decoded raw float32 file, block by block (bounded memory),
    so a NaN an hour into the recording is found before any rendering starts."""
    for start in range(0, n_samples, _SCAN_BLOCK):
        count = min(_SCAN_BLOCK, n_samples - start)
        block = np.fromfile(raw, dtype="<f4", count=count, offset=4 * start)
        check_sample_values(path, block, sample_rate, start)


def _max_decode_seconds(sample_rate: int) -> float:
    """How much audio a decode may produce: ``LIMITS.audio_samples`` plus one second, so that a
    file whose header does not say its length (a truncated ogg, a stream) cannot fill the disk;
    a decode that reaches it is then refused by ``check_samples``."""
    from talkcli.guards import LIMITS

    return LIMITS.audio_samples / sample_rate + 1.0


def _run_decoder(path: Path, sample_rate: int, output: str) -> bytes:
    """Decode ``path``'s first audio stream to raw mono float32 at ``sample_rate`` into
    ``output`` (``pipe:1`` returns the bytes; a file name writes there and returns b"").
    At most ``_max_decode_seconds`` are decoded."""
    proc = run_ffmpeg(
        [
            "-i",
            str(path),
            "-t",
            f"{_max_decode_seconds(sample_rate):.0f}",
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
            *(["-y"] if output != "pipe:1" else []),
            output,
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
            # a full disk under the temporary file names its folder, not the input
            output_path=Path(output).parent if output != "pipe:1" else None,
            hint="check that it is an audio or video file ffmpeg can read",
        )
    return proc.stdout or b""


def _decode_ffmpeg(path: Path, sample_rate: int) -> np.ndarray:
    data = _run_decoder(path, sample_rate, "pipe:1")
    n = len(data) // 4
    return np.frombuffer(data[: 4 * n], dtype="<f4").astype(np.float32)  # (T,)


def _check_header(p: Path, sample_rate: int) -> None:
    """Refuse from the header alone audio that would not fit in memory (``LIMITS``): hours of
    audio are refused before anything is decoded whenever the container states its length."""
    from talkcli.guards import check_samples

    try:
        seconds = probe_audio(p)["duration"]
    except InputFileError:
        seconds = None  # decoding reports what is wrong with the file
    if seconds is not None:
        check_samples(p, seconds, sample_rate)


def _clean(samples: np.ndarray) -> np.ndarray:
    """What every decoded sample goes through: clipped to [-1, 1], float32 (NaN/inf were refused
    by ``check_sample_values``; a stray one is still made finite, never passed on)."""
    samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(np.clip(samples, -1.0, 1.0), dtype=np.float32)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to mono float32 samples in [-1, 1] at ``sample_rate`` Hz, shape (T,).

    Accepts anything ffmpeg reads, including a video file (its first audio stream). Raises
    ``InputFileError`` when the file is missing, a folder, empty, undecodable, has no audio
    stream, decodes to zero samples or to more than ``LIMITS.audio_samples``, or holds NaN/inf
    samples or a peak over ``MAX_PEAK``.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    p = require_file(path, "audio file")
    _check_header(p, sample_rate)  # header only: refuse what would not fit before decoding
    info = _soundfile_info(p)
    if info is not None and info.samplerate == sample_rate:
        import soundfile as sf

        data, _ = sf.read(str(p), dtype="float32", always_2d=True)  # (T, C)
        samples = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    else:
        samples = _decode_ffmpeg(p, sample_rate)
    if samples.size == 0:
        raise _no_samples(p)
    _check_decoded_length(p, samples.size, sample_rate)
    check_sample_values(p, samples, sample_rate)
    return _clean(samples)


def _check_decoded_length(p: Path, n_samples: int, sample_rate: int) -> None:
    """The header check again on what was decoded (a header may not say, or may lie)."""
    from talkcli.guards import check_samples

    check_samples(p, n_samples / sample_rate, sample_rate)


class DecodedAudio:
    """Audio decoded once by ffmpeg to a temporary raw float32 file and read back in segments,
    so memory stays bounded whatever the length (``animate`` streams hours of speech this way).

    >>> with DecodedAudio("speech.mp3") as audio:
    ...     audio.n_samples, audio.duration       # 16 kHz mono samples, seconds
    ...     x = audio.read(0, 16000)              # (16000,) float32 in [-1, 1]

    Samples equal ``load_audio``'s (same decoder, mix-down, clipping); the same errors are
    raised for a missing, undecodable, silent-less (empty) file or one without an audio stream,
    and for NaN/inf samples or absurd peaks anywhere in it: the whole temporary file is scanned
    right after decoding (block by block), so a NaN in the middle of a long file stops the run
    before any rendering starts.
    """

    def __init__(
        self, path: str | Path, sample_rate: int = SAMPLE_RATE, tmp_dir: str | Path | None = None
    ) -> None:
        import tempfile

        # Set before anything can fail: close() (and __del__) run after a refusal too.
        self._raw: Path | None = None
        self.n_samples = 0
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.path = require_file(path, "audio file")
        self.sample_rate = int(sample_rate)
        _check_header(self.path, self.sample_rate)
        fd, name = tempfile.mkstemp(prefix="talkcli-audio.", suffix=".f32", dir=tmp_dir)
        import os

        os.close(fd)
        self._raw = Path(name)
        try:
            _run_decoder(self.path, self.sample_rate, str(self._raw))
            self.n_samples = self._raw.stat().st_size // 4
            if self.n_samples == 0:
                raise _no_samples(self.path)
            _check_decoded_length(self.path, self.n_samples, self.sample_rate)
            _check_raw_file(self.path, self._raw, self.n_samples, self.sample_rate)
        except BaseException:
            self.close()
            raise

    @property
    def duration(self) -> float:
        """Seconds of audio: ``n_samples / sample_rate``."""
        return self.n_samples / self.sample_rate

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` (clipped to the audio) as float32 (n,) in [-1, 1]."""
        if self._raw is None:
            raise ValueError(f"{self.path}: read() after close()")
        start = max(int(start), 0)
        stop = min(int(stop), self.n_samples)
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        data = np.fromfile(self._raw, dtype="<f4", count=stop - start, offset=4 * start)
        return _clean(data)

    def close(self) -> None:
        """Delete the temporary file (safe to call twice, and after a failed ``__init__``)."""
        raw, self._raw = getattr(self, "_raw", None), None
        if raw is not None:
            raw.unlink(missing_ok=True)

    def __enter__(self) -> DecodedAudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


_DURATION = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.MULTILINE)
_AUDIO_STREAM = re.compile(r"^\s*Stream #0:\d+\S*: Audio: (.*)$", re.MULTILINE)
# The channel layouts talkcli reports ("mono", "stereo", "5.1(side)", "2" for "2 channels").
_LAYOUT = r"(mono|stereo|[\d.]+(?:\(\w+\))?|\d+ channels)"


def _audio_facts_from_dump(p: Path, err: str) -> dict:
    """``probe_audio``'s facts from ``ffmpeg -i``'s stream dump (stderr)."""
    stream = _AUDIO_STREAM.search(err)
    if stream is None:
        raise InputFileError(p, "has no audio stream", "pass a file with sound")
    rate = re.search(r"(\d+) Hz", stream.group(1))
    channels = re.search(r"Hz, " + _LAYOUT, stream.group(1))
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


def _audio_facts_from_json(p: Path, data: dict) -> dict:
    """``probe_audio``'s facts from ffprobe's JSON, at the precision of ffmpeg's stream dump
    (the container duration to the nearest 1/100 s), so that both paths agree exactly."""
    stream = next((s for s in data.get("streams") or () if s.get("codec_type") == "audio"), None)
    if stream is None:
        raise InputFileError(p, "has no audio stream", "pass a file with sound")
    layout = stream.get("channel_layout")
    if not layout or layout == "unknown":
        layout = f"{stream['channels']} channels" if stream.get("channels") else ""
    channels = re.match(_LAYOUT, layout)
    duration = None
    seconds = (data.get("format") or {}).get("duration")
    if seconds not in (None, "N/A"):
        micros = round(float(seconds) * 1_000_000)
        duration = ((micros + 5000) // 10_000) / 100  # as the dump prints it: 00:00:03.52
    rate = stream.get("sample_rate")
    return {
        "duration": duration,
        "rate": int(rate) if rate else None,
        "channels": channels.group(1) if channels else None,
    }


def probe_audio(path: str | Path) -> dict:
    """Header facts of a file's audio without decoding it: ``{"duration", "rate", "channels"}``.

    The duration is the container's (exact for WAV/FLAC, an estimate for VBR MP3); ``duration``
    is None when the container does not say. Read by soundfile for WAV/FLAC, else from
    ffprobe's JSON when there is an ffprobe, else from ffmpeg's stream dump (same facts).
    Raises ``InputFileError`` when there is no audio.
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
    data = probe_json(p)
    if data is not None:
        return _audio_facts_from_json(p, data)
    proc = run_ffmpeg(["-v", "info", "-i", str(p)], what="read audio", input_path=p, check=False)
    err = proc.stderr.decode("utf-8", "replace")
    if "Input #0" not in err:
        raise_for_ffmpeg(proc.returncode or 1, err, what="read audio", input_path=p)
    return _audio_facts_from_dump(p, err)


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
