"""Inverse warp and paste-back of aligned faces into their source images."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import skimage.data

from talkcli.errors import UserError
from talkcli.face.ffhq import align_image_exact, align_image_fast
from talkcli.face.paste import inverse_warp, paste_back, paste_mask

ASTRO = skimage.data.astronaut()
ASTRO_5 = np.array(
    [[203.66, 101.18], [246.56, 103.66], [224.59, 128.07], [201.68, 140.27], [244.94, 141.56]]
)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def face_region(meta, shape) -> np.ndarray:
    """Source pixels where the paste mask is fully on (the face square minus the feather)."""
    full = np.repeat((paste_mask(meta.size, 0.1) * 255).astype(np.uint8)[..., None], 3, 2)
    img, cov = inverse_warp(full, meta, (shape[1], shape[0]))
    assert cov.max() == 1.0
    return img[..., 0] >= 254


def test_mask_shape_and_profile():
    m = paste_mask(256, 0.1)
    assert m.shape == (256, 256) and m.dtype == np.float32
    assert m[128, 128] == 1.0 and m[0, 0] == 0.0 and m[0, 128] == 0.0
    row = m[128, :128]
    assert np.all(np.diff(row) >= 0)  # rises monotonically towards the centre
    assert paste_mask(256, 0.1) is m  # cached: computed once per video
    assert not m.flags.writeable
    with pytest.raises(UserError):
        paste_mask(64, 0.9)


@pytest.mark.parametrize("size,fast", [(256, False), (1024, False), (1024, True)])
def test_untouched_aligned_image_pastes_back_at_30db(size, fast):
    align = align_image_fast if fast else align_image_exact
    aligned, meta = align(ASTRO, ASTRO_5, size)
    pasted = paste_back(ASTRO, aligned, meta)
    region = face_region(meta, ASTRO.shape)
    assert region.sum() > 15000  # the face square is ~170 px wide in the source, 78% fully on
    assert psnr(pasted[region], ASTRO[region]) >= 30.0
    # far from the face nothing changes
    assert np.array_equal(pasted[400:, :], ASTRO[400:, :])
    assert np.array_equal(pasted[:, 400:], ASTRO[:, 400:])


def test_paste_back_really_replaces_the_face():
    aligned, meta = align_image_exact(ASTRO, ASTRO_5, 256, transform_size=1024)
    grey = np.full_like(aligned, 128)
    pasted = paste_back(ASTRO, grey, meta.to_dict())  # the sidecar dict works too
    region = face_region(meta, ASTRO.shape)
    assert np.abs(pasted[region].astype(int) - 128).max() <= 1
    outside = ~face_region(meta, ASTRO.shape)
    changed = np.any(pasted != ASTRO, axis=-1)
    # the feather blends only just outside the fully-on region
    assert changed[outside].mean() < 0.2


def test_generated_frame_at_another_size_is_rescaled():
    aligned, meta = align_image_exact(ASTRO, ASTRO_5, 512, transform_size=2048)
    small = np.asarray(
        PIL.Image.fromarray(aligned).resize((256, 256), PIL.Image.Resampling.LANCZOS)
    )
    pasted_small = paste_back(ASTRO, small, meta)
    pasted_full = paste_back(ASTRO, aligned, meta)
    region = face_region(meta, ASTRO.shape)
    assert psnr(pasted_small[region], ASTRO[region]) >= 30.0
    assert psnr(pasted_small[region], pasted_full[region]) >= 30.0
    # with a bare matrix the size cannot be known: a misplaced paste is clearly worse
    wrong = paste_back(ASTRO, small, meta.matrix)
    assert psnr(wrong[region], ASTRO[region]) < 25.0


def test_face_outside_the_frame_and_bad_inputs():
    aligned, meta = align_image_exact(ASTRO, ASTRO_5, 128, transform_size=512)
    far = meta.matrix.copy()
    far[:2, 2] += 5000
    assert np.array_equal(paste_back(ASTRO, aligned, far), ASTRO)
    with pytest.raises(UserError):
        paste_back(ASTRO, aligned[:, :100], meta)
    with pytest.raises(UserError):
        paste_back(ASTRO[..., 0], aligned, meta)
    with pytest.raises(UserError):
        paste_back(ASTRO, aligned, meta, mask=np.ones((10, 10), np.float32))
