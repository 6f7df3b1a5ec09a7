"""Issue 18, speed where users wait: ``--dtype auto``, ``--resolution`` / ``--preview``.

``--dtype auto`` is checked with the capability mocked both ways (CPU flags, CUDA); the
early-stopped synthesis against the skip image the full generator itself computes.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from talkcli import cli, device
from talkcli.errors import UserError

ASTRO_5 = [[203.66, 101.18], [246.56, 103.66], [224.59, 128.07], [201.68, 140.27], [244.94, 141.56]]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- --dtype auto ---------------------------------------------------------------------------------


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 {flags}\n\n")
    return path


@pytest.mark.parametrize(
    ("flags", "native"),
    [("avx2 avx512f avx512_bf16", True), ("avx2 amx_tile amx_bf16", True), ("avx2 avx512f", False)],
)
def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch, flags, native):
    monkeypatch.delenv(device.CPU_BF16_ENV, raising=False)
    assert device.cpu_has_native_bf16(_cpuinfo(tmp_path, flags)) is native
    assert device.cpu_has_native_bf16(tmp_path / "missing") is False  # no /proc: fp32
    monkeypatch.setenv(device.CPU_BF16_ENV, "1")  # the override wins both ways
    assert device.cpu_has_native_bf16(_cpuinfo(tmp_path, "avx2")) is True
    monkeypatch.setenv(device.CPU_BF16_ENV, "0")
    assert device.cpu_has_native_bf16(_cpuinfo(tmp_path, "avx512_bf16")) is False


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    expected = "bf16" if native else "fp32"
    assert device.resolve_dtype("auto", "cpu") == expected
    assert device.resolve_dtype("AUTO", torch.device("cpu")) == expected
    for explicit in ("fp32", "bf16", "fp16"):  # explicit values are kept on any machine
        assert device.resolve_dtype(explicit, "cpu") == explicit


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_follows_is_bf16_supported(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: not supported)  # not consulted
    expected = "bf16" if supported else "fp32"
    assert device.resolve_dtype("auto", "cuda:1") == expected
    assert device.resolve_dtype("auto", torch.device("cuda", 0)) == expected
    assert device.resolve_dtype("auto", "mps") == "fp32"


def test_bad_dtype_is_a_user_error():
    with pytest.raises(UserError, match="--dtype 'fp8'"):
        device.resolve_dtype("fp8", "cpu")


def test_renderer_resolves_auto_and_autocasts(monkeypatch):
    from talkcli.animate.render import FrameRenderer
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.stylegan2 import tiny_generator_state_dict

    G = generator_from_state_dict(tiny_generator_state_dict(16, channels=8)).eval()
    w = np.random.default_rng(0).standard_normal((2, G.n_latent, 512)).astype(np.float32)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    fp32 = FrameRenderer(G, "auto")
    assert fp32.dtype == "fp32"
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    bf16 = FrameRenderer(G, "auto")
    assert bf16.dtype == "bf16"
    a, b = fp32(w), bf16(w)
    assert a.shape == b.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, b)  # bf16 really ran ...
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 4  # ... and stayed close
    with torch.no_grad():
        exact = G.synthesis(torch.from_numpy(w), noise_mode="const")
    assert np.array_equal(a, ((exact.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1))


# -- --resolution: the skip image of an early block ----------------------------------------------


def _skip_images(G, w: torch.Tensor) -> dict[int, torch.Tensor]:
    """The generator's own skip image at each resolution, captured from a full synthesis."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [G.to_rgb1, *G.to_rgbs]
    handles = [
        m.register_forward_hook(lambda _m, _i, out: seen.__setitem__(out.shape[-1], out.clone()))
        for m in hooks
    ]
    try:
        with torch.no_grad():
            full = G.synthesis(w, noise_mode="const")
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(seen[G.size], full)
    return seen


def test_synthesis_at_equals_the_skip_image_of_the_full_generator():
    from talkcli.animate.render import FrameRenderer
    from talkcli.io.images import to_uint8_images
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.stylegan2 import tiny_generator_state_dict

    G = generator_from_state_dict(tiny_generator_state_dict(64, channels=8, seed=3)).eval()
    w = torch.randn(2, G.n_latent, 512, generator=torch.Generator().manual_seed(1))
    skips = _skip_images(G, w)
    assert sorted(skips) == [4, 8, 16, 32, 64]
    for r in (4, 8, 16, 32, 64):
        with torch.no_grad():
            img = G.synthesis_at(w, r, noise_mode="const")
        assert img.shape == (2, 3, r, r) and torch.equal(img, skips[r])
    frames = FrameRenderer(G, "fp32", 16)(w.numpy())
    assert frames.shape == (2, 16, 16, 3)
    assert np.array_equal(frames, to_uint8_images(skips[16]))


