"""Compare talkcli's StyleGAN2-ADA generator with NVIDIA's own code (not run by the test suite).

    python scripts/compare_nvidia_sg2ada.py UPSTREAM_CHECKOUT OUT_DIR

UPSTREAM_CHECKOUT is an export of github.com/NVlabs/stylegan2-ada-pytorch. Step 1 runs in a
child process with that checkout on sys.path: it builds small generators with NVIDIA's
``training/networks.py`` (conv_clamp, num_fp16_res > 0, architectures skip/resnet/orig; weights,
biases, noise strengths and w_avg randomised so every term matters), pickles them as NVIDIA's
training does (``pickle.dump({'G': G, 'G_ema': G_ema, ...})``) and stores NVIDIA's mapping and
synthesis outputs (``force_fp32=True``, ``noise_mode='const'``). Step 2 runs in a second child
process where ``torch_utils``, ``dnnlib`` and ``training`` cannot be imported, loads each pickle
with talkcli and writes the max abs differences to OUT_DIR/report.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CONFIGS = {
    "skip-clamp256-fp16x2": dict(architecture="skip", conv_clamp=256, num_fp16_res=2),
    "resnet-clamp256-fp16x2": dict(architecture="resnet", conv_clamp=256, num_fp16_res=2),
    "orig-clamp256-fp16x3": dict(architecture="orig", conv_clamp=256, num_fp16_res=3),
    "skip-clamp0.5-fp16x2": dict(architecture="skip", conv_clamp=0.5, num_fp16_res=2),
}


def make(upstream: str, out: str) -> None:
    sys.path.insert(0, upstream)
    import copy
    import importlib.util
    import pickle
    import types

    if importlib.util.find_spec("requests") is None:  # dnnlib.util imports it for downloads only
        sys.modules["requests"] = types.ModuleType("requests")

    import dnnlib
    import numpy as np
    import torch
    from training.networks import Generator

    for i, (name, synth) in enumerate(CONFIGS.items()):
        torch.manual_seed(i)
        G = Generator(
            z_dim=64,
            c_dim=0,
            w_dim=64,
            img_resolution=32,
            img_channels=3,
            mapping_kwargs=dict(num_layers=4),
            synthesis_kwargs=dict(channel_base=1024, channel_max=64, **synth),
        ).eval()
        with torch.no_grad():
            for pname, p in G.named_parameters():
                if "noise_strength" in pname or pname.endswith("bias"):
                    p.copy_(torch.randn_like(p) * 0.3)
            G.mapping.w_avg.copy_(torch.randn_like(G.mapping.w_avg))
        G_ema = copy.deepcopy(G).eval()
        with open(Path(out) / f"{name}.pkl", "wb") as f:
            pickle.dump(
                {
                    "G": G,
                    "D": None,
                    "G_ema": G_ema,
                    "augment_pipe": None,
                    "training_set_kwargs": dnnlib.EasyDict(resolution=32),
                },
                f,
            )
        z = torch.randn(4, 64)
        with torch.no_grad():
            ws = G_ema.mapping(z, None, truncation_psi=0.7)
            w_free = torch.randn(4, G_ema.num_ws, 64)  # a different w per layer
            img = G_ema.synthesis(ws, noise_mode="const", force_fp32=True)
            img_free = G_ema.synthesis(w_free, noise_mode="const", force_fp32=True)
            img_none = G_ema.synthesis(w_free, noise_mode="none", force_fp32=True)
        np.savez(
            Path(out) / f"{name}.npz",
            z=z.numpy(),
            ws=ws.numpy(),
            w_free=w_free.numpy(),
            img=img.numpy(),
            img_free=img_free.numpy(),
            img_none=img_none.numpy(),
        )


class _Block:
    """Import hook: NVIDIA's packages must not be importable in the checking process."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch_utils", "dnnlib", "training", "legacy"):
            raise ImportError(f"{name} blocked: talkcli must not need NVIDIA's code")
        return None


def check(out: str) -> None:
    sys.meta_path.insert(0, _Block())
    import numpy as np
    import torch

    from talkcli.models.stylegan2 import load_generator

    report = {}
    for name in CONFIGS:
        G = load_generator(Path(out) / f"{name}.pkl")
        ref = np.load(Path(out) / f"{name}.npz")
        with torch.no_grad():
            w = G.mapping(torch.from_numpy(ref["z"]), truncation=0.7)
            ws = w[:, None].repeat(1, G.n_latent, 1)
            img = G.synthesis(torch.from_numpy(ref["ws"]), noise_mode="const")
            img_free = G.synthesis(torch.from_numpy(ref["w_free"]), noise_mode="const")
            img_none = G.synthesis(torch.from_numpy(ref["w_free"]), noise_mode="none")
        report[name] = {
            "mapping": float((ws - torch.from_numpy(ref["ws"])).abs().max()),
            "synthesis": float((img - torch.from_numpy(ref["img"])).abs().max()),
            "synthesis_per_layer_w": float(
                (img_free - torch.from_numpy(ref["img_free"])).abs().max()
            ),
            "synthesis_noise_none": float(
                (img_none - torch.from_numpy(ref["img_none"])).abs().max()
            ),
            "image_abs_max": float(np.abs(ref["img"]).max()),
        }
    assert not any(m in sys.modules for m in ("torch_utils", "dnnlib", "training"))
    (Path(out) / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


def main() -> None:
    if sys.argv[1] == "--make":
        make(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "--check":
        check(sys.argv[2])
    else:
        upstream, out = sys.argv[1], sys.argv[2]
        Path(out).mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, __file__, "--make", upstream, out], check=True)
        subprocess.run([sys.executable, __file__, "--check", out], check=True)


if __name__ == "__main__":
    main()
