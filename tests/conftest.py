"""Shared test helpers: run the CLI in-process, locate ../shared fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# ``--dtype auto`` resolves to fp32 in the tests, on any CPU, so that exact comparisons do not
# depend on the machine (talkcli.device.cpu_has_native_bf16 reads this; subprocesses inherit it).
# The tests of the auto rule set or mock it themselves.
os.environ.setdefault("TALKCLI_CPU_BF16", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> CliResult:
    """Run ``python -m talkcli ARGS`` in a subprocess, as a user would, and capture everything."""
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "talkcli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=600,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def run_cli_inprocess(*args: str) -> CliResult:
    """``talkcli ARGS`` in this process (no interpreter start, torch already imported): for the
    many bad-input tests where a subprocess would cost a second each. The working folder and
    environment are the test's own (use monkeypatch.chdir / setenv)."""
    import contextlib
    import io

    from talkcli import cli
    from talkcli.weights import registry

    registry._IN_USE.clear()  # model files resolved by earlier in-process runs
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_user_error(result: CliResult, *needles: str) -> None:
    """Exit 2, a single 'error:' line on stderr mentioning each needle, and no traceback."""
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    error_lines = [ln for ln in lines if ln.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.fixture(scope="session", autouse=True)
def _library_logs_on_stderr():
    """Library modules (io, models, weights) log their notes and warnings; the CLI shows them on
    stderr (``install_log_handler``). Tests that call the library directly see them the same way."""
    from talkcli.console import install_log_handler

    install_log_handler()


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def shared_fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip("../shared/fixtures is not present beside the checkout")
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory) -> Path:
    """A 32x32 random-weight pack (generator, pSp, LPIPS alex+vgg) in the official formats."""
    from talkcli.tiny.pack import write_tiny_pack

    folder = tmp_path_factory.mktemp("tiny_pack")
    write_tiny_pack(folder, size=32, seed=0)
    return folder


@pytest.fixture(scope="session")
def face_images(tmp_path_factory) -> list[Path]:
    """Three 32x32 crops of the astronaut photo's face, slightly shifted (a tiny 'clip')."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("faces")
    photo = Image.fromarray(data.astronaut())
    paths = []
    for i in range(3):
        crop = photo.crop((150 + 4 * i, 20, 310 + 4 * i, 180)).resize((32, 32), Image.LANCZOS)
        path = folder / f"frame_{i:02d}.png"
        crop.save(path)
        paths.append(path)
    assert np.asarray(Image.open(paths[0])).shape == (32, 32, 3)
    return paths
