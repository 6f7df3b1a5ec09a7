"""Random-weight StyleGAN3 generators (configs T and R) in talkcli's StyleGAN3 file format.

Used by ``talkcli weights tiny --arch stylegan3`` and the tests. Initialisation follows NVIDIA's
(``randn`` weights stored unscaled, mapping weights divided by the lr multiplier, style biases 1,
Fourier frequencies drawn from a disc of radius ``first_cutoff``), except that the input
transform's affine weights, every bias and each layer's ``magnitude_ema`` get small random
values so that each term of the forward pass is exercised, and ``w_avg`` is the mean of mapped
z rather than zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from talkcli.models.stylegan3 import (
    StyleGAN3Config,
    StyleGAN3Generator,
    build_stylegan3,
    save_stylegan3,
)

TINY_FILES = {
    "stylegan3": "tiny-stylegan3-t.safetensors",
    "stylegan3-r": "tiny-stylegan3-r.safetensors",
}


def tiny_stylegan3_config(
    size: int = 64, radial: bool = False, **overrides: Any
) -> StyleGAN3Config:
    """A narrow config at ``size`` px: config T, or R with ``radial`` (1x1 convs, radial
    filters, as NVIDIA's ``--cfg=stylegan3-r``). W is 512-d and there are as many W+ layers
    as the tiny StyleGAN2 of the same size has (2 log2(size) - 2), so trajectories, pSp codes
    and audio models made for the tiny pack fit it."""
    kwargs: dict[str, Any] = {
        "z_dim": 512,
        "w_dim": 512,
        "img_resolution": size,
        "img_channels": 3,
        "mapping_kwargs": {"num_layers": 2},
        "channel_base": 512 if not radial else 1024,
        "channel_max": 32 if not radial else 64,
        "num_layers": 2 * (size.bit_length() - 1) - 4,
        "num_critical": 2,
        "margin_size": 4,
        "conv_kernel": 1 if radial else 3,
        "use_radial_filters": radial,
        "magnitude_ema_beta": 0.5 ** (32 / (20 * 1e3)),
        "num_fp16_res": 0,
        "conv_clamp": 256,
    }
    kwargs.update(overrides)
    return StyleGAN3Config(**kwargs)


def random_stylegan3(config: StyleGAN3Config, seed: int = 0) -> StyleGAN3Generator:
    """A generator of ``config`` with random weights drawn from ``seed`` (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    g = build_stylegan3(config)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    with torch.no_grad():
        lr = float(config.mapping_kwargs.get("lr_multiplier", 0.01))
        for idx in range(g.mapping.num_layers):
            fc = getattr(g.mapping, f"fc{idx}")
            fc.weight.copy_(randn(*fc.weight.shape) / lr)
            fc.bias.copy_(randn(*fc.bias.shape) * 0.1 / lr)
        _random_input(g, randn, config)
        for name in g.synthesis.layer_names:
            layer = getattr(g.synthesis, name)
            layer.weight.copy_(randn(*layer.weight.shape))
            layer.bias.copy_(randn(*layer.bias.shape) * 0.1)
            layer.affine.weight.copy_(randn(*layer.affine.weight.shape))
            layer.affine.bias.copy_(1 + 0.1 * randn(*layer.affine.bias.shape))
            layer.magnitude_ema.copy_(0.5 + torch.rand([], generator=gen))
        g.latent_avg = g.mean_latent(2000, seed=seed)
    return g


def _random_input(g: StyleGAN3Generator, randn: Any, config: StyleGAN3Config) -> None:
    """Fourier features drawn as NVIDIA draws them, plus a small random affine transform."""
    inp = g.synthesis.input
    freqs = randn(inp.channels, 2)
    radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
    freqs /= radii * radii.square().exp().pow(0.25)
    inp.freqs.copy_(freqs * inp.bandwidth)
    inp.phases.copy_(randn(inp.channels).remainder(1.0) - 0.5)
    inp.weight.copy_(randn(inp.channels, inp.channels))
    inp.affine.weight.copy_(randn(4, config.w_dim) * 0.1)
    inp.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))


def write_tiny_stylegan3(
    path: str | Path, size: int = 64, seed: int = 0, radial: bool = False
) -> Path:
    """Write a random StyleGAN3 (T, or R with ``radial``) at ``size`` px to ``path``."""
    g = random_stylegan3(tiny_stylegan3_config(size, radial=radial), seed=seed)
    meta = {"tiny": True, "seed": seed, "note": "random weights; outputs are not faces"}
    return save_stylegan3(path, g, metadata=meta)
