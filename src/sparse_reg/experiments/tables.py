"""The report's tables: the paper's dense → Sparse-Reg form, variants, action MSE and IQM, in
Markdown and LaTeX, and the files they go in (``tables/`` of a report).

* ``final_return``, ``normalized_score`` and ``late_normalized_score`` (``.md``, ``.tex``): the
  paper's Table 1 form, rows size x algorithm, a column per task, each cell "dense mean ± std →
  sparse mean ± std" over seeds (▲ / blue where Sparse-Reg is better, ▼ / red where worse); the
  normalised table has the paper's numbers for the same cell under each of our rows.
* ``variants`` (``.md``, ``.tex``): one column per variant (L1, dropout, SFI, ...) when there are any.
* ``action_mse.md``: final and lowest training / validation action MSE (BC by default).
* ``refresh_losses.md``: each network's loss just before and after every mask refresh.
* ``live_units.md``: the fraction of hidden units the masks leave alive, first and last masks.
* ``iqm`` (``.md``, ``.csv``): IQM of final and of late normalised scores with 95% stratified-bootstrap CIs.
* ``final_scores.csv`` and ``runs.md``: one row per run (the numbers behind everything else, plus
  late and best score, action MSE, wall time and commit).
"""

from __future__ import annotations

import csv
import functools
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..provenance import format_duration
from ..training.summary import is_held_out_loss
from .items import Item
from .runs import (
    ALGO_NAMES,
    DENSE,
    FAMILY_NAMES,
    KIND_ORDER,
    PAPER_ALGO,
    SPARSE_ALIASES,
    Run,
    algo_name,
    algo_rank,
    count_label,
    family_name,
    family_rank,
    group_cells,
    metric_values,
    ordered,
    ordered_sizes,
    ordered_variants,
    slug,
    sparse_variant,
    variant_rank,
)
from .statistics import as_float, mean_std, stratified_bootstrap_ci

IMPROVED, WORSE = "▲", "▼"
MISSING = "–"


# ----------------------------------------------------------------------------- tables


def format_mean_std(mean: float, std: float, digits: int = 1) -> str:
    """"mean ± std"; the mean alone where there is no spread to show (one seed: std is NaN)."""
    if not np.isfinite(mean):
        return MISSING
    return f"{mean:.{digits}f}" if not np.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def spread(std: float, n: int) -> float:
    """The std to print: none (NaN) for a single seed, whose 0 would read as a measured spread."""
    return std if n > 1 else math.nan


def comparison_cell(dense: Sequence[float], sparse: Sequence[float], digits: int = 1, latex: bool = False) -> str:
    """"dense mean ± std → sparse mean ± std" with ▲ (sparse better) / ▼ (worse); std over seeds, ddof=0.

    Better/worse compares the means as shown (rounded to ``digits``): no marker when they read the same.
    """
    d_mean, d_std, d_n = mean_std(dense)
    s_mean, s_std, s_n = mean_std(sparse)
    return _comparison_text(d_mean, spread(d_std, d_n), s_mean, spread(s_std, s_n), digits, latex)


def _comparison_text(d_mean, d_std, s_mean, s_std, digits=1, latex=False) -> str:
    if np.isfinite(d_mean) and np.isfinite(s_mean):  # compare what is shown: equal when rounded = no marker
        d_mean, s_mean = (float(f"{d_mean:.{digits}f}"), float(f"{s_mean:.{digits}f}"))
    if latex:
        d, s = (format_mean_std(m, sd, digits) for m, sd in ((d_mean, d_std), (s_mean, s_std)))
        d, s = (x if x == MISSING else "$" + x.replace("±", "\\pm") + "$" for x in (d, s))
        if np.isfinite(d_mean) and np.isfinite(s_mean) and s_mean != d_mean:
            s = f"\\textcolor{{{'blue' if s_mean > d_mean else 'red'}}}{{{s}}}"
        return f"{d} $\\rightarrow$ {s}"
    d, s = format_mean_std(d_mean, d_std, digits), format_mean_std(s_mean, s_std, digits)
    if np.isfinite(d_mean) and np.isfinite(s_mean):
        if s_mean > d_mean:
            return f"{d} → **{s}** {IMPROVED}"
        if s_mean < d_mean:
            return f"{d} → {s} {WORSE}"
    return f"{d} → {s}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    return re.sub(r"([_&%#])", r"\\\1", text)


def _latex_table(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str, label: str) -> str:
    spec = "ll" + "c" * (len(header) - 2)
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{caption}}}",
        f"\\label{{{label}}}",
        "\\resizebox{\\linewidth}{!}{%",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_latex_escape(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    previous = None
    for row in rows:
        if previous is not None and row[0] and row[0] != previous:
            lines.append("\\midrule")
        previous = row[0] or previous
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}"]
    return "\n".join(lines)


