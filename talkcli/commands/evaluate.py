"""``talkcli evaluate``: PSNR, SSIM, LPIPS, FID, LMD, CPBD, LSE-C/D of generated videos; suites;
``evaluate compare`` for a table-5.1-style comparison of runs.

``talkcli evaluate GEN REF ...`` is short for ``talkcli evaluate run GEN REF ...``: the group runs
``run`` whenever its first argument is not one of its commands (``run``, ``compare``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from talkcli.commands._common import print_json, weights_dir
from talkcli.commands.options import (
    JSON_OPTION,
    WEIGHTS_DIR_OPTION,
    Crop,
    Dtype,
    FaceCrop,
    LpipsNet,
    LseProtocol,
    choice_option,
    fps_option,
    int_option,
    lpips_option,
    seed_option,
)
from talkcli.console import info, settings, status, warn
from talkcli.errors import UserError
from talkcli.ranges import EVALUATE

HELP_FLAGS = ("--help", "-h")


class DefaultRunGroup(TyperGroup):
    """A group whose first argument, when it is not a subcommand, goes to ``run``."""

    default_command = "run"

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in HELP_FLAGS:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


evaluate_app = typer.Typer(
    cls=DefaultRunGroup,
    no_args_is_help=True,
    help=(
        "Evaluate generated videos against references: PSNR, SSIM, LPIPS, FID, LMD (reference "
        "metrics) and CPBD, LSE-C/LSE-D (no-reference). `talkcli evaluate GEN [REF] ...` is "
        "`talkcli evaluate run GEN [REF] ...`; `talkcli evaluate compare A.json B.json` "
        "compares runs. See docs/evaluate.md."
    ),
)


# suite/option key -> EvalConfig field where they differ, and how a value is read (suite values
# come as TOML types, CLI values as the options' types); every other default is EvalConfig's own.
_FIELDS = {"lpips": "lpips_net"}
_READ: dict[str, Any] = {
    "fps": float,
    "crop": lambda v: str(v).lower(),
    "face_crop": lambda v: str(v).lower(),
    "lpips_net": lambda v: str(v).lower(),
    "lse_protocol": lambda v: str(v).lower(),
    "dtype": lambda v: str(v).lower(),
    "strict": bool,
    "batch": int,
    "threads": int,
    "seed": int,
}


@evaluate_app.command("run")
def run_cmd(
    generated: Path | None = typer.Argument(
        None, help="Generated video, or a folder of them (paired with REFERENCE by file stem)."
    ),
    reference: Path | None = typer.Argument(
        None, help="Reference video or folder. Without it only CPBD and LSE run."
    ),
    pairs: Path | None = typer.Option(
        None, "--pairs", help="CSV of generated,reference[,name] rows (instead of GEN REF)."
    ),
    suite: Path | None = typer.Option(
        None, "--suite", help="A suite .toml: inputs, metrics, options and outputs in one file."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the JSON report here."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write per-frame values (CSV) here."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Per-frame curves of each metric (.png, .pdf, .svg, .jpg)."
    ),
    metrics: str | None = typer.Option(
        None,
        "--metrics",
        "-m",
        help="Comma-separated: psnr,ssim,lpips,fid,lmd,cpbd,lse,motion \\[default: every metric "
        "whose model files are present; named metrics must run].",
    ),
    fps: float | None = fps_option(
        None, "both videos are resampled to it, frames matched by index", " \\[25]"
    ),
    resolution: int | None = int_option(
        None,
        "--resolution",
        range=EVALUATE["resolution"],
        help="Evaluation width in pixels (height keeps the aspect) \\[the reference's size].",
    ),
    crop: Crop | None = choice_option(
        None,
        "--crop",
        help="What the frames are: full (whole frames) or aligned (FFHQ-aligned faces, e.g. the "
        "generator's output or `talkcli align`) \\[full]. Recorded in the report.",
    ),
    face_crop: FaceCrop | None = choice_option(
        None,
        "--face-crop",
        help="LSE face crops: detect (face detector), aligned (the aligned frame's fixed face "
        "box) or auto (aligned when --crop aligned) \\[auto].",
    ),
    lpips_net: LpipsNet | None = lpips_option(None, " \\[alex]"),
    lse_protocol: LseProtocol | None = choice_option(
        None,
        "--lse-protocol",
        help="LSE-C/LSE-D on crops of the decoded frames (direct), or through syncnet_python's "
        "own ffmpeg/JPEG/XVID round trips (syncnet), to match published numbers \\[direct]. "
        "Recorded in the report.",
    ),
    dtype: Dtype | None = choice_option(
        None,
        "--dtype",
        help="Precision of LPIPS, Inception (FID) and SyncNet (LSE): auto (bf16 autocast on "
        "GPUs and CPUs with native bf16), fp32, bf16 or fp16; landmarks and pixel metrics stay "
        "fp32. The resolved precision is recorded; compare runs of the same one \\[auto].",
    ),
    strict: bool | None = typer.Option(
        None, "--strict/--no-strict", help="Refuse videos of different sizes instead of resizing."
    ),
    max_frames: int | None = int_option(
        None,
        "--max-frames",
        range=EVALUATE["max_frames"],
        help="Evaluate at most N frames per video.",
    ),
    batch: int | None = int_option(
        None,
        "--batch",
        range=EVALUATE["batch"],
        help="Frames per batch (memory vs speed) \\[8].",
    ),
    threads: int | None = int_option(
        None,
        "--threads",
        range=EVALUATE["threads"],
        help="CPU threads (fixed, so reruns give identical values) \\[min(4, cores)].",
    ),
    seed: int | None = seed_option(None, note=" \\[0]"),
    fid_stats: Path | None = typer.Option(
        None,
        "--fid-stats",
        help="Cache of the reference set's FID statistics (.npz): reused when it matches, "
        "written otherwise; alone (no references) FID is computed against it.",
    ),
    inception: Path | None = typer.Option(
        None, "--inception", help="FID Inception weights (default: the registry's fid-inception)."
    ),
    syncnet: Path | None = typer.Option(
        None, "--syncnet", help="SyncNet weights (default: the registry's syncnet)."
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="The method's name in `evaluate compare` \\[suite name, or input name].",
    ),
    as_json: bool = JSON_OPTION,
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Evaluate generated videos (against references): table, JSON report, CSV, plot."""
    # Options left unset (None) take the suite's value, else EvalConfig's default, which each
    # help text states in brackets (tests/test_ranges.py checks them against EvalConfig).
    from talkcli.metrics.evaluate import evaluate
    from talkcli.weights.outputs import guard_outputs

    cli = {
        "metrics": metrics,
        "fps": fps,
        "resolution": resolution,
        "crop": crop,
        "face_crop": face_crop,
        "lpips": lpips_net,
        "lse_protocol": lse_protocol,
        "dtype": dtype,
        "strict": strict,
        "max_frames": max_frames,
        "batch": batch,
        "threads": threads,
        "seed": seed,
        "fid_stats": fid_stats,
        "inception": inception,
        "syncnet": syncnet,
    }
    given = {k: v for k, v in cli.items() if v is not None}
    outputs = {"out": out, "csv": csv_out, "plot": plot}
    job = _collect_job(generated, reference, pairs, suite, name, given, outputs)
    cfg = _eval_config(job.options, weights_dir(wdir))
    _check_outputs(job.outputs, cfg)
    the_plan = _plan(cfg, job.pairs)
    sources = [*job.inputs_read, *[x for p in job.pairs for x in (p.generated, p.reference) if x]]
    planned = [*job.outputs.values()]
    if "fid" in the_plan.metrics:
        planned.append(cfg.fid_stats)
    guard_outputs(planned, inputs=sources, weights_dir=cfg.weights_dir)
    cfg.device = settings.device
    _announce(job, cfg, the_plan)
    run = _run_with_progress(job.pairs, cfg, the_plan, evaluate)
    _finish(run, job.name, job.outputs, as_json)


