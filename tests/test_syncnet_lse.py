"""SyncNet v2 and LSE-C/LSE-D against joonson/syncnet_python (master 6efbb1c).

Upstream numbers were made locally with the upstream sources: ``SyncNetModel.S`` and
``SyncNetInstance`` with ``.cuda()`` patched to a no-op (CPU only here), the state dict
``random_syncnet_state_dict(div=1, seed=1)`` loaded into ``S``, and:

* network: ``forward_aud`` / ``forward_lip`` on the inputs of ``_net_inputs()``;
* evaluate(): its ffmpeg calls replaced by writing exactly ``_clip()``'s frames (lossless, under
  its ``%06d.jpg`` names; cv2.imread decodes by content) and ``float_to_pcm16(audio)`` as
  ``audio.wav``, so upstream and talkcli see identical inputs. Its printed "AV offset",
  "Min dist" and "Confidence" are stored below. talkcli gave identical float32 values.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from talkcli.errors import ModelFileError
from talkcli.metrics import lse
from talkcli.metrics.sync import (
    aligned_box,
    crop_face,
    float_to_pcm16,
    lip_embeddings,
    offset_distances,
    score_offsets,
    smooth_boxes,
)
from talkcli.models.syncnet import load_syncnet, syncnet_from_state_dict
from talkcli.tiny.metrics import random_syncnet_state_dict

from .conftest import SHARED
from .metrics_support import one_thread  # noqa: F401 (autouse)

KEYS_FILE = SHARED / "formats" / "syncnet_v2_keys.json"

UPSTREAM_AUD_FIRST4 = [
    [-0.16068925, 0.4361116, 7.71041, 3.5939677],
    [-0.8034923, -0.56084806, 7.7455573, 4.42954],
    [0.11202835, -1.237003, 9.707581, 3.9442873],
]
UPSTREAM_AUD_SUMS = [194.7053, 236.29002, 223.49391]
UPSTREAM_LIP_FIRST4 = [
    [-0.9299895, 2.2100651, -4.9474435, 9.459782],
    [-1.5050309, 1.9624763, -6.0023127, 9.404396],
]
UPSTREAM_LIP_SUMS = [480.26993, 477.2942]
# (frames, vshift) -> evaluate()'s (offset, min dist, confidence)
UPSTREAM_EVALUATE = {
    (12, 15): (15, 142.1150665283203, 0.0),
    (12, 3): (3, 231.02903747558594, 30.496597290039062),
    (30, 5): (5, 293.1379089355469, 25.018218994140625),
}


def _net_inputs():
    g = np.random.Generator(np.random.PCG64(11))
    aud = torch.from_numpy(g.standard_normal((3, 1, 13, 20)).astype(np.float32) * 8)
    lip = torch.from_numpy(g.integers(0, 256, (2, 3, 5, 224, 224)).astype(np.float32))
    return aud, lip


def _clip(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Face crops sliding over the astronaut photo and a 13-frame-longer chirp."""
    from skimage import data

    astro = data.astronaut()
    frames = np.stack(
        [astro[8 + 3 * t : 232 + 3 * t, 150 + 2 * t : 374 + 2 * t] for t in range(n_frames)]
    )
    tt = np.arange(n_frames * 640 + 333) / 16000.0
    chirp = np.sin(2 * np.pi * (200 + 600 * tt) * tt) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * tt))
    return frames, (0.3 * chirp).astype(np.float32)


@pytest.fixture(scope="module")
def official_syncnet(tmp_path_factory):
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    # legacy (pre-zip) torch format, like the 2018 file
    torch.save(random_syncnet_state_dict(div=1, seed=1), path, _use_new_zipfile_serialization=False)
    return load_syncnet(path)


def test_random_file_has_the_official_keys_and_shapes():
    if not KEYS_FILE.is_file():
        pytest.skip("../shared/formats is not present")
    official = json.loads(KEYS_FILE.read_text())["keys"]
    sd = random_syncnet_state_dict(div=1)
    assert list(sd) == [k for k, _shape in official]
    assert all(list(sd[k].shape) == shape for k, shape in official)


def test_forward_agrees_with_syncnet_python(official_syncnet):
    aud, lip = _net_inputs()
    with torch.no_grad():
        a, v = official_syncnet.forward_aud(aud), official_syncnet.forward_lip(lip)
    assert a.shape == (3, 1024) and v.shape == (2, 1024)
    np.testing.assert_allclose(a[:, :4], UPSTREAM_AUD_FIRST4, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.sum(1), UPSTREAM_AUD_SUMS, rtol=1e-5)
    np.testing.assert_allclose(v[:, :4], UPSTREAM_LIP_FIRST4, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v.sum(1), UPSTREAM_LIP_SUMS, rtol=1e-5)


@pytest.mark.parametrize("n_frames,vshift", list(UPSTREAM_EVALUATE))
def test_lse_agrees_with_syncnet_python_evaluate(official_syncnet, n_frames, vshift):
    frames, audio = _clip(n_frames)
    offset, min_dist, conf = UPSTREAM_EVALUATE[(n_frames, vshift)]
    got = lse(frames, audio, official_syncnet, vshift=vshift)
    assert got["offset"] == offset
    assert got["lse_d"] == pytest.approx(min_dist, rel=1e-5)
    assert got["lse_c"] == pytest.approx(conf, rel=1e-4, abs=1e-4)


def test_lip_embeddings_do_not_depend_on_how_the_stream_is_cut():
    net = syncnet_from_state_dict(random_syncnet_state_dict(div=16, seed=2))
    frames, _audio = _clip(13)
    whole = lip_embeddings([frames], net)
    cut = lip_embeddings([frames[:3], frames[3:4], frames[4:11], frames[11:]], net, batch_size=2)
    assert whole.shape == (9, 64)
    np.testing.assert_allclose(cut, whole, rtol=1e-5, atol=1e-5)


