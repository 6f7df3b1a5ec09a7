"""Tiny packs: random-weight model files in the official formats (tests, demos, new users).

Layer 3: the writers build the models (``talkcli.models``) and fit a PCA (``talkcli.train``), so
they live here rather than in ``talkcli.weights``, which only finds, checks and fetches files.
``talkcli.tiny.pack.write_tiny_pack`` writes a whole pack; the other modules one kind of file.
"""
