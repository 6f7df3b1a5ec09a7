"""The identity of a run: photo -> aligned face -> pSp W+ code -> optionally a PTI-tuned generator.

Each step is cached by content (``talkcli.animate.cache``): the same photo with new audio goes
straight to rendering, skipping detection, the encoder and tuning (the manifest's ``cache``
block says which steps hit). Keys:

* ``align``: the photo's bytes, the alignment size, how landmarks were found (the given points,
  or the detector backend and its model files' hashes) and ``--face-index``;
* ``identity``: the aligned pixels and the pSp file's hash;
* ``tuned``: the aligned pixels, the pivot code, the base generator's and LPIPS files' hashes
  and the PTI settings (tune-pti's defaults; ``--tune-steps`` and ``--seed``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkcli import __version__
from talkcli.animate.cache import Cache, content_key
from talkcli.animate.options import AnimateOptions
from talkcli.errors import InputFileError, UserError
from talkcli.io.images import read_image_rgb

HIT, MISS, OFF, SKIPPED = "hit", "miss", "off", "skipped"


@dataclass
class Identity:
    """Everything rendering needs about the face."""

    image: Path | None
    image_sha256: str | None
    source: np.ndarray | None  # (H, W, 3) uint8: the photo, for paste-back
    aligned: np.ndarray | None  # (S, S, 3) uint8
    align_meta: dict[str, Any] | None  # "matrix" (aligned -> photo pixels), "size", landmarks...
    w: np.ndarray  # (n_latent, 512) float32: w_I
    generator: Any  # the generator to render with: the base one or a tuned copy
    tuned_file: Path | None = None  # the cached tuned generator, if any
    cache: dict[str, str] = field(default_factory=dict)  # stage -> hit | miss | off | skipped
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # detector, faces, PTI losses


def _array_sha(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _status(cache: Cache, hit: bool) -> str:
    return HIT if hit else (MISS if cache.enabled else OFF)


# -- alignment ----------------------------------------------------------------------------------


def _given_landmarks(opts: AnimateOptions) -> np.ndarray | None:
    if opts.landmarks is None:
        return None
    from talkcli.face.landmarks import load_landmarks_file

    data = load_landmarks_file(opts.landmarks)
    if "landmarks" not in data:
        raise InputFileError(
            opts.landmarks,
            'has "frames" (for a video) but the input is a photo',
            'use {"landmarks": [[x, y], ...]}',
        )
    return np.asarray(data["landmarks"], dtype=np.float64)


def align_photo(
    image: Path,
    photo: np.ndarray,  # (H, W, 3) uint8
    image_sha: str,
    size: int,
    opts: AnimateOptions,
    models: Any,  # talkcli.animate.pipeline.Models
    cache: Cache,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """(aligned (size, size, 3) uint8, meta with ``matrix``/``size``, cache status).

    ``--aligned``: the photo is the aligned face (square), used as it is.
    """
    if opts.aligned:
        h, w = photo.shape[:2]
        if h != w:
            raise InputFileError(
                image,
                f"is {w}x{h}, but an aligned face is square",
                "drop --aligned to align the photo",
            )
        return photo, {"matrix": np.eye(3).tolist(), "size": w, "detector": "aligned"}, SKIPPED

    from talkcli.face.align import align_image_array, detect_face
    from talkcli.face.landmarks import FileLandmarks, check_landmarks_inside

    points = _given_landmarks(opts)
    if points is not None:
        finder: dict[str, Any] = {"landmarks": points.tolist()}
    else:
        finder = {"backend": models.detector_backend(), "files": models.detector_hashes()}
    key = content_key(
        "align",
        image=image_sha,
        size=int(size),
        warp="exact",
        finder=finder,
        face_index=opts.face_index,
    )
    found = cache.lookup("align", key, ".npz")
    if found is not None:
        try:
            with np.load(found, allow_pickle=False) as data:
                aligned = np.array(data["aligned"])
                meta = json.loads(str(data["meta"]))
            if aligned.shape == (size, size, 3) and aligned.dtype == np.uint8:
                return aligned, meta, HIT
        except Exception:  # damaged entry: rebuild it
            pass
        cache.discard(found)

    if points is not None:
        check_landmarks_inside(
            points, photo.shape[1], photo.shape[0], opts.landmarks, "--landmarks"
        )
        detector: Any = FileLandmarks(points)
    else:
        detector = models.detector()
    face, count = detect_face(photo, detector, opts.face_index, image)
    aligned, align_meta = align_image_array(photo, face.landmarks, size, exact=True)
    meta = {
        **align_meta.to_dict(),
        "detector": detector.name,
        "face_count": count,
        "score": face.score,
        "talkcli": __version__,
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, aligned=aligned, meta=np.array(json.dumps(meta)))

    cache.store("align", key, ".npz", write)
    return aligned, meta, _status(cache, False)


# -- identity code ------------------------------------------------------------------------------


def encode_identity(aligned: np.ndarray, models: Any, cache: Cache) -> tuple[np.ndarray, str]:
    """pSp W+ code of the aligned face: ((n_latent, 512) float32, cache status)."""
    key = content_key(
        "identity", aligned=_array_sha(aligned), encoder=models.sha(models.paths.encoder)
    )
    found = cache.lookup("identity", key, ".npy")
    n_latent, style_dim = models.latent_shape()
    if found is not None:
        try:
            w = np.load(found, allow_pickle=False)
            if w.shape == (n_latent, style_dim) and np.isfinite(w).all():
                return w.astype(np.float32), HIT
        except Exception:
            pass
        cache.discard(found)
    import torch

    E = models.encoder()
    with torch.no_grad():
        w = E.encode_images(aligned).float().cpu().numpy()[0]  # (n_latent, 512)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, w)

    cache.store("identity", key, ".npy", write)
    return w.astype(np.float32), _status(cache, False)


# -- PTI ----------------------------------------------------------------------------------------


def tuned_generator(
    aligned: np.ndarray,
    w: np.ndarray,
    opts: AnimateOptions,
    models: Any,
    cache: Cache,
    on_step: Any = None,
) -> tuple[Any, Path | None, str, dict[str, Any]]:
    """PTI on the identity with tune-pti's defaults: (generator, cached file, status, details)."""
    import torch

    from talkcli.device import resolve_dtype
    from talkcli.inversion.invert import frames_to_tensor
    from talkcli.inversion.pti import PTIConfig, pti_metadata, pti_summary, tune
    from talkcli.models.stylegan2 import check_savable, load_generator, save_generator

    dtype = resolve_dtype(opts.dtype, models.device)  # the cache key holds the precision used
    cfg = PTIConfig(steps=int(opts.tune_steps), seed=int(opts.seed), dtype=dtype)
    backbone, heads = models.paths.lpips
    key = content_key(
        "tuned",
        aligned=_array_sha(aligned),
        pivot=_array_sha(np.asarray(w, dtype=np.float32)),
        generator=models.sha(models.paths.generator),
        **({"network": models.paths.network} if models.paths.network != "G_ema" else {}),
        lpips=[models.sha(backbone), models.sha(heads)],
        config={k: v for k, v in vars(cfg).items()},
    )
    found = cache.lookup("tuned", key, ".pt")
    if found is not None:
        try:
            G = load_generator(found, device=models.device)
            return G, found, HIT, {"pti": pti_summary(G.metadata)}
        except Exception:
            cache.discard(found)
    base = models.generator()
    check_savable(base, models.paths.generator, "animate --tune")
    G = copy.deepcopy(base)
    lpips = models.lpips()
    device = models.device
    pivot = torch.from_numpy(np.asarray(w, dtype=np.float32))[None].to(device)  # (1, L, 512)
    target = frames_to_tensor(aligned[None], G.size, device)  # (1, 3, S, S)
    torch.manual_seed(int(opts.seed))
    result = tune(G, lpips, pivot, target, cfg, on_step=on_step)
    base_file = (models.paths.generator, models.sha(models.paths.generator))
    metadata = pti_metadata(result, base_file, {"kind": "animate"})
    stored = cache.store("tuned", key, ".pt", lambda tmp: save_generator(tmp, G, metadata))
    return G, stored, _status(cache, False), {"pti": pti_summary(metadata)}


