"""Evaluate generated videos: every metric over every pair, streamed, deterministic.

``plan(cfg)`` decides which metrics run and resolves their model files first (a missing file skips
the metric with a note, or is a one-line error when the metric was asked for by name);
``evaluate(pairs, cfg, plan)`` then reads each generated video and its reference at a common
frame rate and evaluation size in batches (frames matched by index, the shorter length used),
computes the per-frame metrics (PSNR, SSIM, LPIPS, LMD, CPBD), accumulates Inception statistics
for FID over all frames of all videos, and scores LSE-C/LSE-D on SyncNet face crops of the
generated video with its own audio. Memory stays bounded by the batch size (plus a few numbers
per frame).

Reproducibility: ``deterministic(threads, seed, device)`` fixes torch's thread count and seed
(and on GPUs turns on deterministic algorithms); nothing random is drawn, so a rerun gives
identical values.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talkcli.constants import SAMPLE_RATE
from talkcli.errors import InputFileError, ModelFileError, TalkcliError, UserError
from talkcli.metrics.inputs import Pair
from talkcli.metrics.motion import MOTION_COLUMNS

if TYPE_CHECKING:
    from talkcli.runtime import ModelSet

METRICS = ("psnr", "ssim", "lpips", "fid", "lmd", "cpbd", "lse", "motion")
NEEDS_REFERENCE = frozenset({"psnr", "ssim", "lpips", "lmd"})  # FID: a reference or --fid-stats
COLUMNS = {
    "psnr": ("psnr",),
    "ssim": ("ssim",),
    "lpips": ("lpips",),
    "fid": ("fid",),
    "lmd": ("lmd", "lmd_face"),
    "cpbd": ("cpbd",),
    "lse": ("lse_d", "lse_c", "lse_offset"),
    "motion": MOTION_COLUMNS,  # blink rate, pose std, mouth-audio r; pose error with a reference
}
PER_FRAME = ("psnr", "ssim", "lpips", "lmd", "lmd_face", "cpbd")
HIGHER_IS_BETTER = {
    "psnr": True,
    "ssim": True,
    "lpips": False,
    "fid": False,
    "lmd": False,
    "lmd_face": False,
    "cpbd": True,
    "lse_d": False,
    "lse_c": True,
    "mouth_audio_r": True,
    "pose_error": False,
}
CROPS = ("full", "aligned")
FACE_CROPS = ("auto", "detect", "aligned")
LPIPS_NETS = ("alex", "vgg")
LSE_PROTOCOLS = ("direct", "syncnet")  # crops of decoded frames / syncnet_python's file round trips
DEFAULT_THREADS = 4


def default_threads() -> int:
    """The default ``--threads``: 4, or fewer on smaller machines (recorded in every report)."""
    return max(1, min(DEFAULT_THREADS, os.cpu_count() or 1))


@dataclass
class EvalConfig:
    """Options of ``talkcli evaluate`` (see its help and docs/evaluate.md)."""

    metrics: tuple[str, ...] = METRICS
    named: bool = False  # metrics were asked for by name: a missing model file is an error
    fps: float = 25.0
    resolution: int | None = None
    crop: str = "full"
    face_crop: str = "auto"
    lpips_net: str = "alex"
    lse_protocol: str = "direct"
    strict: bool = False
    max_frames: int | None = None
    batch: int = 8
    threads: int = field(default_factory=default_threads)
    seed: int = 0
    device: str = "cpu"  # a --device spec; resolved when the networks are loaded
    # precision of LPIPS, Inception (FID) and SyncNet (LSE): auto|fp32|bf16|fp16, resolved with
    # the device (talkcli.device.resolve_dtype); the landmark detectors and pixel metrics stay fp32
    dtype: str = "auto"
    weights_dir: Path | None = None
    inception: Path | None = None
    syncnet: Path | None = None
    fid_stats: Path | None = None

    def check(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise UserError(
                f"--metrics {','.join(self.metrics) or '(none)'}: expected names from "
                f"{', '.join(METRICS)}"
            )
        if self.crop not in CROPS:
            raise UserError(f"--crop {self.crop!r}: expected one of {', '.join(CROPS)}")
        if self.face_crop not in FACE_CROPS:
            raise UserError(f"--face-crop {self.face_crop!r}: expected {', '.join(FACE_CROPS)}")
        if self.lpips_net not in LPIPS_NETS:
            raise UserError(f"--lpips {self.lpips_net!r}: expected alex or vgg")
        from talkcli.device import DTYPE_CHOICES

        if self.dtype not in DTYPE_CHOICES:
            raise UserError(f"--dtype {self.dtype!r}: expected {', '.join(DTYPE_CHOICES)}")
        if self.lse_protocol not in LSE_PROTOCOLS:
            raise UserError(
                f"--lse-protocol {self.lse_protocol!r}: expected {', '.join(LSE_PROTOCOLS)}"
            )
        from talkcli.guards import check_number
        from talkcli.ranges import EVALUATE, option_name

        for name, (lo, hi) in EVALUATE.items():  # the CLI's ranges
            check_number(option_name(name), getattr(self, name), lo, hi)

    @property
    def lse_crop(self) -> str:
        """How LSE face crops are made: the aligned frame's fixed box, or detection."""
        if self.face_crop != "auto":
            return self.face_crop
        return "aligned" if self.crop == "aligned" else "detect"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        d["lse_crop"] = self.lse_crop
        for key in ("weights_dir", "inception", "syncnet", "fid_stats"):
            d[key] = None if d[key] is None else str(d[key])
        return d


