"""``train fit``: stage 1 of the thesis (4.3.2.1): train E_A and D with pSp and G frozen.

Samples (figure 4.8): a clip of ``seq_len`` consecutive frames of one video, each frame with its
centred 280 ms MFCC window, and an identity frame drawn at random from the same video outside
the clip's audio windows. The model predicts w̄_t = w_I + h_t V for every frame of the clip.

Loss per clip (summed over its frames t, averaged over the batch)::

    latent_weight (250) * sum_t mean((w_t - w̄_t)^2)
    + lpips_weight (1) * sum_t LPIPS-vgg(G(w̄_t), G(w_t))

where w_t = E(x_t) are the dataset's pSp codes. The squared distance is averaged over the
n_latent x 512 values of a code (PyTorch's MSE): with a plain sum the LPIPS term would be ~1e-4
of the total and the thesis' weights 250 : 1 would mean nothing. ``lpips_weight`` 0 skips
rendering (fast runs); ``lpips_frames`` renders only that many random frames per clip (the sum
is rescaled to the clip length).

Adam (lr 2e-4), learning rate decay on plateau of the validation loss, validation on the
held-out speakers every epoch, best and last checkpoints, a training-state file for ``resume``,
a JSONL log. Multi-GPU / multi-node through torchrun: DDP (nccl on GPU, gloo on CPU), a
DistributedSampler for the training clips, rank 0 alone computes the PCA (then broadcast) and
writes files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from talkcli import __version__
from talkcli.audio.features import FEATURE_KINDS, windows_from_rows
from talkcli.distributed import DistEnv
from talkcli.errors import InputFileError, UserError
from talkcli.guards import check_finite_array, check_finite_loss, check_number
from talkcli.io.files import WriteErrors, atomic_output, require_space, sha256_file
from talkcli.models.audio2latent import ARCH_PRESETS, Audio2Latent, save_audio2latent
from talkcli.ranges import TRAIN_FIT as TRAIN_FIT_RANGES
from talkcli.train.dataset import Dataset, VideoEntry, load_dataset
from talkcli.train.identity import (
    conditioning,
    flat_validation_warning,
    held_out_correlation,
    normalisation_from_videos,
)
from talkcli.train.pca import PCAResult, fit_pca, load_pca

STATE_FORMAT = "talkcli-train-state"
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)
WINDOW_HALF_S = 0.14  # half of the 280 ms window

EpochFn = Callable[[dict[str, Any], list[dict[str, Any]]], None]  # (row, history)
StepFn = Callable[[str, int, int], None]  # (phase, done, total)


# option -> (min, max): one home with the CLI, talkcli.ranges.TRAIN_FIT
BEST_BY = ("r", "loss")  # --best-by: held-out-identity r (default) or validation loss
RANGES = tuple((name, lo, hi) for name, (lo, hi) in TRAIN_FIT_RANGES.items())
IDENTITY_INPUTS = ("pca", "none")
log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """Options of ``talkcli train fit`` (see its help)."""

    epochs: int = 20
    batch_size: int = 16
    seq_len: int = 16
    lr: float = 2e-4
    latent_weight: float = 250.0
    lpips_weight: float = 1.0
    lpips_frames: int = 0  # 0 = every frame of the clip
    lpips_size: int = 256
    lr_decay: float = 0.5
    lr_patience: int = 2
    components: int | None = None  # None: 2500, or all rows of --pca
    pca_frames: int = 100_000
    arch: str = "thesis"
    seed: int = 0
    workers: int = 0
    steps_per_epoch: int = 0  # 0 = every clip once per epoch
    # generalisation to unseen identities (issue 19; talkcli.train.identity, docs/train.md)
    identity: str = "pca"  # "pca": the identity's PCA coordinates (thesis), "none"
    identity_dropout: float = 0.0  # chance a clip is conditioned on no identity
    identity_augment: float = 0.0  # chance a clip is conditioned on another clip's identity
    normalise: bool = False  # identity coordinates and h_t in units of the data's spreads
    # which epoch is "best" (NAME.safetensors): "r" = the highest held-out-identity r (issue 19;
    # the validation loss without held-out speakers or r), "loss" = the lowest validation loss
    best_by: str = "r"
    features: str | None = None  # mfcc, wav2vec2, hubert; None: see resolve_features

    def check(self) -> None:
        """The CLI's ranges, for library callers too (one-line UserError naming the option)."""
        if self.arch not in ARCH_PRESETS:
            raise UserError(f"--arch {self.arch!r}: expected one of {', '.join(ARCH_PRESETS)}")
        if self.features is not None and self.features not in FEATURE_KINDS:
            raise UserError(
                f"--features {self.features!r}: expected one of {', '.join(FEATURE_KINDS)}"
            )
        if self.identity not in IDENTITY_INPUTS:
            raise UserError(f"--identity {self.identity!r}: expected one of pca, none")
        if self.best_by not in BEST_BY:
            raise UserError(f"--best-by {self.best_by!r}: expected one of {', '.join(BEST_BY)}")
        for name, lo, hi in RANGES:
            value = getattr(self, name)
            if value is not None:
                check_number(f"--{name.replace('_', '-')}", value, lo, hi)


