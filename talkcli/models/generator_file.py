"""talkcli's generator file for architectures without a rosinality layout (StyleGAN3,
StyleGAN2-ADA from an NVIDIA pickle): one safetensors file.

Tensors: the state dict under NVIDIA's keys, float32. Header metadata: ``format``
(``talkcli-generator``), ``format_version`` (1), ``arch`` (``stylegan3``, ``stylegan2-ada``),
``talkcli`` (version), ``config`` (the network's init kwargs as JSON), ``metadata`` (talkcli's,
e.g. a PTI record, as JSON). The architecture modules build the network from ``config`` and
load the tensors strictly; ``talkcli.models.stylegan2.load_generator`` dispatches on ``arch``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from talkcli.errors import ModelFileError

FORMAT = "talkcli-generator"
FORMAT_VERSION = 1


def file_arch(path: str | Path) -> str | None:
    """The ``arch`` of a talkcli generator file (any name: tune-pti writes ``.pt``), else None;
    reads only the JSON header."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= 100_000_000:
                return None
            head = fh.read(size)
        if head[:1] != b"{":
            return None
        meta = json.loads(head).get("__metadata__") or {}
    except (OSError, ValueError, AttributeError):
        return None
    arch = meta.get("arch") if isinstance(meta, dict) else None
    return arch if isinstance(arch, str) else None


def write_generator_file(
    path: str | Path,
    arch: str,
    config: Mapping[str, Any],
    state: Mapping[str, Tensor],
    metadata: Mapping[str, Any],
) -> Path:
    """Write the file atomically (tensors float32, contiguous, on the CPU)."""
    from safetensors.torch import save_file

    from talkcli import __version__
    from talkcli.io.files import atomic_output

    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "arch": arch,
        "talkcli": __version__,
        "config": json.dumps(dict(config)),
        "metadata": json.dumps(dict(metadata)),
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path)


def _json_object(
    path: Path, header: Mapping[str, str], key: str, what: str, hint: str
) -> dict[str, Any]:
    try:
        value = json.loads(header.get(key, "{}"))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ModelFileError(path, f"{what} metadata {key!r} is not a JSON object", hint)
    return value


def read_generator_file(
    path: Path, arch: str, what: str, hint: str
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """(config, state, metadata) of a file of ``arch``; ModelFileError (exit 2) if not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except Exception as exc:  # safetensors raises its own error types for bad headers
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(path, f"is not a readable safetensors file ({first[:100]})") from None
    if header.get("arch") != arch:
        raise ModelFileError(path, f"is not a {what} file (arch {header.get('arch')!r})", hint)
    config = _json_object(path, header, "config", what, hint)
    return config, state, _json_object(path, header, "metadata", what, hint)
