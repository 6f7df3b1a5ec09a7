"""FAN + S3FD through the real face-alignment package, with random weights in the official files.

The real weights cannot be downloaded here, so this writes state dicts of face-alignment's own
network classes under the registry's ``hub/checkpoints`` and checks that talkcli's FAN backend
loads them through torch.hub (no download attempt) and runs end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

face_alignment = pytest.importorskip("face_alignment")

from talkcli.face import landmarks as lmk  # noqa: E402
from talkcli.weights import registry  # noqa: E402


@pytest.fixture(scope="module")
def fan_weights(tmp_path_factory) -> Path:
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    wd = tmp_path_factory.mktemp("fan_weights")
    torch.manual_seed(0)
    for name, net in (("fan-2d", FAN(4)), ("s3fd", s3fd())):
        path = wd / registry.get(name).relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    return wd


@pytest.mark.slow
def test_fan_backend_loads_official_files_through_the_registry(fan_weights, monkeypatch):
    def no_download(*_a, **_k):  # any download attempt is a failure of the redirect
        raise AssertionError("face-alignment tried to download a model file")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(face_alignment.utils, "download_url_to_file", no_download, raising=False)
    hub_before = torch.hub.get_dir()
    assert lmk.choose_backend("auto", fan_weights) == "fan"
    detector = lmk.FANDetector(fan_weights)
    assert torch.hub.get_dir() == hub_before  # restored after loading
    from skimage import data

    image = data.astronaut()
    # FAN on a given face box (random S3FD weights would propose boxes everywhere)
    points = detector.model.get_landmarks_from_image(image, detected_faces=[[150, 20, 330, 220]])
    assert len(points) == 1 and points[0].shape == (68, 2)
    assert np.isfinite(points[0]).all()
    # S3FD runs on its own too (small input keeps the random proposals few)
    boxes = detector.model.face_detector.detect_from_image(np.ascontiguousarray(image[::8, ::8]))
    assert all(len(box) == 5 for box in boxes)


def test_fan_file_with_wrong_keys_is_a_model_file_error(tmp_path):
    for name in lmk.FAN_FILES:
        path = tmp_path / registry.get(name).relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"not": torch.zeros(1)}, path)
    from talkcli.errors import ModelFileError

    with pytest.raises(ModelFileError, match="face-alignment could not load"):
        lmk.FANDetector(tmp_path)
