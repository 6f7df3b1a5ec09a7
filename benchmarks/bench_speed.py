"""Speed where users wait (issue 18): precision, previews, PTI steps, dataset preparation.

All figures come from ONE run, so the ratios compare like with like; the absolute numbers depend
on the machine (``machine`` in the JSON; here 2 CPU cores shared with other jobs, so expect
+-15% noise on absolute times). Random weights in the official layouts (speed and the
bf16-vs-fp32 difference do not need trained values, but see the notes on LPIPS).

- ``generator_1024``: seconds per frame of the full-width StyleGAN2 1024 (batch 1, const noise)
  in fp32, bf16 autocast, channels_last (fp32 and bf16), measured alternately; PSNR of the bf16
  frames against the fp32 frames (full width and a tiny 64 px generator). ``torch.compile`` is
  tried only with ``TALKCLI_BENCH_COMPILE=1`` (~30 s of start-up on 2 cores, plus a C compiler).
- ``preview``: seconds per frame of the skip image at 256 and 512 (``--resolution``) against
  1024, and PSNR of each against the 1024 frame area-downscaled to its size.
- ``pti_1024``: seconds per tuning step (full-width generator, LPIPS-alex at 256) in fp32 and
  under ``--dtype auto``; ``pti_tiny``: final LPIPS of a 150-step run in fp32 and bf16 on a
  64 px generator (a full-size run to convergence does not fit the bench's time).
- ``psp_encoder``: the official-size pSp (IR-SE50, 256x256 input, batch 8) in NCHW/NHWC and
  fp32/bf16, and compiled (cold start-up, steady speed, the eager time it needs to pay off).
- ``prepare``: ``train prepare --aligned`` frames per second with the official-size pSp before
  (fp32, NCHW, decoding inline), after (the fp32 default: NHWC + reader thread) and with
  ``--dtype bf16``, and how far the codes move.
  ``prepare.align_detect``: seconds per frame of alignment's detection pass (decode + MTCNN on
  every frame of a 48-frame 256x256 clip of a real face) with ``detect_batch`` 1 and 8, and
  whether the landmarks agree (skipped without the MTCNN weights in ../shared/fixtures; the
  batched calls are forced: on a CPU ``talkcli`` itself runs MTCNN per frame).

``python -m benchmarks.run speed`` writes ``benchmarks/results/speed.json``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

GEN_ROUNDS = 2  # alternating rounds of the 1024 generator measurements
PTI_STEPS = 2  # timed steps at 1024 per precision and round (after one warm-up step)
PTI_ROUNDS = 2
PREPARE_FRAMES = 24
ALIGN_FRAMES = 48
MTCNN_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _uint8(x: torch.Tensor) -> np.ndarray:
    from talkcli.io.images import to_uint8_images

    return to_uint8_images(x.float())


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _full_generator():
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.stylegan2 import full_generator_state_dict

    G = generator_from_state_dict(full_generator_state_dict(1024, seed=0)).eval()
    G.requires_grad_(False)
    G.latent_avg = G.mean_latent(1000)
    z = torch.randn(1, 512, generator=torch.Generator().manual_seed(1))
    w = G.latent_avg + 0.7 * (G.mapping(z) - G.latent_avg)  # (1, 512), truncated
    return G, w.unsqueeze(1).repeat(1, G.n_latent, 1)  # (1, 18, 512)


def generator_1024(G, w: torch.Tensor) -> dict:
    """fp32 / bf16 / channels_last seconds per 1024 frame, alternated, and bf16's PSNR."""
    from talkcli.device import autocast

    def render(dtype: str):
        with torch.no_grad(), autocast(dtype, "cpu"):
            return G.synthesis(w, noise_mode="const")

    variants = {"fp32": "fp32", "bf16": "bf16"}
    times: dict[str, list[float]] = {k: [] for k in (*variants, "fp32_cl", "bf16_cl")}
    frames = {k: render(v) for k, v in variants.items()}  # warm-up, kept for the PSNR
    for _ in range(GEN_ROUNDS):  # all four alternate: a change of load hits every variant
        for fmt, suffix in ((torch.contiguous_format, ""), (torch.channels_last, "_cl")):
            _memory_format(G, fmt)  # 4-d tensors only (modulated weights are 5-d)
            for name, dtype in variants.items():
                times[name + suffix].append(_timed(lambda d=dtype: render(d))[0])
    _memory_format(G, torch.contiguous_format)
    best = {k: min(v) for k, v in times.items()}
    out = {
        "seconds_per_frame": {k: round(v, 3) for k, v in best.items()},
        "speedup_vs_fp32": {k: round(best["fp32"] / v, 3) for k, v in best.items()},
        "psnr_bf16_vs_fp32_db": round(_psnr(_uint8(frames["fp32"]), _uint8(frames["bf16"])), 2),
        "max_abs_diff_uint8": int(
            np.abs(_uint8(frames["fp32"]).astype(int) - _uint8(frames["bf16"])).max()
        ),
        "rounds": GEN_ROUNDS,
    }
    out["compile"] = _compile(G, w, best, frames)
    return out, frames["fp32"]


