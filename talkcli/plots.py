"""Every picture talkcli draws, in one place: matplotlib (Agg backend, no display needed).

Each plot is a function taking plain numpy data and an output path; ``save_figure`` writes it
atomically in the format the path's suffix names (``.png``, ``.jpg``, ``.pdf``, ``.svg``), and
``check_plot_path`` refuses other suffixes before any work starts.

Sections: latents (``invert --plot``), training (``train``), evaluation (``evaluate``),
directions (``directions find --plot``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from talkcli.errors import UserError
from talkcli.io.files import atomic_output, check_output_path

# suffix -> matplotlib format name
PLOT_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".pdf": "pdf", ".svg": "svg"}


def check_plot_path(path: str | Path, option: str = "--plot") -> Path:
    """Validate a plot output before work starts: a known suffix and a writable folder."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in PLOT_FORMATS:
        raise UserError(
            f"{option} {p}: unknown picture format {p.suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(sorted(PLOT_FORMATS))}"
        )
    return check_output_path(p)


@contextmanager
def figure(width: float = 6.4, height: float = 4.8) -> Iterator[Any]:
    """A matplotlib figure on the Agg canvas, closed afterwards (no pyplot global state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    try:
        yield fig
    finally:
        fig.clear()


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names."""
    final = check_plot_path(path)
    fmt = PLOT_FORMATS[final.suffix.lower()]
    with atomic_output(final) as tmp:
        fig.savefig(tmp, format=fmt, dpi=fig.dpi)
    return final


# -- latents -------------------------------------------------------------------------------------


