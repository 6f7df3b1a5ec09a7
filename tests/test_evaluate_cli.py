"""`talkcli evaluate`: reports whose numbers equal the metric functions on the same frames,
suites that rerun bit for bit, `compare`, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from talkcli.io.files import sha256_file

from .conftest import assert_user_error, run_cli, run_cli_inprocess
from .metrics_support import make_clips


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_clips(tmp_path_factory.mktemp("clips"))


def _eval(pack, *args, inprocess: bool = False):
    run = run_cli_inprocess if inprocess else run_cli
    return run("--weights-dir", str(pack), "evaluate", *args, "--threads", "1")


def _values(report: dict) -> dict:
    return {v["name"]: v["values"] for v in report["videos"]}


@pytest.mark.slow
def test_one_pair_report_matches_the_metric_functions(tiny_pack, clips, tmp_path):
    from talkcli.io.audio import load_audio
    from talkcli.io.video import read_video
    from talkcli.metrics import fid, lse, psnr, ssim
    from talkcli.metrics.perceptual import lpips_frames
    from talkcli.metrics.sharpness import cpbd_frames
    from talkcli.metrics.sync import aligned_box, crop_face, smooth_boxes
    from talkcli.models.inception import load_inception
    from talkcli.models.perceptual import load_lpips
    from talkcli.models.syncnet import load_syncnet
    from talkcli.weights import registry

    out, csv, plot = tmp_path / "r.json", tmp_path / "f.csv", tmp_path / "p.png"
    result = _eval(
        tiny_pack,
        str(clips["gen"]),
        str(clips["ref"]),
        "--out", str(out), "--csv", str(csv), "--plot", str(plot),
        "--crop", "aligned", "--resolution", "64",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["config"]["resolution"] == 64 and report["config"]["crop"] == "aligned"
    assert report["config"]["lse_crop"] == "aligned" and report["config"]["threads"] == 1
    assert report["metrics"] == ["psnr", "ssim", "lpips", "fid", "cpbd", "lse"]
    assert "fan-2d" in report["skipped"]["lmd"]  # no FAN in a tiny pack: skipped with a note
    assert "skipped lmd" in result.stderr

    g, r = read_video(clips["gen"]), read_video(clips["ref"])
    got = report["videos"][0]["values"]
    assert report["videos"][0]["frames"] == 12 and report["videos"][0]["size"] == [64, 64]
    assert got["psnr"] == pytest.approx(psnr(g, r), rel=1e-12)
    assert got["ssim"] == pytest.approx(ssim(g, r), rel=1e-12)
    assert got["cpbd"] == pytest.approx(cpbd_frames(g).mean(), rel=1e-12)
    lp = load_lpips("alex", weights_dir=tiny_pack)
    assert got["lpips"] == pytest.approx(lpips_frames(g, r, model=lp).mean(), rel=1e-5)
    inc = load_inception(registry.resolve("fid-inception", tiny_pack))
    assert report["aggregates"]["fid"]["mean"] == pytest.approx(fid(g, r, inc), rel=1e-3)
    box = aligned_box(64, 64)
    xys = smooth_boxes(np.tile(box, (12, 1)))
    crops = np.stack([crop_face(f, *xy) for f, xy in zip(g, xys, strict=True)])
    net = load_syncnet(registry.resolve("syncnet", tiny_pack))
    ref_lse = lse(crops, load_audio(clips["gen"]), net)
    assert got["lse_d"] == pytest.approx(ref_lse["lse_d"], rel=1e-5)
    assert got["lse_c"] == pytest.approx(ref_lse["lse_c"], rel=1e-4, abs=1e-5)
    assert got["lse_offset"] == ref_lse["offset"]

    agg = report["aggregates"]
    assert agg["psnr"]["n"] == 12 and agg["psnr"]["over"] == "frames"
    assert agg["lse_d"]["over"] == "videos" and agg["fid"]["over"] == "set"
    syncnet_file = registry.resolve("syncnet", tiny_pack)
    assert report["models"]["syncnet"]["sha256"] == sha256_file(syncnet_file)
    assert report["videos"][0]["sha256"]["generated"] == sha256_file(clips["gen"])
    assert report["versions"]["torch"]
    rows = csv.read_text().splitlines()
    assert rows[0] == "video,frame,time,psnr,ssim,lpips,cpbd" and len(rows) == 13
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "psnr" in result.stdout and "all" in result.stdout  # the table


@pytest.mark.slow
def test_suite_reruns_identically_and_compare_prints_the_table(tiny_pack, clips, tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f"""
name = "method-a"
out = "a.json"
metrics = ["psnr", "ssim", "lpips", "fid", "cpbd"]
fps = 25
threads = 1

