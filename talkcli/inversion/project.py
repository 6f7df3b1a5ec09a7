"""Optimisation-based projection into W or W+ (thesis chapter 3, Algorithms 1 and 2).

Loss per frame: LPIPS(G(w), x) + l2_weight * mean((G(w) - x)^2), Adam on w (Image2StyleGAN).
Algorithm 1 starts every frame from its own initial code (the average latent or a pSp code);
Algorithm 2 starts each frame after the first from the previous frame's result, which keeps the
trajectory smooth and needs far fewer steps per frame (thesis: 5000 for the first, 500 after).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from talkcli.device import autocast, resolve_dtype
from talkcli.guards import check_finite_loss, check_number
from talkcli.ranges import INVERT, option_name

LPIPS_SIZE = 256  # LPIPS is computed at 256x256, as the StyleGAN2 projector and PTI do


@dataclass
class ProjectionConfig:
    """Options of one projection run."""

    steps: int = 500  # Adam steps per frame (Alg. 2: frames after the first)
    first_steps: int | None = None  # steps for the first / independently started frames
    lr: float = 0.01  # Image2StyleGAN uses 0.01
    l2_weight: float = 1.0  # lambda in thesis Alg. 1
    space: str = "wplus"  # "w" (one code for every layer) or "wplus"
    sequence: bool = True  # Alg. 2 (warm start from the previous frame) or Alg. 1
    noise_ramp: float = 0.05  # latent noise (x w_std) early in from-scratch runs, decays to 0
    noise_mode: str = "const"
    dtype: str = "auto"  # autocast of the steps' forward passes: talkcli.device.resolve_dtype

    def __post_init__(self) -> None:
        if self.space not in ("w", "wplus"):
            raise ValueError(f"space must be 'w' or 'wplus', not {self.space!r}")
        for name in ("steps", "first_steps", "lr", "l2_weight"):  # `invert`'s ranges
            check_number(option_name(name), getattr(self, name), *INVERT[name])


@dataclass
class FrameResult:
    """Codes and losses for one projected frame."""

    w: torch.Tensor  # (n_latent, 512)
    steps: int
    loss_start: float
    loss_end: float
    lpips_end: float
    l2_end: float
    history: list[float] = field(default_factory=list)


def _prepare_target(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] > LPIPS_SIZE:
        return F.interpolate(x, size=(LPIPS_SIZE, LPIPS_SIZE), mode="area")
    return x


def reconstruction_loss(
    G: torch.nn.Module,
    lpips: torch.nn.Module,
    w_plus: torch.Tensor,  # (B, n_latent, 512)
    target: torch.Tensor,  # (B, 3, S, S) in [-1, 1]
    l2_weight: float,
    noise_mode: str = "const",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (total, lpips, l2) losses of G(w_plus) against ``target``; each (B,)."""
    img = G.synthesis(w_plus, noise_mode=noise_mode).float()  # (B, 3, S, S); fp32 losses
    if img.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"target images are {tuple(target.shape[-2:])} but the generator renders "
            f"{tuple(img.shape[-2:])}"
        )
    l2 = ((img - target) ** 2).flatten(1).mean(dim=1)
    perceptual = lpips(_prepare_target(img), _prepare_target(target)).reshape(-1)
    return perceptual + l2_weight * l2, perceptual, l2


def _w_std(G: torch.nn.Module, n: int = 2000, seed: int = 123) -> float:
    gen = torch.Generator().manual_seed(seed)
    p = next(G.parameters())
    z = torch.randn(n, G.style_dim, generator=gen).to(p.device)
    with torch.no_grad():
        w = G.mapping(z)
    return float(((w - w.mean(0)) ** 2).sum(1).mean().sqrt())


