"""``talkcli animate``: photo + speech -> lip-synced video; one at a time or a whole job list."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from talkcli.commands._common import print_json, weights_dir
from talkcli.commands.options import (
    DETECTOR_OPTION,
    ENCODER_OPTION,
    FACE_INDEX_OPTION,
    GENERATOR_OPTION,
    JSON_OPTION,
    NETWORK_OPTION,
    WEIGHTS_DIR_OPTION,
    Compile,
    Detector,
    DrivingMode,
    Dtype,
    Network,
    Resolution,
    choice_option,
    compile_option,
    dtype_option,
    float_option,
    fps_option,
    int_option,
    seed_option,
    smooth_option,
)
from talkcli.console import BatchProgress, info, settings, status
from talkcli.errors import TalkcliError, UserError
from talkcli.ranges import ANIMATE

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
    driving_neutral: int = int_option(
        0,
        "--driving-neutral",
        range=ANIMATE["driving_neutral"],
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
    detector: Detector = DETECTOR_OPTION,
    face_index: int | None = FACE_INDEX_OPTION,
    generator: Path | None = GENERATOR_OPTION,
    network: Network = NETWORK_OPTION,
    encoder: Path | None = ENCODER_OPTION,
    model: Path | None = typer.Option(
        None,
        "--model",
        help="Audio-to-latent model (.safetensors from `talkcli train fit`; default: registry).",
    ),
    feature_model: Path | None = typer.Option(
        None,
        "--feature-model",
        help="Wav2Vec2/HuBERT folder the --model was trained with (SSL-feature models only).",
    ),
    tune: bool = typer.Option(
        False, "--tune", help="PTI-tune the generator on the photo first (tune-pti's defaults)."
    ),
    tune_steps: int = int_option(
        350, "--tune-steps", range=ANIMATE["tune_steps"], help="PTI steps with --tune."
    ),
    fps: float = fps_option(25.0, "of the video"),
    motion_scale: float = float_option(
        1.0,
        "--motion-scale",
        range=ANIMATE["motion_scale"],
        help="Multiply the predicted displacements (0: the still identity).",
    ),
    smooth: float = smooth_option(0.0, "the predicted displacements"),
    seed: int = seed_option(0, "of PTI with --tune"),
    batch_size: int = int_option(
        4, "--batch-size", range=ANIMATE["batch_size"], help="Frames rendered per generator call."
    ),
    dtype: Dtype = dtype_option("the generator (and PTI with --tune)"),
    compile: Compile = compile_option("of the generator's synthesis"),
    resolution: Resolution | None = choice_option(
        None,
        "--resolution",
        help="Frame size: stop the generator at this block (its skip image; faster). "
        "Default: the generator's full size.",
    ),
    preview: bool = typer.Option(
        False,
        "--preview",
        help="A quick look: --resolution 256 (at most the generator's), the first "
        "--preview-seconds, x264 ultrafast.",
    ),
    preview_seconds: float = float_option(
        5.0,
        "--preview-seconds",
        range=ANIMATE["preview_seconds"],
        help="With --preview: seconds of video rendered from the start.",
    ),
    crf: int = int_option(
        18, "--crf", range=ANIMATE["crf"], help="x264 quality (0 lossless, 18 default)."
    ),
    preset: str = typer.Option(
        "veryfast", "--preset", help="x264 preset (ultrafast ... veryslow)."
    ),
    paste_back: bool = typer.Option(
        False,
        "--paste-back",
        help="Paste the face back into the photo: the video has the photo's size (even-rounded).",
    ),
    feather: float = float_option(
        0.1,
        "--feather",
        range=ANIMATE["feather"],
        help="Paste-back edge blend, fraction of the face.",
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
    # -- issue 16: named controls (docs/animate.md "Expressive motion") --
    directions: Path | None = typer.Option(
        None,
        "--directions",
        help="Directions file (.npz) of the named controls; default: the one `talkcli "
        "directions find` cached for this generator, else `directions.npz` in the weights folder.",
    ),
    blinks: float = float_option(
        0.0,
        "--blinks",
        range=ANIMATE["blinks"],
        help="Blinks per minute (0: none): seeded by --seed, at least 1 s apart, 150-350 ms each.",
    ),
    head_motion: float = float_option(
        0.0,
        "--head-motion",
        range=ANIMATE["head_motion"],
        help="Head motion that follows the speech (nods, turns, sway); 1: natural, 0: none.",
    ),
    control: list[str] | None = typer.Option(
        None,
        "--control",
        help="NAME=VALUE: a static offset in the control's unit on every frame, e.g. smile=0.1 "
        "(repeatable).",
    ),
    pose: str | None = typer.Option(
        None, "--pose", help="yaw=..,pitch=..,roll=..: a static head pose offset in degrees."
    ),
    driving_mode: DrivingMode = choice_option(
        DrivingMode.latent,
        "--driving-mode",
        help="--driving: latent (pSp codes of the driving face) or controls (its measured pose, "
        "eyes, mouth and smile through the directions: its identity cannot leak).",
    ),
    as_json: bool = JSON_OPTION,
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Photo + speech -> a lip-synced talking-head video (the main job)."""
    from talkcli.animate.options import AnimateOptions, parse_edit, parse_layers

    options = AnimateOptions(
        feature_model=str(feature_model) if feature_model is not None else None,
        fps=fps,
        motion_scale=motion_scale,
        smooth=smooth,
        seed=seed,
        batch_size=batch_size,
        dtype=dtype,
        compile=compile,
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
        resolution=int(resolution) if resolution is not None else None,
        **_control_options(directions, blinks, head_motion, control, pose, driving_mode),
    )
    if preview:
        options = options.as_preview(preview_seconds)
    options.check()
    batch = image_dir is not None or audio_dir is not None or jobs is not None
    model_files = {"generator": generator, "encoder": encoder, "model": model, "network": network}
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


