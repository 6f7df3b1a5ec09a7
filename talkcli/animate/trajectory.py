"""W+ trajectories as streams of chunks: audio -> displacements -> smoothing, scale, edits -> W+.

Every function here takes and yields chunks of frames, so memory is bounded by the chunk size
whatever the audio's length:

* ``stream_mfcc_windows(audio, fps)``: the MFCC windows of ``talkcli.audio.features`` (identical
  values), each chunk computed from the few seconds of samples it needs, read from a
  ``DecodedAudio`` (the whole signal is never in memory).
* ``audio_displacements(model, audio, w_identity)``: the audio model chunk by chunk with its LSTM
  state carried over: d_t (n, n_latent, 512) with ``w_identity + d_t`` = the model's output.
* ``GaussianStream``: ``scipy.ndimage.gaussian_filter1d(mode="nearest", truncate=4)`` over time,
  streamed with a lookahead of ``round(4 sigma)`` frames.
* ``compose``: w_t = w_I + motion_scale * smooth(d_t) + sum of edits (W or W+ directions, on
  ``--edit-layers``); without any of those, w_t = w_I + d_t exactly.
* ``TrajectoryWriter`` / ``TrajectoryFile``: ``--save-trajectory`` / ``--from-trajectory`` .npz
  files (keys ``w`` float32 (T, n_latent, 512), ``w_identity`` (n_latent, 512), ``fps``) written
  and read in chunks (``w`` is stored uncompressed, streamed through a temporary file).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from talkcli.animate.options import Edit
from talkcli.errors import InputFileError, UserError
from talkcli.guards import check_finite_array
from talkcli.io.audio import DecodedAudio
from talkcli.io.files import atomic_output, require_file

CHUNK_FRAMES = 125  # frames per audio-model call (5 s at 25 fps): bounded memory, good batching
TRAJECTORY_KEYS = ("w", "w_identity", "fps")

# -- audio -> MFCC windows -> displacements ---------------------------------------------------


def stream_mfcc_windows(
    audio: DecodedAudio, fps: float, chunk_frames: int = CHUNK_FRAMES
) -> Iterator[np.ndarray]:
    """``mfcc_windows(samples, fps)`` in chunks (n, 12, 28) float32, reading only the samples
    each chunk needs (plus one before, for the pre-emphasis) from ``audio``."""
    from talkcli.audio.features import (
        FRAME_LEN,
        FRAME_STEP,
        WINDOW,
        mfcc_rows,
        n_frames,
        n_mfcc_rows,
        window_starts,
    )

    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    n = audio.n_samples
    total, m = n_frames(n, fps), n_mfcc_rows(n)
    for t0 in range(0, total, chunk_frames):
        starts = window_starts(range(t0, min(t0 + chunk_frames, total)), fps)  # (c,)
        lo = int(np.clip(starts[0], 0, m - 1))
        hi = int(np.clip(starts[-1] + WINDOW, lo + 1, m))
        # Rows [lo, hi) of the whole signal = rows [lo - base, hi - base) of this segment: it
        # starts one row early so row lo's pre-emphasis sees its previous sample, and ends where
        # row hi - 1 ends (or at the end of the audio, where psf pads with zeros alike).
        base = max(lo - 1, 0)
        seg = audio.read(base * FRAME_STEP, min((hi - 1) * FRAME_STEP + FRAME_LEN, n))
        rows = mfcc_rows(seg, lo - base, hi - base)  # (hi - lo, 12)
        idx = np.clip(starts[:, None] + np.arange(WINDOW)[None, :], 0, m - 1) - lo  # (c, 28)
        yield np.ascontiguousarray(rows[idx].transpose(0, 2, 1), dtype=np.float32)


def audio_displacements(
    model,  # talkcli.models.audio2latent.Audio2Latent
    audio: DecodedAudio,
    w_identity: np.ndarray,  # (n_latent, 512)
    fps: float,
    chunk_frames: int = CHUNK_FRAMES,
) -> Iterator[np.ndarray]:
    """Displacements d_t (n, n_latent, 512) float32 chunk by chunk, the LSTM state carried
    across chunks (so chunked equals one-shot); ``w_identity + d_t`` is the model's w_t."""
    import torch

    w_id = torch.from_numpy(np.ascontiguousarray(w_identity, dtype=np.float32))[None]
    w_id = w_id.to(model.device)  # (1, n_latent, 512)
    state = None
    with torch.no_grad():
        embedding = model.identity_embedding(w_id)  # (1, k)
        for windows in stream_mfcc_windows(audio, fps, chunk_frames):  # (n, 12, 28)
            x = torch.from_numpy(windows)[None].to(model.device)  # (1, n, 12, 28)
            e, state = model.encode_audio(x, state)  # (1, n, 256)
            h = model.decode(embedding, e)  # (1, n, k)
            d = h @ model.pca_basis  # (1, n, n_latent * 512)
            yield d[0].reshape(-1, model.n_latent, model.style_dim).float().cpu().numpy()


# -- smoothing, scale, edits --------------------------------------------------------------------


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


# -- trajectory files ---------------------------------------------------------------------------


def check_trajectory_path(path: Path) -> Path:
    if path.suffix.lower() != ".npz":
        raise UserError(f"{path}: a trajectory is saved as .npz (use a name ending in .npz)")
    return path


