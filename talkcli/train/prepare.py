"""``train prepare``: talking-head videos -> pSp W+ codes per frame + MFCC rows (a dataset).

Per video: decode at ``fps`` (25), FFHQ-align with temporal smoothing (``talkcli.face.align``)
unless the inputs already are aligned crops (``aligned``), encode every frame with pSp in batches
(fp16 on disk), compute the MFCC rows of the soundtrack (or of a separate audio file paired by
stem from ``audio_dir``), and write the shard files and the record (``talkcli.train.dataset``).

Speakers come from the folder layout (``speaker_level`` 1 = the parent folder, 2 = the one
above, 0 = the file name) or a regular expression on the path; the held-out speakers form the
``val`` split, the rest ``train``. The split is decided from the whole input list, so processes
that share the work (``shard``) agree on it. Bad videos are recorded as failed and skipped.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from talkcli import __version__
from talkcli.audio.features import FEATURE_KINDS, FEATURE_SETTINGS, WINDOW, mfcc, n_frames
from talkcli.constants import AUDIO_EXTS, VIDEO_EXTS
from talkcli.errors import InputFileError, ModelFileError, OutputError, TalkcliError, UserError
from talkcli.guards import LIMITS, check_frame_count, check_number
from talkcli.io.files import (
    atomic_output,
    ensure_folder,
    require_file,
    sha256_file,
    write_json_atomic,
)
from talkcli.ranges import TRAIN_PREPARE as PREPARE_RANGES
from talkcli.ranges import option_name
from talkcli.train.dataset import (
    INDEX,
    SHARDS,
    NpyAppender,
    build_index,
    feature_path,
    read_index,
    read_json,
    safe_name,
    shard_paths,
)

ALIGNED_DIR = "aligned"
WORK_DIR = ".work"

ItemFn = Callable[[dict[str, Any]], None]
ProgressFn = Callable[[str, int, int | None], None]  # (video id, frames done, total or None)


@dataclass
class VideoItem:
    """One input video: its dataset id, files and speaker."""

    id: str
    path: Path
    audio: Path | None
    speaker: str

    def plan(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": str(self.path),
            "audio": str(self.audio) if self.audio else None,
            "speaker": self.speaker,
        }


@dataclass
class PrepareConfig:
    """Options of ``talkcli train prepare`` (see its help)."""

    fps: float = 25.0
    aligned: bool = False
    align_size: int = 256
    detector: str = "auto"
    smooth: float = 1.0
    batch_size: int = 16
    resume: bool = False
    keep_aligned: bool = False
    holdout: str = "10%"
    seed: int = 0
    weights_dir: Path | None = None
    device: str = "cpu"
    features: str = "mfcc"  # also store wav2vec2 / hubert rows (issue 17); MFCCs always
    feature_model: Path | None = None  # the Hugging Face folder of the SSL model
    feature_layer: int | None = None  # None: talkcli.audio.ssl.default_layer
    # pSp's autocast (talkcli.device.resolve_dtype), resolved per run; fp32 by default: bf16
    # rounding is as large as a small motion's code changes (docs/speed.md, issue 18)
    dtype: str = "fp32"
    read_ahead: int = 2  # decoded batches a reader thread keeps ready (0: decode inline)
    compile: str = "auto"  # torch.compile of pSp where the run is long enough (talkcli.compiled)

    def check(self) -> None:
        """The CLI's ranges, for library callers too (one-line UserError naming the option)."""
        for name in ("fps", "batch_size", "smooth", "align_size", "seed"):  # talkcli.ranges
            check_number(option_name(name), getattr(self, name), *PREPARE_RANGES[name])
        from talkcli.device import DTYPE_CHOICES

        if self.dtype not in DTYPE_CHOICES:
            raise UserError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPE_CHOICES)}")
        from talkcli.compiled import check_compile_mode

        check_compile_mode(self.compile)
        if self.feature_layer is not None:
            layer = PREPARE_RANGES["feature_layer"]
            check_number(option_name("feature_layer"), self.feature_layer, *layer)
        if self.align_size % 2:
            raise UserError(f"--align-size {self.align_size}: expected an even size")
        if self.features not in FEATURE_KINDS:
            raise UserError(
                f"--features {self.features!r}: expected one of {', '.join(FEATURE_KINDS)}"
            )
        if FEATURE_KINDS[self.features].ssl and self.feature_model is None:
            raise UserError(
                f"--features {self.features} needs --feature-model DIR (a local folder)"
            )
        if not FEATURE_KINDS[self.features].ssl and self.feature_model is not None:
            raise UserError("--feature-model is for --features wav2vec2 or hubert")


