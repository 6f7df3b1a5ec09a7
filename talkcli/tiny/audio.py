"""The tiny pack's audio-to-latent model: random weights, fitted to the pack's generator.

Same file format and loader as a trained model (``load_audio2latent``), the ``tiny`` widths of
``ARCH_PRESETS``, and a real PCA: the basis comes from the tiny generator's own W+ samples
(mapped z with style mixing, so the layers differ as pSp codes do). ``animate`` and every test
can then run offline; the motion it predicts is meaningless.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from talkcli.io.files import sha256_file
from talkcli.weights import registry

TINY_COMPONENTS = 32
PCA_SAMPLES = 256


def generator_wplus_samples(G: torch.nn.Module, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` W+ codes of generator ``G`` (n, n_latent, style_dim): two mapped z per code, the
    second taking over from a random layer (StyleGAN's style mixing)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(2, n, G.style_dim, generator=gen)
    with torch.no_grad():
        w1, w2 = G.mapping(z[0]).cpu(), G.mapping(z[1]).cpu()  # (n, D) each
    cut = torch.randint(1, G.n_latent + 1, (n, 1), generator=gen)  # n_latent: no mixing
    layer = torch.arange(G.n_latent)[None, :]  # (1, n_latent)
    mix = (layer >= cut).unsqueeze(-1)  # (n, n_latent, 1)
    return torch.where(mix, w2[:, None], w1[:, None])  # (n, n_latent, D)


def _synthetic_mfcc_stats(seconds: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MFCC mean/std of a deterministic buzz-and-noise signal: realistic input scaling."""
    from talkcli.audio.features import SAMPLE_RATE, mfcc

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    buzz = np.sign(np.sin(2 * np.pi * np.cumsum(f0) / SAMPLE_RATE))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    x = (0.2 * env * buzz + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
    rows = mfcc(x)  # (M, 12)
    return rows.mean(axis=0), np.maximum(rows.std(axis=0), 1e-3)


def write_tiny_audio_model(
    folder: str | Path,
    generator_path: str | Path,
    generator: torch.nn.Module | None = None,
    seed: int = 0,
    features: dict | None = None,
    filename: str | None = None,
) -> Path:
    """Write ``audio2latent.safetensors`` for the generator file at ``generator_path`` into
    ``folder`` (where the registry looks) and return its path. ``generator``: that file already
    loaded (saves loading it again). ``features``: an SSL feature model's ``settings()`` (issue
    17; unit feature statistics) instead of MFCCs, written as ``filename``."""
    from talkcli.models.audio2latent import ARCH_PRESETS, Audio2Latent, save_audio2latent
    from talkcli.models.stylegan2 import load_generator
    from talkcli.train.pca import fit_pca

    G = generator if generator is not None else load_generator(generator_path)
    codes = generator_wplus_samples(G, PCA_SAMPLES, seed=seed)  # (N, n_latent, D)
    pca = fit_pca(codes.numpy(), TINY_COMPONENTS, n_latent=G.n_latent, style_dim=G.style_dim)
    torch.manual_seed(seed)
    arch = ARCH_PRESETS["tiny"]
    model = Audio2Latent(pca.k, G.n_latent, G.style_dim, arch=arch, fps=25.0, features=features)
    with torch.no_grad():  # a trained model moves; the fresh one starts still: small motions
        last = model.decoder[-1].weight
        last.copy_(torch.randn(last.shape, generator=torch.Generator().manual_seed(seed)) * 0.01)
    model.set_pca(pca.mean, pca.basis)
    if features is None:
        model.set_mfcc_stats(*_synthetic_mfcc_stats(seed=seed))
    else:
        model.set_feature_stats(np.zeros(features["dim"]), np.ones(features["dim"]))
    gen_meta = {
        "sha256": sha256_file(generator_path),
        "size": G.size,
        "n_latent": G.n_latent,
        "style_dim": G.style_dim,
        "file": Path(generator_path).name,
    }
    training = {"tiny_pack": True, "warning": "random weights", "seed": seed}
    path = Path(folder) / (filename or registry.get("audio2latent").relpath)
    return save_audio2latent(path, model, gen_meta, training)