# -- the whole identity -------------------------------------------------------------------------


def prepare_identity(
    image: Path | None,
    opts: AnimateOptions,
    models: Any,
    cache: Cache,
    *,
    w_identity: np.ndarray | None = None,
    on_tune_step: Any = None,
) -> Identity:
    """Align, encode and tune (each step cached) -> ``Identity``.

    ``w_identity`` (from a trajectory file) replaces the encoder, and the photo is then aligned
    only for ``--tune`` or ``--paste-back``; without ``image`` (a bare ``--from-trajectory``) the
    base generator is returned.
    """
    timings: dict[str, float] = {}
    status = {"align": SKIPPED, "identity": SKIPPED, "tune": SKIPPED}
    details: dict[str, Any] = {}
    photo = aligned = None
    meta = None
    image_sha = None
    size = models.generator_size()
    if image is not None:
        t = time.perf_counter()
        image_sha = cache.file_sha256(image)
        photo = read_image_rgb(image)
        if w_identity is None or opts.tune or opts.paste_back:
            aligned, meta, status["align"] = align_photo(
                image, photo, image_sha, size, opts, models, cache
            )
            details["detector"] = meta.get("detector")
            details["faces"] = meta.get("face_count")
        timings["align"] = time.perf_counter() - t
    if w_identity is None:
        if aligned is None:
            raise UserError("an identity needs a photo (--image) or a trajectory file")
        t = time.perf_counter()
        w, status["identity"] = encode_identity(aligned, models, cache)
        timings["identity"] = time.perf_counter() - t
    else:
        w = np.asarray(w_identity, dtype=np.float32)
    G, tuned_file = None, None
    if opts.tune:
        if aligned is None:
            raise UserError("--tune needs the photo (--image) to tune the generator on")
        t = time.perf_counter()
        G, tuned_file, status["tune"], more = tuned_generator(
            aligned, w, opts, models, cache, on_tune_step
        )
        details.update(more)
        timings["tune"] = time.perf_counter() - t
    if G is None:
        G = models.generator()
    return Identity(
        image=image,
        image_sha256=image_sha,
        source=photo,
        aligned=aligned,
        align_meta=meta,
        w=w,
        generator=G,
        tuned_file=tuned_file,
        cache=status,
        timings=timings,
        details=details,
    )


def identity_rendering(identity: Identity) -> np.ndarray:
    """The identity's own frame G(w_I), (S, S, 3) uint8 (what ``--motion-scale 0`` shows)."""
    import torch

    from talkcli.io.images import to_uint8_images

    G = identity.generator
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(identity.w)[None].to(G.device), noise_mode="const")
    return to_uint8_images(img)[0]