@dataclass
class Plan:
    """What will run: metrics, their model files (registry name -> path), skipped metrics."""

    metrics: list[str]
    files: dict[str, Path]
    skipped: dict[str, str]
    detector: str | None = None  # for --face-crop detect: "fan" or "mtcnn"


def plan(cfg: EvalConfig, has_reference: bool) -> Plan:
    """Resolve the model files of the selected metrics before any work.

    A metric whose file is missing is skipped with a note, unless it was asked for by name (then
    the registry's one-line ModelFileError, naming the file to fetch, ends the run).
    """
    cfg.check()
    from talkcli.constants import LPIPS_FILES
    from talkcli.face.landmarks import FAN_FILES
    from talkcli.runtime import find_files

    files: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    run: list[str] = []
    detector = None
    needs = {
        "lpips": (LPIPS_FILES[cfg.lpips_net], f"LPIPS-{cfg.lpips_net}", None),
        "fid": (("fid-inception",), "FID", cfg.inception),
        "lmd": (FAN_FILES, "LMD (FAN landmarks)", None),
        "lse": (("syncnet",), "LSE-C/LSE-D", cfg.syncnet),
        "motion": (FAN_FILES, "motion statistics (FAN landmarks)", None),
    }
    for metric in cfg.metrics:
        if metric in NEEDS_REFERENCE and not has_reference:
            skipped[metric] = "needs reference videos"
            continue
        if metric == "fid" and not has_reference and cfg.fid_stats is None:
            skipped[metric] = "needs reference videos or --fid-stats"
            continue
        if metric in needs:
            names, purpose, explicit = needs[metric]
            try:
                files.update(find_files(names, cfg.weights_dir, f"evaluate {purpose}", explicit))
            except ModelFileError as exc:
                if cfg.named:
                    raise
                skipped[metric] = _short_reason(exc, names, cfg.weights_dir)
                continue
            if metric == "lse" and cfg.lse_crop == "detect":
                try:
                    detector = _face_detector_backend(cfg)
                except ModelFileError:
                    if cfg.named:
                        raise
                    skipped[metric] = (
                        "--face-crop detect needs FAN or MTCNN files (`talkcli weights fetch "
                        "mtcnn-pnet mtcnn-rnet mtcnn-onet`), or use --face-crop aligned for "
                        "FFHQ-aligned videos"
                    )
                    continue
        run.append(metric)
    return Plan(run, files, skipped, detector)


def _short_reason(exc: ModelFileError, names: tuple[str, ...], weights_dir: Path | None) -> str:
    """'model file fan-2d not found (`talkcli weights fetch fan-2d s3fd`)' for a skip note."""
    from talkcli.weights import registry

    first = str(exc).splitlines()[0]
    missing = [n for n in names if registry.locate(n, weights_dir) is None]
    if "not found" not in first or not missing:
        return first
    return (
        f"model file {', '.join(missing)} not found "
        f"(`talkcli weights fetch {' '.join(names)}`; asking for the metric by name says where)"
    )


def _face_detector_backend(cfg: EvalConfig) -> str:
    from talkcli.face.landmarks import choose_backend

    return choose_backend("auto", cfg.weights_dir)


@contextlib.contextmanager
def deterministic(threads: int, seed: int, device: str = "cpu") -> Iterator[None]:
    """Fixed torch threads and seed; on GPUs also deterministic algorithms (cuDNN); restored
    afterwards. talkcli's CPU kernels here are deterministic for a fixed thread count, and
    ``torch.use_deterministic_algorithms`` costs seconds of imports (torch._dynamo) on CPU."""
    import torch

    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    gpu = not str(device).startswith("cpu")
    old_det = torch.are_deterministic_algorithms_enabled() if gpu else None
    if gpu:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        if gpu:
            torch.use_deterministic_algorithms(bool(old_det))


