"""MTCNN with the real weights from ../shared against an independent numpy implementation."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data

from talkcli.errors import ModelFileError
from talkcli.face.ffhq import align_image_exact, transform_points
from talkcli.face.mtcnn import MTCNN, PNet, load_mtcnn, load_net, nms
from talkcli.weights.safe_load import load_numpy_file

ASTRO = skimage.data.astronaut()


@pytest.fixture(scope="module")
def mtcnn_dir(tmp_path_factory) -> Path:
    src = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mtcnn"
    if not (src / "onet.npy").is_file():
        pytest.skip("../shared/fixtures/mtcnn is not present beside the checkout")
    root = tmp_path_factory.mktemp("weights")
    (root / "mtcnn").mkdir()
    for stage in ("pnet", "rnet", "onet"):
        shutil.copy(src / f"{stage}.npy", root / "mtcnn" / f"{stage}.npy")
    return root


@pytest.fixture(scope="module")
def detector(mtcnn_dir) -> MTCNN:
    return load_mtcnn(mtcnn_dir)


# -- an independent reference: numpy forward passes, loop NMS, PIL crops --------------------------


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (C, H, W), w (O, C, k, k) -> (O, H-k+1, W-k+1), valid cross-correlation."""
    k = w.shape[2]
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # (C, h, w, k, k)
    return np.einsum("chwij,ocij->ohw", win, w, optimize=True) + b[:, None, None]


