"""``talkcli doctor``: what talkcli sees on this machine (Python, torch, device, ffmpeg, files)."""

from __future__ import annotations

import platform
import shutil
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from talkcli import __version__
from talkcli.commands._common import WEIGHTS_DIR_OPTION, print_json, weights_dir
from talkcli.console import console, info, settings
from talkcli.errors import TalkcliError
from talkcli.weights import registry


def collect(wd: Path | None) -> dict:
    """The facts ``doctor`` reports, as a dict (also its ``--json`` output)."""
    import torch

    from talkcli.device import describe_device, resolve_device

    facts: dict = {
        "talkcli": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        facts["device"] = describe_device(resolve_device(settings.device))
    except TalkcliError as exc:
        facts["device"] = f"unavailable: {exc}"
    try:
        from talkcli.io.ffmpeg import find_ffmpeg

        ff = find_ffmpeg()
        facts["ffmpeg"] = {"path": ff.path, "source": ff.source, "version": ff.version}
    except TalkcliError as exc:
        facts["ffmpeg"] = {"path": None, "source": None, "version": None, "error": str(exc)}
    facts["espeak-ng"] = shutil.which("espeak-ng")
    facts["weights_search_order"] = [
        {"label": label, "path": str(path)} for label, path in registry.search_path(wd).dirs
    ]
    facts["weights_fetch_dir"] = str(registry.fetch_dir(wd))
    from talkcli.tiny.pack import PACK_NOTE

    facts["tiny_packs"] = [
        str(path) for _label, path in registry.search_path(wd).dirs if (path / PACK_NOTE).is_file()
    ]
    return facts


def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Print Python, torch, device, ffmpeg path/version and the model-file status table."""
    from talkcli.commands.weights import status_table
    from talkcli.weights.verify import status_all

    wd = weights_dir(wdir)
    facts = collect(wd)
    statuses = status_all(wd)
    if as_json:
        facts["model_files"] = [
            {"name": s.entry.name, "state": s.state, "path": str(s.path) if s.path else None}
            for s in statuses
        ]
        print_json(facts)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("talkcli", facts["talkcli"])
    table.add_row("python", escape(f"{facts['python']} ({facts['platform']})"))
    table.add_row("torch", f"{facts['torch']} (cuda available: {facts['cuda_available']})")
    table.add_row("device", escape(facts["device"]))
    ff = facts["ffmpeg"]
    if ff["path"]:
        table.add_row(
            "ffmpeg", escape(f"{ff['path']} (from {ff['source']}, version {ff['version']})")
        )
    else:
        table.add_row("ffmpeg", f"[red]not found[/red]: {escape(str(ff.get('error')))}")
    table.add_row(
        "espeak-ng", escape(facts["espeak-ng"] or "not found (optional, for demo speech)")
    )
    table.add_row("weights", escape(" > ".join(d["path"] for d in facts["weights_search_order"])))
    table.add_row("fetch folder", escape(facts["weights_fetch_dir"]))
    console.print(table)
    console.print(status_table(statuses, wd))
    for folder in facts["tiny_packs"]:
        console.print(
            f"[yellow]note:[/yellow] {escape(folder)} holds a random-weight tiny pack "
            "(for tests and demos; outputs will not look like faces)"
        )
    missing = [s.entry for s in statuses if s.state == "missing" and not s.entry.optional]
    fetchable = [e.name for e in missing if e.fetchable]
    if fetchable:
        info(
            f"{len(fetchable)} model file(s) missing: `talkcli weights fetch --all`, "
            "or `talkcli weights tiny DIR` for a random-weight test pack"
        )
    for entry in missing:
        if not entry.fetchable and entry.missing_hint:
            info(f"{entry.name} missing: {entry.missing_hint}")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