def comparison_tables(
    runs: Sequence[Run], metric: str, paper: Mapping[tuple, dict] | None = None, digits: int = 1
) -> dict[str, dict[str, Any]]:
    """Per section: the dense → sparse table (Markdown and LaTeX text, and the raw cells).

    ``metric``: "final_return" or "final_score". Rows are size x algorithm (paper rows under
    ours for ``final_score`` when ``paper`` has the cell), columns are tasks.
    """
    cells = group_cells(runs)
    out = {}
    for section in ordered({r.section for r in runs}, KIND_ORDER):
        in_section = [r for r in runs if r.section == section]
        kind = in_section[0].kind
        families = ordered({r.family for r in in_section}, tuple(FAMILY_NAMES))
        header = ["Size", "Algorithm", *[family_name(f) for f in families]]
        md_rows, tex_rows, raw = [], [], {}
        for size in ordered_sizes({r.size for r in in_section}):
            first = True
            for algo in ordered({r.algo for r in in_section if r.size == size}, tuple(ALGO_NAMES)):
                variants = {r.variant for r in in_section if r.size == size and r.algo == algo}
                sparse_name = sparse_variant(variants)
                if DENSE not in variants and sparse_name is None:
                    continue
                md, tex = [], []
                for family in families:
                    dense = metric_values(cells.get((section, algo, size, family, DENSE)), metric)
                    sparse = metric_values(cells.get((section, algo, size, family, sparse_name)), metric)
                    text = comparison_cell(dense, sparse, digits)
                    seeds = (len(dense), len(sparse))
                    if seeds[0] != seeds[1] and dense and sparse:
                        text += f" (n={seeds[0]}/{seeds[1]})"
                    raw[(size, algo, family)] = text
                    md.append(text)
                    tex.append(comparison_cell(dense, sparse, digits, latex=True))
                size_text = count_label(size) if first else ""
                md_rows.append([size_text, algo_name(algo), *md])
                tex_rows.append([size_text, _latex_escape(algo_name(algo)), *tex])
                first = False
                if metric == "final_score" and paper:
                    entries = [paper.get((kind, size, PAPER_ALGO.get(algo, algo), family)) for family in families]
                    if any(entries):
                        md_p, tex_p = [], []
                        for e in entries:
                            if e is None:
                                md_p.append(MISSING)
                                tex_p.append(MISSING)
                                continue
                            args = (*e["dense"], *e["sparse"], digits)
                            md_p.append("*" + _comparison_text(*args).replace("**", "") + "*")
                            tex_p.append("{\\color{gray}" + _comparison_text(*args, latex=True) + "}")
                        paper_name = algo_name(PAPER_ALGO.get(algo, algo))  # the paper ran its own code
                        md_rows.append(["", f"*paper {paper_name}*", *md_p])
                        tex_rows.append(["", f"\\textit{{paper {_latex_escape(paper_name)}}}", *tex_p])
        if not md_rows:
            continue
        what = {"final_return": "final return", "late_score": "normalised score over the last 20\\% of training"}.get(
            metric, "final normalised score")
        caption = (
            f"{section} data: {what}, without sparsity $\\rightarrow$ with Sparse-Reg, mean $\\pm$ std over seeds; "
            "improvements in blue, losses in red."
        )
        out[section] = {
            "markdown": markdown_table(header, md_rows),
            "latex": _latex_table(header, tex_rows, caption, f"tab:{slug(section, metric)}"),
            "cells": raw,
        }
    return out


VARIANT_TABLES = (  # (Run metric, file name, title, what the numbers are)
    ("final_score", "variants", "Final normalised score per variant", "final normalised score"),
    ("late_score", "variants_late", "Late normalised score per variant",
     "late normalised score (mean over the last 20% of training; an early-stopping run: its kept checkpoint's)"),
    ("final_return", "variants_return", "Final return per variant",  # the paper's units in its Tables 2 and 3
     "final return (an early-stopping run: its kept checkpoint's)"),
)


