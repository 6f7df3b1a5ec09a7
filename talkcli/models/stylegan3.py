"""StyleGAN3 (configs T and R) in pure PyTorch: no compiler, CPU and GPU alike.

Follows "Alias-Free Generative Adversarial Networks" (Karras et al., 2021) and the semantics of
NVIDIA's ``training/networks_stylegan3.py`` with its reference (non-CUDA) ops, written anew:

- ``MappingNetwork``: 2nd-moment normalisation of z, ``num_layers`` fully connected layers with
  leaky ReLU and a learning-rate multiplier, the tracked mean ``w_avg`` (truncation centre);
- ``SynthesisInput``: Fourier features whose frequencies and phases are rotated and translated
  by a transform predicted from w (and the user ``transform`` buffer), then a learned mixing;
- ``SynthesisLayer``: modulated convolution (input gain from ``magnitude_ema``), then
  ``filtered_lrelu`` (bias, upsample with ``up_filter``, leaky ReLU with gain and clamp,
  downsample with ``down_filter``, which is radially symmetric in config R); the last layer
  (ToRGB) is a 1x1 modulated convolution without demodulation.

Parameter and buffer names equal NVIDIA's, so the ``state`` of a network pickle's
``training.networks_stylegan3.Generator`` record loads strictly (``BUILDERS``), and talkcli's own
StyleGAN3 file (safetensors: NVIDIA's state-dict keys, the init kwargs as JSON in the metadata,
``"arch": "stylegan3"``) is read by ``load_stylegan3``.

The interface is that of ``talkcli.models.stylegan2.Generator``: ``n_latent`` (num_ws),
``size``, ``style_dim``, ``latent_avg`` (= ``mapping.w_avg``), ``mapping(z)`` -> w (B, D),
``synthesis(ws, noise_mode=...)`` (W+ (B, n_latent, D) -> image (B, 3, size, size); StyleGAN3
has no noise inputs, so ``noise_mode`` is accepted and ignored), ``mean_latent``. Everything
runs in float32 (NVIDIA's ``force_fp32=True``); ``num_fp16_res`` is read and not used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkcli.errors import ModelFileError
from talkcli.models.state_dict import describe_mismatch

log = logging.getLogger(__name__)

NVIDIA_CLASS = "training.networks_stylegan3.Generator"
ARCH = "stylegan3"
NOISE_MODES = ("const", "random", "none")
LATENT_AVG_SAMPLES = 10_000
SQRT2 = math.sqrt(2.0)
_HINT = "the file is damaged or not a StyleGAN3 generator"


# -- ops -------------------------------------------------------------------------------------------


def _pads4(padding: int | tuple[int, ...] | list[int]) -> tuple[int, int, int, int]:
    """int, (x, y) or (x0, x1, y0, y1) -> (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    x0, x1, y0, y1 = (int(p) for p in padding)
    return x0, x1, y0, y1


def fir_resample(
    x: Tensor,
    f: Tensor | None,
    up: int = 1,
    down: int = 1,
    padding: int | tuple[int, ...] | list[int] = 0,
    gain: float = 1.0,
) -> Tensor:
    """Upsample (zero insertion), pad (negative crops), FIR-filter, downsample; per channel.

    x: (B, C, H, W). f: None (identity), (k,) separable (applied along W, then along H) or
    (kh, kw) non-separable; a true convolution (the filter is flipped). ``gain`` scales the
    filter (``gain ** (f.ndim / 2)``, so a separable filter carries the square root per axis).
    Output per axis: ``(in * up + pad0 + pad1 - k) // down + 1``.
    """
    batch, channels, height, width = x.shape
    x0, x1, y0, y1 = _pads4(padding)
    if up > 1:  # each sample followed by up-1 zeros on both axes: (B, C, H*up, W*up)
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype).flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(channels, 1, 1, 1), groups=channels)
    else:
        k = f.shape[0]
        x = F.conv2d(x, f.view(1, 1, 1, k).repeat(channels, 1, 1, 1), groups=channels)  # along W
        x = F.conv2d(x, f.view(1, 1, k, 1).repeat(channels, 1, 1, 1), groups=channels)  # along H
    return x[:, :, ::down, ::down]


