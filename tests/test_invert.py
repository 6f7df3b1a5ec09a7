"""`talkcli invert` and the projection algorithms (thesis chapter 3) on the tiny pack."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from talkcli.inversion.invert import load_latents
from talkcli.inversion.project import ProjectionConfig, mean_latent_step, project_frames
from talkcli.models.perceptual import load_lpips
from talkcli.models.stylegan2 import load_generator
from talkcli.weights import registry
from tests.conftest import assert_user_error, run_cli


def _files(tiny_pack):
    return {
        "generator": tiny_pack / registry.get("stylegan2-ffhq").relpath,
        "psp": tiny_pack / registry.get("psp-ffhq-encode").relpath,
    }


def test_invert_psp_writes_latents_recon_and_plot(tiny_pack, face_images, tmp_path):
    out = tmp_path / "latents.npz"
    recon = tmp_path / "recon"
    plot = tmp_path / "trajectory.png"
    result = run_cli(
        "--weights-dir",
        str(tiny_pack),
        "invert",
        *map(str, face_images),
        "--out",
        str(out),
        "--save-recon",
        str(recon),
        "--plot",
        str(plot),
    )
    assert result.code == 0, result.stderr
    w, names, meta = load_latents(out)
    assert w.shape == (3, 8, 512) and w.dtype == np.float32
    assert names == ["frame_00", "frame_01", "frame_02"]
    assert meta["method"] == "psp"
    assert meta["sources"] == [str(p) for p in face_images]
    assert len(meta["weights"]["encoder"]["sha256"]) == 64
    assert meta["talkcli"]
    assert set(meta["input_sha256"]) == {str(p) for p in face_images}
    for name in names:
        rec = np.asarray(Image.open(recon / f"{name}.png"))
        assert rec.shape == (32, 32, 3)
        assert np.asarray(Image.open(recon / f"{name}_compare.png")).shape == (32, 64, 3)
    assert Image.open(plot).size == (640, 640)
    assert not list(tmp_path.glob(".*tmp*"))


def test_invert_codes_match_the_encoder_library_call(tiny_pack, face_images, tmp_path):
    from talkcli.models.psp import load_encoder

    out = tmp_path / "l.npz"
    result = run_cli(
        "--weights-dir", str(tiny_pack), "invert", str(face_images[0]), "--out", str(out)
    )
    assert result.code == 0, result.stderr
    w, _, _ = load_latents(out)
    E = load_encoder(_files(tiny_pack)["psp"])
    expected = E.encode_images(np.asarray(Image.open(face_images[0]))[None]).numpy()
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-5)


def test_invert_optimize_lowers_the_loss_it_reports(tiny_pack, face_images, tmp_path):
    out = tmp_path / "opt.npz"
    result = run_cli(
        "--weights-dir",
        str(tiny_pack),
        "invert",
        str(face_images[0]),
        "--out",
        str(out),
        "--method",
        "optimize",
        "--steps",
        "25",
        "--first-steps",
        "25",
        "--lpips",
        "alex",
        "--json",
    )
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    loss = summary["losses"][0]
    assert loss["steps"] == 25
    assert loss["loss_end"] < 0.8 * loss["loss_start"]
    assert "loss" in result.stderr  # reported to the user too


def test_hybrid_starts_from_psp_and_improves_it(tiny_pack, face_images, tmp_path):
    out = tmp_path / "hyb.npz"
    result = run_cli(
        "--weights-dir",
        str(tiny_pack),
        "invert",
        str(face_images[0]),
        "--out",
        str(out),
        "--method",
        "hybrid",
        "--steps",
        "15",
        "--lpips",
        "alex",
        "--json",
    )
    assert result.code == 0, result.stderr
    loss = json.loads(result.stdout)["losses"][0]
    assert loss["loss_end"] < loss["loss_start"]


@pytest.mark.slow
def test_algorithm_2_gives_a_smoother_trajectory_than_algorithm_1(tiny_pack):
    """Same budget per frame: warm starts (Alg. 2) move less between frames than Alg. 1."""
    G = load_generator(_files(tiny_pack)["generator"])
    lpips = load_lpips("alex", weights_dir=tiny_pack)
    gen = torch.Generator().manual_seed(1)
    w_a, w_b = G.mapping(torch.randn(2, 512, generator=gen))
    frames = 5
    path = torch.stack([w_a + (w_b - w_a) * 0.3 * t / (frames - 1) for t in range(frames)])
    truth = path.unsqueeze(1).expand(-1, G.n_latent, -1)  # (T, n_latent, 512): a smooth clip
    with torch.no_grad():
        clip = G.synthesis(truth, noise_mode="const")
    budget = ProjectionConfig(steps=20, first_steps=20)
    alg2 = project_frames(G, lpips, clip, ProjectionConfig(**{**budget.__dict__, "sequence": True}))
    alg1 = project_frames(
        G, lpips, clip, ProjectionConfig(**{**budget.__dict__, "sequence": False})
    )
    step2 = mean_latent_step(torch.stack([r.w for r in alg2]))
    step1 = mean_latent_step(torch.stack([r.w for r in alg1]))
    assert step2 < 0.8 * step1, (step2, step1)
    assert all(r.loss_end < r.loss_start for r in alg2 + alg1)


def test_w_space_projection_keeps_layers_equal(tiny_pack, face_images):
    G = load_generator(_files(tiny_pack)["generator"])
    lpips = load_lpips("alex", weights_dir=tiny_pack)
    target = torch.from_numpy(np.array(Image.open(face_images[0]))).permute(2, 0, 1)[None]
    target = target.float() / 127.5 - 1
    (res,) = project_frames(G, lpips, target, ProjectionConfig(steps=5, space="w"))
    assert res.w.shape == (G.n_latent, 512)
    assert torch.allclose(res.w, res.w[:1].expand_as(res.w))


def _corrupt_psp(tiny_pack, tmp_path, how):
    src = _files(tiny_pack)["psp"]
    dst = tmp_path / f"psp_{how}.pt"
    if how == "missing-key":
        ckpt = torch.load(src, weights_only=True)
        del ckpt["state_dict"]["encoder.input_layer.0.weight"]
        torch.save(ckpt, dst)
    elif how == "truncated":
        dst.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    else:  # a plain image renamed .pt
        Image.new("RGB", (8, 8)).save(dst, format="PNG")
    return dst


@pytest.mark.parametrize(
    "how,needle",
    [
        ("missing-key", "encoder.input_layer.0.weight"),
        ("truncated", "truncated"),
        ("image", "PNG"),
    ],
)
def test_bad_encoder_files_exit_2(tiny_pack, face_images, tmp_path, how, needle):
    bad = _corrupt_psp(tiny_pack, tmp_path, how)
    out = tmp_path / "x.npz"
    result = run_cli(
        "--weights-dir",
        str(tiny_pack),
        "invert",
        str(face_images[0]),
        "--out",
        str(out),
        "--encoder",
        str(bad),
    )
    assert_user_error(result, str(bad), needle)
    assert not out.exists()


def test_invert_bad_inputs_exit_2(tiny_pack, tmp_path):
    not_image = tmp_path / "face.png"
    not_image.write_bytes(b"definitely not a png")
    result = run_cli(
        "--weights-dir", str(tiny_pack), "invert", str(not_image), "--out", str(tmp_path / "o.npz")
    )
    assert_user_error(result, str(not_image))
    result = run_cli(
        "--weights-dir",
        str(tiny_pack),
        "invert",
        str(tmp_path / "none.png"),
        "--out",
        str(tmp_path / "o.npz"),
    )
    assert_user_error(result, "not found")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    result = run_cli(
        "--weights-dir", str(tiny_pack), "invert", str(empty), "--out", str(tmp_path / "o.npz")
    )
    assert_user_error(result, str(empty), "no input files")
    assert not (tmp_path / "o.npz").exists()


def test_invert_without_weights_names_the_fetch_command(face_images, tmp_path):
    result = run_cli(
        "--weights-dir",
        str(tmp_path),
        "invert",
        str(face_images[0]),
        "--out",
        str(tmp_path / "o.npz"),
        env={"XDG_CACHE_HOME": str(tmp_path)},
    )
    assert_user_error(result, "talkcli weights fetch psp-ffhq-encode")


def test_invert_an_aligned_video(tiny_pack, face_images, tmp_path):
    from talkcli.io.video import VideoWriter

    clip = tmp_path / "clip.mp4"
    frames = np.stack([np.asarray(Image.open(p)) for p in face_images])
    with VideoWriter(clip, fps=25) as writer:
        writer.write(frames)
    out = tmp_path / "clip.npz"
    result = run_cli("--weights-dir", str(tiny_pack), "invert", str(clip), "--out", str(out))
    assert result.code == 0, result.stderr
    w, names, meta = load_latents(out)
    assert w.shape == (3, 8, 512)
    assert names == ["clip_00000", "clip_00001", "clip_00002"]
    assert meta["fps"] == 25
    result = run_cli(
        "--weights-dir", str(tiny_pack), "invert", str(clip), "--out", str(out), "--max-frames", "2"
    )
    assert result.code == 0, result.stderr
    assert load_latents(out)[1] == ["clip_00000", "clip_00002"]
