"""``directions find``: discover named, calibrated W+ directions for any generator.

The steps, each a typed function (``find_directions`` composes them):

1. ``sample_codes``: z ~ N(0, I) (seeded, drawn on the CPU) -> ``G.mapping`` -> truncation
   around ``G.latent_avg`` (default 0.7): W codes (N, 512);
2. ``measure_codes``: render W+ (the code repeated over layers) in batches with the stored noise
   (as ``animate`` renders), downscale for the detector, detect landmarks, measure every quantity
   (``talkcli.face.measures``); NaN where no face was found;
3. fit each quantity on the codes (``talkcli.directions.fit``: ridge by default, or
   InterFaceGAN's linear SVM), make each direction orthogonal to the other quantities' normals,
   and confine it to its style layers (pose: coarse, eyes/mouth/smile: middle);
4. ``calibrate``: render ``w +- step * d`` for some samples and measure again: ``per_unit`` (the
   quantity's change per unit step along the stored direction) and the cross-talk matrix (every
   quantity's change per unit step along each direction).

Any generator with the repo's interface (``mapping``, ``synthesis``, ``latent_avg``,
``n_latent``, ``style_dim``, ``size``) and any ``LandmarkDetector`` work; with a 5-point detector
(MTCNN) only yaw and roll are measurable.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from talkcli.directions.fit import (
    FIT_METHODS,
    LinearFit,
    check_layer_ranges,
    conditional_directions,
    fit_quantity,
    layer_ranges,
    spread_over_layers,
)
from talkcli.errors import UserError
from talkcli.face.measures import FIVE_POINT_NAMES, QUANTITIES, measure_face
from talkcli.models.directions import Directions, standard_order, unit_for

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)
DETECT_SIZE = 256  # renders are downscaled to this for the detector (FAN works on ~256 px faces)


@dataclass
class FindConfig:
    """Options of ``find_directions`` (``talkcli.ranges.DIRECTIONS_FIND`` holds their bounds)."""

    samples: int = 2000
    seed: int = 0
    truncation: float = 0.7
    batch_size: int = 8
    detect_size: int = DETECT_SIZE
    method: str = "ridge"  # ridge | svm
    names: tuple[str, ...] | None = None  # None: every quantity the detector measures
    layers: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # overrides
    orthogonalise: bool = True
    calibrate_samples: int = 32
    calibrate_step: float = 1.0  # in standard deviations of the samples' projections

    def check(self) -> None:
        """The CLI's bounds (``talkcli.ranges``) for callers that bypass the CLI."""
        from talkcli.guards import check_number
        from talkcli.ranges import DIRECTIONS_FIND, option_name

        for name, rng in DIRECTIONS_FIND.items():
            check_number(option_name(name), getattr(self, name), *rng)
        if self.method not in FIT_METHODS:
            raise UserError(f"--method {self.method!r}: expected {' or '.join(FIT_METHODS)}")


@dataclass
class FindResult:
    """The directions, the JSON report, and the samples behind the fits (for ``--plot``)."""

    directions: Directions
    report: dict[str, Any]
    fits: dict[str, LinearFit]
    codes: np.ndarray  # (N, 512) sampled W codes
    values: np.ndarray  # (N, K) measured quantities (NaN: no face)


# -- sampling and measuring ---------------------------------------------------------------------


def sample_codes(G: Any, n: int, seed: int, truncation: float, batch: int = 256) -> np.ndarray:
    """(n, style_dim) float32 W codes: seeded z -> ``G.mapping`` -> truncation to latent_avg."""
    import torch

    z_dim = int(getattr(G, "z_dim", G.style_dim))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    z = torch.randn(n, z_dim, generator=gen)  # (n, z_dim)
    avg = G.latent_avg.detach().float().cpu()  # (style_dim,)
    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            w = G.mapping(z[i : i + batch].to(G.device)).float().cpu()  # (b, style_dim)
            out.append(avg + truncation * (w - avg))
    return torch.cat(out).numpy().astype(np.float32)


