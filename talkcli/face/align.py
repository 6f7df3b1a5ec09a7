"""Alignment of images, videos and batches: detection -> FFHQ crop -> PNG/MP4 + sidecar JSON.

Library entry points (the ``talkcli align`` command only parses options and calls these):

* ``align_image_array(img, landmarks, size, exact)``: one RGB array -> (aligned, AlignMeta).
* ``align_image_file(path, out_dir, cfg)``: writes ``OUT/<stem>.png`` and ``OUT/<stem>.json``.
* ``align_video_file(path, out_dir, cfg)``: decodes at ``cfg.fps``, detects every
  ``cfg.detect_every`` frames (linear interpolation between), smooths the crop over time (STIT:
  Gaussian on centre and axes), writes ``OUT/<stem>.mp4`` with the original audio and a per-frame
  sidecar ``OUT/<stem>.json``.
* ``align_inputs(inputs, out_dir, cfg)``: files, folders, globs; one result per input, failures
  recorded, ``--resume`` skips finished items; writes ``OUT/align-status.json``.

Sidecars hold ``quad`` (4x2 source pixels, FFHQ corner order), ``landmarks``, ``detector``,
``source``, ``source_size`` [w, h], ``size`` and ``matrix`` (3x3, aligned pixel -> source pixel).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkcli import __version__
from talkcli.errors import InputFileError, TalkcliError, UserError
from talkcli.face.ffhq import (
    AlignMeta,
    QuadParams,
    align_quad_exact,
    align_quad_fast,
    quad_params,
    smooth_quad_params,
)
from talkcli.face.landmarks import (
    Face,
    FileLandmarks,
    LandmarkDetector,
    check_landmarks_inside,
    choose_face,
    detect_frames,
    load_landmarks_file,
    select_detector,
)
from talkcli.guards import check_frame_count, check_number
from talkcli.io.files import sha256_file, write_json_atomic
from talkcli.io.images import IMAGE_EXTS, VIDEO_EXTS, expand_inputs, read_image_rgb, write_png
from talkcli.ranges import ALIGN as ALIGN_RANGES
from talkcli.ranges import option_name

STATUS_FILE = "align-status.json"
ProgressFn = Callable[[int, int | None], None]  # (frames done, total or None)


@dataclass
class AlignConfig:
    """Options of ``talkcli align`` (see the command's help)."""

    size: int = 1024
    detector: str = "auto"
    landmarks_file: Path | None = None
    face_index: int | None = None
    fps: float = 25.0
    detect_every: int = 1
    detect_batch: int = 8  # video key frames per detector call (1: one frame at a time)
    smooth: float = 1.0  # centre sigma in frames; axes use 3x (STIT: 1 and 3); 0 = off
    exact_warp: bool | None = None  # None: exact for images, fast for video
    resume: bool = False
    weights_dir: Path | None = None
    device: str = "cpu"

    def options(self, kind: str) -> dict[str, Any]:
        """The options that shape an output of ``kind`` ("image"/"video"), recorded in its
        sidecar; ``--resume`` redoes an item whose recorded options differ."""
        opts: dict[str, Any] = {
            "size": int(self.size),
            "detector": self.detector,
            "face_index": self.face_index,
            "landmarks_file": str(self.landmarks_file) if self.landmarks_file else None,
        }
        if kind == "video":
            opts.update(
                fps=float(self.fps),
                detect_every=int(self.detect_every),
                smooth=float(self.smooth),
                exact_warp=bool(self.exact_warp),
            )
        else:
            opts["exact_warp"] = True if self.exact_warp is None else bool(self.exact_warp)
        return opts

    def check(self) -> None:
        """The command's option ranges, for library callers too (see ``talkcli align --help``)."""
        for name, (lo, hi) in ALIGN_RANGES.items():  # talkcli.ranges, as the CLI's
            check_number(option_name(name), getattr(self, name), lo, hi)


@dataclass
class ItemResult:
    """What happened to one input."""

    source: Path
    status: str  # "ok" | "skipped" | "failed"
    output: Path | None = None
    sidecar: Path | None = None
    message: str = ""
    faces: int = 0
    frames: int = 0
    kind: str = "image"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "status": self.status,
            "kind": self.kind,
            "output": str(self.output) if self.output else None,
            "sidecar": str(self.sidecar) if self.sidecar else None,
            "message": self.message,
            "faces": self.faces,
            "frames": self.frames,
        }


