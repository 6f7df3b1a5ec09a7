"""The audio model on self-supervised speech features (issue 17): conv + projection into the
same LSTM and decoder, its feature model recorded and checked, MFCC checkpoints unchanged."""

from __future__ import annotations

import pytest
import torch

from talkcli.errors import ModelFileError, UserError
from talkcli.models.audio2latent import (
    ARCH_PRESETS,
    Audio2Latent,
    check_feature_match,
    load_audio2latent,
    read_checkpoint_info,
    save_audio2latent,
)

SETTINGS = {"kind": "wav2vec2", "layer": 1, "sha256": "ab" * 32, "config": {"hidden_size": 32},
            "dim": 32, "rate": 50, "window": 14}  # fmt: skip


def _model(features=SETTINGS):
    torch.manual_seed(0)
    m = Audio2Latent(8, 4, 16, arch=ARCH_PRESETS["tiny"], features=features)
    torch.nn.init.normal_(m.decoder[-1].weight, std=0.1)
    return m.eval()


def test_ssl_model_round_trips_and_streams(tmp_path):
    m = _model()
    m.set_feature_stats(torch.randn(32), torch.rand(32) + 0.5)
    assert "feature_mean" in dict(m.named_buffers()) and "mfcc_mean" not in dict(m.named_buffers())
    x, w = torch.randn(1, 10, 32, 14), torch.randn(1, 4, 16)
    with torch.no_grad():
        whole, _ = m(x, w)
        a, st = m(x[:, :4], w)
        b, _ = m(x[:, 4:], w, st)
    torch.testing.assert_close(torch.cat([a, b], 1), whole)
    save_audio2latent(tmp_path / "m.safetensors", m)
    info = read_checkpoint_info(tmp_path / "m.safetensors")
    assert info.config["features"]["kind"] == "wav2vec2"
    assert info.config["features"]["sha256"] == SETTINGS["sha256"]
    loaded = load_audio2latent(tmp_path / "m.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, w)[0], whole)
    with pytest.raises(ValueError, match=r"\(B, T, 32, 14\)"):
        loaded(torch.randn(1, 3, 12, 28), w)


def test_lstm_and_decoder_are_the_mfcc_models(tmp_path):
    ssl, mfcc = _model(), _model(None)
    for name in ("lstm", "decoder"):
        shapes = [p.shape for p in getattr(ssl, name).parameters()]
        assert shapes == [p.shape for p in getattr(mfcc, name).parameters()]
    assert "features" in mfcc.config() and "kind" not in mfcc.config()["features"]


def test_feature_model_must_match():
    m = _model()
    check_feature_match(m, dict(SETTINGS), "m", "dir")
    with pytest.raises(UserError, match="--feature-model"):
        check_feature_match(m, None, "m")
    with pytest.raises(ModelFileError, match="sha256"):
        check_feature_match(m, {**SETTINGS, "sha256": "cd" * 32}, "m", "other")
    with pytest.raises(ModelFileError, match="layer"):
        check_feature_match(m, {**SETTINGS, "layer": 2}, "m", "other")
    with pytest.raises(UserError, match="MFCC"):
        check_feature_match(_model(None), dict(SETTINGS), "m", "dir")
    check_feature_match(_model(None), None)


def test_animate_streams_ssl_windows_and_refuses_a_missing_feature_model(tmp_path):
    pytest.importorskip("transformers")
    import numpy as np

    from talkcli.animate.motion.audio import attach_speech_features, audio_displacements
    from talkcli.audio.ssl import load_ssl_model
    from talkcli.tiny.ssl import write_tiny_wav2vec2

    folder = write_tiny_wav2vec2(tmp_path / "w2v")
    ssl = load_ssl_model("wav2vec2", folder)
    m = _model(ssl.settings())
    with pytest.raises(UserError, match="--feature-model"):
        attach_speech_features(m, None, "cpu")
    attach_speech_features(m, str(folder), "cpu")
    x = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    w = np.zeros((4, 16), np.float32)
    a = np.concatenate(list(audio_displacements(m, x, w, 25.0, chunk_frames=7)))
    b = np.concatenate(list(audio_displacements(m, x, w, 25.0, chunk_frames=500)))
    assert a.shape == (50, 4, 16)
    np.testing.assert_allclose(a, b, atol=1e-5)
    other = write_tiny_wav2vec2(tmp_path / "other", seed=1)
    m2 = _model(ssl.settings())
    with pytest.raises(ModelFileError, match="sha256"):
        attach_speech_features(m2, str(other), "cpu")


def test_cli_animate_with_an_ssl_model_and_refusing_another_feature_model(
    tmp_path, monkeypatch, capsys, tiny_pack
):
    pytest.importorskip("transformers")
    import numpy as np
    import soundfile as sf
    from PIL import Image
    from skimage import data

    from talkcli import cli
    from talkcli.tiny.pack import SSL_AUDIO_MODEL
    from talkcli.tiny.ssl import write_tiny_wav2vec2

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TALKCLI_WEIGHTS", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    photo = Image.fromarray(data.astronaut()).crop((150, 20, 310, 180)).resize((64, 64))
    photo.save(tmp_path / "face.png")
    t = np.arange(9600) / 16000  # 0.6 s: 15 frames
    sf.write(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    base = ["--weights-dir", str(tiny_pack), "animate", "--image", "face.png", "--audio", "a.wav"]
    base += ["--aligned", "--model", str(tiny_pack / SSL_AUDIO_MODEL)]

    code = cli.main([*base, "--feature-model", str(tiny_pack / "wav2vec2-tiny"), "--out", "o.mp4"])
    err = capsys.readouterr().err
    assert code == 0, err
    from talkcli.io.video import read_video

    assert read_video(tmp_path / "o.mp4").shape == (15, 32, 32, 3)

    other = write_tiny_wav2vec2(tmp_path / "other", seed=1)
    code = cli.main([*base, "--feature-model", str(other), "--out", "x.mp4"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "sha256" in errors[0] and "--feature-layer" in errors[0]
    assert not (tmp_path / "x.mp4").exists()
    code = cli.main([*base, "--out", "y.mp4"])  # no feature model at all
    err = capsys.readouterr().err
    assert code == 2 and "--feature-model" in err and err.count("error:") == 1, err