def render_for_detector(G: Any, w_plus: np.ndarray, detect_size: int) -> np.ndarray:
    """(B, n_latent, D) codes -> (B, s, s, 3) uint8 renders (stored noise), downscaled to
    ``detect_size`` when the generator is larger."""
    import torch
    import torch.nn.functional as F

    from talkcli.io.images import to_uint8_images

    x = torch.from_numpy(np.ascontiguousarray(w_plus, dtype=np.float32)).to(G.device)
    with torch.no_grad():
        img = G.synthesis(x, noise_mode="const").float()  # (B, 3, S, S)
        if img.shape[-1] > detect_size:
            size = (detect_size, detect_size)
            img = F.interpolate(
                img, size=size, mode="bilinear", antialias=True, align_corners=False
            )
    return to_uint8_images(img)


def measure_images(detector: Any, images: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, K) quantities of the largest face; NaN rows where none."""
    from talkcli.face.landmarks import choose_face

    out = np.full((len(images), len(names)), np.nan)
    for i, img in enumerate(images):
        faces = detector.detect(img)
        if not faces:
            continue
        values = measure_face(choose_face(faces).landmarks, img.shape[:2])
        out[i] = [values[n] for n in names]
    return out


def measure_codes(
    G: Any,
    detector: Any,
    w_plus: Callable[[int, int], np.ndarray],
    n: int,
    names: Sequence[str],
    cfg: FindConfig,
    on_progress: Progress | None = None,
    stage: str = "measure",
) -> np.ndarray:
    """Render and measure ``n`` codes given by ``w_plus(start, stop) -> (b, n_latent, D)`` in
    batches: (n, K) float64, NaN where no face was found."""
    out = np.full((n, len(names)), np.nan)
    for i in range(0, n, cfg.batch_size):
        j = min(i + cfg.batch_size, n)
        out[i:j] = measure_images(detector, render_for_detector(G, w_plus(i, j), cfg.detect_size),
                                  names)  # fmt: skip
        if on_progress is not None:
            on_progress(stage, j, n)
    return out


def measurable_names(detector: Any, requested: Sequence[str] | None) -> tuple[str, ...]:
    """The quantities to fit: ``requested`` (checked), else every standard one the detector
    measures (5-point detectors: yaw and roll only)."""
    five = getattr(detector, "name", "") == "mtcnn"
    can = FIVE_POINT_NAMES if five else QUANTITIES
    if not requested:
        return tuple(can)
    bad = [n for n in requested if n not in QUANTITIES]
    if bad:
        raise UserError(f"--names {', '.join(bad)}: expected some of {', '.join(QUANTITIES)}")
    cannot = [n for n in requested if n not in can]
    if cannot:
        raise UserError(
            f"--names {', '.join(cannot)}: the {detector.name} detector's 5 points measure only "
            f"{', '.join(FIVE_POINT_NAMES)}; use --detector fan"
        )
    return tuple(standard_order(list(requested)))


# -- fitting ------------------------------------------------------------------------------------


def fit_all(
    codes: np.ndarray, values: np.ndarray, names: Sequence[str], method: str, seed: int
) -> dict[str, LinearFit]:
    """One linear fit per quantity on the samples where it was measured."""
    fits = {}
    svds: dict[bytes, dict[str, Any]] = {}  # the codes' SVDs, shared by quantities on the same rows
    for k, name in enumerate(names):
        ok = np.isfinite(values[:, k])
        if ok.sum() < 8:
            raise UserError(
                f"{name}: measured on only {int(ok.sum())} of {len(values)} samples (no face "
                "found on the others); use more --samples or check the detector"
            )
        if float(np.std(values[ok, k])) == 0.0:
            raise UserError(f"{name}: the measured value never changes across the samples")
        shared = svds.setdefault(np.packbits(ok).tobytes(), {})
        fits[name] = fit_quantity(codes[ok], values[ok, k], method, seed, shared)
    return fits


def build_directions(
    fits: Mapping[str, LinearFit],
    names: Sequence[str],
    n_latent: int,
    layers: Mapping[str, tuple[int, int]],
    orthogonalise: bool,
) -> np.ndarray:
    """(K, n_latent, D) unit W+ directions: the fits' normals, each made orthogonal to the
    normals of the quantities before it (``conditional_directions``), each on its layers."""
    normals = np.stack([fits[n].normal for n in names])  # (K, D), names in standard order
    w_dirs = conditional_directions(normals) if orthogonalise else normals
    return np.stack(
        [spread_over_layers(w_dirs[k], n_latent, *layers[n]) for k, n in enumerate(names)]
    )


# -- calibration --------------------------------------------------------------------------------


def calibrate(
    G: Any,
    detector: Any,
    codes: np.ndarray,
    directions: np.ndarray,
    names: Sequence[str],
    cfg: FindConfig,
    on_progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``w +- step_k * d_k`` for each direction k on ``codes`` (M, D) and measure:
    returns (cross-talk (K, K): change of quantity j per unit step along direction k, steps (K,),
    pairs used (K,)). ``step_k``: ``calibrate_step`` standard deviations of the samples'
    projections on ``d_k``."""
    n_latent = directions.shape[1]
    w_plus = np.repeat(codes[:, None, :], n_latent, axis=1).astype(np.float64)  # (M, L, D)
    flat = directions.reshape(len(names), -1)  # (K, L*D)
    proj = w_plus.reshape(len(codes), -1) @ flat.T  # (M, K)
    steps = cfg.calibrate_step * np.maximum(proj.std(axis=0), 1e-6)  # (K,)
    m, k_count = len(codes), len(names)
    total = 2 * m * k_count

    def shifted(i: int, j: int) -> np.ndarray:  # rows i..j of the (2*K*M) plan
        rows = []
        for r in range(i, j):
            k, rest = divmod(r, 2 * m)
            sign, s = (1.0, rest) if rest < m else (-1.0, rest - m)
            rows.append(w_plus[s] + sign * steps[k] * directions[k])
        return np.stack(rows).astype(np.float32)

    def progress(stage: str, done: int, _total: int) -> None:
        if on_progress is not None:
            on_progress(stage, done, total)

    measured = measure_codes(G, detector, shifted, total, names, cfg, progress, "calibrate")
    measured = measured.reshape(k_count, 2, m, k_count)  # (direction, +/-, sample, quantity)
    diff = (measured[:, 0] - measured[:, 1]) / (2 * steps[:, None, None])  # (K, M, K)
    with warnings.catch_warnings():  # an all-NaN column (never measured) is reported as NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        cross = np.nanmean(diff, axis=1)  # (K, K)
    used = np.isfinite(diff[np.arange(k_count), :, np.arange(k_count)]).sum(axis=1)  # (K,)
    return cross, steps, used


