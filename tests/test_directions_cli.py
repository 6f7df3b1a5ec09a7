"""``talkcli directions find`` end to end on the tiny pack's StyleGAN2 with the planted pattern
detector (talkcli.tiny.planted) standing in for FAN: outputs, cache, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from talkcli.models.directions import cached_directions_path, load_directions
from talkcli.tiny.planted import PLANTED, PatternDetector
from tests.conftest import FIXTURES, assert_user_error, run_cli_inprocess


@pytest.fixture
def weights(tiny_pack, tmp_path, monkeypatch):
    """The tiny pack plus MTCNN's files (so a detector resolves), detector patched."""
    if not (FIXTURES / "mtcnn").is_dir():
        pytest.skip("../shared/fixtures/mtcnn is not present beside the checkout")
    root = tmp_path / "weights"
    root.mkdir()
    for p in tiny_pack.iterdir():
        (root / p.name).symlink_to(p)
    (root / "mtcnn").mkdir()
    for stage in ("pnet", "rnet", "onet"):
        (root / "mtcnn" / f"{stage}.npy").symlink_to(FIXTURES / "mtcnn" / f"{stage}.npy")
    import talkcli.face.landmarks as landmarks

    monkeypatch.setattr(landmarks, "select_detector", lambda *a, **k: PatternDetector())
    return root


def _find(weights, tmp_path, *extra):
    return run_cli_inprocess(
        "--weights-dir", str(weights), "directions", "find", "--samples", "64",
        "--batch-size", "32", "--calibrate-samples", "4", "--cache-dir", str(tmp_path / "cache"),
        *extra,
    )  # fmt: skip


@pytest.mark.slow
def test_find_writes_directions_report_plot_and_cache(weights, tmp_path):
    out, plot = tmp_path / "d.npz", tmp_path / "fit.png"
    r = _find(weights, tmp_path, "--out", str(out), "--plot", str(plot), "--layers", "yaw=0-2")
    assert r.code == 0, r.stderr
    d = load_directions(out, n_latent=8, style_dim=512)
    assert d.names == PLANTED and np.all(d.per_unit > 0)
    assert tuple(d.layers[0]) == (0, 2) and tuple(d.layers[3]) == (2, 4)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["cached"] is False and report["samples"] == 64
    assert set(report["cross_talk"]["yaw"]) == set(PLANTED)
    assert report["quantities"]["smile"]["per_unit"] == pytest.approx(float(d.per_unit[5]))
    assert plot.stat().st_size > 1000
    sha = report["generator"]["sha256"]
    shared = cached_directions_path(tmp_path / "cache", sha)
    assert np.array_equal(load_directions(shared).directions, d.directions)
    # same options again: from the cache, same result
    out2 = tmp_path / "d2.npz"
    r2 = _find(weights, tmp_path, "--out", str(out2), "--layers", "yaw=0-2", "--json")
    assert r2.code == 0, r2.stderr
    assert "found in the cache" in r2.stderr
    assert json.loads(r2.stdout)["cached"] is True
    assert np.array_equal(load_directions(out2).directions, d.directions)


@pytest.mark.slow
def test_find_names_subset_and_no_cache(weights, tmp_path):
    out = tmp_path / "d.npz"
    r = _find(weights, tmp_path, "--names", "eyes_open,yaw", "--no-cache", "--out", str(out))
    assert r.code == 0, r.stderr
    assert load_directions(out).names == ("yaw", "eyes_open")
    assert not (tmp_path / "cache" / "directions").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--out", "d.txt"), ".npz"),
        (("--layers", "yaw=3-1"), "--layers"),
        (("--layers", "yaw=0-8"), "< 8"),
        (("--names", "frown"), "--names frown"),
        (("--plot", "fit.bmp"), "--plot"),
    ],
)
def test_find_bad_options_are_one_line_errors(weights, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    assert_user_error(_find(weights, tmp_path, *args), needle)


def test_find_without_a_generator_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TALKCLI_WEIGHTS", str(tmp_path / "none"))
    r = run_cli_inprocess("--weights-dir", str(tmp_path), "directions", "find")
    assert r.code == 2 and "Traceback" not in r.stderr