@dataclass
class Detectors:
    """Lazily built landmark detector shared by all items of a run."""

    cfg: AlignConfig
    _detector: LandmarkDetector | None = field(default=None, init=False)

    def get(self) -> LandmarkDetector:
        if self._detector is None:
            self._detector = select_detector(
                self.cfg.detector, self.cfg.weights_dir, self.cfg.device
            )
        return self._detector


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def output_paths(path: Path, out_dir: Path) -> tuple[Path, Path]:
    """(aligned output, sidecar) for an input: ``OUT/<stem>.png|.mp4`` and ``OUT/<stem>.json``."""
    suffix = ".mp4" if is_video(path) else ".png"
    return out_dir / f"{path.stem}{suffix}", out_dir / f"{path.stem}.json"


def align_image_array(
    img: np.ndarray, landmarks: np.ndarray, size: int = 1024, exact: bool = True
) -> tuple[np.ndarray, AlignMeta]:
    """FFHQ-align an (H, W, 3) uint8 RGB array from 68 or 5 landmarks."""
    quad = quad_params(landmarks).quad
    out, meta = (align_quad_exact if exact else align_quad_fast)(img, quad, size)
    meta.extra["landmarks"] = np.asarray(landmarks, dtype=float).tolist()
    return out, meta


def detect_face(
    img: np.ndarray, detector: LandmarkDetector, face_index: int | None, source: Path
) -> tuple[Face, int]:
    """(chosen face, number of faces) or ``InputFileError`` naming ``source`` if none."""
    faces = detector.detect(img)
    if not faces:
        raise InputFileError(
            source,
            f"no face found (detector {detector.name})",
            "use a photo with a visible frontal face, or pass --landmarks FILE",
        )
    try:
        return choose_face(faces, face_index), len(faces)
    except UserError as exc:
        raise InputFileError(source, str(exc)) from None


# -- images --------------------------------------------------------------------------------------


def align_image_file(
    path: Path,
    out_dir: Path,
    cfg: AlignConfig,
    detectors: Detectors | None = None,
    landmarks: np.ndarray | None = None,
) -> ItemResult:
    """Align one image file; writes ``OUT/<stem>.png`` then ``OUT/<stem>.json``."""
    detectors = detectors or Detectors(cfg)
    img = read_image_rgb(path)
    if landmarks is not None:
        check_landmarks_inside(
            landmarks, img.shape[1], img.shape[0], cfg.landmarks_file or path, "--landmarks"
        )
        detector: LandmarkDetector = FileLandmarks(landmarks)
    else:
        detector = detectors.get()
    face, count = detect_face(img, detector, cfg.face_index, path)
    exact = True if cfg.exact_warp is None else cfg.exact_warp
    aligned, meta = align_image_array(img, face.landmarks, cfg.size, exact)
    out_path, side_path = output_paths(path, out_dir)
    write_png(out_path, aligned)
    sidecar = {
        "source": str(path.resolve()),
        "source_sha256": sha256_file(path),
        "kind": "image",
        "output": out_path.name,
        "detector": detector.name,
        "face_count": count,
        "face_index": cfg.face_index or 0,
        "score": face.score,
        "box": np.asarray(face.box, dtype=float).tolist(),
        **meta.to_dict(),
        "inverse_matrix": meta.inverse_matrix.tolist(),
        "options": cfg.options("image"),
        "talkcli": __version__,
    }
    write_json_atomic(side_path, sidecar)
    return ItemResult(path, "ok", out_path, side_path, faces=count, frames=1)


# -- video ---------------------------------------------------------------------------------------


def interpolate_landmarks(keyed: dict[int, np.ndarray], n_frames: int) -> np.ndarray:
    """Linear interpolation of landmarks between key frames; held constant beyond the ends.

    ``keyed`` maps frame index -> (P, 2) landmarks (frames without a face are left out).
    Returns (n_frames, P, 2).
    """
    if not keyed:
        raise ValueError("no key frames")
    idx = np.array(sorted(keyed))
    pts = np.stack([keyed[i] for i in idx]).astype(np.float64)  # (K, P, 2)
    flat = pts.reshape(len(idx), -1)
    t = np.arange(n_frames)
    out = np.stack([np.interp(t, idx, flat[:, j]) for j in range(flat.shape[1])], axis=1)
    return out.reshape(n_frames, *pts.shape[1:])


