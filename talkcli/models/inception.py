"""The FID InceptionV3 without torchvision: pytorch-fid's network, its key layout and preprocessing.

pytorch-fid (``FIDInceptionA/C/E_1/E_2`` patched onto torchvision's ``Inception3``) computes FID
with the TensorFlow 2015-12-05 Inception graph ported to PyTorch
(``pt_inception-2015-12-05-6726825d.pth``; keys and shapes in
``../shared/formats/fid_inception_keys.json``: 566 keys, ``Conv2d_1a_3x3.conv.weight`` ..
``Mixed_7c.branch_pool.bn.num_batches_tracked``, ``fc.weight`` (1008, 2048), ``fc.bias``).
This module rebuilds that network with the same module names, so the file loads as it is:

* ``BasicConv2d`` = Conv2d (no bias) + BatchNorm2d(eps 0.001) + ReLU.
* stem: 1a 3x3/2, 2a 3x3, 2b 3x3 pad 1, maxpool 3/2, 3b 1x1, 4a 3x3, maxpool 3/2.
* Mixed_5b..5d InceptionA, 6a InceptionB, 6b..6e InceptionC, 7a InceptionD, 7b/7c InceptionE.
  FID's patches: the average pools of A, C and E_1 do not count padded zeros
  (``count_include_pad=False``, as TensorFlow); E_2 (Mixed_7c) max-pools its pool branch.
* pool3 features: adaptive average pool -> (N, 2048). ``fc`` is loaded and ignored.

Preprocessing (pytorch-fid ``InceptionV3(resize_input=True, normalize_input=True)`` fed by
``ToTensor``): uint8 RGB / 255 -> bilinear resize to 299x299 (``align_corners=False``, no
antialias) -> 2x - 1.

Channel widths are read from the state dict (and checked against each other), so the tiny test
packs load narrow copies through the same code; the official file gives 2048-d features.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkcli.errors import ModelFileError
from talkcli.models.state_dict import assign_checked, shape_text
from talkcli.weights.safe_load import load_torch_file

INPUT_SIZE = 299
FEATURE_DIM = 2048  # the official network's pool3 width
BN_EPS = 0.001
_HINT = (
    "use pytorch-fid's pt_inception-2015-12-05-6726825d.pth (`talkcli weights fetch fid-inception`)"
)

# (kernel (h, w), stride, padding (h, w)) of each BasicConv2d, by block type.
Spec = tuple[tuple[int, int], int, tuple[int, int]]
_K1: Spec = ((1, 1), 1, (0, 0))
_K3: Spec = ((3, 3), 1, (1, 1))
_K3S2: Spec = ((3, 3), 2, (0, 0))
_K17: Spec = ((1, 7), 1, (0, 3))
_K71: Spec = ((7, 1), 1, (3, 0))
_K13: Spec = ((1, 3), 1, (0, 1))
_K31: Spec = ((3, 1), 1, (1, 0))

STEM: dict[str, tuple[Spec, str]] = {  # name -> (spec, input)
    "Conv2d_1a_3x3": (((3, 3), 2, (0, 0)), "image"),
    "Conv2d_2a_3x3": (((3, 3), 1, (0, 0)), "Conv2d_1a_3x3"),
    "Conv2d_2b_3x3": (_K3, "Conv2d_2a_3x3"),
    "Conv2d_3b_1x1": (_K1, "Conv2d_2b_3x3"),
    "Conv2d_4a_3x3": (((3, 3), 1, (0, 0)), "Conv2d_3b_1x1"),
}

# Block types: conv name -> (spec, input ("in" = the block's input, else another conv)), and
# the concatenated outputs in order ("in" = a pooled copy of the input, as B and D do).
BLOCKS: dict[str, tuple[dict[str, tuple[Spec, str]], tuple[str, ...]]] = {
    "A": (
        {
            "branch1x1": (_K1, "in"),
            "branch5x5_1": (_K1, "in"),
            "branch5x5_2": (((5, 5), 1, (2, 2)), "branch5x5_1"),
            "branch3x3dbl_1": (_K1, "in"),
            "branch3x3dbl_2": (_K3, "branch3x3dbl_1"),
            "branch3x3dbl_3": (_K3, "branch3x3dbl_2"),
            "branch_pool": (_K1, "in"),
        },
        ("branch1x1", "branch5x5_2", "branch3x3dbl_3", "branch_pool"),
    ),
    "B": (
        {
            "branch3x3": (_K3S2, "in"),
            "branch3x3dbl_1": (_K1, "in"),
            "branch3x3dbl_2": (_K3, "branch3x3dbl_1"),
            "branch3x3dbl_3": (_K3S2, "branch3x3dbl_2"),
        },
        ("branch3x3", "branch3x3dbl_3", "in"),
    ),
    "C": (
        {
            "branch1x1": (_K1, "in"),
            "branch7x7_1": (_K1, "in"),
            "branch7x7_2": (_K17, "branch7x7_1"),
            "branch7x7_3": (_K71, "branch7x7_2"),
            "branch7x7dbl_1": (_K1, "in"),
            "branch7x7dbl_2": (_K71, "branch7x7dbl_1"),
            "branch7x7dbl_3": (_K17, "branch7x7dbl_2"),
            "branch7x7dbl_4": (_K71, "branch7x7dbl_3"),
            "branch7x7dbl_5": (_K17, "branch7x7dbl_4"),
            "branch_pool": (_K1, "in"),
        },
        ("branch1x1", "branch7x7_3", "branch7x7dbl_5", "branch_pool"),
    ),
    "D": (
        {
            "branch3x3_1": (_K1, "in"),
            "branch3x3_2": (_K3S2, "branch3x3_1"),
            "branch7x7x3_1": (_K1, "in"),
            "branch7x7x3_2": (_K17, "branch7x7x3_1"),
            "branch7x7x3_3": (_K71, "branch7x7x3_2"),
            "branch7x7x3_4": (_K3S2, "branch7x7x3_3"),
        },
        ("branch3x3_2", "branch7x7x3_4", "in"),
    ),
    "E": (
        {
            "branch1x1": (_K1, "in"),
            "branch3x3_1": (_K1, "in"),
            "branch3x3_2a": (_K13, "branch3x3_1"),
            "branch3x3_2b": (_K31, "branch3x3_1"),
            "branch3x3dbl_1": (_K1, "in"),
            "branch3x3dbl_2": (_K3, "branch3x3dbl_1"),
            "branch3x3dbl_3a": (_K13, "branch3x3dbl_2"),
            "branch3x3dbl_3b": (_K31, "branch3x3dbl_2"),
            "branch_pool": (_K1, "in"),
        },
        (
            "branch1x1",
            "branch3x3_2a",
            "branch3x3_2b",
            "branch3x3dbl_3a",
            "branch3x3dbl_3b",
            "branch_pool",
        ),
    ),
}

# The Mixed blocks in order, with their type; E_2 (Mixed_7c) max-pools its pool branch.
MIXED = (
    ("Mixed_5b", "A"),
    ("Mixed_5c", "A"),
    ("Mixed_5d", "A"),
    ("Mixed_6a", "B"),
    ("Mixed_6b", "C"),
    ("Mixed_6c", "C"),
    ("Mixed_6d", "C"),
    ("Mixed_6e", "C"),
    ("Mixed_7a", "D"),
    ("Mixed_7b", "E"),
    ("Mixed_7c", "E"),
)
MAX_POOL_BRANCH = {"Mixed_7c"}
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
FC_KEYS = ("fc.weight", "fc.bias")  # in the official file, unused for pool3 features


class BasicConv2d(nn.Module):
    """torchvision's BasicConv2d: conv (no bias) -> BatchNorm (eps 0.001) -> ReLU."""

    def __init__(self, in_c: int, out_c: int, spec: Spec) -> None:
        super().__init__()
        kernel, stride, padding = spec
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_c, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class MixedBlock(nn.Module):
    """One FID Inception block (A, B, C, D or E) with the convs named as torchvision's."""

    def __init__(self, kind: str, widths: Mapping[str, tuple[int, int]], max_pool: bool) -> None:
        super().__init__()
        self.kind = kind
        self.max_pool = max_pool
        convs, self.outputs = BLOCKS[kind]
        for name, (spec, _src) in convs.items():
            in_c, out_c = widths[name]
            self.add_module(name, BasicConv2d(in_c, out_c, spec))

    def _pool_branch(self, x: Tensor) -> Tensor:
        if self.max_pool:  # FIDInceptionE_2
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:  # TensorFlow's average pool ignores the padded zeros
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return self.branch_pool(pooled)

    def forward(self, x: Tensor) -> Tensor:
        k = self.kind
        if k == "A":
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            outs = [self.branch1x1(x), b5, b3, self._pool_branch(x)]
        elif k == "B":
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            outs = [self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)]
        elif k == "C":
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = self.branch7x7dbl_1(x)
            for i in range(2, 6):
                d = getattr(self, f"branch7x7dbl_{i}")(d)
            outs = [self.branch1x1(x), b7, d, self._pool_branch(x)]
        elif k == "D":
            b3 = self.branch3x3_2(self.branch3x3_1(x))
            b7 = self.branch7x7x3_1(x)
            for i in range(2, 5):
                b7 = getattr(self, f"branch7x7x3_{i}")(b7)
            outs = [b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)]
        else:  # E
            b3 = self.branch3x3_1(x)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            outs = [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(d),
                self.branch3x3dbl_3b(d),
                self._pool_branch(x),
            ]
        return torch.cat(outs, dim=1)