def _memory_format(G, fmt: torch.memory_format) -> None:
    """Every 4-d parameter and buffer (constant input, biases, noise maps) in ``fmt``."""
    for t in [*G.parameters(), *G.buffers()]:
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=fmt)


def _compile(G, w: torch.Tensor, eager: dict[str, float], frames: dict[str, torch.Tensor]) -> dict:
    """``--compile``: inductor start-up (cold, then with its on-disk cache warm) and seconds per
    frame of the compiled 1024 synthesis in fp32 and bf16, and the frames' PSNR against eager."""
    if os.environ.get("TALKCLI_BENCH_COMPILE") == "0":
        return {"tried": False, "why": "TALKCLI_BENCH_COMPILE=0"}
    import torch._dynamo

    from talkcli.device import autocast

    out: dict = {"tried": True}
    for dtype in ("fp32", "bf16"):
        torch._dynamo.reset()
        fn = torch.compile(lambda x: G.synthesis(x, noise_mode="const"), dynamic=False)
        try:
            with torch.no_grad(), autocast(dtype, "cpu"):
                startup, img = _timed(lambda f=fn: f(w))
                per_frame = min(_timed(lambda f=fn: f(w))[0] for _ in range(GEN_ROUNDS))
        except Exception as exc:  # no compiler, an unsupported op: record and go on
            return {"tried": True, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        gain = eager[dtype] - per_frame
        out[dtype] = {
            "startup_s": round(startup, 1),
            "seconds_per_frame": round(per_frame, 3),
            "speedup_vs_eager_same_dtype": round(eager[dtype] / per_frame, 3),
            "speedup_vs_fp32_eager": round(eager["fp32"] / per_frame, 3),
            "frames_to_repay_startup": round(startup / gain) if gain > 0 else None,
            "psnr_vs_eager_same_dtype_db": round(_psnr(_uint8(img), _uint8(frames[dtype])), 2),
        }
    torch._dynamo.reset()  # the same graph again: inductor's on-disk cache is warm now
    fn = torch.compile(lambda x: G.synthesis(x, noise_mode="const"), dynamic=False)
    with torch.no_grad(), autocast("bf16", "cpu"):
        out["bf16"]["startup_warm_cache_s"] = round(_timed(lambda: fn(w))[0], 1)
    torch._dynamo.reset()
    return out


def tiny_bf16_psnr() -> float:
    """PSNR of bf16 against fp32 frames of a tiny (64 px, narrow) random generator."""
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.stylegan2 import tiny_generator_state_dict

    g = generator_from_state_dict(tiny_generator_state_dict(64, seed=0)).eval()
    w = torch.randn(8, g.n_latent, 512, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = g.synthesis(w)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = g.synthesis(w)
    return round(_psnr(_uint8(a), _uint8(b)), 2)


def preview(G, w: torch.Tensor, full: torch.Tensor) -> dict:
    """Seconds per frame of the skip image at 256 and 512 against 1024 (alternated, fp32), and
    PSNR against the 1024 frame area-downscaled to the same size."""
    import torch.nn.functional as F

    times: dict[int, list[float]] = {256: [], 512: [], 1024: []}
    with torch.no_grad():
        for _ in range(GEN_ROUNDS + 1):
            for r in times:
                times[r].append(_timed(lambda r=r: G.synthesis_at(w, r))[0])
    best = {r: min(t[1:]) for r, t in times.items()}  # the first round warms up
    out: dict = {"full_1024_seconds_per_frame": round(best[1024], 3)}
    for r in (256, 512):
        with torch.no_grad():
            img = G.synthesis_at(w, r)
        down = F.interpolate(full.float(), size=(r, r), mode="area")
        out[str(r)] = {
            "seconds_per_frame": round(best[r], 4),
            "cost_ratio_vs_1024": round(best[r] / best[1024], 4),
            "speedup_vs_1024": round(best[1024] / best[r], 2),
            "psnr_vs_downscaled_1024_db": round(_psnr(_uint8(img), _uint8(down)), 2),
        }
    return out


def _lpips_alex():
    from talkcli.models.perceptual import LPIPS, alexnet_features
    from talkcli.tiny.perceptual import tiny_lpips_heads

    stack = alexnet_features()
    return LPIPS("alex", stack.state_dict(), tiny_lpips_heads(stack.widths)).eval()


def pti_1024(G, w: torch.Tensor) -> dict:
    """Seconds per PTI step at 1024 in fp32 and under --dtype auto (one run each)."""
    import copy

    from talkcli.device import resolve_dtype
    from talkcli.inversion.pti import PTIConfig, tune

    lpips = _lpips_alex()
    target = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3)) * 2 - 1
    out: dict = {"steps_timed": PTI_STEPS * PTI_ROUNDS, "lpips": "alex (random backbone)"}
    steps: dict[str, list[float]] = {"fp32": [], "auto": []}
    for _ in range(PTI_ROUNDS):  # alternated: a change of load hits both
        for name in steps:
            g = copy.deepcopy(G)
            stamps: list[float] = []

            def stamp(_step: int, _row: dict, t: list[float] = stamps) -> None:
                t.append(time.perf_counter())

            cfg = PTIConfig(steps=PTI_STEPS + 1, stop_lpips=0.0, dtype=name)
            tune(g, lpips, w, target, cfg, on_step=stamp)
            steps[name].extend(np.diff(stamps).tolist())  # the first step (warm-up) left out
            del g
    for name, times in steps.items():
        out[name] = {
            "dtype": resolve_dtype(name, "cpu"),
            "seconds_per_step": round(float(np.median(times)), 3),
            "steps": [round(t, 2) for t in times],
        }
    out["speedup_auto_vs_fp32"] = round(
        out["fp32"]["seconds_per_step"] / out["auto"]["seconds_per_step"], 3
    )
    out["estimated_350_steps_min"] = {
        k: round(350 * out[k]["seconds_per_step"] / 60, 1) for k in ("fp32", "auto")
    }
    return out


