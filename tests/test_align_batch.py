"""Batched face detection for video alignment (``AlignConfig.detect_batch``, ``detect_batch``).

Batched MTCNN must give the per-frame landmarks, boxes and scores (real weights from
../shared/fixtures/mtcnn, skipped when absent); detectors without ``detect_batch`` keep working
through the per-frame loop; tracking errors still name the right frame.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from talkcli.errors import InputFileError, UserError
from talkcli.face import align as align_mod
from talkcli.face import mtcnn as mtcnn_mod
from talkcli.face.align import AlignConfig, Detectors, align_video_file
from talkcli.face.landmarks import Face, MTCNNDetector, box_of, detect_frames
from talkcli.tiny.faces import moving_astronaut
from tests.test_align_cli import ASTRO, ASTRO_5, MTCNN_SRC, moving_face_clip


@pytest.fixture(scope="module")
def mtcnn() -> MTCNNDetector:
    if not (MTCNN_SRC / "onet.npy").is_file():
        pytest.skip("../shared/fixtures/mtcnn is not present beside the checkout")
    return MTCNNDetector(MTCNN_SRC.parent, batch_on_cpu=True)  # batched as on a GPU


def astro_frames(n: int, size: int = 160) -> list[np.ndarray]:
    """The astronaut shifted, rotated and scaled per frame: (size, size, 3) uint8 each."""
    return moving_astronaut(n, size, periods=(2, 3, 4, 3), rotate=10.0, shift=(20.0, 10.0))


def assert_same_faces(one: list[list[Face]], many: list[list[Face]]) -> None:
    assert [len(f) for f in one] == [len(f) for f in many]
    for a, b in zip(one, many, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(y.landmarks, x.landmarks, atol=1e-3)
            np.testing.assert_allclose(y.box, x.box, atol=1e-3)
            assert y.score == pytest.approx(x.score, abs=1e-5)


def test_mtcnn_batches_on_a_gpu_only_unless_asked(mtcnn, monkeypatch):
    frames = astro_frames(2)
    cpu = MTCNNDetector(MTCNN_SRC.parent)  # on a CPU batching measured no faster: per frame
    assert not cpu.batched and mtcnn.batched
    sizes: list[int] = []
    inner = cpu.model._detect_same_size

    def spy(imgs, height, width):
        sizes.append(len(imgs))
        return inner(imgs, height, width)

    monkeypatch.setattr(cpu.model, "_detect_same_size", spy)
    assert_same_faces(mtcnn.detect_batch(frames), cpu.detect_batch(frames))
    assert sizes == [1, 1]  # one network pass per frame


def test_mtcnn_batch_matches_per_frame_on_real_faces(mtcnn, monkeypatch):
    frames = astro_frames(6)
    frames.insert(3, np.full_like(frames[0], 90))  # no face in the middle of the batch
    frames.append(np.ascontiguousarray(ASTRO[::2, ::2]))  # another size: its own group
    one = [mtcnn.detect(f) for f in frames]
    assert [len(f) for f in one] == [1, 1, 1, 0, 1, 1, 1, 1]  # the fixture is a real test
    assert_same_faces(one, mtcnn.detect_batch(frames))
    # the astronaut's own points (half size) are found, so the faces compared are real ones
    np.testing.assert_allclose(one[-1][0].landmarks, ASTRO_5 / 2, atol=4.0)
    # P-Net in chunks (a large batch of large frames keeps memory bounded): same faces
    monkeypatch.setattr(mtcnn_mod, "PNET_PIXELS", 160 * 160 * 2 + 1)
    assert_same_faces(one, mtcnn.detect_batch(frames))


def test_mtcnn_batch_without_faces_and_of_one(mtcnn):
    blank = [np.zeros((64, 64, 3), np.uint8)] * 3
    assert mtcnn.detect_batch(blank) == [[], [], []]
    assert mtcnn.detect_batch([]) == []
    with pytest.raises(ValueError, match="uint8 RGB"):
        mtcnn.detect_batch([np.zeros((64, 64), np.uint8)])


class Counting:
    """Wraps a detector, recording calls; ``batched=False`` hides ``detect_batch``."""

    def __init__(self, inner, batched: bool = True) -> None:
        self.inner, self.name, self.calls = inner, inner.name, []
        if batched:
            self.detect_batch = self._detect_batch

    def detect(self, img: np.ndarray) -> list[Face]:
        self.calls.append(1)
        return self.inner.detect(img)

    def _detect_batch(self, frames: list[np.ndarray]) -> list[list[Face]]:
        self.calls.append(len(frames))
        return self.inner.detect_batch(frames)


def _align_clip(clip: Path, out: Path, detector, **cfg) -> dict:
    out.mkdir()
    acfg = AlignConfig(size=64, smooth=0.0, **cfg)
    detectors = Detectors(acfg)
    detectors._detector = detector
    align_video_file(clip, out, acfg, detectors)
    return json.loads((out / f"{clip.stem}.json").read_text())


@pytest.mark.slow
def test_video_alignment_batched_equals_per_frame(mtcnn, tmp_path):
    clip = tmp_path / "clip.mp4"
    moving_face_clip(clip, n=11, size=160)
    per_frame = Counting(mtcnn)
    ref = _align_clip(clip, tmp_path / "one", per_frame, detect_every=2, detect_batch=1)
    assert per_frame.calls == [1] * 6  # key frames 0, 2, ..., 10 (the last is one)
    batched = Counting(mtcnn)
    got = _align_clip(clip, tmp_path / "many", batched, detect_every=2, detect_batch=4)
    assert batched.calls == [4, 2]  # frames 0-6, then 8 and 10: one call per batch
    assert got["face_counts"] == ref["face_counts"] == [1] * 6
    for a, b in zip(ref["frames"], got["frames"], strict=True):
        assert a["detected"] == b["detected"] and a["index"] == b["index"]
        np.testing.assert_allclose(b["landmarks"], a["landmarks"], atol=1e-3)
        np.testing.assert_allclose(b["quad"], a["quad"], atol=1e-3)
    assert got["options"] == ref["options"]  # the batch does not change the output: no redo


class Planted:
    """A test detector with only ``detect`` (as the planted detectors of other tests): one face
    at the frame's brightest column, none in frames listed in ``blind``."""

    name = "planted"

    def __init__(self, blind: tuple[int, ...] = (), two: tuple[int, ...] = ()) -> None:
        self.seen: list[int] = []
        self.blind, self.two = blind, two

    def detect(self, img: np.ndarray) -> list[Face]:
        t = int(img[0, 0, 0]) // 10  # the frame index, painted in the corner
        self.seen.append(t)
        if t in self.blind:
            return []
        lm = ASTRO_5 / 4 + [t, 0]
        faces = [Face(lm, box_of(lm), 0.9)]
        if t in self.two:
            faces.append(Face(lm + [30, 0], box_of(lm + [30, 0]), 0.8))
        return faces