@dataclass
class FitOutputs:
    """Files ``fit`` writes (rank 0): best model, last model, training state, log, plot."""

    best: Path
    last: Path
    state: Path
    log: Path
    plot: Path | None = None

    @classmethod
    def beside(cls, out: Path, log: Path | None = None, plot: Path | None = None) -> FitOutputs:
        stem = out.name[: -len(out.suffix)] if out.suffix else out.name
        return cls(
            best=out,
            last=out.with_name(f"{stem}.last{out.suffix or '.safetensors'}"),
            state=out.with_name(f"{stem}.state.pt"),
            log=log or out.with_name(f"{stem}.log.jsonl"),
            plot=plot,
        )

    def all(self) -> list[Path]:
        return [p for p in (self.best, self.last, self.state, self.log, self.plot) if p]


@dataclass
class FitResult:
    best: Path
    last: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_loss: float = math.inf
    skipped_videos: int = 0
    train_clips: int = 0
    val_clips: int = 0
    warnings: list[str] = field(default_factory=list)  # also logged as they happen


def fit_input_files(
    outputs: FitOutputs,
    generator_path: Path,
    *,
    pca_path: Path | None = None,
    resume: Path | None = None,
    lpips_paths: tuple[Path, Path] | None = None,
) -> list[Path]:
    """The files ``fit`` reads, which no output may replace (``guard_outputs``' inputs).

    A ``resume`` state that is this run's own state output is left out: continuing in place
    reads it whole, then replaces it.
    """
    from talkcli.guards import same_file

    inputs = [p for p in (pca_path, resume, generator_path, *(lpips_paths or ())) if p is not None]
    if resume is not None and same_file(resume, outputs.state):
        inputs.remove(resume)
    return inputs


def fit_summary(result: FitResult, outputs: FitOutputs) -> dict[str, Any]:
    """``train fit --json``: where the files went, the best epoch, the clip counts, the history."""
    return {
        "out": str(result.best),
        "last": str(result.last),
        "state": str(outputs.state),
        "log": str(outputs.log),
        "best_epoch": result.best_epoch,
        "best_loss": result.best_loss,
        "train_clips": result.train_clips,
        "val_clips": result.val_clips,
        "warnings": result.warnings,
        "history": result.history,
    }


# -- samples -------------------------------------------------------------------------------------


def identity_margin(fps: float) -> int:
    """Frames on each side of a frame that lie inside its 280 ms audio window."""
    return int(math.floor(WINDOW_HALF_S * fps + 1e-9))


class ClipDataset(torch.utils.data.Dataset):
    """Clips of ``seq_len`` frames (figure 4.8) from prepared videos.

    Item -> (windows (L, 12, 28), targets (L, n_latent, 512), identity (n_latent, 512)).
    Clip starts are every ``seq_len`` frames; for training they move by a random offset each
    epoch (``set_epoch``) and the identity frame is redrawn; validation clips are fixed.
    """

    def __init__(
        self,
        videos: list[VideoEntry],
        seq_len: int,
        fps: float,
        seed: int,
        train: bool,
        kind: str = "mfcc",
    ) -> None:
        self.videos = videos
        self.kind = kind  # feature kind: windows (L, 12, 28) for mfcc, (L, D, 14) for SSL
        self.seq_len = seq_len
        self.fps = fps
        self.seed = seed
        self.train = train
        self.epoch = 0
        self.margin = identity_margin(fps)
        self.items: list[tuple[int, int]] = []
        self.too_short: list[str] = []
        for vi, v in enumerate(videos):
            starts = [s for s in range(0, v.frames - seq_len + 1, seq_len) if self._free(v, s)]
            if not starts:
                self.too_short.append(v.id)
            self.items.extend((vi, s) for s in starts)

    def _free(self, v: VideoEntry, start: int) -> int:
        """Frames of ``v`` outside the audio windows of the clip starting at ``start``."""
        lo = max(start - self.margin, 0)
        hi = min(start + self.seq_len - 1 + self.margin, v.frames - 1)
        return v.frames - (hi - lo + 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        vi, start = self.items[i]
        v = self.videos[vi]
        rng = np.random.default_rng([self.seed, self.epoch if self.train else 0, i])
        if self.train:  # move within the next stride, where the clip still fits
            room = min(self.seq_len - 1, v.frames - self.seq_len - start)
            shifted = start + int(rng.integers(0, room + 1)) if room > 0 else start
            start = shifted if self._free(v, shifted) > 0 else start
        lo = max(start - self.margin, 0)
        hi = min(start + self.seq_len - 1 + self.margin, v.frames - 1)
        choices = np.concatenate([np.arange(0, lo), np.arange(hi + 1, v.frames)])
        ident = int(rng.choice(choices))
        target = v.codes(slice(start, start + self.seq_len))  # (L, n_latent, 512)
        identity = v.codes(ident)  # (n_latent, 512)
        rows = v.mfcc() if self.kind == "mfcc" else v.features(self.kind)  # (M, D)
        windows = windows_from_rows(rows, range(start, start + self.seq_len), self.fps, self.kind)
        for arr, what, path in (
            (target, "W+ codes", v.files.w),
            (identity, "W+ codes", v.files.w),
            (windows, f"{self.kind} rows", v.files.mfcc),
        ):
            check_finite_array(arr, path, what)
        return torch.from_numpy(windows), torch.from_numpy(target), torch.from_numpy(identity)


# -- PCA and MFCC statistics ---------------------------------------------------------------------


def pca_from_videos(videos: list[VideoEntry], k: int, max_frames: int) -> PCAResult:
    """PCA of the training codes; at most ``max_frames`` frames, spread evenly over videos."""
    total = sum(v.frames for v in videos)
    step = max(1, math.ceil(total / max_frames))
    picks = [(v, np.arange(0, v.frames, step)) for v in videos]
    n_used = sum(len(p) for _, p in picks)

    def chunks():
        for v, idx in picks:
            if len(idx):
                codes = v.codes(idx)  # (n_i, n_latent, 512) float32
                check_finite_array(codes, v.files.w, "W+ codes")
                yield codes

    n_latent = int(videos[0].code_shape[0])
    return fit_pca(chunks(), k, n_latent=n_latent, n_total=n_used)


def mfcc_statistics(videos: list[VideoEntry]) -> tuple[np.ndarray, np.ndarray]:
    """Per-coefficient mean and std of the training videos' MFCC rows (float64 sums)."""
    return feature_statistics(videos, "mfcc")


def feature_statistics(videos: list[VideoEntry], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of the training videos' feature rows of ``kind`` (float64
    sums): the normalisation the model keeps as buffers."""
    n, s, ss = 0, 0.0, 0.0
    for v in videos:
        rows = np.asarray(v.mfcc() if kind == "mfcc" else v.features(kind), dtype=np.float64)
        check_finite_array(rows, v.files.mfcc, f"{kind} rows")
        n += len(rows)
        s += rows.sum(0)
        ss += (rows**2).sum(0)
    mean = s / max(n, 1)
    std = np.sqrt(np.maximum(ss / max(n, 1) - mean**2, 0.0))
    return mean, np.maximum(std, 1e-3)


# -- process group -------------------------------------------------------------------------------


def rank_device(env: DistEnv, device: torch.device) -> torch.device:
    """This rank's device: under torchrun, CUDA ranks take their own GPU (``talkcli.device``'s
    one torchrun rule, LOCAL_RANK % GPUs)."""
    if env.distributed and device.type == "cuda":
        from talkcli.device import rank_cuda_device

        return rank_cuda_device(env.local_rank)
    return device


def setup_distributed(env: DistEnv, device: torch.device) -> torch.device:
    """Join the torchrun process group (nccl on CUDA, gloo otherwise); the rank's device."""
    import torch.distributed as dist

    if not env.distributed:
        return device
    device = rank_device(env, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # rank 0 may compute the PCA while the others wait at the broadcast: be patient
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=PROCESS_GROUP_TIMEOUT
        )
    return device


