"""Option declarations shared by the commands: one declaration and one help text each.

* Numeric options take their bounds from ``talkcli.ranges`` (the library configs check the same
  entries); every float option also refuses nan and inf (``finite_float``), with click's standard
  one-line usage error, exit 2.
* String choices are ``str`` enums, so Typer validates them (case-insensitively, as the commands
  always lowercased them) and lists them in ``--help``. The option's callback hands the command
  the plain string value: library functions take strings, and an enum member must not travel into
  a manifest, a pickle or a log.
* Where two commands legitimately differ in default (``--smooth``: 1 for the crop in
  ``align``/``train prepare``, 0 for the motion in ``animate``; ``--lpips``: vgg for ``invert``,
  alex for ``tune-pti``/``evaluate``), a small factory takes the default; the help text stays one.

This module is imported when the command tree is built: it must stay light (no numpy, no torch).
"""

from __future__ import annotations

import enum
import math
from typing import Any

import typer

from talkcli.ranges import FACE_INDEX, FPS, SEED, SMOOTH, TRAIN_PREPARE, Range

# -- choices --------------------------------------------------------------------------------------


class Choice(str, enum.Enum):
    """A string choice of an option; ``str()`` and f-strings give the plain value."""

    def __str__(self) -> str:
        return str(self.value)


class Detector(Choice):
    """Face landmark detectors (``talkcli.face.landmarks.DETECTORS``)."""

    auto = "auto"
    fan = "fan"
    mtcnn = "mtcnn"


class Method(Choice):
    """Inversion methods (``talkcli.inversion.invert.METHODS``)."""

    psp = "psp"
    optimize = "optimize"
    hybrid = "hybrid"


class Space(Choice):
    """Latent spaces of the optimisation (``talkcli.inversion.project.ProjectionConfig.space``)."""

    w = "w"
    wplus = "wplus"


class LpipsNet(Choice):
    """LPIPS backbones (``talkcli.models.perceptual.NETS``)."""

    alex = "alex"
    vgg = "vgg"


class Compile(Choice):
    """``--compile`` modes (``talkcli.compiled.COMPILE_CHOICES``)."""

    auto = "auto"
    on = "on"
    off = "off"


class Dtype(Choice):
    """Network precisions (``talkcli.device.DTYPE_CHOICES``; auto: ``resolve_dtype``)."""

    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Resolution(Choice):
    """``animate --resolution`` (``talkcli.animate.options.RESOLUTIONS``)."""

    r256 = "256"
    r512 = "512"
    r1024 = "1024"


class PivotMethod(Choice):
    """How ``tune-pti`` finds its pivots without ``--pivots``."""

    psp = "psp"
    w_project = "w-project"


class Arch(Choice):
    """Audio-to-latent architectures (``talkcli.models.audio2latent.ARCH_PRESETS``)."""

    thesis = "thesis"
    tiny = "tiny"


class IdentityInput(Choice):
    """What the audio model's decoder is conditioned on (``train fit --identity``)."""

    pca = "pca"
    none = "none"


class BestBy(Choice):
    """How ``train fit`` picks its best epoch (``--best-by``)."""

    r = "r"
    loss = "loss"


class GeneratorArch(Choice):
    """Generators a tiny pack can hold (``talkcli.tiny.pack.GENERATOR_ARCHS``)."""

    stylegan2 = "stylegan2"
    stylegan3 = "stylegan3"
    stylegan3_r = "stylegan3-r"


class FitMethod(Choice):
    """How ``directions`` fits a quantity (``talkcli.directions.fit.FIT_METHODS``)."""

    ridge = "ridge"
    svm = "svm"


class Network(Choice):
    """Which network of an NVIDIA pickle is the generator (``load_generator(network=...)``)."""

    G_ema = "G_ema"
    G = "G"


class Features(Choice):
    """Speech features (``talkcli.audio.features.FEATURE_KINDS``; issue 17)."""

    mfcc = "mfcc"
    wav2vec2 = "wav2vec2"
    hubert = "hubert"


def feature_model_option() -> Any:
    """``--feature-model DIR``: the local Hugging Face folder of a Wav2Vec2 / HuBERT model."""
    return typer.Option(
        None,
        "--feature-model",
        help="Wav2Vec2/HuBERT folder (config.json + model.safetensors), read offline "
        "(needs `pip install talkcli[ssl]`).",
    )


def feature_layer_option() -> Any:
    """``--feature-layer N``: which hidden state of the SSL model (default: 2/3 of the way up)."""
    return typer.Option(
        None,
        "--feature-layer",
        min=TRAIN_PREPARE["feature_layer"].lo,
        max=TRAIN_PREPARE["feature_layer"].hi,
        help="Hidden state of the feature model to read (default: 2/3 up, e.g. 8 of 12).",
    )


class Crop(Choice):
    """What evaluated frames are (``talkcli.metrics.evaluate.CROPS``)."""

    full = "full"
    aligned = "aligned"


class FaceCrop(Choice):
    """How LSE face crops are made (``talkcli.metrics.evaluate.FACE_CROPS``)."""

    auto = "auto"
    detect = "detect"
    aligned = "aligned"


class LseProtocol(Choice):
    """How LSE's face crops reach SyncNet (``talkcli.metrics.evaluate.LSE_PROTOCOLS``)."""

    direct = "direct"
    syncnet = "syncnet"


