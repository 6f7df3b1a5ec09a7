"""A whole ``directions find`` run: cache lookup, models, the search, every output.

Cached by (generator sha256, network, detector backend and files, options) in ``animate``'s cache
(``talkcli.animate.cache.Cache``, kind ``directions``): the directions (``.npz``), the report
(``.json``) and the samples behind the fits (``.fit.npz``, for ``--plot``). Every run also leaves
the directions at ``cached_directions_path(cache root, generator sha256)``, where ``animate``
looks when no ``--directions`` is given (unless the cache is off).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkcli.animate.cache import Cache, content_key
from talkcli.directions.find import FindConfig, FindResult, Progress, find_directions
from talkcli.io.files import write_json_atomic
from talkcli.models.directions import (
    Directions,
    cached_directions_path,
    load_directions,
    save_directions,
)

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the search changes what it finds for the same options


@dataclass
class FindRequest:
    """Everything a run needs (the command resolves files and checks outputs first)."""

    generator_path: Path
    network: str
    detector_backend: str  # fan | mtcnn
    detector_files: tuple[Path, ...]
    config: FindConfig
    device: Any = "cpu"
    weights_dir: Path | None = None
    out: Path | None = None
    report: Path | None = None
    plot: Path | None = None
    cache: Cache = field(default_factory=lambda: Cache(enabled=False))


@dataclass
class FindDone:
    """What a run produced: the directions, the report, where they went, a cache hit or not."""

    directions: Directions
    report: dict[str, Any]
    written: dict[str, Path]
    cached: bool


def cache_key(req: FindRequest, generator_sha: str) -> str:
    """The cache key: generator and detector file hashes, network, every option."""
    cfg = asdict(req.config)
    cfg["layers"] = {k: list(v) for k, v in sorted(req.config.layers.items())}
    return content_key(
        "directions",
        format=FORMAT,
        generator=generator_sha,
        network=req.network,
        detector=req.detector_backend,
        detector_files=[req.cache.file_sha256(p) for p in req.detector_files],
        config=cfg,
    )


def fit_table(result: FindResult) -> dict[str, np.ndarray]:
    """The samples behind the fits, for ``--plot``: projections and values (N, K), the fit lines'
    slopes and intercepts (K,), R^2 (K,)."""
    names = list(result.directions.names)
    fits = [result.fits[n] for n in names]
    return {
        "projections": np.stack([f.project(result.codes) for f in fits], axis=1),
        "values": result.values,
        "slopes": np.array([f.slope for f in fits]),
        "intercepts": np.array([f.intercept for f in fits]),
        "r2": np.array([f.r2 for f in fits]),
    }


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _cached(req: FindRequest, key: str) -> tuple[Directions, dict, dict] | None:
    """(directions, report, fit table) from the cache, or None."""
    hit = req.cache.lookup("directions", key, ".npz")
    rep = req.cache.lookup("directions", key, ".json")
    table = req.cache.lookup("directions", key, ".fit.npz")
    if hit is None or rep is None or table is None:
        return None
    try:
        d = load_directions(hit)
        report = json.loads(rep.read_text(encoding="utf-8"))
        with np.load(table, allow_pickle=False) as data:
            fit = {k: np.asarray(data[k]) for k in data.files}
    except Exception:  # an unreadable entry is a miss (rebuilt)
        for p in (hit, rep, table):
            req.cache.discard(p)
        return None
    return d, report, fit


def _search(req: FindRequest, on_progress: Progress | None) -> FindResult:
    from talkcli.face.landmarks import select_detector
    from talkcli.models.stylegan2 import load_generator

    G = load_generator(req.generator_path, req.device, network=req.network)
    detector = select_detector(req.detector_backend, req.weights_dir, str(G.device))
    return find_directions(G, detector, req.config, on_progress)


def run_find(
    req: FindRequest,
    on_progress: Progress | None = None,
    on_note: Callable[[str], None] | None = None,
) -> FindDone:
    """Find (or reuse from the cache) the directions of ``req``'s generator; write ``--out``,
    the report, ``--plot``, the cache entry and the generator's cached directions file."""
    note = on_note or log.info
    t0 = time.perf_counter()
    sha = req.cache.file_sha256(req.generator_path)
    key = cache_key(req, sha)
    found = _cached(req, key)
    cached = found is not None
    if found is None:
        result = _search(req, on_progress)
        d, report, table = result.directions, result.report, fit_table(result)
        report = {**report, "generator": {"path": str(req.generator_path), "sha256": sha,
                                          "network": req.network}}  # fmt: skip
        req.cache.store("directions", key, ".npz", lambda p: save_directions(p, d))
        req.cache.store("directions", key, ".fit.npz", lambda p: _save_npz(p, table))
        req.cache.store("directions", key, ".json", lambda p: write_json_atomic(p, report))
    else:
        d, report, table = found
        note("directions: found in the cache (same generator, detector and options)")
    report = {**report, "cached": cached, "seconds": round(time.perf_counter() - t0, 3)}
    return FindDone(d, report, _write_outputs(req, sha, d, report, table), cached)


def _write_outputs(
    req: FindRequest, sha: str, d: Directions, report: dict[str, Any], table: dict
) -> dict[str, Path]:
    written: dict[str, Path] = {}
    if req.cache.enabled:
        shared = cached_directions_path(req.cache.root, sha)
        try:
            shared.parent.mkdir(parents=True, exist_ok=True)
            written["cached"] = save_directions(shared, d)
        except OSError as exc:
            log.warning("could not write %s (%s); animate will not find it", shared, exc)
    if req.out is not None:
        written["out"] = save_directions(req.out, d)
    if req.report is not None:
        written["report"] = req.report
    if req.plot is not None:
        from talkcli.plots import plot_direction_fits

        q = report["quantities"]
        written["plot"] = plot_direction_fits(
            req.plot, list(d.names), list(d.units), table["projections"], table["values"],
            table["slopes"], table["intercepts"], [q[n]["r2_heldout"] for n in d.names],
        )  # fmt: skip
    report["outputs"] = {k: str(v) for k, v in written.items()}
    if req.report is not None:
        write_json_atomic(req.report, report, indent=2)
    return written
