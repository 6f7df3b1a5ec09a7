"""``talkcli evaluate``: PSNR, SSIM, LPIPS, FID, LMD, CPBD, LSE-C/D of generated videos; suites;
``evaluate compare`` for a table-5.1-style comparison of runs.

``talkcli evaluate GEN REF ...`` is short for ``talkcli evaluate run GEN REF ...``: the group runs
``run`` whenever its first argument is not one of its commands (``run``, ``compare``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from talkcli.commands._common import WEIGHTS_DIR_OPTION, print_json, weights_dir
from talkcli.console import info, settings, status, warn
from talkcli.errors import UserError
from talkcli.guards import SEED_MAX

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
        help="Comma-separated: psnr,ssim,lpips,fid,lmd,cpbd,lse [default: every metric whose "
        "model files are present; named metrics must run].",
    ),
    fps: float | None = typer.Option(
        None, "--fps", min=1.0, max=120.0, help="Common frame rate, frames matched by index [25]."
    ),
    resolution: int | None = typer.Option(
        None,
        "--resolution",
        min=16,
        max=4096,
        help="Evaluation width in pixels (height keeps the aspect) [the reference's size].",
    ),
    crop: str | None = typer.Option(
        None,
        "--crop",
        help="What the frames are: full (whole frames) or aligned (FFHQ-aligned faces, e.g. the "
        "generator's output or `talkcli align`) [full]. Recorded in the report.",
    ),
    face_crop: str | None = typer.Option(
        None,
        "--face-crop",
        help="LSE face crops: detect (face detector), aligned (the aligned frame's fixed face "
        "box) or auto (aligned when --crop aligned) [auto].",
    ),
    lpips_net: str | None = typer.Option(
        None, "--lpips", help="LPIPS backbone: alex or vgg [alex]."
    ),
    strict: bool | None = typer.Option(
        None, "--strict/--no-strict", help="Refuse videos of different sizes instead of resizing."
    ),
    max_frames: int | None = typer.Option(
        None, "--max-frames", min=1, max=10_000_000, help="Evaluate at most N frames per video."
    ),
    batch: int | None = typer.Option(
        None, "--batch", min=1, max=256, help="Frames per batch (memory vs speed) [8]."
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        max=256,
        help="CPU threads (fixed, so reruns give identical values) [min(4, cores)].",
    ),
    seed: int | None = typer.Option(None, "--seed", min=0, max=SEED_MAX, help="Random seed [0]."),
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
        None, "--name", help="The method's name in `evaluate compare` [suite name, or input name]."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Evaluate generated videos (against references): table, JSON report, CSV, plot."""
    from talkcli.guards import guard_outputs
    from talkcli.metrics.evaluate import METRICS, EvalConfig, default_threads, evaluate, plan
    from talkcli.metrics.inputs import check_unique_names, collect_pairs, read_pairs_csv
    from talkcli.plots import check_plot_path

    cli = {
        "metrics": metrics,
        "fps": fps,
        "resolution": resolution,
        "crop": crop,
        "face_crop": face_crop,
        "lpips": lpips_net,
        "strict": strict,
        "max_frames": max_frames,
        "batch": batch,
        "threads": threads,
        "seed": seed,
        "fid_stats": fid_stats,
        "inception": inception,
        "syncnet": syncnet,
    }
    given_inputs = [generated, reference, pairs]
    inputs_read: list[Path] = []
    outputs = {"out": out, "csv": csv_out, "plot": plot}
    unmatched: list[Path] = []
    if suite is not None:
        from talkcli.metrics.suite import load_suite

        if any(x is not None for x in given_inputs):
            raise UserError(
                "--suite names the inputs itself; do not also give GENERATED or --pairs"
            )
        s = load_suite(suite)
        inputs_read.append(s.path)
        options = {**s.options, **{k: v for k, v in cli.items() if v is not None}}
        outputs = {k: outputs[k] if outputs[k] is not None else s.outputs.get(k) for k in outputs}
        pair_list, unmatched = s.pairs, s.unmatched
        run_name = name or s.name
    else:
        options = {k: v for k, v in cli.items() if v is not None}
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

    metric_list = options.get("metrics")
    if isinstance(metric_list, str):
        metric_list = [m.strip().lower() for m in metric_list.split(",") if m.strip()]
    cfg = EvalConfig(
        metrics=tuple(metric_list) if metric_list else METRICS,
        named=bool(metric_list),
        fps=float(options.get("fps", 25.0)),
        resolution=options.get("resolution"),
        crop=str(options.get("crop", "full")).lower(),
        face_crop=str(options.get("face_crop", "auto")).lower(),
        lpips_net=str(options.get("lpips", "alex")).lower(),
        strict=bool(options.get("strict", False)),
        max_frames=options.get("max_frames"),
        batch=int(options.get("batch", 8)),
        threads=int(options.get("threads", default_threads())),
        seed=int(options.get("seed", 0)),
        weights_dir=weights_dir(wdir),
        inception=options.get("inception"),
        syncnet=options.get("syncnet"),
        fid_stats=options.get("fid_stats"),
    )
    cfg.check()
    _check_suffix(outputs["out"], ".json", "--out")
    _check_suffix(outputs["csv"], ".csv", "--csv")
    if outputs["plot"] is not None:
        check_plot_path(outputs["plot"])
    if cfg.fid_stats is not None:
        _check_suffix(cfg.fid_stats, ".npz", "--fid-stats")
    has_reference = any(p.reference is not None or p.missing_reference for p in pair_list)
    the_plan = plan(cfg, has_reference)
    if not the_plan.metrics:
        why = "; ".join(f"{m}: {r}" for m, r in the_plan.skipped.items())
        raise UserError(f"no metric can run ({why})")
    sources = [*inputs_read, *[x for p in pair_list for x in (p.generated, p.reference) if x]]
    planned = [*outputs.values()]
    if "fid" in the_plan.metrics:
        planned.append(cfg.fid_stats)
    guard_outputs(planned, inputs=sources, weights_dir=cfg.weights_dir)
    cfg.device = settings.device

    by_reason: dict[str, list[str]] = {}
    for metric, reason in the_plan.skipped.items():
        by_reason.setdefault(reason, []).append(metric)
    for reason, names in by_reason.items():
        info(f"skipped {', '.join(names)}: {reason}")
    for ref in unmatched:
        info(f"note: reference {ref} has no generated video of the same name")
    info(
        f"evaluating {len(pair_list)} video(s): {', '.join(the_plan.metrics)} at {cfg.fps:g} fps, "
        f"{cfg.threads} thread(s)"
    )
    run = _run_with_progress(pair_list, cfg, the_plan, evaluate)
    _finish(run, run_name, outputs, as_json)


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
        None, "--names", help="Comma-separated method names [each report's name]."
    ),
    columns: str | None = typer.Option(
        None, "--metrics", "-m", help="Columns to show, e.g. psnr,ssim,fid,lmd [all present]."
    ),
    markdown: bool = typer.Option(
        False, "--markdown", help="Print a Markdown table on stdout (best values in **bold**)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON on stdout."),
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
