"""``talkcli directions``: named, calibrated W+ directions (find; from-labels)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from talkcli.commands._common import print_json, weights_dir
from talkcli.commands.options import (
    DETECTOR_OPTION,
    GENERATOR_OPTION,
    JSON_OPTION,
    NETWORK_OPTION,
    WEIGHTS_DIR_OPTION,
    Detector,
    FitMethod,
    Network,
    choice_option,
    float_option,
    int_option,
    seed_option,
)
from talkcli.console import info, progress, settings
from talkcli.ranges import DIRECTIONS_FIND

if TYPE_CHECKING:
    from talkcli.directions.find import FindConfig
    from talkcli.directions.run import FindRequest

directions_app = typer.Typer(
    help="Named, calibrated W+ directions (yaw, pitch, roll, eyes_open, mouth_open, smile) for "
    "animate's --blinks, --head-motion, --control and --pose.",
    no_args_is_help=True,
)

CACHE_DIR_OPTION = typer.Option(
    None,
    "--cache-dir",
    help="animate's cache (default: the user cache, ~/.cache/talkcli/animate on Linux); the "
    "result also goes to <cache>/directions/<generator sha256>.npz, where animate looks.",
)
NO_CACHE_OPTION = typer.Option(False, "--no-cache", help="Neither read nor write the cache.")
METHOD_OPTION = choice_option(
    FitMethod.ridge, "--method", help="ridge (default; penalty by GCV) or svm (InterFaceGAN)."
)
LAYERS_OPTION = typer.Option(
    None,
    "--layers",
    help="NAME=A-B: confine a direction to style layers A..B (from 0); repeatable. Default: "
    "pose 0-3, eyes/mouth/smile 4-8 on 18 layers, scaled to the generator.",
)
NAMES_OPTION = typer.Option(
    None, "--names", help="Comma list of quantities to find (default: all the detector measures)."
)


@directions_app.command("find")
def find_cmd(
    generator: Path | None = GENERATOR_OPTION,
    network: Network = NETWORK_OPTION,
    detector: Detector = DETECTOR_OPTION,
    samples: int = int_option(
        2000, "--samples", range=DIRECTIONS_FIND["samples"], help="Random codes to render."
    ),
    seed: int = seed_option(0),
    truncation: float = float_option(
        0.7, "--truncation", range=DIRECTIONS_FIND["truncation"], help="Truncation psi of z->w."
    ),
    batch_size: int = int_option(
        8, "--batch-size", range=DIRECTIONS_FIND["batch_size"], help="Renders per batch."
    ),
    detect_size: int = int_option(
        256,
        "--detect-size",
        range=DIRECTIONS_FIND["detect_size"],
        help="Renders are downscaled to this many pixels for the detector.",
    ),
    method: FitMethod = METHOD_OPTION,
    names: str | None = NAMES_OPTION,
    layers: list[str] | None = LAYERS_OPTION,
    no_orthogonalise: bool = typer.Option(
        False,
        "--no-orthogonalise",
        help="Keep the fitted normals (default: each made orthogonal to the earlier quantities').",
    ),
    calibrate_samples: int = int_option(
        32,
        "--calibrate-samples",
        range=DIRECTIONS_FIND["calibrate_samples"],
        help="Codes rendered at w +- step*d to calibrate per_unit and the cross-talk.",
    ),
    calibrate_step: float = float_option(
        1.0,
        "--calibrate-step",
        range=DIRECTIONS_FIND["calibrate_step"],
        help="Calibration step, in standard deviations of the samples along each direction.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Directions file (.npz)."),
    report: Path | None = typer.Option(
        None, "--report", help="JSON report (default: beside --out, same name, .json)."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Picture of each quantity against the projection, with the fit."
    ),
    cache_dir: Path | None = CACHE_DIR_OPTION,
    no_cache: bool = NO_CACHE_OPTION,
    as_json: bool = JSON_OPTION,
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Discover calibrated directions for a generator: sample, render, measure landmarks, fit,
    orthogonalise, calibrate per_unit (issue 16)."""
    from talkcli.directions.find import FindConfig
    from talkcli.directions.fit import parse_layer_ranges

    cfg = FindConfig(
        samples=samples, seed=seed, truncation=truncation, batch_size=batch_size,
        detect_size=detect_size, method=str(method), orthogonalise=not no_orthogonalise,
        calibrate_samples=calibrate_samples, calibrate_step=calibrate_step,
        names=tuple(n.strip() for n in names.split(",") if n.strip()) if names else None,
        layers=parse_layer_ranges(layers or []),
    )  # fmt: skip
    req = _request(generator, str(network), str(detector), cfg, out, report, plot, cache_dir,
                   no_cache, wdir)  # fmt: skip
    _run(req, as_json)


