"""Terminal output shared by commands: one rich console on stderr, progress bars, --quiet.

Results meant for scripts (paths, JSON) go to stdout with ``print``; everything for humans
(progress, notes, warnings) goes to stderr through ``console`` so pipes stay clean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)


@dataclass
class Settings:
    """Global options from the ``talkcli`` callback, read by every command."""

    device: str = "auto"
    quiet: bool = False
    debug: bool = False
    weights_dir: Path | None = None


settings = Settings()


def info(message: str) -> None:
    """A note for humans on stderr, silenced by ``--quiet``."""
    if not settings.quiet:
        console.print(message)


def warn(message: str) -> None:
    """A warning on stderr; shown even with ``--quiet``."""
    console.print(f"[yellow]warning:[/yellow] {message}")


def progress(*extra_columns: TextColumn, transient: bool = False) -> Progress:
    """A progress bar (description, bar, n/N, %, elapsed, ETA), disabled by ``--quiet``."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=settings.quiet,
        transient=transient,
    )