def _all_sum(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    if not env.distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _broadcast(t: Tensor, env: DistEnv) -> Tensor:
    if env.distributed:
        import torch.distributed as dist

        dist.broadcast(t, src=0)
    return t


# -- losses --------------------------------------------------------------------------------------


class Renderer:
    """G and LPIPS-vgg for the perceptual term (frozen, no_grad on G's weights)."""

    def __init__(self, G, lpips, size: int) -> None:
        self.G, self.lpips, self.size = G, lpips, size

    def images(self, w: Tensor) -> Tensor:
        img = self.G.synthesis(w, noise_mode="const")  # (N, 3, S, S)
        if img.shape[-1] > self.size:
            img = torch.nn.functional.interpolate(img, size=(self.size, self.size), mode="area")
        return img

    def distance(self, w_pred: Tensor, w_true: Tensor) -> Tensor:
        """(N, n_latent, 512) pairs -> LPIPS (N,)."""
        with torch.no_grad():
            target = self.images(w_true)
        return self.lpips(self.images(w_pred), target)


def clip_losses(
    w_pred: Tensor,
    w_true: Tensor,
    cfg: FitConfig,
    renderer: Renderer | None,
    gen: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, latent term, lpips term), each averaged over the batch of clips (B, L, n, 512)."""
    b, length = w_pred.shape[:2]
    latent = ((w_pred - w_true) ** 2).mean(dim=(2, 3)).sum(dim=1).mean()  # sum_t MSE
    lp = torch.zeros((), device=w_pred.device)
    if renderer is not None and cfg.lpips_weight > 0:
        k = length if cfg.lpips_frames <= 0 else min(cfg.lpips_frames, length)
        if k < length:
            idx = torch.stack([torch.randperm(length, generator=gen)[:k] for _ in range(b)])
        else:
            idx = torch.arange(length).expand(b, length)
        idx = idx.to(w_pred.device)
        rows = torch.arange(b, device=w_pred.device)[:, None]
        sel_p = w_pred[rows, idx].flatten(0, 1)  # (B*k, n, 512)
        sel_t = w_true[rows, idx].flatten(0, 1)
        lp = renderer.distance(sel_p, sel_t).view(b, k).sum(1).mean() * (length / k)
    loss = cfg.latent_weight * latent + cfg.lpips_weight * lp
    return loss, latent, lp


# -- checkpoint metadata and state ---------------------------------------------------------------


def generator_info(G, path: Path) -> dict[str, Any]:
    return {
        "sha256": sha256_file(path),
        "size": int(G.size),
        "n_latent": int(G.n_latent),
        "style_dim": int(G.style_dim),
        "file": path.name,
    }


def save_state(path: Path, payload: dict[str, Any]) -> None:
    """The training-state file, atomically; a full disk is a one-line ``OutputError``.

    torch.save reports a failed write as a bare ``RuntimeError`` ("unexpected pos ..."), so the
    file's own write errors are recorded and raised in its place.
    """
    with atomic_output(path, needed=_tensor_bytes(payload)) as tmp:
        with open(tmp, "wb") as f:
            sink = WriteErrors(f)
            try:
                torch.save(payload, sink)
            except RuntimeError:
                if sink.error is not None:
                    raise sink.error from None
                raise


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested payload (what torch.save writes, less its small index)."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_state(path: Path) -> dict[str, Any]:
    from talkcli.weights.safe_load import load_torch_file

    state = load_torch_file(path, "training state file")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputFileError(path, "is not a talkcli training state file", "pass NAME.state.pt")
    return state


# -- the trainer ---------------------------------------------------------------------------------


@dataclass
class FitRun:
    """One call of ``fit``: what it was given, the rank's device and its process group."""

    data: str | Path
    outputs: FitOutputs
    cfg: FitConfig
    generator_path: Path
    pca_path: Path | None
    resume: Path | None
    lpips_paths: tuple[Path, Path] | None
    device: torch.device
    env: DistEnv


@dataclass
class FitData:
    """The prepared dataset, its speaker splits and the clips cut from them."""

    ds: Dataset
    train_videos: list[VideoEntry]
    val_videos: list[VideoEntry]
    train: ClipDataset
    val: ClipDataset


@dataclass
class Loaders:
    """Training batches (this rank's share, reshuffled each epoch) and this rank's val batches."""

    sampler: torch.utils.data.DistributedSampler
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    per_epoch: int  # training steps per epoch (--steps-per-epoch caps it)


@dataclass
class TrainState:
    """What the epochs share and change: model, optimiser, counters, history."""

    model: Audio2Latent
    net: torch.nn.Module  # the model, or its DDP wrapper under torchrun (training's forward)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.ReduceLROnPlateau
    renderer: Renderer | None  # the LPIPS term; None when lpips_weight is 0
    lpips_gen: torch.Generator  # which frames --lpips-frames renders
    identity_gen: torch.Generator  # which clips identity augmentation / dropout pick
    pca_info: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    step: int = 0
    best_loss: float = math.inf  # the validation (else training) loss of the best epoch
    best_epoch: int = -1
    best_score: float = math.inf  # what --best-by minimises (-r or the loss)


def fit(
    data: str | Path,
    outputs: FitOutputs,
    cfg: FitConfig,
    generator_path: Path,
    *,
    pca_path: Path | None = None,
    resume: Path | None = None,
    lpips_paths: tuple[Path, Path] | None = None,
    device: torch.device | None = None,
    env: DistEnv | None = None,
    on_epoch: EpochFn | None = None,
    on_step: StepFn | None = None,
) -> FitResult:
    """Train an ``Audio2Latent`` on a prepared dataset; see the module docstring.

    ``generator_path``: the StyleGAN2 file the model is for (rendered for LPIPS, recorded in
    the checkpoint). ``lpips_paths``: (vgg16 backbone, lpips-vgg heads), needed when
    ``cfg.lpips_weight`` > 0. Only rank 0 of ``env`` writes ``outputs``.
    """
    cfg.check()
    env = env or DistEnv()
    device = setup_distributed(env, device or torch.device("cpu"))
    run = FitRun(data, outputs, cfg, generator_path, pca_path, resume, lpips_paths, device, env)
    try:
        return _fit(run, on_epoch, on_step)
    finally:
        if env.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _fit(run: FitRun, on_epoch: EpochFn | None, on_step: StepFn | None) -> FitResult:
    """Data, model, loaders, then per epoch: train, validate, schedule, checkpoint (rank 0)."""
    ds, train_videos, val_videos = _load_splits(run)
    G, renderer = _load_renderer(run, ds)
    train_ds, val_ds = _clip_datasets(run.cfg, ds, train_videos, val_videos)
    data = FitData(ds, train_videos, val_videos, train_ds, val_ds)
    saved = load_state(run.resume) if run.resume is not None else None
    model, pca_info = _build_model(run, data, G, saved)
    st = _train_state(run, model, pca_info, renderer, saved)
    loaders = _loaders(run, data)
    gen_meta = generator_info(G, run.generator_path)
    training_meta = _training_meta(run, data, pca_info)
    log_lines = _resumed_log(run.outputs.log) if saved is not None else []
    warnings: list[str] = []
    for epoch in range(st.start_epoch, run.cfg.epochs):
        row = {
            "epoch": epoch + 1,
            **_train_epoch(run, st, data, loaders, epoch, on_step),
            **_validate(run, st, loaders),
            **_held_out_r(run, st, data),
        }
        improved = _end_epoch(st, epoch, row, run.cfg.best_by)
        _warn_if_flat(run, st, warnings)
        if run.env.is_main:
            _save_checkpoint(run, st, epoch, row, improved, gen_meta, training_meta)
            log_lines.append(json.dumps(row))
            _write_log(run.outputs.log, log_lines)
            if on_epoch:
                on_epoch(row, st.history)
    return FitResult(
        run.outputs.best,
        run.outputs.last,
        st.history,
        st.best_epoch,
        st.best_loss,
        skipped_videos=len(train_ds.too_short) + len(val_ds.too_short),
        train_clips=len(train_ds),
        val_clips=len(val_ds),
        warnings=warnings,
    )


def _held_out_r(run: FitRun, st: TrainState, data: FitData) -> dict[str, float]:
    """Rank 0: held-out-identity r (and with shuffled audio) of this epoch's model, for the
    log, the plot and --json ({} without held-out speakers)."""
    if not run.env.is_main or not data.val_videos:
        return {}
    return held_out_correlation(st.model, data.val_videos, data.ds.fps, run.cfg.seed)


def resolve_features(requested: str | None, ds: Dataset) -> str:
    """The feature kind to train on: ``requested`` (which the dataset must hold), else the
    dataset's SSL kind when it holds exactly one, else ``mfcc``."""
    kinds = ds.feature_kinds
    if requested is not None:
        if requested not in kinds:
            raise UserError(
                f"{ds.root}: holds no {requested} features (it holds {', '.join(kinds)}); run "
                f"`train prepare --resume --features {requested} --feature-model DIR` first"
            )
        return requested
    ssl = kinds[1:]
    if len(ssl) > 1:
        raise UserError(f"{ds.root}: holds {', '.join(kinds)} features; choose one with --features")
    return ssl[0] if ssl else "mfcc"


def _warn_if_flat(run: FitRun, st: TrainState, warnings: list[str]) -> None:
    """Once per run: the validation loss has not moved while the training loss fell."""
    text = None if warnings else flat_validation_warning(st.history)
    if text:
        warnings.append(text)
        if run.env.is_main:
            log.warning(text)


# -- data ----------------------------------------------------------------------------------------


def _load_splits(run: FitRun) -> tuple[Dataset, list[VideoEntry], list[VideoEntry]]:
    """The dataset and its (train, val) videos; a dataset without training videos is refused."""
    ds = load_dataset(run.data)
    train_videos, val_videos = ds.split("train"), ds.split("val")
    if not train_videos:
        raise UserError(f"{ds.root}: no training videos (every speaker is held out)")
    return ds, train_videos, val_videos


def _load_renderer(run: FitRun, ds: Dataset) -> tuple[Any, Renderer | None]:
    """G (checked against the dataset's codes) and, when the LPIPS term is on, its renderer."""
    from talkcli.runtime import ModelPaths, ModelSet

    lpips_paths = tuple(run.lpips_paths) if run.lpips_paths is not None else None
    paths = ModelPaths(generator=run.generator_path, lpips=lpips_paths, lpips_net="vgg")
    models = ModelSet(device=run.device, paths=paths, lpips_net="vgg")
    G = models.generator()
    if G.n_latent != ds.n_latent or G.style_dim != ds.style_dim:
        raise UserError(
            f"{run.generator_path}: a {G.size}x{G.size} generator ({G.n_latent} W+ layers) does "
            f"not fit {ds.root}, encoded for {ds.n_latent} layers (pass the matching --generator)"
        )
    if run.cfg.lpips_weight <= 0:
        return G, None
    if run.lpips_paths is None:
        raise ValueError("lpips_paths are needed when lpips_weight > 0")
    return G, Renderer(G, models.lpips(), run.cfg.lpips_size)


def _clip_datasets(
    cfg: FitConfig, ds: Dataset, train_videos: list[VideoEntry], val_videos: list[VideoEntry]
) -> tuple[ClipDataset, ClipDataset]:
    """(training clips, validation clips); refused when no training video holds one clip."""
    kind = resolve_features(cfg.features, ds)
    train_ds = ClipDataset(train_videos, cfg.seq_len, ds.fps, cfg.seed, train=True, kind=kind)
    val_ds = ClipDataset(val_videos, cfg.seq_len, ds.fps, cfg.seed + 1, train=False, kind=kind)
    if len(train_ds) == 0:
        raise UserError(
            f"{ds.root}: no training video is long enough for --seq-len {cfg.seq_len} plus an "
            f"identity frame outside the audio windows ({cfg.seq_len + 2 * train_ds.margin + 1} "
            "frames); lower --seq-len"
        )
    return train_ds, val_ds


def _loaders(run: FitRun, data: FitData) -> Loaders:
    """This rank's training loader (DistributedSampler, seeded) and its slice of the val clips."""
    cfg, env = run.cfg, run.env
    sampler = torch.utils.data.DistributedSampler(
        data.train, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed
    )
    loader = torch.utils.data.DataLoader(
        data.train,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
    )
    val_idx = list(range(env.rank, len(data.val), env.world_size))
    val_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(data.val, val_idx), batch_size=cfg.batch_size, shuffle=False
    )
    per_epoch = len(loader) if cfg.steps_per_epoch <= 0 else min(cfg.steps_per_epoch, len(loader))
    return Loaders(sampler, loader, val_loader, per_epoch)


