"""NVIDIA network pickles: read without running code, StyleGAN2-ADA built by talkcli.

The pickles are written with the opcode structure of NVIDIA's ``torch_utils.persistence``
by a test-local stand-in (tests/nvidia_pickle_support.py); equality with NVIDIA's own
networks.py is checked by scripts/compare_nvidia_sg2ada.py (docs/models.md has the numbers).
"""

from __future__ import annotations

import builtins
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from talkcli.errors import ModelFileError
from talkcli.models.nvidia_pickle import (
    SG2_ADA_GENERATOR,
    build_network,
    looks_like_network_pickle,
    read_network_pickle,
)
from talkcli.models.stylegan2 import check_savable, load_generator
from tests.conftest import assert_user_error, run_cli_inprocess
from tests.nvidia_pickle_support import (
    SG2_MODULE_SRC,
    Record,
    nvidia_modules,
    record_of,
    tiny_ada_pickle,
    tiny_sg3_pickle,
    write_network_pickle,
)


@pytest.fixture(scope="module")
def ada_pickle(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    path, g = tiny_ada_pickle(tmp_path_factory.mktemp("ada") / "network-snapshot.pkl")
    return path, g.eval()


def test_reader_returns_records_without_building(ada_pickle):
    path, g = ada_pickle
    records = read_network_pickle(path)
    assert list(records) == ["G", "D", "G_ema"]
    rec = records["G_ema"]
    assert rec.class_name == SG2_ADA_GENERATOR
    assert records["D"].class_name == "training.networks.Discriminator"
    assert rec.init_kwargs["synthesis_kwargs"]["conv_clamp"] == 256
    assert type(rec.init_kwargs["mapping_kwargs"]) is dict  # EasyDict -> dict
    assert set(rec.state) == set(g.state_dict())
    assert rec.parameter_count() == sum(p.numel() for p in g.parameters())
    assert "synthesis.b16.conv1.noise_const" in rec.state
    with pytest.raises(ModelFileError, match="Discriminator, which talkcli cannot build"):
        build_network(records["D"], path)


def test_loaded_generator_equals_the_saved_one(ada_pickle):
    path, g = ada_pickle
    G = load_generator(path)
    assert (G.size, G.style_dim, G.n_latent, G.checkpoint_kind) == (16, 32, 6, "nvidia-pickle")
    assert torch.equal(G.latent_avg, g._modules["mapping"].w_avg)  # w_avg for truncation
    torch.manual_seed(1)
    z = torch.randn(3, 32)
    with torch.no_grad():
        w = G.mapping(z, truncation=0.5)
        assert torch.allclose(w, g.mapping(z, truncation=0.5, truncation_latent=G.latent_avg))
        ws = torch.randn(3, G.n_latent, 32)
        for mode in ("const", "none"):
            img = G.synthesis(ws, noise_mode=mode)
            assert img.shape == (3, 3, 16, 16)
            assert torch.equal(img, g.synthesis(ws, noise_mode=mode))
        const = G.synthesis(ws, noise_mode="const")
        assert not torch.equal(const, G.synthesis(ws, noise_mode="none"))
        assert not torch.equal(const, G.synthesis(ws, noise_mode="random"))
    assert G.latent_avg.shape == (32,) and not G.latent_avg_computed
    assert len(G.noise_buffers()) == G.num_layers == 5
    assert load_generator(path, network="G").size == 16


def test_resnet_and_orig_architectures_load(tmp_path):
    for arch in ("resnet", "orig"):
        path, g = tiny_ada_pickle(tmp_path / f"{arch}.pkl", architecture=arch)
        G = load_generator(path)
        ws = torch.randn(2, G.n_latent, 32)
        with torch.no_grad():
            assert torch.equal(G.synthesis(ws), g.eval().synthesis(ws))


def test_missing_network_and_strict_state(tmp_path, ada_pickle):
    path, g = ada_pickle
    with pytest.raises(ModelFileError, match="has no network 'G_foo'"):
        load_generator(path, network="G_foo")
    broken = record_of(g, "Generator", read_network_pickle(path)["G_ema"].init_kwargs)
    params = broken.meta["state"]["_modules"]["mapping"].meta["state"]["_modules"]["fc0"]
    params.meta["state"]["_parameters"] = {"weight": torch.zeros(32, 32)}  # bias missing
    params.meta["state"]["_buffers"] = {"extra": torch.zeros(2)}
    bad = write_network_pickle(tmp_path / "bad.pkl", {"G_ema": broken})
    with pytest.raises(ModelFileError) as info:
        load_generator(bad)
    text = str(info.value)
    assert "mapping.fc0.bias" in text and "mapping.fc0.extra" in text
    assert "\n" not in text


def test_sizes_are_bounded_before_allocation(tmp_path, ada_pickle):
    path, g = ada_pickle
    kwargs = dict(read_network_pickle(path)["G_ema"].init_kwargs)
    kwargs["img_resolution"] = 2**20
    bad = write_network_pickle(tmp_path / "huge.pkl", {"G_ema": record_of(g, "Generator", kwargs)})
    with pytest.raises(ModelFileError, match="img_resolution 1048576 is outside"):
        load_generator(bad)


def test_pickle_detection(tmp_path, ada_pickle):
    path, _g = ada_pickle
    raw = tmp_path / "snapshot.bin"
    shutil.copy(path, raw)
    assert looks_like_network_pickle(raw)
    pt = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, pt)
    assert not looks_like_network_pickle(pt)
    torch.save({"a": torch.zeros(1)}, pt, _use_new_zipfile_serialization=False)
    assert not looks_like_network_pickle(pt)