@dataclass
class _Job:
    """What to evaluate, read from GEN [REF], --pairs or --suite (CLI options win)."""

    pairs: list[Any]  # talkcli.metrics.inputs.Pair
    unmatched: list[Path]
    inputs_read: list[Path]  # the suite file or the pairs CSV
    options: dict[str, Any]  # suite/option key -> value, only those set
    outputs: dict[str, Path | None]  # out, csv, plot
    name: str


def _collect_job(
    generated: Path | None,
    reference: Path | None,
    pairs: Path | None,
    suite: Path | None,
    name: str | None,
    given: dict[str, Any],
    outputs: dict[str, Path | None],
) -> _Job:
    """The pairs, options and outputs of this run; the suite's values fill what the CLI left."""
    from talkcli.metrics.inputs import check_unique_names, collect_pairs, read_pairs_csv

    unmatched: list[Path] = []
    inputs_read: list[Path] = []
    if suite is not None:
        from talkcli.metrics.suite import load_suite

        if any(x is not None for x in (generated, reference, pairs)):
            raise UserError(
                "--suite names the inputs itself; do not also give GENERATED or --pairs"
            )
        s = load_suite(suite)
        inputs_read.append(s.path)
        options = {**s.options, **given}
        outputs = {k: outputs[k] if outputs[k] is not None else s.outputs.get(k) for k in outputs}
        pair_list, unmatched = s.pairs, s.unmatched
        run_name = name or s.name
    else:
        options = dict(given)
        if pairs is not None:
            if generated is not None or reference is not None:
                raise UserError("give either GENERATED [REFERENCE] or --pairs, not both")
            pair_list = read_pairs_csv(pairs)
            inputs_read.append(pairs)
        elif generated is not None:
            pair_list, unmatched = collect_pairs(generated, reference)
        else:
            raise UserError("nothing to evaluate: give GENERATED [REFERENCE], --pairs or --suite")
        run_name = name or (Path(generated).stem if generated is not None else Path(pairs).stem)
    check_unique_names(pair_list)
    return _Job(pair_list, unmatched, inputs_read, options, outputs, run_name)


