"""Issue 16, part B: named controls in ``animate`` (blinks, head motion, --control/--pose).

The "Must show" list on a tiny pack with a directions file of planted orthonormal directions
(per_unit 1): controls are read back with ``Directions.project`` on the saved trajectory minus
the run without controls. Unit tests of the blink and head-motion generators.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from talkcli import cli
from talkcli.animate.motion.blinks import CLOSED_EYES_OPEN, MIN_INTERVAL_S, BlinkTrack
from talkcli.animate.motion.head import head_motion_track
from talkcli.audio.features import _ArraySource
from talkcli.models.directions import STANDARD_NAMES, Directions, save_directions
from talkcli.tiny.directions import planted_directions
from tests.speech import speech

FPS = 25.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted(n_latent: int = 8, seed: int = 0) -> Directions:
    """Six orthonormal W+ directions named like the standard controls, per_unit 1."""
    d = planted_directions(n_latent, seed=seed)
    assert np.allclose(d.directions.reshape(6, -1) @ d.directions.reshape(6, -1).T, np.eye(6))
    return d


def speech_then_silence(folder: Path, silence_s: float = 4.0) -> tuple[np.ndarray, int]:
    """Three sentences (espeak-ng, else synthetic speech) then ``silence_s`` of silence;
    -> (samples, frames of speech)."""
    talk = np.concatenate([speech(i, folder, seconds=3.0) for i in range(3)])
    x = np.concatenate([talk, np.zeros(int(silence_s * 16000), np.float32)])
    return x, int(len(talk) / 16000 * FPS)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("controls_media")
    photo = Image.fromarray(data.astronaut())
    photo.crop((150, 20, 310, 180)).resize((32, 32), Image.LANCZOS).save(folder / "face.png")
    sf.write(folder / "speech.wav", speech(0, folder, seconds=3.0)[:16000], 16000)
    sf.write(folder / "quiet20.wav", 1e-3 * np.sin(np.arange(20 * 16000) / 7.0), 16000)
    x, _ = speech_then_silence(folder)
    sf.write(folder / "talk_silence.wav", x, 16000)
    save_directions(folder / "dirs.npz", planted())
    return {p.stem: p for p in folder.iterdir()}


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TALKCLI_WEIGHTS", "")
    return tmp_path


def animate(capsys, pack: Path, *args: object) -> tuple[int, str]:
    code = cli.main(["--weights-dir", str(pack), "animate", *map(str, args)])
    return code, capsys.readouterr().err


def controls_of(work: Path, name: str, base: str) -> np.ndarray:
    """(T, K) controls read back from trajectory ``name`` minus trajectory ``base``."""
    a, b = np.load(work / name), np.load(work / base)
    return planted().project(a["w"] - b["w"])


def run_pair(capsys, pack, media, audio: str, *extra: object) -> None:
    base = ["--image", media["face"], "--aligned", "--audio", media[audio], "--seed", "3"]
    code, err = animate(capsys, pack, *base, "-o", "base.mp4", "--save-trajectory", "base.npz")
    assert code == 0, err
    code, err = animate(
        capsys, pack, *base, "--directions", media["dirs"], *extra, "-o", "c.mp4",
        "--save-trajectory", "c.npz",
    )  # fmt: skip
    assert code == 0, err


# -- must show ----------------------------------------------------------------------------------


def test_zero_blinks_and_head_motion_reproduce_todays_output_exactly(
    capsys, work, tiny_pack, media
):
    run_pair(capsys, tiny_pack, media, "speech", "--blinks", "0", "--head-motion", "0")
    a, b = np.load(work / "base.npz"), np.load(work / "c.npz")
    assert np.array_equal(a["w"], b["w"]) and set(a.files) == set(b.files) == {
        "w", "w_identity", "fps"
    }  # fmt: skip
    assert (work / "base.mp4").read_bytes() == (work / "c.mp4").read_bytes()
    manifest = json.loads((work / "c.json").read_text())
    assert "controls" not in manifest and "blinks" not in manifest["options"]


def test_pose_yaw_10_shifts_the_yaw_projection_by_exactly_10(capsys, work, tiny_pack, media):
    run_pair(capsys, tiny_pack, media, "speech", "--pose", "yaw=10", "--control", "smile=0.1")
    c = controls_of(work, "c.npz", "base.npz")  # (T, 6)
    names = list(STANDARD_NAMES)
    np.testing.assert_allclose(c[:, names.index("yaw")], 10.0, atol=2e-3)
    np.testing.assert_allclose(c[:, names.index("smile")], 0.1, atol=2e-3)
    others = [i for i, n in enumerate(names) if n not in ("yaw", "smile")]
    assert np.abs(c[:, others]).max() < 2e-3
    saved = np.load(work / "c.npz")
    assert list(saved["control_names"]) == names
    expected = np.zeros((len(c), 6), np.float32)
    expected[:, 0], expected[:, names.index("smile")] = 10.0, 0.1
    np.testing.assert_allclose(saved["controls"], expected, atol=1e-6)
    manifest = json.loads((work / "c.json").read_text())
    assert manifest["controls"]["static"] == {"yaw": 10.0, "smile": 0.1}
    assert manifest["options"]["controls"] == {"smile": 0.1, "yaw": 10.0}


def count_dips(x: np.ndarray) -> tuple[int, list[int]]:
    """Dips of a signal that is 0 at rest and negative in a dip: count and width (frames) of
    each at half its depth."""
    widths = []
    t = 0
    while t < len(x):
        if x[t] < 0:
            a = t
            while t < len(x) and x[t] < 0:
                t += 1
            dip = x[a:t]
            widths.append(int((dip <= dip.min() / 2).sum()))
        t += 1
    return len(widths), widths


def test_blinks_30_per_minute_over_20_s_dip_eyes_open_only(capsys, work, tiny_pack, media):
    run_pair(capsys, tiny_pack, media, "quiet20", "--blinks", "30", "--batch-size", "16")
    c = controls_of(work, "c.npz", "base.npz")  # (500, 6)
    assert len(c) == 500
    eyes = c[:, list(STANDARD_NAMES).index("eyes_open")]
    n, widths = count_dips(np.where(eyes < -1e-3, eyes, 0.0))
    assert 7 <= n <= 13, n  # about 10
    assert max(widths) <= 10, widths
    # down to a closed eye: from the default open ratio (an aligned photo has no landmarks)
    assert eyes.min() == pytest.approx(CLOSED_EYES_OPEN - 0.28, abs=2e-3)
    others = np.delete(c, list(STANDARD_NAMES).index("eyes_open"), axis=1)
    assert np.abs(others).max() < 2e-3


def test_head_motion_quiet_in_silence_lively_while_speaking(capsys, work, tiny_pack, media):
    run_pair(capsys, tiny_pack, media, "talk_silence", "--head-motion", "1", "--batch-size", "16")
    c = controls_of(work, "c.npz", "base.npz")
    _, speaking = speech_then_silence(work)  # same audio: frames of speech
    yaw = c[:, 0]
    talk_std, quiet_std = yaw[:speaking].std(), yaw[speaking + 25 :].std()
    assert 2.0 <= talk_std <= 8.0, talk_std
    assert quiet_std <= 0.6 * talk_std, (quiet_std, talk_std)
    assert np.abs(np.diff(c[:, :3], axis=0)).max() < 3.0  # smooth: no jumps
    assert np.abs(c[:, 3:]).max() < 2e-3  # only the pose controls move


# -- options and errors -------------------------------------------------------------------------


def test_control_without_a_directions_file_is_one_line_naming_directions_find(
    capsys, work, tiny_pack, media
):
    code, err = animate(
        capsys, tiny_pack, "--image", media["face"], "--aligned", "--audio", media["speech"],
        "--blinks", "10",
    )  # fmt: skip
    assert code == 2 and "talkcli directions find" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--pose", "yaw=10,smile=1"), "not a pose angle"),
        (("--pose", "yaw"), "NAME=VALUE"),
        (("--control", "yaw=400"), "-90..90"),
        (("--control", "frown=1"), "frown"),
        (("--blinks", "100"), "--blinks"),
        (("--driving-mode", "controls"), "--driving"),
    ],
)
def test_bad_control_options_are_one_line_errors(capsys, work, tiny_pack, media, args, needle):
    code, err = animate(
        capsys, tiny_pack, "--image", media["face"], "--aligned", "--audio", media["speech"],
        "--directions", media["dirs"], *args,
    )  # fmt: skip
    assert code == 2, err
    assert needle in err and "Traceback" not in err


def test_replay_of_a_controlled_trajectory(capsys, work, tiny_pack, media):
    run_pair(capsys, tiny_pack, media, "speech", "--pose", "yaw=10")
    # unchanged: the very same video, the controls carried into a re-saved file
    code, err = animate(
        capsys, tiny_pack, "--from-trajectory", "c.npz", "--audio", media["speech"],
        "-o", "re.mp4", "--save-trajectory", "re.npz",
    )  # fmt: skip
    assert code == 0, err
    assert (work / "re.mp4").read_bytes() == (work / "c.mp4").read_bytes()
    assert np.array_equal(np.load(work / "re.npz")["controls"], np.load(work / "c.npz")["controls"])
    # --motion-scale 0 keeps the controls: only the audio motion is scaled
    code, err = animate(
        capsys, tiny_pack, "--from-trajectory", "c.npz", "--motion-scale", "0",
        "-o", "still.mp4", "--save-trajectory", "still.npz",
    )  # fmt: skip
    assert code == 0, err
    still = np.load(work / "still.npz")
    c = planted().project(still["w"] - still["w_identity"][None])
    np.testing.assert_allclose(c[:, 0], 10.0, atol=2e-3)
    assert np.abs(c[:, 1:]).max() < 2e-3
    # more controls on top, through the same directions
    code, err = animate(
        capsys, tiny_pack, "--from-trajectory", "c.npz", "--directions", media["dirs"],
        "--pose", "pitch=-5", "-o", "more.mp4", "--save-trajectory", "more.npz",
    )  # fmt: skip
    assert code == 0, err
    more = np.load(work / "more.npz")
    np.testing.assert_allclose(more["controls"][:, :2], [[10.0, -5.0]] * len(c), atol=1e-6)
    c = planted().project(more["w"] - np.load(work / "c.npz")["w"])
    np.testing.assert_allclose(c[:, 1], -5.0, atol=2e-3)
    assert np.abs(c[:, [0, 2, 3, 4, 5]]).max() < 2e-3


# -- the generators -----------------------------------------------------------------------------


def test_blink_track_rate_spacing_widths_and_seed():
    fps, seconds = 25.0, 600
    x = BlinkTrack(30.0, fps, seed=1, open_value=0.3).values(0, int(seconds * fps))
    n, widths = count_dips(np.where(x < -1e-9, x, 0.0))
    assert 0.9 * 300 <= n <= 1.1 * 300  # 30 per minute
    assert max(widths) <= 10 and min(widths) >= 1
    assert x.min() == pytest.approx(CLOSED_EYES_OPEN - 0.3)  # a fully closed frame each blink
    closed = np.flatnonzero(np.isclose(x, x.min()))
    assert np.diff(closed).min() >= MIN_INTERVAL_S * fps - 1  # never closer than 1 s
    # the same seed: the same blinks, whatever the chunking; another seed: others
    track = BlinkTrack(30.0, fps, seed=1, open_value=0.3)
    chunks = [track.values(a, 37) for a in range(0, int(seconds * fps), 37)]
    assert np.array_equal(np.concatenate(chunks)[: len(x)], x)
    assert not np.array_equal(
        BlinkTrack(30.0, fps, seed=2, open_value=0.3).values(0, 1000), x[:1000]
    )
    assert not BlinkTrack(0.0, fps).values(0, 100).any()


def test_blink_closes_in_a_third_and_opens_in_two_thirds():
    fps = 1000.0  # fine sampling of one blink's shape
    x = BlinkTrack(30.0, fps, seed=0, open_value=0.3).values(0, 12000)
    first = np.flatnonzero(x < 0)
    dip = x[first[0] : first[0] + np.flatnonzero(np.diff(first) > 1)[0] + 1]
    bottom = int(np.argmin(dip))
    assert 0.25 < bottom / len(dip) < 0.42  # closing ~1/3 of the 150-350 ms event
    assert 150 * 0.95 <= len(dip) <= 350 * 1.05


def test_head_motion_follows_speech_and_is_seeded(tmp_path):
    x, speaking = speech_then_silence(tmp_path)
    source = _ArraySource(x)
    a = head_motion_track(source, FPS, 1.0, seed=4)
    assert a.shape == (int(len(x) / 16000 * FPS), 3) or abs(len(a) - len(x) / 640) <= 1
    assert np.array_equal(head_motion_track(source, FPS, 1.0, seed=4, chunk=17), a)
    assert not np.array_equal(head_motion_track(source, FPS, 1.0, seed=5), a)
    talk, quiet = a[:speaking].std(axis=0), a[speaking + 25 :].std(axis=0)
    assert 2.0 <= talk[0] <= 8.0 and quiet[0] <= 0.6 * talk[0]
    assert np.abs(a[0]).max() < 0.5  # starts straight ahead
    assert np.abs(np.diff(a, axis=0)).max() < 3.0
    np.testing.assert_allclose(head_motion_track(source, FPS, 2.0, seed=4), 2 * a, atol=1e-9)
    assert not head_motion_track(source, FPS, 0.0, seed=4).any()


# -- --driving-mode controls --------------------------------------------------------------------


class GrayCodedFaces:
    """A fake 68-point detector: frame t of the test clip is a flat gray 100 + 10 t, and its
    face has yaw 2 t degrees and eyes opening with t (a projected mean face, test_directions_file's
    construction)."""

    name = "fake68"

    @staticmethod
    def face(t: int, size: int = 64) -> np.ndarray:
        import math

        from talkcli.face import measures

        y = math.radians(2.0 * t)
        rot = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
        lm = np.zeros((68, 2))
        for i, xyz in measures.MODEL_68.items():
            cam = rot @ np.asarray(xyz) + np.array([0.0, 0.0, 2000.0])
            lm[i] = size * cam[:2] / cam[2] + size / 2
        for a, b in ((36, 39), (42, 45)):  # eyelids between the corners
            p1, p4 = lm[a], lm[b]
            gap = (0.2 + 0.01 * t) * np.linalg.norm(p4 - p1)
            for k, frac in ((1, 1 / 3), (2, 2 / 3)):
                mid = p1 + frac * (p4 - p1)
                lm[a + k], lm[a + 6 - k] = mid - [0, gap / 2], mid + [0, gap / 2]
        lm[61:64] = lm[48] + (lm[54] - lm[48]) * np.array([[0.3], [0.5], [0.7]])
        lm[65:68] = lm[61:64][::-1]
        return lm

    def detect(self, img: np.ndarray):
        from talkcli.face.landmarks import Face

        t = int(round((float(img.mean()) - 100.0) / 10.0))
        return [Face(self.face(t, img.shape[1]), np.array([0, 0, 64, 64.0]), 1.0)]


def test_driving_mode_controls_applies_the_measured_controls_only(work, tiny_pack, media):
    from talkcli.animate.cache import Cache
    from talkcli.animate.options import AnimateOptions
    from talkcli.animate.pipeline import Job, Models, Needs, animate_job, resolve_models
    from talkcli.face.measures import eye_aspect_ratio
    from tests.metrics_support import write_clip

    frames = np.stack([np.full((64, 64, 3), 100 + 10 * t, np.uint8) for t in range(10)])
    clip = write_clip(work / "drive.mp4", frames)
    opts = AnimateOptions(aligned=True, driving_mode="controls", directions=media["dirs"])
    job = Job(
        work / "out.mp4", image=media["face"], driving=clip, save_trajectory=work / "t.npz",
        options=opts,
    ).check()  # fmt: skip
    needs = Needs.of([job])
    assert needs.detector and needs.encoder  # pSp for the photo only, never for the driver
    needs.detector = False  # the fake detector stands in for the run's
    cache = Cache(work / "cache")
    models = Models(resolve_models(needs, weights_dir=tiny_pack), torch.device("cpu"), cache)
    models.detector = lambda: GrayCodedFaces()  # type: ignore[method-assign]
    result = animate_job(job, models, cache)
    assert result.frames == 10
    saved = np.load(work / "t.npz")
    c = planted().project(saved["w"] - saved["w_identity"][None])  # (10, 6)
    np.testing.assert_allclose(c, saved["controls"], atol=2e-3)
    np.testing.assert_allclose(c[:, 0], 2.0 * np.arange(10), atol=0.5)  # yaw from the driver
    ear = [eye_aspect_ratio(GrayCodedFaces.face(t)) for t in range(10)]
    np.testing.assert_allclose(c[:, 3], np.array(ear) - ear[0], atol=5e-3)
    assert np.abs(c[0]).max() < 1e-3  # the neutral frame (the first) is no motion
    manifest = json.loads((work / "out.json").read_text())
    assert manifest["controls"]["driving"] is True and "encoder" in manifest["models"]


def test_directions_found_in_the_cache_of_directions_find_then_the_weights_folder(
    capsys, work, tiny_pack, media
):
    import shutil

    from talkcli.animate.cache import default_cache_dir
    from talkcli.io.files import sha256_file
    from talkcli.models.directions import cached_directions_path
    from talkcli.weights import registry

    args = ["--image", media["face"], "--aligned", "--audio", media["speech"], "--pose", "yaw=5"]
    pack = work / "pack"
    shutil.copytree(tiny_pack, pack)
    shutil.copy(media["dirs"], pack / "directions.npz")  # the registry's file
    code, err = animate(capsys, pack, *args, "-o", "a.mp4")
    assert code == 0, err
    assert json.loads((work / "a.json").read_text())["controls"]["directions"] == str(
        pack / "directions.npz"
    )
    sha = sha256_file(registry.resolve("stylegan2-ffhq", pack))
    cached = cached_directions_path(default_cache_dir(), sha)
    cached.parent.mkdir(parents=True)
    shutil.copy(media["dirs"], cached)  # `directions find`'s file wins over the registry's
    code, err = animate(capsys, pack, *args, "-o", "b.mp4")
    assert code == 0, err
    assert json.loads((work / "b.json").read_text())["controls"]["directions"] == str(cached)


def test_batch_rows_take_blinks_head_motion_control_and_pose(capsys, work, tiny_pack, media):
    rows = [
        "image,audio,out,blinks,head_motion,control,pose",
        f"{media['face']},{media['speech']},plain.mp4,,,,",
        f'{media["face"]},{media["speech"]},moved.mp4,20,1,smile=0.1;mouth_open=0.05,"yaw=10,roll=-2"',
        f"{media['face']},{media['speech']},bad.mp4,,,,smile=1",
    ]
    (work / "jobs.csv").write_text("\n".join(rows) + "\n")
    code = cli.main(
        ["--weights-dir", str(tiny_pack), "animate", "--jobs", "jobs.csv", "--aligned",
         "--directions", str(media["dirs"]), "--out-dir", "out"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "bad.mp4" not in [p.name for p in work.iterdir()], err
    report = json.loads((work / "out" / "animate-report.json").read_text())
    status = {Path(r["out"]).name: (r["status"], r["message"]) for r in report["items"]}
    assert status["plain.mp4"][0] == status["moved.mp4"][0] == "ok"
    assert status["bad.mp4"][0] == "failed" and "not a pose angle" in status["bad.mp4"][1]
    plain = json.loads((work / "plain.json").read_text())
    moved = json.loads((work / "moved.json").read_text())
    assert "controls" not in plain and "blinks" not in plain["options"]
    assert moved["options"]["blinks"] == 20.0 and moved["options"]["head_motion"] == 1.0
    assert moved["options"]["controls"] == {
        "mouth_open": 0.05,
        "roll": -2.0,
        "smile": 0.1,
        "yaw": 10.0,
    }
    assert (work / "plain.mp4").read_bytes() != (work / "moved.mp4").read_bytes()


def test_plot_controls_writes_a_picture(tmp_path):
    from PIL import Image

    from talkcli.plots import plot_controls

    c = np.zeros((50, 6))
    c[:, 0] = np.sin(np.arange(50) / 5.0)
    out = plot_controls(tmp_path / "c.png", c, STANDARD_NAMES, 25.0)
    assert out.is_file() and Image.open(out).size[0] > 100
    with pytest.raises(ValueError):
        plot_controls(tmp_path / "d.png", c[:, :3], STANDARD_NAMES, 25.0)


def test_identity_eyes_open_is_measured_from_68_alignment_landmarks():
    from talkcli.animate.motion.blinks import DEFAULT_EYES_OPEN
    from talkcli.animate.motion.controls import identity_eyes_open
    from talkcli.face.measures import eye_aspect_ratio

    lm = GrayCodedFaces.face(5)
    value, where = identity_eyes_open({"landmarks": lm.tolist()})
    assert where == "measured" and value == pytest.approx(eye_aspect_ratio(lm))
    five = {"landmarks": lm[[36, 42, 30, 48, 54]].tolist()}
    assert identity_eyes_open(five) == (DEFAULT_EYES_OPEN, "default")
    assert identity_eyes_open(None) == (DEFAULT_EYES_OPEN, "default")


def test_head_motion_without_speech_is_refused_before_any_work(capsys, work, tiny_pack, media):
    code, err = animate(
        capsys, tiny_pack, "--from-trajectory", media["dirs"], "--head-motion", "1",
        "--directions", media["dirs"],
    )  # fmt: skip
    assert code == 2 and "--head-motion" in err and "--audio" in err, err
