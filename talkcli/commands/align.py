"""``talkcli align``: FFHQ-align face photos and videos (PNG/MP4 + sidecar JSON per input)."""

from __future__ import annotations

from pathlib import Path

import typer

from talkcli.commands._common import print_json, weights_dir
from talkcli.commands.options import (
    DETECTOR_OPTION,
    FACE_INDEX_OPTION,
    JSON_OPTION,
    WEIGHTS_DIR_OPTION,
    Detector,
    fps_option,
    int_option,
    smooth_option,
)
from talkcli.console import BatchProgress, info, progress, settings, status
from talkcli.errors import OutputError, UserError
from talkcli.ranges import ALIGN


def align_cmd(
    inputs: list[str] = typer.Argument(
        ..., help="Face photos or videos: files, folders, globs (quote globs)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder: <stem>.png|.mp4 and <stem>.json per input."
    ),
    size: int = int_option(
        1024, "--size", range=ALIGN["size"], help="Output size in pixels (square)."
    ),
    detector: Detector = DETECTOR_OPTION,
    landmarks: Path | None = typer.Option(
        None,
        "--landmarks",
        help=r'JSON {"landmarks": \[\[x, y], ...]} (68 or 5 points), or for a video '
        r'{"frames": \[\[\[x, y], ...], ...]}; skips detection. Single input only.',
    ),
    face_index: int | None = FACE_INDEX_OPTION,
    fps: float = fps_option(25.0, "videos are resampled to it"),
    detect_every: int = int_option(
        1,
        "--detect-every",
        range=ALIGN["detect_every"],
        help="Video: detect every N frames, interpolate in between.",
    ),
    detect_batch: int = int_option(
        8,
        "--detect-batch",
        range=ALIGN["detect_batch"],
        help="Video: key frames per detector call (batched on a GPU; 1 = one at a time).",
    ),
    smooth: float = smooth_option(1.0, "a video's crop centre (3x on its axes, as STIT)"),
    exact_warp: bool | None = typer.Option(
        None,
        "--exact-warp/--fast-warp",
        help="NVlabs' exact 4096 warp (default for images) or one fast warp (default for video).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Skip inputs already aligned in --out with the same options (redo the others).",
    ),
    as_json: bool = JSON_OPTION,
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Align faces as FFHQ (NVlabs recreate_aligned_images) for inversion and training."""
    from talkcli.face.align import (
        STATUS_FILE,
        AlignConfig,
        align_inputs,
        collect_inputs,
        output_paths,
    )
    from talkcli.weights.outputs import guard_outputs

    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: --out must be a folder")
    paths = collect_inputs(inputs)
    from talkcli.device import resolve_device

    device = str(resolve_device(settings.device))
    cfg = AlignConfig(
        size=size,
        detector=detector,
        landmarks_file=landmarks,
        face_index=face_index,
        fps=fps,
        detect_every=detect_every,
        detect_batch=detect_batch,
        smooth=smooth,
        exact_warp=exact_warp,
        resume=resume,
        weights_dir=weights_dir(wdir),
        device=device,
    )
    cfg.check()
    from talkcli.io.files import ensure_folder

    ensure_folder(out, "--out folder")
    planned = [p for path in paths for p in output_paths(path, out)]
    guard_outputs(
        [*planned, out / STATUS_FILE if len(paths) > 1 else None],
        inputs=[*paths, landmarks],
        weights_dir=cfg.weights_dir,
    )

    with progress() as bar:
        bars = BatchProgress(bar, "align", len(paths))

        def on_item(res) -> None:
            bars.done()
            _report_item(res)

        results = align_inputs(
            paths, out, cfg, on_item=on_item, progress=lambda path: bars.item(path.name)
        )

    ok = sum(r.status == "ok" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    failed = [r for r in results if r.status == "failed"]
    if as_json:
        print_json({"out": str(out), "items": [r.to_dict() for r in results]})
    else:
        for r in results:
            if r.output is not None and r.status == "ok":
                print(r.output)
    info(f"aligned {ok}, skipped {skipped}, failed {len(failed)} (of {len(results)}) -> {out}")
    if failed:
        raise UserError(
            f"{len(failed)} of {len(results)} input(s) failed, first {failed[0].message}; "
            f"see {out / STATUS_FILE} (rerun with --resume after fixing)"
        )


def _report_item(res) -> None:  # talkcli.face.align.ItemResult
    if res.status == "failed":
        status("failed:", "red", res.message)
    elif res.status == "skipped":
        info(f"skipped {res.source} (already aligned)")
    else:
        faces = f", {res.faces} faces found (using one)" if res.faces > 1 else ""
        frames = f", {res.frames} frames" if res.kind == "video" else ""
        info(f"aligned {res.source} -> {res.output}{frames}{faces}")


def register(app: typer.Typer) -> None:
    app.command("align")(align_cmd)
