"""``talkcli tune-pti``: pivotal tuning of the generator on a photo or a short clip."""

from __future__ import annotations

from pathlib import Path

import typer

from talkcli import __version__
from talkcli.commands._common import (
    generator_file,
    print_json,
    weights_dir,
)
from talkcli.commands.options import (
    JSON_OPTION,
    WEIGHTS_DIR_OPTION,
    LpipsNet,
    PivotMethod,
    choice_option,
    float_option,
    int_option,
    lpips_option,
    seed_option,
)
from talkcli.console import info, progress, settings
from talkcli.constants import LPIPS_FILES
from talkcli.errors import InputFileError, UserError
from talkcli.ranges import TUNE_PTI


def pivots_path_for(out: Path) -> Path:
    """Where the pivots are saved beside a tuned generator: ``tuned.pt`` -> ``tuned.pivots.npz``."""
    return out.with_name(out.stem + ".pivots.npz")


def tune_pti_cmd(
    inputs: list[str] = typer.Argument(
        ..., help="Aligned photo(s), a folder, globs, or an aligned short video."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Tuned generator (.pt, rosinality layout)."),
    generator: Path | None = typer.Option(
        None, "--generator", help="Base StyleGAN2 .pt (default: registry, else the pSp decoder)."
    ),
    encoder: Path | None = typer.Option(
        None, "--encoder", help="pSp checkpoint for the pivots (default: registry)."
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
    as_json: bool = JSON_OPTION,
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Tune the generator around the identity's pivots (PTI; thesis stage 2)."""
    if pivot_method not in ("psp", "w-project"):
        raise UserError(f"--pivot-method {pivot_method!r}: expected psp or w-project")
    if lpips_net not in LPIPS_FILES:
        raise UserError(f"--lpips {lpips_net!r}: expected alex or vgg")
    import numpy as np
    import torch
    from rich.progress import TextColumn

    from talkcli.device import resolve_device
    from talkcli.inversion.invert import (
        InvertResult,
        frames_to_tensor,
        load_frames,
        load_latents,
        write_latents,
    )
    from talkcli.inversion.pti import PTIConfig, check_pivots, tune, w_project_pivots
    from talkcli.io.files import atomic_output, sha256_file
    from talkcli.runtime import lpips_files
    from talkcli.weights import registry
    from talkcli.weights.outputs import guard_outputs

    out = out.expanduser()
    if out.suffix != ".pt":
        raise UserError(f"{out}: the tuned generator is saved as .pt (use a name ending in .pt)")
    pivots_out = pivots_path_for(out)
    wd = weights_dir(wdir)
    device = resolve_device(settings.device)
    torch.manual_seed(seed)
    frames = load_frames(inputs, max_frames)

    encoder_path = None
    if pivots is None and pivot_method == "psp":
        encoder_path = registry.resolve_option(encoder, "psp-ffhq-encode", wd, "tune-pti pivots")
    generator_path = generator_file(generator, wd, encoder_path, "tune-pti")
    backbone_path, heads_path = lpips_files(lpips_net, wd, f"LPIPS-{lpips_net}")
    guard_outputs(
        [out, pivots_out],
        inputs=[*frames.files, pivots, encoder_path, generator_path],
        weights_dir=wd,
    )

    from talkcli.models.perceptual import load_lpips
    from talkcli.models.stylegan2 import load_generator, save_generator

    G = load_generator(generator_path, device=device)
    lpips = load_lpips(lpips_net, device=device, backbone_path=backbone_path, heads_path=heads_path)
    targets = frames_to_tensor(frames.images, G.size, device)  # (N, 3, S, S)

    if pivots is not None:
        w, names, _meta = load_latents(pivots)
        if w.shape[1:] != (G.n_latent, G.style_dim):
            raise InputFileError(
                pivots,
                f"pivots have shape {w.shape[1:]}, the generator expects "
                f"({G.n_latent}, {G.style_dim})",
                "invert with the same generator",
            )
        if w.shape[0] != len(frames.names):
            raise InputFileError(
                pivots,
                f"holds {w.shape[0]} pivots for {len(frames.names)} input frame(s)",
                "pass the same frames that were inverted",
            )
        pivot_w = torch.from_numpy(w).to(device)
        pivot_source = {"kind": "file", "path": str(pivots), "sha256": sha256_file(pivots)}
    elif pivot_method == "psp":
        from talkcli.models.psp import load_encoder

        E = load_encoder(encoder_path, device=device)
        with torch.no_grad():
            pivot_w = torch.cat(
                [
                    E.encode_images(frames.images[s : s + 4]).float()
                    for s in range(0, len(frames.names), 4)
                ]
            ).to(device)
        del E
        pivot_source = {
            "kind": "psp",
            "path": str(encoder_path),
            "sha256": sha256_file(encoder_path),
        }
    else:
        with progress() as bar:
            task = bar.add_task("w-project", total=project_steps * len(frames.names))
            pivot_w = w_project_pivots(
                G,
                lpips,
                targets,
                steps=project_steps,
                seed=seed,
                on_step=lambda _s, _l: bar.advance(task),
            )
        pivot_source = {"kind": "w-project", "steps": project_steps}
    try:
        check_pivots(G, pivot_w, targets)
    except ValueError as exc:
        raise UserError(f"pivots do not match the frames: {exc}") from None

    cfg = PTIConfig(
        steps=steps,
        lr=lr,
        l2_weight=l2_weight,
        stop_lpips=stop_lpips,
        batch=batch,
        locality=locality,
        seed=seed,
    )
    info(f"tuning {generator_path.name} on {len(frames.names)} frame(s), {steps} steps on {device}")
    stats = TextColumn("LPIPS {task.fields[lpips]:.4f}  L2 {task.fields[l2]:.4f}")
    with progress(stats) as bar:
        task = bar.add_task("tune-pti", total=steps, lpips=float("nan"), l2=float("nan"))
        result = tune(
            G,
            lpips,
            pivot_w,
            targets,
            cfg,
            on_step=lambda s, row: bar.update(task, completed=s, lpips=row["lpips"], l2=row["l2"]),
        )
    metadata = {
        "kind": "pti",
        "talkcli": __version__,
        "base_generator": {"path": str(generator_path), "sha256": sha256_file(generator_path)},
        "pivot_source": pivot_source,
        "pivots_file": pivots_out.name,
        "frames": frames.sources,
        "input_sha256": frames.files,
        "steps_run": result.steps_run,
        "stopped_early": result.stopped_early,
        "losses": {
            "lpips_start": result.lpips_start,
            "l2_start": result.l2_start,
            "lpips_end": result.lpips_end,
            "l2_end": result.l2_end,
        },
        "seconds": result.seconds,
        "options": {**result.config, "lpips_net": lpips_net, "device": str(device)},
    }
    pivots_result = InvertResult(
        w=pivot_w.detach().float().cpu().numpy().astype(np.float32),
        names=frames.names,
        meta={"method": pivot_source["kind"], "pivots_for": out.name, "sources": frames.sources},
    )
    # Both go to temporary names; the generator is renamed first, then its pivots, so an
    # interrupted run leaves neither (and a finished .pt always has its pivots beside it).
    with atomic_output(pivots_out) as tmp_pivots:
        write_latents(tmp_pivots, pivots_result)
        save_generator(out, G, metadata)
    info(
        f"wrote {out} and {pivots_out.name}: LPIPS {result.lpips_start:.4f} -> "
        f"{result.lpips_end:.4f}, L2 {result.l2_start:.4f} -> {result.l2_end:.4f}, "
        f"{result.steps_run} steps{' (early stop)' if result.stopped_early else ''}, "
        f"{result.seconds:.1f} s"
    )
    if as_json:
        print_json({"out": str(out), "pivots": str(pivots_out), **metadata})


def register(app: typer.Typer) -> None:
    app.command("tune-pti")(tune_pti_cmd)