def pti_tiny(steps: int = 150) -> dict:
    """Final LPIPS of the same short PTI run in fp32 and bf16 (64 px generator, random-backbone
    LPIPS); the target is another random generator's image of the pivot, so it is reachable."""
    from talkcli.inversion.pti import PTIConfig, tune
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.stylegan2 import tiny_generator_state_dict

    sd = tiny_generator_state_dict(64, seed=0)
    lpips = _lpips_alex()
    w = torch.randn(1, 10, 512, generator=torch.Generator().manual_seed(4))
    other = generator_from_state_dict(tiny_generator_state_dict(64, seed=1)).eval()
    with torch.no_grad():
        target = other.synthesis(w).clamp(-1, 1)  # (1, 3, 64, 64)
    out: dict = {"size": 64, "steps": steps}
    for dtype in ("fp32", "bf16"):
        g = generator_from_state_dict({k: v.clone() for k, v in sd.items()}).eval()  # fresh
        r = tune(g, lpips, w, target, PTIConfig(steps=steps, lr=1e-3, stop_lpips=0.0, dtype=dtype))
        out[dtype] = {
            "lpips_start": round(r.lpips_start, 4),
            "lpips_end": round(r.lpips_end, 4),
            "l2_end": round(r.l2_end, 5),
        }
    out["lpips_end_difference"] = round(abs(out["fp32"]["lpips_end"] - out["bf16"]["lpips_end"]), 4)
    return out


