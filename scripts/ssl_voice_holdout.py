"""Issue 17: MFCC vs the tiny random Wav2Vec2 on the synthetic corpus, held-out identity and
held-out *voice* (docs/train.md). 9 one-clip speakers; espeak voices cycle en, en-us, en-gb-x-rp:
the 3 rp speakers are prepared as a separate dataset the models never see; the other 6 train
(2 of them held out as identities). ``train prepare`` / ``train fit`` through the CLI, ``--arch
tiny``, 30 epochs. Run from the repo root: ``python scripts/ssl_voice_holdout.py``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from talkcli.audio.features import windows_from_rows  # noqa: E402
from talkcli.models.audio2latent import load_audio2latent  # noqa: E402
from talkcli.tiny.pack import write_tiny_pack  # noqa: E402
from talkcli.tiny.ssl import TINY_SSL_DIR  # noqa: E402
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
    w2v = ["--features", "wav2vec2", "--feature-model", str(pack / TINY_SSL_DIR)]
    assert cli(*common, "--resume", *w2v, "--json").code == 0


def main() -> None:
    assert has_espeak(), "needs espeak-ng (real voices)"
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
    prepare(pack, encoder, root / "clips", root / "data", 2)
    prepare(pack, encoder, root / "voice", root / "vdata", 1)
    train, voice = load_dataset(root / "data"), load_dataset(root / "vdata")
    results = {"held_out_voice": VOICES[2], "train_voices": list(VOICES[:2])}
    for kind in ("mfcc", "wav2vec2"):
        out = root / f"{kind}.safetensors"
        result = cli("--weights-dir", str(pack), "train", "fit", str(root / "data"), "--out",
                     str(out), *FIT_TINY, "--seq-len", "16", "--lr", "1e-3", "--epochs", "30",
                     "--features", kind, "--json")  # fmt: skip
        assert result.code == 0, result.stderr
        model = load_audio2latent(out)
        results[kind] = {
            "held_out_identity_r": r_of(model, train.split("val"), kind, None),
            "held_out_identity_shuffled_r": r_of(model, train.split("val"), kind, 0),
            "held_out_voice_r": r_of(model, voice.videos, kind, None),
            "held_out_voice_shuffled_r": r_of(model, voice.videos, kind, 0),
        }
        print(kind, results[kind], flush=True)
    print(json.dumps(results, indent=1))
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