@pytest.mark.parametrize(
    ("resolution", "needle"),
    [(128, "renders 64x64 at most"), (48, "power of two"), (2, "power of two")],
)
def test_bad_resolution_is_a_user_error(resolution, needle):
    from talkcli.animate.render import FrameRenderer
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.stylegan2 import tiny_generator_state_dict

    G = generator_from_state_dict(tiny_generator_state_dict(64, channels=8))
    with pytest.raises(UserError, match=needle):
        FrameRenderer(G, "fp32", resolution)
    with pytest.raises(ValueError, match="power of two"):
        G.synthesis_at(torch.zeros(1, G.n_latent, 512), resolution)


# -- animate --resolution / --preview end to end (tiny pack) ------------------------------------


@pytest.fixture
def speech_wav(tmp_path, monkeypatch) -> Path:
    from tests.speech import speech

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TALKCLI_WEIGHTS", "")
    path = tmp_path / "speech.wav"
    sf.write(path, speech(0, tmp_path, seconds=3.0)[:24000], 16000, subtype="PCM_16")  # 1.5 s
    return path


@pytest.fixture(scope="module")
def face(tmp_path_factory) -> Path:
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("speed_face")
    photo = Image.fromarray(data.astronaut())
    photo.crop((0, 0, 401, 353)).save(folder / "astro.png")
    (folder / "lm.json").write_text(json.dumps({"landmarks": ASTRO_5}))
    return folder


def _animate(capsys, pack: Path, *args) -> tuple[int, str]:
    code = cli.main(["--weights-dir", str(pack), "animate", *map(str, args)])
    return code, capsys.readouterr().err


def test_preview_writes_a_short_small_video_and_resolution_paste_back(
    capsys, tiny_pack, face, speech_wav
):
    from talkcli.animate.options import AnimateOptions
    from talkcli.animate.pipeline import animate
    from talkcli.io.video import probe_video, read_video

    photo, lm = face / "astro.png", face / "lm.json"
    code, err = _animate(
        capsys, tiny_pack, "-i", photo, "--landmarks", lm, "-a", speech_wav,
        "--preview", "--preview-seconds", "0.4", "-o", "preview.mp4",
    )  # fmt: skip
    assert code == 0, err
    frames = read_video(Path("preview.mp4"))
    assert frames.shape == (10, 32, 32, 3)  # 0.4 s at 25 fps; 256 clamped to the 32 px pack
    assert probe_video(Path("preview.mp4")).duration == pytest.approx(0.4, abs=0.05)  # sound cut
    manifest = json.loads(Path("preview.json").read_text())
    assert manifest["options"]["preview"] is True and manifest["options"]["preset"] == "ultrafast"
    assert manifest["options"]["preview_seconds"] == 0.4 and manifest["dtype"] == "fp32"
    assert manifest["compile"] == {  # --compile auto: 10 frames never repay torch.compile
        "mode": "auto",
        "compiled": False,
        "startup_s": None,
        "error": None,
    }

    # the library with a resolution below the generator's, pasted back into the photo
    o = AnimateOptions(resolution=16, paste_back=True, landmarks=lm, preview_seconds=0.2)
    result = animate(photo, speech_wav, Path("small.mp4"), o, weights_dir=tiny_pack)
    assert (result.frames, result.width, result.height) == (5, 400, 352)
    small = AnimateOptions(resolution=16, landmarks=lm, preview_seconds=0.2)
    animate(photo, speech_wav, Path("s16.mp4"), small, weights_dir=tiny_pack)
    assert read_video(Path("s16.mp4")).shape == (5, 16, 16, 3)
    assert json.loads(Path("s16.json").read_text())["options"]["resolution"] == 16

    code, err = _animate(
        capsys, tiny_pack, "-i", photo, "--landmarks", lm, "-a", speech_wav,
        "--resolution", "256", "-o", "big.mp4",
    )  # fmt: skip
    assert code == 2 and "--resolution 256: the generator renders 32x32 at most" in err, err
    assert "Traceback" not in err and not Path("big.mp4").exists()


# -- PTI under bf16 autocast on the CPU ----------------------------------------------------------


def test_pti_runs_under_bf16_on_cpu_with_the_same_early_stop(tiny_pack, face_images, monkeypatch):
    from talkcli.inversion.pti import PTIConfig, evaluate_pivots, tune
    from tests.test_pti import _setup

    G, lpips, pivots, targets = _setup(tiny_pack, face_images[:1])
    start, _ = evaluate_pivots(G, lpips, pivots, targets)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)  # auto -> bf16
    result = tune(G, lpips, pivots, targets, PTIConfig(steps=30, lr=1e-3, stop_lpips=0.0))
    assert result.config["dtype"] == "bf16" and result.steps_run == 30
    assert all(math.isfinite(r["lpips"]) and math.isfinite(r["l2"]) for r in result.history)
    assert result.lpips_end < result.lpips_start and result.l2_end < result.l2_start
    # the early stop reads the same step LPIPS: stop at the first step below the threshold
    G, lpips, pivots, targets = _setup(tiny_pack, face_images[:1])
    cfg = PTIConfig(steps=300, lr=1e-3, stop_lpips=min(0.8 * start, 1.0), dtype="bf16")
    stopped = tune(G, lpips, pivots, targets, cfg)
    assert stopped.stopped_early and stopped.steps_run < 300
    assert stopped.history[-1]["lpips"] < min(0.8 * start, 1.0)
    assert all(row["lpips"] >= min(0.8 * start, 1.0) for row in stopped.history[:-1])


