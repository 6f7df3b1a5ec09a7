"""One ``animate`` job end to end: inputs -> identity -> W+ stream -> frames -> mp4 + manifest.

``animate(image, audio, out, options)`` is the library entry point for one video (the CLI's
single-video command calls it); ``animate_job(job, models, cache)`` is what it and the batch
runner call: a short composition of named steps (check, open the trajectory file, decode the
audio, identity, motion, render into the sink, manifest) under one ``contextlib.ExitStack``.
``resolve_models`` finds every model file a list of jobs needs before any work starts (a
missing one is named with how to get it); ``Models`` loads each once, lazily, and checks that
they fit together (pSp and the audio model against the generator) (both are ``talkcli.runtime``'s
``find_model_files`` and ``ModelSet``, named for animate).

Streaming: the audio is decoded to a temporary file and read back in segments; the audio model
runs chunk by chunk with its LSTM state (``talkcli.animate.motion``); W+ frames are re-cut into
``--batch-size`` batches, rendered (``render``), and handed to a writer thread that pastes them
back and pipes them to ffmpeg, which encodes in its own process (``sink``). Nothing holds more
than a few chunks, so memory does not grow with the audio's length.

The run manifest (``<out stem>.json`` beside the video) records the inputs' and model files'
hashes, the options, versions, per-stage timings and which steps the cache served.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talkcli import __version__
from talkcli.animate.cache import Cache, file_identity
from talkcli.animate.options import AnimateOptions
from talkcli.console import info
from talkcli.device import choose_device, resolve_dtype
from talkcli.errors import InputFileError, UserError
from talkcli.provenance import software_versions
from talkcli.runtime import ModelNeeds, ModelPaths, ModelSet, find_model_files

if TYPE_CHECKING:
    from talkcli.animate.identity import Identity
    from talkcli.animate.motion import Motion
    from talkcli.animate.motion.controls import ControlPlan
    from talkcli.animate.render import FrameRenderer
    from talkcli.animate.sink import PasteFn, VideoSink
    from talkcli.animate.trajectory import TrajectoryFile, TrajectoryWriter
    from talkcli.io.audio import DecodedAudio

ProgressFn = Callable[[str, int, int], None]  # (stage "tune" | "render", done, total)
MANIFEST_KIND = "talkcli-animate"


# -- jobs ---------------------------------------------------------------------------------------


@dataclass
class Job:
    """One video to make. Motion comes from ``audio``, ``driving`` or ``trajectory``."""

    out: Path
    image: Path | None = None
    audio: Path | None = None  # the speech; with a trajectory, only the soundtrack
    driving: Path | None = None
    trajectory: Path | None = None
    save_trajectory: Path | None = None
    options: AnimateOptions = field(default_factory=AnimateOptions)

    @property
    def manifest(self) -> Path:
        """The run manifest beside the video: ``face-speech.mp4`` -> ``face-speech.json``."""
        return self.out.with_suffix(".json")

    @property
    def name(self) -> str:
        return self.out.name

    def inputs(self) -> list[Path]:
        """Every input file of the job (for the output guard and the manifest)."""
        o = self.options
        files = [self.image, self.audio, self.driving, self.trajectory, o.landmarks, o.directions]
        return [p for p in files if p is not None] + [e.path for e in o.edits]

    def require_inputs(self) -> Job:
        """Every input file exists and is readable (checked before model files are looked for:
        a mistyped photo path is reported as such, not as missing weights)."""
        from talkcli.io.files import require_file

        o = self.options
        named = [
            (self.image, "image"),
            (self.audio, "audio file"),
            (self.driving, "driving video"),
            (self.trajectory, "trajectory file"),
            (o.landmarks, "landmarks file"),
            (o.directions, "directions file"),
            *((e.path, "edit direction file") for e in o.edits),
        ]
        for path, what in named:
            if path is not None:
                require_file(path, what)
        return self

    def check(self) -> Job:
        """Combinations of inputs and output names (before any work)."""
        from talkcli.io.video import VIDEO_SUFFIXES

        if self.driving is not None and (self.audio is not None or self.trajectory is not None):
            raise UserError(
                "--driving brings its own motion and sound: drop --audio and --from-trajectory"
            )
        if self.driving is None and self.trajectory is None and self.audio is None:
            raise UserError("nothing drives the face: pass --audio, --driving or --from-trajectory")
        if self.image is None and self.trajectory is None:
            raise UserError("pass the face photo with --image")
        if self.image is None and (self.options.tune or self.options.paste_back):
            raise UserError("--tune and --paste-back need the photo (--image)")
        if self.out.suffix.lower() not in VIDEO_SUFFIXES:
            raise UserError(
                f"{self.out}: the video is written as {', '.join(VIDEO_SUFFIXES)} "
                "(use a name ending in .mp4)"
            )
        if self.save_trajectory is not None and self.save_trajectory.suffix.lower() != ".npz":
            raise UserError(
                f"{self.save_trajectory}: a trajectory is saved as .npz (use a name ending in .npz)"
            )
        if self.options.driving_mode == "controls" and self.driving is None:
            raise UserError("--driving-mode controls needs a driving clip (--driving)")
        if self.options.head_motion > 0 and self.audio is None:
            raise UserError("--head-motion follows the speech: pass it with --audio")
        self.options.check()
        return self


def default_out(image: Path | None, motion: Path | None, folder: Path = Path(".")) -> Path:
    """``<image stem>-<audio stem>.mp4`` in ``folder`` (the current one by default)."""
    stems = [p.stem for p in (image, motion) if p is not None]
    return folder / (("-".join(stems) or "animate") + ".mp4")


# -- model files --------------------------------------------------------------------------------


class Needs(ModelNeeds):
    """Which model files a set of jobs uses (the generator always)."""

    @classmethod
    def of(cls, jobs: Iterable[Job]) -> Needs:
        n = cls()
        for job in jobs:
            o = job.options
            photo_identity = job.image is not None and job.trajectory is None
            aligns = job.image is not None and (photo_identity or o.tune or o.paste_back)
            by_controls = o.driving_mode == "controls"  # issue 16: landmarks, not pSp
            n.encoder |= photo_identity or (job.driving is not None and not by_controls)
            n.audio_model |= job.audio is not None and job.trajectory is None
            n.detector |= (aligns and not o.aligned and o.landmarks is None) or (
                job.driving is not None and (by_controls or not o.driving_aligned)
            )
            n.lpips |= o.tune
        return n


def resolve_models(
    needs: ModelNeeds,
    *,
    generator: Path | None = None,
    encoder: Path | None = None,
    model: Path | None = None,
    detector: str = "auto",
    weights_dir: Path | None = None,
    network: str = "G_ema",
) -> ModelPaths:
    """Find every model file the jobs need, before any work (``talkcli.runtime``'s rules: a
    missing one is a one-line ModelFileError naming it and how to get it)."""
    return find_model_files(
        needs,
        weights_dir,
        generator=generator,
        encoder=encoder,
        audio_model=model,
        detector=detector,
        purpose="animate",
        network=network,
    )


class Models(ModelSet):
    """animate's ``ModelSet``: the resolved files, loaded lazily on ``device``; file hashes go
    through the run's cache (the manifest's ``file_identity`` reads the same)."""

    def __init__(
        self, paths: ModelPaths, device: Any, cache: Cache, weights_dir: Path | None = None
    ) -> None:
        super().__init__(weights_dir, device, paths=paths, cache=cache)


animate_device = choose_device  # --device, with the one torchrun rule (cuda:LOCAL_RANK % GPUs)


# -- results ------------------------------------------------------------------------------------


@dataclass
class AnimateResult:
    """What one job made."""

    out: Path
    manifest: Path
    frames: int
    fps: float
    width: int
    height: int
    audio_seconds: float | None
    timings: dict[str, float]
    cache: dict[str, str]
    trajectory: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "manifest": str(self.manifest),
            "frames": self.frames,
            "fps": self.fps,
            "size": [self.width, self.height],
            "audio_seconds": self.audio_seconds,
            "timings": self.timings,
            "cache": self.cache,
            "trajectory": str(self.trajectory) if self.trajectory else None,
        }


class _Timed:
    """Iterate ``items`` and add the time spent producing them to ``seconds``."""

    def __init__(self, items: Iterable[np.ndarray]) -> None:
        self._it = iter(items)
        self.seconds = 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        t = time.perf_counter()
        try:
            return next(self._it)
        finally:
            self.seconds += time.perf_counter() - t


@dataclass
class Rendered:
    """What the render step made and how long its parts took (seconds)."""

    frames: int
    width: int
    height: int
    trajectory: float = 0.0  # producing the W+ stream (MFCC + audio model, or pSp, or a file)
    render: float = 0.0  # the generator
    paste_back: float = 0.0  # in the writer thread
    encode_pipe: float = 0.0  # writing to ffmpeg, in the writer thread
    render_wait: float = 0.0  # the renderer waiting for room in the writer's queue
    stream: float = 0.0  # the whole frame loop
    finalize: float = 0.0  # the encoder's flush, frame-count check and audio mux
    compile: dict[str, Any] | None = None  # --compile: what ran (talkcli.compiled record)


def _on_error(fn: Callable[[], object]) -> Callable[..., bool]:
    """An ``ExitStack`` exit callback running ``fn`` only when the block fails."""

    def exit_(exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None:
            fn()
        return False  # the error goes on

    return exit_


# -- one job: the steps -------------------------------------------------------------------------


def _start(job: Job, models: Models) -> tuple[int, int]:
    """Check the job before any work: options, inputs, outputs, model files; -> (n_latent, 512)."""
    from talkcli.weights.outputs import guard_outputs

    job.check()
    job.require_inputs()
    guard_outputs(
        [job.out, job.manifest, job.save_trajectory],
        inputs=job.inputs(),
        weights_dir=models.weights_dir,
    )
    models.preflight(Needs.of([job]))
    shape = models.latent_shape()
    if job.options.resolution is not None:  # before any work (PTI, audio model, decoding)
        from talkcli.animate.render import check_resolution

        G = models.generator()
        check_resolution(G, job.options.frame_resolution(int(G.size)))
    return shape


def _open_trajectory(
    job: Job, models: Models, stack: ExitStack, latent_shape: tuple[int, int]
) -> tuple[TrajectoryFile | None, AnimateOptions]:
    """``--from-trajectory``: the file checked against the generator and for NaN; the options
    take its fps. Closed when the job ends."""
    from talkcli.animate.trajectory import TrajectoryFile

    o = job.options
    if job.trajectory is None:
        return None, o
    traj = stack.enter_context(TrajectoryFile(job.trajectory))
    if (traj.n_latent, traj.style_dim) != latent_shape:
        n_latent, style_dim = latent_shape
        raise InputFileError(
            job.trajectory,
            f"holds W+ frames of ({traj.n_latent}, {traj.style_dim}) but the generator "
            f"{models.paths.generator} takes ({n_latent}, {style_dim})",
            "render it with the generator it was made for (--generator)",
        )
    traj.check_values()
    if traj.fps != o.fps:
        info(f"{job.trajectory.name}: rendering at the trajectory's {traj.fps:g} fps")
        o = replace(o, fps=traj.fps)
    return traj, o


def _decode_audio(
    job: Job, stack: ExitStack, tmp_dir: Path, timings: dict[str, float]
) -> DecodedAudio | None:
    """The speech (or soundtrack) decoded once to a temporary file, read back in segments."""
    from talkcli.io.audio import DecodedAudio

    if job.audio is None:
        return None
    t = time.perf_counter()
    audio = stack.enter_context(DecodedAudio(job.audio, tmp_dir=tmp_dir))
    timings["decode_audio"] = time.perf_counter() - t
    return audio


def _identity(
    job: Job,
    o: AnimateOptions,
    models: Models,
    cache: Cache,
    traj: TrajectoryFile | None,
    progress: ProgressFn | None,
) -> Identity:
    """The face: aligned, encoded and (``--tune``) tuned, or the trajectory's identity."""
    from talkcli.animate.identity import prepare_identity

    on_tune = None
    if progress is not None and o.tune:
        steps = int(o.tune_steps)
        on_tune = lambda s, _row: progress("tune", s, steps)  # noqa: E731
    return prepare_identity(
        job.image,
        o,
        models,
        cache,
        w_identity=traj.w_identity if traj is not None else None,
        on_tune_step=on_tune,
    )


