"""pSp encoder: official key layout, tiny-pack round trip, forward against a functional reference,
image preprocessing, and one-line errors for broken checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from talkcli.errors import EXIT_USER, ModelFileError
from talkcli.models.psp import (
    PSPEncoder,
    encoder_from_state_dict,
    encoder_state_dict_shapes,
    layout_from_state_dict,
    load_encoder,
    official_layout,
    preprocess,
)
from talkcli.tiny.psp import (
    default_opts,
    full_encoder_state_dict,
    tiny_encoder_state_dict,
    tiny_latent_avg,
    write_psp_checkpoint,
)
from tests.conftest import SHARED

KEYS_JSON = SHARED / "formats" / "psp_gradual_style_encoder_keys.json"


def _decoder_sd() -> dict[str, torch.Tensor]:
    """The decoder half of the pSp file: a tiny rosinality generator when available."""
    try:
        from talkcli.tiny.stylegan2 import tiny_generator_state_dict
    except ImportError:  # pragma: no cover - the generator module is part of the project
        return {"style.1.weight": torch.randn(8, 512)}
    return tiny_generator_state_dict(size=64, seed=0)


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return tiny_encoder_state_dict(n_styles=10, units=(2, 1, 3, 1), seed=3)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_sd):
    path = tmp_path_factory.mktemp("psp") / "psp_tiny.pt"
    latent_avg = tiny_latent_avg(10, 512, seed=1)
    write_psp_checkpoint(path, tiny_sd, _decoder_sd(), latent_avg, default_opts(10))
    return path, latent_avg


# -- the official layout --------------------------------------------------------------------


def test_official_layout_equals_the_shared_key_list():
    if not KEYS_JSON.is_file():
        pytest.skip("../shared/formats is not present beside the checkout")
    ref = json.loads(KEYS_JSON.read_text())["keys"]
    ours = encoder_state_dict_shapes(18)
    assert list(ours) == [k for k, _shape, _dtype in ref]  # same keys, same order
    assert ours == {k: tuple(shape) for k, shape, _dtype in ref}
    # Inferring the layout back from the official shapes gives IR-SE50 with 18 styles.
    meta = {
        k: torch.empty(shape, dtype=getattr(torch, dtype.split(".")[1]), device="meta")
        for k, shape, dtype in ref
    }
    layout = layout_from_state_dict(meta)
    assert layout == official_layout(18)
    assert layout.stage_ends == (6, 20, 23)
    assert [u[2] for u in layout.units].count(2) == 4  # four stride-2 stage starts
    assert layout.c_widths == (128, 256, 512)


@pytest.mark.slow
def test_full_size_encoder_forward():
    """Exact official widths (267 M parameters): load strictly and encode one image."""
    sd = full_encoder_state_dict(seed=0)
    if KEYS_JSON.is_file():
        ref = json.loads(KEYS_JSON.read_text())["keys"]
        assert {k: (tuple(v.shape), str(v.dtype)) for k, v in sd.items()} == {
            k: (tuple(s), d) for k, s, d in ref
        }
    E = PSPEncoder(encoder_from_state_dict(sd), tiny_latent_avg(18, 512), default_opts(18))
    del sd
    with torch.no_grad():
        w = E.encode(torch.rand(1, 3, 256, 256) * 2 - 1)
    assert w.shape == (1, 18, 512)
    assert torch.isfinite(w).all()


# -- tiny pack round trip ---------------------------------------------------------------------


def test_tiny_pack_round_trips_through_the_loader(tiny_ckpt, tiny_sd):
    path, latent_avg = tiny_ckpt
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"state_dict", "opts", "latent_avg"}
    assert any(k.startswith("decoder.") for k in ckpt["state_dict"])
    assert ckpt["latent_avg"].shape == (10, 512)

    E = load_encoder(path, device="cpu")
    assert (E.n_styles, E.style_dim) == (10, 512)
    loaded = E.encoder.state_dict()
    assert list(loaded) == list(tiny_sd)
    for k, v in tiny_sd.items():
        assert torch.equal(loaded[k], v), k
    assert not E.training and not any(p.requires_grad for p in E.parameters())
    E.train()  # stays frozen: BatchNorm must keep using running statistics
    assert not E.training
    assert torch.equal(E.latent_avg, latent_avg)


def test_tiny_pack_running_stats_are_sensible(tiny_sd):
    var = [v for k, v in tiny_sd.items() if k.endswith("running_var")]
    assert var and all((v > 0).all() for v in var)
    again = tiny_encoder_state_dict(n_styles=10, units=(2, 1, 3, 1), seed=3)
    assert all(torch.equal(again[k], v) for k, v in tiny_sd.items())
    other = tiny_encoder_state_dict(n_styles=10, units=(2, 1, 3, 1), seed=4)
    assert not torch.equal(other["input_layer.0.weight"], tiny_sd["input_layer.0.weight"])


def test_layout_inference_finds_stages_and_styles(tiny_sd):
    layout = layout_from_state_dict(tiny_sd)
    # units (2, 1, 3, 1): c1 ends unit 2, c2 ends unit 5, c3 ends unit 6
    assert layout.stage_ends == (2, 5, 6)
    assert [u[2] for u in layout.units] == [2, 1, 2, 2, 1, 1, 2]
    assert (layout.n_styles, layout.style_hidden, layout.style_dim) == (10, 16, 512)
    assert layout.c_widths == (16, 24, 32)


def _bn(sd, p, h):
    return F.batch_norm(
        h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"]
    )


def _reference_forward(sd, x, stage_units):
    """pSp's GradualStyleEncoder written out with functional ops, straight from the keys."""
    h = F.conv2d(x, sd["input_layer.0.weight"], padding=1)
    h = F.prelu(_bn(sd, "input_layer.1", h), sd["input_layer.2.weight"])
    taps, i = [], 0
    for n in stage_units:
        for j in range(n):
            s = 2 if j == 0 else 1
            p = f"body.{i}"
            if f"{p}.shortcut_layer.0.weight" in sd:
                sc = _bn(
                    sd,
                    f"{p}.shortcut_layer.1",
                    F.conv2d(h, sd[f"{p}.shortcut_layer.0.weight"], stride=s),
                )
            else:
                sc = h[:, :, ::s, ::s]  # MaxPool2d(1, s)
            r = _bn(sd, f"{p}.res_layer.0", h)
            r = F.conv2d(r, sd[f"{p}.res_layer.1.weight"], padding=1)
            r = F.prelu(r, sd[f"{p}.res_layer.2.weight"])
            r = F.conv2d(r, sd[f"{p}.res_layer.3.weight"], stride=s, padding=1)
            r = _bn(sd, f"{p}.res_layer.4", r)
            g = r.mean(dim=(2, 3), keepdim=True)
            g = F.conv2d(
                F.relu(F.conv2d(g, sd[f"{p}.res_layer.5.fc1.weight"])),
                sd[f"{p}.res_layer.5.fc2.weight"],
            )
            h = r * torch.sigmoid(g) + sc
            i += 1
        taps.append(h)
    c1, c2, c3 = taps[1:]
    p2 = F.interpolate(c3, size=c2.shape[2:], mode="bilinear", align_corners=True)
    p2 = p2 + F.conv2d(c2, sd["latlayer1.weight"], sd["latlayer1.bias"])
    p1 = F.interpolate(p2, size=c1.shape[2:], mode="bilinear", align_corners=True)
    p1 = p1 + F.conv2d(c1, sd["latlayer2.weight"], sd["latlayer2.bias"])
    codes = []
    n_styles = len({k.split(".")[1] for k in sd if k.startswith("styles.")})
    for k in range(n_styles):
        f = c3 if k < 3 else p2 if k < 7 else p1
        j = 0
        while f"styles.{k}.convs.{j}.weight" in sd:
            w, b = sd[f"styles.{k}.convs.{j}.weight"], sd[f"styles.{k}.convs.{j}.bias"]
            f = F.leaky_relu(F.conv2d(f, w, b, stride=2, padding=1), 0.01)
            j += 2
        assert f.shape[2:] == (1, 1)
        lw = sd[f"styles.{k}.linear.weight"]
        codes.append(f.flatten(1) @ (lw / math.sqrt(lw.shape[1])).T + sd[f"styles.{k}.linear.bias"])
    return torch.stack(codes, dim=1)


