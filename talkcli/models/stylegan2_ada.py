"""The StyleGAN2-ADA generator (NVIDIA's ``training.networks.Generator``) in pure PyTorch.

Built from a ``NetworkRecord`` of an NVIDIA network pickle (``talkcli.models.nvidia_pickle``):
the init kwargs give the architecture, the stored tensors are loaded strictly (module and
parameter names follow NVIDIA's, so the state-dict keys are the pickle's). Semantics follow
NVIDIA's eval path (``fused_modconv``): mapping with 2nd-moment normalisation of z, lr
multiplier and ``w_avg`` for truncation; synthesis blocks (``skip``, ``resnet`` or ``orig``)
with the stored const noise, ``conv_clamp`` clamping after every activation and the FIR
resampling of ``talkcli.models.ops``. Blocks NVIDIA runs in float16 (``num_fp16_res``) are
computed in float32 unless ``G.use_fp16`` is set (then on CUDA, as NVIDIA, with its
pre-normalisation).

The interface is that of ``talkcli.models.stylegan2.Generator``: ``n_latent``, ``size``,
``style_dim``, ``latent_avg``, ``mapping(z, truncation, truncation_latent)``,
``synthesis(ws, noise_mode)``, ``mean_latent``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkcli.errors import ModelFileError
from talkcli.models.limits import check_dim
from talkcli.models.nvidia_pickle import SG2_ADA_GENERATOR, NetworkRecord
from talkcli.models.ops import blur_pad_for_upsample, upfirdn2d, upsample_pad
from talkcli.models.state_dict import assign_checked

ARCH = "stylegan2-ada"  # talkcli's generator file (``save_stylegan2_ada``)
NOISE_MODES = ("const", "random", "none")
_ACT_GAIN = {"linear": 1.0, "relu": math.sqrt(2), "lrelu": math.sqrt(2)}
_FILTER = (1, 3, 3, 1)


def bias_act(
    x: Tensor, b: Tensor | None, act: str = "linear", gain: float = 1.0, clamp: float | None = None
) -> Tensor:
    """NVIDIA's ``bias_act`` reference: add bias (dim 1), activate, scale by gain, clamp."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    elif act == "relu":
        x = F.relu(x)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def _setup_filter(f: Sequence[float]) -> Tensor:
    t = torch.as_tensor(f, dtype=torch.float32)
    t = t.ger(t) if t.ndim == 1 else t
    return t / t.sum()