def psp_encoder() -> dict:
    """Seconds per frame of the official-size pSp (batch 8) in each layout and precision, and
    compiled (``--compile``, NHWC) in fp32 and bf16: cold start-up, steady speed, code change."""
    import torch._dynamo

    from talkcli.device import autocast
    from talkcli.models.psp import PSPEncoder, encoder_from_state_dict
    from talkcli.tiny.psp import full_encoder_state_dict, tiny_latent_avg

    enc = PSPEncoder(encoder_from_state_dict(full_encoder_state_dict(seed=0)), tiny_latent_avg())
    x = torch.rand(8, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def run(dtype: str, fn=enc.encode):
        with torch.no_grad(), autocast(dtype, "cpu"):
            return fn(x).float()

    layouts = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
    times: dict[str, list[float]] = {f"{d}_{k}": [] for d in ("fp32", "bf16") for k in layouts}
    codes = {}
    for _ in range(2):  # alternated rounds
        for name, fmt in layouts.items():
            enc.use_memory_format(fmt)
            for dtype in ("fp32", "bf16"):
                s, codes[f"{dtype}_{name}"] = _timed(lambda d=dtype: run(d))
                times[f"{dtype}_{name}"].append(s / len(x))
    best = {k: min(v) for k, v in times.items()}
    out: dict = {
        "batch_size": len(x),
        "seconds_per_frame": {k: round(v, 4) for k, v in best.items()},
        "speedup_vs_fp32_nchw": {k: round(best["fp32_nchw"] / v, 3) for k, v in best.items()},
        "codes_max_abs_diff_nhwc_vs_nchw_fp32": float(
            (codes["fp32_nhwc"] - codes["fp32_nchw"]).abs().max()
        ),
    }
    if os.environ.get("TALKCLI_BENCH_COMPILE") == "0":
        return out
    enc.use_memory_format(torch.channels_last)
    for dtype in ("fp32", "bf16"):
        torch._dynamo.reset()
        fn = torch.compile(enc.encode, dynamic=False)
        startup, y = _timed(lambda d=dtype, f=fn: run(d, f))
        steady = min(_timed(lambda d=dtype, f=fn: run(d, f))[0] for _ in range(2)) / len(x)
        eager = best[f"{dtype}_nhwc"]
        out[f"compiled_{dtype}_nhwc"] = {
            "startup_s": round(startup, 1),
            "seconds_per_frame": round(steady, 4),
            "speedup_vs_eager_nhwc": round(eager / steady, 3),
            "eager_seconds_to_break_even": round(startup / (1 - steady / eager))
            if steady < eager
            else None,
            "codes_max_abs_diff_vs_eager": float((y - codes[f"{dtype}_nhwc"]).abs().max()),
        }
    torch._dynamo.reset()
    return out


@contextlib.contextmanager
def _psp_layout(fmt: torch.memory_format):
    """``train prepare`` with pSp in ``fmt`` (the 'before' run: NCHW, as before issue 18)."""
    from talkcli.models import psp

    load = psp.load_encoder

    def load_in(path, device="cpu"):
        return load(path, device).use_memory_format(fmt)

    psp.load_encoder = load_in
    try:
        yield
    finally:
        psp.load_encoder = load


def prepare(folder: Path) -> dict:
    """``train prepare --aligned`` frames/s with the official-size pSp: before (fp32, NCHW,
    decoding inline), after (the fp32 default: NHWC + reader thread) and with ``--dtype bf16``;
    how far the bf16 codes move."""
    from benchmarks.bench_animate import speechlike
    from talkcli.io.video import VideoWriter
    from talkcli.tiny.psp import full_encoder_state_dict, write_psp_checkpoint
    from talkcli.train.dataset import load_dataset
    from talkcli.train.prepare import PrepareConfig, plan_items, prepare_dataset

    encoder = write_psp_checkpoint(folder / "psp.pt", full_encoder_state_dict(seed=0))
    clips = folder / "videos" / "spk"
    clips.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, 3 * i, axis=1) for i in range(PREPARE_FRAMES)])
    audio = speechlike(PREPARE_FRAMES / 25 + 0.5)
    with VideoWriter(clips / "clip.mp4", 25.0, audio=(audio, 16000), trim_audio=True) as wr:
        wr.write(frames)
    items = plan_items([clips / "clip.mp4"], None, 1, None)
    out: dict = {"frames": PREPARE_FRAMES, "input": "256x256 aligned clip", "batch_size": 8}
    codes = {}
    runs = (
        ("before", "fp32", 0, torch.contiguous_format),
        ("after", "fp32", 2, torch.channels_last),
        ("after_bf16", "bf16", 2, torch.channels_last),
    )
    for name, dtype, ahead, fmt in runs:
        cfg = PrepareConfig(
            aligned=True, batch_size=8, holdout="0", dtype=dtype, read_ahead=ahead, compile="off"
        )
        data = folder / name
        with _psp_layout(fmt):
            s, _ = _timed(lambda c=cfg, d=data: prepare_dataset(items, d, c, encoder))
        (video,) = load_dataset(data).videos
        codes[name] = np.asarray(video.codes(), dtype=np.float32)
        out[name] = {
            "dtype": dtype,
            "pSp_layout": "NHWC" if fmt == torch.channels_last else "NCHW",
            "read_ahead": ahead,
            "seconds": round(s, 2),
            "frames_per_s": round(video.frames / s, 3),
        }
    for name in ("after", "after_bf16"):
        out[f"speedup_{name}"] = round(out[name]["frames_per_s"] / out["before"]["frames_per_s"], 3)
    for name in ("after", "after_bf16"):
        diff = np.abs(codes[name] - codes["before"])
        out[f"codes_{name}_max_abs_diff"] = round(float(diff.max()), 5)
        out[f"codes_{name}_mean_abs_diff"] = round(float(diff.mean()), 5)
    out["codes_std"] = round(float(codes["before"].std()), 5)
    return out