def _motion(
    job: Job,
    o: AnimateOptions,
    models: Models,
    tmp_dir: Path,
    w_identity: np.ndarray,  # (n_latent, 512)
    offset: np.ndarray | None,  # (n_latent, 512): the --edit directions
    traj: TrajectoryFile | None,
    audio: DecodedAudio | None,
    plan: ControlPlan | None = None,
) -> Motion:
    """The W+ stream to render: a saved trajectory, a driving clip, or the speech."""
    from talkcli.animate.motion import audio_motion, driving_motion, replay_motion
    from talkcli.guards import check_frame_count

    if traj is not None:
        seconds = audio.duration if audio is not None else None
        motion = replay_motion(
            traj, job.trajectory, w_identity, o, offset, soundtrack=job.audio, sound_seconds=seconds
        )
    elif job.driving is not None and o.driving_mode == "controls":  # issue 16
        from talkcli.animate.motion.driving import driving_controls_motion

        motion = driving_controls_motion(job.driving, o, models, w_identity, offset, plan)
    elif job.driving is not None:
        motion = driving_motion(job.driving, o, models, tmp_dir, w_identity, offset)
    else:
        A = models.audio_model()
        if abs(A.fps - o.fps) > 1e-6:
            info(f"the audio model was trained at {A.fps:g} fps; rendering at {o.fps:g} fps")
        from talkcli.animate.motion.audio import attach_speech_features

        attach_speech_features(A, o.feature_model, models.device)  # SSL models: checked here
        motion = audio_motion(A, audio, job.audio, w_identity, o, offset)
    check_frame_count(motion.source, motion.total, o.fps)
    return _first_seconds(motion, o.preview_seconds, o.fps)


