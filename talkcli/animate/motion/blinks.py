"""Blinks (``animate --blinks PER_MIN``): a seeded renewal process on the ``eyes_open`` control.

Blink onsets form a renewal process with mean rate ``PER_MIN`` per minute: the time from one
onset to the next is ``MIN_INTERVAL_S`` (1 s) plus a gamma variable of shape ``GAMMA_SHAPE``
whose mean makes the whole interval average ``60 / PER_MIN`` seconds (at 60 per minute or more
every interval is 1 s), so two blinks are never closer than 1 s. The first onset falls at a
uniform fraction of a first interval. Each blink lasts 150-350 ms (uniform): the lid closes in
the first third and opens in the remaining two thirds along smooth (raised-cosine) ramps, down
to a closed eye: the ``eyes_open`` control goes from the identity's measured value to
``CLOSED_EYES_OPEN`` (an eye aspect ratio of 0.05). The closing moment is snapped onto a video
frame, so every blink shows one fully closed frame.

``BlinkTrack`` draws the events lazily with ``numpy.random.default_rng([seed, BLINK_STREAM])``
and evaluates any range of frames in order, holding only the events that overlap it: memory does
not depend on the video's length, the same seed gives the same blinks, and the values do not
depend on the chunking. The values are *offsets* on ``eyes_open`` (0 between blinks,
``CLOSED_EYES_OPEN - open_value`` at full closure).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

MIN_INTERVAL_S = 1.0  # onsets never closer than this
GAMMA_SHAPE = 4.0  # of the interval's variable part: fairly regular, like human blinking
DURATION_S = (0.15, 0.35)  # one blink, uniform
CLOSE_FRACTION = 1.0 / 3.0  # closing takes a third of the blink, opening two thirds
CLOSED_EYES_OPEN = 0.05  # eye aspect ratio of a closed eye
DEFAULT_EYES_OPEN = 0.28  # an open eye's ratio when the identity's cannot be measured
BLINK_STREAM = 0xB1  # numpy seed sequence entry: blinks never share draws with other motion


def _ramp(x: np.ndarray) -> np.ndarray:
    """0 at x <= 0, 1 at x >= 1, a raised cosine in between (smooth lid motion)."""
    x = np.clip(x, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * x)


def blink_depth(t: np.ndarray, closed_at: float, duration: float) -> np.ndarray:
    """Lid closure (0 open .. 1 closed) at times ``t`` (s) of one blink closing at ``closed_at``."""
    close = duration * CLOSE_FRACTION
    start, end = closed_at - close, closed_at + duration - close
    rising = _ramp((t - start) / close)
    falling = 1.0 - _ramp((t - closed_at) / (end - closed_at))
    return np.where(t <= closed_at, rising, falling) * ((t > start) & (t < end))


class BlinkTrack:
    """The ``eyes_open`` offsets of a seeded blink process, evaluated frame range by range."""

    def __init__(
        self,
        per_minute: float,
        fps: float,
        seed: int = 0,
        open_value: float = DEFAULT_EYES_OPEN,
        closed_value: float = CLOSED_EYES_OPEN,
    ) -> None:
        if per_minute < 0 or fps <= 0:
            raise ValueError(f"per_minute >= 0 and fps > 0 needed, got {per_minute}, {fps}")
        self.per_minute = float(per_minute)
        self.fps = float(fps)
        self.depth = float(closed_value) - float(open_value)  # (negative) offset when closed
        self._rng = np.random.default_rng([int(seed), BLINK_STREAM])
        self._events: deque[tuple[float, float]] = deque()  # (closed_at s, duration s)
        self._next_onset = self._first_onset() if self.per_minute > 0 else math.inf

    def _interval(self) -> float:
        mean = 60.0 / self.per_minute
        extra = max(mean - MIN_INTERVAL_S, 0.0)
        if extra <= 0:
            return MIN_INTERVAL_S
        return MIN_INTERVAL_S + float(self._rng.gamma(GAMMA_SHAPE, extra / GAMMA_SHAPE))

    def _first_onset(self) -> float:
        return float(self._rng.uniform(0.2, 1.0)) * self._interval()

    def _draw_until(self, t_end: float) -> None:
        """Draw events whose onset is before ``t_end`` (s)."""
        while self._next_onset < t_end:
            duration = float(self._rng.uniform(*DURATION_S))
            closed_at = self._next_onset + duration * CLOSE_FRACTION
            closed_at = round(closed_at * self.fps) / self.fps  # a fully closed frame
            self._events.append((closed_at, duration))
            self._next_onset += self._interval()

    def values(self, start: int, count: int) -> np.ndarray:
        """``eyes_open`` offsets (count,) float64 of frames ``start .. start+count-1``; frame
        ranges must come in order (each starting where the last ended, or later)."""
        t = (start + np.arange(count, dtype=np.float64)) / self.fps  # (count,)
        out = np.zeros(count, dtype=np.float64)
        if count == 0 or self.per_minute == 0:
            return out
        self._draw_until(float(t[-1]) + 1.0 / self.fps)
        while self._events and self._events[0][0] + self._events[0][1] < t[0]:
            self._events.popleft()  # over before this range
        depth = np.zeros(count, dtype=np.float64)
        for closed_at, duration in self._events:
            depth = np.maximum(depth, blink_depth(t, closed_at, duration))
        return out + self.depth * depth
