"""Compare talkcli's StyleGAN3 with NVIDIA's own code (not run by the test suite).

Two steps, two processes, so that the comparing process cannot import NVIDIA's modules:

    python scripts/sg3_reference.py export /path/to/stylegan3-checkout /tmp/sg3ref
    python scripts/sg3_reference.py compare /tmp/sg3ref
    python scripts/sg3_reference.py export-pickle /path/to/stylegan3-checkout /tmp/sg3pkl
    python scripts/sg3_reference.py compare-pickle /tmp/sg3pkl

``export`` builds small config-T and config-R generators (and a config T with published
widths) with NVIDIA's ``training.networks_stylegan3.Generator`` (CPU: its custom ops take their
reference paths), randomises every parameter and buffer it would learn, and writes, per config,
the init kwargs, the state dict and (z -> w -> image) pairs (``force_fp32=True``, truncation 1
and 0.7) to ``OUT/sg3_{T,R,T128}.pt``. ``compare`` builds talkcli's generator from each record
and prints the max abs differences (filters designed from the kwargs vs NVIDIA's buffers, w,
image) as JSON.
``export-pickle`` does the same for T and R but writes what NVIDIA's training writes:
``pickle.dump({'G': G, 'D': None, 'G_ema': G_ema, 'augment_pipe': None,
'training_set_kwargs': ...})`` of its ``persistence``-decorated classes (``OUT/sg3_{T,R}.pkl``,
G and G_ema with different weights) plus the z -> ws -> image pairs of both
(``OUT/sg3_{T,R}_pairs.pt``); ``compare-pickle`` loads each pickle with
``talkcli.models.stylegan2.load_generator`` (``network`` G_ema and G) and prints the max abs
differences as JSON.
NVIDIA's source is read from the given checkout only; nothing of it is copied here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

CONFIGS = {
    "T": {
        "z_dim": 64,
        "c_dim": 0,
        "w_dim": 64,
        "img_resolution": 64,
        "img_channels": 3,
        "mapping_kwargs": {"num_layers": 2},
        "channel_base": 1024,
        "channel_max": 32,
        "magnitude_ema_beta": 0.5 ** (32 / (20 * 1e3)),
        "num_fp16_res": 4,
        "conv_clamp": 256,
    },
    "R": {
        "z_dim": 64,
        "c_dim": 0,
        "w_dim": 64,
        "img_resolution": 32,
        "img_channels": 3,
        "mapping_kwargs": {"num_layers": 2},
        "channel_base": 2048,
        "channel_max": 64,
        "magnitude_ema_beta": 0.5 ** (32 / (20 * 1e3)),
        "conv_kernel": 1,
        "use_radial_filters": True,
        "num_fp16_res": 4,
        "conv_clamp": 256,
    },
    # The widths of NVIDIA's published 256 px FFHQ-U config T (cbase 16384, cmax 512), at 128 px.
    "T128": {
        "z_dim": 512,
        "c_dim": 0,
        "w_dim": 512,
        "img_resolution": 128,
        "img_channels": 3,
        "mapping_kwargs": {"num_layers": 2},
        "channel_base": 16384,
        "channel_max": 512,
        "magnitude_ema_beta": 0.5 ** (32 / (32 * 1e3)),
        "num_fp16_res": 4,
        "conv_clamp": 256,
    },
}
BATCH = {"T": 4, "R": 4, "T128": 1}


def _import_upstream(upstream: Path) -> None:
    """Make NVIDIA's checkout importable (``requests``/``pkg_resources`` stubbed if absent)."""
    import types

    sys.path.insert(0, str(upstream))
    for missing in ("requests",):  # dnnlib.util imports it for downloads; unused here
        if missing not in sys.modules:
            try:
                __import__(missing)
            except ImportError:
                sys.modules[missing] = types.ModuleType(missing)
    if "pkg_resources" not in sys.modules:  # conv2d_gradfix wants parse_version from it
        from packaging.version import parse

        stub = types.ModuleType("pkg_resources")
        stub.parse_version = parse  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stub


def _randomise(G: torch.nn.Module, w_dim: int) -> None:
    """Move every learned value off its init (affine 0, biases 0, magnitude_ema 1, w_avg 0)."""
    with torch.no_grad():
        for pname, p in G.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "affine" in pname or "bias" in pname else 0))
        for bname, b in G.named_buffers():
            if bname.endswith("magnitude_ema"):
                b.fill_(0.5 + torch.rand([]).item())
        G.mapping.w_avg.copy_(torch.randn(w_dim) * 0.3)


def _pairs(G: torch.nn.Module, z: torch.Tensor) -> list[dict]:
    """z -> ws -> image at truncation 1 and 0.7 (``force_fp32=True``, constant noise)."""
    pairs = []
    with torch.no_grad():
        for psi in (1.0, 0.7):
            ws = G.mapping(z, None, truncation_psi=psi)  # (B, num_ws, w_dim)
            img = G.synthesis(ws, force_fp32=True, noise_mode="const")
            pairs.append({"psi": psi, "z": z, "ws": ws, "img": img})
    return pairs


