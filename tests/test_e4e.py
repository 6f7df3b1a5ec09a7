"""e4e's encoder (Encoder4Editing): loading e4e's save format, the w + per-layer deltas forward,
one-line errors, its decoder as a generator, and the commands' ``--encoder`` on a tiny e4e.

Equality with e4e's own code is checked by ``scripts/e4e_reference.py`` (docs/models.md), which
needs the upstream checkout; these tests do not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from talkcli.errors import EXIT_USER, ModelFileError
from talkcli.io.files import sha256_file
from talkcli.models.psp import (
    E4E_ENCODER,
    Encoder4Editing,
    GradualStyleEncoder,
    load_encoder,
)
from talkcli.models.stylegan2 import load_generator
from talkcli.tiny.psp import (
    e4e_opts,
    tiny_encoder_state_dict,
    tiny_latent_avg,
    write_e4e_checkpoint,
    write_psp_checkpoint,
)
from talkcli.tiny.stylegan2 import tiny_generator_state_dict
from talkcli.weights import registry
from tests.conftest import run_cli, run_cli_inprocess

N_STYLES = 10  # a 64 px generator


@pytest.fixture(scope="module")
def e4e_sd() -> dict[str, torch.Tensor]:
    return tiny_encoder_state_dict(n_styles=N_STYLES, units=(2, 1, 2, 1), seed=5)


@pytest.fixture(scope="module")
def e4e_file(tmp_path_factory, e4e_sd):
    path = tmp_path_factory.mktemp("e4e") / "e4e_tiny.pt"
    latent_avg = tiny_latent_avg(N_STYLES, 512, seed=2)
    write_e4e_checkpoint(path, e4e_sd, tiny_generator_state_dict(size=64, seed=0), latent_avg)
    return path, latent_avg


def _assert_one_line(err: ModelFileError, path, *needles: str) -> None:
    text = str(err)
    assert err.exit_code == EXIT_USER and "\n" not in text and str(path) in text
    for needle in needles:
        assert needle in text, (needle, text)


# -- the file and the network --------------------------------------------------------------------


def test_e4e_save_format_loads_as_encoder4editing(e4e_file):
    path, latent_avg = e4e_file
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"state_dict", "opts", "latent_avg"}  # e4e's Coach.__get_save_dict
    assert ckpt["opts"]["encoder_type"] == E4E_ENCODER and ckpt["opts"]["stylegan_size"] == 64
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"encoder", "decoder"}
    E = load_encoder(path)
    assert isinstance(E.encoder, Encoder4Editing) and E.encoder_type == E4E_ENCODER
    assert E.n_styles == N_STYLES and E.style_dim == 512
    assert torch.equal(E.latent_avg, latent_avg)
    with torch.no_grad():
        codes = E.encode(torch.rand(2, 3, 256, 256) * 2 - 1)
    assert codes.shape == (2, N_STYLES, 512) and torch.isfinite(codes).all()
    images = (np.random.default_rng(0).random((3, 40, 48, 3)) * 255).astype(np.uint8)
    assert E.encode_images(images, batch_size=2).shape == (3, N_STYLES, 512)


def test_codes_are_w_broadcast_plus_per_layer_deltas(e4e_file):
    """e4e entry i = styles[0](c3) + styles[i](features of block i) + latent_avg (i >= 1)."""
    path, latent_avg = e4e_file
    E = load_encoder(path)
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        codes = E.encode(x)  # (2, n, 512)
        c1, c2, c3 = E.encoder.features(x)
        w = E.encoder.styles[0](c3)  # (2, 512)
        as_psp = GradualStyleEncoder.forward(E.encoder, x)  # same blocks, pSp's forward
    torch.testing.assert_close(codes[:, 0], w + latent_avg[0], rtol=0, atol=0)
    # pSp's entry i is exactly e4e's delta i: the two forwards share every block
    torch.testing.assert_close(codes[:, 1:], w[:, None] + as_psp[:, 1:] + latent_avg[1:])
    assert not torch.allclose(codes, as_psp + latent_avg)


def test_with_zeroed_delta_layers_every_style_equals_the_first(tmp_path, e4e_sd):
    sd = dict(e4e_sd)
    for i in range(1, N_STYLES):
        sd[f"styles.{i}.linear.weight"] = torch.zeros_like(sd[f"styles.{i}.linear.weight"])
        sd[f"styles.{i}.linear.bias"] = torch.zeros_like(sd[f"styles.{i}.linear.bias"])
    path = write_e4e_checkpoint(tmp_path / "flat.pt", sd, {}, tiny_latent_avg(N_STYLES, 512))
    with torch.no_grad():
        codes = load_encoder(path).encode(torch.rand(2, 3, 256, 256) * 2 - 1)
    assert torch.equal(codes, codes[:, :1].expand_as(codes))
    assert not torch.equal(codes[0], codes[1])  # the shared w still depends on the image


def test_the_same_weights_as_psp_give_psp_codes(tmp_path, e4e_sd):
    """Only opts.encoder_type tells the two apart: pSp's file with e4e's weights is pSp."""
    latent_avg = tiny_latent_avg(N_STYLES, 512)
    psp = write_psp_checkpoint(tmp_path / "psp.pt", e4e_sd, {}, latent_avg)
    e4e = write_e4e_checkpoint(tmp_path / "e4e.pt", e4e_sd, {}, latent_avg)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        p, e = load_encoder(psp), load_encoder(e4e)
        assert type(p.encoder) is GradualStyleEncoder and p.encoder_type == "GradualStyleEncoder"
        assert torch.equal(p.encode(x)[:, 0], e.encode(x)[:, 0])
        assert not torch.equal(p.encode(x), e.encode(x))


def test_start_from_latent_avg_false_leaves_e4e_codes_raw(tmp_path, e4e_sd):
    opts = e4e_opts(N_STYLES, start_from_latent_avg=False)
    path = write_e4e_checkpoint(tmp_path / "raw.pt", e4e_sd, {}, None, opts)
    E = load_encoder(path)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        assert E.latent_avg is None
        torch.testing.assert_close(E.encode(x), E.encoder(x), rtol=0, atol=0)


def test_e4e_decoder_loads_as_a_generator(e4e_file):
    G = load_generator(e4e_file[0])
    assert G.checkpoint_kind == "psp" and G.size == 64 and G.n_latent == N_STYLES
    torch.testing.assert_close(G.latent_avg, e4e_file[1][0])


# -- one-line errors -----------------------------------------------------------------------------


def test_missing_and_unexpected_keys_are_named_for_e4e(tmp_path, e4e_sd):
    sd = {k: v for k, v in e4e_sd.items() if k != "styles.4.linear.bias"}
    sd["styles.0.extra.weight"] = torch.zeros(3)
    path = write_e4e_checkpoint(tmp_path / "bad.pt", sd, {}, tiny_latent_avg(N_STYLES, 512))
    with pytest.raises(ModelFileError) as info:
        load_encoder(path)
    _assert_one_line(
        info.value,
        path,
        "not a usable e4e encoder",
        "missing keys: encoder.styles.4.linear.bias",
        "unexpected keys: encoder.styles.0.extra.weight",
        "e4e-ffhq-encode",
    )


@pytest.mark.parametrize(
    ("opts", "needle"),
    [
        ({"stylegan_size": 1024}, "opts.stylegan_size 1024 needs 18"),
        ({"encoder_type": "SingleStyleCodeEncoder"}, "not supported"),
        ({"encoder_type": ["Encoder4Editing"]}, "not supported"),
    ],
)
def test_unsupported_e4e_opts_are_refused(tmp_path, e4e_sd, opts, needle):
    path = write_e4e_checkpoint(
        tmp_path / "o.pt", e4e_sd, {}, tiny_latent_avg(N_STYLES, 512), e4e_opts(N_STYLES, **opts)
    )
    with pytest.raises(ModelFileError) as info:
        load_encoder(path)
    _assert_one_line(info.value, path, needle)


def test_missing_latent_avg_names_the_e4e_file(tmp_path, e4e_sd):
    path = tmp_path / "nolat.pt"
    state = {f"encoder.{k}": v for k, v in e4e_sd.items()}
    torch.save({"state_dict": state, "opts": e4e_opts(N_STYLES)}, path)
    with pytest.raises(ModelFileError) as info:
        load_encoder(path)
    _assert_one_line(info.value, path, "latent_avg", "e4e_ffhq_encode.pt")


# -- registry, tiny pack and the commands ----------------------------------------------------------


def test_registry_and_tiny_pack_hold_e4e(tiny_pack):
    entry = registry.get("e4e-ffhq-encode")
    assert entry.filename == "e4e_ffhq_encode.pt" and entry.url and entry.optional
    E = load_encoder(tiny_pack / entry.relpath)
    G = load_generator(tiny_pack / registry.get("stylegan2-ffhq").relpath)
    assert E.encoder_type == E4E_ENCODER and E.n_styles == G.n_latent


def test_invert_takes_an_e4e_encoder(tiny_pack, face_images, tmp_path):
    from talkcli.inversion.invert import load_latents

    e4e = tiny_pack / registry.get("e4e-ffhq-encode").relpath
    out = tmp_path / "e4e.npz"
    result = run_cli(
        "--weights-dir", str(tiny_pack), "invert", str(face_images[0]), "--out", str(out),
        "--encoder", str(e4e),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    w, _, meta = load_latents(out)
    assert meta["weights"]["encoder"]["sha256"] == sha256_file(e4e)
    expected = load_encoder(e4e).encode_images(np.asarray(Image.open(face_images[0]))[None])
    np.testing.assert_allclose(w, expected.numpy(), rtol=1e-5, atol=1e-5)
    psp = load_encoder(tiny_pack / registry.get("psp-ffhq-encode").relpath)
    assert not np.allclose(w, psp.encode_images(np.asarray(Image.open(face_images[0]))[None]))


def test_animate_takes_an_e4e_encoder(tiny_pack, tmp_path, monkeypatch):
    import soundfile as sf
    from skimage import data

    from tests.speech import speech

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TALKCLI_WEIGHTS", "")
    face = tmp_path / "face.png"
    Image.fromarray(data.astronaut()).crop((150, 20, 310, 180)).resize((64, 64)).save(face)
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech(0, tmp_path, seconds=1.0)[:8000], 16000, subtype="PCM_16")
    e4e = tiny_pack / registry.get("e4e-ffhq-encode").relpath
    result = run_cli_inprocess(
        "--weights-dir", str(tiny_pack), "animate", "--image", str(face), "--audio", str(wav),
        "--aligned", "--encoder", str(e4e), "--out", "e4e.mp4",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    manifest = json.loads((tmp_path / "e4e.json").read_text())
    assert manifest["models"]["encoder"]["sha256"] == sha256_file(e4e)


def test_train_prepare_takes_an_e4e_encoder(tiny_pack, tmp_path):
    from talkcli.io.video import VideoWriter
    from tests.speech import synth_speech

    folder = tmp_path / "videos" / "spk"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with VideoWriter(folder / "c0.mp4", 25.0, audio=(synth_speech(0.48, 0), 16000)) as w:
        w.write(rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8))
    e4e = tiny_pack / registry.get("e4e-ffhq-encode").relpath
    result = run_cli_inprocess(
        "--weights-dir", str(tiny_pack), "train", "prepare", str(folder), "--out",
        str(tmp_path / "data"), "--aligned", "--holdout-speakers", "0", "--encoder", str(e4e),
        "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["dataset"]["ok"] == 1
