"""Batch animation: many (photo, speech) jobs, one bad item never stopping the rest.

Job lists:

* ``pair_jobs(image_dir, audio_dir)``: photos and recordings paired by file stem
  (``anna.png`` + ``anna.wav``), or every photo with every recording (``all_pairs``); outputs
  ``<out_dir>/<image stem>-<audio stem>.mp4``.
* ``read_jobs_csv(path)``: a CSV with columns ``image``, ``audio``, ``out`` and optional per-row
  option columns (``ROW_OPTIONS``; an empty cell keeps the command line's value). Relative paths
  are taken from the CSV's folder. A row with a bad value fails alone.

``run_batch`` runs this process's shard of the list (``--shard K/N``, else torchrun's or Slurm's
variables through ``talkcli.distributed``), skips finished items with ``resume`` (the video and
its manifest exist and the manifest records the same options), records every item's status, and
keeps a JSON report up to date (``animate-report.json``, or ``animate-report-K-of-N.json`` per
shard, so shards never write the same file): rewritten after an item when a few seconds have
passed since the last write, and at the end, so a list of skipped or failing items costs linear
time, not one whole report per item.

Long lists: planning is linear in the number of rows (rows with the same option cells share one
``AnimateOptions``; output folders are resolved once each) and a list over
``guards.LIMITS.batch_jobs`` jobs is refused before anything is planned, with the count.
"""

from __future__ import annotations

import csv
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from talkcli import __version__
from talkcli.animate.options import AnimateOptions, parse_edit, parse_layers
from talkcli.constants import AUDIO_EXTS, IMAGE_EXTS
from talkcli.errors import InputFileError, ModelFileError, TalkcliError, UserError

REPORT_NAME = "animate-report.json"
REPORT_EVERY_S = 2.0  # the report is rewritten at most this often (and at the end)

# Per-row option columns of a jobs CSV -> (AnimateOptions field, parser).
_BOOL = {"1": True, "true": True, "yes": True, "y": True, "0": False, "false": False, "no": False}


def _bool(text: str) -> bool:
    try:
        return _BOOL[text.strip().lower()]
    except KeyError:
        raise UserError(f"{text!r} is not a yes/no value (use true or false)") from None


ROW_OPTIONS: dict[str, Callable[[str], Any]] = {
    "fps": float,
    "motion_scale": float,
    "smooth": float,
    "seed": int,
    "batch_size": int,
    "dtype": str,
    "compile": str,
    "crf": int,
    "preset": str,
    "paste_back": _bool,
    "feather": float,
    "aligned": _bool,
    "landmarks": Path,
    "face_index": int,
    "tune": _bool,
    "tune_steps": int,
    "edit": str,  # FILE:STRENGTH, several separated by ';'
    "edit_layers": str,
    "resolution": int,
    # issue 16: named controls (the directions: --directions or the default lookup)
    "blinks": float,
    "head_motion": float,
    "control": str,  # NAME=VALUE, several separated by ';' (or ',')
    "pose": str,  # yaw=..,pitch=..,roll=..
}
PATH_COLUMNS = ("image", "audio", "out", "landmarks")


@dataclass
class Planned:
    """One line of the job list: a job, or the reason it cannot run."""

    index: int
    label: str  # "image + audio" for reports
    job: Any = None  # talkcli.animate.pipeline.Job
    error: str | None = None
    out: Path | None = None


@dataclass
class ItemResult:
    """What happened to one item."""

    index: int
    label: str
    status: str  # ok | skipped | failed
    out: str | None = None
    message: str = ""
    frames: int = 0
    seconds: float = 0.0
    cache: dict[str, Any] = field(default_factory=dict)
    bug: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "item": self.label,
            "status": self.status,
            "out": self.out,
            "message": self.message,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "cache": self.cache,
        }


@dataclass
class BatchReport:
    """The items of this process's shard and where the report was written."""

    items: list[ItemResult]
    shard: tuple[int, int]
    total_jobs: int
    report: Path | None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.items)

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.items if r.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "talkcli-animate-batch",
            "talkcli": __version__,
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            "jobs_in_list": self.total_jobs,
            "items_in_shard": len(self.items),
            "ok": self.count("ok"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            "items": [r.to_dict() for r in self.items],
        }


# -- job lists ----------------------------------------------------------------------------------


