"""The model runtime (``talkcli.runtime.ModelSet``) and the one device rule (``choose_device``):
files by registry name, lazy loading, fit checks, the torchrun rank's GPU."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from talkcli.device import choose_device, rank_cuda_device
from talkcli.errors import ModelFileError
from talkcli.runtime import ModelNeeds, ModelSet, find_model_files, generator_file, lpips_files
from talkcli.weights import registry

TALKCLI = Path(__file__).resolve().parents[1] / "talkcli"


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend this machine has ``n`` CUDA devices (torch.device('cuda', i) needs none)."""

    def install(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return install


# -- the device rule ----------------------------------------------------------------------------


def test_torchrun_ranks_take_local_rank_modulo_the_gpu_count(fake_gpus):
    fake_gpus(2)
    envs = [{"LOCAL_RANK": str(r), "RANK": str(r), "WORLD_SIZE": "4"} for r in range(4)]
    chosen = [str(choose_device("auto", env)) for env in envs]
    assert chosen == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]  # 4 ranks share 2 GPUs
    assert str(choose_device("cuda", {"LOCAL_RANK": "1"})) == "cuda:1"
    assert str(rank_cuda_device(5)) == "cuda:1"


def test_explicit_devices_and_single_processes_keep_the_users_choice(fake_gpus):
    fake_gpus(2)
    env = {"LOCAL_RANK": "1"}
    assert str(choose_device("cuda:0", env)) == "cuda:0"  # an explicit GPU is kept
    assert str(choose_device("cpu", env)) == "cpu"
    assert str(choose_device("auto", {})) == "cuda"  # no torchrun: --device as resolved
    fake_gpus(0)
    assert str(choose_device("auto", env)) == "cpu"  # no CUDA: the rank runs on the CPU
    device = torch.device("cpu")
    assert choose_device(device, env) is device
    assert str(ModelSet(None, "auto", env=env).device) == "cpu"


# -- files --------------------------------------------------------------------------------------


def test_a_missing_file_is_one_line_naming_the_registry_name(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError) as err:
        ModelSet(empty, "cpu").file("syncnet", "LSE-C/LSE-D")
    first = str(err.value).splitlines()[0]
    assert "syncnet" in first and err.value.exit_code == 2
    with pytest.raises(ModelFileError, match="psp-ffhq-encode"):
        find_model_files(ModelNeeds(encoder=True), empty)


def test_files_by_registry_name_explicit_paths_win(tiny_pack, tmp_path):
    models = ModelSet(tiny_pack, "cpu")
    assert models.file("fid-inception") == registry.locate("fid-inception", tiny_pack)
    own = tmp_path / "mine.pth"
    own.write_bytes(b"x")
    assert ModelSet(tiny_pack, "cpu", files={"syncnet": own}).file("syncnet") == own
    backbone, heads = lpips_files("vgg", tiny_pack, "test")
    assert (backbone.name, heads.name) == (
        registry.get("vgg16").relpath.name,
        registry.get("lpips-vgg").relpath.name,
    )


def test_generator_file_rule(tiny_pack, tmp_path):
    gen = registry.locate("stylegan2-ffhq", tiny_pack)
    psp = registry.locate("psp-ffhq-encode", tiny_pack)
    assert generator_file(None, tiny_pack, psp, "test") == gen  # the registry's file first
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generator_file(None, empty, psp, "test") == psp  # else the pSp file's decoder
    assert generator_file(gen, empty, None, "test") == gen  # --generator PATH wins
    with pytest.raises(ModelFileError, match="stylegan2-ffhq"):
        generator_file(None, empty, None, "test")


# -- loading ------------------------------------------------------------------------------------


def test_networks_load_lazily_once_each(tiny_pack):
    paths = find_model_files(ModelNeeds(encoder=True, lpips=True), tiny_pack)
    models = ModelSet(tiny_pack, "cpu", paths=paths)
    assert models.loaded == frozenset()  # nothing loaded by building the set
    G = models.generator()
    assert models.generator() is G and models.loaded == {"generator"}
    assert models.latent_shape() == (G.n_latent, G.style_dim)
    E = models.encoder()
    assert models.encoder() is E and (E.n_styles, E.style_dim) == models.latent_shape()
    assert models.lpips() is models.lpips("alex") and models.lpips().net_name == "alex"
    assert models.loaded == {"generator", "encoder", "lpips-alex"}
    assert models.load_seconds > 0
    assert models.sha(paths.generator) == models.sha(paths.generator) != models.sha(paths.encoder)
    assert ModelSet.preloaded(fan="stand-in").fan() == "stand-in"


def test_an_encoder_for_another_generator_size_is_refused(tiny_pack, tmp_path):
    from talkcli.tiny.stylegan2 import tiny_generator_checkpoint

    g16 = tmp_path / "g16.pt"
    torch.save(tiny_generator_checkpoint(16, channels=8), g16)  # 6 W+ layers, the pack's has 8
    paths = find_model_files(ModelNeeds(encoder=True), tiny_pack, generator=g16)
    assert paths.generator == g16
    models = ModelSet(tiny_pack, "cpu", paths=paths)
    with pytest.raises(ModelFileError) as err:
        models.encoder()
    assert "W+ layers" in str(err.value) and str(g16) in str(err.value)
    assert "encoder" not in models.loaded


# -- layering of the files this part moved ------------------------------------------------------


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_weights_imports_no_models_and_libraries_no_cli_globals():
    for path in (TALKCLI / "weights").glob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(("talkcli.models", "talkcli.train"))}
        assert not bad, f"{path.name} imports {bad}"
    layered = ["io", "audio", "models", "weights", "metrics", "animate", "tiny"]
    for folder in layered:
        for path in (TALKCLI / folder).glob("*.py"):
            text = path.read_text()
            assert "settings." not in text or "console import settings" not in text, path
            if folder in ("io", "audio", "models", "weights"):
                assert "talkcli.console" not in _imports(path), f"{path} prints to the console"


def test_fetch_reports_progress_through_its_callback(tmp_path, monkeypatch):
    import dataclasses

    from talkcli.weights.fetch import fetch

    entry = dataclasses.replace(registry.get("syncnet"), sha256=None, sha256_prefix=None)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / entry.filename).write_bytes(b"x" * 3000)
    monkeypatch.setenv("TALKCLI_MIRROR", str(mirror))
    calls: list[tuple[int, int | None]] = []
    path = fetch(entry, tmp_path / "w", on_progress=lambda done, total: calls.append((done, total)))
    assert path.read_bytes() == b"x" * 3000
    assert calls[0] == (0, 3000) and calls[-1] == (3000, 3000)
    calls.clear()
    fetch(entry, tmp_path / "w", on_progress=lambda done, total: calls.append((done, total)))
    assert calls == []  # already there: nothing downloaded, no bar
