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
        for windows in iter_mfcc_windows(audio, fps, chunk_frames):  # (n, 12, 28)
            x = torch.from_numpy(windows)[None].to(model.device)  # (1, n, 12, 28)
            d, state = model.displacements(x, w_id, state)  # (1, n, n_latent, 512)
            yield d[0].float().cpu().numpy()
