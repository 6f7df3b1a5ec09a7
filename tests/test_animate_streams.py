"""`talkcli.animate` building blocks: streamed features, displacements, smoothing, trajectory
files, edits, the cache, job lists and shards. Library calls only (fast)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.ndimage import gaussian_filter1d

from talkcli.animate import motion as mo
from talkcli.animate import trajectory as tr
from talkcli.animate.batch import is_done, pair_jobs, read_jobs_csv
from talkcli.animate.cache import Cache, content_key
from talkcli.animate.options import AnimateOptions, Edit, parse_edit, parse_layers
from talkcli.animate.pipeline import Job, Needs, animate_device
from talkcli.audio.features import iter_mfcc_windows, mfcc_windows
from talkcli.distributed import split_items
from talkcli.errors import InputFileError, UserError
from talkcli.io.audio import DecodedAudio, load_audio
from talkcli.models.audio2latent import load_audio2latent
from talkcli.weights import registry


@pytest.fixture(scope="module")
def noise_wav(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    path = folder / "noise.wav"
    sf.write(path, (0.2 * rng.standard_normal(16000 * 2 + 321)).astype(np.float32), 16000)
    return path


@pytest.mark.parametrize("fps", [25.0, 29.97])
def test_streamed_windows_equal_the_whole_signal_windows(noise_wav, fps):
    reference = mfcc_windows(load_audio(noise_wav), fps)  # (T, 12, 28)
    with DecodedAudio(noise_wav) as audio:
        assert audio.n_samples == 16000 * 2 + 321
        for chunk in (1, 7, 500):
            out = np.concatenate(list(iter_mfcc_windows(audio, fps, chunk)))
            assert np.array_equal(out, reference), (chunk, fps)


def test_streaming_reads_bounded_segments(noise_wav, monkeypatch):
    """Each chunk reads only its own samples: memory does not grow with the audio's length."""
    sizes = []
    read = DecodedAudio.read
    monkeypatch.setattr(
        DecodedAudio, "read", lambda self, a, b: sizes.append(b - a) or read(self, a, b)
    )
    with DecodedAudio(noise_wav) as audio:
        list(iter_mfcc_windows(audio, 25.0, chunk_frames=10))  # 0.4 s per chunk
    # 2.02 s = 51 frames: 6 chunks, each reading its 10 frames (40 MFCC rows) + one window
    assert len(sizes) == 6 and max(sizes) <= 160 * (40 + 28) + 400


def test_chunked_displacements_equal_the_model_in_one_shot(tiny_pack, noise_wav):
    model = load_audio2latent(registry.resolve("audio2latent", tiny_pack))
    rng = np.random.default_rng(1)
    w_id = rng.standard_normal((model.n_latent, model.style_dim)).astype(np.float32)
    with DecodedAudio(noise_wav) as audio:
        d = np.concatenate(list(mo.audio_displacements(model, audio, w_id, 25.0, chunk_frames=8)))
    windows = torch.from_numpy(mfcc_windows(load_audio(noise_wav), 25.0))[None]
    with torch.no_grad():
        w, _ = model(windows, torch.from_numpy(w_id)[None])  # (1, T, n_latent, 512)
    assert d.shape == tuple(w.shape[1:])
    np.testing.assert_allclose(w_id[None] + d, w[0].numpy(), rtol=0, atol=2e-5)


@pytest.mark.parametrize("sigma", [0.7, 2.0, 6.0])
def test_streamed_smoothing_is_scipys_gaussian_filter(sigma):
    x = np.random.default_rng(2).standard_normal((41, 3, 5)).astype(np.float32)
    reference = gaussian_filter1d(x.astype(np.float64), sigma, axis=0, mode="nearest")
    for size in (1, 4, 41):
        chunks = [x[i : i + size] for i in range(0, len(x), size)]
        out = np.concatenate(list(mo.smooth_stream(chunks, sigma)))
        np.testing.assert_allclose(out, reference, rtol=0, atol=1e-6)
    g = mo.GaussianStream(sigma)  # it holds at most 2 * radius frames
    g.push(x)
    assert len(g._buf) == 2 * g.radius


def test_compose_scale_smooth_and_edits():
    d = np.random.default_rng(3).standard_normal((9, 4, 8)).astype(np.float32)
    w_id = np.ones((4, 8), np.float32)
    same = np.concatenate(list(mo.compose([d[:5], d[5:]], w_id)))
    assert np.array_equal(same, w_id[None] + d)  # default: exactly w_I + d
    still = np.concatenate(list(mo.compose([d], w_id, motion_scale=0.0)))
    assert np.array_equal(still, np.broadcast_to(w_id, d.shape))
    offset = np.full((4, 8), 0.5, np.float32)
    moved = np.concatenate(list(mo.compose([d], w_id, motion_scale=2.0, offset=offset)))
    np.testing.assert_allclose(moved, w_id + 2 * d + 0.5, atol=1e-6)


