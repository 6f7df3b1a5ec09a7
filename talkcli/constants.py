"""Numbers and name lists that several layers share: one home, so copies cannot drift.

Bottom layer: imports nothing from talkcli.
"""

from __future__ import annotations

#: Every audio path decodes to mono float32 at this rate (the thesis' and SyncNet's 16 kHz).
SAMPLE_RATE = 16_000

#: Video frame rate of the thesis' training data (25 fps) and talkcli's default output rate.
DEFAULT_FPS = 25.0

#: Suffixes picked up as images when a folder is expanded.
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

#: Suffixes picked up as videos when a folder is expanded (anything ffmpeg decodes still works
#: when named explicitly).
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")

#: Suffixes picked up as audio when a folder is expanded (animate --audio-dir, train prepare).
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".wma", ".aiff", ".aif")

#: Containers talkcli writes its videos as (H.264 + AAC).
VIDEO_OUTPUT_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")

#: LPIPS network -> (backbone, heads) registry names: the one map every LPIPS user looks files up
#: with (animate --tune, evaluate, invert, tune-pti, train fit, the tiny pack).
LPIPS_FILES: dict[str, tuple[str, str]] = {
    "alex": ("alexnet", "lpips-alex"),
    "vgg": ("vgg16", "lpips-vgg"),
}