# Output channels of every conv in the official network (pytorch-fid / torchvision Inception3).
_STEM_OUT = {
    "Conv2d_1a_3x3": 32,
    "Conv2d_2a_3x3": 32,
    "Conv2d_2b_3x3": 64,
    "Conv2d_3b_1x1": 80,
    "Conv2d_4a_3x3": 192,
}
_A_OUT = (64, 48, 64, 64, 96, 96)  # then branch_pool = pool_features
_B_OUT = (384, 64, 96, 96)
_D_OUT = (192, 320, 192, 192, 192, 192)
_E_OUT = (320, 384, 384, 384, 448, 384, 384, 384, 192)
_POOL_FEATURES = {"Mixed_5b": 32, "Mixed_5c": 64, "Mixed_5d": 64}
_C7 = {"Mixed_6b": 128, "Mixed_6c": 160, "Mixed_6d": 160, "Mixed_6e": 192}
FC_CLASSES = 1008


def official_out_widths() -> dict[str, int]:
    """Output channels of every BasicConv2d of the official FID Inception, by dotted name."""
    out = dict(_STEM_OUT)
    for block, kind in MIXED:
        names = list(BLOCKS[kind][0])
        if kind == "A":
            values = [*_A_OUT, _POOL_FEATURES[block]]
        elif kind == "B":
            values = list(_B_OUT)
        elif kind == "C":
            c7 = _C7[block]
            values = [192, c7, c7, 192, c7, c7, c7, c7, 192, 192]
        elif kind == "D":
            values = list(_D_OUT)
        else:
            values = list(_E_OUT)
        out.update({f"{block}.{n}": v for n, v in zip(names, values, strict=True)})
    return out


