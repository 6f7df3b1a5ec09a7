"""Model-file registry: search order, checksums, fetching (offline, mirror, resume), safety."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import socket
import threading
from pathlib import Path

import pytest
import torch

from talkcli.errors import ModelFileError
from talkcli.weights import registry
from talkcli.weights.fetch import fetch
from talkcli.weights.safe_load import load_numpy_file, load_torch_file
from tests.conftest import assert_user_error, run_cli

PNET = registry.get("mtcnn-pnet")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No TALKCLI_WEIGHTS, an empty cwd and a private cache folder."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(registry.ENV_WEIGHTS, raising=False)
    monkeypatch.delenv(registry.ENV_MIRROR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def _place(folder: Path, entry: registry.ModelFile, content: bytes = b"x") -> Path:
    path = folder / entry.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_search_order_explicit_env_cwd_cache(isolated, monkeypatch):
    explicit = isolated / "explicit"
    env = isolated / "env"
    cwd_weights = Path.cwd() / "weights"
    cache = registry.user_cache_dir()
    assert str(cache).startswith(str(isolated / "cache"))
    paths = {
        name: _place(d, PNET)
        for name, d in [
            ("explicit", explicit),
            ("env", env),
            ("cwd", cwd_weights),
            ("cache", cache),
        ]
    }
    monkeypatch.setenv(registry.ENV_WEIGHTS, str(env))

    assert registry.locate(PNET.name, explicit) == paths["explicit"]
    assert registry.locate(PNET.name) == paths["env"]
    paths["env"].unlink()
    assert registry.locate(PNET.name) == paths["cwd"]
    paths["cwd"].unlink()
    assert registry.locate(PNET.name) == paths["cache"]
    paths["cache"].unlink()
    assert registry.locate(PNET.name) is None
    with pytest.raises(ModelFileError) as err:
        registry.resolve(PNET.name, purpose="align")
    assert err.value.exit_code == 2
    assert "talkcli weights fetch mtcnn-pnet" in str(err.value)
    assert PNET.url in str(err.value)


def test_fetch_dir_prefers_explicit_then_existing_cwd_weights(isolated, monkeypatch):
    assert registry.fetch_dir() == registry.user_cache_dir()
    (Path.cwd() / "weights").mkdir()
    assert registry.fetch_dir() == Path.cwd() / "weights"
    monkeypatch.setenv(registry.ENV_WEIGHTS, str(isolated / "env"))
    assert registry.fetch_dir() == isolated / "env"
    assert registry.fetch_dir(isolated / "x") == isolated / "x"


def test_bundled_lpips_heads_are_found(isolated):
    path = registry.locate("lpips-alex")
    if path is None:
        pytest.skip("lpips package not installed")
    assert path.name == "alex.pth"
    assert "lpips" in path.parts


def test_manifest_entries_are_complete():
    names = [e.name for e in registry.MANIFEST]
    assert len(names) == len(set(names))
    for required in (
        "stylegan2-ffhq",
        "psp-ffhq-encode",
        "fan-2d",
        "s3fd",
        "mtcnn-onet",
        "vgg16",
        "alexnet",
        "lpips-vgg",
        "lpips-alex",
        "fid-inception",
        "syncnet",
    ):
        entry = registry.get(required)
        assert entry.url and entry.license and entry.used_by and entry.description
    assert registry.get("fan-2d").subdir == "hub/checkpoints"


def test_cli_checksum_mismatch_exits_2_naming_the_file(isolated):
    wd = isolated / "w"
    bad = _place(wd, PNET, b"not the real pnet")
    result = run_cli("weights", "verify", "mtcnn-pnet", "--weights-dir", str(wd))
    assert_user_error(result, str(bad), "checksum mismatch")


def test_cli_verify_accepts_the_real_file(isolated, shared_fixtures):
    wd = isolated / "w"
    _place(wd, PNET, (shared_fixtures / "mtcnn" / "pnet.npy").read_bytes())
    result = run_cli("weights", "verify", "mtcnn-pnet", "--weights-dir", str(wd))
    assert result.code == 0, result.stderr
    assert "verified" in result.stderr
    listed = run_cli("weights", "list", "--json", "--weights-dir", str(wd))
    rows = {r["name"]: r for r in __import__("json").loads(listed.stdout)}
    assert rows["mtcnn-pnet"]["state"] == "verified"  # cached by the verify above
    assert rows["stylegan2-ffhq"]["state"] == "missing"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_offline_fetch_exits_2_with_the_url(isolated):
    wd = isolated / "w"
    result = run_cli(
        "weights",
        "fetch",
        "vgg16",
        "--weights-dir",
        str(wd),
        env={registry.ENV_MIRROR: f"http://127.0.0.1:{_closed_port()}/models"},
    )
    assert_user_error(result, "vgg16-397923af.pth", "by hand", "http://127.0.0.1:")
    assert not (wd / "vgg16-397923af.pth").exists()


def test_cli_offline_fetch_names_the_official_url(isolated):
    # No network here but package registries: the official URL must appear in the message.
    result = run_cli("weights", "fetch", "alexnet", "--weights-dir", str(isolated / "w"))
    if result.code == 0:
        pytest.skip("this machine can reach download.pytorch.org")
    assert_user_error(result, registry.get("alexnet").url)


def test_fetch_from_mirror_folder_checks_sha256(isolated, monkeypatch, shared_fixtures):
    mirror = isolated / "mirror"
    mirror.mkdir()
    (mirror / "pnet.npy").write_bytes((shared_fixtures / "mtcnn" / "pnet.npy").read_bytes())
    (mirror / "rnet.npy").write_bytes(b"corrupted download")
    monkeypatch.setenv(registry.ENV_MIRROR, str(mirror))
    wd = isolated / "w"
    path = fetch(PNET, wd)
    assert path == wd / "mtcnn" / "pnet.npy"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PNET.sha256
    with pytest.raises(ModelFileError, match="expected 5660aad67688"):
        fetch(registry.get("mtcnn-rnet"), wd)
    assert not (wd / "mtcnn" / "rnet.npy").exists()
    assert not (wd / "mtcnn" / "rnet.npy.part").exists()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    ranges: list[str] = []

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        body, status = self.payload, 200
        if rng:
            type(self).ranges.append(rng)
            start = int(rng.split("=")[1].split("-")[0])
            body, status = self.payload[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_fetch_resumes_a_partial_download(isolated, monkeypatch, shared_fixtures):
    data = (shared_fixtures / "mtcnn" / "pnet.npy").read_bytes()
    _RangeHandler.payload = data
    _RangeHandler.ranges = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv(registry.ENV_MIRROR, f"http://127.0.0.1:{server.server_port}")
        wd = isolated / "w"
        part = wd / "mtcnn" / "pnet.npy.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(data[:10000])
        path = fetch(PNET, wd)
    finally:
        server.shutdown()
    assert _RangeHandler.ranges == ["bytes=10000-"]
    assert path.read_bytes() == data
    assert not part.exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_malicious_pickle_is_refused_without_running(isolated, container):
    marker = isolated / "pwned"
    wd = isolated / "w"
    target = wd / registry.get("stylegan2-ffhq").relpath
    target.parent.mkdir(parents=True)
    payload = {"g_ema": {"x": torch.zeros(1)}, "evil": _Evil(marker)}
    if container == "torch-zip":
        torch.save(payload, target)
    else:
        target.write_bytes(pickle.dumps(payload))
    with pytest.raises(ModelFileError, match="refused"):
        load_torch_file(target)
    result = run_cli("weights", "inspect", "stylegan2-ffhq", "--weights-dir", str(wd))
    assert_user_error(result, str(target), "refused")
    assert not marker.exists()


def test_malicious_npy_is_refused(isolated):
    import numpy as np

    marker = isolated / "pwned"
    path = isolated / "pnet.npy"
    np.save(path, np.array({"w": _Evil(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(ModelFileError, match="refused"):
        load_numpy_file(path)
    assert not marker.exists()


def test_truncated_and_non_checkpoint_files(isolated):
    good = isolated / "good.pt"
    torch.save({"a": torch.ones(3)}, good)
    truncated = isolated / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="truncated or not a checkpoint"):
        load_torch_file(truncated)
    png = isolated / "image.pt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    result = run_cli("weights", "inspect", str(png))
    assert_user_error(result, str(png))
    assert torch.equal(load_torch_file(good)["a"], torch.ones(3))


def test_nvidia_pickles_and_e4e_are_listed_as_optional():
    for name, filename in (
        ("stylegan2-ada-ffhq", "ffhq.pkl"),
        ("stylegan3-t-ffhq-1024", "stylegan3-t-ffhq-1024x1024.pkl"),
        ("stylegan3-r-ffhqu-1024", "stylegan3-r-ffhqu-1024x1024.pkl"),
        ("e4e-ffhq-encode", "e4e_ffhq_encode.pt"),
    ):
        entry = registry.get(name)
        assert entry.filename == filename and entry.optional and entry.url.startswith("https://")
        assert entry.url.endswith(filename) or "drive.google.com" in entry.url


def test_a_file_without_a_published_checksum_is_recorded_at_first_fetch(isolated, monkeypatch):
    """Issue 15: NVIDIA's pickles and e4e publish no sha256; the first fetched copy's is
    recorded, and ``verify`` checks later copies against it."""
    from talkcli.weights.verify import recorded_digest, verify_file

    entry = registry.get("e4e-ffhq-encode")
    assert entry.sha256 is None and entry.sha256_prefix is None
    mirror = isolated / "mirror"
    mirror.mkdir()
    (mirror / entry.filename).write_bytes(b"first copy of the e4e checkpoint")
    monkeypatch.setenv(registry.ENV_MIRROR, str(mirror))
    path = fetch(entry, isolated / "w")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert recorded_digest(entry, path) == digest
    status = verify_file(entry, path, use_cache=False)
    assert status.state == "verified" and "recorded at first fetch" in status.detail
    path.write_bytes(b"another file under the same name")
    status = verify_file(entry, path, use_cache=False)
    assert status.state == "mismatch" and "recorded at first fetch" in status.detail
