"""``talkcli animate`` on the CPU: end-to-end frames/s at 1024, split per stage, against the
generator alone; and peak memory for 10 minutes of audio against 10 seconds.

Throughput (``end_to_end_1024``): random weights in the exact official layouts (speed does not
depend on the values): the full-width FFHQ config-f generator at 1024, the thesis-size audio model
(k = 2500, tables 4.3/4.4), a small pSp (the identity is encoded once and cached, so its size does
not matter per frame). The astronaut photo is aligned from given landmarks and every frame is
pasted back into it, so each stage of the chain runs: MFCC windows, audio model, rendering,
paste-back, H.264 + AAC encoding. A first short run fills the cache (alignment, identity); the
measured run starts from it, as a second clip of the same face does. The generator alone (the
renderer: ``G.synthesis`` + uint8 frames) is timed on the very W+ frames of that run (saved with
``--save-trajectory``), at the same batch size and dtype; the ratio of the two rates says
how much of the rest hides behind rendering (target >= 0.95). On a shared machine the two separate
measurements drift with other jobs' load (both are repeated, alternating, and the best of each is
kept); ``in_run_ratio_render_to_stream`` (the generator's share of the frame loop's wall time,
measured in the same run) does not.

Memory (``peak_memory``): a fresh process per run renders 10 s and 10 min of speech-like audio
with the 32 px tiny pack (one torch thread); the peak resident memory of each process (``VmHWM``
of its own address space: ``ru_maxrss`` would include the parent's at fork), target 10 min <=
1.1 x 10 s.

``python -m benchmarks.run animate`` writes ``benchmarks/results/animate.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FRAMES_1024 = 12
ROUNDS = 2
BATCH = 4
DTYPE = "fp32"
ASTRO_5 = [[203.66, 101.18], [246.56, 103.66], [224.59, 128.07], [201.68, 140.27], [244.94, 141.56]]
MEMORY_SECONDS = (10.0, 600.0)
REPO = Path(__file__).resolve().parents[1]


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """A buzz with a syllable-rate envelope and some noise: MFCCs that move like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    buzz = np.sign(np.sin(2 * np.pi * np.cumsum(f0) / 16000))
    env = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) ** 0.7
    return (0.3 * env * buzz + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def _write_full_pack(folder: Path) -> None:
    """Full-width 1024 generator, thesis-size audio model, small pSp, LPIPS-free."""
    import torch

    from talkcli.io.files import sha256_file
    from talkcli.models.audio2latent import Audio2Latent, save_audio2latent
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.psp import tiny_encoder_state_dict, write_psp_checkpoint
    from talkcli.tiny.stylegan2 import full_generator_state_dict
    from talkcli.weights import registry

    sd = full_generator_state_dict(1024, seed=0)
    G = generator_from_state_dict(sd)
    latent_avg = G.mean_latent(1000)
    g_path = folder / registry.get("stylegan2-ffhq").relpath
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, g_path)
    write_psp_checkpoint(
        folder / registry.get("psp-ffhq-encode").relpath,
        tiny_encoder_state_dict(n_styles=18, seed=0),
        None,
        latent_avg.repeat(18, 1),
    )
    torch.manual_seed(0)
    model = Audio2Latent()  # the thesis' tables, k = 2500
    with torch.no_grad():  # it starts still (zero last layer): give it small random motions
        torch.nn.init.normal_(model.decoder[-1].weight, std=1e-3)
    generator = {"sha256": sha256_file(g_path), "size": 1024, "n_latent": 18, "style_dim": 512}
    save_audio2latent(folder / registry.get("audio2latent").relpath, model, generator)


def _write_wav(path: Path, seconds: float) -> Path:
    import soundfile as sf

    sf.write(path, speechlike(seconds), 16000, subtype="PCM_16")
    return path


