"""Shaping a stream of displacement chunks: smoothing, ``--motion-scale``, ``--edit``, batches.

Every function takes and yields chunks of frames (n, ...), so memory is bounded by the chunk size
whatever the length:

* ``GaussianStream`` / ``smooth_stream``: ``scipy.ndimage.gaussian_filter1d(mode="nearest",
  truncate=4)`` over time, streamed with a lookahead of ``round(4 sigma)`` frames; the values do
  not depend on the chunking.
* ``load_direction`` / ``layer_mask`` / ``edit_offset``: ``--edit FILE:STRENGTH`` directions (W or
  W+, on ``--edit-layers``) summed into one (n_latent, 512) offset.
* ``compose``: w_t = w_I + motion_scale * smooth(d_t) + offset; without any of those,
  w_t = w_I + d_t exactly.
* ``rebatch``: W+ chunks re-cut into render batches of exactly ``--batch-size`` frames.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from talkcli.animate.options import Edit
from talkcli.errors import InputFileError, UserError
from talkcli.guards import check_finite_array
from talkcli.io.files import require_file

# -- smoothing ----------------------------------------------------------------------------------


def gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy's ``gaussian_filter1d`` kernel: radius ``int(truncate * sigma + 0.5)``, sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return w / w.sum()


class GaussianStream:
    """Gaussian smoothing over time (axis 0) of a stream of chunks, bounded memory.

    Equals ``scipy.ndimage.gaussian_filter1d(x, sigma, axis=0, mode="nearest", truncate=4.0)`` of
    the concatenated stream (edge frames repeated). Each output frame needs ``radius`` frames of
    lookahead, so ``push`` returns fewer frames than it gets and ``flush`` returns the rest;
    at most ``2 radius`` frames are held.
    """

    def __init__(self, sigma: float, truncate: float = 4.0) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.weights = gaussian_weights(sigma, truncate)  # (2r + 1,)
        self.radius = (len(self.weights) - 1) // 2
        self._buf: np.ndarray | None = None  # pending input, float64, left-padded at the start

    def _emit(self) -> np.ndarray:
        buf = self._buf
        n_out = len(buf) - 2 * self.radius
        if n_out <= 0:
            return buf[:0].astype(np.float32)
        out = np.zeros((n_out, *buf.shape[1:]), dtype=np.float64)
        for k, wk in enumerate(self.weights):
            out += wk * buf[k : k + n_out]
        self._buf = buf[n_out:]
        return out.astype(np.float32)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add frames (n, ...); return the smoothed frames that are now complete."""
        x = np.asarray(chunk, dtype=np.float64)
        if len(x) == 0:
            return x.astype(np.float32)
        if self._buf is None:
            pad = np.repeat(x[:1], self.radius, axis=0)
            self._buf = np.concatenate([pad, x])
        else:
            self._buf = np.concatenate([self._buf, x])
        return self._emit()

    def flush(self) -> np.ndarray:
        """The last frames (the end padded with the last frame); the stream is then done."""
        if self._buf is None or len(self._buf) == 0:
            return np.zeros((0,), dtype=np.float32)
        pad = np.repeat(self._buf[-1:], self.radius, axis=0)
        self._buf = np.concatenate([self._buf, pad])
        out = self._emit()
        self._buf = None
        return out


def smooth_stream(chunks: Iterable[np.ndarray], sigma: float) -> Iterator[np.ndarray]:
    """``chunks`` smoothed over time with ``GaussianStream`` (unchanged when ``sigma`` is 0)."""
    if sigma <= 0:
        yield from chunks
        return
    g = GaussianStream(sigma)
    for chunk in chunks:
        out = g.push(chunk)
        if len(out):
            yield out
    out = g.flush()
    if len(out):
        yield out


# -- edits --------------------------------------------------------------------------------------