def _first_seconds(motion: Motion, seconds: float | None, fps: float) -> Motion:
    """``--preview-seconds``: only the first ``seconds`` of the motion, the sound cut to match."""
    if seconds is None:
        return motion
    n = max(1, int(round(seconds * fps)))
    if n >= motion.total:
        return motion

    def first(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        left = n
        for chunk in chunks:  # (m, n_latent, 512)
            yield chunk[:left]
            left -= len(chunk[:left])
            if left <= 0:
                return

    return replace(motion, chunks=first(motion.chunks), total=n, trim_audio=True)


def _frame_size(identity: Identity, o: AnimateOptions) -> tuple[int, int, PasteFn | None]:
    """(width, height, paste): the rendered size (``--resolution``, else the generator's), or
    the photo's (even) with paste-back (the frame's warp is rescaled to its size)."""
    from talkcli.animate.sink import even_size, paste_function

    size = o.frame_resolution(int(identity.generator.size)) or int(identity.generator.size)
    if not o.paste_back:
        return size, size, None
    paste = paste_function(identity.source, identity.align_meta, o.feather)
    width, height = even_size(identity.source.shape[1], identity.source.shape[0])
    return width, height, paste


def _render(
    job: Job,
    o: AnimateOptions,
    motion: Motion,
    identity: Identity,
    stack: ExitStack,
    created: list[Path],
    progress: ProgressFn | None,
) -> Rendered:
    """W+ batches -> generator -> the frame sink (paste-back, ffmpeg) [-> the trajectory file].

    The video and the trajectory are renamed into place at the end and listed in ``created``
    (removed if a later step fails); on an error nothing appears under their names.
    """
    from talkcli.animate.render import FrameRenderer
    from talkcli.animate.sink import open_video_sink
    from talkcli.animate.trajectory import TrajectoryWriter

    width, height, paste = _frame_size(identity, o)
    renderer = FrameRenderer(
        identity.generator,
        o.dtype,
        o.frame_resolution(int(identity.generator.size)),
        o.compile,
        motion.total,
        int(o.batch_size),
    )
    saver = TrajectoryWriter(job.save_trajectory) if job.save_trajectory else None
    if saver is not None:
        stack.push(_on_error(saver.abort))
        if motion.controls is not None:  # issue 16: the applied controls go in the file too
            motion.controls.listeners.append(saver.write_controls)
    stream = _Timed(motion.chunks)
    stats = Rendered(motion.total, width, height)
    loop_start = time.perf_counter()
    with open_video_sink(
        job.out,
        o.fps,
        (width, height),
        paste=paste,
        audio=motion.soundtrack,
        audio_seconds=motion.sound_seconds,
        crf=int(o.crf),
        preset=o.preset,
        trim_audio=motion.trim_audio,
    ) as sink:
        done = _frame_loop(stream, renderer, sink, saver, o, motion.total, stats, progress)
        stats.compile = renderer.synthesis.record()
        sink.close()  # every frame handed to ffmpeg
        if done != motion.total:
            raise InputFileError(
                motion.source,
                f"gave {done} frames, expected {motion.total}",
                "the file may be damaged",
            )
        stats.stream = time.perf_counter() - loop_start
        if saver is not None:
            directions = motion.controls.directions if motion.controls is not None else None
            created.append(saver.close(identity.w, o.fps, directions))
        t = time.perf_counter()
    stats.finalize = time.perf_counter() - t  # leaving the sink: flush, frame count, audio mux
    created.append(job.out)
    stats.trajectory = stream.seconds
    stats.paste_back, stats.encode_pipe = sink.paste_seconds, sink.write_seconds
    stats.render_wait = sink.wait_seconds
    return stats


def _frame_loop(
    stream: Iterable[np.ndarray],  # W+ chunks (n, n_latent, 512)
    renderer: FrameRenderer,
    sink: VideoSink,
    saver: TrajectoryWriter | None,
    o: AnimateOptions,
    total: int,
    stats: Rendered,
    progress: ProgressFn | None,
) -> int:
    """Render ``--batch-size`` batches into the sink (and the trajectory file); -> frames."""
    from talkcli.animate.motion import rebatch

    done = 0
    if progress is not None:
        progress("render", 0, total)
    for w in rebatch(stream, int(o.batch_size)):  # (B, n_latent, 512)
        if saver is not None:
            saver.write(w)
        t = time.perf_counter()
        frames = renderer(w)  # (B, S, S, 3) uint8
        stats.render += time.perf_counter() - t
        sink.put(frames)
        done += len(w)
        if progress is not None:
            progress("render", done, total)
    return done


def _manifest(
    job: Job,
    o: AnimateOptions,
    models: Models,
    cache: Cache,
    audio: DecodedAudio | None,
    identity: Identity,
    motion: Motion,
    rendered: Rendered,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The run manifest (``<out stem>.json``): outputs, inputs' and models' hashes, options,
    versions, timings, cache use. Its keys are a contract (``--resume`` reads it)."""
    total, loop_s = rendered.frames, rendered.stream
    return {
        "kind": MANIFEST_KIND,
        "talkcli": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "ok",
        "output": {
            "video": str(job.out),
            "frames": total,
            "fps": o.fps,
            "width": rendered.width,
            "height": rendered.height,
            "video_seconds": total / o.fps,
            "soundtrack": str(motion.soundtrack) if motion.soundtrack else None,
            "soundtrack_seconds": motion.sound_seconds,
            "trajectory": str(job.save_trajectory) if job.save_trajectory else None,
            "frames_per_s": round(total / loop_s, 3) if loop_s > 0 else None,
        },
        "inputs": _inputs_manifest(job, cache, audio),
        "models": _models_manifest(job, models, identity),
        "options": o.shaping(),
        "device": str(models.device),
        "dtype": resolve_dtype(o.dtype, models.device),  # what --dtype (auto) ran in
        "compile": rendered.compile,  # --compile: whether torch.compile ran, its start-up
        "versions": software_versions(ffmpeg=True),
        "timings": timings,
        "cache": {**cache.describe(), **identity.cache},
        "identity": {
            "detector": identity.details.get("detector"),
            "faces": identity.details.get("faces"),
            "pti": identity.details.get("pti"),
            "driving_neutral": motion.driving.neutral if motion.driving is not None else None,
        },
    }


# -- named controls (issue 16) ------------------------------------------------------------------


def _control_plan(
    job: Job,
    o: AnimateOptions,
    models: Models,
    cache: Cache,
    latent_shape: tuple[int, int],
    traj: TrajectoryFile | None,
) -> ControlPlan | None:
    """The run's controls and their directions, or None when it uses none (then no directions
    file is read and the output is what it was before issue 16)."""
    recorded = traj.directions if traj is not None else None
    if not o.uses_controls and recorded is None:
        return None
    from talkcli.animate.motion.controls import (
        ControlPlan,
        find_directions,
        load_plan_directions,
        same_directions,
    )

    if o.uses_controls:
        sha = None if o.directions is not None else models.sha(models.paths.generator)
        path = find_directions(o.directions, cache.root, sha, models.weights_dir)
        directions, source = load_plan_directions(path, latent_shape), str(path)
        if recorded is not None and not same_directions(directions, recorded):
            raise InputFileError(
                job.trajectory,
                f"recorded its controls through other directions than {path}",
                "replay it without control options, or pass the directions it was made with",
            )
    else:
        directions, source = recorded, "trajectory"
    plan = ControlPlan(
        directions,
        source,
        static=dict(o.controls),
        blinks=float(o.blinks),
        head_motion=float(o.head_motion),
        seed=int(o.seed),
        driving=o.driving_mode == "controls" and job.driving is not None,
    ).check()
    for note in plan.notes:
        info(note)
    return plan


def _with_controls(
    plan: ControlPlan,
    motion: Motion,
    identity: Identity,
    audio: DecodedAudio | None,
    o: AnimateOptions,
) -> Motion:
    """``motion`` with the plan's controls added to every frame."""
    from talkcli.animate.motion.controls import controlled_motion, identity_eyes_open

    open_value, where = identity_eyes_open(identity.align_meta)
    if plan.blinks > 0:
        plan.notes.append(f"eyes_open of the identity: {open_value:.3f} ({where})")
    return controlled_motion(motion, plan, o.fps, open_value=open_value, audio=audio)


# -- one job ------------------------------------------------------------------------------------


def animate_job(
    job: Job,
    models: Models,
    cache: Cache,
    *,
    progress: ProgressFn | None = None,
) -> AnimateResult:
    """Make one video (and its manifest); nothing appears under the output names on failure.

    The steps: check -> open the trajectory file / decode the audio -> identity -> motion ->
    render into the sink -> manifest. Everything opened on the way (temporary folder, decoded
    audio, trajectory file, writer thread, ffmpeg) is closed by one ``ExitStack``; on an error
    it also removes the outputs already renamed into place.
    """
    from talkcli.animate.motion import edit_offset
    from talkcli.io.files import write_json_atomic

    started = time.perf_counter()
    loaded_before = models.load_seconds
    latent_shape = _start(job, models)
    timings: dict[str, float] = {}
    with ExitStack() as stack:
        tmp_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="talkcli-animate.")))
        created: list[Path] = []  # outputs renamed into place: removed if a later step fails
        stack.push(_on_error(lambda: [p.unlink(missing_ok=True) for p in created]))
        traj, o = _open_trajectory(job, models, stack, latent_shape)
        offset = edit_offset(o.edits, *latent_shape, o.edit_layers)  # (n_latent, 512) | None
        audio = _decode_audio(job, stack, tmp_dir, timings)
        plan = _control_plan(job, o, models, cache, latent_shape, traj)  # issue 16; None: off
        identity = _identity(job, o, models, cache, traj, progress)
        timings.update(identity.timings)
        motion = _motion(job, o, models, tmp_dir, identity.w, offset, traj, audio, plan)
        if plan is not None:
            motion = _with_controls(plan, motion, identity, audio, o)
        timings.update(motion.timings)
        rendered = _render(job, o, motion, identity, stack, created, progress)
        timings["load_models"] = models.load_seconds - loaded_before
        for stage in ("trajectory", "render", "paste_back", "encode_pipe", "render_wait"):
            timings[stage] = getattr(rendered, stage)
        timings.update(stream=rendered.stream, finalize=rendered.finalize)
        timings["total"] = time.perf_counter() - started
        timings = {k: round(v, 4) for k, v in timings.items()}
        manifest = _manifest(job, o, models, cache, audio, identity, motion, rendered, timings)
        if motion.controls is not None:  # issue 16
            manifest["controls"] = motion.controls.describe()
        write_json_atomic(job.manifest, manifest)
    return AnimateResult(
        out=job.out,
        manifest=job.manifest,
        frames=rendered.frames,
        fps=o.fps,
        width=rendered.width,
        height=rendered.height,
        audio_seconds=motion.sound_seconds,
        timings=timings,
        cache=manifest["cache"],
        trajectory=job.save_trajectory,
    )


