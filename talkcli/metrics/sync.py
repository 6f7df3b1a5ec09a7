"""LSE-D / LSE-C with SyncNet v2, exactly as joonson/syncnet_python's ``SyncNetInstance.evaluate``.

Inputs are face crops (T, 224, 224, 3) uint8 RGB at 25 fps and 16 kHz mono float32 audio. What
``evaluate()`` does after ffmpeg has written the crops' frames and the 16-bit WAV, reproduced
step by step:

* video: frames as read by ``cv2.imread`` (BGR), raw 0..255 floats, windows of 5 frames
  (N, 3, 5, 224, 224) -> ``forward_lip``;
* audio: the int16 samples (``wavfile.read``; float samples are converted as ffmpeg does,
  round(x * 32768) clipped) -> ``python_speech_features.mfcc(audio, 16000)`` (13 coefficients,
  25 ms windows, 10 ms steps: 4 MFCC rows per video frame) -> (1, 1, 13, T') and windows of 20
  rows starting at 4 v -> ``forward_aud``;
* ``min_length = min(frames, floor(samples / 640))``, windows v = 0 .. min_length - 6;
* ``calc_pdist``: the audio embeddings zero-padded by ``vshift`` (15) on both ends, distances
  ``pairwise_distance`` (L2 with eps 1e-6) of each video embedding to the 31 audio embeddings
  around it; ``mdist`` = the mean over windows for each offset;
* LSE-D = min(mdist), offset = vshift - argmin (frames), LSE-C = median(mdist) - min(mdist).

The only step left out is the JPEG round trip of syncnet_python's temporary frames (lossy,
quality chosen by the ffmpeg build); talkcli scores the decoded frames themselves.

Face crops: ``crop_boxes``/``crop_faces`` reproduce syncnet_python's ``run_pipeline.crop_video``
(box half-size s = max(w, h) / 2 and centre, each median-filtered over 13 frames; frames padded
with grey 110; crop rows [y - s, y + 1.8 s), columns [x - 1.4 s, x + 1.4 s) (crop_scale 0.4);
``cv2.resize`` to 224x224). ``ALIGNED_FACE_BOX`` is the fixed box used for FFHQ-aligned frames.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talkcli.constants import SAMPLE_RATE  # SyncNet hears 16 kHz audio
from talkcli.models.syncnet import CROP_SIZE, MFCC_STEPS, WINDOW_FRAMES, SyncNet, load_syncnet

SYNC_FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // SYNC_FPS  # 640
MFCC_PER_FRAME = 4  # 10 ms MFCC steps per 40 ms frame
VSHIFT = 15
BATCH = 20  # syncnet_python's default --batch_size (results do not depend on it)
CROP_SCALE = 0.4
PAD_VALUE = 110
MEDIAN_KERNEL = 13
# The fewest frames LSE can score: one 5-frame window past the first (evaluate()'s
# ``min_length - 5`` windows), and more than half of the 13-frame median filter's span, else its
# zero padding wins the median and the smoothed face box collapses to nothing.
LSE_MIN_FRAMES = max(WINDOW_FRAMES + 1, MEDIAN_KERNEL // 2 + 1)  # 7
# The face box of an FFHQ-aligned frame, as fractions of its side (x1, y1, x2, y2). In an
# FFHQ-aligned face the eye centres are 1/4 of the side apart at height ~0.47 and the mouth is at
# ~0.75 (ffhq.py's quad: half-side 2 |eye_to_eye|, centre eye_avg + 0.1 eye_to_mouth); a face
# detector's box for such a face spans the cheeks (+-1.05 eye distances) from above the brows to
# the chin. syncnet_python's crop of this box puts the mouth near the middle of the 224 crop.
ALIGNED_FACE_BOX = (0.24, 0.34, 0.76, 0.92)


def float_to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16 as ffmpeg's pcm_s16le encoder rounds them."""
    a = np.asarray(audio, dtype=np.float32)
    return np.clip(np.rint(a.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def syncnet_mfcc(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """evaluate()'s MFCC: python_speech_features defaults on the int16 samples -> (13, T')."""
    import python_speech_features

    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"SyncNet needs {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
    pcm = float_to_pcm16(audio)
    mfcc = python_speech_features.mfcc(pcm, sample_rate)  # (T', 13) float64
    return np.ascontiguousarray(mfcc.T, dtype=np.float32)  # (13, T')


@functools.lru_cache(maxsize=2)
def _cached_syncnet(path: str, device: str) -> SyncNet:
    return load_syncnet(path, device)


def get_syncnet(
    model: SyncNet | str | Path | None = None,
    device: str = "cpu",
    weights_dir: str | Path | None = None,
) -> SyncNet:
    """A SyncNet: the module itself, one loaded from a path, or the registry's ``syncnet``
    (searched in ``weights_dir`` first)."""
    if isinstance(model, SyncNet):
        return model
    if model is None:
        from talkcli.weights import registry

        model = registry.resolve("syncnet", weights_dir, purpose="LSE-C/LSE-D")
    return _cached_syncnet(str(Path(model)), str(device))


def _check_crops(frames: np.ndarray) -> np.ndarray:
    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or a.dtype != np.uint8:
        raise ValueError(f"expected (T, 224, 224, 3) uint8 RGB face crops, got {a.shape} {a.dtype}")
    return a


def lip_embeddings(
    batches: Iterable[np.ndarray], net: SyncNet, batch_size: int = BATCH
) -> np.ndarray:
    """Embeddings of every 5-frame window of a stream of crop batches -> (T - 4, D) float32.

    Batches of (B, 224, 224, 3) uint8 RGB crops may have any sizes; the last 4 frames of each are
    carried over, so the result equals one pass over the whole video and memory stays bounded.
    """
    device = next(net.parameters()).device
    out: list[np.ndarray] = []
    tail = np.empty((0, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    for batch in batches:
        frames = np.concatenate([tail, _check_crops(batch)])
        n_windows = len(frames) - WINDOW_FRAMES + 1
        for s in range(0, max(n_windows, 0), batch_size):
            e = min(s + batch_size, n_windows)
            chunk = frames[s : e + WINDOW_FRAMES - 1, ..., ::-1]  # BGR, as cv2.imread
            video = torch.from_numpy(np.ascontiguousarray(chunk)).to(device).float()
            video = video.permute(3, 0, 1, 2)  # (3, F, 224, 224)
            windows = video.unfold(1, WINDOW_FRAMES, 1)  # (3, W, 224, 224, 5)
            windows = windows.permute(1, 0, 4, 2, 3).contiguous()  # (W, 3, 5, 224, 224)
            with torch.no_grad():
                out.append(net.forward_lip(windows).float().cpu().numpy())
        tail = frames[max(len(frames) - (WINDOW_FRAMES - 1), 0) :]
    if not out:
        return np.empty((0, net.feature_dim), dtype=np.float32)
    return np.concatenate(out)


def audio_embeddings(
    mfcc: np.ndarray, n_windows: int, net: SyncNet, batch_size: int = BATCH
) -> np.ndarray:
    """Embeddings of the MFCC windows [4 v, 4 v + 20) for v < n_windows -> (n_windows, D)."""
    device = next(net.parameters()).device
    cc = torch.from_numpy(np.require(mfcc, np.float32, ("C", "W"))).to(device)  # (13, T')
    need = MFCC_PER_FRAME * (n_windows - 1) + MFCC_STEPS
    if n_windows > 0 and cc.shape[1] < need:
        raise ValueError(f"{n_windows} windows need {need} MFCC steps, got {cc.shape[1]}")
    out = []
    for s in range(0, n_windows, batch_size):
        e = min(s + batch_size, n_windows)
        windows = torch.stack(
            [cc[:, MFCC_PER_FRAME * v : MFCC_PER_FRAME * v + MFCC_STEPS] for v in range(s, e)]
        ).unsqueeze(1)  # (B, 1, 13, 20)
        with torch.no_grad():
            out.append(net.forward_aud(windows).float().cpu().numpy())
    if not out:
        return np.empty((0, net.feature_dim), dtype=np.float32)
    return np.concatenate(out)


def offset_distances(lip: np.ndarray, aud: np.ndarray, vshift: int = VSHIFT) -> np.ndarray:
    """``calc_pdist``: (L, 2 vshift + 1) distances of each lip embedding to the audio embeddings
    at offsets -vshift .. +vshift (zero embeddings past the ends), float32."""
    if lip.shape != aud.shape:
        raise ValueError(f"embeddings differ in shape: {lip.shape} vs {aud.shape}")
    win = 2 * vshift + 1
    a = torch.from_numpy(np.require(aud, np.float32, ("C", "W")))
    v = torch.from_numpy(np.require(lip, np.float32, ("C", "W")))
    padded = F.pad(a, (0, 0, vshift, vshift))  # (L + 2 vshift, D)
    windows = padded.unfold(0, win, 1).permute(0, 2, 1)  # (L, win, D)
    rows = v.unsqueeze(1).expand_as(windows)
    d = F.pairwise_distance(rows.reshape(-1, v.shape[1]), windows.reshape(-1, v.shape[1]))
    return d.view(len(v), win).numpy()


def score_offsets(dists: np.ndarray, vshift: int = VSHIFT) -> dict[str, float | int]:
    """LSE-D, LSE-C and the offset (frames) from ``offset_distances``' (L, 2 vshift + 1)."""
    if dists.ndim != 2 or dists.shape[0] == 0 or dists.shape[1] != 2 * vshift + 1:
        raise ValueError(f"expected (L >= 1, {2 * vshift + 1}) distances, got {dists.shape}")
    # torch.stack(dists, 1).mean(1) as upstream: the same memory layout, the same float sums
    mdist = torch.from_numpy(np.require(dists.T, requirements=("C", "W"))).mean(dim=1)  # (31,)
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return {"lse_d": float(minval), "lse_c": float(conf), "offset": int(vshift - int(minidx))}


def sync_windows(n_frames: int, n_samples: int) -> int:
    """How many 5-frame windows evaluate() scores: min(frames, samples // 640) - 5."""
    return min(n_frames, n_samples // SAMPLES_PER_FRAME) - WINDOW_FRAMES


def lse_from_lip(
    lip: np.ndarray,
    n_frames: int,
    audio: np.ndarray,
    net: SyncNet,
    vshift: int = VSHIFT,
    batch_size: int = BATCH,
) -> dict[str, float | int]:
    """LSE from lip embeddings of all n_frames - 4 windows and the whole audio track."""
    audio = np.asarray(audio, dtype=np.float32)
    n = sync_windows(n_frames, len(audio))
    if n < 1:
        raise ValueError(
            f"LSE needs at least {WINDOW_FRAMES + 1} frames at 25 fps with audio under them, "
            f"got {n_frames} frames and {len(audio) / SAMPLE_RATE:.3f} s of audio"
        )
    aud = audio_embeddings(syncnet_mfcc(audio), n, net, batch_size)
    return score_offsets(offset_distances(lip[:n], aud, vshift), vshift)


def lse(
    frames: np.ndarray,
    audio: np.ndarray,
    model: SyncNet | str | Path | None = None,
    *,
    vshift: int = VSHIFT,
    batch_size: int = BATCH,
    device: str = "cpu",
) -> dict[str, float | int]:
    """LSE-D, LSE-C and the AV offset of face crops (T, 224, 224, 3) uint8 RGB at 25 fps with
    their 16 kHz mono float32 audio -> {"lse_d", "lse_c", "offset"} (syncnet_python's
    evaluate(): LSE-D = its "Min dist", LSE-C its "Confidence", offset its "AV offset")."""
    crops = _check_crops(frames)
    net = get_syncnet(model, device)
    n = sync_windows(len(crops), len(np.asarray(audio)))
    lip = lip_embeddings(_chunks(crops[: n + WINDOW_FRAMES - 1], 64), net, batch_size)
    return lse_from_lip(lip, len(crops), audio, net, vshift, batch_size)


def _chunks(a: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for s in range(0, len(a), size):
        yield a[s : s + size]


# -- face crops (syncnet_python run_pipeline.crop_video) ---------------------------------------


def smooth_boxes(boxes: np.ndarray) -> np.ndarray:
    """Per-frame boxes (T, 4) x1 y1 x2 y2 -> (T, 3) centre x, centre y, half-size s, each
    median-filtered over 13 frames (scipy.signal.medfilt, zero-padded ends, as upstream)."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or len(b) == 0:
        raise ValueError(f"expected (T, 4) boxes, got {b.shape}")
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    y = (b[:, 1] + b[:, 3]) / 2
    x = (b[:, 0] + b[:, 2]) / 2
    return np.stack([medfilt(v, MEDIAN_KERNEL) for v in (x, y, s)], axis=1)


def medfilt(v: np.ndarray, kernel_size: int) -> np.ndarray:
    """``scipy.signal.medfilt`` of a 1-D array (zero-padded ends), without importing
    scipy.signal (seconds of start-up)."""
    half = kernel_size // 2
    padded = np.pad(np.asarray(v, dtype=np.float64), half)
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, kernel_size), axis=1)


def crop_face(frame: np.ndarray, x: float, y: float, s: float) -> np.ndarray:
    """One syncnet_python crop: pad with 110, rows [y - s, y + 1.8 s), columns
    [x - 1.4 s, x + 1.4 s), resized to (224, 224, 3) with cv2's bilinear filter."""
    import cv2

    cs = CROP_SCALE
    bsi = int(s * (1 + 2 * cs))
    padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=PAD_VALUE)
    my, mx = y + bsi, x + bsi
    face = padded[
        int(my - s) : int(my + s * (1 + 2 * cs)), int(mx - s * (1 + cs)) : int(mx + s * (1 + cs))
    ]
    if face.size == 0:
        raise ValueError(f"empty face crop at centre ({x:.1f}, {y:.1f}) half-size {s:.1f}")
    return cv2.resize(face, (CROP_SIZE, CROP_SIZE))


def aligned_box(width: int, height: int) -> np.ndarray:
    """``ALIGNED_FACE_BOX`` in pixels of a (width x height) FFHQ-aligned frame, (4,)."""
    x1, y1, x2, y2 = ALIGNED_FACE_BOX
    return np.array([x1 * width, y1 * height, x2 * width, y2 * height])
