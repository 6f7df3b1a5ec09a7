"""Bounds on every size talkcli reads from a model file, checked before anything is allocated.

A model file is untrusted input for its sizes too: an audio model whose config says
``n_components: 1e12`` would otherwise make talkcli try to allocate 256 TB. Every dimension a
loader reads from a checkpoint or its config (rather than from the shape of a tensor actually
in the file) is checked here against a bound well above any real model; a value outside it is
a ``ModelFileError`` naming the file, the value and the bound (exit 2).

The bounds (one table, ``MODEL_DIMS``):

* StyleGAN2: output size up to 2048 px (n_latent = 2 log2(size) - 2 <= 20; FFHQ is 1024, 18),
  style_dim up to 2048 (every published model uses 512), a mapping network of up to 16 layers
  (rosinality uses 8), channel widths up to 4096 (the widest published layer is 512 * 2);
* audio model (``talkcli.models.audio2latent``): n_latent and style_dim as the generator's,
  PCA components up to n_latent * style_dim (a basis cannot have more rows than its dimension;
  the thesis uses 2500), layer widths up to 8192 (the thesis' widest is 2048), up to 8 LSTM
  layers (the thesis uses 3);
* pSp: up to 20 style blocks (one per W+ layer).

Beside the bounds, ``check_fits_file`` compares what a config describes with the file's size:
a model needs at least 2 bytes (float16) per number, so a config that describes more numbers
than the file can hold is refused before the model is built, whatever the bounds allow.
"""

from __future__ import annotations

from pathlib import Path

from talkcli.errors import ModelFileError

_HINT = "the file is damaged or not a model this talkcli reads"

# name -> (lowest, highest, what it is)
MODEL_DIMS: dict[str, tuple[int, int, str]] = {
    "size": (4, 2048, "StyleGAN2 output size"),
    "upsamplings": (0, 9, "StyleGAN2 generator (4 px to 2048 px)"),
    "n_mlp": (0, 16, "StyleGAN2 mapping layers"),
    "style_dim": (1, 2048, "style dimension"),
    "channels": (1, 4096, "channel width"),
    "n_latent": (1, 20, "W+ layers"),
    "n_styles": (1, 20, "pSp style blocks"),
    "n_components": (1, 20 * 2048, "PCA components"),
    "width": (1, 8192, "layer width"),
    "lstm_layers": (1, 8, "LSTM layers"),
}


def check_dim(source: str | Path, name: str, value: object, key: str | None = None) -> int:
    """``value`` as an int if it lies in ``MODEL_DIMS[key or name]``, else ModelFileError
    naming the file, the field (``name``), the value and the bound."""
    lo, hi, what = MODEL_DIMS[key or name]
    try:
        number = int(value)  # type: ignore[call-overload]
        ok = number == value and lo <= number <= hi
    except (TypeError, ValueError, OverflowError):
        number, ok = 0, False
    if not ok:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise ModelFileError(
            source,
            f"{name} {shown} is outside talkcli's bound [{lo}, {hi}] for the {what}",
            _HINT,
        )
    return number


def check_fits_file(source: str | Path, n_numbers: int, what: str) -> None:
    """Refuse a config that describes more numbers than the file can hold (2 bytes each)."""
    size = Path(source).stat().st_size
    if 2 * n_numbers > size:
        raise ModelFileError(
            source,
            f"its config describes {what} of {n_numbers:,} numbers "
            f"(at least {2 * n_numbers / 2**20:,.0f} MiB) but the file holds "
            f"{size / 2**20:,.1f} MiB",
            _HINT,
        )
