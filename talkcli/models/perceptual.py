"""LPIPS v0.1 without torchvision: VGG16 / AlexNet feature stacks and the calibrated heads.

The backbones are torchvision's ``features`` Sequentials rebuilt with the same indices, so the
official files load as they are (``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``; their
``classifier.*`` keys are accepted and ignored). The heads are the ``lpips`` package's v0.1 linear
layers (``lin{k}.model.1.weight``, shape (1, C_k, 1, 1)), read as data files.

LPIPS(x, y) for x, y in [-1, 1]: scale both with shift [-.030, -.088, -.188] and scale
[.458, .448, .450]; take five ReLU outputs (VGG relu1_2 .. relu5_3, AlexNet relu1 .. relu5);
unit-normalise each along channels (x / (||x|| + 1e-10)); square the difference; weight the
channels with the head (1x1 conv, no bias); average over space; sum over the five layers.

Channel widths come from the state dicts, so tiny test backbones work through the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from talkcli.constants import LPIPS_FILES
from talkcli.errors import ModelFileError
from talkcli.weights import registry
from talkcli.weights.safe_load import load_torch_file

# torchvision's VGG16 ("D") features: conv indices and the ReLU outputs LPIPS reads.
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_POOLS = (4, 9, 16, 23)  # (30 follows relu5_3; LPIPS never reads past 29)
VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)

# torchvision's AlexNet features: (index, kernel, stride, padding) of each conv.
ALEX_CONVS = ((0, 11, 4, 2), (3, 5, 1, 2), (6, 3, 1, 1), (8, 3, 1, 1), (10, 3, 1, 1))
ALEX_POOLS = (2, 5)  # MaxPool2d(3, 2); (12 follows relu5)
ALEX_TAPS = (1, 4, 7, 9, 11)  # relu1 .. relu5
ALEX_WIDTHS = (64, 192, 384, 256, 256)

NETS = LPIPS_FILES  # net -> (backbone, heads) registry names (one map, in talkcli.constants)
MIN_SIZE = {"alex": 32, "vgg": 16}  # smallest input side that reaches the last tap

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10


class FeatureStack(nn.Module):
    """A torchvision-style ``features`` Sequential returning the outputs at ``taps``."""

    def __init__(self, layers: list[nn.Module], taps: tuple[int, ...]) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.taps = taps

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels at each tap (the widths the LPIPS heads must have)."""
        out, width = [], 0
        for i, layer in enumerate(self.features):
            if isinstance(layer, nn.Conv2d):
                width = layer.out_channels
            if i in self.taps:
                out.append(width)
        return tuple(out)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return outs  # five (B, C_k, H_k, W_k)


def vgg16_features(widths: tuple[int, ...] = VGG16_WIDTHS) -> FeatureStack:
    """torchvision's VGG16 ``features`` up to relu5_3 (indices 0..29), with ``widths`` convs."""
    if len(widths) != len(VGG16_CONVS):
        raise ValueError(f"VGG16 has {len(VGG16_CONVS)} convs, got {len(widths)} widths")
    layers: list[nn.Module] = []
    in_c, conv = 3, 0
    for i in range(VGG16_TAPS[-1] + 1):
        if i in VGG16_CONVS:
            layers.append(nn.Conv2d(in_c, widths[conv], kernel_size=3, padding=1))
            in_c = widths[conv]
            conv += 1
        elif i in VGG16_POOLS:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.ReLU(inplace=False))
    return FeatureStack(layers, VGG16_TAPS)


def alexnet_features(widths: tuple[int, ...] = ALEX_WIDTHS) -> FeatureStack:
    """torchvision's AlexNet ``features`` up to relu5 (indices 0..11), with ``widths`` convs."""
    if len(widths) != len(ALEX_CONVS):
        raise ValueError(f"AlexNet has {len(ALEX_CONVS)} convs, got {len(widths)} widths")
    convs = {idx: (k, s, p, w) for (idx, k, s, p), w in zip(ALEX_CONVS, widths, strict=True)}
    layers: list[nn.Module] = []
    in_c = 3
    for i in range(ALEX_TAPS[-1] + 1):
        if i in convs:
            k, s, p, w = convs[i]
            layers.append(nn.Conv2d(in_c, w, kernel_size=k, stride=s, padding=p))
            in_c = w
        elif i in ALEX_POOLS:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        else:
            layers.append(nn.ReLU(inplace=False))
    return FeatureStack(layers, ALEX_TAPS)


