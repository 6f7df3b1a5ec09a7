"""Head motion from speech (``animate --head-motion SCALE``): yaw/pitch/roll that follow the voice.

Per video frame the speech gives two envelopes (``speech_envelopes``): loudness (RMS in dBFS
over a 50 ms window centred on the frame) and pitch (autocorrelation F0, 70-400 Hz, 0 when
unvoiced). ``HeadMotion`` turns them into three angle tracks in degrees, frame by frame, with
its state carried across chunks (so the values do not depend on the chunking and memory does
not grow with the length):

* **voice activity**: a frame is active when it is within 25 dB of the running loudness peak
  and above -55 dBFS; a *speaking gate* stays open for 0.5 s after the last active frame and
  then closes with a 0.35 s time constant, so a silence longer than ~1 s settles to idle;
* **accents** (stressed syllables): peaks of the loudness rise (over ``ACCENT_RISE_DB`` per two
  frames, at least 0.25 s apart) while speaking; each one starts a **nod** (pitch, a smooth
  0.15 s pulse scaled by how high the voice is against its running mean; the pulses' slow 1.5 s
  mean is taken out, so the head nods about its pose instead of sinking) and may pick a new
  **turn** target for yaw and roll (the head turns there and stays; in silence the targets
  relax back to straight ahead);
* **sway**: slow sinusoids (0.07-0.45 Hz, seeded phases) on each axis, full while speaking and
  ``IDLE_SWAY`` of it in silence;
* everything is scaled by SCALE and passed through a critically damped low-pass (two one-pole
  stages, 60 ms), so there are no frame-to-frame jumps; frame 0 starts straight ahead.

SCALE 1 gives a yaw standard deviation of a few degrees while speaking (2-8); in silence the
motion is the idle sway alone (well under 60 % of the speaking std). The random draws come from
``numpy.random.default_rng([seed, HEAD_STREAM])``: the same seed and speech give the same motion.
"""

from __future__ import annotations

import math

import numpy as np

from talkcli.audio.features import SampleSource
from talkcli.constants import SAMPLE_RATE

HEAD_STREAM = 0x4EAD  # numpy seed sequence entry (blinks use their own)
WINDOW_S = 0.05  # analysis window of the envelopes, centred on the frame
F0_RANGE = (70.0, 400.0)  # Hz
VOICED_CORR = 0.45  # normalised autocorrelation peak of a voiced frame
FLOOR_DB = -100.0
ACTIVE_BELOW_PEAK_DB = 25.0
ACTIVE_MIN_DB = -55.0
PEAK_DECAY_DB_S = 2.0
HOLD_S = 0.5  # the gate stays open this long after the last active frame
GATE_TAU_S = 0.35
ACCENT_RISE_DB = 4.0
ACCENT_GAP_S = 0.25
NOD_DEG = 4.0  # nod amplitude per accent (pitch), before the voice's pitch weighting
NOD_TAU_S = 0.15  # the nod pulse peaks this long after the accent
NOD_LEVEL_S = 1.5  # the nods' slow mean is taken out: the head nods about its pose, not down
TURN_DEG = (5.0, 0.0, 2.0)  # std of the turn targets per axis (yaw, pitch, roll)
TURN_PROB = (0.4, 0.0, 0.3)  # chance an accent picks a new target, per axis
TURN_TAU_S = 0.2  # the head follows its target with this (critically damped) time constant
RELAX_S = 0.4  # targets relax to straight ahead in silence with this time constant
SWAY_DEG = (1.5, 1.0, 0.8)  # std of the sway per axis while speaking
IDLE_SWAY = 0.35  # sway amplitude in silence, relative to speaking
SMOOTH_TAU_S = 0.06  # final low-pass
AXES = ("yaw", "pitch", "roll")