class FullyConnectedLayer(nn.Module):
    """``weight`` (out, in) * lr_multiplier / sqrt(in), ``bias`` * lr_multiplier."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, self.activation, _ACT_GAIN[self.activation])


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z (B, z_dim) [+ c] -> w (B, w_dim); ``w_avg`` buffer when ``w_avg_beta`` is set."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_layers = z_dim, c_dim, w_dim, num_layers
        embed = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer = w_dim if layer_features is None else layer_features
        features = [z_dim + embed] + [layer] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed)
        for idx in range(num_layers):
            fc = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", fc)
        self.has_w_avg = w_avg_beta is not None
        if self.has_w_avg:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        x = normalize_2nd_moment(z.to(torch.float32)) if self.z_dim > 0 else None
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional: it needs c (B, {self.c_dim})")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        return x  # (B, w_dim)


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    *,
    demodulate: bool = True,
    up: int = 1,
    resample_filter: Tensor | None = None,
) -> Tensor:
    """NVIDIA's fused modulated convolution (grouped conv, batch as groups).

    x (B, I, H, W), weight (O, I, k, k) unscaled, styles (B, I). ``up=2``: transposed conv
    then FIR filter (gain 4), as ``conv2d_resample``. float16 inputs are pre-normalised.
    """
    batch, in_ch, height, width = x.shape
    out_ch, _, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (
            1 / np.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        )
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # (B, O, I, k, k)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # (B, O)
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    x = x.reshape(1, batch * in_ch, height, width)
    if up > 1:
        w = w.transpose(1, 2).reshape(batch * in_ch, out_ch, kh, kw).to(x.dtype)
        out = F.conv_transpose2d(x, w, stride=up, groups=batch)
        f = resample_filter * (up**2)
        out = upfirdn2d(out, f, pad=blur_pad_for_upsample(f.shape[0], kw, up))
    else:
        w = w.reshape(batch * out_ch, in_ch, kh, kw).to(x.dtype)
        out = F.conv2d(x, w, padding=kw // 2, groups=batch)
    return out.reshape(batch, out_ch, *out.shape[2:])


class SynthesisLayer(nn.Module):
    """Modulated conv (optionally upsampling) + noise + bias/activation with gain and clamp."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = _FILTER,
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", _setup_filter(resample_filter))
        self.act_gain = _ACT_GAIN[activation]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.empty(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self, x: Tensor, w: Tensor, noise_mode: str = "const", noise: Tensor | None = None
    ) -> Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(
            x, self.weight, styles, up=self.up, resample_filter=self.resample_filter
        )
        if self.use_noise and noise_mode != "none":
            if noise is None and noise_mode == "random":
                noise = torch.randn(
                    x.shape[0], 1, self.resolution, self.resolution, device=x.device
                )
            elif noise is None:
                noise = self.noise_const
            x = x + (noise * self.noise_strength).to(x.dtype)
        gain = self.act_gain  # NVIDIA's per-call gain is 1 here; resnet scales in the block
        return bias_act(x, self.bias, self.activation, gain, self._clamp(1.0))

    def _clamp(self, gain: float) -> float | None:
        return None if self.conv_clamp is None else self.conv_clamp * gain


class ToRGBLayer(nn.Module):
    """1x1 modulated conv without demodulation (styles * 1/sqrt(in)) + bias, clamped."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size**2)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class Conv2dLayer(nn.Module):
    """The resnet skip: 1x1 conv (no bias) then FIR upsampling, linear, gain sqrt(0.5)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        up: int = 1,
        resample_filter: Sequence[float] = _FILTER,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        if kernel_size != 1 or up != 2:
            raise ValueError("only the resnet skip layer (1x1, up 2) is supported")
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", _setup_filter(resample_filter))
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.weight_gain = 1 / np.sqrt(in_channels)

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        x = F.conv2d(x, (self.weight * self.weight_gain).to(x.dtype))
        f = self.resample_filter * 4
        x = upfirdn2d(x, f, up=2, pad=upsample_pad(f.shape[0], 2))
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias, gain=gain, clamp=clamp)