def chain_widths(out_widths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """(in, out) channels of every conv given only the output widths (inputs follow the graph)."""
    widths: dict[str, tuple[int, int]] = {}
    for name, (_spec, src) in STEM.items():
        in_c = 3 if src == "image" else widths[src][1]
        widths[name] = (in_c, int(out_widths[name]))
    channels = widths["Conv2d_4a_3x3"][1]
    for block, kind in MIXED:
        convs, outputs = BLOCKS[kind]
        for name, (_spec, src) in convs.items():
            in_c = channels if src == "in" else widths[f"{block}.{src}"][1]
            widths[f"{block}.{name}"] = (in_c, int(out_widths[f"{block}.{name}"]))
        channels = sum(channels if o == "in" else widths[f"{block}.{o}"][1] for o in outputs)
    return widths


def conv_names() -> list[tuple[str, Spec]]:
    """Every BasicConv2d of the network as (dotted name, spec), in state-dict order."""
    out = [(name, spec) for name, (spec, _src) in STEM.items()]
    for block, kind in MIXED:
        out += [(f"{block}.{name}", spec) for name, (spec, _src) in BLOCKS[kind][0].items()]
    return out


def expected_keys() -> list[str]:
    """The state-dict keys of the conv/BN part (the official file adds ``fc.weight/bias``)."""
    keys = []
    for name, _spec in conv_names():
        keys.append(f"{name}.conv.weight")
        keys += [f"{name}.bn.{s}" for s in BN_SUFFIXES]
    return keys


def widths_from_state_dict(sd: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) channels of every conv, read from ``sd`` and checked for consistency.

    Raises ValueError naming the first key that is missing, mis-shaped or does not chain.
    """
    if not isinstance(sd, Mapping):
        raise ValueError(f"expected a state dict, got a {type(sd).__name__}")
    widths: dict[str, tuple[int, int]] = {}
    for name, (kernel, _stride, _pad) in conv_names():
        key = f"{name}.conv.weight"
        w = sd.get(key)
        if not isinstance(w, Tensor) or w.ndim != 4 or tuple(w.shape[2:]) != kernel:
            got = "missing" if w is None else shape_text(w)
            raise ValueError(f"{key} is {got}, expected (out, in, {kernel[0]}, {kernel[1]})")
        widths[name] = (int(w.shape[1]), int(w.shape[0]))

    chained = chain_widths({name: w[1] for name, w in widths.items()})
    for name, (in_c, _out) in widths.items():
        if in_c != chained[name][0]:
            raise ValueError(
                f"{name}.conv.weight takes {in_c} input channels but the layers before it "
                f"give {chained[name][0]}"
            )
    return widths


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3 up to pool3. ``forward(x)``: (N, 3, H, W) RGB in [0, 1]
    -> (N, D) features (D = 2048 for the official weights)."""

    def __init__(self, widths: Mapping[str, tuple[int, int]]) -> None:
        super().__init__()
        for name, (spec, _src) in STEM.items():
            self.add_module(name, BasicConv2d(*widths[name], spec))
        for block, kind in MIXED:
            sub = {n: widths[f"{block}.{n}"] for n in BLOCKS[kind][0]}
            self.add_module(block, MixedBlock(kind, sub, block in MAX_POOL_BRANCH))
        self.feature_dim = sum(widths[f"Mixed_7c.{o}"][1] for o in BLOCKS["E"][1])
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> FIDInceptionV3:
        """Always in eval mode: BatchNorm uses the stored statistics."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got {tuple(x.shape)}")
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # (N, 3, 299, 299) in [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        for block, _kind in MIXED:
            x = getattr(self, block)(x)  # ... (N, 768, 17, 17) ... (N, 2048, 8, 8)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)  # (N, 2048)


def inception_from_state_dict(sd: Mapping[str, Any]) -> FIDInceptionV3:
    """Build the network holding ``sd`` (strict: every conv/BN key; ``fc.*`` optional and unused).

    Raises ValueError with a one-line description of what does not fit.
    """
    widths = widths_from_state_dict(sd)
    with torch.device("meta"):
        net = FIDInceptionV3(widths)
    used = {k: v for k, v in sd.items() if k not in FC_KEYS}  # the classifier is not used
    return assign_checked(net, used)


def load_inception(path: str | Path, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Load ``pt_inception-2015-12-05-6726825d.pth`` (or a tiny pack's copy) as a frozen network.

    Any problem with the file raises a one-line ModelFileError naming it (exit 2).
    """
    p = Path(path)
    sd = load_torch_file(p, "FID Inception weights")
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    try:
        net = inception_from_state_dict(sd)
    except ValueError as exc:
        raise ModelFileError(p, f"is not the FID InceptionV3: {exc}", _HINT) from None
    return net.to(torch.device(device))


def images_to_input(frames: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 in [0, 1], as torchvision's ToTensor."""
    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 RGB frames, got {a.shape} {a.dtype}")
    t = torch.from_numpy(np.require(a, requirements=("C", "W"))).permute(0, 3, 1, 2)
    return t.float().div(255)
