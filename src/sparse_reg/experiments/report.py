"""Sweep report: tables in the paper's form, aggregate curves, IQM with bootstrap CIs, BC MSE and masks.

``write_report(runs_dir, out_dir)`` finds every finished run under ``runs_dir`` (any depth: a
directory with a ``summary.json``), groups runs into cells (data kind, algorithm, size, task,
variant) x seeds and writes ``out_dir/index.md`` with everything linked from it:

* ``tables/final_return.{md,tex}`` and ``tables/normalized_score.{md,tex}``: the paper's Table 1
  form, rows size x algorithm, a column per task, each cell "dense mean ± std → sparse mean ± std"
  over seeds of the final evaluation (▲ / blue where Sparse-Reg is better, ▼ / red where worse).
  The normalised table has, under each of our rows, the paper's numbers for the same cell
  (Tables 1 and 4, D4RL ``-v2`` returns normalised with D4RL's reference scores).
* ``tables/late_normalized_score.{md,tex}``: the same table for each run's mean normalised
  score over its evaluations in the last 20% of training (ours, not the paper's: one
  evaluation of a few episodes swings a lot on small data).
* ``tables/variants.{md,tex}``: one column per variant (L1, dropout, SFI, ...) when there are any.
* ``tables/iqm.{md,csv}``: IQM of final normalised scores with 95% stratified-bootstrap CIs.
* ``tables/final_scores.csv``: one row per run (the numbers behind everything else).
* ``figures/*.png``: learning curves (per task and aggregated over tasks), quantile bars of the
  final scores, IQM interval estimates, BC train/validation MSE, layer-wise mask sparsity and
  the fraction of each mask that changed at every refresh.

Statistics
    std over seeds is the population std (``ddof=0``, what ``np.std`` gives, as in most offline
    RL papers). Curves are mean ± standard error over seeds; the aggregate over tasks is the mean
    of the task means with standard error ``sqrt(sum_t s_t^2 / n_t) / T``. IQM and its CI follow
    rliable (Agarwal et al., 2021): the IQM is the mean of the middle 50% of all (task, seed)
    scores after cutting ``int(0.25 n)`` from each end (``scipy.stats.trim_mean(x, 0.25)``), and
    the CI is the percentile interval of the IQM over bootstrap replicates that resample seeds
    with replacement *within each task* (stratified bootstrap). rliable itself is not used: it
    pulls arch, statsmodels, pandas, seaborn and formulaic into the environment for ~30 lines of
    numpy, which are :func:`iqm` and :func:`stratified_bootstrap_ci` below.

Variants come from the run's configuration (:func:`run_variant`), or from a ``tags.json`` with a
``"variant"`` key next to ``summary.json`` when the sweep wrote one.

The paper's CSV is shipped as ``paper_tables.csv`` next to this module. It is a copy of
``/work/shared/paper/paper_tables.csv`` with three signs restored from the paper's LaTeX (Table 1,
HalfCheetah, dense: TD3+BC 5k −260.51, AWAC 5k −158.71, AWAC 10k −484.61; the CSV had lost the
minus signs).
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..data.reference import D4RL_REFERENCE_SCORES, env_family
from ..provenance import format_duration
from ..sparsity import resolve_sparsity
from ..training.logging import MASKS_FILE, METRICS_FILE, read_rows

SUMMARY_FILE = "summary.json"
TAGS_FILE = "tags.json"
PAPER_CSV = Path(__file__).with_name("paper_tables.csv")
INDEX_FILE = "index.md"

ALGO_NAMES = {"bc": "BC", "td3bc": "TD3+BC", "awac": "AWAC", "iql": "IQL",
              "awac-paper-code": "AWAC (paper code)", "iql-paper-code": "IQL (paper code)"}
# The paper's numbers were made by its released code: they sit beside both variants.
PAPER_ALGO = {"awac-paper-code": "awac", "iql-paper-code": "iql"}
FAMILY_NAMES = {"halfcheetah": "HalfCheetah", "hopper": "Hopper", "walker2d": "Walker2d"}
KIND_ORDER = ("expert", "medium", "medium-replay", "expert-replay")
DENSE, SPARSE = "dense", "sparse"
SPARSE_ALIASES = ("sparse", "spu")  # the sweep may call periodic-update Sparse-Reg "spu"
VARIANT_ORDER = ("dense", "sparse", "spu", "sfi", "l1", "dropout", "wd", "layernorm", "specnorm")
DEFAULT_HIDDEN = [256, 256]
IMPROVED, WORSE = "▲", "▼"
MISSING = "–"
LATE_FRACTION_START = 0.8  # late_score averages the evaluations from 80% of the steps on


# ----------------------------------------------------------------------------- statistics


def iqm(values: Any) -> np.ndarray | float:
    """Interquartile mean along the last axis: drop ``int(0.25 n)`` values at each end, average the rest."""
    x = np.sort(np.asarray(values, dtype=float), axis=-1)
    n = x.shape[-1]
    cut = int(0.25 * n)
    return x[..., cut : n - cut].mean(axis=-1)


def stratified_bootstrap_ci(
    strata: Sequence[Sequence[float]],
    statistic: Callable[[np.ndarray], Any] = iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(point, lo, hi)``: the statistic of all scores and its percentile bootstrap CI.

    ``strata`` holds one array of scores (one per seed) per task. Each replicate resamples every
    task's scores with replacement, keeping each task's count (rliable's stratified bootstrap),
    and ``statistic`` is applied along the last axis of the (reps, n) replicate matrix.
    NaNs are dropped; empty tasks are ignored; no scores at all gives NaNs.
    """
    strata = [np.asarray(s, dtype=float).ravel() for s in strata]
    strata = [s[np.isfinite(s)] for s in strata]
    strata = [s for s in strata if s.size]
    if not strata:
        return math.nan, math.nan, math.nan
    point = float(statistic(np.concatenate(strata)))
    rng = np.random.default_rng(seed)
    replicates = np.concatenate([s[rng.integers(0, s.size, size=(reps, s.size))] for s in strata], axis=1)
    estimates = np.asarray(statistic(replicates), dtype=float)
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(estimates, [tail, 100.0 - tail])
    return point, float(lo), float(hi)


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, population std (ddof=0) and count of the finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std()), int(x.size)