def variant_tables(runs: Sequence[Run], digits: int = 1, metric: str = "final_score",
                   name: str = "variants", what: str = "final normalised score") -> dict[str, dict[str, str]]:
    """Per section with variants besides dense/sparse: ``metric`` (a :class:`Run` attribute, as in
    :data:`VARIANT_TABLES`) per variant, best in bold; ``name`` labels the LaTeX table, ``what`` its caption."""
    cells = group_cells(runs)
    out = {}
    for section in ordered({r.section for r in runs}, KIND_ORDER):
        in_section = [r for r in runs if r.section == section]
        variants = ordered_variants({r.variant for r in in_section})
        if set(variants) <= {DENSE, *SPARSE_ALIASES}:
            continue
        header = ["Size", "Algorithm", "Task", *variants]
        md_rows, tex_rows = [], []
        keys = sorted({(r.size, r.algo, r.family) for r in in_section},
                      key=lambda k: (k[0] is None, k[0] or 0, algo_rank(k[1]), k[1], family_rank(k[2]), k[2]))
        for size, algo, family in keys:
            stats = [mean_std(metric_values(cells.get((section, algo, size, family, v)), metric)) for v in variants]
            finite = [m for m, _, n in stats if n]
            best = max(finite) if finite else None
            md, tex = [], []
            for m, s, n in stats:
                text = format_mean_std(m, spread(s, n), digits) if n else MISSING  # one seed: no "± 0.0"
                md.append(f"**{text}**" if n and m == best and len(finite) > 1 else text)
                tex_text = (MISSING if not n else f"${m:.{digits}f}$" if n == 1 else
                            f"${m:.{digits}f} \\pm {s:.{digits}f}$")
                tex.append(f"\\textbf{{{tex_text}}}" if n and m == best and len(finite) > 1 else tex_text)
            md_rows.append([count_label(size), algo_name(algo), family_name(family), *md])
            tex_rows.append([count_label(size), _latex_escape(algo_name(algo)), family_name(family), *tex])
        caption = f"{section} data: {_latex_escape(what)} per variant, mean $\\pm$ std over seeds; best in bold."
        spec_header = ["Size", "Algorithm", "Task", *variants]
        out[section] = {
            "markdown": markdown_table(header, md_rows),
            "latex": _latex_table(spec_header, tex_rows, caption, f"tab:{slug(section, name)}"),
        }
    return out


def evaluations_with(run: Run, *columns: str) -> list[dict]:
    """The history rows (evaluations) of ``run`` with a finite step and finite ``columns``, in order."""
    return [h for h in run.history
            if all(np.isfinite(as_float(h.get(c))) for c in ("step", *columns))]


def lowest_evaluation(rows: Sequence[dict], column: str) -> dict | None:
    """The row where ``column`` is lowest, the first (earliest) on ties; None without rows."""
    return min(rows, key=lambda h: as_float(h[column])) if rows else None


def mse_summary(run: Run) -> dict | None:
    """A run's action MSE: final training and validation MSE, and the lowest validation MSE and
    the step it was reached at (where a rising validation MSE starts: the overfitting point),
    with the normalised score evaluated at that step (NaN where that row has none): what
    stopping at the lowest validation MSE, an offline model-selection rule, would have kept."""
    rows = evaluations_with(run, "train_mse", "validation_mse")
    lowest = lowest_evaluation(rows, "validation_mse")
    if lowest is None:
        return None
    return {"final_train_mse": as_float(rows[-1]["train_mse"]),
            "final_validation_mse": as_float(rows[-1]["validation_mse"]),
            "lowest_validation_mse": as_float(lowest["validation_mse"]), "lowest_at": int(as_float(lowest["step"])),
            "score_at_lowest": as_float(lowest.get("normalized_score"))}


def mse_tables(runs: Sequence[Run], algos: Sequence[str] = ("bc",)) -> dict[str, str]:
    """Per section: one Markdown row per (size, algorithm, task, variant) of ``algos`` with the
    mean ± std over seeds of the final training and validation action MSE and of the lowest
    validation MSE, and the step of each seed's lowest (paper Figures 4, 8 and 9 as numbers)."""
    cells = group_cells([r for r in runs if r.algo in algos])
    out = {}
    for section in ordered({key[0] for key in cells}, KIND_ORDER):
        keys = sorted((k for k in cells if k[0] == section),
                      key=lambda k: (k[2] is None, k[2] or 0, algo_rank(k[1]), k[1], family_rank(k[3]), k[3],
                                     variant_rank(k[4]), k[4]))
        rows = []
        for _, algo, size, family, variant in keys:
            members = cells[(section, algo, size, family, variant)]
            summaries = [m for m in map(mse_summary, members) if m is not None]
            if not summaries:
                continue

            def stat(name: str) -> str:
                mean, std, n = mean_std(m[name] for m in summaries)
                return format_mean_std(mean, spread(std, n), 4)

            scores = [m["score_at_lowest"] for m in summaries if np.isfinite(m["score_at_lowest"])]
            score_mean, score_std, score_n = mean_std(scores)
            rows.append([count_label(size), algo_name(algo), family_name(family), variant,
                         stat("final_train_mse"), stat("final_validation_mse"), stat("lowest_validation_mse"),
                         ", ".join(count_label(m["lowest_at"]) for m in summaries),
                         format_mean_std(score_mean, spread(score_std, score_n)) if scores else MISSING])
        if rows:
            out[section] = markdown_table(["Size", "Algorithm", "Task", "Variant", "train MSE (final)",
                                            "validation MSE (final)", "lowest validation MSE",
                                            "lowest at (per seed)", "score at lowest validation MSE"], rows)
    return out


# The held-out signals an offline selection rule can stop on: the actor's action MSE, then each network's
# own loss on the validation episodes (logged from the commit that added held_out_loss_evaluator).
SELECTION_SIGNALS = {"validation_mse": "action MSE", "validation_actor_loss": "actor loss",
                     "validation_critic_loss": "critic loss", "validation_value_loss": "value loss"}