# -- train prepare: the reader thread ------------------------------------------------------------


def test_read_ahead_keeps_order_raises_and_stops_early():
    import threading

    from talkcli.io.video import read_ahead

    assert list(read_ahead(iter(range(7)), depth=2)) == list(range(7))

    def broken():
        yield 1
        raise ValueError("damaged")

    got = []
    with pytest.raises(ValueError, match="damaged"):
        for x in read_ahead(broken()):
            got.append(x)
    assert got == [1]
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()  # the reader closes its source when the consumer stops

    it = read_ahead(endless(), depth=3)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert closed.wait(5)


def test_prepare_keeps_fp32_by_default_even_with_native_bf16(monkeypatch):
    """bf16 pSp codes lost a small motion (docs/speed.md): prepare's default stays fp32, and
    only an explicit --dtype auto resolves to bf16 on a CPU that has it."""
    from talkcli.commands.train import prepare_cmd
    from talkcli.train.prepare import PrepareConfig

    monkeypatch.setenv("TALKCLI_CPU_BF16", "1")
    assert PrepareConfig().dtype == "fp32"
    assert device.resolve_dtype(PrepareConfig().dtype, "cpu") == "fp32"
    assert device.resolve_dtype(PrepareConfig(dtype="auto").dtype, "cpu") == "bf16"
    defaults = {p.name: p.default for p in inspect.signature(prepare_cmd).parameters.values()}
    assert str(defaults["dtype"].default) == "fp32"


def test_prepare_with_the_reader_thread_gives_the_same_codes(tiny_pack, tmp_path):
    from talkcli.io.video import VideoWriter
    from talkcli.train.prepare import PrepareConfig, plan_items, prepare_dataset, shard_paths
    from talkcli.weights import registry
    from tests.speech import speech

    folder = tmp_path / "videos" / "spk"
    folder.mkdir(parents=True)
    frames = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    audio = speech(0, tmp_path, seconds=2.0)
    with VideoWriter(folder / "clip.mp4", 25.0, audio=(audio, 16000), trim_audio=True) as w:
        w.write(frames)
    encoder = tiny_pack / registry.get("psp-ffhq-encode").relpath
    items = plan_items([folder / "clip.mp4"], None, 1, None)
    codes = {}
    for ahead in (0, 2):
        cfg = PrepareConfig(aligned=True, batch_size=8, holdout="0", read_ahead=ahead)
        data = tmp_path / f"data{ahead}"
        result = prepare_dataset(items, data, cfg, encoder)
        (rec,) = result.records
        assert rec["status"] == "ok" and rec["dtype"] == "fp32"  # prepare's default
        assert rec["compiled"] is False  # --compile auto: a short run stays eager
        codes[ahead] = shard_paths(data, rec["id"]).w.read_bytes()
    assert codes[0] == codes[2]


def test_prepare_compile_on_pads_the_last_batch_and_keeps_the_codes(
    tiny_pack, tmp_path, monkeypatch
):
    """--compile on: pSp goes through torch.compile (a stand-in here, the real one in
    tests/test_compiled.py) in fixed-size batches; the codes are the eager ones."""
    from talkcli.io.video import VideoWriter
    from talkcli.train.prepare import PrepareConfig, plan_items, prepare_dataset, shard_paths
    from talkcli.weights import registry
    from tests.speech import speech
    from tests.test_compiled import FakeCompile

    folder = tmp_path / "videos" / "spk"
    folder.mkdir(parents=True)
    frames = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    with VideoWriter(
        folder / "clip.mp4", 25.0, audio=(speech(0, tmp_path, seconds=2.0), 16000), trim_audio=True
    ) as w:
        w.write(frames)
    encoder = tiny_pack / registry.get("psp-ffhq-encode").relpath
    items = plan_items([folder / "clip.mp4"], None, 1, None)
    fake = FakeCompile()
    monkeypatch.setattr(torch, "compile", fake)
    codes = {}
    for mode in ("off", "on"):
        cfg = PrepareConfig(aligned=True, batch_size=16, holdout="0", compile=mode)
        (rec,) = prepare_dataset(items, tmp_path / mode, cfg, encoder).records
        assert rec["compiled"] is (mode == "on")
        codes[mode] = np.load(shard_paths(tmp_path / mode, rec["id"]).w).astype(np.float32)
    # the padded batch of 16 may round differently from eager's batch of 8: float16 steps only
    assert codes["on"].shape == codes["off"].shape == (40, 8, 512)
    assert np.abs(codes["on"] - codes["off"]).max() <= 2e-3
    assert fake.compiles == 1 and [s[0] for s in fake.shapes] == [16, 16, 16]  # 16, 16, 8+8
