"""Evaluation reports: the JSON (per-video values, aggregates, configuration, model hashes,
versions), the per-frame CSV, and the table-5.1-style comparison of several reports.

JSON has no infinity: non-finite numbers (PSNR of identical frames is +inf) are written as the
strings ``"inf"``, ``"-inf"`` and ``"nan"`` and read back by ``number``.

Aggregates: per-frame metrics (PSNR, SSIM, LPIPS, LMD, CPBD) pool the frames of every evaluated
video (``over: "frames"``, population std, NaN frames left out); LSE values are averaged over
videos (``over: "videos"``), and so are the motion statistics (blink rate, pose std, mouth-audio
correlation, pose error); FID is one value for the whole set (``over: "set"``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talkcli.errors import InputFileError
from talkcli.io.files import atomic_output
from talkcli.metrics.evaluate import COLUMNS, HIGHER_IS_BETTER, PER_FRAME, EvalRun
from talkcli.metrics.motion import MOTION_COLUMNS
from talkcli.provenance import software_versions

REPORT_KIND = "talkcli-evaluate"
REPORT_FORMAT = 1
VIDEO_LEVEL = ("lse_d", "lse_c", "lse_offset", *MOTION_COLUMNS)


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats (numpy ones too) by "inf" / "-inf" / "nan", recursively."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def number(value: Any) -> float:
    """A report value as a float ("inf" strings included); NaN for anything else."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return math.nan


def _stat(values: np.ndarray, over: str) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "over": over}
    if np.isinf(v).any():  # the std of infinite PSNRs is undefined
        return {"mean": float(np.mean(v)), "std": math.nan, "n": len(v), "over": over}
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v), "over": over}


def aggregates(run: EvalRun) -> dict[str, dict[str, Any]]:
    """Mean, std and n of every metric over the successful videos (see the module docstring)."""
    ok = [r for r in run.results if r.status == "ok"]
    out: dict[str, dict[str, Any]] = {}
    for name in PER_FRAME:
        curves = [r.per_frame[name] for r in ok if name in r.per_frame]
        if curves:
            out[name] = _stat(np.concatenate(curves), "frames")
    for name in VIDEO_LEVEL:
        values = [r.values[name] for r in ok if name in r.values]
        if values:
            out[name] = _stat(np.array(values), "videos")
    if run.fid is not None:
        out["fid"] = {
            "mean": run.fid["value"],
            "std": None,
            "n": run.fid["n_generated"],
            "over": "set",
        }
    return out


def model_files(run: EvalRun) -> dict[str, dict[str, Any]]:
    """Every model file used: path, sha256, size."""
    from talkcli.io.files import sha256_file

    return {
        name: {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}
        for name, path in sorted(run.plan.files.items())
    }


