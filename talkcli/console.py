"""Terminal output shared by commands: one rich console on stderr, progress bars, --quiet.

Results meant for scripts (paths, JSON) go to stdout with ``print``; everything for humans
(progress, notes, warnings) goes to stderr through ``console`` so pipes stay clean.

``info``, ``warn``, ``status`` and progress descriptions print their text as it is: rich markup
is never interpreted in them, so file names like ``photo [bold]1.png`` print unchanged. Code that
wants markup calls ``console.print`` and wraps user text in ``rich.markup.escape``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

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
    """A note for humans on stderr (plain text, no markup), silenced by ``--quiet``."""
    if not settings.quiet:
        console.print(Text(message), soft_wrap=True)


def status(label: str, style: str, message: str) -> None:
    """``label message`` with a coloured label (``ok``, ``failed``...), silenced by ``--quiet``."""
    if not settings.quiet:
        console.print(Text.assemble((label, style), " ", message), soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr (plain text); shown even with ``--quiet``."""
    console.print(Text.assemble(("warning:", "yellow"), " ", message), soft_wrap=True)


def error_line(message: str) -> None:
    """The one line a failed command prints (plain text after the red ``error:``)."""
    console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)


def progress(*extra_columns: TextColumn, transient: bool = False) -> Progress:
    """A progress bar (description, bar, n/N, %, elapsed, ETA), disabled by ``--quiet``."""
    return Progress(
        TextColumn("{task.description}", markup=False, style="bold"),
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


class BatchProgress:
    """Progress of a batch: one bar over the items, plus a bar for the item in progress.

    ``item(name)`` returns ``update(done, total)`` for the current item's frames or steps (its bar
    appears on the first update); ``done()`` removes that bar and advances the overall one. The
    overall bar is left out for a single item. Used by every batch command (align, animate,
    evaluate, train prepare) so they look and behave alike.
    """

    def __init__(self, bar: Progress, label: str, n_items: int, *, always: bool = False) -> None:
        self.bar = bar
        self.overall = bar.add_task(label, total=n_items) if (n_items > 1 or always) else None
        self._task: TaskID | None = None
        self._name = ""

    def item(self, name: str) -> Callable[[int, int | None], None]:
        """Start item ``name``; the returned function reports its progress."""
        self._drop()
        self._name = name

        def update(done: int, total: int | None) -> None:
            if self._task is None:
                self._task = self.bar.add_task(self._name, total=total)
            self.bar.update(self._task, completed=done, total=total)

        return update

    def done(self) -> None:
        """The current item finished (or failed, or was skipped)."""
        self._drop()
        if self.overall is not None:
            self.bar.advance(self.overall)

    def _drop(self) -> None:
        if self._task is not None:
            self.bar.remove_task(self._task)
            self._task = None


class ConsoleLogHandler(logging.Handler):
    """Shows the ``talkcli`` loggers' records as the CLI's own notes: INFO as ``info`` (silenced
    by ``--quiet``), WARNING and above as ``warn``. Library code logs; only the CLI installs this.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not end the run
            message = str(record.msg)
        if record.levelno >= logging.WARNING:
            warn(message)
        elif record.levelno >= logging.INFO:
            info(message)


def install_log_handler() -> logging.Handler:
    """Route the ``talkcli.*`` loggers to the console (idempotent); returns the handler."""
    logger = logging.getLogger("talkcli")
    for handler in logger.handlers:
        if isinstance(handler, ConsoleLogHandler):
            return handler
    handler = ConsoleLogHandler(level=logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler
