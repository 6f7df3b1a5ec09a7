"""Motion: where the face's movement comes from, as streams of W+ chunks (n, n_latent, 512).

* ``sources``: ``Motion`` and the three motions ``animate`` renders: ``audio_motion`` (speech
  through the audio model), ``driving_motion`` (another face's clip through pSp),
  ``replay_motion`` (a saved trajectory file, ``talkcli.animate.trajectory``);
* ``audio``: ``audio_displacements``, the MFCC windows of ``talkcli.audio.features`` through the
  model's streaming step ``Audio2Latent.displacements``, the LSTM state carried across chunks;
* ``driving``: ``prepare_driving`` / ``DrivingSource``, the driving clip aligned and encoded;
* ``shaping``: streaming Gaussian smoothing, ``--motion-scale``, ``--edit`` directions,
  ``compose`` and ``rebatch``.

Every stage takes and yields chunks of frames, so memory is bounded by the chunk size whatever
the length. Importing this package loads numpy only (torch and the models load on use).
"""

from talkcli.animate.motion.audio import audio_displacements
from talkcli.animate.motion.shaping import (
    GaussianStream,
    compose,
    edit_offset,
    gaussian_weights,
    layer_mask,
    load_direction,
    rebatch,
    smooth_stream,
)
from talkcli.animate.motion.sources import (
    Motion,
    audio_motion,
    driving_motion,
    replay_motion,
    shaped,
)

__all__ = [
    "GaussianStream",
    "Motion",
    "audio_displacements",
    "audio_motion",
    "compose",
    "driving_motion",
    "edit_offset",
    "gaussian_weights",
    "layer_mask",
    "load_direction",
    "rebatch",
    "replay_motion",
    "shaped",
    "smooth_stream",
]
