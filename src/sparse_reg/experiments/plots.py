"""Plots people read at a glance: learning curves, the BC-MSE overfitting signal, and the
generic pieces of the sweep report (curve grids with bands, quantile bars, interval estimates)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

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


# ----------------------------------------------------------------------------- generic helpers
# Used by the sweep report (``report.py``): grids of curves with shaded bands, quantile bars and
# interval estimates. They take prepared numbers, not run directories, so they stay small.

DPI = 120
MIN_WIDTH = 8.0  # inches: room for a figure title and a legend row even with one panel


@dataclass
class Series:
    """One line of a panel, with an optional shaded band ``lo``..``hi`` around it."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    lo: Sequence[float] | None = None
    hi: Sequence[float] | None = None
    color: str | None = None
    linestyle: str = "-"


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _legend(fig, handles: Mapping[str, object]) -> None:
    width = fig.get_size_inches()[0]
    ncol = max(1, min(len(handles), int(width / 1.9)))
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)


def _step_formatter(value, _position=None) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def plot_band_grid(
    grid: Sequence[Sequence[tuple[str, Sequence[Series]] | None]],
    path: str | Path,
    title: str = "",
    xlabel: str = "gradient steps",
    ylabel: str | Sequence[str] = "",
    logy: bool | Sequence[bool] = False,
    panel_size: tuple[float, float] = (4.2, 3.0),
    sharex: bool = False,
) -> Path:
    """A rows x columns grid of panels (``(title, series)`` or None for an empty cell).

    Short series (up to 50 points) get point markers, so a single evaluation still shows.
    ``sharex``: panels of a column share their x axis. ``logy``: for all panels, or per column.
    """
    n_rows, n_cols = len(grid), max(len(row) for row in grid)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(max(panel_size[0] * n_cols, MIN_WIDTH), panel_size[1] * n_rows + 0.8), squeeze=False,
        constrained_layout=True, sharex="col" if sharex else False,
    )
    handles: dict[str, object] = {}
    for r, row in enumerate(grid):
        for c in range(n_cols):
            ax = axes[r][c]
            panel = row[c] if c < len(row) else None
            if panel is None:
                ax.axis("off")
                continue
            panel_title, series = panel
            for s in series:
                marker = "o" if len(s.x) <= 50 else None
                (line,) = ax.plot(s.x, s.y, s.linestyle, color=s.color, label=s.label, linewidth=1.5,
                                  marker=marker, markersize=3)
                if s.lo is not None and s.hi is not None:
                    ax.fill_between(s.x, s.lo, s.hi, color=line.get_color(), alpha=0.2, linewidth=0)
                handles.setdefault(s.label, line)
            ax.set_title(panel_title, fontsize=10)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_formatter(_step_formatter)
            if (logy if isinstance(logy, bool) else logy[c]) and ax.has_data():
                ax.set_yscale("log")
            below = grid[r + 1][c] if r + 1 < n_rows and c < len(grid[r + 1]) else None
            if below is None:
                ax.set_xlabel(xlabel)
            if c == 0:
                ax.set_ylabel(ylabel if isinstance(ylabel, str) else ylabel[r])
    if handles:
        _legend(fig, handles)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_quantile_bars(
    panels: Sequence[tuple[str, Mapping[str, Mapping[str, Sequence[float]]]]],
    path: str | Path,
    colors: Mapping[str, str],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """Per panel, groups on the x axis (e.g. dataset sizes), one bar per series within a group.

    ``panels``: (panel title, {group: {series: values}}). A bar spans the 25th..75th
    percentile of the values, a black tick marks the median, whiskers reach min and max and
    each value (one per seed) is a dot.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.6 * len(panels), MIN_WIDTH), 3.8), squeeze=False,
                             constrained_layout=True)
    handles: dict[str, object] = {}
    for ax, (panel_title, groups) in zip(axes[0], panels):
        names = list(groups)
        for g, group in enumerate(names):
            series = list(groups[group])
            width = 0.8 / max(len(series), 1)
            for i, name in enumerate(series):
                values = np.asarray([v for v in groups[group][name] if np.isfinite(v)], dtype=float)
                if values.size == 0:
                    continue
                x = g - 0.4 + width * (i + 0.5)
                q25, q50, q75 = np.percentile(values, [25, 50, 75])
                bar = ax.bar(x, max(q75 - q25, 1e-9), width * 0.85, bottom=q25, color=colors.get(name), alpha=0.75,
                             label=name)
                ax.vlines(x, values.min(), values.max(), color="0.25", linewidth=1)
                ax.hlines(q50, x - width * 0.42, x + width * 0.42, color="black", linewidth=2)
                ax.scatter(np.full(values.size, x), values, s=9, color="black", zorder=3)
                handles.setdefault(name, bar)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(ylabel)
    if handles:
        _legend(fig, handles)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_interval_estimates(
    panels: Sequence[tuple[str, Sequence[tuple[str, float, float, float, str | None]]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
) -> Path:
    """rliable-style interval estimates: per panel, one row per (label, point, lo, hi, color)."""
    labels: list[str] = []
    for _, rows in panels:
        labels += [row[0] for row in rows if row[0] not in labels]
    height = max(2.2, 0.32 * len(labels) + 1.2)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.4 * len(panels) + 1.4, MIN_WIDTH), height), squeeze=False,
                             sharey=True, constrained_layout=True)
    for ax, (panel_title, rows) in zip(axes[0], panels):
        for label, point, lo, hi, color in rows:
            if not np.isfinite(point):
                continue
            y = len(labels) - 1 - labels.index(label)
            ax.barh(y, max(hi - lo, 1e-9), left=lo, height=0.6, color=color, alpha=0.75)
            ax.vlines(point, y - 0.3, y + 0.3, color="black", linewidth=2)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(range(len(labels)), list(reversed(labels)))
    axes[0][0].set_ylim(-0.7, len(labels) - 0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)
