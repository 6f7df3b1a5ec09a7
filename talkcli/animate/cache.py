"""Content-addressed cache for ``animate``: alignments, identity codes, tuned generators, hashes.

Entries live under ``<root>/<kind>/<key[:2]>/<key><suffix>``; the key is the sha256 of a JSON
description of everything the entry depends on (input bytes' hashes, model files' hashes,
options, a format version), so a changed photo, model file or option is a different key and an
entry never goes stale. The default root is ``platformdirs.user_cache_dir("talkcli")/animate``
(``~/.cache/talkcli/animate`` on Linux); ``--cache-dir`` moves it, ``--no-cache`` turns it off.

Concurrent runs (a batch split over many processes, two terminals) never corrupt it: every
entry is one file written under a unique temporary name in its folder and renamed into place
(``atomic_output``), so readers see a whole file or none; two writers of the same key write the
same content and the last rename wins. An entry that cannot be read is treated as a miss and
rewritten. A cache folder that cannot be written turns caching off for the run, with a warning.

``file_sha256`` remembers files' hashes by (path, size, mtime, inode, device) in
``<root>/hashes`` (``talkcli.io.hashing.FileHashes``, the one file-hash cache), so a second run
does not re-read a 300 MB generator to key its entries.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from talkcli.console import warn
from talkcli.errors import OutputError
from talkcli.io.files import atomic_output
from talkcli.io.hashing import FileHashes

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``user_cache_dir("talkcli")/animate`` (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("talkcli")) / "animate"


def content_key(kind: str, **parts: Any) -> str:
    """sha256 hex of the JSON of ``parts`` (sorted keys) with the kind and cache version."""
    text = json.dumps(
        {"kind": kind, "version": CACHE_VERSION, **parts}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Cache:
    """The cache of one run (or one batch): ``lookup``, ``store``, ``file_sha256``."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.enabled = enabled
        self.hashes = FileHashes(self.root / "hashes" if enabled else None)
        self._hash_folder_checked = False

    def describe(self) -> dict[str, Any]:
        return {"dir": str(self.root), "enabled": self.enabled}

    def path(self, kind: str, key: str, suffix: str) -> Path:
        """Where the entry ``key`` of ``kind`` lives (whether or not it exists)."""
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def lookup(self, kind: str, key: str, suffix: str) -> Path | None:
        """The entry's path if the cache is on and the entry exists, else None."""
        if not self.enabled:
            return None
        path = self.path(kind, key, suffix)
        return path if path.is_file() else None

    def store(self, kind: str, key: str, suffix: str, write: Callable[[Path], None]) -> Path | None:
        """Write an entry with ``write(tmp_path)`` atomically; None when caching is off or the
        folder cannot be written (caching then stays off for this run, with a warning)."""
        if not self.enabled:
            return None
        dest = self.path(kind, key, suffix)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(dest) as tmp:
                write(tmp)
        except OSError as exc:
            self._give_up(f"{exc.strerror or exc}")
            return None
        except OutputError as exc:  # from atomic_output: read-only folder, disk full
            self._give_up(str(exc))
            return None
        return dest

    def discard(self, path: Path) -> None:
        """Remove an entry that could not be read (it is then rebuilt)."""
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass

    def _give_up(self, why: str) -> None:
        warn(f"cache {self.root} cannot be written ({why}); continuing without the cache")
        self.enabled = False
        self.hashes.folder = None  # hashes are then remembered in memory only

    # -- file hashes -------------------------------------------------------------------------

    def file_sha256(self, path: str | Path) -> str:
        """sha256 of a file, remembered (in memory and, with the cache on, on disk) by path,
        size, mtime, inode and device."""
        self._check_hash_folder()
        try:
            return self.hashes.sha256(path)
        except OutputError as exc:  # the folder is there but cannot be written
            self._give_up(str(exc))
            return self.hashes.sha256(path)

    def _check_hash_folder(self) -> None:
        """Once: a hashes folder that cannot be created turns the cache off, with a warning
        (``FileHashes`` alone would go on silently)."""
        if self._hash_folder_checked or not self.enabled:
            return
        self._hash_folder_checked = True
        folder = self.root / "hashes"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._give_up(f"{exc.strerror or exc}")
            return
        if not os.access(folder, os.W_OK | os.X_OK):
            self._give_up(os.strerror(errno.EACCES))


def file_identity(path: str | Path, cache: Cache) -> dict[str, Any]:
    """``{"path", "sha256", "bytes"}`` of a file, for manifests and cache keys."""
    p = Path(path)
    return {"path": str(p), "sha256": cache.file_sha256(p), "bytes": os.path.getsize(p)}