def test_encode_matches_functional_reference_and_adds_latent_avg(tiny_ckpt, tiny_sd):
    path, latent_avg = tiny_ckpt
    E = load_encoder(path)
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        w = E.encode(x)
        raw = E.encoder(x)
        ref = _reference_forward(tiny_sd, x, (2, 1, 3, 1))
    assert w.shape == (2, 10, 512)
    torch.testing.assert_close(raw, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w, ref + latent_avg, rtol=1e-4, atol=1e-4)
    assert (raw[0] - raw[1]).abs().max() > 1e-4  # different images give different codes


def test_start_from_latent_avg_false_leaves_codes_raw(tmp_path, tiny_sd):
    path = tmp_path / "p.pt"
    write_psp_checkpoint(path, tiny_sd, {}, None, default_opts(10, start_from_latent_avg=False))
    E = load_encoder(path)
    x = torch.zeros(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(E.encode(x), E.encoder(x))


def test_latent_avg_of_one_vector_is_repeated(tmp_path, tiny_sd):
    path = tmp_path / "p.pt"
    avg = torch.randn(512)
    write_psp_checkpoint(path, tiny_sd, {}, avg, default_opts(10))
    E = load_encoder(path)
    assert E.latent_avg.shape == (10, 512)
    assert torch.equal(E.latent_avg[7], avg)


# -- images -> encoder input ------------------------------------------------------------------


def test_preprocess_matches_pil_bilinear_resize():
    rng = np.random.default_rng(0)
    img = (rng.random((300, 200, 3)) * 255).astype(np.uint8)
    img = np.array(Image.fromarray(img).filter(_smooth()))  # natural-ish content
    pil = np.asarray(Image.fromarray(img).resize((256, 256), Image.BILINEAR), dtype=np.float32)
    expected = torch.from_numpy((pil / 255.0 - 0.5) / 0.5).permute(2, 0, 1)
    ours = preprocess(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0)[0]
    assert ours.shape == (3, 256, 256)
    assert (ours - expected).abs().max() < 1.5 / 127.5  # PIL rounds to uint8
    assert (ours - expected).abs().mean() < 0.5 / 127.5


def _smooth():
    from PIL import ImageFilter

    return ImageFilter.GaussianBlur(2)


def test_encode_images_resizes_and_normalises(tiny_ckpt):
    E = load_encoder(tiny_ckpt[0])
    rng = np.random.default_rng(1)
    big = (rng.random((2, 300, 220, 3)) * 255).astype(np.uint8)
    with torch.no_grad():
        w = E.encode_images(big)
        assert w.shape == (2, 10, 512)
        x = torch.from_numpy(big).permute(0, 3, 1, 2).float() / 255.0
        resized = F.interpolate(x, size=(256, 256), mode="bilinear", antialias=True)
        torch.testing.assert_close(w, E.encode(resized * 2 - 1))
        # a float tensor (B, 3, H, W) in [0, 1] and a single (H, W, 3) image give the same codes
        torch.testing.assert_close(E.encode_images(x), w)
        torch.testing.assert_close(E.encode_images(big[1]), w[1:2])
        torch.testing.assert_close(E.encode_images(big, batch_size=1), w)
        # a 256x256 image is only normalised
        small = (rng.random((1, 256, 256, 3)) * 255).astype(np.uint8)
        ref = torch.from_numpy(small).permute(0, 3, 1, 2) / 127.5 - 1.0
        torch.testing.assert_close(E.encode_images(small), E.encode(ref))


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (np.zeros((1, 64, 64, 4), np.uint8), "RGB"),
        (torch.zeros(1, 1, 64, 64), "RGB"),
        (np.zeros((0, 64, 64, 3), np.uint8), "no images"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.int32), "uint8 or float"),
    ],
)
def test_encode_images_rejects_bad_input(tiny_ckpt, bad, needle):
    E = load_encoder(tiny_ckpt[0])
    with pytest.raises(ValueError, match=needle):
        E.encode_images(bad)


