"""Rendering W+ batches to frames and streaming them to the encoder while the next batch renders.

* ``FrameRenderer``: W+ (B, n_latent, 512) -> uint8 frames (B, S, S, 3) with the generator's
  stored noise (``noise_mode="const"``: no flicker) under ``torch.autocast`` for ``--dtype``
  bf16/fp16 (bf16 also on the CPU).
* ``FrameSink``: a writer thread behind a bounded queue. It pastes frames back into the photo
  (optional) and writes them to the ``VideoWriter`` (ffmpeg, its own process, encodes as they
  arrive). While the main thread renders batch k + 1 in the generator (torch releases the GIL),
  the sink pastes and pipes batch k: rendering, paste-back and encoding overlap, and at most
  ``depth`` batches wait in memory.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from talkcli.errors import UserError

AUTOCAST_DTYPES = ("bf16", "fp16")


def _torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


class FrameRenderer:
    """``G.synthesis`` over W+ batches -> uint8 RGB frames, under autocast for bf16/fp16."""

    def __init__(self, G: Any, dtype: str = "fp32") -> None:
        if dtype not in ("fp32", *AUTOCAST_DTYPES):
            raise UserError(f"--dtype {dtype!r}: expected fp32, fp16 or bf16")
        self.G = G
        self.dtype = dtype
        self.device = G.device

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """(B, n_latent, 512) float32 -> (B, S, S, 3) uint8."""
        import torch

        from talkcli.io.images import to_uint8_images

        x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(self.device)
        cast = (
            torch.autocast(self.device.type, dtype=_torch_dtype(self.dtype))
            if self.dtype in AUTOCAST_DTYPES
            else contextlib.nullcontext()
        )
        try:
            with torch.no_grad(), cast:
                img = self.G.synthesis(x, noise_mode="const")  # (B, 3, S, S)
        except RuntimeError as exc:
            if self.dtype == "fp32":
                raise
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(
                f"--dtype {self.dtype} does not run on {self.device} with this torch ({first}); "
                "use --dtype bf16 or fp32"
            ) from None
        return to_uint8_images(img)  # (B, S, S, 3), converted on the device, then copied


def even_size(width: int, height: int) -> tuple[int, int]:
    """The largest even (W, H) not above the given size (H.264 yuv420p needs even sizes)."""
    return width - width % 2, height - height % 2


def paste_function(
    photo: np.ndarray, meta: dict[str, Any], feather: float = 0.1
) -> Callable[[np.ndarray], np.ndarray]:
    """frame (S, S, 3) -> the photo with the frame pasted back, cropped to an even size."""
    from talkcli.face.paste import paste_back

    w, h = even_size(photo.shape[1], photo.shape[0])
    if w < 2 or h < 2:
        raise UserError(f"--paste-back: the photo is {photo.shape[1]}x{photo.shape[0]}, too small")

    def paste(frame: np.ndarray) -> np.ndarray:
        return paste_back(photo, frame, meta, feather=feather)[:h, :w]

    return paste


class FrameSink:
    """A thread that pastes (optional) and writes frame batches to a ``VideoWriter``.

    ``put`` blocks while ``depth`` batches are waiting (bounded memory); an error in the thread
    (ffmpeg died, a full disk) is raised by the next ``put`` or by ``close``. Paste-back (OpenCV,
    which releases the GIL) spreads a batch over ``paste_workers`` threads: one per four CPU
    cores, so on a GPU machine it keeps up with the renderer while the CPU of a small machine is
    left to the generator.
    """

    def __init__(
        self,
        writer: Any,  # talkcli.io.video.VideoWriter
        paste: Callable[[np.ndarray], np.ndarray] | None = None,
        depth: int = 2,
        paste_workers: int | None = None,
    ) -> None:
        self.writer = writer
        self.paste = paste
        workers = paste_workers or max(1, min(8, (os.cpu_count() or 1) // 4))
        self._pool = ThreadPoolExecutor(workers, "talkcli-paste") if paste and workers > 1 else None
        self.frames = 0
        self.paste_seconds = 0.0
        self.write_seconds = 0.0
        self.wait_seconds = 0.0  # time the renderer waited for room in the queue
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="talkcli-frame-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                batch = self._queue.get()
                if batch is None or self._stop:
                    return
                try:
                    self._write(batch)
                except BaseException as exc:  # handed to the main thread
                    self._error = exc
                    self._stop = True
                    return
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False)

    def _write(self, batch: np.ndarray) -> None:
        if self.paste is not None:
            t = time.perf_counter()
            if self._pool is not None:
                batch = np.stack(list(self._pool.map(self.paste, batch)))
            else:
                batch = np.stack([self.paste(f) for f in batch])
            self.paste_seconds += time.perf_counter() - t
        t = time.perf_counter()
        self.writer.write(batch)
        self.write_seconds += time.perf_counter() - t
        self.frames += len(batch)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, frames: np.ndarray) -> None:
        """Queue a batch (B, S, S, 3) uint8; blocks while the queue is full."""
        self._raise()
        t = time.perf_counter()
        while True:
            try:
                self._queue.put(frames, timeout=0.2)
                break
            except queue.Full:
                self._raise()
                if not self._thread.is_alive():
                    raise RuntimeError("the frame writer thread stopped") from None
        self.wait_seconds += time.perf_counter() - t

    def close(self) -> None:
        """Wait until every queued batch is written; raise the thread's error, if any."""
        self._raise()
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop without writing what is still queued (the caller aborts the writer)."""
        self._stop = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=30)
