"""One file-hash cache: sha256 of files, remembered by (path, size, mtime, inode, device).

Model files and videos are large; hashing them again on every run costs seconds. A hash is reused
only while the file's size, modification time, inode and device are unchanged. Entries live in
memory and, when a folder is given, as write-once files in it (one small file per entry, written
under a temporary name and renamed), so two processes sharing the folder never corrupt it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from talkcli.errors import OutputError
from talkcli.io.files import atomic_output, sha256_file

_HEX = frozenset("0123456789abcdef")


def stat_key(path: Path) -> tuple[str, int, int, int, int]:
    """What a cached hash is valid for: resolved path, size, mtime_ns, inode, device."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


class FileHashes:
    """sha256 of files with a cache in memory and, optionally, in ``folder`` on disk."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[tuple[str, int, int, int, int], str] = {}

    def _entry(self, key: tuple[str, int, int, int, int]) -> Path | None:
        if self.folder is None:
            return None
        name = hashlib.sha256(repr(key).encode("utf-8")).hexdigest()[:32]
        return self.folder / name[:2] / f"{name}.sha256"

    def _read(self, entry: Path | None) -> str | None:
        if entry is None:
            return None
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = entry.read_text(encoding="ascii").strip()
            if len(text) == 64 and set(text) <= _HEX:
                return text
        return None

    def _write(self, entry: Path | None, digest: str) -> None:
        """Store an entry; a folder that cannot be written only costs the cache, not the run."""
        if entry is None:
            return
        with contextlib.suppress(OSError, OutputError):
            os.makedirs(entry.parent, exist_ok=True)
            with atomic_output(entry) as tmp:
                Path(tmp).write_text(digest + "\n", encoding="ascii")

    def sha256(self, path: str | Path) -> str:
        """The file's sha256 (hex), from the cache when the file is unchanged."""
        p = Path(path)
        key = stat_key(p)
        digest = self._memory.get(key)
        if digest is None:
            entry = self._entry(key)
            digest = self._read(entry)
            if digest is None:
                digest = sha256_file(p)
                self._write(entry, digest)
            self._memory[key] = digest
        return digest
