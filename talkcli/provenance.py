"""What produced an output: software versions for run manifests and reports (one home).

``software_versions()`` is recorded in every manifest talkcli writes beside its outputs (animate
videos, evaluation reports), so a result can be traced to the exact packages and ffmpeg that made
it. Package versions are read from installed metadata (nothing heavy is imported).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from talkcli import __version__

# Packages whose numerics shape talkcli's outputs.
DEFAULT_PACKAGES = (
    "torch",
    "numpy",
    "scipy",
    "scikit-image",
    "opencv-python-headless",
    "pillow",
    "face-alignment",
)


def software_versions(
    packages: Iterable[str] = DEFAULT_PACKAGES, *, ffmpeg: bool = False
) -> dict[str, Any]:
    """talkcli, Python, the given packages (None when absent) and optionally ffmpeg's build."""
    out: dict[str, Any] = {"talkcli": __version__, "python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    if ffmpeg:
        from talkcli.errors import TalkcliError
        from talkcli.io.ffmpeg import find_ffmpeg

        try:
            ff = find_ffmpeg()
            out["ffmpeg"] = {"version": ff.version, "source": ff.source}
        except TalkcliError:
            out["ffmpeg"] = None
    return out
