"""Image files: expand user inputs (files, folders, globs), read RGB, write PNG atomically."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from talkcli.errors import InputFileError, UserError
from talkcli.io.files import atomic_output, require_file

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")


def expand_inputs(items: list[str] | list[Path], exts: tuple[str, ...] = IMAGE_EXTS) -> list[Path]:
    """Files, folders (their files with ``exts``, sorted) and glob patterns -> ordered unique paths.

    A path that does not exist and matches nothing is a one-line error naming it.
    """
    out: list[Path] = []
    for item in items:
        text = str(item)
        p = Path(text).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in exts)
            if not found:
                raise InputFileError(
                    p, "folder holds no input files", f"expected {', '.join(exts)}"
                )
            out.extend(found)
        elif p.exists():
            out.append(p)
        elif any(ch in text for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                raise InputFileError(text, "pattern matches no files", "check the glob")
            out.extend(matches)
        else:
            require_file(p, "input file")  # raises the standard "not found"
    if not out:
        raise UserError("no input files given")
    return list(dict.fromkeys(out))


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, upright (EXIF orientation applied, as phone
    photos need); one-line error if it is not an image."""
    p = require_file(path, "image")
    try:
        with Image.open(p) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputFileError(
            p, f"cannot read as an image ({exc.__class__.__name__})", "pass a PNG or JPEG file"
        ) from None


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write (H, W, 3) uint8 as PNG via a temporary name."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    final = Path(path)
    with atomic_output(final) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return final


def to_tensor_images(images: np.ndarray):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float tensor in [-1, 1]."""
    import torch

    t = torch.from_numpy(np.require(images, requirements=("C", "W"))).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


def to_uint8_images(x) -> np.ndarray:
    """(N, 3, H, W) tensor in ~[-1, 1] -> (N, H, W, 3) uint8 (rounded, clipped)."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return arr.permute(0, 2, 3, 1).cpu().numpy()
