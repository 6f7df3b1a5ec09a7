"""The StyleGAN2 generator with rosinality's semantics and state-dict layout.

Loads, strictly (every key present, nothing extra, every shape right):

- rosinality checkpoints ``{'g_ema': state_dict, 'latent_avg': (512,)}`` (training checkpoints
  with ``g``/``d``/optimisers too: only ``g_ema`` is used),
- pSp checkpoints ``{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg': (18, 512), 'opts'}``
  (the ``decoder.*`` part),
- talkcli's tuned generators: the rosinality layout plus a ``'talkcli'`` metadata dict.

The architecture (size, style dimension, mapping depth, channel width at every resolution) is
read from the state dict, so channel multiplier 1 or 2 and the narrow tiny test packs all load.

``G.state_dict()`` is exactly the official rosinality ``g_ema`` layout (``latent_avg`` is a
non-persistent buffer), so ``save_generator`` writes files that rosinality's code also loads.

>>> G = load_generator("stylegan2-ffhq-config-f.pt")
>>> img = G.synthesis(w_plus, noise_mode="const")  # (B, 18, 512) -> (B, 3, 1024, 1024)
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from talkcli.device import resolve_device
from talkcli.errors import ModelFileError
from talkcli.io.files import atomic_output, require_file
from talkcli.models.ops import (
    blur_pad_for_upsample,
    fused_leaky_relu,
    make_kernel,
    modulated_conv2d,
    upfirdn2d,
    upsample_pad,
)
from talkcli.models.state_dict import describe_mismatch, short_list
from talkcli.weights.safe_load import load_torch_file

log = logging.getLogger(__name__)  # notes and warnings; the CLI shows them (install_log_handler)
BLUR_KERNEL = (1, 3, 3, 1)
NOISE_MODES = ("const", "random", "none")
LATENT_AVG_SAMPLES = 10_000
_FORMAT_HINT = (
    "expected a rosinality StyleGAN2 checkpoint {'g_ema', 'latent_avg'}, a pSp checkpoint "
    "{'state_dict': {'decoder.*'}}, or a generator saved by talkcli"
)


# -- layers (module and parameter names give the rosinality keys) ---------------------------------


class PixelNorm(nn.Module):
    """Normalise each vector to unit mean square along dim 1."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weight * lr_mul / sqrt(in), bias * lr_mul)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init))
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            out = nn.functional.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, self.bias * self.lr_mul)
        return nn.functional.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class Upsample(nn.Module):
    """FIR upsampling by 2 (used on the RGB skip path); buffer ``kernel`` = make_kernel * 4."""

    def __init__(self, kernel: Sequence[float] = BLUR_KERNEL, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * (factor**2))
        self.pad = upsample_pad(len(kernel), factor)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class Blur(nn.Module):
    """FIR blur; buffer ``kernel`` (scaled by ``upsample_factor**2`` after a transposed conv)."""

    def __init__(
        self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1
    ) -> None:
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * (upsample_factor**2)
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Modulated (and demodulated) convolution; ``weight`` is (1, out, in, k, k)."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        if upsample:
            pad = blur_pad_for_upsample(len(blur_kernel), kernel_size, factor=2)
            self.blur = Blur(blur_kernel, pad=pad, upsample_factor=2)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.weight = nn.Parameter(
            torch.randn(1, out_channel, in_channel, kernel_size, kernel_size)
        )
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)
        self.demodulate = demodulate

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        s = self.modulation(style)  # (B, in)
        return modulated_conv2d(
            x,
            self.scale * self.weight,
            s,
            demodulate=self.demodulate,
            upsample=self.upsample,
            blur_kernel=self.blur.kernel if self.upsample else None,
            blur_pad=self.blur.pad if self.upsample else (0, 0),
        )