def numbered(n: int) -> list[np.ndarray]:
    """Frames whose top-left pixel encodes their index (10 * i)."""
    frames = []
    for i in range(n):
        f = np.zeros((128, 128, 3), np.uint8)
        f[0, 0] = 10 * i
        frames.append(f)
    return frames


def _marks(n: int = 0) -> align_mod.VideoLandmarks:
    return align_mod.VideoLandmarks({}, {}, [], 0, "planted", (128, 128), max(n, 1))


def test_detector_without_detect_batch_gets_the_per_frame_loop():
    det = Planted(blind=(4,))
    found = detect_frames(det, numbered(6))
    assert det.seen == [0, 1, 2, 3, 4, 5] and [len(f) for f in found] == [1, 1, 1, 1, 0, 1]
    det = Planted()
    marks = _marks(9)
    cfg = AlignConfig(detect_every=3, detect_batch=8)
    align_mod._detect_key_frames(Path("v.mp4"), iter(numbered(9)), det, cfg, marks, None)
    assert det.seen == [0, 3, 6, 8] and sorted(marks.keyed) == [0, 3, 6, 8]
    np.testing.assert_allclose(marks.keyed[6], ASTRO_5 / 4 + [6, 0])
    assert marks.n_frames == 9 and marks.face_counts == [1, 1, 1, 1]


