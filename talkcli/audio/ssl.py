"""Self-supervised speech features (issue 17): Wav2Vec2 / HuBERT hidden states at 50 Hz.

* ``load_ssl_model(kind, folder, layer)``: a ``Wav2Vec2Model`` / ``HubertModel`` folder in the
  Hugging Face format (``config.json`` + ``model.safetensors``, or ``pytorch_model.bin`` read with
  ``weights_only``), loaded by ``transformers`` from that folder only (``local_files_only``:
  never a hub). ``transformers`` is the optional ``ssl`` extra, imported here lazily; without it
  the SSL options fail with one line naming ``pip install talkcli[ssl]`` (exit 2).
* Rows: the model's ``hidden_states[layer]`` (``output_hidden_states=True``), one per 20 ms: row
  ``r`` is the conv encoder's frame over samples ``[320 r, 320 r + 400)``; ``M = (S - 400) //
  320 + 1`` rows (audio shorter than 400 samples is padded with zeros to one row). Raw samples
  go in (no per-utterance normalisation: it cannot be streamed); values are raw hidden states,
  normalised by the audio model with the training set's mean and std (like the MFCCs).
* Streaming: the transformer attends over its whole input, so rows are defined block by block:
  rows ``[k B, (k + 1) B)`` (B = 500 rows, 10 s) are computed from the audio of rows
  ``[k B - C, (k + 1) B + C)`` (C = 100 rows, 2 s of context each side, clipped to the audio;
  the last block reads to the end of the audio). Any chunking of the frames therefore gives the
  same values (chunked == one-shot), memory is bounded by one block whatever the audio length,
  and audio up to ``B + C`` rows (12 s) gives exactly ``transformers``' output on the whole clip.
* Windows: one 280 ms window per video frame, 14 rows, centred like the MFCC windows:
  ``s = floor(50 (t + 0.5) / fps - 6.5)``, rows ``[s, s + 14)``, edges repeated; float32
  (T, D, 14).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkcli.audio.features import (
    FEATURE_KINDS,
    SampleSource,
    _ArraySource,
    n_frames,
    window_starts_at,
)
from talkcli.errors import ModelFileError, UserError

log = logging.getLogger(__name__)

SSL_KINDS = tuple(name for name, spec in FEATURE_KINDS.items() if spec.ssl)
SSL_RATE = 50  # rows per second
SSL_WINDOW = 14  # rows per 280 ms window
HOP = 320  # samples between rows
FIELD = 400  # samples of one row's receptive field in the conv encoder
BLOCK_ROWS = 500  # rows defined together (10 s)
CONTEXT_ROWS = 100  # rows of audio context on each side of a block (2 s)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INSTALL_HINT = "pip install talkcli[ssl]"
_CLASSES = {"wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel"}


def require_transformers(option: str = "--features") -> Any:
    """The ``transformers`` module, or a one-line UserError (exit 2) saying what to install."""
    try:
        import transformers
    except ImportError:
        raise UserError(
            f"{option} wav2vec2/hubert needs the transformers library: {INSTALL_HINT}"
        ) from None
    return transformers


def default_layer(num_hidden_layers: int) -> int:
    """The default ``--feature-layer``: two thirds of the way up the transformer (layer 8 of
    wav2vec2-base's 12, 16 of a large model's 24). Why: layer-wise probes of pretrained
    Wav2Vec2 / HuBERT (Pasad et al. 2021) find phonetic content peaking in the middle-upper
    layers while the top layers of a pretrained model serve its pretraining target; lip motion
    follows the phones. Measured on the synthetic corpus (``scripts/ssl_voice_holdout.py
    --sweep-layers``, docs/train.md): with tiny *random* models every layer scores alike
    (held-out identity and voice r within 0.004 over layers 0..6), which neither supports nor
    contradicts the rule: random weights carry no learned phonetics and the synthetic motion
    follows loudness, so the choice rests on the literature."""
    return max(1, round(2 * num_hidden_layers / 3))


def weights_file(folder: Path) -> Path:
    """The folder's weights file (safetensors first), or a one-line ModelFileError."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelFileError(
        folder,
        f"holds no {' or '.join(WEIGHT_FILES)}",
        "pass a Hugging Face model folder (config.json + model.safetensors)",
    )


@dataclass
class SSLModel:
    """A loaded feature model and what a checkpoint records about it."""

    kind: str
    folder: Path
    layer: int
    sha256: str
    config: dict[str, Any]
    dim: int
    module: Any = field(repr=False)  # the transformers model, eval mode

    def settings(self) -> dict[str, Any]:
        """What an audio model trained on these features records (``animate`` checks it)."""
        return {
            "kind": self.kind,
            "layer": self.layer,
            "sha256": self.sha256,
            "config": self.config,
            "dim": self.dim,
            "rate": SSL_RATE,
            "window": SSL_WINDOW,
            "window_rule": "s = floor(50 * (t + 0.5) / fps - 7 + 0.5); rows [s, s + 14), "
            "edges repeated",
            "blocks": {"rows": BLOCK_ROWS, "context": CONTEXT_ROWS},
        }


