"""The prepared training dataset on disk: per-video shard files, per-video records, an index.

Layout of ``DATA`` (written by ``talkcli train prepare``, read by ``train pca`` and ``train fit``)::

    DATA/index.json               settings, speakers and their split, one summary row per video
    DATA/shards/<id>.w.npy        pSp W+ codes as float16 offsets (frames, n_latent, 512)
    DATA/shards/<id>.ref.npy      the float32 reference they are offsets from (n_latent, 512)
    DATA/shards/<id>.mfcc.npy     MFCC rows of the soundtrack, float32 (M, 12), 100 per second
    DATA/shards/<id>.<kind>.npy   Wav2Vec2 / HuBERT rows (kind wav2vec2, hubert), float16 (M, D),
                                  50 per second (``train prepare --features``, issue 17)
    DATA/shards/<id>.json         the video's record (status, counts, hashes), written last

Codes are stored as ``ref + offset``: ``ref`` is the mean code of the video's first frames, so
float16 spends its precision on how the face moves (small next to the code itself), not on the
identity every frame shares. ``VideoEntry.codes(index)`` gives float32 codes back.

The records are the truth: a video is done when its record says ``ok`` and both arrays exist.
``index.json`` is rebuilt from the records by every ``prepare`` process when it finishes (many
processes may share one ``DATA``), and the loader reads the records too, so an index written by
a process that finished early never hides another's videos.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkcli import __version__
from talkcli.errors import InputFileError, UserError

FORMAT = "talkcli-train-dataset"
FORMAT_VERSION = 1
INDEX = "index.json"
SHARDS = "shards"
SPLITS = ("train", "val")


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(path, f"{what} not found") from None
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"{what} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputFileError(path, f"{what} is not a JSON object")
    return data


# -- shard files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardFiles:
    """The files of one prepared video (the record is written last)."""

    w: Path
    ref: Path
    mfcc: Path
    record: Path

    def arrays_exist(self) -> bool:
        return self.w.is_file() and self.ref.is_file() and self.mfcc.is_file()


def shard_paths(data: Path, video_id: str) -> ShardFiles:
    """Where the files of video ``video_id`` live in ``data``."""
    base = Path(data) / SHARDS
    return ShardFiles(
        base / f"{video_id}.w.npy",
        base / f"{video_id}.ref.npy",
        base / f"{video_id}.mfcc.npy",
        base / f"{video_id}.json",
    )


class NpyAppender:
    """Write an .npy file row block by row block without holding it in memory.

    The header is written for the final shape on ``close()`` (it has a fixed 128-byte size for
    any row count), the data streams to disk as it comes. Use inside ``atomic_output``.
    """

    HEADER = 128

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype: np.dtype | str) -> None:
        self.path = Path(path)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(b"\0" * self.HEADER)

    def append(self, block: np.ndarray) -> None:
        if tuple(block.shape[1:]) != self.row_shape:
            raise ValueError(f"block rows {block.shape[1:]} != {self.row_shape}")
        self._f.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def close(self) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.rows, *self.row_shape),
        }
        text = repr(header).encode("latin1")
        room = self.HEADER - 10 - len(text) - 1  # magic (6) + version (2) + length (2), "\n"
        if room < 0:  # pragma: no cover - shapes never get that long
            raise ValueError("npy header does not fit")
        self._f.seek(0)
        self._f.write(b"\x93NUMPY\x01\x00" + (self.HEADER - 10).to_bytes(2, "little"))
        self._f.write(text + b" " * room + b"\n")
        self._f.close()

    def abort(self) -> None:
        self._f.close()


# -- records and the index -----------------------------------------------------------------------


@dataclass
class VideoEntry:
    """One prepared video, as ``train pca`` and ``train fit`` see it."""

    id: str
    speaker: str
    split: str
    frames: int
    files: ShardFiles
    record: dict[str, Any] = field(default_factory=dict)
    _arrays: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            offsets = load_array(self.files.w, "W+ codes")  # memory-mapped float16
            ref = np.asarray(load_array(self.files.ref, "W+ reference"), dtype=np.float32)
            if offsets.ndim != 3 or offsets.shape[1:] != ref.shape or len(offsets) < self.frames:
                raise InputFileError(
                    self.files.w,
                    f"W+ codes {offsets.shape} do not fit the reference {ref.shape} and "
                    f"{self.frames} frames",
                    "rerun `train prepare --resume` after deleting its record",
                )
            self._arrays = (offsets, ref)
        return self._arrays

    def codes(self, index: slice | np.ndarray | int = slice(None)) -> np.ndarray:
        """Float32 W+ codes of frames ``index`` (a slice, indices or one frame)."""
        offsets, ref = self._open()
        if isinstance(index, slice):
            index = range(self.frames)[index]
            picked = offsets[index.start : index.stop : index.step]
        else:
            picked = offsets[index]
        return picked.astype(np.float32) + ref  # (..., n_latent, 512)

    def __getstate__(self) -> dict[str, Any]:
        # data-loader workers open their own memory maps (never pickle the arrays themselves)
        return {**self.__dict__, "_arrays": None}

    @property
    def code_shape(self) -> tuple[int, int]:
        return tuple(self._open()[1].shape)  # type: ignore[return-value]

    def mfcc(self) -> np.ndarray:
        """MFCC rows, memory-mapped float32 (M, 12)."""
        return load_array(self.files.mfcc, "MFCC rows")

    def features(self, kind: str = "mfcc") -> np.ndarray:
        """Feature rows of ``kind``: ``mfcc()``, or the SSL rows memory-mapped float16 (M, D)."""
        if kind == "mfcc":
            return self.mfcc()
        path = feature_path(self.files.record.parent.parent, self.id, kind)
        if not path.is_file():
            raise InputFileError(
                path, f"video {self.id} has no {kind} features",
                f"run `train prepare --resume --features {kind} --feature-model DIR` on it",
            )  # fmt: skip
        return load_array(path, f"{kind} features")


def feature_path(data: Path, video_id: str, kind: str) -> Path:
    """Where the SSL feature rows of ``kind`` of video ``video_id`` live in ``data``."""
    return Path(data) / SHARDS / f"{video_id}.{kind}.npy"


def load_array(path: Path, what: str) -> np.ndarray:
    """Memory-map an .npy shard file (no pickle), with one-line errors."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputFileError(
            path, f"{what} file is missing", "rerun `train prepare --resume`"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputFileError(
            path, f"{what} file is damaged ({exc})", "delete it and rerun `train prepare --resume`"
        ) from None


def iter_records(data: Path) -> Iterator[dict[str, Any]]:
    """Every readable record in ``DATA/shards`` (unreadable ones are skipped: a process may be
    writing them, and the index rebuild runs again at the end)."""
    folder = Path(data) / SHARDS
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("id"), str):
            yield rec


def speaker_splits(speakers: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for name, split in sorted(speakers.items()):
        out.setdefault(split, []).append(name)
    return out


def build_index(
    data: Path,
    settings: Mapping[str, Any],
    speakers: Mapping[str, str],
    planned: list[dict[str, Any]] | None = None,
    holdout: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The index document from the records on disk (plus planned videos not done yet)."""
    rows: dict[str, dict[str, Any]] = {}
    for item in planned or []:
        rows[item["id"]] = {**item, "status": "pending"}
    for rec in iter_records(data):
        row = {
            k: rec.get(k)
            for k in (
                "id",
                "source",
                "source_sha256",
                "audio",
                "audio_sha256",
                "speaker",
                "status",
                "message",
                "frames",
                "video_frames",
                "audio_frames",
            )
        }
        rows[rec["id"]] = {**rows.get(rec["id"], {}), **row}
    videos = sorted(rows.values(), key=lambda r: r["id"])
    for row in videos:
        row["split"] = speakers.get(row.get("speaker") or "", "train")
    ok = [r for r in videos if r.get("status") == "ok"]
    summary = {
        "videos": len(videos),
        "ok": len(ok),
        "failed": sum(r.get("status") == "failed" for r in videos),
        "pending": sum(r.get("status") == "pending" for r in videos),
        "frames": sum(int(r.get("frames") or 0) for r in ok),
        **{
            f"{s}_frames": sum(int(r.get("frames") or 0) for r in ok if r["split"] == s)
            for s in SPLITS
        },
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "talkcli": __version__,
        "settings": dict(settings),
        "holdout": dict(holdout or {}),
        "speakers": dict(sorted(speakers.items())),
        "splits": speaker_splits(speakers),
        "summary": summary,
        "videos": videos,
    }


def read_index(data: str | Path) -> dict[str, Any]:
    """``DATA/index.json``, checked to be a talkcli dataset index."""
    root = Path(data)
    if not root.exists():
        raise InputFileError(root, "dataset folder not found", "make one with `train prepare`")
    if not root.is_dir():
        raise InputFileError(root, "is not a dataset folder", "pass the --out of `train prepare`")
    index = read_json(root / INDEX, "dataset index")
    if index.get("format") != FORMAT:
        raise InputFileError(root / INDEX, "is not a talkcli training dataset index")
    if index.get("format_version") != FORMAT_VERSION:
        raise InputFileError(
            root / INDEX,
            f"dataset format version {index.get('format_version')} is not supported",
            "prepare it again with this talkcli",
        )
    if not isinstance(index.get("settings"), dict) or not isinstance(index.get("speakers"), dict):
        raise InputFileError(root / INDEX, "dataset index lacks settings or speakers")
    return index


@dataclass
class Dataset:
    """A prepared dataset: its settings and usable videos (``ok`` records with both arrays)."""

    root: Path
    settings: dict[str, Any]
    speakers: dict[str, str]
    videos: list[VideoEntry]
    failed: list[dict[str, Any]]
    missing: list[str]  # ok records whose shard files are gone

    @property
    def n_latent(self) -> int:
        return int(self.settings["n_latent"])

    @property
    def style_dim(self) -> int:
        return int(self.settings.get("style_dim", 512))

    @property
    def fps(self) -> float:
        return float(self.settings["fps"])

    def split(self, name: str) -> list[VideoEntry]:
        return [v for v in self.videos if v.split == name]

    @property
    def feature_kinds(self) -> list[str]:
        """Feature kinds the dataset holds: ``mfcc`` always, then the SSL kinds prepared."""
        return ["mfcc", *(self.settings.get("ssl_features") or {})]

    def frames(self, name: str | None = None) -> int:
        return sum(v.frames for v in self.videos if name is None or v.split == name)


def load_dataset(data: str | Path) -> Dataset:
    """Read ``DATA``: the index's settings and split, and the videos whose records say ok.

    An empty or wholly failed dataset is a one-line UserError (nothing to train on).
    """
    root = Path(data)
    index = read_index(root)
    settings = index["settings"]
    for key in ("fps", "n_latent"):
        if key not in settings:
            raise InputFileError(root / INDEX, f"dataset settings lack {key!r}")
    speakers = {str(k): str(v) for k, v in index["speakers"].items()}
    videos: list[VideoEntry] = []
    failed: list[dict[str, Any]] = []
    missing: list[str] = []
    enc = (settings.get("encoder") or {}).get("sha256")
    for rec in iter_records(root):
        if rec.get("status") != "ok":
            failed.append(rec)
            continue
        if enc and rec.get("encoder_sha256") not in (None, enc):
            raise InputFileError(
                shard_paths(root, rec["id"]).record,
                "was encoded with another pSp encoder than the rest of the dataset",
                "prepare it again into a fresh folder",
            )
        files = shard_paths(root, rec["id"])
        if not files.arrays_exist():
            missing.append(rec["id"])
            continue
        speaker = str(rec.get("speaker") or "")
        videos.append(
            VideoEntry(
                id=rec["id"],
                speaker=speaker,
                split=speakers.get(speaker, "train"),
                frames=int(rec.get("frames") or 0),
                files=files,
                record=rec,
            )
        )
    if not videos:
        detail = f"{len(failed)} video(s) failed" if failed else "no prepared videos"
        first = f", first: {failed[0].get('message')}" if failed else ""
        raise UserError(
            f"{root}: dataset has nothing to train on ({detail}{first}); "
            "see its index.json and run `train prepare` on working videos"
        )
    return Dataset(root, settings, speakers, videos, failed, missing)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (for video ids)."""
    return _SAFE.sub("_", text).strip("._") or "video"