def _mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, 0
    var = float(x.var(ddof=1)) if x.size > 1 else 0.0
    return float(x.mean()), math.sqrt(var / x.size), int(x.size)


# ----------------------------------------------------------------------------- runs and cells


def run_variant(config: Mapping[str, Any], tags: Mapping[str, Any] | None = None) -> str:
    """The variant a run belongs to: ``tags["variant"]`` if given, else derived from its config.

    "dense" (sparsity 0) or "sparse" (sparsity "auto", the paper's rule); an explicit level
    is named by it, "sparse95", "sparse75" (as the sweep's Table 3 / Figure 6 variants); "sfi"
    replaces "sparse" when masks are fixed at initialisation (``mask_until == 0``). Then
    "+"-joined regularisers: "l1", "dropout", "wd" (weight decay),
    "layernorm", "specnorm", "hd64" (hidden dims other than 256x256) and ``key=value`` for
    algorithm options; e.g. "dense+l1", "sparse", "hd64".
    """
    if tags and tags.get("variant"):
        return str(tags["variant"])
    parts = []
    sparsity = config.get("sparsity", 0.0)
    is_auto = isinstance(sparsity, str) and sparsity.strip().lower() == "auto"
    level = None if is_auto else resolve_sparsity(sparsity, 0)
    if is_auto or level:
        name = "sfi" if config.get("mask_until") == 0 else SPARSE
        parts.append(name if is_auto else f"{name}{100 * level:g}")
    if config.get("l1", 0) > 0:
        parts.append("l1")
    if config.get("dropout", 0) > 0:
        parts.append("dropout")
    if config.get("weight_decay", 0) > 0:
        parts.append("wd")
    if config.get("layer_norm"):
        parts.append("layernorm")
    if config.get("spectral_norm"):
        parts.append("specnorm")
    hidden = [int(h) for h in config.get("hidden_dims", DEFAULT_HIDDEN)]
    if hidden != DEFAULT_HIDDEN:
        parts.append("hd" + ("-".join(str(h) for h in hidden) if len(set(hidden)) > 1 else str(hidden[0])))
    for key, value in sorted((config.get("algo_options") or {}).items()):
        parts.append(f"{key}={value}")
    return "+".join(parts) or DENSE


def data_kind(dataset: str, family: str | None) -> str:
    """"hopper-medium-replay-v0" -> "medium-replay"; also D4RL/Minari names and file paths."""
    name = Path(str(dataset)).name.lower()
    name = re.sub(r"\.(hdf5|h5|npz)$", "", name)
    name = re.sub(r"-v\d+$", "", name).replace("_", "-")
    if family and name.startswith(family):
        name = name[len(family):]
    return name.strip("-/ ") or "data"


@dataclass
class Run:
    path: Path
    summary: dict
    tags: dict
    algo: str
    family: str
    kind: str
    size: int | None
    steps: int
    seed: int
    variant: str
    history: list[dict]
    masks: list[dict]
    section: str = ""

    @property
    def config(self) -> dict:
        return self.summary.get("config", {})

    @property
    def final_return(self) -> float:
        return _number(self.summary.get("final_return"), self.history, "return_mean")

    @property
    def final_score(self) -> float:
        return _number(self.summary.get("final_normalized_score"), self.history, "normalized_score")

    @property
    def late_score(self) -> float:
        """Mean normalised score of the evaluations in the last 20% of training.

        Steadier than the final evaluation alone, whose few episodes can swing widely from
        one evaluation to the next on small data.
        """
        evaluations = [(_as_float(h.get("step")), _as_float(h.get("normalized_score"))) for h in self.history]
        start = LATE_FRACTION_START * (self.steps or max((step for step, _ in evaluations), default=math.nan))
        scores = [score for step, score in evaluations if step >= start and not math.isnan(score)]
        return float(np.mean(scores)) if scores else math.nan

    @property
    def cell(self) -> tuple:
        return (self.section, self.algo, self.size, self.family, self.variant)


def _number(value, history: list[dict], key: str) -> float:
    if value is None and history:
        value = history[-1].get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


@dataclass
class Collection:
    runs: list[Run] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def collect_runs(runs_dir: str | Path, exclude: Path | None = None) -> Collection:
    """Every finished run under ``runs_dir``; unfinished or unreadable ones go to ``skipped``."""
    runs_dir = Path(runs_dir)
    found = Collection()
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"no runs directory at {runs_dir}")
    excluded = exclude.resolve() if exclude is not None else None

    def outside_excluded(p: Path) -> bool:
        return excluded is None or excluded not in p.resolve().parents

    summaries = sorted(p for p in runs_dir.rglob(SUMMARY_FILE) if outside_excluded(p))
    finished = {p.parent for p in summaries}
    unfinished = set()
    for marker in ("config.json", METRICS_FILE, TAGS_FILE, "checkpoint.json"):
        unfinished |= {p.parent for p in runs_dir.rglob(marker) if p.parent not in finished and outside_excluded(p)}
    ancestors = {parent for d in finished | unfinished for parent in d.parents}
    for directory in sorted(unfinished):
        if directory in ancestors:
            continue  # a parent of runs (e.g. an experiment directory with its own tags), not a run
        rows = read_rows(directory / METRICS_FILE)
        progress = f" (last evaluation at step {rows[-1].get('step')})" if rows else ""
        found.skipped.append((directory, f"no {SUMMARY_FILE} yet: in progress or not started{progress}"))

    seen: dict[tuple, Run] = {}
    for path in summaries:
        try:
            run = _load_run(path.parent)
        except (OSError, ValueError, KeyError, TypeError) as error:
            found.skipped.append((path.parent, f"unreadable {SUMMARY_FILE}: {error}"))
            continue
        last_step = run.history[-1]["step"] if run.history else None
        if last_step is None or last_step < run.steps:
            found.skipped.append((path.parent, f"incomplete: last evaluation at step {last_step} of {run.steps}"))
            continue
        found.runs.append(run)
    _assign_sections(found.runs)
    kept = []
    for run in found.runs:
        key = (*run.cell, run.seed)
        if key in seen:
            first = seen[key]
            differs = sorted(k for k in set(first.config) | set(run.config) if first.config.get(k) != run.config.get(k))
            how = f"its config differs in {', '.join(differs)}" if differs else "same config"
            found.skipped.append((run.path, f"same cell and seed as {_relative(first.path, runs_dir)} ({how}); "
                                            "only the first is counted"))
            continue
        seen[key] = run
        kept.append(run)
    found.runs = kept
    return found


