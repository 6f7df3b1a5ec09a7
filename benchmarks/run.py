"""`make bench`: run every ``benchmarks/bench_*.py`` and write ``benchmarks/results/<name>.json``.

Each bench module exposes ``run() -> dict``. Run one with ``python -m benchmarks.run writer``.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv: list[str]) -> int:
    names = argv or sorted(
        p.stem[len("bench_") :] for p in Path(__file__).parent.glob("bench_*.py")
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in names:
        print(f"== bench {name}", flush=True)
        module = importlib.import_module(f"benchmarks.bench_{name}")
        try:
            result = module.run()
        except Exception as exc:  # report and go on with the others
            print(f"   failed: {type(exc).__name__}: {exc}", flush=True)
            failed += 1
            continue
        result = {"benchmark": name, "machine": machine(), **result}
        out = RESULTS / f"{name}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
        print(f"   -> {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
