"""The one home for finding and running ffmpeg.

talkcli uses ``ffmpeg`` from PATH when there is one (a distribution build), else the static
binary shipped inside the ``imageio-ffmpeg`` wheel, which works on a fresh machine with no system
package. ``ffprobe`` is optional (imageio-ffmpeg ships none): when one is found (beside that
ffmpeg or on PATH) media are probed through its JSON (``probe_json``), else ``talkcli.io.audio`` /
``talkcli.io.video`` read ffmpeg's own stream dump; both paths give the same facts.
``TALKCLI_NO_FFPROBE=1`` forces the ffmpeg-only path.

Failures are mapped to the exception family: a problem with an input file becomes an
``InputFileError`` naming the file and ffmpeg's last meaningful stderr line; a full disk becomes
an ``OutputError``; anything else an ``ExternalToolError``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from talkcli.errors import ExternalToolError, InputFileError, ToolMissingError
from talkcli.io.files import disk_full

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `apt-get install ffmpeg` (or brew) or `pip install imageio-ffmpeg`"

# Options every talkcli ffmpeg call gets: never read the terminal, no banner.
BASE_ARGS = ["-nostdin", "-hide_banner"]


@dataclass(frozen=True)
class FFmpegInfo:
    """Which ffmpeg binary talkcli runs, where it came from ("PATH" or "imageio-ffmpeg")."""

    path: str
    source: str
    version: str


def _binary_version(path: str) -> str | None:
    """The version string of an ffmpeg binary, or None if it does not run."""
    try:
        proc = subprocess.run(
            [path, "-hide_banner", "-version"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    m = re.search(r"version\s+(\S+)", proc.stdout)
    return m.group(1) if m else "unknown"


@functools.lru_cache(maxsize=1)
def find_ffmpeg() -> FFmpegInfo:
    """Locate a working ffmpeg: PATH first, then imageio-ffmpeg's binary (cached).

    Raises ``ToolMissingError`` (exit 2: the user can fix it) with an install hint when neither
    runs.
    """
    candidates: list[tuple[str, str]] = []
    on_path = shutil.which("ffmpeg")
    if on_path:
        candidates.append((on_path, "PATH"))
    try:
        import imageio_ffmpeg

        candidates.append((imageio_ffmpeg.get_ffmpeg_exe(), "imageio-ffmpeg"))
    except Exception:  # not installed, or its binary is missing for this platform
        pass
    tried = []
    for path, source in candidates:
        version = _binary_version(path)
        if version is not None:
            return FFmpegInfo(path=path, source=source, version=version)
        tried.append(path)
    detail = f" ({', '.join(tried)} did not run)" if tried else ""
    raise ToolMissingError(f"ffmpeg not found{detail}: {INSTALL_HINT}")


@functools.lru_cache(maxsize=1)
def find_ffprobe() -> str | None:
    """Path of an ffprobe beside the ffmpeg in use or on PATH, or None (code must not need it)."""
    try:
        ff = Path(find_ffmpeg().path)
    except ExternalToolError:
        return None
    sibling = ff.with_name(ff.name.replace("ffmpeg", "ffprobe"))
    if sibling != ff and sibling.is_file():
        return str(sibling)
    return shutil.which("ffprobe")


#: Set to a non-empty value other than "0" to probe media with ffmpeg alone (no ffprobe).
NO_FFPROBE_ENV = "TALKCLI_NO_FFPROBE"


def ffprobe_path() -> str | None:
    """The ffprobe to probe media with, or None: there is none, or ``TALKCLI_NO_FFPROBE`` is set."""
    if os.environ.get(NO_FFPROBE_ENV, "") not in ("", "0"):
        return None
    return find_ffprobe()


def probe_json(path: str | Path, *, count_packets: bool = False) -> dict | None:
    """``ffprobe -v error -print_format json -show_streams -show_format`` of ``path``, parsed.

    ``count_packets`` adds ``-count_packets`` (each stream's ``nb_read_packets``: the file is read
    through, nothing is decoded). Returns None when there is no ffprobe, or when it fails or
    reports any error: the caller then probes with ffmpeg, which explains what is wrong with the
    file in talkcli's usual words.
    """
    exe = ffprobe_path()
    if exe is None:
        return None
    cmd = [exe, "-v", "error", "-print_format", "json", "-show_streams", "-show_format"]
    if count_packets:
        cmd.append("-count_packets")
    cmd += ["-i", str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("ffprobe did not run (%s); probing with ffmpeg", exc)
        return None
    if proc.returncode != 0 or proc.stderr.strip():
        log.debug("ffprobe failed on %s; probing with ffmpeg", path)
        return None
    try:
        data = json.loads(proc.stdout.decode("utf-8", "replace"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@functools.lru_cache(maxsize=4)
def _codec_names(kind: str) -> frozenset[str]:
    """Names listed by ``ffmpeg -encoders`` / ``-decoders`` / ``-muxers``."""
    proc = subprocess.run(
        [find_ffmpeg().path, *BASE_ARGS, f"-{kind}"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    names = set()
    past_header = False
    for line in proc.stdout.splitlines():
        if line.strip().startswith("--"):
            past_header = True
            continue
        parts = line.split()
        if past_header and len(parts) >= 2:
            names.add(parts[1])
    return frozenset(names)


def has_encoder(name: str) -> bool:
    """Whether the ffmpeg in use has the encoder ``name`` (e.g. "libx264", "aac")."""
    return name in _codec_names("encoders")


def has_decoder(name: str) -> bool:
    """Whether the ffmpeg in use has the decoder ``name`` (e.g. "mp3", "vorbis")."""
    return name in _codec_names("decoders")


# ffmpeg wraps the real cause in generic lines; these are never the message we want.
_GENERIC = re.compile(
    r"^(Error opening (input|output) files?\b.*"
    r"|Error opening input file .*"
    r"|Conversion failed!?"
    r"|Exiting normally.*"
    r"|To ignore this, add a trailing.*"
    r"|Failed to set value .* for option .*"
    r"|Error parsing options for .*"
    r"|Nothing was written into output file.*"
    r"|Error while filtering: .*"
    r"|Terminating thread with return code .*"
    r"|Task finished with error code.*"
    r"|At least one output file must be specified)$"
)
_CONTEXT = re.compile(r"^\[[^\]]*@ ?0x[0-9a-fA-F]+\]\s*")  # "[in#0 @ 0x55...] "


def stderr_reason(stderr: str | bytes, path: str | Path | None = None, limit: int = 200) -> str:
    """ffmpeg's last meaningful stderr line, one line, without context tags or the file name."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    lines = []
    for raw in stderr.splitlines():
        line = _CONTEXT.sub("", raw.strip()).strip()
        line = re.sub(r"^Error opening (input|output): ", "", line)
        if path is not None and line.startswith(f"{path}: "):
            line = line[len(f"{path}: ") :]
        if line:
            lines.append(line)
    meaningful = [ln for ln in lines if not _GENERIC.match(ln)]
    chosen = (meaningful or lines or ["no error message"])[-1]
    chosen = chosen.rstrip(".")
    return chosen if len(chosen) <= limit else chosen[: limit - 3] + "..."