def _load_run(directory: Path) -> Run:
    summary = json.loads((directory / SUMMARY_FILE).read_text())
    tags_path = directory / TAGS_FILE
    tags = json.loads(tags_path.read_text()) if tags_path.exists() else {}
    if not isinstance(tags, dict):
        tags = {}
    config = summary.get("config", {})
    env = summary.get("env") or config.get("env")
    dataset = summary.get("dataset") or config.get("dataset") or ""
    family = env_family(env) or env_family(dataset) or str(env or dataset)
    history = summary.get("eval_history") or read_rows(directory / METRICS_FILE)
    size = config.get("size", summary.get("size"))
    return Run(
        path=directory,
        summary=summary,
        tags=tags,
        algo=str(summary.get("algo") or config.get("algo")),
        family=family,
        kind=data_kind(dataset, family),
        size=None if size is None else int(size),
        steps=int(summary.get("steps") or config.get("steps")),
        seed=int(summary.get("seed", config.get("seed", 0))),
        variant=run_variant(config, tags),
        history=history,
        masks=read_rows(directory / MASKS_FILE),
    )


def _assign_sections(runs: list[Run]) -> None:
    """A section is a data kind, split by training budget when a kind has several."""
    budgets = defaultdict(set)
    for run in runs:
        budgets[run.kind].add(run.steps)
    for run in runs:
        run.section = run.kind if len(budgets[run.kind]) == 1 else f"{run.kind}, {_count_label(run.steps)} steps"


# ----------------------------------------------------------------------------- labels and order


def _count_label(n: int | None) -> str:
    if n is None:
        return "all"
    for scale, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= scale:
            return f"{n / scale:g}{suffix}"
    return str(n)


def _algo_name(algo: str) -> str:
    return ALGO_NAMES.get(algo, algo.upper())


def _family_name(family: str) -> str:
    return FAMILY_NAMES.get(family, family)


def _ordered(values: Iterable, order: Sequence = ()) -> list:
    values = set(values)

    def key(v):
        return (order.index(v) if v in order else len(order), v is None, v if v is not None else 0)

    return sorted(values, key=key)


def _ordered_sizes(values: Iterable[int | None]) -> list[int | None]:
    return sorted(set(values), key=lambda s: (s is None, s or 0))


def _variant_rank(v: str) -> int:
    return VARIANT_ORDER.index(v) if v in VARIANT_ORDER else len(VARIANT_ORDER)


def _algo_rank(a: str) -> int:
    return list(ALGO_NAMES).index(a) if a in ALGO_NAMES else len(ALGO_NAMES)


def _family_rank(f: str) -> int:
    return list(FAMILY_NAMES).index(f) if f in FAMILY_NAMES else len(FAMILY_NAMES)


def _ordered_variants(values: Iterable[str]) -> list[str]:
    return sorted(set(values), key=lambda v: (_variant_rank(v), v))


def _slug(*parts: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "_".join(str(p) for p in parts).lower()).strip("-")


def variant_colors(variants: Iterable[str]) -> dict[str, str]:
    """Stable colours: dense blue, sparse orange, L1 green (as in the paper), then the rest."""
    fixed = {"dense": "C0", "sparse": "C1", "spu": "C1", "l1": "C2", "dense+l1": "C2", "sfi": "C3"}
    colors, free = {}, [f"C{i}" for i in range(4, 10)] + ["#555555", "#a0522d", "#2e8b57", "#4682b4"]
    for variant in _ordered_variants(variants):
        colors[variant] = fixed.get(variant) or free[len([v for v in colors if v not in fixed]) % len(free)]
    return colors


def _sparse_variant(variants: Iterable[str]) -> str | None:
    variants = set(variants)
    return next((v for v in SPARSE_ALIASES if v in variants), None)


# ----------------------------------------------------------------------------- paper numbers


def load_paper_table(path: str | Path | None = PAPER_CSV) -> dict[tuple, dict]:
    """(kind, size, algo, family) -> normalised dense/sparse mean and std (D4RL reference scores)."""
    if path is None:
        return {}
    table = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            family = row["env"].strip().lower()
            ref = D4RL_REFERENCE_SCORES.get(family)
            if ref is None:
                continue
            scale = 100.0 / (ref.expert - ref.random)
            size = int(float(row["size"].lower().rstrip("k")) * 1000) if row["size"].lower().endswith("k") else int(row["size"])
            algo = row["algo"].strip().lower().replace("+", "")
            table[(row["data"].strip().lower(), size, algo, family)] = {
                "dense": ((float(row["dense_mean"]) - ref.random) * scale, float(row["dense_std"]) * scale),
                "sparse": ((float(row["sparse_mean"]) - ref.random) * scale, float(row["sparse_std"]) * scale),
                "table": row["table"],
            }
    return table


# ----------------------------------------------------------------------------- tables


def format_mean_std(mean: float, std: float, digits: int = 1) -> str:
    return MISSING if not np.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def comparison_cell(dense: Sequence[float], sparse: Sequence[float], digits: int = 1, latex: bool = False) -> str:
    """"dense mean ± std → sparse mean ± std" with ▲ (sparse better) / ▼ (worse); std over seeds, ddof=0.

    Better/worse compares the means as shown (rounded to ``digits``): no marker when they read the same.
    """
    d_mean, d_std, d_n = mean_std(dense)
    s_mean, s_std, s_n = mean_std(sparse)
    return _comparison_text(d_mean, d_std, s_mean, s_std, digits, latex)