def score_at_lowest(run: Run, signal: str) -> tuple[float, int | None]:
    """The normalised score of the evaluation where ``signal`` (a metrics.csv column) is lowest, the first on
    ties, and its step: what stopping on that held-out signal keeps. (NaN, None) where the run has none."""
    lowest = lowest_evaluation(evaluations_with(run, signal), signal)
    if lowest is None:
        return math.nan, None
    return as_float(lowest.get("normalized_score")), int(as_float(lowest["step"]))


def last_score(run: Run) -> float:
    """The normalised score of a run's last evaluation (an early-stopping run's too, not the agent it kept)."""
    return as_float(run.history[-1].get("normalized_score")) if run.history else math.nan


def logs_held_out_losses(run: Run) -> bool:
    return any(is_held_out_loss(k) and np.isfinite(as_float(v)) for h in run.history for k, v in h.items())


def selection_iqm_table(runs: Sequence[Run], reps: int = 2000, seed: int = 0) -> str:
    """One row per (algorithm, size, variant), all tasks and seeds pooled: the IQM [95% stratified-bootstrap CI]
    of the last score, the best score and the score at the lowest of each held-out signal."""
    columns = {"final": last_score, "best": lambda r: best_score(r)[0]}
    columns.update({f"at lowest {label}": functools.partial(lambda s, r: score_at_lowest(r, s)[0], signal)
                    for signal, label in SELECTION_SIGNALS.items()})
    estimates = {name: {(e["algo"], e["size"], e["variant"]): e
                        for e in iqm_estimates(runs, reps, seed, metric=name, score_of=score_of)}
                 for name, score_of in columns.items()}
    keys = sorted(set().union(*estimates.values()),
                  key=lambda k: (algo_rank(k[0]), k[0], k[1] == "all", k[1] if k[1] != "all" else 0,
                                 variant_rank(k[2]), k[2]))
    shown = [name for name in columns if estimates[name]]
    rows = []
    for algo, size, variant in keys:
        row = [algo_name(algo), count_label(size) if size != "all" else "all sizes", variant]
        for name in shown:
            e = estimates[name].get((algo, size, variant))
            row.append(MISSING if e is None else f"{e['iqm']:.1f} [{e['ci_low']:.1f}, {e['ci_high']:.1f}] "
                                                 f"(n={e['n_scores']})")
        rows.append(row)
    return markdown_table(["Algorithm", "Size", "Variant", *shown], rows)


def selection_tables(runs: Sequence[Run], reps: int = 2000, seed: int = 0) -> dict[str, str]:
    """Per section: one row per (size, algorithm, task, variant) among runs that log a network's held-out loss,
    with the mean ± std over seeds of the final score (the last evaluation: an early-stopping run's too, not
    the agent it kept), the best evaluated score (what an oracle would keep) and the score at the lowest of
    each held-out signal of :data:`SELECTION_SIGNALS`, with the steps."""
    logged = [r for r in runs if logs_held_out_losses(r)]
    cells = group_cells(logged)
    out = {}
    for section in ordered({key[0] for key in cells}, KIND_ORDER):
        keys = sorted((k for k in cells if k[0] == section), key=_cell_order)
        signals = [s for s in SELECTION_SIGNALS
                   if any(np.isfinite(score_at_lowest(r, s)[0]) for k in keys for r in cells[k])]
        rows = []
        for _, algo, size, family, variant in keys:
            members = sorted(cells[(section, algo, size, family, variant)], key=lambda r: r.seed)

            def stat(values) -> str:
                mean, std, n = mean_std(v for v in values if np.isfinite(v))
                return format_mean_std(mean, spread(std, n)) if n else MISSING

            row = [count_label(size), algo_name(algo), family_name(family), variant,
                   stat(map(last_score, members)), stat(best_score(r)[0] for r in members)]
            for signal in signals:
                picked = [score_at_lowest(r, signal) for r in members]
                steps = ", ".join(count_label(step) for _, step in picked if step is not None)
                row.append(f"{stat(score for score, _ in picked)} ({steps})" if steps else MISSING)
            rows.append(row)
        out[section] = markdown_table(["Size", "Algorithm", "Task", "Variant", "final score", "best score",
                                       *(f"at lowest {SELECTION_SIGNALS[s]} (steps)" for s in signals)], rows)
        in_section = [r for r in logged if r.section == section]
        out[f"{section}: IQM over tasks and seeds"] = selection_iqm_table(in_section, reps, seed)
    return out


