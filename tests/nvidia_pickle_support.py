"""A test-local stand-in for NVIDIA's ``torch_utils.persistence`` and ``dnnlib.util.EasyDict``.

NVIDIA's ``persistent_class`` pickles a network as ``_reconstruct_persistent_obj(meta)``, with
``meta = dict(type='class', version=6, module_src=SOURCE, class_name=NAME, state=__dict__)``
where ``__dict__`` is the nn.Module's (``_parameters``, ``_buffers``, ``_modules`` whose entries
are again such records, ``_init_args``, ``_init_kwargs`` as an EasyDict). ``write_network_pickle``
writes exactly those opcodes (GLOBAL torch_utils.persistence _reconstruct_persistent_obj, the
meta dict, REDUCE) from talkcli's own modules, without NVIDIA's source: the stand-in modules
are put in ``sys.modules`` only while pickling, so that pickle can name the globals.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

PERSISTENCE_VERSION = 6
# Only marker lines that talkcli's reader looks for: no NVIDIA source is vendored here.
SG2_MODULE_SRC = (
    "# stand-in for training/networks.py\nclass MappingNetwork: ...\nclass SynthesisBlock: ...\n"
)
SG3_MODULE_SRC = (
    "# stand-in for training/networks_stylegan3.py\nclass SynthesisInput: ...\n"
    "class SynthesisLayer: ...\n"
)


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (pickled by name as that class)."""


def _reconstruct_persistent_obj(meta: Any) -> Any:  # never called by talkcli's reader
    raise AssertionError("the stand-in reconstruct function must never run")


@contextlib.contextmanager
def nvidia_modules() -> Iterator[None]:
    """``torch_utils.persistence`` and ``dnnlib.util`` importable by name while pickling."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    EasyDict.__module__ = "dnnlib.util"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util.EasyDict = EasyDict
    mods = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": util,
    }
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class Record:
    """Pickles as NVIDIA's persistent object: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, meta: dict) -> None:
        self.meta = meta

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,), None)


def _talkcli_object(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(_talkcli_object(v) for v in value)
    return type(value).__module__.startswith("talkcli")


def record_of(
    module: nn.Module,
    class_name: str,
    init_kwargs: dict | None = None,
    module_src: str = SG2_MODULE_SRC,
) -> Record:
    """A persistence record of ``module`` (submodules as records too), as NVIDIA writes it."""
    # NVIDIA's modules hold plain attributes only: talkcli's own objects (configs, layer
    # specs) have no counterpart there and would name talkcli classes in the pickle.
    state = {k: v for k, v in module.__dict__.items() if not _talkcli_object(v)}
    state["_modules"] = {
        name: record_of(sub, type(sub).__name__, {}, module_src)
        for name, sub in module._modules.items()
    }
    state["_init_args"] = ()
    state["_init_kwargs"] = EasyDict(init_kwargs or {})
    meta = dict(
        type="class",
        version=PERSISTENCE_VERSION,
        module_src=module_src,
        class_name=class_name,
        state=state,
    )
    return Record(meta)


def write_network_pickle(path: Path, data: dict) -> Path:
    """``pickle.dump(data)`` with the stand-in modules importable (what NVIDIA's training does)."""
    with nvidia_modules(), open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def tiny_ada_kwargs(resolution: int = 16, **synthesis: Any) -> dict:
    """Init kwargs of a small StyleGAN2-ADA generator (channel_base chosen for width 32..16)."""
    return dict(
        z_dim=32,
        c_dim=0,
        w_dim=32,
        img_resolution=resolution,
        img_channels=3,
        mapping_kwargs=EasyDict(num_layers=2),
        synthesis_kwargs=EasyDict(
            channel_base=256, channel_max=32, num_fp16_res=2, conv_clamp=256, **synthesis
        ),
    )


def tiny_ada_pickle(
    path: Path, seed: int = 0, resolution: int = 16, **synthesis: Any
) -> tuple[Path, nn.Module]:
    """A pickle {'G', 'G_ema', 'D', 'augment_pipe', 'training_set_kwargs'} of a random tiny
    StyleGAN2-ADA generator built by talkcli (random init), and that generator."""
    from talkcli.models.stylegan2_ada import Generator

    torch.manual_seed(seed)
    kwargs = tiny_ada_kwargs(resolution, **synthesis)
    g = Generator(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in kwargs.items()})
    for name, p in g.named_parameters():
        with torch.no_grad():
            p.copy_(torch.randn_like(p) * (0.1 if "noise_strength" in name else 1.0))
    for name, b in g.named_buffers():
        if "noise_const" in name or name.endswith("w_avg"):
            b.copy_(torch.randn_like(b))
    disc = nn.Linear(4, 1)
    data = {
        "G": record_of(g, "Generator", kwargs),
        "D": record_of(disc, "Discriminator", {"c_dim": 0}),
        "G_ema": record_of(g, "Generator", kwargs),
        "augment_pipe": None,
        "training_set_kwargs": EasyDict(path="ffhq.zip", resolution=16),
    }
    return write_network_pickle(path, data), g


def tiny_sg3_pickle(path: Path, radial: bool = False, seed: int = 0) -> tuple[Path, nn.Module]:
    """A pickle {'G', 'D', 'G_ema', 'augment_pipe'} of a random tiny StyleGAN3 (talkcli-made,
    NVIDIA's key names, class ``training.networks_stylegan3.Generator``), and that generator."""
    from talkcli.tiny.stylegan3 import random_stylegan3, tiny_stylegan3_config

    g = random_stylegan3(tiny_stylegan3_config(16, radial=radial), seed=seed)
    rec = record_of(g, "Generator", g.cfg.as_init_kwargs(), SG3_MODULE_SRC)
    data = {"G": rec, "D": None, "G_ema": rec, "augment_pipe": None}
    return write_network_pickle(path, data), g
