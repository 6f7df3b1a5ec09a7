"""Issue 17: MFCC vs the tiny random Wav2Vec2 on the synthetic corpus, held-out identity and
held-out *voice* (docs/train.md). 9 one-clip speakers; espeak voices cycle en, en-us, en-gb-x-rp:
the 3 rp speakers are prepared as a separate dataset the models never see; the other 6 train
(2 of them held out as identities). ``train prepare`` / ``train fit`` through the CLI, ``--arch
tiny``, 30 epochs. Run from the repo root: ``python scripts/ssl_voice_holdout.py``.

``--sweep-layers``: the same measurement for every hidden state (``--feature-layer`` 0..L) of the
tiny random Wav2Vec2 (L = 2) and of a deeper tiny random one (L = 6, so first / 2/3 up / last
differ), one ``train prepare --resume`` per layer on a copy of the MFCC-prepared datasets;
``--seeds 0 1`` repeats it over fit seeds; ``--json FILE`` writes the results.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from talkcli.audio.features import windows_from_rows  # noqa: E402
from talkcli.audio.ssl import default_layer  # noqa: E402
from talkcli.models.audio2latent import load_audio2latent  # noqa: E402
from talkcli.tiny.pack import write_tiny_pack  # noqa: E402
from talkcli.tiny.ssl import TINY_SSL_DIR, write_tiny_wav2vec2  # noqa: E402
from talkcli.train.dataset import load_dataset  # noqa: E402
from talkcli.weights import registry  # noqa: E402
from tests.synthetic_talking import VOICES, has_espeak, make_clips, write_sensitive_encoder  # noqa: E402
from tests.test_train import FIT_TINY, cli  # noqa: E402


def r_of(model, videos, kind: str, shuffle_seed: int | None) -> float:
    """Correlation of predicted and true displacements along the main motion axis."""
    pred, target = [], []
    rng = np.random.default_rng(shuffle_seed)
    for v in videos:
        codes = v.codes()  # (T, n_latent, 512)
        windows = windows_from_rows(v.features(kind), v.frames, 25.0, kind)
        if shuffle_seed is not None:
            windows = windows[rng.permutation(len(windows))]
        w_id = torch.from_numpy(codes[0])[None]
        with torch.no_grad():
            w, _ = model(torch.from_numpy(windows)[None], w_id)
        pred.append((w[0] - w_id).reshape(v.frames, -1).numpy())
        target.append((codes - codes[0]).reshape(v.frames, -1))
    pred, target = np.concatenate(pred), np.concatenate(target)
    axis = np.linalg.svd(target - target.mean(0), full_matrices=False)[2][0]
    return round(float(np.corrcoef(pred @ axis, target @ axis)[0, 1]), 3)


def prepare(pack: Path, encoder: Path, clips: Path, data: Path, holdout: int) -> None:
    common = ["--weights-dir", str(pack), "train", "prepare", str(clips), "--out", str(data)]
    common += ["--aligned", "--holdout-speakers", str(holdout), "--encoder", str(encoder)]
    assert cli(*common, "--json").code == 0
    add_ssl(pack, encoder, clips, data, holdout, pack / TINY_SSL_DIR, None)


def add_ssl(pack, encoder, clips, data, holdout, model: Path, layer: int | None) -> None:
    """``train prepare --resume --features wav2vec2`` (layer None: the default) on ``data``."""
    args = ["--weights-dir", str(pack), "train", "prepare", str(clips), "--out", str(data)]
    args += ["--aligned", "--holdout-speakers", str(holdout), "--encoder", str(encoder)]
    args += ["--resume", "--features", "wav2vec2", "--feature-model", str(model)]
    if layer is not None:
        args += ["--feature-layer", str(layer)]
    result = cli(*args, "--json")
    assert result.code == 0, result.stderr


def fit_and_score(pack, data: Path, train, voice, kind: str, out: Path, seed: int) -> dict:
    result = cli("--weights-dir", str(pack), "train", "fit", str(data), "--out", str(out),
                 *FIT_TINY, "--seq-len", "16", "--lr", "1e-3", "--epochs", "30",
                 "--features", kind, "--seed", str(seed), "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    model = load_audio2latent(out)
    return {
        "held_out_identity_r": r_of(model, train.split("val"), kind, None),
        "held_out_identity_shuffled_r": r_of(model, train.split("val"), kind, 0),
        "held_out_voice_r": r_of(model, voice.videos, kind, None),
        "held_out_voice_shuffled_r": r_of(model, voice.videos, kind, 0),
    }


def sweep_layers(pack, encoder, root: Path, seeds: list[int]) -> dict:
    """Held-out identity / voice r per ``--feature-layer`` of a 2- and a 6-layer tiny model."""
    models = {"tiny2": pack / TINY_SSL_DIR}
    models["tiny6"] = write_tiny_wav2vec2(root / "wav2vec2-tiny6", seed=0, num_hidden_layers=6)
    out: dict = {"mfcc": {}}
    train, voice = load_dataset(root / "data"), load_dataset(root / "vdata")
    for seed in seeds:
        out["mfcc"][str(seed)] = fit_and_score(
            pack, root / "data", train, voice, "mfcc", root / "mfcc.safetensors", seed
        )
        print("mfcc", seed, out["mfcc"][str(seed)], flush=True)
    for name, folder in models.items():
        n_layers = 2 if name == "tiny2" else 6
        out[name] = {"num_hidden_layers": n_layers, "default_layer": default_layer(n_layers)}
        for layer in range(n_layers + 1):
            data, vdata = root / f"d_{name}_{layer}", root / f"v_{name}_{layer}"
            shutil.copytree(root / "data0", data)
            shutil.copytree(root / "vdata0", vdata)
            add_ssl(pack, encoder, root / "clips", data, 2, folder, layer)
            add_ssl(pack, encoder, root / "voice", vdata, 1, folder, layer)
            train, voice = load_dataset(data), load_dataset(vdata)
            per_seed = {}
            for seed in seeds:
                weights = root / f"{name}_{layer}_{seed}.safetensors"
                per_seed[str(seed)] = fit_and_score(
                    pack, data, train, voice, "wav2vec2", weights, seed
                )
                print(name, layer, seed, per_seed[str(seed)], flush=True)
            out[name][str(layer)] = per_seed
            shutil.rmtree(data)
            shutil.rmtree(vdata)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep-layers", action="store_true", help="every --feature-layer")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train fit seeds")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    assert has_espeak(), "needs espeak-ng (real voices)"
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="ssl_voice."))
    pack = root / "pack"
    write_tiny_pack(pack, size=32)
    g_path = registry.resolve("stylegan2-ffhq", pack)
    encoder = write_sensitive_encoder(root / "psp.pt", g_path)
    make_clips(root / "clips", g_path, n_speakers=9, clips_per_speaker=1, identity_spread=0.1,
               lead_in=0.5, tail=0.3)  # fmt: skip
    (root / "voice").mkdir()
    for s in range(2, 9, 3):  # voice index s % 3 == 2: en-gb-x-rp
        shutil.move(str(root / "clips" / f"spk{s}"), str(root / "voice" / f"spk{s}"))
    results = {"held_out_voice": VOICES[2], "train_voices": list(VOICES[:2])}
    if args.sweep_layers:
        for clips, data, holdout in (("clips", "data", 2), ("voice", "vdata", 1)):
            common = ["--weights-dir", str(pack), "train", "prepare", str(root / clips)]
            common += ["--out", str(root / f"{data}0"), "--aligned", "--holdout-speakers"]
            common += [str(holdout), "--encoder", str(encoder), "--json"]
            assert cli(*common).code == 0
            shutil.copytree(root / f"{data}0", root / data)
        results["seeds"] = args.seeds
        results["layers"] = sweep_layers(pack, encoder, root, args.seeds)
    else:
        prepare(pack, encoder, root / "clips", root / "data", 2)
        prepare(pack, encoder, root / "voice", root / "vdata", 1)
        train, voice = load_dataset(root / "data"), load_dataset(root / "vdata")
        for kind in ("mfcc", "wav2vec2"):
            out = root / f"{kind}.safetensors"
            results[kind] = fit_and_score(pack, root / "data", train, voice, kind, out, 0)
            print(kind, results[kind], flush=True)
    results["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
