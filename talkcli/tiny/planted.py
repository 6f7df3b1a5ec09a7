"""A planted generator/detector pair: known W+ directions control measurable face quantities.

For tests and demos of ``directions find`` (issue 16) without real weights:

* ``PlantedGenerator`` has the repo's generator interface (``mapping``, ``synthesis``,
  ``latent_avg``, ``n_latent``, ``style_dim``, ``size``, ``device``). Its image is a fixed faint
  texture plus, for each planted quantity k, ``amplitude * <w+ - avg+, P_k>`` times an orthogonal
  pixel pattern (channel means, left-right, top-bottom, quadrants); ``P_k`` (unit norm, on the
  quantity's default layers) is the planted direction;
* ``PatternDetector`` (the ``LandmarkDetector`` protocol) reads each pattern's coefficient ``t_k``
  back from the uint8 image and draws 68 landmarks whose measures (``talkcli.face.measures``) are
  ``base_k + gain_k * t_k``: a 3D mean face posed by yaw/pitch/roll and projected with the same
  pinhole camera ``head_pose`` assumes, eyelids and inner lips opened to the planted ratios, the
  mouth corners moved apart for the smile (which is why a smile also nudges the pose a little:
  real cross-talk for the report to show).

Moving a code by a unit step along a unit W+ direction ``d`` therefore changes quantity k by
``per_unit_k(d) = gain_k * amplitude * <d, P_k>`` (``planted_per_unit``), up to the uint8
rounding and the smile's pose coupling. Any other generator can be measured by the detector too
(its renders' pattern coefficients become "quantities"): ``talkcli directions find`` tests use it
with the tiny pack's StyleGAN2.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from talkcli.face.landmarks import Face, box_of
from talkcli.face.measures import MODEL_68

PLANTED = ("yaw", "pitch", "roll", "eyes_open", "mouth_open", "smile")
BASE = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0, "eyes_open": 0.25, "mouth_open": 0.4, "smile": 1.0}
GAIN = {"yaw": 100.0, "pitch": 100.0, "roll": 100.0, "eyes_open": 0.5, "mouth_open": 1.0,
        "smile": 1.0}  # fmt: skip
TEXTURE = 0.02  # the fixed texture's amplitude (dithers the uint8 rounding)

_FACE_3D = MODEL_68  # the 3D mean face talkcli.face.measures fits poses against
DEPTH = 750.0  # the face's distance from the camera (face ~60 % of the image width)


def patterns(size: int) -> np.ndarray:
    """(6, 3, size, size) orthogonal patterns: channel 0, 1, 2 means; left-right; top-bottom;
    quadrants (the last three on every channel)."""
    p = np.zeros((6, 3, size, size), dtype=np.float32)
    half = size // 2
    for c in range(3):
        p[c, c] = 1.0
    lr = np.ones((size, size), np.float32)
    lr[:, half:] = -1.0
    tb = np.ones((size, size), np.float32)
    tb[half:] = -1.0
    p[3], p[4], p[5] = lr, tb, lr * tb
    return p


def planted_layers(n_latent: int) -> dict[str, tuple[int, int]]:
    """The planted directions' layers: ``directions find``'s defaults for ``n_latent``."""
    from talkcli.directions.fit import default_layers

    return {n: default_layers(n, n_latent) for n in PLANTED}


class PlantedGenerator:
    """A generator whose quantities follow known W+ directions (module docstring)."""

    def __init__(self, size: int = 32, n_latent: int = 8, style_dim: int = 512, seed: int = 0,
                 amplitude: float = 0.1) -> None:  # fmt: skip
        rng = np.random.default_rng(seed)
        self.size, self.n_latent, self.style_dim, self.z_dim = size, n_latent, style_dim, style_dim
        self.amplitude = amplitude
        self.latent_avg = torch.from_numpy(rng.normal(0, 0.5, style_dim).astype(np.float32))
        self.mix = torch.from_numpy(  # mapping: an anisotropic linear map z -> w
            (np.eye(style_dim) + 0.3 * rng.normal(0, 1 / math.sqrt(style_dim),
                                                  (style_dim, style_dim))).astype(np.float32)
        )  # fmt: skip
        q, _ = np.linalg.qr(rng.normal(size=(style_dim, len(PLANTED))))  # orthonormal (D, 6)
        self.directions = np.zeros((len(PLANTED), n_latent, style_dim))  # (6, L, D), unit norm
        for k, (lo, hi) in enumerate(planted_layers(n_latent).values()):
            self.directions[k, lo : hi + 1] = q[:, k]
            self.directions[k] /= np.linalg.norm(self.directions[k])
        self.patterns = torch.from_numpy(patterns(size))  # (6, 3, S, S)
        self.texture = torch.from_numpy(
            rng.uniform(-TEXTURE, TEXTURE, (3, size, size)).astype(np.float32)
        )
        self.device = torch.device("cpu")

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) -> w (B, D) = latent_avg + z @ mix."""
        return self.latent_avg + z.float() @ self.mix

    def signals(self, w_plus: np.ndarray) -> np.ndarray:
        """(B, L, D) codes -> (B, 6) ``<w+ - avg+, P_k>``."""
        delta = np.asarray(w_plus, np.float64) - self.latent_avg.numpy()[None, None, :]
        return delta.reshape(len(delta), -1) @ self.directions.reshape(len(PLANTED), -1).T

    def synthesis(self, w_plus: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """(B, L, D) -> (B, 3, S, S) in [-1, 1]."""
        s = torch.from_numpy(self.signals(w_plus.detach().cpu().numpy())).float()  # (B, 6)
        img = self.texture + self.amplitude * torch.einsum("bk,kchw->bchw", s, self.patterns)
        return img.clamp(-1, 1)

    def planted_per_unit(self, name: str, direction: np.ndarray) -> float:
        """The quantity's change per unit step along ``direction`` (L, D) as the toy defines it."""
        k = PLANTED.index(name)
        return GAIN[name] * self.amplitude * float(np.sum(direction * self.directions[k]))


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) Ry(yaw) Rx(-pitch) (radians): ``head_pose`` reads (yaw, pitch, roll) back."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(-pitch), math.sin(-pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return rz @ ry @ rx