def filtered_lrelu(
    x: Tensor,
    fu: Tensor | None = None,
    fd: Tensor | None = None,
    b: Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int | tuple[int, ...] | list[int] = 0,
    gain: float = SQRT2,
    slope: float = 0.2,
    clamp: float | None = None,
) -> Tensor:
    """Bias, upsample by ``up`` with ``fu``, leaky ReLU * gain, clamp, downsample with ``fd``.

    x: (B, C, H, W); b: (C,). ``padding`` refers to the upsampled image. The alias-free
    nonlinearity of StyleGAN3: the ReLU runs at the higher rate ``up`` so that the harmonics it
    creates are removed by ``fd`` before ``down`` discards samples.
    """
    if b is not None:
        x = x + b.view(1, -1, 1, 1)
    x = fir_resample(x, fu, up=up, padding=padding, gain=up**2)  # (B, C, ~H*up, ~W*up)
    x = F.leaky_relu(x, slope)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return fir_resample(x, fd, down=down)


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    demodulate: bool = True,
    padding: int = 0,
    input_gain: Tensor | None = None,
) -> Tensor:
    """StyleGAN3's modulated convolution, batch folded into groups.

    x: (B, I, H, W); weight: (O, I, k, k); styles: (B, I); input_gain: scalar or (I,).
    With ``demodulate`` the weight and the styles are first normalised (RMS 1; the styles over
    the whole batch, as NVIDIA's), which keeps fp16 in range and changes nothing after
    demodulation up to rounding. Returns (B, O, H + 2 p - k + 1, W + 2 p - k + 1).
    """
    batch, in_ch = x.shape[0], x.shape[1]
    out_ch, _, kh, kw = weight.shape
    w, s = weight, styles
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()
    w = w.unsqueeze(0) * s.unsqueeze(1).unsqueeze(3).unsqueeze(4)  # (B, O, I, k, k)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # (B, O)
        w = w * dcoefs.unsqueeze(2).unsqueeze(3).unsqueeze(4)
    if input_gain is not None:
        gain = input_gain.expand(batch, in_ch)  # (B, I)
        w = w * gain.unsqueeze(1).unsqueeze(3).unsqueeze(4)
    x = x.reshape(1, -1, *x.shape[2:])  # (1, B*I, H, W)
    w = w.reshape(-1, in_ch, kh, kw)  # (B*O, I, k, k)
    x = F.conv2d(x, w.to(x.dtype), padding=padding, groups=batch)
    return x.reshape(batch, -1, *x.shape[2:])


