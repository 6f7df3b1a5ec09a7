"""Which generated video is compared with which reference: two files, two folders, a pairs CSV.

* ``GENERATED REFERENCE`` (two files): one pair.
* two folders: videos paired by file stem (``gen/s1.mp4`` with ``ref/s1.mov``); a generated video
  without a reference of the same stem becomes a pair whose reference is missing (it fails with a
  one-line error while the others finish); references without a generated video are listed.
* a generated file with a reference folder: the reference of the same stem in that folder.
* generated only (a file or a folder): no-reference metrics (CPBD, LSE) on each video.
* ``--pairs pairs.csv``: rows ``generated,reference[,name]`` (a header row with those words is
  optional; an empty reference means no reference); relative paths are relative to the CSV.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from talkcli.errors import InputFileError, UserError
from talkcli.io.files import require_file
from talkcli.io.images import VIDEO_EXTS


@dataclass(frozen=True)
class Pair:
    """One evaluation item. ``missing_reference`` names the reference that was looked for."""

    name: str
    generated: Path
    reference: Path | None = None
    missing_reference: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "generated": str(self.generated),
            "reference": None if self.reference is None else str(self.reference),
        }


def _videos(folder: Path) -> dict[str, Path]:
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)
    if not found:
        raise InputFileError(folder, "folder holds no videos", f"expected {', '.join(VIDEO_EXTS)}")
    by_stem: dict[str, Path] = {}
    for p in found:
        if p.stem in by_stem:
            raise InputFileError(
                p, f"two videos named {p.stem!r} in the folder ({by_stem[p.stem].name})"
            )
        by_stem[p.stem] = p
    return by_stem


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    return require_file(p, what)


def collect_pairs(
    generated: str | Path, reference: str | Path | None = None
) -> tuple[list[Pair], list[Path]]:
    """Pairs from a generated file/folder and an optional reference file/folder.

    Returns (pairs, unmatched references). Missing inputs raise ``InputFileError`` naming them.
    """
    gen = _existing(generated, "generated video")
    ref = None if reference is None else _existing(reference, "reference video")
    if gen.is_dir():
        gens = _videos(gen)
        if ref is None:
            return [Pair(stem, p) for stem, p in gens.items()], []
        if not ref.is_dir():
            raise UserError(
                f"{ref}: a folder of generated videos needs a folder of references (or --pairs)"
            )
        refs = _videos(ref)
        pairs = [
            Pair(stem, p, refs.get(stem), None if stem in refs else f"{ref}/{stem}.*")
            for stem, p in gens.items()
        ]
        return pairs, [p for stem, p in refs.items() if stem not in gens]
    if ref is None:
        return [Pair(gen.stem, gen)], []
    if ref.is_dir():
        match = _videos(ref).get(gen.stem)
        return [Pair(gen.stem, gen, match, None if match else f"{ref}/{gen.stem}.*")], []
    return [Pair(gen.stem, gen, ref)], []


def read_pairs_csv(path: str | Path) -> list[Pair]:
    """Pairs from a CSV of ``generated,reference[,name]`` rows (see the module docstring)."""
    p = require_file(path, "pairs CSV")
    try:
        rows = list(csv.reader(p.read_text(encoding="utf-8").splitlines()))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(p, f"is not a readable CSV ({exc})") from None
    rows = [[c.strip() for c in r] for r in rows if any(c.strip() for c in r)]
    if rows and [c.lower() for c in rows[0][:2]] == ["generated", "reference"]:
        rows = rows[1:]
    if not rows:
        raise InputFileError(p, "lists no pairs", "rows: generated,reference[,name]")
    pairs = []
    for i, row in enumerate(rows, start=1):
        if len(row) > 3 or not row[0]:
            raise InputFileError(p, f"row {i}: expected generated,reference[,name], got {row}")
        gen = (p.parent / row[0]).expanduser()
        ref_text = row[1] if len(row) > 1 else ""
        ref = (p.parent / ref_text).expanduser() if ref_text else None
        name = row[2] if len(row) > 2 and row[2] else gen.stem
        missing = str(ref) if ref is not None and not ref.exists() else None
        pairs.append(Pair(name, gen, None if missing else ref, missing))
    return pairs


def check_unique_names(pairs: list[Pair]) -> None:
    """Pair names key the report and the per-frame CSV: refuse duplicates."""
    seen: dict[str, Path] = {}
    for pair in pairs:
        if pair.name in seen:
            raise UserError(
                f"two inputs are named {pair.name!r} ({seen[pair.name]} and {pair.generated}); "
                "give them distinct names (third column of --pairs)"
            )
        seen[pair.name] = pair.generated
