"""One exception family for talkcli, mapped to exit codes and one-line messages.

Library code raises these; the CLI (``talkcli.cli.main``) turns them into a single line on
stderr and an exit code: 2 for anything the user can fix (bad input, missing or broken model
file), 1 for bugs, 130 for Ctrl-C. A traceback is shown only with ``--debug``.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (`talkcli ... | head`)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``): unwinds like Ctrl-C, so every temporary file is removed."""


class TalkcliError(Exception):
    """Base class. ``exit_code`` says how the CLI ends; ``str(err)`` is the one-line message."""

    exit_code = EXIT_BUG


class UserError(TalkcliError):
    """Something the user can fix: bad input, a wrong option, an unwritable output."""

    exit_code = EXIT_USER


class InputFileError(UserError):
    """An input file is missing, unreadable or not what it should be."""

    def __init__(self, path: str | Path, problem: str, hint: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        msg = f"{path}: {problem}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class OutputError(UserError):
    """An output cannot be written (folder missing, not writable, disk full)."""


class ModelFileError(InputFileError):
    """A model file is missing, corrupt, has the wrong checksum, or is not the expected format."""


class ExternalToolError(TalkcliError):
    """ffmpeg (or another external program) failed in a way that is not the input's fault."""


class ToolMissingError(UserError, ExternalToolError):
    """A required external program (ffmpeg) is not installed: exit 2, the user can install it.

    Still an ``ExternalToolError``, so code that catches that keeps catching it.
    """
