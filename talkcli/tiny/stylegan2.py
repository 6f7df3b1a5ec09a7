"""Random-weight StyleGAN2 generator state dicts in the official rosinality ``g_ema`` layout.

Used by the tiny test packs (``talkcli weights tiny``) and the tests: same keys, same meaning,
small widths. Initialisation follows rosinality's (``randn`` weights stored unscaled, mapping
weights divided by ``lr_mul``, modulation bias 1), except that every bias and noise weight is
set to small random values (so that each term of the forward pass is exercised) and the ToRGB
weights are damped so that images come out mostly within [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from talkcli.models.ops import make_kernel

BLUR_KERNEL = (1, 3, 3, 1)
LR_MLP = 0.01
RGB_GAIN = 0.25  # ToRGB weight damping: image std ~0.3-0.5 at 16..1024 px


def tiny_channels(size: int, width: int = 32) -> dict[int, int]:
    """Narrow widths: ``width`` up to 16 px, half of it to 64 px, a quarter (min 4) above."""
    out = {}
    res = 4
    while res <= size:
        if res <= 16:
            out[res] = width
        elif res <= 64:
            out[res] = max(width // 2, 4)
        else:
            out[res] = max(width // 4, 4)
        res *= 2
    return out


def _full_channels(size: int, channel_multiplier: int) -> dict[int, int]:
    from talkcli.models.stylegan2 import default_channels

    return default_channels(size, channel_multiplier)


def generator_state_dict(
    size: int,
    channels: Mapping[int, int],
    style_dim: int = 512,
    n_mlp: int = 8,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random ``g_ema`` state dict for any architecture, keys in the official order."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std + mean

    log_size = size.bit_length() - 1
    if size < 4 or 2**log_size != size:
        raise ValueError(f"size must be a power of two >= 4, got {size}")
    missing = [2**i for i in range(2, log_size + 1) if 2**i not in channels]
    if missing:
        raise ValueError(f"channels lacks widths for resolutions {missing}")
    kernel = make_kernel(BLUR_KERNEL) * 4  # blur after the up conv, and the RGB upsampler

    sd: dict[str, torch.Tensor] = {}
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = randn(style_dim, style_dim) / LR_MLP
        sd[f"style.{i}.bias"] = randn(style_dim, std=0.1) / LR_MLP

    def styled(prefix: str, cin: int, cout: int, up: bool) -> None:
        sd[f"{prefix}.conv.weight"] = randn(1, cout, cin, 3, 3)
        if up:
            sd[f"{prefix}.conv.blur.kernel"] = kernel.clone()
        sd[f"{prefix}.conv.modulation.weight"] = randn(cin, style_dim)
        sd[f"{prefix}.conv.modulation.bias"] = randn(cin, std=0.1, mean=1.0)
        sd[f"{prefix}.noise.weight"] = randn(1, std=0.05).abs() + 0.02
        sd[f"{prefix}.activate.bias"] = randn(cout, std=0.1)

    def to_rgb(prefix: str, cin: int, up: bool) -> None:
        sd[f"{prefix}.bias"] = randn(1, 3, 1, 1, std=0.05)
        if up:
            sd[f"{prefix}.upsample.kernel"] = kernel.clone()
        sd[f"{prefix}.conv.weight"] = randn(1, 3, cin, 1, 1, std=RGB_GAIN)
        sd[f"{prefix}.conv.modulation.weight"] = randn(cin, style_dim)
        sd[f"{prefix}.conv.modulation.bias"] = randn(cin, std=0.1, mean=1.0)

    c4 = channels[4]
    sd["input.input"] = randn(1, c4, 4, 4)
    styled("conv1", c4, c4, up=False)
    to_rgb("to_rgb1", c4, up=False)
    cin = c4
    ups = list(range(3, log_size + 1))
    for j, i in enumerate(ups):
        cout = channels[2**i]
        styled(f"convs.{2 * j}", cin, cout, up=True)
        styled(f"convs.{2 * j + 1}", cout, cout, up=False)
        cin = cout
    for j, i in enumerate(ups):
        to_rgb(f"to_rgbs.{j}", channels[2**i], up=True)
    for layer in range((log_size - 2) * 2 + 1):
        res = 2 ** ((layer + 5) // 2)
        sd[f"noises.noise_{layer}"] = randn(1, 1, res, res)
    return sd


def tiny_generator_state_dict(
    size: int = 64,
    style_dim: int = 512,
    channels: int | Mapping[int, int] | None = None,
    n_mlp: int = 8,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random ``g_ema`` state dict at small widths (default ``tiny_channels(size)``).

    ``channels``: None, one width for every resolution, or a {resolution: width} dict.
    """
    if channels is None:
        chans = tiny_channels(size)
    elif isinstance(channels, int):
        chans = {2**i: channels for i in range(2, size.bit_length())}
    else:
        chans = {int(k): int(v) for k, v in channels.items()}
    return generator_state_dict(size, chans, style_dim=style_dim, n_mlp=n_mlp, seed=seed)


def full_generator_state_dict(
    size: int = 1024, seed: int = 0, channel_multiplier: int = 2
) -> dict[str, torch.Tensor]:
    """A random ``g_ema`` state dict with the exact official widths (FFHQ config-f at 1024)."""
    return generator_state_dict(
        size, _full_channels(size, channel_multiplier), style_dim=512, n_mlp=8, seed=seed
    )


def tiny_generator_checkpoint(
    size: int = 64,
    style_dim: int = 512,
    channels: int | Mapping[int, int] | None = None,
    n_mlp: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """``{'g_ema': sd, 'latent_avg': (style_dim,)}`` like rosinality's files; latent_avg is the
    mean of 10,000 mapped z."""
    from talkcli.models.stylegan2 import generator_from_state_dict

    sd = tiny_generator_state_dict(size, style_dim, channels, n_mlp, seed)
    g = generator_from_state_dict(sd)
    return {"g_ema": sd, "latent_avg": g.mean_latent(10_000, seed=seed)}
