"""Console-script entry point: Ctrl-C or SIGTERM while Python is still importing exits quietly.

``talkcli.cli`` imports Typer, rich and the command modules; an interrupt in that moment would
otherwise print a traceback from the import machinery. Once imported, ``talkcli.cli.main`` takes
over both signals.
"""

from __future__ import annotations

import os
import signal
import sys

_terminated = False


def _terminate_while_importing(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    raise KeyboardInterrupt


def run() -> None:
    """Import the CLI and run it; exit 130 (Ctrl-C) or 143 (SIGTERM) quietly during imports."""
    try:
        try:
            signal.signal(signal.SIGTERM, _terminate_while_importing)
        except ValueError:  # pragma: no cover - not the main thread
            pass
        from talkcli.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("terminated\n" if _terminated else "interrupted\n")
        sys.stderr.flush()
        # os._exit, not sys.exit: CPython may otherwise re-raise SIGINT at exit for an interrupt
        # that landed inside an import (see talkcli.cli.main)
        os._exit(143 if _terminated else 130)
    main()