def test_a_pickle_generator_is_savable_in_talkclis_file(ada_pickle, tmp_path):
    from talkcli.models.generator_file import file_arch
    from talkcli.models.stylegan2 import save_generator

    path, _g = ada_pickle
    G = load_generator(path)
    check_savable(G, path)  # no refusal: saved as talkcli's generator file
    out = save_generator(tmp_path / "g.pt", G, {"note": "x"})
    assert file_arch(out) == "stylegan2-ada"
    back = load_generator(out)
    assert back.checkpoint_kind == "talkcli" and back.metadata == {"note": "x"}
    assert back.init_kwargs == G.init_kwargs and torch.equal(back.latent_avg, G.latent_avg)
    ws = torch.randn(2, G.n_latent, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back.synthesis(ws, noise_mode="const"), G.synthesis(ws, "const"))
    with pytest.raises(ModelFileError, match="cannot save a tuned copy"):
        check_savable(torch.nn.Linear(1, 1), path)


# -- poisoned pickles -----------------------------------------------------------------------------


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _poisoned(kind: str, folder: Path, marker: Path) -> Path:
    path = folder / f"{kind}.pkl"
    if kind == "os.system":
        payload = {"G_ema": _Reduce(os.system, f"touch {marker}")}
    elif kind == "exec":
        payload = {"G_ema": _Reduce(builtins.exec, f"open({str(marker)!r}, 'w')")}
    elif kind == "eval":
        payload = {"G_ema": _Reduce(builtins.eval, f"open({str(marker)!r}, 'w')")}
    else:  # a persistence record whose module source would write the marker when executed
        src = f"open({str(marker)!r}, 'w').write('pwned')\n{SG2_MODULE_SRC}"
        state = {"_parameters": {}, "_buffers": {}, "_modules": {}, "_init_kwargs": {}}
        payload = {"G_ema": Record(dict(type="class", version=6, module_src=src,
                                        class_name="Generator", state=state))}  # fmt: skip
    with nvidia_modules(), open(path, "wb") as f:
        pickle.dump(payload, f)
    return path


def _speech(folder: Path) -> str:
    import numpy as np
    import soundfile as sf

    path = folder / "speech.wav"
    t = np.arange(16000) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return str(path)


POISONS = ("os.system", "exec", "eval", "module_src")