# -- results ---------------------------------------------------------------------------------


@dataclass
class VideoResult:
    """One pair's outcome: values (video means), per-frame curves, notes, or the error."""

    pair: Pair
    status: str = "ok"
    error: str | None = None
    frames: int = 0
    size: tuple[int, int] | None = None
    values: dict[str, float] = field(default_factory=dict)
    per_frame: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.pair.to_dict(),
            "status": self.status,
            "error": self.error,
            "frames": self.frames,
            "size": None if self.size is None else list(self.size),
            "values": dict(self.values),
            "notes": list(self.notes),
            "sha256": dict(self.hashes),
        }


def load_models(cfg: EvalConfig, p: Plan) -> ModelSet:
    """The plan's networks (``talkcli.runtime.ModelSet`` on the plan's files), loaded now, each
    once and shared by every pair: a broken file fails before the first frame is read."""
    from talkcli.runtime import ModelSet

    m = ModelSet(
        cfg.weights_dir, cfg.device, files=p.files, detector=p.detector, lpips_net=cfg.lpips_net
    )
    if "lpips" in p.metrics:
        m.lpips()
    if "fid" in p.metrics:
        m.inception()
    if "lmd" in p.metrics or "motion" in p.metrics:
        m.fan()
    if "lse" in p.metrics:
        m.syncnet()
        if p.detector is not None:
            m.detector()  # FAN's, when that is the backend and LMD loaded it
    return m


# -- one pair --------------------------------------------------------------------------------

FrameProgress = Callable[[int, int | None], None]  # (frames done, total or None)


def eval_size(width: int, height: int, resolution: int | None) -> tuple[int, int]:
    """(W, H) frames are compared at: the given width (height keeping the aspect), or as is."""
    if resolution is None:
        return width, height
    return int(resolution), max(1, int(round(height * resolution / width)))


def _frames_at(info: Any, fps: float) -> int:
    """Frames a video yields at ``fps`` (exact when it is stored at that rate)."""
    if abs(info.fps - fps) <= 1e-6 * fps:
        return info.n_frames
    return int(round(info.n_frames * fps / info.fps))


@dataclass
class Prepared:
    """A pair checked and probed (no frame decoded yet): what ``evaluate_pair`` needs."""

    res: VideoResult
    gen: Path
    g_info: Any
    n: int  # frames to compare
    run_lse: bool


def prepare_pair(pair: Pair, cfg: EvalConfig, p: Plan) -> Prepared:
    """Check one pair before any decoding: files, sizes, lengths, audio for LSE; notes."""
    from talkcli.guards import check_frame_count
    from talkcli.io.files import require_file, sha256_file
    from talkcli.io.video import probe_video

    res = VideoResult(pair)
    if pair.missing_reference is not None:
        raise InputFileError(
            pair.generated,
            f"has no reference video (looked for {pair.missing_reference})",
            "add it, or pair the files with --pairs",
        )
    gen = require_file(pair.generated, "generated video")
    g_info = _complete(probe_video(gen))
    r_info = None
    if pair.reference is not None:
        ref = require_file(pair.reference, "reference video")
        r_info = _complete(probe_video(ref))
    run_lse = "lse" in p.metrics and _lse_can_run(gen, g_info, cfg, res)
    base = r_info or g_info
    if r_info is not None and (g_info.width, g_info.height) != (r_info.width, r_info.height):
        sizes = f"{g_info.width}x{g_info.height} vs the reference's {r_info.width}x{r_info.height}"
        if cfg.strict:
            raise InputFileError(gen, f"frame size {sizes}", "resize one, or drop --strict")
        target = eval_size(base.width, base.height, cfg.resolution)
        res.notes.append(f"sizes differ ({sizes}): both compared at {target[0]}x{target[1]}")
    res.size = eval_size(base.width, base.height, cfg.resolution)
    frame_metrics = p.metrics if pair.reference is not None else ["cpbd"]
    _check_size(gen, res.size, frame_metrics, cfg)
    check_eval_memory(gen, res.size, frame_metrics, cfg)
    n_gen = check_frame_count(gen, _frames_at(g_info, cfg.fps), cfg.fps)
    n = n_gen
    if r_info is not None:
        n_ref = check_frame_count(pair.reference, _frames_at(r_info, cfg.fps), cfg.fps)
        if n_gen != n_ref:
            res.notes.append(
                f"lengths differ at {cfg.fps:g} fps (generated {n_gen} frames, reference "
                f"{n_ref}): the first {min(n_gen, n_ref)} frames are compared"
            )
        n = min(n_gen, n_ref)
    if cfg.max_frames is not None and n > cfg.max_frames:
        n = cfg.max_frames
    res.hashes["generated"] = sha256_file(gen)
    if pair.reference is not None:
        res.hashes["reference"] = sha256_file(pair.reference)
    return Prepared(res, gen, g_info, n, run_lse)


