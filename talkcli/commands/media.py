"""``talkcli media``: inspect audio/video files and prepare speech as 16 kHz mono WAV."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from talkcli.commands._common import print_json
from talkcli.commands.options import JSON_OPTION, int_option
from talkcli.console import console, info
from talkcli.errors import InputFileError, UserError
from talkcli.ranges import MEDIA_TO_WAV

SAMPLE_RATE = 16000  # talkcli.io.audio.SAMPLE_RATE (not imported here: keeps start-up fast)

media_app = typer.Typer(
    help="Audio/video files: probe, convert speech to WAV.", no_args_is_help=True
)


def probe_media(path: Path, exact: bool = False) -> dict:
    """Facts about a media file: video stream (size, fps, frames) and/or audio (duration).

    The audio duration comes from the container's header; ``exact`` decodes the audio to count
    its samples (slow on long files, exact for VBR MP3).
    """
    from talkcli.io.audio import load_audio, probe_audio
    from talkcli.io.files import require_file
    from talkcli.io.video import probe_video

    p = require_file(path, "media file")
    facts: dict = {"path": str(p)}
    try:
        v = probe_video(p)
        facts["video"] = {
            "width": v.width,
            "height": v.height,
            "fps": v.fps,
            "frames": v.n_frames,
            "duration": v.duration,
        }
        has_audio = v.has_audio
    except InputFileError as exc:
        if "video stream" not in str(exc):
            raise
        has_audio = True  # audio-only file: decoding below decides
    if has_audio:
        header = probe_audio(p)
        facts["audio"] = {**header, "duration_source": "header"}
        if exact or header["duration"] is None:
            samples = load_audio(p, SAMPLE_RATE)
            facts["audio"].update(duration=len(samples) / SAMPLE_RATE, duration_source="decoded")
    return facts


@media_app.command("probe")
def probe_cmd(
    files: list[Path] = typer.Argument(..., help="Audio or video files."),
    exact: bool = typer.Option(
        False, "--exact", help="Decode the audio to measure its duration (default: the header)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Print each file's video stream (size, fps, frame count) and audio duration."""
    rows = [probe_media(f, exact) for f in files]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        parts = []
        if "video" in row:
            v = row["video"]
            parts.append(
                f"video {v['width']}x{v['height']} {v['fps']:.3f} fps, {v['frames']} frames "
                f"({v['duration']:.2f} s)"
            )
        if "audio" in row:
            a = row["audio"]
            parts.append(
                f"audio {a['duration']:.2f} s"
                + (f", {a['rate']} Hz" if a.get("rate") else "")
                + (f" {a['channels']}" if a.get("channels") else "")
            )
        console.print(Text(f"{row['path']}: " + ("; ".join(parts) or "no streams")), soft_wrap=True)


@media_app.command("to-wav")
def to_wav_cmd(
    source: Path = typer.Argument(
        ..., help="Any audio file ffmpeg reads, or a video's soundtrack."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output .wav (16-bit PCM, mono)."),
    rate: int = int_option(
        SAMPLE_RATE, "--rate", range=MEDIA_TO_WAV["rate"], help="Sample rate of the WAV."
    ),
    force: bool = typer.Option(
        False, "--force", help="Allow --out to replace SOURCE itself (it is read whole first)."
    ),
) -> None:
    """Decode speech to the mono WAV the audio model reads (16 kHz by default)."""
    from talkcli.guards import guard_outputs
    from talkcli.io.audio import load_audio, save_wav
    from talkcli.io.files import require_file

    if out.suffix.lower() != ".wav":
        raise UserError(f"{out}: the output must end in .wav")
    source = require_file(source, "audio file")
    guard_outputs([out], inputs=[source], force=force)
    samples = load_audio(source, rate)
    save_wav(out, samples, rate)
    info(f"wrote {out}: {len(samples) / rate:.2f} s at {rate} Hz mono")


def register(app: typer.Typer) -> None:
    app.add_typer(media_app, name="media")
