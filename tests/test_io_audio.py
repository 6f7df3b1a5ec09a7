"""Audio decoding (talkcli.io.audio) and the ffmpeg helpers (talkcli.io.ffmpeg).

Every test file is made here with ffmpeg from a synthesized signal (a stereo 440 Hz tone), so the
expected duration, rate, frequency and level are known exactly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from talkcli.errors import EXIT_USER, ExternalToolError, InputFileError, OutputError
from talkcli.io import audio as audio_mod
from talkcli.io import ffmpeg as ffmpeg_mod
from talkcli.io.audio import SAMPLE_RATE, audio_duration, load_audio, save_wav
from talkcli.io.ffmpeg import find_ffmpeg, has_encoder, run_ffmpeg, stderr_reason

DURATION = 1.5  # seconds of the synthesized source
TONE_HZ = 440.0
AMPLITUDE = 0.5


def _tone(rate: int, seconds: float = DURATION, channels: int = 2) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    x = (AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1)  # (T, C)


def _ffmpeg(*args: str) -> None:
    subprocess.run(
        [find_ffmpeg().path, "-nostdin", "-hide_banner", "-v", "error", "-y", *args], check=True
    )


@pytest.fixture(scope="module")
def source_wav(tmp_path_factory) -> Path:
    """A 1.5 s stereo 44.1 kHz 16-bit WAV of a 440 Hz tone: the source of every format."""
    path = tmp_path_factory.mktemp("audio") / "source.wav"
    sf.write(str(path), _tone(44100), 44100, subtype="PCM_16")
    return path


# (suffix, encoder that must exist, ffmpeg output args)
FORMATS = [
    ("wav", "pcm_s16le", ["-c:a", "pcm_s16le"]),
    ("flac", "flac", ["-c:a", "flac", "-ar", "48000"]),
    ("mp3", "libmp3lame", ["-c:a", "libmp3lame", "-b:a", "128k"]),
    ("m4a", "aac", ["-c:a", "aac", "-b:a", "128k"]),
    ("aac", "aac", ["-c:a", "aac", "-b:a", "128k"]),  # raw ADTS stream
    ("ogg", "libvorbis", ["-c:a", "libvorbis", "-q:a", "4"]),
    ("opus", "libopus", ["-c:a", "libopus", "-b:a", "64k"]),
]
# Container-specific slack: raw ADTS AAC has no edit list, so the encoder's priming and padding
# (up to ~2 frames of 1024 samples) stay in the decoded stream.
TOLERANCE_S = {"aac": 0.05}


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def _check_tone(x: np.ndarray, seconds: float = DURATION, tol: float = 0.01) -> None:
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) / SAMPLE_RATE - seconds) <= tol, len(x) / SAMPLE_RATE
    assert np.abs(x).max() <= 1.0
    assert abs(_dominant_hz(x, SAMPLE_RATE) - TONE_HZ) < 2.0
    mid = x[len(x) // 4 : 3 * len(x) // 4]  # away from codec fade-in/out
    rms = float(np.sqrt(np.mean(mid.astype(np.float64) ** 2)))
    assert abs(rms - AMPLITUDE / np.sqrt(2)) < 0.03, rms


@pytest.mark.parametrize("suffix,encoder,args", FORMATS, ids=[f[0] for f in FORMATS])
def test_decode_each_format(source_wav, tmp_path, suffix, encoder, args):
    if not has_encoder(encoder):
        pytest.skip(f"this ffmpeg has no {encoder} encoder")
    path = tmp_path / f"tone.{suffix}"
    _ffmpeg("-i", str(source_wav), *args, str(path))
    x = load_audio(path)
    tol = TOLERANCE_S.get(suffix, 0.002)  # gapless formats decode to the exact length
    _check_tone(x, tol=tol)
    assert abs(audio_duration(path) - DURATION) <= tol


def test_decode_audio_track_of_video(source_wav, tmp_path):
    if not (has_encoder("libx264") and has_encoder("aac")):
        pytest.skip("this ffmpeg lacks libx264 or aac")
    path = tmp_path / "clip.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=size=64x48:rate=25:duration={DURATION}",
        "-i", str(source_wav), "-map", "0:v", "-map", "1:a",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path),
    )  # fmt: skip
    _check_tone(load_audio(path))
    assert abs(audio_duration(path) - DURATION) <= 0.01


def test_other_sample_rates_and_stereo_mixdown(tmp_path):
    # Left and right differ: mono is their mean, identically on the soundfile fast path (16 kHz
    # WAV) and the ffmpeg path (forced by a rate that needs resampling).
    t = np.arange(16000) / 16000
    left, right = 0.6 * np.sin(2 * np.pi * 300 * t), 0.2 * np.sin(2 * np.pi * 700 * t)
    stereo = np.stack([left, right], axis=1).astype(np.float32)
    fast = tmp_path / "s16k.wav"
    sf.write(str(fast), stereo, 16000, subtype="FLOAT")
    x = load_audio(fast)
    np.testing.assert_allclose(x, (left + right) / 2, atol=1e-6)
    via_ffmpeg = audio_mod._decode_ffmpeg(fast, 16000)
    np.testing.assert_allclose(via_ffmpeg, x, atol=1e-6)
    # 8 kHz output: exact length and the 300 Hz component survives resampling.
    y = load_audio(fast, sample_rate=8000)
    assert len(y) == 8000 and y.dtype == np.float32
    assert abs(_dominant_hz(y, 8000) - 300) < 2


def test_speech_from_espeak(tmp_path):
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path / "speech.wav"
    subprocess.run(
        [espeak, "-w", str(wav), "The quick brown fox jumps over the lazy dog."], check=True
    )
    info = sf.info(str(wav))
    x = load_audio(wav)
    expected = info.frames / info.samplerate
    assert abs(len(x) / SAMPLE_RATE - expected) < 2 / SAMPLE_RATE
    assert audio_duration(wav) == pytest.approx(expected)
    assert x.dtype == np.float32 and np.abs(x).max() <= 1.0
    assert np.sqrt(np.mean(x**2)) > 0.01  # speech, not silence
    # The same speech as MP3 decodes to the same length (within one 20 ms MFCC hop).
    if has_encoder("libmp3lame"):
        mp3 = tmp_path / "speech.mp3"
        _ffmpeg("-i", str(wav), "-c:a", "libmp3lame", str(mp3))
        assert abs(len(load_audio(mp3)) / SAMPLE_RATE - expected) < 0.02


def test_save_wav_round_trip_is_atomic(tmp_path):
    x = (0.25 * np.sin(np.linspace(0, 100, 3200))).astype(np.float32)
    out = tmp_path / "out.wav"
    save_wav(out, x, 16000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]  # no temp left behind
    np.testing.assert_allclose(load_audio(out), x, atol=1 / 16000 + 1 / 32768)
    save_wav(out, x, 16000, subtype="FLOAT")  # overwrite, lossless
    np.testing.assert_array_equal(load_audio(out), x)
    with pytest.raises(OutputError, match="does not exist"):
        save_wav(tmp_path / "missing" / "out.wav", x, 16000)
    with pytest.raises(ValueError, match=r"\(T,\)"):
        save_wav(out, np.zeros((2, 2, 2)), 16000)


# --------------------------------------------------------------------------------------------
# bad input: one-line InputFileError (exit code 2) naming the file and what to do


def _assert_one_line_user_error(exc: InputFileError, path: Path, *needles: str) -> None:
    msg = str(exc)
    assert exc.exit_code == EXIT_USER
    assert "\n" not in msg and "Traceback" not in msg
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(InputFileError) as err:
        load_audio(path)
    _assert_one_line_user_error(err.value, path, "not found")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(InputFileError) as err:
        load_audio(tmp_path)
    _assert_one_line_user_error(err.value, tmp_path, "directory")


@pytest.mark.parametrize("name", ["noise.wav", "noise.mp3", "noise.flac"])
def test_random_bytes_are_not_audio(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputFileError) as err:
        load_audio(path)
    _assert_one_line_user_error(err.value, path, "could not decode audio")
    with pytest.raises(InputFileError):
        audio_duration(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(InputFileError) as err:
        load_audio(path)
    _assert_one_line_user_error(err.value, path, "empty")


@pytest.mark.parametrize("kind", ["wav16k", "wav44k", "ogg"])
def test_valid_container_with_zero_samples(tmp_path, kind):
    if kind.startswith("wav"):  # a 44-byte header and no data: soundfile path / ffmpeg path
        path = tmp_path / f"silence0_{kind}.wav"
        rate = 16000 if kind == "wav16k" else 44100
        sf.write(str(path), np.zeros((0, 1), np.float32), rate)
    else:
        if not has_encoder("libvorbis"):
            pytest.skip("this ffmpeg has no libvorbis encoder")
        path = tmp_path / "silence0.ogg"  # Vorbis headers, no audio packet
        _ffmpeg(
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=16000:cl=mono",
            "-t",
            "0",
            "-c:a",
            "libvorbis",
            str(path),
        )
    assert path.stat().st_size > 0
    with pytest.raises(InputFileError) as err:
        load_audio(path)
    _assert_one_line_user_error(err.value, path, "contains no audio samples")
    with pytest.raises(InputFileError):
        audio_duration(path)


def test_video_without_audio_stream(tmp_path):
    if not has_encoder("libx264"):
        pytest.skip("this ffmpeg has no libx264 encoder")
    path = tmp_path / "silent.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=32x32:rate=5:duration=0.4", "-c:v", "libx264", str(path)
    )
    with pytest.raises(InputFileError) as err:
        load_audio(path)
    _assert_one_line_user_error(err.value, path, "no audio stream")


# --------------------------------------------------------------------------------------------
# finding and running ffmpeg


def test_find_ffmpeg_reports_source_and_version():
    info = find_ffmpeg()
    assert Path(info.path).is_file() and os.access(info.path, os.X_OK)
    assert info.source in ("PATH", "imageio-ffmpeg")
    if shutil.which("ffmpeg") is None:
        assert info.source == "imageio-ffmpeg"
    assert info.version and info.version != "unknown"
    assert find_ffmpeg() is info  # cached
    assert has_encoder("pcm_s16le") and not has_encoder("no-such-encoder")


def test_find_ffmpeg_without_any_binary(monkeypatch):
    import imageio_ffmpeg

    def no_exe():
        raise RuntimeError("no binary")

    monkeypatch.setattr(ffmpeg_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_exe)
    find_ffmpeg.cache_clear()
    try:
        with pytest.raises(ExternalToolError, match="ffmpeg not found.*install") as err:
            find_ffmpeg()
    finally:
        find_ffmpeg.cache_clear()
    assert err.value.exit_code == EXIT_USER  # the user can install it: not the bug code
    assert "apt-get install ffmpeg" in str(err.value) and "pip install imageio-ffmpeg" in str(
        err.value
    )


def test_cli_without_ffmpeg_exits_2_with_the_install_hint(tmp_path, monkeypatch):
    import sys

    from tests.conftest import assert_user_error, run_cli_inprocess

    wav = tmp_path / "tone.wav"
    sf.write(str(wav), _tone(SAMPLE_RATE, 0.2, 1), SAMPLE_RATE)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # `import imageio_ffmpeg` fails
    find_ffmpeg.cache_clear()
    ffmpeg_mod.find_ffprobe.cache_clear()
    try:
        result = run_cli_inprocess("media", "probe", str(wav))
    finally:
        find_ffmpeg.cache_clear()
        ffmpeg_mod.find_ffprobe.cache_clear()
    assert_user_error(result, "ffmpeg not found", "apt-get install ffmpeg", "imageio-ffmpeg")


def test_audio_facts_from_ffprobe_json_match_the_dump():
    from talkcli.io.audio import _audio_facts_from_dump, _audio_facts_from_json

    dump = (
        "Input #0, matroska,webm, from 'a.mkv':\n"
        "  Duration: 00:00:01.22, start: 0.000000, bitrate: 100 kb/s\n"
        "  Stream #0:1: Audio: aac (LC), 44100 Hz, mono, fltp (default)\n"
    )
    data = {
        "streams": [
            {"codec_type": "video"},
            {
                "codec_type": "audio",
                "sample_rate": "44100",
                "channels": 1,
                "channel_layout": "mono",
            },
        ],
        "format": {"duration": "1.223000"},
    }
    p = Path("a.mkv")
    expected = {"duration": 1.22, "rate": 44100, "channels": "mono"}
    assert _audio_facts_from_dump(p, dump) == _audio_facts_from_json(p, data) == expected
    data["streams"][1].update(channels=6, channel_layout="5.1(side)")
    data["format"]["duration"] = "3.995000"  # the dump rounds to 1/100 s: 00:00:04.00
    assert _audio_facts_from_json(p, data) == {
        "duration": 4.0,
        "rate": 44100,
        "channels": "5.1(side)",
    }
    del data["streams"][1]["channel_layout"], data["format"]["duration"]
    assert _audio_facts_from_json(p, data)["channels"] == "6"  # the dump's "6 channels"
    assert _audio_facts_from_json(p, data)["duration"] is None  # the dump's "Duration: N/A"
    with pytest.raises(InputFileError, match="has no audio stream"):
        _audio_facts_from_json(p, {"streams": [{"codec_type": "video"}]})


def test_run_ffmpeg_maps_failures(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01not a video" * 50)
    with pytest.raises(InputFileError) as err:
        run_ffmpeg(["-i", str(bad), "-f", "null", "-"], what="read video", input_path=bad)
    assert str(err.value).startswith(f"{bad}: could not read video: ")
    assert "\n" not in str(err.value)
    with pytest.raises(ExternalToolError, match="ffmpeg failed to"):
        run_ffmpeg(["-i", str(bad), "-f", "null", "-"], what="do something")
    ok = run_ffmpeg(["-f", "lavfi", "-i", "anullsrc", "-t", "0.1", "-f", "null", "-"], what="x")
    assert ok.returncode == 0


def test_stderr_reason_skips_generic_lines():
    stderr = (
        "[in#0 @ 0x55ee27bb2100] Failed to find two consecutive MPEG audio frames.\n"
        "[in#0 @ 0x55ee27bb1d80] Error opening input: Invalid data found when processing input\n"
        "Error opening input file rand.wav.\n"
        "Error opening input files: Invalid data found when processing input\n"
    )
    assert stderr_reason(stderr) == "Invalid data found when processing input"
    assert stderr_reason("x.wav: No such file or directory\n", "x.wav") == (
        "No such file or directory"
    )
    assert len(stderr_reason("E" * 500)) == 200