def evaluate_pair(
    prep: Prepared,
    cfg: EvalConfig,
    p: Plan,
    models: ModelSet,
    fid_gen: Any | None,
    fid_ref: Any | None,
    on_frames: FrameProgress | None = None,
) -> VideoResult:
    """Every per-video metric of a prepared pair (FID statistics go to ``fid_gen``/``fid_ref``)."""
    from talkcli.io.video import VideoReader

    res, gen, n, pair, size = prep.res, prep.gen, prep.n, prep.res.pair, prep.res.size
    frame_metrics = [
        m for m in p.metrics if m in ("psnr", "ssim", "lpips", "lmd", "cpbd", "motion")
    ]
    needs_frames = frame_metrics or ("fid" in p.metrics and (fid_gen is not None))
    curves: dict[str, list[np.ndarray]] = {}
    done = 0
    if needs_frames:
        readers = [VideoReader(gen, fps=cfg.fps, size=size)]
        if pair.reference is not None:
            readers.append(VideoReader(pair.reference, fps=cfg.fps, size=size))
        try:
            while done < n:
                want = min(cfg.batch, n - done)
                batches = [r.read_batch(want) for r in readers]
                k = min(len(b) for b in batches)
                if k == 0:
                    break
                g = batches[0][:k]
                r = batches[1][:k] if len(batches) > 1 else None
                for name, values in _frame_metrics(g, r, p.metrics, models, cfg).items():
                    curves.setdefault(name, []).append(values)
                if fid_gen is not None:
                    fid_gen.add(_features(g, models.inception(), cfg))
                if fid_ref is not None and r is not None:
                    fid_ref.add(_features(r, models.inception(), cfg))
                done += k
                if on_frames:
                    on_frames(done, n)
                if k < want:
                    break
        finally:
            for reader in readers:
                reader.close()
        if done == 0:
            raise InputFileError(gen, "no frames could be compared", "is it a complete video?")
    res.frames = done
    res.per_frame = {k: np.concatenate(v) for k, v in curves.items()}
    if "motion" in p.metrics and done:
        res.values.update(_motion(res, prep, cfg))
    for name, values in res.per_frame.items():
        finite = values[~np.isnan(values)]
        res.values[name] = float(np.mean(finite)) if len(finite) else math.nan
        if name == "lmd" and len(finite) < len(values):
            res.notes.append(f"LMD: no face found in {len(values) - len(finite)} frame pair(s)")
    if prep.run_lse:
        res.values.update(_lse(gen, prep.g_info, cfg, models, res))
    return res


def _complete(info: Any) -> Any:
    """A probed video, refused when ffmpeg found it cut short (a truncated download or copy):
    its metrics would silently cover a part, and its audio may not decode at all."""
    if info.truncated:
        raise InputFileError(
            info.path,
            f"is truncated (it ends after {info.n_frames} frame(s), before the data its header "
            "lists)",
            "re-encode it or pass a complete file",
        )
    return info


def _lse_can_run(gen: Path, info: Any, cfg: EvalConfig, res: VideoResult) -> bool:
    """Whether LSE can score this video: an audio track and ``LSE_MIN_FRAMES`` frames at 25 fps
    (within --max-frames). Otherwise an error when lse was named, else a note and no LSE."""
    from talkcli.metrics.sync import LSE_MIN_FRAMES, SYNC_FPS

    n = _frames_at(info, SYNC_FPS)
    if cfg.max_frames is not None:
        n = min(n, cfg.max_frames)
    if not info.has_audio:
        error, note = _no_audio(gen), "LSE skipped: the video has no audio track"
    elif n < LSE_MIN_FRAMES:
        limit = " (after --max-frames)" if cfg.max_frames is not None else ""
        error = InputFileError(
            gen,
            f"has {n} frame(s) at {SYNC_FPS} fps{limit}; LSE-C/LSE-D need at least "
            f"{LSE_MIN_FRAMES} (SyncNet's 5-frame windows and 13-frame face-box smoothing)",
            "evaluate a longer clip, or leave lse out of --metrics",
        )
        note = (
            f"LSE skipped: {n} frame(s) at {SYNC_FPS} fps, fewer than the {LSE_MIN_FRAMES} it needs"
        )
    else:
        return True
    if cfg.named:
        raise error
    res.notes.append(note)
    return False