@pytest.mark.parametrize("shape", [(1, 3, 128, 128), (3, 256, 256), (1, 1, 256, 256)])
def test_encode_checks_its_input_shape(tiny_ckpt, shape):
    E = load_encoder(tiny_ckpt[0])
    with pytest.raises(ValueError, match=r"\(B, 3, 256, 256\)"):
        E.encode(torch.zeros(shape))


# -- broken checkpoints -----------------------------------------------------------------------


def _assert_one_line(err: ModelFileError, path, *needles: str) -> None:
    text = str(err)
    assert err.exit_code == EXIT_USER
    assert "\n" not in text
    assert str(path) in text
    for needle in needles:
        assert needle in text, (needle, text)


def _write(tmp_path, sd, name="p.pt", **opts):
    return write_psp_checkpoint(tmp_path / name, sd, {}, None, default_opts(10, **opts))


def test_missing_key_is_named(tmp_path, tiny_sd):
    sd = {k: v for k, v in tiny_sd.items() if k != "body.4.res_layer.4.running_var"}
    path = _write(tmp_path, sd)
    with pytest.raises(ModelFileError) as info:
        load_encoder(path)
    _assert_one_line(info.value, path, "missing keys: encoder.body.4.res_layer.4.running_var")


def test_missing_structural_key_is_named(tmp_path, tiny_sd):
    sd = {k: v for k, v in tiny_sd.items() if k != "body.3.res_layer.1.weight"}
    path = _write(tmp_path, sd)
    with pytest.raises(ModelFileError) as info:
        load_encoder(path)
    _assert_one_line(info.value, path, "encoder.body.3.res_layer.1.weight")


