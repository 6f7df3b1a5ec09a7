"""The registry: one manifest of every external model file talkcli loads, and where to find it.

Search order for a file (first hit wins):

1. ``--weights-dir DIR`` (global option, or the ``weights_dir`` argument),
2. ``$TALKCLI_WEIGHTS``,
3. ``./weights`` in the current folder,
4. the user cache folder (``~/.cache/talkcli/weights`` on Linux),
5. files shipped inside an installed package (the LPIPS heads inside ``lpips``).

Files fetched by face-alignment (FAN, S3FD) live under ``hub/checkpoints/`` of a weights folder,
because face-alignment looks only in ``$TORCH_HOME/hub/checkpoints``; ``torch_hub_dir`` gives the
folder to point torch.hub at.

Speech feature models (Wav2Vec2 / HuBERT, issue 17) are not registry files: each is a Hugging Face
folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) passed by path with
``--feature-model DIR``, never downloaded by talkcli. Keep them anywhere; by convention beside the
other files, e.g. ``WEIGHTS_DIR/wav2vec2-base-960h/`` (tiny packs carry ``wav2vec2-tiny/``).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from talkcli.errors import ModelFileError, UserError

ENV_WEIGHTS = "TALKCLI_WEIGHTS"
ENV_MIRROR = "TALKCLI_MIRROR"


@dataclass(frozen=True)
class ModelFile:
    """One external model file: where it comes from, how to check it, who needs it."""

    name: str  # registry key, used on the command line: `talkcli weights path stylegan2-ffhq`
    filename: str
    url: str | None
    description: str
    used_by: tuple[str, ...]
    license: str
    sha256: str | None = None  # full digest where known
    sha256_prefix: str | None = None  # torch.hub-style names carry the first hex digits
    size: int | None = None  # bytes, where known
    subdir: str = ""  # relative folder inside a weights folder
    bundled_in: tuple[str, str] | None = None  # (python package, relative path) shipping it
    optional: bool = False  # not needed by the main job (e.g. the NVIDIA pickle)
    missing_hint: str | None = None  # what to do when absent, for files without a download

    @property
    def fetchable(self) -> bool:
        """Whether ``weights fetch`` can download it (talkcli's own trained files cannot)."""
        return self.url is not None

    @property
    def relpath(self) -> Path:
        return Path(self.subdir) / self.filename if self.subdir else Path(self.filename)

    def download_url(self) -> str | None:
        """The URL to fetch, honouring ``$TALKCLI_MIRROR`` (a folder or http base URL)."""
        mirror = os.environ.get(ENV_MIRROR)
        if mirror:
            base = mirror if "://" in mirror else Path(mirror).resolve().as_uri()
            return base.rstrip("/") + "/" + self.filename
        return self.url


HUB_SUBDIR = "hub/checkpoints"

MANIFEST: tuple[ModelFile, ...] = (
    ModelFile(
        name="stylegan2-ffhq",
        filename="stylegan2-ffhq-config-f.pt",
        url="https://drive.google.com/uc?id=1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT",
        description="StyleGAN2 FFHQ 1024 generator, rosinality layout {'g_ema', 'latent_avg'}",
        used_by=("invert", "tune-pti", "animate", "train", "evaluate"),
        license="Nvidia Source Code License-NC",
    ),
    ModelFile(
        name="psp-ffhq-encode",
        filename="psp_ffhq_encode.pt",
        url="https://drive.google.com/uc?id=1bMTNWkh5LArlaWSc_wa8VKyq2V42T2z0",
        description="pSp FFHQ encoder (GradualStyleEncoder IR-SE50) with its StyleGAN2 decoder",
        used_by=("invert", "tune-pti", "animate", "train"),
        license="MIT (pSp); decoder under Nvidia Source Code License-NC",
    ),
    # NVIDIA network pickles and e4e: optional (not fetched by `weights fetch --all`); their
    # publishers give no checksum or size, so `weights list --verify` shows the sha256 of the
    # copy fetched first (see docs/models.md).
    ModelFile(
        name="stylegan2-ada-ffhq",
        filename="ffhq.pkl",
        url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl",
        description=(
            "StyleGAN2-ADA FFHQ 1024 network pickle (stylegan2-ada-pytorch; the PTI code's "
            "generator), read without running its code; --generator"
        ),
        used_by=("invert", "animate"),
        license="Nvidia Source Code License-NC",
        optional=True,
    ),
    *(
        ModelFile(
            name=f"stylegan3-{cfg}-{data}-1024",
            filename=f"stylegan3-{cfg}-{data}-1024x1024.pkl",
            url=(
                "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/"
                f"files/stylegan3-{cfg}-{data}-1024x1024.pkl"
            ),
            description=(
                f"StyleGAN3-{cfg.upper()} {data.upper()} 1024 network pickle (no texture "
                "sticking), read without running its code; --generator"
            ),
            used_by=("invert", "animate"),
            license="Nvidia Source Code License-NC",
            optional=True,
        )
        for cfg, data in (("t", "ffhq"), ("r", "ffhqu"))
    ),
    ModelFile(
        name="e4e-ffhq-encode",
        filename="e4e_ffhq_encode.pt",
        url="https://drive.google.com/uc?id=1cUv_reLE6k3604or78EranS7XzuVMWeO",
        description=(
            "e4e FFHQ encoder (Encoder4Editing IR-SE50: w + per-layer deltas) with its StyleGAN2 "
            "decoder; an --encoder alternative to pSp (upstream publishes no size or checksum)"
        ),
        used_by=("invert", "tune-pti", "animate", "train"),
        license="MIT (e4e); decoder under Nvidia Source Code License-NC",
        optional=True,
    ),
    ModelFile(
        name="fan-2d",
        filename="2DFAN4-11f355bf06.pth.tar",
        url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
        description="face-alignment 2D FAN, 68 iBUG landmarks",
        used_by=("align", "evaluate"),
        license="BSD-3-Clause",
        sha256_prefix="11f355bf06",
        subdir=HUB_SUBDIR,
    ),
    ModelFile(
        name="s3fd",
        filename="s3fd-619a316812.pth",
        url="https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
        description="S3FD face detector used by face-alignment",
        used_by=("align", "evaluate"),
        license="BSD-3-Clause",
        sha256_prefix="619a316812",
        subdir=HUB_SUBDIR,
    ),
    *(
        ModelFile(
            name=f"mtcnn-{stage}",
            filename=f"{stage}.npy",
            url=(
                "https://raw.githubusercontent.com/eladrich/pixel2style2pixel/master/"
                f"models/mtcnn/mtcnn_pytorch/src/weights/{stage}.npy"
            ),
            description=f"MTCNN {stage[0].upper()}-Net (5-point detector)",
            used_by=("align",),
            license="MIT",
            sha256=digest,
            size=size,
            subdir="mtcnn",
        )
        for stage, digest, size in (
            ("pnet", "03e19e5c473932ab38f5a6308fe6210624006994a687e858d1dcda53c66f18cb", 41271),
            ("rnet", "5660aad67688edc9e8a3dd4e47ed120932835e06a8a711a423252a6f2c747083", 604651),
            ("onet", "313141c3646bebb73cb8350a2d5fee4c7f044fb96304b46ccc21aeea8b818f83", 2345483),
        )
    ),
    ModelFile(
        name="vgg16",
        filename="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        description="VGG16 ImageNet backbone (torchvision layout) for LPIPS-vgg",
        used_by=("invert", "tune-pti", "train", "evaluate"),
        license="BSD-3-Clause (torchvision)",
        sha256_prefix="397923af",
    ),
    ModelFile(
        name="alexnet",
        filename="alexnet-owt-7be5be79.pth",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        description="AlexNet ImageNet backbone (torchvision layout) for LPIPS-alex",
        used_by=("invert", "tune-pti", "train", "evaluate"),
        license="BSD-3-Clause (torchvision)",
        sha256_prefix="7be5be79",
    ),
    ModelFile(
        name="lpips-vgg",
        filename="vgg.pth",
        url="https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
        description="LPIPS v0.1 linear heads for VGG16",
        used_by=("invert", "tune-pti", "train", "evaluate"),
        license="BSD-2-Clause",
        sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        size=7289,
        subdir="lpips",
        bundled_in=("lpips", "weights/v0.1/vgg.pth"),
    ),
    ModelFile(
        name="lpips-alex",
        filename="alex.pth",
        url="https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
        description="LPIPS v0.1 linear heads for AlexNet",
        used_by=("invert", "tune-pti", "train", "evaluate"),
        license="BSD-2-Clause",
        sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        size=6009,
        subdir="lpips",
        bundled_in=("lpips", "weights/v0.1/alex.pth"),
    ),
    ModelFile(
        name="fid-inception",
        filename="pt_inception-2015-12-05-6726825d.pth",
        url=(
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth"
        ),
        description="FID InceptionV3 (pytorch-fid port of the TF 2015-12-05 graph), 2048-d pool",
        used_by=("evaluate",),
        license="Apache-2.0",
        sha256_prefix="6726825d",
    ),
    ModelFile(
        name="syncnet",
        filename="syncnet_v2.model",
        url="http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
        description="SyncNet v2 (joonson/syncnet_python) for LSE-C / LSE-D",
        used_by=("evaluate",),
        license="MIT",
    ),
    ModelFile(
        name="audio2latent",
        filename="audio2latent.safetensors",
        url=None,  # nobody publishes weights for it: users train their own
        description="audio-to-latent model (thesis 4.3) trained by `talkcli train fit`",
        used_by=("animate",),
        license="yours (trained on your data)",
        missing_hint=(
            "no pretrained audio model is published: train one with `talkcli train prepare`, "
            "`talkcli train fit DATA --out audio2latent.safetensors` and copy it to that path, "
            "or pass --model FILE"
        ),
    ),
    ModelFile(
        name="directions",
        filename="directions.npz",
        url=None,  # made for a generator by `talkcli directions find` (issue 16)
        description="named W+ directions (yaw, pitch, roll, eyes, mouth, smile) for animate's "
        "--blinks/--head-motion/--control/--pose, from `talkcli directions find`",
        used_by=("animate",),
        license="yours (made from your generator)",
        optional=True,
        missing_hint=(
            "run `talkcli directions find` for your generator (animate then finds it in its "
            "cache) and copy its .npz to that path, or pass --directions FILE"
        ),
    ),
)

_BY_NAME = {m.name: m for m in MANIFEST}

# Model files this process has resolved or loaded: outputs must never overwrite them
# (talkcli.weights.outputs.guard_outputs).
_IN_USE: set[Path] = set()


def note_in_use(path: str | Path) -> None:
    """Record a model file this run reads."""
    _IN_USE.add(Path(path))


def files_in_use() -> frozenset[Path]:
    """Model files resolved or loaded so far in this process."""
    return frozenset(_IN_USE)


def get(name: str) -> ModelFile:
    """The manifest entry called ``name``; a one-line error listing the valid names otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UserError(
            f"unknown model file {name!r}; known: {', '.join(sorted(_BY_NAME))}"
        ) from None


@dataclass
class SearchPath:
    """The ordered folders searched for model files (see module docstring)."""

    dirs: list[tuple[str, Path]] = field(default_factory=list)

    def describe(self) -> str:
        return " > ".join(f"{label} ({path})" for label, path in self.dirs)


def user_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("talkcli")) / "weights"


def search_path(weights_dir: str | Path | None = None) -> SearchPath:
    """Folders in search order; ``weights_dir`` is the ``--weights-dir`` option, if given."""
    sp = SearchPath()
    if weights_dir:
        sp.dirs.append(("--weights-dir", Path(weights_dir).expanduser()))
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        sp.dirs.append((f"${ENV_WEIGHTS}", Path(env).expanduser()))
    sp.dirs.append(("./weights", Path.cwd() / "weights"))
    sp.dirs.append(("user cache", user_cache_dir()))
    return sp


def fetch_dir(weights_dir: str | Path | None = None) -> Path:
    """Where ``weights fetch`` writes: the first explicit folder, else ./weights if it exists,
    else the user cache folder."""
    for label, path in search_path(weights_dir).dirs:
        if label != "./weights" or path.is_dir():
            return path
    return user_cache_dir()  # pragma: no cover - the list always ends with the cache


def bundled_path(entry: ModelFile) -> Path | None:
    """Path of a copy shipped inside an installed package, found without importing it."""
    if entry.bundled_in is None:
        return None
    package, rel = entry.bundled_in
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / rel
        if candidate.is_file():
            return candidate
    return None


def locate(name: str, weights_dir: str | Path | None = None) -> Path | None:
    """Path of the file for ``name`` following the search order, or None if absent."""
    entry = get(name)
    for _label, folder in search_path(weights_dir).dirs:
        candidate = folder / entry.relpath
        if candidate.is_file():
            return candidate
    return bundled_path(entry)


def resolve(name: str, weights_dir: str | Path | None = None, *, purpose: str = "") -> Path:
    """Like ``locate`` but raise a one-line ModelFileError saying how to get the file."""
    path = locate(name, weights_dir)
    if path is not None:
        note_in_use(path)
        return path
    entry = get(name)
    target = fetch_dir(weights_dir) / entry.relpath
    need = f" (needed by {purpose})" if purpose else ""
    how = entry.missing_hint or (
        f"run `talkcli weights fetch {entry.name}`, or download {entry.url} to that path"
    )
    raise ModelFileError(
        target,
        f"model file {entry.name!r} not found{need}",
        f"{how}; searched {search_path(weights_dir).describe()}",
    )


def resolve_option(
    explicit: str | Path | None, name: str, weights_dir: str | Path | None, purpose: str = ""
) -> Path:
    """A command's ``--generator PATH`` style option: an explicit path wins, else the registry."""
    if explicit:
        from talkcli.io.files import require_file

        path = require_file(explicit, "model file")
        note_in_use(path)
        return path
    return resolve(name, weights_dir, purpose=purpose)


def torch_hub_dir(weights_dir: str | Path | None = None) -> Path:
    """The folder to give ``torch.hub.set_dir`` so face-alignment finds FAN and S3FD.

    It is the weights folder that holds ``hub/checkpoints/<FAN file>``, or the fetch folder.
    """
    fan = locate("fan-2d", weights_dir)
    if fan is not None:
        return fan.parent.parent  # .../hub/checkpoints/file -> .../hub
    return fetch_dir(weights_dir) / "hub"