# Working memory of the evaluation, bytes per evaluated pixel (estimates from the code paths:
# float32/float64 copies, feature maps at full width). BATCHED metrics hold every frame of a
# --batch at once; PER_FRAME ones work frame by frame (SSIM chunks its frames to 256 MiB, but a
# frame's float64 planes and maps are one chunk at least; S3FD runs VGG16 at full size).
BATCHED_BYTES_PER_PIXEL = {"frames": 6, "psnr": 24, "lpips-alex": 160, "lpips-vgg": 2600, "fid": 24}
PER_FRAME_BYTES_PER_PIXEL = {"ssim": 640, "lmd": 2600, "cpbd": 160, "motion": 2600}


def eval_memory(size: tuple[int, int], metrics: list[str], cfg: EvalConfig) -> int:
    """Estimated bytes one batch of the per-frame metrics holds at evaluation size ``size``."""
    batched = BATCHED_BYTES_PER_PIXEL["frames"]
    for m in metrics:
        batched += BATCHED_BYTES_PER_PIXEL.get(f"lpips-{cfg.lpips_net}" if m == "lpips" else m, 0)
    per_frame = max([PER_FRAME_BYTES_PER_PIXEL.get(m, 0) for m in metrics], default=0)
    return int(size[0]) * int(size[1]) * (cfg.batch * batched + per_frame)


def check_eval_memory(
    gen: Path, size: tuple[int, int], metrics: list[str], cfg: EvalConfig
) -> None:
    """Refuse, before decoding, an evaluation size and --batch whose working memory would pass
    ``LIMITS.eval_bytes``, naming both and what fits (issue 20: --resolution 4096 on small
    videos tried to allocate tens of GB)."""
    from talkcli.guards import LIMITS

    need = eval_memory(size, metrics, cfg)
    if need <= LIMITS.eval_bytes:
        return
    one = eval_memory(size, metrics, replace(cfg, batch=1))
    if one <= LIMITS.eval_bytes:
        per = (eval_memory(size, metrics, replace(cfg, batch=2)) - one) or 1
        fit = 1 + (LIMITS.eval_bytes - one) // per
        hint = f"pass --batch {fit} or fewer, or a smaller --resolution"
    else:
        scale = math.sqrt(LIMITS.eval_bytes / one)
        hint = f"pass --resolution {max(16, int(size[0] * scale))} or less, with --batch 1"
    raise InputFileError(
        gen,
        f"evaluating at {size[0]}x{size[1]} in batches of {cfg.batch} frames needs about "
        f"{need / 2**30:.1f} GiB of memory ({', '.join(metrics)}), over talkcli's limit of "
        f"{LIMITS.eval_bytes / 2**30:.0f} GiB",
        hint,
    )


def _check_size(gen: Path, size: tuple[int, int], metrics: list[str], cfg: EvalConfig) -> None:
    """Refuse an evaluation size too small for a selected metric (before decoding)."""
    from talkcli.models.perceptual import MIN_SIZE

    need = {"ssim": 11, "lpips": MIN_SIZE[cfg.lpips_net]}
    for metric, side in need.items():
        if metric in metrics and min(size) < side:
            raise InputFileError(
                gen,
                f"{metric.upper()} needs frames of at least {side}x{side} pixels, the evaluation "
                f"size is {size[0]}x{size[1]}",
                "pass a larger --resolution",
            )


def _motion_measures(lm: np.ndarray, frames: np.ndarray, key: str) -> dict[str, np.ndarray]:
    """One batch's per-frame face measures (B, 5) under ``key`` (popped by ``_motion``); the
    key itself marks the batch as measured."""
    from talkcli.metrics.motion import measure_frames

    m = measure_frames(lm, (frames.shape[2], frames.shape[1]))  # (B, 5)
    return {key: np.zeros(len(m)), **{f"{key}_{i}": m[:, i] for i in range(m.shape[1])}}


def _motion(res: VideoResult, prep: Prepared, cfg: EvalConfig) -> dict[str, float]:
    """Motion statistics (``talkcli.metrics.motion``) from the per-frame measures the batches
    left in ``res.per_frame`` (removed from it), with the video's own audio when it has one."""
    from talkcli.metrics.motion import MEASURED, motion_statistics

    def take(key: str) -> np.ndarray | None:
        if key not in res.per_frame:
            return None
        res.per_frame.pop(key)
        return np.stack([res.per_frame.pop(f"{key}_{i}") for i in range(len(MEASURED))], axis=1)

    gen, ref = take("_motion_gen"), take("_motion_ref")
    audio = None
    if prep.g_info.has_audio:
        from talkcli.io.audio import load_audio

        try:
            audio = load_audio(prep.gen)
        except InputFileError as exc:
            res.notes.append(f"motion: mouth-audio correlation skipped ({exc})")
    stats = motion_statistics(gen, cfg.fps, audio, SAMPLE_RATE, ref)
    missing = int(np.isnan(gen[:, 0]).sum())
    if missing:
        res.notes.append(f"motion: no face found in {missing} generated frame(s)")
    return stats