def _comparison_text(d_mean, d_std, s_mean, s_std, digits=1, latex=False) -> str:
    if np.isfinite(d_mean) and np.isfinite(s_mean):  # compare what is shown: equal when rounded = no marker
        d_mean, s_mean = (float(f"{d_mean:.{digits}f}"), float(f"{s_mean:.{digits}f}"))
    if latex:
        d = MISSING if not np.isfinite(d_mean) else f"${d_mean:.{digits}f} \\pm {d_std:.{digits}f}$"
        s = MISSING if not np.isfinite(s_mean) else f"${s_mean:.{digits}f} \\pm {s_std:.{digits}f}$"
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


def _cells(runs: Sequence[Run]) -> dict[tuple, list[Run]]:
    cells = defaultdict(list)
    for run in runs:
        cells[run.cell].append(run)
    for members in cells.values():
        members.sort(key=lambda r: r.seed)
    return cells


def _values(runs: Sequence[Run] | None, metric: str) -> list[float]:
    return [getattr(r, metric) for r in runs or []]


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
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
    cells = _cells(runs)
    out = {}
    for section in _ordered({r.section for r in runs}, KIND_ORDER):
        in_section = [r for r in runs if r.section == section]
        kind = in_section[0].kind
        families = _ordered({r.family for r in in_section}, tuple(FAMILY_NAMES))
        header = ["Size", "Algorithm", *[_family_name(f) for f in families]]
        md_rows, tex_rows, raw = [], [], {}
        for size in _ordered_sizes({r.size for r in in_section}):
            first = True
            for algo in _ordered({r.algo for r in in_section if r.size == size}, tuple(ALGO_NAMES)):
                variants = {r.variant for r in in_section if r.size == size and r.algo == algo}
                sparse_name = _sparse_variant(variants)
                if DENSE not in variants and sparse_name is None:
                    continue
                md, tex = [], []
                for family in families:
                    dense = _values(cells.get((section, algo, size, family, DENSE)), metric)
                    sparse = _values(cells.get((section, algo, size, family, sparse_name)), metric)
                    text = comparison_cell(dense, sparse, digits)
                    seeds = (len(dense), len(sparse))
                    if seeds[0] != seeds[1] and dense and sparse:
                        text += f" (n={seeds[0]}/{seeds[1]})"
                    raw[(size, algo, family)] = text
                    md.append(text)
                    tex.append(comparison_cell(dense, sparse, digits, latex=True))
                size_text = _count_label(size) if first else ""
                md_rows.append([size_text, _algo_name(algo), *md])
                tex_rows.append([size_text, _latex_escape(_algo_name(algo)), *tex])
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
                        md_rows.append(["", f"*paper {_algo_name(algo)}*", *md_p])
                        tex_rows.append(["", f"\\textit{{paper {_latex_escape(_algo_name(algo))}}}", *tex_p])
        if not md_rows:
            continue
        what = {"final_return": "final return", "late_score": "normalised score over the last 20\\% of training"}.get(
            metric, "final normalised score")
        caption = (
            f"{section} data: {what}, without sparsity $\\rightarrow$ with Sparse-Reg, mean $\\pm$ std over seeds; "
            "improvements in blue, losses in red."
        )
        out[section] = {
            "markdown": _markdown_table(header, md_rows),
            "latex": _latex_table(header, tex_rows, caption, f"tab:{_slug(section, metric)}"),
            "cells": raw,
        }
    return out


def variant_tables(runs: Sequence[Run], digits: int = 1) -> dict[str, dict[str, str]]:
    """Per section with variants besides dense/sparse: normalised score per variant (best in bold)."""
    cells = _cells(runs)
    out = {}
    for section in _ordered({r.section for r in runs}, KIND_ORDER):
        in_section = [r for r in runs if r.section == section]
        variants = _ordered_variants({r.variant for r in in_section})
        if set(variants) <= {DENSE, *SPARSE_ALIASES}:
            continue
        header = ["Size", "Algorithm", "Task", *variants]
        md_rows, tex_rows = [], []
        keys = sorted({(r.size, r.algo, r.family) for r in in_section},
                      key=lambda k: (k[0] is None, k[0] or 0, _algo_rank(k[1]), k[1], _family_rank(k[2]), k[2]))
        for size, algo, family in keys:
            stats = [mean_std(_values(cells.get((section, algo, size, family, v)), "final_score")) for v in variants]
            finite = [m for m, _, n in stats if n]
            best = max(finite) if finite else None
            md, tex = [], []
            for m, s, n in stats:
                text = format_mean_std(m, s, digits) if n else MISSING
                md.append(f"**{text}**" if n and m == best and len(finite) > 1 else text)
                tex_text = f"${m:.{digits}f} \\pm {s:.{digits}f}$" if n else MISSING
                tex.append(f"\\textbf{{{tex_text}}}" if n and m == best and len(finite) > 1 else tex_text)
            md_rows.append([_count_label(size), _algo_name(algo), _family_name(family), *md])
            tex_rows.append([_count_label(size), _latex_escape(_algo_name(algo)), _family_name(family), *tex])
        caption = f"{section} data: final normalised score per variant, mean $\\pm$ std over seeds; best in bold."
        spec_header = ["Size", "Algorithm", "Task", *variants]
        out[section] = {
            "markdown": _markdown_table(header, md_rows),
            "latex": _latex_table(spec_header, tex_rows, caption, f"tab:{_slug(section, 'variants')}"),
        }
    return out


def mse_summary(run: Run) -> dict | None:
    """A run's action MSE: final training and validation MSE, and the lowest validation MSE and
    the step it was reached at (where a rising validation MSE starts: the overfitting point)."""
    rows = [(_as_float(h.get("step")), _as_float(h.get("train_mse")), _as_float(h.get("validation_mse")))
            for h in run.history]
    rows = [r for r in rows if np.isfinite(r[0]) and np.isfinite(r[1]) and np.isfinite(r[2])]
    if not rows:
        return None
    lowest = min(rows, key=lambda r: r[2])  # the first step, on ties
    return {"final_train_mse": rows[-1][1], "final_validation_mse": rows[-1][2],
            "lowest_validation_mse": lowest[2], "lowest_at": int(lowest[0])}


