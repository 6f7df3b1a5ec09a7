"""The model runtime: which model files a run uses, found once, loaded once, checked together.

``ModelSet(weights_dir, device)`` is what animate, evaluate, train and tune-pti load networks
through:

* files by registry name (``talkcli.weights.registry``): an explicit path from the caller
  (``--generator``, ``--inception``...) wins, else the registry's search order; a missing file is
  the registry's one-line ModelFileError naming it and how to get it. ``find_model_files`` finds
  every file a set of ``ModelNeeds`` uses before any work starts;
* lazy loading: each network is loaded on first use (``generator()``, ``encoder()``,
  ``audio_model()``, ``detector()``, ``lpips(net)``, ``inception()``, ``syncnet()``, ``fan()``)
  and kept; ``load_seconds`` adds up the time spent;
* fit: the pSp encoder must give the generator's W+ shape, the audio model must be for its size
  (``preflight`` checks before any work);
* the device: one rule (``talkcli.device.choose_device``: under torchrun ``cuda:(LOCAL_RANK %
  GPUs)``);
* hashes: ``sha(path)`` for manifests (``talkcli.io.hashing.FileHashes``, or the run's cache).

Layer 3: imports models/weights/face lazily (``import talkcli.runtime`` stays torch-free).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkcli.constants import LPIPS_FILES
from talkcli.errors import ModelFileError, UserError
from talkcli.io.hashing import FileHashes

GENERATOR = "stylegan2-ffhq"
ENCODER = "psp-ffhq-encode"
AUDIO_MODEL = "audio2latent"


# -- finding files ----------------------------------------------------------------------------


def generator_file(
    explicit: Path | None, weights_dir: Path | None, encoder_path: Path | None, purpose: str
) -> Path:
    """``--generator PATH``; else the registry's StyleGAN2 file; else the pSp file's decoder."""
    from talkcli.weights import registry

    if explicit is not None:
        return registry.resolve_option(explicit, GENERATOR, weights_dir)
    found = registry.locate(GENERATOR, weights_dir) or encoder_path
    if found is not None:
        return found
    return registry.resolve(GENERATOR, weights_dir, purpose=purpose)


def lpips_files(net: str, weights_dir: Path | None, purpose: str) -> tuple[Path, Path]:
    """(backbone, heads) files of LPIPS-``net`` (``LPIPS_FILES``), both needed by ``purpose``."""
    from talkcli.weights import registry

    if net not in LPIPS_FILES:
        raise UserError(f"--lpips {net!r}: expected {' or '.join(LPIPS_FILES)}")
    backbone, heads = LPIPS_FILES[net]
    return (
        registry.resolve(backbone, weights_dir, purpose=purpose),
        registry.resolve(heads, weights_dir, purpose=purpose),
    )


def find_files(
    names: tuple[str, ...],
    weights_dir: Path | None,
    purpose: str,
    explicit: Path | None = None,
) -> dict[str, Path]:
    """Registry name -> path for ``names``; ``explicit`` (a ``--inception PATH`` style option)
    stands for the first name. A missing file: the registry's one-line ModelFileError."""
    from talkcli.weights import registry

    if explicit is not None:
        return {names[0]: registry.resolve_option(explicit, names[0], weights_dir, purpose)}
    return {n: registry.resolve(n, weights_dir, purpose=purpose) for n in names}


@dataclass
class ModelNeeds:
    """Which model files a run uses besides the generator (always)."""

    encoder: bool = False
    audio_model: bool = False
    detector: bool = False
    lpips: bool = False


@dataclass
class ModelPaths:
    """The resolved model files of a run (None: not needed)."""

    generator: Path | None = None
    encoder: Path | None = None
    audio_model: Path | None = None
    detector: str | None = None  # backend: fan | mtcnn
    detector_files: tuple[Path, ...] = ()
    lpips: tuple[Path, Path] | None = None  # (backbone, heads) of ``lpips_net``
    lpips_net: str = "alex"
    network: str = "G_ema"  # of an NVIDIA pickle generator (--network); other files ignore it

    def files(self) -> list[Path]:
        """Every resolved file (for output guards and manifests)."""
        out = [self.generator, self.encoder, self.audio_model, *self.detector_files]
        out += list(self.lpips or ())
        return [p for p in out if p is not None]