# -- the model: fresh (PCA + MFCC statistics from the data) or resumed ---------------------------


def _build_model(
    run: FitRun, data: FitData, G: Any, saved: dict[str, Any] | None
) -> tuple[Audio2Latent, dict[str, Any]]:
    """(model on the rank's device, what its PCA came from): resumed or built fresh."""
    if saved is not None:
        assert run.resume is not None
        model = _resumed_model(run.resume, saved, G, run.generator_path, data.ds)
        pca_info = saved.get("pca_info", {})
    else:
        model, pca_info = _fresh_model(run, data)
    model.to(run.device)
    return model, pca_info


def _fresh_model(run: FitRun, data: FitData) -> tuple[Audio2Latent, dict[str, Any]]:
    """A new model around rank 0's PCA (broadcast to every rank) and the MFCC statistics.

    The weights are drawn after ``torch.manual_seed(seed)``, so every rank starts alike.
    """
    cfg, ds = run.cfg, data.ds
    latent_dim = ds.n_latent * ds.style_dim
    pca, failure, pca_info = _pca_on_this_rank(run, data.train_videos, latent_dim)
    mean_t, basis_t = _broadcast_pca(run, pca, failure, latent_dim)  # (D,), (k, D)
    torch.manual_seed(cfg.seed)
    model = Audio2Latent(
        basis_t.shape[0], ds.n_latent, ds.style_dim, arch=ARCH_PRESETS[cfg.arch], fps=ds.fps,
        normalised=cfg.normalise, identity_input=cfg.identity != "none",
        features=(ds.settings.get("ssl_features") or {}).get(data.train.kind),
    )  # fmt: skip
    model.set_pca(mean_t.cpu(), basis_t.cpu())
    model.set_feature_stats(*feature_statistics(data.train_videos, data.train.kind))
    if cfg.normalise:  # every rank computes the same spreads from the same files
        spreads = normalisation_from_videos(
            data.train_videos, mean_t.cpu().double().numpy(), basis_t.cpu().double().numpy()
        )
        model.set_normalisation(*spreads)
    if pca is not None and np.isfinite(pca.explained_ratio).all():
        pca_info["explained"] = float(pca.explained_ratio.sum())
    return model, pca_info