def _frames(source: SampleSource, start: int, count: int, fps: float, win: int) -> np.ndarray:
    """(count, win) float64 samples centred on frames ``start..`` (zeros outside the audio)."""
    centres = np.round((start + np.arange(count) + 0.5) / fps * SAMPLE_RATE).astype(np.int64)
    lo = int(centres[0]) - win // 2
    hi = int(centres[-1]) - win // 2 + win
    seg = np.zeros(hi - lo, dtype=np.float64)
    a, b = max(lo, 0), min(hi, source.n_samples)
    if b > a:
        seg[a - lo : b - lo] = source.read(a, b)
    idx = (centres - win // 2 - lo)[:, None] + np.arange(win)[None, :]  # (count, win)
    return seg[idx]


def speech_envelopes(source: SampleSource, start: int, count: int, fps: float) -> np.ndarray:
    """(count, 2) float64: loudness (dBFS RMS) and F0 (Hz, 0 unvoiced) of frames ``start..``
    (each from the samples around it only: the values do not depend on how frames are chunked)."""
    win = int(round(WINDOW_S * SAMPLE_RATE))
    x = _frames(source, start, count, fps, win)  # (count, win)
    x = x - x.mean(axis=1, keepdims=True)
    rms = np.sqrt((x * x).mean(axis=1))
    db = np.maximum(20.0 * np.log10(np.maximum(rms, 1e-12)), FLOOR_DB)
    spec = np.fft.rfft(x * np.hanning(win)[None], n=2 * win, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :win]  # (count, win)
    lo, hi = int(SAMPLE_RATE / F0_RANGE[1]), int(SAMPLE_RATE / F0_RANGE[0])
    norm = ac[:, lo:hi] / np.maximum(ac[:, :1], 1e-20)
    lag = np.argmax(norm, axis=1)
    peak = norm[np.arange(count), lag]
    f0 = np.where((peak > VOICED_CORR) & (db > ACTIVE_MIN_DB), SAMPLE_RATE / (lo + lag), 0.0)
    return np.stack([db, f0], axis=1)


class _Smoother:
    """Two one-pole low-pass stages (critically damped), per axis, state carried."""

    def __init__(self, tau: float, dt: float, n: int = 3) -> None:
        self.a = math.exp(-dt / tau)
        self.s1 = np.zeros(n)
        self.s2 = np.zeros(n)

    def step(self, x: np.ndarray) -> np.ndarray:
        self.s1 = self.a * self.s1 + (1 - self.a) * x
        self.s2 = self.a * self.s2 + (1 - self.a) * self.s1
        return self.s2


class HeadMotion:
    """Yaw/pitch/roll (degrees) from speech envelopes, frame by frame (see the module doc)."""

    def __init__(self, scale: float, fps: float, seed: int = 0) -> None:
        self.scale, self.fps, self.dt = float(scale), float(fps), 1.0 / float(fps)
        self.rng = np.random.default_rng([int(seed), HEAD_STREAM])
        freqs = self.rng.uniform(0.07, 0.45, size=(3, 3))  # (axis, component) Hz
        phases = self.rng.uniform(0.0, 2 * np.pi, size=(3, 3))
        weights = self.rng.uniform(0.5, 1.0, size=(3, 3))
        # a sum of sinusoids with amplitudes a_i has std sqrt(sum a_i^2 / 2)
        weights *= (np.asarray(SWAY_DEG) / np.sqrt((weights**2).sum(axis=1) / 2))[:, None]
        self.sway = (freqs, phases, weights)
        self.frame = 0
        self.peak = -math.inf
        self.since_active = math.inf
        self.gate = 0.0
        self.loud = [FLOOR_DB, FLOOR_DB, FLOOR_DB]  # smoothed loudness of the last frames
        self.rise = [0.0, 0.0]  # loudness rise of the last two frames
        self.since_accent = math.inf
        self.f0_mean = 0.0
        self.target = np.zeros(3)
        self.follow = _Smoother(TURN_TAU_S, self.dt)
        self.nod = np.zeros(2)  # two one-pole stages of the nod pulse
        self.nod_level = 0.0  # their slow mean (NOD_LEVEL_S)
        self.out = _Smoother(SMOOTH_TAU_S, self.dt)

    def _sway(self, t: float) -> np.ndarray:
        freqs, phases, weights = self.sway
        return (weights * np.sin(2 * np.pi * freqs * t + phases)).sum(axis=1)  # (3,)

    def _activity(self, db: float) -> bool:
        self.peak = max(db, self.peak - PEAK_DECAY_DB_S * self.dt)
        active = db > ACTIVE_MIN_DB and db > self.peak - ACTIVE_BELOW_PEAK_DB
        self.since_active = 0.0 if active else self.since_active + self.dt
        want = 1.0 if self.since_active < HOLD_S else 0.0
        self.gate += (want - self.gate) * (1 - math.exp(-self.dt / GATE_TAU_S))
        return active

    def _accent(self, db: float, f0: float, active: bool) -> float:
        """Strength of an accent at the previous frame's loudness-rise peak (0: none)."""
        self.loud = [self.loud[1], self.loud[2], 0.5 * db + 0.5 * self.loud[2]]
        rise = self.loud[2] - self.loud[0]
        before, peak = self.rise
        self.rise = [peak, rise]
        self.since_accent += self.dt
        if f0 > 0:
            self.f0_mean = f0 if self.f0_mean == 0 else self.f0_mean + 0.02 * (f0 - self.f0_mean)
        is_peak = peak > ACCENT_RISE_DB and peak >= before and peak > rise
        if not (active and is_peak and self.since_accent >= ACCENT_GAP_S):
            return 0.0
        self.since_accent = 0.0
        if f0 > 0 and self.f0_mean > 0:
            return float(np.clip(1.0 + 2.0 * (f0 / self.f0_mean - 1.0), 0.5, 2.0))
        return 0.8

    def _step(self, db: float, f0: float) -> np.ndarray:
        active = self._activity(db)
        stress = self._accent(db, f0, active)
        if stress > 0:
            kick = NOD_DEG * stress * self.rng.uniform(0.6, 1.2)
            self.nod[0] += kick * (math.e * self.dt / NOD_TAU_S)  # pulse peak ~ kick
            for axis in range(3):
                if self.rng.uniform() < TURN_PROB[axis]:
                    self.target[axis] = self.rng.normal(0.0, TURN_DEG[axis])
        else:
            self.target *= 1.0 - (1.0 - self.gate) * self.dt / RELAX_S
        a = math.exp(-self.dt / NOD_TAU_S)
        self.nod = np.array([a * self.nod[0], a * self.nod[1] + self.nod[0]])
        self.nod_level += (self.nod[1] - self.nod_level) * self.dt / NOD_LEVEL_S
        nod = np.array([0.0, self.nod[1] - self.nod_level, 0.0])
        sway = self._sway(self.frame * self.dt) * (IDLE_SWAY + (1 - IDLE_SWAY) * self.gate)
        self.frame += 1
        return self.out.step(self.scale * (self.follow.step(self.target) + nod + sway))

    def step(self, envelopes: np.ndarray) -> np.ndarray:
        """(n, 2) envelopes (``speech_envelopes``) of the next frames -> (n, 3) degrees."""
        out = np.zeros((len(envelopes), 3), dtype=np.float64)
        for i, (db, f0) in enumerate(np.asarray(envelopes, dtype=np.float64)):
            out[i] = self._step(float(db), float(f0))
        return out


def head_motion_track(
    source: SampleSource, fps: float, scale: float, seed: int = 0, chunk: int = 125
) -> np.ndarray:
    """The whole (T, 3) track of a short signal (tests, plots); ``animate`` streams instead."""
    from talkcli.audio.features import n_frames

    total = n_frames(source.n_samples, fps)
    head = HeadMotion(scale, fps, seed)
    parts = [
        head.step(speech_envelopes(source, a, min(chunk, total - a), fps))
        for a in range(0, total, chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 3))