class SynthesisBlock(nn.Module):
    """One resolution: const or upsampling conv0, conv1, ToRGB / skip, as NVIDIA's."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter: Sequence[float] = _FILTER,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown synthesis architecture {architecture!r}")
        self.in_channels, self.architecture, self.use_fp16 = in_channels, architecture, use_fp16
        self.is_last = is_last
        self.register_buffer("resample_filter", _setup_filter(resample_filter))
        self.num_conv = self.num_torgb = 0
        common = dict(resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
        if in_channels == 0:
            self.const = nn.Parameter(torch.empty(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=2, **common
            )
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, **common)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(
                in_channels, out_channels, 1, bias=False, up=2, resample_filter=resample_filter
            )

    def noise_layers(self) -> list[SynthesisLayer]:
        return [m for m in (getattr(self, "conv0", None), self.conv1) if m is not None]

    def forward(
        self,
        x: Tensor | None,
        img: Tensor | None,
        ws: Tensor,
        noise_mode: str,
        noises: Sequence[Tensor | None],
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor | None]:
        w_iter = iter(ws.unbind(1))
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), noise_mode, noises[0])
        elif self.architecture == "resnet":
            y = self.skip(x.to(dtype), gain=np.sqrt(0.5))
            x = self.conv0(x.to(dtype), next(w_iter), noise_mode, noises[0])
            x = _scaled(self.conv1, x, next(w_iter), noise_mode, noises[1], np.sqrt(0.5))
            x = y + x
        else:
            x = self.conv0(x.to(dtype), next(w_iter), noise_mode, noises[0])
            x = self.conv1(x, next(w_iter), noise_mode, noises[1])
        if img is not None:
            f = self.resample_filter * 4
            img = upfirdn2d(img, f, up=2, pad=upsample_pad(f.shape[0], 2))
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter)).to(torch.float32)
            img = img + y if img is not None else y
        return x, img


def _scaled(
    layer: SynthesisLayer, x: Tensor, w: Tensor, mode: str, noise: Tensor | None, gain: float
) -> Tensor:
    """``layer(x, w, gain=gain)`` of NVIDIA: activation gain and clamp scaled by ``gain``."""
    styles = layer.affine(w)
    x = modulated_conv2d(
        x, layer.weight, styles, up=layer.up, resample_filter=layer.resample_filter
    )
    if layer.use_noise and mode != "none":
        if noise is None:
            noise = layer.noise_const if mode == "const" else torch.randn_like(x[:, :1])
        x = x + (noise * layer.noise_strength).to(x.dtype)
    return bias_act(x, layer.bias, layer.activation, layer.act_gain * gain, layer._clamp(gain))


class SynthesisNetwork(nn.Module):
    """Blocks ``b4`` .. ``b{img_resolution}``; W+ (B, num_ws, w_dim) -> image."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        log2 = int(np.log2(img_resolution))
        if img_resolution != 2**log2 or img_resolution < 4:
            raise ValueError(f"img_resolution {img_resolution} is not a power of two >= 4")
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0,
                channels[res],
                w_dim,
                res,
                img_channels,
                is_last=(res == img_resolution),
                use_fp16=(res >= fp16_resolution),
                **block_kwargs,
            )
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def forward(
        self,
        ws: Tensor,
        noise_mode: str = "const",
        noise: Sequence[Tensor | None] | None = None,
        use_fp16: bool = False,
    ) -> Tensor:
        noises = list(noise) if noise is not None else None
        x = img = None
        w_idx = n_idx = 0
        for block in self.blocks():
            cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            block_noise = [None] * block.num_conv
            if noises is not None:
                block_noise = noises[n_idx : n_idx + block.num_conv]
            n_idx += block.num_conv
            dtype = torch.float16 if (block.use_fp16 and use_fp16) else torch.float32
            x, img = block(x, img, cur, noise_mode, block_noise, dtype)
        return img