def _centre(face: Face) -> np.ndarray:
    return np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])


def _track(faces: list[Face], previous: Face | None, face_index: int | None) -> Face:
    """The face to follow: by --face-index on the first detection, then the nearest one."""
    if previous is None or len(faces) == 1:
        return choose_face(faces, face_index) if previous is None else faces[0]
    c = _centre(previous)
    return min(faces, key=lambda f: float(np.hypot(*(_centre(f) - c))))


def smooth_quads(params: list[QuadParams], sigma: float) -> list[QuadParams]:
    """STIT smoothing: Gaussian of ``sigma`` frames on the centre and ``3 * sigma`` on the axes."""
    if sigma <= 0:
        return list(params)
    return smooth_quad_params(params, sigma, 3.0 * sigma)


@dataclass
class VideoLandmarks:
    """Pass 1 of ``align_video_file``: landmarks at key frames of a video read at ``cfg.fps``."""

    keyed: dict[int, np.ndarray]  # frame index -> (P, 2) landmarks, frames with a face only
    scores: dict[int, float]  # frame index -> detector score (detected frames only)
    face_counts: list[int]  # faces found in each frame where the detector ran
    n_frames: int  # frames decoded at cfg.fps
    detector_name: str  # "file" when the landmarks were given
    source_size: tuple[int, int]  # (w, h) of the decoded frames
    total: int  # frames expected from the probe (progress: 2 * total steps in all)


def _detect_key_frames(
    path: Path,
    frames: Iterable[np.ndarray],
    detector: LandmarkDetector,
    cfg: AlignConfig,
    marks: VideoLandmarks,
    progress: ProgressFn | None,
) -> None:
    """Detect every ``cfg.detect_every`` frames (and in the last one: no extrapolation),
    following one face (``_track``); fills ``marks`` in place.

    Key frames are detected ``cfg.detect_batch`` at a time (``detect_frames``: one batched
    network call where the detector has ``detect_batch``); at most that many frames are held.
    Tracking still runs frame by frame in order."""
    previous: Face | None = None
    pending: list[tuple[int, np.ndarray]] = []  # key frames waiting for detection

    def flush() -> None:
        nonlocal previous
        found = detect_frames(detector, [frame for _, frame in pending])
        for (i, _), faces in zip(pending, found, strict=True):
            marks.face_counts.append(len(faces))
            if not faces:
                continue
            try:
                previous = _track(faces, previous, cfg.face_index)
            except UserError as exc:
                raise InputFileError(path, f"frame {i}: {exc}") from None
            marks.keyed[i], marks.scores[i] = previous.landmarks, previous.score
        pending.clear()

    batch = max(int(cfg.detect_batch), 1)
    last: np.ndarray | None = None
    n = 0
    for i, frame in enumerate(frames):
        n = i + 1
        last = frame
        if i % cfg.detect_every == 0:
            pending.append((i, frame))
            if len(pending) >= batch:
                flush()
        if progress:
            progress(i + 1, 2 * marks.total)
    if n and (n - 1) % cfg.detect_every and last is not None:
        pending.append((n - 1, last))  # always key the last frame: no extrapolation
    if pending:
        flush()
    marks.n_frames = n


def _given_key_frames(
    path: Path,
    frames: Iterable[np.ndarray],
    cfg: AlignConfig,
    landmark_data: dict[str, Any],
    marks: VideoLandmarks,
) -> None:
    """Key frames from a ``--landmarks`` file: one set for every frame, or one per frame
    (``"frames"``, null where unknown); checked against the video; fills ``marks``."""
    file_frames: list[np.ndarray | None] | None = landmark_data.get("frames")
    static: np.ndarray | None = landmark_data.get("landmarks")
    w_src, h_src = marks.source_size
    given = [static] if static is not None else [f for f in file_frames if f is not None]
    for j, pts in enumerate(given):
        where = "--landmarks" if static is not None else f"--landmarks frame {j}"
        check_landmarks_inside(pts, w_src, h_src, cfg.landmarks_file or path, where)
    n = marks.n_frames = sum(1 for _ in frames)
    if file_frames is not None:
        if len(file_frames) != n:
            raise InputFileError(
                cfg.landmarks_file or path,
                f'"frames" has {len(file_frames)} entries but the video has {n} frames '
                f"at {cfg.fps:g} fps",
                "give one entry per frame (null for unknown frames)",
            )
        marks.keyed = {i: f for i, f in enumerate(file_frames) if f is not None}
    else:
        marks.keyed = {0: static}  # type: ignore[dict-item]


