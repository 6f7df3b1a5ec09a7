"""StyleGAN2 generator: rosinality semantics, loaders, strict layout checks, noise modes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talkcli.errors import EXIT_USER, ModelFileError, UserError
from talkcli.models.stylegan2 import (
    GeneratorConfig,
    expected_shapes,
    generator_from_checkpoint,
    generator_from_state_dict,
    infer_config,
    load_generator,
    save_generator,
)
from talkcli.tiny.stylegan2 import (
    full_generator_state_dict,
    tiny_channels,
    tiny_generator_checkpoint,
    tiny_generator_state_dict,
)

KEYS_JSON = (
    Path(__file__).resolve().parents[2] / "shared/formats/rosinality_stylegan2_1024_keys.json"
)
ODD_CHANNELS = {4: 16, 8: 12, 16: 8, 32: 6}


# -- an independent reference: rosinality's forward written out per sample from the raw keys ----


def _ref_upfirdn(x, k, up, pad0, pad1):
    """rosinality's upfirdn2d_native (one channel at a time), symmetric pads, down = 1."""
    b, c, h, w = x.shape
    out = x.reshape(b * c, 1, h, 1, w, 1)
    out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1]).reshape(b * c, 1, h * up, w * up)
    out = F.pad(out, [pad0, pad1, pad0, pad1])
    out = F.conv2d(out, torch.flip(k, [0, 1]).view(1, 1, *k.shape))
    return out.reshape(b, c, out.shape[2], out.shape[3])


def _lrelu(x, bias):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), 0.2) * math.sqrt(2)


_BLUR = torch.tensor(np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 16.0, dtype=torch.float32)