@pytest.mark.parametrize("kind", POISONS)
def test_poisoned_pickles_never_run_code(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = _poisoned(kind, tmp_path, marker)
    with pytest.raises(ModelFileError) as info:
        load_generator(path)
    assert "\n" not in str(info.value)
    if kind != "module_src":
        assert "refused" in str(info.value)
        assert {"os.system": "system", "exec": "builtins.exec", "eval": "builtins.eval"}[kind] in (
            str(info.value)
        )
    assert not marker.exists()


@pytest.mark.parametrize("kind", POISONS)
@pytest.mark.parametrize("command", ["inspect", "invert", "tune-pti", "animate"])
def test_poisoned_pickles_are_refused_by_every_command(
    tmp_path, monkeypatch, tiny_pack, face_images, kind, command
):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    path = str(_poisoned(kind, tmp_path, marker))
    face, wd = str(face_images[0]), ["--weights-dir", str(tiny_pack)]
    args = {
        "inspect": ["weights", "inspect", path],
        "invert": [*wd, "invert", face, "--method", "optimize", "--generator", path, "--out",
                   "w.npz"],
        "tune-pti": [*wd, "tune-pti", face, "--generator", path, "--out", "g.pt", "--steps", "1"],
        "animate": [*wd, "animate", "--image", face, "--aligned", "--audio", _speech(tmp_path),
                    "--generator", path, "--out", "o.mp4"],
    }[command]  # fmt: skip
    res = run_cli_inprocess(*args)
    assert_user_error(res, Path(path).name)
    assert not marker.exists()


def test_weights_inspect_lists_networks(tmp_path, monkeypatch, ada_pickle):
    monkeypatch.chdir(tmp_path)
    path, g = ada_pickle
    res = run_cli_inprocess("weights", "inspect", str(path))
    assert res.code == 0, res.stderr
    n = sum(p.numel() for p in g.parameters())
    assert f"G_ema: training.networks.Generator, {n:,} parameters" in res.stdout
    assert "D: training.networks.Discriminator" in res.stdout
    assert "conv_clamp': 256" in res.stdout and "talkcli builds: G, G_ema" in res.stdout


def test_tune_pti_on_a_pickle_then_animate_with_the_tuned_file(
    tmp_path, monkeypatch, tiny_pack, face_images, two_network_pickle
):
    import numpy as np
    import soundfile as sf

    monkeypatch.chdir(tmp_path)
    path, g, _ema = two_network_pickle
    wd = ["--weights-dir", str(tiny_pack)]
    res = run_cli_inprocess(
        *wd, "tune-pti", str(face_images[0]), "--generator", str(path), "--network", "G",
        "--pivot-method", "w-project", "--project-steps", "2", "--steps", "2", "--out", "g.pt",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    tuned = load_generator(tmp_path / "g.pt")
    assert type(tuned).__name__ == "Generator" and tuned.arch == "stylegan2-ada"
    assert tuned.metadata["kind"] and tuned.checkpoint_kind == "talkcli"
    base = g.state_dict()
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, base[k])]
    assert changed and tuned.state_dict().keys() == base.keys()
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, tuned.n_latent, 32)).astype(np.float32) * 0.3
    np.savez(tmp_path / "t.npz", w=w, w_identity=w[0], fps=np.float64(25.0))
    sf.write(tmp_path / "a.wav", rng.normal(size=3200) * 0.1, 16000, subtype="PCM_16")
    res = run_cli_inprocess(
        *wd, "animate", "--from-trajectory", "t.npz", "--audio", "a.wav", "--generator",
        "g.pt", "-o", "v.mp4",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    assert (tmp_path / "v.mp4").stat().st_size > 0


def test_a_poisoned_tensor_storage_is_refused(tmp_path):
    import io

    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(
        {"x": _Reduce(os.system, f"touch {marker}")}, buf, _use_new_zipfile_serialization=False
    )
    path = tmp_path / "storage.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G_ema": _Reduce(torch.storage._load_from_bytes, buf.getvalue())}, f)
    with pytest.raises(ModelFileError, match="refused") as info:
        read_network_pickle(path)
    assert "\n" not in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


def test_fp16_blocks_run_in_float16_only_when_asked(ada_pickle):
    path, _g = ada_pickle
    G = load_generator(path)
    ws = torch.randn(2, G.n_latent, 32)
    with torch.no_grad():
        ref = G.synthesis(ws)  # float32 everywhere (the default, also on CUDA)
        half = G._modules["synthesis"](ws, "const", None, True)  # NVIDIA's fp16 blocks, forced
        with torch.autocast("cpu", dtype=torch.bfloat16):  # what `animate --dtype bf16` does
            bf16 = G.synthesis(ws)
    assert half.dtype == bf16.dtype == torch.float32
    scale = float(ref.abs().max())
    assert 0 < float((half - ref).abs().max()) < 0.02 * scale
    assert float((bf16 - ref).abs().max()) < 0.05 * scale


def test_module_src_is_never_compiled_or_executed(ada_pickle, monkeypatch):
    path, _g = ada_pickle

    def forbidden(*args, **kwargs):
        raise AssertionError("compile/exec called while reading a network pickle")

    for name in ("compile", "exec", "eval"):
        monkeypatch.setattr(builtins, name, forbidden)
    records = read_network_pickle(path)
    monkeypatch.undo()
    assert build_network(records["G_ema"], path).size == 16


def test_a_stylegan3_record_is_named_and_refused_without_a_builder(
    tmp_path, ada_pickle, monkeypatch
):
    from talkcli.models import nvidia_pickle

    path, g = ada_pickle
    src = "# stand-in for training/networks_stylegan3.py\nclass SynthesisInput: ...\n"
    rec = record_of(g, "Generator", {"z_dim": 32}, module_src=src)
    sg3 = write_network_pickle(tmp_path / "sg3.pkl", {"G_ema": rec})
    record = read_network_pickle(sg3)["G_ema"]
    assert record.class_name == "training.networks_stylegan3.Generator"
    monkeypatch.setattr(nvidia_pickle, "_fill_builders", lambda: None)
    monkeypatch.setattr(nvidia_pickle, "NETWORK_BUILDERS", {})
    with pytest.raises(ModelFileError, match="networks_stylegan3.Generator, which talkcli cannot"):
        load_generator(sg3)


