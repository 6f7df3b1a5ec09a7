"""The trajectory file: ``--save-trajectory`` / ``--from-trajectory`` .npz of W+ frames.

Keys (a contract: other tools read and write them): ``w`` float32 (T, n_latent, 512),
``w_identity`` (n_latent, 512) and ``fps``. A run with named controls (issue 16) also stores
``control_names`` str (K,) and ``controls`` float32 (T, K), the values applied per frame in their
units, with the directions they went through (``control_directions`` (K, n_latent, 512),
``control_per_unit`` (K,), ``control_units`` (K,)), so ``--from-trajectory`` can replay them
without the directions file: ``w`` already holds them (``w = w_I + audio motion +
(controls / per_unit) @ directions``). ``TrajectoryWriter`` streams the frames to a
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
from typing import IO, Any

import numpy as np

from talkcli.animate.options import CHUNK_FRAMES
from talkcli.errors import InputFileError, UserError
from talkcli.guards import check_finite_array
from talkcli.io.files import atomic_output, require_file

TRAJECTORY_KEYS = ("w", "w_identity", "fps")
CONTROL_KEYS = ("control_names", "controls", "control_directions", "control_per_unit",
                "control_units")  # fmt: skip


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
        self._controls: IO[bytes] | None = None  # issue 16: (T, K) float32 rows, when used
        self.n_controls = 0
        self.n_control_rows = 0

    def write_controls(self, c: np.ndarray) -> None:
        """Append applied controls (n, K) (issue 16; in frame order, like ``write``)."""
        a = np.ascontiguousarray(c, dtype="<f4")
        if self._controls is None:
            self._controls, self.n_controls = tempfile.TemporaryFile(), int(a.shape[1])
        self._controls.write(memoryview(a).cast("B"))
        self.n_control_rows += len(a)

    def write(self, w: np.ndarray) -> None:
        """Append frames (n, n_latent, 512)."""
        a = np.ascontiguousarray(w, dtype="<f4")
        if self.frame_shape is None:
            self.frame_shape = tuple(a.shape[1:])
        elif tuple(a.shape[1:]) != self.frame_shape:
            raise ValueError(f"frames of shape {a.shape[1:]} after {self.frame_shape}")
        self._raw.write(memoryview(a).cast("B"))
        self.n_frames += len(a)

    def close(self, w_identity: np.ndarray, fps: float, directions: Any = None) -> Path:
        """Write the .npz (stored, not compressed: it streams) and rename it into place;
        ``directions`` (a ``talkcli.models.directions.Directions``) with controls written."""
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
                    if self._controls is not None and directions is not None:
                        self._write_controls(zf, directions)
        finally:
            raw.close()
            self._close_controls()
        return self.path

    def _write_controls(self, zf: zipfile.ZipFile, directions: Any) -> None:
        """issue 16: ``controls`` (streamed from its temporary file) and the directions."""
        if self.n_control_rows != self.n_frames or self.n_controls != len(directions.names):
            raise ValueError(
                f"{self.n_control_rows} control rows of {self.n_controls} for {self.n_frames} "
                f"frames and {len(directions.names)} directions"
            )
        self._controls.seek(0)
        header = {"descr": "<f4", "fortran_order": False, "shape": (self.n_frames, self.n_controls)}
        with zf.open("controls.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            shutil.copyfileobj(self._controls, f, 1 << 20)
        small = {
            "control_names": np.array(directions.names, dtype=str),
            "control_directions": np.asarray(directions.directions, dtype=np.float32),
            "control_per_unit": np.asarray(directions.per_unit, dtype=np.float32),
            "control_units": np.array(directions.units, dtype=str),
        }
        for key, value in small.items():
            with zf.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, value)

    def _close_controls(self) -> None:
        ctl, self._controls = self._controls, None
        if ctl is not None:
            ctl.close()

    def abort(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()
        self._close_controls()


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
        self.directions = self._recorded_directions(names)  # issue 16: None without controls

    def _recorded_directions(self, names: set[str]) -> Any:
        """issue 16: the directions the recorded ``controls`` went through, checked; None when
        the file has no controls."""
        present = [k for k in CONTROL_KEYS if f"{k}.npy" in names]
        if not present:
            return None
        missing = [k for k in CONTROL_KEYS if k not in present]
        if missing:
            raise InputFileError(self.path, f"has controls but lacks {', '.join(missing)}")
        from talkcli.models.directions import Directions

        try:
            with self._zip.open("controls.npy") as f:
                shape, _fortran, dtype = self._read_header(f)
            d = Directions(
                names=tuple(str(n) for n in self._small("control_names").reshape(-1)),
                directions=self._small("control_directions").astype(np.float32),
                per_unit=self._small("control_per_unit").astype(np.float32).reshape(-1),
                units=tuple(str(u) for u in self._small("control_units").reshape(-1)),
            )
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise InputFileError(
                self.path, f"has damaged controls ({exc})", "recreate it"
            ) from None
        if tuple(shape) != (self.n_frames, len(d.names)) or dtype.kind != "f" or _fortran:
            raise InputFileError(
                self.path, f"controls has shape {shape}; expected ({self.n_frames}, {len(d.names)})"
            )
        if d.directions.shape[1:] != (self.n_latent, self.style_dim):
            raise InputFileError(self.path, "control_directions do not match the frames' W+ shape")
        check_finite_array(d.directions, self.path, "control_directions")
        if not np.all(np.isfinite(d.per_unit)) or np.any(d.per_unit == 0):
            raise InputFileError(self.path, "control_per_unit has zeros or NaN")
        self._control_dtype = dtype
        return d

    def control_chunks(self, size: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        """issue 16: the recorded ``controls`` (n, K) float32 in chunks of up to ``size`` rows."""
        k = len(self.directions.names)
        row_bytes = self._control_dtype.itemsize * k
        with self._zip.open("controls.npy") as f:
            self._read_header(f)
            for a in range(0, self.n_frames, size):
                n = min(size, self.n_frames - a)
                data = f.read(n * row_bytes)
                if len(data) != n * row_bytes:
                    raise InputFileError(self.path, "controls ends early (the file is truncated)")
                c = np.frombuffer(data, dtype=self._control_dtype).reshape(n, k)
                check_finite_array(c, self.path, "controls")
                yield c.astype(np.float32)

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
