"""Does the audio model generalise to a face it has never seen? (issue 19)

``python -m benchmarks.generalisation [--quick] [--only NAME,...] [--variant NAME,...]`` (or
``python -m benchmarks.run generalisation``) writes ``benchmarks/results/generalisation.json``
and ``benchmarks/results/generalisation.png``.

Every case is a synthetic talking corpus (``tests/synthetic_talking.py``: the speech's loudness
moves each speaker's W+ code along one fixed direction, rendered by the tiny pack's generator and
encoded by a pSp whose sensitivity ``gain`` sets how far the codes move) with knobs for the number
of speakers, how far apart their codes lie (``spread``) and the size of the motion (``gain``).
Each runs ``train prepare --aligned`` and ``train fit --arch tiny --lpips-weight 0`` through the
CLI in this process, on one thread, and measures on the held-out speakers:

- ``r``: correlation of predicted and true displacements from the identity frame (frame 0, the
  silent lead-in), both projected on the targets' main axis: the learnability test's measure;
- ``r_shuffled``: the same with the audio windows shuffled in time (should be ~0: the model must
  follow the sound, not the identity);
- ``val_loss`` (final and best) and ``train_loss`` (final) from the fit's history;
- ``motion``: RMS over time of the codes per value (how far they move), ``identity``: RMS of the
  speakers' mean codes around their mean, per value (how far apart the speakers lie).

A "variant" is a set of extra ``train fit`` options (see ``VARIANTS``); ``--variant`` picks them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Case:
    """One synthetic corpus: ``speakers`` x ``clips`` clips, ``holdout`` speakers held out."""

    name: str
    speakers: int = 8
    clips: int = 1
    holdout: int = 2
    spread: float = 0.1  # identity_spread of make_clips
    gain: float = 300.0  # the sensitive pSp's gain: the codes' motion size
    seconds: float = 2.5  # synthetic speech per clip (plus 0.5 s lead-in, 0.3 s tail)
    epochs: int = 30
    components: int = 8
    seq_len: int = 16
    batch_size: int = 4

    def corpus_key(self) -> tuple:
        return (self.speakers, self.clips, self.holdout, self.spread, self.gain, self.seconds)


# the small-motion corpus: 5 speakers, 4 clips of 3.5-5 s, one held out, codes moving
# ~0.002 per value, trained as the issue did (k 32, 40 epochs)
SMALL_MOTION = Case("small-motion", speakers=5, clips=4, holdout=1, spread=1.0, gain=12.0,
                    seconds=3.0, epochs=40, components=32, batch_size=16)  # fmt: skip
# the test suite's corpus (codes moving ~0.05 per value, as a real pSp's do on a talking face)
REALISTIC = Case("realistic", speakers=8, clips=1, holdout=2, spread=0.1, gain=300.0)


def cases(quick: bool) -> list[Case]:
    """The grid: speakers, spread and motion size around the two named corpora."""
    out = [SMALL_MOTION, REALISTIC]
    for n in (4, 8, 16, 32):  # speakers; big corpora get shorter clips and fewer epochs (CPU)
        secs, epochs = (2.5, 30) if n <= 8 else (1.5, 20 if n == 16 else 12)
        out.append(Case(f"speakers-{n}", speakers=n, holdout=max(1, n // 4), spread=1.0,
                        gain=300.0, seconds=secs, epochs=epochs))  # fmt: skip
    for spread in (0.1, 1.0):  # identity spread at the small motion
        out.append(replace(SMALL_MOTION, name=f"small-spread-{spread:g}", spread=spread))
    for gain in (12.0, 60.0, 300.0):  # motion size, the corpus otherwise
        out.append(replace(SMALL_MOTION, name=f"small-gain-{gain:g}", gain=gain))
    if quick:
        out = [SMALL_MOTION, REALISTIC]
    seen, unique = set(), []
    for c in out:  # small-spread-1 / small-gain-12 are the small-motion corpus itself
        key = (c.corpus_key(), c.epochs, c.components)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


# variant name -> extra `train fit` options (issue 19's generalisation options)
VARIANTS: dict[str, list[str]] = {
    "thesis": [],  # the defaults: the thesis' model, best epoch by held-out r
    "loss-selected": ["--best-by", "loss"],  # the best epoch by validation loss (before)
    "dropout": ["--identity-dropout", "0.5"],
    "no-identity": ["--identity", "none"],
    "normalised": ["--normalise"],
    "augment": ["--identity-augment", "0.5"],
}


def _cli(*args: str):
    """``talkcli ARGS`` in this process on one thread (as tests/test_train.py does)."""
    from tests.conftest import run_cli_inprocess

    torch.set_num_threads(1)
    result = run_cli_inprocess(*args)
    if result.code != 0:
        raise RuntimeError(f"talkcli {' '.join(args[:4])} ...: {result.stderr[-2000:]}")
    return result


def make_corpus(tmp: Path, case: Case, pack: Path, generator: Path) -> Path:
    """Clips, a pSp of the case's gain and ``train prepare --aligned``: the dataset folder."""
    from tests.synthetic_talking import make_clips, write_sensitive_encoder

    root = tmp / "corpus-{}-{}-{}-{:g}-{:g}-{:g}".format(*case.corpus_key())
    data = root / "data"
    if data.is_dir():
        return data
    root.mkdir(parents=True, exist_ok=True)
    encoder = write_sensitive_encoder(root / "psp.pt", generator, gain=case.gain)
    make_clips(root / "clips", generator, n_speakers=case.speakers, clips_per_speaker=case.clips,
               identity_spread=case.spread, lead_in=0.5, tail=0.3,
               speech_seconds=case.seconds)  # fmt: skip
    _cli("--weights-dir", str(pack), "train", "prepare", str(root / "clips"), "--out", str(data),
         "--aligned", "--holdout-speakers", str(case.holdout), "--encoder", str(encoder),
         "--batch-size", "32", "--json")  # fmt: skip
    return data


