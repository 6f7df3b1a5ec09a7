"""Subcommands, one per file. Each module exposes ``register(app)``.

A subcommand is registered here only once it works end to end (no placeholders).
"""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = (
    "doctor",
    "weights",
    "media",
    "align",
    "invert",
    "tune_pti",
    "animate",
    "evaluate",
    "train",
    "directions",
)


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"talkcli.commands.{name}").register(app)
