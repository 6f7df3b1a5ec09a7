"""MFCC features and per-frame windows (thesis 4.3.3): python_speech_features, window formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from python_speech_features import mfcc as psf_mfcc

from talkcli.audio import features as F
from tests.speech import speech, synth_speech


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> np.ndarray:
    """Real speech (espeak-ng) when present, else the synthesized speech-like signal."""
    return speech(1, tmp_path_factory.mktemp("speech"), seconds=3.0)


def reference_windows(samples: np.ndarray, fps: float) -> np.ndarray:
    """The issue's formula, written out directly (float arithmetic, loops)."""
    rows = psf_mfcc(samples, 16000, winlen=0.025, winstep=0.01, numcep=13)[:, 1:]
    m = len(rows)
    t_count = math.ceil(len(samples) / 16000 * fps)
    out = np.zeros((t_count, 12, 28))
    for t in range(t_count):
        s = math.floor(100 * (t + 0.5) / fps - 14 + 0.5)
        for j in range(28):
            out[t, :, j] = rows[min(max(s + j, 0), m - 1)]
    return out


def test_mfcc_is_python_speech_features_without_the_first_coefficient(samples):
    got = F.mfcc(samples)
    ref = psf_mfcc(samples, 16000, winlen=0.025, winstep=0.01, numcep=13)
    assert got.shape == (len(ref), 12)
    np.testing.assert_array_equal(got, ref[:, 1:])


def test_mfcc_computed_in_chunks_equals_one_pass(samples, monkeypatch):
    whole = F.mfcc(samples)
    monkeypatch.setattr(F, "CHUNK_ROWS", 37)  # many chunks, odd boundaries
    # equal to float64 rounding (BLAS may sum a block of rows in another order)
    np.testing.assert_allclose(F.mfcc(samples), whole, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.mfcc_rows(samples, 50, 121), whole[50:121], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_mfcc_windows_follow_the_formula_including_the_edges(samples, fps):
    got = F.mfcc_windows(samples, fps)
    ref = reference_windows(samples, fps)
    assert got.dtype == np.float32
    assert got.shape == ref.shape == (math.ceil(len(samples) / 16000 * fps), 12, 28)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)
    # the first windows reach before the audio: their leading columns repeat row 0
    rows = F.mfcc(samples)
    np.testing.assert_allclose(got[0, :, 0], rows[0], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(got[-1, :, -1], rows[-1], rtol=1e-6, atol=1e-5)


def test_at_25_fps_frame_t_reads_rows_4t_minus_12_to_4t_plus_15():
    starts = F.window_starts(100, 25.0)
    np.testing.assert_array_equal(starts, 4 * np.arange(100) - 12)
    rows = np.arange(400 * 12, dtype=np.float64).reshape(400, 12)  # row r holds 12r..12r+11
    win = F.windows_from_mfcc(rows, range(10, 12), 25.0)
    np.testing.assert_array_equal(win[0, 0], 12 * np.arange(28, 56))  # rows 28..55 = 4*10-12..
    np.testing.assert_array_equal(win[1, 0], 12 * np.arange(32, 60))


def test_frame_count_is_exact_where_floats_would_round_up():
    # 1600 samples = 0.1 s: 0.1 * 30 is 3.0000000000000004 in floats, yet exactly 3 frames
    assert F.n_frames(1600, 30.0) == 3
    assert F.n_frames(16000, 25.0) == 25
    assert F.n_frames(16001, 25.0) == 26
    x = np.zeros(1600, np.float32)
    x[::7] = 0.1
    assert F.mfcc_windows(x, 30.0).shape == (3, 12, 28)


def test_streamed_windows_equal_the_whole(samples):
    whole = F.mfcc_windows(samples, 25.0)
    chunks = list(F.iter_mfcc_windows(samples, 25.0, chunk_frames=7))
    assert [len(c) for c in chunks[:-1]] == [7] * (len(chunks) - 1)
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_audio_shorter_than_one_mfcc_frame_still_gives_one_window_per_frame():
    x = (0.1 * np.sin(np.arange(300) / 5)).astype(np.float32)  # 18.75 ms
    assert F.mfcc(x).shape == (1, 12)
    win = F.mfcc_windows(x, 25.0)
    assert win.shape == (1, 12, 28)
    assert np.all(win == win[:, :, :1])  # every column repeats the only row


def test_bad_samples_are_refused():
    with pytest.raises(ValueError, match="empty"):
        F.mfcc(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="mono"):
        F.mfcc(np.zeros((100, 2), np.float32))
    with pytest.raises(ValueError, match="fps"):
        F.mfcc_windows(np.zeros(1000, np.float32), 0.0)


def test_the_fallback_speech_has_pauses_and_syllables():
    x = synth_speech(3.0, seed=3)
    frame_rms = np.sqrt(np.mean(x[: len(x) // 400 * 400].reshape(-1, 400) ** 2, axis=1))
    assert (frame_rms < 0.01).mean() > 0.1  # pauses
    assert (frame_rms > 0.05).mean() > 0.3  # speech