def _eval_config(options: dict[str, Any], wd: Path | None) -> Any:
    """``EvalConfig`` from the set options; the rest keep the dataclass defaults. Checked."""
    from talkcli.metrics.evaluate import METRICS, EvalConfig

    metric_list = options.get("metrics")
    if isinstance(metric_list, str):
        metric_list = [m.strip().lower() for m in metric_list.split(",") if m.strip()]
    fields: dict[str, Any] = {}
    for key, value in options.items():
        if key != "metrics":
            field = _FIELDS.get(key, key)
            fields[field] = _READ.get(field, lambda v: v)(value)
    cfg = EvalConfig(
        metrics=tuple(metric_list) if metric_list else METRICS,
        named=bool(metric_list),
        weights_dir=wd,
        **fields,
    )
    cfg.check()
    return cfg


def _check_outputs(outputs: dict[str, Path | None], cfg: Any) -> None:
    """Output names end in what they hold (before any work)."""
    from talkcli.plots import check_plot_path

    _check_suffix(outputs["out"], ".json", "--out")
    _check_suffix(outputs["csv"], ".csv", "--csv")
    if outputs["plot"] is not None:
        check_plot_path(outputs["plot"])
    if cfg.fid_stats is not None:
        _check_suffix(cfg.fid_stats, ".npz", "--fid-stats")


def _plan(cfg: Any, pair_list: list[Any]) -> Any:
    """Which metrics run (``talkcli.metrics.evaluate.plan``); none is a one-line error."""
    from talkcli.metrics.evaluate import plan

    has_reference = any(p.reference is not None or p.missing_reference for p in pair_list)
    the_plan = plan(cfg, has_reference)
    if not the_plan.metrics:
        why = "; ".join(f"{m}: {r}" for m, r in the_plan.skipped.items())
        raise UserError(f"no metric can run ({why})")
    return the_plan


def _announce(job: _Job, cfg: Any, the_plan: Any) -> None:
    """Notes before the run: skipped metrics, unmatched references, what runs."""
    by_reason: dict[str, list[str]] = {}
    for metric, reason in the_plan.skipped.items():
        by_reason.setdefault(reason, []).append(metric)
    for reason, names in by_reason.items():
        info(f"skipped {', '.join(names)}: {reason}")
    for ref in job.unmatched:
        info(f"note: reference {ref} has no generated video of the same name")
    info(
        f"evaluating {len(job.pairs)} video(s): {', '.join(the_plan.metrics)} at {cfg.fps:g} fps, "
        f"{cfg.threads} thread(s)"
    )


def _check_suffix(path: Path | None, suffix: str, option: str) -> None:
    if path is not None and Path(path).suffix.lower() != suffix:
        raise UserError(f"{option} {path}: the file name must end in {suffix}")


def _run_with_progress(pair_list, cfg, the_plan, evaluate):
    from talkcli.console import BatchProgress, progress

    with progress(transient=True) as bar:
        bars = BatchProgress(bar, "videos", len(pair_list))

        def on_start(pair):
            return bars.item(pair.name)

        def on_pair(res) -> None:
            bars.done()
            if res.status == "failed":
                status("failed:", "red", res.error or res.pair.name)
            for note in res.notes:
                info(f"{res.pair.name}: {note}")

        return evaluate(pair_list, cfg, the_plan, on_pair=on_pair, on_start=on_start)


def _finish(run, run_name: str, outputs: dict[str, Path | None], as_json: bool) -> None:
    from talkcli.metrics.report import build_report, write_frames_csv, write_json

    ok = [r for r in run.results if r.status == "ok"]
    failed = [r for r in run.results if r.status == "failed"]
    for note in run.notes:
        info(note)
    if not ok:
        raise UserError(
            f"all {len(failed)} video(s) failed, first: {failed[0].error}; nothing was written"
        )
    report = build_report(run, run_name)
    if outputs["out"] is not None:
        write_json(outputs["out"], report)
        info(f"wrote {outputs['out']}")
    if outputs["csv"] is not None:
        write_frames_csv(outputs["csv"], run)
        info(f"wrote {outputs['csv']}")
    if outputs["plot"] is not None:
        from talkcli.plots import plot_metrics

        curves = {r.pair.name: r.per_frame for r in ok}
        if any(curves.values()):
            plot_metrics(outputs["plot"], curves, run.cfg.fps, title=run_name)
            info(f"wrote {outputs['plot']}")
        else:
            warn(f"--plot {outputs['plot']}: no per-frame metric ran; no plot written")
    if as_json:
        print_json(report)
    else:
        _stdout_console().print(_results_table(report))
    if failed:
        raise UserError(
            f"{len(failed)} of {len(run.results)} video(s) failed, first: {failed[0].error}"
        )


