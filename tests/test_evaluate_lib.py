"""The evaluate library: pairing, suites, plans, LMD through the video pipeline, determinism,
reports and comparisons."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from talkcli.errors import InputFileError, ModelFileError, UserError
from talkcli.face.landmarks import Face
from talkcli.metrics import lmd, lmd_face
from talkcli.metrics.evaluate import EvalConfig, Plan, evaluate, plan
from talkcli.metrics.inputs import Pair, check_unique_names, collect_pairs, read_pairs_csv
from talkcli.metrics.report import (
    aggregates,
    build_report,
    compare,
    json_safe,
    markdown,
    number,
)
from talkcli.metrics.suite import load_suite
from talkcli.runtime import ModelSet

from .metrics_support import clip_frames, make_clips, one_thread, write_clip  # noqa: F401


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_clips(tmp_path_factory.mktemp("clips"))


class CentroidLandmarks:
    """A stand-in for FAN: 68 points on a circle around the image's brightness centroid, so
    landmarks move exactly as the picture does (no model files needed)."""

    name = "centroid"

    def detect(self, img: np.ndarray) -> list[Face]:
        g = img.astype(np.float64).mean(axis=2)
        if g.max() < 1:
            return []  # a black frame: "no face"
        ys, xs = np.mgrid[: g.shape[0], : g.shape[1]]
        c = np.array([(xs * g).sum(), (ys * g).sum()]) / g.sum()
        angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
        pts = c + 10 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return [Face(pts, np.array([*pts.min(0), *pts.max(0)]), 1.0)]


def test_pairs_from_files_folders_and_csv(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    for folder, stems in ((gen, ("a", "b")), (ref, ("a", "c"))):
        for stem in stems:
            (folder / f"{stem}.mp4").write_bytes(b"x")
    pairs, unmatched = collect_pairs(gen, ref)
    assert [(p.name, p.reference) for p in pairs] == [("a", ref / "a.mp4"), ("b", None)]
    assert pairs[1].missing_reference and unmatched == [ref / "c.mp4"]
    pairs, _ = collect_pairs(gen / "a.mp4", ref)  # a file against a folder: same stem
    assert pairs == [Pair("a", gen / "a.mp4", ref / "a.mp4")]
    pairs, _ = collect_pairs(gen)  # no references
    assert all(p.reference is None and p.missing_reference is None for p in pairs)
    with pytest.raises(InputFileError, match="nope.mp4"):
        collect_pairs(gen / "a.mp4", tmp_path / "nope.mp4")

    csv = tmp_path / "pairs.csv"
    csv.write_text("generated,reference,name\ngen/a.mp4,ref/a.mp4,first\ngen/b.mp4,,\n")
    pairs = read_pairs_csv(csv)
    assert pairs[0] == Pair("first", gen / "a.mp4", ref / "a.mp4")
    assert pairs[1] == Pair("b", gen / "b.mp4", None)
    csv.write_text("gen/a.mp4,ref/zzz.mp4\n")
    assert read_pairs_csv(csv)[0].missing_reference == str(ref / "zzz.mp4")
    with pytest.raises(UserError, match="two inputs are named 'a'"):
        check_unique_names([Pair("a", gen / "a.mp4"), Pair("a", ref / "a.mp4")])


def test_suite_parsing_and_its_errors(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        'name = "m"\nout = "r.json"\nmetrics = ["psnr"]\nresolution = 128\nfid_stats = "c.npz"\n'
        '[[inputs]]\ngenerated = "g.mp4"\nreference = "r.mp4"\n'
    )
    (tmp_path / "r.mp4").write_bytes(b"x")
    s = load_suite(suite)
    assert s.name == "m" and s.outputs == {"out": tmp_path / "r.json"}
    assert s.options == {"metrics": ["psnr"], "resolution": 128, "fid_stats": tmp_path / "c.npz"}
    assert s.pairs == [Pair("g", tmp_path / "g.mp4", tmp_path / "r.mp4")]
    for text, needle in (
        ('resolutoin = 128\n[[inputs]]\ngenerated = "g.mp4"\n', "unknown key(s) resolutoin"),
        ('fps = "25"\n[[inputs]]\ngenerated = "g.mp4"\n', "fps must be int or float"),
        ('strict = 1\n[[inputs]]\ngenerated = "g.mp4"\n', "strict must be bool"),
        ('pairs = "p.csv"\n[[inputs]]\ngenerated = "g.mp4"\n', "one way"),
        ("name = 'x'\n", "one way"),
        ("[[inputs]\n", "not valid TOML"),
    ):
        suite.write_text(text)
        with pytest.raises(InputFileError, match="s.toml") as err:
            load_suite(suite)
        assert needle in str(err.value)


def test_plan_skips_or_refuses_metrics_without_model_files(tmp_path, tiny_pack):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = EvalConfig(weights_dir=empty, inception=None)
    p = plan(cfg, has_reference=True)
    from talkcli.weights import registry

    lpips_found = registry.locate("alexnet", empty) is not None  # ./weights or the user cache
    assert p.metrics == ["psnr", "ssim", *(["lpips"] if lpips_found else []), "cpbd"]
    assert "syncnet" in p.skipped["lse"] and "fid-inception" in p.skipped["fid"]
    with pytest.raises(ModelFileError, match="syncnet_v2.model"):
        plan(EvalConfig(metrics=("lse",), named=True, weights_dir=empty), True)
    p = plan(EvalConfig(weights_dir=tiny_pack, face_crop="aligned"), has_reference=False)
    assert p.metrics == ["cpbd", "lse"]
    assert p.skipped["psnr"] == "needs reference videos"
    assert "--fid-stats" in p.skipped["fid"]


def test_lmd_through_the_video_pipeline(clips, tmp_path):
    det = CentroidLandmarks()
    frames = clip_frames()
    shifted = np.zeros_like(frames)
    shifted[:, :, 3:] = frames[:, :, :-3]  # content 3 px to the right
    shifted[5] = 0  # one frame without a "face"
    moved = write_clip(tmp_path / "moved.mp4", shifted)
    cfg = EvalConfig(metrics=("lmd",), threads=1)
    p = Plan(["lmd"], {}, {})
    import talkcli.metrics.evaluate as ev

    models = ModelSet.preloaded(fan=det)
    orig = ev.load_models
    ev.load_models = lambda cfg, p: models  # the stand-in detector instead of FAN
    try:
        same = evaluate([Pair("same", clips["ref"], clips["ref"])], cfg, p)
        moved_run = evaluate([Pair("moved", moved, clips["ref"])], cfg, p)
    finally:
        ev.load_models = orig
    assert same.results[0].values == {"lmd": 0.0, "lmd_face": 0.0}
    res = moved_run.results[0]
    assert np.isnan(res.per_frame["lmd"][5]) and "no face found in 1" in res.notes[-1]
    assert res.values["lmd"] > 0.5  # the content moved (by less than 3 px: the black border)
    assert res.values["lmd"] == pytest.approx(res.values["lmd_face"], rel=1e-9)
    # the functions on arrays give the same per-frame values
    from talkcli.io.video import read_video

    g, r = read_video(moved), read_video(clips["ref"])
    keep = [i for i in range(12) if i != 5]
    assert lmd(g[keep], r[keep], det) == pytest.approx(res.values["lmd"], rel=1e-9)
    assert lmd_face(r, r, det) == 0.0


def test_rerunning_gives_identical_values(clips, tiny_pack):
    cfg = EvalConfig(
        metrics=("psnr", "ssim", "lpips", "fid", "cpbd"), threads=1, weights_dir=tiny_pack
    )
    pairs = [Pair("a", clips["gen"], clips["ref"]), Pair("b", clips["gen2"], clips["ref"])]
    runs = [evaluate(pairs, cfg, plan(cfg, True)) for _ in range(2)]
    first, second = (build_report(r, "x") for r in runs)
    assert first["videos"] == second["videos"] and first["aggregates"] == second["aggregates"]
    assert first["fid"]["value"] == second["fid"]["value"]
    assert first["videos"][0]["values"]["psnr"] > first["videos"][1]["values"]["psnr"]


def test_identical_videos_give_ssim_one_lpips_zero_psnr_inf(clips, tiny_pack, tmp_path):
    import shutil

    from talkcli.metrics.report import write_json

    copy = shutil.copy(clips["ref"], tmp_path / "copy.mp4")
    cfg = EvalConfig(metrics=("psnr", "ssim", "lpips", "fid"), threads=1, weights_dir=tiny_pack)
    run = evaluate([Pair("same", copy, clips["ref"])], cfg, plan(cfg, True))
    out = write_json(tmp_path / "same.json", build_report(run, "same"))
    report = json.loads(out.read_text())  # strict JSON: infinity is the string "inf"
    v = report["videos"][0]["values"]
    assert v["psnr"] == "inf" and report["aggregates"]["psnr"]["mean"] == "inf"
    assert v["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert v["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert abs(report["aggregates"]["fid"]["mean"]) < 1e-3


def test_fid_statistics_cache_is_written_reused_and_checked(clips, tiny_pack, tmp_path):
    stats = tmp_path / "ref.npz"
    cfg = EvalConfig(metrics=("fid",), threads=1, weights_dir=tiny_pack, fid_stats=stats)
    pairs = [Pair("a", clips["gen"], clips["ref"])]
    first = evaluate(pairs, cfg, plan(cfg, True))
    assert stats.is_file() and any("written" in n for n in first.notes)
    second = evaluate(pairs, cfg, plan(cfg, True))
    assert any("reused" in n for n in second.notes)
    assert second.fid["value"] == pytest.approx(first.fid["value"], rel=1e-9)
    alone = evaluate([Pair("a", clips["gen"])], cfg, plan(cfg, False))  # no reference videos
    assert alone.fid["value"] == pytest.approx(first.fid["value"], rel=1e-9)
    other = EvalConfig(metrics=("fid",), threads=1, weights_dir=tiny_pack, fid_stats=stats, fps=20)
    with pytest.raises(InputFileError, match="other settings"):
        evaluate([Pair("a", clips["gen"])], other, plan(other, False))


def test_report_values_survive_json_and_compare_marks_the_best():
    assert json_safe({"a": [math.inf, -math.inf, math.nan, np.float64(2.5)]}) == {
        "a": ["inf", "-inf", "nan", 2.5]
    }
    assert number("inf") == math.inf and math.isnan(number(None)) and number(3) == 3.0

    def report(name, psnr, lpips, fid, crop="full"):
        return {
            "name": name,
            "config": {"crop": crop, "fps": 25.0},
            "aggregates": {
                "psnr": {"mean": psnr},
                "lpips": {"mean": lpips},
                "fid": {"mean": fid},
            },
        }

    reports = [report("a", 20.5, 0.2, 7.3), report("b", 21.0, 0.3, "nan", crop="aligned")]
    comp = compare(reports, ["a", "b"])
    assert comp.columns == ["psnr", "lpips", "fid"]
    assert comp.best == {"psnr": [1], "lpips": [0], "fid": [0]}  # higher PSNR, lower LPIPS, FID
    tie = compare([reports[0], report("c", 20.5, 0.25, 8.0)], ["a", "c"])
    assert tie.best["psnr"] == [0, 1]  # both bold
    assert any("differ in crop" in w for w in comp.warnings)
    md = markdown(comp)
    assert "| a | 20.50 | **0.2000** | **7.30** |" in md
    assert "| b | **21.00** | 0.3000 | - |" in md
    json.dumps(comp.to_dict(), allow_nan=False)


def test_aggregates_pool_frames_and_average_videos():
    from talkcli.metrics.evaluate import EvalRun, VideoResult

    a = VideoResult(Pair("a", "a.mp4"), values={"lse_d": 7.0})
    a.per_frame = {"psnr": np.array([10.0, 20.0]), "lmd": np.array([1.0, np.nan])}
    b = VideoResult(Pair("b", "b.mp4"), values={"lse_d": 9.0})
    b.per_frame = {"psnr": np.array([30.0]), "lmd": np.array([3.0])}
    bad = VideoResult(Pair("c", "c.mp4"), status="failed", values={"lse_d": 100.0})
    run = EvalRun(EvalConfig(), Plan([], {}, {}), [a, b, bad])
    agg = aggregates(run)
    assert agg["psnr"] == {
        "mean": 20.0,
        "std": pytest.approx(np.std([10, 20, 30])),
        "n": 3,
        "over": "frames",
    }
    assert agg["lmd"]["mean"] == 2.0 and agg["lmd"]["n"] == 2  # the NaN frame is left out
    assert agg["lse_d"] == {"mean": 8.0, "std": 1.0, "n": 2, "over": "videos"}


def test_median_filter_matches_scipy():
    from scipy.signal import medfilt as scipy_medfilt

    from talkcli.metrics.sync import medfilt

    rng = np.random.default_rng(0)
    for n in (13, 14, 40):
        v = rng.normal(size=n) * 10
        np.testing.assert_array_equal(medfilt(v, 13), scipy_medfilt(v, 13))


def test_lse_face_crops_by_detection(clips, tiny_pack):
    """--face-crop detect: boxes from a detector per frame (gaps interpolated), cropped as
    syncnet_python does; the score equals lse() on those crops."""
    from talkcli.io.audio import load_audio
    from talkcli.io.video import read_video
    from talkcli.metrics import lse
    from talkcli.metrics.sync import crop_face, smooth_boxes
    from talkcli.models.syncnet import load_syncnet
    from talkcli.weights import registry

    det = CentroidLandmarks()
    net = load_syncnet(registry.resolve("syncnet", tiny_pack))
    cfg = EvalConfig(metrics=("lse",), face_crop="detect", threads=1)
    import talkcli.metrics.evaluate as ev

    orig = ev.load_models
    ev.load_models = lambda cfg, p: ModelSet.preloaded(syncnet=net, detector=det)
    try:
        run = evaluate([Pair("g", clips["gen"])], cfg, Plan(["lse"], {}, {}, "centroid"))
    finally:
        ev.load_models = orig
    frames = read_video(clips["gen"], fps=25)
    boxes = np.stack([det.detect(f)[0].box for f in frames])
    crops = np.stack([crop_face(f, *xy) for f, xy in zip(frames, smooth_boxes(boxes), strict=True)])
    want = lse(crops, load_audio(clips["gen"]), net)
    got = run.results[0].values
    assert got["lse_d"] == pytest.approx(want["lse_d"], rel=1e-6)
    assert got["lse_offset"] == want["offset"]


def test_frames_are_matched_at_the_common_frame_rate(clips, tmp_path):
    """A 50 fps copy of the generated clip (every frame twice) is resampled to 25 fps and
    compared frame by frame: the same PSNR as the 25 fps clip."""
    from talkcli.io.video import VideoWriter, read_video

    frames = read_video(clips["gen"])
    fast = tmp_path / "gen50.mp4"
    with VideoWriter(fast, fps=50, crf=0) as w:  # lossless: the doubled frames stay the same
        w.write(np.repeat(frames, 2, axis=0))
    cfg = EvalConfig(metrics=("psnr",), threads=1)
    p = plan(cfg, True)
    at25 = evaluate([Pair("a", fast, clips["ref"])], cfg, p).results[0]
    assert at25.frames == 12 and not any("lengths differ" in n for n in at25.notes)
    direct = evaluate([Pair("b", clips["gen"], clips["ref"])], cfg, p).results[0]
    assert at25.values["psnr"] == pytest.approx(direct.values["psnr"], abs=0.3)


def test_networks_run_under_the_resolved_dtype(clips, tiny_pack, monkeypatch):
    """Issue 18: --dtype auto resolves with the device (fp32 on a CPU without native bf16, bf16
    with it) and is recorded; bf16 LPIPS/FID stay close to fp32, pixel metrics are untouched."""
    pairs = [Pair("a", clips["gen"], clips["ref"]), Pair("b", clips["gen2"], clips["ref"])]
    reports = {}
    for flag, dtype in (("0", "auto"), ("1", "auto"), ("0", "bf16")):
        monkeypatch.setenv("TALKCLI_CPU_BF16", flag)
        cfg = EvalConfig(
            metrics=("psnr", "lpips", "fid"), threads=1, weights_dir=tiny_pack, dtype=dtype
        )
        run = evaluate(pairs, cfg, plan(cfg, True))
        reports[flag, dtype] = (cfg.dtype, build_report(run, "x"))
    assert reports["0", "auto"][0] == "fp32"
    assert reports["1", "auto"][0] == "bf16" and reports["0", "bf16"][0] == "bf16"
    fp32, bf16 = reports["0", "auto"][1], reports["1", "auto"][1]
    for a, b in zip(fp32["videos"], bf16["videos"], strict=True):
        assert a["values"]["psnr"] == b["values"]["psnr"]  # pixel metric: fp32 always
        assert b["values"]["lpips"] == pytest.approx(a["values"]["lpips"], rel=0.05, abs=2e-3)
    assert bf16["fid"]["value"] == pytest.approx(fp32["fid"]["value"], rel=0.1, abs=1.0)
    with pytest.raises(UserError, match="--dtype"):
        EvalConfig(dtype="fp8").check()
