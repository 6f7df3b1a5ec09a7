"""Video probing, streaming reading and atomic H.264 writing (talkcli.io.video)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from talkcli.errors import EXIT_USER, InputFileError, OutputError, UserError
from talkcli.io.audio import SAMPLE_RATE, load_audio, save_wav
from talkcli.io.ffmpeg import has_encoder
from talkcli.io.video import (
    VideoInfo,
    VideoReader,
    VideoWriter,
    _parse_input_dump,
    fps_fraction,
    probe_video,
    read_video,
)

pytestmark = pytest.mark.skipif(
    not (has_encoder("libx264") and has_encoder("aac")), reason="ffmpeg lacks libx264 or aac"
)

W, H, FPS = 64, 48, 25.0


def make_frames(n: int, w: int = W, h: int = H) -> np.ndarray:
    """(n, h, w, 3) uint8, smooth (so yuv420p loses little) and each frame a distinct level."""
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (x * 200 // w + 20).astype(np.uint8)
        frames[i, ..., 1] = 30 + 15 * (i % 14)  # the frame's index, readable after a round trip
        frames[i, ..., 2] = (y * 150 // h + 50).astype(np.uint8)
    return frames


def tone(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


def frame_indices(frames: np.ndarray) -> list[int]:
    return [int(round((f[..., 1].mean() - 30) / 15)) for f in frames]


def only_file(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------
# writer -> reader round trip


def test_round_trip_exact_frames_and_pixels(tmp_path):
    frames = make_frames(13)
    out = tmp_path / "v.mp4"
    with VideoWriter(out, fps=FPS) as writer:
        writer.write(frames[:5])  # a batch
        writer.write(frames[5])  # a single frame
        writer.write(frames[6:])
    assert writer.frames_written == 13
    assert only_file(tmp_path) == ["v.mp4"]  # renamed into place, no temp left
    info = probe_video(out)
    assert (info.width, info.height, info.n_frames, info.has_audio) == (W, H, 13, False)
    assert info.fps == FPS and info.duration == pytest.approx(13 / FPS)
    with VideoReader(out) as reader:
        assert len(reader) == 13 and reader.fps == FPS
        got = np.stack(list(reader))
    assert got.shape == (13, H, W, 3) and got.dtype == np.uint8
    assert frame_indices(got) == list(range(13))  # same frames, same order, none dropped
    assert np.abs(got.astype(int) - frames).mean() < 2.0


@pytest.mark.parametrize("n_frames", [1, 2, 26])
def test_frame_count_is_exact(tmp_path, n_frames):
    out = tmp_path / f"n{n_frames}.mp4"
    with VideoWriter(out, fps=FPS, size=(W, H)) as writer:
        for frame in make_frames(n_frames):
            writer.write(frame)
    assert probe_video(out).n_frames == n_frames
    assert len(read_video(out)) == n_frames


def test_audio_duration_preserved_within_one_frame(tmp_path):
    audio = tmp_path / "speech.wav"
    save_wav(audio, tone(0.5), SAMPLE_RATE)
    out = tmp_path / "av.mp4"
    n = 13  # 0.52 s of video for 0.5 s of audio
    with VideoWriter(out, fps=FPS, audio=audio) as writer:
        writer.write(make_frames(n))
    info = probe_video(out)
    assert info.n_frames == n and info.has_audio
    decoded = load_audio(out)  # the AAC track
    assert abs(len(decoded) / SAMPLE_RATE - 0.5) <= 1 / FPS
    assert only_file(tmp_path) == ["av.mp4", "speech.wav"]


def test_longer_audio_is_kept_and_warned(tmp_path, capsys):
    audio = tmp_path / "long.wav"
    save_wav(audio, tone(1.0), SAMPLE_RATE)
    out = tmp_path / "long.mp4"
    with VideoWriter(out, fps=FPS, audio=audio) as writer:
        writer.write(make_frames(12))  # 0.48 s
    err = capsys.readouterr().err
    assert "1.000 s" in err and "0.480 s" in err and "trim_audio" in err
    assert probe_video(out).n_frames == 12
    assert abs(len(load_audio(out)) / SAMPLE_RATE - 1.0) <= 1 / FPS  # not cut


def test_trim_audio_cuts_to_video_length(tmp_path, capsys):
    out = tmp_path / "trim.mp4"
    with VideoWriter(out, fps=FPS, audio=(tone(1.0, 22050), 22050), trim_audio=True) as writer:
        writer.write(make_frames(12))
    assert "warning" not in capsys.readouterr().err
    assert probe_video(out).n_frames == 12
    assert abs(len(load_audio(out)) / SAMPLE_RATE - 12 / FPS) <= 1 / FPS
    assert only_file(tmp_path) == ["trim.mp4"]  # the temporary WAV is gone too


def test_audio_samples_array(tmp_path):
    out = tmp_path / "arr.mp4"
    with VideoWriter(out, fps=FPS, audio=tone(0.4)) as writer:  # 16 kHz mono samples
        writer.write(make_frames(10))
    decoded = load_audio(out)
    assert abs(len(decoded) / SAMPLE_RATE - 0.4) <= 1 / FPS
    assert np.sqrt(np.mean(decoded**2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.1)


# --------------------------------------------------------------------------------------------
# reader


def test_reader_batches_resampling_and_size(tmp_path):
    out = tmp_path / "v.mp4"
    with VideoWriter(out, fps=FPS) as writer:
        writer.write(make_frames(12))
    with VideoReader(out) as reader:
        first = reader.read_batch(5)
        rest = reader.read_batch(100)
        assert first.shape == (5, H, W, 3) and rest.shape == (7, H, W, 3)
        assert reader.read_batch(3).shape == (0, H, W, 3)
        assert frame_indices(np.concatenate([first, rest])) == list(range(12))
    with VideoReader(out, fps=FPS / 2) as reader:  # drops every other frame
        frames = list(reader)
        assert len(reader) == len(frames) == 6
        assert frame_indices(np.stack(frames)) == list(range(0, 12, 2))
    with VideoReader(out, fps=2 * FPS, size=(32, 24)) as reader:  # repeats, rescales
        frames = reader.read_batch(100)
        assert len(reader) == 24 and frames.shape == (24, 24, 32, 3)
        assert reader.info.width == W and (reader.width, reader.height) == (32, 24)
    with VideoReader(out) as reader:  # closing early stops ffmpeg cleanly
        next(iter(reader))
    assert reader._proc is None


def test_probe_of_a_video_with_audio_made_by_ffmpeg(tmp_path):
    from talkcli.io.ffmpeg import run_ffmpeg

    out = tmp_path / "ntsc.mkv"
    run_ffmpeg(
        ["-f", "lavfi", "-i", "testsrc=size=40x30:rate=30000/1001:duration=1"]
        + ["-f", "lavfi", "-i", "sine=duration=1.2", "-c:v", "libx264", "-c:a", "aac", str(out)],
        what="make a test video",
    )
    info = probe_video(out)
    assert isinstance(info, VideoInfo)
    assert (info.width, info.height, info.n_frames, info.has_audio) == (40, 30, 30, True)
    assert info.fps == pytest.approx(30000 / 1001)
    assert fps_fraction(info.fps) == fps_fraction(30000 / 1001)
    assert str(fps_fraction(info.fps)) == "30000/1001"


def test_parse_input_dump_rotation_and_streams():
    video = (
        "  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), "
        "1920x1080 [SAR 1:1 DAR 16:9], 18 kb/s, 29.97 fps, 29.97 tbr, 30k tbn (default)"
    )
    dump = "\n".join(
        [
            "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'phone.mp4':",
            "  Duration: 00:00:01.30, start: 0.000000, bitrate: 100 kb/s",
            video,
            "    Side data:",
            "      Display Matrix: rotation of -90.00 degrees",
            "  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, mono, fltp",
            "Stream mapping:",
            "  Stream #0:0 -> #0:0 (copy)",
            "Output #0, null, to 'pipe:':",
            "  Stream #0:0(und): Video: h264, yuv420p(progressive), 8x8, 1 fps",
        ]
    )
    facts = _parse_input_dump(dump)
    assert facts["width"] == 1920 and facts["height"] == 1080
    assert facts["fps"] == pytest.approx(30000 / 1001, abs=1e-9)
    assert facts["rotation"] == -90.0 and facts["has_audio"] is True


# --------------------------------------------------------------------------------------------
# probing through ffprobe's JSON (when there is an ffprobe) and ffmpeg's dump (always possible)

# ffprobe 5.1's answer for a 40x30 NTSC H.264 + AAC mkv (fields talkcli does not read removed).
PROBE_JSON = {
    "streams": [
        {
            "index": 0,
            "codec_type": "video",
            "width": 40,
            "height": 30,
            "r_frame_rate": "30000/1001",
            "avg_frame_rate": "30000/1001",
            "nb_read_packets": "30",
        },
        {
            "index": 1,
            "codec_type": "audio",
            "sample_rate": "44100",
            "channels": 1,
            "channel_layout": "mono",
            "r_frame_rate": "0/0",
            "avg_frame_rate": "0/0",
            "nb_read_packets": "53",
        },
    ],
    "format": {"format_name": "matroska,webm", "duration": "1.223000"},
}


def test_parse_probe_json_reads_what_the_dump_gives():
    from talkcli.io.video import _parse_probe_json

    facts = _parse_probe_json(PROBE_JSON)
    assert facts == {
        "has_audio": True,
        "has_video": True,
        "n_frames": 30,
        "width": 40,
        "height": 30,
        "fps": pytest.approx(30000 / 1001, abs=1e-12),
    }
    rotated = {
        "streams": [
            {
                "codec_type": "video",
                "width": 1920,
                "height": 1080,
                "avg_frame_rate": "0/0",  # unknown: the dump then shows only tbr
                "r_frame_rate": "25/1",
                "nb_read_packets": "3",
                "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}],
            },
            {"codec_type": "video", "width": 8, "height": 8, "avg_frame_rate": "1/1"},
        ]
    }
    facts = _parse_probe_json(rotated)
    assert (facts["width"], facts["height"], facts["fps"]) == (1920, 1080, 25.0)
    assert facts["rotation"] == -90.0 and facts["has_audio"] is False
    old_tag = {"streams": [{"codec_type": "video", "tags": {"rotate": "90"}}]}
    assert _parse_probe_json(old_tag)["rotation"] == -90.0  # ffprobe < 5: the tag
    assert _parse_probe_json({"streams": [{"codec_type": "audio"}]})["has_video"] is False


@pytest.mark.parametrize(
    "rate, dump",
    [
        ("25/1", "25"),
        ("30000/1001", "29.97"),
        ("24000/1001", "23.98"),
        ("60000/1001", "59.94"),
        ("25/2", "12.50"),
        ("2997/125", "23.98"),  # 23.976 exactly: the dump rounds it like 24000/1001
        ("90000/1", "90k"),
        ("1/7", "0.14"),
    ],
)
def test_ffprobe_rates_are_read_at_the_dumps_precision(rate, dump):
    from talkcli.io.video import _banner_rate, _parse_rate

    assert _banner_rate(rate) == _parse_rate(dump)
    assert _banner_rate("0/0") is None and _banner_rate(None) is None


def _video_with_audio(folder: Path) -> Path:
    from talkcli.io.ffmpeg import run_ffmpeg

    out = folder / "ntsc.mkv"
    run_ffmpeg(
        ["-f", "lavfi", "-i", "testsrc=size=40x30:rate=30000/1001:duration=1"]
        + ["-f", "lavfi", "-i", "sine=duration=1.2", "-c:v", "libx264", "-c:a", "aac", str(out)],
        what="make a test video",
    )
    return out


def test_forced_fallback_probes_with_ffmpeg_alone(tmp_path, monkeypatch):
    from talkcli.io import ffmpeg as ffmpeg_mod

    def no_ffprobe():
        raise AssertionError("ffprobe must not be looked for with TALKCLI_NO_FFPROBE=1")

    monkeypatch.setattr(ffmpeg_mod, "find_ffprobe", no_ffprobe)
    monkeypatch.setenv(ffmpeg_mod.NO_FFPROBE_ENV, "1")
    info = probe_video(_video_with_audio(tmp_path))
    assert (info.width, info.height, info.n_frames, info.has_audio) == (40, 30, 30, True)
    assert str(fps_fraction(info.fps)) == "30000/1001"


def test_probe_json_plumbing_with_a_stand_in_ffprobe(tmp_path, monkeypatch):
    """The JSON path end to end, on any machine: a script that answers like ffprobe."""
    import json

    from talkcli.io import ffmpeg as ffmpeg_mod
    from talkcli.io import video as video_mod

    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps(PROBE_JSON))
    args_seen = tmp_path / "args.txt"
    fake = tmp_path / "ffprobe"
    fake.write_text(f'#!/bin/sh\necho "$@" > {args_seen}\ncat {answer}\n')
    fake.chmod(0o755)
    monkeypatch.delenv(ffmpeg_mod.NO_FFPROBE_ENV, raising=False)
    monkeypatch.setattr(ffmpeg_mod, "find_ffprobe", lambda: str(fake))

    def no_ffmpeg(path):
        raise AssertionError("the ffmpeg path must not run when ffprobe answered")

    monkeypatch.setattr(video_mod, "_probe_with_ffmpeg", no_ffmpeg)
    video = tmp_path / "any.mkv"
    video.write_bytes(b"not read by the stand-in")
    info = probe_video(video)
    assert (info.width, info.height, info.n_frames, info.has_audio) == (40, 30, 30, True)
    assert args_seen.read_text().split() == [
        *("-v", "error", "-print_format", "json", "-show_streams", "-show_format"),
        *("-count_packets", "-i", str(video)),
    ]
    # an ffprobe that fails hands over to ffmpeg, which names the problem as usual
    fake.write_text("#!/bin/sh\necho 'Invalid data' >&2\nexit 1\n")
    monkeypatch.undo()
    monkeypatch.setattr(ffmpeg_mod, "find_ffprobe", lambda: str(fake))
    with pytest.raises(InputFileError, match="could not read video"):
        probe_video(video)


def test_ffprobe_and_ffmpeg_paths_agree(tmp_path, monkeypatch):
    from talkcli.io import ffmpeg as ffmpeg_mod
    from talkcli.io import video as video_mod
    from talkcli.io.audio import probe_audio

    if ffmpeg_mod.find_ffprobe() is None:
        pytest.skip("no ffprobe beside ffmpeg or on PATH (imageio-ffmpeg ships none)")
    src = _video_with_audio(tmp_path)
    rotated = tmp_path / "rotated.mp4"
    ffmpeg_mod.run_ffmpeg(
        ["-display_rotation", "90", "-i", str(src), "-c", "copy", "-an", str(rotated)],
        what="tag a rotation",
    )
    m4a = tmp_path / "tone.m4a"
    ffmpeg_mod.run_ffmpeg(["-i", str(src), "-vn", "-c:a", "copy", str(m4a)], what="extract")
    monkeypatch.delenv(ffmpeg_mod.NO_FFPROBE_ENV, raising=False)
    with monkeypatch.context() as m:  # the JSON path only
        m.setattr(video_mod, "_probe_with_ffmpeg", None)
        by_json = [probe_video(src), probe_video(rotated), probe_audio(m4a), probe_audio(src)]
    monkeypatch.setenv(ffmpeg_mod.NO_FFPROBE_ENV, "1")
    by_dump = [probe_video(src), probe_video(rotated), probe_audio(m4a), probe_audio(src)]
    assert by_json == by_dump
    assert (by_json[1].width, by_json[1].height) == (30, 40)  # displayed upright


# --------------------------------------------------------------------------------------------
# writer: refusals and no partial output


def test_bad_frames_are_refused_clearly(tmp_path):
    out = tmp_path / "bad.mp4"
    with pytest.raises(UserError, match="even width and height"):
        VideoWriter(out, fps=FPS, size=(63, 48))
    with pytest.raises(UserError, match=r"65x49: .*even"):
        with VideoWriter(out, fps=FPS) as writer:
            writer.write(np.zeros((49, 65, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        with VideoWriter(out, fps=FPS) as writer:
            writer.write(np.zeros((H, W, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        with VideoWriter(out, fps=FPS) as writer:
            writer.write(np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match="32x32 does not match the video size 64x48"):
        with VideoWriter(out, fps=FPS) as writer:
            writer.write(make_frames(3))
            writer.write(np.zeros((32, 32, 3), np.uint8))
    assert only_file(tmp_path) == []  # every failed writer cleaned up after itself


def test_no_frames_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(OutputError, match="no frames were written"):
        with VideoWriter(tmp_path / "empty.mp4", fps=FPS):
            pass
    assert only_file(tmp_path) == []


def test_interrupt_leaves_no_partial_output(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"previous result")  # an older output must survive a failed run
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out, fps=FPS) as writer:
            writer.write(make_frames(4))
            raise KeyboardInterrupt
    assert only_file(tmp_path) == ["v.mp4"] and out.read_bytes() == b"previous result"


def test_sigint_in_a_real_process_leaves_no_partial_output(tmp_path):
    script = textwrap.dedent(
        f"""\
        import sys, time
        import numpy as np
        from talkcli.io.video import VideoWriter
        with VideoWriter({str(tmp_path / "out.mp4")!r}, fps=25) as w:
            for i in range(10000):
                w.write(np.full((48, 64, 3), i % 256, np.uint8))
                if i == 5:
                    print("writing", flush=True)
                time.sleep(0.01)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the foreground group
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    assert only_file(tmp_path) == []