def load_direction(path: str | Path, n_latent: int, style_dim: int) -> np.ndarray:
    """A W (style_dim,) or W+ (n_latent, style_dim) direction from .npy / .npz -> (n_latent,
    style_dim) float32 (a W direction repeated on every layer).

    InterFaceGAN boundaries (``(1, 512)`` .npy) and single W+ offsets load as they are; an
    .npz must hold one array, or one named ``direction`` / ``boundary``.
    """
    p = require_file(path, "edit direction")
    try:
        loaded = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputFileError(
            p, f"cannot read as .npy/.npz ({type(exc).__name__})", "save it with numpy.save"
        ) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            name = next((k for k in ("direction", "boundary") if k in keys), None)
            if name is None and len(keys) == 1:
                name = keys[0]
            if name is None:
                raise InputFileError(
                    p,
                    f"holds {', '.join(keys) or 'no arrays'}",
                    "save one direction as .npy, or name it 'direction' in the .npz",
                )
            arr = np.asarray(loaded[name])
    else:
        arr = np.asarray(loaded)
    if arr.dtype.kind not in "fiu" or arr.size == 0 or arr.size % style_dim:
        raise InputFileError(
            p,
            f"holds {arr.dtype} of shape {arr.shape}; expected a W direction ({style_dim},) or "
            f"(1, {style_dim}), or W+ ({n_latent}, {style_dim})",
        )
    rows = arr.reshape(-1, style_dim).astype(np.float32)
    if rows.shape[0] not in (1, n_latent):
        raise InputFileError(
            p,
            f"has {rows.shape[0]} rows of {style_dim}; expected 1 (W) or {n_latent} (W+ of this "
            "generator)",
        )
    check_finite_array(rows, p, "edit direction values")
    return np.ascontiguousarray(np.broadcast_to(rows, (n_latent, style_dim)))


def layer_mask(layers: tuple[int, int] | None, n_latent: int) -> np.ndarray:
    """(n_latent, 1) float32: 1 on style layers A..B (``--edit-layers A-B``), else 0."""
    mask = np.ones((n_latent, 1), dtype=np.float32)
    if layers is None:
        return mask
    a, b = layers
    if b >= n_latent:
        raise UserError(
            f"--edit-layers {a}-{b}: this generator has {n_latent} style layers (0-{n_latent - 1})"
        )
    mask[:] = 0.0
    mask[a : b + 1] = 1.0
    return mask


def edit_offset(
    edits: list[Edit], n_latent: int, style_dim: int, layers: tuple[int, int] | None = None
) -> np.ndarray | None:
    """Sum of ``strength * direction`` over ``edits``, masked to ``layers``: (n_latent, 512)."""
    if not edits:
        return None
    total = np.zeros((n_latent, style_dim), dtype=np.float32)
    for edit in edits:
        total += np.float32(edit.strength) * load_direction(edit.path, n_latent, style_dim)
    return total * layer_mask(layers, n_latent)


# -- composition and batches --------------------------------------------------------------------


def compose(
    displacements: Iterable[np.ndarray],  # chunks (n, n_latent, 512)
    w_identity: np.ndarray,  # (n_latent, 512)
    *,
    motion_scale: float = 1.0,
    smooth: float = 0.0,
    offset: np.ndarray | None = None,  # (n_latent, 512) from edit_offset
) -> Iterator[np.ndarray]:
    """W+ chunks: w_I + motion_scale * smooth(d) + offset (exactly w_I + d by default)."""
    w_id = np.asarray(w_identity, dtype=np.float32)
    for d in smooth_stream(displacements, smooth):
        if motion_scale != 1.0:
            d = d * np.float32(motion_scale)
        w = w_id[None] + d  # (n, n_latent, 512)
        if offset is not None:
            w = w + offset[None]
        yield w.astype(np.float32, copy=False)


def rebatch(chunks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of chunks into batches of exactly ``size`` frames (the last may be
    shorter), so frame t always renders in batch ``t // size`` whatever the chunking."""
    pending: list[np.ndarray] = []
    have = 0
    for chunk in chunks:
        pending.append(chunk)
        have += len(chunk)
        while have >= size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:size]
            rest = joined[size:]
            pending, have = ([rest] if len(rest) else []), len(rest)
    if have:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]
