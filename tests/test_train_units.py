"""Pieces of ``talkcli train``: shards and ranks, speakers and splits, the dataset files, PCA,
clip sampling (figure 4.8) and the training plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from talkcli.distributed import (
    DistEnv,
    parse_shard,
    resolve_shard,
    shard_from_env,
    split_items,
    torchrun_env,
)
from talkcli.errors import InputFileError, UserError
from talkcli.train.dataset import NpyAppender, VideoEntry, shard_paths
from talkcli.train.fit import ClipDataset, identity_margin, mfcc_statistics
from talkcli.train.pca import fit_pca, load_pca, save_pca
from talkcli.train.prepare import choose_holdout, plan_items, speaker_of

# -- shards and ranks ----------------------------------------------------------------------------


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


def test_shard_from_environment_variables():
    assert shard_from_env({}) is None
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "3"}) == (1, 3)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: no sharding
    array = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert shard_from_env(array) == (2, 4)  # --array=5-8
    assert shard_from_env({"SLURM_PROCID": "2", "SLURM_NTASKS": "8"}) == (2, 8)
    # torchrun wins over Slurm when both are set (torchrun inside an allocation)
    assert shard_from_env({**array, "RANK": "0", "WORLD_SIZE": "2"}) == (0, 2)
    with pytest.raises(UserError, match="SLURM_ARRAY_TASK_ID"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})
    with pytest.raises(UserError, match="not an integer"):
        shard_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    assert resolve_shard("1/2", {"RANK": "0", "WORLD_SIZE": "4"}) == (1, 2)  # --shard wins
    assert resolve_shard(None, {}) == (0, 1)


def test_split_items_partitions_in_a_fixed_order():
    items = list(range(11))
    parts = [split_items(items, k, 3) for k in range(3)]
    assert parts[0] == [0, 3, 6, 9] and parts[2] == [2, 5, 8]
    assert sorted(sum(parts, [])) == items
    with pytest.raises(ValueError):
        split_items(items, 3, 3)


def test_torchrun_env():
    assert torchrun_env({}) == DistEnv(0, 1, 0)
    env = torchrun_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert env == DistEnv(3, 4, 1) and env.distributed and not env.is_main


# -- speakers and splits -------------------------------------------------------------------------


def test_speaker_from_folder_level_or_regex():
    p = Path("/corpora/tcd/volunteers/01M/straightcam/sa1.mp4")
    assert speaker_of(p) == "straightcam"
    assert speaker_of(p, level=2) == "01M"
    assert speaker_of(p, level=0) == "sa1"
    assert speaker_of(Path("/hdtf/WDA_BarackObama_000.mp4"), regex=r"/(\w+?)_\d+\.mp4$") == (
        "WDA_BarackObama"
    )
    with pytest.raises(InputFileError, match="does not match"):
        speaker_of(p, regex="nomatch")


def test_holdout_speakers_by_count_percentage_or_names():
    names = [f"s{i}" for i in range(10)]
    two = choose_holdout(names, "2", seed=0)
    assert sum(v == "val" for v in two.values()) == 2
    assert two == choose_holdout(names, "2", seed=0)  # every process agrees
    assert sum(v == "val" for v in choose_holdout(names, "25%").values()) == 3  # rounded up
    listed = choose_holdout(names, "s1, s4")
    assert [k for k, v in listed.items() if v == "val"] == ["s1", "s4"]
    assert set(choose_holdout(names, "0").values()) == {"train"}
    assert set(choose_holdout(["only"], "10%").values()) == {"train"}  # one speaker: keep it
    with pytest.raises(UserError, match="unknown speaker"):
        choose_holdout(names, "s1,zz")
    with pytest.raises(UserError, match="at least one"):
        choose_holdout(names, "10")


def test_plan_items_unique_ids_and_audio_pairing(tmp_path):
    videos = []
    for spk in ("s1", "s2"):
        (tmp_path / "v" / spk).mkdir(parents=True)
        for name in ("a.mpg", "b.mpg"):
            f = tmp_path / "v" / spk / name
            f.write_bytes(b"x")
            videos.append(f)
    (tmp_path / "v" / "s1" / "sub").mkdir()
    dup = tmp_path / "v" / "s1" / "sub" / "a.mpg"  # speaker "sub"
    dup.write_bytes(b"x")
    audio = tmp_path / "audio"
    (audio / "s1").mkdir(parents=True)
    (audio / "s1" / "a.wav").write_bytes(b"x")
    (audio / "b.flac").write_bytes(b"x")
    items = plan_items(videos + [dup], audio_dir=audio)
    ids = [it.id for it in items]
    assert len(set(ids)) == len(ids) and ids[0] == "s1__a"
    by_path = {it.path: it for it in items}
    assert by_path[videos[0]].audio == audio / "s1" / "a.wav"
    assert by_path[videos[1]].audio == audio / "b.flac"
    assert by_path[videos[2]].speaker == "s2"


# -- dataset files -------------------------------------------------------------------------------


def test_npy_appender_streams_rows(tmp_path):
    path = tmp_path / "x.npy"
    app = NpyAppender(path, (3, 4), np.float16)
    blocks = [np.random.default_rng(i).normal(size=(n, 3, 4)) for i, n in enumerate((5, 1, 7))]
    for b in blocks:
        app.append(b)
    app.close()
    loaded = np.load(path, mmap_mode="r")
    assert loaded.shape == (13, 3, 4) and loaded.dtype == np.float16
    np.testing.assert_array_equal(loaded, np.concatenate(blocks).astype(np.float16))


def fake_video(root: Path, vid: str, frames: int, seed: int = 0) -> VideoEntry:
    """A prepared video without encoding: random codes and MFCC rows in the dataset layout."""
    rng = np.random.default_rng(seed)
    files = shard_paths(root, vid)
    files.w.parent.mkdir(parents=True, exist_ok=True)
    codes = rng.normal(size=(frames, 2, 512)).astype(np.float32)
    ref = codes[:4].mean(0)
    np.save(files.w, (codes - ref).astype(np.float16))
    np.save(files.ref, ref)
    np.save(files.mfcc, rng.normal(size=(frames * 4 + 3, 12)).astype(np.float32))
    return VideoEntry(vid, "spk", "train", frames, files)


def test_clips_follow_figure_4_8(tmp_path):
    videos = [fake_video(tmp_path, "a", 40), fake_video(tmp_path, "b", 11, seed=1)]
    ds = ClipDataset(videos, seq_len=8, fps=25.0, seed=0, train=True)
    assert identity_margin(25.0) == 3 and identity_margin(30.0) == 4
    assert ds.too_short == ["b"]  # 8 frames + 3 on each side leave no identity frame
    assert [s for v, s in ds.items] == [0, 8, 16, 24, 32]
    codes = videos[0].codes()
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            windows, target, identity = (t.numpy() for t in ds[i])
            assert windows.shape == (8, 12, 28) and target.shape == (8, 2, 512)
            start = int(np.argmin(np.abs(codes - target[0]).sum(axis=(1, 2))))
            np.testing.assert_allclose(target, codes[start : start + 8], atol=1e-2)
            ident = int(np.argmin(np.abs(codes - identity).sum(axis=(1, 2))))
            assert ident < start - 3 or ident > start + 7 + 3  # outside the audio windows
            from talkcli.audio.features import windows_from_mfcc

            expected = windows_from_mfcc(videos[0].mfcc(), range(start, start + 8), 25.0)
            np.testing.assert_array_equal(windows, expected)
    val = ClipDataset(videos, seq_len=8, fps=25.0, seed=0, train=False)
    a, b = val[1], val[1]
    assert all((x == y).all() for x, y in zip(a, b, strict=True))  # fixed clips and identities


def test_codes_come_back_from_float16_offsets(tmp_path):
    video = fake_video(tmp_path, "a", 20)
    codes = video.codes()
    assert codes.dtype == np.float32 and codes.shape == (20, 2, 512)
    np.testing.assert_array_equal(video.codes([3, 5]), codes[[3, 5]])
    np.testing.assert_array_equal(video.codes(4), codes[4])


def test_mfcc_statistics(tmp_path):
    videos = [fake_video(tmp_path, "a", 10), fake_video(tmp_path, "b", 30, seed=2)]
    rows = np.concatenate([np.asarray(v.mfcc(), np.float64) for v in videos])
    mean, std = mfcc_statistics(videos)
    np.testing.assert_allclose(mean, rows.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, rows.std(0), rtol=1e-8)


# -- PCA -----------------------------------------------------------------------------------------


def _codes(n: int, d: int = 512, rank: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(3, 0.5, rank)[:, None]
    return (rng.normal(size=(n, rank)) @ (scales * rng.normal(size=(rank, d)))) + 2.0


@pytest.mark.parametrize("n", [100, 700])  # Gram route (N <= D) and covariance route (N > D)
def test_pca_matches_numpy_svd_in_chunks(n):
    x = _codes(n)
    chunks = (x[i : i + 64] for i in range(0, n, 64))
    pca = fit_pca(chunks, 4, n_total=n)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    np.testing.assert_allclose(pca.mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(pca.explained_variance, s[:4] ** 2 / (n - 1), rtol=1e-6)
    np.testing.assert_allclose(np.abs(pca.basis @ vt[:4].T), np.eye(4), atol=1e-4)
    np.testing.assert_allclose(pca.total_variance, (s**2).sum() / (n - 1), rtol=1e-8)
    signs = pca.basis[np.arange(4), np.argmax(np.abs(pca.basis), axis=1)]
    assert (signs > 0).all()  # fixed sign convention


def test_pca_caps_components_at_what_the_data_supports(capsys):
    pca = fit_pca(_codes(50, rank=6), 40)
    assert pca.k == 6
    assert "40 components asked, the data supports 6" in capsys.readouterr().err
    with pytest.raises(UserError, match="do not vary"):
        fit_pca(np.ones((5, 512)), 3)


def test_pca_file_round_trip_and_errors(tmp_path):
    pca = fit_pca(_codes(80), 5)
    path = save_pca(tmp_path / "p.npz", pca)
    back = load_pca(path, latent_dim=512)
    np.testing.assert_array_equal(back.basis, pca.basis)
    assert back.k == 5 and back.n_samples == 80
    with pytest.raises(InputFileError, match="codes have 1024"):
        load_pca(path, latent_dim=1024)
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean=pca.mean, basis=pca.basis * 2)
    with pytest.raises(InputFileError, match="not orthonormal"):
        load_pca(bad)
    np.savez(bad, mean=pca.mean, basis=np.full_like(pca.basis, np.nan))
    with pytest.raises(InputFileError, match="not a finite"):
        load_pca(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match="not a PCA .npz"):
        load_pca(junk)


# -- plots ---------------------------------------------------------------------------------------


def test_training_and_pca_plots(tmp_path):
    from PIL import Image

    from talkcli.plots import plot_pca_variance, plot_training_curves

    history = [
        {"epoch": e, "train_loss": 10 / e, "val_loss": 12 / e + 0.1 * e, "lr": 2e-4}
        for e in range(1, 8)
    ]
    curves = plot_training_curves(tmp_path / "curves.png", history)
    variance = plot_pca_variance(tmp_path / "var.svg", np.array([0.5, 0.3, 0.1, 0.05, 0.01]))
    assert Image.open(curves).size == (720, 480)
    assert variance.read_text().lstrip().startswith("<?xml")
    with pytest.raises(UserError, match="unknown picture format"):
        plot_training_curves(tmp_path / "curves.txt", history)


def test_index_lists_every_video_with_status(tmp_path):
    from talkcli.io.files import write_json_atomic as write_json
    from talkcli.train.dataset import build_index

    files = shard_paths(tmp_path, "a")
    files.record.parent.mkdir(parents=True)
    write_json(files.record, {"id": "a", "speaker": "s1", "status": "ok", "frames": 10})
    failed = {"id": "b", "speaker": "s2", "status": "failed", "message": "x: has no audio"}
    write_json(shard_paths(tmp_path, "b").record, failed)
    planned = [{"id": i, "source": f"{i}.mp4", "speaker": s} for i, s in
               (("a", "s1"), ("b", "s2"), ("c", "s2"))]  # fmt: skip
    index = build_index(tmp_path, {"fps": 25.0, "n_latent": 2}, {"s1": "train", "s2": "val"},
                        planned)  # fmt: skip
    status = {v["id"]: (v["status"], v["split"]) for v in index["videos"]}
    assert status == {"a": ("ok", "train"), "b": ("failed", "val"), "c": ("pending", "val")}
    assert index["summary"]["frames"] == 10 and index["summary"]["train_frames"] == 10
    assert json.loads(json.dumps(index)) == index


def test_library_callers_get_the_cli_ranges():
    from talkcli.train.fit import FitConfig
    from talkcli.train.prepare import PrepareConfig

    with pytest.raises(UserError, match="--lr nan"):
        FitConfig(lr=float("nan")).check()
    with pytest.raises(UserError, match="--seq-len 0"):
        FitConfig(seq_len=0).check()
    with pytest.raises(UserError, match="--arch"):
        FitConfig(arch="huge").check()
    with pytest.raises(UserError, match="--fps 500"):
        PrepareConfig(fps=500).check()
    with pytest.raises(UserError, match="even"):
        PrepareConfig(align_size=255).check()


# -- the loss per clip (docs/train.md: 250 * sum_t MSE + lpips_weight * sum_t LPIPS) ---------------


class _FakeRenderer:
    """LPIPS stand-in: per pair, the mean absolute difference of the codes; counts its pairs."""

    def __init__(self) -> None:
        self.pairs = 0

    def distance(self, w_pred, w_true):
        self.pairs += len(w_pred)
        return (w_pred - w_true).abs().flatten(1).mean(1)  # (N,)


def _clip_codes(b: int = 3, length: int = 5, n: int = 4, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    w_true = torch.randn(b, length, n, 512, generator=gen)
    w_pred = w_true + 0.3 * torch.randn(b, length, n, 512, generator=gen)
    return w_pred, w_true


def _reference_latent(w_pred, w_true) -> float:
    """mean over clips of sum over frames of the MSE over one code's n x 512 values (float64)."""
    d = (w_pred.double() - w_true.double()).numpy()
    return float(np.mean([sum(np.mean(frame**2) for frame in clip) for clip in d]))


