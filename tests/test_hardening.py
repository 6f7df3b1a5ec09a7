"""Regression tests for the hardening issue: one test (or more) per item that broke a promise.

Items: 1 code execution from model files, 2 unbounded options and derived sizes, 3 inputs
overwritten, 4 markup in messages, 5 NaN/Inf outputs, 6 user errors reported as bugs, 7 image
modes, 8 start-up and early interrupts, 9 one line (library warnings), 10 smaller ones.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from talkcli import cli, guards
from talkcli.errors import InputFileError, OutputError, UserError
from talkcli.io.images import read_image_rgb
from talkcli.weights import registry
from tests.conftest import REPO, assert_user_error, run_cli, run_cli_inprocess

ASTRO_5 = [[203.66, 101.18], [246.56, 103.66], [224.59, 128.07], [201.68, 140.27], [244.94, 141.56]]


class Evil:
    """Unpickling this runs ``touch marker``: what a crafted model file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    """No model files but what a test passes: cwd in tmp, empty cache, no $TALKCLI_WEIGHTS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TALKCLI_WEIGHTS", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return {"TALKCLI_WEIGHTS": "", "XDG_CACHE_HOME": str(tmp_path / "cache")}


@pytest.fixture(scope="module")
def astro_png(tmp_path_factory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("astro") / "astro.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def landmarks_file(path: Path, points=ASTRO_5) -> Path:
    path.write_text(json.dumps({"landmarks": points}))
    return path


def only_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (no real pixel data): a bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# -- 1. code execution from a model file --------------------------------------------------------


def _poisoned_weights(root: Path, marker: Path, poison: str) -> Path:
    """FAN + S3FD (and MTCNN) files in a weights folder, the one named ``poison`` crafted."""
    hub = root / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    for name in ("fan-2d", "s3fd"):
        path = root / registry.get(name).relpath
        if name == poison:
            torch.save({"conv1.weight": torch.zeros(1), "evil": Evil(marker)}, path)
        else:
            torch.save({"conv1.weight": torch.zeros(1)}, path)  # safe to load, wrong keys
    (root / "mtcnn").mkdir()
    for stage in ("pnet", "rnet", "onet"):
        payload = {"w": Evil(marker)} if poison == f"mtcnn-{stage}" else {"w": np.zeros(1)}
        np.save(root / "mtcnn" / f"{stage}.npy", np.array(payload, dtype=object), allow_pickle=True)
    return root


@pytest.mark.parametrize(
    ("poison", "detector"),
    [
        ("s3fd", "auto"),
        ("s3fd", "fan"),
        ("fan-2d", "auto"),
        ("fan-2d", "fan"),
        ("mtcnn-pnet", "mtcnn"),
    ],
)
def test_a_crafted_detector_file_never_runs_code(tmp_path, env, astro_png, poison, detector):
    marker = tmp_path / "pwned"
    wd = _poisoned_weights(tmp_path / "weights", marker, poison)  # ./weights: searched by default
    res = run_cli_inprocess("align", str(astro_png), "--out", "out", "--detector", detector)
    assert_user_error(res, "refused")
    assert not marker.exists()
    assert poison.split("-")[-1] in res.stderr or registry.get(poison).filename in res.stderr
    assert wd.is_dir() and not (tmp_path / "out" / "astro.png").exists()


def test_weights_only_everywhere_covers_third_party_torch_load(tmp_path):
    from talkcli.weights.safe_load import weights_only_everywhere

    marker = tmp_path / "pwned"
    path = tmp_path / "s3fd.pth"
    torch.save({"evil": Evil(marker)}, path)
    with weights_only_everywhere(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)  # what a library might ask for
    assert not marker.exists()
    assert torch.load.__name__ == "load"  # restored


# -- 2. numeric options have ranges; derived sizes have limits -----------------------------------


def test_every_numeric_option_declares_a_range():
    import typer

    command = typer.main.get_command(cli.app)
    unbounded = []
    for path, param in cli.walk_params(command):
        kind = cli.numeric_kind(param)
        if kind is not None and (kind[1] is None or kind[2] is None):
            unbounded.append(f"{path} {'/'.join(param.opts)}")
    assert not unbounded, f"numeric options without min= and max=: {unbounded}"


def test_every_float_option_refuses_nan_and_inf(capsys):
    import typer

    command = typer.main.get_command(cli.app)
    floats = [
        (path, param.opts[0])
        for path, param in cli.walk_params(command)
        if (cli.numeric_kind(param) or (None,))[0] is float
    ]
    assert len(floats) >= 6
    for path, opt in floats:
        for bad in ("nan", "inf", "-inf"):
            args = [*path.split()[1:], opt, bad]
            assert cli.main(args) == 2, args
            err = capsys.readouterr().err
            assert opt in err and len(only_lines(err)) == 1, (args, err)
            assert any(w in err for w in ("finite", "less than", "greater than")), (args, err)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["media", "to-wav", "x.wav", "--out", "y.wav", "--rate", "1000000000"],
            ["--rate", "192000"],
        ),
        (["align", "clip.mp4", "--out", "o", "--fps", "100000"], ["--fps", "120"]),
        (["align", "face.png", "--out", "o", "--smooth", "1e9"], ["--smooth", "50"]),
        (["invert", "face.png", "--out", "o.npz", "--lr", "-1"], ["--lr"]),
        (["tune-pti", "face.png", "--out", "o.pt", "--lr", "nan"], ["--lr"]),
    ],
)
def test_out_of_range_options_are_one_line_errors(tmp_path, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    res = run_cli_inprocess(*args)
    assert_user_error(res, *needles)
    assert not list(tmp_path.iterdir())  # nothing written


def test_library_callers_get_the_same_ranges():
    from talkcli.face.align import AlignConfig

    with pytest.raises(UserError, match=r"--smooth 1e\+09: expected a finite number in \[0, 50\]"):
        AlignConfig(smooth=1e9).check()
    with pytest.raises(UserError, match="--fps"):
        AlignConfig(fps=float("nan")).check()
    assert guards.check_number("--lr", 0.5, 0, 1, lo_open=True) == 0.5
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        guards.check_number("--lr", 0.0, 0, 1, lo_open=True)


def test_frames_after_resampling_are_limited(tmp_path, monkeypatch):
    from talkcli.face.align import AlignConfig, align_inputs
    from talkcli.io.video import VideoWriter

    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, 25, (64, 64)) as w:
        w.write(np.zeros((25, 64, 64, 3), np.uint8))
    monkeypatch.setattr(guards, "LIMITS", guards.Limits(video_frames=100))
    lm = landmarks_file(tmp_path / "lm.json", [[20, 24], [44, 24], [32, 34], [22, 44], [42, 44]])
    cfg = AlignConfig(size=32, landmarks_file=lm, fps=120.0)  # 1 s -> 120 frames > 100
    with pytest.raises(InputFileError, match="would give 120 frames at 120 fps, over .* 100"):
        align_inputs([clip], tmp_path / "out", cfg)
    assert not (tmp_path / "out" / "clip.mp4").exists()


def test_frames_held_in_memory_are_limited(tmp_path, monkeypatch, face_images):
    from talkcli.inversion.invert import load_frames

    monkeypatch.setattr(guards, "LIMITS", guards.Limits(frames_bytes=2 * 32 * 32 * 3))
    with pytest.raises(InputFileError, match="pass --max-frames 2 or fewer"):
        load_frames(face_images)
    assert len(load_frames(face_images, max_frames=2).names) == 2


def test_a_huge_image_is_refused_before_decoding(tmp_path, env):
    big = png_header_only(tmp_path / "big.png", 20000, 20000)
    with pytest.raises(InputFileError, match=r"20000x20000 \(400 Mpx\), over talkcli's limit"):
        read_image_rgb(big)
    lm = landmarks_file(tmp_path / "lm.json", [[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]])
    res = run_cli_inprocess("align", str(big), "--out", "out", "--landmarks", str(lm))
    assert_user_error(res, "big.png", "Mpx")
    assert len(only_lines(res.stderr)) == 1  # and no DecompressionBomb warning lines


# -- 3. inputs and model files are never overwritten --------------------------------------------


def test_align_refuses_to_replace_its_input(tmp_path, env, astro_png):
    same = tmp_path / "same"
    same.mkdir()
    photo = same / "face.png"
    shutil.copy(astro_png, photo)
    before = photo.read_bytes()
    lm = landmarks_file(tmp_path / "lm.json")
    res = run_cli_inprocess("align", str(photo), "--out", str(same), "--landmarks", str(lm))
    assert_user_error(res, "would overwrite the input")
    assert photo.read_bytes() == before


def test_to_wav_refuses_to_replace_its_input_unless_forced(tmp_path, env):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.sin(np.arange(44100) / 20).astype(np.float32) * 0.5, 44100)
    before = wav.read_bytes()
    res = run_cli_inprocess("media", "to-wav", str(wav), "--out", str(wav))
    assert_user_error(res, "would overwrite the input", "--force")
    assert wav.read_bytes() == before
    linked = tmp_path / "link.wav"
    linked.symlink_to(wav)  # another spelling of the same file
    assert_user_error(run_cli_inprocess("media", "to-wav", str(linked), "--out", str(wav)))
    res = run_cli_inprocess("media", "to-wav", str(wav), "--out", str(wav), "--force")
    assert res.code == 0, res.stderr
    assert sf.info(str(wav)).samplerate == 16000


def test_tune_pti_refuses_to_replace_the_base_generator(tmp_path, env, tiny_pack, face_images):
    wd = tmp_path / "pack"
    shutil.copytree(tiny_pack, wd)
    base = wd / registry.get("stylegan2-ffhq").relpath
    before = base.read_bytes()
    res = run_cli_inprocess(
        "--weights-dir", str(wd), "tune-pti", str(face_images[0]), "--out", str(base),
        "--steps", "1",
    )  # fmt: skip
    assert_user_error(res, "would overwrite the model file")
    assert base.read_bytes() == before


def test_guard_outputs_unit(tmp_path, env):
    from talkcli.weights.outputs import guard_outputs

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("x")
    guard_outputs([b], inputs=[a])  # a new file: fine
    with pytest.raises(OutputError, match="two outputs"):
        guard_outputs([b, tmp_path / "." / "b.txt"])
    os.link(a, b)  # a hard link is the same file
    with pytest.raises(OutputError, match="would overwrite the input"):
        guard_outputs([b], inputs=[a])
    guard_outputs([b], inputs=[a], force=True)
    with pytest.raises(OutputError, match="is a directory"):
        guard_outputs([tmp_path])


# -- 4. user text is printed as it is -----------------------------------------------------------


@pytest.mark.parametrize("name", ["weird[/red]/x.png", "photo [bold]1.png", "[link=x]y[/link].png"])
def test_paths_with_markup_are_printed_verbatim(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    res = run_cli_inprocess("invert", name, "--out", "o.npz")  # "[" reads as a glob
    assert_user_error(res, f"error: {name}: pattern matches no files")
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"not an image")
    res = run_cli_inprocess("invert", name, "--out", "o.npz")
    assert_user_error(res, f"error: {name}: cannot read as an image")


def test_a_closing_tag_in_a_path_does_not_crash_the_printer(tmp_path):
    res = run_cli("invert", "x[/red].png", "--out", "o.npz", cwd=tmp_path)  # the real process
    assert_user_error(res, "error: x[/red].png: pattern matches no files")


def test_landmark_messages_keep_their_brackets(tmp_path, env, astro_png):
    bad = tmp_path / "lm.json"
    bad.write_text(json.dumps({"landmarks": [[1, 2, 3]]}))
    res = run_cli_inprocess("align", str(astro_png), "--out", "out", "--landmarks", str(bad))
    assert_user_error(res, "[[x, y], ...]")


# -- 5. NaN and Inf never reach a file ----------------------------------------------------------


@pytest.mark.parametrize("opt", [("--l2-weight", "nan"), ("--lr", "inf")])
def test_invert_refuses_non_finite_options(tmp_path, tiny_pack, face_images, opt):
    out = tmp_path / "w.npz"
    res = run_cli_inprocess(
        "--weights-dir", str(tiny_pack), "invert", str(face_images[0]), "--method", "optimize",
        "--out", str(out), *opt,
    )  # fmt: skip
    assert_user_error(res, opt[0])
    assert not out.exists()


def test_tune_pti_refuses_nan_pivots(tmp_path, tiny_pack, face_images):
    pivots = tmp_path / "p.npz"
    w = np.zeros((1, 8, 512), np.float32)
    w[0, 3, 7] = np.nan
    np.savez(pivots, w=w, names=np.array(["frame_00"]), meta=np.array("{}"))
    out = tmp_path / "t.pt"
    res = run_cli_inprocess(
        "--weights-dir", str(tiny_pack), "tune-pti", str(face_images[0]), "--pivots", str(pivots),
        "--out", str(out), "--steps", "1",
    )  # fmt: skip
    assert_user_error(res, "p.npz", "NaN")
    assert not out.exists() and not list(tmp_path.glob("*.pivots.npz"))


def test_a_loss_that_becomes_nan_stops_the_run(tmp_path, tiny_pack, face_images, capsys):
    """tune-pti (in-process, LPIPS made to return NaN at step 3): exit 2 naming the step."""
    from talkcli.models import perceptual

    real = perceptual.load_lpips
    calls = {"n": 0}

    def nan_after_two(*a, **k):
        model = real(*a, **k)
        forward = model.forward

        def patched(x, y):
            calls["n"] += 1
            value = forward(x, y)
            return value * float("nan") if calls["n"] > 3 else value

        model.forward = patched
        return model

    out = tmp_path / "t.pt"
    mp = pytest.MonkeyPatch()
    mp.setattr(perceptual, "load_lpips", nan_after_two)
    try:
        code = cli.main(
            ["--weights-dir", str(tiny_pack), "tune-pti", str(face_images[0]), "--out", str(out),
             "--steps", "5", "--quiet"]
        )  # fmt: skip
    finally:
        mp.undo()
    err = capsys.readouterr().err
    assert code == 2, err
    assert "tune-pti: the loss became nan at step 3" in err
    assert not out.exists() and not list(tmp_path.iterdir())


# -- 6. user errors are exit 2, not "internal error" --------------------------------------------


@pytest.mark.parametrize(
    "points", [[[x + 2000, y] for x, y in ASTRO_5], [[1e12, 1e12]] * 5], ids=["outside", "1e12"]
)
def test_landmarks_outside_the_image(tmp_path, env, astro_png, points):
    lm = landmarks_file(tmp_path / "lm.json", points)
    res = run_cli_inprocess("align", str(astro_png), "--out", "out", "--landmarks", str(lm))
    assert_user_error(res, "lies outside the 512x512 image")


def test_weights_tiny_into_an_existing_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("keep me")
    assert_user_error(run_cli_inprocess("weights", "tiny", str(target)), "is a file")
    assert target.read_text() == "keep me"


def test_save_recon_location_is_checked_before_work(tmp_path, tiny_pack, face_images):
    taken = tmp_path / "recon"
    taken.write_text("a file")
    out = tmp_path / "w.npz"
    res = run_cli_inprocess(
        "--weights-dir", str(tiny_pack), "invert", str(face_images[0]), "--out", str(out),
        "--save-recon", str(taken),
    )  # fmt: skip
    assert_user_error(res, "is a file, expected a --save-recon folder")
    assert not out.exists()


# -- 7. every image mode reads as the picture it shows ------------------------------------------


def test_image_modes_read_correctly(tmp_path):
    ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    expect = np.round(ramp * 255).astype(np.uint8)
    grey16 = tmp_path / "g16.png"
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(grey16)
    assert Image.open(grey16).mode.startswith("I")
    got = read_image_rgb(grey16)
    assert got.shape == (32, 32, 3) and np.abs(got[..., 0].astype(int) - expect).max() <= 1
    assert (got == 255).mean() < 0.01  # PIL's own convert clips ~all of it to white

    import cv2

    rgb16 = tmp_path / "rgb16.png"
    bgr = np.stack([ramp * 65535] * 3, axis=-1).round().astype(np.uint16)
    cv2.imwrite(str(rgb16), bgr)
    assert np.abs(read_image_rgb(rgb16)[..., 1].astype(int) - expect).max() <= 1

    rgb = np.dstack([expect, expect[::-1], np.full_like(expect, 7)])
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "rgb.png"), rgb)
    Image.fromarray(expect).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "grey.png")[..., 2], expect)
    Image.fromarray(rgb).quantize(256).save(tmp_path / "pal.png")
    assert np.abs(read_image_rgb(tmp_path / "pal.png").astype(int) - rgb).mean() < 4

    rgba = np.dstack([rgb, np.where(np.arange(32)[None, :] < 16, 255, 0).repeat(32, 0)])
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(tmp_path / "alpha.png")
    got = read_image_rgb(tmp_path / "alpha.png")
    np.testing.assert_array_equal(got[:, :16], rgb[:, :16])
    assert (got[:, 16:] == 255).all()  # transparent -> white, not the hidden colours

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(read_image_rgb(tmp_path / "cmyk.jpg").astype(int) - rgb).mean() < 6

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb[:16]).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    assert read_image_rgb(tmp_path / "rot.jpg").shape == (32, 16, 3)


# -- 8. start-up and interrupts at any moment ---------------------------------------------------


def test_the_cli_and_its_command_tree_import_no_heavy_modules():
    code = (
        "import sys, typer; from talkcli.cli import app; typer.main.get_command(app); "
        "heavy = [m for m in ('torch', 'numpy', 'cv2', 'skimage', 'scipy', 'face_alignment', "
        "'matplotlib') if m in sys.modules]; print(','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupts_during_start_up_exit_quietly(tmp_path, sig, code):
    # `doctor` imports torch: the signal lands in talkcli's imports, the parsing or the work.
    # (The first ~30 ms belong to the Python interpreter's own start, before any talkcli code.)
    for delay in (0.3, 0.6, 1.0, 1.5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "talkcli", "doctor"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        time.sleep(delay)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            continue  # finished before the signal
        # -signal: killed by the signal before any handler was installed, which a shell reports
        # as the same 128 + signal
        assert proc.returncode in (code, -sig), (delay, proc.returncode, err)
        assert "Traceback" not in err, (delay, err)


# -- 9. one line: library warnings are captured --------------------------------------------------


def test_plain_pickle_model_file_error_is_one_line(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"w": torch.zeros(2), "evil": Evil(tmp_path / "m")}, protocol=4))
    res = run_cli("weights", "inspect", str(path))
    assert_user_error(res, "refused")
    assert len(only_lines(res.stderr)) == 1, res.stderr
    res = run_cli("--debug", "weights", "inspect", str(path))
    assert "UserWarning" in res.stderr or "Traceback" in res.stderr  # shown when debugging


def test_large_image_warning_is_not_printed(tmp_path):
    big = png_header_only(tmp_path / "big.png", 9500, 9500)  # over PIL's warning threshold
    res = run_cli("invert", str(big), "--out", str(tmp_path / "o.npz"))
    assert_user_error(res, "big.png")
    assert len(only_lines(res.stderr)) == 1, res.stderr


# -- 10. smaller ones ----------------------------------------------------------------------------


def test_temporary_names_fit_where_the_final_name_fits(tmp_path):
    from talkcli.io.files import atomic_output, temporary_sibling

    final = tmp_path / ("s" * 240 + ".npz")
    tmp = temporary_sibling(final)
    try:
        assert len(tmp.name) <= 255 and tmp.name.endswith(".npz") and tmp.parent == tmp_path
    finally:
        tmp.unlink()
    with atomic_output(final) as t:
        t.write_bytes(b"ok")
    assert final.read_bytes() == b"ok"


@pytest.mark.slow
def test_sigterm_cleans_up_like_ctrl_c(tmp_path, env):
    from talkcli.io.video import VideoWriter

    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, 25, (256, 256)) as w:
        for _ in range(4):
            w.write(np.random.default_rng(0).integers(0, 255, (50, 256, 256, 3), dtype=np.uint8))
    lm = landmarks_file(
        tmp_path / "lm.json", [[80, 96], [176, 96], [128, 136], [88, 176], [168, 176]]
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "talkcli", "align", str(clip), "--out", str(out), "--landmarks",
         str(lm), "--exact-warp", "--size", "512"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob(".*tmp*")):
        time.sleep(0.05)
    assert list(out.glob(".*tmp*")), "the writer never started"
    proc.send_signal(signal.SIGTERM)
    _o, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert not list(out.iterdir()), list(out.iterdir())


def test_plot_files_take_the_format_their_suffix_names(tmp_path, tiny_pack, face_images):
    jpg = tmp_path / "t.jpg"
    res = run_cli_inprocess(
        "--weights-dir", str(tiny_pack), "invert", *map(str, face_images), "--out",
        str(tmp_path / "w.npz"), "--plot", str(jpg),
    )  # fmt: skip
    assert res.code == 0, res.stderr
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes
    res = run_cli_inprocess(
        "invert", *map(str, face_images), "--out", str(tmp_path / "x.npz"), "--plot",
        str(tmp_path / "t.gif"),
    )  # fmt: skip
    assert_user_error(res, "t.gif", ".png")
    assert not (tmp_path / "x.npz").exists()


def test_resume_redoes_items_made_with_other_options(tmp_path, env, astro_png):
    lm = landmarks_file(tmp_path / "lm.json")
    args = ["align", str(astro_png), "--out", "out", "--landmarks", str(lm), "--fast-warp"]
    assert run_cli_inprocess(*args, "--size", "64").code == 0
    res = run_cli_inprocess(*args, "--size", "96", "--resume")
    assert res.code == 0, res.stderr
    assert Image.open(tmp_path / "out" / "astro.png").size == (96, 96)
    res = run_cli_inprocess(*args, "--size", "96", "--resume")
    assert "skipped" in res.stderr


def test_path_problems_are_named_precisely(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    assert_user_error(
        run_cli_inprocess("invert", str(loop), "--out", str(tmp_path / "o.npz")), "link loop"
    )
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "gone.png")
    assert_user_error(
        run_cli_inprocess("invert", str(dangling), "--out", str(tmp_path / "o.npz")),
        "broken symbolic link",
    )
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    from talkcli.io.files import require_file

    with pytest.raises(InputFileError, match="expected an image"):
        require_file(fifo, "image")


def test_unwritable_folder_message_names_no_option(tmp_path, monkeypatch):
    from talkcli.io.files import check_output_path

    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(OutputError) as info:
        check_output_path(tmp_path / "x.pt")
    assert "--out" not in str(info.value) and "not writable" in str(info.value)


def test_media_probe_reads_the_header_and_decodes_only_when_asked(tmp_path, monkeypatch, capsys):
    from talkcli.io import audio

    ogg = tmp_path / "a.ogg"
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(32000, np.float32), 16000)
    assert (
        run_cli_inprocess("media", "to-wav", str(wav), "--out", str(tmp_path / "b.wav")).code == 0
    )
    from talkcli.io.ffmpeg import run_ffmpeg

    run_ffmpeg(["-i", str(wav), "-c:a", "libvorbis", str(ogg)], what="encode")

    def no_decoding(*a, **k):
        raise AssertionError("decoded the whole file")

    monkeypatch.setattr(audio, "load_audio", no_decoding)
    assert cli.main(["media", "probe", "--json", str(ogg)]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["audio"]["duration_source"] == "header"
    assert abs(row["audio"]["duration"] - 2.0) < 0.05
    monkeypatch.undo()
    assert cli.main(["media", "probe", "--json", "--exact", str(ogg)]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["audio"]["duration_source"] == "decoded"
    assert abs(row["audio"]["duration"] - 2.0) < 0.01


def test_a_full_disk_is_a_one_line_output_error(tmp_path):
    import errno

    from talkcli.io.files import atomic_output

    final = tmp_path / "out.npz"
    with pytest.raises(OutputError, match="disk full"), atomic_output(final) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not final.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),  # ENOSPC
        OSError(122, "Disk quota exceeded"),  # EDQUOT (Linux)
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
)
def test_a_full_disk_names_the_folder_and_the_space_and_keeps_the_old_file(tmp_path, error):
    from talkcli.io.files import atomic_output

    final = tmp_path / "model.safetensors"
    final.write_bytes(b"the previous checkpoint")
    with pytest.raises(OutputError) as info, atomic_output(final, needed=3_400_000) as tmp:
        tmp.write_bytes(b"partial")
        raise error
    message = str(info.value)
    assert message.startswith(f"{final}: disk full while writing in {tmp_path}: it needs 3.4 MB")
    assert " free " in message and "\n" not in message
    assert final.read_bytes() == b"the previous checkpoint" and len(list(tmp_path.iterdir())) == 1


def test_other_write_errors_pass_through_atomic_output(tmp_path):
    from talkcli.io.files import atomic_output

    with pytest.raises(ValueError, match="a bug"), atomic_output(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError("a bug")
    assert not list(tmp_path.iterdir())


def test_a_tiny_pack_never_replaces_real_model_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = tmp_path / "weights" / registry.get("stylegan2-ffhq").relpath
    real.parent.mkdir()
    real.write_bytes(b"pretend these are the real FFHQ weights")
    res = run_cli_inprocess("weights", "tiny", "weights", "--size", "16")
    assert_user_error(res, "not a tiny pack", "--force")
    assert real.read_bytes() == b"pretend these are the real FFHQ weights"


def test_a_reader_that_goes_away_ends_the_run_quietly(tmp_path):
    """`talkcli ... | head`: stdout closed early -> exit 141 (as SIGPIPE), no error lines."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "talkcli", "weights", "list", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    proc.stdout.close()  # the reader leaves before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert err.strip() == "", err


def test_protected_imports_leave_no_trace_and_hold_signals_until_done():
    """An interrupt during `import torch` (C++ init calling back into Python) would abort the
    process if raised there; talkcli holds it until the import is over, then raises it."""
    code = (
        "import os, signal\n"
        "from talkcli import signals\n"
        "signals.install()\n"
        "import importlib.abc\n"
        "class Slow(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch.version':  # imported while torch/__init__ runs\n"
        "            os.kill(os.getpid(), signal.SIGTERM)\n"
        "import sys; sys.meta_path.insert(0, Slow())\n"
        "try:\n"
        "    import torch\n"
        "except KeyboardInterrupt as exc:\n"
        "    print(type(exc).__name__, 'torch._C' in sys.modules)\n"
        "import numpy\n"
        "print(signals.state['pending'], type(numpy.__loader__).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    # raised once torch's import ran to its end (its C++ core loaded), not in the middle of it
    assert lines[:2] == ["Terminated", "True"]
    assert lines[-2:] == ["None", "SourceFileLoader"]  # nothing left pending; no wrapper left
