"""``talkcli train``: prepare a dataset, compute a PCA basis, fit the audio-to-latent model."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from talkcli.commands._common import print_json, weights_dir
from talkcli.commands.options import (
    DETECTOR_OPTION,
    GENERATOR_OPTION,
    JSON_OPTION,
    WEIGHTS_DIR_OPTION,
    Arch,
    BestBy,
    Compile,
    Detector,
    Dtype,
    Features,
    IdentityInput,
    choice_option,
    compile_option,
    feature_layer_option,
    feature_model_option,
    float_option,
    fps_option,
    int_option,
    seed_option,
    smooth_option,
)
from talkcli.console import BatchProgress, info, progress, settings, warn
from talkcli.errors import UserError
from talkcli.ranges import TRAIN_FIT, TRAIN_PCA, TRAIN_PREPARE

if TYPE_CHECKING:
    from talkcli.train.fit import FitOutputs, FitResult

PLOT_EVERY_S = 60.0  # --plot is redrawn during training at most this often

train_app = typer.Typer(
    help=(
        "Train the audio-to-latent model on your talking-head videos: prepare -> (pca) -> fit. "
        "Multi-GPU: run `fit` (and `prepare`) under torchrun."
    ),
    no_args_is_help=True,
)


def _torch_device(local_rank: int | None = None):
    """The --device for this process; under torchrun CUDA ranks take their own GPU
    (``talkcli.device.choose_device``: cuda:(LOCAL_RANK % GPUs))."""
    from talkcli.device import choose_device

    return choose_device(settings.device)


@train_app.command("prepare")
def prepare_cmd(
    videos: list[str] = typer.Argument(
        ..., help="Talking-head videos: files, folders (searched recursively) or globs."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create or extend."),
    fps: float = fps_option(25.0, "the videos are sampled at it"),
    aligned: bool = typer.Option(
        False, "--aligned", help="Inputs already are FFHQ-aligned crops (skip alignment)."
    ),
    align_size: int = int_option(
        256,
        "--align-size",
        range=TRAIN_PREPARE["align_size"],
        help="Aligned crop size fed to pSp (256 is its input).",
    ),
    detector: Detector = DETECTOR_OPTION,
    smooth: float = smooth_option(1.0, "a video's crop centre (3x on its axes, as STIT)"),
    audio_dir: Path | None = typer.Option(
        None, "--audio-dir", help="Folder of separate audio files, paired with videos by stem."
    ),
    speaker_level: int = int_option(
        1,
        "--speaker-level",
        range=TRAIN_PREPARE["speaker_level"],
        help="Speaker = folder this many levels above the file (1 = parent; 0 = file name).",
    ),
    speaker_regex: str | None = typer.Option(
        None, "--speaker-regex", help="Speaker = this regex's group 1 (or match) on the path."
    ),
    holdout: str = typer.Option(
        "10%",
        "--holdout-speakers",
        help="Validation speakers: N, P% or a comma-separated list of names (0: none).",
    ),
    batch_size: int = int_option(
        16, "--batch-size", range=TRAIN_PREPARE["batch_size"], help="Frames per pSp batch."
    ),
    encoder: Path | None = typer.Option(
        None, "--encoder", help="pSp or e4e file (default: registry pSp)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Skip videos already prepared."),
    shard: str | None = typer.Option(
        None, "--shard", help="Do share K of N (K from 0); default from torchrun/Slurm variables."
    ),
    keep_aligned: bool = typer.Option(
        False, "--keep-aligned", help="Keep the aligned clips in DATA/aligned/."
    ),
    allow_failed: bool = typer.Option(
        False, "--allow-failed", help="Exit 0 when some videos failed (they are still skipped)."
    ),
    seed: int = seed_option(0, "of the speaker split"),
    features: Features = choice_option(
        Features.mfcc,
        "--features",
        help="Also store Wav2Vec2/HuBERT rows (fp16) beside the MFCCs; with --resume, adds them "
        "to videos already prepared.",
    ),
    feature_model: Path | None = feature_model_option(),
    feature_layer: int | None = feature_layer_option(),
    dtype: Dtype = choice_option(
        Dtype.fp32,
        "--dtype",
        help="Precision of the pSp encoder: fp32 (default: bf16 codes moved a small-motion "
        "corpus' fit loss by 55 %, docs/speed.md), auto (bf16 autocast where native), bf16, fp16.",
    ),
    compile: Compile = compile_option("of pSp (auto: runs of roughly 15+ minutes of encoding)"),
    as_json: bool = JSON_OPTION,
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Encode videos into a training dataset: pSp W+ per frame (fp16) + MFCC of the soundtrack."""
    from talkcli.distributed import resolve_shard, torchrun_env
    from talkcli.train.prepare import PrepareConfig, collect_videos, plan_items, prepare_dataset
    from talkcli.weights import registry

    k, n = resolve_shard(shard)
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out must be a folder")
    wd = weights_dir(wdir)
    inside = str(out.resolve()) + os.sep
    # inputs first: a mistyped folder is named as such, not as missing model files
    paths = [p for p in collect_videos(videos) if not str(p).startswith(inside)]  # DATA/aligned/
    if not paths:
        raise UserError(f"no input videos outside the dataset folder {out}")
    items = plan_items(paths, audio_dir, speaker_level, speaker_regex)
    encoder_path = registry.resolve_option(encoder, "psp-ffhq-encode", wd, "train prepare")
    cfg = PrepareConfig(
        fps=fps,
        aligned=aligned,
        align_size=align_size,
        detector=detector,
        smooth=smooth,
        batch_size=batch_size,
        resume=resume,
        keep_aligned=keep_aligned,
        holdout=holdout,
        seed=seed,
        weights_dir=wd,
        device=str(_torch_device(torchrun_env().local_rank)),
        features=str(features),
        feature_model=feature_model,
        feature_layer=feature_layer,
        dtype=dtype,
        compile=compile,
    )
    cfg.check()
    share = f" (shard {k}/{n})" if n > 1 else ""
    info(f"preparing {len(items)} video(s){share} into {out} on {cfg.device}")
    with progress() as bar:
        bars = BatchProgress(bar, "videos", len(items[k::n]), always=True)
        current = {"name": None, "update": None}

        def on_progress(name: str, done: int, total: int | None) -> None:
            if current["name"] != name:
                current.update(name=name, update=bars.item(name))
            current["update"](done, total)

        def on_item(rec: dict) -> None:
            bars.done()
            current["name"] = None
            if rec.get("status") == "failed":
                warn(f"skipped {rec['source']}: {rec['message']}")

        result = prepare_dataset(
            items, out, cfg, encoder_path, (k, n), on_item=on_item, progress=on_progress
        )
    summary = result.index["summary"]
    failed = [r for r in result.records if r.get("status") == "failed"]
    mine = {
        "prepared": result.count("ok") - len(result.skipped),
        "skipped": len(result.skipped),
        "failed": len(failed),
    }
    if as_json:
        print_json({"out": str(out), "shard": [k, n], **mine, "dataset": summary})
    info(
        f"this process: prepared {mine['prepared']}, already done {mine['skipped']}, failed "
        f"{mine['failed']}; dataset {out}: {summary['ok']} video(s), {summary['frames']} frames "
        f"(train {summary['train_frames']}, val {summary['val_frames']}), "
        f"{summary['failed']} failed, {summary['pending']} pending"
    )
    if summary["ok"] == 0 and summary["pending"] == 0:
        first = failed[0]["message"] if failed else "no video"
        raise UserError(f"{out}: no usable video ({len(failed)} failed, first: {first})")
    if failed and not allow_failed:
        raise UserError(
            f"{len(failed)} of {len(result.records)} video(s) failed (first: "
            f"{failed[0]['message']}); the dataset holds the rest (see {out / 'index.json'}; "
            "--allow-failed exits 0)"
        )


