"""``talkcli weights``: list, verify, fetch and locate the model files of the registry."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from talkcli.commands._common import print_json, weights_dir
from talkcli.commands.options import (
    JSON_OPTION,
    WEIGHTS_DIR_OPTION,
    GeneratorArch,
    choice_option,
    int_option,
    seed_option,
)
from talkcli.console import console, info, status
from talkcli.errors import ModelFileError, UserError
from talkcli.ranges import WEIGHTS_TINY
from talkcli.weights import registry

weights_app = typer.Typer(
    help="Model files: list, verify (sha256), fetch, locate.",
    no_args_is_help=True,
)

_STATE_STYLE = {
    "missing": "red",
    "present": "yellow",
    "verified": "green",
    "mismatch": "bold red",
}


def _human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def status_table(statuses, weights_dir: Path | None = None) -> Table:
    """The model-file table used by ``weights list`` and ``doctor``.

    Present files show where they were found; missing ones where ``weights fetch`` would put them.
    """
    table = Table(show_lines=False, header_style="bold")
    table.add_column("name", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("needed by")
    table.add_column("path", overflow="fold")
    fetch_root = registry.fetch_dir(weights_dir)
    for st in statuses:
        e = st.entry
        size = st.path.stat().st_size if st.path else e.size
        state = st.state + (" (optional)" if e.optional and st.state == "missing" else "")
        missing_at = escape(str(fetch_root / e.relpath))
        path = escape(str(st.path)) if st.path else f"[dim]{missing_at}[/dim]"
        table.add_row(
            e.name,
            f"[{_STATE_STYLE[st.state]}]{state}[/]",
            _human_size(size),
            ", ".join(e.used_by),
            path,
        )
    return table


@weights_app.command("list")
def list_cmd(
    verify: bool = typer.Option(False, "--verify", help="Hash every present file now."),
    as_json: bool = JSON_OPTION,
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Show every model file talkcli uses: missing, present or verified, and where it is."""
    from talkcli.weights.verify import status_all

    wd = weights_dir(wdir)
    statuses = status_all(wd, verify=verify)
    if as_json:
        print_json(
            [
                {
                    "name": s.entry.name,
                    "state": s.state,
                    "file": str(s.entry.relpath),
                    "path": str(s.path) if s.path else None,
                    "url": s.entry.url,
                    "sha256": s.entry.sha256,
                    "sha256_prefix": s.entry.sha256_prefix,
                    "size": s.entry.size,
                    "license": s.entry.license,
                    "used_by": list(s.entry.used_by),
                    "description": s.entry.description,
                }
                for s in statuses
            ]
        )
        return
    console.print(status_table(statuses, wd))
    info(f"search order: {registry.search_path(wd).describe()}")
    info(f"fetch folder: {registry.fetch_dir(wd)}")


