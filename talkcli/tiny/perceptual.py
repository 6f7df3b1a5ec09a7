"""Tiny LPIPS packs: random VGG16 / AlexNet backbones and heads in the official file layouts.

The backbones are torchvision-style state dicts (``features.N.weight/bias`` plus a small
``classifier.*`` part, as the real files carry); the heads are ``lin{k}.model.1.weight`` tensors
of shape (1, C_k, 1, 1) with non-negative weights, as LPIPS' calibrated heads are.
``write_tiny_lpips_files`` lays them out in a weights folder where the registry finds them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from talkcli.constants import LPIPS_FILES
from talkcli.io.files import atomic_output
from talkcli.models.perceptual import alexnet_features, vgg16_features
from talkcli.weights import registry

TINY_VGG_WIDTHS = (4, 4, 8, 8, 8, 8, 8, 12, 12, 12, 12, 12, 12)
TINY_ALEX_WIDTHS = (8, 12, 16, 12, 12)


def _classifier(
    in_features: int, linear_ids: tuple[int, int, int], gen: torch.Generator, hidden: int = 16
) -> dict[str, Tensor]:
    """A small stand-in for torchvision's ``classifier`` (three Linears); LPIPS ignores it."""
    dims = ((hidden, in_features), (hidden, hidden), (10, hidden))
    out: dict[str, Tensor] = {}
    for idx, (o, i) in zip(linear_ids, dims, strict=True):
        out[f"classifier.{idx}.weight"] = 0.01 * torch.randn(o, i, generator=gen)
        out[f"classifier.{idx}.bias"] = torch.zeros(o)
    return out


def _random_features(stack: torch.nn.Module, seed: int) -> dict[str, Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in stack.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.reset_parameters()
        return {k: v.detach().clone() for k, v in stack.state_dict().items()}


def tiny_vgg16_state_dict(
    widths: tuple[int, ...] = TINY_VGG_WIDTHS, seed: int = 0
) -> dict[str, Tensor]:
    """A torchvision-layout VGG16 state dict with narrow convs (13 widths) and a classifier."""
    sd = _random_features(vgg16_features(widths), seed)
    sd.update(_classifier(widths[-1] * 7 * 7, (0, 3, 6), torch.Generator().manual_seed(seed + 1)))
    return sd


def tiny_alexnet_state_dict(
    widths: tuple[int, ...] = TINY_ALEX_WIDTHS, seed: int = 0
) -> dict[str, Tensor]:
    """A torchvision-layout AlexNet state dict with narrow convs (5 widths) and a classifier."""
    sd = _random_features(alexnet_features(widths), seed)
    sd.update(_classifier(widths[-1] * 6 * 6, (1, 4, 6), torch.Generator().manual_seed(seed + 1)))
    return sd


def tap_widths(net: str, widths: tuple[int, ...]) -> tuple[int, ...]:
    """The five head widths for a backbone with conv ``widths`` (what the heads must match)."""
    stack = vgg16_features(widths) if net == "vgg" else alexnet_features(widths)
    return stack.widths


def tiny_lpips_heads(widths: tuple[int, ...], seed: int = 0) -> dict[str, Tensor]:
    """LPIPS v0.1 heads for five tap widths: non-negative (1, C_k, 1, 1) weights."""
    if len(widths) != 5:
        raise ValueError(f"LPIPS has 5 heads, got {len(widths)} widths")
    gen = torch.Generator().manual_seed(seed + 2)
    return {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen)
        for k, c in enumerate(widths)
    }


def write_tiny_lpips_files(weights_dir: str | Path, net: str = "alex", seed: int = 0) -> dict:
    """Write a tiny backbone and heads for ``net`` where the registry looks in ``weights_dir``.

    Returns ``{'backbone': path, 'heads': path}``.
    """
    if net == "alex":
        widths, sd, names = TINY_ALEX_WIDTHS, tiny_alexnet_state_dict, LPIPS_FILES[net]
    elif net == "vgg":
        widths, sd, names = TINY_VGG_WIDTHS, tiny_vgg16_state_dict, LPIPS_FILES[net]
    else:
        raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
    out = {}
    for role, name, obj in (
        ("backbone", names[0], sd(widths, seed)),
        ("heads", names[1], tiny_lpips_heads(tap_widths(net, widths), seed)),
    ):
        path = Path(weights_dir) / registry.get(name).relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            torch.save(obj, tmp)
        out[role] = path
    return out
