"""`talkcli tune-pti` (thesis stage 2, PTI) on the tiny pack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from talkcli.inversion.invert import frames_to_tensor, load_latents
from talkcli.inversion.pti import PTIConfig, evaluate_pivots, tune
from talkcli.io.files import sha256_file
from talkcli.models.perceptual import load_lpips
from talkcli.models.psp import load_encoder
from talkcli.models.stylegan2 import load_generator
from talkcli.weights import registry
from tests.conftest import assert_user_error, run_cli


def _gen_path(pack):
    return pack / registry.get("stylegan2-ffhq").relpath


def _setup(tiny_pack, face_images):
    G = load_generator(_gen_path(tiny_pack))
    lpips = load_lpips("alex", weights_dir=tiny_pack)
    images = np.stack([np.asarray(Image.open(p)) for p in face_images])
    E = load_encoder(tiny_pack / registry.get("psp-ffhq-encode").relpath)
    pivots = E.encode_images(images).float()  # (N, n_latent, 512)
    targets = frames_to_tensor(images, G.size, torch.device("cpu"))
    return G, lpips, pivots, targets


def test_cli_tuning_halves_l2_and_lpips_and_loads_back(tiny_pack, face_images, tmp_path):
    out = tmp_path / "tuned.pt"
    result = run_cli(
        "--weights-dir",
        str(tiny_pack),
        "tune-pti",
        str(face_images[0]),
        "--out",
        str(out),
        "--steps",
        "200",
        "--lr",
        "1e-3",
        "--stop-lpips",
        "0",
        "--json",
    )
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    losses = summary["losses"]
    # the numbers: both losses at least halve on the tiny pack
    assert losses["lpips_end"] <= 0.5 * losses["lpips_start"], losses
    assert losses["l2_end"] <= 0.5 * losses["l2_start"], losses
    assert summary["steps_run"] == 200 and not summary["stopped_early"]

    tuned = load_generator(out)
    assert tuned.metadata["base_generator"]["sha256"] == sha256_file(_gen_path(tiny_pack))
    assert tuned.metadata["pivot_source"]["kind"] == "psp"
    pivots, names, _ = load_latents(out.with_name("tuned.pivots.npz"))
    assert names == ["frame_00"]
    base = load_generator(_gen_path(tiny_pack))
    target = frames_to_tensor(np.asarray(Image.open(face_images[0]))[None], 32, torch.device("cpu"))
    w = torch.from_numpy(pivots)
    with torch.no_grad():
        err_tuned = ((tuned.synthesis(w) - target) ** 2).mean()
        err_base = ((base.synthesis(w) - target) ** 2).mean()
    assert err_tuned < 0.5 * err_base
    assert torch.allclose(tuned.latent_avg, base.latent_avg)


def test_multi_frame_tuning_with_batches(tiny_pack, face_images):
    G, lpips, pivots, targets = _setup(tiny_pack, face_images)
    cfg = PTIConfig(steps=40, lr=1e-3, batch=2, stop_lpips=0.0)
    result = tune(G, lpips, pivots, targets, cfg)
    assert result.steps_run == 40
    assert result.lpips_end < result.lpips_start and result.l2_end < result.l2_start


def test_early_stop_stops_early(tiny_pack, face_images):
    G, lpips, pivots, targets = _setup(tiny_pack, face_images[:1])
    start_lpips, _ = evaluate_pivots(G, lpips, pivots, targets)
    result = tune(
        G, lpips, pivots, targets, PTIConfig(steps=300, lr=1e-3, stop_lpips=0.6 * start_lpips)
    )
    assert result.stopped_early
    assert result.steps_run < 300
    assert result.history[-1]["lpips"] < 0.6 * start_lpips
    assert all(row["lpips"] >= 0.6 * start_lpips for row in result.history[:-1])


@pytest.mark.slow
def test_locality_keeps_far_latents_closer_to_the_base(tiny_pack, face_images):
    base = load_generator(_gen_path(tiny_pack))
    gen = torch.Generator().manual_seed(99)
    with torch.no_grad():
        far = base.mapping(torch.randn(16, 512, generator=gen))  # random identities, psi 1
        far = far.unsqueeze(1).expand(-1, base.n_latent, -1)
        reference = base.synthesis(far)

    def drift(locality: bool) -> float:
        G, lpips, pivots, targets = _setup(tiny_pack, face_images[:1])
        tune(
            G,
            lpips,
            pivots,
            targets,
            PTIConfig(steps=60, lr=1e-3, stop_lpips=0.0, locality=locality, seed=3),
        )
        with torch.no_grad():
            return float(((G.synthesis(far) - reference) ** 2).mean())

    plain, local = drift(False), drift(True)
    assert local < 0.7 * plain, (local, plain)


def test_bad_inputs_exit_2(tiny_pack, face_images, tmp_path):
    base = ["--weights-dir", str(tiny_pack), "tune-pti"]
    out = tmp_path / "t.pt"
    # pivots whose count does not match the frames
    lat = tmp_path / "lat.npz"
    assert (
        run_cli(
            "--weights-dir", str(tiny_pack), "invert", *map(str, face_images[:2]), "--out", str(lat)
        ).code
        == 0
    )
    result = run_cli(*base, str(face_images[0]), "--out", str(out), "--pivots", str(lat))
    assert_user_error(result, str(lat), "2 pivots for 1 input frame")
    # pivots of the wrong shape
    bad_shape = tmp_path / "shape.npz"
    np.savez(
        bad_shape, w=np.zeros((1, 5, 512), np.float32), names=np.array(["a"]), meta=np.array("{}")
    )
    result = run_cli(*base, str(face_images[0]), "--out", str(out), "--pivots", str(bad_shape))
    assert_user_error(result, str(bad_shape), "shape")
    # a generator file that is not a generator
    not_gen = tmp_path / "not_a_generator.pt"
    torch.save({"weights": torch.zeros(3)}, not_gen)
    result = run_cli(*base, str(face_images[0]), "--out", str(out), "--generator", str(not_gen))
    assert_user_error(result, str(not_gen))
    # an empty folder
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(*base, str(empty), "--out", str(out))
    assert_user_error(result, str(empty))
    assert not out.exists()
    assert not (tmp_path / "t.pivots.npz").exists()


def test_ctrl_c_leaves_no_partial_output(tiny_pack, face_images, tmp_path):
    out = tmp_path / "tuned.pt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "talkcli",
            "--weights-dir",
            str(tiny_pack),
            "tune-pti",
            str(face_images[0]),
            "--out",
            str(out),
            "--steps",
            "100000",
            "--stop-lpips",
            "0",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in proc.stderr:
            if "tuning" in line:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130
    assert sorted(os.listdir(tmp_path)) == []


def test_w_project_pivots(tiny_pack, face_images, tmp_path):
    out = tmp_path / "wp.pt"
    result = run_cli(
        "--weights-dir",
        str(tiny_pack),
        "tune-pti",
        str(face_images[0]),
        "--out",
        str(out),
        "--pivot-method",
        "w-project",
        "--project-steps",
        "5",
        "--steps",
        "5",
    )
    assert result.code == 0, result.stderr
    pivots, _, _ = load_latents(tmp_path / "wp.pivots.npz")
    assert pivots.shape == (1, 8, 512)
    np.testing.assert_allclose(pivots[0], np.broadcast_to(pivots[0, :1], (8, 512)))  # W space
    assert load_generator(out).metadata["pivot_source"]["kind"] == "w-project"


@pytest.mark.parametrize("content", [b"PK\x03\x04 truncated zip", b"random bytes, not numpy"])
def test_broken_pivots_file_exits_2(tiny_pack, face_images, tmp_path, content):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(content)
    result = run_cli(
        "--weights-dir",
        str(tiny_pack),
        "tune-pti",
        str(face_images[0]),
        "--out",
        str(tmp_path / "t.pt"),
        "--pivots",
        str(broken),
    )
    assert_user_error(result, str(broken), "not a talkcli latents")


def test_library_tune_pti_writes_what_the_command_writes(tiny_pack, face_images, tmp_path):
    """``tune_pti`` (for batch scripts) and ``talkcli tune-pti``: same weights, pivots, layout."""
    from talkcli.inversion.invert import load_frames
    from talkcli.inversion.pti import PTIRequest, pivots_path_for, pti_summary, tune_pti
    from tests.conftest import run_cli_inprocess

    cli_out = tmp_path / "cli.pt"
    result = run_cli_inprocess(
        "--weights-dir", str(tiny_pack), "tune-pti", str(face_images[0]), "--out", str(cli_out),
        "--steps", "3", "--stop-lpips", "0", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)

    lib_out = tmp_path / "lib.pt"
    req = PTIRequest(
        load_frames([str(face_images[0])]),
        lib_out,
        _gen_path(tiny_pack),
        (registry.resolve("alexnet", tiny_pack), registry.resolve("lpips-alex", tiny_pack)),
        encoder_path=registry.resolve("psp-ffhq-encode", tiny_pack),
        config=PTIConfig(steps=3, stop_lpips=0.0),
    )
    done = tune_pti(req)
    assert done.pivots_path == pivots_path_for(lib_out) and done.pivots_path.is_file()
    by_cli, by_lib = load_generator(cli_out), load_generator(lib_out)
    for (name, a), (_, b) in zip(
        by_cli.state_dict().items(), by_lib.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    np.testing.assert_array_equal(
        load_latents(pivots_path_for(cli_out))[0], load_latents(done.pivots_path)[0]
    )
    assert list(by_lib.metadata) == [k for k in summary if k not in ("out", "pivots")]
    assert by_lib.metadata["losses"] == summary["losses"]
    assert pti_summary(by_lib.metadata) == {
        "steps_run": 3, "stopped_early": False, **{k: summary["losses"][k] for k in (
            "lpips_start", "lpips_end", "l2_start", "l2_end")},
        "seconds": by_lib.metadata["seconds"],
    }  # fmt: skip


def test_one_metadata_layout_reads_old_animate_cache_entries_too():
    """animate's cache wrote its numbers under "pti" before the shared layout: still read."""
    from talkcli.inversion.pti import PTIResult, pti_metadata, pti_summary

    result = PTIResult(
        steps_run=2, stopped_early=True, lpips_start=0.5, l2_start=0.25, lpips_end=0.1,
        l2_end=0.05, seconds=1.5, config={"steps": 2},
    )  # fmt: skip
    meta = pti_metadata(result, (Path("g.pt"), "ab" * 32), {"kind": "animate"})
    assert meta["kind"] == "pti" and meta["pivot_source"] == {"kind": "animate"}
    assert meta["base_generator"] == {"path": "g.pt", "sha256": "ab" * 32}
    assert meta["options"] == {"steps": 2} and "frames" not in meta and "pti" not in meta
    numbers = {
        "steps_run": 2, "stopped_early": True, "lpips_start": 0.5, "lpips_end": 0.1,
        "l2_start": 0.25, "l2_end": 0.05, "seconds": 1.5,
    }  # fmt: skip
    assert pti_summary(meta) == numbers and list(pti_summary(meta)) == list(numbers)
    old = {"kind": "pti", "pivot_source": {"kind": "animate"}, "pti": numbers, "options": {}}
    assert pti_summary(old) == numbers
    assert pti_summary({}) == {}  # a plain generator
