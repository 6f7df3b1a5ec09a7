"""Issue 18: ``--compile auto|on|off`` (``talkcli.compiled.CompiledBatches``).

The decision rule, the padding of short batches and the eager fallback run against a stand-in
for ``torch.compile`` (fast); one slow test compiles the tiny generator for real and checks its
frames against eager with recompilation forbidden, another that a missing C++ compiler falls
back to eager with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from talkcli.compiled import CompiledBatches
from talkcli.errors import UserError


class FakeCompile:
    """Stands in for ``torch.compile``: records the batch shapes the compiled function sees."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.compiles = 0
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, fn, dynamic=None):
        assert dynamic is False  # one graph per shape: the batches are padded instead
        self.compiles += 1

        def run(x):
            self.shapes.append(tuple(x.shape))
            if self.fail:
                raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")
            return fn(x) + 0  # the same values, computed "compiled"

        return run


@pytest.fixture
def fake(monkeypatch):
    stand_in = FakeCompile()
    monkeypatch.setattr(torch, "compile", stand_in)
    return stand_in


def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def _batches(sizes, width=3):
    return [
        torch.arange(n * width, dtype=torch.float32).reshape(n, width) + i
        for i, n in enumerate(sizes)
    ]


def test_off_never_compiles_and_on_compiles_from_the_first_batch(fake):
    off = CompiledBatches(double, "off", total=10**6, pays_after_s=0)
    for x in _batches([4, 4]):
        assert torch.equal(off(x), x * 2)
    assert fake.compiles == 0 and not off.compiled
    on = CompiledBatches(double, "on", total=None)
    for x in _batches([4, 4, 1]):
        assert torch.equal(on(x), x * 2)
    assert fake.compiles == 1 and on.compiled and on.record()["compiled"] is True
    assert fake.shapes == [(4, 3)] * 3  # the last batch of 1 was padded to 4 ...


def test_padding_keeps_only_the_real_rows(fake):
    on = CompiledBatches(double, "on")
    on(torch.zeros(4, 2))
    short = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = on(short)
    assert out.shape == (2, 2) and torch.equal(out, short * 2)  # ... and cut back
    assert fake.shapes[-1] == (4, 2)
    assert on.done == 6


def test_a_given_batch_size_pads_even_a_short_first_batch(fake):
    on = CompiledBatches(double, "on", batch=4)
    x = torch.ones(2, 3)
    assert torch.equal(on(x), x * 2) and torch.equal(on(torch.ones(4, 3)), torch.full((4, 3), 2.0))
    assert fake.shapes == [(4, 3), (4, 3)]


def test_auto_compiles_only_when_the_rest_is_predicted_to_repay_it(fake):
    def slow(x):
        time.sleep(0.01 * x.shape[0])  # 10 ms a row
        return x * 2

    # 4 rows timed: 10 ms each; 96 left -> ~1 s predicted, above 0.5 s: compile the rest
    long = CompiledBatches(slow, "auto", total=100, pays_after_s=0.5)
    outs = [long(x) for x in _batches([4, 4, 4])]
    assert fake.compiles == 1 and long.compiled
    assert fake.shapes == [(4, 3), (4, 3)]  # the first batch ran eager
    assert all(torch.equal(o, x * 2) for o, x in zip(outs, _batches([4, 4, 4]), strict=True))
    # 16 left -> ~0.16 s predicted: eager to the end
    short = CompiledBatches(slow, "auto", total=20, pays_after_s=0.5)
    for x in _batches([4] * 5):
        short(x)
    unknown = CompiledBatches(slow, "auto", total=None, pays_after_s=0.0)  # no length: eager
    unknown(torch.zeros(4, 3))
    unknown(torch.zeros(4, 3))
    assert fake.compiles == 1 and not short.compiled and not unknown.compiled


