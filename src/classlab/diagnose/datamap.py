"""The data map figure (Swayamdipta et al., EMNLP 2020): every training image at (variability,
confidence) of the probability of its given label over the epochs, coloured by correctness,
with the region boundaries of :func:`classlab.diagnose.dataissues.regions`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from classlab.rundir import save_figure

MAX_POINTS = 25_000  # drawn at most (a seeded random sample beyond that): the file stays small


def plot_data_map(confidence: np.ndarray, variability: np.ndarray, correctness: np.ndarray,
                  region: np.ndarray, out: Path, epochs: int) -> None:
    ok = np.flatnonzero(np.isfinite(confidence) & np.isfinite(variability))
    if len(ok) > MAX_POINTS:
        ok = np.sort(np.random.default_rng(0).choice(ok, MAX_POINTS, replace=False))
    fig = Figure(figsize=(7.5, 6), layout="constrained")
    ax = fig.subplots()
    sc = ax.scatter(variability[ok], confidence[ok], c=correctness[ok], cmap="viridis",
                    vmin=0, vmax=1, s=3, alpha=0.6, linewidths=0, rasterized=True)
    fig.colorbar(sc, ax=ax, label="correctness (fraction of epochs right)")
    _boundaries(ax, confidence, variability, region)
    ax.set_xlabel("variability (std of p(given label) over epochs)")
    ax.set_ylabel("confidence (mean p(given label) over epochs)")
    shown = f"{len(ok):,} drawn of {int(np.isfinite(confidence).sum()):,}"
    ax.set_title(f"Data map of the training set: {epochs} epochs, augmented images ({shown})",
                 fontsize=10)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    save_figure(fig, out)


def _boundaries(ax, confidence: np.ndarray, variability: np.ndarray, region: np.ndarray) -> None:
    """The region cut-offs (dashed) and the region names with their sizes."""
    for name, colour, where in (("easy", "tab:green", (0.02, 0.97, "left", "top")),
                                ("hard", "tab:red", (0.02, 0.03, "left", "bottom")),
                                ("ambiguous", "tab:purple", (0.98, 0.5, "right", "center"))):
        members = region == name
        if not members.any():
            continue
        if name == "ambiguous":
            ax.axvline(float(variability[members].min()), color=colour, ls="--", lw=1)
        elif name == "easy":
            ax.axhline(float(confidence[members].min()), color=colour, ls="--", lw=1)
        else:
            ax.axhline(float(confidence[members].max()), color=colour, ls="--", lw=1)
        x, y, ha, va = where
        label = {"easy": "easy to learn", "hard": "hard to learn"}.get(name, name)
        ax.text(x, y, f"{label} ({int(members.sum()):,})", transform=ax.transAxes, ha=ha,
                va=va, color=colour, fontsize=10, fontweight="bold")
