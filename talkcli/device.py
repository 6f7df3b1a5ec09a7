"""Torch device selection for ``--device auto|cpu|cuda[:N]|mps``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from talkcli.errors import UserError

if TYPE_CHECKING:
    import torch

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def validate_device_spec(spec: str) -> str:
    """Check the syntax of ``--device`` (availability is checked when a command uses it)."""
    spec = (spec or "auto").strip().lower()
    if not _DEVICE_RE.match(spec):
        raise UserError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")
    return spec


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a user's ``--device`` value into a ``torch.device``, checking that it exists."""
    import torch

    spec = validate_device_spec(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available here (use --device cpu)")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise UserError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("--device mps: MPS is not available here (use --device cpu)")
    return torch.device(spec)


def rank_cuda_device(local_rank: int) -> torch.device:
    """The GPU of a torchrun rank: ``cuda:(LOCAL_RANK % device_count)``.

    The one torchrun rule (animate, train, evaluate): one GPU per rank on a node; with more ranks
    than GPUs they share round robin instead of asking for a device that is not there.
    """
    import torch

    return torch.device("cuda", int(local_rank) % max(torch.cuda.device_count(), 1))


def choose_device(
    spec: str | torch.device = "auto", env: Mapping[str, str] | None = None
) -> torch.device:
    """``--device`` for this process. Under torchrun (``$LOCAL_RANK`` set) with CUDA present, a
    spec of ``auto`` or ``cuda`` becomes the rank's GPU (``rank_cuda_device``); an explicit
    ``cuda:N``, ``cpu`` or ``mps`` is kept. ``env`` defaults to ``os.environ`` (tests pass a dict).
    """
    import torch

    if isinstance(spec, torch.device):
        return spec
    from talkcli.distributed import torchrun_env

    env = os.environ if env is None else env
    name = validate_device_spec(spec)
    if name in ("auto", "cuda") and "LOCAL_RANK" in env and torch.cuda.is_available():
        return rank_cuda_device(torchrun_env(env).local_rank)
    return resolve_device(name)


def describe_device(device: torch.device) -> str:
    """Human-readable name of a device for ``doctor`` and run manifests."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
