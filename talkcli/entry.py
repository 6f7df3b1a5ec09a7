"""Console-script entry point: Ctrl-C or SIGTERM at any moment exits quietly.

The signal handling (``talkcli.signals``) is installed before the CLI and its libraries are
imported, so an interrupt during those imports is clean too (130 for Ctrl-C, 143 for SIGTERM).
Once imported, ``talkcli.cli.main`` runs the command and maps exceptions to exit codes.
"""

from __future__ import annotations

import os
import sys


def run() -> None:
    """Install the signal handling, import the CLI and run it."""
    from talkcli import signals

    try:
        signals.install()
        from talkcli.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("terminated\n" if signals.terminated() else "interrupted\n")
        sys.stderr.flush()
        # os._exit, not sys.exit: CPython may otherwise re-raise SIGINT at exit for an interrupt
        # that landed inside an import (see talkcli.cli.main)
        os._exit(143 if signals.terminated() else 130)
    main()
