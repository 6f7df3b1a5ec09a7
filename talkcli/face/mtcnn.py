"""MTCNN face detector (P-Net, R-Net, O-Net) with 5 landmarks, in pure PyTorch.

The networks and the detection pipeline follow TropComplique's ``mtcnn-pytorch`` (the copy in
pixel2style2pixel ``models/mtcnn/mtcnn_pytorch``), whose weights (``pnet.npy``, ``rnet.npy``,
``onet.npy``: dicts with keys like ``features.conv1.weight``, ``conv4_1.weight``) were converted
from the original Caffe model. Input is RGB, normalised as ``(x - 127.5) * 0.0078125``. The Caffe
model was trained on transposed (W, H) images: the converted convolution kernels already account
for it, and the fully connected layers read their input flattened in (C, W, H) order.

Pipeline: image pyramid (min face 20 px, factor 0.707), P-Net proposals (threshold 0.6, NMS 0.5
per scale, 0.7 overall), calibrate + square, R-Net on 24x24 crops (0.7, NMS 0.7), O-Net on 48x48
crops (0.8) with landmarks, calibrate, NMS 0.7 ("min" overlap).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from talkcli.errors import ModelFileError
from talkcli.weights import registry
from talkcli.weights.safe_load import load_numpy_file

PNET_PIXELS = 2**23  # input pixels per P-Net call in a batch (~8 Mpx: (b, 10, h, w) ~ 320 MB)


class _FlattenWH(nn.Module):
    """Flatten (N, C, H, W) in (C, W, H) order, as the Caffe-converted FC weights expect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(3, 2).contiguous().view(x.size(0), -1)


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 receptive field, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 10, 3, 1)),
                    ("prelu1", nn.PReLU(10)),
                    ("pool1", nn.MaxPool2d(2, 2, ceil_mode=True)),
                    ("conv2", nn.Conv2d(10, 16, 3, 1)),
                    ("prelu2", nn.PReLU(16)),
                    ("conv3", nn.Conv2d(16, 32, 3, 1)),
                    ("prelu3", nn.PReLU(32)),
                ]
            )
        )
        self.conv4_1 = nn.Conv2d(32, 2, 1, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (1, 3, H, W) -> offsets (1, 4, h, w), probs (1, 2, h, w)
        x = self.features(x)
        # Softmax over the two class channels, as TropComplique's original port (which these
        # weights were converted for). pixel2style2pixel's copy uses dim=-1 (across image width),
        # which changes stage-1 scores; its MTCNN class compensates with lower thresholds.
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 28, 3, 1)),
                    ("prelu1", nn.PReLU(28)),
                    ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
                    ("conv2", nn.Conv2d(28, 48, 3, 1)),
                    ("prelu2", nn.PReLU(48)),
                    ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
                    ("conv3", nn.Conv2d(48, 64, 2, 1)),
                    ("prelu3", nn.PReLU(64)),
                    ("flatten", _FlattenWH()),
                    ("conv4", nn.Linear(576, 128)),
                    ("prelu4", nn.PReLU(128)),
                ]
            )
        )
        self.conv5_1 = nn.Linear(128, 2)
        self.conv5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (N, 3, 24, 24) -> offsets (N, 4), probs (N, 2)
        x = self.features(x)
        return self.conv5_2(x), F.softmax(self.conv5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48x48 crops: box offsets, face probability and 5 landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 32, 3, 1)),
                    ("prelu1", nn.PReLU(32)),
                    ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
                    ("conv2", nn.Conv2d(32, 64, 3, 1)),
                    ("prelu2", nn.PReLU(64)),
                    ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
                    ("conv3", nn.Conv2d(64, 64, 3, 1)),
                    ("prelu3", nn.PReLU(64)),
                    ("pool3", nn.MaxPool2d(2, 2, ceil_mode=True)),
                    ("conv4", nn.Conv2d(64, 128, 2, 1)),
                    ("prelu4", nn.PReLU(128)),
                    ("flatten", _FlattenWH()),
                    ("conv5", nn.Linear(1152, 256)),
                    ("drop5", nn.Dropout(0.25)),
                    ("prelu5", nn.PReLU(256)),
                ]
            )
        )
        self.conv6_1 = nn.Linear(256, 2)
        self.conv6_2 = nn.Linear(256, 4)
        self.conv6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: (N, 3, 48, 48) -> landmarks (N, 10) [x1..x5, y1..y5], offsets (N, 4), probs (N, 2)
        x = self.features(x)
        return self.conv6_3(x), self.conv6_2(x), F.softmax(self.conv6_1(x), dim=1)


