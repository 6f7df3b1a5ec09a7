"""Motion statistics (talkcli.metrics.motion) on synthetic landmark sequences and measures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from talkcli.metrics.motion import (
    blink_dips,
    blink_rate,
    correlation,
    energy_envelope,
    measure_frames,
    motion_statistics,
    pose_error,
    pose_std,
)
from talkcli.tiny.planted import face_landmarks


def _eyes(seconds: float, fps: float, blinks: list[float], seed: int = 0) -> np.ndarray:
    """An open-eye ratio 0.3 with noise and planted 200 ms blinks down to 0.05."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fps)) / fps
    x = 0.3 + 0.01 * rng.normal(size=len(t))
    for b in blinks:
        inside = (t >= b) & (t < b + 0.2)
        x[inside] = 0.05 + 0.25 * np.abs(t[inside] - (b + 0.1)) / 0.1
    return x


def test_blink_count_matches_the_planted_blinks():
    planted = [1.0, 3.5, 6.2, 8.0, 11.7, 15.0, 18.4]
    x = _eyes(20.0, 25.0, planted)
    dips = blink_dips(x)
    assert len(dips) == len(planted)
    assert [round(s / 25.0, 1) for s, _ in dips] == pytest.approx(planted, abs=0.15)
    assert blink_rate(x, 25.0) == pytest.approx(len(planted) * 60 / 20.0)
    x[::7] = np.nan  # frames without a face neither start nor end a dip
    assert len(blink_dips(x)) == len(planted)
    assert blink_dips(_eyes(10.0, 25.0, [])) == []
    assert math.isnan(blink_rate(np.full(10, np.nan), 25.0))


def test_pose_std_and_error_follow_their_formulas():
    rng = np.random.default_rng(1)
    pose = rng.normal(0, [4.0, 2.0, 1.0], size=(500, 3))
    pose[10] = np.nan
    ok = np.all(np.isfinite(pose), axis=1)
    assert pose_std(pose) == pytest.approx(tuple(pose[ok].std(axis=0)))
    other = pose + [1.0, -2.0, 3.0]
    assert pose_error(other, pose) == pytest.approx(2.0)


def test_mouth_audio_correlation():
    fps, sr = 25.0, 16000
    t = np.arange(int(4 * sr)) / sr
    loud = 0.5 + 0.5 * np.sin(2 * np.pi * 1.0 * t)  # 1 Hz syllable-like envelope
    audio = loud * np.sin(2 * np.pi * 220 * t)
    env = energy_envelope(audio, sr, fps, 100)
    assert env.shape == (100,) and env.max() > env.min() + 10
    mouth = np.interp(np.arange(100), np.arange(100), env)  # mouth following the energy
    assert correlation(mouth, env) == pytest.approx(1.0)
    assert correlation(-mouth, env) == pytest.approx(-1.0)
    assert math.isnan(correlation(np.ones(10), np.arange(10.0)))


def test_motion_statistics_from_landmark_sequences():
    fps, n = 25.0, 250
    yaw = 5.0 * np.sin(np.arange(n) / 10.0)
    eyes = _eyes(n / fps, fps, [2.0, 6.0])
    lms = np.stack([
        face_landmarks({"yaw": yaw[i], "pitch": 0.0, "roll": 2.0, "eyes_open": eyes[i],
                        "mouth_open": 0.3, "smile": 1.0}, (128, 128))
        for i in range(n)
    ])  # fmt: skip
    lms[5] = np.nan  # no face
    measures = measure_frames(lms, (128, 128))
    assert measures.shape == (n, 5) and np.all(np.isnan(measures[5]))
    ref = measures.copy()
    ref[:, 0] += 3.0
    stats = motion_statistics(measures, fps, reference=ref)
    ok = np.isfinite(measures[:, 0])
    assert stats["yaw_std"] == pytest.approx(float(yaw[ok].std()), rel=1e-3)
    assert stats["roll_std"] == pytest.approx(0.0, abs=1e-3)
    assert stats["blink_rate"] == pytest.approx(2 * 60 / 10.0)
    assert stats["pose_error"] == pytest.approx(1.0, abs=1e-6)  # 3 degrees on one of 3 axes
    assert "mouth_audio_r" not in stats
