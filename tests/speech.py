"""Speech for tests: espeak-ng sentences when it is installed, else a speech-like synthetic signal.

The fallback has the structure the audio tests rely on: syllables (a glottal pulse train through
two moving formant resonators, with fricative noise at their onsets) separated by pauses, so its
loudness envelope rises and falls like speech and its spectrum changes within each syllable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
SENTENCES = (
    "Place blue at F two now.",
    "The quick brown fox jumps over the lazy dog.",
    "Bin green by seven again, please.",
    "She sells sea shells by the sea shore.",
    "Lay white with J five soon.",
    "A stitch in time saves nine.",
    "Set red in Q eight please.",
    "Every good boy deserves fudge, said the teacher.",
    "Put the cat on the mat and go home.",
    "Numbers one two three four five six.",
    "How now brown cow, the farmer asked.",
    "Please call Stella and ask her to bring these things.",
)


def has_espeak() -> bool:
    """espeak-ng is installed (TALKCLI_TEST_NO_ESPEAK=1 pretends it is not: tests the fallback)."""
    if os.environ.get("TALKCLI_TEST_NO_ESPEAK"):
        return False
    return shutil.which("espeak-ng") is not None


def espeak(text: str, folder: Path, name: str, speed: int = 150, voice: str = "en") -> np.ndarray:
    """``text`` spoken by espeak-ng as 16 kHz mono float32 samples."""
    from talkcli.io.audio import load_audio

    wav = folder / f"{name}.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return load_audio(wav)


def _resonate(x: np.ndarray, freq: np.ndarray, bw: float = 90.0) -> np.ndarray:
    """Two-pole resonator with a time-varying centre frequency (per sample)."""
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bw / SAMPLE_RATE)
    out = np.zeros_like(x)
    step = 160  # update the coefficients every 10 ms
    zi = np.zeros(2)
    for a in range(0, len(x), step):
        f = float(freq[a])
        theta = 2 * np.pi * f / SAMPLE_RATE
        den = [1.0, -2 * r * np.cos(theta), r * r]
        out[a : a + step], zi = lfilter([1 - r], den, x[a : a + step], zi=zi)
    return out


def synth_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like audio: syllables of 120-300 ms with pauses, 16 kHz mono float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n)
    t = 0.15 + rng.uniform(0, 0.1)
    while t < seconds - 0.3:
        dur = rng.uniform(0.12, 0.3)
        a, m = int(t * SAMPLE_RATE), int(dur * SAMPLE_RATE)
        if a + m >= n:
            break
        f0 = rng.uniform(100, 220) * (1 + 0.1 * np.linspace(0, -1, m))
        phase = np.cumsum(f0) / SAMPLE_RATE
        pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
        f1 = np.linspace(rng.uniform(300, 800), rng.uniform(300, 800), m)
        f2 = np.linspace(rng.uniform(900, 2500), rng.uniform(900, 2500), m)
        voiced = _resonate(pulses, f1) + 0.6 * _resonate(pulses, f2)
        env = np.sin(np.pi * np.linspace(0, 1, m)) ** 0.7 * rng.uniform(0.4, 1.0)
        seg = voiced / (np.abs(voiced).max() + 1e-9) * env
        k = int(0.04 * SAMPLE_RATE)
        if rng.random() < 0.5:  # fricative onset
            seg[:k] += 0.15 * rng.standard_normal(k) * np.linspace(1, 0, k)
        out[a : a + m] += seg
        t += dur + (rng.uniform(0.15, 0.45) if rng.random() < 0.4 else rng.uniform(0.0, 0.06))
    out += 1e-4 * rng.standard_normal(n)  # a faint noise floor, like a recording
    return (0.5 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def speech(index: int, folder: Path, seconds: float = 3.0) -> np.ndarray:
    """Sentence ``index`` by espeak-ng, else ``seconds`` of synthetic speech (seed ``index``)."""
    if has_espeak():
        return espeak(SENTENCES[index % len(SENTENCES)], folder, f"speech{index}")
    return synth_speech(seconds, seed=index)