def mse_tables(runs: Sequence[Run], algos: Sequence[str] = ("bc",)) -> dict[str, str]:
    """Per section: one Markdown row per (size, algorithm, task, variant) of ``algos`` with the
    mean ± std over seeds of the final training and validation action MSE and of the lowest
    validation MSE, and the step of each seed's lowest (paper Figures 4, 8 and 9 as numbers)."""
    cells = _cells([r for r in runs if r.algo in algos])
    out = {}
    for section in _ordered({key[0] for key in cells}, KIND_ORDER):
        keys = sorted((k for k in cells if k[0] == section),
                      key=lambda k: (k[2] is None, k[2] or 0, _algo_rank(k[1]), k[1], _family_rank(k[3]), k[3],
                                     _variant_rank(k[4]), k[4]))
        rows = []
        for _, algo, size, family, variant in keys:
            members = cells[(section, algo, size, family, variant)]
            summaries = [m for m in map(mse_summary, members) if m is not None]
            if not summaries:
                continue

            def stat(name: str) -> str:
                mean, std, _ = mean_std(m[name] for m in summaries)
                return f"{mean:.4f} ± {std:.4f}"

            rows.append([_count_label(size), _algo_name(algo), _family_name(family), variant,
                         stat("final_train_mse"), stat("final_validation_mse"), stat("lowest_validation_mse"),
                         ", ".join(_count_label(m["lowest_at"]) for m in summaries)])
        if rows:
            out[section] = _markdown_table(["Size", "Algorithm", "Task", "Variant", "train MSE (final)",
                                            "validation MSE (final)", "lowest validation MSE",
                                            "lowest at (per seed)"], rows)
    return out


