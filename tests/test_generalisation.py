"""Issue 19: the audio model on identities it has never seen (fast unit tests; the CLI-level
regression tests and the small-motion must-show live in tests/test_train.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkcli.models.audio2latent import (
    ARCH_PRESETS,
    Audio2Latent,
    load_audio2latent,
    read_checkpoint_info,
    save_audio2latent,
)
from talkcli.train.identity import (
    conditioning,
    flat_validation_warning,
    held_out_correlation,
    normalisation_from_videos,
)

K, N_LATENT = 6, 4


def model(seed: int = 0, **kw) -> Audio2Latent:
    torch.manual_seed(seed)
    m = Audio2Latent(K, N_LATENT, 512, arch=ARCH_PRESETS["tiny"], **kw)
    torch.nn.init.normal_(m.decoder[-1].weight, std=0.1)  # not the "no motion" start
    q, _ = torch.linalg.qr(torch.randn(N_LATENT * 512, K))
    m.set_pca(torch.randn(N_LATENT * 512) * 0.1, q.T)
    return m.eval()


def inputs(b: int = 2, t: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 12, 28, generator=g) * 5, torch.randn(b, N_LATENT, 512, generator=g)


def test_the_thesis_model_config_and_file_are_as_before(tmp_path):
    m = model()
    assert "normalised" not in m.config() and "identity_input" not in m.config()
    assert not any("scale" in k for k in m.state_dict())
    loaded = load_audio2latent(save_audio2latent(tmp_path / "m.safetensors", m, {"size": 32}))
    assert not loaded.normalised and loaded.identity_input
    x, w = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, w)[0], m(x, w)[0])


def test_normalised_model_scales_inputs_and_outputs_and_round_trips(tmp_path):
    plain, norm = model(), model(normalised=True)
    norm.load_state_dict(plain.state_dict(), strict=False)  # same weights, unit spreads
    x, w = inputs()
    with torch.no_grad():
        torch.testing.assert_close(norm(x, w)[0], plain(x, w)[0])  # unit spreads = plain
        mean, scale, out = torch.randn(K), torch.rand(K) + 0.5, torch.rand(K) + 0.1
        norm.set_normalisation(mean.numpy(), scale.numpy(), out.numpy())
        e, _ = plain.encode_audio(x)
        coords = plain.identity_embedding(w)
        h = plain.decode((coords - mean) / scale, e) * out  # what the normalised model does
        expected = w[:, None] + (h @ plain.pca_basis).reshape(2, 5, N_LATENT, 512)
        torch.testing.assert_close(norm(x, w)[0], expected, rtol=1e-4, atol=1e-5)
    path = save_audio2latent(tmp_path / "n.safetensors", norm, {"size": 32})
    assert read_checkpoint_info(path).config["normalised"] is True
    loaded = load_audio2latent(path)
    torch.testing.assert_close(loaded.output_scale, out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, w)[0], norm(x, w)[0])
    with pytest.raises(ValueError, match="> 0"):
        norm.set_normalisation(mean.numpy(), -scale.numpy(), out.numpy())


def test_without_identity_input_the_identity_changes_only_the_base(tmp_path):
    m = model(identity_input=False)
    x, w = inputs()
    with torch.no_grad():
        a, _ = m(x, w)
        b, _ = m(x, w * 3)
    torch.testing.assert_close(a - w[:, None], b - 3 * w[:, None], rtol=1e-4, atol=1e-5)
    loaded = load_audio2latent(save_audio2latent(tmp_path / "m.safetensors", m, {"size": 32}))
    assert not loaded.identity_input
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, w)[0], a)


def test_conditioning_augments_and_drops_identities():
    m = model(normalised=True)
    ident = torch.randn(8, N_LATENT, 512)
    gen = torch.Generator().manual_seed(0)
    assert conditioning(m, ident, 0.0, 0.0, gen) is None
    own = m.identity_embedding(ident)
    dropped = conditioning(m, ident, 0.0, 1.0, gen)
    assert torch.equal(dropped, torch.zeros_like(own))
    swapped = conditioning(m, ident, 1.0, 0.0, gen)  # every row is some row of the batch
    assert all(any(torch.equal(row, o) for o in own) for row in swapped)
    assert not torch.equal(swapped, own)
    assert conditioning(model(identity_input=False), ident, 1.0, 1.0, gen) is None
    # the displacement still goes onto the clip's own identity
    x = torch.randn(8, 3, 12, 28)
    with torch.no_grad():
        w, _ = m(x, ident, None, dropped)
        zero_id, _ = m(x, torch.zeros_like(ident), None, dropped)
    torch.testing.assert_close(w - ident[:, None], zero_id, rtol=1e-4, atol=1e-5)


class FakeVideo:
    def __init__(self, codes: np.ndarray, mfcc: np.ndarray | None = None) -> None:
        self._codes, self.frames, self._mfcc = codes, len(codes), mfcc

    def codes(self, index=slice(None)):
        return self._codes[index]

    def mfcc(self):
        return self._mfcc


def test_normalisation_statistics_are_the_spreads_of_the_training_codes():
    rng = np.random.default_rng(0)
    d = N_LATENT * 512
    basis = np.linalg.qr(rng.standard_normal((d, K)))[0].T  # (K, D)
    mean = rng.standard_normal(d) * 0.1
    videos = [FakeVideo(rng.standard_normal((30, N_LATENT, 512)).astype(np.float32) * s + o)
              for s, o in ((0.01, 1.0), (0.02, -1.0))]  # fmt: skip
    id_mean, id_scale, out_scale = normalisation_from_videos(videos, mean, basis)
    coords = [(v.codes().reshape(30, -1) - mean) @ basis.T for v in videos]
    allc = np.concatenate(coords)
    np.testing.assert_allclose(id_mean, allc.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(id_scale, allc.std(0), rtol=1e-4)
    motion = np.concatenate([c - c.mean(0) for c in coords])
    np.testing.assert_allclose(out_scale, np.sqrt((motion**2).mean(0)), rtol=1e-4)
    assert (out_scale < id_scale).all()  # the speakers lie further apart than they move


def test_held_out_correlation_of_a_model_that_does_not_move_is_zero():
    m = Audio2Latent(K, N_LATENT, 512, arch=ARCH_PRESETS["tiny"])  # decoder starts at zero
    rng = np.random.default_rng(0)
    video = FakeVideo(rng.standard_normal((40, N_LATENT, 512)).astype(np.float32),
                      rng.standard_normal((170, 12)).astype(np.float32))  # fmt: skip
    out = held_out_correlation(m, [video], 25.0)
    assert out == {"val_r": 0.0, "val_r_shuffled": 0.0}
    assert held_out_correlation(m, [], 25.0) == {}


def test_flat_validation_warning_names_what_to_try():
    falling = [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "val_loss": 0.5 - 0.0001 * i,
                "val_r": 0.1} for i in range(6)]  # fmt: skip
    text = flat_validation_warning(falling)
    assert text and "--identity-dropout" in text and "held-out r 0.10" in text
    assert flat_validation_warning(falling[:3]) is None  # too early to say
    learning = [{**row, "val_loss": 0.5 / (i + 1)} for i, row in enumerate(falling)]
    assert flat_validation_warning(learning) is None
    no_val = [{"epoch": 1, "train_loss": 1.0}] * 6
    assert flat_validation_warning(no_val) is None
