"""``talkcli tune-pti``: pivotal tuning of the generator on a photo or a short clip."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from talkcli.commands._common import (
    generator_file,
    print_json,
    weights_dir,
)
from talkcli.commands.options import (
    JSON_OPTION,
    NETWORK_OPTION,
    WEIGHTS_DIR_OPTION,
    Dtype,
    LpipsNet,
    Network,
    PivotMethod,
    choice_option,
    dtype_option,
    float_option,
    int_option,
    lpips_option,
    seed_option,
)
from talkcli.console import info, progress, settings
from talkcli.constants import LPIPS_FILES
from talkcli.errors import UserError
from talkcli.ranges import TUNE_PTI

if TYPE_CHECKING:
    from talkcli.inversion.pti import PTIConfig, PTIRequest


def tune_pti_cmd(
    inputs: list[str] = typer.Argument(
        ..., help="Aligned photo(s), a folder, globs, or an aligned short video."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Tuned generator (.pt, rosinality layout)."),
    generator: Path | None = typer.Option(
        None,
        "--generator",
        help="Base StyleGAN2 .pt or NVIDIA network pickle .pkl (default: registry, else the pSp "
        "decoder).",
    ),
    network: Network = NETWORK_OPTION,
    encoder: Path | None = typer.Option(
        None, "--encoder", help="pSp or e4e checkpoint for the pivots (default: registry pSp)."
    ),
    pivots: Path | None = typer.Option(
        None, "--pivots", help="Pivots from `talkcli invert` (.npz), one per frame."
    ),
    pivot_method: PivotMethod = choice_option(
        PivotMethod.psp, "--pivot-method", help="psp (thesis) or w-project (PTI's W projection)."
    ),
    max_frames: int | None = int_option(
        None,
        "--max-frames",
        range=TUNE_PTI["max_frames"],
        help="Use at most N frames of a video, sampled evenly.",
    ),
    steps: int = int_option(350, "--steps", range=TUNE_PTI["steps"], help="Tuning steps."),
    lr: float = float_option(3e-4, "--lr", range=TUNE_PTI["lr"], help="Adam learning rate."),
    lpips_net: LpipsNet = lpips_option(LpipsNet.alex),
    l2_weight: float = float_option(
        1.0, "--l2-weight", range=TUNE_PTI["l2_weight"], help="Weight of the pixel L2 loss."
    ),
    stop_lpips: float = float_option(
        0.06,
        "--stop-lpips",
        range=TUNE_PTI["stop_lpips"],
        help="Stop early when the step's LPIPS falls below this.",
    ),
    batch: int = int_option(4, "--batch", range=TUNE_PTI["batch"], help="Frames drawn per step."),
    locality: bool = typer.Option(
        False, "--locality", help="PTI's locality regulariser (keeps far latents unchanged)."
    ),
    project_steps: int = int_option(
        450,
        "--project-steps",
        range=TUNE_PTI["project_steps"],
        help="Steps of the w-project pivot search.",
    ),
    seed: int = seed_option(0),
    dtype: Dtype = dtype_option("the tuning steps (the generator and LPIPS)"),
    as_json: bool = JSON_OPTION,
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Tune the generator around the identity's pivots (PTI; thesis stage 2)."""
    if pivot_method not in ("psp", "w-project"):
        raise UserError(f"--pivot-method {pivot_method!r}: expected psp or w-project")
    if lpips_net not in LPIPS_FILES:
        raise UserError(f"--lpips {lpips_net!r}: expected alex or vgg")
    from rich.progress import TextColumn

    from talkcli.inversion.pti import (
        PTIConfig,
        load_pti_models,
        request_pivots,
        save_tuned,
        tune,
    )

    cfg = PTIConfig(
        steps=steps,
        lr=lr,
        l2_weight=l2_weight,
        stop_lpips=stop_lpips,
        batch=batch,
        locality=locality,
        seed=seed,
        dtype=dtype,
    )
    req = _request(inputs, out, generator, encoder, pivots, pivot_method, max_frames, lpips_net,
                   wdir, config=cfg, project_steps=project_steps, network=network)  # fmt: skip
    models = load_pti_models(req)
    if req.pivots_file is None and pivot_method == "w-project":
        with progress() as bar:
            task = bar.add_task("w-project", total=project_steps * len(req.frames.names))
            found = request_pivots(req, models, on_project_step=lambda _s, _l: bar.advance(task))
    else:
        found = request_pivots(req, models)

    n_frames = len(req.frames.names)
    info(f"tuning {req.generator_path.name} on {n_frames} frame(s), {steps} steps on {req.device}")
    stats = TextColumn("LPIPS {task.fields[lpips]:.4f}  L2 {task.fields[l2]:.4f}")
    with progress(stats) as bar:
        task = bar.add_task("tune-pti", total=steps, lpips=float("nan"), l2=float("nan"))
        result = tune(
            models.G,
            models.lpips,
            found.w,
            models.targets,
            req.config,
            on_step=lambda s, row: bar.update(task, completed=s, lpips=row["lpips"], l2=row["l2"]),
        )
    done = save_tuned(req, models, found, result)
    info(
        f"wrote {done.out} and {done.pivots_path.name}: LPIPS {result.lpips_start:.4f} -> "
        f"{result.lpips_end:.4f}, L2 {result.l2_start:.4f} -> {result.l2_end:.4f}, "
        f"{result.steps_run} steps{' (early stop)' if result.stopped_early else ''}, "
        f"{result.seconds:.1f} s"
    )
    if as_json:
        print_json({"out": str(done.out), "pivots": str(done.pivots_path), **done.metadata})


def _request(
    inputs: list[str],
    out: Path,
    generator: Path | None,
    encoder: Path | None,
    pivots: Path | None,
    pivot_method: str,
    max_frames: int | None,
    lpips_net: str,
    wdir: Path | None,
    *,
    config: PTIConfig,
    project_steps: int,
    network: str = "G_ema",
) -> PTIRequest:
    """The run's frames and model files (inputs named before model files), outputs checked."""
    from talkcli.device import resolve_device
    from talkcli.inversion.invert import load_frames
    from talkcli.inversion.pti import PTIRequest, pivots_path_for
    from talkcli.runtime import lpips_files
    from talkcli.weights import registry
    from talkcli.weights.outputs import guard_outputs

    out = out.expanduser()
    if out.suffix != ".pt":
        raise UserError(f"{out}: the tuned generator is saved as .pt (use a name ending in .pt)")
    wd = weights_dir(wdir)
    device = resolve_device(settings.device)
    frames = load_frames(inputs, max_frames)
    encoder_path = None
    if pivots is None and pivot_method == "psp":
        encoder_path = registry.resolve_option(encoder, "psp-ffhq-encode", wd, "tune-pti pivots")
    generator_path = generator_file(generator, wd, encoder_path, "tune-pti")
    lpips_paths = lpips_files(lpips_net, wd, f"LPIPS-{lpips_net}")
    guard_outputs(
        [out, pivots_path_for(out)],
        inputs=[*frames.files, pivots, encoder_path, generator_path],
        weights_dir=wd,
    )
    return PTIRequest(
        frames,
        out,
        generator_path,
        lpips_paths,
        lpips_net=str(lpips_net),  # the plain name (the files' metadata holds no CLI enum)
        pivot_method=str(pivot_method),
        pivots_file=pivots,
        encoder_path=encoder_path,
        project_steps=project_steps,
        config=config,
        device=device,
        network=str(network),
    )


def register(app: typer.Typer) -> None:
    app.command("tune-pti")(tune_pti_cmd)
