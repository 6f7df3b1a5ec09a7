"""Self-supervised speech features (issue 17): talkcli's Wav2Vec2 rows equal ``transformers``'
own hidden states, chunked streaming equals one-shot, windows follow the MFCC rule at 50 Hz."""

from __future__ import annotations

import sys
from fractions import Fraction
from math import floor

import numpy as np
import pytest

from talkcli.audio.features import window_starts, window_starts_at, windows_from_rows
from talkcli.errors import ModelFileError, UserError

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from talkcli.audio import ssl  # noqa: E402


@pytest.fixture(scope="module")
def tiny_w2v(tmp_path_factory):
    from talkcli.tiny.ssl import write_tiny_wav2vec2

    return write_tiny_wav2vec2(tmp_path_factory.mktemp("w2v") / "wav2vec2-tiny")


def _speechy(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    buzz = np.sign(np.sin(2 * np.pi * 130 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    return (0.2 * buzz + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_rows_equal_transformers_hidden_states(tiny_w2v, layer):
    model = ssl.load_ssl_model("wav2vec2", tiny_w2v, layer=layer)
    x = _speechy(3.0)
    ref = transformers.Wav2Vec2Model.from_pretrained(
        str(tiny_w2v), local_files_only=True, use_kernels=False
    ).eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states[layer][0]
    got = ssl.ssl_rows(model, x)
    assert got.shape == (ssl.n_ssl_rows(len(x)), 32) == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_default_layer_and_recorded_settings(tiny_w2v):
    model = ssl.load_ssl_model("wav2vec2", tiny_w2v)
    assert model.layer == ssl.default_layer(2) == 1
    assert ssl.default_layer(12) == 8 and ssl.default_layer(24) == 16
    s = model.settings()
    assert s["kind"] == "wav2vec2" and s["dim"] == 32 and len(s["sha256"]) == 64
    assert s["config"]["num_hidden_layers"] == 2


def test_chunked_streaming_equals_one_shot(tiny_w2v):
    model = ssl.load_ssl_model("wav2vec2", tiny_w2v)
    x = _speechy(23.0, seed=1)  # three blocks
    whole = ssl.ssl_windows(model, x, 25.0)
    assert whole.shape == (575, 32, 14)
    for chunk in (1, 37, 500):
        parts = list(ssl.iter_ssl_windows(model, x, 25.0, chunk))
        assert max(len(p) for p in parts) <= chunk
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    # the windows gather the rows exactly as windows_from_rows does from stored rows
    np.testing.assert_array_equal(
        windows_from_rows(ssl.ssl_rows(model, x), 575, 25.0, "wav2vec2"), whole
    )


def test_windows_follow_the_mfcc_rule_at_50_hz():
    for fps in (25.0, 30.0, 29.97, 24.0):
        frames = range(200)
        got = window_starts_at(frames, fps, 50, 14)
        f = Fraction(fps)
        want = [floor(Fraction(50) * (t + Fraction(1, 2)) / f - 7 + Fraction(1, 2)) for t in frames]
        assert got.tolist() == want
        # the same 280 ms of audio as the MFCC window: starts at the same time (20 ms vs 10 ms rows)
        mfcc_start_ms = window_starts(frames, fps) * 10
        assert np.all(np.abs(got * 20 - mfcc_start_ms) <= 10)
    assert window_starts_at(range(3), 25.0, 50, 14).tolist() == [-6, -4, -2]  # rows 2t-6..2t+7
    rows = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # (10, 3)
    w = windows_from_rows(rows, 1, 25.0, "wav2vec2")  # edge rows repeated
    assert w.shape == (1, 3, 14) and w[0, 0].tolist() == [0] * 7 + list(range(1, 8))


def test_without_transformers_the_ssl_options_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError) as err:
        ssl.load_ssl_model("wav2vec2", "/nonexistent")
    assert err.value.exit_code == 2 and "pip install talkcli[ssl]" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_hubert_folder_is_not_read_as_wav2vec2(tiny_w2v, tmp_path):
    from talkcli.errors import ModelFileError

    with pytest.raises(ModelFileError, match="not 'hubert'"):
        ssl.load_ssl_model("hubert", tiny_w2v)
    with pytest.raises(ModelFileError, match="config.json"):
        ssl.load_ssl_model("wav2vec2", tmp_path)


def test_hubert_folder_loads_and_equals_transformers(tmp_path):
    from talkcli.tiny.ssl import tiny_wav2vec2_config

    torch.manual_seed(3)
    base = tiny_wav2vec2_config().to_dict()
    names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    names += ("conv_dim", "conv_stride", "conv_kernel", "num_conv_pos_embeddings")
    keep = {k: base[k] for k in (*names, "num_conv_pos_embedding_groups")}
    transformers.HubertModel(transformers.HubertConfig(**keep)).save_pretrained(
        str(tmp_path / "hubert"), safe_serialization=True
    )
    model = ssl.load_ssl_model("hubert", tmp_path / "hubert", layer=1)
    x = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    ref = transformers.HubertModel.from_pretrained(
        str(tmp_path / "hubert"), local_files_only=True, use_kernels=False
    ).eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states[1][0]
    np.testing.assert_allclose(ssl.ssl_rows(model, x), want.numpy(), atol=1e-5)
    with pytest.raises(ModelFileError, match="hubert"):
        ssl.load_ssl_model("wav2vec2", tmp_path / "hubert")