def raise_for_ffmpeg(
    returncode: int,
    stderr: str | bytes,
    *,
    what: str,
    input_path: str | Path | None = None,
    output_path: str | Path | None = None,
    hint: str = "",
) -> None:
    """Raise the right talkcli error for a failed ffmpeg run (no-op when ``returncode`` is 0)."""
    if returncode == 0:
        return
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    if "No space left on device" in text:
        raise disk_full(output_path, what)
    reason = stderr_reason(text, input_path)
    if input_path is not None:
        raise InputFileError(
            input_path,
            f"could not {what}: {reason}",
            hint or "check that it is a media file ffmpeg can read",
        )
    raise ExternalToolError(f"ffmpeg failed to {what} (exit {returncode}): {reason}")


def ffmpeg_command(args: list[str], *, loglevel: str = "error") -> list[str]:
    """The full argv for ``ffmpeg ARGS``: binary, ``-nostdin -hide_banner``, ``-v`` unless given."""
    cmd = [find_ffmpeg().path, *BASE_ARGS]
    if not any(a in ("-v", "-loglevel") for a in args):
        cmd += ["-v", loglevel]
    return cmd + list(args)


def run_ffmpeg(
    args: list[str],
    *,
    what: str,
    input_path: str | Path | None = None,
    output_path: str | Path | None = None,
    hint: str = "",
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run ``ffmpeg ARGS`` to completion, stdout/stderr captured as bytes.

    ``what`` completes "could not ...", e.g. "decode audio". A failure raises
    ``InputFileError(input_path, ...)`` with ffmpeg's last meaningful stderr line when
    ``input_path`` is given, ``OutputError`` on a full disk, else ``ExternalToolError``.
    With ``check=False`` the completed process is returned as is.
    """
    cmd = ffmpeg_command(args)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ExternalToolError(f"ffmpeg took longer than {timeout:.0f} s to {what}") from exc
    except OSError as exc:
        raise ExternalToolError(f"could not run ffmpeg ({cmd[0]}): {exc.strerror}") from exc
    if check:
        raise_for_ffmpeg(
            proc.returncode,
            proc.stderr,
            what=what,
            input_path=input_path,
            output_path=output_path,
            hint=hint,
        )
    return proc
