"""FFHQ alignment math against an independent transcription of NVlabs' recreate_aligned_images."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import scipy.ndimage
import skimage.data

from talkcli.errors import UserError
from talkcli.face.ffhq import (
    AlignMeta,
    QuadParams,
    align_image_exact,
    align_image_fast,
    align_quad_exact,
    ffhq_quad,
    plan_crop,
    quad_params,
    smooth_quad_params,
    transform_points,
)

# Astronaut (512x512): five points of the face (eyes, nose, mouth corners), as input data.
ASTRO_5 = np.array(
    [[203.66, 101.18], [246.56, 103.66], [224.59, 128.07], [201.68, 140.27], [244.94, 141.56]]
)


# -- a direct transcription of NVlabs ffhq-dataset recreate_aligned_images (numpy/PIL/scipy) -----


def nvlabs_quad(lm: np.ndarray) -> tuple[np.ndarray, float]:
    lm_eye_left = lm[36:42]
    lm_eye_right = lm[42:48]
    lm_mouth_outer = lm[48:60]
    eye_left = np.mean(lm_eye_left, axis=0)
    eye_right = np.mean(lm_eye_right, axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_left = lm_mouth_outer[0]
    mouth_right = lm_mouth_outer[6]
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = np.hypot(*x) * 2
    return quad, qsize


def nvlabs_recreate(
    img: PIL.Image.Image, quad: np.ndarray, qsize: float, output_size: int, transform_size: int
) -> np.ndarray:
    quad = quad.copy()
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (
            int(np.rint(float(img.size[0]) / shrink)),
            int(np.rint(float(img.size[1]) / shrink)),
        )
        img = img.resize(rsize, PIL.Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, img.size[0]),
        min(crop[3] + border, img.size[1]),
    )
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]
    pad = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    pad = (
        max(-pad[0] + border, 0),
        max(-pad[1] + border, 0),
        max(pad[2] - img.size[0] + border, 0),
        max(pad[3] - img.size[1] + border, 0),
    )
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = img.shape
        y, x, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
            1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]),
        )
        blur = qsize * 0.02
        img += (scipy.ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(
            mask * 3.0 + 1.0, 0.0, 1.0
        )
        img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
        img = PIL.Image.fromarray(np.uint8(np.clip(np.rint(img), 0, 255)), "RGB")
        quad += pad[:2]
    img = img.transform(
        (transform_size, transform_size),
        PIL.Image.Transform.QUAD,
        (quad + 0.5).flatten(),
        PIL.Image.Resampling.BILINEAR,
    )
    if output_size < transform_size:
        img = img.resize((output_size, output_size), PIL.Image.Resampling.LANCZOS)
    return np.asarray(img)


def random_68(rng: np.random.Generator, centre=(300.0, 250.0), scale=60.0) -> np.ndarray:
    """A plausible-ish random 68-point set: eyes, mouth placed around ``centre``."""
    lm = rng.normal(size=(68, 2)) * scale * 0.3 + np.asarray(centre)
    lm[36:42] = np.asarray(centre) + [-scale * 0.5, -scale * 0.3] + rng.normal(size=(6, 2)) * 5
    lm[42:48] = np.asarray(centre) + [scale * 0.5, -scale * 0.35] + rng.normal(size=(6, 2)) * 5
    lm[48] = np.asarray(centre) + [-scale * 0.4, scale * 0.6] + rng.normal(size=2) * 3
    lm[54] = np.asarray(centre) + [scale * 0.45, scale * 0.55] + rng.normal(size=2) * 3
    return lm


def five_from_68(lm: np.ndarray) -> np.ndarray:
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


# -- quad ----------------------------------------------------------------------------------------


def test_quad_matches_nvlabs_formula():
    rng = np.random.default_rng(0)
    for k in range(50):
        lm = random_68(rng, centre=rng.uniform(50, 900, size=2), scale=rng.uniform(10, 300))
        ref, qsize = nvlabs_quad(lm.copy())
        quad = ffhq_quad(lm)
        assert quad.shape == (4, 2)
        np.testing.assert_allclose(quad, ref, atol=1e-6, rtol=0, err_msg=f"case {k}")
        assert quad_params(lm).qsize == pytest.approx(qsize, abs=1e-6)


def test_five_points_give_the_same_quad_as_68():
    rng = np.random.default_rng(1)
    for _ in range(20):
        lm = random_68(rng, centre=rng.uniform(100, 500, size=2), scale=rng.uniform(20, 200))
        np.testing.assert_allclose(ffhq_quad(five_from_68(lm)), ffhq_quad(lm), atol=1e-9)
        np.testing.assert_allclose(ffhq_quad(five_from_68(lm)), nvlabs_quad(lm)[0], atol=1e-6)


def test_quad_is_a_square_in_ffhq_corner_order():
    p = quad_params(ASTRO_5)
    q = p.quad
    sides = [np.hypot(*(q[(i + 1) % 4] - q[i])) for i in range(4)]
    np.testing.assert_allclose(sides, p.qsize, rtol=1e-12)
    assert np.dot(q[1] - q[0], q[3] - q[0]) == pytest.approx(0, abs=1e-9)
    # top-left, bottom-left, bottom-right, top-right for an upright face
    assert q[0][1] < q[1][1] and q[3][1] < q[2][1] and q[0][0] < q[3][0]
    back = QuadParams.from_quad(q)
    np.testing.assert_allclose(back.quad, q, atol=1e-9)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 2)), np.zeros((68, 3)), np.full((5, 2), np.nan), np.zeros((5, 2))]
)
def test_bad_landmarks_are_user_errors(bad):
    with pytest.raises(UserError):
        ffhq_quad(bad)


# -- the exact procedure against the transcription -----------------------------------------------

ASTRO = skimage.data.astronaut()


def _cases():
    # (name, image, landmarks, output size, transform size, expected branch)
    big = np.asarray(PIL.Image.fromarray(ASTRO).resize((1024, 1024), PIL.Image.Resampling.BICUBIC))
    return [
        ("interior", ASTRO, ASTRO_5 * 0.6 + 60, 256, 1024, "interior"),
        ("border-pad", ASTRO, ASTRO_5 - [150, 20], 128, 1024, "pad"),
        ("top-pad", ASTRO, ASTRO_5 - [0, 40], 256, 4096, "pad"),
        ("shrink", big, ASTRO_5 * 2.0, 64, 512, "shrink"),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_exact_path_matches_nvlabs_procedure(case):
    name, img, lm5, size, tsize, branch = case
    quad = ffhq_quad(lm5)
    plan = plan_crop(quad, (img.shape[1], img.shape[0]), size)
    if branch == "interior":
        assert not plan.padded and plan.shrink <= 1
    elif branch == "pad":
        assert plan.padded
    else:
        assert plan.shrink > 1
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    ref = nvlabs_recreate(PIL.Image.fromarray(img), quad, qsize, size, tsize)
    out, meta = align_quad_exact(img, quad, size, transform_size=tsize)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 1, (name, diff.max())
    assert diff.mean() < 0.01, (name, diff.mean())
    np.testing.assert_allclose(meta.quad, quad, atol=1e-9)  # sidecar quad in source pixels


def _blob_image(n: int, points: list[np.ndarray], sigma: float) -> np.ndarray:
    """Black (n, n, 3) image with Gaussian blobs centred (sub-pixel) at ``points``."""
    y, x = np.mgrid[:n, :n].astype(np.float64)
    img = np.zeros((n, n))
    for px, py in points:
        img += 250 * np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma**2))
    return np.repeat(np.clip(np.rint(img), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize(
    "n,scale,size,tsize,sigma",
    [(250, 0.6, 256, 1024, 3.0), (250, 0.7, 64, 2048, 3.0), (500, 1.2, 48, 512, 6.0)],
    ids=["upsampled", "downsampled", "shrunk"],
)
def test_matrix_maps_aligned_pixels_to_source_pixels(n, scale, size, tsize, sigma):
    # Blobs at known sub-pixel source positions: their centroids in the aligned image, mapped by
    # meta.matrix, must land back on those positions (exact and fast paths, with and without
    # NVlabs' shrink step).
    centre = np.array([n / 2, n / 2 - 15])
    lm = (ASTRO_5 - [224, 122]) * scale + centre
    f = scale / 0.6
    pts = [centre + np.array(d) * f for d in ((0.3, 0.1), (-25, -20), (25.4, 22.2), (-20, 25.7))]
    img = _blob_image(n, pts, sigma)
    qsize = quad_params(lm).qsize
    k = np.arange(size, dtype=np.float64)
    gx, gy = np.meshgrid(k, k)
    for fast in (False, True):
        if fast:
            out, meta = align_image_fast(img, lm, size)
        else:
            out, meta = align_image_exact(img, lm, size, transform_size=tsize)
        assert meta.pad is None
        assert (meta.shrink > 1) == (size == 48)
        for p in pts:
            a = transform_points(meta.inverse_matrix, [p])[0]
            r = 4 * sigma * size / qsize
            w = out[..., 0].astype(np.float64) * (((gx - a[0]) ** 2 + (gy - a[1]) ** 2) <= r * r)
            centroid = [(w * gx).sum() / w.sum(), (w * gy).sum() / w.sum()]
            back = transform_points(meta.matrix, [centroid])[0]
            tol = 0.15 if fast else 0.05  # source pixels
            assert np.abs(back - p).max() < tol, (fast, p, back)


def test_matrix_round_trip_and_sidecar_dict():
    out, meta = align_image_exact(ASTRO, ASTRO_5, 128, transform_size=1024)
    corners = transform_points(meta.matrix, [[-0.5, -0.5], [-0.5, 127.5], [127.5, 127.5]])
    np.testing.assert_allclose(corners, meta.quad[:3], atol=1e-9)  # pixel edges = quad corners
    again = AlignMeta.from_dict(meta.to_dict())
    np.testing.assert_allclose(again.matrix, meta.matrix)
    np.testing.assert_allclose(again.inverse_matrix @ meta.matrix, np.eye(3), atol=1e-12)
    assert meta.to_dict()["landmarks"] == ASTRO_5.tolist()


# -- the fast path -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_fast_warp_within_35db_of_exact(case):
    name, img, lm5, size, _tsize, _branch = case
    exact, _ = align_image_exact(img, lm5, size)
    fast, _ = align_image_fast(img, lm5, size)
    assert fast.shape == exact.shape and fast.dtype == np.uint8
    assert psnr(fast, exact) >= 35.0, (name, psnr(fast, exact))


def test_fast_warp_at_1024_near_border():
    lm = ASTRO_5 - [150, 20]
    exact, em = align_image_exact(ASTRO, lm, 1024)
    fast, fm = align_image_fast(ASTRO, lm, 1024)
    assert em.pad is not None and fm.pad == em.pad
    assert psnr(fast, exact) >= 35.0


# -- smoothing -----------------------------------------------------------------------------------


def test_smoothing_reduces_jitter_and_keeps_squares():
    rng = np.random.default_rng(3)
    t = np.arange(60)
    truth = [
        QuadParams(
            np.array([200 + 30 * np.sin(i / 15), 150 + 10 * np.cos(i / 11)]),
            np.array([80 * np.cos(0.1 * np.sin(i / 9)), 80 * np.sin(0.1 * np.sin(i / 9))]),
            np.array([-80 * np.sin(0.1 * np.sin(i / 9)), 80 * np.cos(0.1 * np.sin(i / 9))]),
        )
        for i in t
    ]
    noisy = []
    for p in truth:  # jitter on the centre and the axis (y follows x, as from landmarks)
        x = p.x + rng.normal(0, 2, 2)
        noisy.append(QuadParams(p.c + rng.normal(0, 2, 2), x, np.flipud(x) * [-1, 1]))
    smooth = smooth_quad_params(noisy, 1.0, 3.0)

    def err(ps):
        return np.mean([np.abs(a.quad - b.quad).mean() for a, b in zip(ps, truth, strict=True)])

    assert err(smooth) < 0.6 * err(noisy)
    for p in smooth:  # still squares: y is x rotated by 90 degrees
        np.testing.assert_allclose(p.y, np.flipud(p.x) * [-1, 1], atol=1e-9)
    unchanged = smooth_quad_params(noisy, 0.0, 0.0)
    np.testing.assert_allclose(unchanged[5].quad, noisy[5].quad)