[[inputs]]
name = "s1"
generated = "{clips["gen"]}"
reference = "{clips["ref"]}"

[[inputs]]
name = "s2"
generated = "{clips["gen"]}"
reference = "{clips["ref"]}"
"""
    )
    first = run_cli("--weights-dir", str(tiny_pack), "evaluate", "--suite", str(suite))
    assert first.code == 0, first.stderr
    second = run_cli(
        "--weights-dir", str(tiny_pack), "evaluate", "--suite", str(suite),
        "--out", str(tmp_path / "a2.json"),
    )  # fmt: skip
    assert second.code == 0, second.stderr
    a = json.loads((tmp_path / "a.json").read_text())
    a2 = json.loads((tmp_path / "a2.json").read_text())
    assert a["name"] == "method-a" and [v["name"] for v in a["videos"]] == ["s1", "s2"]
    assert _values(a) == _values(a2)  # bit for bit
    assert a["aggregates"] == a2["aggregates"] and a["fid"] == a2["fid"]

    # method b: the same run with worse PSNR/SSIM and better LPIPS (compare only reads reports)
    b = json.loads(json.dumps(a))
    b["name"] = "method-b"
    b["aggregates"]["psnr"]["mean"] -= 1.0
    b["aggregates"]["ssim"]["mean"] -= 0.01
    b["aggregates"]["lpips"]["mean"] /= 2
    b_out = tmp_path / "b.json"
    b_out.write_text(json.dumps(b))
    table = run_cli("evaluate", "compare", str(tmp_path / "a.json"), str(b_out))
    assert table.code == 0, table.stderr
    assert "method-a" in table.stdout and "method-b" in table.stdout
    assert "psnr ↑" in table.stdout and "lpips ↓" in table.stdout
    md = run_cli("evaluate", "compare", str(tmp_path / "a.json"), str(b_out), "--markdown")
    rows = {line.split("|")[1].strip(): line for line in md.stdout.splitlines()[2:]}
    psnr_col = md.stdout.splitlines()[0].split("|").index(" psnr ")
    header = md.stdout.splitlines()[0].split("|")
    lpips_col = header.index(" lpips ")
    assert rows["method-a"].split("|")[psnr_col].strip().startswith("**")  # higher PSNR
    assert not rows["method-b"].split("|")[psnr_col].strip().startswith("**")
    assert rows["method-b"].split("|")[lpips_col].strip().startswith("**")  # lower LPIPS


@pytest.mark.slow
def test_size_mismatch_is_resized_with_a_note_or_refused_with_strict(tiny_pack, clips, tmp_path):
    ok = _eval(tiny_pack, str(clips["small"]), str(clips["ref"]), "-m", "psnr,ssim", "--json")
    assert ok.code == 0, ok.stderr
    assert "sizes differ (48x48 vs the reference's 64x64)" in ok.stderr
    assert "lengths differ" in ok.stderr  # 10 vs 12 frames: the shorter is used
    report = json.loads(ok.stdout)
    assert report["videos"][0]["frames"] == 10 and report["videos"][0]["size"] == [64, 64]
    strict = _eval(tiny_pack, str(clips["small"]), str(clips["ref"]), "-m", "psnr", "--strict")
    assert_user_error(strict, "small.mp4", "48x48", "--strict")


def test_missing_reference_and_unreadable_files(tiny_pack, clips, tmp_path):
    missing = _eval(tiny_pack, str(clips["gen"]), str(tmp_path / "nope.mp4"), inprocess=True)
    assert_user_error(missing, "nope.mp4", "not found")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01 not a video" * 100)
    out = tmp_path / "r.json"
    unreadable = _eval(
        tiny_pack, str(bad), str(clips["ref"]), "-m", "psnr", "--out", str(out), inprocess=True
    )
    assert_user_error(unreadable, "bad.mp4")
    assert not out.exists()


def test_video_without_audio_for_lse_and_named_metric_without_model(tiny_pack, clips):
    silent = _eval(
        tiny_pack, str(clips["silent"]), "-m", "lse", "--face-crop", "aligned", inprocess=True
    )
    assert_user_error(silent, "silent.mp4", "no audio track")
    lmd = _eval(tiny_pack, str(clips["gen"]), str(clips["ref"]), "-m", "lmd", inprocess=True)
    assert_user_error(lmd, "2DFAN4", "talkcli weights fetch fan-2d")


@pytest.mark.slow
def test_batch_reports_bad_items_and_finishes_the_rest(tiny_pack, clips, tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    shutil.copy(clips["gen"], gen / "a.mp4")
    shutil.copy(clips["ref"], ref / "a.mp4")
    shutil.copy(clips["gen2"], gen / "b.mp4")  # no reference b.*
    shutil.copy(clips["silent"], gen / "c.mp4")
    shutil.copy(clips["ref"], ref / "c.mp4")
    out = tmp_path / "r.json"
    result = _eval(tiny_pack, str(gen), str(ref), "-m", "psnr,cpbd", "--out", str(out))
    assert_user_error(result, "1 of 3 video(s) failed", "b.mp4", "has no reference")
    report = json.loads(out.read_text())
    status = {v["name"]: v["status"] for v in report["videos"]}
    assert status == {"a": "ok", "b": "failed", "c": "ok"}
    assert report["aggregates"]["psnr"]["n"] == 24  # a and c, 12 frames each


@pytest.mark.slow
def test_lse_with_detected_face_crops(tiny_pack, clips, shared_fixtures, tmp_path):
    """--face-crop detect with the real MTCNN weights from ../shared/fixtures."""
    extra = tmp_path / "weights"
    shutil.copytree(shared_fixtures / "mtcnn", extra / "mtcnn")
    result = run_cli(
        "--weights-dir", str(tiny_pack), "evaluate", str(clips["gen"]), "-m", "lse",
        "--face-crop", "detect", "--threads", "1", "--json",
        env={"TALKCLI_WEIGHTS": str(extra)},
    )  # fmt: skip
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["config"]["lse_crop"] == "detect"
    values = report["videos"][0]["values"]
    assert np.isfinite(values["lse_d"]) and values["lse_c"] >= 0
    assert -15 <= values["lse_offset"] <= 15
    assert not report["videos"][0]["notes"]  # a face in every frame


def test_help_describes_both_commands():
    result = run_cli_inprocess("evaluate", "--help")
    assert result.code == 0
    assert "run" in result.stdout and "compare" in result.stdout
    run_help = run_cli_inprocess("evaluate", "run", "--help")
    for option in ("--suite", "--pairs", "--metrics", "--resolution", "--crop", "--face-crop"):
        assert option in run_help.stdout
    nothing = run_cli_inprocess("evaluate", "--crop", "aligned")
    assert_user_error(nothing, "nothing to evaluate")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (
            '{"kind": "talkcli-evaluate", "aggregates": {"psnr": '
            + '{"a": ' * 5000
            + "1"
            + "}" * 5000
            + "}}",
            "nested too deeply",
        ),  # fmt: skip
        ('{"kind": "talkcli-evaluate", "aggregates": {"psnr": {"mean": NaN}}}', "NaN"),
        ("[1, 2]", "not a talkcli evaluate report"),
        ('{"kind": "talkcli-evaluate"}', "has no aggregates"),
        ('{"kind": "talkcli-evaluate", "aggregates": {"psnr": [1]}}', "aggregates.psnr is not"),
        ('{"kind": "talkcli-evaluate", "aggregates": {"psnr": {"mean": "x"}}}', "not a number"),
        ('{"kind": "talkcli-evaluate", "config": [], "aggregates": {}}', "config is not"),
        ('{"kind": "talkcli-evaluate", "name": [], "aggregates": {}}', "name is not"),
        ('{"kind": "talkcli-evaluate", "config": {"fps": {}}, "aggregates": {}}', "config.fps"),
    ],
)
def test_compare_refuses_malformed_reports_in_one_line(tmp_path, text, needle):
    """Issue 20 #8: a report is untrusted input (a deeply nested file was a RecursionError)."""
    good = tmp_path / "good.json"
    good.write_text(
        '{"kind": "talkcli-evaluate", "name": "a", "aggregates": {"psnr": {"mean": 1}}}'
    )
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    result = run_cli_inprocess("evaluate", "compare", str(bad), str(good))
    assert_user_error(result, "bad.json", needle)
    assert run_cli_inprocess("evaluate", "compare", str(good), str(good)).code == 0


