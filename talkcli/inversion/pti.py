"""Pivotal Tuning Inversion (Roich et al. 2022; thesis 4.3.2.2, stage 2).

The frozen FFHQ generator distorts an unseen person's eyes, skin and teeth. PTI keeps the
identity's latent codes (the pivots) fixed and tunes only the generator's weights so that
G(pivot) reproduces each target frame: loss LPIPS + l2_weight * L2, Adam lr 3e-4, 350 steps,
early stop when LPIPS < 0.06. The optional locality regulariser samples latents around the pivots
(psi 0.5 towards the pivot, step alpha 30) and keeps the tuned generator's renderings of them
close to the original generator's, so the rest of the latent space the audio model was trained
in does not move.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from talkcli.guards import check_finite_loss, check_number
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
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on CPU
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
    use_amp = cfg.mixed_precision and device.type == "cuda"
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
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            img = G.synthesis(w, noise_mode="const").float()
            loss_lpips = lpips(_lpips_input(img), _lpips_input(tgt)).mean()
            loss_l2 = ((img - tgt) ** 2).mean()
            loss = cfg.lpips_weight * loss_lpips + cfg.l2_weight * loss_l2
            reg = None
            if G_frozen is not None:
                reg = _locality_loss(G, G_frozen, lpips, w, cfg, gen)
                loss = loss + reg
        check_finite_loss(float(loss.detach()), step + 1, "tune-pti")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps_run = step + 1
        row = {
            "step": steps_run,
            "lpips": float(loss_lpips.detach()),
            "l2": float(loss_l2.detach()),
            "locality": float(reg.detach()) if reg is not None else None,
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
        config=asdict(cfg),
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
