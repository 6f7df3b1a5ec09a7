"""pSp and e4e encoders with an IR-SE body, loading ``psp_ffhq_encode.pt`` / ``e4e_ffhq_encode.pt``.

A re-implementation of pixel2style2pixel's ``GradualStyleEncoder(50, 'ir_se')`` whose state dict
matches the official one key for key (``../shared/formats/psp_gradual_style_encoder_keys.json``):

* ``input_layer``: Conv3x3(3 -> 64, no bias), BatchNorm, PReLU.
* ``body``: four stages of ``bottleneck_IR_SE`` units (IR-SE50: 3, 4, 14, 3 units of width
  64, 128, 256, 512); the first unit of each stage has stride 2. Each unit adds a shortcut
  (``MaxPool2d(1, stride)`` when the width does not change, else Conv1x1 + BN) to
  ``res_layer`` = BN, Conv3x3, PReLU, Conv3x3(stride), BN, SE(fc1, fc2 1x1 convs, reduction 16).
* a feature pyramid: c1 (64x64), c2 (32x32), c3 (16x16) taken at the end of stages 2, 3, 4;
  p2 = up(c3) + latlayer1(c2), p1 = up(p2) + latlayer2(c1) (bilinear, align_corners=True).
* ``styles``: one ``GradualStyleBlock`` per W+ entry, coarse 0-2 from c3, medium 3-6 from p2,
  fine 7.. from p1; each is log2(spatial) stride-2 Conv3x3 + LeakyReLU(0.01), then an
  ``EqualLinear`` (``linear.weight``/``linear.bias``, lr_mul 1).

Widths and unit counts are read from the state dict, so the tiny test packs (narrow stages, one
unit per stage, narrow style convs, 512-d output) load through the same code. The style blocks
may have conv width ``hidden`` different from the output width ``style_dim`` (the official model
has both 512); the EqualLinear then maps hidden -> style_dim.

e4e's ``Encoder4Editing`` (``opts['encoder_type']``) has the same modules and keys; its forward
takes one W from ``styles[0]`` and adds per-layer deltas from ``styles[1:]``.

``load_encoder(path)`` returns a frozen ``PSPEncoder`` for either; ``encode(x)`` maps
(B, 3, 256, 256) RGB in [-1, 1] to W+ (B, n_styles, 512) with ``latent_avg`` added, as pSp does with
``start_from_latent_avg``; ``encode_images`` resizes and normalises images first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkcli.errors import ModelFileError
from talkcli.models.state_dict import describe_mismatch
from talkcli.models.stylegan2 import EqualLinear  # also pSp's (no activation), same keys
from talkcli.weights.safe_load import load_torch_file

INPUT_SIZE = 256  # pSp's encoder input resolution
COARSE_END = 3  # styles 0..2 read c3 (16x16)
MIDDLE_END = 7  # styles 3..6 read p2 (32x32); the rest read p1 (64x64)
# Feature-map sizes at the end of stages 2, 3, 4 for a 256 input (four stride-2 stages).
_C1_SIZE, _C2_SIZE, _C3_SIZE = 64, 32, 16
SUPPORTED_ENCODER = "GradualStyleEncoder"  # pSp's
E4E_ENCODER = "Encoder4Editing"  # e4e's: same keys, w + per-layer deltas

_HINT = "use the official psp_ffhq_encode.pt (`talkcli weights fetch psp-ffhq-encode`)"
_E4E_HINT = "use the official e4e_ffhq_encode.pt (`talkcli weights fetch e4e-ffhq-encode`)"


# -- layout -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderLayout:
    """Everything needed to build a GradualStyleEncoder; inferred from a state dict.

    ``units`` lists every body unit as (in_channels, depth, stride, se_channels); se_channels is
    None for the plain IR unit (no SE module). ``stage_ends`` are the body indices whose outputs
    are c1, c2, c3 (6, 20, 23 for IR-SE50).
    """

    in_channels: int
    stem_width: int
    units: tuple[tuple[int, int, int, int | None], ...]
    stage_ends: tuple[int, int, int]
    n_styles: int
    style_hidden: int
    style_dim: int

    @property
    def c_widths(self) -> tuple[int, int, int]:
        """Channel widths of c1, c2, c3."""
        return tuple(self.units[i][1] for i in self.stage_ends)  # type: ignore[return-value]


def official_layout(n_styles: int = 18) -> EncoderLayout:
    """The layout of pSp's GradualStyleEncoder(50, 'ir_se') with ``n_styles`` style blocks."""
    return layout_from_stages(
        widths=(64, 128, 256, 512),
        units=(3, 4, 14, 3),
        n_styles=n_styles,
        style_hidden=512,
        style_dim=512,
    )