def _truncated_copy(src, dest):
    """The first 40% of a real talkcli mp4: the header lists frames the file no longer holds."""
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * 0.4)])
    return dest


def test_truncated_video_and_too_short_lse_are_one_line_errors(tiny_pack, clips, tmp_path):
    """Issue 20 #7: both were `internal error: ValueError: empty face crop`, exit 1."""
    from .metrics_support import clip_frames, write_clip

    long = write_clip(tmp_path / "long.mp4", clip_frames(n=40))
    cut = _truncated_copy(long, tmp_path / "cut.mp4")
    for args in ([str(cut)], [str(cut), str(long), "-m", "psnr"], [str(long), str(cut)]):
        result = _eval(tiny_pack, *args, "--face-crop", "aligned", inprocess=True)
        assert_user_error(result, "cut.mp4", "is truncated", "re-encode it")
    one = write_clip(tmp_path / "one.mp4", clip_frames(n=1))
    named = _eval(tiny_pack, str(one), "-m", "lse", "--face-crop", "aligned", inprocess=True)
    assert_user_error(named, "one.mp4", "1 frame(s) at 25 fps", "at least 7")
    short = _eval(
        tiny_pack, str(clips["gen"]), "-m", "lse", "--max-frames", "4", "--face-crop", "aligned",
        inprocess=True,
    )  # fmt: skip
    assert_user_error(short, "gen.mp4", "4 frame(s) at 25 fps (after --max-frames)")
    both = _eval(
        tiny_pack, str(one), str(one), "-m", "psnr,cpbd,lse", "--face-crop", "aligned",
        inprocess=True,
    )  # fmt: skip
    assert_user_error(both, "one.mp4", "at least 7")
    unnamed = _eval(tiny_pack, str(one), "--face-crop", "aligned", "--json", inprocess=True)
    assert unnamed.code == 0, unnamed.stderr  # not asked for by name: skipped with a note
    video = json.loads(unnamed.stdout)["videos"][0]
    assert "lse_d" not in video["values"] and "LSE skipped" in video["notes"][0]


