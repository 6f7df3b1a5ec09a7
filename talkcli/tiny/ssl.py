"""A tiny random Wav2Vec2 model folder in the Hugging Face format (tests, demos).

``write_tiny_wav2vec2(folder)`` writes ``config.json`` + ``model.safetensors`` of a 2-layer,
32-wide ``Wav2Vec2Model`` with random weights: it loads through exactly the code a real folder
(``facebook/wav2vec2-base-960h``) does (``talkcli.audio.ssl.load_ssl_model``). Needs the
``transformers`` library (the ``ssl`` extra).
"""

from __future__ import annotations

from pathlib import Path

TINY_SSL_DIR = "wav2vec2-tiny"


def tiny_wav2vec2_config(**overrides):
    """The tiny ``Wav2Vec2Config``: the base model's conv encoder strides and kernels (so rows
    come at 50 Hz from the same receptive field) with 32 channels, 2 transformer layers."""
    from talkcli.audio.ssl import require_transformers

    transformers = require_transformers()
    settings = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
    )
    settings.update(overrides)
    return transformers.Wav2Vec2Config(**settings)


def write_tiny_wav2vec2(folder: str | Path, seed: int = 0, **overrides) -> Path:
    """Write the tiny random Wav2Vec2 folder ``folder`` (config.json + model.safetensors);
    ``overrides`` go to ``tiny_wav2vec2_config`` (e.g. ``num_hidden_layers=6``)."""
    import torch

    from talkcli.audio.ssl import require_transformers

    transformers = require_transformers()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = transformers.Wav2Vec2Model(tiny_wav2vec2_config(**overrides))
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    return out
