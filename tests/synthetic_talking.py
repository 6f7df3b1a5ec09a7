"""Synthetic talking-head clips whose motion is known: the learnability test's data.

Each clip: speech (espeak-ng, else speech-like synthesis), its loudness envelope a_t in [0, 1]
per video frame, and a W+ trajectory ``w_t = w_speaker + strength * a_t * direction`` (one fixed
direction for every clip) rendered with the tiny generator and muxed with its audio into
``DIR/<speaker>/<clip>.mp4``. A model that learns audio -> latent motion must learn a_t from
the MFCC windows (the loudness itself is not in them: c0 is dropped, so it has to come from the
spectral shape of speech versus pauses and of loud versus quiet sounds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tests.speech import SAMPLE_RATE, espeak, has_espeak, synth_speech

VOICES = ("en", "en-us", "en-gb-x-rp")
SPEEDS = (140, 170)


@dataclass
class SyntheticSet:
    root: Path
    videos: dict[str, list[Path]] = field(default_factory=dict)  # speaker -> clips
    envelopes: dict[str, np.ndarray] = field(default_factory=dict)  # clip stem -> (T,)
    direction: np.ndarray | None = None  # (n_latent, 512) unit


def loudness_envelope(samples: np.ndarray, n_frames: int, fps: float = 25.0) -> np.ndarray:
    """RMS in 80 ms around each frame centre, smoothed, scaled so its 95th percentile is 1."""
    half = int(0.04 * SAMPLE_RATE)
    rms = np.zeros(n_frames)
    for t in range(n_frames):
        c = int((t + 0.5) / fps * SAMPLE_RATE)
        seg = samples[max(c - half, 0) : c + half]
        rms[t] = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if len(seg) else 0.0
    kernel = np.exp(-0.5 * (np.arange(-3, 4) / 1.0) ** 2)
    smooth = np.convolve(np.pad(rms, 3, mode="edge"), kernel / kernel.sum(), mode="valid")
    scale = np.percentile(smooth, 95)
    return np.clip(smooth / scale, 0.0, 1.0) if scale > 0 else smooth


def make_clips(
    root: Path,
    generator_path: Path,
    n_speakers: int = 4,
    clips_per_speaker: int = 3,
    strength: float = 2.0,
    identity_spread: float = 1.0,
    lead_in: float = 0.3,
    tail: float = 0.0,
    seed: int = 0,
    speech_seconds: float = 2.5,
) -> SyntheticSet:
    """Write the clips (see the module docstring) and return what they are made of.

    ``identity_spread`` scales how far the speakers' codes lie from their mean (1: independent
    mapped codes); ``lead_in`` / ``tail`` seconds of silence frame each sentence;
    ``speech_seconds``: length of the synthetic speech when espeak-ng is not installed.
    """
    from talkcli.io.video import VideoWriter
    from talkcli.models.stylegan2 import load_generator

    G = load_generator(generator_path)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w_std = G.mapping(torch.randn(512, G.style_dim, generator=gen)).std(0).mean()
        direction = torch.randn(G.n_latent, G.style_dim, generator=gen)
        direction = direction / direction.norm()
        bases = G.mapping(torch.randn(n_speakers, G.style_dim, generator=gen))  # (S, 512)
        bases = bases.mean(0) + identity_spread * (bases - bases.mean(0))
    step = strength * float(w_std) * np.sqrt(G.n_latent * G.style_dim)  # full-swing distance
    out = SyntheticSet(root, direction=direction.numpy())
    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    index = 0
    for s in range(n_speakers):
        speaker = f"spk{s}"
        (root / speaker).mkdir(exist_ok=True)
        out.videos[speaker] = []
        for c in range(clips_per_speaker):
            if has_espeak():
                from tests.speech import SENTENCES

                text = SENTENCES[index % len(SENTENCES)]
                samples = espeak(
                    text, wav_dir, f"s{index}", SPEEDS[index % 2], VOICES[index % len(VOICES)]
                )
            else:
                samples = synth_speech(speech_seconds, seed=100 + index)
            samples = np.concatenate(
                [
                    np.zeros(int(lead_in * SAMPLE_RATE), np.float32),
                    samples,
                    np.zeros(int(tail * SAMPLE_RATE), np.float32),
                ]
            )
            n_frames = int(np.ceil(len(samples) / SAMPLE_RATE * 25))
            env = loudness_envelope(samples, n_frames)
            w = bases[s][None, None].expand(n_frames, G.n_latent, -1) + (
                step * torch.from_numpy(env).float()[:, None, None] * direction[None]
            )  # (T, n_latent, 512)
            with torch.no_grad():
                img = G.synthesis(w, noise_mode="const")  # (T, 3, S, S) in [-1, 1]
            frames = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
            path = root / speaker / f"clip{c}.mp4"
            with VideoWriter(path, 25.0, audio=(samples, SAMPLE_RATE), crf=12) as writer:
                writer.write(frames)
            out.videos[speaker].append(path)
            out.envelopes[f"{speaker}/{path.stem}"] = env
            index += 1
    return out


def write_sensitive_encoder(path: Path, generator_path: Path, gain: float = 300.0) -> Path:
    """A narrow random pSp file whose codes move with the picture as much as a real pSp's do.

    The tiny pack's random encoder maps the synthetic clips' motion to code changes of ~1e-4
    (its random style heads have a tiny gain), far below anything a model can be asked to learn;
    this one scales the style heads' linear layers by ``gain`` (codes then move ~0.05 per value
    over a clip, as pSp codes of a talking face do) and uses the narrowest widths, which also
    makes ``train prepare`` several times faster.
    """
    from talkcli.tiny.psp import tiny_encoder_state_dict, write_psp_checkpoint
    from talkcli.weights.safe_load import load_torch_file

    g = load_torch_file(generator_path)
    n_latent = 2 * _log2_size(g) - 2
    sd = tiny_encoder_state_dict(n_styles=n_latent, widths=(2, 4, 6, 8), style_hidden=8, seed=0)
    for key in sd:
        if key.endswith("linear.weight"):
            sd[key] = sd[key] * gain
    return write_psp_checkpoint(path, sd, g["g_ema"], g["latent_avg"].repeat(n_latent, 1))


def _log2_size(ckpt: dict) -> int:
    """log2 of the generator's output size, from its last noise buffer."""
    noises = [k for k in ckpt["g_ema"] if k.startswith("noises.noise_")]
    last = max(noises, key=lambda k: int(k.rsplit("_", 1)[1]))
    return int(ckpt["g_ema"][last].shape[-1]).bit_length() - 1
