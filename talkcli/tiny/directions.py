"""A planted directions file for tiny packs (issue 16): tests and ``make demo`` of the controls.

Random weights have no real faces to measure, so ``talkcli directions find`` has nothing to fit;
this writes what it would: the six standard controls as **orthonormal** random W+ directions with
``per_unit`` 1, so a control value ``c`` displaces a code by exactly ``c`` along its direction and
``Directions.project`` reads it back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from talkcli.models.directions import STANDARD_NAMES, STANDARD_UNITS, Directions, save_directions


def planted_directions(n_latent: int, style_dim: int = 512, seed: int = 0) -> Directions:
    """The standard controls as orthonormal (K, n_latent, style_dim) directions, per_unit 1."""
    rng = np.random.default_rng(seed)
    k = len(STANDARD_NAMES)
    q, _ = np.linalg.qr(rng.standard_normal((n_latent * style_dim, k)))  # (D, K) orthonormal
    d = q.T.reshape(k, n_latent, style_dim).astype(np.float32)
    units = tuple(STANDARD_UNITS[n] for n in STANDARD_NAMES)
    return Directions(STANDARD_NAMES, d, np.ones(k, np.float32), units)


def write_tiny_directions(
    path: str | Path, n_latent: int, style_dim: int = 512, seed: int = 0
) -> Path:
    """``planted_directions`` saved as a directions .npz (atomically)."""
    return save_directions(path, planted_directions(n_latent, style_dim, seed))
