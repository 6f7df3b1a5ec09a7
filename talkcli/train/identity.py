"""Generalisation to identities the model has never seen (issue 19).

The decoder sees the identity's PCA coordinates. With few training speakers it can fit each
speaker instead of the motion every speaker shares, and then predicts nothing useful for the
face a user animates (who is never in the training data). This module holds what ``train fit``
does about it, and how it measures it:

- ``normalisation_from_videos``: the spreads a ``normalised`` model divides its identity
  coordinates by and multiplies its output by (so the optimiser's behaviour does not depend on
  the absolute size of the motion);
- ``conditioning``: the identity embedding a training batch is conditioned on, with identity
  augmentation (another clip's identity, i.e. mostly another speaker's) and identity dropout
  (no identity: the zero embedding);
- ``held_out_correlation``: held-out-identity r per epoch (the learnability test's measure);
- ``flat_validation_warning``: the validation loss has not moved while the training loss fell.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from talkcli.audio.features import windows_from_rows
from talkcli.train.dataset import VideoEntry

SCALE_FLOOR = 1e-8  # a component the training data never moves keeps scale ~0, not 0
R_MAX_FRAMES = 400  # frames per held-out video used for the per-epoch r
R_MAX_VIDEOS = 16


def normalisation_from_videos(
    videos: list[VideoEntry], mean: np.ndarray, basis: np.ndarray, max_frames: int = 20_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(identity_mean, identity_scale, output_scale), (k,) each, from the training codes.

    identity: mean and std over frames of the codes' PCA coordinates; output: RMS per component
    of the codes around their own video's mean (the motion the decoder must produce). At most
    ``max_frames`` frames, spread evenly over the videos. ``mean`` (D,), ``basis`` (k, D).
    """
    total = sum(v.frames for v in videos)
    step = max(1, math.ceil(total / max_frames))
    k = basis.shape[0]
    n, s, ss, motion = 0, np.zeros(k), np.zeros(k), np.zeros(k)
    for v in videos:
        idx = np.arange(0, v.frames, step)
        if len(idx) == 0:
            continue
        flat = v.codes(idx).reshape(len(idx), -1).astype(np.float64)  # (n_i, D)
        coords = (flat - mean) @ basis.T  # (n_i, k)
        n += len(coords)
        s += coords.sum(0)
        ss += (coords**2).sum(0)
        motion += ((coords - coords.mean(0)) ** 2).sum(0)
    n = max(n, 1)
    id_mean = s / n
    id_scale = np.sqrt(np.maximum(ss / n - id_mean**2, 0.0))
    out_scale = np.sqrt(motion / n)
    return id_mean, _floored(id_scale), _floored(out_scale)


def _floored(scale: np.ndarray) -> np.ndarray:
    """Scales kept above a millionth of the largest (components the data never moves)."""
    return np.maximum(scale, max(SCALE_FLOOR, 1e-6 * float(scale.max(initial=0.0))))


def conditioning(
    model: Any,  # Audio2Latent (or its DDP wrapper's module)
    identity: Tensor,  # (B, n_latent, 512)
    augment: float,
    dropout: float,
    gen: torch.Generator,
) -> Tensor | None:
    """The (B, k) embedding a training batch is conditioned on, or None for the plain one.

    With probability ``augment`` a clip is conditioned on another clip's identity from the same
    batch (clips are shuffled over speakers, so mostly another speaker's); with probability
    ``dropout`` on no identity (zeros: the training mean when ``normalised``). The displacement
    is still added to the clip's own identity code, so the target is unchanged: the thesis
    assumes the motion does not depend on who speaks.
    """
    if (augment <= 0 and dropout <= 0) or not model.identity_input:
        return None
    b = identity.shape[0]
    emb = model.identity_embedding(identity)  # (B, k)
    if augment > 0 and b > 1:
        other = torch.randperm(b, generator=gen).to(emb.device)
        pick = (torch.rand(b, generator=gen) < augment).to(emb.device)
        emb = torch.where(pick[:, None], emb[other], emb)
    if dropout > 0:
        keep = (torch.rand(b, generator=gen) >= dropout).to(emb.device, emb.dtype)
        emb = emb * keep[:, None]
    return emb


@torch.no_grad()
def held_out_correlation(
    model: Any, videos: list[VideoEntry], fps: float, seed: int = 0
) -> dict[str, float]:
    """Held-out-identity r: predicted vs true displacements from each video's first frame (the
    identity), both projected on the targets' main axis; and the same with the audio windows
    shuffled in time (``r_shuffled``, ~0 when the model follows the sound). Empty without
    videos or motion."""
    rng = np.random.default_rng(seed)
    pred, shuffled, target = [], [], []
    was_training = model.training
    model.eval()
    try:
        for v in videos[:R_MAX_VIDEOS]:
            n = min(v.frames, R_MAX_FRAMES)
            codes = v.codes(slice(0, n))  # (n, n_latent, 512)
            kind = getattr(model, "feature_kind", "mfcc")
            windows = windows_from_rows(
                v.mfcc() if kind == "mfcc" else v.features(kind), range(n), fps, kind
            )  # (n, D, W)
            w_id = torch.from_numpy(codes[0])[None].to(model.device)
            for out, order in ((pred, None), (shuffled, rng.permutation(n))):
                x = torch.from_numpy(windows if order is None else windows[order])[None]
                w, _ = model(x.to(model.device), w_id)  # (1, n, n_latent, 512)
                out.append((w[0] - w_id).reshape(n, -1).cpu().numpy())
            target.append((codes - codes[0]).reshape(n, -1))
    finally:
        model.train(was_training)
    if not target:
        return {}
    pred, shuffled, target = map(np.concatenate, (pred, shuffled, target))
    centred = target - target.mean(0)
    if not np.any(centred):
        return {}
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    t = target @ axis
    return {"val_r": _corr(pred @ axis, t), "val_r_shuffled": _corr(shuffled @ axis, t)}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def flat_validation_warning(history: list[dict[str, Any]], min_epochs: int = 5) -> str | None:
    """A warning when the validation loss has not moved (best within 2% of the first epoch's)
    while the training loss fell by a quarter or more: the model fits the training speakers,
    not the motion they share. None otherwise (or without a validation split)."""
    if len(history) < min_epochs or "val_loss" not in history[0]:
        return None
    val0, train0 = history[0]["val_loss"], history[0]["train_loss"]
    best_val = min(row["val_loss"] for row in history)
    train = history[-1]["train_loss"]
    if not (train0 > 0 and val0 > 0) or train > 0.75 * train0 or best_val < 0.98 * val0:
        return None
    r = history[-1].get("val_r")
    said = f" (held-out r {r:.2f})" if r is not None else ""
    return (
        f"the validation loss has not moved from {val0:.4g} in {len(history)} epochs while the "
        f"training loss fell from {train0:.4g} to {train:.4g}{said}: the model is fitting the "
        "training speakers rather than the motion they share; try --identity-dropout 1 (or "
        "--identity none), more speakers, or fewer --components"
    )
