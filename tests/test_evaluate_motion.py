"""``evaluate``'s motion statistics through the video pipeline, with the planted pattern detector
(talkcli.tiny.planted) standing in for FAN: frames whose pattern coefficients are a known yaw
trajectory and known blinks."""

from __future__ import annotations

import numpy as np
import pytest

from talkcli.metrics.evaluate import EvalConfig, Plan, evaluate
from talkcli.metrics.inputs import Pair
from talkcli.metrics.report import build_report, compare
from talkcli.runtime import ModelSet
from talkcli.tiny.planted import PatternDetector, patterns

from .metrics_support import write_clip

N, SIZE, FPS = 100, 64, 25.0


def _frames(yaw_deg: np.ndarray, blinks: list[int]) -> np.ndarray:
    """uint8 frames whose pattern coefficients say ``yaw`` (GAIN 100 deg per unit) and close the
    eyes (eyes_open 0.25 + 0.5 t -> 0.05) on the ``blinks`` frames (3 frames each)."""
    p = patterns(SIZE)  # (6, 3, S, S)
    eyes = np.zeros(len(yaw_deg))
    for b in blinks:
        eyes[b : b + 3] = -0.4
    img = yaw_deg[:, None, None, None] / 100.0 * p[0] + eyes[:, None, None, None] * p[3]
    return np.clip(np.rint((img.transpose(0, 2, 3, 1) + 1) * 127.5), 0, 255).astype(np.uint8)


@pytest.fixture
def stand_in_fan(monkeypatch):
    import talkcli.metrics.evaluate as ev

    models = ModelSet.preloaded(fan=PatternDetector())
    monkeypatch.setattr(ev, "load_models", lambda cfg, p: models)


def test_motion_statistics_in_the_report_and_compare(tmp_path, stand_in_fan):
    yaw = 10.0 * np.sin(np.arange(N) / 8.0)
    gen = write_clip(tmp_path / "gen.mp4", _frames(yaw, [20, 60]))
    ref = write_clip(tmp_path / "ref.mp4", _frames(yaw + 4.0, []))
    cfg = EvalConfig(metrics=("motion",), threads=1)
    p = Plan(["motion"], {}, {})
    run = evaluate([Pair("g", gen, ref)], cfg, p)
    res = run.results[0]
    assert res.status == "ok", res.error
    v = res.values
    assert set(v) == {"blink_rate", "yaw_std", "pitch_std", "roll_std", "mouth_audio_r",
                      "pose_error"}  # fmt: skip
    assert v["blink_rate"] == pytest.approx(2 * 60 * FPS / N)  # 2 blinks in 4 s
    assert v["yaw_std"] == pytest.approx(float(yaw.std()), rel=0.05)  # through H.264
    # 4 degrees of yaw on one axis of 3 (+ H.264's noise on the channel means of pitch, roll)
    assert v["pose_error"] == pytest.approx(4.0 / 3, abs=0.4)
    same = evaluate([Pair("s", gen, gen)], cfg, p).results[0].values
    assert same["pose_error"] == 0.0
    assert -1.0 <= v["mouth_audio_r"] <= 1.0
    assert not any(k.startswith("_motion") for k in res.per_frame)
    report = build_report(run, "planted")
    assert report["columns"] == ["blink_rate", "yaw_std", "pitch_std", "roll_std",
                                 "mouth_audio_r", "pose_error"]  # fmt: skip
    assert report["aggregates"]["yaw_std"]["over"] == "videos"
    table = compare([report, report], ["a", "b"])
    assert "pose_error" in table.columns and "blink_rate" in table.columns


def test_motion_without_reference_or_audio(tmp_path, stand_in_fan):
    yaw = np.linspace(-5, 5, N)
    gen = write_clip(tmp_path / "gen.mp4", _frames(yaw, [40]), audio=False)
    cfg = EvalConfig(metrics=("motion",), threads=1)
    run = evaluate([Pair("g", gen, None)], cfg, Plan(["motion"], {}, {}))
    v = run.results[0].values
    assert "pose_error" not in v and "mouth_audio_r" not in v
    assert v["blink_rate"] == pytest.approx(60 * FPS / N)
