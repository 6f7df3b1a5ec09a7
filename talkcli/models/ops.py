"""StyleGAN2 operators in pure PyTorch (no nvcc, CPU and GPU alike).

These reproduce the semantics of rosinality's ``op/`` package (``upfirdn2d`` and
``fused_leaky_relu``) and of the modulated convolution in its ``model.py``, so that a rosinality
checkpoint renders the same image here to float32 rounding:

- ``upfirdn2d``: upsample by zero insertion, pad (negative pads crop), convolve with the FIR
  kernel (a true convolution: the kernel is flipped), downsample by keeping every ``down``-th
  sample starting at 0.
- ``fused_leaky_relu``: ``leaky_relu(x + bias, 0.2) * sqrt(2)``, bias broadcast over dim 1.
- ``modulated_conv2d``: per-sample modulated (and demodulated) weights, run as one grouped
  convolution with the batch as groups; the upsampling variant is a stride-2 transposed
  convolution followed by a blur.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SQRT2 = math.sqrt(2.0)


def make_kernel(k: Sequence[float] | Tensor) -> Tensor:
    """A normalised 2-D FIR kernel: the outer product of a 1-D kernel with itself, sum 1."""
    kernel = torch.as_tensor(k, dtype=torch.float32)
    if kernel.ndim == 1:
        kernel = kernel[None, :] * kernel[:, None]
    return kernel / kernel.sum()


def _pads(pad: Sequence[int]) -> tuple[int, int, int, int]:
    """(pad0, pad1) -> same on both axes; (x0, x1, y0, y1) as given."""
    if len(pad) == 2:
        return int(pad[0]), int(pad[1]), int(pad[0]), int(pad[1])
    if len(pad) == 4:
        return int(pad[0]), int(pad[1]), int(pad[2]), int(pad[3])
    raise ValueError(f"pad must have 2 or 4 entries, got {len(pad)}")


def upfirdn2d(
    x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: Sequence[int] = (0, 0)
) -> Tensor:
    """Upsample, pad, FIR-filter and downsample each channel of ``x`` (B, C, H, W).

    ``pad`` is ``(pad0, pad1)`` for both axes or ``(x0, x1, y0, y1)``; negative values crop.
    Output size per axis: ``(in * up + pad0 + pad1 - k) // down + 1``.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects (B, C, H, W), got {tuple(x.shape)}")
    if kernel.ndim != 2:
        raise ValueError(f"upfirdn2d expects a 2-D kernel, got {tuple(kernel.shape)}")
    px0, px1, py0, py1 = _pads(pad)
    batch, channels, height, width = x.shape
    kh, kw = kernel.shape
    if up > 1:  # zero insertion: each sample followed by up-1 zeros on both axes
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    if max(px0, px1, py0, py1) > 0:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if min(px0, px1, py0, py1) < 0:
        x = x[
            :,
            :,
            max(-py0, 0) : x.shape[2] - max(-py1, 0),
            max(-px0, 0) : x.shape[3] - max(-px1, 0),
        ]
    # True convolution = correlation with the flipped kernel; depthwise (one filter per channel).
    weight = torch.flip(kernel, [0, 1]).to(dtype=x.dtype, device=x.device)
    weight = weight.view(1, 1, kh, kw).expand(channels, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=channels)  # stride == keep every down-th


def fused_leaky_relu(
    x: Tensor, bias: Tensor | None = None, negative_slope: float = 0.2, scale: float = SQRT2
) -> Tensor:
    """``leaky_relu(x + bias, negative_slope) * scale`` with ``bias`` (C,) added along dim 1."""
    if bias is not None:
        rest = [1] * (x.ndim - bias.ndim - 1)
        x = x + bias.view(1, bias.shape[0], *rest)
    return F.leaky_relu(x, negative_slope=negative_slope) * scale


def blur_pad_for_upsample(kernel_len: int, conv_kernel: int, factor: int = 2) -> tuple[int, int]:
    """Blur padding after a stride-``factor`` transposed conv (rosinality ``ModulatedConv2d``)."""
    p = (kernel_len - factor) - (conv_kernel - 1)
    return (p + 1) // 2 + factor - 1, p // 2 + 1


def upsample_pad(kernel_len: int, factor: int = 2) -> tuple[int, int]:
    """Padding of the FIR upsampler (rosinality ``Upsample``)."""
    p = kernel_len - factor
    return (p + 1) // 2 + factor - 1, p // 2


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    style: Tensor,
    *,
    demodulate: bool = True,
    upsample: bool = False,
    blur_kernel: Tensor | None = None,
    blur_pad: Sequence[int] = (1, 1),
    eps: float = 1e-8,
) -> Tensor:
    """StyleGAN2 modulated convolution, batch folded into groups.

    x: (B, Cin, H, W); weight: (Cout, Cin, k, k) or (1, Cout, Cin, k, k), already multiplied by
    its equalised-learning-rate scale; style: (B, Cin), the output of the modulation layer.
    Returns (B, Cout, H, W), or (B, Cout, 2H, 2W) with ``upsample`` (transposed conv stride 2,
    then ``upfirdn2d(blur_kernel, pad=blur_pad)``).
    """
    batch, in_ch, height, width = x.shape
    if weight.ndim == 4:
        weight = weight.unsqueeze(0)
    _, out_ch, w_in, k, _ = weight.shape
    if w_in != in_ch or style.shape != (batch, in_ch):
        raise ValueError(
            f"modulated_conv2d: input {tuple(x.shape)}, weight {tuple(weight.shape)} and "
            f"style {tuple(style.shape)} do not agree"
        )
    w = weight * style.view(batch, 1, in_ch, 1, 1)  # (B, Cout, Cin, k, k)
    if demodulate:
        demod = torch.rsqrt(w.pow(2).sum([2, 3, 4]) + eps)  # (B, Cout)
        w = w * demod.view(batch, out_ch, 1, 1, 1)
    x = x.reshape(1, batch * in_ch, height, width)
    if upsample:
        if blur_kernel is None:
            raise ValueError("modulated_conv2d: upsample needs a blur_kernel")
        w = w.transpose(1, 2).reshape(batch * in_ch, out_ch, k, k)
        out = F.conv_transpose2d(x, w, padding=0, stride=2, groups=batch)
        out = out.view(batch, out_ch, out.shape[2], out.shape[3])
        return upfirdn2d(out, blur_kernel, pad=blur_pad)
    w = w.reshape(batch * out_ch, in_ch, k, k)
    out = F.conv2d(x, w, padding=k // 2, groups=batch)
    return out.view(batch, out_ch, out.shape[2], out.shape[3])
