"""The trajectory file: ``--save-trajectory`` / ``--from-trajectory`` .npz of W+ frames.

Keys (a contract: other tools read and write them): ``w`` float32 (T, n_latent, 512),
``w_identity`` (n_latent, 512) and ``fps``. ``TrajectoryWriter`` streams the frames to a
temporary file and writes the .npz atomically at the end (``w`` stored uncompressed, so it
streams); ``TrajectoryFile`` checks a file up front and reads ``w`` chunk by chunk. Replaying a
file as motion is ``talkcli.animate.motion.replay_motion``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from talkcli.animate.options import CHUNK_FRAMES
from talkcli.errors import InputFileError, UserError
from talkcli.guards import check_finite_array
from talkcli.io.files import atomic_output, require_file

TRAJECTORY_KEYS = ("w", "w_identity", "fps")


def check_trajectory_path(path: Path) -> Path:
    """``path`` if it names an .npz, else a one-line UserError."""
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