def iqm_estimates(runs: Sequence[Run], reps: int = 2000, seed: int = 0) -> list[dict]:
    """IQM of final normalised scores with stratified-bootstrap 95% CIs.

    One estimate per (section, algo, size, variant), strata = tasks; plus size "all" with strata
    = (size, task) pairs when there are several sizes.
    """
    groups: dict[tuple, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    pooled: dict[tuple, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if np.isfinite(run.final_score):
            groups[(run.section, run.algo, run.size, run.variant)][(run.family,)].append(run.final_score)
            pooled[(run.section, run.algo, run.variant)][(run.size, run.family)].append(run.final_score)
    for (section, algo, variant), strata in pooled.items():
        if len({size for size, _ in strata}) > 1:  # an "all sizes" estimate only when it differs
            groups[(section, algo, "all", variant)] = strata
    estimates = []
    for (section, algo, size, variant), strata in groups.items():
        point, lo, hi = stratified_bootstrap_ci(list(strata.values()), reps=reps, seed=seed)
        estimates.append({
            "section": section, "algo": algo, "size": size, "variant": variant, "iqm": point, "ci_low": lo,
            "ci_high": hi, "n_scores": sum(len(v) for v in strata.values()), "n_tasks": len(strata),
        })
    return estimates


# ----------------------------------------------------------------------------- curves


def _curve(runs: Sequence[Run], column: str, source: str = "history") -> dict[float, list[float]]:
    by_step = defaultdict(list)
    for run in runs:
        for row in getattr(run, source):
            value = _as_float(row.get(column))
            if np.isfinite(value):
                by_step[float(row["step"])].append(value)
    return by_step


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _band(by_step: Mapping[float, list[float]], label: str, color: str | None, linestyle: str = "-"):
    from .plots import Series

    steps = sorted(by_step)
    stats = [_mean_se(by_step[s]) for s in steps]
    y = np.array([m for m, _, _ in stats])
    se = np.array([e for _, e, _ in stats])
    return Series(label, steps, y, y - se, y + se, color, linestyle)


def _aggregate_band(per_task: Sequence[Mapping[float, list[float]]], label: str, color: str | None):
    """Mean over tasks of the task means, SE = sqrt(sum_t var_t / n_t) / T, at steps common to all tasks."""
    from .plots import Series

    per_task = [t for t in per_task if t]
    if not per_task:
        return None
    steps = sorted(set.intersection(*(set(t) for t in per_task)))
    y, se = [], []
    for step in steps:
        stats = [_mean_se(t[step]) for t in per_task]
        y.append(np.mean([m for m, _, _ in stats]))
        se.append(math.sqrt(sum(e**2 for _, e, _ in stats)) / len(stats))
    y, se = np.asarray(y), np.asarray(se)
    return Series(label, steps, y, y - se, y + se, color)


# ----------------------------------------------------------------------------- the report


@dataclass
class Item:
    """One entry of index.md: a figure or a table file, with its caption."""

    heading: str
    path: Path
    caption: str
    inline: str | None = None  # Markdown shown in index.md (tables)


def write_report(
    runs_dir: str | Path,
    out_dir: str | Path,
    paper_csv: str | Path | None = None,
    *,
    include_paper: bool = True,
    reps: int = 2000,
    seed: int = 0,
    mse_algos: Sequence[str] = ("bc",),
) -> Path:
    """Write tables, figures and ``index.md`` for every run under ``runs_dir``; returns the index path.

    paper_csv: the paper's Table 1/4 CSV (default: the copy shipped with the package);
    ``include_paper=False`` leaves the paper's numbers out. ``reps``/``seed``: bootstrap
    replicates and seed (the report is deterministic for a given seed). ``mse_algos``:
    algorithms that get train/validation MSE figures (the paper shows them for BC).
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    collection = collect_runs(runs_dir, exclude=out_dir)
    runs = collection.runs
    for sub in ("tables", "figures"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    paper = load_paper_table(paper_csv or PAPER_CSV) if include_paper else {}
    colors = variant_colors({r.variant for r in runs})
    cells = _cells(runs)

    items = _table_items(runs, out_dir / "tables", paper)
    items += _mse_table_items(runs, out_dir / "tables", mse_algos)
    estimates = iqm_estimates(runs, reps=reps, seed=seed)
    if estimates:
        items.append(_write_iqm_tables(estimates, out_dir / "tables", reps))
    for group in _figure_groups(runs):
        items += _curve_items(group, cells, colors, out_dir / "figures")
        items += _final_score_items(group, cells, colors, out_dir / "figures")
        if group.algo in mse_algos:
            items += _mse_items(group, cells, colors, out_dir / "figures")
            items += _cell_comparison_items(group, cells, colors, out_dir / "figures")
        items += _mask_items(group, out_dir / "figures")
    items += _iqm_items(estimates, colors, out_dir / "figures", reps)

    index = out_dir / INDEX_FILE
    index.write_text(_index_text(runs_dir, out_dir, collection, items))
    return index


def _table_items(runs: Sequence[Run], directory: Path, paper: Mapping[tuple, dict]) -> list[Item]:
    items = []
    _write_final_scores(runs, directory / "final_scores.csv")
    for metric, name, what in (("final_score", "normalized_score", "final normalised score"),
                               ("final_return", "final_return", "final return"),
                               ("late_score", "late_normalized_score", "late normalised score")):
        tables = comparison_tables(runs, metric, paper)
        if not tables:
            continue
        md = "\n\n".join(f"### {section}\n\n{t['markdown']}" for section, t in tables.items())
        tex = "% needs \\usepackage{booktabs,xcolor,graphicx}\n" + "\n\n".join(t["latex"] for t in tables.values())
        (directory / f"{name}.md").write_text(f"# {what}: dense → Sparse-Reg\n\n{md}\n")
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
    variants = variant_tables(runs)
    if variants:
        md = "\n\n".join(f"### {section}\n\n{t['markdown']}" for section, t in variants.items())
        (directory / "variants.md").write_text(f"# Final normalised score per variant\n\n{md}\n")
        (directory / "variants.tex").write_text(
            "% needs \\usepackage{booktabs,graphicx}\n" + "\n\n".join(t["latex"] for t in variants.values()) + "\n"
        )
        items.append(Item("Tables", directory / "variants.md",
                          "Final normalised score of every variant (mean ± std over seeds; best of a row in bold). "
                          "LaTeX: [variants.tex](tables/variants.tex).", inline=md))
    return items


def _mse_table_items(runs: Sequence[Run], directory: Path, algos: Sequence[str]) -> list[Item]:
    tables = mse_tables(runs, algos)
    if not tables:
        return []
    md = "\n\n".join(f"### {section}\n\n{table}" for section, table in tables.items())
    (directory / "action_mse.md").write_text(f"# Action MSE: training vs validation\n\n{md}\n")
    return [Item("Tables", directory / "action_mse.md",
                 "MSE between the policy's and the dataset's actions on the training set and on held-out "
                 "validation episodes at the last evaluation, and the lowest validation MSE of the run, mean ± std "
                 "(ddof=0) over seeds; 'lowest at': the step of each seed's lowest validation MSE. A low final "
                 "training MSE with a validation MSE well above its lowest is overfitting (paper Figures 4, 8, 9).",
                 inline=md)]


@dataclass
class _Group:
    """The runs of one (section, algorithm): one figure of each kind."""

    section: str
    algo: str
    runs: list[Run]
    sizes: list[int | None]
    families: list[str]
    variants: list[str]

    @property
    def label(self) -> str:
        return f"{_algo_name(self.algo)}, {self.section} data"

    def filename(self, prefix: str, *extra) -> str:
        return "_".join([prefix, *(_slug(part) for part in (self.section, self.algo, *extra))]) + ".png"


def _figure_groups(runs: Sequence[Run]) -> list[_Group]:
    groups = []
    for section in _ordered({r.section for r in runs}, KIND_ORDER):
        in_section = [r for r in runs if r.section == section]
        for algo in _ordered({r.algo for r in in_section}, tuple(ALGO_NAMES)):
            mine = [r for r in in_section if r.algo == algo]
            groups.append(_Group(section, algo, mine, _ordered_sizes({r.size for r in mine}),
                                 _ordered({r.family for r in mine}, tuple(FAMILY_NAMES)),
                                 _ordered_variants({r.variant for r in mine})))
    return groups


def _has_panels(grid) -> bool:
    return any(panel is not None for row in grid for panel in row)


def _curve_items(group: _Group, cells, colors, directory: Path) -> list[Item]:
    """Normalised score during training: rows sizes, columns tasks (+ the aggregate over tasks)."""
    from .plots import plot_band_grid

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
            row.append((f"{_family_name(family)}, {_count_label(size)}", series) if series else None)
        if len(group.families) > 1:
            aggregate = [s for v in group.variants
                         if (s := _aggregate_band(per_variant_tasks.get(v, []), v, colors[v])) is not None]
            row.append((f"aggregate over tasks, {_count_label(size)}", aggregate) if aggregate else None)
        grid.append(row)
    if not _has_panels(grid):
        return []
    path = plot_band_grid(grid, directory / group.filename("curves"),
                          title=f"{group.label}: normalised score during training", ylabel="normalised score")
    return [Item("Learning curves", path,
                 f"{group.label}: normalised score at each evaluation, mean ± standard error over seeds (shaded); "
                 "rows are dataset sizes; the last column averages the task means (standard error combined over "
                 "tasks, steps common to all tasks).")]


def _final_score_items(group: _Group, cells, colors, directory: Path) -> list[Item]:
    """Quantile bars of the final normalised scores: panels tasks, groups sizes, bars variants."""
    from .plots import plot_quantile_bars

    panels = []
    for family in group.families:
        groups = {}
        for size in group.sizes:
            groups[_count_label(size)] = {
                v: _values(members, "final_score") for v in group.variants
                if (members := cells.get((group.section, group.algo, size, family, v)))
            }
        panels.append((_family_name(family), groups))
    if not any(g for _, groups in panels for g in groups.values()):
        return []
    path = plot_quantile_bars(panels, directory / group.filename("final_scores"), colors,
                              title=f"{group.label}: final normalised score", xlabel="training transitions",
                              ylabel="normalised score")
    return [Item("Final scores", path,
                 f"{group.label}: final normalised score per seed (dots); bars span the 25th-75th percentile over "
                 "seeds, black tick = median, whiskers = min-max.")]


def _mse_items(group: _Group, cells, colors, directory: Path) -> list[Item]:
    """Train (dashed) and validation (solid) action MSE: rows tasks, columns sizes, colours variants."""
    from .plots import plot_band_grid

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
            row.append((f"{_family_name(family)}, {_count_label(size)}", series) if series else None)
        grid.append(row)
    if not _has_panels(grid):
        return []
    path = plot_band_grid(grid, directory / group.filename("mse"),
                          title=f"{group.label}: action MSE, training (dashed) vs validation (solid)",
                          ylabel="action MSE", logy=True)
    return [Item(f"{_algo_name(group.algo)} train / validation MSE", path,
                 f"{group.label}: MSE between the policy's actions and the dataset's on the training set (dashed) "
                 "and on held-out validation episodes (solid), mean ± standard error over seeds; a falling training "
                 "loss with a rising validation loss is overfitting (paper Figures 4, 8, 9).")]


def _cell_comparison_items(group: _Group, cells, colors, directory: Path) -> list[Item]:
    """For each task and size run with three or more variants (e.g. dense, Sparse-Reg and L1):
    score, training MSE and validation MSE side by side, the layout of the paper's Figure 4."""
    from .plots import plot_band_grid

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
            where = f"{group.section} {_family_name(family)}, {_count_label(size)}"
            path = plot_band_grid(
                [row], directory / group.filename("cell", family, size),
                title=f"{_algo_name(group.algo)} on {where}: {', '.join(members)}", logy=[False, True, True],
            )
            items.append(Item(
                f"{_algo_name(group.algo)} variants side by side", path,
                f"{_algo_name(group.algo)}, {where}: normalised score, action MSE on the training set and on held-out "
                "validation episodes for every variant of this cell (mean ± standard error over seeds; the layout "
                "of the paper's Figure 4).",
            ))
    return items


def _mask_items(group: _Group, directory: Path) -> list[Item]:
    """Per size and variant with masks.csv: columns networks, rows sparsity per layer / fraction changed."""
    items = []
    for size in group.sizes:
        for v in group.variants:
            members = [r for r in group.runs if r.size == size and r.variant == v and r.masks]
            if not members:
                continue
            title = f"{group.label}, {_count_label(size)}, {v}"
            path = _plot_masks(members, directory / group.filename("masks", _count_label(size), v), title)
            items.append(Item("Masks", path,
                              f"{title}: fraction of each layer's weights that the mask prunes (top) and fraction of "
                              f"the mask's entries that changed at each refresh (bottom), mean ± std over "
                              f"{len(members)} runs ({len({r.family for r in members})} task(s) x seeds); 'total' is "
                              "the whole network; the first refresh (against the initial mask) is left out of "
                              "'changed' (paper Figure 5a)."))
    return items


def _iqm_items(estimates: list[dict], colors, directory: Path, reps: int) -> list[Item]:
    """Interval estimates per section: panels sizes (+ all sizes), rows algorithm x variant."""
    from .plots import plot_interval_estimates

    items = []
    for section in _ordered({e["section"] for e in estimates}, KIND_ORDER):
        by_size = defaultdict(list)
        for e in estimates:
            if e["section"] == section:
                by_size[e["size"]].append(e)
        sizes = _ordered_sizes([s for s in by_size if s != "all"]) + (["all"] if "all" in by_size else [])
        panels = []
        for size in sizes:
            entries = sorted(by_size[size], key=lambda e: (_algo_rank(e["algo"]), e["algo"],
                                                           _variant_rank(e["variant"]), e["variant"]))
            panels.append(("all sizes" if size == "all" else _count_label(size),
                           [(f"{_algo_name(e['algo'])} {e['variant']}", e["iqm"], e["ci_low"], e["ci_high"],
                             colors.get(e["variant"])) for e in entries]))
        path = plot_interval_estimates(panels, directory / f"iqm_{_slug(section)}.png",
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
    from .plots import plot_band_grid

    networks = _ordered({row["network"] for r in runs for row in r.masks}, ("actor", "critic", "value"))
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
            value = _as_float(row.get(column))
            if np.isfinite(value):
                by_step[float(row["step"])].append(value)
    return by_step


def _spread_series(by_step: Mapping[float, list[float]], label: str, color: str, style: str):
    """Mean ± std (ddof=0) over runs at each step."""
    from .plots import Series

    steps = sorted(by_step)
    mean = np.array([np.mean(by_step[s]) for s in steps])
    std = np.array([np.std(by_step[s]) for s in steps])
    return Series(label, steps, mean, mean - std, mean + std, color, style)


def _write_final_scores(runs: Sequence[Run], path: Path) -> None:
    columns = ["section", "algo", "kind", "family", "size", "variant", "seed", "steps", "final_return",
               "final_normalized_score", "path"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in sorted(runs, key=lambda r: (r.section, r.algo, r.size or 0, r.family, r.variant, r.seed)):
            writer.writerow([r.section, r.algo, r.kind, r.family, r.size, r.variant, r.seed, r.steps,
                             r.final_return, r.final_score, str(r.path)])


def _write_iqm_tables(estimates: list[dict], directory: Path, reps: int) -> Item:
    with open(directory / "iqm.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(estimates[0]))
        writer.writeheader()
        writer.writerows(estimates)
    parts = []
    for section in _ordered({e["section"] for e in estimates}, KIND_ORDER):
        mine = [e for e in estimates if e["section"] == section]
        sizes = _ordered_sizes([e["size"] for e in mine if e["size"] != "all"])
        sizes += ["all"] if any(e["size"] == "all" for e in mine) else []
        keys = sorted({(e["algo"], e["variant"]) for e in mine},
                      key=lambda k: (_algo_rank(k[0]), k[0], _variant_rank(k[1]), k[1]))
        lookup = {(e["algo"], e["variant"], e["size"]): e for e in mine}
        rows = []
        for algo, variant in keys:
            row = [_algo_name(algo), variant]
            for size in sizes:
                e = lookup.get((algo, variant, size))
                row.append(MISSING if e is None else f"{e['iqm']:.1f} [{e['ci_low']:.1f}, {e['ci_high']:.1f}] (n={e['n_scores']})")
            rows.append(row)
        header = ["Algorithm", "Variant", *[_count_label(s) if s != "all" else "all sizes" for s in sizes]]
        parts.append(f"### {section}\n\n{_markdown_table(header, rows)}")
    md = "\n\n".join(parts)
    (directory / "iqm.md").write_text(f"# IQM of final normalised scores, 95% stratified bootstrap CI\n\n{md}\n")
    return Item("Tables", directory / "iqm.md",
                f"IQM [95% CI] of the final normalised scores over tasks and seeds (n = number of scores); "
                f"stratified bootstrap with {reps} replicates, percentile interval. CSV: [iqm.csv](tables/iqm.csv).",
                inline=md)


def _compute_text(runs: list[Run]) -> str:
    """Which code made the runs and what they cost (from their summaries; older runs lack both)."""
    versions = Counter(r.summary["code_version"] for r in runs if r.summary.get("code_version"))
    walls = [float(r.summary["wall_seconds"]) for r in runs if r.summary.get("wall_seconds") is not None]
    parts = []
    if versions:
        listed = ", ".join(f"`{v}` × {n}" for v, n in versions.most_common())
        unknown = len(runs) - sum(versions.values())
        parts.append(f"Made by the code at {listed} (commit × runs)"
                     + (f"; {unknown} run(s) do not record it." if unknown else "."))
    if walls:
        parts.append(f"Training wall time, summed over the {len(walls)} run(s) that record it: "
                     f"{format_duration(sum(walls), 1)} (median {format_duration(float(np.median(walls)), 1)} per run).")
    return " ".join(parts)


def _index_text(runs_dir: Path, out_dir: Path, collection: Collection, items: list[Item]) -> str:
    runs = collection.runs
    n_cells = len({r.cell for r in runs})
    lines = [
        "# Sparse-Reg sweep report",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} from `{runs_dir}`: {len(runs)} finished run(s) in "
        f"{n_cells} cell(s) (data, algorithm, size, task, variant), {len(collection.skipped)} skipped. "
        "Per-run numbers: [final_scores.csv](tables/final_scores.csv).",
        "",
    ]
    compute = _compute_text(runs)
    if compute:
        lines += [compute, ""]
    if runs:
        lines += ["Cells and seeds:", ""]
        counts = defaultdict(list)
        for r in runs:
            counts[r.cell].append(r.seed)
        header = ["Data", "Algorithm", "Size", "Task", "Variant", "Seeds"]
        rows = [[c[0], _algo_name(c[1]), _count_label(c[2]), _family_name(c[3]), c[4], ", ".join(map(str, sorted(s)))]
                for c, s in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0, kv[0][3], kv[0][4]))]
        lines += _collapsible(f"{len(rows)} cells", _markdown_table(header, rows), len(rows) > 30)
        references = defaultdict(set)
        for r in runs:
            ref = r.summary.get("reference_scores")
            if ref:
                references[r.family].add((round(float(ref["random"]), 3), round(float(ref["expert"]), 3)))
        if references:
            lines += ["Normalised score = 100 × (return − random) / (expert − random), with each run's own "
                      "reference scores (as stored in its summary; D4RL's for comparison):", ""]
            for family, refs in sorted(references.items()):
                d4rl = D4RL_REFERENCE_SCORES.get(family)
                ours = "; ".join(f"random {a:g} / expert {b:g}" for a, b in sorted(refs))
                theirs = f" (D4RL: {d4rl.random:g} / {d4rl.expert:g})" if d4rl else ""
                lines.append(f"- {_family_name(family)}: {ours}{theirs}")
            lines.append("")
    if collection.skipped:
        lines += ["## Skipped", ""]
        lines += [f"- `{_relative(path, runs_dir)}`: {reason}" for path, reason in collection.skipped]
        lines.append("")
    headings = []
    for item in items:
        if item.heading not in headings:
            headings.append(item.heading)
    for heading in headings:
        lines += [f"## {heading}", ""]
        entries = []
        mine = [i for i in items if i.heading == heading]
        for item in mine:
            link = item.path.relative_to(out_dir).as_posix()
            if item.path.suffix == ".png":
                entries += [f"![{item.path.stem}]({link})", "", f"*{item.caption}*", ""]
            else:
                entries += [f"[{link}]({link}): {item.caption}", ""]
                if item.inline:
                    entries += [item.inline, ""]
        lines += _collapsible(f"{len(mine)} figures", "\n".join(entries), heading == "Masks" and len(mine) > 4)
    if not runs:
        lines += ["No finished runs found.", ""]
    return "\n".join(lines)


def _collapsible(summary: str, body: str, collapse: bool) -> list[str]:
    """Markdown lines; long blocks go inside <details> (blank lines keep the Markdown inside rendered)."""
    if not collapse:
        return [body, ""]
    return [f"<details><summary>{summary}</summary>", "", body, "", "</details>", ""]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- command line


def add_report_arguments(parser) -> None:
    """Arguments of ``sparse-reg report`` (argparse parser)."""
    parser.add_argument("runs_dir", help="directory searched (recursively) for run directories with summary.json")
    parser.add_argument("--out", default=None, help="report directory (default: RUNS_DIR/report)")
    parser.add_argument("--paper-csv", default=None, help="the paper's tables as CSV (default: the packaged copy)")
    parser.add_argument("--no-paper", action="store_true", help="leave the paper's numbers out")
    parser.add_argument("--bootstrap-reps", type=int, default=2000, help="bootstrap replicates for the IQM CIs")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def report_command(args) -> int:
    """``sparse-reg report RUNS_DIR --out DIR``: write the report and print where index.md is."""
    out = Path(args.out) if getattr(args, "out", None) else Path(args.runs_dir) / "report"
    index = write_report(args.runs_dir, out, getattr(args, "paper_csv", None),
                         include_paper=not getattr(args, "no_paper", False),
                         reps=getattr(args, "bootstrap_reps", 2000), seed=getattr(args, "seed", 0))
    print(next((line for line in index.read_text().splitlines() if line.startswith("Generated")), ""))
    print(f"report: {index}")
    return 0