def test_rebatch_keeps_frame_order_and_batch_boundaries():
    x = np.arange(23)[:, None].astype(np.float32)
    batches = list(mo.rebatch([x[:3], x[3:4], x[4:20], x[20:]], 5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert np.array_equal(np.concatenate(batches), x)


def test_trajectory_file_round_trip_and_keys(tmp_path):
    w = np.random.default_rng(4).standard_normal((13, 6, 8)).astype(np.float32)
    writer = tr.TrajectoryWriter(tmp_path / "t.npz")
    writer.write(w[:5])
    writer.write(w[5:])
    writer.close(w[0], 25.0)
    data = np.load(tmp_path / "t.npz")
    assert sorted(data.keys()) == ["fps", "w", "w_identity"]
    assert data["w"].dtype == np.float32 and data["w"].shape == (13, 6, 8)
    assert np.array_equal(data["w"], w) and float(data["fps"]) == 25.0
    traj = tr.TrajectoryFile(tmp_path / "t.npz")
    assert (traj.n_frames, traj.n_latent, traj.style_dim, traj.fps) == (13, 6, 8, 25.0)
    assert np.array_equal(np.concatenate(list(traj.chunks(4))), w)
    # an edited trajectory saved by numpy (compressed, float64) reads the same
    np.savez_compressed(tmp_path / "e.npz", w=w.astype(np.float64), w_identity=w[0], fps=25.0)
    assert np.array_equal(np.concatenate(list(tr.TrajectoryFile(tmp_path / "e.npz").chunks())), w)


def test_broken_trajectory_files_are_named(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(InputFileError, match="not an .npz trajectory"):
        tr.TrajectoryFile(tmp_path / "text.npz")
    np.savez(tmp_path / "nokey.npz", w=np.zeros((2, 3, 4), np.float32))
    with pytest.raises(InputFileError, match="lacks the key"):
        tr.TrajectoryFile(tmp_path / "nokey.npz")
    w = np.zeros((2, 3, 4), np.float32)
    w[1, 2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", w=w, w_identity=w[0] * 0, fps=25.0)
    with pytest.raises(InputFileError, match="NaN"):
        tr.TrajectoryFile(tmp_path / "nan.npz").check_values()


def test_edit_directions_and_layers(tmp_path):
    np.save(tmp_path / "w.npy", np.full((1, 8), 2.0, np.float32))  # InterFaceGAN-style (1, 512)
    np.savez(tmp_path / "wplus.npz", direction=np.arange(32, dtype=np.float32).reshape(4, 8))
    offset = mo.edit_offset(
        [Edit(tmp_path / "w.npy", 1.5), Edit(tmp_path / "wplus.npz", -1.0)], 4, 8, (1, 2)
    )
    expected = 3.0 - np.arange(32, dtype=np.float32).reshape(4, 8)
    expected[[0, 3]] = 0.0
    assert np.array_equal(offset, expected)
    np.save(tmp_path / "bad.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(InputFileError, match="3 rows"):
        mo.load_direction(tmp_path / "bad.npy", 4, 8)
    with pytest.raises(UserError, match="4 style layers"):
        mo.layer_mask((2, 9), 4)
    assert parse_edit("dir/smile.npy:-1.5") == Edit(Path("dir/smile.npy"), -1.5)
    assert (
        parse_edit("a:b.npy:2").strength == 2.0 and str(parse_edit("a:b.npy:2").path) == "a:b.npy"
    )
    assert parse_layers("3-7") == (3, 7) and parse_layers("4") == (4, 4)
    for bad in ("smile.npy", "smile.npy:x"):
        with pytest.raises(UserError, match="--edit"):
            parse_edit(bad)
    with pytest.raises(UserError, match="--edit-layers"):
        parse_layers("7-3")


def test_option_ranges_hold_for_library_callers():
    with pytest.raises(UserError, match=r"--smooth 1e\+09"):
        AnimateOptions(smooth=1e9).check()
    with pytest.raises(UserError, match="--motion-scale"):
        AnimateOptions(motion_scale=float("nan")).check()
    with pytest.raises(UserError, match="--dtype"):
        AnimateOptions(dtype="fp8").check()


def test_cache_keys_atomic_writes_and_damaged_entries(tmp_path):
    assert content_key("x", a=1, b=[2]) == content_key("x", b=[2], a=1)
    assert content_key("x", a=1) != content_key("y", a=1)
    cache = Cache(tmp_path / "c")
    key = content_key("identity", image="abc")
    payload = np.arange(1 << 16, dtype=np.float32)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, payload)

    threads = [
        threading.Thread(target=cache.store, args=("identity", key, ".npy", write))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = cache.lookup("identity", key, ".npy")
    assert np.array_equal(np.load(found), payload)
    assert [p.name for p in found.parent.iterdir()] == [found.name]  # no temporary left
    off = Cache(tmp_path / "c", enabled=False)
    assert off.lookup("identity", key, ".npy") is None
    assert off.store("identity", key, ".npy", write) is None
    # file hashes are remembered on disk and follow changes
    f = tmp_path / "model.bin"
    f.write_bytes(b"one")
    first = cache.file_sha256(f)
    assert Cache(tmp_path / "c").file_sha256(f) == first
    f.write_bytes(b"two!")
    assert Cache(tmp_path / "c").file_sha256(f) != first


def test_needs_follow_the_jobs(tmp_path):
    o = AnimateOptions()
    photo = Job(tmp_path / "o.mp4", image=tmp_path / "f.png", audio=tmp_path / "a.wav", options=o)
    assert Needs.of([photo]) == Needs(encoder=True, audio_model=True, detector=True)
    aligned = Job(photo.out, photo.image, photo.audio, options=AnimateOptions(aligned=True))
    assert Needs.of([aligned]) == Needs(encoder=True, audio_model=True)
    replay = Job(photo.out, audio=photo.audio, trajectory=tmp_path / "t.npz", options=o)
    assert Needs.of([replay]) == Needs()
    tuned = Job(photo.out, photo.image, photo.audio, options=AnimateOptions(tune=True))
    assert Needs.of([tuned]).lpips


def test_pairs_csv_rows_and_shards(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "aud").mkdir()
    for name in ("anna", "ben", "cleo"):
        (tmp_path / "img" / f"{name}.png").write_bytes(b"x")
    for name in ("anna", "ben", "dora"):
        (tmp_path / "aud" / f"{name}.wav").write_bytes(b"x")
    notes: list[str] = []
    paired = pair_jobs(tmp_path / "img", tmp_path / "aud", tmp_path, AnimateOptions(), notes=notes)
    assert [p.out.name for p in paired] == ["anna-anna.mp4", "ben-ben.mp4"]
    assert "cleo" in notes[0] and "dora" in notes[0]
    every = pair_jobs(
        tmp_path / "img", tmp_path / "aud", tmp_path, AnimateOptions(), all_pairs=True
    )
    assert len(every) == 9
    shards = [split_items(every, k, 4) for k in range(4)]
    assert sorted(p.index for s in shards for p in s) == list(range(9))

    csv_path = tmp_path / "jobs.csv"
    csv_path.write_text(
        "image,audio,out,motion_scale,paste_back\n"
        "img/anna.png,aud/anna.wav,out/a.mp4,0.5,yes\n"
        "img/ben.png,aud/ben.wav,,nan,\n"
        "img/cleo.png,aud/dora.wav,,,\n"
    )
    rows = read_jobs_csv(csv_path, tmp_path / "videos", AnimateOptions(smooth=2.0))
    assert rows[0].job.options.motion_scale == 0.5 and rows[0].job.options.paste_back
    assert rows[0].job.options.smooth == 2.0 and rows[0].out == tmp_path / "out" / "a.mp4"
    assert rows[1].job is None and "line 3" in rows[1].error and "--motion-scale" in rows[1].error
    assert rows[2].out == tmp_path / "videos" / "cleo-dora.mp4"
    bad = tmp_path / "bad.csv"
    bad.write_text("image,audio,speed\nx.png,y.wav,2\n")
    with pytest.raises(InputFileError, match="unknown column"):
        read_jobs_csv(bad, tmp_path, AnimateOptions())


def test_is_done_compares_the_manifest(tmp_path):
    job = Job(tmp_path / "v.mp4", image=tmp_path / "f.png", audio=tmp_path / "a.wav")
    assert not is_done(job)
    job.out.write_bytes(b"video")
    manifest = {
        "status": "ok",
        "inputs": {"image": {"path": str(job.image)}, "audio": {"path": str(job.audio)}},
        "options": job.options.shaping(),
    }
    job.manifest.write_text(json.dumps(manifest))
    assert is_done(job)
    other = Job(job.out, job.image, job.audio, options=AnimateOptions(motion_scale=0.5))
    assert not is_done(other)


def test_torchrun_ranks_stay_on_the_cpu_without_cuda():
    env = {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"}
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        assert animate_device("auto", env).index == 1 % torch.cuda.device_count()
    else:
        assert animate_device("auto", env).type == "cpu"


def test_frame_sink_keeps_order_with_paste_workers_and_reports_writer_errors():
    from talkcli.animate.sink import FrameSink

    class Writer:
        def __init__(self, fail_at=None):
            self.batches, self.fail_at = [], fail_at

        def write(self, batch):
            if len(self.batches) == self.fail_at:
                raise OSError("disk full")
            self.batches.append(batch.copy())

    frames = np.arange(40, dtype=np.uint8).reshape(10, 2, 2, 1).repeat(3, axis=-1)
    writer = Writer()
    sink = FrameSink(writer, paste=lambda f: f + 1, depth=1, paste_workers=3)
    for a in range(0, 10, 4):
        sink.put(frames[a : a + 4])
    sink.close()
    assert np.array_equal(np.concatenate(writer.batches), frames + 1) and sink.frames == 10

    failing = FrameSink(Writer(fail_at=1))
    with pytest.raises(OSError, match="disk full"):
        for _ in range(20):
            failing.put(frames[:2])
        failing.close()