def load_ssl_model(
    kind: str, folder: str | Path, layer: int | None = None, device: str = "cpu"
) -> SSLModel:
    """Load a Wav2Vec2 / HuBERT folder offline; ``layer`` None: ``default_layer``."""
    from talkcli.io.files import sha256_file

    if kind not in SSL_KINDS:
        raise UserError(f"--features {kind!r}: expected one of {', '.join(SSL_KINDS)}")
    transformers = require_transformers()
    root = Path(folder)
    if not (root / "config.json").is_file():
        raise ModelFileError(root, "holds no config.json", "pass a Hugging Face model folder")
    weights = weights_file(root)
    cls = getattr(transformers, _CLASSES[kind])
    transformers.utils.logging.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(str(root), local_files_only=True)
    except Exception as exc:
        raise ModelFileError(root / "config.json", f"cannot be read ({str(exc)[:120]})") from None
    if config.model_type != kind:
        raise ModelFileError(
            root, f"is a {config.model_type!r} model, not {kind!r}", f"pass --features {kind}"
        )
    n_layers = int(config.num_hidden_layers)
    layer = default_layer(n_layers) if layer is None else int(layer)
    if not 0 <= layer <= n_layers:
        raise UserError(f"--feature-layer {layer}: this model has hidden states 0..{n_layers}")
    try:
        module = cls.from_pretrained(
            str(root),
            local_files_only=True,
            use_safetensors=weights.suffix == ".safetensors",
            use_kernels=False,  # hub kernels: never fetched
        )
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(weights, f"cannot be loaded ({first[:120]})") from None
    module.eval().to(device)
    log.info(f"speech features: {kind} layer {layer} of {n_layers} from {root}")
    return SSLModel(
        kind, root, layer, sha256_file(weights), config.to_dict(), int(config.hidden_size), module
    )


def n_ssl_rows(n_samples: int) -> int:
    """Rows the conv encoder makes from ``n_samples`` samples (>= 1: short audio is padded)."""
    return (max(int(n_samples), FIELD) - FIELD) // HOP + 1


def hidden_states(model: SSLModel, samples: np.ndarray) -> np.ndarray:
    """``hidden_states[layer]`` of the model on ``samples`` (S,) in one call: float32 (M, D)."""
    import torch

    x = np.asarray(samples, dtype=np.float32)
    if len(x) < FIELD:
        x = np.concatenate([x, np.zeros(FIELD - len(x), np.float32)])
    device = next(model.module.parameters()).device
    with torch.no_grad():
        out = model.module(torch.from_numpy(x)[None].to(device), output_hidden_states=True)
    return out.hidden_states[model.layer][0].float().cpu().numpy()  # (M, D)


class BlockRows:
    """The rows of one audio, block by block (see the module docstring); keeps the blocks the
    last request touched, so a stream of increasing requests computes each block once."""

    def __init__(self, model: SSLModel, source: SampleSource) -> None:
        self.model = model
        self.source = source
        self.n_rows = n_ssl_rows(source.n_samples)
        self._cache: dict[int, np.ndarray] = {}

    def block(self, k: int) -> np.ndarray:
        """Rows ``[k B, min((k + 1) B, M))`` (n, D) float32."""
        if k not in self._cache:
            a, b = k * BLOCK_ROWS, min((k + 1) * BLOCK_ROWS, self.n_rows)
            lo, hi = max(a - CONTEXT_ROWS, 0), min(b + CONTEXT_ROWS, self.n_rows)
            end = self.source.n_samples if hi == self.n_rows else (hi - 1) * HOP + FIELD
            states = hidden_states(self.model, self.source.read(lo * HOP, end))  # (hi - lo, D)
            self._cache[k] = states[a - lo : b - lo]
        return self._cache[k]

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` (hi - lo, D) float32; blocks before ``lo``'s are forgotten."""
        first, last = lo // BLOCK_ROWS, (hi - 1) // BLOCK_ROWS
        for k in [k for k in self._cache if k < first]:
            del self._cache[k]
        parts = np.concatenate([self.block(k) for k in range(first, last + 1)], axis=0)
        return parts[lo - first * BLOCK_ROWS : hi - first * BLOCK_ROWS]


def _source(samples: np.ndarray | SampleSource) -> SampleSource:
    is_source = hasattr(samples, "read") and hasattr(samples, "n_samples")
    return samples if is_source else _ArraySource(samples)  # type: ignore[return-value]


def ssl_rows(model: SSLModel, samples: np.ndarray | SampleSource) -> np.ndarray:
    """All rows of the audio (M, D) float32, block by block (what ``train prepare`` stores)."""
    rows = BlockRows(model, _source(samples))
    return rows.rows(0, rows.n_rows)


def iter_ssl_windows(
    model: SSLModel,
    samples: np.ndarray | SampleSource,
    fps: float = 25.0,
    chunk_frames: int = 500,
) -> Iterator[np.ndarray]:
    """One 14-row window per video frame, float32 (n, D, 14) chunk by chunk, in frame order;
    the values do not depend on ``chunk_frames`` and memory is bounded by one block."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    source = _source(samples)
    if source.n_samples < 1:
        raise ValueError("samples are empty: no audio to compute features from")
    rows = BlockRows(model, source)
    m = rows.n_rows
    total = n_frames(source.n_samples, fps)
    for t0 in range(0, total, chunk_frames):
        starts = window_starts_at(range(t0, min(t0 + chunk_frames, total)), fps, SSL_RATE,
                                  SSL_WINDOW)  # fmt: skip
        lo = int(np.clip(starts[0], 0, m - 1))
        hi = int(np.clip(starts[-1] + SSL_WINDOW, lo + 1, m))
        part = rows.rows(lo, hi)  # (hi - lo, D)
        idx = np.clip(starts[:, None] + np.arange(SSL_WINDOW)[None, :], 0, m - 1) - lo
        yield np.ascontiguousarray(part[idx].transpose(0, 2, 1), dtype=np.float32)


def ssl_windows(
    model: SSLModel, samples: np.ndarray | SampleSource, fps: float = 25.0
) -> np.ndarray:
    """All windows (T, D, 14) float32: the concatenation of ``iter_ssl_windows``."""
    chunks = list(iter_ssl_windows(model, samples, fps))
    return np.concatenate(chunks, axis=0)
