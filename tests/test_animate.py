"""`talkcli animate` end to end on tiny packs: the issue's "Must show" list.

Most runs use the session's 32 px pack through ``cli.main`` in this process (no interpreter
start-up per run); one slow test runs the whole chain on a narrow 1024 pack. torch runs on one
thread here: on a shared 2-core machine two threads per tiny op mostly wait for each other.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from talkcli import cli
from talkcli.io.audio import load_audio
from talkcli.io.video import VideoWriter, probe_video, read_video
from talkcli.weights import registry
from tests.conftest import FIXTURES
from tests.speech import speech
from tests.test_cli import _unwritable_folder

ASTRO_5 = [[203.66, 101.18], [246.56, 103.66], [224.59, 128.07], [201.68, 140.27], [244.94, 141.56]]
SECONDS = 1.0  # speech used by most tests: 25 frames


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Photos, landmarks and recordings shared by the tests (read-only)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("animate_media")
    photo = Image.fromarray(data.astronaut())
    photo.crop((150, 20, 310, 180)).resize((64, 64), Image.LANCZOS).save(folder / "face.png")
    photo.crop((0, 0, 401, 353)).save(folder / "astro.png")  # odd size; face inside
    (folder / "lm.json").write_text(json.dumps({"landmarks": ASTRO_5}))
    samples = speech(0, folder, seconds=3.0)[: int(SECONDS * 16000)]
    sf.write(folder / "speech.wav", samples, 16000, subtype="PCM_16")
    sf.write(folder / "other.wav", speech(1, folder, seconds=3.0)[:11000], 16000)
    sf.write(folder / "silent.wav", np.zeros(11200, np.float32), 16000)  # 0.7 s
    sf.write(folder / "no_samples.wav", np.zeros(0, np.float32), 16000)
    (folder / "corrupt_audio.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "corrupt_image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 20)
    Image.new("RGB", (160, 160), (128, 128, 128)).save(folder / "blank.png")
    return {p.stem: p for p in folder.iterdir()}


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """Run in a fresh folder with its own cache (XDG) and no other weights on the path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TALKCLI_WEIGHTS", "")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def animate(capsys, pack: Path, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--weights-dir", str(pack), "animate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], (needle, err)


def audio_seconds_in(video: Path) -> float:
    return len(load_audio(video)) / 16000


# -- one video ----------------------------------------------------------------------------------


def test_same_seed_same_frames_and_trajectory_round_trip(capsys, work, tiny_pack, media):
    args = ["--image", media["face"], "--audio", media["speech"], "--aligned", "--seed", "5"]
    code, out, err = animate(capsys, tiny_pack, *args, "--save-trajectory", "t.npz")
    assert code == 0, err
    assert out.strip() == "face-speech.mp4"  # the default name, in the current folder
    code, _, err = animate(capsys, tiny_pack, *args, "--out", "again.mp4")
    assert code == 0, err
    first, again = read_video(work / "face-speech.mp4"), read_video(work / "again.mp4")
    frames = math.ceil(SECONDS * 25)
    assert first.shape == (frames, 32, 32, 3) and np.array_equal(first, again)

    data = np.load(work / "t.npz")
    assert data["w"].dtype == np.float32 and data["w"].shape == (frames, 8, 512)
    assert data["w_identity"].shape == (8, 512) and float(data["fps"]) == 25.0
    # an edited trajectory renders without the audio model; unedited, the very same video
    code, _, err = animate(
        capsys, tiny_pack, "--from-trajectory", "t.npz", "--audio", media["speech"], "-o", "re.mp4"
    )
    assert code == 0, err
    assert (work / "re.mp4").read_bytes() == (work / "face-speech.mp4").read_bytes()

    manifest = json.loads((work / "face-speech.json").read_text())
    assert manifest["status"] == "ok" and manifest["output"]["frames"] == frames
    assert manifest["inputs"]["audio"]["sha256"] == registry_sha(media["speech"])
    assert manifest["models"]["audio_model"]["generator_match"] == "exact"
    assert set(manifest["models"]) == {"generator", "encoder", "audio_model"}
    assert manifest["options"]["seed"] == 5 and manifest["versions"]["torch"] == torch.__version__
    assert {"identity", "trajectory", "render", "finalize", "total"} <= set(manifest["timings"])
    assert manifest["cache"]["identity"] == "miss" and manifest["cache"]["align"] == "skipped"
    replay = json.loads((work / "re.json").read_text())
    assert "audio_model" not in replay["models"] and replay["inputs"]["trajectory"]["sha256"]