def _networks(cfg: EvalConfig) -> contextlib.AbstractContextManager[Any]:
    """Autocast for the metric networks (LPIPS, Inception, SyncNet) under ``cfg.dtype``."""
    from talkcli.device import autocast

    return autocast(cfg.dtype if cfg.dtype != "auto" else "fp32", cfg.device)


def _features(frames: np.ndarray, net: Any, cfg: EvalConfig) -> np.ndarray:
    from talkcli.metrics.frechet import inception_features

    with _networks(cfg):
        return inception_features(frames, net, batch_size=cfg.batch)


def _frame_metrics(
    g: np.ndarray, r: np.ndarray | None, metrics: list[str], models: ModelSet, cfg: EvalConfig
) -> dict[str, np.ndarray]:
    """Per-frame values of one batch (B,) each."""
    out: dict[str, np.ndarray] = {}
    if r is not None:
        if "psnr" in metrics:
            from talkcli.metrics.pixel import psnr_frames

            out["psnr"] = psnr_frames(g, r)
        if "ssim" in metrics:
            from talkcli.metrics.pixel import ssim_frames

            out["ssim"] = ssim_frames(g, r, cfg.device)
        if "lpips" in metrics:
            from talkcli.metrics.perceptual import lpips_frames

            with _networks(cfg):
                out["lpips"] = lpips_frames(g, r, cfg.lpips_net, models.lpips(), cfg.batch)
        if "lmd" in metrics:
            from talkcli.metrics.landmarks import (
                FACE,
                MOUTH,
                detect_landmarks,
                landmark_distances,
            )

            lg = detect_landmarks(g, models.fan())
            lr = detect_landmarks(r, models.fan())
            out["lmd"] = landmark_distances(lg, lr, MOUTH)
            out["lmd_face"] = landmark_distances(lg, lr, FACE)
            if "motion" in metrics:
                out.update(_motion_measures(lg, g, "_motion_gen"))
                out.update(_motion_measures(lr, r, "_motion_ref"))
    if "motion" in metrics and "_motion_gen" not in out:
        from talkcli.metrics.landmarks import detect_landmarks

        out.update(_motion_measures(detect_landmarks(g, models.fan()), g, "_motion_gen"))
        if r is not None:
            out.update(_motion_measures(detect_landmarks(r, models.fan()), r, "_motion_ref"))
    if "cpbd" in metrics:
        from talkcli.metrics.sharpness import cpbd_frames

        out["cpbd"] = cpbd_frames(g)
    return out


def _no_audio(gen: Path) -> InputFileError:
    return InputFileError(
        gen,
        "has no audio track, which LSE-C/LSE-D needs",
        "mux the speech into the video, or leave lse out of --metrics",
    )


def _lse(
    gen: Path, info: Any, cfg: EvalConfig, models: ModelSet, res: VideoResult
) -> dict[str, float]:
    """LSE-D, LSE-C and the offset of the generated video with its own audio track, by
    ``cfg.lse_protocol``: ``direct`` (crops of the decoded frames) or ``syncnet``
    (syncnet_python's ffmpeg/JPEG round trips, ``talkcli.metrics.sync_protocol``)."""
    if not info.has_audio:
        raise _no_audio(gen)

    def boxes(n: int, width: int, height: int, frames: Iterator[np.ndarray]) -> np.ndarray:
        """Face boxes (n, 4) of the frames LSE crops."""
        from talkcli.metrics.sync import aligned_box

        if cfg.lse_crop == "aligned":
            return np.tile(aligned_box(width, height), (n, 1))
        return _detect_boxes(gen, frames, models.detector(), n, res)

    if cfg.lse_protocol == "syncnet":
        from talkcli.metrics.sync_protocol import lse_syncnet_protocol

        with _networks(cfg):
            score = lse_syncnet_protocol(gen, boxes, models.syncnet(), cfg.max_frames)
    else:
        score = _lse_direct(gen, info, cfg, models, boxes)
    return {"lse_d": score["lse_d"], "lse_c": score["lse_c"], "lse_offset": score["offset"]}