def test_batch_with_a_truncated_and_a_one_frame_video_finishes_the_rest(tiny_pack, clips, tmp_path):
    from .metrics_support import clip_frames, write_clip

    gen = tmp_path / "gen"
    gen.mkdir()
    shutil.copy(clips["gen"], gen / "a.mp4")
    _truncated_copy(write_clip(tmp_path / "long.mp4", clip_frames(n=40)), gen / "b.mp4")
    write_clip(gen / "c.mp4", clip_frames(n=1))
    out = tmp_path / "r.json"
    result = _eval(
        tiny_pack, str(gen), "-m", "lse", "--face-crop", "aligned", "--out", str(out),
        inprocess=True,
    )  # fmt: skip
    assert_user_error(result, "2 of 3 video(s) failed", "b.mp4", "is truncated")
    videos = {v["name"]: v for v in json.loads(out.read_text())["videos"]}
    assert videos["a"]["status"] == "ok" and np.isfinite(videos["a"]["values"]["lse_d"])
    assert "is truncated" in videos["b"]["error"] and "at least 7" in videos["c"]["error"]


def test_resolution_whose_working_memory_passes_the_limit_is_refused_up_front(
    tiny_pack, clips, monkeypatch
):
    """Issue 20 #9: --resolution 4096 on 64x64 videos tried to allocate past 10 GB. Refused from
    the estimate before any frame is decoded (a decode would fail the test)."""
    from talkcli.io import video

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded frames before refusing")

    monkeypatch.setattr(video.VideoReader, "read_batch", no_decoding)
    result = _eval(tiny_pack, str(clips["gen"]), str(clips["ref"]), "--resolution", "4096",
                   inprocess=True)  # fmt: skip
    assert_user_error(result, "gen.mp4", "4096x4096 in batches of 8", "GiB", "limit of 8 GiB",
                      "--resolution")  # fmt: skip
    fewer = _eval(tiny_pack, str(clips["gen"]), str(clips["ref"]), "-m", "psnr",
                  "--resolution", "4096", "--batch", "256", inprocess=True)  # fmt: skip
    assert_user_error(fewer, "in batches of 256", "pass --batch")