def _open(lm: np.ndarray, a: int, b: int, ups: tuple[int, ...], downs: tuple[int, ...],
          half_height: float) -> None:  # fmt: skip
    """Place ``ups``/``downs`` evenly between corners a and b, +-half_height across the line."""
    p, q = lm[a], lm[b]
    v = q - p
    n = np.array([v[1], -v[0]]) / max(float(np.linalg.norm(v)), 1e-9)  # image "up" for a->b
    for i, (u, d) in enumerate(zip(ups, downs, strict=True)):
        f = (i + 1) / (len(ups) + 1)
        lm[u] = p + f * v + half_height * n
        lm[d] = p + f * v - half_height * n


def face_landmarks(values: dict[str, float], size: tuple[int, int]) -> np.ndarray:
    """(68, 2) landmarks in an image of ``size`` (H, W) whose measures are ``values`` (pose in
    degrees; eyes_open, mouth_open exactly; smile through the 3D mouth width)."""
    h, w = size
    rot = _rotation(*(math.radians(values[n]) for n in ("yaw", "pitch", "roll")))
    lm = np.tile([w / 2.0, h / 2.0], (68, 1))
    for i, (x, y, z) in _FACE_3D.items():
        if i in (48, 54):
            x = x * values["smile"]  # interocular is 300: smile ratio ~ values["smile"]
        cam = rot @ np.array([x, y, z]) + np.array([0.0, 0.0, DEPTH])
        lm[i] = [w * cam[0] / cam[2] + w / 2.0, w * cam[1] / cam[2] + h / 2.0]
    ear = values["eyes_open"]
    for a, b, ups, downs in ((36, 39, (37, 38), (41, 40)), (42, 45, (43, 44), (47, 46))):
        _open(lm, a, b, ups, downs, ear * float(np.linalg.norm(lm[b] - lm[a])) / 2.0)
    gap = values["mouth_open"] * float(np.linalg.norm(lm[54] - lm[48])) / 2.0
    _open(lm, 48, 54, (61, 62, 63), (67, 66, 65), gap)
    return lm


class PatternDetector:
    """Landmarks from the image's pattern coefficients (module docstring); one face always."""

    name = "planted"

    def __init__(self, names: tuple[str, ...] = PLANTED) -> None:
        self.names = names

    def coefficients(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (6,) pattern coefficients of the image in [-1, 1] units."""
        x = img.astype(np.float64).transpose(2, 0, 1) / 127.5 - 1.0  # (3, H, W)
        p = patterns(img.shape[0]).astype(np.float64)  # (6, 3, H, W)
        return np.einsum("chw,kchw->k", x, p) / np.einsum("kchw,kchw->k", p, p)

    def detect(self, img: np.ndarray) -> list[Face]:
        t = self.coefficients(img)
        values = {n: BASE[n] + GAIN[n] * t[k] for k, n in enumerate(PLANTED)}
        lm = face_landmarks(values, img.shape[:2])
        return [Face(lm, box_of(lm), 1.0)]
