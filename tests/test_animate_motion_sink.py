"""The streaming stages of `animate` in their own homes: motion streams (audio, replayed
trajectory), the frame sink, the job's ExitStack, and the command calling the library."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter1d

from talkcli.animate import motion as mo
from talkcli.animate import trajectory as tr
from talkcli.animate.options import AnimateOptions
from talkcli.audio.features import mfcc_windows, n_frames
from talkcli.errors import OutputError
from talkcli.io.audio import DecodedAudio, load_audio
from talkcli.models.audio2latent import load_audio2latent
from talkcli.weights import registry


@pytest.fixture(scope="module")
def noise_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("motion") / "noise.wav"
    rng = np.random.default_rng(0)
    sf.write(path, (0.2 * rng.standard_normal(16000 + 321)).astype(np.float32), 16000)
    return path


# -- motion streams -----------------------------------------------------------------------------


def test_audio_motion_is_the_model_on_the_whole_audio(tiny_pack, noise_wav):
    model = load_audio2latent(registry.resolve("audio2latent", tiny_pack))
    w_id = np.random.default_rng(1).standard_normal((model.n_latent, 512)).astype(np.float32)
    windows = torch.from_numpy(mfcc_windows(load_audio(noise_wav), 25.0))[None]
    with torch.no_grad():
        whole, _ = model(windows, torch.from_numpy(w_id)[None])  # (1, T, n_latent, 512)
    with DecodedAudio(noise_wav) as audio:
        motion = mo.audio_motion(model, audio, noise_wav, w_id, AnimateOptions())
        w = np.concatenate(list(motion.chunks))
        d = np.concatenate(list(mo.audio_displacements(model, audio, w_id, 25.0)))
        assert motion.total == n_frames(audio.n_samples, 25.0) == len(w)
        assert (motion.soundtrack, motion.sound_seconds) == (noise_wav, audio.duration)
    assert not motion.trim_audio and motion.driving is None
    assert w.dtype == np.float32 and np.array_equal(w, w_id[None] + d)  # exactly w_I + d_t
    np.testing.assert_allclose(w, whole[0].numpy(), rtol=0, atol=2e-5)


def test_replay_motion_as_saved_or_reshaped_around_a_new_identity(tmp_path):
    rng = np.random.default_rng(2)
    w_file_id = rng.standard_normal((4, 8)).astype(np.float32)
    w = w_file_id + rng.standard_normal((30, 4, 8)).astype(np.float32)
    writer = tr.TrajectoryWriter(tmp_path / "t.npz")
    writer.write(w)
    writer.close(w_file_id, 25.0)
    new_id = np.ones((4, 8), np.float32)
    with tr.TrajectoryFile(tmp_path / "t.npz") as traj:
        same = mo.replay_motion(traj, tmp_path / "t.npz", new_id, AnimateOptions())
        assert same.total == 30 and np.array_equal(np.concatenate(list(same.chunks)), w)
        opts = AnimateOptions(smooth=2.0, motion_scale=0.5)
        moved = mo.replay_motion(traj, tmp_path / "t.npz", new_id, opts, soundtrack=tmp_path)
        out = np.concatenate(list(moved.chunks))
    assert moved.soundtrack == tmp_path and moved.sound_seconds is None
    smooth = gaussian_filter1d((w - w_file_id).astype(np.float64), 2.0, axis=0, mode="nearest")
    np.testing.assert_allclose(out, new_id + 0.5 * smooth, rtol=0, atol=1e-6)


# -- the frame sink -----------------------------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.closed = self.aborted = False

    def write(self, batch: np.ndarray) -> None:
        self.batches.append(batch.copy())

    def close(self) -> Path:
        self.closed = True
        return Path("out.mp4")

    def abort(self) -> None:
        self.aborted = True


def _sink_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "talkcli-frame-sink"]


def test_video_sink_closes_the_writer_after_the_last_frame_or_aborts_it_on_error():
    from talkcli.animate.sink import VideoSink

    frames = np.zeros((3, 2, 2, 3), np.uint8)
    writer = _Writer()
    with VideoSink(writer) as sink:
        sink.put(frames)
        sink.put(frames)
        sink.close()  # draining twice is harmless
    assert writer.closed and not writer.aborted and sum(map(len, writer.batches)) == 6

    writer = _Writer()
    with pytest.raises(RuntimeError, match="renderer failed"):
        with VideoSink(writer) as sink:
            sink.put(frames)
            raise RuntimeError("renderer failed")
    assert writer.aborted and not writer.closed
    assert not sink._thread.is_alive()


@pytest.fixture
def job_files(tmp_path, noise_wav) -> tuple[Path, Path]:
    face = tmp_path / "face.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(face)
    return face, noise_wav


def _run_job(tmp_path: Path, tiny_pack: Path, face: Path, audio: Path):
    from talkcli.animate.cache import Cache
    from talkcli.animate.pipeline import Job, Models, Needs, animate_job, resolve_models

    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    options = AnimateOptions(aligned=True, batch_size=4)
    job = Job(out / "v.mp4", face, audio, save_trajectory=out / "t.npz", options=options)
    cache = Cache(tmp_path / "cache", enabled=False)
    paths = resolve_models(Needs.of([job]), weights_dir=tiny_pack)
    models = Models(paths, torch.device("cpu"), cache)
    return out, lambda: animate_job(job, models, cache)


def test_a_failing_render_closes_the_sink_and_leaves_no_file(
    tmp_path, tiny_pack, job_files, monkeypatch
):
    from talkcli.animate.render import FrameRenderer

    render = FrameRenderer.__call__
    calls = []

    def fail_on_the_third_batch(self, w):
        calls.append(len(w))
        if len(calls) == 3:
            raise RuntimeError("the generator ran out of memory")
        return render(self, w)

    monkeypatch.setattr(FrameRenderer, "__call__", fail_on_the_third_batch)
    out, run = _run_job(tmp_path, tiny_pack, *job_files)
    with pytest.raises(RuntimeError, match="out of memory"):
        run()
    assert list(out.iterdir()) == []  # no video, trajectory, manifest or temporary file
    assert not _sink_threads()


def test_a_failure_after_the_video_is_in_place_removes_it(
    tmp_path, tiny_pack, job_files, monkeypatch
):
    def no_space(path, data, **kwargs):
        raise OutputError(f"{path}: disk full while writing (free some space)")

    monkeypatch.setattr("talkcli.io.files.write_json_atomic", no_space)
    out, run = _run_job(tmp_path, tiny_pack, *job_files)
    with pytest.raises(OutputError, match="disk full"):
        run()
    assert list(out.iterdir()) == []  # the video and trajectory renamed into place are removed
    assert not _sink_threads()


# -- the command calls the library ---------------------------------------------------------------


def test_the_single_video_command_calls_the_library_animate(tmp_path, monkeypatch, capsys):
    from talkcli import cli
    from talkcli.animate import pipeline

    seen = {}

    def fake_animate(image, audio, out=None, options=None, **kwargs):
        seen.update(image=image, audio=audio, out=out, options=options, **kwargs)
        kwargs["progress"]("render", 1, 1)
        return pipeline.AnimateResult(
            Path("x.mp4"), Path("x.json"), 1, 25.0, 32, 32, 0.04, {"total": 0.1}, {}
        )

    monkeypatch.setattr(pipeline, "animate", fake_animate)
    code = cli.main(
        ["--device", "cpu", "animate", "-i", "f.png", "-a", "s.wav", "--smooth", "2", "--no-cache"]
    )
    assert code == 0 and capsys.readouterr().out.strip() == "x.mp4"
    assert (seen["image"], seen["audio"], seen["out"]) == (Path("f.png"), Path("s.wav"), None)
    assert seen["options"].smooth == 2.0 and seen["use_cache"] is False
    assert seen["device"] == "cpu"
