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

``file_sha256`` remembers model files' hashes by (path, size, mtime, inode), so a second run does
not re-read a 300 MB generator to key its entries.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from talkcli.console import warn
from talkcli.errors import OutputError
from talkcli.io.files import atomic_output, sha256_file

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
        self._hashes: dict[tuple, str] = {}

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

    # -- file hashes -------------------------------------------------------------------------

    def file_sha256(self, path: str | Path) -> str:
        """sha256 of a file, remembered (in memory and on disk) by path, size, mtime, inode."""
        p = Path(path)
        st = p.stat()
        stat_key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        if stat_key in self._hashes:
            return self._hashes[stat_key]
        key = content_key("sha256", stat=list(stat_key))
        found = self.lookup("hashes", key, ".txt")
        digest = None
        if found is not None:
            text = found.read_text(encoding="ascii", errors="replace").strip()
            if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
                digest = text
        if digest is None:
            digest = sha256_file(p)
            self.store("hashes", key, ".txt", lambda tmp: tmp.write_text(digest + "\n"))
        self._hashes[stat_key] = digest
        return digest


def file_identity(path: str | Path, cache: Cache) -> dict[str, Any]:
    """``{"path", "sha256", "bytes"}`` of a file, for manifests and cache keys."""
    p = Path(path)
    return {"path": str(p), "sha256": cache.file_sha256(p), "bytes": os.path.getsize(p)}
