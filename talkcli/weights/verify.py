"""Checksums of model files: verify against the manifest, remember results per folder.

Hashing a 1 GB checkpoint takes seconds, so a verified result is remembered in
``<weights folder>/.talkcli-verified.json`` keyed by relative path, size and mtime; a file that
changed is hashed again.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from talkcli.errors import ModelFileError, OutputError
from talkcli.io.files import sha256_file, write_json_atomic
from talkcli.weights.registry import MANIFEST, ModelFile, bundled_path, locate

CACHE_NAME = ".talkcli-verified.json"


@dataclass
class FileStatus:
    """What ``weights list`` shows for one manifest entry."""

    entry: ModelFile
    path: Path | None
    state: str  # missing | present | verified | mismatch
    detail: str = ""


def expected_digest(entry: ModelFile) -> str | None:
    """The full sha256 or the hub-style prefix to compare with, or None when unknown."""
    return entry.sha256 or entry.sha256_prefix


def digest_matches(entry: ModelFile, digest: str) -> bool | None:
    """True/False against the manifest; None when the manifest has no checksum for this file."""
    if entry.sha256:
        return digest == entry.sha256
    if entry.sha256_prefix:
        return digest.startswith(entry.sha256_prefix)
    return None


def _cache_root(entry: ModelFile, path: Path) -> Path:
    root = path.parent
    for _ in entry.relpath.parts[:-1]:
        root = root.parent
    return root


def _load_cache(root: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((root / CACHE_NAME).read_text())
    return {}


def _store_cache(root: Path, cache: dict) -> None:
    """Best effort: a folder that cannot be written just means hashing again next time."""
    with contextlib.suppress(OSError, OutputError):
        write_json_atomic(root / CACHE_NAME, cache, indent=1, sort_keys=True)


RECORDED_NAME = ".talkcli-first-fetch.json"  # sha256 of files upstream publishes none for


def record_first_fetch(entry: ModelFile, path: Path, digest: str) -> None:
    """Remember the sha256 of a file fetched for the first time when the manifest has none
    (NVIDIA's pickles, e4e): later copies are verified against it. Best effort."""
    root = _cache_root(entry, path)
    recorded = {}
    with contextlib.suppress(OSError, ValueError):
        recorded = json.loads((root / RECORDED_NAME).read_text())
    recorded[entry.relpath.as_posix()] = digest
    with contextlib.suppress(OSError, OutputError):
        write_json_atomic(root / RECORDED_NAME, recorded, indent=1, sort_keys=True)


def recorded_digest(entry: ModelFile, path: Path) -> str | None:
    """The sha256 recorded when ``entry`` was first fetched into ``path``'s folder, if any."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        value = json.loads((_cache_root(entry, path) / RECORDED_NAME).read_text())
        return value.get(entry.relpath.as_posix())
    return None


def file_sha256(entry: ModelFile, path: Path, *, use_cache: bool = True) -> str:
    """sha256 of ``path``, reusing the folder's cache when size and mtime are unchanged."""
    st = path.stat()
    key = entry.relpath.as_posix()
    root = _cache_root(entry, path)
    cache = _load_cache(root) if use_cache else {}
    hit = cache.get(key)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    digest = sha256_file(path)
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    if path != bundled_path(entry):
        _store_cache(root, cache)
    return digest


def verify_file(entry: ModelFile, path: Path, *, use_cache: bool = True) -> FileStatus:
    """Hash ``path`` and compare with the manifest."""
    digest = file_sha256(entry, path, use_cache=use_cache)
    ok = digest_matches(entry, digest)
    if ok is None:
        first = recorded_digest(entry, path)
        if first is None:
            return FileStatus(entry, path, "present", "no checksum in the manifest")
        if first == digest:
            return FileStatus(entry, path, "verified", f"{digest[:12]} (recorded at first fetch)")
        return FileStatus(
            entry, path, "mismatch", f"sha256 {digest[:12]}… recorded at first fetch {first[:12]}…"
        )
    if ok:
        return FileStatus(entry, path, "verified", digest[:12])
    return FileStatus(
        entry, path, "mismatch", f"sha256 {digest[:12]}… expected {expected_digest(entry)[:12]}…"
    )


def check_file(entry: ModelFile, path: Path) -> None:
    """Raise a one-line ModelFileError if ``path`` does not match the manifest checksum."""
    status = verify_file(entry, path)
    if status.state == "mismatch":
        raise ModelFileError(
            path,
            f"checksum mismatch for {entry.name!r}: {status.detail}",
            f"the file is corrupt or not the official one; delete it and run "
            f"`talkcli weights fetch {entry.name}`",
        )


def status_all(weights_dir: str | Path | None = None, *, verify: bool = False) -> list[FileStatus]:
    """Status of every manifest entry: missing, present (not hashed), verified or mismatch.

    Without ``verify`` only cached hashes are used (cheap); with it every present file is hashed.
    """
    out = []
    for entry in MANIFEST:
        path = locate(entry.name, weights_dir)
        if path is None:
            out.append(FileStatus(entry, None, "missing"))
            continue
        if verify:
            out.append(verify_file(entry, path, use_cache=False))
            continue
        cache = _load_cache(_cache_root(entry, path)).get(entry.relpath.as_posix())
        st = path.stat()
        if cache and cache.get("size") == st.st_size and cache.get("mtime_ns") == st.st_mtime_ns:
            ok = digest_matches(entry, cache["sha256"])
            state = {True: "verified", False: "mismatch", None: "present"}[ok]
            out.append(FileStatus(entry, path, state, "cached hash"))
        else:
            out.append(FileStatus(entry, path, "present", "not verified yet"))
    return out
