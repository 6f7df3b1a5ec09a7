"""Training-side throughput and the audio model's streaming memory (CPU, this machine).

``python -m benchmarks.run train`` writes ``benchmarks/results/train.json``:

- prepare: frames/s of ``train prepare --aligned`` per video (decode, pSp, MFCC, shard files)
  with the official-size pSp encoder (IR-SE50, random weights: speed does not depend on them) on
  a 256x256 clip, and with the tiny pack's encoder on a 32x32 clip (the pipeline's own overhead);
- training: clips/s and frames/s of a training step (forward, backward, Adam) of the thesis-size
  model (k = 2500, 18 x 512, tables 4.3/4.4) and of the tiny one, latent loss only (LPIPS needs
  the 1024 px generator: ~0.5 images/s on this CPU, see models.json);
- inference: frames/s of the thesis-size model at batch 1, streaming one second (25 frames) per
  call with the LSTM state carried over, MFCC windows included;
- memory: peak RSS of that streaming inference over 10 minutes of audio against 10 seconds,
  each in a fresh process (target: <= 1.1x).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16000
STREAM_FRAMES = 25  # one second per call


def _speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Deterministic buzz with syllable-rate loudness and noise (cheap stand-in for speech),
    float32, made one second at a time (no temporaries larger than the result)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    out = np.empty(n, np.float32)
    for a in range(0, n, SAMPLE_RATE):
        t = np.arange(a, min(a + SAMPLE_RATE, n)) / SAMPLE_RATE
        buzz = np.sign(np.sin(2 * np.pi * (120 + 20 * np.sin(2 * np.pi * 0.5 * t)) * t))
        env = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 0.5
        out[a : a + len(t)] = 0.3 * env * buzz + 0.01 * rng.standard_normal(len(t))
    return out


def _clip(path: Path, size: int, seconds: float) -> Path:
    from talkcli.io.video import VideoWriter

    n = int(seconds * 25)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    with VideoWriter(path, 25.0, audio=(_speech_like(seconds), SAMPLE_RATE)) as w:
        for i in range(n):
            w.write(np.roll(base, i, axis=1))
    return path


def bench_prepare(tmp: Path) -> dict:
    from talkcli.models.psp import PSPEncoder, encoder_from_state_dict, load_encoder
    from talkcli.tiny.pack import write_tiny_pack
    from talkcli.tiny.psp import full_encoder_state_dict
    from talkcli.train.prepare import PrepareConfig, VideoItem, prepare_video

    data = tmp / "data"
    (data / "shards").mkdir(parents=True)
    cfg = PrepareConfig(aligned=True, batch_size=8)

    def rate(name: str, encoder, size: int, seconds_of_video: float) -> dict:
        (tmp / name).mkdir()
        clip = _clip(tmp / name / "clip.mp4", size, seconds_of_video)
        start = time.perf_counter()
        rec = prepare_video(VideoItem(name, clip, None, "s"), data, cfg, encoder, "bench")
        seconds = time.perf_counter() - start
        return {
            "frames": rec["frames"],
            "seconds": seconds,
            "frames_per_s": rec["frames"] / seconds,
        }

    big = PSPEncoder(encoder_from_state_dict(full_encoder_state_dict()), torch.zeros(18, 512))
    out = {"official_psp_256": rate("full", big, 256, 1.0)}
    del big
    tiny = load_encoder(write_tiny_pack(tmp / "pack", size=32)["psp-ffhq-encode"])
    out["tiny_psp_32"] = rate("tiny", tiny, 32, 4.0)
    return out


def _train_step_rate(arch: str, k: int, batch: int, seq: int, steps: int) -> dict:
    from talkcli.models.audio2latent import ARCH_PRESETS, Audio2Latent

    torch.manual_seed(0)
    model = Audio2Latent(k, 18, 512, arch=ARCH_PRESETS[arch])
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    windows = torch.randn(batch, seq, 12, 28) * 10
    target = torch.randn(batch, seq, 18, 512) * 0.1
    identity = torch.randn(batch, 18, 512) * 0.1

    def step() -> None:
        w, _ = model(windows, identity)
        loss = 250 * ((w - target) ** 2).mean(dim=(2, 3)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return {
        "batch_clips": batch,
        "seq_len": seq,
        "seconds_per_step": seconds,
        "clips_per_s": batch / seconds,
        "frames_per_s": batch * seq / seconds,
    }


def bench_inference(seconds_of_audio: float = 60.0) -> dict:
    from talkcli.audio.features import iter_mfcc_windows
    from talkcli.models.audio2latent import Audio2Latent

    torch.manual_seed(0)
    model = Audio2Latent().eval()
    samples = _speech_like(seconds_of_audio)
    w_id = torch.randn(1, 18, 512) * 0.1
    frames, state = 0, None
    start = time.perf_counter()
    with torch.no_grad():
        for chunk in iter_mfcc_windows(samples, 25.0, chunk_frames=STREAM_FRAMES):
            w, state = model(torch.from_numpy(chunk)[None], w_id, state)
            frames += w.shape[1]
    seconds = time.perf_counter() - start
    return {
        "audio_seconds": seconds_of_audio,
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "realtime_factor": seconds_of_audio / seconds,
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux: VmHWM, which starts afresh at exec (the
    getrusage maximum is inherited from the parent that forked us, so it can read high)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def stream_peak_rss(seconds_of_audio: float) -> dict:
    """Streaming inference over ``seconds_of_audio``; peak RSS of this process (run it fresh)."""
    result = bench_inference(seconds_of_audio)
    return {**result, "peak_rss_mib": peak_rss_mib()}


def _fresh_process(seconds_of_audio: float) -> dict:
    code = (
        "import json, sys; from benchmarks.bench_train import stream_peak_rss; "
        f"print(json.dumps(stream_peak_rss({seconds_of_audio})))"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run() -> dict:
    out: dict = {"device": "cpu", "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        out["prepare"] = bench_prepare(Path(tmp))
    out["train_step"] = {
        "thesis_k2500": _train_step_rate("thesis", 2500, batch=8, seq=16, steps=3),
        "tiny_k32": _train_step_rate("tiny", 32, batch=8, seq=16, steps=10),
    }
    out["inference_thesis_batch1_stream"] = bench_inference(60.0)
    short, long = _fresh_process(10.0), _fresh_process(600.0)
    out["inference_memory"] = {
        "audio_10s": short,
        "audio_600s": long,
        "peak_ratio_600s_vs_10s": long["peak_rss_mib"] / short["peak_rss_mib"],
        "target_ratio": 1.1,
    }
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