def moving_face_frames(n: int, size: int = 256) -> np.ndarray:
    """skimage's astronaut shifted, rotated and scaled per frame: (n, size, size, 3) uint8."""
    from talkcli.tiny.faces import moving_astronaut

    return np.stack(moving_astronaut(n, size))


def align_detect(folder: Path, size: int = 256, batches: tuple[int, ...] = (1, 8)) -> dict:
    """Seconds per frame of alignment's detection pass (``video_landmarks``: decode + MTCNN on
    every frame) for each ``detect_batch``; the landmarks of all batches against the first."""
    from talkcli.face.align import AlignConfig, Detectors, video_landmarks
    from talkcli.face.landmarks import MTCNNDetector
    from talkcli.io.video import VideoWriter

    if not (MTCNN_FIXTURES / "mtcnn" / "onet.npy").is_file():
        return {"skipped": "MTCNN weights not found in ../shared/fixtures/mtcnn"}
    clip = folder / f"face{size}.mp4"
    with VideoWriter(clip, 25.0) as wr:
        wr.write(moving_face_frames(ALIGN_FRAMES, size))
    out: dict = {"frames": ALIGN_FRAMES, "input": f"{size}x{size} face clip", "detector": "mtcnn"}
    keyed = {}
    for batch in (batches[0], *batches):  # the first run warms up (decoder, oneDNN kernels)
        cfg = AlignConfig(detector="mtcnn", detect_batch=batch, weights_dir=MTCNN_FIXTURES)
        detectors = Detectors(cfg)  # model loading is not part of the pass; batched network
        detectors._detector = MTCNNDetector(MTCNN_FIXTURES, batch_on_cpu=True)  # calls, as on GPU
        s, marks = _timed(lambda c=cfg, d=detectors: video_landmarks(clip, c, d))
        keyed[batch] = np.stack([marks.keyed[i] for i in sorted(marks.keyed)])  # (K, 5, 2)
        out[f"batch_{batch}"] = {"seconds_per_frame": round(s / marks.n_frames, 4)}
    first = batches[0]
    for batch in batches[1:]:
        out[f"speedup_{batch}_vs_{first}"] = round(
            out[f"batch_{first}"]["seconds_per_frame"] / out[f"batch_{batch}"]["seconds_per_frame"],
            3,
        )
        out[f"landmarks_max_abs_diff_{batch}"] = float(np.abs(keyed[batch] - keyed[first]).max())
    return out


def run() -> dict:
    from talkcli.device import cpu_has_native_bf16, resolve_dtype

    torch.manual_seed(0)
    out: dict = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "note": "2 CPU cores shared with other jobs: ratios from one run, absolute times noisy",
        "cpu_native_bf16": cpu_has_native_bf16(),
        "auto_dtype_cpu": resolve_dtype("auto", "cpu"),
    }
    started = time.perf_counter()
    G, w = _full_generator()
    out["generator_1024"], full = generator_1024(G, w)
    out["generator_1024"]["psnr_bf16_vs_fp32_tiny64_db"] = tiny_bf16_psnr()
    out["preview"] = preview(G, w, full)
    out["pti_1024"] = pti_1024(G, w)
    del G
    out["pti_tiny"] = pti_tiny()
    out["psp_encoder"] = psp_encoder()
    with tempfile.TemporaryDirectory(prefix="bench-speed.") as tmp:
        out["prepare"] = prepare(Path(tmp))
        out["prepare"]["align_detect"] = align_detect(Path(tmp))
    out["total_seconds"] = round(time.perf_counter() - started, 1)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