def _results_table(report: dict[str, Any]):
    """Per-video values and the aggregate row (mean ± std)."""
    from rich.markup import escape
    from rich.table import Table

    from talkcli.metrics.report import format_value, number

    columns = report["columns"]
    table = Table(title=escape(report["name"]), header_style="bold", show_footer=False)
    table.add_column("video", overflow="fold")
    table.add_column("frames", justify="right")
    for c in columns:
        table.add_column(c, justify="right")
    for v in report["videos"]:
        if v["status"] != "ok":
            table.add_row(escape(v["name"]), "-", *(["failed"] + [""] * (len(columns) - 1)))
            continue
        cells = [format_value(c, number(v["values"].get(c))) for c in columns]
        table.add_row(escape(v["name"]), str(v["frames"]), *cells)
    agg = report["aggregates"]
    cells = []
    for c in columns:
        a = agg.get(c)
        if a is None:
            cells.append("-")
            continue
        mean, std = number(a.get("mean")), number(a.get("std"))
        text = format_value(c, mean)
        if a.get("over") != "set" and a.get("n", 0) > 1 and std == std:
            text += f" ± {format_value(c, std)}"
        cells.append(text)
    table.add_row("[bold]all[/bold]", "", *cells)
    return table


@evaluate_app.command("compare")
def compare_cmd(
    reports: list[Path] = typer.Argument(..., help="Reports from `talkcli evaluate --out`."),
    names: str | None = typer.Option(
        None, "--names", help="Comma-separated method names \\[each report's name]."
    ),
    columns: str | None = typer.Option(
        None, "--metrics", "-m", help="Columns to show, e.g. psnr,ssim,fid,lmd \\[all present]."
    ),
    markdown: bool = typer.Option(
        False, "--markdown", help="Print a Markdown table on stdout (best values in **bold**)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Compare runs as in thesis table 5.1: methods as rows, metrics as columns, best in bold."""
    from rich.markup import escape
    from rich.table import Table

    from talkcli.metrics.report import compare, format_value, load_report
    from talkcli.metrics.report import markdown as to_markdown

    loaded = [load_report(p) for p in reports]
    if names is not None:
        labels = [n.strip() for n in names.split(",")]
        if len(labels) != len(reports):
            raise UserError(f"--names gives {len(labels)} names for {len(reports)} reports")
    else:
        labels = [str(r.get("name") or Path(p).stem) for r, p in zip(loaded, reports, strict=True)]
        if len(set(labels)) < len(labels):  # the same method name twice: add the file names
            labels = [f"{n} ({Path(p).name})" for n, p in zip(labels, reports, strict=True)]
    wanted = None
    if columns is not None:
        wanted = [c.strip().lower() for c in columns.split(",") if c.strip()]
        known = {c for r in loaded for c in r["aggregates"]}
        missing = [c for c in wanted if c not in known]
        if missing:
            raise UserError(
                f"--metrics: no report has {', '.join(missing)} "
                f"(present: {', '.join(sorted(known))})"
            )
    comp = compare(loaded, labels, wanted)
    for w in comp.warnings:
        warn(w)
    if as_json:
        print_json(comp.to_dict())
        return
    if markdown:
        print(to_markdown(comp), end="")
        return
    from talkcli.metrics.evaluate import HIGHER_IS_BETTER

    table = Table(title="comparison (means; best in bold)", header_style="bold")
    table.add_column("method", overflow="fold")
    for c in comp.columns:
        arrow = {True: " ↑", False: " ↓"}.get(HIGHER_IS_BETTER.get(c), "")  # type: ignore[arg-type]
        table.add_column(c + arrow, justify="right")
    for i, (method, row) in enumerate(zip(comp.methods, comp.values, strict=True)):
        cells = []
        for c, v in zip(comp.columns, row, strict=True):
            text = format_value(c, v)
            cells.append(f"[bold]{text}[/bold]" if comp.is_best(c, i) else text)
        table.add_row(escape(method), *cells)
    _stdout_console().print(table)


def _stdout_console():
    """Results go to stdout (notes and progress to stderr)."""
    import sys

    from rich.console import Console

    # piped or redirected output keeps whole rows (rich would squeeze them to 80 columns)
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