class TrajectoryWriter:
    """``--save-trajectory``: W+ chunks appended to a temporary file, then written as an .npz
    (``w``, ``w_identity``, ``fps``) atomically by ``close``; ``abort`` leaves nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = check_trajectory_path(Path(path).expanduser())
        self._raw: IO[bytes] | None = tempfile.TemporaryFile()
        self.n_frames = 0
        self.frame_shape: tuple[int, ...] | None = None

    def write(self, w: np.ndarray) -> None:
        """Append frames (n, n_latent, 512)."""
        a = np.ascontiguousarray(w, dtype="<f4")
        if self.frame_shape is None:
            self.frame_shape = tuple(a.shape[1:])
        elif tuple(a.shape[1:]) != self.frame_shape:
            raise ValueError(f"frames of shape {a.shape[1:]} after {self.frame_shape}")
        self._raw.write(memoryview(a).cast("B"))
        self.n_frames += len(a)

    def close(self, w_identity: np.ndarray, fps: float) -> Path:
        """Write the .npz (stored, not compressed: it streams) and rename it into place."""
        raw, self._raw = self._raw, None
        if raw is None:
            return self.path
        try:
            raw.seek(0)
            header = {
                "descr": "<f4",
                "fortran_order": False,
                "shape": (self.n_frames, *(self.frame_shape or (0, 0))),
            }
            with atomic_output(self.path) as tmp:
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                    with zf.open("w.npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array_header_1_0(f, header)
                        shutil.copyfileobj(raw, f, 1 << 20)
                    with zf.open("w_identity.npy", "w") as f:
                        np.lib.format.write_array(f, np.asarray(w_identity, dtype=np.float32))
                    with zf.open("fps.npy", "w") as f:
                        np.lib.format.write_array(f, np.asarray(float(fps), dtype=np.float64))
        finally:
            raw.close()
        return self.path

    def abort(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()


class TrajectoryFile:
    """``--from-trajectory``: an .npz with ``w`` (T, n_latent, 512), ``w_identity`` and ``fps``,
    checked up front (keys, shapes, dtypes, a finite fps) and read frame chunk by frame chunk."""

    def __init__(self, path: str | Path) -> None:
        self.path = require_file(path, "trajectory")
        try:
            self._zip = zipfile.ZipFile(self.path)
            names = set(self._zip.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            raise InputFileError(
                self.path, "is not an .npz trajectory", "save one with --save-trajectory"
            ) from None
        missing = [k for k in TRAJECTORY_KEYS if f"{k}.npy" not in names]
        if missing:
            raise InputFileError(
                self.path,
                f"lacks the key(s) {', '.join(missing)}",
                "a trajectory holds w (T, n_latent, 512), w_identity (n_latent, 512) and fps",
            )
        try:
            with self._zip.open("w.npy") as f:
                self._header = self._read_header(f)
            self.w_identity = self._small("w_identity")
            fps = self._small("fps")
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise InputFileError(self.path, f"is damaged ({exc})", "recreate it") from None
        shape, fortran, dtype = self._header
        if len(shape) != 3 or shape[0] < 1 or dtype.kind != "f":
            raise InputFileError(
                self.path, f"w has shape {shape} ({dtype}); expected float (T, n_latent, 512)"
            )
        self.n_frames, self.n_latent, self.style_dim = (int(v) for v in shape)
        self._fortran = fortran
        if self.w_identity.shape != (self.n_latent, self.style_dim):
            raise InputFileError(
                self.path,
                f"w_identity has shape {self.w_identity.shape}, w frames are "
                f"({self.n_latent}, {self.style_dim})",
            )
        check_finite_array(self.w_identity, self.path, "w_identity values")
        if fps.size != 1 or not np.isfinite(fps).all() or not 1.0 <= float(fps) <= 120.0:
            raise InputFileError(self.path, f"fps is {fps.tolist()}, expected 1..120")
        self.fps = float(fps)
        self.w_identity = self.w_identity.astype(np.float32)

    @staticmethod
    def _read_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)

    def _small(self, key: str) -> np.ndarray:
        with self._zip.open(f"{key}.npy") as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def chunks(self, size: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        """``w`` in chunks of up to ``size`` frames, float32 (n, n_latent, 512)."""
        shape, _fortran, dtype = self._header
        if self._fortran:  # not written by talkcli; read whole (documented limitation)
            with self._zip.open("w.npy") as f:
                w = np.lib.format.read_array(f, allow_pickle=False)
            for a in range(0, len(w), size):
                yield np.ascontiguousarray(w[a : a + size], dtype=np.float32)
            return
        frame_bytes = dtype.itemsize * self.n_latent * self.style_dim
        with self._zip.open("w.npy") as f:
            self._read_header(f)
            for a in range(0, self.n_frames, size):
                n = min(size, self.n_frames - a)
                data = f.read(n * frame_bytes)
                if len(data) != n * frame_bytes:
                    raise InputFileError(self.path, "w ends early (the file is truncated)")
                chunk = np.frombuffer(data, dtype=dtype).reshape(n, self.n_latent, self.style_dim)
                yield chunk.astype(np.float32)

    def check_values(self) -> None:
        """One pass over ``w`` refusing NaN/inf (before any rendering starts)."""
        for chunk in self.chunks():
            check_finite_array(chunk, self.path, "trajectory values (w)")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._zip.close()

    def __enter__(self) -> TrajectoryFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
