"""CPU throughput of the frozen networks and the optimisation steps at full size (1024).

Random weights in the exact official layouts (the real files are not available here; speed
does not depend on the values):

- generator: images/s of ``G.synthesis`` at 1024, batch 1, ``noise_mode='const'``;
- pSp: encodes/s of the IR-SE50 GradualStyleEncoder at 256x256 input, batch 1;
- projection: seconds per optimisation step (LPIPS-vgg + L2, Adam on W+) at 1024;
- PTI: seconds per tuning step (all generator weights, LPIPS-alex + L2) at 1024.

``python -m benchmarks.run models`` writes ``benchmarks/results/models.json``.
"""

from __future__ import annotations

import time

import torch


def _timeit(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: list[float]) -> dict:
    times = sorted(times)
    return {"median_s": times[len(times) // 2], "min_s": times[0], "runs": len(times)}


def run() -> dict:
    from talkcli.inversion.project import ProjectionConfig, project_frame
    from talkcli.inversion.pti import PTIConfig, tune
    from talkcli.models.perceptual import LPIPS
    from talkcli.models.psp import encoder_from_state_dict
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.perceptual import tiny_lpips_heads
    from talkcli.tiny.psp import full_encoder_state_dict
    from talkcli.tiny.stylegan2 import full_generator_state_dict

    torch.manual_seed(0)
    out: dict = {"device": "cpu", "threads": torch.get_num_threads()}

    G = generator_from_state_dict(full_generator_state_dict(1024, seed=0)).eval()
    G.requires_grad_(False)
    G.latent_avg = G.mean_latent(1000)
    w = G.latent_avg.reshape(1, 1, -1).expand(1, G.n_latent, -1).clone()
    with torch.no_grad():
        gen_times = _timeit(lambda: G.synthesis(w, noise_mode="const"), repeats=3)
    out["generator_1024_batch1"] = {**_summary(gen_times), "images_per_s": 1 / min(gen_times)}

    E = encoder_from_state_dict(full_encoder_state_dict(seed=0)).eval()
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        enc_times = _timeit(lambda: E(x), repeats=3)
    out["psp_encoder_256_batch1"] = {**_summary(enc_times), "encodes_per_s": 1 / min(enc_times)}

    def lpips_for(net: str) -> LPIPS:
        from talkcli.models.perceptual import alexnet_features, vgg16_features

        stack = vgg16_features() if net == "vgg" else alexnet_features()
        return LPIPS(net, stack.state_dict(), tiny_lpips_heads(stack.widths)).eval()

    target = torch.rand(1, 3, 1024, 1024) * 2 - 1
    lpips_vgg = lpips_for("vgg")
    steps = 3
    start = time.perf_counter()
    project_frame(
        G,
        lpips_vgg,
        target,
        w[0],
        steps,
        ProjectionConfig(steps=steps, dtype="fp32"),  # the fp32 reference (auto: bench_speed)
        from_scratch=False,
    )
    out["projection_step_1024"] = {
        "seconds_per_step": (time.perf_counter() - start) / (steps + 2),  # + start/end evals
        "steps": steps,
        "lpips": "vgg",
    }

    lpips_alex = lpips_for("alex")
    pti_steps = 3
    result = tune(
        G, lpips_alex, w, target, PTIConfig(steps=pti_steps, stop_lpips=0.0, dtype="fp32")
    )
    out["pti_step_1024"] = {
        "seconds_per_step": result.seconds / pti_steps,
        "steps": pti_steps,
        "lpips": "alex",
        "estimated_350_steps_s": 350 * result.seconds / pti_steps,
    }
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