def _pca_on_this_rank(
    run: FitRun, train_videos: list[VideoEntry], latent_dim: int
) -> tuple[PCAResult | None, Exception | None, dict[str, Any]]:
    """(PCA or None, the error computing it, where it came from) on this rank.

    A ``--pca`` file is read by every rank (and fails alike); a PCA of the data is computed by
    rank 0 alone while the others wait at the broadcast, and its error is kept to be raised after
    the others were told.
    """
    cfg = run.cfg
    pca, failure = None, None
    if run.pca_path is not None:
        pca = load_pca(run.pca_path, latent_dim)
        k = min(cfg.components or pca.k, pca.k)
        pca.basis, pca.explained_variance = pca.basis[:k], pca.explained_variance[:k]
        source = {"source": str(run.pca_path), "sha256": sha256_file(run.pca_path), "k": k}
        return pca, failure, source
    if run.env.is_main:
        try:
            pca = pca_from_videos(train_videos, cfg.components or 2500, cfg.pca_frames)
        except Exception as exc:  # tell the waiting ranks first, then raise it here
            failure = exc
    info: dict[str, Any] = {"source": "dataset (train split)"}
    if pca is not None:
        info.update(k=pca.k, frames=pca.n_samples)
    return pca, failure, info


def _broadcast_pca(
    run: FitRun, pca: PCAResult | None, failure: Exception | None, latent_dim: int
) -> tuple[Tensor, Tensor]:
    """Rank 0's PCA on every rank: its k first (-1: it failed), then mean (D,) and basis (k, D)."""
    device, env = run.device, run.env
    k_t = torch.tensor([pca.k if pca is not None else -1], dtype=torch.int64, device=device)
    k = int(_broadcast(k_t, env).item())
    if k < 0:
        if failure is not None:
            raise failure
        raise UserError("rank 0 could not compute the PCA (its error says why)")
    mean_t = torch.zeros(latent_dim, device=device)
    basis_t = torch.zeros(k, latent_dim, device=device)
    if pca is not None:
        mean_t.copy_(torch.from_numpy(pca.mean))
        basis_t.copy_(torch.from_numpy(pca.basis))
    _broadcast(mean_t, env)
    _broadcast(basis_t, env)
    return mean_t, basis_t