def pca_2d(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project flattened codes on their first two principal components -> ((N, 2), ratio (2,))."""
    x = w.reshape(w.shape[0], -1).astype(np.float64)
    x = x - x.mean(axis=0)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2)), np.zeros(2)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:2]
    if comps.shape[0] < 2:
        comps = np.vstack([comps, np.zeros_like(comps)])
    var = s**2
    ratio = (var[:2] / var.sum()) if var.sum() > 0 else np.zeros(2)
    return x @ comps.T, np.pad(ratio, (0, 2 - len(ratio)))


def plot_trajectory(path: str | Path, w: np.ndarray, title: str = "") -> Path:
    """Thesis figure 3.8: codes on their first two principal components, frames joined in order,
    coloured by time (colour bar: frame index)."""
    pts, ratio = pca_2d(w)  # (N, 2)
    n = len(pts)
    with figure(6.4, 6.4) as fig:
        ax = fig.add_subplot()
        if n > 1:
            ax.plot(pts[:, 0], pts[:, 1], color="0.6", linewidth=1, zorder=1)
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=np.arange(n), cmap="viridis", s=24, zorder=2)
        cbar = fig.colorbar(sc, ax=ax)
        cbar.set_label("frame")
        ax.set_xlabel(f"PC1 ({ratio[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({ratio[1]:.0%} of variance)")
        ax.set_title(title or f"latent trajectory, {n} frames")
        ax.grid(True, alpha=0.3)
        return save_figure(fig, path)


def plot_controls(
    path: str | Path,
    controls: np.ndarray,  # (T, K) values per frame, in their units
    names: list[str] | tuple[str, ...],
    fps: float,
    title: str = "",
) -> Path:
    """Named controls per frame (``animate --save-trajectory`` with controls, issue 16): pose
    angles (degrees) in the top panel, ratio controls (eyes, mouth, smile...) below; x: seconds."""
    c = np.asarray(controls, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != len(names):
        raise ValueError(f"controls must be (T, {len(names)}), got {c.shape}")
    pose = [i for i, n in enumerate(names) if n in ("yaw", "pitch", "roll")]
    other = [i for i in range(len(names)) if i not in pose]
    panels = [(p, label) for p, label in ((pose, "degrees"), (other, "ratio")) if p]
    t = np.arange(len(c)) / float(fps)
    with figure(8.0, 2.4 * len(panels) + 0.8) as fig:
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (idx, label) in zip(axes, panels, strict=True):
            for i in idx:
                ax.plot(t, c[:, i], linewidth=1, label=str(names[i]))
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="upper right", fontsize="small")
        axes[-1].set_xlabel("time (s)")
        axes[0].set_title(title or f"controls per frame, {len(c)} frames")
        return save_figure(fig, path)


# -- training ------------------------------------------------------------------------------------


def plot_training_curves(path: str | Path, history: list[dict[str, Any]], title: str = "") -> Path:
    """``train fit --plot``: training and validation loss per epoch (log scale when positive),
    the learning rate on a second axis, the best epoch marked; below them, when the log has it,
    the held-out-identity correlation per epoch (and with time-shuffled audio)."""
    epochs = np.array([row["epoch"] for row in history], dtype=float)
    train = np.array([row.get("train_loss", np.nan) for row in history], dtype=float)
    val = np.array([row.get("val_loss", np.nan) for row in history], dtype=float)
    lr = np.array([row.get("lr", np.nan) for row in history], dtype=float)
    r = np.array([row.get("val_r", np.nan) for row in history], dtype=float)
    with figure(7.2, 7.2 if np.isfinite(r).any() else 4.8) as fig:
        if np.isfinite(r).any():
            ax, ax_r = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
            _plot_held_out_r(ax_r, epochs, r, history)
        else:
            ax = fig.add_subplot()
        ax.plot(epochs, train, marker="o", markersize=3, label="train loss")
        if np.isfinite(val).any():
            ax.plot(epochs, val, marker="s", markersize=3, label="validation loss")
            best = int(np.nanargmin(val))
            ax.scatter(
                [epochs[best]],
                [val[best]],
                s=80,
                facecolors="none",
                edgecolors="red",
                zorder=3,
                label=f"best (epoch {int(epochs[best])})",
            )
        finite = np.concatenate([train[np.isfinite(train)], val[np.isfinite(val)]])
        if finite.size and (finite > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (250 latent L2 + LPIPS, per clip)")
        ax.grid(True, alpha=0.3)
        if np.isfinite(lr).any():
            ax2 = ax.twinx()
            ax2.plot(epochs, lr, color="0.5", linestyle="--", linewidth=1, label="learning rate")
            ax2.set_ylabel("learning rate")
            ax2.set_yscale("log")
            lines = ax.get_legend_handles_labels()
            lines2 = ax2.get_legend_handles_labels()
            ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right")
        else:
            ax.legend(loc="upper right")
        ax.set_title(title or f"training, {len(history)} epoch(s)")
        return save_figure(fig, path)


def _plot_held_out_r(ax: Any, epochs: np.ndarray, r: np.ndarray, history: list[dict]) -> None:
    """Held-out-identity r per epoch (``val_r``, ``val_r_shuffled``) on its own axes."""
    shuffled = np.array([row.get("val_r_shuffled", np.nan) for row in history], dtype=float)
    ax.plot(epochs, r, marker="o", markersize=3, label="held-out identity r")
    if np.isfinite(shuffled).any():
        ax.plot(epochs, shuffled, marker="x", markersize=3, linestyle=":",
                label="same, time-shuffled audio")  # fmt: skip
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_ylim(-1.0, 1.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("r (predicted vs true motion)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def plot_pca_variance(path: str | Path, explained_ratio: np.ndarray, title: str = "") -> Path:
    """``train pca --plot``: cumulative explained variance against the number of components,
    with the per-component share on a second (log) axis."""
    ratio = np.asarray(explained_ratio, dtype=float)
    k = np.arange(1, len(ratio) + 1)
    with figure(7.2, 4.8) as fig:
        ax = fig.add_subplot()
        ax.plot(k, np.cumsum(ratio), color="C0", label="cumulative")
        ax.set_xlabel("number of components")
        ax.set_ylabel("explained variance (cumulative)")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax2 = ax.twinx()
        positive = ratio > 0
        ax2.plot(k[positive], ratio[positive], color="C1", linewidth=1, label="per component")
        ax2.set_ylabel("explained variance (per component)")
        if positive.any():
            ax2.set_yscale("log")
        for level in (0.9, 0.99):
            n = int(np.searchsorted(np.cumsum(ratio), level) + 1)
            if n <= len(ratio):
                ax.axvline(n, color="0.6", linestyle=":", linewidth=1)
                ax.text(n, 0.05, f" {level:.0%}: {n}", color="0.3", fontsize=8)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="center right")
        ax.set_title(title or f"PCA, {len(ratio)} components")
        return save_figure(fig, path)


# -- evaluation ----------------------------------------------------------------------------------

METRIC_LABELS = {
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "lpips": "LPIPS",
    "lmd": "LMD mouth (px)",
    "lmd_face": "LMD face (px)",
    "cpbd": "CPBD",
}
LEGEND_MAX = 10  # more videos than this: curves without a legend


def plot_metrics(
    path: str | Path, curves: dict[str, dict[str, np.ndarray]], fps: float, title: str = ""
) -> Path:
    """``evaluate --plot``: one panel per metric, one per-frame curve per video (x: seconds).

    ``curves`` maps video name -> metric -> (frames,) values; non-finite values (PSNR of identical
    frames, frames without a face for LMD) leave gaps.
    """
    metrics = [m for m in METRIC_LABELS if any(m in c for c in curves.values())]
    if not metrics:
        raise UserError("--plot: no per-frame metric was computed (PSNR, SSIM, LPIPS, LMD, CPBD)")
    with figure(8.0, 1.9 * len(metrics) + 1.0) as fig:
        axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
        for ax, metric in zip(axes, metrics, strict=True):
            for name, per_video in curves.items():
                if metric not in per_video:
                    continue
                y = np.asarray(per_video[metric], dtype=np.float64)
                y = np.where(np.isfinite(y), y, np.nan)
                ax.plot(np.arange(len(y)) / fps, y, linewidth=1, label=name)
            ax.set_ylabel(METRIC_LABELS[metric])
            ax.grid(True, alpha=0.3)
        axes[-1].set_xlabel("time (s)")
        if 1 < len(curves) <= LEGEND_MAX:
            axes[0].legend(loc="best", fontsize="small")
        axes[0].set_title(title or f"per-frame metrics, {len(curves)} video(s)")
        return save_figure(fig, path)


# -- directions ----------------------------------------------------------------------------------


def plot_direction_fits(
    path: str | Path,
    names: list[str],
    units: list[str],
    projections: np.ndarray,
    values: np.ndarray,
    slopes: np.ndarray,
    intercepts: np.ndarray,
    r2: list[float | None],  # held-out R^2 per quantity
) -> Path:
    """``directions find --plot``: one panel per quantity, the measured value of each sample
    against its code's projection on the fitted normal, with the fit line ``intercept + slope *
    projection``. ``projections``/``values``: (N, K), NaN where no face was found."""
    k = len(names)
    cols = min(k, 3)
    rows = (k + cols - 1) // cols
    with figure(4.0 * cols, 3.2 * rows) as fig:
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
        for i, name in enumerate(names):
            ax = axes[i]
            x, y = projections[:, i], values[:, i]
            ok = np.isfinite(x) & np.isfinite(y)
            ax.scatter(x[ok], y[ok], s=4, alpha=0.4)
            if ok.any():
                xs = np.linspace(float(x[ok].min()), float(x[ok].max()), 2)
                ax.plot(xs, intercepts[i] + slopes[i] * xs, color="C1", linewidth=1.5)
            score = "" if r2[i] is None else f", held-out R² {r2[i]:.3f}"
            ax.set_title(f"{name}{score}", fontsize="medium")
            ax.set_xlabel("projection on the fitted normal")
            ax.set_ylabel(f"{name} ({units[i]})")
            ax.grid(True, alpha=0.3)
        for ax in axes[k:]:
            ax.set_visible(False)
        return save_figure(fig, path)
