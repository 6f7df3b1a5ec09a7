"""A real face that moves: skimage's astronaut shifted, rotated and scaled per frame.

For detector tests and the alignment benchmark (a real face, so MTCNN/FAN find it; no file).
"""

from __future__ import annotations

import numpy as np


def moving_astronaut(
    n: int,
    size: int = 256,
    periods: tuple[float, float, float, float] = (5, 6, 9, 7),
    rotate: float = 8.0,
    shift: tuple[float, float] = (25.0, 12.0),
) -> list[np.ndarray]:
    """``n`` frames (size, size, 3) uint8: zoom (+-15 %), rotation (+-``rotate`` degrees) and
    x/y shifts (+-``shift`` px) follow sines of the frame index with ``periods`` (frames / rad)."""
    import cv2
    import skimage.data

    astro = skimage.data.astronaut()  # (512, 512, 3), the face near (224, 122)
    pz, pr, px, py = periods
    out = []
    for t in range(n):
        zoom = size / 512 * 1.3 * (1.0 + 0.15 * np.sin(t / pz))
        m = cv2.getRotationMatrix2D((224, 122), rotate * np.sin(t / pr), zoom)
        dx, dy = shift
        m[:, 2] += [dx * np.sin(t / px) + size / 2 - 224, dy * np.cos(t / py) + size / 2 - 122]
        out.append(cv2.warpAffine(astro, m, (size, size), borderMode=cv2.BORDER_REFLECT_101))
    return out