def corpus_stats(data: Path) -> dict[str, float]:
    """How far codes move in time and how far apart speakers lie, per value (RMS)."""
    from talkcli.train.dataset import load_dataset

    ds = load_dataset(data)
    motion, means = [], {}
    for v in ds.videos:
        c = v.codes().reshape(v.frames, -1)
        motion.append(np.sqrt(((c - c.mean(0)) ** 2).mean()))
        means.setdefault(v.speaker, []).append(c.mean(0))
    centres = np.stack([np.mean(m, 0) for m in means.values()])
    identity = np.sqrt(((centres - centres.mean(0)) ** 2).mean())
    return {"motion": float(np.mean(motion)), "identity": float(identity),
            "frames": ds.frames(), "train_frames": ds.frames("train")}  # fmt: skip


def held_out_r(model_path: Path, data: Path, seed: int = 0) -> dict[str, float]:
    """r and time-shuffled r on the held-out speakers (tests/test_train.py's projection)."""
    from talkcli.models.audio2latent import load_audio2latent
    from talkcli.train.dataset import load_dataset
    from tests.test_train import _displacements

    model = load_audio2latent(model_path)
    rng = np.random.default_rng(seed)
    pred, shuffled, target = [], [], []
    for video in load_dataset(data).split("val"):
        p, t = _displacements(model, video, 0, None)
        s, _ = _displacements(model, video, 0, rng)
        pred.append(p), shuffled.append(s), target.append(t)
    pred, shuffled, target = map(np.concatenate, (pred, shuffled, target))
    axis = np.linalg.svd(target - target.mean(0), full_matrices=False)[2][0]
    r = np.corrcoef(pred @ axis, target @ axis)[0, 1]
    r_shuffled = np.corrcoef(shuffled @ axis, target @ axis)[0, 1]
    return {"r": float(np.nan_to_num(r)), "r_shuffled": float(np.nan_to_num(r_shuffled))}