# -- the whole run ------------------------------------------------------------------------------


def _usable_for_calibration(values: np.ndarray, m: int) -> np.ndarray:
    """Indices of the first ``m`` samples on which every quantity was measured."""
    ok = np.flatnonzero(np.all(np.isfinite(values), axis=1))
    return ok[:m]


def find_directions(
    G: Any, detector: Any, cfg: FindConfig | None = None, on_progress: Progress | None = None
) -> FindResult:
    """Sample, measure, fit, orthogonalise, confine to layers and calibrate (module docstring);
    ``on_progress(stage, done, total)`` after each batch (stages ``measure``, ``calibrate``)."""
    cfg = cfg or FindConfig()
    cfg.check()
    names = measurable_names(detector, cfg.names)
    n_latent = int(G.n_latent)
    check_layer_ranges(cfg.layers, n_latent)
    layers = layer_ranges(names, n_latent, cfg.layers)
    codes = sample_codes(G, cfg.samples, cfg.seed, cfg.truncation)  # (N, D)

    def repeated(i: int, j: int) -> np.ndarray:
        return np.repeat(codes[i:j, None, :], n_latent, axis=1)  # (b, n_latent, D)

    values = measure_codes(G, detector, repeated, len(codes), names, cfg, on_progress)  # (N, K)
    fits = fit_all(codes, values, names, cfg.method, cfg.seed)
    dirs = build_directions(fits, names, n_latent, layers, cfg.orthogonalise)  # (K, L, D)
    pick = _usable_for_calibration(values, cfg.calibrate_samples)
    if len(pick) < 2:
        raise UserError(
            f"only {len(pick)} sample(s) had every quantity measured; cannot calibrate "
            "(use more --samples)"
        )
    cross, steps, used = calibrate(G, detector, codes[pick], dirs, names, cfg, on_progress)
    per_unit = np.diag(cross).copy()  # (K,)
    dead = [n for k, n in enumerate(names) if not np.isfinite(per_unit[k]) or per_unit[k] == 0]
    if dead:
        raise UserError(
            f"{', '.join(dead)}: moving along the fitted direction did not change the measured "
            "value; use more --samples or a larger --calibrate-step"
        )
    sign = np.sign(per_unit)  # store directions that increase their quantity: per_unit > 0
    dirs = dirs * sign[:, None, None]
    cross = cross * sign[:, None]
    per_unit = per_unit * sign
    result = Directions(
        names=tuple(names),
        directions=dirs.astype(np.float32),
        per_unit=per_unit.astype(np.float32),
        units=tuple(unit_for(n) for n in names),
        layers=np.array([layers[n] for n in names], dtype=np.int64),
    )
    report = find_report(result, fits, values, cross, steps, used, cfg, detector)
    return FindResult(result, report, fits, codes, values)


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def find_report(
    d: Directions,
    fits: Mapping[str, LinearFit],
    values: np.ndarray,
    cross: np.ndarray,
    steps: np.ndarray,
    used: np.ndarray,
    cfg: FindConfig,
    detector: Any,
) -> dict[str, Any]:
    """The JSON report: per quantity R^2, slope, per_unit, layers; the cross-talk matrix (rows:
    directions, columns: quantities, units per unit step) and its relative form (the change of
    each quantity, in its samples' standard deviations, when a direction moves its own quantity
    by one standard deviation); samples used and failed."""
    names = list(d.names)
    std = np.nanstd(values, axis=0)  # (K,)
    rel = cross * (std / d.per_unit)[:, None] / np.maximum(std[None, :], 1e-12)  # (K, K)
    failed = int((~np.all(np.isfinite(values), axis=1)).sum())
    quantities = {}
    for k, n in enumerate(names):
        f = fits[n]
        quantities[n] = {
            "unit": d.units[k],
            "r2": _num(f.r2),
            "r2_heldout": _num(f.r2_heldout),
            "slope_per_projection": _num(f.slope),
            "mean": _num(np.nanmean(values[:, k])),
            "std": _num(std[k]),
            "per_unit": _num(d.per_unit[k]),
            "calibration_step": _num(steps[k]),
            "calibration_pairs": int(used[k]),
            "layers": [int(v) for v in d.layers[k]] if d.layers is not None else None,
            "samples_fitted": int(f.n),
            "ridge_alpha": _num(f.alpha),
        }
    return {
        "names": names,
        "detector": getattr(detector, "name", type(detector).__name__),
        "method": cfg.method,
        "samples": int(len(values)),
        "samples_failed": failed,
        "truncation": cfg.truncation,
        "seed": cfg.seed,
        "orthogonalised": bool(cfg.orthogonalise),
        "orthogonalisation": "in the order of names, each direction orthogonal in W to the "
        "fitted normals of the quantities before it (InterFaceGAN conditional manipulation), "
        "then confined to its layers"
        if cfg.orthogonalise
        else "none",
        "per_unit_source": "calibration: rendered w +- step*d and measured again",
        "quantities": quantities,
        "cross_talk": {
            n: {m: _num(cross[k, j]) for j, m in enumerate(names)} for k, n in enumerate(names)
        },  # fmt: skip
        "cross_talk_relative": {
            n: {m: _num(rel[k, j]) for j, m in enumerate(names)} for k, n in enumerate(names)
        },  # fmt: skip
    }