def end_to_end_1024(folder: Path) -> dict:
    import torch
    from PIL import Image
    from skimage import data

    from talkcli.animate.cache import Cache
    from talkcli.animate.options import AnimateOptions
    from talkcli.animate.pipeline import Job, Models, Needs, animate_job, resolve_models
    from talkcli.animate.render import FrameRenderer

    _write_full_pack(folder)
    Image.fromarray(data.astronaut()).save(folder / "astro.png")
    (folder / "lm.json").write_text(json.dumps({"landmarks": ASTRO_5}))
    opts = AnimateOptions(
        landmarks=folder / "lm.json", paste_back=True, batch_size=BATCH, dtype=DTYPE
    )
    cache = Cache(folder / "cache")

    def job(seconds: float, name: str) -> Job:
        audio = _write_wav(folder / f"{name}.wav", seconds)
        return Job(folder / f"{name}.mp4", image=folder / "astro.png", audio=audio, options=opts)

    warm = job(BATCH / 25, "warm")
    paths = resolve_models(Needs.of([warm]), weights_dir=folder)
    models = Models(paths, torch.device("cpu"), cache, folder)
    animate_job(warm, models, cache)  # fills the cache, loads the models

    renderer = FrameRenderer(models.generator(), DTYPE)

    def generator_alone(w: np.ndarray) -> float:
        """The renderer alone (G.synthesis + uint8 frames) on the very W+ frames of the
        end-to-end run, in the same batches."""
        start = time.perf_counter()
        for a in range(0, len(w), BATCH):
            renderer(w[a : a + BATCH])
        return len(w) / (time.perf_counter() - start)

    # Alternate the two measurements so that a change in the machine's load (other jobs on
    # shared cores) hits both alike; the best of each and the paired ratios are reported.
    load_before = os.getloadavg()[0]
    e2e_rates, gen_rates, manifests = [], [], []
    for r in range(ROUNDS):
        clip = job(FRAMES_1024 / 25, f"clip{r}")
        clip.save_trajectory = folder / f"clip{r}.npz"
        result = animate_job(clip, models, cache)
        manifests.append(json.loads(result.manifest.read_text()))
        e2e_rates.append(result.frames / manifests[-1]["timings"]["stream"])
        gen_rates.append(generator_alone(np.load(clip.save_trajectory)["w"]))
    best = int(np.argmax(e2e_rates))
    manifest, t = manifests[best], manifests[best]["timings"]
    e2e_rate, gen_rate = max(e2e_rates), max(gen_rates)
    stages = {k: t[k] for k in ("trajectory", "render", "paste_back", "encode_pipe", "finalize")}
    return {
        "frames": FRAMES_1024,
        "size": "1024x1024 (pasted back into the 512x512 photo)",
        "batch_size": BATCH,
        "dtype": DTYPE,
        "end_to_end_frames_per_s": round(e2e_rate, 4),
        "end_to_end_frames_per_s_incl_finalize": round(
            FRAMES_1024 / (t["stream"] + t["finalize"]), 4
        ),
        "generator_alone_frames_per_s": round(gen_rate, 4),
        "ratio_end_to_end_to_generator": round(e2e_rate / gen_rate, 4),
        "target_ratio": 0.95,
        # The generator's share of the frame loop's wall time in the same run (no load drift
        # between two measurements): what the other stages cost the renderer.
        "in_run_ratio_render_to_stream": round(t["render"] / t["stream"], 4),
        "stage_seconds": stages,
        "stage_note": (
            "render is the generator on the main thread; trajectory (MFCC + audio model), "
            "paste_back and encode_pipe (writes to ffmpeg) run beside it (encode_pipe and "
            "paste_back in the writer thread, ffmpeg in its own process); finalize is the "
            "encoder flush, frame-count check and AAC mux after the last frame"
        ),
        "stream_seconds": t["stream"],
        "rounds": {
            "end_to_end_frames_per_s": [round(v, 4) for v in e2e_rates],
            "generator_alone_frames_per_s": [round(v, 4) for v in gen_rates],
            "paired_ratios": [round(a / b, 4) for a, b in zip(e2e_rates, gen_rates, strict=True)],
        },
        "cache": {k: manifest["cache"][k] for k in ("align", "identity", "tune")},
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


_CHILD = """
import json, sys, time
from talkcli.animate.options import AnimateOptions
from talkcli.animate.pipeline import animate
start = time.perf_counter()
r = animate(sys.argv[1], sys.argv[2], sys.argv[3], AnimateOptions(aligned=True, batch_size=16),
            weights_dir=sys.argv[4], cache_dir=sys.argv[5], device="cpu")
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"frames": r.frames, "seconds": time.perf_counter() - start, "peak_rss_kb": hwm}))
"""


def peak_memory(folder: Path) -> dict:
    from PIL import Image
    from skimage import data

    from talkcli.tiny.pack import write_tiny_pack

    pack = folder / "pack32"
    write_tiny_pack(pack, size=32)
    face = folder / "face.png"
    Image.fromarray(data.astronaut()).crop((150, 20, 310, 180)).resize((32, 32)).save(face)
    runs = {}
    # One torch thread: this measures memory, and the short run is not slowed by thread waits.
    path = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    for seconds in MEMORY_SECONDS:
        wav = _write_wav(folder / f"speech{int(seconds)}.wav", seconds)
        out = folder / f"mem{int(seconds)}.mp4"
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(face),
                str(wav),
                str(out),
                str(pack),
                str(folder / "cache"),
            ],
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
        "size": "32x32 tiny pack, batch 16",
        "runs": runs,
        "peak_rss_mb": {k: round(v["peak_rss_kb"] / 1024, 1) for k, v in runs.items()},
        "ratio_10min_to_10s": round(long["peak_rss_kb"] / short["peak_rss_kb"], 4),
        "target_ratio": 1.1,
    }


def run() -> dict:
    import torch

    with tempfile.TemporaryDirectory(prefix="bench_animate.") as tmp:
        folder = Path(tmp)
        (folder / "full").mkdir()
        (folder / "mem").mkdir()
        throughput = end_to_end_1024(folder / "full")
        memory = peak_memory(folder / "mem")
    return {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "gpu": "none lent to this task: the H100 target (>= 150 frames/s) is not measured",
        "end_to_end_1024": throughput,
        "peak_memory": memory,
        "meets_targets": {
            "ratio_end_to_end_to_generator": throughput["ratio_end_to_end_to_generator"] >= 0.95,
            "memory_10min_vs_10s": memory["ratio_10min_to_10s"] <= 1.1,
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
