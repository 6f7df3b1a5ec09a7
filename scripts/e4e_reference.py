"""Check talkcli's e4e encoder against omertov/encoder4editing's own code (not run by the tests).

Two steps, each its own process, so the upstream modules never share a process with talkcli:

    python scripts/e4e_reference.py export UPSTREAM_CHECKOUT OUT_DIR [--stylegan-size 64]
    python scripts/e4e_reference.py compare OUT_DIR

``export`` puts the upstream checkout (a plain copy of github.com/omertov/encoder4editing) on
``sys.path``, builds e4e's ``pSp`` network (``Encoder4Editing(50, 'ir_se')`` + its StyleGAN2
decoder) with random weights and randomised BatchNorm statistics, saves it exactly as e4e's
``Coach.__get_save_dict`` does (``{'state_dict': net.state_dict(), 'opts': vars(opts),
'latent_avg': ...}``), loads it back through e4e's ``pSp(opts)`` (``checkpoint_path``), and writes
the codes of e4e's ``scripts/inference.py:get_latents`` for random inputs. The only stand-ins are
for the compiled CUDA ops the decoder imports (``models.stylegan2.op``), which the encoder never
calls. ``compare`` (a process where ``models`` cannot be imported) loads the same file with
``talkcli.models.psp.load_encoder`` and ``talkcli.models.stylegan2.load_generator`` and prints the
largest absolute difference of the codes.
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CKPT = "e4e_reference.pt"
CODES = "e4e_reference_codes.pt"


def _stub_cuda_ops() -> None:
    """Plain-PyTorch stand-ins for ``models.stylegan2.op`` (upstream compiles CUDA on import)."""

    def fused_leaky_relu(x, bias, negative_slope=0.2, scale=2**0.5):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return F.leaky_relu(x + bias.view(shape), negative_slope) * scale

    class FusedLeakyReLU(nn.Module):
        def __init__(self, channel, negative_slope=0.2, scale=2**0.5):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(channel))
            self.negative_slope, self.scale = negative_slope, scale

        def forward(self, x):
            return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)

    def upfirdn2d(*args, **kwargs):
        raise NotImplementedError("the decoder is not run by this check")

    op = types.ModuleType("models.stylegan2.op")
    op.FusedLeakyReLU = FusedLeakyReLU
    op.fused_leaky_relu = fused_leaky_relu
    op.upfirdn2d = upfirdn2d
    sys.modules["models.stylegan2.op"] = op


def _randomise_batchnorm(net: nn.Module, gen: torch.Generator) -> None:
    """Trained-looking BatchNorm statistics, so eval-mode BN is not the identity."""
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(1 + 0.1 * torch.randn(c, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(c, generator=gen))
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=gen))


def export(upstream: Path, out: Path, stylegan_size: int, batch: int) -> None:
    sys.path.insert(0, str(upstream.resolve()))
    _stub_cuda_ops()
    from models.psp import pSp  # upstream

    opts = argparse.Namespace(
        encoder_type="Encoder4Editing",
        stylegan_size=stylegan_size,
        start_from_latent_avg=True,
        checkpoint_path=None,
        device="cpu",
        dataset_type="ffhq_encode",
    )
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    net = pSp.__new__(pSp)  # pSp.__init__ without load_weights (which needs ir_se50.pth)
    nn.Module.__init__(net)
    net.opts = opts
    net.encoder = net.set_encoder()
    from models.stylegan2.model import Generator  # upstream

    net.decoder = Generator(stylegan_size, 512, 8, channel_multiplier=2)
    net.face_pool = nn.AdaptiveAvgPool2d((256, 256))
    _randomise_batchnorm(net.encoder, gen)
    n_styles = net.encoder.style_count
    net.latent_avg = torch.randn(512, generator=gen).repeat(n_styles, 1)  # as e4e repeats it
    out.mkdir(parents=True, exist_ok=True)
    save_dict = {"state_dict": net.state_dict(), "opts": vars(opts), "latent_avg": net.latent_avg}
    torch.save(save_dict, out / CKPT)  # Coach.__get_save_dict's layout

    loaded = pSp(argparse.Namespace(**{**vars(opts), "checkpoint_path": str(out / CKPT)}))
    loaded.eval()
    x = torch.rand(batch, 3, 256, 256, generator=gen) * 2 - 1
    with torch.no_grad():
        codes = loaded.encoder(x)  # scripts/inference.py:get_latents
        if loaded.opts.start_from_latent_avg:
            codes = codes + loaded.latent_avg.repeat(codes.shape[0], 1, 1)
    torch.save({"x": x, "codes": codes}, out / CODES)
    print(f"wrote {out / CKPT} ({n_styles} styles) and {out / CODES}")


def compare(out: Path) -> float:
    try:
        import models  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - the point of a separate process
        raise SystemExit("upstream 'models' is importable here: run compare in a clean process")
    from talkcli.models.psp import GradualStyleEncoder, load_encoder
    from talkcli.models.stylegan2 import load_generator

    ref = torch.load(out / CODES, weights_only=True)
    E = load_encoder(out / CKPT)
    with torch.no_grad():
        codes = E.encode(ref["x"])
        as_psp = GradualStyleEncoder.forward(E.encoder, ref["x"]) + E.latent_avg  # sanity check
    diff = float((codes - ref["codes"]).abs().max())
    scale = float(ref["codes"].abs().max())
    G = load_generator(out / CKPT)
    print(
        f"encoder {E.encoder_type}, codes {tuple(codes.shape)}, max |codes| {scale:.4g}, "
        f"max abs difference {diff:.3g}; decoder loads: size {G.size}, n_latent {G.n_latent}; "
        f"a pSp forward of the same weights differs by {float((as_psp - codes).abs().max()):.3g}"
    )
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_exp = sub.add_parser("export")
    p_exp.add_argument("upstream", type=Path)
    p_exp.add_argument("out", type=Path)
    p_exp.add_argument("--stylegan-size", type=int, default=64)
    p_exp.add_argument("--batch", type=int, default=2)
    p_cmp = sub.add_parser("compare")
    p_cmp.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.cmd == "export":
        if 2 ** int(math.log2(args.stylegan_size)) != args.stylegan_size:
            raise SystemExit("--stylegan-size must be a power of two")
        export(args.upstream, args.out, args.stylegan_size, args.batch)
    else:
        compare(args.out)


if __name__ == "__main__":
    main()