def _resumed_model(
    resume: Path, state: dict[str, Any], G, generator_path: Path, ds
) -> Audio2Latent:
    """The model saved in a training state file, checked against this dataset and generator."""
    from talkcli.models.limits import check_dim

    try:
        mc = state["model_config"]
        n_latent = check_dim(resume, "n_latent", mc["n_latent"])  # sizes bounded before use
        style_dim = check_dim(resume, "style_dim", mc["style_dim"])
        k = check_dim(resume, "n_components", mc["n_components"])
        if k > n_latent * style_dim:
            raise ValueError(f"n_components {k} exceeds the W+ dimension {n_latent * style_dim}")
        model = Audio2Latent(
            k,
            n_latent,
            style_dim,
            arch=ARCH_PRESETS[str(mc["arch_name"])],
            fps=float(mc["fps"]),
            normalised=bool(mc.get("normalised", False)),
            identity_input=bool(mc.get("identity_input", True)),
            features=mc.get("features"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputFileError(resume, f"training state is incomplete ({exc})") from None
    if model.latent_dim != ds.n_latent * ds.style_dim or model.fps != ds.fps:
        raise InputFileError(
            resume, f"was trained on a dataset with other codes or fps than {ds.root}"
        )
    trained_for = (state.get("generator") or {}).get("size")
    if trained_for is not None and int(trained_for) != G.size:
        raise InputFileError(
            resume,
            f"was trained for a {trained_for}x{trained_for} generator but {generator_path} "
            f"is {G.size}x{G.size}",
            "pass the generator it was trained with (--generator)",
        )
    try:
        model.load_state_dict(state["model"], strict=True)
    except (KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0]
        raise InputFileError(
            resume, f"training state does not fit its model ({first[:120]})"
        ) from None
    return model


def _train_state(
    run: FitRun,
    model: Audio2Latent,
    pca_info: dict[str, Any],
    renderer: Renderer | None,
    saved: dict[str, Any] | None,
) -> TrainState:
    """DDP wrapper (torchrun), Adam, decay on plateau; counters and history from a resumed run."""
    net: torch.nn.Module = model
    if run.env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model,
            device_ids=[run.device.index] if run.device.type == "cuda" else None,
            broadcast_buffers=False,  # PCA and MFCC buffers never change
        )
    cfg = run.cfg
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.lr_decay, patience=cfg.lr_patience
    )
    lpips_gen = torch.Generator().manual_seed(cfg.seed + run.env.rank)
    identity_gen = torch.Generator().manual_seed(cfg.seed + 7919 * (run.env.rank + 1))
    st = TrainState(model, net, opt, sched, renderer, lpips_gen, identity_gen, pca_info)
    if saved is not None:
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        st.history = list(saved.get("history", []))
        st.start_epoch, st.step = int(saved["epoch"]), int(saved["step"])
        st.best_loss, st.best_epoch = float(saved["best_loss"]), int(saved["best_epoch"])
        st.best_score = float(saved.get("best_score", st.best_loss))
    return st


