"""PCA of W+ codes: the basis V and mean the audio-to-latent model works in (thesis 4.3.1.4).

``fit_pca(chunks, k)`` reads codes (N, D) (D = n_latent * 512 = 9216 at 1024 px) in chunks and
returns the top ``k`` principal directions. Accumulation is float64 and memory holds at most one
dense D x D matrix:

* the scatter matrix sum (x - m0)(x - m0)^T is accumulated chunk by chunk (m0 = the first
  chunk's mean, which keeps the float64 sums well conditioned), turned into the covariance in
  place, and only its top ``k`` eigenvectors are computed (LAPACK ``syevr`` on the same memory);
* when N <= D / 2 is known up front the codes themselves (N x D) are kept instead, and the
  N x N Gram matrix gives the same directions (V = X^T U / sqrt(lambda)).

``k`` is capped at what the data supports (N - 1 and the numerical rank) with a warning.
Directions are unit vectors with a fixed sign (largest entry positive) so that runs repeat.

Files (``save_pca`` / ``load_pca``): ``.npz`` with ``mean`` (D,) float32, ``basis`` (k, D)
float32, ``explained_variance`` (k,) float64, ``total_variance``, ``n_samples``, ``n_latent``,
``style_dim``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from talkcli.console import warn
from talkcli.errors import InputFileError, UserError
from talkcli.io.files import atomic_output, require_file

RANK_TOL = 1e-10  # eigenvalues below this fraction of the largest count as zero


@dataclass
class PCAResult:
    """A PCA basis: ``mean`` (D,), ``basis`` (k, D) orthonormal rows, variances per component."""

    mean: np.ndarray
    basis: np.ndarray
    explained_variance: np.ndarray  # (k,) variance along each direction
    total_variance: float  # trace of the covariance (all D directions)
    n_samples: int
    n_latent: int
    style_dim: int = 512

    @property
    def k(self) -> int:
        return int(self.basis.shape[0])

    @property
    def explained_ratio(self) -> np.ndarray:
        """Fraction of the total variance each component explains (k,)."""
        if self.total_variance <= 0:
            return np.zeros(self.k)
        return self.explained_variance / self.total_variance


def _as_chunks(data: np.ndarray | Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    if isinstance(data, np.ndarray):
        return (data[i : i + 4096] for i in range(0, len(data), 4096))
    return data


def _flat(chunk: np.ndarray) -> np.ndarray:
    arr = np.asarray(chunk)
    return arr.reshape(arr.shape[0], -1)


def _fix_signs(basis: np.ndarray) -> np.ndarray:
    """Flip each direction so its largest-magnitude entry is positive (repeatable output)."""
    idx = np.argmax(np.abs(basis), axis=1)
    signs = np.sign(basis[np.arange(len(basis)), idx])
    signs[signs == 0] = 1
    return basis * signs[:, None]


def _cap(k: int, eigenvalues: np.ndarray, n: int) -> int:
    """Components the data supports: at most n - 1, and no (numerically) zero variance."""
    top = float(eigenvalues.max()) if eigenvalues.size else 0.0
    supported = int(np.sum(eigenvalues > RANK_TOL * top)) if top > 0 else 0
    supported = min(supported, max(n - 1, 0))
    if supported < 1:
        raise UserError(
            f"PCA: the {n} code(s) do not vary (need at least 2 different codes to find a basis)"
        )
    if k > supported:
        warn(f"PCA: {k} components asked, the data supports {supported}; using {supported}")
        k = supported
    return k


def _accumulate(scatter: np.ndarray, y: np.ndarray) -> None:
    """``scatter += y.T @ y`` without allocating another D x D matrix."""
    from scipy.linalg.blas import dgemm

    out = dgemm(1.0, y, y, beta=1.0, c=scatter.T, trans_a=1, overwrite_c=1)
    if not np.shares_memory(out, scatter):  # pragma: no cover - BLAS made a copy after all
        scatter[:] = out.T


def fit_pca(
    data: np.ndarray | Iterable[np.ndarray],
    k: int,
    n_latent: int | None = None,
    style_dim: int = 512,
    n_total: int | None = None,
) -> PCAResult:
    """Top ``k`` principal directions of codes given as one array (N, ...) or an iterable of
    chunks (n_i, ...); each code is flattened to D values. See the module docstring.

    ``n_total`` (N, known for an array) picks the Gram-matrix route when N <= D; without it an
    iterable goes through the D x D covariance, which is right for any N.
    """
    import scipy.linalg

    if k < 1:
        raise UserError(f"--components {k}: expected 1 or more")
    if isinstance(data, np.ndarray):
        n_total = len(data)
    chunks = iter(_as_chunks(data))
    first = next(chunks, None)
    if first is None or len(first) == 0:
        raise UserError("PCA: no codes to analyse")
    x0 = _flat(first).astype(np.float64)  # (n0, D)
    d = x0.shape[1]
    if n_latent is None:
        n_latent = d // style_dim
    m0 = x0.mean(axis=0)  # provisional mean: conditions the float64 sums
    # the Gram route holds the codes (N x D) and the N x N Gram matrix: together less than one
    # D x D matrix when N <= D / 2
    use_gram = n_total is not None and n_total <= d // 2
    n = 0
    total = np.zeros(d)
    kept: list[np.ndarray] = []  # centred codes (Gram route, N <= D)
    scatter = None if use_gram else np.zeros((d, d))  # the one dense D x D matrix

    def add(x: np.ndarray) -> None:
        nonlocal n
        if x.shape[1] != d:
            raise UserError(f"PCA: codes have {x.shape[1]} values, expected {d}")
        y = x - m0  # (n_i, D) float64
        n += len(y)
        total[:] += y.sum(axis=0)
        if scatter is None:
            if n > d:
                raise ValueError(f"fit_pca: n_total {n_total} was given but more codes came")
            kept.append(y)
        else:  # scatter += y^T y in place (BLAS gemm on the F-ordered view; no D x D temporary)
            _accumulate(scatter, y)

    add(x0)
    del x0
    for chunk in chunks:
        if len(chunk):
            add(_flat(chunk).astype(np.float64))
    if n < 2:
        raise UserError(f"PCA: {n} code(s); need at least 2")
    shift = total / n  # mean - m0
    mean = m0 + shift

    if scatter is None:  # N <= D: Gram matrix of the centred codes
        y = np.concatenate(kept)
        kept.clear()
        y -= shift
        gram = y @ y.T  # (N, N)
        total_var = float(np.trace(gram)) / (n - 1)
        evals, evecs = scipy.linalg.eigh(
            gram, subset_by_index=[max(n - k, 0), n - 1], overwrite_a=True, check_finite=False
        )  # ascending, top k only
        evals, evecs = evals[::-1] / (n - 1), evecs[:, ::-1]
        k = _cap(k, evals, n)
        lam = evals[:k]
        basis = ((y.T @ evecs[:, :k]) / np.sqrt(lam * (n - 1))).T  # (k, D) unit rows
    else:  # covariance in place, top-k eigenvectors only
        cov = scatter
        for a in range(0, d, 1024):  # cov -= n shift shift^T, a block of rows at a time
            cov[a : a + 1024] -= n * np.outer(shift[a : a + 1024], shift)
        cov /= n - 1
        total_var = float(np.trace(cov))
        lo = max(d - k, 0)
        # syevr on the transposed view (F order; symmetric, same values): no copy of D x D
        evals, evecs = scipy.linalg.eigh(
            cov.T, subset_by_index=[lo, d - 1], overwrite_a=True, check_finite=False
        )
        del cov
        evals, evecs = evals[::-1], evecs[:, ::-1]
        k = _cap(min(k, len(evals)), evals, n)
        lam = evals[:k]
        basis = evecs[:, :k].T
    basis = _fix_signs(np.ascontiguousarray(basis))
    return PCAResult(
        mean=mean.astype(np.float32),
        basis=basis.astype(np.float32),
        explained_variance=np.asarray(lam, dtype=np.float64),
        total_variance=total_var,
        n_samples=n,
        n_latent=int(n_latent),
        style_dim=int(style_dim),
    )


def save_pca(path: str | Path, pca: PCAResult) -> Path:
    """Write a PCA ``.npz`` atomically (arrays only: loads without pickle)."""
    needed = pca.mean.nbytes + pca.basis.nbytes + pca.explained_variance.nbytes + 4096  # + zip
    with atomic_output(path, needed=needed) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                mean=pca.mean,
                basis=pca.basis,
                explained_variance=pca.explained_variance,
                total_variance=np.float64(pca.total_variance),
                n_samples=np.int64(pca.n_samples),
                n_latent=np.int64(pca.n_latent),
                style_dim=np.int64(pca.style_dim),
            )
    return Path(path)


def load_pca(path: str | Path, latent_dim: int | None = None, tol: float = 1e-3) -> PCAResult:
    """Read and check a PCA file: shapes, finite values, orthonormal rows (within ``tol``).

    ``latent_dim`` (n_latent * 512) refuses a basis made for another generator size.
    """
    p = require_file(path, "PCA file")
    hint = "make one with `talkcli train pca DATA --out pca.npz`"
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zip/npy format errors of every kind
        raise InputFileError(p, f"is not a PCA .npz file ({type(exc).__name__})", hint) from None
    missing = [k for k in ("mean", "basis") if k not in arrays]
    if missing:
        raise InputFileError(p, f"PCA file lacks {', '.join(missing)}", hint)
    mean, basis = arrays["mean"], arrays["basis"]
    if mean.ndim != 1 or basis.ndim != 2 or basis.shape[1] != mean.shape[0] or not len(basis):
        raise InputFileError(
            p, f"PCA shapes mean {mean.shape} and basis {basis.shape} do not fit together", hint
        )
    if latent_dim is not None and mean.shape[0] != latent_dim:
        raise InputFileError(
            p,
            f"PCA is for {mean.shape[0]}-value codes but this dataset's codes have {latent_dim}",
            "use a PCA made for the same generator size",
        )
    for name, arr in (("mean", mean), ("basis", basis)):
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise InputFileError(p, f"PCA {name} is not a finite float array", hint)
    gram = basis.astype(np.float64) @ basis.astype(np.float64).T
    err = float(np.abs(gram - np.eye(len(basis))).max())
    if err > tol:
        raise InputFileError(p, f"PCA basis rows are not orthonormal (error {err:.2g})", hint)
    d = mean.shape[0]
    style_dim = int(arrays.get("style_dim", 512))
    ev = arrays.get("explained_variance")
    return PCAResult(
        mean=mean.astype(np.float32),
        basis=basis.astype(np.float32),
        explained_variance=np.asarray(ev, np.float64)
        if ev is not None and ev.shape == (len(basis),)
        else np.full(len(basis), np.nan),
        total_variance=float(arrays.get("total_variance", np.nan)),
        n_samples=int(arrays.get("n_samples", 0)),
        n_latent=int(arrays.get("n_latent", d // style_dim)),
        style_dim=style_dim,
    )