def test_a_failing_compile_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    stand_in = FakeCompile(fail=True)
    monkeypatch.setattr(torch, "compile", stand_in)
    on = CompiledBatches(double, "on", label="generator")
    with caplog.at_level(logging.WARNING, logger="talkcli.compiled"):
        outs = [on(x) for x in _batches([4, 4, 2])]
    assert all(torch.equal(o, x * 2) for o, x in zip(outs, _batches([4, 4, 2]), strict=True))
    assert len(stand_in.shapes) == 1  # tried once, then eager
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "generator: torch.compile failed (RuntimeError: InvalidCxxCompiler: No working C++ "
        "compiler found); going on without it"
    ]
    assert on.record() == {
        "mode": "on",
        "compiled": False,
        "startup_s": None,
        "error": "RuntimeError: InvalidCxxCompiler: No working C++ compiler found",
    }


def test_bad_mode_is_a_user_error():
    with pytest.raises(UserError, match="--compile 'yes': expected one of auto, on, off"):
        CompiledBatches(double, "yes")
    from talkcli.animate.options import AnimateOptions

    with pytest.raises(UserError, match="--compile 'fast'"):
        AnimateOptions(compile="fast").check()


def test_renderer_records_what_ran_and_short_videos_stay_eager(fake):
    from talkcli.animate.render import FrameRenderer
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.stylegan2 import tiny_generator_state_dict

    G = generator_from_state_dict(tiny_generator_state_dict(16, channels=8)).eval()
    w = np.random.default_rng(0).standard_normal((2, G.n_latent, 512)).astype(np.float32)
    auto = FrameRenderer(G, "fp32", compile="auto", total=4)
    eager = FrameRenderer(G, "fp32")
    assert np.array_equal(auto(w), eager(w)) and np.array_equal(auto(w), eager(w))
    assert fake.compiles == 0 and auto.synthesis.record()["compiled"] is False
    on = FrameRenderer(G, "fp32", compile="on", total=4)
    assert np.array_equal(on(w), eager(w))
    assert fake.compiles == 1 and on.synthesis.compiled


# -- the real torch.compile (slow: ~20 s each on 2 cores) -----------------------------------------


@pytest.mark.slow
def test_compiled_tiny_generator_matches_eager_without_recompiling(monkeypatch):
    """Batches 3, 3, 1 (a video's short last batch) compile once; frames within 1/255."""
    import torch._dynamo

    from talkcli.animate.render import FrameRenderer
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.stylegan2 import tiny_generator_state_dict

    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    G = generator_from_state_dict(tiny_generator_state_dict(32, channels=8, seed=1)).eval()
    G.requires_grad_(False)
    w = np.random.default_rng(2).standard_normal((7, G.n_latent, 512)).astype(np.float32)
    eager = FrameRenderer(G, "fp32")
    on = FrameRenderer(G, "fp32", compile="on", total=7)
    try:
        for start in (0, 3, 6):
            a, b = eager(w[start : start + 3]), on(w[start : start + 3])
            assert a.shape == b.shape == (min(3, 7 - start), 32, 32, 3)
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    finally:
        torch._dynamo.reset()
    record = on.synthesis.record()
    assert record["compiled"] is True and record["error"] is None and record["startup_s"] > 0


NO_COMPILER = """
import json, logging, numpy as np, torch
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from talkcli.animate.render import FrameRenderer
from talkcli.models.stylegan2 import generator_from_state_dict
from talkcli.tiny.stylegan2 import tiny_generator_state_dict
G = generator_from_state_dict(tiny_generator_state_dict(16, channels=8)).eval()
w = np.random.default_rng(0).standard_normal((2, G.n_latent, 512)).astype(np.float32)
on = FrameRenderer(G, "fp32", compile="on", total=2)
same = bool(np.array_equal(on(w), FrameRenderer(G, "fp32")(w)))
print(json.dumps({"same": same, **on.synthesis.record()}))
"""


@pytest.mark.slow
def test_without_a_cxx_compiler_rendering_goes_on_eager(tmp_path):
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-g++"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),  # no cached kernels to reuse
        "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1",
    }
    run = subprocess.run(
        [sys.executable, "-c", NO_COMPILER], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["same"] is True and result["compiled"] is False and result["error"]
    assert "generator: torch.compile failed (" in run.stderr
