"""File helpers shared by every command: input checks and atomic outputs.

Every output is written to a temporary name in the destination folder and renamed into place
only when complete, so an interrupted or failed run never leaves a truncated file under the
final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from talkcli.errors import InputFileError, OutputError, UserError

_NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems
_PATH_MAX = 4096  # bytes in a whole path on Linux (with its terminating NUL)


def _a(what: str) -> str:
    """``what`` with its indefinite article: "an image", "a model file"."""
    return ("an " if what[:1].lower() in "aeiou" else "a ") + what


def require_file(path: str | Path, what: str = "input file") -> Path:
    """Return ``path`` as a Path if it is an existing, readable regular file, else raise."""
    p = Path(path).expanduser()
    try:
        p.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputFileError(p, "is a symbolic link loop", "point it at a real file") from None
        if p.is_symlink():
            target = os.readlink(p)
            raise InputFileError(
                p, f"is a broken symbolic link (to {target})", "point it at an existing file"
            ) from None
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise InputFileError(p, f"cannot open the {what} ({exc.strerror})") from None
        raise InputFileError(p, f"{what} not found", "check the path") from None
    if p.is_dir():
        raise InputFileError(p, f"is a directory, expected {_a(what)}", "pass a file")
    if not p.is_file():
        raise InputFileError(p, f"is not a regular file, expected {_a(what)}")
    if not os.access(p, os.R_OK):
        raise InputFileError(p, f"{what} is not readable", "check its permissions")
    if p.stat().st_size == 0:
        raise InputFileError(p, f"{what} is empty (0 bytes)", "pass a complete file")
    return p


def _fs_limit(folder: Path, name: str, default: int) -> int:
    """The file system's ``pathconf`` limit ``name`` for ``folder``, or ``default``."""
    try:
        value = os.pathconf(folder, name)
    except (OSError, ValueError, AttributeError):  # unknown, or no pathconf (Windows)
        return default
    return value if value and value > 0 else default


def _check_name_length(p: Path, parent: Path) -> None:
    """Refuse a name the file system cannot hold (``File name too long``) before any work."""
    limit = _fs_limit(parent, "PC_NAME_MAX", _NAME_MAX)  # _NAME_MAX if parent is missing
    for part in reversed(p.parts):
        n = len(os.fsencode(part))
        if n > limit:
            what = "file name" if part == p.name else f"folder name {part[:40]}..."
            raise OutputError(
                f"{p}: the {what} is {n} bytes, over the file system's limit of {limit} bytes "
                "(choose a shorter name)"
            )
    limit = _fs_limit(parent, "PC_PATH_MAX", _PATH_MAX)
    n = len(os.fsencode(str(p.absolute())))
    if n >= limit:
        raise OutputError(
            f"{p}: the path is {n} bytes, over the file system's limit of {limit - 1} bytes "
            "(choose a shorter name or folder)"
        )


