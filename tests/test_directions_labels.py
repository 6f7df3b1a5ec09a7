"""``directions from-labels``: the CSV reader, the fit on codes with planted linear labels, and the
command on the tiny pack's pSp with already aligned photos."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from talkcli.directions.labels import Labels, fit_from_labels, read_labels_csv
from talkcli.errors import InputFileError
from talkcli.models.directions import load_directions
from tests.conftest import assert_user_error, run_cli_inprocess


def _photos(folder, n=12, size=32):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"p{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _csv(folder, rows, header="image,smile,yaw"):
    p = folder / "labels.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def test_fit_from_labels_recovers_planted_linear_labels(tmp_path):
    rng = np.random.default_rng(1)
    n, layers, dim = 300, 8, 64
    codes = rng.normal(size=(n, layers, dim))
    u = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T  # (2, dim) orthonormal
    yaw = 20.0 * codes[:, 0:2].mean(axis=1) @ u[0]  # planted on yaw's layers (0-1 of 8)
    smile = 1.0 + 0.5 * codes[:, 2:5].mean(axis=1) @ u[1]  # on smile's (2-4)
    labels = Labels(tmp_path / "x.csv", [], ("yaw", "smile"), np.stack([yaw, smile], axis=1))
    d, rep = fit_from_labels(codes, labels)
    assert d.names == ("yaw", "smile") and d.units == ("deg", "ratio")
    for k, (gain, uk, (lo, hi)) in enumerate(((20.0, u[0], (0, 1)), (0.5, u[1], (2, 4)))):
        assert tuple(d.layers[k]) == (lo, hi)
        w = d.directions[k, lo]  # the W direction on each of its layers
        assert float(w @ uk) / float(np.linalg.norm(w)) > 0.95
        # a unit step along the stored direction moves the mean code of its layers by w
        want = gain * float(w @ uk)
        assert d.per_unit[k] == pytest.approx(want, rel=0.05)
    assert rep["per_unit_source"].startswith("the fit's slope")
    assert rep["quantities"]["yaw"]["r2_heldout"] > 0.9


def test_read_labels_csv_checks_rows(tmp_path):
    photos = _photos(tmp_path)
    rows = [f"{p.name},{1 + i / 10},{i}" for i, p in enumerate(photos)]
    rows[3] = f"{photos[3].name},,3"  # a missing value
    labels = read_labels_csv(_csv(tmp_path, rows))
    assert labels.names == ("yaw", "smile")  # standard order
    assert math.isnan(labels.values[3, 1]) and labels.values[5, 0] == 5.0
    bad = rows.copy()
    bad[4] = f"{photos[4].name},wide,4"
    with pytest.raises(InputFileError, match="row 6: smile 'wide' is not a finite number"):
        read_labels_csv(_csv(tmp_path, bad))
    with pytest.raises(InputFileError, match="not found"):
        read_labels_csv(_csv(tmp_path, [*rows, "missing.png,1,2"]))
    with pytest.raises(InputFileError, match="'image' column"):
        read_labels_csv(_csv(tmp_path, rows, header="photo,smile,yaw"))


@pytest.mark.slow
def test_from_labels_cli_on_the_tiny_pack(tiny_pack, tmp_path):
    photos = _photos(tmp_path, n=10)
    rows = [f"{p.name},{1 + (i % 5) / 10},{(i * 7) % 11 - 5}" for i, p in enumerate(photos)]
    csv_path = _csv(tmp_path, rows)
    out = tmp_path / "d.npz"
    r = run_cli_inprocess("--weights-dir", str(tiny_pack), "directions", "from-labels",
                          str(csv_path), "--aligned", "--out", str(out), "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    d = load_directions(out, n_latent=8, style_dim=512)
    assert d.names == ("yaw", "smile") and np.all(d.per_unit > 0)
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["photos"] == 10 and json.loads(r.stdout)["names"] == ["yaw", "smile"]
    rows[2] = f"{photos[2].name},x,1"
    assert_user_error(
        run_cli_inprocess("--weights-dir", str(tiny_pack), "directions", "from-labels",
                          str(_csv(tmp_path, rows)), "--aligned", "--out", str(out)),
        "labels.csv", "row 4",
    )  # fmt: skip
