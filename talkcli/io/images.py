"""Image files: expand user inputs (files, folders, globs), read RGB, write PNG atomically."""

from __future__ import annotations

import glob
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from talkcli.constants import IMAGE_EXTS, VIDEO_EXTS  # noqa: F401  (re-exported)
from talkcli.errors import InputFileError, UserError
from talkcli.io.files import atomic_output, require_file


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
    photos need); one-line error if it is not an image or is too large.

    The one reader for every command: 8- and 16-bit, grey, palette, alpha (composited on white)
    and CMYK files all come out as the picture they show (``pil_to_rgb``).
    """
    from talkcli.guards import check_image_size

    p = require_file(path, "image")
    try:
        with warnings.catch_warnings():
            # talkcli's own size limit applies below; PIL's bomb warning would be a second line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                check_image_size(p, *im.size)  # from the header, before decoding
                return pil_to_rgb(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError:
        # PIL refused at its own (higher) limit before talkcli saw the size: read the header alone
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(p) as im:
                check_image_size(p, *im.size)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
        raise  # pragma: no cover - PIL's limit is above talkcli's
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputFileError(
            p, f"cannot read as an image ({exc.__class__.__name__})", "pass a PNG or JPEG file"
        ) from None


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """A decoded PIL image of any mode -> (H, W, 3) uint8 RGB showing the same picture.

    PIL's own ``convert("RGB")`` clips 16-bit grey (``I;16``) and 32-bit (``I``, ``F``) values at
    255, so a 16-bit PNG reads almost white; those are scaled from their bit depth instead.
    Transparency (RGBA, LA, palette with a transparent colour) is composited on white.
    """
    mode = im.mode
    if mode in ("RGB",):
        return np.asarray(im)
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "F":
            top = 1.0 if a.size and a.max() <= 1.0 else 255.0
        else:  # 32-bit integer: 8-bit data, 16-bit data (PNG "I"), or wider
            peak = a.max() if a.size else 0.0
            top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else float(peak)
        grey = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))  # L, 1, P, CMYK, YCbCr, LAB, HSV


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
