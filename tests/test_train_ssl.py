"""``train prepare/fit --features wav2vec2`` end to end on the synthetic talking clips (issue 17),
with the tiny random Wav2Vec2: the model still learns the speech -> motion mapping."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from talkcli.audio.features import windows_from_rows
from talkcli.models.audio2latent import load_audio2latent
from talkcli.train.dataset import feature_path, load_dataset
from tests.test_train import FIT_TINY, basics, cli, synthetic  # noqa: F401 (fixtures)

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def w2v(tmp_path_factory):
    from talkcli.tiny.ssl import write_tiny_wav2vec2

    return write_tiny_wav2vec2(tmp_path_factory.mktemp("w2v") / "wav2vec2-tiny")


def _r(model, videos, shuffle_seed: int | None):
    pred, target = [], []
    rng = np.random.default_rng(shuffle_seed)
    for v in videos:
        codes = v.codes()
        windows = windows_from_rows(v.features("wav2vec2"), v.frames, 25.0, "wav2vec2")
        if shuffle_seed is not None:
            windows = windows[rng.permutation(len(windows))]
        w_id = torch.from_numpy(codes[0])[None]
        with torch.no_grad():
            w, _ = model(torch.from_numpy(windows)[None], w_id)
        pred.append((w[0] - w_id).reshape(v.frames, -1).numpy())
        target.append((codes - codes[0]).reshape(v.frames, -1))
    pred, target = np.concatenate(pred), np.concatenate(target)
    axis = np.linalg.svd(target - target.mean(0), full_matrices=False)[2][0]
    return float(np.corrcoef(pred @ axis, target @ axis)[0, 1])


@pytest.mark.slow
def test_ssl_features_learn_latent_motion_through_the_cli(synthetic, w2v, tmp_path):  # noqa: F811
    data = synthetic["data"]
    clips = synthetic["root"] / "clips"
    t0 = time.perf_counter()
    result = cli(
        "--weights-dir", str(synthetic["pack"]), "train", "prepare", str(clips), "--out",
        str(data), "--aligned", "--holdout-speakers", "2", "--encoder", str(synthetic["encoder"]),
        "--resume", "--features", "wav2vec2", "--feature-model", str(w2v), "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    print(f"prepare --resume --features wav2vec2: {time.perf_counter() - t0:.1f} s")
    ds = load_dataset(data)
    assert ds.feature_kinds == ["mfcc", "wav2vec2"]
    v = ds.videos[0]
    rows = np.load(feature_path(data, v.id, "wav2vec2"))
    assert rows.dtype == np.float16 and rows.shape[1] == 32
    assert v.record["features"]["wav2vec2"] == len(rows)

    out = tmp_path / "ssl.safetensors"
    t0 = time.perf_counter()
    result = cli(
        "--weights-dir", str(synthetic["pack"]), "train", "fit", str(data), "--out", str(out),
        *FIT_TINY, "--seq-len", "16", "--lr", "1e-3", "--epochs", "30", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    print(f"fit 30 epochs: {time.perf_counter() - t0:.1f} s")
    model = load_audio2latent(out)
    assert model.feature_kind == "wav2vec2" and model.feature_settings["layer"] == 1
    held_out = ds.split("val")
    r, r_shuffled = _r(model, held_out, None), _r(model, held_out, 0)
    print(f"wav2vec2 (tiny random) held-out r = {r:.3f}, time-shuffled r = {r_shuffled:.3f}")
    assert r >= 0.8 and r_shuffled <= 0.3, (r, r_shuffled)
    # the MFCC features stay in the dataset: --features mfcc still trains on them
    mf = tmp_path / "mfcc.safetensors"
    result = cli(
        "--weights-dir", str(synthetic["pack"]), "train", "fit", str(data), "--out", str(mf),
        *FIT_TINY, "--epochs", "1", "--features", "mfcc", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert load_audio2latent(mf).feature_kind == "mfcc"
    assert json.loads(result.stdout)["history"]
