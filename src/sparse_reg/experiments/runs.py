"""The runs a report covers: finding and loading them, their cells and labels, and the paper's numbers.

:func:`collect_runs` finds every finished run under a directory (any depth: a directory with a
``summary.json``) and groups them into cells (section = data kind [and budget], algorithm, size,
task, variant) x seeds. Variants come from the run's configuration (:func:`run_variant`), or
from a ``tags.json`` with a ``"variant"`` key next to ``summary.json`` when the sweep wrote one.

The paper's CSV is shipped as ``paper_tables.csv`` next to this module. It is a copy of
``/work/shared/paper/paper_tables.csv`` with three signs restored from the paper's LaTeX (Table 1,
HalfCheetah, dense: TD3+BC 5k −260.51, AWAC 5k −158.71, AWAC 10k −484.61; the CSV had lost the
minus signs).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..data.reference import D4RL_REFERENCE_SCORES, env_family
from ..sparsity import AUTO, parse_sparsity
from ..training.config import RunConfig
from ..training.logging import MASKS_FILE, METRICS_FILE, read_rows
from ..training.run_directory import CHECKPOINT_FILE, CONFIG_FILE, SUMMARY_FILE
from .statistics import as_float, late_mean

TAGS_FILE = "tags.json"
PAPER_CSV = Path(__file__).with_name("paper_tables.csv")

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
# A regulariser's short name in variant names, from the RunConfig field that switches it on.
REGULARISER_TAGS = {f.name: f.metadata["variant"] for f in dataclasses.fields(RunConfig) if f.metadata.get("variant")}


# ----------------------------------------------------------------------------- runs and cells


def run_variant(config: Mapping[str, Any], tags: Mapping[str, Any] | None = None) -> str:
    """The variant a run belongs to: ``tags["variant"]`` if given, else derived from its config.

    "dense" (sparsity 0) or "sparse" (sparsity "auto", the paper's rule); an explicit level
    is named by it, "sparse95", "sparse75" (as the sweep's Table 3 / Figure 6 variants); "sfi"
    replaces "sparse" when masks are fixed at initialisation (``mask_until == 0``), and a mask
    scorer other than SNIP is appended ("sparse-random", "sparse-magnitude"). Then
    "+"-joined regularisers: "l1", "dropout", "wd" (weight decay),
    "layernorm", "specnorm", "hd64" (hidden dims other than 256x256) and ``key=value`` for
    algorithm options; e.g. "dense+l1", "sparse", "hd64".
    """
    if tags and tags.get("variant"):
        return str(tags["variant"])
    parts = []
    level = parse_sparsity(config.get("sparsity", 0.0))
    is_auto = level == AUTO
    if is_auto or level:
        name = "sfi" if config.get("mask_until") == 0 else SPARSE
        name = name if is_auto else f"{name}{100 * level:g}"
        scorer = config.get("mask_scorer", "snip")
        parts.append(name if scorer == "snip" else f"{name}-{scorer}")
    parts += [tag for name, tag in REGULARISER_TAGS.items() if config.get(name)]  # non-zero or true
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
    """One finished run, placed in its cell.

    ``size`` is the cell's data budget: the sweep grid's size (``tags.json``) when there is one,
    else the run's training size. They differ for an early-stopping variant, which trains on part
    of the cell's data and validates on the rest (e.g. 4k + 1k of a 5k cell).

    The scores are those of the policy the run delivers: its last evaluation, or, for a run made
    with ``keep_lowest_validation_mse`` (early stopping), the evaluation of the checkpoint it kept.
    """

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
    def train_size(self) -> int | None:
        size = self.config.get("size", self.summary.get("size"))
        return None if size is None else int(size)

    @property
    def kept(self) -> dict | None:
        """The evaluation of the checkpoint an early-stopping run kept (step, return_mean,
        normalized_score), or None for a run that delivers its last parameters."""
        kept = self.summary.get("lowest_validation_mse")
        if self.config.get("keep_lowest_validation_mse") and isinstance(kept, dict) and "step" in kept:
            return kept
        return None

    @property
    def final_return(self) -> float:
        if self.kept:
            return as_float(self.kept.get("return_mean"))
        return _number(self.summary.get("final_return"), self.history, "return_mean")

    @property
    def final_score(self) -> float:
        if self.kept:
            return as_float(self.kept.get("normalized_score"))
        return _number(self.summary.get("final_normalized_score"), self.history, "normalized_score")

    @property
    def late_score(self) -> float:
        """Mean normalised score of the evaluations in the last 20% of training.

        Steadier than the final evaluation alone, whose few episodes can swing widely from
        one evaluation to the next on small data. An early-stopping run's policy stopped
        changing at the checkpoint it kept: its late score is that checkpoint's score.
        """
        if self.kept:
            return self.final_score
        evaluations = [(as_float(h.get("step")), as_float(h.get("normalized_score"))) for h in self.history]
        return late_mean(evaluations, self.steps)

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
    for marker in (CONFIG_FILE, METRICS_FILE, TAGS_FILE, CHECKPOINT_FILE):
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
            found.skipped.append((path.parent, f"not finished: damaged {SUMMARY_FILE} ({error}); "
                                               "train --resume writes it again"))
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
            found.skipped.append((run.path, f"same cell and seed as {relative_path(first.path, runs_dir)} ({how}); "
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
    axes = tags.get("axes")
    grid_size = axes.get("size") if isinstance(axes, dict) else None  # the cell's size, as the sweep's grid names it
    size = grid_size if grid_size is not None else config.get("size", summary.get("size"))
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
        run.section = run.kind if len(budgets[run.kind]) == 1 else f"{run.kind}, {count_label(run.steps)} steps"


def group_cells(runs: Sequence[Run]) -> dict[tuple, list[Run]]:
    cells = defaultdict(list)
    for run in runs:
        cells[run.cell].append(run)
    for members in cells.values():
        members.sort(key=lambda r: r.seed)
    return cells


def metric_values(runs: Sequence[Run] | None, metric: str) -> list[float]:
    return [getattr(r, metric) for r in runs or []]


def relative_path(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- labels and order


def count_label(n: int | None) -> str:
    if n is None:
        return "all"
    for scale, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= scale:
            return f"{n / scale:g}{suffix}"
    return str(n)


def algo_name(algo: str) -> str:
    return ALGO_NAMES.get(algo, algo.upper())


def family_name(family: str) -> str:
    return FAMILY_NAMES.get(family, family)


def ordered(values: Iterable, order: Sequence = ()) -> list:
    values = set(values)

    def key(v):
        return (order.index(v) if v in order else len(order), v is None, v if v is not None else 0)

    return sorted(values, key=key)


def ordered_sizes(values: Iterable[int | None]) -> list[int | None]:
    return sorted(set(values), key=lambda s: (s is None, s or 0))


def variant_rank(v: str) -> int:
    return VARIANT_ORDER.index(v) if v in VARIANT_ORDER else len(VARIANT_ORDER)


def algo_rank(a: str) -> int:
    return list(ALGO_NAMES).index(a) if a in ALGO_NAMES else len(ALGO_NAMES)


def family_rank(f: str) -> int:
    return list(FAMILY_NAMES).index(f) if f in FAMILY_NAMES else len(FAMILY_NAMES)


def ordered_variants(values: Iterable[str]) -> list[str]:
    return sorted(set(values), key=lambda v: (variant_rank(v), v))


def slug(*parts: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "_".join(str(p) for p in parts).lower()).strip("-")


def variant_colors(variants: Iterable[str]) -> dict[str, str]:
    """Stable colours: dense blue, sparse orange, L1 green (as in the paper), then the rest."""
    fixed = {"dense": "C0", "sparse": "C1", "spu": "C1", "l1": "C2", "dense+l1": "C2", "sfi": "C3"}
    colors, free = {}, [f"C{i}" for i in range(4, 10)] + ["#555555", "#a0522d", "#2e8b57", "#4682b4"]
    for variant in ordered_variants(variants):
        colors[variant] = fixed.get(variant) or free[len([v for v in colors if v not in fixed]) % len(free)]
    return colors


def sparse_variant(variants: Iterable[str]) -> str | None:
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
