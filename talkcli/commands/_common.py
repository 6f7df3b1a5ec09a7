"""Helpers shared by the command modules (option types, JSON output)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from talkcli.console import settings
from talkcli.runtime import generator_file  # noqa: F401  re-exported for the commands

WEIGHTS_DIR_OPTION = typer.Option(
    None,
    "--weights-dir",
    help="Folder searched first for model files (overrides the global option).",
)


def weights_dir(local: Path | None) -> Path | None:
    """The weights folder for a command: its own option, else the global ``--weights-dir``."""
    return local or settings.weights_dir


def print_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