def check_output_path(path: str | Path) -> Path:
    """Check that ``path`` can be created: its folder exists and is writable, it is not a folder,
    its name fits the file system (255 bytes a name on Linux and macOS)."""
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    _check_name_length(p, parent)
    try:
        p.is_dir()
    except OSError as exc:  # a folder name in the path that is too long, a loop
        raise OutputError(f"{p}: cannot use this output path ({exc.strerror})") from None
    if p.is_dir():
        raise OutputError(f"{p}: is a directory, expected an output file name")
    if not parent.exists():
        raise OutputError(f"{p}: output folder {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise OutputError(f"{p}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{p}: output folder {parent} is not writable (choose another location)")
    return p


def ensure_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create an output folder (and its parents) or fail in one line: it is a file, or it cannot
    be created (read-only place, no space)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputError(f"{p}: is a file, expected {_a(what)}")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{p}: cannot create the {what} ({exc.strerror})") from None
    return p


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name in the same folder as ``path``, keeping its extension.

    ffmpeg picks the container from the extension, so ``out.mp4`` becomes ``.out.XXXX.tmp.mp4``.
    The stem is shortened so the name fits wherever the final name fits (255 bytes).
    """
    suffix = f".tmp{path.suffix}"
    room = _NAME_MAX - len(suffix.encode()) - 2 - 8  # two dots, mkstemp's 8 random characters
    stem = path.stem.encode()[: max(room, 1)].decode("utf-8", "ignore")
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how libraries that wrap the OS error in their own say it (safetensors: "... No space left on
# device (os error 28)"); strerror of ENOSPC and EDQUOT on Linux and macOS
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


def is_disk_full(exc: BaseException) -> bool:
    """``exc`` says the file system (or the user's quota) is full: an OSError ENOSPC/EDQUOT, or
    a library's own error wrapping one (safetensors' ``SafetensorError``)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return any(text in str(exc) for text in _DISK_FULL_TEXT)


def format_bytes(n: float) -> str:
    """``n`` bytes for people: "512 B", "3.4 MB", "1.2 GB" (powers of 1000, like ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def disk_full_error(
    path: str | Path | None,
    needed: int | None = None,
    *,
    what: str = "writing",
    written: int | None = None,
) -> OutputError:
    """The one message for a full disk (ENOSPC/EDQUOT from Python, a library's wrapped error,
    or "No space left on device" from ffmpeg): names the output, the folder to free space in,
    the space needed (``needed`` bytes, or at least the ``written`` ones) and what is free now."""
    if path is None:
        return OutputError(f"disk full while {what} (free some space)")
    final = Path(path)
    folder = final if final.is_dir() else (final.parent if str(final.parent) else Path("."))
    facts = []
    if needed:
        facts.append(f"it needs {format_bytes(needed)}")
    elif written:
        facts.append(f"it needs more than the {format_bytes(written)} written")
    with contextlib.suppress(OSError):
        facts.append(f"{format_bytes(shutil.disk_usage(folder).free)} free")
    detail = f": {', '.join(facts)}" if facts else ""
    return OutputError(
        f"{final}: disk full while {what} in {folder}{detail} "
        f"(free some space in {folder} or choose another folder)"
    )


def disk_full(path: str | Path | None, what: str, written: int | None = None) -> OutputError:
    """``disk_full_error`` for a step named by a verb phrase ("encode video at frame 12")."""
    return disk_full_error(path, what=f"trying to {what}", written=written)


class WriteErrors(io.RawIOBase):
    """A writable file that remembers the OSError of its first failed write, for libraries that
    report one as their own bare error (torch.save: "RuntimeError: ... unexpected pos")."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__()
        self._f = f
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise


def require_space(folder: str | Path, needed: int, what: str) -> None:
    """Refuse, before writing anything, a set of files that cannot fit in ``folder``'s free
    space (as the file system reports it), so that none of the previous ones is replaced."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # no answer: the writes themselves will tell
    if free < needed:
        raise OutputError(
            f"{folder}: not enough space for {what}: it needs {format_bytes(needed)}, "
            f"{format_bytes(free)} free (free some space or choose another folder)"
        )


@contextlib.contextmanager
def atomic_output(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` on success, delete it on failure.

    A full disk (ENOSPC, EDQUOT, or a library error wrapping one) while writing or renaming
    becomes a one-line ``OutputError`` naming the folder and ``needed``, the file's size in
    bytes when the caller knows it; the file under ``path``, if any, is left as it was.

    >>> with atomic_output("out.npz") as tmp:
    ...     np.savez(tmp, w=w)
    """
    final = check_output_path(path)
    try:
        tmp = temporary_sibling(final)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(final, needed) from None
        raise OutputError(f"{final}: cannot write in {final.parent} ({exc.strerror})") from exc
    try:
        try:
            yield tmp
            if not tmp.exists() or tmp.stat().st_size == 0:
                raise OutputError(f"{final}: nothing was written")
            os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; give the usual umask-based mode
            os.replace(tmp, final)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise OutputError(f"{final}: cannot write ({exc.strerror})") from None
            raise
    except BaseException as exc:
        written = _size(tmp)
        with contextlib.suppress(OSError):
            tmp.unlink()  # first, so the message tells the space free without it
        if isinstance(exc, Exception) and not isinstance(exc, UserError) and is_disk_full(exc):
            raise disk_full_error(final, needed, written=written) from None
        raise


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (model files are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(
    path: str | Path,
    data: Any,
    *,
    indent: int | None = 1,
    allow_nan: bool = True,
    sort_keys: bool = False,
) -> Path:
    """Write ``data`` as JSON (UTF-8, trailing newline) through ``atomic_output``; return the path.

    The one JSON writer for reports, manifests, sidecars and dataset indexes. Values JSON does
    not know (paths, numpy scalars) are written with ``str``; ``allow_nan=False`` refuses NaN.
    """
    text = json.dumps(data, indent=indent, allow_nan=allow_nan, sort_keys=sort_keys, default=str)
    raw = (text + "\n").encode("utf-8")
    with atomic_output(path, needed=len(raw)) as tmp:
        Path(tmp).write_bytes(raw)
    return Path(path)