def registry_sha(path: Path) -> str:
    from talkcli.io.files import sha256_file

    return sha256_file(path)


def test_motion_scale_zero_renders_the_identity_in_every_frame(
    capsys, work, tiny_pack, media, monkeypatch
):
    from talkcli.animate import sink
    from talkcli.io.images import to_uint8_images
    from talkcli.models.stylegan2 import load_generator

    frames: list[np.ndarray] = []
    put = sink.FrameSink.put
    monkeypatch.setattr(sink.FrameSink, "put", lambda s, f: frames.append(f.copy()) or put(s, f))
    code, _, err = animate(
        capsys,
        tiny_pack,
        *("--image", media["face"], "--audio", media["speech"], "--aligned"),
        *("--motion-scale", "0", "--save-trajectory", "t.npz", "--batch-size", "3"),
    )
    assert code == 0, err
    data = np.load(work / "t.npz")
    assert np.array_equal(data["w"], np.broadcast_to(data["w_identity"], data["w"].shape))
    G = load_generator(registry.resolve("stylegan2-ffhq", tiny_pack))
    with torch.no_grad():
        still = to_uint8_images(G.synthesis(torch.from_numpy(data["w_identity"])[None]))[0]
    rendered = np.concatenate(frames)
    assert len(rendered) == 25 and all(np.array_equal(f, still) for f in rendered)


def test_paste_back_keeps_the_photos_size_even_rounded(capsys, work, tiny_pack, media):
    code, _, err = animate(
        capsys,
        tiny_pack,
        *("--image", media["astro"], "--audio", media["other"], "--landmarks", media["lm"]),
        "--paste-back",
    )
    assert code == 0, err
    info = probe_video(work / "astro-other.mp4")
    assert (info.width, info.height) == (400, 352)  # the photo is 401x353
    assert info.n_frames == math.ceil(11000 / 16000 * 25)
    video = read_video(work / "astro-other.mp4")
    photo = np.asarray(Image.open(media["astro"]))[:352, :400].astype(int)
    corner = np.abs(video[:, 300:, :100].astype(int) - photo[None, 300:, :100]).mean()
    assert corner < 3  # away from the face the video is the photo (H.264 aside)
    face = np.abs(video[:, 90:150, 190:260].astype(int) - photo[None, 90:150, 190:260]).mean()
    assert face > 10  # and the face is the generator's


def test_second_run_hits_the_cache_and_skips_align_invert_tune(work, tiny_pack, media, monkeypatch):
    from talkcli.animate import identity
    from talkcli.animate.cache import Cache
    from talkcli.animate.options import AnimateOptions
    from talkcli.animate.pipeline import Job, Models, Needs, animate_job, resolve_models

    opts = AnimateOptions(landmarks=media["lm"], tune=True, tune_steps=2)

    def run(audio: Path, out: str):
        job = Job(work / out, image=media["astro"], audio=audio, options=opts)
        cache = Cache(work / "cache")
        paths = resolve_models(Needs.of([job]), weights_dir=tiny_pack)
        models = Models(paths, torch.device("cpu"), cache, tiny_pack)
        return animate_job(job, models, cache), models

    first, _ = run(media["speech"], "one.mp4")
    assert [first.cache[k] for k in ("align", "identity", "tune")] == ["miss"] * 3

    def never(*a, **k):
        raise AssertionError("a cached step ran again")

    monkeypatch.setattr(identity, "align_image_array", never, raising=False)
    monkeypatch.setattr("talkcli.face.align.align_image_array", never)
    monkeypatch.setattr("talkcli.inversion.pti.tune", never)
    second, models = run(media["silent"], "two.mp4")  # the same face, new audio
    assert [second.cache[k] for k in ("align", "identity", "tune")] == ["hit"] * 3
    assert not {"encoder", "lpips-alex"} & models.loaded  # pSp and LPIPS never even loaded
    manifest = json.loads((work / "two.json").read_text())
    assert manifest["cache"]["tune"] == "hit" and manifest["cache"]["enabled"]
    assert manifest["models"]["tuned_generator"]["cache_file"].startswith(str(work / "cache"))


