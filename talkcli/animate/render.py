"""Rendering W+ batches to frames: ``FrameRenderer``.

W+ (B, n_latent, 512) -> uint8 frames (B, S, S, 3) with the generator's stored noise
(``noise_mode="const"``: no flicker) under ``torch.autocast`` for ``--dtype`` bf16/fp16 (bf16 also
on the CPU). The frames go on to ``talkcli.animate.sink`` (paste-back and encoding in a writer
thread, while the next batch renders).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from talkcli.errors import UserError

AUTOCAST_DTYPES = ("bf16", "fp16")


def _torch_dtype(name: str) -> Any:  # torch.dtype
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


class FrameRenderer:
    """``G.synthesis`` over W+ batches -> uint8 RGB frames, under autocast for bf16/fp16."""

    def __init__(self, G: Any, dtype: str = "fp32") -> None:
        if dtype not in ("fp32", *AUTOCAST_DTYPES):
            raise UserError(f"--dtype {dtype!r}: expected fp32, fp16 or bf16")
        self.G = G
        self.dtype = dtype
        self.device = G.device

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """(B, n_latent, 512) float32 -> (B, S, S, 3) uint8."""
        import torch

        from talkcli.io.images import to_uint8_images

        x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(self.device)
        cast = (
            torch.autocast(self.device.type, dtype=_torch_dtype(self.dtype))
            if self.dtype in AUTOCAST_DTYPES
            else contextlib.nullcontext()
        )
        try:
            with torch.no_grad(), cast:
                img = self.G.synthesis(x, noise_mode="const")  # (B, 3, S, S)
        except RuntimeError as exc:
            if self.dtype == "fp32":
                raise
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(
                f"--dtype {self.dtype} does not run on {self.device} with this torch ({first}); "
                "use --dtype bf16 or fp32"
            ) from None
        return to_uint8_images(img)  # (B, S, S, 3), converted on the device, then copied
