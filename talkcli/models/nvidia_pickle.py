"""NVIDIA network pickles read without executing them (the record type only, on this branch).

The full reader (``read_network_pickle``, ``NETWORK_BUILDERS``) is written on the i15-pkl
branch; this file holds only the record dataclass the StyleGAN3 builders take, as agreed in the
issue 15 contract, so that the merge keeps that branch's full version.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NetworkRecord:
    """One network of a pickle: its key, NVIDIA class name, init kwargs and state dict."""

    name: str  # key in the pickle's top-level dict: "G_ema", "G", "D", ...
    class_name: str  # e.g. "training.networks_stylegan3.Generator"
    init_kwargs: dict  # plain Python values (EasyDicts as dicts)
    state: dict[str, torch.Tensor]  # parameters + buffers, state_dict-style dotted keys