@pytest.mark.parametrize("radial", [False, True], ids=["T", "R"])
def test_a_stylegan3_pickle_loads_and_equals_its_record(tmp_path, radial):
    from talkcli.models import stylegan3

    path, g = tiny_sg3_pickle(tmp_path / "sg3.pkl", radial=radial, seed=4)
    record = read_network_pickle(path)["G_ema"]
    assert record.class_name == stylegan3.NVIDIA_CLASS
    loaded, direct = load_generator(path), stylegan3.generator_from_record(record)
    assert type(loaded).__name__ == "StyleGAN3Generator" and loaded.checkpoint_kind
    assert loaded.state_dict().keys() == g.state_dict().keys()
    for key, value in direct.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
        assert torch.equal(g.state_dict()[key], value), key
    z = torch.randn(2, loaded.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ws = direct.mapping(z)[:, None].repeat(1, direct.n_latent, 1)
        assert torch.equal(loaded.mapping(z), direct.mapping(z))
        assert torch.equal(loaded.synthesis(ws), direct.synthesis(ws))
    from talkcli.models.stylegan2 import save_generator

    check_savable(loaded, path)  # a tuned copy is written as talkcli's StyleGAN3 file
    back = load_generator(save_generator(tmp_path / "tuned.pt", loaded, {"pti": 1}))
    assert back.checkpoint_kind == "talkcli" and back.metadata == {"pti": 1}
    with torch.no_grad():
        assert torch.equal(back.synthesis(ws), direct.synthesis(ws))


# -- --network G | G_ema ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_network_pickle(tmp_path_factory) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """A 32 px pickle whose G and G_ema differ (as after training): (path, G, G_ema)."""
    import copy

    from tests.nvidia_pickle_support import tiny_ada_kwargs

    folder = tmp_path_factory.mktemp("two")
    _path, g = tiny_ada_pickle(folder / "base.pkl", seed=5, resolution=32)
    ema = copy.deepcopy(g)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    kwargs = tiny_ada_kwargs(32)
    data = {
        "G": record_of(g, "Generator", kwargs),
        "D": None,
        "G_ema": record_of(ema, "Generator", kwargs),
    }
    return write_network_pickle(folder / "two.pkl", data), g.eval(), ema.eval()


def test_network_chooses_g_or_g_ema_and_is_ignored_for_other_files(two_network_pickle, tiny_pack):
    from talkcli.runtime import ModelPaths, ModelSet

    path, g, ema = two_network_pickle
    ws = torch.randn(2, g.n_latent, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for network, want in (("G", g), ("G_ema", ema)):
            got = load_generator(path, network=network).synthesis(ws, noise_mode="const")
            assert torch.equal(got, want.synthesis(ws, noise_mode="const")), network
        models = ModelSet(device="cpu", paths=ModelPaths(generator=path, network="G"))
        got = models.generator().synthesis(ws, noise_mode="const")
        assert torch.equal(got, g.synthesis(ws, noise_mode="const"))
    pt = tiny_pack / "stylegan2-ffhq-config-f.pt"
    plain = load_generator(pt).state_dict()
    other = load_generator(pt, network="G").state_dict()
    assert all(torch.equal(v, other[k]) for k, v in plain.items())


@pytest.mark.parametrize("network", ["G", "G_ema", None])
@pytest.mark.parametrize("command", ["invert", "tune-pti", "animate"])
def test_network_option_reaches_load_generator(
    tmp_path, monkeypatch, tiny_pack, face_images, two_network_pickle, command, network
):
    from talkcli.models import stylegan2

    monkeypatch.chdir(tmp_path)
    asked: list[str] = []

    def spy(path, device="cpu", trainable=False, network="G_ema"):
        asked.append(network)
        raise ModelFileError(path, "stopped by the test after choosing the network")

    monkeypatch.setattr(stylegan2, "load_generator", spy)
    path = str(two_network_pickle[0])
    face, wd = str(face_images[0]), ["--weights-dir", str(tiny_pack)]
    args = {
        "invert": [*wd, "invert", face, "--method", "optimize", "--generator", path, "--out",
                   "w.npz"],
        "tune-pti": [*wd, "tune-pti", face, "--generator", path, "--out", "g.pt", "--steps", "1",
                     "--pivot-method", "w-project"],
        "animate": [*wd, "animate", "--image", face, "--aligned", "--audio", _speech(tmp_path),
                    "--generator", path, "--out", "o.mp4"],
    }[command]  # fmt: skip
    res = run_cli_inprocess(*args, *(["--network", network] if network else []))
    assert_user_error(res, "stopped by the test")
    assert asked == [network or "G_ema"]


def test_network_option_refuses_other_names(tmp_path, tiny_pack, face_images, two_network_pickle):
    res = run_cli_inprocess(
        "--weights-dir", str(tiny_pack), "invert", str(face_images[0]), "--generator",
        str(two_network_pickle[0]), "--network", "D", "--out", str(tmp_path / "w.npz"),
    )  # fmt: skip
    assert res.code == 2 and "--network" in res.stderr
