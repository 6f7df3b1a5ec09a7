"""Wav2Vec2 speech features (issue 17) on the CPU: peak memory for 10 minutes of audio against
10 seconds, and features/s.

Memory (``peak_memory``): a fresh process per run decodes a speech-like WAV with ``DecodedAudio``
(read segment by segment) and streams it through ``animate``'s audio path: the SSL windows
(``iter_ssl_windows``, block by block) into the tiny pack's SSL audio model
(``audio_displacements``, LSTM state carried across chunks), one torch thread. The peak resident
memory of each process (``VmHWM`` of its own address space, as ``bench_animate`` measures it),
target 10 min <= 1.1 x 10 s. Rendering is left out: ``bench_animate`` measures its memory.

Throughput (``features_per_second``): rows (20 ms each) of ``ssl_rows`` per second of wall time
for the tiny random Wav2Vec2 (2 layers, 32 wide), and the real-time factor. A base model
(``facebook/wav2vec2-base-960h``: 512-channel conv encoder, 12 x 768 transformer, ~95 M
parameters) is not on this machine: its cost is estimated from multiply-accumulates per row
(unmeasured; the estimate is stated as such in the results).

``python -m benchmarks.run ssl`` writes ``benchmarks/results/ssl.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_animate import REPO, _write_wav

MEMORY_SECONDS = (10.0, 600.0)
THROUGHPUT_SECONDS = 60.0

_CHILD = """
import json, sys, time
import numpy as np
from talkcli.animate.motion.audio import attach_speech_features, audio_displacements
from talkcli.io.audio import DecodedAudio
from talkcli.models.audio2latent import load_audio2latent
start = time.perf_counter()
model = load_audio2latent(sys.argv[2])
attach_speech_features(model, sys.argv[3], "cpu")
w = np.zeros((model.n_latent, model.style_dim), np.float32)
frames = 0
with DecodedAudio(sys.argv[1]) as audio:
    for d in audio_displacements(model, audio, w, 25.0):
        frames += len(d)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"frames": frames, "seconds": time.perf_counter() - start, "peak_rss_kb": hwm}))
"""


def peak_memory(folder: Path, pack: Path) -> dict:
    """Peak RSS of streaming 10 s and 10 min through the SSL audio path, one process each."""
    from talkcli.tiny.pack import SSL_AUDIO_MODEL

    path = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    runs = {}
    for seconds in MEMORY_SECONDS:
        wav = _write_wav(folder / f"speech{int(seconds)}.wav", seconds)
        args = [str(wav), str(pack / SSL_AUDIO_MODEL), str(pack / "wav2vec2-tiny")]
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=folder,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory run failed: {proc.stderr.strip()[-500:]}")
        runs[f"{int(seconds)}s"] = json.loads(proc.stdout.strip().splitlines()[-1])
    short, long = (runs[f"{int(s)}s"] for s in MEMORY_SECONDS)
    return {
        "what": "DecodedAudio -> iter_ssl_windows -> SSL audio model (tiny pack), 1 thread",
        "runs": runs,
        "peak_rss_mb": {k: round(v["peak_rss_kb"] / 1024, 1) for k, v in runs.items()},
        "ratio_10min_to_10s": round(long["peak_rss_kb"] / short["peak_rss_kb"], 4),
        "target_ratio": 1.1,
    }


def _base_macs_per_row() -> float:
    """Multiply-accumulates per 20 ms row of wav2vec2-base (conv encoder + 12 layers, ~8 s
    blocks of attention context): an estimate, not a measurement."""
    conv = 10 * 512 * 320  # first conv layer: kernel 10, stride 5: 64 outputs per row
    conv += sum(k * 512 * 512 * (320 // s) for k, s in [(3, 10), (3, 20), (3, 40), (3, 80)])
    conv += sum(k * 512 * 512 * (320 // s) for k, s in [(3, 160), (2, 320)])
    project = 512 * 768
    layer = 4 * 768 * 768 + 2 * 768 * 3072 + 2 * 700 * 768  # qkvo, FFN, attention over 700 rows
    pos_conv = 128 * 768 * 768 // 16  # grouped positional conv
    return float(conv + project + pos_conv + 12 * layer)


def features_per_second(folder: Path, pack: Path) -> dict:
    """Rows/s of the tiny model on 60 s of speech-like audio (best of 5: a shared machine
    drifts with other jobs), all torch threads."""
    import soundfile as sf
    import torch

    from talkcli.audio.ssl import load_ssl_model, ssl_rows

    wav = _write_wav(folder / "throughput.wav", THROUGHPUT_SECONDS)
    x, _ = sf.read(wav, dtype="float32")
    model = load_ssl_model("wav2vec2", pack / "wav2vec2-tiny")
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        rows = ssl_rows(model, x)
        best = min(best, time.perf_counter() - start)
    tiny_params = sum(p.numel() for p in model.module.parameters())
    rate = len(rows) / best
    return {
        "tiny_wav2vec2": {
            "params": tiny_params,
            "rows": len(rows),
            "seconds": round(best, 3),
            "rows_per_s": round(rate, 1),
            "real_time_factor": round(rate / 50, 1),
            "threads": torch.get_num_threads(),
        },
        "wav2vec2_base_estimate": {
            "measured": False,
            "gmacs_per_second_of_audio": round(50 * _base_macs_per_row() / 1e9, 1),
            "note": "unmeasured: no base model on this machine; ~95 M parameters, dominated by "
            "the conv encoder and 12 x 768 layers. At a few tens of GMAC/s on a 2-core CPU "
            "(fp32) expect roughly 0.1-0.5 s per second of audio, ie 100-500 rows/s, vs the tiny "
            "model above; train prepare computes each clip once, animate once per audio.",
        },
    }


def run() -> dict:
    from talkcli.tiny.pack import write_tiny_pack

    with tempfile.TemporaryDirectory(prefix="bench_ssl.") as tmp:
        folder = Path(tmp)
        pack = folder / "pack16"
        write_tiny_pack(pack, size=16)
        memory = peak_memory(folder, pack)
        speed = features_per_second(folder, pack)
    return {
        "device": "cpu",
        "peak_memory": memory,
        "throughput": speed,
        "meets_targets": {"memory_10min_vs_10s": memory["ratio_10min_to_10s"] <= 1.1},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
