"""PSNR and SSIM against scikit-image, on random and natural images, and their directions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from talkcli.metrics import psnr, ssim
from talkcli.metrics.pixel import psnr_frames, ssim_frames


def _noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def _blurred(img: np.ndarray, sigma: float) -> np.ndarray:
    out = gaussian_filter(img.astype(np.float64), sigma=(sigma, sigma, 0))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _natural() -> dict[str, np.ndarray]:
    small = lambda img, size: np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))  # noqa: E731
    return {
        "astronaut": small(data.astronaut(), (96, 96)),
        "coffee": small(data.coffee(), (120, 80)),
        "chelsea": small(data.chelsea(), (90, 70)),
    }


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=-1,
    )


def _pairs():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    yield "random", a, rng.integers(0, 256, a.shape, dtype=np.uint8)
    yield "random+noise", a, _noisy(a, 20)
    for name, img in _natural().items():
        yield f"{name}+noise", img, _noisy(img, 12)
        yield f"{name}+blur", img, _blurred(img, 1.2)
        yield f"{name}+noise+blur", img, _noisy(_blurred(img, 0.8), 6)


@pytest.mark.parametrize("name,a,b", list(_pairs()), ids=[p[0] for p in _pairs()])
def test_psnr_and_ssim_agree_with_scikit_image(name, a, b):
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-4)
    assert ssim(a, b) == pytest.approx(_sk_ssim(a, b), abs=1e-4)
    # in fact they agree to float64 rounding
    assert abs(ssim(a, b) - _sk_ssim(a, b)) < 1e-10


def test_identical_frames_give_ssim_one_and_infinite_psnr():
    img = _natural()["astronaut"]
    video = np.stack([img, _blurred(img, 1.0)])
    assert ssim(video, video) == pytest.approx(1.0, abs=1e-12)
    assert psnr(video, video) == math.inf


def test_video_values_are_the_mean_of_frame_values():
    img = _natural()["coffee"]
    a = np.stack([img, img, img])
    b = np.stack([_noisy(img, 5, 1), _noisy(img, 10, 2), _blurred(img, 2.0)])
    per_frame = [peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(psnr_frames(a, b), per_frame, rtol=1e-12)
    assert psnr(a, b) == pytest.approx(np.mean(per_frame), rel=1e-12)
    sk = [_sk_ssim(x, y) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(ssim_frames(a, b), sk, atol=1e-10)
    assert ssim(a, b) == pytest.approx(np.mean(sk), abs=1e-10)


def test_more_noise_or_blur_lowers_psnr_and_ssim():
    img = _natural()["astronaut"]
    for degrade in (lambda s: _noisy(img, 4 * s), lambda s: _blurred(img, 0.6 * s)):
        p = [psnr(img, degrade(s)) for s in (1, 2, 4)]
        q = [ssim(img, degrade(s)) for s in (1, 2, 4)]
        assert p[0] > p[1] > p[2]
        assert q[0] > q[1] > q[2]


def test_shape_and_type_errors():
    a = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, np.zeros((16, 18, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ssim(a.astype(np.float32), a.astype(np.float32))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))


def test_more_noise_or_blur_raises_lpips(tiny_pack):
    """LPIPS (tiny pack: random AlexNet features, the real calibrated v0.1 heads) grows with the
    degradation, for noise and for blur, and is 0 for the image itself."""
    from talkcli.metrics import lpips
    from talkcli.models.perceptual import load_lpips
    from talkcli.weights import registry

    model = load_lpips(
        "alex",
        backbone_path=registry.resolve("alexnet", tiny_pack),
        heads_path=registry.resolve("lpips-alex", tiny_pack),
    )
    img = np.asarray(Image.fromarray(data.astronaut()).resize((128, 128), Image.BILINEAR))
    assert lpips(img, img, model=model) == pytest.approx(0.0, abs=1e-7)
    for degrade in (lambda s: _noisy(img, 6 * s), lambda s: _blurred(img, 0.8 * s)):
        d = [lpips(img, degrade(s), model=model) for s in (1, 2, 4)]
        assert 0 < d[0] < d[1] < d[2], d