def export(upstream: Path, out: Path) -> None:
    _import_upstream(upstream)
    from training.networks_stylegan3 import Generator  # NVIDIA's, from the checkout

    out.mkdir(parents=True, exist_ok=True)
    for name, kwargs in CONFIGS.items():
        torch.manual_seed(1)
        G = Generator(**kwargs).eval()
        _randomise(G, kwargs["w_dim"])
        pairs = _pairs(G, torch.randn(BATCH[name], kwargs["z_dim"]))
        img = pairs[-1]["img"]
        record = {"init_kwargs": kwargs, "state": G.state_dict(), "pairs": pairs}
        torch.save(record, out / f"sg3_{name}.pt")
        print(f"{name}: {tuple(img.shape)} image std {img.std():.3f}, num_ws {G.num_ws}")


def compare(out: Path) -> dict[str, dict[str, float]]:
    assert "training" not in sys.modules and "torch_utils" not in sys.modules
    from talkcli.models.nvidia_pickle import NetworkRecord
    from talkcli.models.stylegan3 import BUILDERS, NVIDIA_CLASS, StyleGAN3Config, build_stylegan3

    results = {}
    for name in CONFIGS:
        ref = torch.load(out / f"sg3_{name}.pt", weights_only=True)
        fresh = build_stylegan3(StyleGAN3Config.from_init_kwargs(ref["init_kwargs"]))
        filt = max(
            (fresh.state_dict()[k] - v).abs().max().item()
            for k, v in ref["state"].items()
            if k.endswith(("up_filter", "down_filter"))
        )
        record = NetworkRecord("G_ema", NVIDIA_CLASS, ref["init_kwargs"], ref["state"])
        G = BUILDERS[NVIDIA_CLASS](record)
        dw = dimg = scale = 0.0
        with torch.no_grad():
            for pair in ref["pairs"]:
                w = G.mapping(pair["z"], truncation=pair["psi"])  # (B, w_dim)
                dw = max(dw, (w[:, None] - pair["ws"]).abs().max().item())
                img = G.synthesis(pair["ws"], noise_mode="const")
                dimg = max(dimg, (img - pair["img"]).abs().max().item())
                scale = max(scale, pair["img"].abs().max().item())
        results[name] = {"filters": filt, "w": dw, "image": dimg, "image_max_abs": scale}
    print(json.dumps(results, indent=1))
    return results


def export_pickle(upstream: Path, out: Path) -> None:
    """NVIDIA's own pickles of small T and R generators, as its training loop writes them."""
    import copy
    import pickle

    _import_upstream(upstream)
    import dnnlib
    from training.networks_stylegan3 import Generator  # persistence-decorated, from the checkout

    out.mkdir(parents=True, exist_ok=True)
    for name in ("T", "R"):
        kwargs = CONFIGS[name]
        torch.manual_seed(2)
        G = Generator(**kwargs).train().requires_grad_(False)
        _randomise(G, kwargs["w_dim"])
        G_ema = copy.deepcopy(G).eval()
        _randomise(G_ema, kwargs["w_dim"])  # G and G_ema differ, as after training
        z = torch.randn(BATCH[name], kwargs["z_dim"])
        pairs = {"G": _pairs(G.eval(), z), "G_ema": _pairs(G_ema, z)}
        snapshot = dict(training_set_kwargs=dnnlib.EasyDict(resolution=kwargs["img_resolution"]))
        for key, value in (("G", G), ("D", None), ("G_ema", G_ema), ("augment_pipe", None)):
            snapshot[key] = None if value is None else copy.deepcopy(value).eval().cpu()
        with open(out / f"sg3_{name}.pkl", "wb") as f:
            pickle.dump(snapshot, f)
        torch.save(pairs, out / f"sg3_{name}_pairs.pt")
        print(f"{name}: wrote {out / f'sg3_{name}.pkl'}")


def compare_pickle(out: Path) -> dict[str, dict[str, float]]:
    assert "training" not in sys.modules and "torch_utils" not in sys.modules
    from talkcli.models.stylegan2 import load_generator

    results = {}
    for name in ("T", "R"):
        ref = torch.load(out / f"sg3_{name}_pairs.pt", weights_only=True)
        for network in ("G_ema", "G"):
            G = load_generator(out / f"sg3_{name}.pkl", network=network)
            dw = dimg = scale = 0.0
            with torch.no_grad():
                for pair in ref[network]:
                    w = G.mapping(pair["z"], truncation=pair["psi"])  # (B, w_dim)
                    dw = max(dw, (w[:, None] - pair["ws"]).abs().max().item())
                    img = G.synthesis(pair["ws"], noise_mode="const")
                    dimg = max(dimg, (img - pair["img"]).abs().max().item())
                    scale = max(scale, pair["img"].abs().max().item())
            results[f"{name}/{network}"] = {"w": dw, "image": dimg, "image_max_abs": scale}
    assert "training" not in sys.modules and "torch_utils" not in sys.modules
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "export":
        export(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "compare":
        compare(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "export-pickle":
        export_pickle(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "compare-pickle":
        compare_pickle(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