def find_model_files(
    needs: ModelNeeds,
    weights_dir: Path | None = None,
    *,
    generator: Path | None = None,
    encoder: Path | None = None,
    audio_model: Path | None = None,
    detector: str = "auto",
    lpips_net: str = "alex",
    purpose: str = "animate",
    network: str = "G_ema",
) -> ModelPaths:
    """Find every model file ``needs`` names, before any work; a missing one is a one-line
    ModelFileError naming it and how to get it (``weights fetch``, ``train``)."""
    from talkcli.face.landmarks import FAN_FILES, MTCNN_FILES, choose_backend
    from talkcli.weights import registry

    wd = weights_dir
    enc = registry.resolve_option(encoder, ENCODER, wd, purpose) if needs.encoder else None
    gen = generator_file(generator, wd, enc, purpose)
    audio = (
        registry.resolve_option(audio_model, AUDIO_MODEL, wd, purpose)
        if needs.audio_model
        else None
    )
    backend, det_files = None, ()
    if needs.detector:
        backend = choose_backend(detector, wd)
        names = FAN_FILES if backend == "fan" else MTCNN_FILES
        det_files = tuple(
            registry.resolve(n, wd, purpose=f"{purpose} --detector {backend}") for n in names
        )
    lpips = None
    if needs.lpips:
        lpips = lpips_files(lpips_net, wd, f"{purpose} --tune (LPIPS-{lpips_net})")
    return ModelPaths(gen, enc, audio, backend, det_files, lpips, lpips_net, network)


# -- the model set ----------------------------------------------------------------------------