def _check_net(net: str) -> None:
    if net not in NETS:
        raise ValueError(f"LPIPS net must be one of {', '.join(NETS)}, got {net!r}")


def backbone_from_state_dict(net: str, sd: Mapping[str, Any]) -> FeatureStack:
    """Build the ``net`` feature stack holding ``sd``'s ``features.*`` weights (strict).

    ``classifier.*`` keys (torchvision's full-model files) are ignored; any other missing,
    unexpected or mis-shaped key raises ValueError with a one-line message.
    """
    _check_net(net)
    if not isinstance(sd, Mapping):
        raise ValueError(f"expected a state dict, got a {type(sd).__name__}")
    conv_ids = VGG16_CONVS if net == "vgg" else tuple(c[0] for c in ALEX_CONVS)
    widths = []
    for idx in conv_ids:
        key = f"features.{idx}.weight"
        value = sd.get(key)
        if not isinstance(value, Tensor) or value.ndim != 4:
            what = "missing" if value is None else f"not a 4-D tensor ({_describe(value)})"
            raise ValueError(f"{key} is {what}; not a torchvision {_NET_NAME[net]} state dict")
        widths.append(int(value.shape[0]))
    with torch.device("meta"):
        stack = vgg16_features(tuple(widths)) if net == "vgg" else alexnet_features(tuple(widths))
    expected = stack.state_dict()
    features = {k: v for k, v in sd.items() if not str(k).startswith("classifier.")}
    missing = [k for k in expected if k not in features]
    unexpected = [k for k in features if k not in expected]
    wrong = [
        f"{k} {_describe(features[k])} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in features
        and (not isinstance(features[k], Tensor) or features[k].shape != expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append("missing " + _names(missing))
    if unexpected:
        problems.append("unexpected " + _names(unexpected))
    if wrong:
        problems.append("wrong shape for " + _names(wrong))
    if problems:
        raise ValueError(f"not a torchvision {_NET_NAME[net]} state dict: " + "; ".join(problems))
    stack.load_state_dict({k: features[k].detach().float().cpu() for k in expected}, assign=True)
    return stack


_NET_NAME = {"alex": "AlexNet", "vgg": "VGG16"}


def _describe(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def _names(keys: list[str], limit: int = 3) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def head_widths(heads_sd: Mapping[str, Any]) -> tuple[int, ...]:
    """Input widths of the five LPIPS heads ``lin{k}.model.1.weight`` (1, C_k, 1, 1)."""
    if not isinstance(heads_sd, Mapping):
        raise ValueError(f"expected a state dict of LPIPS heads, got a {type(heads_sd).__name__}")
    widths = []
    for k in range(5):
        key = f"lin{k}.model.1.weight"
        value = heads_sd.get(key)
        if not isinstance(value, Tensor):
            raise ValueError(
                f"LPIPS head {key} is {'missing' if value is None else 'not a tensor'}"
            )
        if value.ndim != 4 or value.shape[0] != 1 or value.shape[2:] != (1, 1):
            raise ValueError(
                f"LPIPS head {key} has shape {tuple(value.shape)}, expected (1, C, 1, 1)"
            )
        widths.append(int(value.shape[1]))
    known = {f"lin{i}.model.1.weight" for i in range(5)}
    extra = [str(key) for key in heads_sd if key not in known]
    if extra:
        raise ValueError(f"unexpected key(s) in LPIPS heads: {_names(extra)}")
    return tuple(widths)


class NetLinLayer(nn.Module):
    """LPIPS's head: Dropout (identity at eval) then a bias-free 1x1 conv to one channel."""

    def __init__(self, chn_in: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(chn_in, 1, 1, stride=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def normalize_tensor(x: Tensor, eps: float = EPS) -> Tensor:
    """Unit-normalise along channels: x / (sqrt(sum_c x^2) + eps)."""
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance; frozen, in eval mode, differentiable with respect to its inputs.

    ``backbone_state``: torchvision ``vgg16``/``alexnet`` state dict (``features.*`` used).
    ``heads_state``: the lpips package's ``v0.1/{vgg,alex}.pth`` dict. ``forward(x, y)`` takes
    two (B, 3, H, W) RGB batches in [-1, 1] and returns (B,) distances.
    """

    def __init__(
        self, net: str, backbone_state: Mapping[str, Any], heads_state: Mapping[str, Any]
    ) -> None:
        super().__init__()
        _check_net(net)
        self.net_name = net
        self.net = backbone_from_state_dict(net, backbone_state)
        widths = head_widths(heads_state)
        if widths != self.net.widths:
            raise ValueError(
                f"LPIPS heads have widths {widths} but the {_NET_NAME[net]} backbone gives "
                f"{self.net.widths}; heads and backbone must be for the same network"
            )
        for k, w in enumerate(widths):
            self.add_module(f"lin{k}", NetLinLayer(w))
        self.load_state_dict(
            {f"lin{k}.model.1.weight": heads_state[f"lin{k}.model.1.weight"] for k in range(5)},
            strict=False,
        )
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)

    @property
    def lins(self) -> list[NetLinLayer]:
        return [getattr(self, f"lin{k}") for k in range(5)]

    def train(self, mode: bool = True) -> LPIPS:
        """Always in eval mode (dropout off): the loss is frozen."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS between x and y, both (B, 3, H, W) in [-1, 1] -> (B,)."""
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise ValueError("LPIPS inputs must be tensors")
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS inputs must be two (B, 3, H, W) tensors of the same shape, "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[2:]) < MIN_SIZE[self.net_name]:
            raise ValueError(
                f"LPIPS-{self.net_name} needs images of at least {MIN_SIZE[self.net_name]} "
                f"pixels per side, got {tuple(x.shape[2:])}"
            )
        b = x.shape[0]
        both = torch.cat([x, y], dim=0).to(self.shift.device, torch.float32)  # (2B, 3, H, W)
        feats = self.net((both - self.shift) / self.scale)
        total = torch.zeros(b, device=both.device)
        for lin, f in zip(self.lins, feats, strict=True):
            f = normalize_tensor(f)
            diff = (f[:b] - f[b:]) ** 2  # (B, C_k, H_k, W_k)
            total = total + lin(diff).mean(dim=(1, 2, 3))  # spatial average -> (B,)
        return total


def load_lpips(
    net: str = "alex",
    weights_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    backbone_path: str | Path | None = None,
    heads_path: str | Path | None = None,
) -> LPIPS:
    """LPIPS-``net`` with files from the registry (``alexnet``/``vgg16``, ``lpips-alex``/-vgg).

    Explicit ``backbone_path``/``heads_path`` win over the registry (searched in
    ``weights_dir`` first: the caller passes the CLI's ``--weights-dir``). Missing or broken files
    raise a one-line ModelFileError naming the file.
    """
    _check_net(net)
    backbone_name, heads_name = NETS[net]
    purpose = f"LPIPS-{net}"
    bpath = registry.resolve_option(backbone_path, backbone_name, weights_dir, purpose)
    hpath = registry.resolve_option(heads_path, heads_name, weights_dir, purpose)
    bsd = load_torch_file(bpath, f"{_NET_NAME[net]} backbone")
    hsd = load_torch_file(hpath, f"LPIPS-{net} heads file")
    hint = f"use the official file (`talkcli weights fetch {backbone_name}`)"
    try:
        backbone_from_state_dict(net, bsd)
    except ValueError as exc:
        raise ModelFileError(bpath, str(exc), hint) from None
    try:
        model = LPIPS(net, bsd, hsd)
    except ValueError as exc:
        raise ModelFileError(
            hpath, str(exc), f"use the official file (`talkcli weights fetch {heads_name}`)"
        ) from None
    return model.to(torch.device(device))