@weights_app.command("verify")
def verify_cmd(
    names: list[str] = typer.Argument(None, help="Registry names (default: every present file)."),
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Check present model files against their sha256; exit 2 on the first mismatch."""
    from talkcli.weights.verify import check_file, verify_file

    wd = weights_dir(wdir)
    entries = [registry.get(n) for n in names] if names else list(registry.MANIFEST)
    checked = 0
    for entry in entries:
        path = registry.locate(entry.name, wd)
        if path is None:
            if names:
                registry.resolve(entry.name, wd)  # raises the one-line "not found" error
            continue
        st = verify_file(entry, path, use_cache=False)
        if st.state == "mismatch":
            check_file(entry, path)  # raises with the standard message
        checked += 1
        status(st.state, "green", f"{entry.name}: {path} ({st.detail})")
    if checked == 0:
        info("no model files present; `talkcli weights list` shows where they go")


@weights_app.command("fetch")
def fetch_cmd(
    names: list[str] = typer.Argument(None, help="Registry names to download."),
    all_: bool = typer.Option(False, "--all", help="Fetch every required (non-optional) file."),
    force: bool = typer.Option(False, "--force", help="Download again even if present."),
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Download model files (resumable, checksummed, atomic). Offline: says what to get by hand."""
    from talkcli.weights.fetch import fetch

    if not names and not all_:
        raise UserError("weights fetch: name at least one file or pass --all (see `weights list`)")
    wd = weights_dir(wdir)
    # --all: every required file that has a download (trained models such as audio2latent don't)
    entries = [e for e in registry.MANIFEST if not e.optional and e.fetchable] if all_ else []
    entries += [registry.get(n) for n in names or []]
    failures: list[str] = []
    for entry in dict.fromkeys(entries):
        try:
            with _FetchBar(entry.name) as bar:
                path = fetch(entry, wd, force=force, on_progress=bar.update)
            status("ok", "green", f"{entry.name}: {path}")
        except ModelFileError as exc:
            if len(entries) == 1:
                raise
            failures.append(str(exc))
            console.print(f"[red]failed[/red] {escape(str(exc))}", soft_wrap=True)
    if failures:
        raise UserError(
            f"{len(failures)} of {len(entries)} file(s) could not be fetched (see above)"
        )


class _FetchBar:
    """The download bar of one file: appears on the first progress report (so nothing shows for
    a file already present), closed when the fetch ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._bar = None
        self._task = None

    def __enter__(self) -> _FetchBar:
        return self

    def update(self, done: int, total: int | None) -> None:
        from talkcli.console import progress

        if self._bar is None:
            self._bar = progress().__enter__()
            self._task = self._bar.add_task(f"fetch {self.name}", total=total, completed=done)
        else:
            self._bar.update(self._task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _summarise(obj, prefix: str = "", limit: int = 12) -> list[str]:
    """Readable lines for a loaded checkpoint: nested dict keys with tensor shapes."""
    import numpy as np
    import torch

    lines: list[str] = []
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor | np.ndarray)}
        others = {k: v for k, v in obj.items() if k not in tensors}
        if tensors:
            n = sum(int(np.prod(tuple(v.shape))) for v in tensors.values())
            lines.append(f"{prefix or '.'}: {len(tensors)} tensors, {n:,} values")
            for k in list(tensors)[:limit]:
                v = tensors[k]
                lines.append(
                    f"  {prefix}{k}: {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
                )
            if len(tensors) > limit:
                lines.append(f"  ... {len(tensors) - limit} more")
        for k, v in others.items():
            if isinstance(v, dict):
                lines.extend(_summarise(v, f"{prefix}{k}.", limit))
            else:
                lines.append(f"{prefix}{k}: {type(v).__name__} {str(v)[:60]}")
    else:
        lines.append(f"{prefix or '.'}: {type(obj).__name__}")
    return lines


@weights_app.command("inspect")
def inspect_cmd(
    name_or_path: str = typer.Argument(..., help="Registry name or path of a model file."),
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Load a model file safely (no code can run) and print its keys and shapes."""
    from talkcli.weights.safe_load import load_numpy_file, load_torch_file

    if name_or_path in {e.name for e in registry.MANIFEST}:
        path = registry.resolve(name_or_path, weights_dir(wdir))
    else:
        from talkcli.io.files import require_file

        path = require_file(name_or_path, "model file")
    from talkcli.models.nvidia_pickle import looks_like_network_pickle

    if path.suffix != ".npy" and looks_like_network_pickle(path):
        _inspect_network_pickle(path)
        return
    if path.suffix == ".safetensors":  # talkcli's own models (audio2latent): no pickle at all
        obj = _load_safetensors(path)
    else:
        obj = load_numpy_file(path) if path.suffix == ".npy" else load_torch_file(path)
    print(path)
    for line in _summarise(obj):
        print(line)


def _inspect_network_pickle(path: Path) -> None:
    """An NVIDIA network pickle: its networks (class, parameters, init kwargs), then the rest."""
    from talkcli.models.nvidia_pickle import (
        check_buildable,
        describe_records,
        read_network_pickle_all,
    )

    records, extra = read_network_pickle_all(path)
    built = check_buildable(records, path)  # strict layout check of the generators talkcli builds
    print(path)
    for line in describe_records(records):
        print(line)
    for line in _summarise(extra):
        print(line)
    if built:
        print(f"talkcli builds: {', '.join(built)} (embedded module source not run)")


def _load_safetensors(path: Path) -> dict:
    """Tensors and metadata of a safetensors file, or a one-line ModelFileError."""
    from safetensors.torch import load_file

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return {**load_file(str(path)), "metadata": metadata}
    except Exception as exc:  # safetensors has its own error types for bad headers
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(path, f"is not a readable safetensors file ({first[:100]})") from None


@weights_app.command("tiny")
def tiny_cmd(
    folder: Path = typer.Argument(
        ..., help="Folder to write the pack into (use as --weights-dir)."
    ),
    size: int = int_option(
        64, "--size", range=WEIGHTS_TINY["size"], help="Generator output size: 16, 32, ..., 1024."
    ),
    seed: int = seed_option(0, "of the weights"),
    force: bool = typer.Option(
        False, "--force", help="Write even into a folder that holds other (real) model files."
    ),
    arch: GeneratorArch = choice_option(
        GeneratorArch.stylegan2,
        "--arch",
        help="stylegan3 / stylegan3-r: also write a tiny StyleGAN3 (config T / R) generator "
        "(talkcli's safetensors format) beside the pack, for --generator.",
    ),
) -> None:
    """Write a random-weight model pack in the official formats (tests, demos, first runs)."""
    from talkcli.tiny.pack import write_tiny_pack

    written = write_tiny_pack(folder, size=size, seed=seed, force=force, arch=str(arch))
    for name, path in written.items():
        info(f"{name}: {path}")
    info(f"random weights; use with --weights-dir {folder} (outputs will not look like faces)")


@weights_app.command("path")
def path_cmd(
    name: str = typer.Argument(..., help="Registry name, e.g. stylegan2-ffhq."),
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Print the path of a model file (exit 2 if it is missing)."""
    print(registry.resolve(name, weights_dir(wdir)))


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
