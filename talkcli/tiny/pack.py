"""Tiny packs: a complete set of random-weight model files in the official formats.

``talkcli weights tiny DIR`` writes them where the registry looks (``DIR`` works as
``--weights-dir``), so tests, ``make demo`` and new users can run every command without the real
weights. The files load through exactly the same code as the real ones; only widths are small.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from talkcli import __version__
from talkcli.constants import LPIPS_FILES
from talkcli.errors import OutputError, UserError
from talkcli.io.files import atomic_output, ensure_folder, write_json_atomic
from talkcli.weights import registry

log = logging.getLogger(__name__)

PACK_NOTE = "TINY-PACK.json"
SSL_AUDIO_MODEL = "audio2latent-wav2vec2-tiny.safetensors"  # reads wav2vec2-tiny/ (issue 17)
SIZES = (16, 32, 64, 128, 256, 512, 1024)
GENERATOR_ARCHS = ("stylegan2", "stylegan3", "stylegan3-r")


def write_tiny_pack(
    folder: str | Path, size: int = 64, seed: int = 0, force: bool = False, arch: str = "stylegan2"
) -> dict[str, Path]:
    """Write generator, pSp and e4e (encoder + decoder), audio model, LPIPS backbones and heads, and
    narrow FID Inception and SyncNet files (``tiny_metrics``); return name -> path.

    A folder that already holds model files but is not a tiny pack (no ``TINY-PACK.json``: real
    weights, say) is refused unless ``force``: random weights must never replace real ones.
    ``arch`` ``stylegan3`` / ``stylegan3-r`` adds a tiny StyleGAN3 (config T / R) generator in
    talkcli's StyleGAN3 format (``tiny-stylegan3-t.safetensors`` / ``-r``) for ``--generator``;
    the rest of the pack (pSp, audio model) stays StyleGAN2's.
    """
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.audio import write_tiny_audio_model
    from talkcli.tiny.perceptual import write_tiny_lpips_files
    from talkcli.tiny.psp import (
        n_styles_for_size,
        tiny_encoder_state_dict,
        write_e4e_checkpoint,
        write_psp_checkpoint,
    )
    from talkcli.tiny.stylegan2 import tiny_generator_state_dict

    if arch not in GENERATOR_ARCHS:
        raise UserError(f"--arch {arch}: expected one of {', '.join(GENERATOR_ARCHS)}")
    if size not in SIZES:
        raise UserError(f"--size {size}: expected one of {', '.join(map(str, SIZES))}")
    root = ensure_folder(folder, "folder for the tiny pack")
    real = [e.filename for e in registry.MANIFEST if (root / e.relpath).is_file()]
    if real and not force and not (root / PACK_NOTE).is_file():
        raise OutputError(
            f"{root}: holds model files that are not a tiny pack ({', '.join(real[:3])}); "
            "random weights would replace them (choose an empty folder, or --force)"
        )
    written: dict[str, Path] = {}

    g_sd = tiny_generator_state_dict(size, seed=seed)
    G = generator_from_state_dict(g_sd)
    latent_avg = G.mean_latent(10_000, seed=seed)  # (512,)
    g_path = root / registry.get("stylegan2-ffhq").relpath
    with atomic_output(g_path) as tmp:
        torch.save({"g_ema": g_sd, "latent_avg": latent_avg}, tmp)
    written["stylegan2-ffhq"] = g_path

    n_styles = n_styles_for_size(size)
    e_sd = tiny_encoder_state_dict(n_styles=n_styles, seed=seed)
    psp_path = root / registry.get("psp-ffhq-encode").relpath
    write_psp_checkpoint(psp_path, e_sd, g_sd, latent_avg.repeat(n_styles, 1))
    written["psp-ffhq-encode"] = psp_path
    e4e_sd = tiny_encoder_state_dict(n_styles=n_styles, seed=seed + 1)
    e4e_path = root / registry.get("e4e-ffhq-encode").relpath
    write_e4e_checkpoint(e4e_path, e4e_sd, g_sd, latent_avg.repeat(n_styles, 1))
    written["e4e-ffhq-encode"] = e4e_path

    written["audio2latent"] = write_tiny_audio_model(root, g_path, G, seed=seed)

    for net in ("alex", "vgg"):
        files = write_tiny_lpips_files(root, net, seed=seed)
        backbone, heads = LPIPS_FILES[net]
        written[backbone] = files["backbone"]
        written[heads] = files["heads"]

    from talkcli.tiny.metrics import write_metric_model_files  # evaluate: FID, SyncNet

    written.update(write_metric_model_files(root, seed=seed))
    written.update(_write_speech_feature_model(root, g_path, G, seed))

    if arch != "stylegan2":
        from talkcli.tiny.stylegan3 import TINY_FILES, write_tiny_stylegan3

        radial = arch == "stylegan3-r"
        written[arch] = write_tiny_stylegan3(root / TINY_FILES[arch], size, seed, radial=radial)

    note = {
        "warning": "random weights for tests and demos; outputs are not faces",
        "size": size,
        "seed": seed,
        "talkcli": __version__,
        "files": {name: str(path.relative_to(root)) for name, path in written.items()},
    }
    write_json_atomic(root / PACK_NOTE, note, indent=2)
    return written


def _write_speech_feature_model(
    root: Path, g_path: Path, G: torch.nn.Module, seed: int
) -> dict[str, Path]:
    """The tiny random Wav2Vec2 folder (``wav2vec2-tiny/``, Hugging Face format) and an audio
    model that reads it (``animate --model PACK/audio2latent-wav2vec2-tiny.safetensors
    --feature-model PACK/wav2vec2-tiny``); skipped with a note without ``transformers``."""
    if importlib.util.find_spec("transformers") is None:
        log.info("wav2vec2-tiny: skipped (needs transformers: pip install talkcli[ssl])")
        return {}
    from talkcli.audio.ssl import load_ssl_model
    from talkcli.tiny.audio import write_tiny_audio_model
    from talkcli.tiny.ssl import TINY_SSL_DIR, write_tiny_wav2vec2

    folder = write_tiny_wav2vec2(root / TINY_SSL_DIR, seed=seed)
    settings = load_ssl_model("wav2vec2", folder).settings()
    model = write_tiny_audio_model(
        root, g_path, G, seed=seed, features=settings, filename=SSL_AUDIO_MODEL
    )
    return {TINY_SSL_DIR: folder, "audio2latent-wav2vec2": model}