def test_clip_losses_latent_term_is_250_times_the_summed_mse():
    from talkcli.train.fit import FitConfig, clip_losses

    w_pred, w_true = _clip_codes()
    loss, latent, lp = clip_losses(w_pred, w_true, FitConfig(), renderer=None)
    expected = _reference_latent(w_pred, w_true)
    assert float(latent) == pytest.approx(expected, rel=1e-5)
    assert float(lp) == 0.0  # no renderer: no perceptual term, whatever --lpips-weight says
    assert float(loss) == pytest.approx(250 * expected, rel=1e-5)
    # the literal sum of squares over the code's values is --latent-weight 250 * n * 512
    n_values = w_pred.shape[2] * w_pred.shape[3]
    summed, _, _ = clip_losses(w_pred, w_true, FitConfig(latent_weight=250.0 * n_values), None)
    d = (w_pred.double() - w_true.double()).numpy()
    literal = 250 * float(np.mean([(clip**2).sum() for clip in d]))
    assert float(summed) == pytest.approx(literal, rel=1e-5)


def test_clip_losses_lpips_term_sums_every_frame_with_its_weight():
    from talkcli.train.fit import FitConfig, clip_losses

    w_pred, w_true = _clip_codes()
    b, length = w_pred.shape[:2]
    renderer = _FakeRenderer()
    cfg = FitConfig(latent_weight=250.0, lpips_weight=0.5)
    loss, latent, lp = clip_losses(w_pred, w_true, cfg, renderer)
    per_frame = (w_pred - w_true).abs().mean(dim=(2, 3)).double().numpy()  # (B, L)
    assert renderer.pairs == b * length
    assert float(lp) == pytest.approx(per_frame.sum(1).mean(), rel=1e-5)
    assert float(loss) == pytest.approx(250 * float(latent) + 0.5 * float(lp), rel=1e-6)
    # --lpips-weight 0 never renders
    renderer.pairs = 0
    loss0, _, lp0 = clip_losses(w_pred, w_true, FitConfig(lpips_weight=0.0), renderer)
    assert renderer.pairs == 0 and float(lp0) == 0.0
    assert float(loss0) == pytest.approx(250 * float(latent), rel=1e-6)


