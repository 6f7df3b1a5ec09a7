"""``talkcli align`` end to end: images, landmark files, batches, errors, videos with smoothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest
import skimage.data

from talkcli.errors import ModelFileError, UserError
from talkcli.face import landmarks as lmk
from talkcli.face.align import interpolate_landmarks
from talkcli.face.ffhq import ffhq_quad, transform_points
from tests.conftest import assert_user_error, run_cli

ASTRO = skimage.data.astronaut()
ASTRO_5 = np.array(
    [[203.66, 101.18], [246.56, 103.66], [224.59, 128.07], [201.68, 140.27], [244.94, 141.56]]
)
MTCNN_SRC = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mtcnn"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    if not (MTCNN_SRC / "onet.npy").is_file():
        pytest.skip("../shared/fixtures/mtcnn is not present beside the checkout")
    root = tmp_path_factory.mktemp("weights")
    (root / "mtcnn").mkdir()
    for stage in ("pnet", "rnet", "onet"):
        (root / "mtcnn" / f"{stage}.npy").symlink_to(MTCNN_SRC / f"{stage}.npy")
    return root


@pytest.fixture
def isolated_env(tmp_path, monkeypatch) -> dict[str, str]:
    """No model files but what a test passes: empty cache and ./weights, no $TALKCLI_WEIGHTS."""
    monkeypatch.chdir(tmp_path)  # the CLI subprocesses inherit it
    return {"TALKCLI_WEIGHTS": "", "XDG_CACHE_HOME": str(tmp_path / "cache")}


def save_png(path: Path, img: np.ndarray) -> Path:
    PIL.Image.fromarray(img).save(path)
    return path


def sidecar(path: Path) -> dict:
    return json.loads(path.read_text())


# -- images --------------------------------------------------------------------------------------


def test_align_photo_with_mtcnn(tmp_path, weights, isolated_env):
    src = save_png(tmp_path / "astro.png", ASTRO)
    out = tmp_path / "out"
    res = run_cli(
        "--weights-dir", str(weights), "align", str(src), "--out", str(out), "--size", "256",
        env=isolated_env,
    )  # fmt: skip
    assert res.code == 0, res.stderr
    png, side = out / "astro.png", out / "astro.json"
    assert res.stdout.strip() == str(png)
    with PIL.Image.open(png) as im:
        assert im.size == (256, 256) and im.mode == "RGB"
        aligned = np.asarray(im)
    data = sidecar(side)
    for key in ("quad", "landmarks", "detector", "source", "source_size", "size", "matrix"):
        assert key in data, key
    assert data["detector"] == "mtcnn" and data["face_count"] == 1 and data["score"] > 0.99
    assert data["source_size"] == [512, 512] and data["size"] == 256
    assert Path(data["source"]) == src.resolve()
    lm = np.array(data["landmarks"])
    np.testing.assert_allclose(np.array(data["quad"]), ffhq_quad(lm), atol=1e-6)
    m = np.array(data["matrix"])
    np.testing.assert_allclose(transform_points(m, [[-0.5, -0.5]])[0], data["quad"][0], atol=1e-6)
    eyes = transform_points(np.linalg.inv(m), lm[:2])
    assert abs(eyes[0, 1] - eyes[1, 1]) < 0.02 * 256
    assert abs(eyes[:, 0].mean() - 127.5) < 0.02 * 256
    # the aligned PNG is the face: the centre is not flat
    assert aligned[96:160, 96:160].std() > 10


def test_landmarks_file_bypasses_detection(tmp_path, isolated_env):
    src = save_png(tmp_path / "face.png", ASTRO)
    rng = np.random.default_rng(0)
    lm68 = ASTRO_5[2] + rng.normal(0, 30, (68, 2))
    lm68[36:42] = ASTRO_5[0] + rng.normal(0, 3, (6, 2))
    lm68[42:48] = ASTRO_5[1] + rng.normal(0, 3, (6, 2))
    lm68[48], lm68[54] = ASTRO_5[3], ASTRO_5[4]
    lm_file = tmp_path / "lm.json"
    lm_file.write_text(json.dumps({"landmarks": lm68.tolist()}))
    out = tmp_path / "out"
    res = run_cli(
        "align", str(src), "--out", str(out), "--size", "128", "--landmarks", str(lm_file),
        "--fast-warp", env=isolated_env,
    )  # fmt: skip
    assert res.code == 0, res.stderr
    data = sidecar(out / "face.json")
    assert data["detector"] == "file" and data["warp"] == "fast"
    np.testing.assert_allclose(data["quad"], ffhq_quad(lm68), atol=1e-6)
    assert len(data["landmarks"]) == 68


def test_no_face_is_exit_2_naming_the_file(tmp_path, weights, isolated_env):
    src = save_png(tmp_path / "wall.png", np.full((200, 240, 3), 120, np.uint8))
    res = run_cli(
        "--weights-dir", str(weights), "align", str(src), "--out", str(tmp_path / "o"),
        env=isolated_env,
    )  # fmt: skip
    assert_user_error(res, "wall.png", "no face")
    assert not (tmp_path / "o" / "wall.png").exists()


def test_unreadable_image_is_exit_2(tmp_path, weights, isolated_env):
    src = tmp_path / "broken.png"
    src.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    res = run_cli(
        "--weights-dir", str(weights), "align", str(src), "--out", str(tmp_path / "o"),
        env=isolated_env,
    )  # fmt: skip
    assert_user_error(res, "broken.png")


def test_video_without_video_stream_is_exit_2(tmp_path, weights, isolated_env):
    from talkcli.io.audio import save_wav

    wav = tmp_path / "speech.wav"
    save_wav(wav, 0.1 * np.sin(np.arange(8000) / 5.0).astype(np.float32), 16000)
    fake = tmp_path / "talk.mp4"
    shutil.copy(wav, fake)
    res = run_cli(
        "--weights-dir", str(weights), "align", str(fake), "--out", str(tmp_path / "o"),
        env=isolated_env,
    )  # fmt: skip
    assert_user_error(res, "talk.mp4", "no video stream")


def test_missing_detector_weights_say_how_to_fetch(tmp_path, isolated_env):
    src = save_png(tmp_path / "astro.png", ASTRO)
    res = run_cli(
        "--weights-dir", str(tmp_path / "none"), "align", str(src), "--out", str(tmp_path / "o"),
        env=isolated_env,
    )  # fmt: skip
    assert_user_error(res, "talkcli weights fetch mtcnn-pnet")


def test_bad_options_are_one_line_errors(tmp_path, weights, isolated_env):
    src = save_png(tmp_path / "astro.png", ASTRO)
    res = run_cli(
        "--weights-dir", str(weights), "align", str(src), "--out", str(tmp_path / "o"),
        "--face-index", "3", "--size", "64", env=isolated_env,
    )  # fmt: skip
    assert_user_error(res, "astro.png", "--face-index 3", "1 face")
    res = run_cli(
        "align", str(src), "--out", str(tmp_path / "o"), "--detector", "dlib", env=isolated_env
    )
    assert_user_error(res, "--detector")


@pytest.mark.slow
def test_batch_records_failures_and_resumes(tmp_path, weights, isolated_env):
    folder = tmp_path / "in"
    folder.mkdir()
    save_png(folder / "a.png", ASTRO)
    save_png(folder / "b.jpg", np.ascontiguousarray(ASTRO[:, ::-1]))  # mirrored face
    save_png(folder / "c.png", np.full((100, 100, 3), 30, np.uint8))  # no face
    out = tmp_path / "out"
    args = ("--weights-dir", str(weights), "align", str(folder), "--out", str(out), "--size", "64")
    res = run_cli(*args, env=isolated_env)
    assert_user_error(res, "1 of 3", "c.png")
    assert "aligned 2, skipped 0, failed 1" in res.stderr
    assert (out / "a.png").is_file() and (out / "b.png").is_file() and not (out / "c.png").exists()
    status = {
        Path(i["source"]).name: i["status"] for i in sidecar(out / "align-status.json")["items"]
    }
    assert status == {"a.png": "ok", "b.jpg": "ok", "c.png": "failed"}
    mtime = (out / "a.png").stat().st_mtime_ns

    res = run_cli(*args, "--resume", env=isolated_env)
    assert_user_error(res, "1 of 3")
    assert "aligned 0, skipped 2, failed 1" in res.stderr
    assert (out / "a.png").stat().st_mtime_ns == mtime
    # a glob selecting only the good files succeeds
    res = run_cli(
        "--weights-dir", str(weights), "align", str(folder / "[ab].*"), "--out", str(out),
        "--size", "64", "--resume", env=isolated_env,
    )  # fmt: skip
    assert res.code == 0, res.stderr


# -- backend selection ---------------------------------------------------------------------------


def test_backend_choice_follows_the_files_present(tmp_path, monkeypatch):
    monkeypatch.delenv("TALKCLI_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("talkcli.weights.registry.user_cache_dir", lambda: tmp_path / "cache")
    wd = tmp_path / "w"
    with pytest.raises(ModelFileError, match="mtcnn-pnet"):
        lmk.choose_backend("auto", wd)
    (wd / "mtcnn").mkdir(parents=True)
    for stage in ("pnet", "rnet", "onet"):
        (wd / "mtcnn" / f"{stage}.npy").write_bytes(b"x")
    assert lmk.choose_backend("auto", wd) == "mtcnn"
    hub = wd / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "2DFAN4-11f355bf06.pth.tar").write_bytes(b"x")
    assert lmk.choose_backend("auto", wd) == "mtcnn"  # FAN needs S3FD too
    (hub / "s3fd-619a316812.pth").write_bytes(b"x")
    assert lmk.choose_backend("auto", wd) == "fan"
    assert lmk.choose_backend("mtcnn", wd) == "mtcnn"
    with pytest.raises(UserError):
        lmk.choose_backend("retina", wd)
    # talkcli's safe loader refuses the fake files before face-alignment sees them
    with pytest.raises(ModelFileError, match="s3fd-619a316812.pth: is not a PyTorch model file"):
        lmk.FANDetector(wd)


def test_fan_backend_points_torch_hub_at_the_registry(tmp_path, monkeypatch):
    import face_alignment
    import torch.hub

    wd = tmp_path / "w"
    hub = wd / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    for name in ("2DFAN4-11f355bf06.pth.tar", "s3fd-619a316812.pth"):
        torch.save({"w": torch.zeros(1)}, hub / name)  # readable by the safe loader
    seen = {}

    class FakeFA:
        def __init__(self, landmarks_type, device, face_detector, face_detector_kwargs, compile):
            seen.update(hub=torch.hub.get_dir(), compile=compile, detector=face_detector)
            seen.update(s3fd=face_detector_kwargs["path_to_detector"])

        def get_landmarks_from_image(self, img, return_bboxes=False):
            lm = np.tile(ASTRO_5[:1], (68, 1)) + np.arange(68)[:, None]
            small = lm * 0.5
            return (
                [small, lm],
                None,
                [np.array([0, 0, 10, 10, 0.9]), np.array([0, 0, 90, 90, 0.99])],
            )

    before = torch.hub.get_dir()
    monkeypatch.setattr(face_alignment, "FaceAlignment", FakeFA)
    det = lmk.FANDetector(wd)
    assert Path(seen["hub"]) == wd / "hub" and seen["compile"] is False
    assert Path(seen["s3fd"]) == hub / "s3fd-619a316812.pth"  # handed over by path
    assert torch.hub.get_dir() == before  # restored
    faces = det.detect(ASTRO)
    assert len(faces) == 2 and faces[0].landmarks.shape == (68, 2)
    assert lmk.choose_face(faces).score == pytest.approx(0.99)
    assert lmk.choose_face(faces, 1).score == pytest.approx(0.9)


def test_landmark_file_validation(tmp_path):
    bad = tmp_path / "bad.json"
    for content, needle in [
        ("{not json", "not valid JSON"),
        (json.dumps({"points": []}), "expected"),
        (json.dumps({"landmarks": [[1, 2]] * 7}), "68 or 5"),
        (json.dumps({"frames": [None, None]}), "all null"),
        (json.dumps({"frames": [[[1, 2]] * 5, [[1, 2]] * 68]}), "mixes"),
    ]:
        bad.write_text(content)
        with pytest.raises(UserError, match=needle):
            lmk.load_landmarks_file(bad)
    bad.write_text(json.dumps({"frames": [[[1, 2]] * 5, None]}))
    data = lmk.load_landmarks_file(bad)
    assert data["frames"][1] is None and data["frames"][0].shape == (5, 2)


def test_interpolation_between_key_frames():
    keyed = {0: np.zeros((5, 2)), 4: np.full((5, 2), 8.0), 6: np.full((5, 2), 2.0)}
    out = interpolate_landmarks(keyed, 9)
    assert out.shape == (9, 5, 2)
    np.testing.assert_allclose(out[:, 0, 0], [0, 2, 4, 6, 8, 5, 2, 2, 2])


# -- video ---------------------------------------------------------------------------------------


def moving_face_clip(path: Path, n: int = 30, size: int = 256) -> list[np.ndarray]:
    """The astronaut translated and rotated over time, with a tone; true 5 points per frame."""
    from talkcli.io.video import VideoWriter

    audio = (0.2 * np.sin(np.arange(int(16000 * n / 25)) * 2 * np.pi * 440 / 16000)).astype(
        np.float32
    )
    truth = []
    with VideoWriter(path, 25, audio=audio) as writer:
        for t in range(n):
            angle, tx, ty = 8 * np.sin(t / 6), 25 * np.sin(t / 9), 12 * np.cos(t / 7)
            m = cv2.getRotationMatrix2D((224, 122), angle, size / 512 * 1.3)
            m[:, 2] += [tx + size / 2 - 224, ty + size / 2 - 122]
            writer.write(cv2.warpAffine(ASTRO, m, (size, size), borderMode=cv2.BORDER_REFLECT_101))
            truth.append(ASTRO_5 @ m[:, :2].T + m[:, 2])
        writer.close()
    return truth


def _quads(side: Path) -> np.ndarray:
    return np.array([f["quad"] for f in sidecar(side)["frames"]])


@pytest.mark.slow
def test_video_smoothing_reduces_jitter(tmp_path, isolated_env):
    clip = tmp_path / "talk.mp4"
    truth = moving_face_clip(clip)
    rng = np.random.default_rng(0)
    jittered = [t + rng.normal(0, 2.0, t.shape) for t in truth]
    lm_file = tmp_path / "frames.json"
    lm_file.write_text(json.dumps({"frames": [j.tolist() for j in jittered]}))
    true_quads = np.array([ffhq_quad(t) for t in truth])

    errors = {}
    for sigma in ("0", "1.5"):
        out = tmp_path / f"out{sigma}"
        res = run_cli(
            "align", str(clip), "--out", str(out), "--size", "128", "--landmarks", str(lm_file),
            "--smooth", sigma, env=isolated_env,
        )  # fmt: skip
        assert res.code == 0, res.stderr
        quads = _quads(out / "talk.json")
        assert quads.shape == (30, 4, 2)
        errors[sigma] = {
            "truth": float(np.sqrt(((quads - true_quads) ** 2).sum(-1)).mean()),
            "accel": float(np.abs(np.diff(quads, 2, axis=0)).mean()),
        }
    # the number: smoothed crops are closer to the true motion and far less jerky
    assert errors["1.5"]["truth"] < 0.7 * errors["0"]["truth"], errors
    assert errors["1.5"]["accel"] < 0.3 * errors["0"]["accel"], errors

    from talkcli.io.video import probe_video

    info = probe_video(tmp_path / "out1.5" / "talk.mp4")
    assert (info.width, info.height, info.n_frames, info.has_audio) == (128, 128, 30, True)
    data = sidecar(tmp_path / "out1.5" / "talk.json")
    assert data["detector"] == "file" and data["fps"] == 25 and data["n_frames"] == 30
    assert data["source_size"] == [256, 256] and data["warp"] == "fast"
    f = data["frames"][7]
    m = np.array(f["matrix"])
    np.testing.assert_allclose(transform_points(m, [[-0.5, -0.5]])[0], f["quad"][0], atol=1e-6)


@pytest.mark.slow
def test_video_detection_every_n_frames(tmp_path, weights, isolated_env):
    clip = tmp_path / "clip.mp4"
    truth = moving_face_clip(clip, n=18, size=192)
    out = tmp_path / "out"
    res = run_cli(
        "--weights-dir", str(weights), "align", str(clip), "--out", str(out), "--size", "64",
        "--detect-every", "4", "--smooth", "0", env=isolated_env,
    )  # fmt: skip
    assert res.code == 0, res.stderr
    data = sidecar(out / "clip.json")
    assert data["detector"] == "mtcnn" and data["n_frames"] == 18
    detected = [f["index"] for f in data["frames"] if f["detected"]]
    assert detected == [0, 4, 8, 12, 16, 17]
    quads = _quads(out / "clip.json")
    true_quads = np.array([ffhq_quad(t) for t in truth])
    qsize = np.hypot(*(true_quads[0, 3] - true_quads[0, 0]))
    # detected frames agree with the true face; interpolated ones stay close to the motion
    err = np.sqrt(((quads - true_quads) ** 2).sum(-1)).max(-1)
    assert err[detected].max() < 0.08 * qsize, err
    assert err.max() < 0.15 * qsize, err


@pytest.mark.slow
def test_several_faces_largest_by_default_or_face_index(tmp_path, weights, isolated_env):
    canvas = np.full((512, 800, 3), 90, np.uint8)
    canvas[:, :512] = ASTRO
    canvas[128:384, 530:786] = np.asarray(PIL.Image.fromarray(ASTRO).resize((256, 256)))
    src = save_png(tmp_path / "two.png", canvas)
    for index, expect_right in ((None, False), ("1", True)):
        out = tmp_path / f"out{index}"
        extra = ("--face-index", index) if index else ()
        res = run_cli(
            "--weights-dir", str(weights), "align", str(src), "--out", str(out), "--size", "64",
            "--fast-warp", *extra, env=isolated_env,
        )  # fmt: skip
        assert res.code == 0, res.stderr
        assert "2 faces" in res.stderr
        data = sidecar(out / "two.json")
        assert data["face_count"] == 2
        centre_x = np.mean(np.array(data["quad"])[:, 0])
        assert (centre_x > 512) == expect_right, centre_x