def design_lowpass_filter(
    numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False
) -> Tensor | None:
    """Kaiser-windowed low-pass FIR: (numtaps,) separable, (numtaps, numtaps) jinc if
    ``radial``; None for a single tap (identity)."""
    import scipy.signal
    import scipy.special

    if numtaps == 1:
        return None
    if not radial:
        f = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        return torch.as_tensor(f, dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    f *= np.outer(window, window)
    f /= np.sum(f)
    return torch.as_tensor(f, dtype=torch.float32)


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StyleGAN3Config:
    """NVIDIA's ``Generator`` init kwargs (synthesis and layer kwargs flattened)."""

    z_dim: int = 512
    c_dim: int = 0
    w_dim: int = 512
    img_resolution: int = 1024
    img_channels: int = 3
    mapping_kwargs: dict[str, Any] = field(default_factory=dict)
    channel_base: int = 32768
    channel_max: int = 512
    num_layers: int = 14
    num_critical: int = 2
    first_cutoff: float = 2
    first_stopband: float = 2**2.1
    last_stopband_rel: float = 2**0.3
    margin_size: int = 10
    output_scale: float = 0.25
    num_fp16_res: int = 4
    conv_kernel: int = 3
    filter_size: int = 6
    lrelu_upsampling: int = 2
    use_radial_filters: bool = False
    conv_clamp: float | None = 256
    magnitude_ema_beta: float = 0.999

    @classmethod
    def from_init_kwargs(
        cls, kwargs: Mapping[str, Any], source: str | Path = "<init kwargs>"
    ) -> StyleGAN3Config:
        """Check and convert a record's init kwargs; ModelFileError names what is wrong."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in kwargs if k not in known)
        if unknown:
            raise ModelFileError(
                source, f"StyleGAN3 init kwargs not understood: {', '.join(unknown)}", _HINT
            )
        config = cls(**{k: v for k, v in kwargs.items()})
        config.check(source)
        return config

    def check(self, source: str | Path) -> None:
        """Bounds on every size (untrusted file), and what talkcli supports."""
        from talkcli.models.limits import check_dim

        check_dim(source, "img_resolution", self.img_resolution, "size")
        check_dim(source, "w_dim", self.w_dim, "style_dim")
        check_dim(source, "z_dim", self.z_dim, "style_dim")
        check_dim(source, "channel_max", self.channel_max, "channels")
        check_dim(source, "num_layers", self.num_layers + 2, "n_latent")
        check_dim(source, "mapping num_layers", self.mapping_kwargs.get("num_layers", 2), "n_mlp")
        if self.c_dim:
            raise ModelFileError(
                source, f"conditional StyleGAN3 generators (c_dim {self.c_dim}) are not supported"
            )
        if self.img_channels != 3:
            raise ModelFileError(source, f"img_channels {self.img_channels}: expected 3 (RGB)")
        if not 0 <= self.num_critical < self.num_layers or not 1 <= self.conv_kernel <= 7:
            raise ModelFileError(source, "num_critical or conv_kernel out of range", _HINT)
        if not 1 <= self.filter_size <= 16 or self.lrelu_upsampling not in (1, 2, 4):
            raise ModelFileError(source, "filter_size or lrelu_upsampling out of range", _HINT)
        if not 0 <= self.margin_size <= 64:
            raise ModelFileError(source, f"margin_size {self.margin_size} out of range", _HINT)

    def as_init_kwargs(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LayerSpec:
    """One synthesis layer's sizes, rates and cutoffs (NVIDIA's geometric schedule)."""

    in_channels: int
    out_channels: int
    in_size: int
    out_size: int
    in_sampling_rate: int
    out_sampling_rate: int
    in_cutoff: float
    out_cutoff: float
    in_half_width: float
    out_half_width: float
    is_torgb: bool
    is_critically_sampled: bool


def layer_schedule(cfg: StyleGAN3Config) -> tuple[dict[str, float], list[LayerSpec]]:
    """(input spec, one LayerSpec per layer incl. ToRGB) from the config.

    Cutoffs and minimum stopbands grow geometrically from ``first_*`` to the output's Nyquist
    rate over ``num_layers - num_critical`` layers; sampling rates are the next powers of two
    above twice the stopband; widths are ``channel_base / 2 / cutoff`` capped at ``channel_max``.
    """
    n = cfg.num_layers
    last_cutoff = cfg.img_resolution / 2
    last_stopband = last_cutoff * cfg.last_stopband_rel
    exponents = np.minimum(np.arange(n + 1) / (n - cfg.num_critical), 1)
    cutoffs = cfg.first_cutoff * (last_cutoff / cfg.first_cutoff) ** exponents
    stopbands = cfg.first_stopband * (last_stopband / cfg.first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, cfg.img_resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + cfg.margin_size * 2
    sizes[-2:] = cfg.img_resolution
    channels = np.rint(np.minimum((cfg.channel_base / 2) / cutoffs, cfg.channel_max))
    channels[-1] = cfg.img_channels
    specs = []
    for idx in range(n + 1):
        prev = max(idx - 1, 0)
        specs.append(
            LayerSpec(
                in_channels=int(channels[prev]),
                out_channels=int(channels[idx]),
                in_size=int(sizes[prev]),
                out_size=int(sizes[idx]),
                in_sampling_rate=int(rates[prev]),
                out_sampling_rate=int(rates[idx]),
                in_cutoff=float(cutoffs[prev]),
                out_cutoff=float(cutoffs[idx]),
                in_half_width=float(half_widths[prev]),
                out_half_width=float(half_widths[idx]),
                is_torgb=idx == n,
                is_critically_sampled=idx >= n - cfg.num_critical,
            )
        )
    first = {
        "channels": int(channels[0]),
        "size": int(sizes[0]),
        "sampling_rate": float(rates[0]),
        "bandwidth": float(cutoffs[0]),
    }
    return first, specs


# -- layers (attribute names give NVIDIA's state-dict keys) ---------------------------------------


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate; ``lrelu`` adds leaky ReLU(0.2) * sqrt(2)."""

    def __init__(
        self, in_features: int, out_features: int, lrelu: bool = False, lr_multiplier: float = 1.0
    ) -> None:
        super().__init__()
        self.lrelu = lrelu
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain  # (out, in)
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        if not self.lrelu:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return F.leaky_relu(x.matmul(w.t()) + b.unsqueeze(0), 0.2) * SQRT2