def load_net(net: nn.Module, path: str | Path) -> nn.Module:
    """Fill ``net`` from an MTCNN ``.npy`` dict (loaded safely), checking keys and shapes."""
    data = load_numpy_file(path, "MTCNN weights file")
    if not isinstance(data, dict):
        raise ModelFileError(path, "is not an MTCNN weights file (expected a dict of arrays)")
    expected = net.state_dict()
    missing = sorted(set(expected) - set(data))
    unexpected = sorted(set(data) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelFileError(
            path, f"does not match the {type(net).__name__} layout ({what})", "wrong file?"
        )
    state = {}
    for key, ref in expected.items():
        arr = np.asarray(data[key])
        if tuple(arr.shape) != tuple(ref.shape):
            raise ModelFileError(
                path,
                f"{key} has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}",
                "wrong file?",
            )
        state[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    net.load_state_dict(state)
    return net.eval()


# -- box utilities (as mtcnn-pytorch's box_utils) ------------------------------------------------


def nms(boxes: np.ndarray, overlap_threshold: float = 0.5, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression on (N, >=5) [x1, y1, x2, y2, score]; kept indices."""
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    x1, y1, x2, y2, score = (boxes[:, i] for i in range(5))
    area = (x2 - x1 + 1.0) * (y2 - y1 + 1.0)
    ids = np.argsort(score, kind="stable")  # increasing
    pick = []
    while len(ids) > 0:
        last = len(ids) - 1
        i = ids[last]
        pick.append(i)
        ix1 = np.maximum(x1[i], x1[ids[:last]])
        iy1 = np.maximum(y1[i], y1[ids[:last]])
        ix2 = np.minimum(x2[i], x2[ids[:last]])
        iy2 = np.minimum(y2[i], y2[ids[:last]])
        inter = np.maximum(0.0, ix2 - ix1 + 1.0) * np.maximum(0.0, iy2 - iy1 + 1.0)
        if mode == "min":
            overlap = inter / np.minimum(area[i], area[ids[:last]])
        else:
            overlap = inter / (area[i] + area[ids[:last]] - inter)
        ids = np.delete(ids, np.concatenate([[last], np.where(overlap > overlap_threshold)[0]]))
    return np.asarray(pick, dtype=np.int64)


def calibrate_box(bboxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply regression offsets (N, 4), relative to box width/height, to boxes (N, >=4)."""
    bboxes = bboxes.copy()
    w = bboxes[:, 2] - bboxes[:, 0] + 1.0
    h = bboxes[:, 3] - bboxes[:, 1] + 1.0
    bboxes[:, 0:4] = bboxes[:, 0:4] + np.stack([w, h, w, h], axis=1) * offsets
    return bboxes


def convert_to_square(bboxes: np.ndarray) -> np.ndarray:
    """Grow boxes to squares around the same centre."""
    square = np.zeros_like(bboxes)
    x1, y1, x2, y2 = (bboxes[:, i] for i in range(4))
    h = y2 - y1 + 1.0
    w = x2 - x1 + 1.0
    side = np.maximum(h, w)
    square[:, 0] = x1 + w * 0.5 - side * 0.5
    square[:, 1] = y1 + h * 0.5 - side * 0.5
    square[:, 2] = square[:, 0] + side - 1.0
    square[:, 3] = square[:, 1] + side - 1.0
    if bboxes.shape[1] > 4:
        square[:, 4:] = bboxes[:, 4:]
    return square


def _preprocess(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB -> (1, 3, H, W) normalised."""
    return ((img.transpose(2, 0, 1)[None] - 127.5) * 0.0078125).astype(np.float32)


def get_image_boxes(bboxes: np.ndarray, img: np.ndarray, size: int) -> np.ndarray:
    """Cut square boxes (zero-filled outside the image), resize to ``size`` -> (N, 3, s, s)."""
    height, width = img.shape[:2]
    out = np.zeros((len(bboxes), 3, size, size), np.float32)
    for i, box in enumerate(bboxes):
        x1, y1, x2, y2 = (int(v) for v in box[:4])  # truncation, as the reference's astype
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        if bw <= 0 or bh <= 0:
            continue
        patch = np.zeros((bh, bw, 3), np.uint8)
        sx0, sy0 = max(x1, 0), max(y1, 0)
        sx1, sy1 = min(x2, width - 1), min(y2, height - 1)
        if sx1 >= sx0 and sy1 >= sy0:
            patch[sy0 - y1 : sy1 - y1 + 1, sx0 - x1 : sx1 - x1 + 1] = img[
                sy0 : sy1 + 1, sx0 : sx1 + 1
            ]
        resized = Image.fromarray(patch).resize((size, size), Image.Resampling.BILINEAR)
        out[i] = _preprocess(np.asarray(resized, np.float32))[0]
    return out


@dataclass
class Detection:
    """One face: box [x1, y1, x2, y2], face probability, 5 landmarks (x, y) in image pixels."""

    box: np.ndarray  # (4,)
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth, right mouth

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


class MTCNN:
    """The three nets and the detection pipeline. ``detect(img)`` -> list of ``Detection``."""

    def __init__(
        self,
        pnet: str | Path,
        rnet: str | Path,
        onet: str | Path,
        device: str | torch.device = "cpu",
        *,
        min_face_size: float = 20.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
        nms_thresholds: tuple[float, float, float] = (0.7, 0.7, 0.7),
    ) -> None:
        self.device = torch.device(device)
        self.pnet = load_net(PNet(), pnet).to(self.device)
        self.rnet = load_net(RNet(), rnet).to(self.device)
        self.onet = load_net(ONet(), onet).to(self.device)
        self.min_face_size = float(min_face_size)
        self.thresholds = thresholds
        self.nms_thresholds = nms_thresholds

    def _scales(self, height: int, width: int) -> list[float]:
        min_detection_size = 12
        factor = 0.707
        m = min_detection_size / self.min_face_size
        min_length = min(height, width) * m
        scales = []
        count = 0
        while min_length > min_detection_size:
            scales.append(m * factor**count)
            min_length *= factor
            count += 1
        return scales

    def _stage1_boxes(self, probs: np.ndarray, offsets: np.ndarray, scale: float) -> np.ndarray:
        """P-Net maps of one image at one scale -> candidate boxes (n, 9) after NMS 0.5.

        ``probs`` (h, w) face probability, ``offsets`` (4, h, w) box regression."""
        stride, cell = 2, 12
        iy, ix = np.where(probs > self.thresholds[0])
        if iy.size == 0:
            return np.zeros((0, 9))
        tx = offsets[:, iy, ix].T  # (n, 4)
        score = probs[iy, ix]
        boxes = np.stack(
            [
                np.round((stride * ix + 1.0) / scale),
                np.round((stride * iy + 1.0) / scale),
                np.round((stride * ix + 1.0 + cell) / scale),
                np.round((stride * iy + 1.0 + cell) / scale),
                score,
                *tx.T,
            ],
            axis=1,
        )
        return boxes[nms(boxes[:, :5], 0.5)]

    @torch.no_grad()
    def _first_stage(self, pils: list[Image.Image], scale: float) -> list[np.ndarray]:
        """P-Net on same-size images at one scale, in chunks of at most ``PNET_PIXELS`` input
        pixels (memory stays bounded for any batch); candidate boxes (n, 9) per image."""
        width, height = pils[0].size
        sw, sh = math.ceil(width * scale), math.ceil(height * scale)
        per_chunk = max(1, PNET_PIXELS // (sw * sh))
        out: list[np.ndarray] = []
        for start in range(0, len(pils), per_chunk):
            chunk = pils[start : start + per_chunk]
            arr = np.concatenate(
                [
                    _preprocess(
                        np.asarray(p.resize((sw, sh), Image.Resampling.BILINEAR), np.float32)
                    )
                    for p in chunk
                ]
            )  # (b, 3, sh, sw)
            offsets, probs = self.pnet(torch.from_numpy(arr).to(self.device))  # (b, 4|2, h, w)
            probs, offsets = probs[:, 1].cpu().numpy(), offsets.cpu().numpy()
            out.extend(self._stage1_boxes(probs[j], offsets[j], scale) for j in range(len(chunk)))
        return out

    def _run_on_crops(
        self, net: nn.Module, boxes: list[np.ndarray], imgs: list[np.ndarray], size: int
    ) -> list[tuple[np.ndarray, ...]]:
        """Run ``net`` once on the ``size`` crops of every image's boxes; outputs split back per
        image (numpy arrays, one tuple per image; empty arrays where an image has no box)."""
        crops = [get_image_boxes(b, img, size) for b, img in zip(boxes, imgs, strict=True)]
        counts = [len(c) for c in crops]
        if sum(counts) == 0:
            return [() for _ in crops]
        outs = net(torch.from_numpy(np.concatenate(crops)).to(self.device))
        outs = [t.cpu().numpy() for t in outs]
        bounds = np.cumsum([0, *counts])
        return [tuple(t[bounds[k] : bounds[k + 1]] for t in outs) for k in range(len(crops))]

    def _after_stage1(self, stages: list[np.ndarray]) -> np.ndarray:
        """One image's P-Net boxes over all scales -> squared, calibrated boxes (n, 5)."""
        boxes = np.concatenate([b for b in stages if len(b)] or [np.zeros((0, 9))])
        if len(boxes) == 0:
            return np.zeros((0, 5))
        boxes = boxes[nms(boxes[:, :5], self.nms_thresholds[0])]
        boxes = calibrate_box(boxes[:, :5], boxes[:, 5:])
        boxes = convert_to_square(boxes)
        boxes[:, :4] = np.round(boxes[:, :4])
        return boxes

    def _after_stage2(self, boxes: np.ndarray, out: tuple[np.ndarray, ...]) -> np.ndarray:
        """R-Net outputs (offsets (n, 4), probs (n, 2)) -> kept, squared boxes (m, 5)."""
        if len(boxes) == 0:
            return np.zeros((0, 5))
        offsets, probs = out
        keep = np.where(probs[:, 1] > self.thresholds[1])[0]
        if len(keep) == 0:
            return np.zeros((0, 5))
        boxes = boxes[keep]
        boxes[:, 4] = probs[keep, 1]
        offsets = offsets[keep]
        keep = nms(boxes, self.nms_thresholds[1])
        boxes = calibrate_box(boxes[keep], offsets[keep])
        boxes = convert_to_square(boxes)
        boxes[:, :4] = np.round(boxes[:, :4])
        return boxes

    def _after_stage3(self, boxes: np.ndarray, out: tuple[np.ndarray, ...]) -> list[Detection]:
        """O-Net outputs (landmarks (n, 10), offsets (n, 4), probs (n, 2)) -> detections."""
        if len(boxes) == 0:
            return []
        landmarks, offsets, probs = out
        keep = np.where(probs[:, 1] > self.thresholds[2])[0]
        if len(keep) == 0:
            return []
        boxes = boxes[keep]
        boxes[:, 4] = probs[keep, 1]
        offsets, landmarks = offsets[keep], landmarks[keep]
        bw = boxes[:, 2] - boxes[:, 0] + 1.0
        bh = boxes[:, 3] - boxes[:, 1] + 1.0
        lx = boxes[:, 0:1] + bw[:, None] * landmarks[:, 0:5]
        ly = boxes[:, 1:2] + bh[:, None] * landmarks[:, 5:10]
        boxes = calibrate_box(boxes, offsets)
        keep = nms(boxes, self.nms_thresholds[2], mode="min")
        return [
            Detection(
                box=boxes[i, :4].astype(np.float64),
                score=float(boxes[i, 4]),
                landmarks=np.stack([lx[i], ly[i]], axis=1).astype(np.float64),
            )
            for i in keep
        ]

    @torch.no_grad()
    def detect(self, img: np.ndarray) -> list[Detection]:
        """Faces in an (H, W, 3) uint8 RGB image, highest score first."""
        return self.detect_batch([img])[0]

    @torch.no_grad()
    def detect_batch(self, imgs: list[np.ndarray]) -> list[list[Detection]]:
        """Faces in each of several (H, W, 3) uint8 RGB images, as ``detect`` on each one.

        Images of the same size share network calls: P-Net runs per pyramid scale on all of them
        at once, R-Net and O-Net on the candidate crops of all of them at once. Images of other
        sizes form their own groups."""
        imgs = [np.ascontiguousarray(img) for img in imgs]
        for img in imgs:
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"expected (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, img in enumerate(imgs):
            groups.setdefault(img.shape, []).append(k)
        result: list[list[Detection]] = [[] for _ in imgs]
        for (height, width, _), members in groups.items():
            group = [imgs[k] for k in members]
            for k, dets in zip(members, self._detect_same_size(group, height, width), strict=True):
                result[k] = dets
        return result

    def _detect_same_size(
        self, imgs: list[np.ndarray], height: int, width: int
    ) -> list[list[Detection]]:
        """The three stages on images of one size (see ``detect_batch``)."""
        pils = [Image.fromarray(img, "RGB") for img in imgs]
        per_scale = [self._first_stage(pils, s) for s in self._scales(height, width)]
        boxes = [self._after_stage1([st[k] for st in per_scale]) for k in range(len(imgs))]
        outs = self._run_on_crops(self.rnet, boxes, imgs, 24)
        boxes = [self._after_stage2(b, o) for b, o in zip(boxes, outs, strict=True)]
        outs = self._run_on_crops(self.onet, boxes, imgs, 48)
        return [self._after_stage3(b, o) for b, o in zip(boxes, outs, strict=True)]


def mtcnn_paths(weights_dir: str | Path | None = None) -> tuple[Path, Path, Path]:
    """Resolve ``mtcnn-pnet``, ``mtcnn-rnet``, ``mtcnn-onet`` through the registry."""
    return tuple(  # type: ignore[return-value]
        registry.resolve(f"mtcnn-{stage}", weights_dir, purpose="align --detector mtcnn")
        for stage in ("pnet", "rnet", "onet")
    )


def load_mtcnn(weights_dir: str | Path | None = None, device: str | torch.device = "cpu") -> MTCNN:
    """An ``MTCNN`` with weights found through the registry."""
    return MTCNN(*mtcnn_paths(weights_dir), device=device)