def _files(folder: Path, exts: tuple[str, ...], what: str) -> list[Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputFileError(folder, f"is not a folder of {what}", "pass a folder")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if not found:
        raise InputFileError(folder, f"holds no {what}", f"expected {', '.join(exts)}")
    return found


def pair_jobs(
    image_dir: Path,
    audio_dir: Path,
    out_dir: Path,
    options: AnimateOptions,
    *,
    all_pairs: bool = False,
    notes: list[str] | None = None,
) -> list[Planned]:
    """Jobs from two folders: paired by stem, or every photo x every recording."""
    from talkcli.animate.pipeline import Job, default_out

    images = _files(image_dir, IMAGE_EXTS, "images")
    audios = _files(audio_dir, AUDIO_EXTS, "audio files")
    if all_pairs:
        check_job_count(
            f"{image_dir} x {audio_dir}",
            len(images) * len(audios),
            f"{len(images)} photos x {len(audios)} recordings",
        )
        pairs = [(i, a) for i in images for a in audios]
    else:
        by_stem = {a.stem: a for a in audios}
        pairs = [(i, by_stem[i.stem]) for i in images if i.stem in by_stem]
        lonely = sorted({i.stem for i in images} ^ {a.stem for a in audios})
        if notes is not None and lonely:
            notes.append(
                f"{len(lonely)} file(s) without a partner of the same name: "
                + ", ".join(lonely[:10])
                + (" ..." if len(lonely) > 10 else "")
            )
        if not pairs:
            raise UserError(
                f"no photo in {image_dir} has a recording of the same name in {audio_dir} "
                "(pass --all-pairs to combine every photo with every recording)"
            )
    planned = []
    for n, (img, aud) in enumerate(pairs):
        out = default_out(img, aud, out_dir)
        job = Job(out=out, image=img, audio=aud, options=options)
        planned.append(Planned(n, f"{img.name} + {aud.name}", job=job, out=out))
    return planned


def check_job_count(source: str | Path, n: int, what: str = "") -> None:
    """Refuse a job list longer than ``LIMITS.batch_jobs`` (before planning it)."""
    from talkcli.guards import LIMITS

    if n > LIMITS.batch_jobs:
        detail = f" ({what})" if what else ""
        raise InputFileError(
            source,
            f"lists {n:,} jobs{detail}, over talkcli's limit of {LIMITS.batch_jobs:,} per list",
            "split it into several lists (or use --shard)",
        )


class _RowOptions:
    """Per-row options, parsed once per distinct set of option cells: a 100,000-row list whose
    rows repeat a few settings builds (and holds) a few ``AnimateOptions``, not one per row."""

    def __init__(self, base: AnimateOptions, folder: Path) -> None:
        self.base, self.folder = base, folder
        self._seen: dict[tuple[tuple[str, str], ...], AnimateOptions | UserError] = {}

    def __call__(self, row: dict[str, str]) -> AnimateOptions:
        cells = tuple((c, t) for c in ROW_OPTIONS if (t := (row.get(c) or "").strip()))
        if not cells:
            return self.base
        got = self._seen.get(cells)
        if got is None:
            try:
                got = _row_options(dict(cells), self.base, self.folder)
            except UserError as exc:
                got = exc
            self._seen[cells] = got
        if isinstance(got, UserError):
            raise got
        return got


def _row_options(row: dict[str, str], base: AnimateOptions, folder: Path) -> AnimateOptions:
    changes: dict[str, Any] = {}
    for column, parse in ROW_OPTIONS.items():
        text = (row.get(column) or "").strip()
        if not text:
            continue
        if column == "edit":
            changes["edits"] = [
                replace(e, path=_relative(e.path, folder))
                for e in (parse_edit(t) for t in text.split(";") if t.strip())
            ]
        elif column == "edit_layers":
            changes["edit_layers"] = parse_layers(text)
        elif column in ("control", "pose"):
            continue  # issue 16: both at once below (they add up)
        elif column == "landmarks":
            changes["landmarks"] = _relative(Path(text), folder)
        else:
            try:
                changes[column] = parse(text)
            except ValueError:
                raise UserError(f"column {column}: {text!r} is not a valid value") from None
    control, pose = (row.get("control") or "").strip(), (row.get("pose") or "").strip()
    if control or pose:
        from talkcli.animate.motion.controls import parse_controls

        given = parse_controls([t for t in control.split(";") if t.strip()], pose or None)
        changes["controls"] = given  # a row's controls replace the command line's
    return replace(base, **changes).check()


def _relative_text(text: str, folder: Path) -> Path:
    """``_relative`` for a cell's text, with one Path built (planning 100,000 rows)."""
    text = os.path.expanduser(text)
    return Path(text if os.path.isabs(text) else os.path.join(folder, text))


class _InputPaths:
    """Input cells -> paths (None for an empty cell), built once per distinct text: job lists
    repeat the same photos and recordings."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seen: dict[str, Path] = {}

    def __call__(self, text: str) -> Path | None:
        text = text.strip()
        if not text:
            return None
        path = self._seen.get(text)
        if path is None:
            path = self._seen[text] = _relative_text(text, self.folder)
        return path


def _relative(path: Path, folder: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else folder / path


def _csv_rows(p: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the rows (lists of cells) of a jobs CSV; refused over the job limit
    while reading, so an enormous file is not held in memory first."""
    from talkcli.guards import LIMITS

    rows: list[list[str]] = []
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            for cells in reader:
                if cells:  # csv.DictReader's rule: only empty lines are skipped
                    rows.append(cells)
                    if len(rows) > LIMITS.batch_jobs:
                        check_job_count(p, _count_rows(f, len(rows)))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(p, f"is not a readable CSV ({exc})", "save it as UTF-8 CSV") from None
    return header, rows


def _count_rows(f: Any, so_far: int) -> int:
    """Rows already read plus the lines left in ``f`` (for the refusal's number)."""
    return so_far + sum(1 for line in f if line not in ("\n", "\r\n"))


def _check_header(p: Path, header: list[str], rows: list[list[str]]) -> None:
    if "image" not in header or "audio" not in header:
        raise InputFileError(
            p, "needs the columns image and audio (and out)", "the first line names the columns"
        )
    unknown = [h for h in header if h not in (*PATH_COLUMNS, *ROW_OPTIONS)]
    if unknown:
        raise InputFileError(
            p,
            f"unknown column(s) {', '.join(unknown)}",
            f"per-row options: {', '.join(ROW_OPTIONS)}",
        )
    if not rows:
        raise InputFileError(p, "lists no jobs", "one line per video after the header")


def read_jobs_csv(path: Path, out_dir: Path, options: AnimateOptions) -> list[Planned]:
    """Jobs from a CSV (see the module docstring); unknown columns are refused up front.
    Linear in the number of rows; over ``LIMITS.batch_jobs`` rows is refused with the count."""
    from talkcli.animate.pipeline import Job, default_out
    from talkcli.io.files import require_file

    p = require_file(path, "jobs file")
    folder = p.parent
    header, rows = _csv_rows(p)
    _check_header(p, header, rows)
    row_options = _RowOptions(options, folder)
    inputs = _InputPaths(folder)
    planned = []
    for n, cells in enumerate(rows):
        row = {k: v for k, v in zip(header, cells, strict=False) if k}
        line = n + 2  # the header is line 1 (lines of blank rows are not counted)
        image = inputs(row.get("image") or "")
        audio = inputs(row.get("audio") or "")
        label = f"line {line}: {image.name if image else '?'} + {audio.name if audio else '?'}"
        out_text = (row.get("out") or "").strip()
        out = _relative_text(out_text, folder) if out_text else default_out(image, audio, out_dir)
        try:
            if image is None or audio is None:
                raise UserError("image and audio are both needed")
            opts = row_options(row)
            planned.append(Planned(n, label, job=Job(out, image, audio, options=opts), out=out))
        except UserError as exc:
            planned.append(Planned(n, label, error=f"{p.name} line {line}: {exc}", out=out))
    rows.clear()
    return planned


def check_unique_outputs(planned: list[Planned]) -> None:
    """Two jobs writing the same video is a mistake in the list: refuse it up front."""
    seen: dict[str, Planned] = {}
    folders: dict[str, str] = {}  # each output folder resolved once (links, ..), not each file
    for item in planned:
        if item.out is None:
            continue
        out = item.out.expanduser()
        parent = str(out.parent)
        if parent not in folders:
            folders[parent] = str(out.parent.resolve())
        key = os.path.join(folders[parent], out.name)
        if key in seen:
            raise UserError(
                f"{item.out}: both {seen[key].label} and {item.label} would write it "
                "(give each job its own out)"
            )
        seen[key] = item


# -- running ------------------------------------------------------------------------------------


def is_done(job: Any) -> bool:
    """Finished: the video and its manifest (written last) exist, and the manifest records
    this job's options and inputs."""
    if not (job.out.is_file() and job.manifest.is_file()):
        return False
    try:
        data = json.loads(job.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("status") != "ok":
        return False
    inputs = data.get("inputs") or {}
    same_inputs = all(
        (inputs.get(role) or {}).get("path")
        == (str(getattr(job, role)) if getattr(job, role) else None)
        for role in ("image", "audio")
    )
    return same_inputs and data.get("options") == job.options.shaping()


def report_path(out_dir: Path, shard: tuple[int, int], explicit: Path | None = None) -> Path:
    """``--report``, else ``animate-report.json`` (``-K-of-N`` per shard) in ``out_dir``."""
    if explicit is not None:
        return explicit
    k, n = shard
    name = REPORT_NAME if n == 1 else f"animate-report-{k}-of-{n}.json"
    return out_dir / name


def run_batch(
    planned: list[Planned],
    models: Any,  # talkcli.animate.pipeline.Models
    cache: Any,  # talkcli.animate.cache.Cache
    *,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    report: Path | None = None,
    on_item: Callable[[ItemResult], None] | None = None,
    on_start: Callable[[Planned], None] | None = None,
    progress: Any = None,
    notes: list[str] | None = None,
    debug: bool = False,
) -> BatchReport:
    """Run this shard's items; every item's outcome is recorded, none stops the others (except
    a model file that fails to load, which would fail them all). ``debug`` prints the traceback
    of an internal error (the CLI passes ``--debug``)."""
    from talkcli.animate.pipeline import animate_job
    from talkcli.distributed import split_items

    started = time.perf_counter()
    mine = split_items(planned, *shard)
    result = BatchReport([], shard, len(planned), report, notes=list(notes or []))
    writer = _ReportWriter(report) if report is not None else None
    for item in mine:
        if on_start is not None:
            on_start(item)
        t = time.perf_counter()
        out = str(item.out) if item.out else None
        if item.error is not None:
            res = ItemResult(item.index, item.label, "failed", out, item.error)
        elif resume and is_done(item.job):
            res = ItemResult(item.index, item.label, "skipped", out, "already made")
        else:
            try:
                made = animate_job(item.job, models, cache, progress=progress)
                res = ItemResult(
                    item.index,
                    item.label,
                    "ok",
                    out,
                    frames=made.frames,
                    cache={
                        k: v for k, v in made.cache.items() if k in ("align", "identity", "tune")
                    },
                )
            except ModelFileError:
                raise  # every item would fail the same way
            except TalkcliError as exc:
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                res = ItemResult(item.index, item.label, "failed", out, first)
            except Exception as exc:  # a bug: record it, go on with the others
                first = (str(exc).splitlines() or [""])[0]
                res = ItemResult(
                    item.index,
                    item.label,
                    "failed",
                    out,
                    f"internal error: {type(exc).__name__}: {first}",
                    bug=True,
                )
                if debug:
                    traceback.print_exc()
        res.seconds = time.perf_counter() - t
        result.items.append(res)
        result.seconds = time.perf_counter() - started
        if writer is not None:
            writer.maybe_write(result)
        if on_item is not None:
            on_item(res)
    result.seconds = time.perf_counter() - started
    if report is not None:
        write_report(report, result)
    return result


class _ReportWriter:
    """Rewrites the report after an item once ``REPORT_EVERY_S`` (or four times the last
    write's duration, if longer) has passed: always fresh within seconds while videos render,
    and linear in total for a list of 100,000 items that are skipped or fail at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = float("-inf")
        self.cost = 0.0

    def maybe_write(self, report: BatchReport) -> None:
        now = time.perf_counter()
        if now - self.last < max(REPORT_EVERY_S, 4 * self.cost):
            return
        write_report(self.path, report)
        self.last = time.perf_counter()
        self.cost = self.last - now


def write_report(path: Path, report: BatchReport) -> None:
    """The JSON report (rewritten after every item, atomically)."""
    from talkcli.io.files import write_json_atomic

    write_json_atomic(path, report.to_dict(), indent=1)
