"""`talkcli weights tiny`: every file loads through its real loader and fits the others."""

from __future__ import annotations

import json

import pytest
import torch

from talkcli.models.perceptual import load_lpips
from talkcli.models.psp import load_encoder
from talkcli.models.stylegan2 import load_generator
from talkcli.weights import registry
from tests.conftest import run_cli


@pytest.mark.parametrize("size", [16, 64])
def test_tiny_pack_round_trips_through_every_loader(tmp_path, size):
    result = run_cli("weights", "tiny", str(tmp_path), "--size", str(size))
    assert result.code == 0, result.stderr
    note = json.loads((tmp_path / "TINY-PACK.json").read_text())
    assert note["size"] == size

    G = load_generator(registry.resolve("stylegan2-ffhq", tmp_path))
    assert G.size == size and G.n_latent == 2 * size.bit_length() - 4
    E = load_encoder(registry.resolve("psp-ffhq-encode", tmp_path))
    decoder = load_generator(registry.resolve("psp-ffhq-encode", tmp_path))  # pSp's decoder.*
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        w = E.encode(x)  # (2, n_latent, 512)
        assert w.shape == (2, G.n_latent, 512)
        img = G.synthesis(w)
        assert img.shape == (2, 3, size, size)
        assert torch.equal(img, decoder.synthesis(w))  # same generator in both files
    for net in ("alex", "vgg"):
        lpips = load_lpips(net, weights_dir=tmp_path)
        a = torch.rand(1, 3, 32, 32) * 2 - 1
        assert float(lpips(a, a)) == pytest.approx(0.0, abs=1e-6)
        assert float(lpips(a, -a)) > 0

    listed = json.loads(run_cli("weights", "list", "--json", "--weights-dir", str(tmp_path)).stdout)
    states = {row["name"]: row["state"] for row in listed}
    for name in ("stylegan2-ffhq", "psp-ffhq-encode", "vgg16", "alexnet"):
        assert states[name] == "present"


def test_tiny_pack_rejects_unsupported_sizes(tmp_path):
    result = run_cli("weights", "tiny", str(tmp_path), "--size", "48")
    assert result.code == 2 and "--size 48" in result.stderr


def test_tiny_pack_writes_a_wav2vec2_folder_and_an_audio_model_reading_it(tiny_pack):
    pytest.importorskip("transformers")
    from talkcli.audio.ssl import load_ssl_model
    from talkcli.models.audio2latent import load_audio2latent
    from talkcli.tiny.pack import SSL_AUDIO_MODEL

    folder = tiny_pack / "wav2vec2-tiny"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    ssl = load_ssl_model("wav2vec2", folder)
    model = load_audio2latent(tiny_pack / SSL_AUDIO_MODEL)
    assert model.feature_settings["sha256"] == ssl.settings()["sha256"]
    note = json.loads((tiny_pack / "TINY-PACK.json").read_text())
    assert note["files"]["wav2vec2-tiny"] == "wav2vec2-tiny"


def test_tiny_pack_without_transformers_skips_the_wav2vec2_folder(tmp_path, monkeypatch, caplog):
    import importlib.util
    import logging

    from talkcli.tiny.pack import write_tiny_pack

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real(name, *a),
    )
    with caplog.at_level(logging.INFO, logger="talkcli"):
        written = write_tiny_pack(tmp_path, size=16)
    assert "wav2vec2-tiny" not in written and not (tmp_path / "wav2vec2-tiny").exists()
    assert "wav2vec2-tiny: skipped" in caplog.text and "talkcli[ssl]" in caplog.text
