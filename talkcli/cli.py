"""The ``talkcli`` command line: global options, subcommand registration, error handling.

Subcommands live one per file in ``talkcli/commands/``; each only parses options, calls a library
function and reports. ``main`` maps the exception family in ``talkcli.errors`` to exit codes.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import typer

try:  # typer >= 0.24 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer depends on click
    from click.exceptions import ClickException

from talkcli import __version__
from talkcli.console import console, settings
from talkcli.errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_USER, TalkcliError

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
    # One line, no markup interpretation of user paths.
    console.print(f"[bold red]error:[/bold red] {message}", markup=True, soft_wrap=True)


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code."""
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    command = typer.main.get_command(app)
    debug = "--debug" in args
    try:
        result = command.main(args=args, prog_name="talkcli", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
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
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