def fit_case(tmp: Path, case: Case, variant: str, data: Path, pack: Path) -> dict[str, Any]:
    out = tmp / f"{case.name}-{variant}" / "a2l.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = _cli("--weights-dir", str(pack), "train", "fit", str(data), "--out", str(out),
                  "--arch", "tiny", "--lpips-weight", "0", "--components", str(case.components),
                  "--batch-size", str(case.batch_size), "--seq-len", str(case.seq_len),
                  "--lr", "1e-3", "--epochs", str(case.epochs), "--json",
                  *VARIANTS[variant])  # fmt: skip
    seconds = time.perf_counter() - started
    history = json.loads(result.stdout)["history"]
    best = min(history, key=lambda row: row.get("val_loss", np.inf))
    return {
        **held_out_r(out, data),
        "val_loss": history[-1].get("val_loss"),
        "val_loss_first": history[0].get("val_loss"),
        "best_val_loss": best.get("val_loss"),
        "best_epoch": best["epoch"],
        "train_loss": history[-1]["train_loss"],
        "train_loss_first": history[0]["train_loss"],
        "fit_seconds": seconds,
        "history_r": [row.get("val_r") for row in history if "val_r" in row],
    }


def run(quick: bool = False, only: list[str] | None = None,
        variants: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    from talkcli.tiny.pack import write_tiny_pack
    from talkcli.weights import registry

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    chosen = [c for c in cases(quick) if not only or c.name in only]
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pack = tmp / "pack"
        write_tiny_pack(pack, size=32, seed=0)
        generator = registry.resolve("stylegan2-ffhq", pack)
        for case in chosen:
            t0 = time.perf_counter()
            data = make_corpus(tmp, case, pack, generator)
            stats = corpus_stats(data)
            prep = time.perf_counter() - t0
            for variant in variants or ["thesis", "dropout"]:
                fitted = fit_case(tmp, case, variant, data, pack)
                row = {"case": asdict(case), "variant": variant, **stats,
                       "prepare_seconds": prep, **fitted}  # fmt: skip
                print(_line(row), flush=True)
                rows.append(row)
    return {"rows": rows, "quick": quick, "seconds": time.perf_counter() - started,
            "espeak": _has_espeak()}  # fmt: skip


def _has_espeak() -> bool:
    from tests.speech import has_espeak

    return has_espeak()


def _line(row: dict[str, Any]) -> str:
    c = row["case"]
    return (f"{c['name']:<18} {row['variant']:<12} spk {c['speakers']:>2} spread {c['spread']:<4g}"
            f" motion {row['motion']:.4f} ident {row['identity']:.4f}  r {row['r']:+.3f}"
            f"  shuffled {row['r_shuffled']:+.3f}  val {row['val_loss']:.4f}"
            f" (first {row['val_loss_first']:.4f})  train {row['train_loss']:.4f}"
            f"  {row['fit_seconds']:.0f}s")  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> Path:
    """r (and shuffled r) per case and variant, as grouped bars."""
    from talkcli.plots import figure, save_figure

    rows = result["rows"]
    names = list(dict.fromkeys(r["case"]["name"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / max(len(variants), 1)
    with figure(max(7.2, 0.9 * len(names) + 2), 4.8) as fig:
        ax = fig.add_subplot()
        x = np.arange(len(names))
        for i, variant in enumerate(variants):
            by = {r["case"]["name"]: r for r in rows if r["variant"] == variant}
            r = [by[n]["r"] if n in by else np.nan for n in names]
            rs = [by[n]["r_shuffled"] if n in by else np.nan for n in names]
            bars = ax.bar(x + i * width, r, width, label=f"{variant}: held-out r")
            ax.scatter(x + i * width, rs, marker="x", color=bars.patches[0].get_facecolor(),
                       zorder=3, label=f"{variant}: time-shuffled r")  # fmt: skip
        ax.axhline(0.8, color="0.4", linestyle="--", linewidth=1, label="r = 0.8")
        ax.set_xticks(x + width * (len(variants) - 1) / 2, names, rotation=30, ha="right")
        ax.set_ylabel("correlation with the true displacements")
        ax.set_ylim(-0.5, 1.05)
        ax.set_xlabel("synthetic corpus")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        ax.set_title("held-out identity: predicted vs true latent motion (train fit --arch tiny)")
        return save_figure(fig, path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generalisation")
    parser.add_argument("--quick", action="store_true", help="the two named corpora only")
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument(
        "--variant", default="thesis,dropout", help="comma-separated: " + ",".join(VARIANTS)
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "generalisation.json")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    result = run(args.quick, only, [s for s in args.variant.split(",") if s])
    from benchmarks.run import machine

    result = {"benchmark": "generalisation", "machine": machine(), **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}  ({result['seconds']:.0f} s)")
    print(f"-> {plot(result, args.out.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
