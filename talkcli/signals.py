"""Ctrl-C and SIGTERM for the command line: clean unwinding at any moment, never an abort.

``install()`` (called by the console script before anything else is imported) makes SIGINT raise
``KeyboardInterrupt`` and SIGTERM raise ``talkcli.errors.Terminated``, so every ``with`` block
removes its temporary files and the CLI exits 130 or 143.

One hazard: a Python exception raised while a C++ extension is initialising (torch's pybind11
modules call back into Python during ``import torch``) cannot cross the C++ frames, and the process
aborts (``terminate called after throwing pybind11::error_already_set``, exit -6). So the import of
the heavy packages runs *protected*: a signal that arrives meanwhile is held and raised the moment
the import is over.

Only the standard library is imported here (start-up stays fast).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import signal
import sys
from types import FrameType, ModuleType
from typing import Any

from talkcli.errors import Terminated

# Top-level packages with C/C++ extensions that call back into Python while they initialise.
PROTECTED_PACKAGES = frozenset(
    {"torch", "numpy", "scipy", "cv2", "skimage", "numba", "llvmlite", "matplotlib", "PIL",
     "face_alignment", "safetensors", "soundfile", "sklearn"}
)  # fmt: skip

state: dict[str, Any] = {"installed": False, "terminated": False, "pending": None, "protect": 0}


def _raise_for(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt


def _handler(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGTERM:
        state["terminated"] = True
    if state["protect"]:
        state["pending"] = signum  # raised when the protected import is over
        return
    _raise_for(signum)


class _ProtectedLoader(importlib.abc.Loader):
    """Runs the wrapped loader's ``exec_module`` with interrupts held back."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        state["protect"] += 1
        try:
            self.inner.exec_module(module)
        finally:
            state["protect"] -= 1
            if module.__spec__ is not None:  # leave no trace of the wrapper
                module.__spec__.loader = self.inner
            module.__loader__ = self.inner
        pending = state["pending"]
        if pending is not None and state["protect"] == 0:
            state["pending"] = None
            _raise_for(pending)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _ProtectedImports(importlib.abc.MetaPathFinder):
    """Finds the heavy top-level packages with the other finders, then wraps their loader."""

    def __init__(self) -> None:
        self._finding = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if self._finding or "." in name or name not in PROTECTED_PACKAGES:
            return None
        self._finding = True
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None:
                for finder in sys.meta_path:
                    if finder is self or not hasattr(finder, "find_spec"):
                        continue
                    spec = finder.find_spec(name, path, target)
                    if spec is not None:
                        break
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ProtectedLoader(spec.loader)
        return spec


def install() -> None:
    """Take over SIGINT and SIGTERM for this process (main thread only) and protect imports."""
    if state["installed"]:
        return
    try:
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)
    except ValueError:  # pragma: no cover - not the main thread
        return
    sys.meta_path.insert(0, _ProtectedImports())
    state["installed"] = True


def terminated() -> bool:
    """Whether a SIGTERM has been received (Typer turns the exception into a plain exit 130)."""
    return bool(state["terminated"])
