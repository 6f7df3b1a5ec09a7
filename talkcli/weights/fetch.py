"""Downloading model files: resumable, checksummed, atomic.

A download goes to ``<file>.part`` (resumed with an HTTP Range request when the server allows),
is checked against the manifest's sha256, and only then renamed to its final name. Offline, the
error says which URL to download by hand and where to put the file. Progress is reported through
a callback (``on_progress(done_bytes, total_bytes)``); the CLI draws it as a bar.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from talkcli import __version__
from talkcli.errors import ModelFileError, OutputError
from talkcli.weights.registry import ModelFile, fetch_dir
from talkcli.weights.verify import digest_matches, expected_digest, record_first_fetch

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = 30

ProgressFn = Callable[[int, "int | None"], None]  # (bytes in the .part file, expected total)


def _manual_hint(entry: ModelFile, target: Path, url: str | None) -> str:
    return f"download {url or entry.url} by hand and save it as {target}"


def fetch(
    entry: ModelFile,
    weights_dir: str | Path | None = None,
    *,
    force: bool = False,
    on_progress: ProgressFn | None = None,
) -> Path:
    """Download ``entry`` into the fetch folder and return its path (already present: no-op).

    ``on_progress(done, total)`` is called when the transfer starts (``done`` > 0 when a
    ``.part`` file is resumed) and after every block; never when nothing is downloaded.
    """
    target = fetch_dir(weights_dir) / entry.relpath
    if target.is_file() and not force:
        return target
    url = entry.download_url()
    if not url:
        raise ModelFileError(
            target,
            f"{entry.name!r} has no public download URL",
            entry.missing_hint or f"produce it with talkcli or copy it to {target}",
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{target.parent}: cannot create the weights folder ({exc.strerror})"
        ) from None
    if not os.access(target.parent, os.W_OK):
        raise OutputError(f"{target.parent}: weights folder is not writable (use --weights-dir)")
    part = target.with_name(target.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    sha = hashlib.sha256()
    if done:
        with open(part, "rb") as f:
            while block := f.read(CHUNK):
                sha.update(block)
    request = urllib.request.Request(url, headers={"User-Agent": f"talkcli/{__version__}"})
    if done:
        request.add_header("Range", f"bytes={done}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 - manifest URLs
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done:  # the .part is already complete
            response = None
        else:
            raise ModelFileError(
                target,
                f"download failed: HTTP {exc.code} from {url}",
                _manual_hint(entry, target, url),
            ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelFileError(
            target,
            f"cannot download {entry.name!r} (offline? {reason})",
            _manual_hint(entry, target, url),
        ) from None
    if response is not None:
        with response:
            status = getattr(response, "status", 200)
            if done and status != 206:  # server ignored Range: start over
                done = 0
                sha = hashlib.sha256()
            length = response.headers.get("Content-Length")
            total = done + int(length) if length and length.isdigit() else entry.size
            mode = "ab" if done else "wb"
            try:
                with open(part, mode) as out:
                    if on_progress is not None:
                        on_progress(done, total)
                    while block := response.read(CHUNK):
                        out.write(block)
                        sha.update(block)
                        done += len(block)
                        if on_progress is not None:
                            on_progress(done, total)
            except (OSError, urllib.error.URLError) as exc:
                raise ModelFileError(
                    target,
                    f"download of {entry.name!r} interrupted ({exc}); run it again to resume",
                    _manual_hint(entry, target, url),
                ) from None
    digest = sha.hexdigest()
    if digest_matches(entry, digest) is False:
        with contextlib.suppress(OSError):
            part.unlink()
        raise ModelFileError(
            target,
            f"downloaded {entry.name!r} has sha256 {digest[:12]}…, "
            f"expected {expected_digest(entry)[:12]}…; the partial file was removed",
            _manual_hint(entry, target, url),
        )
    os.replace(part, target)
    if expected_digest(entry) is None:  # upstream publishes none: record this first copy's
        record_first_fetch(entry, target, digest)
        log.info(
            "%s: no published checksum; recorded sha256 %s at first fetch "
            "(`talkcli weights verify` checks later copies against it)",
            target,
            digest,
        )
    return target
