"""Rendering W+ batches to frames: ``FrameRenderer``.

W+ (B, n_latent, 512) -> uint8 frames (B, S, S, 3) with the generator's stored noise
(``noise_mode="const"``: no flicker) under ``torch.autocast`` for ``--dtype`` bf16/fp16 (bf16 also
on the CPU; ``auto`` is resolved by ``talkcli.device.resolve_dtype``). With ``resolution`` below
the generator's size, the synthesis stops at that block and the frames are the skip
architecture's image there (``--resolution``/``--preview``). The frames go on to
``talkcli.animate.sink`` (paste-back and encoding in a writer thread, while the next batch
renders).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from talkcli.device import autocast, resolve_dtype
from talkcli.errors import UserError

AUTOCAST_DTYPES = ("bf16", "fp16")


def check_resolution(G: Any, resolution: int | None) -> int:
    """``--resolution`` against the generator: a power of two from 4 to its size (None: its
    size); a one-line UserError (exit 2) otherwise. -> the resolution rendered."""
    size = int(G.size)
    if resolution is None:
        return size
    r = int(resolution)
    if r > size:
        raise UserError(
            f"--resolution {r}: the generator renders {size}x{size} at most; "
            f"use --resolution {size} or less"
        )
    if r < 4 or r & (r - 1):
        raise UserError(f"--resolution {r}: expected a power of two from 4 to {size}")
    if r != size and not hasattr(G, "synthesis_at"):
        raise UserError(
            f"--resolution {r}: this generator ({type(G).__name__}) renders only at its full "
            f"size {size}; leave --resolution out"
        )
    return r


class FrameRenderer:
    """``G.synthesis`` over W+ batches -> uint8 RGB frames, under autocast for bf16/fp16."""

    def __init__(self, G: Any, dtype: str = "fp32", resolution: int | None = None) -> None:
        self.G = G
        self.device = G.device
        self.dtype = resolve_dtype(dtype, self.device)  # fp32 | bf16 | fp16
        self.resolution = check_resolution(G, resolution)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """(B, n_latent, 512) float32 -> (B, S, S, 3) uint8 (S = ``resolution``)."""
        import torch

        from talkcli.io.images import to_uint8_images

        x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(self.device)
        try:
            with torch.no_grad(), autocast(self.dtype, self.device):
                if self.resolution == int(self.G.size):
                    img = self.G.synthesis(x, noise_mode="const")  # (B, 3, S, S)
                else:
                    img = self.G.synthesis_at(x, self.resolution, noise_mode="const")
        except RuntimeError as exc:
            if self.dtype == "fp32":
                raise
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(
                f"--dtype {self.dtype} does not run on {self.device} with this torch ({first}); "
                "use --dtype bf16 or fp32"
            ) from None
        return to_uint8_images(img)  # (B, S, S, 3), converted on the device, then copied