def test_clip_losses_lpips_frames_renders_k_random_frames_scaled_to_the_clip():
    import torch

    from talkcli.train.fit import FitConfig, clip_losses

    w_pred, w_true = _clip_codes(b=4, length=6)
    b, length, k = 4, 6, 2
    renderer = _FakeRenderer()
    cfg = FitConfig(lpips_frames=k)
    _, _, lp = clip_losses(w_pred, w_true, cfg, renderer, torch.Generator().manual_seed(7))
    assert renderer.pairs == b * k
    per_frame = (w_pred - w_true).abs().mean(dim=(2, 3)).double().numpy()  # (B, L)
    gen = torch.Generator().manual_seed(7)  # the same draws: one permutation per clip
    picks = [torch.randperm(length, generator=gen)[:k].numpy() for _ in range(b)]
    expected = np.mean([per_frame[i, p].sum() for i, p in enumerate(picks)]) * length / k
    assert float(lp) == pytest.approx(expected, rel=1e-5)
    # the same generator state draws the same frames; more frames than the clip means all
    again = clip_losses(w_pred, w_true, cfg, renderer, torch.Generator().manual_seed(7))[2]
    assert float(again) == float(lp)
    _, _, lp_all = clip_losses(w_pred, w_true, FitConfig(lpips_frames=50), _FakeRenderer())
    assert float(lp_all) == pytest.approx(per_frame.sum(1).mean(), rel=1e-5)


