"""``talkcli animate``: photo + speech -> 1024x1024 lip-synced video, one at a time or in batches.

The chain (thesis second model), each stage a plain function:

* ``identity.prepare_identity``: align the photo (or take it ``--aligned``) -> pSp W+ code of the
  identity -> optional PTI (``--tune``); every step cached by content hash (``cache.Cache``).
* ``motion``: the W+ stream. Speech decoded once to a temporary file and read back in segments
  -> MFCC windows chunk by chunk (``talkcli.audio.features.iter_mfcc_windows``) -> the audio
  model's streaming step (``Audio2Latent.displacements``) with its LSTM state carried across
  chunks -> displacements -> streaming Gaussian smoothing, ``--motion-scale``, ``--edit`` -> W+
  per frame; or the displacements of a driving clip (``--driving``), or a saved trajectory
  (``trajectory``: the .npz file format).
* ``render``: W+ batches -> generator (fixed noise, autocast ``--dtype``) -> uint8 frames;
  ``sink``: a writer thread (optional paste-back into the photo) -> ffmpeg (H.264 + AAC) as
  frames are made.
* ``pipeline.animate_job`` runs one job and writes the run manifest beside the video;
  ``batch.run_batch`` runs many (pairs of folders, a CSV job list), with shards and resume.

Memory does not grow with the audio's length: every stage holds a bounded number of frames.
This ``__init__`` imports nothing heavy (the CLI's start-up stays fast).
"""
