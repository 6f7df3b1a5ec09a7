"""Landmark backends for alignment: face-alignment's FAN (68 points), MTCNN (5), a JSON file.

``select_detector("auto")`` picks FAN when both its files (2DFAN4 and S3FD, under
``hub/checkpoints`` of a weights folder) are found through the registry, else MTCNN when its three
files are found, else raises a one-line ``ModelFileError`` saying how to fetch them.

Every detector returns ``list[Face]``; ``choose_face`` picks the largest face (or ``--face-index``,
counted in order of decreasing box area).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from talkcli.errors import InputFileError, ModelFileError, UserError
from talkcli.io.files import require_file
from talkcli.weights import registry

DETECTORS = ("auto", "fan", "mtcnn")
FAN_FILES = ("fan-2d", "s3fd")
MTCNN_FILES = ("mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet")


@dataclass
class Face:
    """One detected face: landmarks (68 or 5, 2) in source pixels, box [x1, y1, x2, y2], score."""

    landmarks: np.ndarray
    box: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


class LandmarkDetector(Protocol):
    """What alignment needs of a detector. A detector may also offer ``detect_batch(frames) ->
    list[list[Face]]`` (same results as ``detect`` on each frame, fewer network calls);
    ``detect_frames`` uses it when present and loops over ``detect`` otherwise."""

    name: str

    def detect(self, img: np.ndarray) -> list[Face]:
        """Faces in an (H, W, 3) uint8 RGB image."""
        ...


def detect_frames(detector: LandmarkDetector, frames: list[np.ndarray]) -> list[list[Face]]:
    """Faces in each of ``frames`` ((H, W, 3) uint8 RGB): the detector's ``detect_batch`` when it
    has one (batched network calls, for GPUs), else ``detect`` frame by frame."""
    batch = getattr(detector, "detect_batch", None)
    if batch is None or len(frames) < 2:
        return [detector.detect(frame) for frame in frames]
    found = batch(list(frames))
    if len(found) != len(frames):
        raise RuntimeError(
            f"{detector.name}: detect_batch gave {len(found)} results for {len(frames)} frames"
        )
    return found


def box_of(landmarks: np.ndarray) -> np.ndarray:
    """Bounding box [x1, y1, x2, y2] of landmark points."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()])


class MTCNNDetector:
    """MTCNN, 5 points (eyes, nose, mouth corners); weights ``mtcnn-{pnet,rnet,onet}``."""

    name = "mtcnn"

    def __init__(
        self, weights_dir: str | Path | None = None, device: str = "cpu", batch_on_cpu: bool = False
    ) -> None:
        from talkcli.face.mtcnn import load_mtcnn

        self.model = load_mtcnn(weights_dir, device)
        # Batched MTCNN pays off on a GPU; on a CPU it measured 0.85-1.15x (slower on real-size
        # frames: larger activations fall out of cache), so there frames go one at a time.
        self.batched = batch_on_cpu or str(device).split(":")[0] != "cpu"

    def detect(self, img: np.ndarray) -> list[Face]:
        return [Face(d.landmarks, d.box, d.score) for d in self.model.detect(img)]

    def detect_batch(self, frames: list[np.ndarray]) -> list[list[Face]]:
        """As ``detect`` on each frame; on a GPU (or with ``batch_on_cpu``) same-size frames
        share P-, R- and O-Net calls (``MTCNN.detect_batch``), on a CPU they go one by one."""
        if self.batched:
            found = self.model.detect_batch(frames)
        else:
            found = [self.model.detect(f) for f in frames]
        return [[Face(d.landmarks, d.box, d.score) for d in dets] for dets in found]


@contextlib.contextmanager
def _torch_hub_dir(path: Path) -> Iterator[None]:
    import torch.hub

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(path))
    try:
        yield
    finally:
        torch.hub.set_dir(old)