def test_silent_audio_makes_a_video_of_the_right_length(capsys, work, tiny_pack, media):
    code, _, err = animate(
        capsys, tiny_pack, "-i", media["face"], "-a", media["silent"], "--aligned", "--no-cache"
    )
    assert code == 0, err
    assert probe_video(work / "face-silent.mp4").n_frames == math.ceil(0.7 * 25)
    assert abs(audio_seconds_in(work / "face-silent.mp4") - 0.7) <= 1 / 25
    assert not (work / "xdg").exists()  # --no-cache wrote nothing


def test_edits_on_chosen_layers_and_json_summary(capsys, work, tiny_pack, media):
    direction = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    np.save(work / "smile.npy", direction)
    code, out, err = animate(
        capsys,
        tiny_pack,
        *("--image", media["face"], "--audio", media["other"], "--aligned", "--json"),
        *("--motion-scale", "0", "--edit", "smile.npy:2", "--edit-layers", "0-3"),
        *("--save-trajectory", "t.npz"),
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["frames"] == 18 and summary["size"] == [32, 32]
    data = np.load(work / "t.npz")
    expected = data["w_identity"].copy()
    expected[:4] += 2 * direction
    np.testing.assert_allclose(data["w"], np.broadcast_to(expected, data["w"].shape), atol=1e-6)


def test_driving_clip_moves_the_face_and_brings_its_sound(capsys, work, tiny_pack, media):
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    clip = work / "drive.mp4"
    with VideoWriter(clip, 25, audio=load_audio(media["other"])) as writer:
        for i in range(12):
            crop = photo.crop((150 + 3 * i, 20, 310 + 3 * i, 180)).resize((64, 64))
            writer.write(np.asarray(crop))
    code, _, err = animate(
        capsys,
        tiny_pack,
        *("--image", media["face"], "--aligned", "--driving", clip, "--driving-aligned"),
        *("--save-trajectory", "t.npz"),
    )
    assert code == 0, err
    assert probe_video(work / "face-drive.mp4").n_frames == 12
    assert abs(audio_seconds_in(work / "face-drive.mp4") - 12 / 25) <= 1 / 25
    w = np.load(work / "t.npz")["w"]
    assert np.array_equal(w[0], np.load(work / "t.npz")["w_identity"])  # neutral = frame 0
    assert np.abs(w[-1] - w[0]).max() > 0
    # a video's soundtrack is audio too
    code, _, err = animate(
        capsys, tiny_pack, "-i", media["face"], "--aligned", "-a", clip, "-o", "sound.mp4"
    )
    assert code == 0, err
    assert probe_video(work / "sound.mp4").n_frames == math.ceil(11000 / 16000 * 25)
    code, _, err = animate(
        capsys,
        tiny_pack,
        *("--image", media["face"], "--aligned", "--driving", clip, "--driving-aligned"),
        *("--driving-neutral", "50", "-o", "late.mp4"),
    )
    one_error_line(err, "--driving-neutral 50", "12 frames")
    assert code == 2 and not (work / "late.mp4").exists()


# -- batches ------------------------------------------------------------------------------------


@pytest.fixture
def batch_dirs(work, media) -> tuple[Path, Path]:
    images, audios = work / "img", work / "aud"
    images.mkdir()
    audios.mkdir()
    shutil.copy(media["face"], images / "anna.png")
    Image.open(media["face"]).transpose(Image.FLIP_LEFT_RIGHT).save(images / "ben.png")
    shutil.copy(media["corrupt_image"], images / "cleo.png")
    shutil.copy(media["other"], audios / "hello.wav")
    shutil.copy(media["silent"], audios / "quiet.wav")
    return images, audios


def test_batch_with_a_corrupt_photo_resume_and_shards(
    capsys, work, tiny_pack, batch_dirs, monkeypatch
):
    images, audios = batch_dirs
    base = ["--image-dir", images, "--audio-dir", audios, "--all-pairs", "--aligned"]
    code, _, err = animate(capsys, tiny_pack, *base, "--out-dir", "all")
    assert code == 2
    one_error_line(err, "2 of 6 video(s) failed", "cleo.png")
    made = sorted(p.name for p in (work / "all").glob("*.mp4"))
    assert made == ["anna-hello.mp4", "anna-quiet.mp4", "ben-hello.mp4", "ben-quiet.mp4"]
    report = json.loads((work / "all" / "animate-report.json").read_text())
    assert (report["ok"], report["failed"]) == (4, 2)
    assert all("cannot read as an image" in i["message"] for i in report["items"] if i["message"])

    stamps = {p: p.stat().st_mtime_ns for p in (work / "all").glob("*.mp4")}
    code, _, err = animate(capsys, tiny_pack, *base, "--out-dir", "all", "--resume", "--json")
    assert code == 2
    report = json.loads((work / "all" / "animate-report.json").read_text())
    assert (report["ok"], report["skipped"], report["failed"]) == (0, 4, 2)
    assert stamps == {p: p.stat().st_mtime_ns for p in (work / "all").glob("*.mp4")}

    # two shards, one from --shard and one from a Slurm array's variables, make the full set
    code, _, _ = animate(capsys, tiny_pack, *base, "--out-dir", "parts", "--shard", "0/2")
    assert code == 2  # cleo-hello.mp4 is item 4: shard 0's
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    code, _, err = animate(capsys, tiny_pack, *base, "--out-dir", "parts")
    assert code == 2 and "shard 1/2" in err
    assert sorted(p.name for p in (work / "parts").glob("*.mp4")) == made
    reports = sorted(p.name for p in (work / "parts").glob("animate-report*.json"))
    assert reports == ["animate-report-0-of-2.json", "animate-report-1-of-2.json"]


def test_jobs_csv_with_per_row_options(capsys, work, tiny_pack, media):
    shutil.copy(media["face"], work / "face.png")
    (work / "jobs.csv").write_text(
        "image,audio,out,motion_scale,aligned\n"
        f"face.png,{media['other']},still.mp4,0,yes\n"
        f"face.png,{media['silent']},,,yes\n"
        f"face.png,{media['silent']},bad.mp4,99,yes\n"
    )
    code, _, err = animate(capsys, tiny_pack, "--jobs", "jobs.csv", "--out-dir", "v")
    assert code == 2
    one_error_line(err, "1 of 3", "--motion-scale 99")
    assert json.loads((work / "still.json").read_text())["options"]["motion_scale"] == 0.0
    assert (work / "v" / "face-silent.mp4").is_file() and not (work / "bad.mp4").exists()


# -- bad input ----------------------------------------------------------------------------------


@pytest.fixture
def mismatched_model(tmp_path) -> Path:
    """An audio model trained for a 16x16 generator (6 W+ layers)."""
    from talkcli.models.stylegan2 import generator_from_state_dict
    from talkcli.tiny.audio import write_tiny_audio_model
    from talkcli.tiny.stylegan2 import tiny_generator_checkpoint

    folder = tmp_path / "pack16"
    folder.mkdir()
    ckpt = tiny_generator_checkpoint(16, channels=8)
    torch.save(ckpt, folder / "g16.pt")
    G = generator_from_state_dict(ckpt["g_ema"])
    return write_tiny_audio_model(folder, folder / "g16.pt", G)


BAD_INPUTS = {
    "unreadable image": (
        ["-i", "corrupt_image", "-a", "speech", "--aligned"],
        ["cannot read as an image"],
    ),
    "empty audio": (["-i", "face", "-a", "no_samples", "--aligned"], ["no audio samples"]),
    "corrupt audio": (["-i", "face", "-a", "corrupt_audio", "--aligned"], ["corrupt_audio.wav"]),
    "missing model file": (
        ["-i", "face", "-a", "speech", "--aligned", "--model", "nowhere.safetensors"],
        ["nowhere.safetensors", "not found"],
    ),
    "another generator size": (
        ["-i", "face", "-a", "speech", "--aligned", "--model", "MISMATCHED"],
        ["16x16 generator", "32x32"],
    ),
    "no face": (["-i", "blank", "-a", "speech"], ["no face found"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_no_output(
    case, capsys, work, tiny_pack, media, monkeypatch, request
):
    args, needles = BAD_INPUTS[case]
    args = [media.get(a, a) for a in args]
    if "MISMATCHED" in args:
        args[args.index("MISMATCHED")] = request.getfixturevalue("mismatched_model")
    if case == "no face":  # MTCNN's real weights, beside the tiny pack on the search path
        if not (FIXTURES / "mtcnn").is_dir():
            pytest.skip("../shared/fixtures/mtcnn is not present beside the checkout")
        shutil.copytree(FIXTURES / "mtcnn", work / "fixture_weights" / "mtcnn")
        monkeypatch.setenv("TALKCLI_WEIGHTS", str(work / "fixture_weights"))
    (work / "out").mkdir()
    code, _, err = animate(capsys, tiny_pack, *args, "--out", "out/video.mp4")
    assert code == 2
    one_error_line(err, *needles)
    assert list((work / "out").iterdir()) == []  # no video, manifest or temporary file


def test_a_missing_registry_model_names_how_to_get_it(capsys, work, tiny_pack, media):
    partial = work / "partial"
    partial.mkdir()
    for name in ("stylegan2-ffhq", "psp-ffhq-encode"):
        (partial / registry.get(name).relpath).symlink_to(registry.resolve(name, tiny_pack))
    code, _, err = animate(capsys, partial, "-i", media["face"], "-a", media["speech"], "--aligned")
    assert code == 2
    one_error_line(err, "audio2latent", "talkcli train")
    assert not list(work.glob("*.mp4"))


def test_a_mistyped_photo_is_named_before_missing_model_files(capsys, work, media):
    empty = work / "no-weights"
    empty.mkdir()
    code, _, err = animate(capsys, empty, "-i", work / "typo.png", "-a", media["speech"])
    assert code == 2
    one_error_line(err, "typo.png: image not found")


def test_unwritable_output_folder(capsys, work, tiny_pack, media):
    folder = _unwritable_folder(work)
    try:
        out = folder / "video.mp4"
        code, _, err = animate(
            capsys, tiny_pack, "-i", media["face"], "-a", media["speech"], "--aligned", "-o", out
        )
        assert code == 2
        one_error_line(err, str(folder))
        assert not out.exists()
    finally:
        if folder.is_relative_to(work):
            folder.chmod(0o700)


def test_conflicting_options_are_one_line(capsys, work, tiny_pack, media):
    code, _, err = animate(capsys, tiny_pack, "--image-dir", work, "--image", media["face"])
    assert code == 2
    one_error_line(err, "--image")
    code, _, err = animate(capsys, tiny_pack, "-i", media["face"], "--resume")
    assert code == 2
    one_error_line(err, "--resume")
    code, _, err = animate(capsys, tiny_pack, "-i", media["face"])
    assert code == 2
    one_error_line(err, "--audio")


# -- the main job at full size ------------------------------------------------------------------


@pytest.mark.slow
def test_1024_end_to_end_with_bf16(capsys, work, media, tmp_path_factory):
    """The narrow tiny pack at 1024: a 1024x1024 H.264 video with ceil(duration * 25) frames and
    an AAC stream as long as the input audio (within one frame), the photo aligned from landmarks,
    rendered with bf16 autocast on the CPU."""
    from talkcli.tiny.pack import write_tiny_pack

    pack = tmp_path_factory.mktemp("pack1024")
    write_tiny_pack(pack, size=1024)
    seconds = 0.45
    sf.write(work / "short.wav", load_audio(media["speech"])[: int(seconds * 16000)], 16000)
    code, _, err = animate(
        capsys,
        pack,
        *("--image", media["astro"], "--landmarks", media["lm"], "--audio", "short.wav"),
        *("--dtype", "bf16", "--batch-size", "4"),
    )
    assert code == 0, err
    info = probe_video(work / "astro-short.mp4")
    assert (info.width, info.height) == (1024, 1024)
    assert info.n_frames == math.ceil(seconds * 25) == 12 and info.has_audio
    assert abs(audio_seconds_in(work / "astro-short.mp4") - seconds) <= 1 / 25
    manifest = json.loads((work / "astro-short.json").read_text())
    assert manifest["options"]["dtype"] == "bf16" and manifest["output"]["width"] == 1024
    assert os.path.getsize(work / "astro-short.mp4") > 10_000
