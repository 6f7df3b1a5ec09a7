"""FID: pytorch-fid's Inception pool3 features, streaming statistics, the Fréchet distance.

* ``inception_features(frames)`` -> (N, 2048) float32, pytorch-fid's network and preprocessing
  (``talkcli.models.inception``).
* ``FeatureStats`` accumulates the mean and covariance of features batch by batch in float64
  (Chan et al.'s pairwise update), so memory does not grow with the number of frames; the
  covariance is the unbiased one (``np.cov(act, rowvar=False)``, as pytorch-fid).
* ``frechet_distance(mu1, sigma1, mu2, sigma2)`` is pytorch-fid's ``calculate_frechet_distance``:
  float64, ``scipy.linalg.sqrtm(sigma1 @ sigma2)``, retried with eps 1e-6 on the diagonals when
  the product is singular, imaginary parts dropped (refused if the diagonal's exceed 1e-3).
* ``fid(generated, reference)`` on top of them; ``save_stats``/``load_stats`` cache a reference
  set's statistics in an ``.npz`` (pytorch-fid's ``mu``/``sigma`` keys plus a JSON ``meta``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkcli.console import warn
from talkcli.errors import InputFileError
from talkcli.models.inception import FIDInceptionV3, images_to_input, load_inception

BATCH = 16


@functools.lru_cache(maxsize=2)
def _cached_inception(path: str, device: str) -> FIDInceptionV3:
    return load_inception(path, device)


def get_inception(
    model: FIDInceptionV3 | str | Path | None = None,
    device: str = "cpu",
    weights_dir: str | Path | None = None,
) -> FIDInceptionV3:
    """The network itself, one loaded from a path, or the registry's ``fid-inception`` (searched
    in ``weights_dir`` first)."""
    if isinstance(model, FIDInceptionV3):
        return model
    if model is None:
        from talkcli.weights import registry

        model = registry.resolve("fid-inception", weights_dir, purpose="FID")
    return _cached_inception(str(Path(model)), str(device))


def inception_features(
    frames: np.ndarray,
    model: FIDInceptionV3 | str | Path | None = None,
    batch_size: int = BATCH,
    device: str = "cpu",
) -> np.ndarray:
    """Pool3 features of (N, H, W, 3) uint8 RGB frames (or one (H, W, 3)) -> (N, 2048) float32."""
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[None]
    net = get_inception(model, device)
    dev = next(net.parameters()).device
    out = []
    for s in range(0, len(a), batch_size):
        x = images_to_input(a[s : s + batch_size]).to(dev)  # (B, 3, H, W) in [0, 1]
        with torch.no_grad():
            out.append(net(x).float().cpu().numpy())  # (B, 2048)
    if not out:
        return np.empty((0, net.feature_dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


class FeatureStats:
    """Running mean and covariance of feature rows (float64), added batch by batch."""

    def __init__(self, dim: int | None = None) -> None:
        self.n = 0
        self.dim = dim
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None  # sum of outer products of deviations

    def add(self, features: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            if x.ndim == 2:
                return
            raise ValueError(f"expected (N, D) features, got {x.shape}")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"features have {x.shape[1]} dimensions, expected {self.dim}")
        nb = len(x)
        mb = x.mean(axis=0)
        dev = x - mb
        m2b = dev.T @ dev
        if self.n == 0:
            self.n, self._mean, self._m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + m2b + np.outer(delta, delta) * (self.n * nb / n)
        self.n = n

    @property
    def mu(self) -> np.ndarray:
        if self._mean is None:
            raise ValueError("no features were added")
        return self._mean

    @property
    def sigma(self) -> np.ndarray:
        if self.n < 2 or self._m2 is None:
            raise ValueError(f"a covariance needs at least 2 feature rows, got {self.n}")
        return self._m2 / (self.n - 1)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy's sqrtm without its console noise (pytorch-fid passes disp=False, deprecated in
    scipy 1.17; the matrix computed is the same)."""
    import warnings

    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid computes it:
    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2))."""

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"covariances {sigma1.shape} and {sigma2.shape} do not match the means ({len(mu1)},)"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warn(f"FID: singular product of covariances; adding {eps} to their diagonals")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"FID: imaginary component {m} in sqrtm (too few frames?)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_stats(
    batches: Iterable[np.ndarray],
    model: FIDInceptionV3 | str | Path | None = None,
    batch_size: int = BATCH,
    device: str = "cpu",
) -> FeatureStats:
    """Statistics of the Inception features of a stream of (B, H, W, 3) uint8 frame batches."""
    net = get_inception(model, device)
    stats = FeatureStats(net.feature_dim)
    for batch in batches:
        stats.add(inception_features(batch, net, batch_size))
    return stats


def fid(
    generated: np.ndarray | Iterable[np.ndarray],
    reference: np.ndarray | Iterable[np.ndarray],
    model: FIDInceptionV3 | str | Path | None = None,
    device: str = "cpu",
) -> float:
    """FID between two sets of frames: (N, H, W, 3) uint8 arrays or iterables of such batches."""
    net = get_inception(model, device)

    def stats_of(x: np.ndarray | Iterable[np.ndarray]) -> FeatureStats:
        batches = [x] if isinstance(x, np.ndarray) else x
        return feature_stats(batches, net)

    g, r = stats_of(generated), stats_of(reference)
    return frechet_distance(g.mu, g.sigma, r.mu, r.sigma)


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, meta: dict[str, Any]) -> None:
    """Write ``mu``, ``sigma`` (pytorch-fid's .npz keys) and ``meta`` (JSON) atomically."""
    from talkcli.io.files import atomic_output

    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, mu=mu, sigma=sigma, meta=np.array(json.dumps(meta, sort_keys=True)))


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a statistics ``.npz`` (talkcli's or pytorch-fid's) -> (mu, sigma, meta)."""
    from talkcli.io.files import require_file

    p = require_file(path, "FID statistics file")
    try:
        with np.load(p, allow_pickle=False) as f:
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
            meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise InputFileError(
            p, f"is not an FID statistics .npz with 'mu' and 'sigma' ({exc})", "delete it"
        ) from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise InputFileError(p, f"holds mu {mu.shape} and sigma {sigma.shape}", "delete it")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise InputFileError(p, "holds NaN or infinite statistics", "delete it")
    return mu, sigma, meta
