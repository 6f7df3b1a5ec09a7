"""Loading model files as untrusted input: no file can run code when talkcli opens it.

PyTorch files go through ``torch.load(..., weights_only=True)``; numpy object arrays (the MTCNN
``.npy`` dicts) and pickles go through a restricted unpickler that only rebuilds plain containers,
numpy arrays and tensors. Anything else is refused with a one-line error naming the file.
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkcli.errors import ModelFileError
from talkcli.io.files import require_file

_REFUSED_HINT = (
    "it holds pickled objects other than tensors and plain containers, which could run code; "
    "talkcli refuses to load it. Use the official file (`talkcli weights fetch`)"
)


def load_torch_file(path: str | Path, what: str = "model file") -> Any:
    """``torch.load`` restricted to tensors and plain containers, mapped to the CPU."""
    p = require_file(path, what)
    _check_torch_header(p, what)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _looks_unsafe(exc):
            raise ModelFileError(p, f"refused to load this {what}", _REFUSED_HINT) from None
        raise ModelFileError(
            p, f"is not a valid PyTorch {what} ({_first_line(exc)})", "re-download it"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelFileError(
            p,
            f"is not a readable PyTorch {what}: truncated or not a checkpoint ({_first_line(exc)})",
            "re-download it or check the path",
        ) from None


@contextlib.contextmanager
def weights_only_everywhere() -> Iterator[None]:
    """Inside the block every ``torch.load`` (a third-party loader's too, and torch.hub's
    ``load_state_dict_from_url``) runs with ``weights_only=True``: code that unpickles a model
    file on its own (face-alignment loads S3FD with a full unpickle) cannot run code from it."""
    original = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


# Leading bytes of files people mistake for checkpoints (a renamed image, an HTML error page).
_FOREIGN_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF file (WAV/WebP/AVI)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"<!DOCTYPE", "an HTML page (a failed download?)"),
    (b"<html", "an HTML page (a failed download?)"),
    (b"{", "a JSON/text file"),
)


def _check_torch_header(path: Path, what: str) -> None:
    """Refuse files that cannot be a torch.save output, naming what they look like.

    torch.save writes a zip archive (``PK``), an old-style pickle (protocol >= 2 starts with
    ``0x80``) or, before PyTorch 0.4, a tar archive. Without this check a renamed image reaches
    the weights-only unpickler and is reported as unsafe, which misleads.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK") or head.startswith(b"\x80") or head[257:262] == b"ustar":
        return
    kind = next((name for magic, name in _FOREIGN_MAGIC if head.startswith(magic)), None)
    if kind is None:
        kind = "text" if head.isascii() else "an unknown format"
    raise ModelFileError(
        path, f"is not a PyTorch {what}: it looks like {kind}", "check the path or re-download it"
    )


def _looks_unsafe(exc: Exception) -> bool:
    text = str(exc)
    return "Weights only load failed" in text or "Unsupported global" in text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


# -- restricted unpickling for numpy object arrays and pickles ------------------------------------

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def _codecs_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Protocol-2 pickles store bytes as ``_codecs.encode(str, 'latin1')``; nothing else runs."""
    if encoding.lower() not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"Unsupported global: _codecs.encode({encoding!r})")
    return text.encode(encoding, errors)


_ALLOWED_GLOBALS[("_codecs", "encode")] = _codecs_encode

# numpy internals an ndarray pickle needs; the module moved from numpy.core to numpy._core in 2.0.
_NUMPY_INTERNALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
}


def _numpy_global(module: str, name: str) -> Any:
    """Resolve the few numpy internals an ndarray pickle needs, across numpy 1.x and 2.x."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return getattr(multiarray, name)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds only numpy arrays and plain containers.

    ``extra`` maps further (module, name) pairs to the callables to use instead (e.g. a format
    loader maps NVIDIA's classes to plain holders). Every other global is refused.
    """

    def __init__(self, file: io.BufferedIOBase, extra: dict[tuple[str, str], Any] | None = None):
        super().__init__(file)
        self._extra = extra or {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._extra:
            return self._extra[key]
        if key in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[key]
        if key in _NUMPY_INTERNALS:
            return _numpy_global(module, name)
        raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}")


def restricted_pickle_load(
    data: bytes | io.BufferedIOBase, extra: dict[tuple[str, str], Any] | None = None
) -> Any:
    """Unpickle bytes or a file object with ``RestrictedUnpickler``."""
    f = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    return RestrictedUnpickler(f, extra).load()


def load_numpy_file(path: str | Path, what: str = "model file") -> Any:
    """Load a ``.npy``; object arrays (pickled dicts of arrays, as MTCNN's) are unpickled safely.

    Returns the array, or for a 0-d object array its single item (the dict).
    """
    p = require_file(path, what)
    try:
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            obj = restricted_pickle_load(f)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise ModelFileError(p, f"refused to load this {what}", _REFUSED_HINT) from None
        raise ModelFileError(p, f"is not a valid .npy {what} ({_first_line(exc)})") from None
    except (ValueError, EOFError, OSError) as exc:
        raise ModelFileError(
            p, f"is not a readable .npy {what} ({_first_line(exc)})", "re-download it"
        ) from None
    if shape == () and isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        return obj.reshape(-1)[0] if obj.size == 1 else obj
    return obj
