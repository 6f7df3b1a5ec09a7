"""``talkcli invert``: aligned images or an aligned video -> W+ latents (.npz)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from talkcli.commands._common import (
    generator_file,
    print_json,
    weights_dir,
)
from talkcli.commands.options import (
    ENCODER_OPTION,
    GENERATOR_OPTION,
    JSON_OPTION,
    NETWORK_OPTION,
    WEIGHTS_DIR_OPTION,
    Dtype,
    LpipsNet,
    Method,
    Network,
    Space,
    choice_option,
    dtype_option,
    float_option,
    int_option,
    lpips_option,
    seed_option,
)
from talkcli.console import info, progress, settings
from talkcli.errors import UserError
from talkcli.ranges import INVERT


def invert_cmd(
    inputs: list[str] = typer.Argument(
        ..., help="Aligned images, folders, globs, or an aligned video (see `talkcli align`)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (w, names, meta)."),
    method: Method = choice_option(
        Method.psp, "--method", "-m", help="psp (encoder), optimize (thesis Alg. 1/2), hybrid."
    ),
    encoder: Path | None = ENCODER_OPTION,
    generator: Path | None = GENERATOR_OPTION,
    network: Network = NETWORK_OPTION,
    steps: int = int_option(
        500, "--steps", range=INVERT["steps"], help="Optimisation steps per frame."
    ),
    first_steps: int | None = int_option(
        None,
        "--first-steps",
        range=INVERT["first_steps"],
        help="Steps for the first frame (default: 10x --steps for optimize).",
    ),
    space: Space = choice_option(Space.wplus, "--space", help="w or wplus."),
    sequence: bool = typer.Option(
        True,
        "--sequence/--independent",
        help="Alg. 2: start each frame from the previous result (smooth); or Alg. 1.",
    ),
    lr: float = float_option(0.01, "--lr", range=INVERT["lr"], help="Adam learning rate."),
    l2_weight: float = float_option(
        1.0, "--l2-weight", range=INVERT["l2_weight"], help="Weight of the pixel L2 loss."
    ),
    lpips_net: LpipsNet = lpips_option(LpipsNet.vgg),
    batch_size: int = int_option(
        4, "--batch-size", range=INVERT["batch_size"], help="Frames per encoder batch."
    ),
    max_frames: int | None = int_option(
        None,
        "--max-frames",
        range=INVERT["max_frames"],
        help="Use at most N frames, sampled evenly.",
    ),
    save_recon: Path | None = typer.Option(
        None, "--save-recon", help="Folder for reconstructions and input|recon comparisons."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="PNG of the codes' first two principal components (frame order)."
    ),
    seed: int = seed_option(0),
    dtype: Dtype = dtype_option("the encoder and the optimisation's forward passes"),
    as_json: bool = JSON_OPTION,
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Invert aligned faces into StyleGAN2's W+ space (pSp, optimisation, or both)."""
    if out.suffix != ".npz":
        raise UserError(f"{out}: latents are saved as .npz (use a name ending in .npz)")
    from talkcli.device import resolve_device
    from talkcli.inversion.invert import invert, load_frames, recon_paths
    from talkcli.inversion.project import ProjectionConfig
    from talkcli.plots import check_plot_path
    from talkcli.weights.outputs import guard_outputs

    if plot is not None:
        check_plot_path(plot)
    wd = weights_dir(wdir)
    device = resolve_device(settings.device)
    frames = load_frames(inputs, max_frames)
    files = _model_files(method, encoder, generator, lpips_net, save_recon is not None, wd)
    recon_files = recon_paths(save_recon, frames) if save_recon is not None else []
    guard_outputs(
        [out, plot, *recon_files],
        inputs=[*frames.files, files.encoder, files.generator],
        weights_dir=wd,
    )
    if first_steps is None and method == "optimize":
        first_steps = 10 * steps
    cfg = ProjectionConfig(
        steps=steps,
        first_steps=first_steps,
        lr=lr,
        l2_weight=l2_weight,
        space=space,
        sequence=sequence,
        dtype=dtype,
    )
    info(f"inverting {len(frames.names)} frame(s) with {method} on {device}")
    with progress() as bar:
        result = invert(
            frames,
            method=method,
            generator_path=files.generator,
            encoder_path=files.encoder,
            lpips_paths=files.lpips,
            lpips_net=lpips_net,
            cfg=cfg,
            batch_size=batch_size,
            device=device,
            seed=seed,
            want_reconstructions=save_recon is not None,
            on_progress=_stage_bars(bar),
            network=network,
        )
    _write_outputs(result, frames, out, save_recon, plot, method, as_json)


@dataclass
class _ModelFiles:
    """The model files an inversion reads (None: not needed)."""

    encoder: Path | None
    generator: Path | None
    lpips: tuple[Path, Path] | None  # (backbone, heads)


def _model_files(
    method: str,
    encoder: Path | None,
    generator: Path | None,
    lpips_net: str,
    want_recon: bool,
    wd: Path | None,
) -> _ModelFiles:
    """Resolve the files ``method`` needs: pSp for psp/hybrid, G and LPIPS for optimisation."""
    from talkcli.weights import registry

    encoder_path = None
    if method in ("psp", "hybrid"):
        encoder_path = registry.resolve_option(
            encoder, "psp-ffhq-encode", wd, f"invert --method {method}"
        )
    generator_path = None
    if generator is not None or method != "psp" or want_recon:
        generator_path = generator_file(generator, wd, encoder_path, "invert")
    lpips_paths = None
    if method != "psp":
        from talkcli.runtime import lpips_files

        lpips_paths = lpips_files(lpips_net, wd, f"LPIPS-{lpips_net}")
    return _ModelFiles(encoder_path, generator_path, lpips_paths)


def _stage_bars(bar: Any) -> Any:
    """``on_progress(stage, done, total)`` drawing one progress bar per stage."""
    tasks: dict[str, int] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done)

    return on_progress


def _write_outputs(
    result: Any,  # talkcli.inversion.invert.InvertResult
    frames: Any,  # talkcli.inversion.invert.Frames
    out: Path,
    save_recon: Path | None,
    plot: Path | None,
    method: str,
    as_json: bool,
) -> None:
    """Extras first, the latents (the main output) last: a failure while writing the extras
    leaves no .npz behind. Then the per-frame losses and the JSON summary."""
    from talkcli.inversion.invert import save_latents, save_reconstructions

    if save_recon is not None:
        written = save_reconstructions(save_recon, result, frames)
        info(f"wrote {len(written)} reconstruction images to {save_recon}")
    if plot is not None:
        from talkcli.plots import plot_trajectory

        plot_trajectory(plot, result.w, f"{method}: {len(result.names)} frames")
        info(f"wrote {plot}")
    path = save_latents(out, result)
    info(f"wrote {path}: w {tuple(result.w.shape)}")
    for row in result.losses:
        info(
            f"  {row['name']}: loss {row['loss_start']:.4f} -> {row['loss_end']:.4f} "
            f"(LPIPS {row['lpips']:.4f}, L2 {row['l2']:.4f}, {row['steps']} steps)"
        )
    if as_json:
        print_json({"out": str(path), "shape": list(result.w.shape), **result.meta})


def register(app: typer.Typer) -> None:
    app.command("invert")(invert_cmd)