@dataclass
class PrepareResult:
    """What a ``prepare`` process did: records of its videos and the dataset's index."""

    records: list[dict[str, Any]] = field(default_factory=list)  # this process's videos
    skipped: list[str] = field(default_factory=list)  # ids already done (--resume)
    index: dict[str, Any] = field(default_factory=dict)

    def count(self, status: str) -> int:
        """Videos of this process now ``ok`` (including skipped ones) or ``failed``."""
        return sum(r.get("status") == status for r in self.records)


# -- inputs --------------------------------------------------------------------------------------


def collect_videos(items: list[str] | list[Path]) -> list[Path]:
    """Video files from files, folders (searched recursively) and globs, resolved and unique,
    in the order of their given paths (sorted per folder and per glob).

    Planning only lists: nothing is opened or probed here (that happens per video, during the
    work), and a file costs one directory entry, not a stat and a ``resolve`` of its own, so
    100,000 videos are listed in seconds. Over ``LIMITS.dataset_videos`` is refused.
    """
    out: list[Path] = []
    for item in items:
        text = str(item)
        p = Path(text).expanduser()
        if p.is_dir():
            found = _walk_videos(p, LIMITS.dataset_videos - len(out))
            if not found:
                raise InputFileError(
                    p, "folder holds no video files", f"expected {', '.join(VIDEO_EXTS)}"
                )
            out.extend(found)
        elif p.exists():
            out.append(require_file(p, "video file").resolve())
        elif any(ch in text for ch in "*?["):
            matches = _glob_videos(text)
            if not matches:
                raise InputFileError(text, "pattern matches no video files", "check the glob")
            out.extend(matches)
        else:
            require_file(p, "video file")  # the standard "not found"
        _check_video_count(len(out))
    if not out:
        raise UserError("no input videos given")
    return list(dict.fromkeys(out))


def _check_video_count(n: int) -> None:
    if n > LIMITS.dataset_videos:
        raise UserError(
            f"the inputs hold over {LIMITS.dataset_videos:,} videos, talkcli's limit for one "
            "`train prepare` (prepare the corpus in parts into one --out with --resume)"
        )


def _path_order(path: str) -> list[str]:
    """Sort key giving pathlib's order (component by component) without making Path objects."""
    return path.split(os.sep)


def _walk_videos(folder: Path, room: int) -> list[Path]:
    """Video files under ``folder`` (recursively, not into linked folders, as ``rglob``), as
    resolved paths: the folder is resolved once, a linked file on its own. Stops past ``room``."""
    found: list[tuple[str, str]] = []  # (the path as listed, the resolved path)
    stack = [str(folder.resolve())]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in VIDEO_EXTS:
                    if not entry.is_symlink():
                        if entry.is_file(follow_symlinks=False):
                            found.append((entry.path, entry.path))
                    elif os.path.isfile(entry.path):
                        found.append((entry.path, os.path.realpath(entry.path)))
        if len(found) > room:
            _check_video_count(len(found) + LIMITS.dataset_videos - room)
    found.sort(key=lambda pair: _path_order(pair[0]))
    return [Path(resolved) for _, resolved in found]