class FANDetector:
    """face-alignment's 2D FAN with its S3FD detector, 68 iBUG points.

    face-alignment only looks in ``<torch hub dir>/checkpoints``; the registry's ``torch_hub_dir``
    is the weights folder holding ``hub/checkpoints/2DFAN4-...``. Both files are resolved first
    so a missing one is a one-line error instead of a download attempt.

    Model files are untrusted: face-alignment unpickles S3FD in full (through torch.hub), so both
    files are first loaded by talkcli's safe loader (a crafted file is refused, exit 2), S3FD is
    handed over by path (face-alignment then loads it weights-only), and face-alignment runs with
    every ``torch.load`` forced to ``weights_only=True``.
    """

    name = "fan"

    def __init__(self, weights_dir: str | Path | None = None, device: str = "cpu") -> None:
        from talkcli.weights.safe_load import load_torch_file, weights_only_everywhere

        paths = {
            name: registry.resolve(name, weights_dir, purpose="align --detector fan")
            for name in FAN_FILES
        }
        for name in ("s3fd", "fan-2d"):  # face-alignment reads S3FD first
            load_torch_file(paths[name], "model file")
        try:
            import face_alignment
        except ImportError as exc:  # pragma: no cover - installed by `make install`
            raise UserError(
                f"the face-alignment package is not installed ({exc}); "
                "`pip install --no-deps face-alignment` or use --detector mtcnn"
            ) from None
        with _torch_hub_dir(registry.torch_hub_dir(weights_dir)), weights_only_everywhere():
            try:
                self.model = face_alignment.FaceAlignment(
                    face_alignment.LandmarksType.TWO_D,
                    device=str(device),
                    face_detector="sfd",
                    face_detector_kwargs={"path_to_detector": str(paths["s3fd"])},
                    compile=False,
                )
            except Exception as exc:  # torch.load / state-dict errors of a bad file
                path = registry.locate("fan-2d", weights_dir)
                raise ModelFileError(
                    path or "hub/checkpoints",
                    f"face-alignment could not load its model files ({_first_line(exc)})",
                    "re-fetch them with `talkcli weights fetch fan-2d s3fd`",
                ) from None

    def detect(self, img: np.ndarray) -> list[Face]:
        result = self.model.get_landmarks_from_image(img, return_bboxes=True)
        landmarks, _scores, boxes = result
        if landmarks is None:
            return []
        return _fan_faces(landmarks, boxes)

    def detect_batch(self, frames: list[np.ndarray]) -> list[list[Face]]:
        """As ``detect`` on each frame. Frames of one size go through S3FD as one (B, 3, H, W)
        uint8 tensor on the detector's device (``get_landmarks_from_batch``); FAN then runs per
        frame on that frame's face crops, as face-alignment 1.5 does. Mixed sizes: per frame."""
        if len({f.shape for f in frames}) != 1:
            return [self.detect(f) for f in frames]
        import torch

        batch = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
        batch = batch.to(self.model.device)
        landmarks, _scores, boxes = self.model.get_landmarks_from_batch(batch, return_bboxes=True)
        if landmarks is None:  # only for an empty batch
            return [[] for _ in frames]
        # face-alignment concatenates a frame's faces: (68 * faces, 2) or [] for none
        return [
            _fan_faces(np.asarray(lm, dtype=np.float64).reshape(-1, 68, 2), bx) if len(bx) else []
            for lm, bx in zip(landmarks, boxes, strict=True)
        ]


def _fan_faces(landmarks: Any, boxes: Any) -> list[Face]:
    """face-alignment's per-face landmarks (68, 2|3) and boxes [x1, y1, x2, y2, score]."""
    faces = []
    for lm, box in zip(landmarks, boxes, strict=False):
        box = np.asarray(box, dtype=np.float64)
        faces.append(Face(np.asarray(lm, dtype=np.float64)[:, :2], box[:4], float(box[4])))
    return faces


def available_backends(weights_dir: str | Path | None = None) -> dict[str, bool]:
    """Which detector backends have all their model files present."""
    return {
        "fan": all(registry.locate(n, weights_dir) is not None for n in FAN_FILES),
        "mtcnn": all(registry.locate(n, weights_dir) is not None for n in MTCNN_FILES),
    }


def choose_backend(name: str, weights_dir: str | Path | None = None) -> str:
    """Resolve ``auto|fan|mtcnn`` to ``fan`` or ``mtcnn`` (``auto``: FAN if present, else MTCNN)."""
    name = (name or "auto").lower()
    if name not in DETECTORS:
        raise UserError(f"--detector {name!r}: expected one of {', '.join(DETECTORS)}")
    if name != "auto":
        return name
    have = available_backends(weights_dir)
    if have["fan"]:
        return "fan"
    if have["mtcnn"]:
        return "mtcnn"
    target = registry.fetch_dir(weights_dir) / "mtcnn"
    raise ModelFileError(
        target,
        "no face landmark model found (neither FAN nor MTCNN)",
        "run `talkcli weights fetch mtcnn-pnet mtcnn-rnet mtcnn-onet` (small), or "
        "`talkcli weights fetch fan-2d s3fd`, or pass --landmarks FILE; searched "
        + registry.search_path(weights_dir).describe(),
    )


