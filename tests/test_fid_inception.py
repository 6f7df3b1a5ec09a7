"""The FID InceptionV3: official key layout, agreement with pytorch-fid, Fréchet distance, stats.

Upstream numbers: pytorch-fid (github.com/mseitzer/pytorch-fid, master b9c1811) was run locally
with torchvision's Inception classes copied into a scratch stub package (its wheels do not load
here) and ``load_state_dict_from_url`` replaced to return ``random_inception_state_dict(div=1,
seed=0)``; ``InceptionV3([3])(x)`` on the two images below gave the stored values, and talkcli's
network gave identical float32 outputs (max difference 0.0).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg
from skimage import data

from talkcli.errors import ModelFileError
from talkcli.metrics import fid, frechet_distance, inception_features
from talkcli.metrics.frechet import FeatureStats, load_stats, save_stats
from talkcli.models.inception import images_to_input, load_inception
from talkcli.tiny.metrics import random_inception_state_dict

from .conftest import SHARED
from .metrics_support import one_thread  # noqa: F401 (autouse)

KEYS_FILE = SHARED / "formats" / "fid_inception_keys.json"

# pytorch-fid InceptionV3([3]) on _upstream_images(), weights random_inception_state_dict(1, 0)
UPSTREAM_FIRST6 = [
    [0.0, 1.4617935, 3.8211167, 6.9545178, 0.1185451, 5.2917299],
    [0.0079639, 1.3327417, 2.9986935, 6.4170275, 0.1692025, 5.0168209],
]
UPSTREAM_SUM = [3054.9968902236815, 2842.2545822686225]
UPSTREAM_SUMSQ = [13315.338915088172, 11480.144726753091]


def _upstream_images() -> np.ndarray:
    astro = np.asarray(Image.fromarray(data.astronaut()).resize((96, 80), Image.BILINEAR))
    noise = np.random.Generator(np.random.PCG64(7)).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    return np.stack([astro, noise])  # (2, 80, 96, 3): resized to 299 inside


@pytest.fixture(scope="module")
def official_inception(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_inception_state_dict(div=1, seed=0), path)
    return path


def test_random_file_has_the_official_keys_and_shapes():
    if not KEYS_FILE.is_file():
        pytest.skip("../shared/formats is not present")
    official = json.loads(KEYS_FILE.read_text())["keys"]
    sd = random_inception_state_dict(div=1)
    assert list(sd) == [k for k, _shape, _dtype in official]
    for key, shape, dtype in official:
        assert list(sd[key].shape) == shape and str(sd[key].dtype) == f"torch.{dtype}", key


def test_forward_agrees_with_pytorch_fid(official_inception):
    net = load_inception(official_inception)
    assert net.feature_dim == 2048
    feats = inception_features(_upstream_images(), net).astype(np.float64)  # (2, 2048)
    np.testing.assert_allclose(feats[:, :6], UPSTREAM_FIRST6, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats.sum(axis=1), UPSTREAM_SUM, rtol=1e-5)
    np.testing.assert_allclose((feats**2).sum(axis=1), UPSTREAM_SUMSQ, rtol=1e-5)


def test_tiny_copy_loads_through_the_same_code(tmp_path):
    path = tmp_path / "inc.pth"
    torch.save(random_inception_state_dict(div=16, seed=3), path)
    net = load_inception(path)
    feats = inception_features(_upstream_images(), net)
    assert feats.shape == (2, 128) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])


def test_broken_files_are_model_file_errors(tmp_path):
    sd = random_inception_state_dict(div=16)
    bad = dict(sd)
    del bad["Mixed_6b.branch7x7_2.conv.weight"]
    torch.save(bad, tmp_path / "a.pth")
    with pytest.raises(ModelFileError, match=r"a\.pth.*Mixed_6b\.branch7x7_2\.conv\.weight"):
        load_inception(tmp_path / "a.pth")
    bad = dict(sd)
    bad["Mixed_5c.branch1x1.conv.weight"] = torch.zeros(4, 3, 1, 1)  # does not chain
    torch.save(bad, tmp_path / "b.pth")
    with pytest.raises(ModelFileError, match="input channels"):
        load_inception(tmp_path / "b.pth")
    torch.save({**sd, "AuxLogits.fc.weight": torch.zeros(2, 2)}, tmp_path / "c.pth")
    with pytest.raises(ModelFileError, match="unexpected keys: AuxLogits"):
        load_inception(tmp_path / "c.pth")
    (tmp_path / "d.pth").write_text("<html>not found</html>")
    with pytest.raises(ModelFileError, match="HTML"):
        load_inception(tmp_path / "d.pth")


def test_preprocessing_is_to_tensor():
    frames = np.array([[[[0, 128, 255]]]], dtype=np.uint8)  # (1, 1, 1, 3)
    x = images_to_input(frames)
    assert x.shape == (1, 3, 1, 1)
    torch.testing.assert_close(x.flatten(), torch.tensor([0.0, 128 / 255, 1.0]))


def _random_spd(n: int, rank: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, rank))
    return a @ a.T / rank + 0.01 * np.eye(n)


def _direct_fd(mu1, s1, mu2, s2) -> float:
    root = linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(root)))


@pytest.mark.parametrize("n,seed", [(8, 0), (64, 1), (200, 2)])
def test_frechet_distance_agrees_with_direct_sqrtm(n, seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=n), rng.normal(size=n)
    s1, s2 = _random_spd(n, n + 3, seed), _random_spd(n, n // 2 + 1, seed + 10)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        _direct_fd(mu1, s1, mu2, s2), rel=1e-6
    )
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_retries_singular_products():
    n = 6
    s = np.zeros((n, n))
    s[0, 0] = 1.0  # rank 1: sqrtm of the product is not finite
    value = frechet_distance(np.zeros(n), s, np.ones(n), s)
    assert np.isfinite(value) and value == pytest.approx(n, abs=1e-2)


def test_streaming_stats_equal_numpy_mean_and_cov():
    x = np.random.default_rng(5).normal(size=(53, 7)) * [1, 2, 3, 4, 5, 6, 7] + 10
    stats = FeatureStats()
    for s in (0, 3, 20, 21, 40):
        stats.add(x[s : {0: 3, 3: 20, 20: 21, 21: 40, 40: 53}[s]])
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats().sigma  # noqa: B018


def test_fid_of_frames_and_stats_cache(tmp_path):
    path = tmp_path / "inc.pth"
    torch.save(random_inception_state_dict(div=16, seed=0), path)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    net = load_inception(path)
    assert fid(a, a, net) == pytest.approx(0.0, abs=1e-3)
    assert fid(a, b, net) > 1e-3
    # batches stream through the same statistics
    assert fid([a[:2], a[2:]], [b[:4], b[4:]], net) == pytest.approx(fid(a, b, net), rel=1e-6)
    feats = inception_features(b, net).astype(np.float64)
    save_stats(tmp_path / "ref.npz", feats.mean(0), np.cov(feats, rowvar=False), {"n": 6})
    mu, sigma, meta = load_stats(tmp_path / "ref.npz")
    assert meta == {"n": 6} and mu.shape == (128,) and sigma.shape == (128, 128)


def test_bad_stats_file_is_an_input_error(tmp_path):
    from talkcli.errors import InputFileError

    np.savez(tmp_path / "x.npz", mu=np.zeros(3), sigma=np.zeros((2, 2)))
    with pytest.raises(InputFileError, match="x.npz"):
        load_stats(tmp_path / "x.npz")