def test_batched_tracking_follows_the_nearest_face_in_order():
    # frames 0-2 one face moving right; frame 3 adds a second face 30 px right: follow the first
    det = Planted(two=(3,))
    marks = _marks(5)
    align_mod._detect_key_frames(
        Path("v.mp4"), iter(numbered(5)), det, AlignConfig(detect_batch=4), marks, None
    )
    assert marks.face_counts == [1, 1, 1, 2, 1]
    np.testing.assert_allclose(marks.keyed[3], ASTRO_5 / 4 + [3, 0])


@pytest.mark.parametrize("batch", [1, 4, 8])
def test_tracking_error_names_its_frame_with_batching(batch):
    det = Planted(blind=(0, 1, 2, 3, 4))  # the first face appears in frame 5 (2nd batch of 4)
    cfg = AlignConfig(detect_batch=batch, face_index=1)
    with pytest.raises(InputFileError, match=r"frame 5: --face-index 1: only 1 face"):
        align_mod._detect_key_frames(Path("v.mp4"), iter(numbered(7)), det, cfg, _marks(7), None)


def test_detect_batch_bounds_are_checked():
    AlignConfig(detect_batch=64).check()
    for bad in (0, 65):
        with pytest.raises(UserError, match="--detect-batch"):
            AlignConfig(detect_batch=bad).check()


def test_frames_held_stay_within_one_batch():
    """Memory: at most ``detect_batch`` key frames are held, never the video."""
    held: list[int] = []

    class Sized(Planted):
        def detect_batch(self, frames):
            held.append(len(frames))
            return [self.detect(f) for f in frames]

    marks = _marks(30)
    cfg = AlignConfig(detect_batch=4)
    align_mod._detect_key_frames(Path("v.mp4"), iter(numbered(23)), Sized(), cfg, marks, None)
    assert held == [4, 4, 4, 4, 4, 3] and marks.n_frames == 23


@pytest.mark.parametrize(("batch_size", "held"), [(16, 16), (4096, 64)])
def test_prepare_passes_its_batch_size_to_alignment(monkeypatch, tmp_path, batch_size, held):
    from types import SimpleNamespace

    from talkcli.train import prepare

    seen = {}

    def fake_align(path, work, acfg, detectors, progress=None):
        seen["detect_batch"] = acfg.detect_batch
        return SimpleNamespace(output=work / "x.mp4")

    monkeypatch.setattr(align_mod, "align_video_file", fake_align)
    item = SimpleNamespace(path=tmp_path / "v.mp4", id="v")
    cfg = prepare.PrepareConfig(batch_size=batch_size)
    prepare._align(item, tmp_path / "work", cfg, None, None)
    assert seen == {"detect_batch": held}  # capped: at most 64 source frames held


@pytest.mark.slow
def test_fan_batch_matches_per_frame(tmp_path):
    """face-alignment's own batch path (S3FD on a (B, 3, H, W) tensor) against ``detect``: random
    S3FD weights propose several faces per frame; FAN's hourglass is swapped for one strided
    convolution (the heatmaps' meaning does not matter here, only that both paths agree)."""
    face_alignment = pytest.importorskip("face_alignment")
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    from talkcli.face.landmarks import FANDetector
    from talkcli.weights import registry

    torch.manual_seed(0)
    for name, net in (("fan-2d", FAN(4)), ("s3fd", s3fd())):
        path = tmp_path / registry.get(name).relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    det = FANDetector(tmp_path)
    assert isinstance(det.model, face_alignment.FaceAlignment)
    det.model.face_alignment_net = torch.nn.Conv2d(3, 68, 4, stride=4).eval()  # (N, 68, 64, 64)
    frames = [np.ascontiguousarray(f[::4, ::4]) for f in astro_frames(3, 128)]  # (32, 32, 3)
    one = [det.detect(f) for f in frames]
    assert all(len(f) > 0 for f in one)  # random S3FD: faces to compare
    assert_same_faces(one, det.detect_batch(frames))
    assert all(f.landmarks.shape == (68, 2) for faces in one for f in faces)
