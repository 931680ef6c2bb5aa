"""The report's figures (``figures/*.png`` of a report), one function per kind, each returning
its index.md entries: learning curves per task and aggregated over tasks, quantile bars of the
final scores, BC train / validation MSE, variants of one cell side by side, layer-wise mask
sparsity and the fraction of each mask that changed at every refresh, and IQM interval estimates.

The drawing itself is :mod:`.plots`; this module decides what goes in which panel.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .items import Item
from .plots import Series, plot_band_grid, plot_interval_estimates, plot_quantile_bars
from .runs import (
    ALGO_NAMES,
    FAMILY_NAMES,
    KIND_ORDER,
    Run,
    algo_name,
    algo_rank,
    count_label,
    family_name,
    metric_values,
    ordered,
    ordered_sizes,
    ordered_variants,
    slug,
    variant_rank,
)
from .statistics import as_float, mean_se

# ----------------------------------------------------------------------------- curves


def _curve(runs: Sequence[Run], column: str, source: str = "history") -> dict[float, list[float]]:
    by_step = defaultdict(list)
    for run in runs:
        for row in getattr(run, source):
            value = as_float(row.get(column))
            if np.isfinite(value):
                by_step[float(row["step"])].append(value)
    return by_step


def _band(by_step: Mapping[float, list[float]], label: str, color: str | None, linestyle: str = "-"):
    steps = sorted(by_step)
    stats = [mean_se(by_step[s]) for s in steps]
    y = np.array([m for m, _, _ in stats])
    se = np.array([e for _, e, _ in stats])
    return Series(label, steps, y, y - se, y + se, color, linestyle)


def _aggregate_band(per_task: Sequence[Mapping[float, list[float]]], label: str, color: str | None):
    """Mean over tasks of the task means, SE = sqrt(sum_t var_t / n_t) / T, at steps common to all tasks."""
    per_task = [t for t in per_task if t]
    if not per_task:
        return None
    steps = sorted(set.intersection(*(set(t) for t in per_task)))
    y, se = [], []
    for step in steps:
        stats = [mean_se(t[step]) for t in per_task]
        y.append(np.mean([m for m, _, _ in stats]))
        se.append(math.sqrt(sum(e**2 for _, e, _ in stats)) / len(stats))
    y, se = np.asarray(y), np.asarray(se)
    return Series(label, steps, y, y - se, y + se, color)


# ----------------------------------------------------------------------------- figure files


@dataclass
class FigureGroup:
    """The runs of one (section, algorithm): one figure of each kind."""

    section: str
    algo: str
    runs: list[Run]
    sizes: list[int | None]
    families: list[str]
    variants: list[str]

    @property
    def label(self) -> str:
        return f"{algo_name(self.algo)}, {self.section} data"

    def filename(self, prefix: str, *extra) -> str:
        return "_".join([prefix, *(slug(part) for part in (self.section, self.algo, *extra))]) + ".png"


def figure_groups(runs: Sequence[Run]) -> list[FigureGroup]:
    groups = []
    for section in ordered({r.section for r in runs}, KIND_ORDER):
        in_section = [r for r in runs if r.section == section]
        for algo in ordered({r.algo for r in in_section}, tuple(ALGO_NAMES)):
            mine = [r for r in in_section if r.algo == algo]
            groups.append(FigureGroup(section, algo, mine, ordered_sizes({r.size for r in mine}),
                                 ordered({r.family for r in mine}, tuple(FAMILY_NAMES)),
                                 ordered_variants({r.variant for r in mine})))
    return groups


def _has_panels(grid) -> bool:
    return any(panel is not None for row in grid for panel in row)


def curve_items(group: FigureGroup, cells, colors, directory: Path) -> list[Item]:
    """Normalised score during training: rows sizes, columns tasks (+ the aggregate over tasks)."""
    grid = []
    for size in group.sizes:
        row, per_variant_tasks = [], defaultdict(list)
        for family in group.families:
            series = []
            for v in group.variants:
                by_step = _curve(cells.get((group.section, group.algo, size, family, v), []), "normalized_score")
                if by_step:
                    series.append(_band(by_step, v, colors[v]))
                    per_variant_tasks[v].append(by_step)
            row.append((f"{family_name(family)}, {count_label(size)}", series) if series else None)
        if len(group.families) > 1:
            aggregate = [s for v in group.variants
                         if (s := _aggregate_band(per_variant_tasks.get(v, []), v, colors[v])) is not None]
            row.append((f"aggregate over tasks, {count_label(size)}", aggregate) if aggregate else None)
        grid.append(row)
    if not _has_panels(grid):
        return []
    path = plot_band_grid(grid, directory / group.filename("curves"),
                          title=f"{group.label}: normalised score during training", ylabel="normalised score")
    return [Item("Learning curves", path,
                 f"{group.label}: normalised score at each evaluation, mean ± standard error over seeds (shaded); "
                 "rows are dataset sizes; the last column averages the task means (standard error combined over "
                 "tasks, steps common to all tasks).")]


def final_score_items(group: FigureGroup, cells, colors, directory: Path) -> list[Item]:
    """Quantile bars of the final normalised scores: panels tasks, groups sizes, bars variants."""
    panels = []
    for family in group.families:
        groups = {}
        for size in group.sizes:
            groups[count_label(size)] = {
                v: metric_values(members, "final_score") for v in group.variants
                if (members := cells.get((group.section, group.algo, size, family, v)))
            }
        panels.append((family_name(family), groups))
    if not any(g for _, groups in panels for g in groups.values()):
        return []
    path = plot_quantile_bars(panels, directory / group.filename("final_scores"), colors,
                              title=f"{group.label}: final normalised score", xlabel="training transitions",
                              ylabel="normalised score")
    return [Item("Final scores", path,
                 f"{group.label}: final normalised score per seed (dots); bars span the 25th-75th percentile over "
                 "seeds, black tick = median, whiskers = min-max.")]


def mse_items(group: FigureGroup, cells, colors, directory: Path) -> list[Item]:
    """Train (dashed) and validation (solid) action MSE: rows tasks, columns sizes, colours variants."""
    grid = []
    for family in group.families:
        row = []
        for size in group.sizes:
            series = []
            for v in group.variants:
                members = cells.get((group.section, group.algo, size, family, v), [])
                for column, style, what in (("train_mse", "--", "train"), ("validation_mse", "-", "validation")):
                    by_step = _curve(members, column)
                    if by_step:
                        series.append(_band(by_step, f"{v} ({what})", colors[v], style))
            row.append((f"{family_name(family)}, {count_label(size)}", series) if series else None)
        grid.append(row)
    if not _has_panels(grid):
        return []
    path = plot_band_grid(grid, directory / group.filename("mse"),
                          title=f"{group.label}: action MSE, training (dashed) vs validation (solid)",
                          ylabel="action MSE", logy=True)
    return [Item(f"{algo_name(group.algo)} train / validation MSE", path,
                 f"{group.label}: MSE between the policy's actions and the dataset's on the training set (dashed) "
                 "and on held-out validation episodes (solid), mean ± standard error over seeds; a falling training "
                 "loss with a rising validation loss is overfitting (paper Figures 4, 8, 9).")]


def cell_comparison_items(group: FigureGroup, cells, colors, directory: Path) -> list[Item]:
    """For each task and size run with three or more variants (e.g. dense, Sparse-Reg and L1):
    score, training MSE and validation MSE side by side, the layout of the paper's Figure 4."""
    items = []
    for size in group.sizes:
        for family in group.families:
            members = {v: cells.get((group.section, group.algo, size, family, v), []) for v in group.variants}
            members = {v: runs for v, runs in members.items() if runs}
            if len(members) < 3:
                continue
            row = []
            for column, what in (("normalized_score", "normalised score"), ("train_mse", "training action MSE"),
                                 ("validation_mse", "validation action MSE")):
                series = [_band(by_step, v, colors[v]) for v, runs in members.items() if (by_step := _curve(runs, column))]
                row.append((what, series) if series else None)
            if sum(panel is not None for panel in row) < 2:
                continue
            where = f"{group.section} {family_name(family)}, {count_label(size)}"
            path = plot_band_grid(
                [row], directory / group.filename("cell", family, size),
                title=f"{algo_name(group.algo)} on {where}: {', '.join(members)}", logy=[False, True, True],
            )
            items.append(Item(
                f"{algo_name(group.algo)} variants side by side", path,
                f"{algo_name(group.algo)}, {where}: normalised score, action MSE on the training set and on held-out "
                "validation episodes for every variant of this cell (mean ± standard error over seeds; the layout "
                "of the paper's Figure 4).",
            ))
    return items