def _ref_modconv(sd, prefix, x, w, demodulate, up):
    weight = sd[f"{prefix}.weight"][0]  # (out, in, k, k)
    cin, k = weight.shape[1], weight.shape[-1]
    mw, mb = sd[f"{prefix}.modulation.weight"], sd[f"{prefix}.modulation.bias"]
    style = F.linear(w, mw / math.sqrt(mw.shape[1]), mb)  # EqualLinear, lr_mul 1
    outs = []
    for b in range(x.shape[0]):
        wb = weight / math.sqrt(cin * k * k) * style[b].view(1, cin, 1, 1)
        if demodulate:
            wb = wb * torch.rsqrt(wb.pow(2).sum([1, 2, 3]) + 1e-8).view(-1, 1, 1, 1)
        if up:
            o = F.conv_transpose2d(x[b : b + 1], wb.transpose(0, 1), stride=2)
            o = _ref_upfirdn(o, _BLUR, 1, 1, 1)
        else:
            o = F.conv2d(x[b : b + 1], wb, padding=k // 2)
        outs.append(o)
    return torch.cat(outs)


def ref_mapping(sd, z):
    x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    i = 1
    while f"style.{i}.weight" in sd:
        wt, b = sd[f"style.{i}.weight"], sd[f"style.{i}.bias"]
        x = _lrelu(F.linear(x, wt * (0.01 / math.sqrt(wt.shape[1]))), b * 0.01)
        i += 1
    return x


def ref_synthesis(sd, w_plus, noises):
    """noises: list of maps per layer (None = no noise)."""

    def styled(prefix, x, w, noise, up):
        out = _ref_modconv(sd, f"{prefix}.conv", x, w, True, up)
        if noise is not None:
            out = out + sd[f"{prefix}.noise.weight"] * noise
        return _lrelu(out, sd[f"{prefix}.activate.bias"])

    def to_rgb(prefix, x, w, skip):
        out = _ref_modconv(sd, f"{prefix}.conv", x, w, False, False) + sd[f"{prefix}.bias"]
        if skip is not None:
            out = out + _ref_upfirdn(skip, _BLUR, 2, 2, 1)
        return out

    batch = w_plus.shape[0]
    x = sd["input.input"].repeat(batch, 1, 1, 1)
    x = styled("conv1", x, w_plus[:, 0], noises[0], False)
    skip = to_rgb("to_rgb1", x, w_plus[:, 1], None)
    j = 0
    while f"to_rgbs.{j}.bias" in sd:
        i = 2 * j + 1
        x = styled(f"convs.{2 * j}", x, w_plus[:, i], noises[2 * j + 1], True)
        x = styled(f"convs.{2 * j + 1}", x, w_plus[:, i + 1], noises[2 * j + 2], False)
        skip = to_rgb(f"to_rgbs.{j}", x, w_plus[:, i + 2], skip)
        j += 1
    return skip


@pytest.fixture(scope="module")
def tiny_sd():
    return tiny_generator_state_dict(size=32, style_dim=64, channels=ODD_CHANNELS, n_mlp=3, seed=1)


@pytest.fixture(scope="module")
def tiny_g(tiny_sd):
    return generator_from_state_dict(tiny_sd)


@pytest.fixture(scope="module")
def rosinality_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "tiny-g.pt"
    torch.save(tiny_generator_checkpoint(size=16, seed=3), path)
    return path


def _w_plus(g, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, g.n_latent, g.style_dim, generator=gen)


# -- semantics ----------------------------------------------------------------------------------


def test_architecture_is_read_from_the_state_dict(tiny_g):
    assert (tiny_g.size, tiny_g.n_latent, tiny_g.style_dim, tiny_g.n_mlp) == (32, 8, 64, 3)
    assert tiny_g.channels == ODD_CHANNELS
    assert tiny_g.num_layers == 7


def test_state_dict_is_the_rosinality_layout(tiny_sd, tiny_g):
    got = tiny_g.state_dict()
    assert list(got) == list(tiny_sd)  # same keys, same order, no extra buffers
    for k, v in tiny_sd.items():
        assert torch.equal(got[k], v), k
    assert "latent_avg" not in got


def test_synthesis_matches_reference_forward(tiny_sd, tiny_g):
    w_plus = _w_plus(tiny_g, batch=3)  # a different w for every layer: checks the index use
    noises = [tiny_sd[f"noises.noise_{i}"] for i in range(tiny_g.num_layers)]
    with torch.no_grad():
        got = tiny_g.synthesis(w_plus, noise_mode="const")
        ref = ref_synthesis(tiny_sd, w_plus, noises)
    assert got.shape == (3, 3, 32, 32)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_mapping_matches_reference_and_truncation(tiny_sd, tiny_g):
    z = torch.randn(4, 64)
    with torch.no_grad():
        w = tiny_g.mapping(z)
        torch.testing.assert_close(w, ref_mapping(tiny_sd, z), rtol=1e-5, atol=1e-5)
        center = torch.randn(64)
        half = tiny_g.mapping(z, truncation=0.5, truncation_latent=center)
        torch.testing.assert_close(half, center + 0.5 * (w - center))
        flat = tiny_g.mapping(z, truncation=0.0)
    assert torch.allclose(flat, tiny_g.latent_avg.expand(4, -1))


def test_forward_from_z_equals_synthesis_of_broadcast_w(tiny_g):
    z = torch.randn(2, 64)
    with torch.no_grad():
        w = tiny_g.mapping(z)
        a = tiny_g(z)
        b = tiny_g.synthesis(w[:, None].repeat(1, tiny_g.n_latent, 1))
        c = tiny_g(w, input_is_w=True)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_default_widths_512_style_and_output_range():
    g = generator_from_state_dict(tiny_generator_state_dict(size=64))
    assert (g.size, g.n_latent, g.style_dim, g.n_mlp) == (64, 10, 512, 8)
    assert g.channels == tiny_channels(64)
    with torch.no_grad():
        img = g(torch.randn(4, 512))
    assert img.shape == (4, 3, 64, 64)
    assert torch.isfinite(img).all()
    assert 0.05 < float(img.std()) < 1.5
    assert float((img.abs() <= 1).float().mean()) > 0.8  # mostly within [-1, 1]


def test_noise_modes(tiny_g):
    w = _w_plus(tiny_g)
    with torch.no_grad():
        c1 = tiny_g.synthesis(w, noise_mode="const")
        c2 = tiny_g.synthesis(w, noise_mode="const")
        r1 = tiny_g.synthesis(w, noise_mode="random")
        r2 = tiny_g.synthesis(w, noise_mode="random")
        n1 = tiny_g.synthesis(w, noise_mode="none")
        zeros = [torch.zeros_like(n) for n in tiny_g.noise_buffers()]
        n2 = tiny_g.synthesis(w, noise=zeros)
        explicit = tiny_g.synthesis(w, noise=tiny_g.noise_buffers())
    assert torch.equal(c1, c2)  # fixed noise: no flicker across video frames
    assert not torch.allclose(r1, r2)
    assert not torch.allclose(r1, c1)
    assert not torch.allclose(n1, c1)
    torch.testing.assert_close(n1, n2)
    assert torch.equal(explicit, c1)


def test_synthesis_checks_its_input(tiny_g):
    with pytest.raises(ValueError, match=r"\(B, 8, 64\).*got \(2, 18, 64\)"):
        tiny_g.synthesis(torch.zeros(2, 18, 64))
    with pytest.raises(ValueError, match="got \\(2, 64\\)"):
        tiny_g.synthesis(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="noise_mode"):
        tiny_g.synthesis(torch.zeros(1, 8, 64), noise_mode="fixed")
    with pytest.raises(ValueError, match="7 maps"):
        tiny_g.synthesis(torch.zeros(1, 8, 64), noise=[None] * 3)
    with pytest.raises(ValueError, match="mapping expects"):
        tiny_g.mapping(torch.zeros(2, 512))


def test_gradients_reach_w_plus(tiny_g):
    w = _w_plus(tiny_g, batch=1).requires_grad_(True)
    tiny_g.synthesis(w).square().mean().backward()
    assert w.grad is not None and float(w.grad.abs().sum()) > 0


# -- loaders ------------------------------------------------------------------------------------


def test_rosinality_file_loads(rosinality_file):
    ckpt = torch.load(rosinality_file, weights_only=True)
    g = load_generator(rosinality_file)
    assert g.size == 16 and g.checkpoint_kind == "rosinality" and g.metadata == {}
    assert torch.equal(g.latent_avg, ckpt["latent_avg"])
    assert not g.latent_avg_computed
    assert not any(p.requires_grad for p in g.parameters())
    assert all(
        p.requires_grad for p in load_generator(rosinality_file, trainable=True).parameters()
    )
    assert load_generator(rosinality_file, device="cpu").device.type == "cpu"
    with pytest.raises(UserError, match="--device"):
        load_generator(rosinality_file, device="gpu0")


def test_make_noise_is_seeded_and_shaped(tiny_g):
    a = tiny_g.make_noise(2, generator=torch.Generator().manual_seed(1))
    b = tiny_g.make_noise(2, generator=torch.Generator().manual_seed(1))
    assert [tuple(n.shape) for n in a] == [(2, 1, r, r) for r in (4, 8, 8, 16, 16, 32, 32)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with torch.no_grad():
        img = tiny_g.synthesis(_w_plus(tiny_g), noise=a)
    assert img.shape == (2, 3, 32, 32)


def test_tiny_pack_round_trips_through_every_loader(rosinality_file, tmp_path):
    g = load_generator(rosinality_file)
    w = _w_plus(g, batch=2)
    with torch.no_grad():
        base = g.synthesis(w)
    sd = g.state_dict_rosinality()

    # pSp checkpoint: encoder + decoder, latent_avg repeated over the 10 layers, opts
    psp = {
        "state_dict": {
            "encoder.input_layer.0.weight": torch.randn(4, 3, 3, 3),
            **{f"decoder.{k}": v for k, v in sd.items()},
        },
        "latent_avg": g.latent_avg[None].repeat(g.n_latent, 1),
        "opts": {"encoder_type": "GradualStyleEncoder", "output_size": 16},
    }
    psp_path = tmp_path / "psp.pt"
    torch.save(psp, psp_path)
    gp = load_generator(psp_path)
    assert gp.checkpoint_kind == "psp"
    torch.testing.assert_close(gp.latent_avg, g.latent_avg)

    # talkcli tuned file with metadata
    meta = {"tuned_on": "face.png", "steps": 350, "lpips": 0.05, "pivots": [1, 2]}
    tuned_path = save_generator(tmp_path / "tuned.pt", g, metadata=meta)
    gt = load_generator(tuned_path)
    assert gt.checkpoint_kind == "talkcli" and gt.metadata == meta
    assert set(torch.load(tuned_path, weights_only=True)) == {"g_ema", "latent_avg", "talkcli"}

    for other in (gp, gt):
        with torch.no_grad():
            assert torch.equal(other.synthesis(w), base)


def test_save_generator_round_trip_and_atomic(tiny_g, tmp_path):
    tiny_g.latent_avg = torch.randn(64)
    path = save_generator(tmp_path / "g.pt", tiny_g)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt"]  # no temporary left behind
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"g_ema", "latent_avg"}  # no metadata -> plain rosinality file
    assert list(ckpt["g_ema"]) == list(tiny_g.state_dict())
    g2 = load_generator(path)
    w = _w_plus(tiny_g)
    with torch.no_grad():
        assert torch.equal(g2.synthesis(w), tiny_g.synthesis(w))
    assert torch.equal(g2.latent_avg, tiny_g.latent_avg)
    with pytest.raises(TypeError, match="metadata.when"):
        save_generator(tmp_path / "bad.pt", tiny_g, metadata={"when": object()})
    assert not (tmp_path / "bad.pt").exists()


def test_missing_latent_avg_is_computed(tmp_path):
    sd = tiny_generator_state_dict(size=8, style_dim=32, channels=8, n_mlp=2)
    g = generator_from_checkpoint({"g_ema": sd})
    assert g.latent_avg_computed
    torch.testing.assert_close(g.latent_avg, g.mean_latent(10_000, seed=0))
    z = torch.randn(20_000, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        empirical = g.mapping(z).mean(0)
    assert float((empirical - g.latent_avg).abs().max()) < 0.1


# -- strict errors -------------------------------------------------------------------------------


def _error_for(tmp_path, obj, name="bad.pt") -> ModelFileError:
    path = tmp_path / name
    torch.save(obj, path)
    with pytest.raises(ModelFileError) as info:
        load_generator(path)
    err = info.value
    assert err.exit_code == EXIT_USER == 2
    assert "\n" not in str(err)
    assert str(path) in str(err)
    return err


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    sd = tiny_generator_state_dict(size=16, style_dim=32, channels=8, n_mlp=2)
    missing = dict(sd)
    del missing["convs.1.noise.weight"]
    msg = str(_error_for(tmp_path, {"g_ema": missing, "latent_avg": torch.zeros(32)}))
    assert "missing keys: convs.1.noise.weight" in msg

    extra = {**sd, "convs.1.extra": torch.zeros(3)}
    msg = str(_error_for(tmp_path, {"g_ema": extra, "latent_avg": torch.zeros(32)}))
    assert "unexpected keys: convs.1.extra" in msg

    wrong = {**sd, "to_rgbs.1.bias": torch.zeros(1, 4, 1, 1)}
    msg = str(_error_for(tmp_path, {"g_ema": wrong, "latent_avg": torch.zeros(32)}))
    assert "wrong shapes: to_rgbs.1.bias (1, 4, 1, 1) expected (1, 3, 1, 1)" in msg

    many = {k: v for k, v in sd.items() if not k.startswith("convs.")}  # 22 keys missing
    msg = str(_error_for(tmp_path, {"g_ema": many, "latent_avg": torch.zeros(32)}))
    assert "missing keys: convs.0.conv.weight, convs.0.conv.blur.kernel" in msg
    assert "(+17 more)" in msg


def test_strictness_compares_against_exact_expected_layout():
    sd = tiny_generator_state_dict(size=16, style_dim=32, channels=8, n_mlp=2)
    cfg = infer_config(sd)
    assert cfg == GeneratorConfig(16, 32, 2, {4: 8, 8: 8, 16: 8})
    assert expected_shapes(cfg) == {k: tuple(v.shape) for k, v in sd.items()}


def test_bad_containers_are_refused_with_what_was_found(tmp_path):
    sd = tiny_generator_state_dict(size=8, style_dim=16, channels=4, n_mlp=1)
    assert "found a list" in str(_error_for(tmp_path, [1, 2, 3]))
    msg = str(_error_for(tmp_path, {"model": 1, "epoch": 3}))
    assert "found a dict with keys model, epoch" in msg and "g_ema" in msg
    assert "wrap it as" in str(_error_for(tmp_path, sd))
    nodec = {"state_dict": {"encoder.x": torch.zeros(1)}, "latent_avg": torch.zeros(18, 512)}
    assert "no decoder.* keys" in str(_error_for(tmp_path, nodec))
    bad_avg = {"g_ema": sd, "latent_avg": torch.zeros(5, 7)}
    assert "'latent_avg' has shape (5, 7)" in str(_error_for(tmp_path, bad_avg))
    not_tensor = {"g_ema": {**sd, "input.input": [1.0]}, "latent_avg": torch.zeros(16)}
    assert "not float tensors: input.input" in str(_error_for(tmp_path, not_tensor))


def test_truncated_file_and_renamed_png_exit_2(rosinality_file, tmp_path):
    data = rosinality_file.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    png = tmp_path / "photo.pt"
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(png, format="PNG")
    for path in (truncated, png):
        with pytest.raises(ModelFileError) as info:
            load_generator(path)
        assert info.value.exit_code == 2
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        assert "PyTorch" in str(info.value)  # wording: talkcli.weights.safe_load


# -- the exact official 1024 layout ----------------------------------------------------------------


@pytest.mark.slow
def test_official_1024_layout_loads_strictly_and_renders(tmp_path):
    sd = full_generator_state_dict(size=1024, seed=0)
    if KEYS_JSON.is_file():  # compare with the key list of the real file
        spec = json.loads(KEYS_JSON.read_text())
        assert [(k, tuple(v.shape)) for k, v in sd.items()] == [
            (k, tuple(s)) for k, s in spec["keys"]
        ]
        for k, value in spec["fixed_buffers"].items():
            np.testing.assert_allclose(sd[k].numpy(), np.asarray(value), rtol=0, atol=1e-7)
    path = tmp_path / "stylegan2-ffhq-config-f.pt"
    torch.save({"g_ema": sd, "latent_avg": torch.randn(512)}, path)
    del sd
    g = load_generator(path)
    assert (g.size, g.n_latent, g.style_dim, g.n_mlp) == (1024, 18, 512, 8)
    widths = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    assert g.channels == widths
    with torch.no_grad():
        w = g.mapping(torch.randn(1, 512))[:, None].repeat(1, 18, 1)
        img = g.synthesis(w, noise_mode="const")
    assert img.shape == (1, 3, 1024, 1024)
    assert torch.isfinite(img).all()
    os.remove(path)
