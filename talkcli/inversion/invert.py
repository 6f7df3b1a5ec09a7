"""``invert``: aligned images or an aligned video -> W+ codes (.npz), reconstructions, plot.

Methods: ``psp`` (encoder only, a fraction of a second per frame), ``optimize`` (thesis Alg. 1/2
from the average latent), ``hybrid`` (pSp codes refined by optimisation).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from talkcli import __version__
from talkcli.device import resolve_dtype
from talkcli.errors import InputFileError, UserError
from talkcli.inversion.project import ProjectionConfig, mean_latent_step, project_frames
from talkcli.io.files import atomic_output, check_output_path, ensure_folder, sha256_file
from talkcli.io.images import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    expand_inputs,
    read_image_rgb,
    to_tensor_images,
    to_uint8_images,
    write_png,
)

if TYPE_CHECKING:
    from talkcli.models.stylegan2 import Generator

METHODS = ("psp", "optimize", "hybrid")


@dataclass
class Frames:
    """Input frames with their names and where they came from."""

    images: np.ndarray  # (N, H, W, 3) uint8
    names: list[str]
    sources: list[str]
    fps: float | None = None
    files: dict[str, str] = field(default_factory=dict)  # input file -> sha256 (run manifest)


@dataclass
class InvertResult:
    w: np.ndarray  # (N, n_latent, 512) float32
    names: list[str]
    meta: dict
    reconstructions: np.ndarray | None = None  # (N, S, S, 3) uint8
    losses: list[dict] = field(default_factory=list)


def load_frames(inputs: list[str] | list[Path], max_frames: int | None = None) -> Frames:
    """Read aligned images (files, folders, globs) or the frames of aligned video(s).

    With ``max_frames`` only N frames, sampled evenly, are decoded and kept. Frames are held in
    memory, so their total size is checked (``LIMITS.frames_bytes``) before decoding.
    """
    from talkcli.guards import check_frames_in_memory
    from talkcli.io.video import VideoReader, probe_video

    paths = expand_inputs(inputs, IMAGE_EXTS + VIDEO_EXTS)
    counts = [probe_video(p).n_frames if p.suffix.lower() in VIDEO_EXTS else 1 for p in paths]
    total = sum(counts)
    keep = set(range(total))
    if max_frames is not None and total > max_frames:
        keep = set(np.linspace(0, total - 1, max_frames).round().astype(int).tolist())
    images: list[np.ndarray] = []
    names: list[str] = []
    sources: list[str] = []
    fps = None
    start = 0
    for p, count in zip(paths, counts, strict=True):
        if p.suffix.lower() in VIDEO_EXTS:
            with VideoReader(p) as reader:
                fps = reader.fps
                check_frames_in_memory(p, len(keep), reader.width, reader.height)
                for i, frame in enumerate(reader):
                    if start + i in keep:
                        images.append(frame)
                        names.append(f"{p.stem}_{i:05d}")
                        sources.append(f"{p}#{i}")
        elif start in keep:
            images.append(read_image_rgb(p))
            names.append(p.stem)
            sources.append(str(p))
            check_frames_in_memory(p, len(keep), *images[-1].shape[1::-1])
        start += count
    if not images:
        raise UserError("no frames to invert")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UserError(f"input frames have different sizes {sorted(shapes)}: align them first")
    h, w = images[0].shape[:2]
    if h != w:
        raise InputFileError(sources[0], f"is {w}x{h}, not square", "run `talkcli align` first")
    hashes = {str(p): sha256_file(p) for p in paths}
    return Frames(np.stack(images), names, sources, fps, hashes)


def frames_to_tensor(images: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size) in [-1, 1], resized with antialiasing."""
    x = to_tensor_images(images).to(device)
    if x.shape[-1] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


def _hash(path: Path | None) -> str | None:
    return sha256_file(path) if path is not None else None


def _frozen_generator(
    generator_path: Path | None, device: torch.device, network: str = "G_ema"
) -> Generator | None:
    """The generator in eval mode with gradients off, or None when no file is given;
    ``network`` of an NVIDIA pickle (ignored for other files)."""
    if generator_path is None:
        return None
    from talkcli.models.stylegan2 import load_generator

    G = load_generator(generator_path, device=device, network=network).eval()
    for p in G.parameters():
        p.requires_grad_(False)
    return G


