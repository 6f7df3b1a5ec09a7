"""Evaluation suites: one TOML file naming the inputs, metrics and options of a reproducible run.

```toml
name = "talkcli on TCD-TIMIT test"   # the method's name in `evaluate compare` tables
out = "results/tcd.json"             # the report (paths are relative to the suite file)
csv = "results/tcd-frames.csv"       # optional per-frame CSV
plot = "results/tcd.png"             # optional per-frame curves
metrics = ["psnr", "ssim", "lpips", "fid", "lmd", "cpbd", "lse"]
fps = 25
resolution = 256
crop = "aligned"
threads = 2

[[inputs]]                           # or generated = "gen/" + reference = "ref/", or pairs
name = "s1"
generated = "gen/s1.mp4"
reference = "ref/s1.mp4"             # optional: no-reference metrics only
```

Every option of ``talkcli evaluate`` has a key (``face_crop``, ``lpips``, ``lse_protocol``,
``strict``, ``max_frames``, ``batch``, ``seed``, ``fid_stats``, ``inception``, ``syncnet``); an
option given on the command line overrides the suite's. Unknown keys are refused, so a typo cannot
silently fall back to a default.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talkcli.errors import InputFileError
from talkcli.io.files import require_file
from talkcli.metrics.inputs import Pair, collect_pairs, read_pairs_csv

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# key -> (type(s), is a path relative to the suite)
OPTION_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "metrics": ((list,), False),
    "fps": ((int, float), False),
    "resolution": ((int,), False),
    "crop": ((str,), False),
    "face_crop": ((str,), False),
    "lpips": ((str,), False),
    "lse_protocol": ((str,), False),
    "strict": ((bool,), False),
    "max_frames": ((int,), False),
    "batch": ((int,), False),
    "threads": ((int,), False),
    "seed": ((int,), False),
    "fid_stats": ((str,), True),
    "inception": ((str,), True),
    "syncnet": ((str,), True),
}
OUTPUT_KEYS = ("out", "csv", "plot")
INPUT_KEYS = ("inputs", "generated", "reference", "pairs")
TOP_KEYS = ("name", *OUTPUT_KEYS, *INPUT_KEYS, *OPTION_KEYS)


@dataclass
class Suite:
    """A parsed suite: name, pairs, options (CLI option names without dashes), outputs."""

    path: Path
    name: str
    pairs: list[Pair]
    options: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    unmatched: list[Path] = field(default_factory=list)


def load_suite(path: str | Path) -> Suite:
    """Parse a suite file; every problem is an InputFileError naming the file and the key."""
    p = require_file(path, "suite file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputFileError(p, f"is not valid TOML ({exc})") from None
    base = p.parent

    def bad(problem: str) -> InputFileError:
        return InputFileError(p, problem, "see docs/evaluate.md, section Suites")

    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(TOP_KEYS)}")

    def text(key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise bad(f"{key} must be a non-empty string, got {value!r}")
        return value

    options: dict[str, Any] = {}
    for key, (types, is_path) in OPTION_KEYS.items():
        if key not in data:
            continue
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise bad(f"{key} must be {names}, got {value!r}")
        if key == "metrics" and not all(isinstance(m, str) for m in value):
            raise bad(f"metrics must be a list of names, got {value!r}")
        options[key] = base / value if is_path else value
    outputs = {k: base / text(k, data[k]) for k in OUTPUT_KEYS if k in data}
    name = text("name", data["name"]) if "name" in data else p.stem
    pairs, unmatched = _suite_pairs(data, base, bad, text)
    return Suite(p, name, pairs, options, outputs, unmatched)


def _suite_pairs(data: dict, base: Path, bad, text) -> tuple[list[Pair], list[Path]]:
    given = [k for k in ("inputs", "generated", "pairs") if k in data]
    if len(given) != 1:
        raise bad("give the inputs one way: [[inputs]] tables, generated (+ reference), or pairs")
    if "reference" in data and "generated" not in data:
        raise bad("reference needs generated")
    if "pairs" in data:
        return read_pairs_csv(base / text("pairs", data["pairs"])), []
    if "generated" in data:
        ref = data.get("reference")
        return collect_pairs(
            base / text("generated", data["generated"]),
            None if ref is None else base / text("reference", ref),
        )
    items = data["inputs"]
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise bad("inputs must be a non-empty array of tables ([[inputs]])")
    pairs = []
    for i, item in enumerate(items, start=1):
        extra = [k for k in item if k not in ("name", "generated", "reference")]
        if extra or "generated" not in item:
            raise bad(f"inputs #{i}: expected generated, reference (optional), name (optional)")
        gen = base / text("generated", item["generated"])
        ref = base / text("reference", item["reference"]) if "reference" in item else None
        name = text("name", item["name"]) if "name" in item else gen.stem
        missing = str(ref) if ref is not None and not ref.exists() else None
        pairs.append(Pair(name, gen, None if missing else ref, missing))
    return pairs, []