class MappingNetwork(nn.Module):
    """z (B, z_dim) -> w (B, w_dim); ``w_avg`` (w_dim,) is the truncation centre."""

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        num_layers: int = 2,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.998,
    ) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_layers = z_dim, w_dim, num_layers
        self.w_avg_beta = w_avg_beta  # training only; kept for the round trip of the kwargs
        features = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], lrelu=True, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self, z: Tensor, truncation: float = 1.0, truncation_latent: Tensor | None = None
    ) -> Tensor:
        """z (B, z_dim) -> w (B, w_dim); truncation < 1 pulls w toward ``truncation_latent``
        (default ``w_avg``)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"mapping expects z of shape (B, {self.z_dim}), got {tuple(z.shape)}")
        x = z.to(device=self.w_avg.device, dtype=torch.float32)
        x = x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()  # 2nd-moment normalisation
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if truncation != 1:
            center = self.w_avg if truncation_latent is None else truncation_latent
            x = center.lerp(x, truncation)
        return x


class SynthesisInput(nn.Module):
    """Fourier features, rotated and translated by a transform predicted from w.

    Buffers: ``freqs`` (C, 2) and ``phases`` (C,) drawn at training start, ``transform`` (3, 3),
    the user's inverse transform of the output image (identity; set it to translate or rotate).
    """

    def __init__(
        self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float
    ) -> None:
        super().__init__()
        self.w_dim, self.channels, self.size = w_dim, channels, size
        self.sampling_rate, self.bandwidth = sampling_rate, bandwidth
        self.weight = nn.Parameter(torch.empty(channels, channels))
        self.affine = FullyConnectedLayer(w_dim, 4)
        self.register_buffer("transform", torch.eye(3, 3))
        self.register_buffer("freqs", torch.zeros(channels, 2))
        self.register_buffer("phases", torch.zeros(channels))

    def _transforms(self, w: Tensor) -> Tensor:
        """(B, 3, 3): rotation then translation from w, then the user transform."""
        t = self.affine(w)  # (B, 4): r_c, r_s, t_x, t_y
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        batch = w.shape[0]
        m_r = torch.eye(3, device=w.device).unsqueeze(0).repeat([batch, 1, 1])
        m_r[:, 0, 0] = t[:, 0]
        m_r[:, 0, 1] = -t[:, 1]
        m_r[:, 1, 0] = t[:, 1]
        m_r[:, 1, 1] = t[:, 0]
        m_t = torch.eye(3, device=w.device).unsqueeze(0).repeat([batch, 1, 1])
        m_t[:, 0, 2] = -t[:, 2]
        m_t[:, 1, 2] = -t[:, 3]
        return m_r @ m_t @ self.transform.unsqueeze(0)

    def forward(self, w: Tensor) -> Tensor:
        """w (B, w_dim) -> features (B, C, size, size)."""
        transforms = self._transforms(w)  # (B, 3, 3)
        freqs = self.freqs.unsqueeze(0)  # (1, C, 2)
        phases = self.phases.unsqueeze(0) + (freqs @ transforms[:, :2, 2:]).squeeze(2)  # (B, C)
        freqs = freqs @ transforms[:, :2, :2]  # (B, C, 2)
        # Frequencies pushed above the band by the user transform fade out.
        amplitudes = (
            1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)
        ).clamp(0, 1)  # (B, C)
        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = 0.5 * self.size / self.sampling_rate
        theta[1, 1] = 0.5 * self.size / self.sampling_rate
        grids = F.affine_grid(
            theta.unsqueeze(0), [1, 1, self.size, self.size], align_corners=False
        )  # (1, H, W, 2)
        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
        x = x + phases.unsqueeze(1).unsqueeze(2)  # (B, H, W, C)
        x = torch.sin(x * (np.pi * 2))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class SynthesisLayer(nn.Module):
    """Modulated conv + filtered leaky ReLU; the last one (``is_torgb``) is the 1x1 ToRGB."""

    def __init__(self, w_dim: int, spec: LayerSpec, cfg: StyleGAN3Config) -> None:
        super().__init__()
        self.spec = spec
        self.is_torgb = spec.is_torgb
        self.in_channels, self.out_channels = spec.in_channels, spec.out_channels
        self.in_size, self.out_size = spec.in_size, spec.out_size
        self.conv_kernel = 1 if spec.is_torgb else cfg.conv_kernel
        self.conv_clamp = cfg.conv_clamp
        self.affine = FullyConnectedLayer(w_dim, spec.in_channels)
        k = self.conv_kernel
        self.weight = nn.Parameter(torch.empty(spec.out_channels, spec.in_channels, k, k))
        self.bias = nn.Parameter(torch.empty(spec.out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self._design_filters(spec, cfg)

    def _design_filters(self, spec: LayerSpec, cfg: StyleGAN3Config) -> None:
        """Up/down factors, the two low-pass filters (buffers; None = identity), padding."""
        tmp_rate = max(spec.in_sampling_rate, spec.out_sampling_rate) * (
            1 if spec.is_torgb else cfg.lrelu_upsampling
        )
        self.up_factor = int(np.rint(tmp_rate / spec.in_sampling_rate))
        self.down_factor = int(np.rint(tmp_rate / spec.out_sampling_rate))
        up_taps = (
            cfg.filter_size * self.up_factor if self.up_factor > 1 and not self.is_torgb else 1
        )
        down_taps = (
            cfg.filter_size * self.down_factor if self.down_factor > 1 and not self.is_torgb else 1
        )
        radial = cfg.use_radial_filters and not spec.is_critically_sampled
        self.register_buffer(
            "up_filter",
            design_lowpass_filter(up_taps, spec.in_cutoff, spec.in_half_width * 2, tmp_rate),
        )
        self.register_buffer(
            "down_filter",
            design_lowpass_filter(
                down_taps, spec.out_cutoff, spec.out_half_width * 2, tmp_rate, radial=radial
            ),
        )
        # Padding so that output samples sit where the symmetric interpretation puts them.
        pad_total = (spec.out_size - 1) * self.down_factor + 1
        pad_total -= (spec.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += up_taps + down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [pad_lo, pad_hi, pad_lo, pad_hi]

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x (B, in, in_size, in_size), w (B, w_dim) -> (B, out, out_size, out_size)."""
        styles = self.affine(w)  # (B, in)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel**2))
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            demodulate=not self.is_torgb,
            padding=self.conv_kernel - 1,
            input_gain=self.magnitude_ema.rsqrt(),
        )
        return filtered_lrelu(
            x,
            self.up_filter,
            self.down_filter,
            self.bias.to(x.dtype),
            up=self.up_factor,
            down=self.down_factor,
            padding=self.padding,
            gain=1 if self.is_torgb else SQRT2,
            slope=1 if self.is_torgb else 0.2,
            clamp=self.conv_clamp,
        )


