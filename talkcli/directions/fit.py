"""Linear fits of measured quantities on W codes (InterFaceGAN style), numpy only.

* ``fit_ridge``: ridge regression of one quantity on the codes (N, 512), the penalty chosen by
  generalised cross-validation over a log grid (exact, through one SVD), with R^2 in sample and on
  a held-out fifth; the fitted normal is the direction whose projection best predicts the quantity;
* ``fit_svm``: InterFaceGAN's boundary, a linear SVM (squared hinge, L2) separating the top and
  bottom thirds of the quantity, by full-batch gradient descent; the same result fields;
* ``conditional_directions``: InterFaceGAN's conditional manipulation in a stated order (the
  standard one: yaw, pitch, roll, eyes_open, mouth_open, smile, then other names): each
  direction is made orthogonal to the normals of the quantities before it, so expression
  directions do not turn the head, and a later expression does not move an earlier one. Pose
  comes first because the 2D expression ratios are themselves foreshortened by pose (their
  normals hold pose components); conditioning pose on them would bend the pose directions;
* ``default_layers`` / ``parse_layer_ranges``: the style layers each direction is confined to
  (pose: coarse, eyes/mouth/smile: middle), scaled to the generator's ``n_latent``;
* ``spread_over_layers``: a W direction (512,) placed on layers A..B of W+, unit norm overall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from talkcli.errors import UserError

# Layer ranges (inclusive) on an 18-layer (1024 px) generator; scaled for other sizes.
LAYERS_18: dict[str, tuple[int, int]] = {
    "yaw": (0, 3),
    "pitch": (0, 3),
    "roll": (0, 3),
    "eyes_open": (4, 8),
    "mouth_open": (4, 8),
    "smile": (4, 8),
}
FIT_METHODS = ("ridge", "svm")
_ALPHAS = np.logspace(-6, 3, 28)  # ridge penalties relative to the mean squared singular value


@dataclass
class LinearFit:
    """One quantity's linear model ``q ~ intercept + <w - mean, normal> * slope`` with
    ``|normal| = 1``: ``slope`` is the quantity's change per unit of projection."""

    normal: np.ndarray  # (512,) float64, unit norm
    slope: float  # quantity units per unit of projection on ``normal``
    intercept: float  # the quantity at the mean code
    mean: np.ndarray  # (512,) the codes' mean
    r2: float  # in sample
    r2_heldout: float  # on a held-out fifth (fit on the rest)
    alpha: float  # the ridge penalty (relative), NaN for the SVM
    n: int

    def project(self, w: np.ndarray) -> np.ndarray:
        """Projections (N,) of codes (N, 512) on the normal, relative to the mean."""
        return (np.asarray(w, np.float64) - self.mean) @ self.normal


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return float(1.0 - ((y - pred) ** 2).sum() / ss) if ss > 0 else float("nan")