class Generator(nn.Module):
    """NVIDIA's StyleGAN2-ADA ``Generator`` with talkcli's generator interface."""

    arch = ARCH

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: Mapping[str, Any] | None = None,
        synthesis_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = {  # plain values: talkcli's file stores them
            "z_dim": z_dim,
            "c_dim": c_dim,
            "w_dim": w_dim,
            "img_resolution": img_resolution,
            "img_channels": img_channels,
            "mapping_kwargs": dict(mapping_kwargs or {}),
            "synthesis_kwargs": dict(synthesis_kwargs or {}),
        }
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        # NVIDIA's submodule names (the state-dict keys) are ``mapping`` and ``synthesis``,
        # which talkcli's interface uses for methods: registered in ``_modules`` directly.
        synthesis = SynthesisNetwork(
            w_dim, img_resolution, img_channels, **dict(synthesis_kwargs or {})
        )
        self.num_ws = synthesis.num_ws
        self._modules["mapping"] = MappingNetwork(z_dim, c_dim, w_dim, **dict(mapping_kwargs or {}))
        self._modules["synthesis"] = synthesis
        self.register_buffer("latent_avg", torch.zeros(w_dim), persistent=False)
        self.use_fp16 = False  # compute NVIDIA's fp16 blocks in float16 (CUDA only)
        self.metadata: dict[str, Any] = {}
        self.checkpoint_kind = "nvidia-pickle"
        self.latent_avg_computed = False

    @property
    def size(self) -> int:
        return self.img_resolution

    @property
    def style_dim(self) -> int:
        return self.w_dim

    @property
    def n_latent(self) -> int:
        return self.num_ws

    @property
    def device(self) -> torch.device:
        return self.latent_avg.device

    def _noise_layers(self) -> list[SynthesisLayer]:
        net: SynthesisNetwork = self._modules["synthesis"]  # type: ignore[assignment]
        return [layer for b in net.blocks() for layer in b.noise_layers()]

    @property
    def num_layers(self) -> int:
        """Number of noise inputs (one per synthesis layer)."""
        return len(self._noise_layers())

    def noise_buffers(self) -> list[Tensor]:
        """The stored ``noise_const`` maps, (1, 1, res, res) each."""
        return [layer.noise_const[None, None] for layer in self._noise_layers()]

    def make_noise(self, batch: int = 1, generator: torch.Generator | None = None) -> list[Tensor]:
        return [
            torch.randn(batch, *n.shape[1:], generator=generator).to(n.device, n.dtype)
            for n in self.noise_buffers()
        ]

    def mapping(
        self,
        z: Tensor,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        c: Tensor | None = None,
    ) -> Tensor:
        """z (B, z_dim) -> w (B, w_dim); truncation pulls w toward ``latent_avg`` (w_avg)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"mapping expects z of shape (B, {self.z_dim}), got {tuple(z.shape)}")
        w = self._modules["mapping"](z.to(self.device), c)
        if truncation != 1:
            center = self.latent_avg if truncation_latent is None else truncation_latent
            w = center + truncation * (w - center)
        return w

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0, chunk: int = 4096) -> Tensor:
        """Mean of ``mapping(z)`` over ``n`` z ~ N(0, I) drawn with ``seed``: (w_dim,)."""
        from talkcli.models.stylegan2 import mean_mapped_w

        return mean_mapped_w(self.mapping, self.z_dim, self.device, n, seed, chunk).float()

    def synthesis(
        self,
        w_plus: Tensor,
        noise_mode: str = "const",
        noise: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """W+ (B, n_latent, w_dim) -> image (B, img_channels, size, size), roughly in [-1, 1]."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(
                f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}"
            )
        expected = (self.n_latent, self.w_dim)
        if (
            not isinstance(w_plus, Tensor)
            or w_plus.ndim != 3
            or tuple(w_plus.shape[1:]) != expected
        ):
            got = tuple(w_plus.shape) if isinstance(w_plus, Tensor) else type(w_plus).__name__
            raise ValueError(
                f"synthesis expects W+ of shape (B, {self.n_latent}, {self.w_dim}) for a "
                f"{self.size}x{self.size} generator, got {got}"
            )
        if noise is not None and len(noise) != self.num_layers:
            raise ValueError(f"noise must hold {self.num_layers} maps, got {len(noise)}")
        fp16 = self.use_fp16 and self.device.type == "cuda"
        ws = w_plus.to(self.device, torch.float32)
        return self._modules["synthesis"](ws, noise_mode, noise, fp16)

    def forward(
        self,
        x: Tensor,
        *,
        input_is_w: bool = False,
        truncation: float = 1.0,
        noise_mode: str = "const",
        noise: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """z (B, D) -> image; w (B, D) with ``input_is_w``; W+ (B, n_latent, D)."""
        if x.ndim == 3:
            return self.synthesis(x, noise_mode=noise_mode, noise=noise)
        w = x if input_is_w else self.mapping(x, truncation=truncation)
        w_plus = w.unsqueeze(1).repeat(1, self.n_latent, 1)
        return self.synthesis(w_plus, noise_mode=noise_mode, noise=noise)


# -- building from a pickle record -----------------------------------------------------------------

_GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")


def _checked_kwargs(record: NetworkRecord) -> dict[str, Any]:
    """Init kwargs (positional args named) with every size bounded before allocation."""
    kwargs = dict(zip(_GENERATOR_ARGS, record.init_args, strict=False))
    kwargs.update(record.init_kwargs)
    src = f"<{record.name}>"
    for key in ("z_dim", "w_dim"):
        check_dim(src, key, kwargs.get(key), "style_dim")
    check_dim(src, "img_resolution", kwargs.get("img_resolution"), "size")
    check_dim(src, "img_channels", kwargs.get("img_channels"), "channels")
    if int(kwargs.get("c_dim", 0)) != 0:
        check_dim(src, "c_dim", kwargs.get("c_dim"), "width")
    mk = dict(kwargs.get("mapping_kwargs") or {})
    check_dim(src, "mapping num_layers", mk.get("num_layers", 8), "n_mlp")
    sk = dict(kwargs.get("synthesis_kwargs") or {})
    check_dim(src, "channel_max", sk.get("channel_max", 512), "channels")
    sk.pop("fp16_channels_last", None)
    mk = {k: v for k, v in mk.items() if k not in ("num_ws",)}
    known = set(_GENERATOR_ARGS) | {"mapping_kwargs", "synthesis_kwargs"}
    extra = sorted(set(kwargs) - known)
    if extra:
        raise ValueError(f"unknown Generator init kwargs {', '.join(extra)}")
    return {
        **{k: kwargs[k] for k in _GENERATOR_ARGS if k in kwargs},
        "mapping_kwargs": mk,
        "synthesis_kwargs": sk,
    }


def generator_from_record(record: NetworkRecord) -> Generator:
    """talkcli's StyleGAN2-ADA generator for ``record``, state loaded strictly."""
    kwargs = _checked_kwargs(record)
    with torch.device("meta"):
        g = Generator(**kwargs)
    try:
        assign_checked(g, record.state)
    except ValueError as exc:
        raise ModelFileError(
            f"<{record.name}>", f"does not match the StyleGAN2-ADA generator layout: {exc}"
        ) from None
    mapping: MappingNetwork = g._modules["mapping"]  # type: ignore[assignment]
    g.latent_avg = torch.zeros(g.w_dim)
    if mapping.has_w_avg:
        g.latent_avg = mapping.w_avg.detach().clone()
    else:
        g.latent_avg = g.mean_latent(10_000, seed=0)
        g.latent_avg_computed = True
    return g.eval().requires_grad_(False)


BUILDERS = {SG2_ADA_GENERATOR: generator_from_record}


# -- talkcli's file for a (tuned) StyleGAN2-ADA generator ------------------------------------------

_HINT = "the file is damaged or not a StyleGAN2-ADA generator"


def save_stylegan2_ada(
    path: str | Path, g: Generator, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``g`` as talkcli's generator file (``talkcli.models.generator_file``, arch
    ``stylegan2-ada``: NVIDIA's state-dict keys, the init kwargs as ``config``), atomically."""
    from talkcli.models.generator_file import write_generator_file

    meta = dict(g.metadata if metadata is None else metadata)
    return write_generator_file(path, ARCH, g.init_kwargs, g.state_dict(), meta)


def load_stylegan2_ada(
    path: str | Path, device: str | torch.device = "cpu", trainable: bool = False
) -> Generator:
    """Load talkcli's StyleGAN2-ADA file strictly (the pickle path's size bounds and state
    check); ModelFileError (exit 2) if it is not one."""
    from talkcli.device import resolve_device
    from talkcli.io.files import require_file
    from talkcli.models.generator_file import read_generator_file
    from talkcli.models.nvidia_pickle import NetworkRecord, build_network

    p = require_file(path, "StyleGAN2-ADA generator")
    config, state, metadata = read_generator_file(p, ARCH, "StyleGAN2-ADA", _HINT)
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise ModelFileError(p, f"StyleGAN2-ADA state holds NaN or inf in {bad[:5]}", _HINT)
    g = build_network(NetworkRecord("G_ema", SG2_ADA_GENERATOR, config, state), p)
    g.metadata = metadata
    g.checkpoint_kind = "talkcli"
    g.requires_grad_(trainable)
    if isinstance(device, str):
        device = resolve_device(device)
    return g.to(device)