class DrivingMode(Choice):
    """How a driving clip drives the face (``talkcli.animate.options.DRIVING_MODES``, issue 16)."""

    latent = "latent"
    controls = "controls"


def plain_choice(value: Any) -> Any:
    """Option callback: the enum member's plain string (None and lists pass through)."""
    if isinstance(value, list | tuple):
        return type(value)(plain_choice(v) for v in value)
    return value.value if isinstance(value, enum.Enum) else value


def choice_option(default: Any, *param_decls: str, help: str, **kwargs: Any) -> Any:
    """An enum option: validated and listed by Typer, any case, handed on as a plain string."""
    if isinstance(default, enum.Enum):
        default = default.value
    return typer.Option(
        default, *param_decls, case_sensitive=False, callback=plain_choice, help=help, **kwargs
    )


# -- numbers --------------------------------------------------------------------------------------


def finite_float(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    """Option callback: refuse nan and inf (a range alone lets nan through); exit 2, one line."""
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise typer.BadParameter(f"{v} is not a finite number", ctx=ctx, param=param)
    return value


def float_option(default: Any, *param_decls: str, range: Range, help: str, **kw: Any) -> Any:
    """A float option bounded by ``range`` (from ``talkcli.ranges``) that refuses nan/inf."""
    return typer.Option(
        default,
        *param_decls,
        min=range.lo,
        max=range.hi,
        callback=finite_float,
        help=help,
        **kw,
    )


def int_option(default: Any, *param_decls: str, range: Range, help: str, **kw: Any) -> Any:
    """An int option bounded by ``range`` (from ``talkcli.ranges``)."""
    return typer.Option(default, *param_decls, min=range.lo, max=range.hi, help=help, **kw)


def dtype_option(what: str) -> Any:
    """``--dtype auto|fp32|bf16|fp16``: the precision of the networks (one help text)."""
    return choice_option(
        Dtype.auto,
        "--dtype",
        help=f"Precision of {what}: auto (bf16 autocast on GPUs and CPUs with native bf16, "
        "AVX512-BF16/AMX; fp32 elsewhere), fp32, bf16 or fp16 (autocast). "
        "See docs/speed.md for the measured price.",
    )


def compile_option(what: str) -> Any:
    """``--compile auto|on|off``: torch.compile of a network where its start-up is repaid."""
    return choice_option(
        Compile.auto,
        "--compile",
        help=f"torch.compile {what}: auto (only when the first batch's timing predicts enough "
        "work left to repay the start-up, ~20-45 s on a CPU), on or off. Falls back to eager "
        "with a warning when compiling fails (e.g. no C++ compiler). See docs/speed.md.",
    )


# -- options several commands share --------------------------------------------------------------

JSON_OPTION: Any = typer.Option(False, "--json", help="Print the result as JSON on stdout.")

WEIGHTS_DIR_OPTION: Any = typer.Option(
    None,
    "--weights-dir",
    help="Folder searched first for model files (overrides the global option).",
)

DETECTOR_OPTION: Any = choice_option(
    Detector.auto,
    "--detector",
    help="Face landmarks: auto (FAN if its model files are present, else MTCNN), fan or mtcnn.",
)

FACE_INDEX_OPTION: Any = int_option(
    None,
    "--face-index",
    range=FACE_INDEX,
    help="Which face when several: 0 = largest (default), 1 = next...",
)

GENERATOR_OPTION: Any = typer.Option(
    None,
    "--generator",
    help=(
        "StyleGAN2 .pt, e.g. a `tune-pti` result, or an NVIDIA network pickle .pkl (G_ema; "
        "its code is never run) (default: registry, else the pSp decoder)."
    ),
)

NETWORK_OPTION: Any = choice_option(
    Network.G_ema,
    "--network",
    help="For an NVIDIA pickle --generator: G_ema (the averaged weights, default) or G; "
    "ignored for other generator files.",
)

ENCODER_OPTION: Any = typer.Option(
    None, "--encoder", help="pSp or e4e checkpoint (default: registry pSp)."
)


def fps_option(default: float | None, note: str, unset: str = "") -> Any:
    """``--fps``: 25 everywhere (``evaluate``: unset = its suite's, else 25)."""
    return float_option(
        default, "--fps", range=FPS, help=f"Frame rate, frames per second ({note}){unset}."
    )


def smooth_option(default: float, of: str) -> Any:
    """``--smooth``: 1.0 for the crop centre (align, train prepare), 0.0 for animate's motion."""
    return float_option(
        default,
        "--smooth",
        range=SMOOTH,
        help=f"Temporal Gaussian smoothing of {of}, sigma in frames (0: off).",
    )


def seed_option(default: int | None = 0, of: str = "", note: str = "") -> Any:
    """``--seed``: 0 (``evaluate``: unset = its suite's, else 0)."""
    what = f" ({of})" if of else ""
    return int_option(default, "--seed", range=SEED, help=f"Random seed{what}{note}.")


def lpips_option(default: LpipsNet | None, note: str = "") -> Any:
    """``--lpips``: vgg for ``invert`` (as Image2StyleGAN), alex for ``tune-pti`` (PTI) and
    ``evaluate`` (the papers' metric; unset = its suite's, else alex)."""
    return choice_option(default, "--lpips", help=f"LPIPS backbone: alex or vgg{note}.")
