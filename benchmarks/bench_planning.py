"""Planning a 100,000-row ``animate --jobs`` list (issue 20 #5): seconds, not minutes.

``python -m benchmarks.run planning`` writes ``benchmarks/results/planning.json``. The list's
rows all point to the same two small files with distinct outputs (the hostile trial's list);
the time covers ``read_jobs_csv`` and ``check_unique_outputs`` (what runs before any model
file is looked up), plus the report bookkeeping of ``run_batch`` for 100,000 items that fail
at once (the report used to be rewritten after every item: quadratic).
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROWS = 100_000
TARGET_S = 10.0


def _write_list(folder: Path, rows: int) -> Path:
    import soundfile as sf
    from PIL import Image

    Image.new("RGB", (32, 32)).save(folder / "face.png")
    sf.write(folder / "speech.wav", np.zeros(1600, np.float32), 16000)
    lines = "".join(f"face.png,speech.wav,out/v{i}.mp4\n" for i in range(rows))
    path = folder / "jobs.csv"
    path.write_text("image,audio,out\n" + lines)
    return path


def run() -> dict:
    from talkcli.animate.batch import Planned, check_unique_outputs, read_jobs_csv, run_batch
    from talkcli.animate.options import AnimateOptions

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs = _write_list(folder, ROWS)
        t = time.perf_counter()
        planned = read_jobs_csv(jobs, folder, AnimateOptions())
        check_unique_outputs(planned)
        plan_s = time.perf_counter() - t
        del planned
        tracemalloc.start()  # a second, untimed pass for the memory (tracing slows it 3x)
        check_unique_outputs(read_jobs_csv(jobs, folder, AnimateOptions()))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        failing = [Planned(i, f"item {i}", error="bad", out=None) for i in range(ROWS)]
        t = time.perf_counter()
        run_batch(failing, None, None, report=folder / "report.json")
        report_s = time.perf_counter() - t
    return {
        "what": f"planning a {ROWS:,}-row animate --jobs list (read, options, unique outputs)",
        "rows": ROWS,
        "plan_seconds": round(plan_s, 2),
        "plan_peak_mib": round(peak / 2**20, 1),
        "batch_of_failing_items_seconds": round(report_s, 2),
        "target_seconds": TARGET_S,
        "meets_target": plan_s < TARGET_S and report_s < TARGET_S,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