class ModelSet:
    """A run's networks: files found by registry name, each loaded once on first use, checked
    against the generator, on one device.

    ``files``: registry name -> a path the caller chose (``--inception PATH``, a plan's
    resolved files); ``paths``: animate's resolved files (``find_model_files``); ``cache``: a
    run cache with ``file_sha256`` (animate's, so manifests and cache keys share its on-disk
    hashes), else ``hashes`` (a ``FileHashes``; one in memory by default).
    """

    def __init__(
        self,
        weights_dir: Path | None = None,
        device: Any = "auto",  # a --device spec or a torch.device
        *,
        paths: ModelPaths | None = None,
        files: Mapping[str, Path] | None = None,
        detector: str | None = None,
        lpips_net: str = "alex",
        cache: Any = None,
        hashes: FileHashes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        from talkcli.device import choose_device

        self.weights_dir = None if weights_dir is None else Path(weights_dir)
        self.device = choose_device(device, env)
        self.paths = paths or ModelPaths(lpips_net=lpips_net)
        self.files = dict(files or {})
        self._detector = detector or self.paths.detector
        self.lpips_net = lpips_net
        self.cache = cache
        self.hashes = hashes or FileHashes()
        self.load_seconds = 0.0
        self.generator_match: str | None = None  # exact | shape, once the audio model is checked
        self._loaded: dict[str, Any] = {}

    @classmethod
    def preloaded(cls, device: Any = "cpu", **models: Any) -> ModelSet:
        """A set whose networks are given (``fan=``, ``syncnet=``, ``detector=``...): tests and
        callers that already hold them."""
        out = cls(None, device)
        out._loaded.update(models)
        return out

    @property
    def loaded(self) -> frozenset[str]:
        """Names of the networks loaded so far (``generator``, ``encoder``, ``lpips-alex``...)."""
        return frozenset(self._loaded)

    # -- files --------------------------------------------------------------------------------

    def file(self, name: str, purpose: str = "") -> Path:
        """The file of registry ``name``: the caller's choice, else the registry's search."""
        if self.files.get(name) is not None:
            return Path(self.files[name])
        path = find_files((name,), self.weights_dir, purpose)[name]
        self.files[name] = path
        return path

    def sha(self, path: Path | None) -> str | None:
        """sha256 of a model file for manifests (remembered by path, size and mtime)."""
        if path is None:
            return None
        if self.cache is not None:
            return self.cache.file_sha256(path)
        return self.hashes.sha256(path)

    def _once(self, key: str, load: Callable[[], Any], timed: bool = True) -> Any:
        """``load()`` on first use, the kept result afterwards. ``timed``: add its time to
        ``load_seconds`` (loaders that load the generator on the way time themselves)."""
        if key not in self._loaded:
            self._loaded[key] = self._timed(load) if timed else load()
        return self._loaded[key]

    def _timed(self, load: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        try:
            return load()
        finally:
            self.load_seconds += time.perf_counter() - t

    def _path(self, attr: str, what: str) -> Path:
        path = getattr(self.paths, attr)
        if path is None:
            raise UserError(f"this job needs {what}, which was not resolved")
        return path

    # -- the generator and what must fit it ---------------------------------------------------

    def generator(self) -> Any:
        """The base generator (eval, frozen); ``paths.network`` of an NVIDIA pickle."""
        from talkcli.models.stylegan2 import load_generator

        path = self._path("generator", "the generator")
        return self._once(
            "generator",
            lambda: load_generator(path, self.device, network=self.paths.network),
        )

    def generator_size(self) -> int:
        return int(self.generator().size)

    def latent_shape(self) -> tuple[int, int]:
        """(W+ layers, style dim) of the generator."""
        G = self.generator()
        return int(G.n_latent), int(G.style_dim)

    def encoder(self) -> Any:
        """The pSp encoder; refuses one whose W+ does not fit the generator."""
        return self._once("encoder", self._load_encoder, timed=False)

    def _load_encoder(self) -> Any:
        from talkcli.models.psp import load_encoder

        path = self._path("encoder", "the pSp encoder")
        E = self._timed(lambda: load_encoder(path, self.device))
        n_latent, style_dim = self.latent_shape()
        if (E.n_styles, E.style_dim) != (n_latent, style_dim):
            raise ModelFileError(
                path,
                f"encodes {E.n_styles} W+ layers of {E.style_dim} but the generator "
                f"{self.paths.generator} has {n_latent} of {style_dim}",
                "pass the encoder trained for this generator (--encoder, --generator)",
            )
        return E

    def audio_model(self) -> Any:
        """The audio-to-latent model; refuses one trained for another generator size."""
        return self._once("audio_model", self._load_audio_model, timed=False)

    def _load_audio_model(self) -> Any:
        from talkcli.models.audio2latent import check_generator_match, load_audio2latent

        path = self._path("audio_model", "the audio model")
        A = self._timed(lambda: load_audio2latent(path, self.device))
        gen_path = self.paths.generator
        exact = check_generator_match(A, self.generator(), path, gen_path, self.sha(gen_path))
        self.generator_match = "exact" if exact else "shape"
        return A

    def preflight(self, needs: ModelNeeds) -> None:
        """Load the generator and the audio model and check they fit, before any work."""
        self.generator()
        if needs.audio_model:
            self.audio_model()

    # -- face detection -----------------------------------------------------------------------

    def detector_backend(self) -> str:
        if self._detector is None:
            raise UserError("this job needs a face detector, which was not resolved")
        return self._detector

    def detector_hashes(self) -> list[str]:
        return [self.sha(p) for p in self.paths.detector_files]

    def detector(self) -> Any:
        """The face detector (``fan`` or ``mtcnn``); FAN is shared with ``fan()``."""
        if "detector" in self._loaded:
            return self._loaded["detector"]
        backend = self.detector_backend()
        if backend == "fan":
            return self._once("detector", self.fan, timed=False)
        from talkcli.face.landmarks import select_detector

        return self._once(
            "detector", lambda: select_detector(backend, self.weights_dir, str(self.device))
        )

    def fan(self) -> Any:
        """FAN landmarks (+ S3FD faces) through the registry."""
        from talkcli.face.landmarks import FANDetector

        return self._once("fan", lambda: FANDetector(self.weights_dir, str(self.device)))

    # -- perceptual and metric networks -------------------------------------------------------

    def lpips(self, net: str | None = None) -> Any:
        """LPIPS-``net`` (default ``lpips_net``) from ``paths.lpips`` or the registry."""
        net = net or self.lpips_net
        return self._once(f"lpips-{net}", lambda: self._load_lpips(net))

    def _load_lpips(self, net: str) -> Any:
        from talkcli.models.perceptual import load_lpips

        if self.paths.lpips is not None and net == self.paths.lpips_net:
            backbone, heads = self.paths.lpips
        else:
            names = LPIPS_FILES.get(net)
            if names is None:
                raise UserError(f"--lpips {net!r}: expected {' or '.join(LPIPS_FILES)}")
            backbone, heads = (self.file(n, f"LPIPS-{net}") for n in names)
        return load_lpips(net, device=self.device, backbone_path=backbone, heads_path=heads)

    def inception(self) -> Any:
        """The FID Inception network (``fid-inception``)."""
        from talkcli.models.inception import load_inception

        return self._once(
            "inception", lambda: load_inception(self.file("fid-inception", "FID"), self.device)
        )

    def syncnet(self) -> Any:
        """SyncNet for LSE-C/LSE-D (``syncnet``)."""
        from talkcli.models.syncnet import load_syncnet

        return self._once(
            "syncnet", lambda: load_syncnet(self.file("syncnet", "LSE-C/LSE-D"), self.device)
        )
