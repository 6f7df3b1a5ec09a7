"""``directions find`` on a planted toy: a generator whose quantities follow known W+ directions and
a detector that reads them back as 68 landmarks (talkcli.tiny.planted). The fit must recover the
planted directions (cosine >= 0.9) with the right per_unit (within 10 %) and report cross-talk."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from talkcli.directions.find import FindConfig, find_directions
from talkcli.directions.fit import (
    conditional_directions,
    default_layers,
    fit_ridge,
    fit_svm,
    parse_layer_ranges,
    spread_over_layers,
)
from talkcli.errors import UserError
from talkcli.face.measures import measure_face
from talkcli.tiny.planted import PLANTED, PatternDetector, PlantedGenerator, face_landmarks


@pytest.fixture(scope="module")
def planted():
    torch.set_num_threads(1)
    G = PlantedGenerator(size=32, n_latent=8, seed=0)
    cfg = FindConfig(samples=600, batch_size=64, calibrate_samples=16, seed=1)
    return G, find_directions(G, PatternDetector(), cfg)


def test_planted_directions_are_recovered_with_their_per_unit(planted):
    G, result = planted
    d = result.directions
    assert d.names == PLANTED
    assert d.directions.shape == (6, 8, 512) and d.directions.dtype == np.float32
    for k, name in enumerate(d.names):
        truth = G.directions[PLANTED.index(name)]
        cos = float(np.sum(d.directions[k] * truth)) / float(np.linalg.norm(d.directions[k]))
        assert cos >= 0.9, (name, cos)
        want = G.planted_per_unit(name, d.directions[k])  # the toy's own formula
        assert d.per_unit[k] == pytest.approx(want, rel=0.10), name
        assert d.per_unit[k] > 0
    # units and layers as the contract says; layers are the defaults scaled to 8 layers
    assert d.units == ("deg", "deg", "deg", "ratio", "ratio", "ratio")
    assert [tuple(r) for r in d.layers] == [default_layers(n, 8) for n in PLANTED]
    for k, (lo, hi) in enumerate(d.layers):
        outside = np.delete(d.directions[k], np.arange(lo, hi + 1), axis=0)
        assert np.all(outside == 0)


def test_report_holds_r2_cross_talk_and_counts(planted):
    _, result = planted
    rep = result.report
    assert rep["samples"] == 600 and rep["samples_failed"] == 0
    assert set(rep["cross_talk"]) == set(PLANTED)
    for name in PLANTED:
        q = rep["quantities"][name]
        assert q["r2"] > 0.95 and q["r2_heldout"] > 0.5
        # the diagonal of the cross-talk is per_unit; relative diagonal is exactly 1
        assert rep["cross_talk"][name][name] == pytest.approx(q["per_unit"])
        assert rep["cross_talk_relative"][name][name] == pytest.approx(1.0)
    # the eyes and the mouth are planted independently: their cross-talk is tiny
    assert abs(rep["cross_talk_relative"]["eyes_open"]["mouth_open"]) < 0.05
    assert abs(rep["cross_talk_relative"]["mouth_open"]["yaw"]) < 0.05
    # a smile moves the 3D mouth corners, which nudges solvePnP's pitch: reported, not hidden
    assert abs(rep["cross_talk_relative"]["smile"]["pitch"]) > 0.02


def test_same_seed_same_directions():
    G = PlantedGenerator(size=16, n_latent=6, seed=3)
    cfg = FindConfig(samples=64, batch_size=32, calibrate_samples=4, names=("eyes_open",))
    a = find_directions(G, PatternDetector(), cfg).directions
    b = find_directions(G, PatternDetector(), cfg).directions
    assert np.array_equal(a.directions, b.directions) and np.array_equal(a.per_unit, b.per_unit)
    assert a.names == ("eyes_open",)


def test_five_point_detector_finds_only_yaw_and_roll():
    from talkcli.directions.find import measurable_names

    class Five:
        name = "mtcnn"

    assert measurable_names(Five(), None) == ("yaw", "roll")
    with pytest.raises(UserError, match="measure only yaw, roll"):
        measurable_names(Five(), ("smile",))
    with pytest.raises(UserError, match="--names frown"):
        measurable_names(PatternDetector(), ("frown",))


def test_no_face_anywhere_is_a_user_error():
    class Blind:
        name = "blind"

        def detect(self, img):
            return []

    G = PlantedGenerator(size=16, n_latent=6)
    with pytest.raises(UserError, match="measured on only 0 of 16 samples"):
        find_directions(G, Blind(), FindConfig(samples=16, batch_size=16))


def test_config_bounds_are_checked():
    with pytest.raises(UserError, match="--truncation"):
        FindConfig(truncation=0.0).check()
    with pytest.raises(UserError, match="--samples"):
        FindConfig(samples=3).check()


# -- the fitting pieces -------------------------------------------------------------------------


def test_ridge_recovers_a_linear_normal_and_slope():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(400, 20)) @ np.diag(np.linspace(0.5, 2, 20))  # anisotropic codes
    u = rng.normal(size=20)
    u /= np.linalg.norm(u)
    y = 3.0 + 2.5 * (w @ u)
    fit = fit_ridge(w, y)
    assert float(fit.normal @ u) > 0.999
    assert fit.slope == pytest.approx(2.5, rel=1e-2)
    assert fit.intercept == pytest.approx(3.0 + 2.5 * float(w.mean(0) @ u), abs=1e-2)
    assert fit.r2 > 0.999 and fit.r2_heldout > 0.99


def test_svm_boundary_points_along_the_quantity():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(600, 10))
    u = np.eye(10)[3]
    fit = fit_svm(w, w @ u + 0.05 * rng.normal(size=600))
    assert float(fit.normal @ u) > 0.95 and fit.slope > 0


def test_conditional_directions_are_orthogonal_to_earlier_normals():
    rng = np.random.default_rng(2)
    n = rng.normal(size=(3, 16))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    d = conditional_directions(n)
    assert np.allclose(d[0], n[0])
    assert abs(d[1] @ n[0]) < 1e-12 and abs(d[2] @ n[0]) < 1e-12 and abs(d[2] @ n[1]) < 1e-12
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0)
    with pytest.raises(UserError, match="combination"):
        conditional_directions(np.stack([n[0], n[0]]))


def test_layer_ranges_scale_and_parse():
    assert default_layers("yaw", 18) == (0, 3) and default_layers("smile", 18) == (4, 8)
    assert default_layers("yaw", 8) == (0, 1) and default_layers("eyes_open", 8) == (2, 4)
    assert default_layers("frown", 8) == (0, 7)
    assert parse_layer_ranges(["yaw=0-2", "smile=5"], 8) == {"yaw": (0, 2), "smile": (5, 5)}
    for bad in ("yaw", "yaw=3-1", "yaw=0-8", "=1-2", "yaw=a-b"):
        with pytest.raises(UserError, match="--layers"):
            parse_layer_ranges([bad], 8)
    d = spread_over_layers(np.ones(4), 5, 1, 2)
    assert np.linalg.norm(d) == pytest.approx(1.0) and np.all(d[[0, 3, 4]] == 0)


def test_planted_landmarks_measure_back_exactly():
    values = {"yaw": 12.0, "pitch": -7.0, "roll": 5.0, "eyes_open": 0.3, "mouth_open": 0.5,
              "smile": 1.0}  # fmt: skip
    got = measure_face(face_landmarks(values, (256, 256)), (256, 256))
    for name in ("yaw", "pitch", "roll", "eyes_open", "mouth_open"):
        assert got[name] == pytest.approx(values[name], abs=1e-6), name


def test_head_pose_survives_a_non_rigid_face():
    """A 20 % wider mouth than the rigid model: plain solvePnP ITERATIVE flipped to roll ~ -175."""
    values = {"yaw": 12.0, "pitch": -7.0, "roll": 5.0, "eyes_open": 0.3, "mouth_open": 0.5,
              "smile": 1.2}  # fmt: skip
    got = measure_face(face_landmarks(values, (256, 256)), (256, 256))
    assert abs(got["roll"] - 5.0) < 2 and abs(got["yaw"] - 12.0) < 3
    assert math.isfinite(got["pitch"]) and abs(got["pitch"] + 7.0) < 3
