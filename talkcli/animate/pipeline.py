"""One ``animate`` job end to end: inputs -> identity -> W+ stream -> frames -> mp4 + manifest.

``animate(image, audio, out, options)`` is the library entry point for one video;
``animate_job(job, models, cache)`` is what it and the batch runner call. ``resolve_models``
finds every model file a list of jobs needs before any work starts (a missing one is named with
how to get it); ``Models`` loads each once, lazily, and checks that they fit together (pSp and
the audio model against the generator): both are ``talkcli.runtime``'s (``find_model_files``,
``ModelSet``), named for animate.

Streaming: the audio is decoded to a temporary file and read back in segments; the audio model
runs chunk by chunk with its LSTM state; W+ frames are re-cut into ``--batch-size`` batches,
rendered, and handed to a writer thread that pastes them back and pipes them to ffmpeg, which
encodes in its own process. Nothing holds more than a few chunks, so memory does not grow with
the audio's length.

The run manifest (``<out stem>.json`` beside the video) records the inputs' and model files'
hashes, the options, versions, per-stage timings and which steps the cache served.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from talkcli import __version__
from talkcli.animate.cache import Cache, file_identity
from talkcli.animate.options import AnimateOptions
from talkcli.console import info
from talkcli.device import choose_device
from talkcli.errors import InputFileError, UserError
from talkcli.provenance import software_versions
from talkcli.runtime import ModelNeeds, ModelPaths, ModelSet, find_model_files

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
        files = [self.image, self.audio, self.driving, self.trajectory, o.landmarks]
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
            n.encoder |= photo_identity or job.driving is not None
            n.audio_model |= job.audio is not None and job.trajectory is None
            n.detector |= (aligns and not o.aligned and o.landmarks is None) or (
                job.driving is not None and not o.driving_aligned
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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from talkcli.io.files import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")


# -- one job ------------------------------------------------------------------------------------


def animate_job(
    job: Job,
    models: Models,
    cache: Cache,
    *,
    progress: ProgressFn | None = None,
) -> AnimateResult:
    """Make one video (and its manifest); nothing appears under the output names on failure."""
    from talkcli.animate.identity import prepare_identity
    from talkcli.animate.render import FrameRenderer, FrameSink, even_size, paste_function
    from talkcli.animate.trajectory import (
        TrajectoryFile,
        TrajectoryWriter,
        audio_displacements,
        compose,
        edit_offset,
        rebatch,
    )
    from talkcli.audio.features import n_frames
    from talkcli.guards import check_frame_count, guard_outputs
    from talkcli.io.audio import DecodedAudio, probe_audio
    from talkcli.io.video import VideoWriter

    started = time.perf_counter()
    loaded_before = models.load_seconds
    job.check()
    o = job.options
    job.require_inputs()
    guard_outputs(
        [job.out, job.manifest, job.save_trajectory],
        inputs=job.inputs(),
        weights_dir=models.weights_dir,
    )
    models.preflight(Needs.of([job]))
    n_latent, style_dim = models.latent_shape()
    timings: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="talkcli-animate.") as tmp_name, _Closing() as closing:
        tmp_dir = Path(tmp_name)
        traj = None
        if job.trajectory is not None:
            traj = closing.add(TrajectoryFile(job.trajectory))
            if (traj.n_latent, traj.style_dim) != (n_latent, style_dim):
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
        offset = edit_offset(o.edits, n_latent, style_dim, o.edit_layers)

        audio = None
        if job.audio is not None:
            t = time.perf_counter()
            audio = closing.add(DecodedAudio(job.audio, tmp_dir=tmp_dir))
            timings["decode_audio"] = time.perf_counter() - t

        on_tune = None
        if progress is not None and o.tune:
            steps = int(o.tune_steps)
            on_tune = lambda s, _row: progress("tune", s, steps)  # noqa: E731
        identity = prepare_identity(
            job.image,
            o,
            models,
            cache,
            w_identity=traj.w_identity if traj is not None else None,
            on_tune_step=on_tune,
        )
        timings.update(identity.timings)

        # the motion: a stream of W+ chunks (n, n_latent, 512)
        driving = None
        soundtrack, sound_seconds, trim = job.audio, None, False
        if audio is not None:
            sound_seconds = audio.duration
        if traj is not None:
            total = traj.n_frames
            if o.moves:
                d_chunks = (w - traj.w_identity[None] for w in traj.chunks())
                w_stream: Iterable[np.ndarray] = compose(
                    d_chunks,
                    identity.w,
                    motion_scale=o.motion_scale,
                    smooth=o.smooth,
                    offset=offset,
                )
            else:
                w_stream = traj.chunks()
            source = job.trajectory
        elif job.driving is not None:
            from talkcli.animate.driving import prepare_driving

            t = time.perf_counter()
            driving = prepare_driving(job.driving, o, models, tmp_dir, o.batch_size)
            timings["driving_align"] = time.perf_counter() - t
            total = driving.n_frames
            w_stream = compose(
                driving.chunks(o.fps),
                identity.w,
                motion_scale=o.motion_scale,
                smooth=o.smooth,
                offset=offset,
            )
            if driving.has_audio:
                soundtrack, trim = job.driving, True
                sound_seconds = probe_audio(job.driving)["duration"]
            source = job.driving
        else:
            A = models.audio_model()
            if abs(A.fps - o.fps) > 1e-6:
                info(f"the audio model was trained at {A.fps:g} fps; rendering at {o.fps:g} fps")
            total = n_frames(audio.n_samples, o.fps)
            w_stream = compose(
                audio_displacements(A, audio, identity.w, o.fps),
                identity.w,
                motion_scale=o.motion_scale,
                smooth=o.smooth,
                offset=offset,
            )
            source = job.audio
        check_frame_count(source, total, o.fps)

        G = identity.generator
        paste = None
        width = height = int(G.size)
        if o.paste_back:
            paste = paste_function(identity.source, identity.align_meta, o.feather)
            width, height = even_size(identity.source.shape[1], identity.source.shape[0])
        renderer = FrameRenderer(G, o.dtype)
        saver = TrajectoryWriter(job.save_trajectory) if job.save_trajectory else None
        if saver is not None:
            closing.on_error(saver.abort)
        created: list[Path] = []  # outputs renamed into place: removed if a later step fails
        closing.on_error(lambda: [p.unlink(missing_ok=True) for p in created])
        stream = _Timed(w_stream)
        render_s = 0.0
        done = 0
        loop_start = time.perf_counter()
        writer = VideoWriter(
            job.out,
            o.fps,
            (width, height),
            audio=soundtrack,
            audio_seconds=sound_seconds,
            crf=int(o.crf),
            preset=o.preset,
            trim_audio=trim,
        )
        with writer:
            sink = FrameSink(writer, paste)
            try:
                if progress is not None:
                    progress("render", 0, total)
                for w in rebatch(stream, int(o.batch_size)):  # (B, n_latent, 512)
                    if saver is not None:
                        saver.write(w)
                    t = time.perf_counter()
                    frames = renderer(w)  # (B, S, S, 3) uint8
                    render_s += time.perf_counter() - t
                    sink.put(frames)
                    done += len(w)
                    if progress is not None:
                        progress("render", done, total)
                sink.close()
            except BaseException:
                sink.abort()
                raise
            if done != total:
                raise InputFileError(
                    source, f"gave {done} frames, expected {total}", "the file may be damaged"
                )
            loop_s = time.perf_counter() - loop_start
            if saver is not None:
                created.append(saver.close(identity.w, o.fps))
            t = time.perf_counter()
        finalize_s = time.perf_counter() - t  # writer.close(): flush, frame count, audio mux
        created.append(job.out)

        timings.update(
            {
                "load_models": models.load_seconds - loaded_before,
                "trajectory": stream.seconds,
                "render": render_s,
                "paste_back": sink.paste_seconds,
                "encode_pipe": sink.write_seconds,
                "render_wait": sink.wait_seconds,
                "stream": loop_s,
                "finalize": finalize_s,
            }
        )
        timings["total"] = time.perf_counter() - started
        timings = {k: round(v, 4) for k, v in timings.items()}
        cache_info = {**cache.describe(), **identity.cache}
        manifest = {
            "kind": MANIFEST_KIND,
            "talkcli": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "ok",
            "output": {
                "video": str(job.out),
                "frames": total,
                "fps": o.fps,
                "width": width,
                "height": height,
                "video_seconds": total / o.fps,
                "soundtrack": str(soundtrack) if soundtrack else None,
                "soundtrack_seconds": sound_seconds,
                "trajectory": str(job.save_trajectory) if job.save_trajectory else None,
                "frames_per_s": round(total / loop_s, 3) if loop_s > 0 else None,
            },
            "inputs": _inputs_manifest(job, cache, audio),
            "models": _models_manifest(job, models, identity),
            "options": o.shaping(),
            "device": str(models.device),
            "versions": software_versions(ffmpeg=True),
            "timings": timings,
            "cache": cache_info,
            "identity": {
                "detector": identity.details.get("detector"),
                "faces": identity.details.get("faces"),
                "pti": identity.details.get("pti"),
                "driving_neutral": driving.neutral if driving is not None else None,
            },
        }
        _write_json(job.manifest, manifest)
    return AnimateResult(
        out=job.out,
        manifest=job.manifest,
        frames=total,
        fps=o.fps,
        width=width,
        height=height,
        audio_seconds=sound_seconds,
        timings=timings,
        cache=cache_info,
        trajectory=job.save_trajectory,
    )


def _inputs_manifest(job: Job, cache: Cache, audio: Any) -> dict[str, Any]:
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


def _models_manifest(job: Job, models: Models, identity: Any) -> dict[str, Any]:
    paths = models.paths
    o = job.options
    used = Needs.of([job])
    out: dict[str, Any] = {"generator": file_identity(paths.generator, models.cache)}
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


class _Closing:
    """Close what was opened for a job (temporary audio, trajectory files) on the way out, and
    run abort callbacks only when the job fails."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._on_error: list[Callable[[], None]] = []

    def add(self, item: Any) -> Any:
        self._items.append(item)
        return item

    def on_error(self, fn: Callable[[], None]) -> None:
        self._on_error.append(fn)

    def __enter__(self) -> _Closing:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            for fn in self._on_error:
                fn()
        for item in reversed(self._items):
            item.close()


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
    )
    models = Models(paths, animate_device(device), cache, wd)
    return animate_job(job, models, cache, progress=progress)