def test_offset_scoring_by_hand():
    lip = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    aud = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    d = offset_distances(lip, aud, vshift=1)  # offsets -1, 0, +1 (zero embeddings past the ends)
    assert d.shape == (3, 3)
    assert d[1, 1] == pytest.approx(np.sqrt(2) * 1e-6, abs=1e-6)  # eps 1e-6 inside the norm
    assert d[1, 0] == pytest.approx(1.0, abs=1e-5)  # lip[1] vs aud[0]
    assert d[0, 0] == pytest.approx(0.0, abs=1e-5)  # lip[0] vs the zero pad
    score = score_offsets(d, vshift=1)
    mdist = d.mean(axis=0)
    assert score["lse_d"] == pytest.approx(mdist.min(), abs=1e-6)
    assert score["lse_c"] == pytest.approx(np.median(mdist) - mdist.min(), abs=1e-6)
    assert score["offset"] == 1 - int(np.argmin(mdist)) == 0


def test_pcm16_conversion_rounds_and_clips_as_ffmpeg():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, 1 / 65536, 3 / 65536], dtype=np.float32)
    np.testing.assert_array_equal(float_to_pcm16(x), [0, 16384, -16384, 32767, -32768, 32767, 0, 2])


def test_lse_input_errors():
    net = syncnet_from_state_dict(random_syncnet_state_dict(div=16))
    frames, audio = _clip(5)
    with pytest.raises(ValueError, match="at least 6 frames"):
        lse(frames, audio, net)
    with pytest.raises(ValueError, match="224"):
        lse(frames[:, :100], audio, net)
    with pytest.raises(ValueError, match="at least 6 frames"):
        lse(_clip(10)[0], audio[:2000], net)  # audio too short for one window


def test_broken_syncnet_files(tmp_path):
    sd = random_syncnet_state_dict(div=16)
    torch.save({k: v for k, v in sd.items() if k != "netfcaud.3.weight"}, tmp_path / "a.model")
    with pytest.raises(ModelFileError, match=r"a\.model.*netfcaud\.3\.weight"):
        load_syncnet(tmp_path / "a.model")
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.model")  # files from PyTorch < 0.4.1 lack these buffers
    assert load_syncnet(tmp_path / "old.model").feature_dim == 64
    torch.save({**sd, "netcnnlip.0.weight": torch.zeros(6, 3, 3, 7, 7)}, tmp_path / "b.model")
    with pytest.raises(ModelFileError, match="netcnnlip.0.weight"):
        load_syncnet(tmp_path / "b.model")


def test_face_crop_follows_run_pipeline():
    frame = np.arange(100 * 120 * 3, dtype=np.int64).reshape(100, 120, 3) % 251
    frame = frame.astype(np.uint8)
    # box centre (60, 50), half-size 20 -> rows [30, 86), cols [32, 88) of the unpadded frame
    crop = crop_face(frame, 60.0, 50.0, 20.0)
    import cv2

    expected = cv2.resize(np.ascontiguousarray(frame[30:86, 32:88]), (224, 224))
    np.testing.assert_array_equal(crop, expected)
    # past the border the crop sees grey 110 padding
    corner = crop_face(frame, 5.0, 5.0, 20.0)
    assert corner.shape == (224, 224, 3) and (corner[:20, :20] == 110).all()


def test_boxes_are_median_filtered_over_13_frames():
    boxes = np.tile([40.0, 30.0, 80.0, 90.0], (20, 1))
    boxes[7] = [0, 0, 10, 10]  # one bad detection
    xys = smooth_boxes(boxes)
    assert xys.shape == (20, 3)
    np.testing.assert_allclose(xys[7], [60.0, 60.0, 30.0])
    np.testing.assert_allclose(aligned_box(256, 256), [61.44, 87.04, 194.56, 235.52])


def test_syncnet_protocol_crops_are_the_direct_crops_after_lossy_round_trips(tmp_path):
    """--lse-protocol syncnet: the same crops as the direct protocol, through syncnet_python's
    MPEG-4/JPEG/XVID/JPEG files (lossy: a few grey levels, never identical), and its audio."""
    from talkcli.io.audio import load_audio
    from talkcli.io.video import read_video
    from talkcli.metrics.sync import smooth_boxes
    from talkcli.metrics.sync_protocol import _read_bgr, crop_files, protocol_crops

    from .metrics_support import clip_frames, write_clip

    video = write_clip(tmp_path / "clip.mp4", clip_frames(n=12))

    def boxes(n, width, height, frames):
        return np.tile(aligned_box(width, height), (n, 1))

    work = tmp_path / "work"
    work.mkdir()
    crops, wav = crop_files(protocol_crops(video, boxes, None, work), work)
    proto = np.stack([_read_bgr(p)[..., ::-1] for p in crops]).astype(np.float64)
    frames = read_video(video, fps=25)
    # ffmpeg may repeat leading frames when it writes the JPEGs of its AVI (timestamps), as
    # syncnet_python's own run would with the same ffmpeg: match each crop to a nearby frame
    assert len(frames) <= len(proto) <= len(frames) + 3
    xys = smooth_boxes(np.tile(aligned_box(64, 64), (len(proto), 1)))
    for i, crop in enumerate(proto):
        near = range(max(0, i - 3), min(len(frames), i + 1))
        diffs = [np.abs(crop_face(frames[j], *xys[i]) - crop).mean() for j in near]
        assert 0.5 < min(diffs) < 8.0, (i, diffs)
    audio, original = load_audio(wav), load_audio(video)
    assert abs(len(audio) - len(original)) <= 3 * 640  # through MP3 and cut to the frames
    assert np.isfinite(audio).all()
