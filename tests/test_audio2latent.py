"""The audio-to-latent model (thesis tables 4.3 and 4.4), its checkpoint file and strict loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from talkcli.errors import ModelFileError
from talkcli.models.audio2latent import (
    ARCH_PRESETS,
    TABLE_4_3_SHAPES,
    Audio2Latent,
    check_generator_match,
    count_parameters,
    load_audio2latent,
    read_checkpoint_info,
    save_audio2latent,
    thesis_parameter_count,
)
from talkcli.weights import registry
from tests.conftest import assert_user_error, run_cli


def tiny_model(k: int = 16, n_latent: int = 8, seed: int = 0) -> Audio2Latent:
    torch.manual_seed(seed)
    model = Audio2Latent(k, n_latent, 512, arch=ARCH_PRESETS["tiny"]).eval()
    d = n_latent * 512
    basis, _ = torch.linalg.qr(torch.randn(d, k))  # (d, k) orthonormal columns
    model.set_pca(torch.randn(d) * 0.1, basis.T)
    model.set_mfcc_stats(torch.randn(12), torch.rand(12) + 0.5)
    return model


@pytest.fixture(scope="module")
def full_model() -> Audio2Latent:
    return Audio2Latent().eval()  # thesis size: k = 2500, 18 x 512


def test_audio_encoder_layers_have_the_shapes_of_table_4_3(full_model):
    x = torch.randn(1, 1, 12, 28)
    shapes = []
    with torch.no_grad():
        for layer in full_model.audio_encoder.convs:
            x = layer(x)
            if not isinstance(layer, torch.nn.ReLU):
                shapes.append(tuple(x.shape[1:]))
        assert tuple(shapes) == TABLE_4_3_SHAPES
        flat = full_model.audio_encoder.linears[0](x.flatten(1))
        assert flat.shape == (1, 2048)
    assert [m.out_features for m in full_model.audio_encoder.linears if hasattr(m, "weight")] == [
        2048,
        256,
    ]
    assert full_model.lstm.num_layers == 3 and full_model.lstm.hidden_size == 256
    dec = [m for m in full_model.decoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dec] == [(2756, 512), (512, 512), (512, 2500)]
    assert full_model.pca_basis.shape == (2500, 9216) and full_model.pca_mean.shape == (9216,)


def test_parameter_count_matches_the_tables(full_model):
    # computed by hand from tables 4.3 and 4.4 (module docstring): the thesis reports 29.68 M
    assert count_parameters(full_model) == 32_368_068 == thesis_parameter_count(2500)
    # the PCA and MFCC statistics are buffers, not trained
    trainable = {n for n, p in full_model.named_parameters()}
    assert not trainable & {"pca_basis", "pca_mean", "mfcc_mean", "mfcc_std"}
    without_k_layers = 32_368_068 - (2756 * 512 + 512) - (512 * 2500 + 2500)
    assert round(without_k_layers / 1e6, 2) == 29.67


def test_forward_is_identity_plus_pca_displacement():
    model = tiny_model()
    windows = torch.randn(2, 5, 12, 28) * 10
    w_id = torch.randn(2, 8, 512)
    with torch.no_grad():
        w, (h, c) = model(windows, w_id)
        emb = (w_id.reshape(2, -1) - model.pca_mean) @ model.pca_basis.T  # (2, k)
        e, _ = model.encode_audio(windows)
        h_t = model.decoder(torch.cat([emb[:, None].expand(-1, 5, -1), e], dim=-1))
        expected = w_id[:, None] + (h_t @ model.pca_basis).reshape(2, 5, 8, 512)
    assert w.shape == (2, 5, 8, 512)
    assert h.shape == c.shape == (3, 2, 64)
    torch.testing.assert_close(w, expected)
    # the displacement lies in the PCA subspace
    d = (w - w_id[:, None]).reshape(-1, 8 * 512)
    torch.testing.assert_close((d @ model.pca_basis.T) @ model.pca_basis, d, rtol=1e-4, atol=1e-4)


def test_chunked_inference_equals_one_shot():
    model = tiny_model()
    windows = torch.randn(1, 40, 12, 28) * 10
    w_id = torch.randn(1, 8, 512)
    with torch.no_grad():
        whole, _ = model(windows, w_id)
        state, parts = None, []
        for a, b in ((0, 1), (1, 13), (13, 14), (14, 40)):
            out, state = model(windows[:, a:b], w_id, state)
            parts.append(out)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-5, atol=1e-5)


def test_forward_refuses_wrong_shapes():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"windows must be \(B, T, 12, 28\)"):
        model(torch.randn(1, 3, 13, 28), torch.randn(1, 8, 512))
    with pytest.raises(ValueError, match="w_identity must be"):
        model(torch.randn(1, 3, 12, 28), torch.randn(1, 18, 512))


def test_streaming_step_gives_the_displacements_of_forward_chunk_by_chunk():
    model = tiny_model()
    windows = torch.randn(1, 30, 12, 28) * 10
    w_id = torch.randn(1, 8, 512)
    with torch.no_grad():
        whole, _ = model(windows, w_id)
        d, _ = model.displacements(windows, w_id)
        assert d.shape == (1, 30, 8, 512) and torch.equal(w_id[:, None] + d, whole)
        state, parts = None, []
        for a, b in ((0, 7), (7, 8), (8, 30)):
            part, state = model.displacements(windows[:, a:b], w_id, state)
            parts.append(part)
    torch.testing.assert_close(torch.cat(parts, dim=1), d, rtol=1e-5, atol=1e-5)


def test_streaming_step_refuses_wrong_shapes_like_forward():
    model = tiny_model()
    good_w, good_x = torch.randn(1, 8, 512), torch.randn(1, 3, 12, 28)
    with pytest.raises(ValueError, match=r"windows must be \(B, T, 12, 28\), got \(3, 12, 28\)"):
        model.displacements(torch.randn(3, 12, 28), good_w)  # the batch axis forgotten
    with pytest.raises(ValueError, match=r"windows must be .*got ndarray"):
        model.displacements(np.zeros((1, 3, 12, 28), np.float32), good_w)
    with pytest.raises(ValueError, match=r"w_identity must be \(1, 8, 512\)"):
        model.displacements(good_x, torch.randn(8, 512))
    with pytest.raises(ValueError, match=r"state must be \(h, c\) of shape \(3, 1, 64\)"):
        model.displacements(good_x, good_w, (torch.zeros(3, 2, 64), torch.zeros(3, 2, 64)))


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model()
    model.fps = 30.0
    gen = {"sha256": "ab" * 32, "size": 32, "n_latent": 8, "style_dim": 512}
    path = save_audio2latent(tmp_path / "a.safetensors", model, gen, {"epochs": 3, "best": 0.5})
    loaded = load_audio2latent(path)
    assert loaded.fps == 30.0 and loaded.n_components == 16 and loaded.n_latent == 8
    assert loaded.arch == ARCH_PRESETS["tiny"]
    assert loaded.generator == gen and loaded.training_info == {"epochs": 3, "best": 0.5}
    assert not loaded.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    info = read_checkpoint_info(path)
    assert info.config["features"]["numcep"] == 13 and info.config["features"]["n_mfcc"] == 12
    windows, w_id = torch.randn(1, 6, 12, 28), torch.randn(1, 8, 512)
    with torch.no_grad():
        torch.testing.assert_close(loaded(windows, w_id)[0], model(windows, w_id)[0])
    # no pickle anywhere: the file is plain safetensors
    assert path.read_bytes()[8:9] == b"{"


def _rewrite(path, tensors=None, **meta_changes):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path)) if tensors is None else tensors
    meta.update(meta_changes)
    out = path.with_name(f"broken{len(list(path.parent.iterdir()))}.safetensors")
    save_file(tensors, str(out), metadata=meta)
    return out


@pytest.fixture
def saved(tmp_path):
    return save_audio2latent(tmp_path / "a.safetensors", tiny_model(), {"size": 32})


def test_loading_errors_are_one_line_and_name_the_problem(saved, tmp_path):
    tensors = load_file(str(saved))
    cases = []
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    cases.append((junk, "is not a safetensors audio model"))
    cases.append((_rewrite(saved, format="something-else"), "is not a talkcli audio model"))
    cases.append((_rewrite(saved, format_version="7"), "format version 7"))
    cases.append((_rewrite(saved, config="{not json"), "'config' is not valid JSON"))
    config = json.loads(json.dumps(read_checkpoint_info(saved).config))
    config["features"]["numcep"] = 20
    cases.append((_rewrite(saved, config=json.dumps(config)), "numcep=20"))
    missing = {k: v for k, v in tensors.items() if k != "pca_basis"}
    cases.append((_rewrite(saved, missing), "missing keys: pca_basis"))
    extra = {**tensors, "bonus": torch.zeros(1)}
    cases.append((_rewrite(saved, extra), "unexpected keys: bonus"))
    wrong = {**tensors, "decoder.4.bias": torch.zeros(3)}
    cases.append((_rewrite(saved, wrong), "decoder.4.bias (3,) expected (16,)"))
    nan = {**tensors, "mfcc_mean": torch.full((12,), float("nan"))}
    cases.append((_rewrite(saved, nan), "'mfcc_mean' holds NaN"))
    for path, needle in cases:
        with pytest.raises(ModelFileError) as err:
            load_audio2latent(path)
        message = str(err.value)
        assert needle in message and str(path) in message
        assert "\n" not in message


def test_a_model_for_another_generator_size_is_refused_naming_both(saved):
    model = load_audio2latent(saved)

    class G:  # what check_generator_match reads from a Generator
        size, n_latent, style_dim = 64, 10, 512

    with pytest.raises(ModelFileError) as err:
        check_generator_match(model, G(), saved, "big-generator.pt")
    assert "32x32" in str(err.value) and "64x64" in str(err.value)
    assert str(saved) in str(err.value) and "big-generator.pt" in str(err.value)

    class Same:
        size, n_latent, style_dim = 32, 8, 512

    assert check_generator_match(model, Same(), saved, "g.pt") is False  # shapes fit, no hash


def test_registry_says_how_to_get_an_audio_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TALKCLI_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    entry = registry.get("audio2latent")
    assert entry.filename == "audio2latent.safetensors" and entry.url is None
    with pytest.raises(ModelFileError) as err:
        registry.resolve("audio2latent", tmp_path / "w", purpose="animate")
    assert "talkcli train" in str(err.value) and "--model" in str(err.value)
    result = run_cli("weights", "path", "audio2latent", "--weights-dir", str(tmp_path / "w"))
    assert_user_error(result, "talkcli train", "--model")


def test_tiny_pack_audio_model_fits_its_generator(tiny_pack):
    from talkcli.io.files import sha256_file
    from talkcli.models.stylegan2 import load_generator

    g_path = registry.resolve("stylegan2-ffhq", tiny_pack)
    G = load_generator(g_path)
    path = registry.resolve("audio2latent", tiny_pack)
    model = load_audio2latent(path)
    assert check_generator_match(model, G, path, g_path, sha256_file(g_path)) is True
    assert model.n_latent == G.n_latent and model.generator["size"] == G.size == 32
    basis = model.pca_basis.double()
    torch.testing.assert_close(basis @ basis.T, torch.eye(model.n_components, dtype=torch.float64))
    # driving it with audio gives finite codes that G renders
    windows = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 4, 12, 28)) * 10).float()
    w_id = G.latent_avg.reshape(1, 1, -1).expand(1, G.n_latent, -1)
    with torch.no_grad():
        w, _ = model(windows, w_id)
        img = G.synthesis(w[0])
    assert torch.isfinite(w).all() and img.shape == (4, 3, 32, 32)
