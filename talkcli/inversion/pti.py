"""Pivotal Tuning Inversion (Roich et al. 2022; thesis 4.3.2.2, stage 2).

The frozen FFHQ generator distorts an unseen person's eyes, skin and teeth. PTI keeps the
identity's latent codes (the pivots) fixed and tunes only the generator's weights so that
G(pivot) reproduces each target frame: loss LPIPS + l2_weight * L2, Adam lr 3e-4, 350 steps,
early stop when LPIPS < 0.06. The optional locality regulariser samples latents around the pivots
(psi 0.5 towards the pivot, step alpha 30) and keeps the tuned generator's renderings of them
close to the original generator's, so the rest of the latent space the audio model was trained
in does not move.

Pivots come from pSp (the thesis), from PTI's own W projection (``w-project``) or from a latents
file (``talkcli invert``). A tuned generator records how it was made in one metadata layout
(``pti_metadata``), written by ``tune-pti`` and by animate's identity cache alike;
``pti_summary`` reads the run's numbers back from it, and from the cache entries written before
that layout (their numbers under ``"pti"``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from talkcli import __version__
from talkcli.device import autocast, resolve_dtype
from talkcli.errors import InputFileError, UserError
from talkcli.guards import check_finite_loss, check_number
from talkcli.inversion.invert import Frames
from talkcli.inversion.project import LPIPS_SIZE
from talkcli.ranges import TUNE_PTI, option_name


@dataclass
class PTIConfig:
    """PTI hyper-parameters; defaults are PTI's and the thesis'."""

    steps: int = 350
    lr: float = 3e-4
    l2_weight: float = 1.0
    lpips_weight: float = 1.0
    stop_lpips: float = 0.06
    batch: int = 4  # frames drawn per step in multi-frame tuning
    locality: bool = False
    locality_alpha: float = 30.0
    locality_psi: float = 0.5
    locality_weight: float = 1.0  # PTI's regulizer_lambda
    locality_l2_weight: float = 0.1  # PTI's pt_l2_lambda
    locality_lpips_weight: float = 0.1  # PTI's pt_lpips_lambda
    locality_samples: int = 1
    dtype: str = "auto"  # autocast of the tuning steps: talkcli.device.resolve_dtype
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "lr", "l2_weight", "stop_lpips", "batch", "seed"):  # tune-pti's
            check_number(option_name(name), getattr(self, name), *TUNE_PTI[name])


@dataclass
class PTIResult:
    """What a tuning run did."""

    steps_run: int
    stopped_early: bool
    lpips_start: float
    l2_start: float
    lpips_end: float
    l2_end: float
    seconds: float
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)


def _lpips_input(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] > LPIPS_SIZE:
        return F.interpolate(x, size=(LPIPS_SIZE, LPIPS_SIZE), mode="area")
    return x


@torch.no_grad()
def evaluate_pivots(
    G: torch.nn.Module,
    lpips: torch.nn.Module,
    pivots: torch.Tensor,  # (N, n_latent, 512)
    targets: torch.Tensor,  # (N, 3, S, S) in [-1, 1]
    batch: int = 8,
) -> tuple[float, float]:
    """Mean (LPIPS, L2) between G(pivot) and its target over all frames."""
    lp, l2, n = 0.0, 0.0, pivots.shape[0]
    for s in range(0, n, batch):
        img = G.synthesis(pivots[s : s + batch], noise_mode="const").float()
        tgt = targets[s : s + batch]
        lp += float(lpips(_lpips_input(img), _lpips_input(tgt)).sum())
        l2 += float(((img - tgt) ** 2).flatten(1).mean(1).sum())
    return lp / n, l2 / n


def check_pivots(G: torch.nn.Module, pivots: torch.Tensor, targets: torch.Tensor) -> None:
    """Shapes must agree: one (n_latent, 512) pivot per (3, S, S) target frame."""
    if pivots.dim() != 3 or pivots.shape[1:] != (G.n_latent, G.style_dim):
        raise ValueError(
            f"pivots have shape {tuple(pivots.shape)}, expected (N, {G.n_latent}, {G.style_dim})"
        )
    if targets.dim() != 4 or targets.shape[1:] != (3, G.size, G.size):
        raise ValueError(
            f"targets have shape {tuple(targets.shape)}, expected (N, 3, {G.size}, {G.size})"
        )
    if pivots.shape[0] != targets.shape[0]:
        raise ValueError(f"{pivots.shape[0]} pivots for {targets.shape[0]} frames")


def _locality_loss(
    G: torch.nn.Module,
    G_frozen: torch.nn.Module,
    lpips: torch.nn.Module,
    pivots: torch.Tensor,  # (b, n_latent, 512)
    cfg: PTIConfig,
    gen: torch.Generator,
) -> torch.Tensor:
    """PTI's locality regulariser: renders of latents near the pivots stay as they were."""
    device = pivots.device
    total = pivots.new_zeros(())
    for _ in range(cfg.locality_samples):
        z = torch.randn(pivots.shape[0], G.style_dim, generator=gen).to(device)
        with torch.no_grad():
            w_z = G_frozen.mapping(z)  # (b, 512)
            avg = G_frozen.latent_avg.reshape(1, -1).to(device)
            w_z = avg + cfg.locality_psi * (w_z - avg)  # truncation psi 0.5
            w_z = w_z.unsqueeze(1).expand(-1, G.n_latent, -1)  # (b, n_latent, 512)
            direction = w_z - pivots
            norm = direction.flatten(1).norm(dim=1).clamp_min(1e-8).view(-1, 1, 1)
            w_code = pivots + cfg.locality_alpha * direction / norm
            old = G_frozen.synthesis(w_code, noise_mode="const").float()
        new = G.synthesis(w_code, noise_mode="const").float()
        l2 = ((new - old) ** 2).mean()
        lp = lpips(_lpips_input(new), _lpips_input(old)).mean()
        total = total + cfg.locality_l2_weight * l2 + cfg.locality_lpips_weight * lp
    return cfg.locality_weight * total


