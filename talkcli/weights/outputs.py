"""Output checks that need the model-file registry: no run may overwrite a model file.

``guard_outputs`` validates every output location of a run before any work starts. It lives
here, above ``talkcli.io`` and beside the registry, because it must know every model file the
registry finds (the path checks themselves are ``talkcli.guards.same_file`` and
``talkcli.io.files.check_output_path``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from talkcli.errors import OutputError
from talkcli.guards import _file_key
from talkcli.io.files import check_output_path
from talkcli.weights import registry


def _model_files(weights_dir: str | Path | None) -> list[Path]:
    """Every model file the registry finds on the search path, and those loaded in this run."""
    found = []
    for entry in registry.MANIFEST:
        path = registry.locate(entry.name, weights_dir)
        if path is not None:
            found.append(path)
    return found + list(registry.files_in_use())


def guard_outputs(
    outputs: Iterable[str | Path | None],
    *,
    inputs: Iterable[str | Path | None] = (),
    force: bool = False,
    weights_dir: str | Path | None = None,
) -> None:
    """Validate every output location of a run before any work starts.

    Refuses (``OutputError``, exit 2) an output that is a folder or sits in a missing or read-only
    folder, two outputs that are the same file, an output that is a model file (anything the
    registry finds, or any file resolved as a model in this run), and an output that is one of
    the ``inputs``, unless ``force`` (for commands where replacing an input in place is safe:
    it is read whole before the atomic rename). Files are compared by device and inode, so links
    and other spellings of a path are caught; batches of thousands stay fast.
    """
    outs = [Path(o).expanduser() for o in outputs if o is not None]
    checked_parents: set[Path] = set()
    seen: dict[tuple, Path] = {}
    for out in outs:
        if out.parent not in checked_parents or out.exists():
            check_output_path(out)
            checked_parents.add(out.parent)
        key = _file_key(out)
        if key is None:
            raise OutputError(f"{out}: cannot resolve this path (a symbolic link loop?)")
        if key in seen:
            raise OutputError(f"{out}: the same file is given for two outputs ({seen[key]})")
        seen[key] = out
    models = {_file_key(m): m for m in _model_files(weights_dir)}
    sources = {} if force else {_file_key(Path(i).expanduser()): i for i in inputs if i is not None}
    for key, out in seen.items():
        if key in models:
            raise OutputError(
                f"{out}: would overwrite the model file {models[key]} (choose another output name)"
            )
        if key in sources:
            raise OutputError(
                f"{out}: would overwrite the input {sources[key]} "
                "(choose another output name, or --force where offered)"
            )