def mask_items(group: FigureGroup, directory: Path) -> list[Item]:
    """Per size and variant with masks.csv: columns networks, rows sparsity per layer / fraction changed."""
    items = []
    for size in group.sizes:
        for v in group.variants:
            members = [r for r in group.runs if r.size == size and r.variant == v and r.masks]
            if not members:
                continue
            title = f"{group.label}, {count_label(size)}, {v}"
            path = _plot_masks(members, directory / group.filename("masks", count_label(size), v), title)
            items.append(Item("Masks", path,
                              f"{title}: fraction of each layer's weights that the mask prunes (top), fraction of "
                              f"the mask's entries that changed at each refresh and, where recorded, each network's "
                              f"loss just before and after each refresh (lower rows), mean ± std over "
                              f"{len(members)} runs ({len({r.family for r in members})} task(s) x seeds); 'total' is "
                              "the whole network; the first refresh (against the initial mask) is left out of "
                              "'changed' (paper Figure 5a)."))
    return items


def iqm_items(estimates: list[dict], colors, directory: Path, reps: int) -> list[Item]:
    """Interval estimates per section: panels sizes (+ all sizes), rows algorithm x variant."""
    items = []
    for section in ordered({e["section"] for e in estimates}, KIND_ORDER):
        by_size = defaultdict(list)
        for e in estimates:
            if e["section"] == section:
                by_size[e["size"]].append(e)
        sizes = ordered_sizes([s for s in by_size if s != "all"]) + (["all"] if "all" in by_size else [])
        panels = []
        for size in sizes:
            entries = sorted(by_size[size], key=lambda e: (algo_rank(e["algo"]), e["algo"],
                                                           variant_rank(e["variant"]), e["variant"]))
            panels.append(("all sizes" if size == "all" else count_label(size),
                           [(f"{algo_name(e['algo'])} {e['variant']}", e["iqm"], e["ci_low"], e["ci_high"],
                             colors.get(e["variant"])) for e in entries]))
        path = plot_interval_estimates(panels, directory / f"iqm_{slug(section)}.png",
                                       title=f"{section} data: IQM of final normalised score, 95% stratified bootstrap CI",
                                       xlabel="IQM normalised score")
        items.append(Item("IQM with 95% confidence intervals", path,
                          f"{section} data: interquartile mean (black tick) of the final normalised scores of all "
                          f"tasks and seeds, bar = 95% stratified-bootstrap CI ({reps} replicates, seeds resampled "
                          "within each task); panels are dataset sizes ('all sizes' pools them, strata = size x task)."))
    return items


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _layer_labels(layers: Sequence[str]) -> dict[str, str]:
    """Short legend names: the last path component ("Dense_0") when unique within the network."""
    short = {layer: layer.rsplit("/", 1)[-1] for layer in layers}
    if len(set(short.values())) < len(short):
        short = {layer: layer.removeprefix("params/") for layer in layers}
    return short


