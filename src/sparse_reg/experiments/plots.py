"""Plots people read at a glance: learning curves and the BC-MSE overfitting signal."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (
    ("normalized_score", "normalised score"),
    ("train_mse", "BC action MSE (training set)"),
    ("validation_mse", "BC action MSE (validation set)"),
)


def plot_learning_curves(runs: Mapping[str, Sequence[dict]], path: str | Path, title: str = "") -> Path:
    """One line per run (label -> evaluation rows with ``step`` and the PANELS columns)."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8), constrained_layout=True)
    for label, rows in runs.items():
        steps = [r["step"] for r in rows]
        style = "-" if "sparse" in label.lower() else "--"
        for ax, (column, _) in zip(axes, PANELS):
            ax.plot(steps, [r[column] for r in rows], style, marker="o", markersize=3, label=label)
    for ax, (column, ylabel) in zip(axes, PANELS):
        ax.set_xlabel("gradient steps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if "mse" in column:
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
