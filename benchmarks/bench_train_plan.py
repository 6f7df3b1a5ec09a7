"""Planning ``train prepare`` over 100,000 videos (issue 20): seconds, memory of the list only.

``python -m benchmarks.run train_plan`` writes ``benchmarks/results/train_plan.json``: 100,000
empty ``.mp4`` files in 1,000 speaker folders (planning never opens them), then the time of each
planning step of ``train prepare`` (listing, ids and speakers, the holdout split, this process's
share, the resume check against the dataset folder, the index of planned videos) and, in a
second pass, the peak Python memory they allocate (tracemalloc), at 10,000 and 100,000 videos:
linear in the count. Before issue 20 the same 100,000 took ~30 s (a stat and a resolve per
file, a Path.parents scan per file, a stat per video for the resume check); now ~2.5 s.
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from pathlib import Path


def _make(root: Path, n: int) -> None:
    for i in range(n):
        folder = root / f"spk{i // 100:04d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        (folder / f"v{i % 100:03d}.mp4").touch()


def _plan(root: Path, data: Path) -> dict[str, float]:
    from talkcli.distributed import split_items
    from talkcli.train.dataset import build_index
    from talkcli.train.prepare import choose_holdout, collect_videos, existing_records, plan_items

    steps: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        steps[name] = round(now - t, 3)
        t = now

    videos = collect_videos([root])
    lap("list")
    inside = str(data.resolve()) + "/"
    videos = [p for p in videos if not str(p).startswith(inside)]
    items = plan_items(videos)
    lap("ids_and_speakers")
    speakers = choose_holdout([it.speaker for it in items], "10%", 0)
    mine = split_items(items, 0, 1)
    lap("holdout_and_share")
    existing = existing_records(data, mine)
    assert not any(existing.values())
    lap("resume_check")
    build_index(data, {"fps": 25.0}, speakers, [it.plan() for it in items])
    lap("index")
    steps["total"] = round(sum(steps.values()), 3)
    return steps


def run() -> dict:
    out: dict = {}
    for n in (10_000, 100_000):
        with tempfile.TemporaryDirectory() as tmp:
            root, data = Path(tmp) / "corpus", Path(tmp) / "data"
            _make(root, n)
            steps = _plan(root, data)  # timed without tracemalloc (it slows Python ~2x)
            tracemalloc.start()
            _plan(root, data)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            out[f"videos_{n}"] = {"seconds": steps, "peak_python_mib": round(peak / 2**20, 1)}
    small, big = out["videos_10000"], out["videos_100000"]
    out["ratio_100k_to_10k"] = {
        "seconds": round(big["seconds"]["total"] / small["seconds"]["total"], 1),
        "memory": round(big["peak_python_mib"] / small["peak_python_mib"], 1),
    }
    return out