def test_unexpected_and_misshaped_keys_are_named(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    sd["styles.0.extra.weight"] = torch.zeros(3)
    sd["latlayer2.bias"] = torch.zeros(7)
    path = _write(tmp_path, sd)
    with pytest.raises(ModelFileError) as info:
        load_encoder(path)
    _assert_one_line(
        info.value,
        path,
        "unexpected keys: encoder.styles.0.extra.weight",
        "encoder.latlayer2.bias (7,)",
    )


def test_truncated_file(tmp_path, tiny_ckpt):
    data = tiny_ckpt[0].read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as info:
        load_encoder(path)
    _assert_one_line(info.value, path, "truncated")


def test_png_renamed_pt(tmp_path):
    path = tmp_path / "photo.pt"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path, format="PNG")
    with pytest.raises(ModelFileError) as info:
        load_encoder(path)
    _assert_one_line(info.value, path, "PNG image")


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ([1, 2, 3], "not a dict"),
        ({"g_ema": {"style.1.weight": torch.zeros(1)}}, "not a pSp checkpoint"),
        ({"state_dict": {"decoder.x": torch.zeros(1)}}, "no encoder.* keys"),
    ],
)
def test_not_a_psp_checkpoint(tmp_path, payload, needle):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(ModelFileError) as info:
        load_encoder(path)
    _assert_one_line(info.value, path, needle)


@pytest.mark.parametrize(
    ("opts", "needle"),
    [
        ({"learn_in_w": True}, "learn_in_w"),
        ({"encoder_type": "BackboneEncoderUsingLastLayerIntoWPlus"}, "not supported"),
        ({"input_nc": 1, "label_nc": 19}, "not RGB face photos"),
        ({"output_size": 1024}, "needs 18"),
    ],
)
def test_unsupported_opts_are_refused(tmp_path, tiny_sd, opts, needle):
    path = _write(tmp_path, tiny_sd, **opts)
    with pytest.raises(ModelFileError) as info:
        load_encoder(path)
    _assert_one_line(info.value, path, needle)


def test_missing_or_bad_latent_avg(tmp_path, tiny_sd):
    path = tmp_path / "p.pt"
    state = {f"encoder.{k}": v for k, v in tiny_sd.items()}
    torch.save({"state_dict": state, "opts": default_opts(10)}, path)
    with pytest.raises(ModelFileError) as info:
        load_encoder(path)
    _assert_one_line(info.value, path, "latent_avg")
    torch.save(
        {"state_dict": state, "opts": default_opts(10), "latent_avg": torch.zeros(3, 512)}, path
    )
    with pytest.raises(ModelFileError, match="latent_avg has shape"):
        load_encoder(path)


def test_tiny_widths_must_differ_between_stages():
    with pytest.raises(ValueError, match="must differ"):
        tiny_encoder_state_dict(widths=(8, 16, 16, 32))