def _svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD of centred codes (N, D): (u (N, r), s (r,), vt (r, D))."""
    return np.linalg.svd(x, full_matrices=False)


def _ridge_gcv(
    svd: tuple[np.ndarray, np.ndarray, np.ndarray], y: np.ndarray
) -> tuple[np.ndarray, float]:
    """Ridge coefficients (D,) of centred codes (given by their SVD) on centred ``y`` (N,), the
    penalty chosen by generalised cross-validation; returns (beta, relative alpha)."""
    u, s, vt = svd
    uy = u.T @ y  # (r,)
    scale = float(np.mean(s**2)) if s.size else 1.0
    n = len(y)
    best = (np.inf, _ALPHAS[0])
    resid0 = float(y @ y - uy @ uy)  # the part of y outside the codes' column space
    for rel in _ALPHAS:
        shrink = s**2 / (s**2 + rel * scale)  # (r,)
        resid = resid0 + float((((1 - shrink) * uy) ** 2).sum())
        gcv = resid / max(n - float(shrink.sum()), 1e-9) ** 2
        if gcv < best[0]:
            best = (gcv, rel)
    beta = vt.T @ (s / (s**2 + best[1] * scale) * uy)  # (D,)
    return beta, float(best[1])


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a random fifth held out (at least 2 of each)."""
    order = np.random.default_rng(seed).permutation(n)
    k = max(2, n // 5)
    return order[k:], order[:k]


def _finish(
    beta: np.ndarray, w: np.ndarray, y: np.ndarray, mean: np.ndarray, alpha: float, heldout: float
) -> LinearFit:
    norm = float(np.linalg.norm(beta))
    if not np.isfinite(norm) or norm == 0:
        raise UserError("the fit found no direction (the quantity does not vary with the codes)")
    normal = beta / norm
    proj = (w - mean) @ normal  # (N,)
    a = np.vstack([proj, np.ones_like(proj)]).T  # least squares slope on the projection
    (slope, intercept), *_ = np.linalg.lstsq(a, y, rcond=None)
    return LinearFit(normal, float(slope), float(intercept), mean, _r2(y, a @ [slope, intercept]),
                     heldout, alpha, len(y))  # fmt: skip


def fit_ridge(
    w: np.ndarray, y: np.ndarray, seed: int = 0, svds: dict[str, Any] | None = None
) -> LinearFit:
    """Ridge regression of ``y`` (N,) on codes ``w`` (N, 512) (GCV penalty); NaN rows dropped
    by the caller. R^2 held out: fit on four fifths, scored on the rest. ``svds``: a dict kept
    by the caller to share the codes' SVDs between quantities fitted on the same rows."""
    w, y = np.asarray(w, np.float64), np.asarray(y, np.float64)
    if len(y) < 8:
        raise UserError(f"only {len(y)} usable samples to fit on; use more --samples")
    svds = {} if svds is None else svds
    tr, te = _split(len(y), seed)
    m_tr, mean = w[tr].mean(axis=0), w.mean(axis=0)
    if "train" not in svds:
        svds["train"], svds["all"] = _svd(w[tr] - m_tr), _svd(w - mean)
    b_tr, _ = _ridge_gcv(svds["train"], y[tr] - y[tr].mean())
    heldout = _r2(y[te], y[tr].mean() + (w[te] - m_tr) @ b_tr)
    beta, alpha = _ridge_gcv(svds["all"], y - y.mean())
    return _finish(beta, w, y, mean, alpha, heldout)


def _svm_normal(x: np.ndarray, labels: np.ndarray, steps: int = 300) -> np.ndarray:
    """Linear SVM (squared hinge + small L2) on standardised ``x`` by gradient descent: the
    boundary's normal (D,) in ``x``'s coordinates."""
    scale = x.std(axis=0) + 1e-12
    xs = x / scale
    wv = np.zeros(x.shape[1])
    b = 0.0
    lr, lam = 0.5 / xs.shape[1], 1e-3
    for _ in range(steps):
        margin = 1 - labels * (xs @ wv + b)
        active = margin > 0
        g = -2 * ((labels * margin * active) @ xs) / len(labels) + lam * wv
        gb = -2 * float((labels * margin * active).sum()) / len(labels)
        wv -= lr * g
        b -= lr * gb
    return wv / scale  # back to the codes' coordinates


def fit_svm(w: np.ndarray, y: np.ndarray, seed: int = 0) -> LinearFit:
    """InterFaceGAN's boundary: a linear SVM between the top and bottom thirds of ``y``."""
    w, y = np.asarray(w, np.float64), np.asarray(y, np.float64)
    if len(y) < 8:
        raise UserError(f"only {len(y)} usable samples to fit on; use more --samples")
    lo, hi = np.quantile(y, [1 / 3, 2 / 3])
    pick = (y <= lo) | (y >= hi)
    labels = np.where(y[pick] >= hi, 1.0, -1.0)
    mean = w.mean(axis=0)
    beta = _svm_normal(w[pick] - mean, labels)
    tr, te = _split(len(y), seed)
    fit_tr = _finish(beta, w[tr], y[tr], mean, float("nan"), float("nan"))
    heldout = _r2(y[te], fit_tr.intercept + fit_tr.slope * fit_tr.project(w[te]))
    return _finish(beta, w, y, mean, float("nan"), heldout)


def fit_quantity(
    w: np.ndarray,
    y: np.ndarray,
    method: str = "ridge",
    seed: int = 0,
    svds: dict[str, Any] | None = None,
) -> LinearFit:
    """``fit_ridge`` or ``fit_svm`` by name (``svds``: see ``fit_ridge``)."""
    if method not in FIT_METHODS:
        raise UserError(f"--method {method!r}: expected {' or '.join(FIT_METHODS)}")
    return fit_ridge(w, y, seed, svds) if method == "ridge" else fit_svm(w, y, seed)


def conditional_directions(normals: np.ndarray) -> np.ndarray:
    """(K, D) unit W normals in the conditioning order -> (K, D) unit directions: direction k is
    orthogonal to the normals of the quantities before it (InterFaceGAN's conditional
    manipulation, in order): moving along it leaves those quantities unchanged as far as their
    linear models tell. The first keeps its normal."""
    n = np.asarray(normals, np.float64)
    out = n.copy()
    for k in range(1, len(n)):
        before = n[:k]  # (k, D)
        coef, *_ = np.linalg.lstsq(before.T, n[k], rcond=None)
        d = n[k] - before.T @ coef
        norm = float(np.linalg.norm(d))
        if norm < 1e-6:
            raise UserError(
                "a quantity's fitted direction is a combination of the earlier ones'; cannot "
                "separate them (fit fewer quantities or use --no-orthogonalise)"
            )
        out[k] = d / norm
    return out


def default_layers(name: str, n_latent: int) -> tuple[int, int]:
    """The inclusive layer range of ``name`` scaled from 18 layers to ``n_latent`` (other names:
    every layer)."""
    if name not in LAYERS_18:
        return 0, n_latent - 1
    a, b = LAYERS_18[name]
    f = n_latent / 18.0
    lo = min(int(round(a * f)), n_latent - 1)
    hi = min(max(int(round(b * f)), lo), n_latent - 1)
    return lo, hi


def parse_layer_ranges(
    items: Sequence[str], n_latent: int | None = None
) -> dict[str, tuple[int, int]]:
    """``["yaw=0-3", "smile=4"]`` -> ``{"yaw": (0, 3), "smile": (4, 4)}``; checked against
    ``n_latent`` when given (``check_layer_ranges``)."""
    out: dict[str, tuple[int, int]] = {}
    for item in items:
        name, sep, span = item.partition("=")
        a, dash, b = span.partition("-")
        try:
            if not sep or not name.strip():
                raise ValueError
            lo, hi = int(a), int(b) if dash else int(a)
        except ValueError:
            raise UserError(f"--layers {item!r}: expected NAME=A-B (e.g. yaw=0-3)") from None
        if not 0 <= lo <= hi:
            raise UserError(f"--layers {item!r}: expected 0 <= A <= B")
        out[name.strip()] = (lo, hi)
    if n_latent is not None:
        check_layer_ranges(out, n_latent)
    return out


def check_layer_ranges(layers: Mapping[str, tuple[int, int]], n_latent: int) -> None:
    """Every range within the generator's ``n_latent`` W+ layers, else a one-line UserError."""
    for name, (lo, hi) in layers.items():
        if not 0 <= lo <= hi < n_latent:
            raise UserError(
                f"--layers {name}={lo}-{hi}: layers must satisfy 0 <= A <= B < {n_latent} "
                "(this generator's W+ layers)"
            )


def layer_ranges(
    names: Sequence[str], n_latent: int, overrides: Mapping[str, tuple[int, int]] | None = None
) -> dict[str, tuple[int, int]]:
    """Each name's range: the override, else ``default_layers``."""
    over = dict(overrides or {})
    return {n: over.get(n, default_layers(n, n_latent)) for n in names}


def spread_over_layers(direction: np.ndarray, n_latent: int, lo: int, hi: int) -> np.ndarray:
    """A W direction (D,) copied onto layers lo..hi of W+ (n_latent, D), unit norm overall."""
    out = np.zeros((n_latent, direction.shape[0]), dtype=np.float64)
    out[lo : hi + 1] = direction
    return out / max(float(np.linalg.norm(out)), 1e-30)