def _control_options(
    directions: Path | None,
    blinks: float,
    head_motion: float,
    control: list[str] | None,
    pose: str | None,
    driving_mode: str,
) -> dict[str, Any]:
    """issue 16's options as ``AnimateOptions`` fields."""
    from talkcli.animate.motion.controls import parse_controls

    return {
        "directions": directions.expanduser() if directions else None,
        "blinks": blinks,
        "head_motion": head_motion,
        "controls": parse_controls(control or [], pose),
        "driving_mode": str(driving_mode).lower(),
    }


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
    network,
) -> None:
    """One video: the library's ``animate()`` with a progress bar, then the report."""
    from contextlib import ExitStack

    from rich.progress import TextColumn

    from talkcli.animate.pipeline import animate
    from talkcli.console import progress

    rate = TextColumn("{task.fields[rate]}")
    with ExitStack() as stack:  # the bar starts with the first stage that reports progress
        result = animate(
            image,
            audio,
            out,
            options,
            driving=driving,
            trajectory=trajectory,
            save_trajectory=save_trajectory,
            generator=generator,
            encoder=encoder,
            model=model,
            weights_dir=wdir,
            network=network,
            cache_dir=cache_dir,
            use_cache=use_cache,
            device=settings.device,
            progress=_progress_update(lambda: stack.enter_context(progress(rate))),
        )
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


def _progress_update(open_bar: Callable[[], Any]) -> Callable[[str, int, int], None]:
    """One bar per stage (PTI steps, rendered frames), with its rate, from its first update;
    the progress display is opened (``open_bar``) on the first update of any stage."""
    import time

    bars: list[Any] = []  # the rich Progress, once opened
    tasks: dict[str, object] = {}
    started: dict[str, float] = {}

    def update(stage: str, done: int, total: int) -> None:
        if not bars:
            bars.append(open_bar())
        bar = bars[0]
        if stage not in tasks:
            label = "tune (PTI)" if stage == "tune" else "render"
            tasks[stage] = bar.add_task(label, total=total, rate="")
            started[stage] = time.perf_counter()
        elapsed = time.perf_counter() - started[stage]
        unit = "steps/s" if stage == "tune" else "frames/s"
        shown = f"{done / elapsed:.1f} {unit}" if elapsed > 0 and done else ""
        bar.update(tasks[stage], completed=done, total=total, rate=shown)

    return update


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
    network,
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
    from talkcli.weights.outputs import guard_outputs

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
        network=network,
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