class NoiseInjection(nn.Module):
    """Adds ``weight * noise``; noise (B or 1, 1, H, W), fresh N(0, 1) when None."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 input, ``input`` (1, C, 4, 4), repeated over the batch."""

    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU(0.2) * sqrt(2); parameter ``bias`` (C,)."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally upsampling) + noise + bias/leaky ReLU."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channel,
            out_channel,
            kernel_size,
            style_dim,
            upsample=upsample,
            blur_kernel=blur_kernel,
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) + bias, plus the upsampled previous skip."""

    def __init__(
        self,
        in_channel: int,
        style_dim: int,
        upsample: bool = True,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# -- the generator ---------------------------------------------------------------------------------


def default_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """Official channel widths per resolution (4 .. size)."""
    cm = channel_multiplier
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm}
    table.update({512: 32 * cm, 1024: 16 * cm, 2048: 8 * cm})
    return {r: table[r] for r in _resolutions(size)}


def _resolutions(size: int) -> list[int]:
    log_size = int(math.log2(size))
    if size < 4 or 2**log_size != size:
        raise ValueError(f"StyleGAN2 size must be a power of two >= 4, got {size}")
    return [2**i for i in range(2, log_size + 1)]


@torch.no_grad()
def mean_mapped_w(
    map_z: Callable[[Tensor], Tensor],
    z_dim: int,
    device: torch.device,
    n: int = 4096,
    seed: int = 0,
    chunk: int = 4096,
) -> Tensor:
    """Mean of ``map_z(z)`` over ``n`` z ~ N(0, I) (drawn on the CPU with ``seed``, in chunks):
    (w_dim,) float64. The one estimate of ``latent_avg`` for every generator kind."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total: Tensor | None = None
    done = 0
    while done < n:
        m = min(chunk, n - done)
        part = map_z(torch.randn(m, z_dim, generator=gen)).double().sum(0)  # (w_dim,)
        total = part if total is None else total + part
        done += m
    assert total is not None, "n must be positive"
    return (total / n).to(device)


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a generator: output size, W dimension, mapping depth, widths per res."""

    size: int
    style_dim: int = 512
    n_mlp: int = 8
    channels: Mapping[int, int] = field(default_factory=dict)
    lr_mlp: float = 0.01

    def as_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "style_dim": self.style_dim,
            "n_mlp": self.n_mlp,
            "channels": {str(k): v for k, v in sorted(self.channels.items())},
        }


class Generator(nn.Module):
    """rosinality's StyleGAN2 ``Generator`` with a W+ ``synthesis`` / ``mapping`` interface.

    Attributes: ``size``, ``style_dim``, ``n_mlp``, ``n_latent`` (= 2 log2(size) - 2),
    ``num_layers`` (noise inputs), ``channels``, ``latent_avg`` (style_dim,) buffer,
    ``metadata`` (dict, from talkcli tuned files).
    """

    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        channels: Mapping[int, int] | None = None,
        lr_mlp: float = 0.01,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        super().__init__()
        resolutions = _resolutions(size)
        chans = dict(default_channels(size, channel_multiplier))
        if channels is not None:
            chans.update({int(k): int(v) for k, v in channels.items() if int(k) in chans})
        self.size = size
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.lr_mlp = lr_mlp
        self.channels = chans
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2
        self.metadata: dict[str, Any] = {}
        self.checkpoint_kind = "new"  # rosinality | psp | talkcli once loaded from a file
        self.latent_avg_computed = False

        layers: list[nn.Module] = [PixelNorm()]
        for _ in range(n_mlp):
            layers.append(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True))
        self.style = nn.Sequential(*layers)

        self.input = ConstantInput(chans[4])
        self.conv1 = StyledConv(chans[4], chans[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(chans[4], style_dim, upsample=False)

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = (layer_idx + 5) // 2
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, 2**res, 2**res))
        in_channel = chans[4]
        for res in resolutions[1:]:
            out_channel = chans[res]
            self.convs.append(
                StyledConv(
                    in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel
                )
            )
            self.convs.append(
                StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel)
            )
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel
        # Not part of the rosinality g_ema layout: kept out of state_dict().
        self.register_buffer("latent_avg", torch.zeros(style_dim), persistent=False)

    # -- configuration ---------------------------------------------------------------------------

    @property
    def config(self) -> GeneratorConfig:
        return GeneratorConfig(self.size, self.style_dim, self.n_mlp, dict(self.channels))

    @property
    def device(self) -> torch.device:
        return self.input.input.device

    def noise_buffers(self) -> list[Tensor]:
        """The stored noise maps ``noises.noise_i``, (1, 1, res, res) each."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def make_noise(self, batch: int = 1, generator: torch.Generator | None = None) -> list[Tensor]:
        """Fresh N(0, 1) noise maps, (batch, 1, res, res) for every noise input."""
        return [  # drawn on the CPU (a CPU generator works for any device), then moved
            torch.randn(batch, *n.shape[1:], generator=generator).to(n.device, n.dtype)
            for n in self.noise_buffers()
        ]

    def state_dict_rosinality(self) -> dict[str, Tensor]:
        """The ``g_ema`` state dict in the official key layout, detached, on the CPU."""
        return {k: v.detach().to("cpu").clone() for k, v in self.state_dict().items()}

    # -- mapping -----------------------------------------------------------------------------------

    def mapping(
        self, z: Tensor, truncation: float = 1.0, truncation_latent: Tensor | None = None
    ) -> Tensor:
        """z (B, style_dim) -> w (B, style_dim); truncation pulls w toward ``latent_avg``."""
        if z.ndim != 2 or z.shape[1] != self.style_dim:
            raise ValueError(
                f"mapping expects z of shape (B, {self.style_dim}), got {tuple(z.shape)}"
            )
        w = self.style(z.to(device=self.device, dtype=self.input.input.dtype))
        if truncation < 1:
            center = self.latent_avg if truncation_latent is None else truncation_latent
            w = center + truncation * (w - center)
        return w

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0, chunk: int = 4096) -> Tensor:
        """Mean of ``mapping(z)`` over ``n`` z ~ N(0, I) drawn with ``seed``: (style_dim,)."""
        dtype = self.input.input.dtype
        mean = mean_mapped_w(
            lambda z: self.style(z.to(self.device, dtype)),
            self.style_dim,
            self.device,
            n,
            seed,
            chunk,
        )
        return mean.to(dtype)

    # -- synthesis ---------------------------------------------------------------------------------

    def _noise_list(
        self, noise_mode: str, noise: Sequence[Tensor | None] | None
    ) -> tuple[list[Tensor | None], bool]:
        """(noise maps, whether to add noise at all)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(
                f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}"
            )
        if noise is not None:
            if len(noise) != self.num_layers:
                raise ValueError(
                    f"noise must hold {self.num_layers} maps (one per layer), got {len(noise)}"
                )
            return list(noise), True
        if noise_mode == "const":
            return list(self.noise_buffers()), True
        return [None] * self.num_layers, noise_mode == "random"

    def synthesis(
        self,
        w_plus: Tensor,
        noise_mode: str = "const",
        noise: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """W+ (B, n_latent, style_dim) -> image (B, 3, size, size), roughly in [-1, 1].

        ``noise_mode``: ``const`` uses the stored ``noises.noise_*`` buffers (no flicker across
        video frames), ``random`` draws fresh noise, ``none`` adds none. ``noise`` (a list of
        ``num_layers`` maps, broadcastable to (B, 1, res, res)) overrides the mode.
        """
        self._check_w_plus(w_plus)
        return self._synthesize(w_plus, noise_mode, noise, self.size)

    def synthesis_at(
        self,
        w_plus: Tensor,
        resolution: int,
        noise_mode: str = "const",
        noise: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """W+ (B, n_latent, style_dim) -> the skip image at ``resolution``: (B, 3, r, r).

        The skip architecture sums the upsampled ToRGB outputs block by block, so after the
        block of resolution r it holds a complete image; the blocks above r (most of the
        compute at 1024) are not run. ``resolution`` = ``size`` is ``synthesis`` itself.
        """
        if resolution not in _resolutions(self.size):
            raise ValueError(
                f"resolution must be a power of two from 4 to {self.size}, got {resolution}"
            )
        self._check_w_plus(w_plus)
        return self._synthesize(w_plus, noise_mode, noise, int(resolution))

    def _check_w_plus(self, w_plus: Tensor) -> None:
        expected = (self.n_latent, self.style_dim)
        if (
            not isinstance(w_plus, Tensor)
            or w_plus.ndim != 3
            or tuple(w_plus.shape[1:]) != expected
        ):
            got = tuple(w_plus.shape) if isinstance(w_plus, Tensor) else type(w_plus).__name__
            raise ValueError(
                f"synthesis expects W+ of shape (B, {self.n_latent}, {self.style_dim}) for a "
                f"{self.size}x{self.size} generator, got {got}"
            )

    def _synthesize(
        self,
        w_plus: Tensor,
        noise_mode: str,
        noise: Sequence[Tensor | None] | None,
        stop: int,
    ) -> Tensor:
        """The synthesis network up to the block of resolution ``stop``: (B, 3, stop, stop)."""
        noises, add_noise = self._noise_list(noise_mode, noise)
        latent = w_plus.to(device=self.device, dtype=self.input.input.dtype)  # (B, n_latent, D)
        batch = latent.shape[0]

        out = self.input(batch)  # (B, C4, 4, 4)
        out = _styled(self.conv1, out, latent[:, 0], noises[0], add_noise)
        skip = self.to_rgb1(out, latent[:, 1])  # (B, 3, 4, 4)
        i = 1
        for j, to_rgb in enumerate(self.to_rgbs):
            if skip.shape[-1] >= stop:
                break
            out = _styled(self.convs[2 * j], out, latent[:, i], noises[2 * j + 1], add_noise)
            out = _styled(
                self.convs[2 * j + 1], out, latent[:, i + 1], noises[2 * j + 2], add_noise
            )
            skip = to_rgb(out, latent[:, i + 2], skip)  # (B, 3, res, res)
            i += 2
        return skip

    def forward(
        self,
        x: Tensor,
        *,
        input_is_w: bool = False,
        truncation: float = 1.0,
        noise_mode: str = "const",
        noise: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """Convenience: z (B, D) -> image; w (B, D) with ``input_is_w``; W+ (B, n_latent, D)."""
        if x.ndim == 3:
            return self.synthesis(x, noise_mode=noise_mode, noise=noise)
        w = x if input_is_w else self.mapping(x, truncation=truncation)
        if w.ndim != 2:
            raise ValueError(
                f"expected z or w (B, {self.style_dim}) or W+ (B, {self.n_latent}, "
                f"{self.style_dim}), got {tuple(x.shape)}"
            )
        w_plus = w.unsqueeze(1).repeat(1, self.n_latent, 1)
        return self.synthesis(w_plus, noise_mode=noise_mode, noise=noise)


def _styled(layer: nn.Module, x: Tensor, style: Tensor, noise: Tensor | None, add: bool) -> Tensor:
    """One StyledConv; ``add=False`` skips the noise (noise_mode 'none')."""
    if not add:
        return layer.activate(layer.conv(x, style))
    return layer(x, style, noise=noise)


# -- reading checkpoints ---------------------------------------------------------------------------


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _dim(sd: Mapping[str, Any], key: str, ndim: int, axis: int) -> int | None:
    value = sd.get(key)
    if isinstance(value, Tensor) and value.ndim == ndim:
        return int(value.shape[axis])
    return None


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def _max_index(keys: Sequence[str], pattern: str) -> int:
    rx = re.compile(pattern)
    found = [int(m.group(1)) for k in keys if (m := rx.match(k))]
    return max(found) if found else -1


def looks_like_generator(sd: Mapping[str, Any]) -> bool:
    """True if ``sd`` has the keys that identify a rosinality generator state dict."""
    return any(k in sd for k in ("input.input", "conv1.conv.weight", "to_rgb1.conv.weight"))


def infer_config(sd: Mapping[str, Any], source: str | Path = "<state dict>") -> GeneratorConfig:
    """Read size, style_dim, n_mlp and per-resolution widths from a ``g_ema`` state dict.

    Tolerant: widths that cannot be read fall back to the previous resolution's, so that a
    damaged file still gets a full expected layout and ``check_state_dict`` names what is wrong.
    Counts read from key names (``convs.N``, ``style.N``) and the style dimension are checked
    against ``talkcli.models.limits`` before anything is built from them (ModelFileError).
    """
    from talkcli.models.limits import check_dim

    keys = [k for k in sd if isinstance(k, str)]
    n_mlp = _max_index(keys, r"style\.(\d+)\.")
    n_mlp = check_dim(source, "n_mlp", max(n_mlp, 0))
    n_up = max(
        _max_index(keys, r"to_rgbs\.(\d+)\.") + 1,
        (_max_index(keys, r"convs\.(\d+)\.") + 2) // 2,
        _max_index(keys, r"noises\.noise_(\d+)$") // 2,
    )
    n_up = check_dim(source, "upsampling blocks", max(n_up, 0), key="upsamplings")
    size = 2 ** (2 + n_up)
    style_dim = _first(
        _dim(sd, "conv1.conv.modulation.weight", 2, 1),
        _dim(sd, "to_rgb1.conv.modulation.weight", 2, 1),
        _dim(sd, "style.1.weight", 2, 1),
        _dim(sd, "convs.0.conv.modulation.weight", 2, 1),
    )
    style_dim = check_dim(source, "style_dim", style_dim or 512)
    channels: dict[int, int] = {}
    c4 = _first(
        _dim(sd, "input.input", 4, 1),
        _dim(sd, "conv1.conv.weight", 5, 1),
        _dim(sd, "conv1.activate.bias", 1, 0),
        _dim(sd, "to_rgb1.conv.weight", 5, 2),
        _dim(sd, "convs.0.conv.weight", 5, 2),
    )
    channels[4] = c4 or 512
    for j in range(n_up):
        res = 2 ** (j + 3)
        width = _first(
            _dim(sd, f"convs.{2 * j}.conv.weight", 5, 1),
            _dim(sd, f"convs.{2 * j}.activate.bias", 1, 0),
            _dim(sd, f"convs.{2 * j + 1}.conv.weight", 5, 2),
            _dim(sd, f"convs.{2 * j + 1}.conv.modulation.weight", 2, 0),
            _dim(sd, f"to_rgbs.{j}.conv.weight", 5, 2),
        )
        channels[res] = check_dim(
            source, f"width at {res} px", width or channels[res // 2], "channels"
        )
    check_dim(source, "width at 4 px", channels[4], "channels")
    return GeneratorConfig(size=size, style_dim=style_dim, n_mlp=n_mlp, channels=channels)


def build_generator(config: GeneratorConfig, device: str | torch.device | None = None) -> Generator:
    """A generator with the given architecture (random init, as rosinality's)."""
    return Generator(
        config.size,
        config.style_dim,
        config.n_mlp,
        channels=config.channels,
        lr_mlp=config.lr_mlp,
    ).to(device or "cpu")


def expected_shapes(config: GeneratorConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the ``g_ema`` state dict of ``config`` (computed without allocating)."""
    with torch.device("meta"):
        g = Generator(config.size, config.style_dim, config.n_mlp, channels=config.channels)
    return {k: tuple(v.shape) for k, v in g.state_dict().items()}


def check_state_dict(
    sd: Mapping[str, Any], config: GeneratorConfig, source: str | Path
) -> dict[str, Tensor]:
    """Compare ``sd`` with the layout of ``config``; float32 copy, or ModelFileError naming keys."""
    expected = expected_shapes(config)
    bad_values = [
        k for k, v in sd.items() if not isinstance(v, Tensor) or not v.is_floating_point()
    ]
    if bad_values:
        raise ModelFileError(
            source,
            "StyleGAN2 state dict has entries that are not float tensors: "
            + short_list([str(k) for k in bad_values]),
            _FORMAT_HINT,
        )
    problem = describe_mismatch(expected, sd)
    if problem:
        arch = f"{config.size}x{config.size}, style_dim {config.style_dim}, n_mlp {config.n_mlp}"
        raise ModelFileError(
            source,
            f"does not match the StyleGAN2 generator layout ({arch}): {problem}",
            "the file is damaged or not a rosinality-layout generator",
        )
    return {k: sd[k].detach().to(torch.float32).contiguous() for k in expected}


def generator_from_state_dict(
    sd: Mapping[str, Any], source: str | Path = "<state dict>"
) -> Generator:
    """Build a generator whose architecture is read from ``sd`` and load ``sd`` strictly."""
    if not isinstance(sd, Mapping) or not looks_like_generator(sd):
        found = _describe(sd)
        raise ModelFileError(source, f"is not a StyleGAN2 generator state dict (found {found})")
    config = infer_config(sd, source)
    clean = check_state_dict(sd, config, source)
    with torch.device("meta"):
        g = Generator(config.size, config.style_dim, config.n_mlp, channels=config.channels)
    g.load_state_dict(clean, strict=True, assign=True)
    g.latent_avg = torch.zeros(config.style_dim)  # replaces the meta buffer; set by the caller
    g.eval()
    return g


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in obj]
        return f"a dict with keys {short_list(keys)}" if keys else "an empty dict"
    if isinstance(obj, Tensor):
        return f"a tensor of shape {_shape(obj.shape)}"
    return f"a {type(obj).__name__}"


def split_checkpoint(
    obj: Any, source: str | Path = "<checkpoint>"
) -> tuple[Mapping[str, Any], Tensor | None, dict[str, Any], str]:
    """Find the generator in a loaded checkpoint.

    Returns (g_ema state dict, latent_avg or None, talkcli metadata, kind) where kind is
    ``rosinality``, ``talkcli`` or ``psp``.
    """
    if isinstance(obj, Mapping) and "g_ema" in obj:
        sd = obj["g_ema"]
        if not isinstance(sd, Mapping):
            raise ModelFileError(source, f"'g_ema' holds {_describe(sd)}, expected a state dict")
        meta = obj.get("talkcli")
        if meta is not None and not isinstance(meta, Mapping):
            raise ModelFileError(
                source, f"'talkcli' metadata is {_describe(meta)}, expected a dict"
            )
        kind = "talkcli" if meta is not None else "rosinality"
        return sd, obj.get("latent_avg"), dict(meta or {}), kind
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        full = obj["state_dict"]
        sd = {k[len("decoder.") :]: v for k, v in full.items() if str(k).startswith("decoder.")}
        if not sd:
            raise ModelFileError(
                source,
                f"checkpoint 'state_dict' has no decoder.* keys (found {_describe(full)})",
                _FORMAT_HINT,
            )
        return sd, obj.get("latent_avg"), {}, "psp"
    if isinstance(obj, Mapping) and looks_like_generator(obj):
        raise ModelFileError(
            source,
            "holds a bare generator state dict",
            "wrap it as {'g_ema': state_dict, 'latent_avg': tensor} (rosinality layout)",
        )
    raise ModelFileError(
        source, f"is not a StyleGAN2 checkpoint (found {_describe(obj)})", _FORMAT_HINT
    )


def _latent_avg_row(value: Any, g: Generator, source: str | Path) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ModelFileError(
            source, f"'latent_avg' is {_describe(value)}, expected a float tensor", _FORMAT_HINT
        )
    d = g.style_dim
    if value.ndim == 1 and value.shape[0] == d:
        row = value
    elif value.ndim == 2 and value.shape[1] == d and value.shape[0] in (1, g.n_latent):
        row = value[0]
    else:
        raise ModelFileError(
            source,
            f"'latent_avg' has shape {_shape(value.shape)}, expected ({d},) or ({g.n_latent}, {d})",
            _FORMAT_HINT,
        )
    return row.detach().to(torch.float32).clone()


def generator_from_checkpoint(obj: Any, source: str | Path = "<checkpoint>") -> Generator:
    """Generator from an already loaded checkpoint object (rosinality, pSp or talkcli)."""
    sd, latent_avg, metadata, kind = split_checkpoint(obj, source)
    g = generator_from_state_dict(sd, source)
    g.metadata = metadata
    g.checkpoint_kind = kind
    if latent_avg is None:
        g.latent_avg = g.mean_latent(LATENT_AVG_SAMPLES, seed=0)
        g.latent_avg_computed = True
    else:
        g.latent_avg = _latent_avg_row(latent_avg, g, source)
        g.latent_avg_computed = False
    return g


def load_generator(
    path: str | Path,
    device: str | torch.device = "cpu",
    trainable: bool = False,
    network: str = "G_ema",
) -> Generator:
    """Load a StyleGAN2 generator file strictly; ModelFileError (exit 2) when it is not one.

    ``device``: a torch.device or a ``--device`` spec (``auto``, ``cpu``, ``cuda:N``, ``mps``).
    The generator is in eval mode with ``requires_grad`` off unless ``trainable``. Without a
    stored ``latent_avg`` it is computed as the mean of 10,000 mapped z (seed 0) and
    ``G.latent_avg_computed`` is True.

    NVIDIA network pickles (``.pkl``: stylegan2-ada-pytorch, stylegan3) are read without running
    their code (``talkcli.models.nvidia_pickle``) and ``network`` (``G_ema`` or ``G``) is built
    by talkcli: the result has the same interface, another class.
    """
    from talkcli.models.generator_file import file_arch
    from talkcli.models.nvidia_pickle import load_pickle_generator, looks_like_network_pickle

    path = require_file(path, "StyleGAN2 generator")
    arch = file_arch(path)  # talkcli's safetensors generator files (same generator interface)
    if arch == "stylegan3":
        from talkcli.models.stylegan3 import load_stylegan3

        return load_stylegan3(path, device, trainable)  # type: ignore[return-value]
    if arch == "stylegan2-ada":
        from talkcli.models.stylegan2_ada import load_stylegan2_ada

        return load_stylegan2_ada(path, device, trainable)  # type: ignore[return-value]
    if looks_like_network_pickle(path):
        g = load_pickle_generator(path, network)
    else:
        obj = load_torch_file(path, "StyleGAN2 generator")
        g = generator_from_checkpoint(obj, path)
    if g.latent_avg_computed:
        log.info(
            "%s: no latent_avg stored; using the mean of %d mapped z", path, LATENT_AVG_SAMPLES
        )
    g.requires_grad_(trainable)
    if isinstance(device, str):
        device = resolve_device(device)
    return g.to(device)


# -- writing ---------------------------------------------------------------------------------------

_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str = "metadata") -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"{where}: {type(value).__name__} cannot be stored (use plain values)")


_OWN_FILE_ARCHS = ("stylegan3", "stylegan2-ada")  # saved as talkcli's generator file


def check_savable(g: nn.Module, source: str | Path, what: str = "tune-pti") -> None:
    """Refuse, before any work, to tune a generator ``save_generator`` cannot write.

    StyleGAN2 (rosinality layout), StyleGAN3 and StyleGAN2-ADA (talkcli's generator file,
    ``talkcli.models.generator_file``) are savable, whether read from a file or a pickle.
    """
    if not isinstance(g, Generator) and getattr(g, "arch", None) not in _OWN_FILE_ARCHS:
        raise ModelFileError(
            source,
            f"{what} cannot save a tuned copy of this generator ({type(g).__name__})",
            "use a StyleGAN2 .pt, a StyleGAN3 or StyleGAN2-ADA file or NVIDIA pickle",
        )


def generator_checkpoint(g: Generator, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dict ``save_generator`` writes: ``{'g_ema', 'latent_avg'[, 'talkcli']}``."""
    check_savable(g, "<generator>", "save_generator")
    meta = dict(g.metadata if metadata is None else metadata)
    _check_plain(meta)
    ckpt: dict[str, Any] = {
        "g_ema": g.state_dict_rosinality(),
        "latent_avg": g.latent_avg.detach().to("cpu", torch.float32).clone(),
    }
    if meta:
        ckpt["talkcli"] = meta
    return ckpt


def save_generator(
    path: str | Path, g: Generator, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``g`` in the rosinality layout (plus ``'talkcli'`` metadata), atomically.

    ``metadata`` (plain values only) defaults to ``g.metadata``; the file loads with
    ``load_generator`` and with rosinality's own code. A StyleGAN3 generator is written in
    talkcli's generator file instead, as is a StyleGAN2-ADA one (``load_generator`` reads both
    back).
    """
    arch = getattr(g, "arch", None)
    if arch in _OWN_FILE_ARCHS:  # talkcli's generator file (safetensors), whatever the name
        from talkcli.models.stylegan2_ada import save_stylegan2_ada
        from talkcli.models.stylegan3 import save_stylegan3

        _check_plain(dict(g.metadata if metadata is None else metadata))
        save = save_stylegan3 if arch == "stylegan3" else save_stylegan2_ada
        return save(path, g, metadata)  # type: ignore[arg-type]
    ckpt = generator_checkpoint(g, metadata)
    with atomic_output(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)
