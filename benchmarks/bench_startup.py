"""Start-up of the ``talkcli`` console script: wall time and peak memory of quick commands.

Each command runs ``REPEATS`` times as a fresh process (``sys.executable -m talkcli``, the same
code path as the console script); the median wall time and the largest peak RSS are kept. Target
(hardening issue): ``--version`` and ``align --help`` well under a second.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

COMMANDS = (("--version",), ("--help",), ("align", "--help"), ("invert", "--help"))
REPEATS = 7


def _run_once(args: tuple[str, ...]) -> tuple[float, float]:
    """(seconds, peak RSS of this child in MB) for one run."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "talkcli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _pid, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"talkcli {' '.join(args)} exited {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024.0


def run() -> dict:
    results = {}
    for args in COMMANDS:
        times, peaks = zip(*(_run_once(args) for _ in range(REPEATS)), strict=True)
        results["talkcli " + " ".join(args)] = {
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
            "peak_rss_mb": round(max(peaks), 1),
        }
    return {
        "what": "fresh-process start-up of quick commands (median of 7)",
        "target_s": 1.0,
        "commands": results,
    }


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(), indent=2))
