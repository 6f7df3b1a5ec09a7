"""``talkcli animate``: photo + speech -> lip-synced video; one at a time or a whole job list."""

from __future__ import annotations

from pathlib import Path

import typer

from talkcli.commands._common import WEIGHTS_DIR_OPTION, print_json, weights_dir
from talkcli.console import BatchProgress, info, settings, status
from talkcli.errors import TalkcliError, UserError
from talkcli.guards import SEED_MAX

DTYPES = ("fp32", "fp16", "bf16")  # talkcli.animate.options.DTYPES
SUMMARY_ROWS = 50  # rows of the batch summary table (the JSON report has them all)


def animate_cmd(
    image: Path | None = typer.Option(
        None, "--image", "-i", help="The face photo (any size; aligned automatically)."
    ),
    audio: Path | None = typer.Option(
        None,
        "--audio",
        "-a",
        help="The speech: any format ffmpeg reads, or a video (its soundtrack).",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Output video (.mp4). Default: <image stem>-<audio stem>.mp4 in this folder. "
        "The run manifest is written beside it (<stem>.json).",
    ),
    driving: Path | None = typer.Option(
        None,
        "--driving",
        help="Drive the face with another face's video instead of --audio (reenactment); "
        "its sound becomes the soundtrack.",
    ),
    driving_neutral: int = typer.Option(
        0,
        "--driving-neutral",
        min=0,
        max=1_000_000,
        help="Frame of the driving clip whose face counts as no motion.",
    ),
    driving_aligned: bool = typer.Option(
        False, "--driving-aligned", help="The driving clip is already aligned (`talkcli align`)."
    ),
    aligned: bool = typer.Option(
        False, "--aligned", help="The photo is already an aligned face (skip detection)."
    ),
    landmarks: Path | None = typer.Option(
        None,
        "--landmarks",
        help=r'Landmarks of the photo instead of detection: JSON {"landmarks": \[\[x, y], ...]} '
        "(68 or 5 points).",
    ),
    detector: str = typer.Option(
        "auto", "--detector", help="Face landmarks: auto (FAN if present, else MTCNN), fan, mtcnn."
    ),
    face_index: int | None = typer.Option(
        None, "--face-index", min=0, max=99, help="Which face when several: 0 = largest."
    ),
    generator: Path | None = typer.Option(
        None,
        "--generator",
        help="StyleGAN2 .pt, e.g. a `tune-pti` result (default: registry, else pSp's decoder).",
    ),
    encoder: Path | None = typer.Option(
        None, "--encoder", help="pSp checkpoint (default: registry)."
    ),
    model: Path | None = typer.Option(
        None,
        "--model",
        help="Audio-to-latent model (.safetensors from `talkcli train fit`; default: registry).",
    ),
    tune: bool = typer.Option(
        False, "--tune", help="PTI-tune the generator on the photo first (tune-pti's defaults)."
    ),
    tune_steps: int = typer.Option(
        350, "--tune-steps", min=0, max=100_000, help="PTI steps with --tune."
    ),
    fps: float = typer.Option(25.0, "--fps", min=1.0, max=120.0, help="Video frame rate."),
    motion_scale: float = typer.Option(
        1.0,
        "--motion-scale",
        min=-10.0,
        max=10.0,
        help="Multiply the predicted displacements (0: the still identity).",
    ),
    smooth: float = typer.Option(
        0.0,
        "--smooth",
        min=0.0,
        max=50.0,
        help="Temporal Gaussian on the displacements, sigma in frames (0: off).",
    ),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Random seed (PTI)."),
    batch_size: int = typer.Option(
        4, "--batch-size", min=1, max=256, help="Frames rendered per generator call."
    ),
    dtype: str = typer.Option(
        "fp32", "--dtype", help="Rendering precision: fp32, bf16 (CPU too) or fp16 (autocast)."
    ),
    crf: int = typer.Option(
        18, "--crf", min=0, max=51, help="x264 quality (0 lossless, 18 default)."
    ),
    preset: str = typer.Option(
        "veryfast", "--preset", help="x264 preset (ultrafast ... veryslow)."
    ),
    paste_back: bool = typer.Option(
        False,
        "--paste-back",
        help="Paste the face back into the photo: the video has the photo's size (even-rounded).",
    ),
    feather: float = typer.Option(
        0.1, "--feather", min=0.0, max=0.5, help="Paste-back edge blend, fraction of the face."
    ),
    save_trajectory: Path | None = typer.Option(
        None,
        "--save-trajectory",
        help="Also save the W+ trajectory (.npz: w (T, n_latent, 512), w_identity, fps).",
    ),
    from_trajectory: Path | None = typer.Option(
        None,
        "--from-trajectory",
        help="Render a saved (edited) trajectory; no audio model needed. --audio: soundtrack.",
    ),
    edit: list[str] | None = typer.Option(
        None,
        "--edit",
        help="FILE:STRENGTH, a W or W+ direction (.npy/.npz: InterFaceGAN, GANSpace) added to "
        "every frame; repeatable.",
    ),
    edit_layers: str | None = typer.Option(
        None, "--edit-layers", help="A-B: apply --edit only to style layers A..B (from 0)."
    ),
    cache_dir: Path | None = typer.Option(
        None,
        "--cache-dir",
        help="Cache of alignments, identity codes, tuned generators "
        "(default: the user cache, ~/.cache/talkcli/animate on Linux).",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the cache."),
    image_dir: Path | None = typer.Option(
        None, "--image-dir", help="Batch: a folder of photos (with --audio-dir)."
    ),
    audio_dir: Path | None = typer.Option(
        None, "--audio-dir", help="Batch: a folder of recordings, paired with photos by name."
    ),
    all_pairs: bool = typer.Option(
        False, "--all-pairs", help="Batch: every photo with every recording."
    ),
    jobs: Path | None = typer.Option(
        None,
        "--jobs",
        help="Batch: a CSV with columns image, audio, out and optional per-row options.",
    ),
    out_dir: Path | None = typer.Option(
        None, "--out-dir", help="Batch: folder for the videos and the report (default: here)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Batch: skip videos already made with the same options."
    ),
    shard: str | None = typer.Option(
        None,
        "--shard",
        help="Batch: do part K of N of the job list (K from 0); default from torchrun/Slurm.",
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Batch: JSON report (default: OUT-DIR/animate-report.json)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Photo + speech -> a lip-synced talking-head video (the main job)."""
    from talkcli.animate.options import AnimateOptions, parse_edit, parse_layers

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    options = AnimateOptions(
        fps=fps,
        motion_scale=motion_scale,
        smooth=smooth,
        seed=seed,
        batch_size=batch_size,
        dtype=dtype,
        crf=crf,
        preset=preset,
        paste_back=paste_back,
        feather=feather,
        aligned=aligned,
        landmarks=landmarks.expanduser() if landmarks else None,
        detector=detector.lower(),
        face_index=face_index,
        tune=tune,
        tune_steps=tune_steps,
        edits=[parse_edit(e) for e in edit or []],
        edit_layers=parse_layers(edit_layers) if edit_layers else None,
        driving_neutral=driving_neutral,
        driving_aligned=driving_aligned,
    ).check()
    batch = image_dir is not None or audio_dir is not None or jobs is not None
    model_files = {"generator": generator, "encoder": encoder, "model": model}
    if batch:
        single_only = {
            "--image": image,
            "--audio": audio,
            "--out": out,
            "--driving": driving,
            "--save-trajectory": save_trajectory,
            "--from-trajectory": from_trajectory,
            "--landmarks": landmarks,
        }
        given = [name for name, value in single_only.items() if value is not None]
        if given:
            raise UserError(
                f"{', '.join(given)}: one video's options; a batch takes --image-dir/--audio-dir "
                "or --jobs (per-row options go in the CSV)"
            )
        _run_batch(
            options,
            image_dir=image_dir,
            audio_dir=audio_dir,
            all_pairs=all_pairs,
            jobs=jobs,
            out_dir=out_dir,
            resume=resume,
            shard=shard,
            report=report,
            cache_dir=cache_dir,
            use_cache=not no_cache,
            as_json=as_json,
            wdir=weights_dir(wdir),
            **model_files,
        )
        return
    batch_only = {
        "--out-dir": out_dir,
        "--resume": resume or None,
        "--shard": shard,
        "--report": report,
        "--all-pairs": all_pairs or None,
    }
    given = [name for name, value in batch_only.items() if value is not None]
    if given:
        raise UserError(
            f"{', '.join(given)}: batch options (with --image-dir/--audio-dir or --jobs)"
        )
    _run_single(
        options,
        image=image,
        audio=audio,
        out=out,
        driving=driving,
        trajectory=from_trajectory,
        save_trajectory=save_trajectory,
        cache_dir=cache_dir,
        use_cache=not no_cache,
        as_json=as_json,
        wdir=weights_dir(wdir),
        **model_files,
    )


def _paths(*items: Path | None) -> list[Path | None]:
    return [p.expanduser() if p is not None else None for p in items]


def _run_single(
    options,
    *,
    image,
    audio,
    out,
    driving,
    trajectory,
    save_trajectory,
    cache_dir,
    use_cache,
    as_json,
    wdir,
    generator,
    encoder,
    model,
) -> None:
    from rich.progress import TextColumn

    from talkcli.animate.cache import Cache
    from talkcli.animate.pipeline import (
        Job,
        Models,
        Needs,
        animate_device,
        animate_job,
        default_out,
        resolve_models,
    )
    from talkcli.console import progress

    image, audio, out, driving, trajectory, save_trajectory = _paths(
        image, audio, out, driving, trajectory, save_trajectory
    )
    job = Job(
        out=out or default_out(image, audio or driving or trajectory),
        image=image,
        audio=audio,
        driving=driving,
        trajectory=trajectory,
        save_trajectory=save_trajectory,
        options=options,
    ).check()
    job.require_inputs()
    cache = Cache(cache_dir, enabled=use_cache)
    paths = resolve_models(
        Needs.of([job]),
        generator=generator,
        encoder=encoder,
        model=model,
        detector=options.detector,
        weights_dir=wdir,
    )
    models = Models(paths, animate_device(settings.device), cache, wdir)
    rate = TextColumn("{task.fields[rate]}")
    with progress(rate) as bar:
        tasks: dict[str, object] = {}
        started: dict[str, float] = {}

        def update(stage: str, done: int, total: int) -> None:
            import time

            if stage not in tasks:
                label = "tune (PTI)" if stage == "tune" else "render"
                tasks[stage] = bar.add_task(label, total=total, rate="")
                started[stage] = time.perf_counter()
            elapsed = time.perf_counter() - started[stage]
            unit = "steps/s" if stage == "tune" else "frames/s"
            shown = f"{done / elapsed:.1f} {unit}" if elapsed > 0 and done else ""
            bar.update(tasks[stage], completed=done, total=total, rate=shown)

        result = animate_job(job, models, cache, progress=update)
    hits = ", ".join(
        f"{k} {v}" for k, v in result.cache.items() if k in ("align", "identity", "tune")
    )
    info(
        f"wrote {result.out} ({result.frames} frames, {result.width}x{result.height}, "
        f"{result.frames / result.fps:.2f} s) in {result.timings['total']:.1f} s; cache: {hits}"
    )
    if as_json:
        print_json(result.to_dict())
    else:
        print(result.out)


def _run_batch(
    options,
    *,
    image_dir,
    audio_dir,
    all_pairs,
    jobs,
    out_dir,
    resume,
    shard,
    report,
    cache_dir,
    use_cache,
    as_json,
    wdir,
    generator,
    encoder,
    model,
) -> None:
    from talkcli.animate.batch import (
        check_unique_outputs,
        pair_jobs,
        read_jobs_csv,
        report_path,
        run_batch,
    )
    from talkcli.animate.cache import Cache
    from talkcli.animate.pipeline import Models, Needs, animate_device, resolve_models
    from talkcli.console import progress
    from talkcli.distributed import resolve_shard
    from talkcli.guards import guard_outputs

    if jobs is not None and (image_dir is not None or audio_dir is not None):
        raise UserError("--jobs or --image-dir/--audio-dir: one job list at a time")
    if jobs is None and (image_dir is None or audio_dir is None):
        raise UserError("a folder batch needs both --image-dir and --audio-dir")
    from talkcli.io.files import ensure_folder

    out_dir = ensure_folder(out_dir or Path("."), "--out-dir folder")
    notes: list[str] = []
    if jobs is not None:
        planned = read_jobs_csv(jobs.expanduser(), out_dir, options)
    else:
        planned = pair_jobs(
            image_dir, audio_dir, out_dir, options, all_pairs=all_pairs, notes=notes
        )
    check_unique_outputs(planned)
    k, n = resolve_shard(shard)
    report_file = report_path(out_dir, (k, n), report.expanduser() if report else None)
    guard_outputs([report_file], inputs=[jobs], weights_dir=wdir)
    cache = Cache(cache_dir, enabled=use_cache)
    mine = [p.job for p in planned[k::n] if p.job is not None]
    needs = Needs.of(mine)
    paths = resolve_models(
        needs,
        generator=generator,
        encoder=encoder,
        model=model,
        detector=options.detector,
        weights_dir=wdir,
    )
    models = Models(paths, animate_device(settings.device), cache, wdir)
    models.preflight(needs)
    for note in notes:
        info(note)
    if n > 1:
        info(f"shard {k}/{n}: {len(planned[k::n])} of {len(planned)} job(s)")

    with progress() as bar:
        bars = BatchProgress(bar, "animate", len(planned[k::n]), always=True)
        current = {"update": bars.item("  frames")}

        def on_start(item) -> None:
            current["update"] = bars.item("  frames")

        def frames(stage: str, done: int, total: int) -> None:
            if stage == "render":
                current["update"](done, total)

        def on_item(res) -> None:
            bars.done()
            if res.status == "failed":
                status("failed:", "red", f"{res.label}: {res.message}")

        result = run_batch(
            planned,
            models,
            cache,
            shard=(k, n),
            resume=resume,
            report=report_file,
            on_item=on_item,
            on_start=on_start,
            progress=frames,
            notes=notes,
            debug=settings.debug,
        )
    if as_json:
        print_json({**result.to_dict(), "report": str(report_file)})
    else:
        _summary_table(result)
    info(
        f"made {result.count('ok')}, skipped {result.count('skipped')}, failed "
        f"{result.count('failed')} (of {len(result.items)}) in {result.seconds:.1f} s; "
        f"report {report_file}"
    )
    failed = result.failed
    if failed:
        message = (
            f"{len(failed)} of {len(result.items)} video(s) failed, first {failed[0].label}: "
            f"{failed[0].message}; see {report_file} (rerun with --resume after fixing)"
        )
        if any(r.bug for r in failed):
            raise TalkcliError(message)  # exit 1: at least one was a bug
        raise UserError(message)


def _summary_table(result) -> None:  # talkcli.animate.batch.BatchReport
    from rich.markup import escape
    from rich.table import Table

    from talkcli.console import console

    if settings.quiet or not result.items:
        return
    table = Table(title="animate", show_lines=False)
    for column in ("#", "item", "status", "frames", "s", "cache / message"):
        table.add_column(column, overflow="fold")
    styles = {"ok": "green", "skipped": "yellow", "failed": "red"}
    for r in result.items[:SUMMARY_ROWS]:
        detail = r.message or ", ".join(f"{k} {v}" for k, v in r.cache.items())
        table.add_row(
            str(r.index),
            escape(r.label),
            f"[{styles[r.status]}]{r.status}[/]",
            str(r.frames or ""),
            f"{r.seconds:.1f}",
            escape(detail),
        )
    console.print(table)
    if len(result.items) > SUMMARY_ROWS:
        console.print(f"... and {len(result.items) - SUMMARY_ROWS} more (see the JSON report)")


def register(app: typer.Typer) -> None:
    app.command("animate")(animate_cmd)