# -- one epoch -----------------------------------------------------------------------------------


def _train_epoch(
    run: FitRun,
    st: TrainState,
    data: FitData,
    loaders: Loaders,
    epoch: int,
    on_step: StepFn | None,
) -> dict[str, float]:
    """One pass over this rank's clips (at most ``per_epoch`` steps); losses summed over ranks."""
    device, env = run.device, run.env
    st.net.train()
    loaders.sampler.set_epoch(epoch)
    data.train.set_epoch(epoch)
    sums = [0.0, 0.0, 0.0, 0.0]  # loss * n, latent * n, lpips * n, n
    started = time.perf_counter()
    for i, (windows, target, identity) in enumerate(loaders.train):
        if i >= loaders.per_epoch:
            break
        windows, target = windows.to(device), target.to(device)  # (B, L, 12, 28), (B, L, n, 512)
        identity = identity.to(device)  # (B, n, 512)
        cfg = run.cfg  # conditioned on another clip's identity or none (issue 19), or its own
        emb = conditioning(st.model, identity, cfg.identity_augment, cfg.identity_dropout,
                           st.identity_gen)  # fmt: skip
        w_pred, _ = st.net(windows, identity, None, emb)  # (B, L, n, 512)
        loss, latent, lp = clip_losses(w_pred, target, run.cfg, st.renderer, st.lpips_gen)
        st.opt.zero_grad(set_to_none=True)
        loss.backward()
        n = float(len(windows))
        here = [float(x.detach()) * n for x in (loss, latent, lp)] + [n]
        total = _all_sum(here, env, device)  # every rank sees the same (NaN stops all)
        check_finite_loss(
            total[0] / total[3],
            st.step,
            f"train fit, epoch {epoch + 1} (files of earlier epochs are kept)",
        )
        st.opt.step()
        st.step += 1
        sums = [a + b for a, b in zip(sums, total, strict=True)]
        if on_step and env.is_main:
            on_step(f"epoch {epoch + 1}", i + 1, loaders.per_epoch)
    seconds = time.perf_counter() - started
    n = max(sums[3], 1.0)
    return {
        "train_loss": sums[0] / n,
        "train_latent": sums[1] / n,
        "train_lpips": sums[2] / n,
        "samples": int(sums[3]),
        "samples_per_s": sums[3] / max(seconds, 1e-9),
        "seconds": seconds,
    }


@torch.no_grad()
def _validate(run: FitRun, st: TrainState, loaders: Loaders) -> dict[str, float]:
    """Losses on the held-out speakers' fixed clips, summed over ranks ({} without val clips)."""
    device = run.device
    st.model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # loss * n, latent * n, lpips * n, n
    for windows, target, identity in loaders.val:
        windows, target, identity = windows.to(device), target.to(device), identity.to(device)
        w_pred, _ = st.model(windows, identity)  # (B, L, n, 512)
        loss, latent, lp = clip_losses(w_pred, target, run.cfg, st.renderer, st.lpips_gen)
        n = float(len(windows))
        here = [float(loss) * n, float(latent) * n, float(lp) * n, n]
        sums = [a + b for a, b in zip(sums, here, strict=True)]
    total = _all_sum(sums, run.env, device)
    if total[3] == 0:
        return {}
    n = total[3]
    per_frame = n * run.cfg.seq_len
    return {
        "val_loss": total[0] / n,
        "val_latent": total[1] / n,
        "val_lpips": total[2] / n,
        "val_latent_mse": total[1] / per_frame,
        "val_lpips_per_frame": total[2] / per_frame,
    }


