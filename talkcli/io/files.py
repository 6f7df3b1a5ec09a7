"""File helpers shared by every command: input checks and atomic outputs.

Every output is written to a temporary name in the destination folder and renamed into place
only when complete, so an interrupted or failed run never leaves a truncated file under the
final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from talkcli.errors import InputFileError, OutputError


def require_file(path: str | Path, what: str = "input file") -> Path:
    """Return ``path`` as a Path if it is an existing, readable regular file, else raise."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputFileError(p, f"{what} not found", "check the path")
    if p.is_dir():
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise InputFileError(p, f"is a directory, expected {article} {what}", "pass a file")
    if not p.is_file():
        raise InputFileError(p, f"is not a regular file, expected a {what}")
    if not os.access(p, os.R_OK):
        raise InputFileError(p, f"{what} is not readable", "check its permissions")
    if p.stat().st_size == 0:
        raise InputFileError(p, f"{what} is empty (0 bytes)", "pass a complete file")
    return p


def check_output_path(path: str | Path) -> Path:
    """Check that ``path`` can be created: its folder exists and is writable, it is not a folder."""
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise OutputError(f"{p}: is a directory, expected an output file name")
    if not parent.exists():
        raise OutputError(f"{p}: output folder {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise OutputError(f"{p}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{p}: output folder {parent} is not writable (choose another location)")
    return p


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name in the same folder as ``path``, keeping its extension.

    ffmpeg picks the container from the extension, so ``out.mp4`` becomes ``.out.XXXX.tmp.mp4``.
    """
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` on success, delete it on failure.

    >>> with atomic_output("out.npz") as tmp:
    ...     np.savez(tmp, w=w)
    """
    final = check_output_path(path)
    try:
        tmp = temporary_sibling(final)
    except OSError as exc:
        raise OutputError(f"{final}: cannot write in {final.parent} ({exc.strerror})") from exc
    try:
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise OutputError(f"{final}: nothing was written")
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; give the usual umask-based mode
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (model files are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