def _glob_videos(pattern: str) -> list[Path]:
    """Video files a glob matches, resolved (each match's folder resolved once)."""
    folders: dict[str, str] = {}
    out: list[Path] = []
    for match in sorted(glob.iglob(pattern, recursive=True), key=_path_order):
        if os.path.splitext(match)[1].lower() not in VIDEO_EXTS or not os.path.isfile(match):
            continue
        if os.path.islink(match):
            out.append(Path(match).resolve())
            continue
        head, name = os.path.split(os.path.abspath(match))
        if head not in folders:
            folders[head] = os.path.realpath(head)
        out.append(Path(folders[head], name))
    return out


def speaker_of(path: Path, level: int = 1, regex: str | None = None) -> str:
    """Speaker id of a video: ``regex`` on its path (group 1, else the match), else the folder
    ``level`` levels up (1 = parent), or the file stem for level 0."""
    if regex:
        m = re.search(regex, path.as_posix())
        if not m:
            raise InputFileError(path, f"--speaker-regex {regex!r} does not match this path")
        return m.group(1) if m.groups() else m.group(0)
    if level == 0:
        return path.stem
    parts = path.parts  # ([root,] folders..., name): the folder ``level`` up is parts[-1 - level]
    if level > len(parts) - 1 - bool(path.anchor):
        raise InputFileError(path, f"--speaker-level {level}: the path has no folder that high")
    return parts[-1 - level]


