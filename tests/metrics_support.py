"""Shared by the metric and evaluate tests: tiny talking-head-like clips (64x64, 12 frames at
25 fps, speech-like audio unless silent) and a one-thread fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

N_FRAMES = 12
SIZE = 64
RATE = 16000


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny networks run several times faster so on a shared 2-core machine,
    and the stored upstream values hold at their tolerances either way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clip_frames(n: int = N_FRAMES, size: int = SIZE, noise: float = 0.0, seed: int = 0):
    """Crops sliding over the astronaut photo's face, resized to ``size``; optional noise."""
    from PIL import Image
    from skimage import data

    astro = data.astronaut()
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        crop = astro[20 + 2 * t : 240 + 2 * t, 140 + t : 360 + t]
        f = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)).astype(float)
        out.append(np.clip(np.rint(f + rng.normal(0, noise, f.shape)), 0, 255).astype(np.uint8))
    return np.stack(out)


def clip_audio(n: int = N_FRAMES) -> np.ndarray:
    t = np.arange(int(n / 25 * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )


def write_clip(path: Path, frames: np.ndarray, audio: bool = True) -> Path:
    from talkcli.io.video import VideoWriter

    with VideoWriter(path, fps=25, audio=(clip_audio(len(frames)), RATE) if audio else None) as w:
        w.write(frames)
    return path


def make_clips(folder: Path) -> dict[str, Path]:
    """ref, gen (noise 8), gen2 (noise 20), silent (gen without audio), small (48 px)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "ref": write_clip(folder / "ref.mp4", clip_frames()),
        "gen": write_clip(folder / "gen.mp4", clip_frames(noise=8, seed=1)),
        "gen2": write_clip(folder / "gen2.mp4", clip_frames(noise=20, seed=2)),
        "silent": write_clip(folder / "silent.mp4", clip_frames(noise=8, seed=1), audio=False),
        "small": write_clip(folder / "small.mp4", clip_frames(n=10, size=48, noise=8)),
    }