def _lse_direct(
    gen: Path, info: Any, cfg: EvalConfig, models: ModelSet, boxes: Callable[..., np.ndarray]
) -> dict[str, float | int]:
    """LSE on crops of the frames decoded at 25 fps (``talkcli.metrics.sync``), streamed."""
    from talkcli.io.audio import load_audio
    from talkcli.io.video import VideoReader
    from talkcli.metrics.sync import SYNC_FPS, lip_embeddings, lse_from_lip, smooth_boxes

    audio = load_audio(gen)
    n = _frames_at(info, SYNC_FPS)
    if cfg.max_frames is not None:
        n = min(n, cfg.max_frames)

    def frames() -> Iterator[np.ndarray]:  # decoded only when the boxes need them (detect)
        with VideoReader(gen, fps=SYNC_FPS) as reader:
            yield from reader

    xys = smooth_boxes(boxes(n, info.width, info.height, frames()))  # (T, 3) x, y, half-size

    cropped = [0]

    def crops() -> Iterator[np.ndarray]:
        with VideoReader(gen, fps=SYNC_FPS) as reader:
            while cropped[0] < len(xys):
                batch = reader.read_batch(min(32, len(xys) - cropped[0]))
                if len(batch) == 0:
                    return
                yield np.stack([_crop(gen, f, xys[cropped[0] + i]) for i, f in enumerate(batch)])
                cropped[0] += len(batch)

    with _networks(cfg):
        lip = lip_embeddings(crops(), models.syncnet())  # (frames - 4, D)
    try:
        with _networks(cfg):
            return lse_from_lip(lip, cropped[0], audio, models.syncnet())
    except ValueError as exc:
        raise InputFileError(gen, f"LSE: {exc}") from None


def _crop(gen: Path, frame: np.ndarray, xys: np.ndarray) -> np.ndarray:
    """One SyncNet face crop (224, 224, 3); a degenerate smoothed box is the input's problem."""
    from talkcli.metrics.sync import crop_face

    try:
        return crop_face(frame, *xys)
    except ValueError as exc:
        raise InputFileError(
            gen,
            f"LSE: {exc}",
            "is the face visible? for FFHQ-aligned videos use --face-crop aligned",
        ) from None


def _detect_boxes(
    gen: Path, frames: Iterator[np.ndarray], detector: Any, n: int, res: VideoResult
) -> np.ndarray:
    """Face boxes (n, 4) of the first n frames (RGB, 25 fps; largest face); gaps interpolated."""
    from talkcli.face.landmarks import choose_face

    boxes = np.full((n, 4), np.nan)
    for i, frame in enumerate(frames):
        if i >= n:
            break
        faces = detector.detect(frame)
        if faces:
            boxes[i] = np.asarray(choose_face(faces).box, dtype=np.float64)[:4]
    found = ~np.isnan(boxes[:, 0])
    if not found.any():
        raise InputFileError(
            gen,
            "no face found for the LSE crops",
            "for FFHQ-aligned videos use --face-crop aligned",
        )
    if not found.all():
        res.notes.append(f"LSE: no face detected in {int((~found).sum())} frame(s), interpolated")
        idx = np.arange(n)
        for c in range(4):
            boxes[:, c] = np.interp(idx, idx[found], boxes[found, c])
    return boxes


# -- all pairs -------------------------------------------------------------------------------


@dataclass
class EvalRun:
    """Everything a report needs."""

    cfg: EvalConfig
    plan: Plan
    results: list[VideoResult]
    fid: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def _is_global(exc: TalkcliError) -> bool:
    """Errors that would fail every pair (a model file, an unwritable output)."""
    from talkcli.errors import OutputError

    return isinstance(exc, ModelFileError | OutputError)


def evaluate(
    pairs: list[Pair],
    cfg: EvalConfig,
    p: Plan,
    *,
    on_pair: Callable[[VideoResult], None] | None = None,
    on_start: Callable[[Pair], FrameProgress | None] | None = None,
) -> EvalRun:
    """Evaluate every pair. A single pair raises its error; in a batch a failed pair is recorded
    and the others finish. Networks are loaded when the first pair has been checked."""
    run = EvalRun(cfg, p, [])
    single = len(pairs) == 1
    with contextlib.ExitStack() as stack:
        models: ModelSet | None = None
        fid_gen = fid_ref = cached = None
        for pair in pairs:
            try:
                prep = prepare_pair(pair, cfg, p)
                if models is None:  # loaded once a pair is known to be readable
                    from talkcli.device import choose_device, resolve_dtype

                    cfg.device = str(choose_device(cfg.device))
                    cfg.dtype = resolve_dtype(cfg.dtype, cfg.device)  # recorded resolved
                    stack.enter_context(deterministic(cfg.threads, cfg.seed, cfg.device))
                    models = load_models(cfg, p)
                    if "fid" in p.metrics:
                        from talkcli.metrics.frechet import FeatureStats

                        dim = models.inception().feature_dim
                        fid_gen = FeatureStats(dim)
                        cached = _cached_reference_stats(cfg, pairs, run.notes)
                        fid_ref = FeatureStats(dim) if cached is None else None
                res = evaluate_pair(
                    prep, cfg, p, models, fid_gen, fid_ref, on_start(pair) if on_start else None
                )
            except TalkcliError as exc:
                if single or exc.exit_code != 2 or _is_global(exc):
                    raise
                res = VideoResult(pair, status="failed", error=str(exc).splitlines()[0])
            run.results.append(res)
            if on_pair:
                on_pair(res)
        if fid_gen is not None:
            run.fid = _fid(cfg, pairs, fid_gen, fid_ref, cached, run)
    return run