def selection_score(row: dict[str, Any], best_by: str) -> float:
    """What choosing the best epoch minimises: ``-val_r`` for ``best_by="r"`` when the epoch
    has a held-out r, else the validation (else training) loss.

    Why r by default (issue 19): on a new identity the encoder's codes move along directions of
    their own, so the held-out loss in code space is lowest at an early, under-trained epoch
    (the amplitude along the training speakers' directions is still small) while the timing of
    the motion, which r measures, keeps improving; docs/train.md has the measurement.
    """
    r = row.get("val_r")
    if best_by == "r" and r is not None and math.isfinite(r):
        return -float(r)
    return float(row.get("val_loss", row["train_loss"]))


def _end_epoch(st: TrainState, epoch: int, row: dict[str, Any], best_by: str = "r") -> bool:
    """Step, lr and best flag into ``row``; the scheduler steps on the val (else train) loss,
    the best epoch is chosen by ``selection_score``.

    Returns whether this epoch is the best so far.
    """
    row["step"] = st.step
    row["lr"] = st.opt.param_groups[0]["lr"]
    loss = row.get("val_loss", row["train_loss"])
    st.sched.step(loss)
    score = selection_score(row, best_by)
    improved = score < st.best_score
    if improved:
        st.best_score, st.best_loss, st.best_epoch = score, loss, epoch + 1
    row["best"] = improved
    st.history.append(row)
    return improved


# -- checkpoints ---------------------------------------------------------------------------------


def _training_meta(run: FitRun, data: FitData, pca_info: dict[str, Any]) -> dict[str, Any]:
    """What every checkpoint of this run records about its data, options and environment."""
    ds = data.ds
    return {
        "dataset": str(ds.root),
        "dataset_index_sha256": sha256_file(ds.root / "index.json"),
        "dataset_fps": ds.fps,
        "encoder_sha256": (ds.settings.get("encoder") or {}).get("sha256"),
        "train_speakers": sorted({v.speaker for v in data.train_videos}),
        "val_speakers": sorted({v.speaker for v in data.val_videos}),
        "options": asdict(run.cfg),
        "pca": pca_info,
        "world_size": run.env.world_size,
        "device": str(run.device),
        "torch": torch.__version__,
        "talkcli": __version__,
    }


def _save_checkpoint(
    run: FitRun,
    st: TrainState,
    epoch: int,
    row: dict[str, Any],
    improved: bool,
    gen_meta: dict[str, Any],
    training_meta: dict[str, Any],
) -> None:
    """Rank 0, after each epoch: the last model, the best one when it improved, the state."""
    meta = {
        **training_meta,
        "epochs": epoch + 1,
        "steps": st.step,
        "best_epoch": st.best_epoch,
        "best_loss": st.best_loss,
        "best_by": run.cfg.best_by,
        "last": row,
    }
    state = _state_payload(st, epoch, gen_meta)
    # every file of the epoch must fit before any is replaced (the old ones are freed only when
    # the new ones are renamed over them): a full disk keeps the previous set whole
    model_bytes = sum(t.numel() * 4 for t in st.model.state_dict().values())  # float32
    needed = model_bytes * (2 if improved else 1) + _tensor_bytes(state)
    require_space(run.outputs.state.parent, needed, "this epoch's checkpoints")
    save_audio2latent(run.outputs.last, st.model, gen_meta, meta)
    if improved:
        save_audio2latent(run.outputs.best, st.model, gen_meta, meta)
    save_state(run.outputs.state, state)


def _state_payload(st: TrainState, epoch: int, gen_meta: dict[str, Any]) -> dict[str, Any]:
    """The training-state file's content (what ``--resume`` reads back) after ``epoch``."""
    model = st.model
    return {
        "format": STATE_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": {**model.config(), "arch_name": _arch_name(model)},
        "optimizer": st.opt.state_dict(),
        "scheduler": st.sched.state_dict(),
        "epoch": epoch + 1,
        "step": st.step,
        "best_loss": st.best_loss,
        "best_epoch": st.best_epoch,
        "best_score": st.best_score,
        "history": st.history,
        "pca_info": st.pca_info,
        "generator": gen_meta,
        "talkcli": __version__,
    }


def _resumed_log(path: Path) -> list[str]:
    """The JSONL log lines of the run being resumed (it goes on in the same file)."""
    if not path.is_file():
        return []
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln]


def _arch_name(model: Audio2Latent) -> str:
    for name, arch in ARCH_PRESETS.items():
        if arch == model.arch:
            return name
    raise ValueError("model has an architecture outside ARCH_PRESETS")


def _write_log(path: Path, lines: list[str]) -> None:
    """The JSONL log, one line per epoch, rewritten atomically (it stays small)."""
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    with atomic_output(path, needed=len(raw)) as tmp:
        tmp.write_bytes(raw)


def read_log(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows
