"""``talkcli invert``: aligned images or an aligned video -> W+ latents (.npz)."""

from __future__ import annotations

from pathlib import Path

import typer

from talkcli.commands._common import (
    WEIGHTS_DIR_OPTION,
    generator_file,
    print_json,
    weights_dir,
)
from talkcli.console import info, progress, settings
from talkcli.constants import LPIPS_FILES
from talkcli.errors import UserError
from talkcli.guards import SEED_MAX

METHODS = ("psp", "optimize", "hybrid")  # talkcli.inversion.invert.METHODS


def invert_cmd(
    inputs: list[str] = typer.Argument(
        ..., help="Aligned images, folders, globs, or an aligned video (see `talkcli align`)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (w, names, meta)."),
    method: str = typer.Option(
        "psp", "--method", "-m", help="psp (encoder), optimize (thesis Alg. 1/2), hybrid."
    ),
    encoder: Path | None = typer.Option(
        None, "--encoder", help="pSp checkpoint (default: registry)."
    ),
    generator: Path | None = typer.Option(
        None, "--generator", help="StyleGAN2 .pt (default: registry, else the pSp decoder)."
    ),
    steps: int = typer.Option(
        500, "--steps", min=0, max=100_000, help="Optimisation steps per frame."
    ),
    first_steps: int | None = typer.Option(
        None,
        "--first-steps",
        min=0,
        max=1_000_000,
        help="Steps for the first frame (default: 10x --steps for optimize).",
    ),
    space: str = typer.Option("wplus", "--space", help="w or wplus."),
    sequence: bool = typer.Option(
        True,
        "--sequence/--independent",
        help="Alg. 2: start each frame from the previous result (smooth); or Alg. 1.",
    ),
    lr: float = typer.Option(0.01, "--lr", min=1e-7, max=10.0, help="Adam learning rate."),
    l2_weight: float = typer.Option(
        1.0, "--l2-weight", min=0.0, max=1e6, help="Weight of the pixel L2 loss."
    ),
    lpips_net: str = typer.Option("vgg", "--lpips", help="LPIPS backbone: vgg or alex."),
    batch_size: int = typer.Option(
        4, "--batch-size", min=1, max=1024, help="Frames per encoder batch."
    ),
    max_frames: int | None = typer.Option(
        None, "--max-frames", min=1, max=100_000, help="Use at most N frames, sampled evenly."
    ),
    save_recon: Path | None = typer.Option(
        None, "--save-recon", help="Folder for reconstructions and input|recon comparisons."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="PNG of the codes' first two principal components (frame order)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Random seed."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Invert aligned faces into StyleGAN2's W+ space (pSp, optimisation, or both)."""
    if method not in METHODS:
        raise UserError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if space not in ("w", "wplus"):
        raise UserError(f"--space {space!r}: expected w or wplus")
    if lpips_net not in LPIPS_FILES:
        raise UserError(f"--lpips {lpips_net!r}: expected vgg or alex")
    if out.suffix != ".npz":
        raise UserError(f"{out}: latents are saved as .npz (use a name ending in .npz)")
    from talkcli.device import resolve_device
    from talkcli.guards import guard_outputs
    from talkcli.inversion.invert import (
        invert,
        load_frames,
        recon_paths,
        save_latents,
        save_reconstructions,
    )
    from talkcli.inversion.project import ProjectionConfig
    from talkcli.plots import check_plot_path
    from talkcli.weights import registry

    if plot is not None:
        check_plot_path(plot)
    wd = weights_dir(wdir)
    device = resolve_device(settings.device)
    frames = load_frames(inputs, max_frames)

    encoder_path = None
    if method in ("psp", "hybrid"):
        encoder_path = registry.resolve_option(
            encoder, "psp-ffhq-encode", wd, f"invert --method {method}"
        )
    needs_generator = method != "psp" or save_recon is not None
    generator_path = None
    if generator is not None or needs_generator:
        generator_path = generator_file(generator, wd, encoder_path, "invert")
    lpips_paths = None
    if method != "psp":
        from talkcli.runtime import lpips_files

        lpips_paths = lpips_files(lpips_net, wd, f"LPIPS-{lpips_net}")
    recon_files = recon_paths(save_recon, frames) if save_recon is not None else []
    guard_outputs(
        [out, plot, *recon_files],
        inputs=[*frames.files, encoder_path, generator_path],
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
    )
    info(f"inverting {len(frames.names)} frame(s) with {method} on {device}")
    with progress() as bar:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        result = invert(
            frames,
            method=method,
            generator_path=generator_path,
            encoder_path=encoder_path,
            lpips_paths=lpips_paths,
            lpips_net=lpips_net,
            cfg=cfg,
            batch_size=batch_size,
            device=device,
            seed=seed,
            want_reconstructions=save_recon is not None,
            on_progress=on_progress,
        )
    # The latents (the main output) are written last: a failure while writing the extras leaves
    # no .npz behind.
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