def encode_frames(
    frames: Frames,
    encoder_path: Path,
    *,
    batch_size: int,
    device: torch.device,
    on_progress: Callable[[str, int, int], None] | None = None,
    dtype: str = "auto",
) -> torch.Tensor:
    """pSp codes of every frame, (N, n_latent, 512) float32; the encoder is freed afterwards.
    ``dtype``: autocast of the encoder (``talkcli.device.resolve_dtype``)."""
    from talkcli.device import autocast
    from talkcli.models.psp import load_encoder

    E = load_encoder(encoder_path, device=device).eval()
    precision = resolve_dtype(dtype, device)
    n = len(frames.names)
    chunks = []
    for start in range(0, n, batch_size):
        batch = frames.images[start : start + batch_size]
        with torch.no_grad(), autocast(precision, device):
            chunks.append(E.encode_images(batch).float())  # (b, 18, 512)
        if on_progress:
            on_progress("encode", min(start + batch_size, n), n)
    return torch.cat(chunks)


def optimize_frames(
    frames: Frames,
    G: Generator,
    init: torch.Tensor | None,
    *,
    lpips_paths: tuple[Path, Path],
    lpips_net: str,
    cfg: ProjectionConfig,
    device: torch.device,
    seed: int,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    """Project every frame (thesis Alg. 1/2), from ``init`` codes (pSp) or the mean latent.

    Returns the codes (N, n_latent, 512) on ``device`` and one loss record per frame.
    """
    from talkcli.models.perceptual import load_lpips

    lpips = load_lpips(
        lpips_net, device=device, backbone_path=lpips_paths[0], heads_path=lpips_paths[1]
    )
    if init is not None and init.shape[1:] != (G.n_latent, G.style_dim):
        raise UserError(
            f"encoder gives {tuple(init.shape[1:])} codes but the generator expects "
            f"({G.n_latent}, {G.style_dim}): use matching files"
        )
    targets = frames_to_tensor(frames.images, G.size, device)
    n = len(frames.names)
    total_steps = sum(
        cfg.steps if (cfg.sequence and t > 0) else (cfg.first_steps or cfg.steps) for t in range(n)
    )
    done = 0

    def step_cb(_step: int, _loss: float) -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress("optimize", done, total_steps)

    results = project_frames(G, lpips, targets, cfg, init=init, seed=seed, on_step=step_cb)
    codes = torch.stack([r.w for r in results]).to(device)
    losses = [
        {
            "name": frames.names[i],
            "steps": r.steps,
            "loss_start": r.loss_start,
            "loss_end": r.loss_end,
            "lpips": r.lpips_end,
            "l2": r.l2_end,
        }
        for i, r in enumerate(results)
    ]
    return codes, losses


def reconstruct(
    G: Generator, codes: torch.Tensor, *, batch_size: int, device: torch.device
) -> np.ndarray:
    """The generator's images of ``codes`` (N, n_latent, 512): (N, S, S, 3) uint8."""
    outs = []
    for start in range(0, len(codes), batch_size):
        with torch.no_grad():
            img = G.synthesis(codes[start : start + batch_size].to(device), noise_mode="const")
        outs.append(to_uint8_images(img))
    return np.concatenate(outs)


def _invert_meta(
    frames: Frames,
    w: np.ndarray,
    losses: list[dict],
    *,
    method: str,
    cfg: ProjectionConfig,
    lpips_net: str,
    seed: int,
    device: torch.device,
    generator_path: Path | None,
    encoder_path: Path | None,
    lpips_paths: tuple[Path, Path] | None,
) -> dict:
    """The run metadata stored with the latents (keys are a contract of the .npz)."""
    return {
        "method": method,
        "space": cfg.space if method != "psp" else "wplus",
        "steps": cfg.steps if method != "psp" else 0,
        "first_steps": (cfg.first_steps or cfg.steps) if method != "psp" else 0,
        "sequence": cfg.sequence,
        "lr": cfg.lr,
        "l2_weight": cfg.l2_weight,
        "lpips": lpips_net if method != "psp" else None,
        "seed": seed,
        "dtype": resolve_dtype(cfg.dtype, device),  # the precision used (auto resolved)
        "talkcli": __version__,
        "torch": torch.__version__,
        "device": str(device),
        "sources": frames.sources,
        "input_sha256": frames.files,
        "fps": frames.fps,
        "weights": {
            "generator": {"path": str(generator_path), "sha256": _hash(generator_path)},
            "encoder": {"path": str(encoder_path), "sha256": _hash(encoder_path)},
            "lpips": [{"path": str(p), "sha256": _hash(p)} for p in lpips_paths or ()],
        },
        "mean_latent_step": mean_latent_step(torch.from_numpy(w)),
        "losses": losses,
    }


def invert(
    frames: Frames,
    *,
    method: str,
    generator_path: Path | None,
    encoder_path: Path | None,
    lpips_paths: tuple[Path, Path] | None,
    lpips_net: str = "vgg",
    cfg: ProjectionConfig | None = None,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    seed: int = 0,
    want_reconstructions: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
    network: str = "G_ema",
) -> InvertResult:
    """Invert ``frames`` with ``method``; returns codes, per-frame losses and run metadata.

    ``on_progress(stage, done, total)`` is called per encoded batch and per optimisation step.
    """
    if method not in METHODS:
        raise UserError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    cfg = cfg or ProjectionConfig()
    device = torch.device(device)
    torch.manual_seed(seed)
    G = _frozen_generator(generator_path, device, network)
    if method in ("psp", "hybrid") and getattr(G, "arch", "stylegan2") == "stylegan3":
        raise UserError(
            f"--method {method}: the pSp and e4e encoders are trained for StyleGAN2; "
            f"{generator_path} is a StyleGAN3 generator (use --method optimize)"
        )
    codes: torch.Tensor | None = None  # (N, n_latent, 512)
    if method in ("psp", "hybrid"):
        if encoder_path is None:
            raise UserError(f"--method {method} needs the pSp encoder (--encoder)")
        codes = encode_frames(
            frames,
            encoder_path,
            batch_size=batch_size,
            device=device,
            on_progress=on_progress,
            dtype=cfg.dtype,
        )
    losses: list[dict] = []
    if method in ("optimize", "hybrid"):
        if G is None or lpips_paths is None:
            raise UserError(f"--method {method} needs the generator and LPIPS files")
        codes, losses = optimize_frames(
            frames,
            G,
            codes,
            lpips_paths=lpips_paths,
            lpips_net=lpips_net,
            cfg=cfg,
            device=device,
            seed=seed,
            on_progress=on_progress,
        )
    assert codes is not None
    recon = None
    if want_reconstructions:
        if G is None:
            raise UserError("reconstructions need a generator (--generator)")
        recon = reconstruct(G, codes, batch_size=batch_size, device=device)
    w = codes.detach().float().cpu().numpy().astype(np.float32)
    meta = _invert_meta(
        frames,
        w,
        losses,
        method=method,
        cfg=cfg,
        lpips_net=lpips_net,
        seed=seed,
        device=device,
        generator_path=generator_path,
        encoder_path=encoder_path,
        lpips_paths=lpips_paths,
    )
    return InvertResult(w=w, names=frames.names, meta=meta, reconstructions=recon, losses=losses)


def recon_paths(folder: str | Path, frames: Frames) -> list[Path]:
    """The files ``save_reconstructions`` will write; creates ``folder`` (checked up front)."""
    out = ensure_folder(folder, "--save-recon folder")
    return [out / f"{name}{tail}.png" for name in frames.names for tail in ("", "_compare")]


def write_latents(file: str | Path, result: InvertResult) -> None:
    """Write ``w``, ``names`` and JSON ``meta`` to ``file`` (no atomic rename; see save_latents)."""
    with open(file, "wb") as f:
        np.savez(
            f,
            w=result.w,
            names=np.array(result.names),
            meta=np.array(json.dumps(result.meta)),
        )


def save_latents(path: str | Path, result: InvertResult) -> Path:
    """Write the latents .npz via a temporary name, renamed when complete."""
    final = check_output_path(path)
    if final.suffix != ".npz":
        raise UserError(f"{final}: latents are saved as .npz (use a name ending in .npz)")
    with atomic_output(final) as tmp:
        write_latents(tmp, result)
    return final


def load_latents(path: str | Path) -> tuple[np.ndarray, list[str], dict]:
    """Read an .npz written by ``save_latents`` -> (w (N, n_latent, 512), names, meta)."""
    from talkcli.io.files import require_file

    p = require_file(path, "latents file")
    try:
        with np.load(p, allow_pickle=False) as data:
            w = data["w"].astype(np.float32)
            names = [str(s) for s in data["names"]] if "names" in data else []
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputFileError(
            p, f"not a talkcli latents .npz ({exc})", "create it with `talkcli invert`"
        ) from None
    if w.ndim != 3:
        raise InputFileError(p, f"w has shape {w.shape}, expected (N, n_latent, 512)")
    from talkcli.guards import check_finite_array

    check_finite_array(w, p, "latents")
    return w, names, meta


def save_reconstructions(folder: str | Path, result: InvertResult, frames: Frames) -> list[Path]:
    """Write ``<name>.png`` (reconstruction) and ``<name>_compare.png`` (input | reconstruction)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    assert result.reconstructions is not None
    written = []
    size = result.reconstructions.shape[1]
    inputs = frames_to_tensor(frames.images, size, torch.device("cpu"))
    inputs_u8 = to_uint8_images(inputs)
    for name, rec, src in zip(result.names, result.reconstructions, inputs_u8, strict=True):
        written.append(write_png(out / f"{name}.png", rec))
        written.append(write_png(out / f"{name}_compare.png", np.concatenate([src, rec], axis=1)))
    return written