def select_detector(
    name: str = "auto", weights_dir: str | Path | None = None, device: str = "cpu"
) -> LandmarkDetector:
    """Build the detector for ``--detector NAME``."""
    backend = choose_backend(name, weights_dir)
    if backend == "fan":
        return FANDetector(weights_dir, device)
    return MTCNNDetector(weights_dir, device)


def choose_face(faces: list[Face], face_index: int | None = None) -> Face:
    """The largest face, or the ``face_index``-th in order of decreasing box area."""
    if not faces:
        raise ValueError("no faces")
    ordered = sorted(faces, key=lambda f: f.area, reverse=True)
    index = 0 if face_index is None else int(face_index)
    if index < 0 or index >= len(ordered):
        n = len(ordered)
        raise UserError(f"--face-index {index}: only {n} face(s) found (indices 0..{n - 1})")
    return ordered[index]


# -- landmarks from a JSON file ------------------------------------------------------------------


def _points(value: Any, path: Path, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputFileError(path, f"{where}: landmarks must be numbers [[x, y], ...]") from None
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] not in (68, 5):
        raise InputFileError(
            path, f"{where}: expected 68 or 5 points [[x, y], ...], got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise InputFileError(path, f"{where}: landmarks contain NaN or infinite values")
    return arr


def load_landmarks_file(path: str | Path) -> dict[str, Any]:
    """Read ``{"landmarks": [[x, y], ...]}`` or ``{"frames": [[[x, y], ...], ...]}``.

    Returns ``{"landmarks": (P, 2)}`` or ``{"frames": [(P, 2) | None, ...]}`` (``null`` frames are
    allowed in a video file and are interpolated).
    """
    p = require_file(path, "landmarks file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(
            p, f"is not valid JSON ({exc})", "see `talkcli align --help`"
        ) from None
    if not isinstance(data, dict) or not ({"landmarks", "frames"} & set(data)):
        raise InputFileError(
            p, 'expected {"landmarks": [[x, y], ...]} or {"frames": [[[x, y], ...], ...]}'
        )
    if "landmarks" in data:
        return {"landmarks": _points(data["landmarks"], p, "landmarks")}
    frames = data["frames"]
    if not isinstance(frames, list) or not frames:
        raise InputFileError(p, '"frames" must be a non-empty list of landmark lists')
    out = [None if f is None else _points(f, p, f"frame {i}") for i, f in enumerate(frames)]
    if all(f is None for f in out):
        raise InputFileError(p, '"frames" has no landmarks (all null)')
    if len({f.shape[0] for f in out if f is not None}) > 1:
        raise InputFileError(p, '"frames" mixes 68-point and 5-point landmarks')
    return {"frames": out}


LANDMARK_MARGIN = 0.1  # given landmarks may lie this fraction of the image size past its border


def check_landmarks_inside(
    points: np.ndarray, width: int, height: int, source: str | Path, where: str = "landmarks"
) -> None:
    """Refuse given landmarks that lie outside the image (beyond a 10% margin for faces cut by
    the border): they would describe a crop of nothing, or a warp of absurd size."""
    pts = np.asarray(points, dtype=np.float64)
    mx, my = LANDMARK_MARGIN * width, LANDMARK_MARGIN * height
    outside = (
        (pts[:, 0] < -mx) | (pts[:, 0] > width + mx) | (pts[:, 1] < -my) | (pts[:, 1] > height + my)
    )
    if outside.any():
        i = int(np.argmax(outside))
        x, y = pts[i]
        raise InputFileError(
            source,
            f"{where}: point {i} at ({x:.6g}, {y:.6g}) lies outside the {width}x{height} image",
            "give landmarks in the input's pixel coordinates",
        )


class FileLandmarks:
    """A detector that returns landmarks given in a file (``--landmarks FILE``)."""

    name = "file"

    def __init__(self, landmarks: np.ndarray) -> None:
        self.landmarks = np.asarray(landmarks, dtype=np.float64)

    def detect(self, img: np.ndarray) -> list[Face]:
        return [Face(self.landmarks, box_of(self.landmarks), 1.0)]

    def detect_batch(self, frames: list[np.ndarray]) -> list[list[Face]]:
        return [self.detect(f) for f in frames]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__