def _request(
    generator: Path | None,
    network: str,
    detector: str,
    cfg: FindConfig,
    out: Path | None,
    report: Path | None,
    plot: Path | None,
    cache_dir: Path | None,
    no_cache: bool,
    wdir: Path | None,
) -> FindRequest:
    """Resolve model files and check every output before any work."""
    from talkcli.animate.cache import Cache
    from talkcli.device import resolve_device
    from talkcli.directions.run import FindRequest
    from talkcli.errors import UserError
    from talkcli.plots import check_plot_path
    from talkcli.runtime import ENCODER, ModelNeeds, find_model_files, generator_file
    from talkcli.weights import registry
    from talkcli.weights.outputs import guard_outputs

    wd = weights_dir(wdir)
    cfg.check()
    if out is not None and out.suffix != ".npz":
        raise UserError(f"--out {out}: a directions file is an .npz (use a name ending in .npz)")
    if report is None and out is not None:
        report = out.with_suffix(".json")
    if plot is not None:
        plot = check_plot_path(plot)
    gen = generator_file(generator, wd, registry.locate(ENCODER, wd), "directions find")
    paths = find_model_files(
        ModelNeeds(detector=True), wd, generator=gen, detector=detector,
        purpose="directions find", network=network,
    )  # fmt: skip
    guard_outputs([out, report, plot], inputs=[paths.generator], weights_dir=wd)
    if paths.detector == "mtcnn":
        info("MTCNN gives 5 points: only yaw and roll can be found (fetch FAN for all six)")
    return FindRequest(
        generator_path=paths.generator, network=network, detector_backend=paths.detector,
        detector_files=paths.detector_files, config=cfg, device=resolve_device(settings.device),
        weights_dir=wd, out=out, report=report, plot=plot,
        cache=Cache(cache_dir, enabled=not no_cache),
    )  # fmt: skip


def _run(req: FindRequest, as_json: bool) -> None:
    from talkcli.directions.run import run_find

    with progress() as bar:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        done = run_find(req, on_progress, on_note=info)
    rep = done.report
    for name in done.directions.names:
        q = rep["quantities"][name]
        info(
            f"{name:>10}: per_unit {q['per_unit']:.4g} {q['unit']}, R² {q['r2']:.3f} "
            f"(held out {q['r2_heldout']:.3f}), layers {q['layers'][0]}-{q['layers'][1]}"
        )
    if rep.get("samples_failed"):
        info(f"{rep['samples_failed']} of {rep['samples']} samples had no face found")
    for what, path in done.written.items():
        info(f"{what}: {path}")
    if as_json:
        print_json(rep)


@directions_app.command("from-labels")
def from_labels_cmd(
    labels_csv: Path = typer.Argument(
        ..., help="CSV: an image column (paths relative to the CSV) + one number per quantity."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Directions file (.npz)."),
    encoder: Path | None = typer.Option(
        None, "--encoder", help="pSp or e4e checkpoint (default: registry pSp)."
    ),
    detector: Detector = DETECTOR_OPTION,
    aligned: bool = typer.Option(
        False, "--aligned", help="The photos are already FFHQ-aligned (no detection)."
    ),
    method: FitMethod = METHOD_OPTION,
    layers: list[str] | None = LAYERS_OPTION,
    no_orthogonalise: bool = typer.Option(
        False, "--no-orthogonalise", help="Keep the fitted normals."
    ),
    seed: int = seed_option(0, note="held-out split"),
    report: Path | None = typer.Option(
        None, "--report", help="JSON report (default: beside --out, same name, .json)."
    ),
    as_json: bool = JSON_OPTION,
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Directions from labelled photos (encoded by pSp); per_unit from the fit's slope."""
    from talkcli.device import resolve_device
    from talkcli.directions.fit import parse_layer_ranges
    from talkcli.directions.labels import encode_labelled, fit_from_labels, read_labels_csv
    from talkcli.errors import UserError
    from talkcli.io.files import write_json_atomic
    from talkcli.models.directions import save_directions
    from talkcli.models.psp import load_encoder
    from talkcli.runtime import ENCODER
    from talkcli.weights import registry
    from talkcli.weights.outputs import guard_outputs

    wd = weights_dir(wdir)
    if out.suffix != ".npz":
        raise UserError(f"--out {out}: a directions file is an .npz (use a name ending in .npz)")
    report = report or out.with_suffix(".json")
    spans = parse_layer_ranges(layers or [])
    labels = read_labels_csv(labels_csv)
    enc_path = registry.resolve_option(encoder, ENCODER, wd, "directions from-labels")
    guard_outputs([out, report], inputs=[labels_csv, enc_path, *labels.images], weights_dir=wd)
    device = resolve_device(settings.device)
    det = None
    if not aligned:
        from talkcli.face.landmarks import select_detector

        det = select_detector(str(detector), wd, str(device))
    E = load_encoder(enc_path, device)

    def encode(images: Any) -> Any:  # (1, H, W, 3) uint8 -> (1, n_latent, D) numpy
        import torch

        with torch.no_grad():
            return E.encode_images(images).float().cpu().numpy()

    with progress() as bar:
        task = bar.add_task("encode", total=len(labels.images))
        codes = encode_labelled(
            labels, encode, det, on_progress=lambda d, _n: bar.update(task, completed=d)
        )
    d, rep = fit_from_labels(codes, labels, str(method), spans, not no_orthogonalise, seed)
    save_directions(out, d)
    rep["outputs"] = {"out": str(out), "report": str(report)}
    write_json_atomic(report, rep, indent=2)
    for name in d.names:
        q = rep["quantities"][name]
        info(
            f"{name:>10}: per_unit {q['per_unit']:.4g} {q['unit']} (from the fit's slope), "
            f"R² held out {_fmt(q['r2_heldout'])}"
        )
    info(f"wrote {out} and {report}")
    if as_json:
        print_json(rep)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def register(app: typer.Typer) -> None:
    app.add_typer(directions_app, name="directions")