def project_frame(
    G: torch.nn.Module,
    lpips: torch.nn.Module,
    target: torch.Tensor,  # (1, 3, S, S) in [-1, 1]
    init: torch.Tensor,  # (n_latent, 512)
    steps: int,
    cfg: ProjectionConfig,
    *,
    from_scratch: bool,
    w_std: float = 1.0,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> FrameResult:
    """Optimise one frame's code from ``init`` for ``steps`` Adam steps."""
    if init.dim() != 2 or init.shape != (G.n_latent, G.style_dim):
        raise ValueError(f"init must be ({G.n_latent}, {G.style_dim}), got {tuple(init.shape)}")
    base = init.detach().clone()
    if cfg.space == "w":
        base = base.mean(dim=0, keepdim=True)  # (1, 512): one code for every layer
    w = base.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=cfg.lr, betas=(0.9, 0.999))
    dtype = resolve_dtype(cfg.dtype, target.device)  # fp32 | bf16 | fp16
    history: list[float] = []

    def expand(code: torch.Tensor) -> torch.Tensor:
        return code.expand(G.n_latent, -1).unsqueeze(0)  # (1, n_latent, 512)

    with torch.no_grad():
        start, _, _ = reconstruction_loss(
            G, lpips, expand(w), target, cfg.l2_weight, cfg.noise_mode
        )
    for step in range(steps):
        code = w
        if from_scratch and cfg.noise_ramp > 0:
            # StyleGAN2-projector style latent noise: explores early, vanishes by 75% of the run.
            strength = w_std * cfg.noise_ramp * max(0.0, 1.0 - step / (0.75 * steps)) ** 2
            if strength > 0:
                noise = torch.randn(w.shape, generator=generator).to(w.device)
                code = w + noise * strength
        with autocast(dtype, target.device):
            loss, _, _ = reconstruction_loss(
                G, lpips, expand(code), target, cfg.l2_weight, cfg.noise_mode
            )
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        value = float(loss.detach().float().sum())  # the step's one host sync
        check_finite_loss(value, step + 1, "optimisation")
        opt.step()
        history.append(value)
        if on_step is not None:
            on_step(step, history[-1])
    with torch.no_grad():
        final = expand(w.detach())
        total, perceptual, l2 = reconstruction_loss(
            G, lpips, final, target, cfg.l2_weight, cfg.noise_mode
        )
    check_finite_loss(float(total.sum()), steps, "optimisation (final code)")
    return FrameResult(
        w=final[0].detach().clone(),
        steps=steps,
        loss_start=float(start),
        loss_end=float(total),
        lpips_end=float(perceptual),
        l2_end=float(l2),
        history=history,
    )


def project_frames(
    G: torch.nn.Module,
    lpips: torch.nn.Module,
    targets: torch.Tensor,  # (N, 3, S, S) in [-1, 1]
    cfg: ProjectionConfig,
    init: torch.Tensor | None = None,  # (N, n_latent, 512) per-frame starts (pSp codes), or None
    *,
    seed: int = 0,
    on_frame: Callable[[int, FrameResult], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[FrameResult]:
    """Project a sequence of frames (Alg. 2 when ``cfg.sequence``, else Alg. 1).

    Without ``init`` every from-scratch start is the average latent ``G.latent_avg``. With ``init``
    (hybrid: pSp codes), Alg. 2 starts frame t from result t-1 moved by the encoder's own step
    ``init[t] - init[t-1]``, so the encoder's motion is kept and the optimiser only refines it.
    """
    if targets.dim() != 4 or targets.shape[1] != 3:
        raise ValueError(f"targets must be (N, 3, S, S), got {tuple(targets.shape)}")
    n = targets.shape[0]
    if init is not None and init.shape != (n, G.n_latent, G.style_dim):
        raise ValueError(
            f"init must be ({n}, {G.n_latent}, {G.style_dim}), got {tuple(init.shape)}"
        )
    device = targets.device
    avg = G.latent_avg.detach().to(device).reshape(1, -1).expand(G.n_latent, -1)  # (n_latent, 512)
    first_steps = cfg.first_steps if cfg.first_steps is not None else cfg.steps
    w_std = _w_std(G) if cfg.noise_ramp > 0 else 1.0
    gen = torch.Generator().manual_seed(seed)
    results: list[FrameResult] = []
    for t in range(n):
        warm = cfg.sequence and t > 0
        if warm:
            start = results[-1].w.to(device)
            if init is not None:
                start = start + (init[t] - init[t - 1]).to(device)
            steps = cfg.steps
        else:
            start = init[t].to(device) if init is not None else avg
            steps = first_steps if (cfg.sequence or init is None) else cfg.steps
        result = project_frame(
            G,
            lpips,
            targets[t : t + 1],
            start,
            steps,
            cfg,
            from_scratch=not warm and init is None,
            w_std=w_std,
            generator=gen,
            on_step=on_step,
        )
        results.append(result)
        if on_frame is not None:
            on_frame(t, result)
    return results


def mean_latent_step(w: torch.Tensor) -> float:
    """Mean Euclidean distance between consecutive codes of a (N, n_latent, 512) trajectory."""
    if w.shape[0] < 2:
        return 0.0
    return float((w[1:] - w[:-1]).flatten(1).norm(dim=1).mean())
