"""``directions from-labels``: directions from labelled photos, encoded by pSp (issue 16).

A CSV with an ``image`` column (paths relative to the CSV's folder) and one numeric column per
quantity (standard names get standard units; empty cells are missing values). Each photo is
FFHQ-aligned (detector landmarks; or taken as aligned with ``aligned=True``) and encoded by pSp
into W+; each quantity is fitted (ridge or SVM, ``talkcli.directions.fit``) on the mean of the
codes over its layers, the directions are orthogonalised in the standard order and confined to
their layers as in ``directions find``. Nothing is rendered: ``per_unit`` comes from the fit's
slope (the report says so), ``slope * <d_w, n> / sqrt(layers)`` for a unit step along the stored
direction.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talkcli.directions.fit import (
    check_layer_ranges,
    conditional_directions,
    fit_quantity,
    layer_ranges,
    spread_over_layers,
)
from talkcli.errors import InputFileError
from talkcli.io.files import require_file
from talkcli.models.directions import Directions, standard_order, unit_for

IMAGE_COLUMN = "image"


@dataclass
class Labels:
    """The CSV's photos and their labels."""

    csv: Path
    images: list[Path]
    names: tuple[str, ...]
    values: np.ndarray  # (N, K) float64, NaN where missing


def read_labels_csv(path: str | Path) -> Labels:
    """Read and check the CSV; a bad header, path or number is an InputFileError naming the file
    and the row."""
    p = require_file(path, "labels CSV")
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(p, f"is not a readable CSV ({exc})") from None
    hint = f"columns: {IMAGE_COLUMN}, then one number per quantity (e.g. smile, yaw)"
    if not rows or IMAGE_COLUMN not in [h.strip() for h in rows[0]]:
        raise InputFileError(p, f"has no {IMAGE_COLUMN!r} column in its header", hint)
    header = [h.strip() for h in rows[0]]
    col = header.index(IMAGE_COLUMN)
    names = [h for i, h in enumerate(header) if i != col]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise InputFileError(p, f"needs named, distinct quantity columns (got {names})", hint)
    images, values = [], []
    for r, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise InputFileError(p, f"row {r}: {len(row)} cells, the header has {len(header)}")
        image = (p.parent / row[col].strip()).expanduser()
        if not image.is_file():
            raise InputFileError(p, f"row {r}: image {row[col].strip()!r} not found", hint)
        images.append(image)
        values.append([_number(p, r, n, c) for n, c in zip(names, _others(row, col), strict=True)])
    if len(images) < 8:
        raise InputFileError(p, f"has {len(images)} labelled photo(s); at least 8 are needed")
    order = standard_order(names)
    arr = np.array(values, dtype=np.float64)[:, [names.index(n) for n in order]]
    return Labels(p, images, tuple(order), arr)


def _others(row: list[str], col: int) -> list[str]:
    return [c for i, c in enumerate(row) if i != col]


def _number(p: Path, row: int, name: str, cell: str) -> float:
    if not cell.strip():
        return math.nan
    try:
        v = float(cell)
    except ValueError:
        v = math.nan
        bad = True
    else:
        bad = not math.isfinite(v)
    if bad:
        raise InputFileError(p, f"row {row}: {name} {cell.strip()!r} is not a finite number")
    return v


def encode_labelled(
    labels: Labels,
    encode: Callable[[np.ndarray], np.ndarray],
    detector: Any | None,
    size: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(N, n_latent, D) pSp codes of the photos: each aligned (FFHQ, ``size`` px, from the
    detector's landmarks; ``detector`` None: the photos are already aligned) then encoded by
    ``encode((1, H, W, 3) uint8) -> (1, n_latent, D)``."""
    from talkcli.face.align import align_image_array, detect_face
    from talkcli.io.images import read_image_rgb

    codes = []
    for i, path in enumerate(labels.images):
        img = read_image_rgb(path)
        if detector is not None:
            face, _ = detect_face(img, detector, None, path)
            img, _ = align_image_array(img, face.landmarks, size, exact=False)
        codes.append(np.asarray(encode(img[None]), dtype=np.float64)[0])
        if on_progress is not None:
            on_progress(i + 1, len(labels.images))
    return np.stack(codes)


def fit_from_labels(
    codes: np.ndarray,
    labels: Labels,
    method: str = "ridge",
    layers: dict[str, tuple[int, int]] | None = None,
    orthogonalise: bool = True,
    seed: int = 0,
) -> tuple[Directions, dict[str, Any]]:
    """Fit every labelled quantity on the codes (module docstring): (directions, report)."""
    n_latent = codes.shape[1]
    check_layer_ranges(layers or {}, n_latent)
    names = labels.names
    ranges = layer_ranges(names, n_latent, layers)
    fits = {}
    for k, n in enumerate(names):
        lo, hi = ranges[n]
        ok = np.isfinite(labels.values[:, k])
        if ok.sum() < 8:
            raise InputFileError(labels.csv, f"{n}: only {int(ok.sum())} labelled photos (need 8)")
        feats = codes[ok, lo : hi + 1].mean(axis=1)  # (n, D)
        fits[n] = fit_quantity(feats, labels.values[ok, k], method, seed)
    normals = np.stack([fits[n].normal for n in names])  # (K, D)
    w_dirs = conditional_directions(normals) if orthogonalise else normals
    dirs = np.stack([spread_over_layers(w_dirs[k], n_latent, *ranges[n])
                     for k, n in enumerate(names)])  # fmt: skip
    per_unit = np.array([
        fits[n].slope * float(w_dirs[k] @ normals[k]) / math.sqrt(ranges[n][1] - ranges[n][0] + 1)
        for k, n in enumerate(names)
    ])  # fmt: skip
    sign = np.where(per_unit < 0, -1.0, 1.0)
    d = Directions(
        names=tuple(names),
        directions=(dirs * sign[:, None, None]).astype(np.float32),
        per_unit=(per_unit * sign).astype(np.float32),
        units=tuple(unit_for(n) for n in names),
        layers=np.array([ranges[n] for n in names], dtype=np.int64),
    )
    return d, _labels_report(d, fits, labels, method, orthogonalise)


def _labels_report(
    d: Directions, fits: dict, labels: Labels, method: str, orthogonalise: bool
) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return float(x) if math.isfinite(float(x)) else None

    return {
        "source": "labels",
        "csv": str(labels.csv),
        "photos": len(labels.images),
        "names": list(d.names),
        "method": method,
        "orthogonalised": orthogonalise,
        "per_unit_source": "the fit's slope (nothing rendered; not calibrated)",
        "quantities": {
            n: {
                "unit": d.units[k],
                "r2": num(fits[n].r2),
                "r2_heldout": num(fits[n].r2_heldout),
                "per_unit": num(d.per_unit[k]),
                "layers": [int(v) for v in d.layers[k]],
                "labelled": int(fits[n].n),
            }
            for k, n in enumerate(d.names)
        },
    }
