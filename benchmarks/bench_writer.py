"""Throughput of ``talkcli.io.video.VideoWriter`` at 1024x1024 (frames/s, wall clock).

``python -m benchmarks.bench_writer`` writes ``benchmarks/results/writer.json``. Frames are
synthetic but not trivial to encode (a moving colour gradient with drifting rings plus per-frame
noise) and are generated before timing starts; the time covers the whole writer: pipe transfer,
RGB->YUV conversion, libx264, the frame-count check and the ``+faststart`` pass.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from talkcli.io.ffmpeg import find_ffmpeg
from talkcli.io.video import DEFAULT_PRESET, DEFAULT_TUNE, VideoWriter

SIZE = 1024
N_FRAMES = 100
FPS = 25.0
# (preset, tune): VideoWriter's default first, then alternatives for comparison.
CONFIGS = (
    (DEFAULT_PRESET, DEFAULT_TUNE),
    ("veryfast", "zerolatency"),
    ("superfast", None),
    ("ultrafast", None),
)
RESULTS = Path(__file__).resolve().parent / "results" / "writer.json"


def make_frames(n: int = N_FRAMES, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8: moving gradient + drifting rings + Gaussian noise (sigma 4)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        t = i / n
        r = np.sqrt((x - 0.5 - 0.2 * np.cos(2 * np.pi * t)) ** 2 + (y - 0.5) ** 2)
        rings = 0.5 + 0.5 * np.sin(40 * r - 6 * np.pi * t)
        base = np.stack([x + t, y * rings, 0.6 * rings + 0.4 * (1 - x)], axis=-1) % 1.0
        noisy = base * 255 + rng.normal(0.0, 4.0, size=base.shape).astype(np.float32)
        frames[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    return frames


def time_writer(frames: np.ndarray, preset: str, tune: str | None, folder: Path) -> dict:
    """Encode ``frames`` once with ``preset``; frames/s over the writer's whole life."""
    out = folder / f"bench_{preset}_{tune or 'none'}.mp4"
    start = time.perf_counter()
    with VideoWriter(out, fps=FPS, preset=preset, tune=tune) as writer:
        for frame in frames:  # one frame per call, as a renderer would
            writer.write(frame)
    seconds = time.perf_counter() - start
    return {
        "preset": preset,
        "tune": tune,
        "crf": 18,
        "frames": len(frames),
        "seconds": round(seconds, 3),
        "frames_per_s": round(len(frames) / seconds, 2),
        "file_mb": round(out.stat().st_size / 1e6, 2),
    }


def run() -> dict:
    """Run every configuration once; returns the results dict (also written by ``__main__``)."""
    frames = make_frames()
    ff = find_ffmpeg()
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [time_writer(frames, preset, tune, Path(tmp)) for preset, tune in CONFIGS]
    default = runs[0]
    return {
        "what": "VideoWriter throughput (frames/s, wall clock, whole writer)",
        "size": f"{SIZE}x{SIZE}",
        "default_preset": DEFAULT_PRESET,
        "default_tune": DEFAULT_TUNE,
        "frames_per_s": default["frames_per_s"],
        "target_frames_per_s": 25.0,
        "meets_target": default["frames_per_s"] >= 25.0,
        "runs": runs,
        # benchmarks/run.py adds its own "machine" block; these are the writer-specific facts.
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average_1min_before": load_before,
        "ffmpeg": {"version": ff.version, "source": ff.source, "path": ff.path},
    }


def main() -> None:
    result = run()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for r in result["runs"]:
        print(f"{r['preset']:>10} tune={r['tune'] or '-':<12} {r['frames_per_s']:7.2f} frames/s")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