def _plot_masks(runs: Sequence[Run], path: Path, title: str) -> Path:
    """Figure 5(a): columns networks; rows sparsity per layer, fraction changed per refresh and,
    where masks.csv records it, the network's loss just before and just after each refresh.

    Mean ± std over the given runs at each refresh step. The first refresh of a run is left out
    of 'changed': it is measured against the initial (all-ones) mask.
    """
    networks = ordered({row["network"] for r in runs for row in r.masks}, ("actor", "critic", "value"))
    colors: dict[str, str] = {"total": "black"}
    sparsity_row, changed_row, loss_row = [], [], []
    for network in networks:
        layers = sorted({str(row["layer"]) for r in runs for row in r.masks if row["network"] == network} - {"total"},
                        key=_natural_key)
        labels = {**_layer_labels(layers), "total": "total"}
        series = {"sparsity": [], "changed": []}
        for layer in [*layers, "total"]:
            label = labels[layer]
            color = colors.setdefault(label, f"C{(len(colors) - 1) % 10}")
            for column in series:
                by_step = _mask_values(runs, network, layer, column, skip_first=column == "changed")
                if by_step:
                    series[column].append(_spread_series(by_step, label, color, "--" if layer == "total" else "-"))
        sparsity_row.append((f"{network}: sparsity per layer", series["sparsity"]))
        changed_row.append((f"{network}: fraction of mask changed", series["changed"]) if series["changed"] else None)
        jumps = []
        for column, label, style in (("loss_before", "loss before refresh", "-"), ("loss_after", "loss after refresh", "--")):
            if by_step := _mask_values(runs, network, "total", column):
                jumps.append(_spread_series(by_step, label, "tab:red", style))
        loss_row.append((f"{network}: its loss at each refresh", jumps) if jumps else None)
    grid = [sparsity_row]
    labels = ["fraction pruned"]
    for row, label in ((changed_row, "fraction changed"), (loss_row, "loss (scoring batch)")):
        if any(panel is not None for panel in row):
            grid.append(row)
            labels.append(label)
    return plot_band_grid(grid, path, title=f"{title}: masks over training", ylabel=labels, sharex=True)


def _mask_values(runs: Sequence[Run], network: str, layer: str, column: str, skip_first: bool = False) -> dict:
    """step -> the finite values of one masks.csv column for (network, layer) across ``runs``."""
    by_step = defaultdict(list)
    for run in runs:
        rows = [row for row in run.masks if row["network"] == network and str(row["layer"]) == layer]
        for row in rows[1:] if skip_first else rows:
            value = as_float(row.get(column))
            if np.isfinite(value):
                by_step[float(row["step"])].append(value)
    return by_step


def _spread_series(by_step: Mapping[float, list[float]], label: str, color: str, style: str):
    """Mean ± std (ddof=0) over runs at each step."""
    steps = sorted(by_step)
    mean = np.array([np.mean(by_step[s]) for s in steps])
    std = np.array([np.std(by_step[s]) for s in steps])
    return Series(label, steps, mean, mean - std, mean + std, color, style)