def video_landmarks(
    path: Path,
    cfg: AlignConfig,
    detectors: Detectors,
    landmark_data: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> VideoLandmarks:
    """Pass 1: decode at ``cfg.fps`` and key landmarks (detected, or given by ``landmark_data``).

    Raises ``InputFileError`` when the video has no frames or no face in any frame.
    """
    from talkcli.io.video import VideoReader

    with VideoReader(path, fps=cfg.fps) as reader:
        total = max(check_frame_count(path, reader.info.duration * cfg.fps, cfg.fps), 1)
        marks = VideoLandmarks({}, {}, [], 0, "file", (reader.width, reader.height), total)
        given = landmark_data is not None and (
            landmark_data.get("frames") is not None or landmark_data.get("landmarks") is not None
        )
        if given:
            _given_key_frames(path, reader, cfg, landmark_data, marks)
        else:
            detector = detectors.get()
            marks.detector_name = detector.name
            _detect_key_frames(path, reader, detector, cfg, marks, progress)
    if marks.n_frames == 0:
        raise InputFileError(path, "has no video frames")
    if not marks.keyed:
        raise InputFileError(
            path,
            f"no face found in any frame (detector {marks.detector_name})",
            "or pass --landmarks",
        )
    return marks


def warp_video(
    path: Path,
    out_path: Path,
    cfg: AlignConfig,
    marks: VideoLandmarks,
    landmarks: np.ndarray,
    quads: list[QuadParams],
    progress: ProgressFn | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Pass 2: decode again, warp each frame by its (smoothed) quad, encode ``out_path`` with
    the source's audio. ``landmarks`` is (n, P, 2). Returns (per-frame metadata, has audio)."""
    from talkcli.io.video import VideoReader, VideoWriter

    warp = align_quad_exact if cfg.exact_warp else align_quad_fast
    n, total = marks.n_frames, marks.total
    frames_meta: list[dict[str, Any]] = []
    with VideoReader(path, fps=cfg.fps) as reader:
        audio = path if reader.info.has_audio else None
        with VideoWriter(
            out_path, cfg.fps, (cfg.size, cfg.size), audio=audio, trim_audio=True
        ) as w:
            for i, frame in enumerate(reader):
                if i >= n:
                    raise InputFileError(path, "decoded a different number of frames twice")
                aligned, meta = warp(frame, quads[i].quad, cfg.size)
                w.write(aligned)
                frames_meta.append(
                    {
                        "index": i,
                        "detected": i in marks.keyed,
                        "score": marks.scores.get(i),
                        "quad": meta.quad.tolist(),
                        "matrix": meta.matrix.tolist(),
                        "landmarks": landmarks[i].tolist(),
                    }
                )
                if progress:
                    progress(total + int(round((i + 1) * total / n)), 2 * total)
            w.close()
    return frames_meta, audio is not None


def _video_sidecar(
    path: Path,
    out_path: Path,
    cfg: AlignConfig,
    marks: VideoLandmarks,
    frames_meta: list[dict[str, Any]],
    has_audio: bool,
) -> dict[str, Any]:
    """The sidecar JSON of an aligned video (keys and order are a contract)."""
    return {
        "source": str(path.resolve()),
        "source_sha256": sha256_file(path),
        "kind": "video",
        "output": out_path.name,
        "detector": marks.detector_name,
        "source_size": list(marks.source_size),
        "size": cfg.size,
        "fps": cfg.fps,
        "n_frames": marks.n_frames,
        "detect_every": cfg.detect_every,
        "smooth": {"center_sigma": cfg.smooth, "axis_sigma": 3.0 * cfg.smooth},
        "warp": "exact" if cfg.exact_warp else "fast",
        "has_audio": has_audio,
        "face_counts": marks.face_counts,
        "frames": frames_meta,
        "options": cfg.options("video"),
        "talkcli": __version__,
    }


def align_video_file(
    path: Path,
    out_dir: Path,
    cfg: AlignConfig,
    detectors: Detectors | None = None,
    landmark_data: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> ItemResult:
    """Align a video: two decoding passes (landmarks, then warp) -> ``OUT/<stem>.mp4`` + JSON."""
    if cfg.size % 2:
        raise UserError(f"--size {cfg.size}: a video needs an even size (H.264 yuv420p)")
    marks = video_landmarks(path, cfg, detectors or Detectors(cfg), landmark_data, progress)
    landmarks = interpolate_landmarks(marks.keyed, marks.n_frames)  # (n, P, 2)
    quads = smooth_quads([quad_params(lm) for lm in landmarks], cfg.smooth)
    out_path, side_path = output_paths(path, out_dir)
    frames_meta, has_audio = warp_video(path, out_path, cfg, marks, landmarks, quads, progress)
    sidecar = _video_sidecar(path, out_path, cfg, marks, frames_meta, has_audio)
    write_json_atomic(side_path, sidecar, indent=None)  # one line: thousands of frames
    faces = max(marks.face_counts, default=1)
    return ItemResult(
        path, "ok", out_path, side_path, faces=faces, frames=marks.n_frames, kind="video"
    )


# -- batches -------------------------------------------------------------------------------------


def collect_inputs(items: list[str] | list[Path]) -> list[Path]:
    """Expand files, folders and globs to images and videos; refuse clashing output names."""
    paths = expand_inputs(list(items), IMAGE_EXTS + VIDEO_EXTS)
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen:
            raise UserError(
                f"{p} and {seen[p.stem]} would both be written as {p.stem}.* "
                "(align them into different --out folders)"
            )
        seen[p.stem] = p
    return paths


def is_done(path: Path, out_dir: Path, cfg: AlignConfig) -> bool:
    """An item is finished when its output and its sidecar (written last) both exist and the
    sidecar records the same options (``--size``, ``--fps``...) as this run."""
    out, side = output_paths(path, out_dir)
    if not (out.is_file() and side.is_file()):
        return False
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    kind = "video" if is_video(path) else "image"
    return isinstance(data, dict) and data.get("options") == cfg.options(kind)


def align_one(
    path: Path,
    out_dir: Path,
    cfg: AlignConfig,
    detectors: Detectors,
    landmark_data: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> ItemResult:
    """Align one input (image or video) with errors propagated."""
    if is_video(path):
        return align_video_file(path, out_dir, cfg, detectors, landmark_data, progress)
    lm = None
    if landmark_data is not None:
        if "landmarks" not in landmark_data:
            raise InputFileError(
                cfg.landmarks_file or path,
                'has "frames" (for a video) but the input is an image',
                'use {"landmarks": [[x, y], ...]}',
            )
        lm = landmark_data["landmarks"]
    return align_image_file(path, out_dir, cfg, detectors, lm)


def align_inputs(
    inputs: list[Path],
    out_dir: Path,
    cfg: AlignConfig,
    *,
    on_item: Callable[[ItemResult], None] | None = None,
    progress: Callable[[Path], ProgressFn | None] | None = None,
) -> list[ItemResult]:
    """Align every input. A single input raises its error; in a batch failures are recorded.

    Writes ``OUT/align-status.json`` (per-item status) for batches.
    """
    cfg.check()
    out_dir = Path(out_dir)
    landmark_data = None
    if cfg.landmarks_file is not None:
        if len(inputs) != 1:
            raise UserError("--landmarks FILE applies to a single input; give exactly one")
        landmark_data = load_landmarks_file(cfg.landmarks_file)
    detectors = Detectors(cfg)
    single = len(inputs) == 1
    results: list[ItemResult] = []
    for path in inputs:
        kind = "video" if is_video(path) else "image"
        if cfg.resume and is_done(path, out_dir, cfg):
            out, side = output_paths(path, out_dir)
            res = ItemResult(path, "skipped", out, side, message="already aligned", kind=kind)
        else:
            try:
                res = align_one(
                    path,
                    out_dir,
                    cfg,
                    detectors,
                    landmark_data,
                    progress(path) if progress else None,
                )
            except TalkcliError as exc:
                if single or exc.exit_code != 2 or _is_global(exc):
                    raise
                res = ItemResult(path, "failed", message=str(exc).splitlines()[0], kind=kind)
        results.append(res)
        if on_item:
            on_item(res)
        if not single:
            write_json_atomic(
                out_dir / STATUS_FILE,
                {"items": [r.to_dict() for r in results], "talkcli": __version__},
            )
    return results


def _is_global(exc: TalkcliError) -> bool:
    """Errors that would fail every item (missing model files, unwritable output folder)."""
    from talkcli.errors import ModelFileError, OutputError

    return isinstance(exc, ModelFileError | OutputError)
