"""Helpers shared by the command modules (weights folder, JSON output).

Shared option declarations live in ``talkcli.commands.options``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from talkcli.commands.options import WEIGHTS_DIR_OPTION as WEIGHTS_DIR_OPTION  # its home
from talkcli.console import settings
from talkcli.runtime import generator_file  # noqa: F401  re-exported for the commands


def weights_dir(local: Path | None) -> Path | None:
    """The weights folder for a command: its own option, else the global ``--weights-dir``."""
    return local or settings.weights_dir


def print_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