def _stats_meta(cfg: EvalConfig, pairs: list[Pair]) -> dict[str, Any]:
    """What a cached reference-set statistics file must match to be reused."""
    from talkcli.io.files import sha256_file

    refs = sorted(
        sha256_file(pr.reference)
        for pr in pairs
        if pr.reference is not None and pr.reference.is_file()
    )
    inception = cfg.inception or _registry_path("fid-inception", cfg)
    return {
        "kind": "talkcli-fid-stats",
        "reference_sha256": refs,
        "fps": cfg.fps,
        "resolution": cfg.resolution,
        "max_frames": cfg.max_frames,
        "dtype": cfg.dtype,
        "inception_sha256": sha256_file(inception) if inception else None,
    }


def _registry_path(name: str, cfg: EvalConfig) -> Path | None:
    from talkcli.weights import registry

    return registry.locate(name, cfg.weights_dir)


def _cached_reference_stats(
    cfg: EvalConfig, pairs: list[Pair], notes: list[str]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """The reference statistics from ``--fid-stats`` when the file exists and matches."""
    from talkcli.metrics.frechet import load_stats

    if cfg.fid_stats is None or not Path(cfg.fid_stats).exists():
        return None
    mu, sigma, meta = load_stats(cfg.fid_stats)
    has_refs = any(pr.reference is not None for pr in pairs)
    if not meta:
        notes.append(f"FID: reference statistics from {cfg.fid_stats} (made elsewhere; unchecked)")
        return mu, sigma, meta
    want = _stats_meta(cfg, pairs)
    keys = ("fps", "resolution", "max_frames", "inception_sha256")
    same = all(meta.get(k) == want[k] for k in keys)
    if has_refs:
        same = same and meta.get("reference_sha256") == want["reference_sha256"]
    if same:
        notes.append(f"FID: reference statistics reused from {cfg.fid_stats}")
        return mu, sigma, meta
    if not has_refs:
        raise InputFileError(
            cfg.fid_stats,
            "was made with other settings (fps, resolution, --max-frames or Inception file)",
            "evaluate with the settings it was made with, or recompute it with references",
        )
    notes.append(f"FID: {cfg.fid_stats} was made from other references or settings; recomputed")
    return None


def _fid(cfg, pairs, fid_gen, fid_ref, cached, run: EvalRun) -> dict[str, Any] | None:
    from talkcli.metrics.frechet import frechet_distance, save_stats

    if cached is not None:
        mu_r, sigma_r, meta = cached
        n_ref = meta.get("n")
    else:
        if fid_ref is None or fid_ref.n < 2:
            run.notes.append("FID: fewer than 2 reference frames; not computed")
            return None
        mu_r, sigma_r, n_ref = fid_ref.mu, fid_ref.sigma, fid_ref.n
        if cfg.fid_stats is not None:
            save_stats(cfg.fid_stats, mu_r, sigma_r, {**_stats_meta(cfg, pairs), "n": n_ref})
            run.notes.append(f"FID: reference statistics written to {cfg.fid_stats}")
    if fid_gen.n < 2:
        run.notes.append("FID: fewer than 2 generated frames; not computed")
        return None
    if fid_gen.dim != len(mu_r):
        raise InputFileError(
            cfg.fid_stats or "reference statistics",
            f"holds {len(mu_r)}-d statistics but the Inception network gives {fid_gen.dim}-d",
            "recompute it with the same Inception file",
        )
    try:
        value = frechet_distance(fid_gen.mu, fid_gen.sigma, mu_r, sigma_r)
    except ValueError as exc:
        run.notes.append(str(exc))
        return None
    if fid_gen.n < fid_gen.dim:
        run.notes.append(
            f"FID from {fid_gen.n} generated frames (< {fid_gen.dim} feature dimensions) is "
            "biased upwards; compare only runs with the same number of frames"
        )
    return {"value": value, "n_generated": fid_gen.n, "n_reference": n_ref}
