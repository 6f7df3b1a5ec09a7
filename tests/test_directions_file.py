"""The directions file contract (talkcli/models/directions.py) and the landmark measures
(talkcli/face/measures.py) that issue 16's controls are calibrated against."""

from __future__ import annotations

import math

import numpy as np
import pytest

from talkcli.errors import InputFileError, UserError
from talkcli.face import measures
from talkcli.models.directions import (
    Directions,
    load_directions,
    parse_assignments,
    save_directions,
)


def _planted(k: int = 3, n_latent: int = 4, dim: int = 8, seed: int = 0) -> Directions:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n_latent * dim, k)))
    d = q.T.reshape(k, n_latent, dim).astype(np.float32)
    return Directions(
        names=("yaw", "eyes_open", "custom"),
        directions=d,
        per_unit=np.array([2.5, 0.1, 1.0], np.float32),
        units=("deg", "ratio", "ratio"),
        layers=np.array([[0, 1], [2, 3], [0, 3]]),
    )


def test_displacement_is_the_contract_formula_and_projects_back():
    dirs = _planted()
    controls = np.array([[10.0, -0.2, 0.5], [0.0, 0.0, 0.0]], np.float32)
    got = dirs.displacement(controls)
    want = sum(controls[0, k] / dirs.per_unit[k] * dirs.directions[k] for k in range(3))
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    assert not got[1].any()
    np.testing.assert_allclose(dirs.project(got), controls, atol=1e-4)
    np.testing.assert_allclose(dirs.offset({"yaw": 10.0}), 4.0 * dirs.directions[0], rtol=1e-5)


def test_round_trip_and_shape_check(tmp_path):
    dirs = _planted()
    path = save_directions(tmp_path / "d.npz", dirs)
    back = load_directions(path, n_latent=4, style_dim=8)
    assert back.names == dirs.names and back.units == dirs.units
    np.testing.assert_array_equal(back.directions, dirs.directions)
    np.testing.assert_array_equal(back.layers, dirs.layers)
    with pytest.raises(InputFileError, match="this generator's W\\+ is \\(18, 512\\)"):
        load_directions(path, n_latent=18, style_dim=512)


def test_bad_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, directions=np.zeros((1, 2, 3), np.float32))
    with pytest.raises(InputFileError, match="has no names, per_unit, units"):
        load_directions(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match="cannot read"):
        load_directions(junk)
    with pytest.raises(UserError, match="not in this directions file"):
        _planted().index("smile")


def test_parse_assignments():
    assert parse_assignments("yaw=10, pitch=-5", "--pose") == {"yaw": 10.0, "pitch": -5.0}
    for text in ("yaw", "yaw=x", "=3", "yaw=nan"):
        with pytest.raises(UserError, match="expected NAME=VALUE"):
            parse_assignments(text, "--pose")


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    import cv2

    y, p, r = (math.radians(v) for v in (yaw, -pitch, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    assert cv2 is not None
    return rot


@pytest.mark.parametrize("pose", [(0, 0, 0), (20, 0, 0), (-15, 10, 5), (5, -12, -8)])
def test_head_pose_recovers_a_projected_mean_face(pose):
    rot = _rotation(*pose)
    size = (512, 512)
    lm = np.zeros((68, 2))
    for i, xyz in measures.MODEL_68.items():
        cam = rot @ np.asarray(xyz) + np.array([0.0, 0.0, 2000.0])
        lm[i] = 512 * cam[:2] / cam[2] + 256
    yaw, pitch, roll = measures.head_pose(lm, size)
    np.testing.assert_allclose([yaw, pitch, roll], pose, atol=0.5)
    five = np.zeros((5, 2))  # MTCNN's points from the same projection: yaw and roll only
    for j, xyz in enumerate(measures._MODEL_5):
        cam = rot @ xyz + np.array([0.0, 0.0, 2000.0])
        five[j] = 512 * cam[:2] / cam[2] + 256
    yaw5, pitch5, roll5 = measures.head_pose(five, size)
    np.testing.assert_allclose([yaw5, roll5], [pose[0], pose[2]], atol=1.0)
    assert math.isnan(pitch5)


def test_ratios_follow_their_formulas():
    lm = np.zeros((68, 2))
    for base, x0 in ((36, 100.0), (42, 200.0)):  # eyes 30 px wide, 6 px open
        lm[base : base + 6] = [(x0, 100), (x0 + 10, 97), (x0 + 20, 97), (x0 + 30, 100),
                               (x0 + 20, 103), (x0 + 10, 103)]  # fmt: skip
    lm[48], lm[54] = (120, 200), (200, 200)  # 80 px wide
    lm[61], lm[62], lm[63] = (150, 195), (160, 195), (170, 195)
    lm[67], lm[66], lm[65] = (150, 211), (160, 211), (170, 211)  # 16 px inner gap
    assert measures.eye_aspect_ratio(lm) == pytest.approx(6 / 30)
    assert measures.mouth_open_ratio(lm) == pytest.approx(16 / 80)
    assert measures.smile_ratio(lm) == pytest.approx(80 / 100)
    five = measures.measure_face(lm[[36, 42, 30, 48, 54]], (300, 300))
    assert math.isnan(five["eyes_open"]) and math.isnan(five["pitch"])