def np_prelu(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    shape = (-1,) + (1,) * (x.ndim - 1)
    return np.where(x > 0, x, x * a.reshape(shape))


def np_pool(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """Max pool with ceil_mode (windows may hang over the edge)."""
    c, h, w = x.shape
    oh, ow = math.ceil((h - k) / s) + 1, math.ceil((w - k) / s) + 1
    out = np.full((c, oh, ow), -np.inf, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = x[:, i * s : i * s + k, j * s : j * s + k].max(axis=(1, 2))
    return out


def np_softmax(v: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ref_pnet(p: dict, x: np.ndarray):
    x = np_prelu(
        np_conv(x, p["features.conv1.weight"], p["features.conv1.bias"]),
        p["features.prelu1.weight"],
    )
    x = np_pool(x, 2, 2)
    x = np_prelu(
        np_conv(x, p["features.conv2.weight"], p["features.conv2.bias"]),
        p["features.prelu2.weight"],
    )
    x = np_prelu(
        np_conv(x, p["features.conv3.weight"], p["features.conv3.bias"]),
        p["features.prelu3.weight"],
    )
    prob = np_softmax(np_conv(x, p["conv4_1.weight"], p["conv4_1.bias"]), axis=0)
    reg = np_conv(x, p["conv4_2.weight"], p["conv4_2.bias"])
    return prob[1], reg


def _fc(x, w, b):
    return w @ x + b


def ref_rnet(p: dict, x: np.ndarray):
    x = np_prelu(
        np_conv(x, p["features.conv1.weight"], p["features.conv1.bias"]),
        p["features.prelu1.weight"],
    )
    x = np_pool(x, 3, 2)
    x = np_prelu(
        np_conv(x, p["features.conv2.weight"], p["features.conv2.bias"]),
        p["features.prelu2.weight"],
    )
    x = np_pool(x, 3, 2)
    x = np_prelu(
        np_conv(x, p["features.conv3.weight"], p["features.conv3.bias"]),
        p["features.prelu3.weight"],
    )
    v = np.transpose(x, (0, 2, 1)).reshape(-1)  # Caffe order: (C, W, H)
    v = np_prelu(
        _fc(v, p["features.conv4.weight"], p["features.conv4.bias"]), p["features.prelu4.weight"]
    )
    prob = np_softmax(_fc(v, p["conv5_1.weight"], p["conv5_1.bias"]), axis=0)
    return prob[1], _fc(v, p["conv5_2.weight"], p["conv5_2.bias"])


def ref_onet(p: dict, x: np.ndarray):
    x = np_prelu(
        np_conv(x, p["features.conv1.weight"], p["features.conv1.bias"]),
        p["features.prelu1.weight"],
    )
    x = np_pool(x, 3, 2)
    x = np_prelu(
        np_conv(x, p["features.conv2.weight"], p["features.conv2.bias"]),
        p["features.prelu2.weight"],
    )
    x = np_pool(x, 3, 2)
    x = np_prelu(
        np_conv(x, p["features.conv3.weight"], p["features.conv3.bias"]),
        p["features.prelu3.weight"],
    )
    x = np_pool(x, 2, 2)
    x = np_prelu(
        np_conv(x, p["features.conv4.weight"], p["features.conv4.bias"]),
        p["features.prelu4.weight"],
    )
    v = np.transpose(x, (0, 2, 1)).reshape(-1)
    v = np_prelu(
        _fc(v, p["features.conv5.weight"], p["features.conv5.bias"]), p["features.prelu5.weight"]
    )
    prob = np_softmax(_fc(v, p["conv6_1.weight"], p["conv6_1.bias"]), axis=0)
    reg = _fc(v, p["conv6_2.weight"], p["conv6_2.bias"])
    pts = _fc(v, p["conv6_3.weight"], p["conv6_3.bias"])
    return prob[1], reg, pts


def loop_nms(boxes: list[list[float]], thr: float, use_min: bool = False) -> list[int]:
    """Plain-loop greedy NMS over [x1, y1, x2, y2, score] lists."""
    order = sorted(range(len(boxes)), key=lambda i: boxes[i][4], reverse=True)
    keep: list[int] = []
    removed = set()
    for a in order:
        if a in removed:
            continue
        keep.append(a)
        ax1, ay1, ax2, ay2 = boxes[a][:4]
        area_a = (ax2 - ax1 + 1) * (ay2 - ay1 + 1)
        for b in order:
            if b in removed or b == a or b in keep:
                continue
            bx1, by1, bx2, by2 = boxes[b][:4]
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1) + 1)
            ih = max(0.0, min(ay2, by2) - max(ay1, by1) + 1)
            inter = iw * ih
            area_b = (bx2 - bx1 + 1) * (by2 - by1 + 1)
            ov = inter / min(area_a, area_b) if use_min else inter / (area_a + area_b - inter)
            if ov > thr:
                removed.add(b)
    return keep


def _norm(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a, np.float64).transpose(2, 0, 1) - 127.5) / 128.0


def _square(b: list[float]) -> list[float]:
    w, h = b[2] - b[0] + 1, b[3] - b[1] + 1
    side = max(w, h)
    x1, y1 = b[0] + w / 2 - side / 2, b[1] + h / 2 - side / 2
    return [round(x1), round(y1), round(x1 + side - 1), round(y1 + side - 1), *b[4:]]


def _refine(b: list[float], reg) -> list[float]:
    w, h = b[2] - b[0] + 1, b[3] - b[1] + 1
    return [b[0] + reg[0] * w, b[1] + reg[1] * h, b[2] + reg[2] * w, b[3] + reg[3] * h, *b[4:]]


def _crop(img: np.ndarray, b: list[float], size: int) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in b[:4])
    canvas = np.zeros((y2 - y1 + 1, x2 - x1 + 1, 3), np.uint8)
    for yy in range(max(y1, 0), min(y2, img.shape[0] - 1) + 1):
        xa, xb = max(x1, 0), min(x2, img.shape[1] - 1)
        if xb >= xa:
            canvas[yy - y1, xa - x1 : xb - x1 + 1] = img[yy, xa : xb + 1]
    return np.asarray(
        PIL.Image.fromarray(canvas).resize((size, size), PIL.Image.Resampling.BILINEAR)
    )


def reference_detect(img: np.ndarray, weights: Path) -> list[tuple[float, np.ndarray]]:
    pw, rw, ow = (load_numpy_file(weights / "mtcnn" / f"{s}.npy") for s in ("pnet", "rnet", "onet"))
    pw, rw, ow = ({k: np.asarray(v, np.float64) for k, v in d.items()} for d in (pw, rw, ow))
    h, w = img.shape[:2]
    pil = PIL.Image.fromarray(img)
    scales, m, side = [], 12 / 20.0, min(h, w) * 12 / 20.0
    while side > 12:
        scales.append(m * 0.707 ** len(scales))
        side *= 0.707
    cands: list[list[float]] = []
    for s in scales:
        arr = np.asarray(
            pil.resize((math.ceil(w * s), math.ceil(h * s)), PIL.Image.Resampling.BILINEAR)
        )
        prob, reg = ref_pnet(pw, _norm(arr))
        found = []
        for i, j in zip(*np.where(prob > 0.6), strict=True):
            box = [
                round((2 * j + 1) / s),
                round((2 * i + 1) / s),
                round((2 * j + 13) / s),
                round((2 * i + 13) / s),
                float(prob[i, j]),
            ]
            found.append(box + list(reg[:, i, j]))
        cands += [found[k] for k in loop_nms(found, 0.5)]
    cands = [cands[k] for k in loop_nms(cands, 0.7)]
    boxes = [_square(_refine(c[:5], c[5:9])) for c in cands]
    stage2 = []
    for b in boxes:
        prob, reg = ref_rnet(rw, _norm(_crop(img, b, 24)))
        if prob > 0.7:
            stage2.append(b[:4] + [float(prob)] + list(reg))
    stage2 = [stage2[k] for k in loop_nms(stage2, 0.7)]
    boxes = [_square(_refine(c[:5], c[5:9])) for c in stage2]
    out = []
    for b in boxes:
        prob, reg, pts = ref_onet(ow, _norm(_crop(img, b, 48)))
        if prob > 0.8:
            bw, bh = b[2] - b[0] + 1, b[3] - b[1] + 1
            lm = np.stack([b[0] + bw * pts[:5], b[1] + bh * pts[5:]], axis=1)
            out.append((_refine(b[:4] + [float(prob)], reg), lm))
    keep = loop_nms([o[0] for o in out], 0.7, use_min=True)
    return [(out[k][0][4], out[k][1]) for k in keep]


