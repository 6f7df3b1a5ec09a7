"""The audio-to-latent model of the thesis (section 4.3, tables 4.3 and 4.4, equation 4.3).

Speech -> a trajectory of W+ codes around an identity code ``w_I``:

* ``audio_encoder`` E_A (table 4.3), per 12x28 MFCC window (raw MFCCs normalised by the
  ``mfcc_mean``/``mfcc_std`` buffers of the training set):
  conv3x3 64 (pad 1) -> 64x12x28, conv3x3 128 -> 128x12x28, maxpool 3x3 stride (1, 2) ->
  128x10x13, conv3x3 256 -> 256x10x13, conv3x3 256 -> 256x10x13, conv3x3 512 -> 512x10x13,
  maxpool 3x3 stride 2 -> 512x4x6, linear 12288 -> 2048, linear 2048 -> 256 (ReLU after every
  conv and linear), then a 3-layer LSTM 256 over the frames: e_t (256).
* PCA (buffers, not trained): ``pca_mean`` (n_latent * 512,), ``pca_basis`` V (k, n_latent *
  512) with orthonormal rows. Identity embedding = (w_I.flatten() - pca_mean) @ V.T (k values).
* ``decoder`` D (table 4.4): [identity embedding (k), e_t (256)] -> linear 512 ReLU -> linear 512
  ReLU -> linear k = h_t; displacement d_t = h_t @ V; w_t = w_I + d_t (equation 4.3).

``forward(windows, w_identity, state)`` carries the LSTM state across calls, so any length of
audio runs chunk by chunk in bounded memory and chunked output equals one-shot output;
``displacements(windows, w_identity, state)`` is the same streaming step returning d_t (what
``animate`` calls: smoothing and ``--motion-scale`` act on d_t).

Trainable parameters at the thesis size (k = 2500, n_latent = 18), from the tables:

=====================================  ===========
audio encoder convolutions (5)           2,139,904
audio encoder linears 12288->2048->256  25,692,416
3-layer LSTM 256 (PyTorch: two biases)   1,579,008
decoder (2756->512->512->2500)           2,956,740
total                                   32,368,068
=====================================  ===========

The thesis reports 29.68 M (table 5.2). The difference, 2.69 M, is the size of the decoder's two
layers whose width is k: its input layer (2756 -> 512: 1,411,584) and output layer
(512 -> 2500: 1,282,500) add to 2,694,084, and the rest (encoder + LSTM + the 512 -> 512 layer)
is 29,673,984 = 29.67 M; so the thesis count most likely leaves out the PCA-sized layers (or
counts a smaller k). With one LSTM bias per gate (as Keras counts) the rest is 29.67 M as well.
talkcli implements the tables as written; ``thesis_parameter_count()`` gives the number.

The widths are keyword arguments only so that tests and tiny packs can build a small network of
the same structure (``ARCH_PRESETS['tiny']``); the defaults are the thesis' tables.

Checkpoints are one safetensors file (tensors + a JSON config in its metadata, no pickle):
``save_audio2latent`` / ``load_audio2latent`` (strict, one-line ``ModelFileError``s), and
``check_generator_match`` refuses a model trained for another generator size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from talkcli.audio.features import FEATURE_KINDS, FEATURE_SETTINGS, N_MFCC, WINDOW
from talkcli.errors import ModelFileError, UserError
from talkcli.io.files import atomic_output, require_file

FORMAT = "talkcli-audio2latent"
FORMAT_VERSION = 1
THESIS_K = 2500
THESIS_REPORTED_PARAMS = 29_680_000  # table 5.2: "29.68 M"
_HINT = "train one with `talkcli train fit`, or pass a file written by talkcli"

LSTMState = tuple[Tensor, Tensor]  # (h, c), each (layers, B, hidden)


@dataclass(frozen=True)
class Arch:
    """Layer widths. The defaults are the thesis' tables 4.3 and 4.4."""

    conv: tuple[int, int, int, int, int] = (64, 128, 256, 256, 512)
    linear: tuple[int, int] = (2048, 256)
    lstm_layers: int = 3
    decoder_hidden: int = 512

    def __post_init__(self) -> None:
        if len(self.conv) != 5 or len(self.linear) != 2:
            raise ValueError("arch needs 5 conv widths and 2 linear widths")
        if min(*self.conv, *self.linear, self.lstm_layers, self.decoder_hidden) < 1:
            raise ValueError("arch widths and lstm_layers must be >= 1")

    @property
    def embed_dim(self) -> int:
        """Width of e_t (the LSTM's hidden size = the last linear's width)."""
        return self.linear[1]

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arch:
        return cls(
            conv=tuple(int(v) for v in d["conv"]),  # type: ignore[arg-type]
            linear=tuple(int(v) for v in d["linear"]),  # type: ignore[arg-type]
            lstm_layers=int(d["lstm_layers"]),
            decoder_hidden=int(d["decoder_hidden"]),
        )