def build_report(run: EvalRun, name: str) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    columns = [c for m in run.plan.metrics for c in COLUMNS[m]]
    return json_safe(
        {
            "kind": REPORT_KIND,
            "format": REPORT_FORMAT,
            "name": name,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": run.cfg.to_dict(),
            "metrics": list(run.plan.metrics),
            "columns": columns,
            "skipped": dict(run.plan.skipped),
            "models": model_files(run),
            # the syncnet LSE protocol's values depend on the ffmpeg build (its lossy files)
            "versions": software_versions(ffmpeg=run.cfg.lse_protocol == "syncnet"),
            "videos": [r.to_dict() for r in run.results],
            "aggregates": aggregates(run),
            "fid": run.fid,
            "notes": list(run.notes),
        }
    )


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write the report as strict JSON (no NaN/Infinity literals), atomically."""
    from talkcli.io.files import write_json_atomic

    return write_json_atomic(path, data, indent=1, allow_nan=False)


def frames_csv_text(run: EvalRun) -> str:
    """Per-frame values: video, frame, time (s) and one column per per-frame metric."""
    ok = [r for r in run.results if r.status == "ok"]
    cols = [c for c in PER_FRAME if any(c in r.per_frame for r in ok)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video", "frame", "time", *cols])
    for r in ok:
        for i in range(r.frames):
            row = [r.pair.name, i, f"{i / run.cfg.fps:.4f}"]
            for c in cols:
                v = r.per_frame[c][i] if c in r.per_frame else math.nan
                row.append(json_safe(float(v)) if not math.isfinite(v) else repr(float(v)))
            w.writerow(row)
    return buf.getvalue()


def write_frames_csv(path: str | Path, run: EvalRun) -> Path:
    final = Path(path)
    with atomic_output(final) as tmp:
        tmp.write_text(frames_csv_text(run), encoding="utf-8")
    return final


MAX_REPORT_BYTES = 64 << 20  # a report holds a few numbers per video: far below this
_NUMBER_STRINGS = ("inf", "-inf", "nan")


def load_report(path: str | Path) -> dict[str, Any]:
    """Read an evaluation report written by ``talkcli evaluate``; one-line errors otherwise.

    Reports are untrusted input: the JSON must parse (strict: no NaN/Infinity literals, not
    nested past Python's recursion limit), and the parts ``compare`` reads must have the types
    talkcli writes (``check_report``).
    """
    from talkcli.io.files import require_file

    p = require_file(path, "evaluation report")
    size = p.stat().st_size
    if size > MAX_REPORT_BYTES:
        raise InputFileError(
            p,
            f"is {size / 2**20:.0f} MiB, over the {MAX_REPORT_BYTES >> 20} MiB an evaluate "
            "report can hold",
            "pass files from `talkcli evaluate --out`",
        )
    try:
        data = json.loads(p.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(p, f"is not valid JSON ({exc})") from None
    except ValueError as exc:  # a NaN/Infinity literal (talkcli writes "nan"/"inf" strings)
        raise InputFileError(p, f"is not a talkcli evaluate report ({exc})") from None
    except RecursionError:
        raise InputFileError(
            p,
            "is not a talkcli evaluate report (its JSON is nested too deeply)",
            "pass files from `talkcli evaluate --out`",
        ) from None
    check_report(p, data)
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"holds the non-standard JSON literal {name}")


def check_report(path: str | Path, data: Any) -> None:
    """Refuse a report whose parts ``compare`` reads are missing or of the wrong type: a dict of
    kind talkcli-evaluate, a string name, a dict config, aggregates mapping metric names to
    ``{"mean": number | "inf" | "-inf" | "nan" | null, ...}``."""

    def bad(problem: str) -> InputFileError:
        return InputFileError(
            path, f"is not a talkcli evaluate report ({problem})", "pass a complete report"
        )

    if not isinstance(data, dict) or data.get("kind") != REPORT_KIND:
        raise InputFileError(path, "is not a talkcli evaluate report", "pass files from --out")
    if not isinstance(data.get("aggregates"), dict):
        raise InputFileError(path, "has no aggregates", "pass a complete report")
    if not isinstance(data.get("name", ""), str | None):
        raise bad("name is not a string")
    if not isinstance(data.get("config", {}), dict):
        raise bad("config is not an object")
    for column, agg in data["aggregates"].items():
        if not isinstance(agg, dict):
            raise bad(f"aggregates.{column} is not an object")
        mean = agg.get("mean")
        ok = mean is None or (isinstance(mean, int | float) and not isinstance(mean, bool))
        if not ok and not (isinstance(mean, str) and mean in _NUMBER_STRINGS):
            raise bad(f"aggregates.{column}.mean is {_short(mean)}, not a number")
    for key in CONFIG_KEYS:  # compared as JSON text: any JSON value is fine, but not nested
        value = data.get("config", {}).get(key)
        if isinstance(value, dict | list):
            raise bad(f"config.{key} is {_short(value)}")


def _short(value: Any) -> str:
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- comparing runs ----------------------------------------------------------------------------


@dataclass
class Comparison:
    """Methods as rows, metrics as columns (mean values), and the best rows of each column
    (all rows that tie for best)."""

    methods: list[str]
    columns: list[str]
    values: list[list[float]]  # [method][column], NaN where a run lacks the metric
    best: dict[str, list[int]]  # column -> row indices holding the best value
    warnings: list[str]

    def is_best(self, column: str, row: int) -> bool:
        return row in self.best.get(column, ())

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "methods": self.methods,
                "columns": self.columns,
                "values": {
                    m: dict(zip(self.columns, row, strict=True))
                    for m, row in zip(self.methods, self.values, strict=True)
                },
                "best": {c: [self.methods[i] for i in rows] for c, rows in self.best.items()},
                "warnings": self.warnings,
            }
        )


CONFIG_KEYS = ("fps", "resolution", "crop", "lse_crop", "lse_protocol", "lpips_net", "max_frames")
# what a report written before a key existed ran with
CONFIG_DEFAULTS = {"lse_protocol": "direct"}


def compare(
    reports: list[dict[str, Any]],
    names: list[str],
    columns: list[str] | None = None,
) -> Comparison:
    """Compare reports (thesis table 5.1: methods as rows, metrics as columns, best marked)."""
    if columns is None:
        order = [c for cols in COLUMNS.values() for c in cols]
        present = {c for r in reports for c in r["aggregates"]}
        columns = [c for c in order if c in present]
    values = [[number(r["aggregates"].get(c, {}).get("mean")) for c in columns] for r in reports]
    best: dict[str, list[int]] = {}
    for j, c in enumerate(columns):
        if c not in HIGHER_IS_BETTER:
            continue
        col = np.array([row[j] for row in values])
        if np.isnan(col).all():
            continue
        sign = 1 if HIGHER_IS_BETTER[c] else -1
        top = np.nanmax(sign * col)
        best[c] = [i for i, v in enumerate(sign * col) if v == top]
    warnings = []
    for key in CONFIG_KEYS:
        if key == "lse_protocol" and not any("lse_d" in r["aggregates"] for r in reports):
            continue  # no LSE in these runs: the protocol did not matter

        def value(r: dict[str, Any], key: str = key) -> Any:
            return r.get("config", {}).get(key, CONFIG_DEFAULTS.get(key))

        seen = {json.dumps(value(r)) for r in reports}
        if len(seen) > 1:
            got = ", ".join(f"{n}: {value(r)}" for n, r in zip(names, reports, strict=True))
            warnings.append(f"the runs differ in {key} ({got}); their values are not comparable")
    return Comparison(names, columns, values, best, warnings)


def format_value(column: str, value: float) -> str:
    """How a table shows a value: 2 decimals for dB/FID/LMD/LSE (4 below 1), 4 for SSIM, LPIPS
    and CPBD, whole frames for the LSE offset."""
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if column == "lse_offset":
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    if column in ("ssim", "lpips", "cpbd") or abs(value) < 1:
        return f"{value:.4f}"
    return f"{value:.2f}"


def markdown(comp: Comparison) -> str:
    """The comparison as a Markdown table (best values in bold)."""
    lines = [
        "| method | " + " | ".join(comp.columns) + " |",
        "|---|" + "---:|" * len(comp.columns),
    ]
    for i, (method, row) in enumerate(zip(comp.methods, comp.values, strict=True)):
        cells = []
        for c, v in zip(comp.columns, row, strict=True):
            text = format_value(c, v)
            cells.append(f"**{text}**" if comp.is_best(c, i) else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
