"""The frame sink of ``animate``: rendered frames -> paste-back -> ffmpeg, beside the renderer.

* ``even_size`` / ``paste_function``: the paste-back hand-off (the generator's face pasted into
  the photo, cropped to an even size for H.264 yuv420p).
* ``FrameSink``: a writer thread behind a bounded queue. It pastes frames back into the photo
  (optional) and writes them to the ``VideoWriter`` (ffmpeg, its own process, encodes as they
  arrive). While the main thread renders batch k + 1 in the generator (torch releases the GIL),
  the sink pastes and pipes batch k: rendering, paste-back and encoding overlap, and at most
  ``depth`` batches wait in memory.
* ``VideoSink`` / ``open_video_sink``: a ``FrameSink`` that owns its ``VideoWriter``, as a
  context manager: leaving it normally drains the queue and closes the video (frame count,
  audio mux, rename into place); leaving it on an error stops the thread and deletes everything
  written, so nothing appears under the video's final name.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from talkcli.errors import UserError

PasteFn = Callable[[np.ndarray], np.ndarray]  # frame (S, S, 3) -> photo-sized frame (H, W, 3)


def even_size(width: int, height: int) -> tuple[int, int]:
    """The largest even (W, H) not above the given size (H.264 yuv420p needs even sizes)."""
    return width - width % 2, height - height % 2


def paste_function(photo: np.ndarray, meta: dict[str, Any], feather: float = 0.1) -> PasteFn:
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
        paste: PasteFn | None = None,
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
        self._closed = False
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
        """Wait until every queued batch is written; raise the thread's error, if any.
        A second call does nothing more."""
        self._raise()
        if not self._closed:
            self._closed = True
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


class VideoSink(FrameSink):
    """A ``FrameSink`` that owns its ``VideoWriter`` and finishes or aborts it.

    >>> with open_video_sink("out.mp4", 25.0, (1024, 1024), audio="speech.wav") as sink:
    ...     for frames in batches:  # (B, S, S, 3) uint8
    ...         sink.put(frames)
    ...     sink.close()  # optional: wait for the writer thread (e.g. to time the loop)
    ... # left normally: the video is encoded, muxed and renamed into place
    ... # left on an error: the thread stops, ffmpeg is killed, nothing is left behind
    """

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            self.close()  # every queued batch written (no-op when already drained)
        except BaseException:
            self.discard()
            raise
        self.writer.close()  # deletes everything it wrote if it fails

    def discard(self) -> None:
        """Stop the thread without writing what is queued and delete what ffmpeg wrote."""
        self.abort()
        self.writer.abort()


def open_video_sink(
    path: Path,
    fps: float,
    size: tuple[int, int],  # (W, H), even
    *,
    paste: PasteFn | None = None,
    audio: Path | None = None,
    audio_seconds: float | None = None,
    crf: int = 18,
    preset: str | None = None,
    trim_audio: bool = False,
) -> VideoSink:
    """A ``VideoSink`` writing H.264 (+ AAC from ``audio``) to ``path`` through ffmpeg."""
    from talkcli.io.video import DEFAULT_PRESET, VideoWriter

    writer = VideoWriter(
        path,
        fps,
        size,
        audio=audio,
        audio_seconds=audio_seconds,
        crf=crf,
        preset=preset or DEFAULT_PRESET,
        trim_audio=trim_audio,
    )
    try:
        return VideoSink(writer, paste)
    except BaseException:
        writer.abort()
        raise