ARCH_PRESETS: dict[str, Arch] = {
    "thesis": Arch(),
    # Same structure, 1/8 of the conv widths: CPU smoke runs, tests, tiny packs.
    "tiny": Arch(conv=(8, 16, 32, 32, 64), linear=(256, 64), lstm_layers=3, decoder_hidden=64),
}

# Per-window output shapes of table 4.3 (channels, height, width).
TABLE_4_3_SHAPES = (
    (64, 12, 28),
    (128, 12, 28),
    (128, 10, 13),
    (256, 10, 13),
    (256, 10, 13),
    (512, 10, 13),
    (512, 4, 6),
)
POOLED_HW = (4, 6)  # 12x28 after both max pools


class AudioEncoder(nn.Module):
    """E_A, table 4.3: (N, 1, 12, 28) windows -> (N, linear[1]) features before the LSTM."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = arch.conv
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),  # (N, 64, 12, 28)
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1),  # (N, 128, 12, 28)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=(1, 2)),  # (N, 128, 10, 13)
            nn.Conv2d(c2, c3, 3, padding=1),  # (N, 256, 10, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1),  # (N, 256, 10, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1),  # (N, 512, 10, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),  # (N, 512, 4, 6)
        )
        flat = c5 * POOLED_HW[0] * POOLED_HW[1]
        self.linears = nn.Sequential(
            nn.Linear(flat, arch.linear[0]),  # (N, 2048)
            nn.ReLU(inplace=True),
            nn.Linear(arch.linear[0], arch.linear[1]),  # (N, 256)
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.linears(self.convs(x).flatten(1))


class SSLEncoder(nn.Module):
    """The audio encoder for self-supervised speech features (issue 17): (N, D, 14) windows of
    Wav2Vec2 / HuBERT rows -> (N, linear[1]). A small temporal convolution over the window's 14
    rows (conv1d 3 -> conv[2] channels, conv1d 3, maxpool 2 -> 7 steps), then a projection into
    the LSTM's width: the features already carry the phonetics the MFCC encoder must learn."""

    def __init__(self, dim: int, window: int, arch: Arch) -> None:
        super().__init__()
        c = arch.conv[2]
        self.convs = nn.Sequential(
            nn.Conv1d(dim, c, 3, padding=1),  # (N, c, 14)
            nn.ReLU(inplace=True),
            nn.Conv1d(c, c, 3, padding=1),  # (N, c, 14)
            nn.ReLU(inplace=True),
            nn.MaxPool1d(2),  # (N, c, 7)
        )
        self.project = nn.Sequential(
            nn.Linear(c * (window // 2), arch.linear[1]),  # (N, 256)
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.convs(x).flatten(1))


def _feature_shape(features: Mapping[str, Any] | None) -> tuple[str, int, int]:
    """(kind, rows' width D, window length W) of a model's feature settings (None: MFCC)."""
    if not features or features.get("kind", "mfcc") == "mfcc":
        return "mfcc", N_MFCC, WINDOW
    kind = str(features["kind"])
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}")
    return kind, int(features["dim"]), int(FEATURE_KINDS[kind].window)


class Audio2Latent(nn.Module):
    """Speech windows + identity code -> W+ trajectory (thesis 4.3).

    ``Audio2Latent(n_components=2500, n_latent=18, style_dim=512)``; ``arch`` (keyword) changes
    only the layer widths (default: the thesis' tables). Buffers: ``pca_mean`` (n_latent*512,),
    ``pca_basis`` (k, n_latent*512), ``mfcc_mean`` (12,), ``mfcc_std`` (12,). Attributes set by
    training and kept in checkpoints: ``fps``, ``generator`` (dict: sha256, size, ...),
    ``training`` (dict).

    ``normalised`` (issue 19) adds three (k,) buffers: ``identity_mean`` / ``identity_scale``
    centre and scale the identity's PCA coordinates (the training codes' spread), and
    ``output_scale`` scales h_t (the spread of the training motion per component), so the
    decoder works in units of the data's own spread whatever the absolute size of the motion.
    ``identity_input`` False conditions on no identity at all (the embedding is zero): for small
    datasets, where the identity input lets the decoder fit each training speaker. Both are in
    the config only when they differ from the thesis' model, so older checkpoints load as before.
    """

    def __init__(
        self,
        n_components: int = THESIS_K,
        n_latent: int = 18,
        style_dim: int = 512,
        *,
        arch: Arch | None = None,
        fps: float = 25.0,
        normalised: bool = False,
        identity_input: bool = True,
        features: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if n_components < 1 or n_latent < 1 or style_dim < 1:
            raise ValueError("n_components, n_latent and style_dim must be >= 1")
        self.arch = arch or Arch()
        self.n_components = int(n_components)
        self.n_latent = int(n_latent)
        self.style_dim = int(style_dim)
        self.fps = float(fps)
        self.normalised = bool(normalised)
        self.identity_input = bool(identity_input)
        self.generator: dict[str, Any] = {}
        self.training_info: dict[str, Any] = {}
        dim = self.n_latent * self.style_dim
        k, e = self.n_components, self.arch.embed_dim

        # features: None = the thesis' MFCCs; else talkcli.audio.ssl.SSLModel.settings()
        self.feature_kind, self.feature_dim, self.feature_window = _feature_shape(features)
        self.feature_settings = None if self.feature_kind == "mfcc" else dict(features or {})
        if self.feature_settings is None:
            self.audio_encoder: nn.Module = AudioEncoder(self.arch)
        else:
            self.audio_encoder = SSLEncoder(self.feature_dim, self.feature_window, self.arch)
        self.lstm = nn.LSTM(e, e, num_layers=self.arch.lstm_layers, batch_first=True)
        h = self.arch.decoder_hidden
        self.decoder = nn.Sequential(
            nn.Linear(k + e, h),  # (B, T, 512)
            nn.ReLU(inplace=True),
            nn.Linear(h, h),  # (B, T, 512)
            nn.ReLU(inplace=True),
            nn.Linear(h, k),  # (B, T, k) = h_t
        )
        # Start from "no motion" (w_t = w_I): the last layer begins at zero, so training does not
        # first have to undo random displacements far larger than real mouth motion.
        nn.init.zeros_(self.decoder[-1].weight)
        nn.init.zeros_(self.decoder[-1].bias)
        if k > dim:
            raise ValueError(f"n_components {k} exceeds the W+ dimension {dim}")
        self.register_buffer("pca_mean", torch.zeros(dim))
        self.register_buffer("pca_basis", torch.eye(k, dim))  # placeholder until set_pca
        stats = "mfcc" if self.feature_settings is None else "feature"
        self.stats_names = (f"{stats}_mean", f"{stats}_std")  # mfcc_* keep the thesis' names
        self.register_buffer(self.stats_names[0], torch.zeros(self.feature_dim))
        self.register_buffer(self.stats_names[1], torch.ones(self.feature_dim))
        if self.normalised:
            self.register_buffer("identity_mean", torch.zeros(k))
            self.register_buffer("identity_scale", torch.ones(k))
            self.register_buffer("output_scale", torch.ones(k))

    # -- configuration ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.pca_basis.device

    @property
    def latent_dim(self) -> int:
        return self.n_latent * self.style_dim

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (stored in the checkpoint's metadata)."""
        return {
            "n_components": self.n_components,
            "n_latent": self.n_latent,
            "style_dim": self.style_dim,
            "arch": self.arch.as_dict(),
            "fps": self.fps,
            "features": dict(self.feature_settings or FEATURE_SETTINGS),
            **({"normalised": True} if self.normalised else {}),
            **({} if self.identity_input else {"identity_input": False}),
        }

    def set_pca(self, mean: Tensor | np.ndarray, basis: Tensor | np.ndarray) -> None:
        """Install a PCA basis: ``mean`` (D,), ``basis`` (k, D) with orthonormal rows."""
        mean_t = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        basis_t = torch.as_tensor(np.asarray(basis), dtype=torch.float32)
        if tuple(mean_t.shape) != (self.latent_dim,) or tuple(basis_t.shape) != tuple(
            self.pca_basis.shape
        ):
            raise ValueError(
                f"PCA must be mean ({self.latent_dim},) and basis {tuple(self.pca_basis.shape)}, "
                f"got {tuple(mean_t.shape)} and {tuple(basis_t.shape)}"
            )
        self.pca_mean.copy_(mean_t)
        self.pca_basis.copy_(basis_t)

    def set_mfcc_stats(self, mean: Tensor | np.ndarray, std: Tensor | np.ndarray) -> None:
        """Install the training set's per-coefficient MFCC mean and std (12,) each."""
        if self.feature_settings is not None:
            raise ValueError(f"this model reads {self.feature_kind} features: set_feature_stats")
        self.set_feature_stats(mean, std)

    def set_feature_stats(self, mean: Tensor | np.ndarray, std: Tensor | np.ndarray) -> None:
        """Install the training set's per-dimension feature mean and std (D,) each (the MFCC
        buffers ``mfcc_mean``/``mfcc_std``, or ``feature_mean``/``feature_std`` for SSL)."""
        mean_t = torch.as_tensor(np.asarray(mean), dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(np.asarray(std), dtype=torch.float32).reshape(-1)
        what = "MFCC" if self.feature_settings is None else "feature"
        if mean_t.numel() != self.feature_dim or std_t.numel() != self.feature_dim:
            raise ValueError(f"{what} statistics must have {self.feature_dim} values each")
        if not torch.all(std_t > 0):
            raise ValueError(f"{what} standard deviations must be > 0")
        getattr(self, self.stats_names[0]).copy_(mean_t)
        getattr(self, self.stats_names[1]).copy_(std_t)

    def set_normalisation(
        self, identity_mean: np.ndarray, identity_scale: np.ndarray, output_scale: np.ndarray
    ) -> None:
        """Install the spreads of a ``normalised`` model: (k,) each, scales > 0."""
        if not self.normalised:
            raise ValueError("set_normalisation needs a model built with normalised=True")
        values = [torch.as_tensor(np.asarray(v), dtype=torch.float32).reshape(-1)
                  for v in (identity_mean, identity_scale, output_scale)]  # fmt: skip
        if any(v.numel() != self.n_components for v in values):
            raise ValueError(f"normalisation vectors must have {self.n_components} values")
        if not all(torch.all(v > 0) for v in values[1:]):
            raise ValueError("normalisation scales must be > 0")
        for name, v in zip(
            ("identity_mean", "identity_scale", "output_scale"), values, strict=True
        ):
            getattr(self, name).copy_(v)

    # -- the network -----------------------------------------------------------------------------

    def identity_embedding(self, w_identity: Tensor) -> Tensor:
        """(B, n_latent, 512) -> (B, k): PCA coordinates of the identity code (centred and
        scaled when ``normalised``; zeros without ``identity_input``)."""
        flat = w_identity.reshape(w_identity.shape[0], -1)  # (B, D)
        coords = (flat - self.pca_mean) @ self.pca_basis.T  # (B, k)
        if not self.identity_input:
            return torch.zeros_like(coords)
        if self.normalised:
            coords = (coords - self.identity_mean) / self.identity_scale
        return coords

    def encode_audio(
        self, windows: Tensor, state: LSTMState | None = None
    ) -> tuple[Tensor, LSTMState]:
        """(B, T, 12, 28) raw MFCC windows (or (B, T, D, 14) SSL windows) -> e (B, T, 256) and
        the LSTM state after them."""
        b, t = windows.shape[:2]
        mean, std = (getattr(self, n)[:, None] for n in self.stats_names)  # (D, 1) each
        x = (windows - mean) / std  # (B, T, D, W)
        if self.feature_settings is None:
            feats = self.audio_encoder(x.reshape(b * t, 1, N_MFCC, WINDOW))  # (B*T, 256)
        else:
            feats = self.audio_encoder(x.reshape(b * t, self.feature_dim, self.feature_window))
        e, (h, c) = self.lstm(feats.reshape(b, t, -1), state)  # (B, T, 256)
        return e, (h, c)

    def decode(self, embedding: Tensor, e: Tensor) -> Tensor:
        """Identity embedding (B, k) and audio features (B, T, 256) -> h (B, T, k)."""
        emb = embedding[:, None, :].expand(-1, e.shape[1], -1)  # (B, T, k)
        h = self.decoder(torch.cat([emb, e], dim=-1))  # (B, T, k)
        return h * self.output_scale if self.normalised else h

    def displacements(
        self,
        windows: Tensor,
        w_identity: Tensor,
        state: LSTMState | None = None,
        embedding: Tensor | None = None,
    ) -> tuple[Tensor, LSTMState]:
        """The streaming step: windows (B, T, 12, 28) raw MFCCs and w_identity (B, n_latent,
        512) -> (displacements d (B, T, n_latent, 512), LSTM state after them).

        ``w_identity + d`` is what ``forward`` returns. Pass the returned state to the next call
        to continue the same audio: chunk after chunk equals one call on the whole (``animate``
        streams any length of speech this way). Shapes are checked as ``forward`` checks them
        (a ValueError naming the expected shape).
        """
        self._check_inputs(windows, w_identity, state)
        e, state = self.encode_audio(windows, state)  # (B, T, 256)
        if embedding is None:
            embedding = self.identity_embedding(w_identity)  # (B, k)
        h = self.decode(embedding, e)  # (B, T, k)
        d = h @ self.pca_basis  # (B, T, D)
        return d.reshape(*d.shape[:2], self.n_latent, self.style_dim), state

    def forward(
        self,
        windows: Tensor,
        w_identity: Tensor,
        state: LSTMState | None = None,
        embedding: Tensor | None = None,
    ) -> tuple[Tensor, LSTMState]:
        """windows (B, T, 12, 28), w_identity (B, n_latent, 512) -> (w (B, T, n_latent, 512),
        LSTM state). Pass the returned state to the next call to continue the same audio.
        ``embedding`` (B, k) conditions the decoder instead of ``w_identity``'s own (training:
        identity augmentation and dropout); the displacement is still added to ``w_identity``."""
        d, state = self.displacements(windows, w_identity, state, embedding)
        return w_identity[:, None] + d, state

    def _check_inputs(self, windows: Tensor, w_identity: Tensor, state: LSTMState | None) -> None:
        if (
            not isinstance(windows, Tensor)
            or windows.ndim != 4
            or windows.shape[2:] != (self.feature_dim, self.feature_window)
        ):
            got = tuple(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__
            d, w = self.feature_dim, self.feature_window
            raise ValueError(f"windows must be (B, T, {d}, {w}), got {got}")
        expected = (windows.shape[0], self.n_latent, self.style_dim)
        if not isinstance(w_identity, Tensor) or tuple(w_identity.shape) != expected:
            got = tuple(w_identity.shape) if isinstance(w_identity, Tensor) else type(w_identity)
            raise ValueError(f"w_identity must be {expected} for these windows, got {got}")
        if state is not None:
            want = (self.arch.lstm_layers, windows.shape[0], self.arch.embed_dim)
            if len(state) != 2 or any(tuple(s.shape) != want for s in state):
                raise ValueError(f"state must be (h, c) of shape {want} each")


# -- parameter counts --------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (buffers such as the PCA basis are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def thesis_parameter_count(k: int = THESIS_K, n_latent: int = 18, style_dim: int = 512) -> int:
    """Trainable parameters of tables 4.3 and 4.4 computed by hand (PyTorch LSTM: two biases)."""
    del n_latent, style_dim  # the PCA buffers are not trainable
    convs = [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512)]
    n = sum(cout * cin * 9 + cout for cin, cout in convs)
    n += (512 * 4 * 6) * 2048 + 2048 + 2048 * 256 + 256
    n += 3 * (4 * 256 * (256 + 256) + 2 * 4 * 256)
    n += (k + 256) * 512 + 512 + 512 * 512 + 512 + 512 * k + k
    return n


# -- checkpoints ------------------------------------------------------------------------------


@dataclass
class CheckpointInfo:
    """The JSON config of a checkpoint (what ``load_audio2latent`` checks)."""

    config: dict[str, Any]
    generator: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    """JSON round trip: refuses non-plain metadata early, with the offending type."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint metadata must be plain JSON values: {exc}") from None


def save_audio2latent(
    path: str | Path,
    model: Audio2Latent,
    generator: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as one safetensors file, atomically.

    Tensors: the state dict (weights, ``pca_mean``, ``pca_basis``, ``mfcc_mean``, ``mfcc_std``).
    Metadata (strings): ``format`` = "talkcli-audio2latent", ``format_version``, and ``config`` /
    ``generator`` / ``training`` as JSON. ``generator`` (default ``model.generator``) names the
    generator the model was trained for: ``sha256``, ``size``, ``n_latent``, ``style_dim``.
    """
    from safetensors.torch import save_file

    from talkcli import __version__

    gen = _plain(dict(model.generator if generator is None else generator))
    train = _plain(dict(model.training_info if training is None else training))
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "talkcli": __version__,
        "config": json.dumps(_plain(model.config())),
        "generator": json.dumps(gen),
        "training": json.dumps(train),
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in _state(model)}
    needed = (
        sum(t.numel() * t.element_size() for t in tensors.values()) + 8 + len(json.dumps(metadata))
    )  # data + header length + (at least) the metadata of the JSON header
    with atomic_output(path, needed=needed) as tmp:  # disk full: one line, old file kept
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def _state(model: Audio2Latent) -> list[tuple[str, Tensor]]:
    return list(model.state_dict().items())


def _json_field(path: Path, meta: Mapping[str, str], key: str) -> dict[str, Any]:
    text = meta.get(key)
    if text is None:
        raise ModelFileError(path, f"audio model metadata lacks {key!r}", _HINT)
    try:
        value = json.loads(text)
    except ValueError:
        raise ModelFileError(
            path, f"audio model metadata {key!r} is not valid JSON", _HINT
        ) from None
    if not isinstance(value, dict):
        raise ModelFileError(path, f"audio model metadata {key!r} is not a JSON object", _HINT)
    return value


def _read_header(path: Path) -> tuple[dict[str, str], list[str]]:
    """(metadata, tensor names) from the safetensors header, or a one-line ModelFileError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for bad headers
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(
            path, f"is not a safetensors audio model ({first[:120]})", _HINT
        ) from None


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Config, generator and training metadata of a checkpoint, without loading the weights."""
    p = require_file(path, "audio model")
    meta, _ = _read_header(p)
    if meta.get("format") != FORMAT:
        raise ModelFileError(
            p, f"is not a talkcli audio model (format {meta.get('format')!r})", _HINT
        )
    version = meta.get("format_version", "?")
    if version != str(FORMAT_VERSION):
        raise ModelFileError(
            p,
            f"audio model format version {version} is not supported (this talkcli reads "
            f"{FORMAT_VERSION})",
            "upgrade talkcli or retrain the model",
        )
    return CheckpointInfo(
        config=_json_field(p, meta, "config"),
        generator=_json_field(p, meta, "generator"),
        training=_json_field(p, meta, "training"),
    )


def _checked_sizes(path: Path, config: Mapping[str, Any]) -> tuple[int, int, int, Arch]:
    """(k, n_latent, style_dim, arch) of a config, each size inside ``models.limits``' bounds
    (a file is untrusted input for its sizes too: nothing is allocated from them unchecked)."""
    from talkcli.models.limits import check_dim

    n_latent = check_dim(path, "n_latent", config["n_latent"])
    style_dim = check_dim(path, "style_dim", config["style_dim"])
    k = check_dim(path, "n_components", config["n_components"])
    if k > n_latent * style_dim:
        raise ModelFileError(
            path, f"n_components {k} exceeds the W+ dimension {n_latent * style_dim}", _HINT
        )
    a = config["arch"]
    for i, width in enumerate([*a["conv"], *a["linear"], a["decoder_hidden"]]):
        check_dim(path, f"arch width {i}", width, key="width")
    check_dim(path, "lstm_layers", a["lstm_layers"])
    return k, n_latent, style_dim, Arch.from_dict(a)


def _checked_features(path: Path, features: Any) -> dict[str, Any] | None:
    """The SSL feature settings of a config (None: MFCC, whose settings must be this talkcli's)."""
    from talkcli.models.limits import check_dim

    if not isinstance(features, dict):
        raise ModelFileError(path, "audio model config has no feature settings", _HINT)
    kind = features.get("kind", "mfcc")
    if kind != "mfcc":
        spec = FEATURE_KINDS.get(kind) if isinstance(kind, str) else None
        if spec is None or not spec.ssl:
            raise ModelFileError(path, f"audio model reads unknown features {kind!r}", _HINT)
        check_dim(path, "feature dim", features.get("dim"), key="width")
        if features.get("window") != spec.window or features.get("rate") != spec.rate:
            raise ModelFileError(
                path, f"audio model's {kind} windows are not {spec.window} rows at {spec.rate} Hz",
                "retrain the model with this version",
            )  # fmt: skip
        return features
    for key in ("sample_rate", "winlen", "winstep", "numcep", "n_mfcc", "window"):
        if features.get(key) != FEATURE_SETTINGS[key]:
            raise ModelFileError(
                path,
                f"audio model uses feature setting {key}={features.get(key)!r}; this talkcli "
                f"computes {key}={FEATURE_SETTINGS[key]!r}",
                "retrain the model with this version",
            )
    return None


def _model_from_config(path: Path, config: Mapping[str, Any]) -> Audio2Latent:
    from talkcli.models.limits import check_fits_file

    try:
        k, n_latent, style_dim, arch = _checked_sizes(path, config)
        fps = float(config["fps"])
        normalised = bool(config.get("normalised", False))
        identity_input = bool(config.get("identity_input", True))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(
            path, f"audio model config is incomplete or invalid ({exc})", _HINT
        ) from None
    if not (math.isfinite(fps) and fps > 0):
        raise ModelFileError(path, "audio model config has non-positive sizes or fps", _HINT)
    features = _checked_features(path, config.get("features", {}))
    try:
        with torch.device("meta"):  # sizes only: nothing allocated yet
            shape_only = Audio2Latent(k, n_latent, style_dim, arch=arch, fps=fps, features=features)
    except ValueError as exc:
        raise ModelFileError(path, f"audio model config is invalid ({exc})", _HINT) from None
    numbers = sum(t.numel() for t in shape_only.state_dict().values())
    check_fits_file(path, numbers, "an audio model")
    try:
        model = Audio2Latent(
            k, n_latent, style_dim, arch=arch, fps=fps, normalised=normalised,
            identity_input=identity_input, features=features,
        )  # fmt: skip
    except ValueError as exc:
        raise ModelFileError(path, f"audio model config is invalid ({exc})", _HINT) from None
    return model


def load_audio2latent(path: str | Path, device: str | torch.device = "cpu") -> Audio2Latent:
    """Load a checkpoint written by ``save_audio2latent`` strictly, in eval mode.

    Every tensor must be present with the right shape and finite, nothing extra; the config must
    describe a model this talkcli builds. Any problem is a one-line ModelFileError (exit 2)
    naming the file and what is wrong.
    """
    from safetensors.torch import load_file

    from talkcli.models.state_dict import describe_mismatch

    p = require_file(path, "audio model")
    info = read_checkpoint_info(p)
    model = _model_from_config(p, info.config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        tensors = load_file(str(p), device="cpu")
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(
            p, f"audio model tensors cannot be read ({first[:120]})", _HINT
        ) from None
    problem = describe_mismatch(expected, tensors)
    if problem:
        raise ModelFileError(p, f"does not match its own config: {problem}", _HINT)
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ModelFileError(p, f"tensor {name!r} has dtype {t.dtype}, expected float", _HINT)
        if not torch.isfinite(t).all():
            raise ModelFileError(p, f"tensor {name!r} holds NaN or infinite values", _HINT)
    std_name = model.stats_names[1]  # mfcc_std, or feature_std for SSL features
    if not torch.all(tensors[std_name] > 0):
        raise ModelFileError(p, f"{std_name} has values <= 0", _HINT)
    for name in ("identity_scale", "output_scale"):
        if name in tensors and not torch.all(tensors[name] > 0):
            raise ModelFileError(p, f"{name} has values <= 0", _HINT)
    model.load_state_dict(
        {k: v.to(torch.float32) for k, v in tensors.items()}, strict=True, assign=True
    )
    model.generator = info.generator
    model.training_info = info.training
    model.eval()
    return model.to(torch.device(device) if isinstance(device, str) else device)


def check_generator_match(
    model: Audio2Latent,
    generator: Any,
    model_path: str | Path = "audio model",
    generator_path: str | Path = "generator",
    generator_sha256: str | None = None,
) -> bool:
    """Refuse a generator the model was not trained for (size or n_latent): ModelFileError
    naming both files. Returns True when ``generator_sha256`` is the one recorded at training
    time (the very same file), False when only the shapes agree (e.g. a PTI-tuned copy)."""
    want_size = model.generator.get("size")
    g_size, g_latent = int(generator.size), int(generator.n_latent)
    g_style = int(getattr(generator, "style_dim", model.style_dim))
    if (want_size is not None and int(want_size) != g_size) or g_latent != model.n_latent:
        trained = f"{want_size}x{want_size}" if want_size is not None else "another"
        raise ModelFileError(
            model_path,
            f"was trained for a {trained} generator ({model.n_latent} W+ layers) but "
            f"{generator_path} is {g_size}x{g_size} ({g_latent} W+ layers)",
            "pass the generator the model was trained for, or train a model for this one",
        )
    if g_style != model.style_dim:
        raise ModelFileError(
            model_path,
            f"predicts {model.style_dim}-d styles but {generator_path} uses {g_style}-d styles",
            "pass the generator the model was trained for",
        )
    sha = model.generator.get("sha256")
    return bool(sha) and sha == generator_sha256


def check_feature_match(
    model: Audio2Latent,
    feature_settings: Mapping[str, Any] | None,
    model_path: str | Path = "audio model",
    feature_folder: str | Path | None = None,
) -> None:
    """Refuse speech features the model was not trained on (issue 17): an SSL model needs
    ``--feature-model`` with the very weights (sha256) and layer it was trained with; an MFCC
    model takes no feature model. ``feature_settings``: ``SSLModel.settings()`` or None."""
    want = model.feature_settings
    if want is None:
        if feature_settings is not None:
            raise UserError(
                f"{model_path} reads MFCC features; --feature-model {feature_folder} is not used "
                "by it (drop --feature-model, or pass a model trained on those features)"
            )
        return
    if feature_settings is None:
        raise UserError(
            f"{model_path} was trained on {want['kind']} features (layer {want['layer']}): pass "
            f"the same feature model with --feature-model DIR (sha256 {want['sha256'][:12]}...)"
        )
    for key in ("kind", "sha256", "layer"):
        if feature_settings.get(key) != want.get(key):
            got = feature_settings.get(key)
            shown = {"sha256": lambda v: f"{str(v)[:12]}..."}.get(key, repr)
            raise ModelFileError(
                model_path,
                f"was trained on {want['kind']} features with {key} {shown(want.get(key))}, but "
                f"{feature_folder} gives {key} {shown(got)}",
                "pass the feature model (and --feature-layer) it was trained with",
            )