class SynthesisNetwork(nn.Module):
    """W+ (B, num_ws, w_dim) -> image (B, 3, res, res): input, layers ``L{i}_{size}_{ch}``."""

    def __init__(self, cfg: StyleGAN3Config) -> None:
        super().__init__()
        self.w_dim = cfg.w_dim
        self.num_ws = cfg.num_layers + 2
        self.img_resolution = cfg.img_resolution
        self.output_scale = cfg.output_scale
        first, specs = layer_schedule(cfg)
        self.input = SynthesisInput(w_dim=cfg.w_dim, **first)
        self.layer_names: list[str] = []
        for idx, spec in enumerate(specs):
            name = f"L{idx}_{spec.out_size}_{spec.out_channels}"
            setattr(self, name, SynthesisLayer(cfg.w_dim, spec, cfg))
            self.layer_names.append(name)

    def forward(self, ws: Tensor, noise_mode: str = "const", **_ignored: Any) -> Tensor:
        """``noise_mode`` (and NVIDIA's ``force_fp32``...) accepted and ignored: no noise."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {', '.join(NOISE_MODES)}")
        if (
            not isinstance(ws, Tensor)
            or ws.ndim != 3
            or tuple(ws.shape[1:])
            != (
                self.num_ws,
                self.w_dim,
            )
        ):
            got = tuple(ws.shape) if isinstance(ws, Tensor) else type(ws).__name__
            raise ValueError(
                f"synthesis expects W+ of shape (B, {self.num_ws}, {self.w_dim}) for this "
                f"StyleGAN3 generator, got {got}"
            )
        device = self.input.freqs.device
        w_list = ws.to(device=device, dtype=torch.float32).unbind(dim=1)  # num_ws x (B, D)
        x = self.input(w_list[0])
        for name, w in zip(self.layer_names, w_list[1:], strict=True):
            x = getattr(self, name)(x, w)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x


class StyleGAN3Generator(nn.Module):
    """NVIDIA's ``networks_stylegan3.Generator`` with talkcli's generator interface."""

    arch = ARCH

    def __init__(self, config: StyleGAN3Config) -> None:
        super().__init__()
        self.cfg = config
        self.synthesis = SynthesisNetwork(config)
        mk = dict(config.mapping_kwargs)
        self.mapping = MappingNetwork(
            z_dim=config.z_dim,
            w_dim=config.w_dim,
            num_layers=int(mk.get("num_layers", 2)),
            lr_multiplier=float(mk.get("lr_multiplier", 0.01)),
            w_avg_beta=float(mk.get("w_avg_beta", 0.998)),
        )
        self.size = config.img_resolution
        self.style_dim = config.w_dim
        self.z_dim = config.z_dim
        self.n_latent = self.synthesis.num_ws
        self.metadata: dict[str, Any] = {}
        self.checkpoint_kind = "new"  # nvidia | talkcli once loaded from a file
        self.latent_avg_computed = False

    @property
    def latent_avg(self) -> Tensor:
        """(style_dim,): NVIDIA's ``mapping.w_avg``."""
        return self.mapping.w_avg

    @latent_avg.setter
    def latent_avg(self, value: Tensor) -> None:
        self.mapping.w_avg = value.detach().to(self.mapping.w_avg)

    @property
    def device(self) -> torch.device:
        return self.mapping.w_avg.device

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0, chunk: int = 4096) -> Tensor:
        """Mean of ``mapping(z)`` over ``n`` z ~ N(0, I) drawn with ``seed``: (style_dim,)."""
        from talkcli.models.stylegan2 import mean_mapped_w

        def map_z(z: Tensor) -> Tensor:
            return self.mapping(z.to(self.device))

        return mean_mapped_w(map_z, self.z_dim, self.device, n, seed, chunk).float()

    def forward(
        self,
        x: Tensor,
        *,
        input_is_w: bool = False,
        truncation: float = 1.0,
        noise_mode: str = "const",
    ) -> Tensor:
        """Convenience: z (B, z_dim) -> image; w (B, D) with ``input_is_w``; W+ (B, n, D)."""
        if x.ndim == 3:
            return self.synthesis(x, noise_mode=noise_mode)
        w = x if input_is_w else self.mapping(x, truncation=truncation)
        return self.synthesis(w.unsqueeze(1).repeat(1, self.n_latent, 1), noise_mode=noise_mode)