def test_eval_memory_estimate_grows_with_size_batch_and_metrics():
    from talkcli.metrics.evaluate import EvalConfig, eval_memory

    cfg = EvalConfig(batch=8)
    small = eval_memory((256, 256), ["psnr", "ssim"], cfg)
    assert eval_memory((512, 512), ["psnr", "ssim"], cfg) == 4 * small
    assert eval_memory((256, 256), ["psnr", "ssim", "lpips"], cfg) > small
    assert eval_memory((256, 256), ["lpips"], EvalConfig(lpips_net="vgg")) > eval_memory(
        (256, 256), ["lpips"], cfg
    )
    assert eval_memory((1024, 1024), ["psnr", "ssim", "lpips", "fid", "cpbd"], cfg) < 8 << 30


def test_lse_protocols_direct_and_syncnet_both_run_and_are_recorded(tiny_pack, tmp_path):
    """--lse-protocol syncnet reproduces syncnet_python's file round trips: other (finite)
    values than the direct crops; the protocol is in the report and `compare` flags a mix."""
    from .metrics_support import clip_frames, write_clip

    clip = write_clip(tmp_path / "clip.mp4", clip_frames(n=20))
    reports = {}
    for protocol in ("direct", "syncnet"):
        out = tmp_path / f"{protocol}.json"
        result = _eval(
            tiny_pack, str(clip), "-m", "lse", "--face-crop", "aligned", "--lse-protocol",
            protocol, "--out", str(out), inprocess=True,
        )  # fmt: skip
        assert result.code == 0, result.stderr
        reports[protocol] = json.loads(out.read_text())
        assert reports[protocol]["config"]["lse_protocol"] == protocol
        assert ("ffmpeg" in reports[protocol]["versions"]) == (protocol == "syncnet")
    direct, syncnet = (reports[p]["videos"][0]["values"] for p in ("direct", "syncnet"))
    assert np.isfinite([direct["lse_d"], direct["lse_c"], syncnet["lse_d"], syncnet["lse_c"]]).all()
    assert direct["lse_d"] != syncnet["lse_d"]
    comp = run_cli_inprocess(
        "evaluate", "compare", str(tmp_path / "direct.json"), str(tmp_path / "syncnet.json")
    )
    assert comp.code == 0 and "differ in lse_protocol" in comp.stderr
    help_text = run_cli_inprocess("evaluate", "run", "--help").stdout
    assert "--lse-protocol" in help_text and "syncnet" in help_text
    bad = _eval(tiny_pack, str(clip), "--lse-protocol", "jpeg", inprocess=True)
    assert bad.code == 2 and "--lse-protocol" in bad.stderr
