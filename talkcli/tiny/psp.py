"""Tiny pSp and e4e packs: random-weight encoders in the official ``psp_ffhq_encode.pt`` /
``e4e_ffhq_encode.pt`` formats.

No pretrained weights exist on the test machines, so tests (and ``talkcli`` demos) build small
checkpoints with exactly the official container and key layout: ``{'state_dict': {'encoder.*',
'decoder.*'}, 'opts': dict, 'latent_avg': (n_styles, 512)}``. The encoder keeps the 512-d style
output (W+ is 512-d) but uses narrow stages and narrow style convs so a forward pass is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from talkcli.io.files import atomic_output
from talkcli.models.psp import (
    EncoderLayout,
    EqualLinear,
    build_encoder,
    layout_from_stages,
    official_layout,
)

TINY_WIDTHS = (8, 16, 24, 32)
TINY_UNITS = (1, 1, 1, 1)


def random_encoder_state_dict(layout: EncoderLayout, seed: int = 0) -> dict[str, Tensor]:
    """Random weights for ``layout`` (keys without ``encoder.``), deterministic in ``seed``.

    Convolutions get PyTorch's default range (uniform within +-1/sqrt(fan_in)); BatchNorm gets
    affine parameters near (1, 0), small running means, positive running variances and a batch
    counter, as a trained model has; PReLU slopes are 0.25; EqualLinear weights are N(0, 1) as
    in pSp. The module is only built on the meta device, so the full-size layout takes seconds.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape: torch.Size, bound: float) -> Tensor:
        return torch.empty(shape).uniform_(-bound, bound, generator=gen)

    def normal(shape: torch.Size, std: float, mean: float = 0.0) -> Tensor:
        return torch.empty(shape).normal_(mean, std, generator=gen)

    meta = build_encoder(layout, "meta")
    values: dict[str, Tensor] = {}
    for name, mod in meta.named_modules():
        p = f"{name}." if name else ""
        if isinstance(mod, torch.nn.Conv2d):
            bound = 1.0 / math.sqrt(mod.weight[0].numel())
            values[p + "weight"] = uniform(mod.weight.shape, bound)
            if mod.bias is not None:
                values[p + "bias"] = uniform(mod.bias.shape, bound)
        elif isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            values[p + "weight"] = normal(torch.Size([c]), 0.1, 1.0)
            values[p + "bias"] = normal(torch.Size([c]), 0.1)
            values[p + "running_mean"] = normal(torch.Size([c]), 0.1)
            values[p + "running_var"] = 0.5 + torch.rand(c, generator=gen)
            values[p + "num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)
        elif isinstance(mod, torch.nn.PReLU):
            values[p + "weight"] = torch.full(mod.weight.shape, 0.25)
        elif isinstance(mod, EqualLinear):
            values[p + "weight"] = normal(mod.weight.shape, 1.0)
            values[p + "bias"] = normal(mod.bias.shape, 0.1)
    keys = list(meta.state_dict())
    missing = set(keys) ^ set(values)
    if missing:  # pragma: no cover - every module type of the encoder is handled above
        raise RuntimeError(f"random_encoder_state_dict does not cover {sorted(missing)[:3]}")
    return {k: values[k] for k in keys}


def tiny_encoder_state_dict(
    n_styles: int = 18,
    widths: tuple[int, int, int, int] = TINY_WIDTHS,
    units: tuple[int, int, int, int] = TINY_UNITS,
    style_dim: int = 512,
    style_hidden: int = 16,
    seed: int = 0,
) -> dict[str, Tensor]:
    """A small GradualStyleEncoder state dict (keys without ``encoder.``).

    Consecutive stage widths must differ: the loader finds stage boundaries where the width
    changes, as it does in every official pSp model.
    """
    if any(a == b for a, b in zip(widths, widths[1:], strict=False)):
        raise ValueError(
            f"consecutive stage widths must differ (the loader finds stages by width): {widths}"
        )
    layout = layout_from_stages(
        widths, units, n_styles=n_styles, style_hidden=style_hidden, style_dim=style_dim
    )
    return random_encoder_state_dict(layout, seed)


def full_encoder_state_dict(seed: int = 0, n_styles: int = 18) -> dict[str, Tensor]:
    """Random weights in the exact official IR-SE50 layout (267 M parameters, about 1 GB)."""
    return random_encoder_state_dict(official_layout(n_styles), seed)


def tiny_latent_avg(n_styles: int = 18, style_dim: int = 512, seed: int = 0) -> Tensor:
    """A (n_styles, style_dim) latent average: one W vector repeated, as pSp saves it."""
    gen = torch.Generator().manual_seed(seed + 7)
    return torch.randn(style_dim, generator=gen).repeat(n_styles, 1)


def default_opts(n_styles: int = 18, **overrides: Any) -> dict[str, Any]:
    """The ``opts`` dict of an FFHQ-encode pSp model (the fields pSp's loader and ours read)."""
    output_size = 2 ** ((n_styles + 2) // 2)
    opts: dict[str, Any] = {
        "dataset_type": "ffhq_encode",
        "encoder_type": "GradualStyleEncoder",
        "input_nc": 3,
        "label_nc": 0,
        "output_size": output_size,
        "start_from_latent_avg": True,
        "learn_in_w": False,
        "train_decoder": False,
        "lpips_lambda": 0.8,
        "l2_lambda": 1.0,
        "id_lambda": 0.1,
        "batch_size": 8,
        "learning_rate": 0.0001,
        "optim_name": "ranger",
        "checkpoint_path": None,
        "device": "cuda:0",
    }
    opts.update(overrides)
    return opts


def e4e_opts(n_styles: int = 18, **overrides: Any) -> dict[str, Any]:
    """The ``opts`` dict of an e4e FFHQ-encode model (``vars(TrainOptions)`` as e4e saves it).

    e4e names the generator size ``stylegan_size`` (pSp: ``output_size``) and marks the encoder
    ``Encoder4Editing``; the progressive-training fields do not matter at inference.
    """
    opts: dict[str, Any] = {
        "exp_dir": "experiment",
        "dataset_type": "ffhq_encode",
        "encoder_type": "Encoder4Editing",
        "batch_size": 8,
        "test_batch_size": 4,
        "learning_rate": 0.0001,
        "optim_name": "ranger",
        "train_decoder": False,
        "start_from_latent_avg": True,
        "lpips_type": "alex",
        "lpips_lambda": 0.8,
        "id_lambda": 0.5,
        "l2_lambda": 1.0,
        "stylegan_weights": "pretrained_models/stylegan2-ffhq-config-f.pt",
        "stylegan_size": 2 ** ((n_styles + 2) // 2),
        "checkpoint_path": None,
        "w_discriminator_lambda": 0.1,
        "progressive_steps": None,
        "progressive_start": 20000,
        "progressive_step_every": 2000,
        "delta_norm": 2,
        "delta_norm_lambda": 0.0002,
        "save_training_data": False,
        "device": "cuda:0",
    }
    opts.update(overrides)
    return opts


def write_e4e_checkpoint(
    path: str | Path,
    encoder_sd: Mapping[str, Tensor],
    decoder_sd: Mapping[str, Tensor] | None = None,
    latent_avg: Tensor | None = None,
    opts: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint in e4e's save format (``Coach.__get_save_dict``); return its path.

    The container and keys are pSp's (``encoder.*``, ``decoder.*``, ``opts``, ``latent_avg``);
    only ``opts`` differ (``e4e_opts`` by default).
    """
    n_styles = len({k.split(".")[1] for k in encoder_sd if k.startswith("styles.")})
    return write_psp_checkpoint(
        path, encoder_sd, decoder_sd, latent_avg, opts if opts is not None else e4e_opts(n_styles)
    )


def write_psp_checkpoint(
    path: str | Path,
    encoder_sd: Mapping[str, Tensor],
    decoder_sd: Mapping[str, Tensor] | None = None,
    latent_avg: Tensor | None = None,
    opts: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint in the official pSp container format (atomically); return its path.

    ``encoder_sd``/``decoder_sd`` are given without prefixes; they are stored as ``encoder.*`` and
    ``decoder.*`` in ``state_dict``. ``latent_avg`` defaults to ``tiny_latent_avg``; ``opts`` to
    ``default_opts`` for the encoder's number of styles.
    """
    n_styles = len({k.split(".")[1] for k in encoder_sd if k.startswith("styles.")})
    style_dim = next(v.shape[0] for k, v in encoder_sd.items() if k.endswith("linear.weight"))
    state: dict[str, Tensor] = {f"encoder.{k}": v for k, v in encoder_sd.items()}
    state.update({f"decoder.{k}": v for k, v in (decoder_sd or {}).items()})
    ckpt = {
        "state_dict": state,
        "opts": dict(opts) if opts is not None else default_opts(n_styles),
        "latent_avg": latent_avg
        if latent_avg is not None
        else tiny_latent_avg(n_styles, style_dim),
    }
    final = Path(path)
    with atomic_output(final) as tmp:
        torch.save(ckpt, tmp)
    return final


def n_styles_for_size(size: int) -> int:
    """W+ entries of a StyleGAN2 generator of output ``size`` (18 at 1024)."""
    return int(math.log2(size)) * 2 - 2
