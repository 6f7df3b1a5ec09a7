"""StyleGAN2 operators against naive references (explicit loops, per-sample convolutions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talkcli.models.ops import (
    blur_pad_for_upsample,
    fused_leaky_relu,
    make_kernel,
    modulated_conv2d,
    upfirdn2d,
    upsample_pad,
)


def naive_upfirdn2d(x: np.ndarray, k: np.ndarray, up: int, down: int, pads) -> np.ndarray:
    """Upsample by zero insertion, pad/crop, true 2-D convolution, keep every down-th sample.

    pads = (x0, x1, y0, y1); a negative pad crops. Explicit loops over every output sample.
    """
    x0, x1, y0, y1 = pads
    batch, chans, h, w = x.shape
    kh, kw = k.shape
    uh, uw = h * up, w * up
    ph, pw = uh + y0 + y1, uw + x0 + x1
    out_h, out_w = (ph - kh) // down + 1, (pw - kw) // down + 1
    out = np.zeros((batch, chans, out_h, out_w), dtype=np.float64)
    for b in range(batch):
        for c in range(chans):
            up_img = np.zeros((uh, uw))
            up_img[::up, ::up] = x[b, c]
            padded = np.zeros((ph, pw))
            for yy in range(ph):
                for xx in range(pw):
                    sy, sx = yy - y0, xx - x0  # source sample in the upsampled image
                    if 0 <= sy < uh and 0 <= sx < uw:
                        padded[yy, xx] = up_img[sy, sx]
            for oy in range(out_h):
                for ox in range(out_w):
                    acc = 0.0
                    for i in range(kh):
                        for j in range(kw):
                            # convolution: out[n] = sum_m in[n + K-1 - m] k[m]
                            acc += padded[oy * down + i, ox * down + j] * k[kh - 1 - i, kw - 1 - j]
                    out[b, c, oy, ox] = acc
    return out


@pytest.mark.parametrize(
    "up,down,pad",
    [
        (1, 1, (1, 1)),
        (2, 1, (2, 1)),
        (1, 2, (1, 1)),
        (2, 2, (1, 2)),
        (1, 1, (-1, 2)),
        (2, 1, (3, -2, -1, 1)),
        (3, 2, (0, 0, 2, -1)),
    ],
)
def test_upfirdn2d_matches_naive_loops(up, down, pad):
    rng = np.random.default_rng(up * 10 + down)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    k = rng.standard_normal((3, 4)).astype(np.float32)  # asymmetric: checks the flip
    pads = (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else pad
    got = upfirdn2d(torch.from_numpy(x), torch.from_numpy(k), up=up, down=down, pad=pad)
    ref = naive_upfirdn2d(x, k, up, down, pads)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_upfirdn2d_output_sizes_of_stylegan2_layers():
    x = torch.randn(1, 2, 8, 8)
    k = make_kernel([1, 3, 3, 1]) * 4
    assert upfirdn2d(x, k, up=2, pad=upsample_pad(4)).shape[-2:] == (16, 16)
    convt = torch.randn(1, 2, 17, 17)  # stride-2 transposed 3x3 conv of an 8x8 map
    assert upfirdn2d(convt, k, pad=blur_pad_for_upsample(4, 3)).shape[-2:] == (16, 16)


def test_rosinality_pads_and_kernel():
    assert upsample_pad(4) == (2, 1)
    assert blur_pad_for_upsample(4, 3) == (1, 1)
    k = make_kernel([1, 3, 3, 1])
    expected = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    np.testing.assert_allclose(k.numpy(), expected)
    assert make_kernel(torch.ones(2, 2)).sum() == pytest.approx(1.0)


def test_upfirdn2d_rejects_bad_shapes():
    with pytest.raises(ValueError, match="B, C, H, W"):
        upfirdn2d(torch.zeros(3, 4, 4), torch.ones(2, 2))
    with pytest.raises(ValueError, match="pad"):
        upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(2, 2), pad=(1, 1, 1))


def test_fused_leaky_relu_formula():
    x = torch.randn(2, 5, 3, 3)
    b = torch.randn(5)
    got = fused_leaky_relu(x, b)
    y = (x + b.view(1, 5, 1, 1)).numpy()
    ref = np.where(y >= 0, y, 0.2 * y) * math.sqrt(2)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, atol=1e-6)
    v = torch.randn(4, 5)  # (B, C) as in the mapping network
    ref2 = F.leaky_relu(v + b, 0.2) * math.sqrt(2)
    torch.testing.assert_close(fused_leaky_relu(v, b), ref2)


def _per_sample_modconv(x, weight, style, demodulate, upsample, blur):
    outs = []
    for b in range(x.shape[0]):
        w = weight * style[b].view(1, -1, 1, 1)  # (out, in, k, k)
        if demodulate:
            w = w / torch.sqrt(w.pow(2).sum([1, 2, 3], keepdim=True) + 1e-8)
        if upsample:
            o = F.conv_transpose2d(x[b : b + 1], w.transpose(0, 1), stride=2)
            ref = naive_upfirdn2d(o.numpy(), blur.numpy(), 1, 1, (1, 1, 1, 1))
            o = torch.from_numpy(ref).float()
        else:
            o = F.conv2d(x[b : b + 1], w, padding=w.shape[-1] // 2)
        outs.append(o)
    return torch.cat(outs)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("upsample,k", [(False, 3), (False, 1), (True, 3)])
def test_modulated_conv2d_matches_per_sample_loop(demodulate, upsample, k):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 5)
    weight = torch.randn(6, 4, k, k) / math.sqrt(4 * k * k)
    style = torch.randn(3, 4) + 1.0
    blur = make_kernel([1, 3, 3, 1]) * 4
    got = modulated_conv2d(
        x,
        weight,
        style,
        demodulate=demodulate,
        upsample=upsample,
        blur_kernel=blur,
        blur_pad=(1, 1),
    )
    ref = _per_sample_modconv(x, weight, style, demodulate, upsample, blur)
    assert got.shape == ref.shape == (3, 6, 10 if upsample else 5, 10 if upsample else 5)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # batch elements do not leak into each other
    one = modulated_conv2d(
        x[1:2],
        weight,
        style[1:2],
        demodulate=demodulate,
        upsample=upsample,
        blur_kernel=blur,
        blur_pad=(1, 1),
    )
    torch.testing.assert_close(one, got[1:2], rtol=1e-4, atol=1e-5)


def test_modulated_conv2d_checks_shapes():
    with pytest.raises(ValueError, match="do not agree"):
        modulated_conv2d(torch.zeros(2, 4, 5, 5), torch.zeros(6, 3, 3, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="blur_kernel"):
        modulated_conv2d(
            torch.zeros(1, 4, 5, 5), torch.zeros(6, 4, 3, 3), torch.ones(1, 4), upsample=True
        )
