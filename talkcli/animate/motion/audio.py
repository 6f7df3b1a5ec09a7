"""Speech as motion: the MFCC windows of ``talkcli.audio.features`` through the audio model.

``audio_displacements(model, audio, w_identity, fps)`` streams the decoded audio
(``talkcli.io.audio.DecodedAudio``, read segment by segment) through ``iter_mfcc_windows`` and
the model's streaming step ``Audio2Latent.displacements``, with the LSTM state carried from chunk
to chunk: the displacements equal one call on the whole audio, in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from talkcli.animate.options import CHUNK_FRAMES
from talkcli.audio.features import SampleSource, iter_mfcc_windows

if TYPE_CHECKING:
    from talkcli.models.audio2latent import Audio2Latent


def attach_speech_features(model: Audio2Latent, folder: str | None, device: object) -> None:
    """Load the feature model an SSL audio model reads (``--feature-model``) onto the model
    (``model.speech_features``, reused while the folder stays the same), after checking it is the
    one the model was trained with (kind, layer, sha256); an MFCC model refuses a folder."""
    from talkcli.models.audio2latent import check_feature_match

    loaded = getattr(model, "speech_features", None)
    if folder is None or model.feature_settings is None:
        check_feature_match(model, None if folder is None else {}, "the audio model", folder)
        return
    if loaded is not None and str(loaded.folder) == str(folder):
        return
    from talkcli.audio.ssl import load_ssl_model

    want = model.feature_settings
    ssl = load_ssl_model(want["kind"], folder, int(want["layer"]), str(device))
    check_feature_match(model, ssl.settings(), "the audio model", folder)
    model.speech_features = ssl


def audio_displacements(
    model: Audio2Latent,
    audio: SampleSource | np.ndarray,  # a DecodedAudio, or 16 kHz samples (T,)
    w_identity: np.ndarray,  # (n_latent, 512)
    fps: float,
    chunk_frames: int = CHUNK_FRAMES,
) -> Iterator[np.ndarray]:
    """Displacements d_t (n, n_latent, 512) float32 chunk by chunk, the LSTM state carried
    across chunks (so chunked equals one-shot); ``w_identity + d_t`` is the model's w_t."""
    import torch

    w_id = torch.from_numpy(np.ascontiguousarray(w_identity, dtype=np.float32))[None]
    w_id = w_id.to(model.device)  # (1, n_latent, 512)
    state = None
    with torch.no_grad():
        for windows in _windows(model, audio, fps, chunk_frames):  # (n, 12, 28) or (n, D, 14)
            x = torch.from_numpy(windows)[None].to(model.device)  # (1, n, 12, 28)
            d, state = model.displacements(x, w_id, state)  # (1, n, n_latent, 512)
            yield d[0].float().cpu().numpy()


def _windows(model: Audio2Latent, audio, fps: float, chunk_frames: int) -> Iterator[np.ndarray]:
    """The model's speech windows, streamed: MFCC, or its SSL features (``attach_speech_features``
    first)."""
    if model.feature_settings is None:
        return iter_mfcc_windows(audio, fps, chunk_frames)
    from talkcli.audio.ssl import iter_ssl_windows

    ssl = getattr(model, "speech_features", None)
    if ssl is None:
        check_feature_match_none(model)
    return iter_ssl_windows(ssl, audio, fps, chunk_frames)


def check_feature_match_none(model: Audio2Latent) -> None:
    """An SSL model without its feature model: the one-line refusal naming --feature-model."""
    from talkcli.models.audio2latent import check_feature_match

    check_feature_match(model, None, "the audio model")