def _inputs_manifest(job: Job, cache: Cache, audio: DecodedAudio | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role in ("image", "audio", "driving", "trajectory"):
        path = getattr(job, role)
        if path is not None:
            out[role] = file_identity(path, cache)
    if audio is not None:
        out["audio"]["seconds"] = audio.duration
        out["audio"]["samples_16k"] = audio.n_samples
    if job.options.landmarks is not None:
        out["landmarks"] = file_identity(job.options.landmarks, cache)
    if job.options.edits:
        out["edits"] = [
            {**file_identity(e.path, cache), "strength": e.strength} for e in job.options.edits
        ]
    return out


def _models_manifest(job: Job, models: Models, identity: Identity) -> dict[str, Any]:
    paths = models.paths
    o = job.options
    used = Needs.of([job])
    out: dict[str, Any] = {"generator": file_identity(paths.generator, models.cache)}
    if paths.network != "G_ema":  # which network of an NVIDIA pickle (--network G)
        out["generator"]["network"] = paths.network
    if used.encoder and paths.encoder is not None:
        out["encoder"] = file_identity(paths.encoder, models.cache)
    if used.audio_model and paths.audio_model is not None:
        out["audio_model"] = {
            **file_identity(paths.audio_model, models.cache),
            "generator_match": models.generator_match,
        }
    if used.detector and paths.detector is not None:
        out["detector"] = {
            "backend": paths.detector,
            "files": [file_identity(p, models.cache) for p in paths.detector_files],
        }
    if o.tune and paths.lpips is not None:
        out["lpips"] = [file_identity(p, models.cache) for p in paths.lpips]
        if identity.tuned_file is not None:
            out["tuned_generator"] = {"cache_file": str(identity.tuned_file)}
    return out


# -- the library entry point --------------------------------------------------------------------


def animate(
    image: str | Path | None,
    audio: str | Path | None,
    out: str | Path | None = None,
    options: AnimateOptions | None = None,
    *,
    driving: str | Path | None = None,
    trajectory: str | Path | None = None,
    save_trajectory: str | Path | None = None,
    generator: str | Path | None = None,
    encoder: str | Path | None = None,
    model: str | Path | None = None,
    weights_dir: str | Path | None = None,
    network: str = "G_ema",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> AnimateResult:
    """Photo + speech -> lip-synced video (``talkcli animate`` without the terminal).

    >>> animate("face.png", "speech.wav")          # -> ./face-speech.mp4 + face-speech.json
    """

    def as_path(p: str | Path | None) -> Path | None:
        return Path(p).expanduser() if p is not None else None

    img, aud, drv = as_path(image), as_path(audio), as_path(driving)
    job = Job(
        out=as_path(out) or default_out(img, aud or drv or as_path(trajectory)),
        image=img,
        audio=aud,
        driving=drv,
        trajectory=as_path(trajectory),
        save_trajectory=as_path(save_trajectory),
        options=options or AnimateOptions(),
    ).check()
    job.require_inputs()
    cache = Cache(cache_dir, enabled=use_cache)
    wd = as_path(weights_dir)
    paths = resolve_models(
        Needs.of([job]),
        generator=as_path(generator),
        encoder=as_path(encoder),
        model=as_path(model),
        detector=job.options.detector,
        weights_dir=wd,
        network=network,
    )
    models = Models(paths, animate_device(device), cache, wd)
    return animate_job(job, models, cache, progress=progress)
