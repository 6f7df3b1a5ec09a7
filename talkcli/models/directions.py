"""The directions file: named, calibrated W+ directions (issue 16's shared contract).

An ``.npz`` with

* ``names``      str (K,): ``yaw``, ``pitch``, ``roll`` (degrees), ``eyes_open`` (eye aspect
  ratio, mean of both eyes), ``mouth_open`` (inner-lip height / mouth width), ``smile`` (mouth
  width / inter-ocular distance); other names are allowed and carried along;
* ``directions`` float32 (K, n_latent, 512);
* ``per_unit``   float32 (K,): how far the measured quantity moves per unit step along the
  direction as stored (e.g. 2.5 degrees of yaw per unit);
* ``units``      str (K,): ``deg`` or ``ratio`` (any short unit name for other controls);
* ``layers``     optional int (K, 2): the style-layer range A..B (inclusive) each direction was
  confined to.

A control value ``c_k`` (in its unit) displaces a frame's code by ``(c_k / per_unit_k) *
directions_k``, summed over the controls in use. That is exact: ``displacement`` computes nothing
else, and checks read it back.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from talkcli.errors import InputFileError, UserError
from talkcli.guards import check_finite_array
from talkcli.io.files import atomic_output, require_file

# The standard controls and their units (any other name is carried along with its stored unit).
STANDARD_UNITS: dict[str, str] = {
    "yaw": "deg",
    "pitch": "deg",
    "roll": "deg",
    "eyes_open": "ratio",
    "mouth_open": "ratio",
    "smile": "ratio",
}
STANDARD_NAMES: tuple[str, ...] = tuple(STANDARD_UNITS)
POSE_NAMES: tuple[str, ...] = ("yaw", "pitch", "roll")
REQUIRED_KEYS = ("names", "directions", "per_unit", "units")


@dataclass(frozen=True)
class Directions:
    """K named W+ directions with their calibration (see the module docstring for the contract)."""

    names: tuple[str, ...]
    directions: np.ndarray  # (K, n_latent, 512) float32
    per_unit: np.ndarray  # (K,) float32, measured units per unit step
    units: tuple[str, ...]
    layers: np.ndarray | None = None  # (K, 2) int, inclusive style-layer ranges

    def __post_init__(self) -> None:
        k = len(self.names)
        d = self.directions
        if d.ndim != 3 or d.shape[0] != k:
            raise ValueError(f"directions must be (K={k}, n_latent, 512), got {d.shape}")
        if self.per_unit.shape != (k,) or len(self.units) != k:
            raise ValueError(f"per_unit {self.per_unit.shape} / units {len(self.units)}: need {k}")
        if self.layers is not None and self.layers.shape != (k, 2):
            raise ValueError(f"layers must be (K={k}, 2), got {self.layers.shape}")
        if len(set(self.names)) != k:
            raise ValueError(f"direction names repeat: {', '.join(self.names)}")

    @property
    def n_latent(self) -> int:
        return int(self.directions.shape[1])

    @property
    def style_dim(self) -> int:
        return int(self.directions.shape[2])

    def index(self, name: str) -> int:
        """Position of control ``name``; a UserError listing the available ones otherwise."""
        try:
            return self.names.index(name)
        except ValueError:
            raise UserError(
                f"control {name!r} is not in this directions file (it has "
                f"{', '.join(self.names) or 'none'}); run `talkcli directions find` to add it"
            ) from None

    def unit_of(self, name: str) -> str:
        return self.units[self.index(name)]

    def displacement(self, controls: np.ndarray) -> np.ndarray:
        """(T, K) control values in their units -> (T, n_latent, 512) float32 code offsets:
        ``sum_k (c_k / per_unit_k) * directions_k``."""
        c = np.asarray(controls, dtype=np.float32)
        if c.ndim != 2 or c.shape[1] != len(self.names):
            raise ValueError(f"controls must be (T, {len(self.names)}), got {c.shape}")
        steps = c / self.per_unit[None, :]  # (T, K) unit steps
        flat = self.directions.reshape(len(self.names), -1)  # (K, n_latent*512)
        out = steps @ flat  # (T, n_latent*512)
        return out.reshape(len(c), self.n_latent, self.style_dim).astype(np.float32, copy=False)

    def offset(self, values: Mapping[str, float]) -> np.ndarray:
        """One static offset (n_latent, 512) from ``{name: value}`` (e.g. ``--pose yaw=10``)."""
        row = np.zeros((1, len(self.names)), dtype=np.float32)
        for name, value in values.items():
            row[0, self.index(name)] += np.float32(value)
        return self.displacement(row)[0]

    def project(self, w_delta: np.ndarray) -> np.ndarray:
        """Read controls back from code offsets: (T, n_latent, 512) -> (T, K) in their units,
        ``per_unit_k * <w, d_k> / |d_k|^2`` (exact for orthogonal directions)."""
        x = np.asarray(w_delta, dtype=np.float64).reshape(len(w_delta), -1)  # (T, n_latent*512)
        flat = self.directions.reshape(len(self.names), -1).astype(np.float64)  # (K, D)
        norms = np.maximum((flat * flat).sum(axis=1), 1e-30)  # (K,)
        return (x @ flat.T / norms[None, :] * self.per_unit[None, :]).astype(np.float32)


def _strings(arr: np.ndarray) -> tuple[str, ...]:
    return tuple(str(s) for s in np.asarray(arr).reshape(-1))


def _read_arrays(p: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(p, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz")
            return {k: np.asarray(data[k]) for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        raise InputFileError(
            p,
            f"cannot read as a directions .npz ({type(exc).__name__})",
            "write it with `talkcli directions find` or numpy.savez",
        ) from None


def load_directions(
    path: str | Path, n_latent: int | None = None, style_dim: int | None = None
) -> Directions:
    """Read and check a directions file; ``n_latent``/``style_dim`` must match the generator's
    when given (a one-line InputFileError naming the file otherwise)."""
    p = require_file(path, "directions file")
    arrays = _read_arrays(p)
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise InputFileError(
            p,
            f"has no {', '.join(missing)} (holds {', '.join(arrays) or 'nothing'})",
            "write it with `talkcli directions find` (keys: names, directions, per_unit, units)",
        )
    d = arrays["directions"]
    if d.dtype.kind not in "fiu" or d.ndim != 3:
        raise InputFileError(p, f"directions is {d.dtype} {d.shape}; expected (K, n_latent, 512)")
    k = d.shape[0]
    names, units = _strings(arrays["names"]), _strings(arrays["units"])
    per_unit = np.asarray(arrays["per_unit"], dtype=np.float32).reshape(-1)
    layers = arrays.get("layers")
    if len(names) != k or len(units) != k or per_unit.shape != (k,):
        raise InputFileError(
            p,
            f"{k} directions but {len(names)} names, {len(units)} units, {per_unit.size} per_unit",
        )
    if layers is not None and np.asarray(layers).shape != (k, 2):
        raise InputFileError(p, f"layers is {np.asarray(layers).shape}; expected ({k}, 2)")
    if n_latent is not None and style_dim is not None and d.shape[1:] != (n_latent, style_dim):
        raise InputFileError(
            p,
            f"directions are ({k}, {d.shape[1]}, {d.shape[2]}) but this generator's W+ is "
            f"({n_latent}, {style_dim})",
            "find directions for this generator with `talkcli directions find`",
        )
    check_finite_array(d, p, "directions")
    check_finite_array(per_unit, p, "per_unit")
    if np.any(per_unit == 0):
        raise InputFileError(p, "per_unit has zeros", "recalibrate with `talkcli directions find`")
    if len(set(names)) != k:
        raise InputFileError(p, f"direction names repeat: {', '.join(names)}")
    return Directions(
        names=names,
        directions=np.ascontiguousarray(d, dtype=np.float32),
        per_unit=per_unit,
        units=units,
        layers=None if layers is None else np.asarray(layers, dtype=np.int64),
    )


def save_directions(path: str | Path, directions: Directions) -> Path:
    """Write ``directions`` atomically as the contract's .npz."""
    arrays: dict[str, np.ndarray] = {
        "names": np.array(directions.names, dtype=str),
        "directions": np.ascontiguousarray(directions.directions, dtype=np.float32),
        "per_unit": np.asarray(directions.per_unit, dtype=np.float32),
        "units": np.array(directions.units, dtype=str),
    }
    if directions.layers is not None:
        arrays["layers"] = np.asarray(directions.layers, dtype=np.int64)
    out = Path(path)
    with atomic_output(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return out


def parse_assignments(text: str, option: str) -> dict[str, float]:
    """``"yaw=10,pitch=-5"`` (or one ``NAME=VALUE``) -> ``{"yaw": 10.0, "pitch": -5.0}``."""
    values: dict[str, float] = {}
    for part in (s.strip() for s in text.split(",")):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            number = float(value)
            if not np.isfinite(number):
                raise ValueError
        except ValueError:
            raise UserError(f"{option} {text!r}: expected NAME=VALUE[,NAME=VALUE...]") from None
        values[name.strip()] = values.get(name.strip(), 0.0) + number
    return values


def unit_for(name: str, default: str = "ratio") -> str:
    """The standard unit of a control name (``default`` for names outside the standard set)."""
    return STANDARD_UNITS.get(name, default)


def standard_order(names: Sequence[str]) -> list[str]:
    """``names`` with the standard controls first, in their standard order."""
    std = [n for n in STANDARD_NAMES if n in names]
    return std + [n for n in names if n not in STANDARD_UNITS]


def cached_directions_path(cache_root: str | Path, generator_sha256: str) -> Path:
    """Where ``directions find`` leaves its latest result for a generator, and where ``animate``
    looks when no ``--directions`` is given: ``<cache root>/directions/<generator sha256>.npz``
    (cache root: ``animate``'s, ``talkcli.animate.cache.default_cache_dir()`` or
    ``--cache-dir``)."""
    return Path(cache_root) / "directions" / f"{generator_sha256}.npz"
