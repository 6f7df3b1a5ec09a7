"""The CLI frame: help, version, doctor, and the bad-input contract (exit 2, one line)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import assert_user_error, run_cli


def test_help_lists_working_commands():
    result = run_cli("--help")
    assert result.code == 0
    for command in ("doctor", "weights", "media"):
        assert command in result.stdout


def test_version():
    from talkcli import __version__

    result = run_cli("--version")
    assert result.code == 0
    assert result.stdout.strip() == f"talkcli {__version__}"


def test_doctor_reports_ffmpeg_torch_and_model_files(tmp_path):
    result = run_cli("doctor", "--json", "--weights-dir", str(tmp_path))
    assert result.code == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["ffmpeg"]["path"] and facts["ffmpeg"]["source"] in ("PATH", "imageio-ffmpeg")
    assert facts["torch"]
    assert facts["device"].startswith(("cpu", "cuda", "mps"))
    assert facts["tiny_packs"] == []
    names = {row["name"]: row["state"] for row in facts["model_files"]}
    assert names["stylegan2-ffhq"] == "missing"
    human = run_cli("doctor", "--weights-dir", str(tmp_path))
    assert human.code == 0
    assert "ffmpeg" in human.stderr and "stylegan2-ffhq" in human.stderr


def test_unknown_device_is_a_user_error():
    result = run_cli("--device", "tpu", "doctor")
    assert_user_error(result, "--device")


def test_weights_list_runs():
    result = run_cli("weights", "list")
    assert result.code == 0
    assert "psp-ffhq-encode" in result.stderr


@pytest.fixture
def audio_files(tmp_path):
    tone = tmp_path / "tone.wav"
    t = np.arange(16000) / 16000
    sf.write(tone, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    rand = tmp_path / "random.wav"
    rand.write_bytes(np.random.default_rng(0).bytes(4096))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    silent = tmp_path / "zero_samples.wav"
    sf.write(silent, np.zeros(0, dtype=np.float32), 16000)
    return {"tone": tone, "random": rand, "empty": empty, "zero_samples": silent}


def test_to_wav_converts(audio_files, tmp_path):
    out = tmp_path / "out.wav"
    result = run_cli("media", "to-wav", str(audio_files["tone"]), "--out", str(out))
    assert result.code == 0, result.stderr
    data, rate = sf.read(out)
    assert rate == 16000 and len(data) == 16000


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "not found"),
        ("directory", "is a directory"),
        ("random", "could not decode audio"),
        ("empty", "empty"),
        ("zero_samples", "no audio samples"),
    ],
)
def test_bad_audio_inputs_exit_2_without_output(audio_files, tmp_path, case, needle):
    source = {
        "missing": tmp_path / "nope.wav",
        "directory": tmp_path,
    }.get(case) or audio_files[case]
    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    result = run_cli("media", "to-wav", str(source), "--out", str(out_dir / "x.wav"))
    assert_user_error(result, str(source), needle)
    assert list(out_dir.iterdir()) == []


def _unwritable_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        tempfile.NamedTemporaryFile(dir=folder).close()
    except OSError:
        return folder
    # root ignores permissions: use a read-only system folder if there is one
    for candidate in (Path("/sys"), Path("/proc/sys")):
        try:
            tempfile.NamedTemporaryFile(dir=candidate).close()
        except OSError:
            return candidate
    pytest.skip("no unwritable folder available on this machine")


def test_unwritable_output_folder_exits_2(audio_files, tmp_path):
    folder = _unwritable_folder(tmp_path)
    try:
        out = folder / "out.wav"
        result = run_cli("media", "to-wav", str(audio_files["tone"]), "--out", str(out))
        assert_user_error(result, str(folder))
        assert not out.exists()
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o700)


def test_missing_output_folder_exits_2(audio_files, tmp_path):
    out = tmp_path / "no" / "such" / "out.wav"
    result = run_cli("media", "to-wav", str(audio_files["tone"]), "--out", str(out))
    assert_user_error(result, "does not exist")


def test_internal_errors_say_so_and_hide_the_traceback(tmp_path, monkeypatch):
    # A bug (not a user error) is exit 1 with one line; --debug shows the traceback.
    from talkcli import cli

    def boom(*_a, **_k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr("talkcli.commands.media.probe_media", boom)
    tone = tmp_path / "t.wav"
    sf.write(tone, np.zeros(1600, dtype=np.float32), 16000)
    assert cli.main(["media", "probe", str(tone)]) == 1
    assert cli.main(["--debug", "media", "probe", str(tone)]) == 1


def test_media_probe_json(audio_files):
    result = run_cli("media", "probe", "--json", str(audio_files["tone"]))
    assert result.code == 0, result.stderr
    row = json.loads(result.stdout)[0]
    assert abs(row["audio"]["duration"] - 1.0) < 1e-3
    assert "video" not in row


def test_ctrl_c_exit_code_is_130(monkeypatch, tmp_path):
    from talkcli import cli

    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr("talkcli.commands.media.probe_media", interrupt)
    tone = tmp_path / "t.wav"
    sf.write(tone, np.zeros(1600, dtype=np.float32), 16000)
    assert cli.main(["media", "probe", str(tone)]) == 130


def test_doctor_notes_a_tiny_pack(tiny_pack):
    result = run_cli("doctor", "--weights-dir", str(tiny_pack))
    assert result.code == 0, result.stderr
    assert "random-weight tiny pack" in result.stderr
    facts = json.loads(run_cli("doctor", "--json", "--weights-dir", str(tiny_pack)).stdout)
    assert facts["tiny_packs"] == [str(tiny_pack)]
    states = {row["name"]: row["state"] for row in facts["model_files"]}
    assert states["stylegan2-ffhq"] == "present" and states["psp-ffhq-encode"] == "present"


def test_global_flags_may_follow_the_command():
    from talkcli.cli import hoist_global_options

    assert hoist_global_options(
        ["invert", "a.png", "--quiet", "--device", "cpu", "--out", "x"]
    ) == ["--quiet", "--device", "cpu", "invert", "a.png", "--out", "x"]
    assert hoist_global_options(["--debug", "doctor"]) == ["--debug", "doctor"]
    result = run_cli("doctor", "--json", "--device", "tpu")
    assert_user_error(result, "--device")


def test_usage_errors_are_one_line_with_a_help_hint():
    result = run_cli("invert", "face.png")
    assert_user_error(result, "Missing option '--out'", "talkcli invert --help")
    result = run_cli("no-such-command")
    assert_user_error(result, "No such command")
    bare = run_cli()
    assert bare.code == 0 and "Usage" in bare.stdout + bare.stderr