def tune(
    G: torch.nn.Module,
    lpips: torch.nn.Module,
    pivots: torch.Tensor,  # (N, n_latent, 512)
    targets: torch.Tensor,  # (N, 3, S, S) in [-1, 1]
    cfg: PTIConfig | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> PTIResult:
    """Tune ``G`` in place so that G(pivots[i]) matches targets[i]; the pivots stay fixed."""
    cfg = cfg or PTIConfig()
    check_pivots(G, pivots, targets)
    device = pivots.device
    gen = torch.Generator().manual_seed(cfg.seed)
    G_frozen = None
    if cfg.locality:
        G_frozen = copy.deepcopy(G).eval()
        for p in G_frozen.parameters():
            p.requires_grad_(False)
    lpips_start, l2_start = evaluate_pivots(G, lpips, pivots, targets)
    for p in G.parameters():
        p.requires_grad_(True)
    G.train()
    opt = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    dtype = resolve_dtype(cfg.dtype, device)  # fp32 | bf16 | fp16
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    n = pivots.shape[0]
    history: list[dict] = []
    stopped = False
    started = time.perf_counter()
    steps_run = 0
    for step in range(cfg.steps):
        if n <= cfg.batch:
            idx = torch.arange(n)
        else:
            idx = torch.randperm(n, generator=gen)[: cfg.batch]
        w = pivots[idx.to(device)]
        tgt = targets[idx.to(device)]
        with autocast(dtype, device):
            img = G.synthesis(w, noise_mode="const").float()
            loss_lpips = lpips(_lpips_input(img), _lpips_input(tgt)).mean()
            loss_l2 = ((img - tgt) ** 2).mean()
            loss = cfg.lpips_weight * loss_lpips + cfg.l2_weight * loss_l2
            reg = None
            if G_frozen is not None:
                reg = _locality_loss(G, G_frozen, lpips, w, cfg, gen)
                loss = loss + reg
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        # One host sync per step (the early stop needs the step's LPIPS): every number at once,
        # after the backward pass is queued and before a non-finite loss reaches the weights.
        parts = [loss, loss_lpips, loss_l2, reg if reg is not None else loss_l2]
        total, lp, l2, locality = torch.stack([t.detach().float() for t in parts]).tolist()
        check_finite_loss(total, step + 1, "tune-pti")
        scaler.step(opt)
        scaler.update()
        steps_run = step + 1
        row = {
            "step": steps_run,
            "lpips": lp,
            "l2": l2,
            "locality": locality if reg is not None else None,
        }
        history.append(row)
        if on_step is not None:
            on_step(steps_run, row)
        if row["lpips"] < cfg.stop_lpips:  # PTI's early stop, on the step's LPIPS
            stopped = True
            break
    G.eval()
    for p in G.parameters():
        p.requires_grad_(False)
    lpips_end, l2_end = evaluate_pivots(G, lpips, pivots, targets)
    check_finite_loss(lpips_end + l2_end, steps_run, "tune-pti (tuned generator)")
    return PTIResult(
        steps_run=steps_run,
        stopped_early=stopped,
        lpips_start=lpips_start,
        l2_start=l2_start,
        lpips_end=lpips_end,
        l2_end=l2_end,
        seconds=time.perf_counter() - started,
        history=history,
        config={**asdict(cfg), "dtype": dtype},  # the precision used (auto resolved)
    )


PIVOT_METHODS = ("psp", "w-project", "file")


def w_project_pivots(
    G: torch.nn.Module,
    lpips: torch.nn.Module,
    targets: torch.Tensor,  # (N, 3, S, S)
    steps: int = 450,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> torch.Tensor:
    """PTI's own pivots: each frame projected into W (one code for every layer) from w_avg."""
    from talkcli.inversion.project import ProjectionConfig, project_frames

    cfg = ProjectionConfig(steps=steps, first_steps=steps, lr=0.01, space="w", sequence=False)
    results = project_frames(G, lpips, targets, cfg, seed=seed, on_step=on_step)
    return torch.stack([r.w for r in results])  # (N, n_latent, 512)


# -- pivots --------------------------------------------------------------------------------------


@dataclass
class Pivots:
    """The codes PTI tunes around, one per frame, and where they came from (for the metadata)."""

    w: torch.Tensor  # (N, n_latent, 512) on the tuning device
    source: dict[str, Any]  # {"kind": "psp" | "w-project" | "file" | "animate", ...}


def pivots_path_for(out: Path) -> Path:
    """Where the pivots are saved beside a tuned generator: ``tuned.pt`` -> ``tuned.pivots.npz``."""
    return out.with_name(out.stem + ".pivots.npz")


def pivots_from_file(path: Path, G: torch.nn.Module, n_frames: int, device: torch.device) -> Pivots:
    """Pivots saved by ``talkcli invert``: one (n_latent, 512) code per input frame."""
    from talkcli.inversion.invert import load_latents
    from talkcli.io.files import sha256_file

    w, _names, _meta = load_latents(path)  # (N, n_latent, 512) float32
    if w.shape[1:] != (G.n_latent, G.style_dim):
        raise InputFileError(
            path,
            f"pivots have shape {w.shape[1:]}, the generator expects ({G.n_latent}, {G.style_dim})",
            "invert with the same generator",
        )
    if w.shape[0] != n_frames:
        raise InputFileError(
            path,
            f"holds {w.shape[0]} pivots for {n_frames} input frame(s)",
            "pass the same frames that were inverted",
        )
    source = {"kind": "file", "path": str(path), "sha256": sha256_file(path)}
    return Pivots(torch.from_numpy(w).to(device), source)


def encoder_pivots(encoder_path: Path, images: np.ndarray, device: torch.device) -> Pivots:
    """pSp codes of the frames (N, H, W, 3) uint8 (the thesis' pivots), 4 frames per batch."""
    from talkcli.io.files import sha256_file
    from talkcli.models.psp import load_encoder

    E = load_encoder(encoder_path, device=device)
    with torch.no_grad():
        w = torch.cat(
            [E.encode_images(images[s : s + 4]).float() for s in range(0, len(images), 4)]
        ).to(device)  # (N, n_latent, 512)
    del E
    source = {"kind": "psp", "path": str(encoder_path), "sha256": sha256_file(encoder_path)}
    return Pivots(w, source)


def compute_pivots(
    method: str,
    G: torch.nn.Module,
    lpips: torch.nn.Module,
    frames: Frames,
    targets: torch.Tensor,  # (N, 3, S, S) in [-1, 1]
    *,
    pivots_file: Path | None = None,
    encoder_path: Path | None = None,
    project_steps: int = 450,
    seed: int = 0,
    on_project_step: Callable[[int, float], None] | None = None,
) -> Pivots:
    """The pivots of ``frames``: from ``pivots_file`` when given, else by ``method``.

    ``method`` is ``psp`` (needs ``encoder_path``) or ``w-project`` (``project_steps`` per
    frame, ``on_project_step`` after each). Pivots that do not fit the frames or the generator
    are a one-line ``UserError``.
    """
    device = targets.device
    if pivots_file is not None:
        pivots = pivots_from_file(pivots_file, G, len(frames.names), device)
    elif method == "psp":
        if encoder_path is None:
            raise ValueError("psp pivots need the encoder file")
        pivots = encoder_pivots(encoder_path, frames.images, device)
    elif method == "w-project":
        w = w_project_pivots(
            G, lpips, targets, steps=project_steps, seed=seed, on_step=on_project_step
        )
        pivots = Pivots(w, {"kind": "w-project", "steps": project_steps})
    else:
        raise ValueError(f"pivot method {method!r}: expected psp or w-project")
    try:
        check_pivots(G, pivots.w, targets)
    except ValueError as exc:
        raise UserError(f"pivots do not match the frames: {exc}") from None
    return pivots


# -- the metadata of a tuned generator -----------------------------------------------------------

PTI_KIND = "pti"
LOSS_KEYS = ("lpips_start", "l2_start", "lpips_end", "l2_end")


def pti_metadata(
    result: PTIResult,
    base_generator: tuple[Path, str],
    pivot_source: Mapping[str, Any],
    *,
    options: Mapping[str, Any] | None = None,
    pivots_file: str | None = None,
    frames: list[str] | None = None,
    input_sha256: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The one metadata layout of a tuned generator (tune-pti's file and animate's cache).

    ``base_generator``: (path, sha256) of the generator that was tuned. ``options`` default to
    the run's ``PTIConfig``; ``pivots_file``, ``frames`` and ``input_sha256`` (the pivots saved
    beside it, the input frames and files) are left out when not given.
    """
    path, sha = base_generator
    meta: dict[str, Any] = {
        "kind": PTI_KIND,
        "talkcli": __version__,
        "base_generator": {"path": str(path), "sha256": sha},
        "pivot_source": dict(pivot_source),
    }
    if pivots_file is not None:
        meta["pivots_file"] = pivots_file
    if frames is not None:
        meta["frames"] = list(frames)
    if input_sha256 is not None:
        meta["input_sha256"] = dict(input_sha256)
    meta.update(
        steps_run=result.steps_run,
        stopped_early=result.stopped_early,
        losses={key: getattr(result, key) for key in LOSS_KEYS},
        seconds=result.seconds,
        options=dict(result.config if options is None else options),
    )
    return meta


def pti_summary(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The run's numbers (steps, early stop, LPIPS and L2 before/after, seconds) from a tuned
    generator's metadata; ``{}`` when it has none.

    Reads ``pti_metadata``'s layout and the layout animate's cache wrote before it (the same
    numbers under ``"pti"``), so old cache entries still hit with the same report.
    """
    losses = metadata.get("losses")
    if not isinstance(losses, Mapping):  # animate's cache before the shared layout, or no PTI
        old = metadata.get("pti", {})
        return dict(old) if isinstance(old, Mapping) else {}
    return {
        "steps_run": metadata.get("steps_run"),
        "stopped_early": metadata.get("stopped_early"),
        "lpips_start": losses.get("lpips_start"),
        "lpips_end": losses.get("lpips_end"),
        "l2_start": losses.get("l2_start"),
        "l2_end": losses.get("l2_end"),
        "seconds": metadata.get("seconds"),
    }


# -- a whole tune-pti run ------------------------------------------------------------------------


@dataclass
class PTIRequest:
    """One tune-pti run: aligned frames in, a tuned generator (``out``) and its pivots out.

    The caller resolves the model files (registry, options); ``lpips_paths`` are the
    (backbone, heads) files of ``lpips_net``, ``encoder_path`` the pSp file for ``psp`` pivots.
    """

    frames: Frames
    out: Path
    generator_path: Path
    lpips_paths: tuple[Path, Path]
    lpips_net: str = "alex"
    pivot_method: str = "psp"  # psp | w-project; a pivots_file replaces both
    pivots_file: Path | None = None
    encoder_path: Path | None = None
    project_steps: int = 450
    config: PTIConfig = field(default_factory=PTIConfig)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    network: str = "G_ema"  # of an NVIDIA pickle generator; other files ignore it


@dataclass
class PTIModels:
    """The generator to tune (in place), LPIPS, and the frames as its targets."""

    G: Any
    lpips: torch.nn.Module
    targets: torch.Tensor  # (N, 3, S, S) in [-1, 1] at the generator's size


@dataclass
class PTIOutcome:
    """What a tune-pti run wrote and measured."""

    out: Path
    pivots_path: Path
    result: PTIResult
    metadata: dict[str, Any]


def load_pti_models(req: PTIRequest) -> PTIModels:
    """Seed torch with the run's seed, then load G and LPIPS and turn the frames into targets."""
    from talkcli.inversion.invert import frames_to_tensor
    from talkcli.models.stylegan2 import check_savable
    from talkcli.runtime import ModelPaths, ModelSet

    torch.manual_seed(req.config.seed)
    paths = ModelPaths(
        generator=req.generator_path,
        lpips=tuple(req.lpips_paths),
        lpips_net=req.lpips_net,
        network=req.network,
    )
    models = ModelSet(device=req.device, paths=paths, lpips_net=req.lpips_net)
    G = models.generator()
    check_savable(G, req.generator_path)
    lpips = models.lpips()
    targets = frames_to_tensor(req.frames.images, G.size, req.device)  # (N, 3, S, S)
    return PTIModels(G, lpips, targets)


def request_pivots(
    req: PTIRequest,
    models: PTIModels,
    on_project_step: Callable[[int, float], None] | None = None,
) -> Pivots:
    """``compute_pivots`` with the request's source (file, pSp or W projection)."""
    return compute_pivots(
        req.pivot_method,
        models.G,
        models.lpips,
        req.frames,
        models.targets,
        pivots_file=req.pivots_file,
        encoder_path=req.encoder_path,
        project_steps=req.project_steps,
        seed=req.config.seed,
        on_project_step=on_project_step,
    )


def save_tuned(req: PTIRequest, models: PTIModels, pivots: Pivots, result: PTIResult) -> PTIOutcome:
    """Write the tuned generator (with ``pti_metadata``) and its pivots beside it.

    Both go to temporary names; the generator is renamed first, then its pivots, so an
    interrupted run leaves neither (and a finished .pt always has its pivots beside it).
    """
    from talkcli.inversion.invert import InvertResult, write_latents
    from talkcli.io.files import atomic_output, sha256_file
    from talkcli.models.stylegan2 import save_generator

    pivots_out = pivots_path_for(req.out)
    frames = req.frames
    metadata = pti_metadata(
        result,
        (req.generator_path, sha256_file(req.generator_path)),
        pivots.source,
        options={**result.config, "lpips_net": req.lpips_net, "device": str(req.device)},
        pivots_file=pivots_out.name,
        frames=frames.sources,
        input_sha256=frames.files,
    )
    saved = InvertResult(
        w=pivots.w.detach().float().cpu().numpy().astype(np.float32),
        names=frames.names,
        meta={
            "method": pivots.source["kind"],
            "pivots_for": req.out.name,
            "sources": frames.sources,
        },
    )
    with atomic_output(pivots_out) as tmp_pivots:
        write_latents(tmp_pivots, saved)
        save_generator(req.out, models.G, metadata)
    return PTIOutcome(req.out, pivots_out, result, metadata)


def tune_pti(
    req: PTIRequest,
    *,
    on_project_step: Callable[[int, float], None] | None = None,
    on_tune_step: Callable[[int, dict], None] | None = None,
) -> PTIOutcome:
    """A whole tune-pti run (what the command does, for batch scripts): load, pivots, tune, save.

    Same seeds and order as ``talkcli tune-pti``, so the same request gives the same files.
    """
    models = load_pti_models(req)
    pivots = request_pivots(req, models, on_project_step)
    G, lpips, targets = models.G, models.lpips, models.targets
    result = tune(G, lpips, pivots.w, targets, req.config, on_step=on_tune_step)
    return save_tuned(req, models, pivots, result)
