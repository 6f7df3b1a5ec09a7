"""Torch device selection for ``--device auto|cpu|cuda[:N]|mps`` and the precision for
``--dtype auto|fp32|bf16|fp16`` (``resolve_dtype``)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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


# -- precision: ``--dtype auto|fp32|bf16|fp16`` ------------------------------------------------

DTYPES = ("fp32", "fp16", "bf16")  # the precisions a network runs in (autocast for 16 bits)
DTYPE_CHOICES = ("auto", *DTYPES)  # what ``--dtype`` accepts
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic
CPU_BF16_ENV = "TALKCLI_CPU_BF16"  # "1"/"0": override the detection (tests, odd kernels)


def cpu_has_native_bf16(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in its flags).

    ``$TALKCLI_CPU_BF16`` (``1``/``0``) overrides the detection. Where there is no
    ``/proc/cpuinfo`` (macOS, Windows) the answer is False: ``auto`` then keeps fp32.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return any(flag in flags for flag in CPU_BF16_FLAGS)
    except OSError:
        return False
    return False


def resolve_dtype(name: str, device: str | torch.device) -> str:
    """``--dtype`` -> the precision used: ``fp32``, ``bf16`` or ``fp16``.

    Explicit values are kept. ``auto`` picks bf16 autocast where the hardware has it natively
    (a CUDA GPU with ``torch.cuda.is_bf16_supported()``, a CPU with AVX512-BF16/AMX) and fp32
    elsewhere (MPS, older CPUs, where bf16 would be emulated and slower). The price, measured
    in ``benchmarks/results/speed.json`` and docs/speed.md: bf16 frames of the full-width 1024
    generator stay above 50 dB PSNR of the fp32 frames (invisible).
    """
    value = str(name or "auto").strip().lower()
    if value not in DTYPE_CHOICES:
        raise UserError(f"--dtype {name!r}: expected one of {', '.join(DTYPE_CHOICES)}")
    if value != "auto":
        return value
    kind = device.type if not isinstance(device, str) else device.split(":")[0]
    if kind == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if kind == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def torch_dtype(name: str) -> torch.dtype:
    """``fp32|bf16|fp16`` -> the torch dtype."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast(name: str, device: str | torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for bf16/fp16 on ``device``; a no-op context for fp32."""
    import torch

    if name == "fp32":
        return contextlib.nullcontext()
    kind = device.type if not isinstance(device, str) else device.split(":")[0]
    return torch.autocast(kind, dtype=torch_dtype(name))