def layout_from_stages(
    widths: tuple[int, int, int, int],
    units: tuple[int, int, int, int],
    n_styles: int,
    style_hidden: int = 512,
    style_dim: int = 512,
    in_channels: int = 3,
    se_reduction: int | None = 16,
) -> EncoderLayout:
    """Build a layout from per-stage widths and unit counts (as pSp's ``get_blocks``).

    The stem width equals the first stage width. SE width is ``max(1, depth // se_reduction)``
    (``depth // 16`` for every official width); ``se_reduction=None`` gives plain IR units.
    """
    if len(widths) != 4 or len(units) != 4 or min(units) < 1 or min(widths) < 1:
        raise ValueError(f"need 4 stages with >= 1 unit each, got widths {widths} units {units}")
    if n_styles <= COARSE_END:
        raise ValueError(f"n_styles must be > {COARSE_END}, got {n_styles}")
    body: list[tuple[int, int, int, int | None]] = []
    ends: list[int] = []
    in_c = widths[0]
    for depth, count in zip(widths, units, strict=True):
        for j in range(count):
            se = None if se_reduction is None else max(1, depth // se_reduction)
            body.append((in_c if j == 0 else depth, depth, 2 if j == 0 else 1, se))
        in_c = depth
        ends.append(len(body) - 1)
    return EncoderLayout(
        in_channels=in_channels,
        stem_width=widths[0],
        units=tuple(body),
        stage_ends=(ends[1], ends[2], ends[3]),
        n_styles=n_styles,
        style_hidden=style_hidden,
        style_dim=style_dim,
    )


def style_conv_count(index: int) -> int:
    """Number of stride-2 convs in style block ``index`` (log2 of the map it reads)."""
    size = _C3_SIZE if index < COARSE_END else _C2_SIZE if index < MIDDLE_END else _C1_SIZE
    return int(math.log2(size))


def _shape(sd: Mapping[str, Any], key: str, prefix: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"missing key {prefix}{key}")
    value = sd[key]
    if not isinstance(value, Tensor):
        raise ValueError(f"{prefix}{key} is a {type(value).__name__}, not a tensor")
    return tuple(value.shape)


def _indices(sd: Mapping[str, Any], group: str) -> list[int]:
    pattern = re.compile(rf"^{group}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})


def layout_from_state_dict(sd: Mapping[str, Any], prefix: str = "") -> EncoderLayout:
    """Infer the encoder layout from its state dict (keys without the ``encoder.`` prefix).

    Stage starts are the first unit and every unit whose width changes (a unit with a Conv1x1
    shortcut), so consecutive stages must differ in width, as in every pSp model. ``prefix`` is
    only used in error messages. Raises ValueError naming the first problem.
    """
    stem = _shape(sd, "input_layer.0.weight", prefix)
    if len(stem) != 4 or stem[2:] != (3, 3):
        raise ValueError(f"{prefix}input_layer.0.weight has shape {stem}, expected (C, 3, 3, 3)")
    stem_width, in_channels = stem[0], stem[1]

    unit_ids = _indices(sd, "body")
    if not unit_ids:
        raise ValueError(f"no {prefix}body.* keys: not a GradualStyleEncoder")
    if unit_ids != list(range(len(unit_ids))):
        gap = next(i for i in range(len(unit_ids) + 1) if i not in unit_ids)
        raise ValueError(f"missing key {prefix}body.{gap}.* (body units are not contiguous)")
    units: list[tuple[int, int, int, int | None]] = []
    starts: list[int] = []
    prev_depth = stem_width
    for i in unit_ids:
        in_c = _shape(sd, f"body.{i}.res_layer.0.weight", prefix)[0]
        conv1 = _shape(sd, f"body.{i}.res_layer.1.weight", prefix)
        depth = conv1[0]
        if in_c != prev_depth:
            raise ValueError(
                f"{prefix}body.{i}.res_layer.0.weight has {in_c} channels but the previous "
                f"layer gives {prev_depth}"
            )
        se: int | None = None
        if f"body.{i}.res_layer.5.fc1.weight" in sd:
            se = _shape(sd, f"body.{i}.res_layer.5.fc1.weight", prefix)[0]
        if i == 0 or depth != in_c:
            starts.append(i)
        units.append((in_c, depth, 1, se))
        prev_depth = depth
    if len(starts) != 4:
        raise ValueError(
            f"found {len(starts)} body stages in {prefix}body.* (units {starts} change width), "
            "expected 4 as in IR-SE50"
        )
    for s in starts:
        in_c, depth, _stride, se = units[s]
        units[s] = (in_c, depth, 2, se)
    ends = [*(s - 1 for s in starts[1:]), len(units) - 1]

    style_ids = _indices(sd, "styles")
    if not style_ids:
        raise ValueError(f"no {prefix}styles.* keys: not a GradualStyleEncoder")
    if style_ids != list(range(len(style_ids))):
        gap = next(i for i in range(len(style_ids) + 1) if i not in style_ids)
        raise ValueError(f"missing key {prefix}styles.{gap}.*")
    n_styles = len(style_ids)
    if n_styles <= COARSE_END:
        raise ValueError(f"only {n_styles} style blocks in {prefix}styles.*, expected 18")
    style_hidden = _shape(sd, "styles.0.convs.0.weight", prefix)[0]
    linear = _shape(sd, "styles.0.linear.weight", prefix)
    if len(linear) != 2:
        raise ValueError(f"{prefix}styles.0.linear.weight has shape {linear}, expected 2-D")
    return EncoderLayout(
        in_channels=in_channels,
        stem_width=stem_width,
        units=tuple(units),
        stage_ends=(ends[1], ends[2], ends[3]),
        n_styles=n_styles,
        style_hidden=style_hidden,
        style_dim=linear[0],
    )


# -- modules (pSp's, same attribute names so the state dict keys match) ------------------------


class SEModule(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc2(relu(fc1(avgpool(x)))))."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, kernel_size=1, padding=0, bias=False)
        self.fc2 = nn.Conv2d(reduced, channels, kernel_size=1, padding=0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class BottleneckIRSE(nn.Module):
    """pSp's ``bottleneck_IR_SE`` (``bottleneck_IR`` when ``se`` is None)."""

    def __init__(self, in_channel: int, depth: int, stride: int, se: int | None) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if se is not None:
            layers.append(SEModule(depth, se))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """``n_convs`` stride-2 Conv3x3 + LeakyReLU down to 1x1, then EqualLinear -> one style."""

    def __init__(self, in_c: int, hidden: int, out_c: int, n_convs: int) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        for j in range(n_convs):
            modules += [
                nn.Conv2d(in_c if j == 0 else hidden, hidden, kernel_size=3, stride=2, padding=1),
                nn.LeakyReLU(),
            ]
        self.convs = nn.Sequential(*modules)
        self.linear = EqualLinear(hidden, out_c, lr_mul=1)
        self.hidden = hidden

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)  # (B, hidden, 1, 1)
        if x.shape[2:] != (1, 1):
            raise ValueError(f"style block reduced the map to {tuple(x.shape[2:])}, not 1x1")
        return self.linear(x.flatten(1))  # (B, out_c)


class GradualStyleEncoder(nn.Module):
    """pSp's GradualStyleEncoder for a given layout: (B, 3, 256, 256) -> (B, n_styles, dim).

    The output is the raw code; ``PSPEncoder.encode`` adds ``latent_avg``.
    """

    def __init__(self, layout: EncoderLayout) -> None:
        super().__init__()
        self.layout = layout
        self.input_layer = nn.Sequential(
            nn.Conv2d(layout.in_channels, layout.stem_width, (3, 3), 1, 1, bias=False),
            nn.BatchNorm2d(layout.stem_width),
            nn.PReLU(layout.stem_width),
        )
        self.body = nn.Sequential(*(BottleneckIRSE(*unit) for unit in layout.units))
        c1_w, c2_w, c3_w = layout.c_widths
        self.styles = nn.ModuleList(
            GradualStyleBlock(c3_w, layout.style_hidden, layout.style_dim, style_conv_count(i))
            for i in range(layout.n_styles)
        )
        self.latlayer1 = nn.Conv2d(c2_w, c3_w, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(c1_w, c3_w, kernel_size=1, stride=1, padding=0)

    @staticmethod
    def _upsample_add(x: Tensor, y: Tensor) -> Tensor:
        return F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=True) + y

    def features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The IR-SE body's c1 (64x64), c2 (32x32), c3 (16x16) maps for a 256x256 input."""
        x = self.input_layer(x)  # (B, 64, 256, 256)
        i1, i2, i3 = self.layout.stage_ends
        feats: dict[int, Tensor] = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in (i1, i2, i3):
                feats[i] = x
        return feats[i1], feats[i2], feats[i3]

    def forward(self, x: Tensor) -> Tensor:
        c1, c2, c3 = self.features(x)  # 64x64, 32x32, 16x16
        n = self.layout.n_styles
        latents = [self.styles[j](c3) for j in range(min(COARSE_END, n))]
        p2 = self._upsample_add(c3, self.latlayer1(c2))  # (B, C3, 32, 32)
        latents += [self.styles[j](p2) for j in range(COARSE_END, min(MIDDLE_END, n))]
        if n > MIDDLE_END:
            p1 = self._upsample_add(p2, self.latlayer2(c1))  # (B, C3, 64, 64)
            latents += [self.styles[j](p1) for j in range(MIDDLE_END, n)]
        return torch.stack(latents, dim=1)  # (B, n_styles, style_dim)


class Encoder4Editing(GradualStyleEncoder):
    """e4e's encoder (Tov et al. 2021): one W code from ``styles[0]`` plus per-layer deltas.

    Same modules (and so the same state dict keys) as the GradualStyleEncoder; only the forward
    differs: ``w = styles[0](c3)`` is broadcast to every W+ entry and ``styles[i]`` (i >= 1, reading
    c3, p2 or p1 like pSp's block i) adds a delta to entry i. This is e4e's inference stage
    (``ProgressiveStage.Inference``: every delta on). The output is the raw code;
    ``PSPEncoder.encode`` adds ``latent_avg`` as e4e's ``pSp.forward`` does.
    """

    def forward(self, x: Tensor) -> Tensor:
        c1, c2, c3 = self.features(x)  # 64x64, 32x32, 16x16
        n = self.layout.n_styles
        w = self.styles[0](c3)  # (B, style_dim)
        deltas = [torch.zeros_like(w)]
        deltas += [self.styles[j](c3) for j in range(1, min(COARSE_END, n))]
        p2 = self._upsample_add(c3, self.latlayer1(c2))  # (B, C3, 32, 32)
        deltas += [self.styles[j](p2) for j in range(COARSE_END, min(MIDDLE_END, n))]
        if n > MIDDLE_END:
            p1 = self._upsample_add(p2, self.latlayer2(c1))  # (B, C3, 64, 64)
            deltas += [self.styles[j](p1) for j in range(MIDDLE_END, n)]
        return w.unsqueeze(1) + torch.stack(deltas, dim=1)  # (B, n_styles, style_dim)


ENCODER_CLASSES: dict[str, type[GradualStyleEncoder]] = {
    SUPPORTED_ENCODER: GradualStyleEncoder,
    E4E_ENCODER: Encoder4Editing,
}


def build_encoder(
    layout: EncoderLayout,
    device: str | torch.device = "cpu",
    encoder_type: str = SUPPORTED_ENCODER,
) -> GradualStyleEncoder:
    """An encoder with freshly initialised weights (``device='meta'`` for shapes only).

    ``encoder_type`` is the checkpoint's ``opts['encoder_type']``: ``GradualStyleEncoder`` (pSp)
    or ``Encoder4Editing`` (e4e); both have the same parameters.
    """
    with torch.device(device):
        return ENCODER_CLASSES[encoder_type](layout)


def encoder_state_dict_shapes(n_styles: int = 18) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official encoder state dict (no ``encoder.`` prefix), built on meta."""
    module = build_encoder(official_layout(n_styles), "meta")
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_state_dict(
    expected: Mapping[str, Tensor], sd: Mapping[str, Any], prefix: str = "", limit: int = 3
) -> None:
    """Raise ValueError (one line) naming missing, unexpected and mis-shaped keys."""
    problem = describe_mismatch({k: v.shape for k, v in expected.items()}, sd, prefix, limit)
    if problem:
        raise ValueError(problem)


def encoder_from_state_dict(
    sd: Mapping[str, Any], prefix: str = "", encoder_type: str = SUPPORTED_ENCODER
) -> GradualStyleEncoder:
    """Build an encoder of ``encoder_type`` holding ``sd``'s tensors (strict; float32; CPU).

    Raises ValueError with a one-line message if the keys or shapes do not fit.
    """
    layout = layout_from_state_dict(sd, prefix)
    module = build_encoder(layout, "meta", encoder_type)
    expected = module.state_dict()
    check_state_dict(expected, sd, prefix)
    tensors = {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu()
        for k, v in sd.items()
    }
    module.load_state_dict(tensors, strict=True, assign=True)
    return module


# -- the public wrapper -------------------------------------------------------------------------


class PSPEncoder(nn.Module):
    """A frozen pSp encoder: images -> W+ codes (``latent_avg`` added when the model says so)."""

    def __init__(
        self,
        encoder: GradualStyleEncoder,
        latent_avg: Tensor | None,
        opts: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.opts = dict(opts or {})
        n, dim = encoder.layout.n_styles, encoder.layout.style_dim
        if latent_avg is not None:
            latent_avg = latent_avg.detach().float().reshape(-1, dim).expand(n, dim).clone()
        self.register_buffer("latent_avg", latent_avg, persistent=False)  # (n_styles, dim)
        self.memory_format = torch.channels_last
        self.use_memory_format(torch.channels_last)
        self.eval()
        self.requires_grad_(False)

    def use_memory_format(self, memory_format: torch.memory_format) -> PSPEncoder:
        """Weights and inputs in ``memory_format``. NHWC (``channels_last``, the default) is
        oneDNN's and cuDNN's preferred layout for this plain ResNet: 1.2x fp32 on a CPU, and more
        with bf16 (docs/speed.md); codes within 3e-7 of NCHW (``contiguous_format``)."""
        self.memory_format = memory_format
        self.encoder.to(memory_format=memory_format)
        return self

    @property
    def n_styles(self) -> int:
        return self.encoder.layout.n_styles

    @property
    def encoder_type(self) -> str:
        """``GradualStyleEncoder`` (pSp) or ``Encoder4Editing`` (e4e)."""
        return E4E_ENCODER if isinstance(self.encoder, Encoder4Editing) else SUPPORTED_ENCODER

    @property
    def style_dim(self) -> int:
        return self.encoder.layout.style_dim

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def train(self, mode: bool = True) -> PSPEncoder:
        """The encoder is frozen: BatchNorm always uses its running statistics."""
        return super().train(False)

    def encode(self, x: Tensor) -> Tensor:
        """(B, 3, 256, 256) RGB in [-1, 1] -> W+ (B, n_styles, 512)."""
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (3, 256, 256):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"pSp encoder input must be a (B, 3, 256, 256) tensor in [-1, 1], got {got}; "
                "use encode_images() to resize and normalise images"
            )
        if not x.is_floating_point():
            raise ValueError(f"pSp encoder input must be a float tensor, got {x.dtype}")
        x = x.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)
        codes = self.encoder(x)  # (B, n_styles, dim)
        if self.latent_avg is not None:
            codes = codes + self.latent_avg.unsqueeze(0)
        return codes

    forward = encode

    def encode_images(self, images: np.ndarray | Tensor, batch_size: int | None = None) -> Tensor:
        """Encode RGB images of any size, as pSp's transforms prepare them.

        ``images``: numpy (H, W, 3) or (B, H, W, 3), uint8 in [0, 255] or float in [0, 1]; or a
        torch tensor (3, H, W) or (B, 3, H, W), uint8 or float in [0, 1]. Each image is resized
        to 256x256 (bilinear with antialiasing) and normalised with mean 0.5, std 0.5.
        Returns W+ (B, n_styles, 512) on the encoder's device; ``batch_size`` bounds memory.
        """
        x = images_to_tensor(images)  # (B, 3, H, W) float in [0, 1]
        step = batch_size or x.shape[0]
        out = []
        for start in range(0, x.shape[0], step):
            chunk = x[start : start + step].to(self.device)
            out.append(self.encode(preprocess(chunk)))
        return torch.cat(out, dim=0)  # (B, n_styles, dim)


def images_to_tensor(images: np.ndarray | Tensor) -> Tensor:
    """numpy (B,)H,W,3 or torch (B,)3,H,W images -> float tensor (B, 3, H, W) in [0, 1]."""
    if isinstance(images, np.ndarray):
        arr = images[None] if images.ndim == 3 else images
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"expected RGB images (B, H, W, 3) or (H, W, 3), got {images.shape}")
        x = torch.from_numpy(np.require(arr, requirements=("C", "W"))).permute(0, 3, 1, 2)
    elif isinstance(images, Tensor):
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected RGB image tensor (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}"
            )
    else:
        raise ValueError(f"expected a numpy array or torch tensor, got {type(images).__name__}")
    if x.shape[0] == 0:
        raise ValueError("no images to encode")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    return x.float()


def preprocess(x: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, 256, 256) in [-1, 1] (antialiased bilinear resize)."""
    if tuple(x.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(
            x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False
        )
    return (x - 0.5) / 0.5


# -- loading the official checkpoint ------------------------------------------------------------


def _split_checkpoint(
    path: Path, ckpt: Any
) -> tuple[dict[str, Tensor], dict[str, Any], Tensor | None]:
    """(encoder state dict without prefix, opts, latent_avg) from a pSp checkpoint object."""
    if not isinstance(ckpt, Mapping):
        raise ModelFileError(
            path, f"is not a pSp checkpoint (it holds a {type(ckpt).__name__}, not a dict)", _HINT
        )
    if "state_dict" in ckpt:
        sd = ckpt["state_dict"]
        if not isinstance(sd, Mapping):
            raise ModelFileError(path, "is not a pSp checkpoint: 'state_dict' is not a dict", _HINT)
    elif any(str(k).startswith("encoder.") for k in ckpt):
        sd = ckpt  # a bare state dict
    else:
        keys = ", ".join(sorted(map(str, ckpt))[:5]) or "none"
        raise ModelFileError(
            path, f"is not a pSp checkpoint: no 'state_dict' or encoder.* keys (has {keys})", _HINT
        )
    enc = {str(k)[len("encoder.") :]: v for k, v in sd.items() if str(k).startswith("encoder.")}
    if not enc:
        raise ModelFileError(
            path, "is not a pSp checkpoint: no encoder.* keys in state_dict", _HINT
        )
    opts = ckpt.get("opts") if isinstance(ckpt.get("opts"), Mapping) else {}
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, Tensor):
        raise ModelFileError(path, "has a 'latent_avg' that is not a tensor", _HINT)
    return enc, dict(opts or {}), latent_avg


def _hint(encoder_type: object) -> str:
    return _E4E_HINT if encoder_type == E4E_ENCODER else _HINT


def _check_opts(path: Path, opts: Mapping[str, Any]) -> str:
    """Refuse pSp variants this loader does not implement, with the reason; return the type.

    Accepted: ``GradualStyleEncoder`` (pSp; the default when opts do not say) and
    ``Encoder4Editing`` (e4e).
    """
    encoder_type = opts.get("encoder_type", SUPPORTED_ENCODER)
    if not isinstance(encoder_type, str) or encoder_type not in ENCODER_CLASSES:
        raise ModelFileError(
            path,
            f"pSp encoder_type {encoder_type!r} is not supported "
            f"(only {SUPPORTED_ENCODER} and {E4E_ENCODER})",
            _HINT,
        )
    hint = _hint(encoder_type)
    if opts.get("learn_in_w", False):
        raise ModelFileError(
            path, "this pSp model learns a single W code (learn_in_w) and is not supported", hint
        )
    input_nc, label_nc = opts.get("input_nc", 3), opts.get("label_nc", 0)
    if input_nc != 3 or label_nc not in (0, None):
        raise ModelFileError(
            path,
            f"this pSp model takes {input_nc}-channel inputs (label_nc {label_nc}), "
            "not RGB face photos",
            hint,
        )
    return str(encoder_type)


def _check_size(path: Path, opts: Mapping[str, Any], layout: EncoderLayout, hint: str) -> None:
    """The style count must fit the generator size (pSp: opts.output_size, e4e: stylegan_size)."""
    for key in ("output_size", "stylegan_size"):
        size = opts.get(key)
        if isinstance(size, int) and size >= 8:
            expected = int(math.log2(size)) * 2 - 2
            if expected != layout.n_styles:
                raise ModelFileError(
                    path,
                    f"has {layout.n_styles} style blocks but opts.{key} {size} needs {expected}",
                    hint,
                )


def _checked_latent_avg(
    path: Path, opts: Mapping[str, Any], latent_avg: Tensor | None, layout: EncoderLayout, hint: str
) -> Tensor | None:
    """``latent_avg`` when opts say start_from_latent_avg (checked), else None."""
    if not opts.get("start_from_latent_avg", True):
        return None
    if latent_avg is None:
        raise ModelFileError(
            path, "has no 'latent_avg' but its opts say start_from_latent_avg", hint
        )
    n, dim = layout.n_styles, layout.style_dim
    if latent_avg.numel() not in (dim, n * dim) or latent_avg.shape[-1] != dim:
        raise ModelFileError(
            path,
            f"latent_avg has shape {tuple(latent_avg.shape)}, expected ({n}, {dim}) or ({dim},)",
            hint,
        )
    if not torch.isfinite(latent_avg).all():
        raise ModelFileError(path, "latent_avg holds NaN or infinite values", hint)
    return latent_avg


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> PSPEncoder:
    """Load a pSp or e4e checkpoint as a frozen PSPEncoder.

    Accepts ``psp_ffhq_encode.pt`` (GradualStyleEncoder), ``e4e_ffhq_encode.pt``
    (``opts['encoder_type'] == 'Encoder4Editing'``: w + per-layer deltas) and tiny packs of
    either. Reads ``state_dict['encoder.*']`` strictly, ``latent_avg`` ((n_styles, 512) or
    (512,)) and ``opts`` (encoder_type, learn_in_w, input_nc, label_nc, output_size or
    stylegan_size, start_from_latent_avg). ``decoder.*`` keys are ignored (``load_generator``
    reads them). Any problem raises a one-line ModelFileError (exit 2).
    """
    p = Path(path)
    ckpt = load_torch_file(p, "pSp checkpoint")
    enc_sd, opts, latent_avg = _split_checkpoint(p, ckpt)
    encoder_type = _check_opts(p, opts)
    hint = _hint(encoder_type)
    try:
        encoder = encoder_from_state_dict(enc_sd, prefix="encoder.", encoder_type=encoder_type)
    except ValueError as exc:
        kind = "e4e" if encoder_type == E4E_ENCODER else "pSp"
        raise ModelFileError(p, f"is not a usable {kind} encoder: {exc}", hint) from None
    layout = encoder.layout
    if layout.in_channels != 3:
        raise ModelFileError(p, f"encoder takes {layout.in_channels} input channels, not 3", hint)
    _check_size(p, opts, layout, hint)
    latent_avg = _checked_latent_avg(p, opts, latent_avg, layout, hint)
    return PSPEncoder(encoder, latent_avg, opts).to(torch.device(device))
