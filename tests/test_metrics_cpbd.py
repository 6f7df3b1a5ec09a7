"""CPBD against the published ``cpbd`` package (1.0.7).

The package cannot be imported in the test environment (it imports ``scipy.ndimage.imread``,
removed from scipy years ago), so its values are stored here. They were made by installing it
with ``pip install --no-deps --target /tmp/cpbd_pkg cpbd`` (1.0.7, identical to
github.com/0x64746b/python-cpbd), setting ``scipy.ndimage.imread = None`` before importing it,
and calling ``cpbd.compute(img)`` on exactly the images built below (scipy 1.17, scikit-image
0.26, Pillow 13). talkcli's vectorised port gave the same values to 1e-16 and the same
Marziliano width maps element for element.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage import data

from talkcli.metrics import cpbd
from talkcli.metrics.sharpness import cpbd_frames, rgb_to_gray


def _gray(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).convert("L"))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    out = gaussian_filter(img.astype(float), sigma)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _cases() -> dict[str, np.ndarray]:
    face = _gray(data.astronaut()[20:220, 150:350])
    return {
        "camera_128": np.asarray(Image.fromarray(data.camera()).resize((128, 128), Image.BILINEAR)),
        "astronaut_crop_200": face,
        "astronaut_crop_200_blur1": _blur(face, 1.0),
        "astronaut_crop_200_blur2": _blur(face, 2.0),
        "noise_96x130": np.random.Generator(np.random.PCG64(3)).integers(
            0, 256, (96, 130), dtype=np.uint8
        ),
    }


PACKAGE_VALUES = {  # cpbd.compute(img), cpbd 1.0.7
    "camera_128": 0.6371308016877637,
    "astronaut_crop_200": 0.4584464964693101,
    "astronaut_crop_200_blur1": 0.05258693808312129,
    "astronaut_crop_200_blur2": 0.0013351134846461949,
    "noise_96x130": 0.8912855910267472,
}


@pytest.mark.parametrize("name", list(PACKAGE_VALUES))
def test_cpbd_matches_the_cpbd_package(name):
    assert cpbd(_cases()[name]) == pytest.approx(PACKAGE_VALUES[name], abs=1e-12)


def test_full_size_photo_matches_the_package():
    assert cpbd(data.camera()) == pytest.approx(0.7481657466284677, abs=1e-12)  # 512x512


def test_blur_lowers_cpbd():
    face = _gray(data.astronaut()[0:256, 128:384])
    values = [cpbd(_blur(face, s)) if s else cpbd(face) for s in (0, 0.7, 1.4, 2.5)]
    assert values[0] > values[1] > values[2] > values[3]


def test_frames_without_edge_blocks_score_zero():
    assert cpbd(np.full((128, 128), 90, np.uint8)) == 0.0  # flat
    assert cpbd(_cases()["noise_96x130"][:60, :60]) == 0.0  # smaller than one 64x64 block


def test_rgb_frames_use_pil_grey_conversion():
    rgb = data.astronaut()[:128, :128]
    assert np.array_equal(rgb_to_gray(rgb), _gray(rgb))
    video = np.stack([rgb, rgb[::-1]])
    np.testing.assert_array_equal(cpbd_frames(video), [cpbd(_gray(rgb)), cpbd(_gray(rgb[::-1]))])


def test_cpbd_refuses_colour_input():
    with pytest.raises(ValueError, match="grey"):
        cpbd(np.zeros((64, 64, 3), np.uint8))
