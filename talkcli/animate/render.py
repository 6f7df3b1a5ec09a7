"""Rendering W+ batches to frames: ``FrameRenderer``.

W+ (B, n_latent, 512) -> uint8 frames (B, S, S, 3) with the generator's stored noise
(``noise_mode="const"``: no flicker) under ``torch.autocast`` for ``--dtype`` bf16/fp16 (bf16 also
on the CPU; ``auto`` is resolved by ``talkcli.device.resolve_dtype``). With ``resolution`` below
the generator's size, the synthesis stops at that block and the frames are the skip
architecture's image there (``--resolution``/``--preview``). ``--compile`` runs the synthesis
through ``torch.compile`` where the first batch predicts it pays (``talkcli.compiled``;
``GENERATOR_PAYS_AFTER_S``). The frames go on to
``talkcli.animate.sink`` (paste-back and encoding in a writer thread, while the next batch
renders).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from talkcli.compiled import CompiledBatches
from talkcli.device import autocast, resolve_dtype
from talkcli.errors import UserError

AUTOCAST_DTYPES = ("bf16", "fp16")
# --compile auto compiles the synthesis when the eager rendering still to do is predicted above
# this: the 1024 generator on 2 CPU cores breaks even after ~60 s of eager work (28.6 s start-up,
# 2.03x; docs/speed.md), so twice that leaves a margin for slower compilers.
GENERATOR_PAYS_AFTER_S = 120.0


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

    def __init__(
        self,
        G: Any,
        dtype: str = "fp32",
        resolution: int | None = None,
        compile: str = "off",
        total: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.G = G
        self.device = G.device
        self.dtype = resolve_dtype(dtype, self.device)  # fp32 | bf16 | fp16
        self.resolution = check_resolution(G, resolution)
        # ``total``: the frames of the whole video (``--compile auto`` predicts from it);
        # ``batch_size``: the compiled graph's batch (shorter batches are padded to it)
        self.synthesis = CompiledBatches(
            self._synthesis, compile, total, GENERATOR_PAYS_AFTER_S, "generator", batch_size
        )

    def _synthesis(self, x: Any) -> Any:
        """(B, n_latent, 512) -> (B, 3, S, S) in [-1, 1]: the image at ``resolution``."""
        if self.resolution == int(self.G.size):
            return self.G.synthesis(x, noise_mode="const")
        return self.G.synthesis_at(x, self.resolution, noise_mode="const")

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """(B, n_latent, 512) float32 -> (B, S, S, 3) uint8 (S = ``resolution``)."""
        import torch

        from talkcli.io.images import to_uint8_images

        x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(self.device)
        try:
            with torch.no_grad(), autocast(self.dtype, self.device):
                img = self.synthesis(x)  # (B, 3, S, S)
        except RuntimeError as exc:
            if self.dtype == "fp32":
                raise
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(
                f"--dtype {self.dtype} does not run on {self.device} with this torch ({first}); "
                "use --dtype bf16 or fp32"
            ) from None
        return to_uint8_images(img)  # (B, S, S, 3), converted on the device, then copied