def selection_item(runs: Sequence[Run], directory: Path, reps: int = 2000, seed: int = 0) -> list[Item]:
    text = ("Offline model selection, after the fact: for each held-out signal, the normalised score of the "
            "evaluation where the signal was lowest (each seed's step in brackets), beside the final score (the last "
            "evaluation, whether or not the run kept an earlier agent) and the best evaluated score (what an oracle "
            "would keep), mean ± std over seeds. The signals: the actor's action MSE and each network's own "
            "training loss on the validation episodes (their first 50k rows). "
            "Those episodes are the run's `validation_size`: 200k held-out transitions by default, more data than "
            "a small training set, or a slice of the cell's own data in early-stopping runs (which the other tables "
            "score at the kept checkpoint; here every evaluation counts). Then, per section, the IQM [95% "
            "stratified-bootstrap CI] of each column over tasks and seeds.")
    return _tables_item(selection_tables(runs, reps, seed), directory / "selection.md",
                        "What stopping on a held-out signal would keep", text)


def _cell_order(cell: tuple) -> tuple:
    """Sort key of a cell (section, algo, size, family, variant): sections, then algorithms, sizes,
    tasks and variants in the report's order."""
    section, algo, size, family, variant = cell
    return (section, algo_rank(algo), algo, size or 0, family_rank(family), family, variant_rank(variant), variant)