# -- building and loading --------------------------------------------------------------------------


def build_stylegan3(config: StyleGAN3Config) -> StyleGAN3Generator:
    """A generator with every parameter uninitialised (``torch.empty``) and designed filters."""
    return StyleGAN3Generator(config).eval()


def _check_values(state: Mapping[str, Any], source: str | Path) -> None:
    bad = [k for k, v in state.items() if not isinstance(v, Tensor) or not v.is_floating_point()]
    if bad:
        raise ModelFileError(
            source, f"StyleGAN3 state has entries that are not float tensors: {bad[:5]}", _HINT
        )
    nonfinite = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if nonfinite:
        raise ModelFileError(source, f"StyleGAN3 state holds NaN or inf in {nonfinite[:5]}", _HINT)


def stylegan3_from_state(
    config: StyleGAN3Config, state: Mapping[str, Any], source: str | Path = "<state dict>"
) -> StyleGAN3Generator:
    """Build from ``config`` and load ``state`` (NVIDIA's keys) strictly, as float32."""
    g = build_stylegan3(config)
    expected = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    problem = describe_mismatch(expected, state)
    if problem:
        raise ModelFileError(
            source, f"does not match the StyleGAN3 layout of its config: {problem}", _HINT
        )
    _check_values(state, source)
    g.load_state_dict(
        {k: state[k].detach().to("cpu", torch.float32) for k in expected}, strict=True
    )
    return g.eval()


