"""CPU speed of StyleGAN3 synthesis (configs T and R) against StyleGAN2 at the same size.

Random weights in the official layouts at 256 px, batch 1, float32 (speed does not depend on
the values): StyleGAN2 config-f widths (channel multiplier 2); StyleGAN3 as NVIDIA's published
256 px FFHQ-U models (T: cbase 16384, cmax 512; R: 1x1 convs, radial filters, cbase 32768,
cmax 1024; 14 layers, 2 critically sampled, margin 10). StyleGAN3 upsamples every layer
internally for its alias-free leaky ReLU, so it is expected to be several times slower.

``python -m benchmarks.run stylegan3`` writes ``benchmarks/results/stylegan3.json``.
"""

from __future__ import annotations

import time

import torch

SIZE = 256


def _timeit(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)


def _entry(times: list[float], params: int) -> dict:
    return {
        "median_s": times[len(times) // 2],
        "min_s": times[0],
        "runs": len(times),
        "images_per_s": 1 / times[0],
        "parameters": params,
    }


def run(repeats: int = 3) -> dict:
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.models.stylegan3 import StyleGAN3Config
    from talkcli.tiny.stylegan2 import full_generator_state_dict
    from talkcli.tiny.stylegan3 import random_stylegan3

    torch.manual_seed(0)
    out: dict = {"device": "cpu", "threads": torch.get_num_threads(), "size": SIZE, "batch": 1}
    g2 = generator_from_state_dict(full_generator_state_dict(SIZE, seed=0)).eval()
    w2 = torch.randn(1, 512)[:, None].repeat(1, g2.n_latent, 1)
    with torch.no_grad():
        t2 = _timeit(lambda: g2.synthesis(w2, noise_mode="const"), repeats)
    out["stylegan2"] = _entry(t2, sum(p.numel() for p in g2.parameters()))

    common = {"img_resolution": SIZE, "mapping_kwargs": {"num_layers": 2}}
    configs = {
        "stylegan3_t": StyleGAN3Config(**common, channel_base=16384, channel_max=512),
        "stylegan3_r": StyleGAN3Config(
            **common, channel_base=32768, channel_max=1024, conv_kernel=1, use_radial_filters=True
        ),
    }
    for name, cfg in configs.items():
        g3 = random_stylegan3(cfg, seed=0)
        w3 = torch.randn(1, 512)[:, None].repeat(1, g3.n_latent, 1)
        with torch.no_grad():
            t3 = _timeit(lambda g=g3, w=w3: g.synthesis(w), repeats)
        out[name] = {
            **_entry(t3, sum(p.numel() for p in g3.parameters())),
            "slowdown": t3[0] / t2[0],
        }
    return out