def _audio_index(audio_dir: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for f in sorted(audio_dir.rglob("*")):
        if f.is_file() and f.suffix.lower() in AUDIO_EXTS:
            found.setdefault(f.stem, []).append(f)
    return found


def plan_items(
    videos: list[Path],
    audio_dir: Path | None = None,
    speaker_level: int = 1,
    speaker_regex: str | None = None,
) -> list[VideoItem]:
    """Ids, paired audio files and speakers of every video (same on every process)."""
    if speaker_regex:
        try:
            re.compile(speaker_regex)
        except re.error as exc:
            raise UserError(f"--speaker-regex {speaker_regex!r}: {exc}") from None
    audio_files: dict[str, list[Path]] = {}
    if audio_dir is not None:
        if not audio_dir.is_dir():
            raise InputFileError(audio_dir, "--audio-dir is not a folder")
        audio_files = _audio_index(audio_dir)
    items: list[VideoItem] = []
    bases: dict[str, int] = {}
    for video in videos:
        speaker = speaker_of(video, speaker_level, speaker_regex)
        base = safe_name(f"{speaker}__{video.stem}" if speaker != video.stem else video.stem)
        bases[base] = bases.get(base, 0) + 1
        audio = None
        candidates = audio_files.get(video.stem, [])
        if len(candidates) > 1:  # prefer the one in a folder named like the speaker
            same = [a for a in candidates if speaker in a.parts]
            candidates = same if len(same) == 1 else candidates
        if len(candidates) == 1:
            audio = candidates[0]
        elif len(candidates) > 1:
            audio = None  # ambiguous: reported when the video is processed
        items.append(VideoItem(base, video, audio, speaker))
    for item in items:  # same base for two videos: make both unique, stably
        if bases[item.id] > 1:
            digest = hashlib.sha1(str(item.path).encode()).hexdigest()[:8]
            item.id = f"{item.id}-{digest}"
    if audio_dir is not None:
        for item in items:
            n = len(audio_files.get(item.path.stem, []))
            if n > 1 and item.audio is None:
                item.audio = Path(f"<ambiguous:{n}>")
    return items


def choose_holdout(speakers: list[str], spec: str, seed: int = 0) -> dict[str, str]:
    """Split speakers: ``spec`` is N (that many, drawn with ``seed``), P% (rounded up, at least
    one when there are two or more speakers), or a comma-separated list of names."""
    names = sorted(set(speakers))
    text = str(spec).strip()
    chosen: list[str]
    if re.fullmatch(r"\d+", text):
        n = int(text)
        if n >= len(names) and n > 0:
            raise UserError(
                f"--holdout-speakers {n}: the inputs have only {len(names)} speaker(s); "
                "keep at least one for training"
            )
        chosen = _draw(names, n, seed)
    elif re.fullmatch(r"\d+(\.\d+)?%", text):
        pct = float(text[:-1])
        if not 0 <= pct < 100:
            raise UserError(f"--holdout-speakers {text}: expected a percentage below 100")
        n = math.ceil(len(names) * pct / 100) if len(names) > 1 else 0
        chosen = _draw(names, min(n, len(names) - 1), seed)
    else:
        chosen = [s.strip() for s in text.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in names]
        if unknown:
            raise UserError(
                f"--holdout-speakers: unknown speaker(s) {', '.join(unknown)}; "
                f"the inputs have {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
            )
        if len(set(chosen)) >= len(names):
            raise UserError("--holdout-speakers: keep at least one speaker for training")
    return {s: ("val" if s in chosen else "train") for s in names}


def _draw(names: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(names, size=n, replace=False).tolist()) if n else []


# -- one video -----------------------------------------------------------------------------------


# --compile auto compiles pSp when the encoding still to do is predicted above this: compiled pSp
# (inductor, channels_last, fp32) was 1.09x eager after ~33 s of start-up on 2 CPU cores, so it
# breaks even after ~400 s of eager encoding; twice that leaves a margin (docs/speed.md).
PSP_PAYS_AFTER_S = 900.0


class PspRun:
    """pSp for a whole ``prepare`` run: uint8 frame batches -> W+ under the run's autocast,
    through ``talkcli.compiled`` (one compilation for all videos; ``plan`` tells ``auto`` how
    many frames are still to come)."""

    def __init__(self, encoder, dtype: str, compile: str = "off", batch: int | None = None) -> None:
        from talkcli.compiled import CompiledBatches

        self.encoder = encoder
        self.dtype = dtype
        self.device = next(encoder.parameters()).device
        self.n_styles, self.style_dim = encoder.n_styles, encoder.style_dim
        self.compiled = CompiledBatches(
            encoder.encode, compile, None, PSP_PAYS_AFTER_S, "pSp", batch
        )

    def plan(self, frames_now: int, videos_after: int) -> None:
        """This video's frames and the videos after it (as long, a guess) -> ``auto``'s total."""
        self.compiled.total = self.compiled.done + frames_now * (1 + max(videos_after, 0))

    def __call__(self, frames: np.ndarray) -> Any:
        """(b, H, W, 3) uint8 -> (b, n_latent, 512) on the encoder's device."""
        import torch

        from talkcli.device import autocast
        from talkcli.models.psp import images_to_tensor, preprocess

        x = preprocess(images_to_tensor(frames).to(self.device))  # (b, 3, 256, 256) in [-1, 1]
        with torch.no_grad(), autocast(self.dtype, self.device):
            return self.compiled(x)


def _frame_batches(path: Path, fps: float | None, batch: int):
    from talkcli.io.video import VideoReader

    with VideoReader(path, fps=fps) as reader:
        while True:
            frames = reader.read_batch(batch)  # (b, H, W, 3) uint8
            if not len(frames):
                return
            yield frames


def _encode_to(
    appender: NpyAppender,
    batches,
    encoder: PspRun,
    limit: int,
    on_frames: Callable[[int], None] | None,
    source: Path,
) -> tuple[int, np.ndarray | None]:
    """Encode frame batches into ``appender`` as float16 offsets from the mean code of the
    first batch, under ``encoder.dtype`` (fp32|bf16|fp16 autocast); returns (frames, that
    reference (n_latent, 512) float32)."""
    import torch

    done, ref = 0, None
    for frames in batches:
        frames = frames[: max(limit - done, 0)]
        if not len(frames):
            break
        w = encoder(frames)  # (b, n_latent, 512)
        codes = w.to("cpu", torch.float32).numpy()
        if not np.isfinite(codes).all():
            raise InputFileError(source, "pSp produced NaN or infinite codes for its frames")
        if ref is None:
            ref = codes.mean(axis=0)
        appender.append((codes - ref).astype(np.float16))
        done += len(frames)
        if on_frames:
            on_frames(done)
    return done, ref


def _align(item: VideoItem, work: Path, cfg: PrepareConfig, detectors, progress) -> Path:
    """FFHQ-align the video (``talkcli align``'s code) into ``work``; the aligned clip's path."""
    from talkcli.face.align import AlignConfig, align_video_file
    from talkcli.ranges import ALIGN

    acfg = AlignConfig(
        size=cfg.align_size,
        detector=cfg.detector,
        fps=cfg.fps,
        detect_batch=min(cfg.batch_size, int(ALIGN["detect_batch"].hi)),  # frames held
        smooth=cfg.smooth,
        weights_dir=cfg.weights_dir,
        device=cfg.device,
    )
    work.mkdir(parents=True, exist_ok=True)

    def align_progress(done: int, total: int | None) -> None:
        if progress:
            progress(f"{item.id} (align)", done, total)

    return align_video_file(item.path, work, acfg, detectors, progress=align_progress).output


def _encode_file(
    path: Path,
    source: Path,
    fps: float | None,
    encoder,
    cfg: PrepareConfig,
    limit: int,
    item: VideoItem,
    progress: ProgressFn | None,
    expected: int,
) -> tuple[int, np.ndarray | None]:
    """Encode up to ``limit`` frames of ``source`` into the .npy ``path`` (atomically); a
    reader thread decodes the next batches (``cfg.read_ahead``) while pSp encodes."""
    from talkcli.io.video import read_ahead

    frames = min(limit, expected)  # what the file will hold: float16 codes
    needed = NpyAppender.HEADER + frames * encoder.n_styles * encoder.style_dim * 2
    with atomic_output(path, needed=needed) as tmp:
        appender = NpyAppender(tmp, (encoder.n_styles, encoder.style_dim), np.float16)
        try:
            batches = _frame_batches(source, fps, cfg.batch_size)
            if cfg.read_ahead > 0:
                batches = read_ahead(batches, cfg.read_ahead)
            got, ref = _encode_to(
                appender,
                batches,
                encoder,
                limit,
                (lambda d: progress(item.id, d, expected)) if progress else None,
                item.path,
            )
        except BaseException:
            appender.abort()
            raise
        appender.close()
    return got, ref


def prepare_video(
    item: VideoItem,
    data: Path,
    cfg: PrepareConfig,
    encoder,
    encoder_sha256: str,
    detectors=None,
    progress: ProgressFn | None = None,
    ssl_model=None,
    videos_after: int = 0,
) -> dict[str, Any]:
    """Encode one video into ``DATA/shards``; returns its ``ok`` record (errors propagate).
    ``encoder``: a ``PSPEncoder`` (run under ``cfg.dtype``, eager) or a run's ``PspRun``.
    ``ssl_model`` (``talkcli.audio.ssl.SSLModel``): its rows are stored too. ``videos_after``:
    the videos still to come in this run (``--compile auto`` predicts from it)."""
    from talkcli.io.audio import load_audio
    from talkcli.io.video import probe_video

    started = time.perf_counter()
    info = probe_video(item.path)  # missing, corrupt, no video stream: InputFileError
    if item.audio is not None and str(item.audio).startswith("<ambiguous"):
        raise InputFileError(item.path, "several audio files in --audio-dir have its name")
    audio_source = item.audio or item.path
    if item.audio is None and not info.has_audio:
        raise InputFileError(
            item.path, "has no audio stream", "pass videos with sound, or --audio-dir"
        )
    samples = load_audio(audio_source)  # (S,) float32 16 kHz
    audio_frames = n_frames(len(samples), cfg.fps)
    min_frames = math.ceil(WINDOW / 100 * cfg.fps)  # one 280 ms window
    expected_frames = int(math.floor(info.duration * cfg.fps + 0.5))
    if min(audio_frames, expected_frames) < min_frames:
        raise InputFileError(
            item.path,
            f"is shorter than one audio window ({min(audio_frames, expected_frames)} frames; "
            f"280 ms = {min_frames} frames at {cfg.fps:g} fps)",
        )
    check_frame_count(item.path, expected_frames, cfg.fps)
    if not isinstance(encoder, PspRun):
        encoder = PspRun(encoder, cfg.dtype)
    encoder.plan(min(audio_frames, expected_frames), videos_after)
    rows = mfcc(samples).astype(np.float32)  # (M, 12)
    if not np.isfinite(rows).all():
        raise InputFileError(audio_source, "audio gives NaN or infinite MFCCs")
    ssl_rows = _ssl_features(ssl_model, samples, audio_source)  # (M', D) float16 or None
    del samples

    files = shard_paths(data, item.id)
    work = data / WORK_DIR / item.id
    try:
        source, read_fps = item.path, cfg.fps
        if not cfg.aligned:
            source, read_fps = _align(item, work, cfg, detectors, progress), None
        got, ref = _encode_file(files.w, source, read_fps, encoder, cfg,
                                audio_frames, item, progress, expected_frames)  # fmt: skip
        if got < min_frames:
            files.w.unlink()
            raise InputFileError(
                item.path,
                f"decoded only {got} frame(s): shorter than one audio window ({min_frames} frames)",
            )
        for path, array in ((files.ref, ref), (files.mfcc, rows)):
            _save_array(path, array)
        if ssl_rows is not None:
            _save_array(feature_path(data, item.id, ssl_model.kind), ssl_rows)
        if cfg.keep_aligned and not cfg.aligned:  # named by video id: stems may repeat
            keep = data / ALIGNED_DIR
            keep.mkdir(exist_ok=True)
            for f in work.iterdir():
                shutil.move(str(f), keep / f"{item.id}{f.suffix}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    record = {
        **item.plan(),
        "status": "ok",
        "message": "",
        "frames": got,
        "video_frames": got if got < audio_frames else expected_frames,
        "audio_frames": audio_frames,
        "mfcc_rows": int(len(rows)),
        **({"features": {ssl_model.kind: int(len(ssl_rows))}} if ssl_rows is not None else {}),
        "fps": cfg.fps,
        "source_sha256": sha256_file(item.path),
        "audio_sha256": sha256_file(item.audio) if item.audio else None,
        "encoder_sha256": encoder_sha256,
        "dtype": cfg.dtype,  # pSp's precision (auto resolved by prepare_dataset)
        "compiled": encoder.compiled.compiled,  # pSp ran through torch.compile (--compile)
        "aligned": cfg.aligned,
        "seconds": round(time.perf_counter() - started, 3),
        "talkcli": __version__,
    }
    if abs(expected_frames - audio_frames) > cfg.fps:
        record["message"] = (
            f"video ({expected_frames} frames) and audio ({audio_frames}) differ by over 1 s; "
            "the shorter one is used"
        )
    write_json_atomic(files.record, record)
    return record


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_output(path, needed=NpyAppender.HEADER + array.nbytes) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def _ssl_features(ssl_model, samples: np.ndarray, source: Path) -> np.ndarray | None:
    """The SSL rows of a soundtrack as float16 (M, D), or None without ``ssl_model``."""
    if ssl_model is None:
        return None
    from talkcli.audio.ssl import ssl_rows

    rows = ssl_rows(ssl_model, samples)  # (M, D) float32
    if not np.isfinite(rows).all() or np.abs(rows).max() >= 65504:
        raise InputFileError(source, f"audio gives {ssl_model.kind} features beyond float16")
    return rows.astype(np.float16)


def _load_feature_model(cfg: PrepareConfig):
    """The SSL model of ``--features wav2vec2|hubert`` (None for ``mfcc``)."""
    if not FEATURE_KINDS[cfg.features].ssl:
        return None
    from talkcli.audio.ssl import load_ssl_model

    assert cfg.feature_model is not None  # PrepareConfig.check
    return load_ssl_model(cfg.features, cfg.feature_model, cfg.feature_layer, cfg.device)


def add_features(item: VideoItem, data: Path, rec: dict[str, Any], ssl_model) -> dict[str, Any]:
    """A prepared video gains ``ssl_model``'s rows (``--resume --features``): the codes stay."""
    from talkcli.io.audio import load_audio

    source = item.audio or item.path
    rows = _ssl_features(ssl_model, load_audio(source), source)
    _save_array(feature_path(data, item.id, ssl_model.kind), rows)
    rec = {**rec, "features": {**(rec.get("features") or {}), ssl_model.kind: int(len(rows))}}
    write_json_atomic(shard_paths(data, item.id).record, rec)
    return rec


# -- the dataset ---------------------------------------------------------------------------------


def dataset_settings(cfg: PrepareConfig, encoder_path: Path, encoder_sha256: str, encoder) -> dict:
    return {
        "fps": cfg.fps,
        "aligned": cfg.aligned,
        "align": None
        if cfg.aligned
        else {"size": cfg.align_size, "detector": cfg.detector, "smooth": cfg.smooth},
        "encoder": {
            "file": encoder_path.name,
            "sha256": encoder_sha256,
            "n_styles": encoder.n_styles,
        },
        "n_latent": encoder.n_styles,
        "style_dim": encoder.style_dim,
        "codes": "float16 offsets (<id>.w.npy) from a float32 reference (<id>.ref.npy)",
        "features": dict(FEATURE_SETTINGS),
    }


_MUST_MATCH = ("fps", "aligned", "n_latent", "style_dim")


def check_compatible(data: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix videos prepared with other settings (fps, encoder, aligned) in ``DATA``;
    SSL features already there are kept in ``settings`` (one dataset, several kinds), and the
    same kind from another feature model or layer is refused."""
    if not (data / INDEX).is_file():
        return
    old = read_index(data)["settings"]
    new_ssl = settings.get("ssl_features") or {}
    for kind, old_ssl in (old.get("ssl_features") or {}).items():
        now = new_ssl.get(kind)
        if now and (now["sha256"], now["layer"]) != (old_ssl["sha256"], old_ssl["layer"]):
            raise UserError(
                f"{data}: holds {kind} features of another feature model or layer (layer "
                f"{old_ssl['layer']}, sha256 {old_ssl['sha256'][:12]}...); use the same "
                "--feature-model and --feature-layer, or another --out"
            )
    merged = {**(old.get("ssl_features") or {}), **new_ssl}
    if merged:
        settings["ssl_features"] = merged
    for key in _MUST_MATCH:
        if old.get(key) != settings[key]:
            raise UserError(
                f"{data}: this dataset was prepared with {key}={old.get(key)!r}, this run uses "
                f"{settings[key]!r} (use the same settings or another --out)"
            )
    old_sha = (old.get("encoder") or {}).get("sha256")
    if old_sha and old_sha != settings["encoder"]["sha256"]:
        raise UserError(
            f"{data}: this dataset was encoded with another pSp file (sha256 {old_sha[:12]}...); "
            "use the same --encoder or another --out"
        )


def existing_records(data: Path, items: list[VideoItem]) -> dict[str, dict[str, Any] | None]:
    """The records ``data`` already holds for ``items`` (None where it has none): one listing of
    ``DATA/shards``, then only the records present are read (the resume check of 100,000 videos
    costs what the folder holds, not a stat per video)."""
    try:
        present = set(os.listdir(Path(data) / SHARDS))
    except OSError:  # no dataset yet
        present = set()
    return {
        it.id: _existing_record(data, it) if f"{it.id}.json" in present else None for it in items
    }


def _existing_record(data: Path, item: VideoItem) -> dict[str, Any] | None:
    rec_path = shard_paths(data, item.id).record
    if not rec_path.is_file():
        return None
    try:
        return read_json(rec_path, "video record")
    except InputFileError:
        return None


def _is_done(data: Path, rec: dict[str, Any] | None, encoder_sha256: str) -> bool:
    if rec is None or rec.get("status") != "ok" or rec.get("encoder_sha256") != encoder_sha256:
        return False
    return shard_paths(data, rec["id"]).arrays_exist()


def failed_record(item: VideoItem, message: str) -> dict[str, Any]:
    return {
        **item.plan(),
        "status": "failed",
        "message": message,
        "frames": 0,
        "talkcli": __version__,
    }


def prepare_dataset(
    items: list[VideoItem],
    data: Path,
    cfg: PrepareConfig,
    encoder_path: Path,
    shard: tuple[int, int] = (0, 1),
    *,
    on_item: ItemFn | None = None,
    progress: ProgressFn | None = None,
) -> PrepareResult:
    """Prepare this process's share of ``items`` into ``data``; returns records and index.

    Every process computes the same speaker split from all ``items``. Without ``cfg.resume``
    videos of this shard that ``data`` already holds are refused before any work.
    """
    from talkcli.device import resolve_dtype
    from talkcli.distributed import split_items
    from talkcli.models.psp import load_encoder

    cfg.check()
    data = Path(data)
    speakers = choose_holdout([it.speaker for it in items], cfg.holdout, cfg.seed)
    mine = split_items(items, *shard)
    existing = existing_records(data, mine)
    if not cfg.resume:
        present = [i for i, rec in existing.items() if rec is not None]
        if present:
            raise UserError(
                f"{data}: already holds {len(present)} of these videos (e.g. {present[0]}); "
                "pass --resume to continue, or choose another --out"
            )
    ensure_folder(data / SHARDS, "dataset folder")
    encoder = load_encoder(encoder_path, cfg.device)
    cfg = replace(cfg, dtype=resolve_dtype(cfg.dtype, next(encoder.parameters()).device))
    psp = PspRun(encoder, cfg.dtype, cfg.compile, cfg.batch_size)
    encoder_sha256 = sha256_file(encoder_path)
    settings = dataset_settings(cfg, encoder_path, encoder_sha256, encoder)
    ssl_model = _load_feature_model(cfg)
    if ssl_model is not None:
        settings["ssl_features"] = {ssl_model.kind: ssl_model.settings()}
    check_compatible(data, settings)
    holdout = {"spec": cfg.holdout, "seed": cfg.seed}
    planned = [it.plan() for it in items]
    write_json_atomic(data / INDEX, build_index(data, settings, speakers, planned, holdout))

    detectors = None
    if not cfg.aligned:
        from talkcli.face.align import AlignConfig, Detectors

        detectors = Detectors(
            AlignConfig(detector=cfg.detector, weights_dir=cfg.weights_dir, device=cfg.device)
        )
    result = PrepareResult()
    for n, item in enumerate(mine):
        done = existing[item.id]
        if cfg.resume and done is not None and _is_done(data, done, encoder_sha256):
            rec = done
            result.skipped.append(item.id)
            if ssl_model is not None and not feature_path(data, item.id, ssl_model.kind).is_file():
                rec = add_features(item, data, done, ssl_model)  # the codes stay
        else:
            try:
                rec = prepare_video(item, data, cfg, psp, encoder_sha256, detectors, progress,
                                    ssl_model, len(mine) - n - 1)  # fmt: skip
            except TalkcliError as exc:
                if isinstance(exc, ModelFileError | OutputError) or exc.exit_code != 2:
                    raise  # would fail every video: stop now
                rec = failed_record(item, str(exc).splitlines()[0])
                write_json_atomic(shard_paths(data, item.id).record, rec)
        result.records.append(rec)
        if on_item:
            on_item(rec)
    result.index = build_index(data, settings, speakers, planned, holdout)
    write_json_atomic(data / INDEX, result.index)
    if shard[1] == 1:  # alone: nobody else is aligning into the work folder
        shutil.rmtree(data / WORK_DIR, ignore_errors=True)
    return result
