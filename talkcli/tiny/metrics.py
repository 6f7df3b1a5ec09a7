"""Random-weight FID Inception and SyncNet files in the official layouts (tests, demos, benches).

``random_inception_state_dict(div)`` / ``random_syncnet_state_dict(div)`` give state dicts with
exactly the official keys; ``div=1`` gives the official shapes (pytorch-fid's 95 MB Inception,
SyncNet v2's 54 MB), a larger ``div`` narrows every channel width by that factor (same keys,
same kernels, same input sizes), which is what a tiny pack writes: a few hundred kB, written in
well under a second, loaded by the very same code as the real files.

Values come from numpy's PCG64 generator (stable across platforms), so the upstream checks in the
tests can rebuild the same networks: He-scaled conv/linear weights, BatchNorm weights near 1,
small biases and running means, running variances in [0.5, 1.5].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from talkcli.io.files import atomic_output
from talkcli.weights import registry

TINY_DIV = 16  # tiny packs: every width / 16 (Inception features 128-d, SyncNet embeddings 64-d)

SYNCNET_AUDIO = (64, 192, 384, 256, 256, 512)
SYNCNET_LIP = (96, 256, 256, 256, 256, 512)
SYNCNET_FC = (512, 1024)


class _Random:
    """Deterministic tensors from one PCG64 stream, in the order they are asked for."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> Tensor:
        a = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std) + np.float32(mean)
        return torch.from_numpy(a)

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> Tensor:
        a = self.rng.uniform(low, high, size=shape).astype(np.float32)
        return torch.from_numpy(a)

    def weight(self, shape: tuple[int, ...]) -> Tensor:
        fan_in = int(np.prod(shape[1:]))
        return self.normal(shape, std=float(np.sqrt(2.0 / fan_in)))

    def batch_norm(self, prefix: str, c: int, out: dict[str, Tensor]) -> None:
        out[f"{prefix}.weight"] = self.normal((c,), 0.1, mean=1.0)
        out[f"{prefix}.bias"] = self.normal((c,), 0.1)
        out[f"{prefix}.running_mean"] = self.normal((c,), 0.1)
        out[f"{prefix}.running_var"] = self.uniform((c,), 0.5, 1.5)
        out[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)


def _narrow(width: int, div: int) -> int:
    return max(2, width // div)


def random_inception_state_dict(div: int = 1, seed: int = 0) -> dict[str, Tensor]:
    """pytorch-fid's FID Inception state dict (566 keys) with random values; widths / ``div``."""
    from talkcli.models.inception import (
        BLOCKS,
        FC_CLASSES,
        chain_widths,
        conv_names,
        official_out_widths,
    )

    if div < 1:
        raise ValueError(f"div must be >= 1, got {div}")
    widths = chain_widths({k: _narrow(v, div) for k, v in official_out_widths().items()})
    rnd = _Random(seed)
    sd: dict[str, Tensor] = {}
    for name, ((kh, kw), _stride, _pad) in conv_names():
        in_c, out_c = widths[name]
        sd[f"{name}.conv.weight"] = rnd.weight((out_c, in_c, kh, kw))
        rnd.batch_norm(f"{name}.bn", out_c, sd)
    features = sum(widths[f"Mixed_7c.{n}"][1] for n in BLOCKS["E"][1])
    classes = FC_CLASSES if div == 1 else _narrow(FC_CLASSES, div)
    sd["fc.weight"] = rnd.normal((classes, features), 0.01)
    sd["fc.bias"] = torch.zeros(classes)
    return sd


def random_syncnet_state_dict(div: int = 1, seed: int = 0) -> dict[str, Tensor]:
    """SyncNet v2 state dict (``syncnet_v2.model`` keys) with random values; widths / ``div``."""
    from talkcli.models.syncnet import AUDIO_CONVS, FC_LINEARS, LIP_CONVS

    if div < 1:
        raise ValueError(f"div must be >= 1, got {div}")
    rnd = _Random(seed)
    sd: dict[str, Tensor] = {}
    aud = [_narrow(w, div) for w in SYNCNET_AUDIO]
    lip = [_narrow(w, div) for w in SYNCNET_LIP]
    hidden, out = (_narrow(w, div) for w in SYNCNET_FC)

    def conv_stack(stack: str, convs: dict, widths: list[int], in_c: int, scale: float) -> None:
        for (i, (kernel, _s, _p)), out_c in zip(convs.items(), widths, strict=True):
            sd[f"{stack}.{i}.weight"] = rnd.weight((out_c, in_c, *kernel)) * (
                scale if i == 0 else 1
            )
            sd[f"{stack}.{i}.bias"] = rnd.normal((out_c,), 0.05)
            rnd.batch_norm(f"{stack}.{i + 1}", out_c, sd)
            in_c = out_c

    def fc_stack(stack: str, in_features: int) -> None:
        first, last = FC_LINEARS
        sd[f"{stack}.{first}.weight"] = rnd.weight((hidden, in_features))
        sd[f"{stack}.{first}.bias"] = rnd.normal((hidden,), 0.05)
        rnd.batch_norm(f"{stack}.{first + 1}", hidden, sd)
        sd[f"{stack}.{last}.weight"] = rnd.weight((out, hidden))
        sd[f"{stack}.{last}.bias"] = rnd.normal((out,), 0.05)

    # The official file's key order: netcnnaud, netfcaud, netfclip, netcnnlip.
    # First convs scaled to their inputs (MFCC values ~10, pixels 0..255) so that both
    # embeddings have similar sizes and the distances vary with the offset.
    conv_stack("netcnnaud", AUDIO_CONVS, aud, 1, 0.1)
    fc_stack("netfcaud", aud[-1])
    fc_stack("netfclip", lip[-1])
    conv_stack("netcnnlip", LIP_CONVS, lip, 3, 1 / 128)
    return sd


def write_metric_model_files(
    weights_dir: str | Path, seed: int = 0, div: int = TINY_DIV
) -> dict[str, Path]:
    """Write random ``fid-inception`` and ``syncnet`` files where the registry looks in
    ``weights_dir``; return registry name -> path.

    The SyncNet file is written in PyTorch's legacy (non-zip) format, as the 2018 original is,
    so the loader's path for that format is the one exercised.
    """
    out: dict[str, Path] = {}
    for name, sd, legacy in (
        ("fid-inception", random_inception_state_dict(div, seed), False),
        ("syncnet", random_syncnet_state_dict(div, seed + 1), True),
    ):
        path = Path(weights_dir) / registry.get(name).relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            torch.save(sd, tmp, _use_new_zipfile_serialization=not legacy)
        out[name] = path
    return out