def test_unwritable_output_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist") as err:
        VideoWriter(tmp_path / "missing" / "v.mp4", fps=FPS)
    assert err.value.exit_code == EXIT_USER and "\n" not in str(err.value)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        VideoWriter(a_file / "v.mp4", fps=FPS)
    with pytest.raises(OutputError, match="extension"):
        VideoWriter(tmp_path / "v.avi", fps=FPS)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(OutputError, match="not writable"):
            VideoWriter(locked / "v.mp4", fps=FPS)


def test_bad_audio_is_refused_before_any_rendering(tmp_path):
    noise = tmp_path / "noise.wav"
    noise.write_bytes(np.random.default_rng(2).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(InputFileError, match="could not decode audio"):
        VideoWriter(tmp_path / "v.mp4", fps=FPS, audio=noise)
    with pytest.raises(InputFileError, match="not found"):
        VideoWriter(tmp_path / "v.mp4", fps=FPS, audio=tmp_path / "nope.wav")
    assert only_file(tmp_path) == ["noise.wav"]


# --------------------------------------------------------------------------------------------
# reader / probe: bad input


def _assert_input_error(exc: InputFileError, path: Path, needle: str) -> None:
    assert exc.exit_code == EXIT_USER and "\n" not in str(exc)
    assert str(path) in str(exc) and needle in str(exc), str(exc)


def test_probe_bad_inputs(tmp_path):
    cases = {}
    cases["missing"] = (tmp_path / "nope.mp4", "not found")
    cases["folder"] = (tmp_path, "directory")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    cases["empty"] = (empty, "empty")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    cases["noise"] = (noise, "could not read video")
    wav = tmp_path / "sound.wav"
    sf.write(str(wav), tone(0.2), SAMPLE_RATE)
    cases["audio only"] = (wav, "has no video stream")
    for name, (path, needle) in cases.items():
        with pytest.raises(InputFileError) as err:
            probe_video(path)
        _assert_input_error(err.value, path, needle)
        with pytest.raises(InputFileError):
            VideoReader(path)
        assert name


def test_truncated_video_is_an_input_error_or_warned(tmp_path, capsys):
    out = tmp_path / "v.mp4"
    with VideoWriter(out, fps=FPS) as writer:
        writer.write(make_frames(8))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])  # moov first (faststart)
    try:
        frames = read_video(cut)
    except InputFileError as exc:  # ffmpeg gave up: one line, names the file
        _assert_input_error(exc, cut, "")
    else:  # ffmpeg decoded what was there, fewer frames than the file lists, and we say so
        assert len(frames) < 8
        assert "decoded only" in capsys.readouterr().err


def test_outputs_get_the_usual_file_mode(tmp_path):
    """Temporary files are private (0600); finished outputs get the umask-based mode."""
    from talkcli.io.files import FILE_MODE, atomic_output

    out = tmp_path / "mode.mp4"
    with VideoWriter(out, fps=25) as writer:
        writer.write(np.zeros((2, 16, 16, 3), dtype=np.uint8))
    assert out.stat().st_mode & 0o777 == FILE_MODE
    other = tmp_path / "x.bin"
    with atomic_output(other) as tmp:
        tmp.write_bytes(b"1")
    assert other.stat().st_mode & 0o777 == FILE_MODE