def generator_from_record(record: Any) -> StyleGAN3Generator:
    """``BUILDERS`` entry: a ``NetworkRecord`` of ``training.networks_stylegan3.Generator``."""
    source = f"{record.name} ({record.class_name})"
    config = StyleGAN3Config.from_init_kwargs(dict(record.init_kwargs), source)
    g = stylegan3_from_state(config, record.state, source)
    g.checkpoint_kind = "nvidia"
    return g


BUILDERS: dict[str, Callable[[Any], nn.Module]] = {NVIDIA_CLASS: generator_from_record}


def is_stylegan3_file(path: str | Path) -> bool:
    """True for a talkcli generator file whose metadata says ``"arch": "stylegan3"``, whatever
    its name (tune-pti may write one as ``.pt``); reads only the JSON header."""
    from talkcli.models.generator_file import file_arch

    return file_arch(path) == ARCH


def save_stylegan3(
    path: str | Path, g: StyleGAN3Generator, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``g`` as talkcli's generator file (``talkcli.models.generator_file``: NVIDIA's
    state-dict keys; the init kwargs and talkcli metadata as JSON in the header), atomically."""
    from talkcli.models.generator_file import write_generator_file

    meta = dict(g.metadata if metadata is None else metadata)
    return write_generator_file(path, ARCH, g.cfg.as_init_kwargs(), g.state_dict(), meta)


def load_stylegan3(
    path: str | Path, device: str | torch.device = "cpu", trainable: bool = False
) -> StyleGAN3Generator:
    """Load talkcli's StyleGAN3 safetensors file strictly; ModelFileError (exit 2) if not one."""
    from talkcli.device import resolve_device
    from talkcli.io.files import require_file
    from talkcli.models.generator_file import read_generator_file

    p = require_file(path, "StyleGAN3 generator")
    raw, state, metadata = read_generator_file(p, ARCH, "StyleGAN3", _HINT)
    config = StyleGAN3Config.from_init_kwargs(raw, p)
    g = stylegan3_from_state(config, state, p)
    g.metadata = metadata
    g.checkpoint_kind = "talkcli"
    g.requires_grad_(trainable)
    if isinstance(device, str):
        device = resolve_device(device)
    return g.to(device)