# -- tests ---------------------------------------------------------------------------------------


def test_weights_have_the_expected_layout(mtcnn_dir):
    data = load_numpy_file(mtcnn_dir / "mtcnn" / "onet.npy")
    assert data["features.conv1.weight"].shape == (32, 3, 3, 3)
    assert data["conv6_3.weight"].shape == (10, 256)


def test_wrong_file_is_a_model_file_error(mtcnn_dir, tmp_path):
    with pytest.raises(ModelFileError, match="PNet layout"):
        load_net(PNet(), mtcnn_dir / "mtcnn" / "rnet.npy")
    bad = tmp_path / "pnet.npy"
    bad.write_bytes(b"not a numpy file at all")
    with pytest.raises(ModelFileError):
        load_net(PNet(), bad)


def test_missing_weights_say_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.delenv("TALKCLI_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("talkcli.weights.registry.user_cache_dir", lambda: tmp_path / "cache")
    with pytest.raises(ModelFileError, match="talkcli weights fetch mtcnn-pnet"):
        load_mtcnn(tmp_path / "empty")


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array(
        [[0, 0, 10, 10, 0.9], [1, 1, 11, 11, 0.95], [50, 50, 60, 60, 0.5], [0, 0, 10, 10, 0.1]]
    )
    keep = nms(boxes, 0.5)
    assert sorted(keep.tolist()) == [1, 2]
    assert sorted(loop_nms(boxes.tolist(), 0.5)) == [1, 2]


@pytest.mark.slow
def test_astronaut_one_face_agrees_with_reference(detector, mtcnn_dir):
    faces = detector.detect(ASTRO)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.99
    assert face.landmarks.shape == (5, 2)
    ref = reference_detect(ASTRO, mtcnn_dir)
    assert len(ref) == 1
    ref_score, ref_lm = ref[0]
    assert ref_score > 0.99
    np.testing.assert_allclose(face.landmarks, ref_lm, atol=2.0)
    # plausible anatomy: image-left eye left of the right one, mouth below the eyes
    lm = face.landmarks
    assert lm[0, 0] < lm[1, 0] and lm[3, 1] > lm[0, 1] + 20 and lm[4, 1] > lm[1, 1] + 20


def test_aligned_astronaut_has_level_centred_eyes(detector):
    face = detector.detect(ASTRO)[0]
    size = 256
    aligned, meta = align_image_exact(ASTRO, face.landmarks, size, transform_size=1024)
    # the source eyes mapped into the aligned frame
    eyes = transform_points(meta.inverse_matrix, face.landmarks[:2])
    assert abs(eyes[0, 1] - eyes[1, 1]) < 0.02 * size
    assert abs(eyes[:, 0].mean() - (size - 1) / 2) < 0.02 * size
    # and the eyes found again by MTCNN in the aligned image itself
    again = detector.detect(aligned)
    assert len(again) == 1 and again[0].score > 0.99
    e = again[0].landmarks[:2]
    assert abs(e[0, 1] - e[1, 1]) < 0.02 * size
    assert abs(e[:, 0].mean() - (size - 1) / 2) < 0.02 * size


def test_no_face_in_flat_or_noise_images(detector):
    assert detector.detect(np.full((120, 160, 3), 128, np.uint8)) == []
    rng = np.random.default_rng(0)
    assert detector.detect(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) == []
