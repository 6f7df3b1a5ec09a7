"""Strict state-dict checks shared by every loader: one line naming what does not fit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor


def short_list(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c (+N more)``."""
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def shape_text(value: Any) -> str:
    """A tensor's shape as "(a, b)", or the type name of anything else (for messages)."""
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def describe_mismatch(
    expected: Mapping[str, Sequence[int]],
    sd: Mapping[str, Any],
    prefix: str = "",
    limit: int = 5,
) -> str | None:
    """Compare ``sd`` with ``expected`` (key -> shape); None if they agree, else one line naming
    missing, unexpected and mis-shaped keys (keys shown with ``prefix``)."""
    missing = [f"{prefix}{k}" for k in expected if k not in sd]
    unexpected = [f"{prefix}{k}" for k in sd if k not in expected]
    wrong = [
        f"{prefix}{k} {shape_text(sd[k])} expected {tuple(shape)}"
        for k, shape in expected.items()
        if k in sd and (not isinstance(sd[k], Tensor) or tuple(sd[k].shape) != tuple(shape))
    ]
    parts = []
    if missing:
        parts.append(f"missing keys: {short_list(missing, limit)}")
    if unexpected:
        parts.append(f"unexpected keys: {short_list(unexpected, limit)}")
    if wrong:
        parts.append(f"wrong shapes: {short_list(wrong, limit)}")
    return "; ".join(parts) or None


def assign_checked(net: Any, sd: Mapping[str, Any]) -> Any:
    """Load ``sd`` into ``net`` (built on the meta device) strictly: keys and shapes must match
    (ValueError with ``describe_mismatch``'s line), float tensors must be finite; floats are
    assigned as float32, integer buffers (``num_batches_tracked``) as int64. Returns ``net``
    in eval mode."""
    import torch

    expected = net.state_dict()
    problem = describe_mismatch({k: tuple(v.shape) for k, v in expected.items()}, sd)
    if problem:
        raise ValueError(problem)
    tensors = {}
    for key in expected:
        t = sd[key].detach().cpu()
        if t.is_floating_point():
            if not torch.isfinite(t).all():
                raise ValueError(f"{key} holds NaN or infinite values")
            tensors[key] = t.float()
        else:
            tensors[key] = t.long()
    net.load_state_dict(tensors, assign=True)
    return net.eval()
