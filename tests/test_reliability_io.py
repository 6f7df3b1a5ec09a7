"""Issue 20's io findings: non-finite and absurd audio, hours-long audio, untrusted model sizes,
huge job lists, over-long output names, concurrent writers and a full disk.

Each bad input ends in one line and exit 2, before any work, with nothing under the output name.
"""

from __future__ import annotations

import errno
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from talkcli import cli
from talkcli.errors import InputFileError, OutputError
from talkcli.io.audio import MAX_PEAK, DecodedAudio, load_audio
from tests.conftest import run_cli_inprocess


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A fresh folder with its own cache and no other weights on the path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TALKCLI_WEIGHTS", "")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def face(tmp_path_factory) -> Path:
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("face") / "face.png"
    photo = Image.fromarray(data.astronaut())
    photo.crop((150, 20, 310, 180)).resize((64, 64), Image.LANCZOS).save(path)
    return path


def _tone(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _errors(err: str) -> list[str]:
    return [ln for ln in err.strip().splitlines() if ln.startswith("error:")]


def one_error_line(code: int, err: str, *needles: str) -> None:
    """Exit 2, exactly one non-empty stderr line, an 'error:' line holding every needle."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


# -- #2 non-finite or absurd audio ------------------------------------------------------------

BAD_AUDIO = {
    "one NaN": (lambda x: np.where(np.arange(x.size) == 5000, np.nan, x), "NaN/infinite"),
    "all NaN": (lambda x: np.full_like(x, np.nan), "NaN/infinite"),
    "one +inf": (lambda x: np.where(np.arange(x.size) == 9000, np.inf, x), "NaN/infinite"),
    "amplitude 1e30": (lambda x: x / 0.3 * 1e30, "peak amplitude 1e+30 is not audio"),
    "int16 scale": (lambda x: x / 0.3 * 32767, "peak amplitude 3.28e+04 is not audio"),
}


@pytest.fixture(scope="module")
def bad_audio(tmp_path_factory) -> dict[str, Path]:
    """Float32 WAVs (16 kHz and 44.1 kHz: the soundfile and the ffmpeg paths) per bad case."""
    folder = tmp_path_factory.mktemp("bad_audio")
    files = {}
    for case, (make, _) in BAD_AUDIO.items():
        for rate in (16000, 44100):
            path = folder / f"{case.replace(' ', '_')}_{rate}.wav"
            sf.write(path, make(_tone(1.0, rate)).astype(np.float32), rate, subtype="FLOAT")
            files[f"{case} {rate}"] = path
    return files


@pytest.mark.parametrize("rate", [16000, 44100])
@pytest.mark.parametrize("case", list(BAD_AUDIO))
def test_bad_samples_are_refused_by_every_decoder(bad_audio, case, rate):
    path = bad_audio[f"{case} {rate}"]
    needle = BAD_AUDIO[case][1]
    if rate != 16000 and case == "int16 scale":
        needle = "peak amplitude"  # resampling moves the peak a little
    for decode in (lambda: load_audio(path), lambda: DecodedAudio(path).close()):
        with pytest.raises(InputFileError) as info:
            decode()
        assert str(path) in str(info.value) and needle in str(info.value)


def test_float_overs_within_the_bound_are_clipped_not_refused(tmp_path):
    path = tmp_path / "hot.wav"
    sf.write(path, _tone() / 0.3 * 1.8, 16000, subtype="FLOAT")  # +5 dB over full scale
    samples = load_audio(path)
    assert samples.max() == 1.0 and samples.min() == -1.0
    with DecodedAudio(path) as audio:
        assert np.abs(audio.read(0, audio.n_samples)).max() == 1.0
    assert MAX_PEAK == 1e3


def test_a_nan_late_in_a_long_file_is_found_before_rendering(tmp_path, monkeypatch):
    """DecodedAudio scans its whole temporary file in blocks; the NaN in the last block stops it."""
    from talkcli.io import audio as audio_mod

    monkeypatch.setattr(audio_mod, "_SCAN_BLOCK", 4096)  # many blocks for a short file
    x = _tone(3.0)
    x[-10] = np.nan
    path = tmp_path / "late.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(InputFileError, match=r"the first at 2\.999 s"):
        DecodedAudio(path, tmp_dir=tmp_path)
    assert list(tmp_path.glob("talkcli-audio.*")) == []  # the temporary file is gone


@pytest.mark.parametrize("case", ["one NaN", "amplitude 1e30"])
def test_animate_refuses_bad_audio_before_any_work(case, capsys, work, tiny_pack, face, bad_audio):
    (work / "out").mkdir()
    args = ["--weights-dir", str(tiny_pack), "animate", "-i", str(face), "--aligned"]
    code = cli.main([*args, "-a", str(bad_audio[f"{case} 44100"]), "-o", "out/v.mp4"])
    err = capsys.readouterr().err
    one_error_line(code, err, bad_audio[f"{case} 44100"].name, BAD_AUDIO[case][1])
    assert list((work / "out").iterdir()) == []


def test_animate_batch_reports_bad_audio(capsys, work, tiny_pack, face, bad_audio):
    sf.write(work / "good.wav", _tone(0.4), 16000, subtype="PCM_16")
    (work / "jobs.csv").write_text(
        f"image,audio,out\n{face},good.wav,good.mp4\n{face},{bad_audio['all NaN 16000']},bad.mp4\n"
    )
    args = ["--weights-dir", str(tiny_pack), "animate", "--jobs", "jobs.csv", "--aligned"]
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 2 and len(_errors(err)) == 1 and "1 of 2" in err, err
    report = json.loads((work / "animate-report.json").read_text())
    assert any("NaN/infinite" in (i["message"] or "") for i in report["items"])
    assert (work / "good.mp4").is_file() and not (work / "bad.mp4").exists()


def test_media_to_wav_refuses_bad_audio(work, bad_audio):
    result = run_cli_inprocess("media", "to-wav", str(bad_audio["one +inf 16000"]), "-o", "x.wav")
    one_error_line(result.code, result.stderr, "NaN/infinite")
    assert not (work / "x.wav").exists()


# -- #3 hours-long audio ----------------------------------------------------------------------


def _sparse_wav(path: Path, hours: float, rate: int = 8000) -> Path:
    """A WAV (8-bit mono) whose header claims ``hours`` of audio; the data are a sparse hole."""
    n = int(hours * 3600 * rate)
    header = b"RIFF" + struct.pack("<I", 36 + n) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate, 1, 8)
    header += b"data" + struct.pack("<I", n)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + n)
    return path


@pytest.mark.parametrize("hours", [5, 10])
def test_hours_of_audio_are_one_line_exit_2(hours, capsys, work, tiny_pack, face):
    wav = _sparse_wav(work / f"long{hours}.wav", hours)
    (work / "out").mkdir()
    args = ["--weights-dir", str(tiny_pack), "animate", "-i", str(face), "--aligned"]
    code = cli.main([*args, "-a", str(wav), "-o", "out/v.mp4"])
    err = capsys.readouterr().err
    one_error_line(code, err, wav.name, f"{hours:.1f} h of audio", "over talkcli's limit")
    assert "AttributeError" not in err and list((work / "out").iterdir()) == []


def test_decoded_audio_closes_cleanly_after_a_refused_header(work):
    wav = _sparse_wav(work / "long.wav", 10)
    with pytest.raises(InputFileError, match="10.0 h of audio"):
        DecodedAudio(wav)
    half = DecodedAudio.__new__(DecodedAudio)  # as __del__ sees an object whose __init__ failed
    half.close()


def test_a_decode_without_a_stated_length_stops_at_the_limit(work, monkeypatch):
    """A stream whose header does not say its length is cut at the limit and refused."""
    from talkcli import guards
    from talkcli.io import audio as audio_mod

    monkeypatch.setattr(guards, "LIMITS", guards.Limits(audio_samples=16000))  # 1 s
    monkeypatch.setattr(audio_mod, "_check_header", lambda p, rate: None)  # as if unknown
    path = work / "three.wav"
    sf.write(path, _tone(3.0), 16000, subtype="PCM_16")
    with pytest.raises(InputFileError, match="over talkcli's limit"):
        DecodedAudio(path, tmp_dir=work)
    with pytest.raises(InputFileError, match="over talkcli's limit"):
        load_audio(path)
    assert list(work.glob("talkcli-audio.*")) == []


# -- #10 an output name longer than the file system allows --------------------------------------


def test_check_output_path_names_the_length_and_the_limit(tmp_path):
    from talkcli.io.files import check_output_path

    with pytest.raises(OutputError, match="file name is 304 bytes, over the file system's limit"):
        check_output_path(tmp_path / ("a" * 300 + ".mp4"))
    with pytest.raises(OutputError, match="folder name a{40}... is 300 bytes"):
        check_output_path(tmp_path / ("a" * 300) / "x.mp4")
    with pytest.raises(OutputError, match="the path is .* bytes, over"):
        check_output_path(tmp_path / "/".join(["b" * 200] * 25) / "x.mp4")
    assert check_output_path(tmp_path / ("a" * 251 + ".mp4")).name.endswith(".mp4")


def test_long_output_names_are_one_line_for_every_command(work, tiny_pack, face):
    sf.write(work / "s.wav", _tone(0.4), 16000, subtype="PCM_16")
    long = "n" * 300
    runs = [
        ("media", "to-wav", "s.wav", "-o", f"{long}.wav"),
        ("--weights-dir", str(tiny_pack), "animate", "-i", str(face), "-a", "s.wav", "--aligned",
         "-o", f"{long}.mp4"),
    ]  # fmt: skip
    for args in runs:
        result = run_cli_inprocess(*args)
        one_error_line(result.code, result.stderr, "bytes, over the file system's limit of 255")
    assert not [p for p in work.iterdir() if p.name.startswith(("n", ".n"))]  # nothing written


# -- #4 model files' sizes are untrusted input -------------------------------------------------


def _find_audio_model(pack: Path) -> Path:
    from safetensors import safe_open

    from talkcli.models.audio2latent import FORMAT

    for path in pack.rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("format") == FORMAT:
                return path
    raise AssertionError("no audio model in the tiny pack")


AUDIO_MODEL_SIZES = {
    "n_components": (1e12, "n_components 1e+12 is outside talkcli's bound [1, 40960]"),
    "n_latent": (10**9, "n_latent 1000000000 is outside talkcli's bound [1, 20]"),
    "style_dim": (-3, "style_dim -3 is outside"),
    "arch.lstm_layers": (10**6, "lstm_layers 1000000 is outside talkcli's bound [1, 8]"),
    "arch.decoder_hidden": (10**7, "arch width 7 10000000 is outside"),
    "arch.linear": ([2**40, 64], "arch width 5 1099511627776 is outside"),
}


@pytest.mark.parametrize("field", list(AUDIO_MODEL_SIZES))
def test_absurd_audio_model_sizes_are_refused_before_allocating(field, tmp_path, tiny_pack):
    from talkcli.errors import ModelFileError
    from talkcli.models.audio2latent import load_audio2latent

    value, needle = AUDIO_MODEL_SIZES[field]
    src = _find_audio_model(tiny_pack)
    bad = _audio_model_with(src, tmp_path / "bad.safetensors", **{field: value})
    with pytest.raises(ModelFileError) as info:
        load_audio2latent(bad)
    assert needle in str(info.value) and "bad.safetensors" in str(info.value)


def test_sizes_inside_the_bounds_but_beyond_the_file_are_refused(tmp_path, tiny_pack):
    """n_components 9000 (< 20 * 512) on an 8-layer generator model: the config describes far
    more numbers than the small file holds; refused from the file's size, nothing allocated."""
    from talkcli.errors import ModelFileError
    from talkcli.models.audio2latent import load_audio2latent

    src = _find_audio_model(tiny_pack)
    bad = _audio_model_with(
        src,
        tmp_path / "big.safetensors",
        n_latent=20,
        style_dim=2048,
        **{"arch.linear": [8192, 8192]},
    )
    with pytest.raises(ModelFileError, match="its config describes an audio model of"):
        load_audio2latent(bad)


def test_animate_with_a_huge_model_config_is_one_line(capsys, work, tiny_pack, face):
    sf.write(work / "s.wav", _tone(0.4), 16000, subtype="PCM_16")
    bad = _audio_model_with(_find_audio_model(tiny_pack), work / "m.safetensors", n_components=1e12)
    args = ["--weights-dir", str(tiny_pack), "animate", "-i", str(face), "-a", "s.wav"]
    code = cli.main([*args, "--aligned", "--model", str(bad), "-o", "v.mp4"])
    err = capsys.readouterr().err
    one_error_line(code, err, "m.safetensors", "n_components 1e+12")
    assert not (work / "v.mp4").exists()


def _audio_model_with(src: Path, dest: Path, **changes) -> Path:
    """``src`` (an audio model) with its config's fields changed, tensors unchanged."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config = json.loads(meta["config"])
    for key, value in changes.items():
        if key.startswith("arch."):
            config["arch"][key[5:]] = value
        else:
            config[key] = value
    meta["config"] = json.dumps(config)
    save_file(tensors, str(dest), metadata=meta)
    return dest


GENERATOR_KEYS = {
    "convs.2000000000.conv.weight": "upsampling blocks 1000000001 is outside",
    "style.99.weight": "n_mlp 99 is outside talkcli's bound [0, 16]",
    "noises.noise_400": "upsampling blocks 200 is outside",
}


@pytest.mark.parametrize("key", list(GENERATOR_KEYS))
def test_generator_counts_from_key_names_are_bounded(key):
    from talkcli.errors import ModelFileError
    from talkcli.models.stylegan2 import generator_from_state_dict

    sd = {"conv1.conv.weight": torch.zeros(1, 8, 8, 3, 3), key: torch.zeros(1)}
    with pytest.raises(ModelFileError, match=re.escape(GENERATOR_KEYS[key])):
        generator_from_state_dict(sd, "g.pt")


# -- #5 long job lists -------------------------------------------------------------------------


def _jobs_csv(folder: Path, rows: int, extra: str = "") -> Path:
    from PIL import Image

    Image.new("RGB", (32, 32)).save(folder / "face.png")
    sf.write(folder / "speech.wav", _tone(0.2), 16000)
    head = "image,audio,out" + (",motion_scale" if extra else "")
    cells = f",{extra}" if extra else ""
    body = "".join(f"face.png,speech.wav,out/v{i}.mp4{cells}\n" for i in range(rows))
    path = folder / "jobs.csv"
    path.write_text(f"{head}\n{body}")
    return path


def test_a_100k_row_job_list_is_planned_with_shared_options(tmp_path):
    """Planning is linear (timings are in benchmarks/bench_planning.py): 100,000 rows that
    repeat one option cell share one AnimateOptions and one Path per input file."""
    from talkcli.animate.batch import check_unique_outputs, read_jobs_csv
    from talkcli.animate.options import AnimateOptions

    planned = read_jobs_csv(_jobs_csv(tmp_path, 100_000, "0.5"), tmp_path, AnimateOptions())
    check_unique_outputs(planned)
    assert len(planned) == 100_000 and all(p.error is None for p in planned)
    assert len({id(p.job.options) for p in planned}) == 1
    assert len({id(p.job.image) for p in planned}) == 1
    assert planned[0].job.options.motion_scale == 0.5
    assert planned[-1].out == tmp_path / "out" / "v99999.mp4"


def test_the_report_of_a_long_batch_is_not_rewritten_per_item(tmp_path, monkeypatch):
    from talkcli.animate import batch

    writes = []
    monkeypatch.setattr(batch, "write_report", lambda path, report: writes.append(1))
    failing = [batch.Planned(i, f"item {i}", error="bad") for i in range(20_000)]
    result = batch.run_batch(failing, None, None, report=tmp_path / "r.json")
    assert result.count("failed") == 20_000
    assert len(writes) < 20  # once at the start, every few seconds, and at the end


def test_job_lists_over_the_limit_are_refused_with_the_number(capsys, work, tiny_pack, monkeypatch):
    from talkcli import guards

    monkeypatch.setattr(guards, "LIMITS", guards.Limits(batch_jobs=10))
    _jobs_csv(work, 25)
    args = ["--weights-dir", str(tiny_pack), "animate", "--aligned"]
    code = cli.main([*args, "--jobs", "jobs.csv"])
    one_error_line(code, capsys.readouterr().err, "lists 25 jobs", "limit of 10 per list")
    for name in ("a", "b", "c", "d"):
        (work / "img").mkdir(exist_ok=True)
        (work / "aud").mkdir(exist_ok=True)
        (work / "img" / f"{name}.png").write_bytes((work / "face.png").read_bytes())
        (work / "aud" / f"{name}.wav").write_bytes((work / "speech.wav").read_bytes())
    code = cli.main([*args, "--image-dir", "img", "--audio-dir", "aud", "--all-pairs"])
    one_error_line(code, capsys.readouterr().err, "lists 16 jobs (4 photos x 4 recordings)")
    assert not (work / "out").exists() and not (work / "animate-report.json").exists()


# -- a full disk -------------------------------------------------------------------------------


def test_a_full_disk_during_a_render_keeps_the_previous_video(
    capsys, work, tiny_pack, face, monkeypatch
):
    """The encoder reads the frames, then fails as ffmpeg does on a full disk: exit 2 naming the
    folder, nothing partial, the previous video of that name untouched."""
    from talkcli.io import video

    real = video.ffmpeg_command
    encoder = "cat >/dev/null; echo 'av_interleaved_write_frame(): No space left on device' >&2"

    def full_disk(args, **kw):
        if "pipe:0" in args:  # the encoder (probing and muxing run as usual)
            return ["sh", "-c", f"{encoder}; exit 1"]
        return real(args, **kw)

    monkeypatch.setattr(video, "ffmpeg_command", full_disk)
    sf.write(work / "s.wav", _tone(0.4), 16000, subtype="PCM_16")
    (work / "out").mkdir()
    (work / "out" / "v.mp4").write_bytes(b"the previous video")
    args = ["--weights-dir", str(tiny_pack), "animate", "-i", str(face), "-a", "s.wav"]
    code = cli.main([*args, "--aligned", "-o", "out/v.mp4"])
    err = capsys.readouterr().err
    assert code == 2 and len(_errors(err)) == 1 and "Traceback" not in err, err
    assert "disk full while trying to encode video" in err and "free some space in out" in err
    assert sorted(p.name for p in (work / "out").iterdir()) == ["v.mp4"]
    assert (work / "out" / "v.mp4").read_bytes() == b"the previous video"


def test_a_full_disk_in_a_python_write_names_the_folder_and_the_size(tmp_path):
    from talkcli.io.files import atomic_output

    final = tmp_path / "report.json"
    final.write_text("previous")
    with pytest.raises(OutputError) as info, atomic_output(final) as tmp:
        tmp.write_bytes(b"x" * (3 << 20))
        raise OSError(errno.ENOSPC, "No space left on device")
    assert f"free some space in {tmp_path}" in str(info.value)
    assert "it needs more than the 3.1 MB written" in str(info.value)
    assert final.read_text() == "previous" and sorted(tmp_path.iterdir()) == [final]


def test_a_full_disk_while_decoding_audio_names_the_temporary_folder(tmp_path, monkeypatch):
    from talkcli.io import audio as audio_mod

    def full(args, **kw):
        import subprocess

        return subprocess.CompletedProcess(args, 1, b"", b"x.f32: No space left on device\n")

    monkeypatch.setattr(audio_mod, "run_ffmpeg", full)
    path = tmp_path / "s.wav"
    sf.write(path, _tone(0.4), 16000)
    with pytest.raises(OutputError, match=f"free some space in {tmp_path}"):
        DecodedAudio(path, tmp_dir=tmp_path)
    assert sorted(tmp_path.iterdir()) == [path]


# -- concurrency -------------------------------------------------------------------------------

_WRITER = r"""
import hashlib, sys
from pathlib import Path
from talkcli.animate.cache import Cache
from talkcli.io.files import atomic_output
from talkcli.io.hashing import FileHashes

root, out, subject, tag = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
body = (tag * (1 << 18))[: 1 << 18].encode()  # 256 KiB, different in each process
payload = body + hashlib.sha256(body).digest()  # complete only with its checksum at the end
cache = Cache(root)
hashes = FileHashes(root / "hashes2")
for _ in range(150):
    cache.store("identity", "ab" * 32, ".bin", lambda tmp: tmp.write_bytes(payload))
    with atomic_output(out) as tmp:
        tmp.write_bytes(payload)
    assert hashes.sha256(subject) == hashlib.sha256(subject.read_bytes()).hexdigest()
    hashes._memory.clear()  # go to the shared folder every time
"""


def _complete(data: bytes) -> bool:
    import hashlib

    return len(data) == (1 << 18) + 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]


def test_two_processes_writing_one_cache_entry_and_one_output_never_corrupt_them(tmp_path):
    """Every read, while two processes rewrite the same cache entry, the same output and the
    same file-hash entry, finds a whole file (one writer's) or none; never a mix or a part."""
    import os
    import subprocess
    import sys

    from talkcli.animate.cache import Cache

    subject = tmp_path / "subject.bin"
    subject.write_bytes(os.urandom(1 << 16))
    root, out = tmp_path / "cache", tmp_path / "out.bin"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root), str(out), str(subject), tag],
            env=env,
            stderr=subprocess.PIPE,
        )
        for tag in ("A", "B")
    ]
    entry = Cache(root).path("identity", "ab" * 32, ".bin")
    reads = 0
    while any(p.poll() is None for p in procs):
        for path in (entry, out):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            assert _complete(data), f"{path.name}: a partial or mixed file"
            reads += 1
    for p in procs:
        assert p.wait() == 0, p.stderr.read().decode()
    assert _complete(entry.read_bytes()) and _complete(out.read_bytes()) and reads > 0
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert leftovers == []  # no temporary file of either writer is left behind
    hash_entries = list((root / "hashes2").rglob("*.sha256"))
    assert len(hash_entries) == 1 and len(hash_entries[0].read_text().strip()) == 64
