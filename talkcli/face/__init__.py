"""Faces: landmark backends, FFHQ alignment, inverse warp and paste-back.

* ``talkcli.face.ffhq``: the FFHQ alignment math (NVlabs ``recreate_aligned_images``), exact and
  fast paths, ``AlignMeta`` (quad + aligned->source matrix), temporal smoothing of crops.
* ``talkcli.face.landmarks``: FAN (face-alignment), MTCNN and JSON-file backends, face choice.
* ``talkcli.face.mtcnn``: MTCNN P/R/O-Net in PyTorch with the standard pipeline.
* ``talkcli.face.paste``: ``paste_back`` of an aligned (generated) frame into its source.
* ``talkcli.face.align``: image / video / batch orchestration used by ``talkcli align``.
"""

from talkcli.face.ffhq import (
    AlignMeta,
    QuadParams,
    align_image_exact,
    align_image_fast,
    align_quad_exact,
    align_quad_fast,
    ffhq_quad,
    quad_params,
    smooth_quad_params,
    transform_points,
)
from talkcli.face.paste import inverse_warp, paste_back, paste_mask

__all__ = [
    "AlignMeta",
    "QuadParams",
    "align_image_exact",
    "align_image_fast",
    "align_quad_exact",
    "align_quad_fast",
    "ffhq_quad",
    "inverse_warp",
    "paste_back",
    "paste_mask",
    "quad_params",
    "smooth_quad_params",
    "transform_points",
]