@train_app.command("pca")
def pca_cmd(
    data: Path = typer.Argument(..., help="Dataset folder made by `train prepare`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (mean, basis, variances)."),
    components: int = int_option(
        2500,
        "--components",
        "-k",
        range=TRAIN_PCA["components"],
        help="Principal components to keep.",
    ),
    max_frames: int = int_option(
        100_000,
        "--max-frames",
        range=TRAIN_PCA["max_frames"],
        help="Use at most N training frames.",
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Explained-variance curve (PNG...)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """PCA basis of the training split's W+ codes (the thesis used pSp-encoded FFHQ)."""
    from talkcli.train.dataset import load_dataset
    from talkcli.train.fit import pca_from_videos
    from talkcli.train.pca import save_pca
    from talkcli.weights.outputs import guard_outputs

    if out.suffix != ".npz":
        raise UserError(f"{out}: a PCA is saved as .npz (use a name ending in .npz)")
    if plot is not None:
        from talkcli.plots import check_plot_path

        check_plot_path(plot)
    guard_outputs([out, plot])
    ds = load_dataset(data)
    videos = ds.split("train")
    if not videos:
        raise UserError(f"{data}: no training videos (every speaker is held out)")
    info(f"PCA of {min(ds.frames('train'), max_frames)} frames from {len(videos)} video(s)")
    pca = pca_from_videos(videos, components, max_frames)
    save_pca(out, pca)
    explained = float(pca.explained_ratio.sum())
    info(f"wrote {out}: {pca.k} components explain {explained:.1%} of the variance")
    if plot is not None:
        from talkcli.plots import plot_pca_variance

        plot_pca_variance(plot, pca.explained_ratio, title=f"PCA of {pca.n_samples} codes")
        info(f"wrote {plot}")
    if as_json:
        print_json(
            {"out": str(out), "components": pca.k, "frames": pca.n_samples, "explained": explained}
        )


@train_app.command("fit")
def fit_cmd(
    data: Path = typer.Argument(..., help="Dataset folder made by `train prepare`."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Best model (.safetensors); NAME.last / NAME.state.pt beside it."
    ),
    epochs: int = int_option(
        20, "--epochs", range=TRAIN_FIT["epochs"], help="Passes over the clips."
    ),
    batch_size: int = int_option(
        16,
        "--batch-size",
        range=TRAIN_FIT["batch_size"],
        help="Clips per step (per process under torchrun).",
    ),
    seq_len: int = int_option(
        16, "--seq-len", range=TRAIN_FIT["seq_len"], help="Consecutive frames per clip."
    ),
    lr: float = float_option(2e-4, "--lr", range=TRAIN_FIT["lr"], help="Adam learning rate."),
    latent_weight: float = float_option(
        250.0,
        "--latent-weight",
        range=TRAIN_FIT["latent_weight"],
        help="Weight of the W+ L2 term, per code value (thesis 250; the plain sum over the "
        "18x512 values is 250*9216 = 2304000).",
    ),
    lpips_weight: float = float_option(
        1.0,
        "--lpips-weight",
        range=TRAIN_FIT["lpips_weight"],
        help="Weight of LPIPS-vgg between G(predicted) and G(target); 0 skips rendering.",
    ),
    lpips_frames: int = int_option(
        0,
        "--lpips-frames",
        range=TRAIN_FIT["lpips_frames"],
        help="Render only N random frames per clip (0: all).",
    ),
    lpips_size: int = int_option(
        256,
        "--lpips-size",
        range=TRAIN_FIT["lpips_size"],
        help="Images are shrunk to this size for LPIPS.",
    ),
    lr_decay: float = float_option(
        0.5,
        "--lr-decay",
        range=TRAIN_FIT["lr_decay"],
        help="LR factor when validation stops improving.",
    ),
    lr_patience: int = int_option(
        2,
        "--lr-patience",
        range=TRAIN_FIT["lr_patience"],
        help="Epochs without improvement before decay.",
    ),
    components: int | None = int_option(
        None,
        "--components",
        "-k",
        range=TRAIN_FIT["components"],
        help="PCA components (default 2500, capped by the data; or all of --pca).",
    ),
    pca: Path | None = typer.Option(None, "--pca", help="PCA .npz from `train pca` or elsewhere."),
    pca_frames: int = int_option(
        100_000, "--pca-frames", range=TRAIN_FIT["pca_frames"], help="Frames used for the PCA."
    ),
    arch: Arch = choice_option(
        Arch.thesis, "--arch", help="thesis (tables 4.3/4.4) or tiny (tests)."
    ),
    features: Features | None = choice_option(
        None,
        "--features",
        help="Features to train on when the dataset holds several (default: its SSL kind if "
        "it holds exactly one, else mfcc).",
    ),
    identity: IdentityInput = choice_option(
        IdentityInput.pca,
        "--identity",
        help="Decoder input: the identity's PCA coordinates (thesis) or none (small datasets).",
    ),
    identity_dropout: float = float_option(
        0.0,
        "--identity-dropout",
        range=TRAIN_FIT["identity_dropout"],
        help="Chance a training clip sees no identity (few speakers: try 0.5; 0: thesis).",
    ),
    identity_augment: float = float_option(
        0.0,
        "--identity-augment",
        range=TRAIN_FIT["identity_augment"],
        help="Chance a training clip is conditioned on another clip's (speaker's) identity.",
    ),
    normalise: bool = typer.Option(
        False,
        "--normalise/--no-normalise",
        help="Scale identity coordinates and the output by the data's spreads.",
    ),
    best_by: BestBy = choice_option(
        BestBy.r,
        "--best-by",
        help="Best epoch (NAME.safetensors): highest held-out-identity r (r; the validation "
        "loss without held-out speakers) or lowest validation loss (loss).",
    ),
    generator: Path | None = GENERATOR_OPTION,
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue from a training state file (NAME.state.pt)."
    ),
    seed: int = seed_option(0),
    workers: int = int_option(
        0, "--workers", range=TRAIN_FIT["workers"], help="Data loader processes."
    ),
    steps_per_epoch: int = int_option(
        0,
        "--steps-per-epoch",
        range=TRAIN_FIT["steps_per_epoch"],
        help="Cap steps per epoch (0: all).",
    ),
    log: Path | None = typer.Option(None, "--log", help="JSONL log (default NAME.log.jsonl)."),
    plot: Path | None = typer.Option(None, "--plot", help="Training curves picture (PNG...)."),
    as_json: bool = JSON_OPTION,
    wdir: Path | None = WEIGHTS_DIR_OPTION,
) -> None:
    """Train the audio encoder and decoder (thesis stage 1; pSp and G frozen)."""
    from talkcli.distributed import torchrun_env
    from talkcli.train.dataset import read_index
    from talkcli.train.fit import FitConfig, FitOutputs, fit, fit_input_files
    from talkcli.weights.outputs import guard_outputs

    if out.suffix != ".safetensors":
        raise UserError(f"{out}: the model is saved as .safetensors (use a name ending in it)")
    cfg = FitConfig(
        epochs=epochs,
        batch_size=batch_size,
        seq_len=seq_len,
        lr=lr,
        latent_weight=latent_weight,
        lpips_weight=lpips_weight,
        lpips_frames=lpips_frames,
        lpips_size=lpips_size,
        lr_decay=lr_decay,
        lr_patience=lr_patience,
        components=components,
        pca_frames=pca_frames,
        arch=str(arch),  # the plain name: asdict(cfg) goes into the checkpoints
        seed=seed,
        workers=workers,
        steps_per_epoch=steps_per_epoch,
        identity=str(identity),
        identity_dropout=identity_dropout,
        identity_augment=identity_augment,
        best_by=str(best_by),
        normalise=normalise,
        features=features,
    )
    cfg.check()
    read_index(data)  # a missing or foreign dataset folder is named before any model file
    env = torchrun_env()
    outputs = FitOutputs.beside(out, log, plot)
    if plot is not None:
        from talkcli.plots import check_plot_path

        check_plot_path(plot)
    wd = weights_dir(wdir)
    generator_path, lpips_paths = _fit_model_files(generator, lpips_weight > 0, wd)
    inputs = fit_input_files(
        outputs, generator_path, pca_path=pca, resume=resume, lpips_paths=lpips_paths
    )
    guard_outputs(outputs.all(), inputs=inputs, weights_dir=wd)
    device = _torch_device(env.local_rank if env.distributed else None)
    if env.is_main:
        where = f"{env.world_size} processes" if env.distributed else str(device)
        info(f"training on {data} ({where}); writing {out}")
    with progress() as bar:
        report = _FitProgress(bar, plot)
        result = fit(
            data,
            outputs,
            cfg,
            generator_path,
            pca_path=pca,
            resume=resume,
            lpips_paths=lpips_paths,
            device=device,
            env=env,
            on_epoch=report.epoch,
            on_step=report.step if env.is_main else None,
        )
    if env.is_main:
        _report_fit(result, outputs, seq_len, plot, as_json)


def _fit_model_files(
    generator: Path | None, with_lpips: bool, wd: Path
) -> tuple[Path, tuple[Path, Path] | None]:
    """(generator file, LPIPS-vgg backbone and heads when the LPIPS term is on) for ``fit``."""
    from talkcli.runtime import generator_file
    from talkcli.weights import registry

    generator_path = generator_file(
        generator, wd, registry.locate("psp-ffhq-encode", wd), "train fit"
    )
    lpips_paths = None
    if with_lpips:
        from talkcli.runtime import lpips_files

        lpips_paths = lpips_files("vgg", wd, "train fit (LPIPS-vgg)")
    return generator_path, lpips_paths


class _FitProgress:
    """``fit``'s callbacks: the step bar, one line per epoch, the --plot redrawn now and then."""

    def __init__(self, bar: Any, plot: Path | None) -> None:
        self.bar, self.plot = bar, plot
        self.task: int | None = None
        self.plotted = time.monotonic()

    def step(self, phase: str, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task(phase, total=total)
        self.bar.update(self.task, completed=done, total=total, description=phase)

    def epoch(self, row: dict, history: list[dict]) -> None:
        val = f", val {row['val_loss']:.4g}" if "val_loss" in row else ""
        if "val_r" in row:
            val += f", held-out r {row['val_r']:.2f} (shuffled {row['val_r_shuffled']:.2f})"
        mark = " (best)" if row.get("best") else ""
        info(
            f"epoch {row['epoch']}: train {row['train_loss']:.4g}{val}, lr {row['lr']:.2g}, "
            f"{row['samples_per_s']:.1f} clips/s{mark}"
        )
        if self.plot is not None and time.monotonic() - self.plotted > PLOT_EVERY_S:
            from talkcli.plots import plot_training_curves

            plot_training_curves(self.plot, history)  # watch long runs; redrawn at the end
            self.plotted = time.monotonic()


def _report_fit(
    result: FitResult, outputs: FitOutputs, seq_len: int, plot: Path | None, as_json: bool
) -> None:
    """Rank 0, after training: warnings, the final plot, the summary line and --json."""
    from talkcli.train.fit import fit_summary

    if result.val_clips == 0:
        warn(
            "no validation clips (no held-out speakers): the best model is chosen by training loss"
        )
    if result.skipped_videos:
        warn(f"{result.skipped_videos} video(s) too short for --seq-len {seq_len} were not used")
    if plot is not None and result.history:
        from talkcli.plots import plot_training_curves

        plot_training_curves(plot, result.history)
    info(
        f"best epoch {result.best_epoch} (loss {result.best_loss:.4g}) -> {result.best}; "
        f"last -> {result.last}; state -> {outputs.state}"
    )
    if as_json:
        print_json(fit_summary(result, outputs))


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
