"""The ``talkcli`` command line: global options, subcommand registration, error handling.

Subcommands live one per file in ``talkcli/commands/``; each only parses options, calls a library
function and reports. ``main`` maps the exception family in ``talkcli.errors`` to exit codes, turns
SIGTERM into the same clean-up as Ctrl-C, keeps library warnings out of the user's terminal (they
show with ``--debug``). Every float option refuses nan/inf through its own callback
(``talkcli.commands.options.float_option``); ranges come from ``talkcli.ranges``.

Start-up stays fast because command modules import torch and friends only inside the commands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

try:  # typer >= 0.24 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer depends on click
    from click.exceptions import ClickException

from talkcli import __version__, signals
from talkcli.console import console, error_line, install_log_handler, settings
from talkcli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USER,
    TalkcliError,
    Terminated,
)

app = typer.Typer(
    name="talkcli",
    help=(
        "Offline talking-head videos: one face photo + a speech recording -> a 1024x1024 "
        "lip-synced video (StyleGAN2 + pSp + audio-to-latent + PTI)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        print(f"talkcli {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
    device: str = typer.Option(
        "auto", "--device", help="Compute device: auto, cpu, cuda, cuda:N or mps."
    ),
    weights_dir: Path | None = typer.Option(
        None,
        "--weights-dir",
        help="Folder searched first for model files (then $TALKCLI_WEIGHTS, ./weights, cache).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    from talkcli.device import validate_device_spec

    settings.device = validate_device_spec(device)
    settings.weights_dir = weights_dir
    settings.quiet = quiet
    settings.debug = debug


def _register_commands() -> None:
    from talkcli.commands import register_all

    register_all(app)


_register_commands()


def _error_line(message: str) -> None:
    # One line; the message is plain text (user paths may contain "[/red]").
    error_line(message)


_HOISTED_FLAGS = ("--quiet", "-q", "--debug")


def hoist_global_options(args: list[str]) -> list[str]:
    """Let ``--quiet``, ``--debug`` and ``--device X`` also follow the subcommand.

    ``talkcli invert ... --quiet`` reads as naturally as ``talkcli --quiet invert ...``; the
    global callback only sees options before the command, so move them there.
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in _HOISTED_FLAGS:
            front.append(arg)
        elif arg == "--device" and i + 1 < len(args):
            front.extend(args[i : i + 2])
            i += 1
        elif arg.startswith("--device="):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


# -- numeric options ------------------------------------------------------------------------------


def walk_params(command: Any, path: tuple[str, ...] = ("talkcli",)) -> Iterator[tuple[str, Any]]:
    """(command path, parameter) for every parameter of every (sub)command."""
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk_params(sub, (*path, name))
    for param in command.params:
        yield " ".join(path), param


def numeric_kind(param: Any) -> tuple[type, Any, Any] | None:
    """(int|float, min, max) for a numeric option, else None (typer >= 0.24 and click types)."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:  # typer's own parameter model
        kind = getattr(descriptor, "annotation", None)
        if kind in (int, float):
            return kind, getattr(param, "min", None), getattr(param, "max", None)
        return None
    ptype = getattr(param, "type", None)  # pragma: no cover - click-based typer
    name = type(ptype).__name__ if ptype is not None else ""
    if name.startswith("Int"):
        return int, getattr(ptype, "min", None), getattr(ptype, "max", None)
    if name.startswith("Float"):
        return float, getattr(ptype, "min", None), getattr(ptype, "max", None)
    return None


# -- process-wide behaviour -----------------------------------------------------------------------


class _StdoutClosed(Exception):
    """The reader of stdout went away (``talkcli ... | head``). Not an OSError, so Typer does not
    turn it into a plain exit 1 on the way out."""


class _GuardedStdout:
    """stdout, with a closed pipe reported as ``_StdoutClosed``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        try:
            return self._inner.write(text)
        except BrokenPipeError:
            raise _StdoutClosed() from None

    def flush(self) -> None:
        try:
            self._inner.flush()
        except BrokenPipeError:
            raise _StdoutClosed() from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def _quiet_libraries(debug: bool) -> Iterator[None]:
    """Library warnings and log records stay out of the user's terminal unless ``--debug``."""
    if debug:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        yield
        return
    root = logging.getLogger()
    null = logging.NullHandler()  # stops logging's last-resort handler printing to stderr
    root.addHandler(null)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeHandler(null)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code."""
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args
    if argv is None:  # the real command line (tests call main(argv) in-process)
        signals.install()  # already done by talkcli.entry; needed if called directly
        sys.stdout = _GuardedStdout(sys.stdout)
    install_log_handler()
    try:
        with _quiet_libraries(debug):
            command = typer.main.get_command(app)
            result = command.main(args=args, prog_name="talkcli", standalone_mode=False)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        code = result if isinstance(result, int) else 0
        if code == EXIT_INTERRUPTED:  # typer >= 0.24 turns KeyboardInterrupt into Exit(130)
            raise KeyboardInterrupt
    except typer.Exit as exc:
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort) as exc:
        if isinstance(exc, Terminated) or signals.terminated():
            console.print("terminated", style="yellow")
            code = EXIT_TERMINATED
        else:
            console.print("interrupted", style="yellow")
            code = EXIT_INTERRUPTED
    except ClickException as exc:
        # Usage errors in one line like every other user error, with where to find help.
        ctx = getattr(exc, "ctx", None)
        message = exc.format_message()
        if not message:  # `talkcli` or `talkcli weights` alone: the help was printed
            code = 0
        else:
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _error_line(f"{message}{hint}")
            code = EXIT_USER if exc.exit_code == 2 else exc.exit_code
    except _StdoutClosed:
        # `talkcli ... | head`: the reader left; stop quietly like a program killed by SIGPIPE
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    except TalkcliError as exc:
        if debug or settings.debug:
            traceback.print_exc()
        _error_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        code = exc.exit_code
    except Exception as exc:  # a bug: one line unless --debug
        if debug or settings.debug:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        _error_line(
            f"internal error: {type(exc).__name__}: {first} "
            "(rerun with --debug for the traceback and please report it)"
        )
        code = EXIT_BUG
    finally:
        if isinstance(sys.stdout, _GuardedStdout):
            sys.stdout = sys.stdout._inner
    if argv is None:
        if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
            # CPython remembers a KeyboardInterrupt raised inside some C-level evaluations (torch's
            # imports) and kills itself with SIGINT at exit even though it was handled: leave now,
            # with the exit code we promised (temporary files were removed while unwinding).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