def refresh_loss_tables(runs: Sequence[Run]) -> dict[str, str]:
    """Per sparse cell whose masks.csv records them: at each mask refresh, each network's loss on the
    scoring batch with the previous mask → with the new one, mean over seeds (how much a refresh
    disturbs a trained network; the first row is against the initial all-ones mask)."""
    out = {}
    cells = group_cells([r for r in runs if r.masks])
    for key in sorted(cells, key=_cell_order):
        members = cells[key]
        by_step: dict[float, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        for run in members:
            for row in run.masks:
                if str(row.get("layer")) != "total":
                    continue
                for column in ("loss_before", "loss_after"):
                    value = as_float(row.get(column))
                    if np.isfinite(value):
                        by_step[as_float(row["step"])][str(row["network"])][column].append(value)
        networks = ordered({n for step in by_step.values() for n in step}, ("actor", "critic", "value"))
        if not networks:
            continue
        rows = []
        for step in sorted(by_step):
            cells_text = []
            for network in networks:
                losses = by_step[step].get(network, {})
                before, after = losses.get("loss_before", []), losses.get("loss_after", [])
                cells_text.append(f"{np.mean(before):.3g} → {np.mean(after):.3g}" if before and after else MISSING)
            rows.append([count_label(int(step)) if step else "0", *cells_text])
        section, algo, size, family, variant = key
        seeds = ", ".join(str(s) for s in sorted(r.seed for r in members))
        title = f"{section}, {algo_name(algo)}, {count_label(size) if size else MISSING}, {family_name(family)}, {variant} (seeds {seeds})"
        out[title] = markdown_table(["refresh at step", *[f"{n}: loss before → after" for n in networks]], rows)
    return out


def live_unit_tables(runs: Sequence[Run]) -> dict[str, str]:
    """Per sparse cell whose masks.csv records it: the fraction of each network's hidden units that the
    masks leave alive (a kept input and a kept output weight), at the first refresh and at the last
    (the masks the run ends with), mean over seeds. Sparse-Reg at 95% is partly a narrower network."""
    out = {}
    cells = group_cells([r for r in runs if any(np.isfinite(as_float(row.get("live_units"))) for row in r.masks)])
    for key in sorted(cells, key=_cell_order):
        members = cells[key]
        first: dict[tuple[str, str], list[float]] = defaultdict(list)
        last: dict[tuple[str, str], list[float]] = defaultdict(list)
        last_steps = set()
        for run in members:
            steps = [as_float(row["step"]) for row in run.masks]
            for row in run.masks:
                value = as_float(row.get("live_units"))
                if not np.isfinite(value):
                    continue
                where = (str(row["network"]), str(row["layer"]))
                if as_float(row["step"]) == min(steps):
                    first[where].append(value)
                if as_float(row["step"]) == max(steps):
                    last[where].append(value)
            last_steps.add(int(max(steps)))
        networks = ordered({n for n, _ in first} | {n for n, _ in last}, ("actor", "critic", "value"))
        rows = []
        for network in networks:
            layers = sorted({layer for n, layer in {**first, **last} if n == network}, key=lambda name: (name == "total", name))
            for layer in layers:
                cells_text = [f"{100 * np.mean(values[(network, layer)]):.0f}%" if values.get((network, layer)) else MISSING
                              for values in (first, last)]
                rows.append([network, layer, *cells_text])
        section, algo, size, family, variant = key
        seeds = ", ".join(str(s) for s in sorted(r.seed for r in members))
        last_label = "/".join(count_label(s) for s in sorted(last_steps))
        title = f"{section}, {algo_name(algo)}, {count_label(size) if size else MISSING}, {family_name(family)}, {variant} (seeds {seeds})"
        out[title] = markdown_table(["network", "hidden layer", "live units, first masks", f"live units, last masks ({last_label})"], rows)
    return out


IQM_METRICS = {"final_score": "final normalised score", "late_score": "late normalised score"}


def iqm_estimates(runs: Sequence[Run], reps: int = 2000, seed: int = 0, metric: str = "final_score",
                  score_of: Callable[[Run], float] | None = None) -> list[dict]:
    """IQM of each run's ``metric`` (final or late normalised score; or ``score_of(run)``, named ``metric``)
    with stratified-bootstrap 95% CIs, and the lowest single score (a variant that collapses on one run out
    of nine keeps a high IQM).

    One estimate per (section, algo, size, variant), strata = tasks; plus size "all" with strata
    = (size, task) pairs when there are several sizes.
    """
    groups: dict[tuple, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    pooled: dict[tuple, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        score = score_of(run) if score_of is not None else getattr(run, metric)
        if np.isfinite(score):
            groups[(run.section, run.algo, run.size, run.variant)][(run.family,)].append(score)
            pooled[(run.section, run.algo, run.variant)][(run.size, run.family)].append(score)
    for (section, algo, variant), strata in pooled.items():
        if len({size for size, _ in strata}) > 1:  # an "all sizes" estimate only when it differs
            groups[(section, algo, "all", variant)] = strata
    estimates = []
    for (section, algo, size, variant), strata in groups.items():
        point, lo, hi = stratified_bootstrap_ci(list(strata.values()), reps=reps, seed=seed)
        estimates.append({
            "metric": metric, "section": section, "algo": algo, "size": size, "variant": variant, "iqm": point, "ci_low": lo,
            "ci_high": hi, "n_scores": sum(len(v) for v in strata.values()), "n_tasks": len(strata),
            "min_scores_per_task": min(len(v) for v in strata.values()),
            "lowest": min(min(v) for v in strata.values()),
        })
    return estimates


# ----------------------------------------------------------------------------- table files


def _write_sections(path: Path, title: str, sections: Mapping[str, str]) -> str:
    """Write ``path`` as "# title" then one "### heading" per section; returns the sections' Markdown."""
    md = "\n\n".join(f"### {heading}\n\n{table}" for heading, table in sections.items())
    path.write_text(f"# {title}\n\n{md}\n")
    return md


def table_items(runs: Sequence[Run], directory: Path, paper: Mapping[tuple, dict]) -> list[Item]:
    items = []
    for metric, name, what in (("final_score", "normalized_score", "final normalised score"),
                               ("final_return", "final_return", "final return"),
                               ("late_score", "late_normalized_score", "late normalised score")):
        tables = comparison_tables(runs, metric, paper)
        if not tables:
            continue
        md = _write_sections(directory / f"{name}.md", f"{what}: dense → Sparse-Reg",
                             {section: t["markdown"] for section, t in tables.items()})
        tex = "% needs \\usepackage{booktabs,xcolor,graphicx}\n" + "\n\n".join(t["latex"] for t in tables.values())
        (directory / f"{name}.tex").write_text(tex + "\n")
        paper_note = (
            " Rows in italics are the paper's numbers for the same cell (Tables 1 and 4: D4RL -v2 data, "
            "mujoco-py, 1M steps, 5 seeds), normalised with D4RL's reference scores; ours are gymnasium -v5 "
            "environments with this project's own behaviour policies: compare levels and the direction of "
            "the change, not the numbers one to one."
            if metric == "final_score" and "*paper " in md else ""
        )
        statistic = (
            "the mean of each run's evaluations in the last 20% of training (a steadier view than the "
            "last evaluation alone; not a statistic the paper reports)"
            if metric == "late_score" else "the last evaluation"
        )
        items.append(Item(
            "Tables", directory / f"{name}.md",
            f"{what.capitalize()} without sparsity → with Sparse-Reg, mean ± std (ddof=0) over seeds of "
            f"{statistic}; ▲ and bold: Sparse-Reg better, ▼: worse; (n=a/b): seeds when they differ. "
            f"LaTeX: [{name}.tex](tables/{name}.tex).{paper_note}",
            inline=md,
        ))
    for metric, name, title, what in VARIANT_TABLES:
        variants = variant_tables(runs, metric=metric, name=name, what=what)
        if not variants:
            continue
        md = _write_sections(directory / f"{name}.md", title,
                             {section: t["markdown"] for section, t in variants.items()})
        (directory / f"{name}.tex").write_text(
            "% needs \\usepackage{booktabs,graphicx}\n" + "\n\n".join(t["latex"] for t in variants.values()) + "\n"
        )
        items.append(Item("Tables", directory / f"{name}.md",
                          f"{what.capitalize()} of every variant (mean ± std over seeds; best of a row in bold). "
                          f"LaTeX: [{name}.tex](tables/{name}.tex).", inline=md))
    return items


def mse_table_items(runs: Sequence[Run], directory: Path, algos: Sequence[str]) -> list[Item]:
    tables = mse_tables(runs, algos)
    if not tables:
        return []
    md = _write_sections(directory / "action_mse.md", "Action MSE: training vs validation", tables)
    return [Item("Tables", directory / "action_mse.md",
                 "MSE between the policy's and the dataset's actions on the training set and on held-out "
                 "validation episodes at the last evaluation, and the lowest validation MSE of the run, mean ± std "
                 "(ddof=0) over seeds; 'lowest at': the step of each seed's lowest validation MSE, and the normalised "
                 "score evaluated there: what early stopping on the validation MSE would keep. The validation "
                 "episodes are held out from the full dataset (`validation_size`, 200k transitions by default, as "
                 "in the paper's Figure 4), often far more data than the training subset, so that score is a best "
                 "case for early stopping, not what a held-out slice of a small dataset would pick. A low final "
                 "training MSE with a validation MSE well above its lowest is overfitting (paper Figures 4, 8, 9).",
                 inline=md)]


def best_score(run: Run) -> tuple[float, int | None]:
    """A run's highest evaluated normalised score and the step of its first occurrence (NaN, None: none)."""
    evaluations = evaluations_with(run, "normalized_score")
    if not evaluations:
        return math.nan, None
    best = max(evaluations, key=lambda h: (as_float(h["normalized_score"]), -as_float(h["step"])))
    return as_float(best["normalized_score"]), int(as_float(best["step"]))


def run_record(run: Run) -> dict[str, Any]:
    """One run's numbers for ``final_scores.csv`` and ``runs.md``: scores (final, late, best), its
    action MSE and what it cost (NaN / None where the run does not record it)."""
    best, best_at = best_score(run)
    mse = mse_summary(run) or {}
    wall = run.summary.get("wall_seconds")
    return {
        "section": run.section, "algo": run.algo, "kind": run.kind, "family": run.family, "size": run.size,
        "train_size": run.train_size, "validation_size": run.config.get("validation_size"),
        "kept_at": run.kept["step"] if run.kept else None,
        "variant": run.variant, "seed": run.seed, "steps": run.steps, "final_return": run.final_return,
        "final_normalized_score": run.final_score, "late_normalized_score": run.late_score,
        "best_normalized_score": best, "best_at": best_at,
        "final_train_mse": mse.get("final_train_mse", math.nan),
        "final_validation_mse": mse.get("final_validation_mse", math.nan),
        "lowest_validation_mse": mse.get("lowest_validation_mse", math.nan),
        "lowest_validation_at": mse.get("lowest_at"),
        "score_at_lowest_validation_mse": mse.get("score_at_lowest", math.nan),
        "wall_seconds": math.nan if wall is None else float(wall), "code_version": run.summary.get("code_version"),
        "data_fingerprint": (run.summary.get("data") or {}).get("fingerprint"),
        "path": str(run.path),
    }


def _tables_item(tables: Mapping[str, str], path: Path, title: str, text: str) -> list[Item]:
    """``path``: the per-section ``tables`` under ``title``, and its item for the index ([] without tables)."""
    if not tables:
        return []
    _write_sections(path, title, tables)
    return [Item("Tables", path, text)]


def live_unit_item(runs: Sequence[Run], directory: Path) -> list[Item]:
    text = ("Fraction of each sparse network's hidden units with at least one kept input and one kept output "
            "weight, with the first masks and with the last (mean over seeds): a dead unit is as if the layer "
            "were narrower, so Sparse-Reg at 95% is partly a smaller dense network (compare Table 2).")
    return _tables_item(live_unit_tables(runs), directory / "live_units.md", "Hidden units the masks leave alive",
                        text)


def refresh_loss_item(runs: Sequence[Run], directory: Path) -> list[Item]:
    text = ("At every mask refresh of the sparse runs: each network's loss on the scoring batch with the mask it "
            "trained with → with the new mask (same weights), mean over seeds. A large jump means the refresh "
            "brought back frozen weights that no longer fit the trained ones; the first row is against the "
            "initial all-ones mask.")
    return _tables_item(refresh_loss_tables(runs), directory / "refresh_losses.md",
                        "Each network's loss just before and just after each mask refresh", text)


def _run_order(run: Run) -> tuple:
    return (*_cell_order(run.cell), run.seed)


def runs_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    """One row per :func:`run_record`: final, late and best normalised score, action MSE (lowest
    validation → final, final training), the score at the lowest validation MSE and wall time; ``final_scores.csv``'s numbers, rounded for reading."""
    def number(value: float, digits: int) -> str:
        return f"{value:.{digits}f}" if np.isfinite(value) else MISSING

    rows = []
    for r in records:
        best = MISSING if r["best_at"] is None else f"{r['best_normalized_score']:.1f} ({count_label(r['best_at'])})"
        validation = (MISSING if r["lowest_validation_at"] is None else
                      f"{r['lowest_validation_mse']:.4f} ({count_label(r['lowest_validation_at'])}) → "
                      f"{r['final_validation_mse']:.4f}")
        wall = format_duration(r["wall_seconds"]) if np.isfinite(r["wall_seconds"]) else MISSING
        size = count_label(r["size"]) if r["size"] else MISSING
        if r["size"] and r["train_size"] and r["train_size"] != r["size"]:  # an early-stopping split of the cell's data
            held_out = r["size"] - r["train_size"]
            size += (f" ({count_label(r['train_size'])} + {count_label(held_out)} held out)"
                     if held_out > 0 and held_out == r["validation_size"] else f" (trained on {count_label(r['train_size'])})")
        final = number(r["final_normalized_score"], 1)
        if r["kept_at"] is not None:
            final += f" (kept at {count_label(r['kept_at'])})"
        rows.append([r["section"], algo_name(r["algo"]), size,
                     family_name(r["family"]), r["variant"], str(r["seed"]), count_label(r["steps"]),
                     final, number(r["late_normalized_score"], 1), best,
                     validation, number(r["score_at_lowest_validation_mse"], 1), number(r["final_train_mse"], 4),
                     wall, (r["code_version"] or MISSING)[:7]])
    return markdown_table(["Data", "Algorithm", "Size", "Task", "Variant", "Seed", "Steps", "final score",
                           "late score", "best score (step)", "validation MSE: lowest (step) → final",
                           "score at lowest validation MSE", "train MSE (final)", "wall", "commit"], rows)


def runs_table_item(runs: Sequence[Run], directory: Path) -> Item:
    """``final_scores.csv`` (every number, full precision) and ``runs.md`` (the same, to read)."""
    records = [run_record(r) for r in sorted(runs, key=_run_order)]
    with open(directory / "final_scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["section"])
        writer.writeheader()
        writer.writerows(records)
    (directory / "runs.md").write_text(f"# Every run\n\n{runs_markdown(records)}\n")
    return Item("Tables", directory / "runs.md",
                "One row per run: final normalised score, late score (mean of the evaluations in the last 20% of "
                "training), best evaluation and its step, validation action-MSE (lowest, at its step, → final), "
                "the score evaluated at that lowest validation MSE, final training MSE, training wall time and "
                "commit. An early-stopping run (`keep_lowest_validation_mse`) sits in its cell's size, its "
                "training and held-out split beside it, and is scored at the checkpoint it kept, in this table "
                "and every other. Every digit: [final_scores.csv](tables/final_scores.csv).")


def iqm_table_item(estimates: list[dict], directory: Path, reps: int) -> Item:
    """``iqm.md`` / ``iqm.csv``: one table per metric (final, then late score) and section."""
    with open(directory / "iqm.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(estimates[0]))
        writer.writeheader()
        writer.writerows(estimates)
    parts = []
    for metric in ordered({e["metric"] for e in estimates}, tuple(IQM_METRICS)):
        for section in ordered({e["section"] for e in estimates}, KIND_ORDER):
            mine = [e for e in estimates if e["section"] == section and e["metric"] == metric]
            if mine:
                parts.append(f"### {section}: {IQM_METRICS[metric]}\n\n{_iqm_markdown(mine)}")
    if any(e["min_scores_per_task"] < 2 for e in estimates):
        parts.append("† some task has a single score here: the stratified bootstrap cannot resample it, so the "
                     "interval is too narrow (run more seeds).")
    md = "\n\n".join(parts)
    (directory / "iqm.md").write_text(f"# IQM of normalised scores, 95% stratified bootstrap CI\n\n{md}\n")
    return Item("Tables", directory / "iqm.md",
                f"IQM [95% CI] over tasks and seeds (n = number of scores; lowest = the lowest of them) of the final "
                f"normalised scores and of the "
                f"late scores (each run's mean over its last 20% of training); stratified bootstrap with {reps} "
                f"replicates, percentile interval. CSV: [iqm.csv](tables/iqm.csv).",
                inline=md)


def _iqm_markdown(estimates: list[dict]) -> str:
    """Rows algorithm x variant, a column per size (and all sizes pooled)."""
    sizes = ordered_sizes([e["size"] for e in estimates if e["size"] != "all"])
    sizes += ["all"] if any(e["size"] == "all" for e in estimates) else []
    keys = sorted({(e["algo"], e["variant"]) for e in estimates},
                  key=lambda k: (algo_rank(k[0]), k[0], variant_rank(k[1]), k[1]))
    lookup = {(e["algo"], e["variant"], e["size"]): e for e in estimates}
    rows = []
    for algo, variant in keys:
        row = [algo_name(algo), variant]
        for size in sizes:
            e = lookup.get((algo, variant, size))
            if e is None:
                row.append(MISSING)
                continue
            # a task with one score is never resampled: the interval leaves its seed-to-seed spread out
            mark = " †" if e["min_scores_per_task"] < 2 else ""
            row.append(f"{e['iqm']:.1f} [{e['ci_low']:.1f}, {e['ci_high']:.1f}] (n={e['n_scores']}, "
                       f"lowest {e['lowest']:.1f}){mark}")
        rows.append(row)
    header = ["Algorithm", "Variant", *[count_label(s) if s != "all" else "all sizes" for s in sizes]]
    return markdown_table(header, rows)
