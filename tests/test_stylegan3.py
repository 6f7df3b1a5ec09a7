"""StyleGAN3 (configs T and R) in pure PyTorch: ops, shapes, equivariance, files, commands.

Equality with NVIDIA's own code is checked by ``scripts/sg3_reference.py`` (it needs the upstream
checkout; see docs/stylegan3.md); these tests use talkcli-made random weights only.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talkcli.errors import ModelFileError
from talkcli.models.nvidia_pickle import NetworkRecord
from talkcli.models.ops import upfirdn2d
from talkcli.models.stylegan3 import (
    BUILDERS,
    NVIDIA_CLASS,
    StyleGAN3Config,
    design_lowpass_filter,
    filtered_lrelu,
    is_stylegan3_file,
    load_stylegan3,
    save_stylegan3,
)
from talkcli.tiny.stylegan3 import random_stylegan3, tiny_stylegan3_config
from tests.conftest import assert_user_error, run_cli


@pytest.fixture(scope="module", params=["T", "R"])
def sg3(request):
    return random_stylegan3(tiny_stylegan3_config(16, radial=request.param == "R"), seed=3)


def _w_plus(g, batch: int = 2, seed: int = 0) -> torch.Tensor:
    z = torch.randn(batch, g.z_dim, generator=torch.Generator().manual_seed(seed))
    return g.mapping(z)[:, None].repeat(1, g.n_latent, 1)  # (B, n_latent, D)


# -- ops ------------------------------------------------------------------------------------------


def _straightforward(x, fu, fd, b, up, down, padding, gain, slope, clamp):
    """Same op with 2-D kernels (outer products) and the StyleGAN2 upfirdn2d."""
    ku = fu[:, None] * fu[None, :] if fu.ndim == 1 else fu
    kd = fd[:, None] * fd[None, :] if fd.ndim == 1 else fd
    y = x + b.view(1, -1, 1, 1)
    y = upfirdn2d(y, ku * up**2, up=up, pad=padding)
    y = (F.leaky_relu(y, slope) * gain).clamp(-clamp, clamp)
    return upfirdn2d(y, kd, down=down)


@pytest.mark.parametrize(
    ("up", "down", "radial"), [(2, 2, False), (4, 2, False), (2, 2, True), (1, 1, False)]
)
def test_filtered_lrelu_equals_the_straightforward_two_dimensional_version(up, down, radial):
    gen = torch.Generator().manual_seed(up * 10 + down)
    x = torch.randn(2, 3, 12, 12, generator=gen) * 3
    b = torch.randn(3, generator=gen)
    fu = design_lowpass_filter(6 * up, 2.5, 3.0, 8.0 * up) if up > 1 else torch.ones(1)
    fd = design_lowpass_filter(6 * down, 2.0, 2.5, 8.0 * up, radial=radial)
    fd = torch.ones(1) if fd is None else fd
    pad = [5, 4, 3, 6]
    args = (x, fu, fd, b, up, down, pad, math.sqrt(2), 0.2, 2.0)
    got = filtered_lrelu(*args)
    want = _straightforward(*args)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.abs().max() <= 2.0 * fd.abs().sum() + 1e-5  # the clamp acted before fd


def test_lowpass_filters_pass_dc_unchanged():
    sep = design_lowpass_filter(12, 4.0, 3.0, 32)
    radial = design_lowpass_filter(12, 4.0, 3.0, 32, radial=True)
    assert sep.shape == (12,) and radial.shape == (12, 12)
    assert math.isclose(sep.sum().item(), 1.0, abs_tol=1e-5)
    assert math.isclose(radial.sum().item(), 1.0, abs_tol=1e-5)
    assert torch.allclose(radial, radial.t()) and torch.allclose(sep, sep.flip(0))
    assert design_lowpass_filter(1, 4.0, 3.0, 32) is None


# -- the generator --------------------------------------------------------------------------------


def test_shapes_interface_and_determinism(sg3):
    assert (sg3.size, sg3.style_dim, sg3.n_latent) == (16, 512, 6)  # like the tiny StyleGAN2
    ws = _w_plus(sg3)
    with torch.no_grad():
        img = sg3.synthesis(ws, noise_mode="const")
        again = sg3.synthesis(ws, noise_mode="random")  # no noise in StyleGAN3: ignored
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    assert torch.equal(img, again) and 0.02 < img.std() < 2
    twin = random_stylegan3(sg3.cfg, seed=3)
    assert all(
        torch.equal(a, b)
        for a, b in zip(sg3.state_dict().values(), twin.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="W\\+ of shape"):
        sg3.synthesis(ws[:, :-1])


def test_truncation_pulls_w_toward_latent_avg(sg3):
    z = torch.randn(3, 512)
    w = sg3.mapping(z)
    half = sg3.mapping(z, truncation=0.5)
    torch.testing.assert_close(half, sg3.latent_avg + 0.5 * (w - sg3.latent_avg))
    centre = torch.randn(512)
    torch.testing.assert_close(
        sg3.mapping(z, truncation=0.0, truncation_latent=centre), centre.expand(3, -1)
    )
    assert sg3.mean_latent(256, seed=1).shape == (512,)


def test_config_t_is_translation_equivariant():
    """A translation of the input transform by whole output pixels shifts the image."""
    g = random_stylegan3(tiny_stylegan3_config(32), seed=0)
    ws = _w_plus(g, batch=1)
    with torch.no_grad():
        base = g.synthesis(ws)
        transform = torch.eye(3)
        transform[0, 2] = -4 / 32  # the inverse transform: content moves 4 px to the right
        g.synthesis.input.transform.copy_(transform)
        moved = g.synthesis(ws)
        g.synthesis.input.transform.copy_(torch.eye(3))
    inner = (..., slice(6, -6), slice(6, -6))
    right = (moved[..., 4:] - base[..., :-4])[inner].pow(2).mean()
    wrong = (moved[..., :-4] - base[..., 4:])[inner].pow(2).mean()
    assert right < 1e-4 * base.pow(2).mean() and wrong > 0.1 * base.pow(2).mean()


# -- NVIDIA records and talkcli's file ------------------------------------------------------------


def test_builds_from_a_network_record_strictly(sg3):
    state = {k: v.clone() for k, v in sg3.state_dict().items()}
    record = NetworkRecord("G_ema", NVIDIA_CLASS, sg3.cfg.as_init_kwargs(), state)
    g = BUILDERS[NVIDIA_CLASS](record)
    ws = _w_plus(sg3)
    with torch.no_grad():
        assert torch.equal(g.synthesis(ws), sg3.synthesis(ws))
    assert g.checkpoint_kind == "nvidia" and torch.equal(g.latent_avg, sg3.latent_avg)
    del state["mapping.w_avg"]
    with pytest.raises(ModelFileError, match="missing keys: mapping.w_avg"):
        BUILDERS[NVIDIA_CLASS](record)
    bad = NetworkRecord("G", NVIDIA_CLASS, {**sg3.cfg.as_init_kwargs(), "c_dim": 10}, state)
    with pytest.raises(ModelFileError, match="conditional"):
        BUILDERS[NVIDIA_CLASS](bad)
    huge = NetworkRecord("G", NVIDIA_CLASS, {"img_resolution": 1 << 20}, state)
    with pytest.raises(ModelFileError):
        BUILDERS[NVIDIA_CLASS](huge)
    with pytest.raises(ModelFileError, match="not understood: exec"):
        StyleGAN3Config.from_init_kwargs({"exec": "x"})


def test_file_round_trip_through_load_generator(sg3, tmp_path):
    from talkcli.models.stylegan2 import load_generator, save_generator

    path = save_stylegan3(tmp_path / "g.safetensors", sg3, {"note": "x"})
    assert is_stylegan3_file(path)
    g = load_generator(path)
    assert g.checkpoint_kind == "talkcli" and g.metadata == {"note": "x"}
    ws = _w_plus(sg3)
    with torch.no_grad():
        assert torch.equal(g.synthesis(ws), sg3.synthesis(ws))
    tuned = save_generator(tmp_path / "tuned.pt", g, {"pti": 1})  # tune-pti's name: still SG3
    assert is_stylegan3_file(tuned) and load_generator(tuned).metadata == {"pti": 1}
    assert not is_stylegan3_file(tmp_path / "missing.safetensors")


def test_damaged_files_are_refused_in_one_line(sg3, tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_stylegan3(tmp_path / "g.safetensors", sg3)
    tensors = load_file(str(path))
    meta = {"arch": "stylegan3", "config": json.dumps(sg3.cfg.as_init_kwargs())}
    tensors["synthesis.input.freqs"] = tensors["synthesis.input.freqs"][:, :1].contiguous()
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="wrong shapes: synthesis.input.freqs"):
        load_stylegan3(tmp_path / "bad.safetensors")
    save_file(tensors, str(tmp_path / "cfg.safetensors"), metadata={**meta, "config": "[1"})
    with pytest.raises(ModelFileError, match="'config' is not a JSON object"):
        load_stylegan3(tmp_path / "cfg.safetensors")


# -- commands on a tiny StyleGAN3 -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sg3_pack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sg3_pack")
    result = run_cli("weights", "tiny", str(folder), "--size", "32", "--arch", "stylegan3")
    assert result.code == 0, result.stderr
    path = folder / "tiny-stylegan3-t.safetensors"
    assert (
        path.is_file()
        and "stylegan3" in json.loads((folder / "TINY-PACK.json").read_text())["files"]
    )
    return folder, path


def test_invert_optimize_runs_on_a_stylegan3(sg3_pack, face_images, tmp_path):
    folder, generator = sg3_pack
    face = face_images[0]  # 32 px: LPIPS-alex needs at least 32
    out = tmp_path / "w.npz"
    result = run_cli(
        "--weights-dir", str(folder), "invert", str(face), "--method", "optimize",
        "--generator", str(generator), "--steps", "6", "--first-steps", "6", "--lpips", "alex",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    loss = json.loads(result.stdout)["losses"][0]
    assert loss["steps"] == 6 and loss["loss_end"] < loss["loss_start"]
    assert np.load(out)["w"].shape[-2:] == (8, 512)


def test_animate_from_trajectory_renders_with_a_stylegan3(sg3_pack, tmp_path):
    import soundfile as sf

    folder, generator = sg3_pack
    rng = np.random.default_rng(0)
    w = rng.normal(size=(10, 8, 512)).astype(np.float32) * 0.3
    np.savez(tmp_path / "t.npz", w=w, w_identity=w[0], fps=np.float64(25.0))
    sf.write(tmp_path / "a.wav", rng.normal(size=6400) * 0.1, 16000, subtype="PCM_16")
    out = tmp_path / "v.mp4"
    result = run_cli(
        "--weights-dir", str(folder), "animate", "--from-trajectory", str(tmp_path / "t.npz"),
        "--audio", str(tmp_path / "a.wav"), "--generator", str(generator), "-o", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert out.is_file() and out.stat().st_size > 0


def test_tune_pti_writes_a_stylegan3_that_loads_back(sg3_pack, face_images, tmp_path):
    from talkcli.models.stylegan2 import load_generator

    folder, generator = sg3_pack
    out = tmp_path / "tuned.pt"
    result = run_cli(
        "--weights-dir", str(folder), "tune-pti", str(face_images[0]), "--generator",
        str(generator), "--pivot-method", "w-project", "--project-steps", "3", "--steps", "2",
        "-o", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    tuned, base = load_generator(out), load_generator(generator)
    assert type(tuned).__name__ == "StyleGAN3Generator" and tuned.metadata["kind"]
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed and not any(k.endswith(("_filter", "freqs", "phases")) for k in changed)


def test_tiny_config_r_file_loads(tmp_path):
    from talkcli.models.stylegan2 import load_generator
    from talkcli.tiny.stylegan3 import write_tiny_stylegan3

    g = load_generator(write_tiny_stylegan3(tmp_path / "r.safetensors", 32, seed=1, radial=True))
    assert g.cfg.use_radial_filters and g.cfg.conv_kernel == 1 and g.n_latent == 8
    assert g.synthesis.L0_24_64.down_filter.ndim == 2  # radial: not separable


def test_encoder_methods_refuse_a_stylegan3_in_one_line(sg3_pack, face_images, tmp_path):
    folder, generator = sg3_pack
    result = run_cli(
        "--weights-dir", str(folder), "invert", str(face_images[0]), "--method", "hybrid",
        "--generator", str(generator), "--out", str(tmp_path / "w.npz"),
    )  # fmt: skip
    assert_user_error(result, "StyleGAN3", "--method optimize")