def test_planning_100k_videos(tmp_path):
    """100,000 inputs (issue 20): ids, speakers, the split, this shard's share and the index
    plan without touching the files (planning lists; probing happens per video, in the work)."""
    from talkcli.distributed import split_items
    from talkcli.train.dataset import build_index

    videos = [Path(f"/corpus/spk{i // 100:04d}/v{i % 100:03d}.mp4") for i in range(100_000)]
    items = plan_items(videos)
    assert len({it.id for it in items}) == 100_000
    assert items[12_345].speaker == "spk0123" and items[12_345].id == "spk0123__v045"
    speakers = choose_holdout([it.speaker for it in items], "10%", seed=0)
    assert sum(s == "val" for s in speakers.values()) == 100  # of 1000 speakers
    mine = split_items(items, 3, 8)
    assert len(mine) == 12_500 and mine[0] is items[3]
    index = build_index(tmp_path, {"fps": 25.0}, speakers, [it.plan() for it in items])
    assert index["summary"]["pending"] == 100_000


def test_collect_videos_lists_folders_and_globs_in_path_order(tmp_path, monkeypatch):
    from talkcli.guards import Limits
    from talkcli.train import prepare

    names = ["a/x.mp4", "a-b/y.MP4", "a/sub/z.mkv", "a/notes.txt", "b/w.mov"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()  # empty: listing never opens a file
    (tmp_path / "b" / "link.mp4").symlink_to(tmp_path / "a" / "x.mp4")  # the same video twice
    (tmp_path / "linked").symlink_to(tmp_path / "a", target_is_directory=True)  # not followed
    expected = sorted(
        p.resolve() for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".txt"
    )
    got = prepare.collect_videos([tmp_path])
    assert got == list(dict.fromkeys(expected)) and len(got) == 4
    assert prepare.collect_videos([str(tmp_path / "a*" / "*.mp4")]) == [
        tmp_path.resolve() / "a" / "x.mp4"
    ]
    # over the limit: refused with the number, before any work
    monkeypatch.setattr(prepare, "LIMITS", Limits(dataset_videos=3))
    with pytest.raises(UserError, match="over 3 videos"):
        prepare.collect_videos([tmp_path])


def test_resume_bounds_the_sizes_in_a_state_file_before_building(tmp_path):
    """Issue 20 #4 for training state files: an absurd size is one line, nothing allocated."""
    from talkcli.errors import ModelFileError
    from talkcli.train.fit import _resumed_model

    state = tmp_path / "m.state.pt"
    state.write_bytes(b"x")
    config = {"n_components": 1e12, "n_latent": 8, "style_dim": 512, "arch_name": "tiny", "fps": 25}
    with pytest.raises(ModelFileError, match="n_components 1e\\+12 is outside"):
        _resumed_model(state, {"model_config": config}, None, tmp_path / "g.pt", None)
