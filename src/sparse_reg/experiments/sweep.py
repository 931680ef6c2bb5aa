"""Experiments as data: a TOML file per paper table or figure, expanded into runs and run.

A config (``configs/<name>.toml``, or any path) holds ``name``, ``title``, ``paper``,
``description``, a ``[base]`` of RunConfig fields, one or more ``[[grid]]`` cartesian products
(RunConfig field -> list of values, plus an optional ``variants = [...]`` restricting the named
variants of that grid), ``[variants.<name>]`` RunConfig overrides (dense, sparse, l1, ...),
``[budgets.paper]`` and ``[budgets.quick]`` (steps, seeds, eval_every, eval_episodes, optional
``cuts`` text and a ``[budgets.<b>.base]`` of extra overrides), and a ``[report]`` section for
the reporting code. See docs/experiments.md.

A run's config is built as RunConfig defaults < ``base`` < budget ``base`` < grid values <
variant < the budget's steps / eval_every / eval_episodes and the seed. It lives in
``RUNS/<experiment>/<cell-id>/seed_<s>``; ``tags.json`` next to its ``summary.json`` says which
experiment, cell, variant and grid values it belongs to, and ``RUNS/<experiment>/sweep.json``
lists the whole expanded sweep.

A sweep skips runs that have a ``summary.json``, resumes those with a checkpoint and no summary,
and records a failing run's traceback in its ``error.txt`` without stopping the others.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
import re
import shutil
import statistics
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..provenance import format_duration, machine, parse_count
from ..training.config import RunConfig
from ..training.parallel import Job, available_cores, run_all
from ..training.run_directory import CHECKPOINT_FILE, CONFIG_FILE, SUMMARY_FILE, RunFileError, is_finished, read_json

CONFIG_DIR = Path(__file__).with_name("configs")
BUDGETS = ("quick", "paper")
TAGS_FILE = "tags.json"
SWEEP_FILE = "sweep.json"
ERROR_FILE = "error.txt"
REUSED_KEY = "reused_from"  # in tags.json: the finished run a sweep copied instead of running it

BUDGET_OWNED = ("steps", "seed", "eval_every", "eval_episodes")  # set by the budget only
RUN_FIELDS = {f for f in RunConfig.__dataclass_fields__}
TOP_LEVEL_KEYS = {"name", "title", "paper", "description", "base", "grid", "variants", "budgets", "report"}
BUDGET_KEYS = {"steps", "seeds", "eval_every", "eval_episodes", "cuts", "base"}
CELL_ID_PLAIN_AXES = ("algo", "dataset", "size", "env", "subsample")  # the value alone names them
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Time estimates for `sparse-reg experiments list` and `--dry-run`, fitted to whole runs on this
# project's 2-core CPU, each process pinned to one core with another sweep on the other core (the
# fastest such run of each kind: IQL 30k steps 259 s and 300k steps 2241 s; AWAC (paper code) 30k
# 254 s; TD3+BC 30k 162 s; BC 100k 158 s): updates/s of one pinned process, start-up + data +
# compilation per run, and per evaluation a base cost plus a cost per episode. Paper-code variants
# run at their algorithm's speed.
PINNED_UPDATES_PER_S = {"bc": 900.0, "td3bc": 230.0, "awac": 145.0, "iql": 140.0}
DEFAULT_UPDATES_PER_S = 140.0
RUN_OVERHEAD_S = 30.0
EVAL_BASE_S, EVAL_PER_EPISODE_S = 1.0, 0.1
# The speeds above are for two hidden layers of 256 units, dense. Per-update cost of other widths:
# a fixed part plus the hidden-to-hidden matmul's (width/256)^2; and of sparse runs, which train
# their live units once the masks freeze. Fitted to the median per-step wall times of the committed
# 300k-step IQL and 100k-step BC runs: 128 units 0.19x (IQL) and 0.27x (BC) of 256, 64 units
# 0.07x and 0.16x; Sparse-Reg 0.60x (IQL) and 0.78x (BC) of dense.
WIDTH_FIXED_COST = 0.05
SPARSE_COST = 0.65


class ExperimentError(ValueError):
    """A config file that cannot be used (raised with the file's name in the message)."""


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class Budget:
    name: str
    steps: int
    seeds: tuple[int, ...]
    eval_every: int
    eval_episodes: int
    base: dict = field(default_factory=dict)
    cuts: str = ""


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    paper: str
    description: str
    source: Path
    base: dict
    grids: tuple[dict, ...]
    variants: dict[str, dict]
    budgets: dict[str, Budget]
    report: dict

    @property
    def config_file(self) -> str:
        """Where the config came from, as written into tags and manifests: a packaged config by its
        package path (the same in every checkout and install), any other file by its absolute path."""
        if self.source.parent == CONFIG_DIR.resolve():
            return f"sparse_reg/experiments/configs/{self.source.name}"
        return str(self.source)


@dataclass(frozen=True)
class Cell:
    """One point of the grid with one variant: every seed of it shares this config."""

    id: str
    variant: str | None
    axes: dict  # grid field -> value, in the grid's order
    overrides: dict  # the RunConfig fields this cell sets (base, grid values, variant)


@dataclass(frozen=True)
class SweepRun:
    experiment: str
    budget: str
    cell: Cell
    seed: int
    job: Job

    @property
    def out(self) -> Path:
        return self.job.out

    def tags(self, experiment: Experiment) -> dict:
        dataset = str(self.job.config.dataset)
        family, kind = _family_kind(dataset)
        return {
            "experiment": self.experiment,
            "title": experiment.title,
            "paper": experiment.paper,
            "budget": self.budget,
            "cell": self.cell.id,
            "variant": self.cell.variant,
            "seed": self.seed,
            "axes": self.cell.axes,
            "family": family,
            "kind": kind,
            "config_file": experiment.config_file,
        }


def list_experiments() -> list[str]:
    """Names of the packaged configs."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_experiment(spec: str | Path) -> Experiment:
    """A packaged config by name (``table1``) or a TOML file by path."""
    path = Path(spec)
    if path.suffix.lower() != ".toml" and len(path.parts) == 1:  # a bare name: a packaged config
        path = CONFIG_DIR / f"{spec}.toml"
        if not path.exists():
            raise ExperimentError(
                f"unknown experiment '{spec}': not one of {', '.join(list_experiments())} (or give a .toml path)"
            )
    if not path.is_file():
        raise FileNotFoundError(f"no experiment config at {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ExperimentError(f"{path}: not valid TOML: {error}") from None
    return _parse(data, path)


def _parse(data: dict, path: Path) -> Experiment:
    def fail(message: str):
        raise ExperimentError(f"{path.name}: {message}")

    unknown = set(data) - TOP_LEVEL_KEYS
    if unknown:
        fail(f"unknown key(s) {sorted(unknown)}; known: {sorted(TOP_LEVEL_KEYS)}")
    name = data.get("name") or path.stem
    if not isinstance(name, str) or not _NAME.match(name):
        fail(f"name must be letters, digits, '.', '_' or '-', got {name!r}")

    def run_fields(table: Any, where: str) -> dict:
        if not isinstance(table, dict):
            fail(f"{where} must be a table of RunConfig fields")
        bad = set(table) - RUN_FIELDS
        if bad:
            fail(f"{where}: unknown RunConfig field(s) {sorted(bad)}")
        owned = set(table) & set(BUDGET_OWNED)
        if owned:
            fail(f"{where}: {sorted(owned)} are set by the budget (steps, seeds, eval_every, eval_episodes)")
        return dict(table)

    base = run_fields(data.get("base", {}), "[base]")
    variants = {}
    for variant, overrides in (data.get("variants") or {}).items():
        if not _NAME.match(variant):
            fail(f"variant name {variant!r} must be letters, digits, '.', '_' or '-'")
        variants[variant] = run_fields(overrides, f"[variants.{variant}]")

    grids = data.get("grid")
    if isinstance(grids, dict):
        grids = [grids]
    if not grids or not isinstance(grids, list):
        fail("needs at least one [[grid]]")
    parsed_grids = []
    for i, grid in enumerate(grids):
        where = f"[[grid]] #{i + 1}"
        grid = dict(grid)
        names = grid.pop("variants", None)
        names = list(variants) if names is None else names
        missing = [v for v in names if v not in variants]
        if missing:
            fail(f"{where}: unknown variant(s) {missing}; defined: {sorted(variants)}")
        axes = run_fields(grid, where)
        for axis, values in axes.items():
            if not isinstance(values, list) or not values:
                fail(f"{where}: '{axis}' must be a non-empty list of values")
        parsed_grids.append({"axes": axes, "variants": list(names)})

    budgets = {}
    for budget_name, raw in (data.get("budgets") or {}).items():
        where = f"[budgets.{budget_name}]"
        bad = set(raw) - BUDGET_KEYS
        if bad:
            fail(f"{where}: unknown key(s) {sorted(bad)}; known: {sorted(BUDGET_KEYS)}")
        missing = {"steps", "seeds", "eval_every", "eval_episodes"} - set(raw)
        if missing:
            fail(f"{where}: missing {sorted(missing)}")
        seeds = raw["seeds"]
        if not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds):
            fail(f"{where}: seeds must be a non-empty list of distinct integers")
        budgets[budget_name] = Budget(
            budget_name, int(raw["steps"]), tuple(int(s) for s in seeds), int(raw["eval_every"]),
            int(raw["eval_episodes"]), run_fields(raw.get("base", {}), f"[budgets.{budget_name}.base]"),
            " ".join(str(raw.get("cuts", "")).split()),
        )
    for required in BUDGETS:
        if required not in budgets:
            fail(f"needs a [budgets.{required}] section")
    report = data.get("report", {})
    if not isinstance(report, dict):
        fail("[report] must be a table")
    return Experiment(
        name=name,
        title=str(data.get("title", name)),
        paper=str(data.get("paper", "")),
        description=" ".join(str(data.get("description", "")).split()),
        source=path.resolve(),
        base=base,
        grids=tuple(parsed_grids),
        variants=variants,
        budgets=budgets,
        report=report,
    )


# ----------------------------------------------------------------------------- expansion


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "all"
    text = str(value)
    if "/" in text or "\\" in text or text.endswith((".npz", ".hdf5", ".h5")):
        text = Path(text).stem  # a dataset file: its name is enough
    return text


def cell_id(axes: dict, variant: str | None) -> str:
    """Readable and path-safe: ``iql-halfcheetah-expert-v0-5000-sparse``; other axes as ``l10.001``."""
    parts = [_format_value(v) if k in CELL_ID_PLAIN_AXES else f"{k.replace('_', '')}{_format_value(v)}"
             for k, v in axes.items()]
    if variant:
        parts.append(variant)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)) or "run"


def cells(experiment: Experiment) -> list[Cell]:
    """Every cell of every grid, in file order; identical duplicates across grids are kept once."""
    result: dict[str, Cell] = {}
    for grid in experiment.grids:
        axes_names = list(grid["axes"])
        for values in itertools.product(*grid["axes"].values()):
            axes = dict(zip(axes_names, values))
            for variant in grid["variants"] or [None]:
                overrides = {**experiment.base, **axes, **(experiment.variants[variant] if variant else {})}
                cell = Cell(cell_id(axes, variant), variant, axes, overrides)
                previous = result.get(cell.id)
                if previous is not None and previous.overrides != cell.overrides:
                    raise ExperimentError(
                        f"{experiment.source.name}: two different cells share the id '{cell.id}' "
                        f"({previous.overrides} vs {cell.overrides})"
                    )
                result.setdefault(cell.id, cell)
    return list(result.values())


def run_config(experiment: Experiment, cell: Cell, budget: Budget, seed: int) -> RunConfig:
    values = {**experiment.base, **budget.base, **cell.axes}
    if cell.variant:
        values.update(experiment.variants[cell.variant])
    values.update(steps=budget.steps, eval_every=budget.eval_every, eval_episodes=budget.eval_episodes, seed=seed)
    if "hidden_dims" in values:
        values["hidden_dims"] = tuple(values["hidden_dims"])
    try:
        return RunConfig(**values)
    except (TypeError, ValueError) as error:
        raise ExperimentError(f"{experiment.source.name}: cell '{cell.id}' ({budget.name}): {error}") from None


def expand(experiment: Experiment, budget: str, runs_dir: str | Path) -> list[SweepRun]:
    """All runs of ``experiment`` under ``budget``: cells x seeds, in ``runs_dir/<name>/<cell>/seed_<s>``."""
    if budget not in experiment.budgets:
        raise ExperimentError(f"{experiment.name} has no budget '{budget}' (has: {', '.join(experiment.budgets)})")
    b = experiment.budgets[budget]
    root = Path(runs_dir) / experiment.name
    runs = []
    for cell in cells(experiment):
        for seed in b.seeds:
            config = run_config(experiment, cell, b, seed)
            runs.append(SweepRun(experiment.name, budget, cell, seed, Job(config, root / cell.id / f"seed_{seed}")))
    return runs


SELECT_KEYS = ("variant", "seed", "cell")  # besides the grid's own axes


def select(runs: list[SweepRun], only: Sequence[str]) -> list[SweepRun]:
    """The runs that match every ``KEY=VALUE[,VALUE...]`` filter (a run matches a filter when it
    matches any of its values).

    KEY is a grid axis (``dataset``, ``size``, ``algo``, ...), ``variant``, ``seed`` or ``cell``
    (the cell id); VALUE may use shell wildcards (``dataset=hopper-*``) and numbers may be written
    ``5k``/``1M``. Unknown keys and filters that leave nothing are errors, not silent no-ops.
    """
    if not only:
        return runs
    known = {key for run in runs for key in run.cell.axes} | set(SELECT_KEYS)
    filters = []
    for text in only:
        key, sep, values = text.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ExperimentError(f"--only '{text}': expected KEY=VALUE[,VALUE...], e.g. dataset=hopper-expert-v0")
        if key not in known:
            raise ExperimentError(f"--only '{text}': no key '{key}' in this sweep (keys: {', '.join(sorted(known))})")
        filters.append((key, [v.strip() for v in values.split(",") if v.strip()]))
    chosen = [run for run in runs if all(any(_matches(_run_value(run, key), pattern) for pattern in patterns)
                                         for key, patterns in filters)]
    if not chosen:
        raise ExperimentError(f"--only {' '.join(only)}: matches none of the sweep's {_plural(len(runs), 'run')}")
    return chosen


def _run_value(run: SweepRun, key: str) -> Any:
    return {"variant": run.cell.variant, "seed": run.seed, "cell": run.cell.id}[key] \
        if key in SELECT_KEYS else run.cell.axes.get(key)


def _matches(value: Any, pattern: str) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:  # sizes and steps as on the command line (5k); other numbers by value (1e-4 == 0.0001)
            return (parse_count(pattern) if isinstance(value, int) else float(pattern)) == value
        except ValueError:  # not a number: a wildcard, say
            pass
    return any(fnmatch.fnmatchcase(text, pattern) for text in {str(value), _format_value(value)})


def run_seconds(config: RunConfig) -> float:
    """Rough wall time of one run in a process pinned to one core (see PINNED_UPDATES_PER_S)."""
    algo = config.algo.lower()
    speed = PINNED_UPDATES_PER_S.get(algo) or PINNED_UPDATES_PER_S.get(algo.split("-")[0], DEFAULT_UPDATES_PER_S)
    evaluations = math.ceil(config.steps / config.eval_every)
    return (RUN_OVERHEAD_S + config.steps * update_cost(config) / speed
            + evaluations * (EVAL_BASE_S + EVAL_PER_EPISODE_S * config.eval_episodes))


def update_cost(config: RunConfig) -> float:
    """Cost of one update relative to the dense 256-unit networks the speeds were fitted to."""
    width = sum(config.hidden_dims) / max(len(config.hidden_dims), 1)
    cost = WIDTH_FIXED_COST + (1 - WIDTH_FIXED_COST) * (width / 256) ** 2
    return cost if config.dense else cost * SPARSE_COST


def estimate_seconds(runs: Iterable[SweepRun], cores: int = 2, measured: dict[str, float] | None = None) -> float:
    """Rough wall time on an idle ``cores``-core CPU with one pinned process per core: each run
    goes to the core that frees first, longest runs first (so one run takes its own time, not a
    share of the cores). A run whose cell is in ``measured`` (cell id -> seconds, from
    :func:`measured_cell_seconds`) takes that time instead of the model's."""
    measured = measured or {}
    loads = [0.0] * max(cores, 1)
    times = (measured.get(run.cell.id) or run_seconds(run.job.config) for run in runs)
    for seconds in sorted(times, reverse=True):
        loads[loads.index(min(loads))] += seconds
    return max(loads)


def measured_cell_seconds(finished: Iterable[SweepRun], on: str | None = None) -> dict[str, float]:
    """Median wall time (``summary.json``'s ``wall_seconds``) of each cell's finished runs that
    ran on the machine ``on`` (default: this one; runs that do not record theirs are left out).

    The model of :func:`run_seconds` is fitted on one machine and ignores network width and the
    faster frozen phase of sparse runs (off by 2-8x on some cells); a finished seed of the same
    cell, on the machine that runs the rest, is the better guess for its other seeds."""
    on = on or machine()
    times: dict[str, list[float]] = {}
    for run in finished:
        try:
            summary = read_json(run.out / SUMMARY_FILE)
            seconds = float(summary["wall_seconds"])
        except (OSError, RunFileError, KeyError, TypeError, ValueError):
            continue
        if seconds > 0 and summary.get("machine") == on:
            times.setdefault(run.cell.id, []).append(seconds)
    return {cell: statistics.median(values) for cell, values in times.items()}


# ----------------------------------------------------------------------------- run state


SKIP, RESUME, FRESH, CONFLICT, REUSE = "skip", "resume", "run", "conflict", "reuse"


def run_state(run: SweepRun) -> tuple[str, str]:
    """What a sweep does with ``run`` now, and why: skip (finished), resume, run, or conflict."""
    out = run.out
    finished, checkpoint = is_finished(out), (out / CHECKPOINT_FILE).exists()
    if finished or checkpoint:
        try:
            existing = RunConfig.of_run(out).result_fields()
        except (OSError, ValueError, TypeError) as error:
            return CONFLICT, f"{out} holds a run whose {CONFIG_FILE} cannot be read ({error})"
        wanted = run.job.config.result_fields()  # e.g. a dense run is the same run whatever its mask schedule
        if existing != wanted:
            diff = ", ".join(f"{k} {existing.get(k)!r} (wanted {wanted[k]!r})"
                             for k in wanted if existing.get(k) != wanted[k])
            return CONFLICT, f"{out} holds a different run: {diff}; use another --runs-dir"
        return (SKIP, "finished") if finished else (RESUME, "checkpoint without summary")
    return FRESH, "new" if not out.exists() else "no checkpoint yet: start over"


# ----------------------------------------------------------------------------- reusing finished runs


def finished_runs(roots: Iterable[str | Path]) -> dict[str, Path]:
    """The finished runs anywhere under ``roots`` (other sweeps' run directories, exported results),
    keyed by what they compute: their config's result fields. The first of equal runs wins.

    Paper experiments share cells (Figure 3's IQL cells are Table 1's and Table 4's; Table 2's dense
    and sparse cells are Table 1's), and a run is the same run whichever experiment asks for it."""
    index: dict[str, Path] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ExperimentError(f"--reuse {root}: no such directory")
        for config_path in sorted(root.rglob(CONFIG_FILE)):
            out = config_path.parent
            if not is_finished(out):
                continue
            try:
                fields = RunConfig.of_run(out).result_fields()
            except (OSError, ValueError, TypeError):  # not a run's config, or an unreadable one
                continue
            index.setdefault(_result_key(fields), out)
    return index


def _result_key(fields: dict) -> str:
    return json.dumps(fields, sort_keys=True, default=str)


def reusable(states: list[tuple[SweepRun, str, str]], index: dict[str, Path]) -> list[tuple[SweepRun, str, str]]:
    """``states`` with each run still to start from scratch that ``index`` holds marked REUSE
    (its reason: where the finished run is). A FRESH run's own directory holds no summary, so the
    index never points a run at itself."""
    marked = []
    for run, state, reason in states:
        source = index.get(_result_key(run.job.config.result_fields())) if state == FRESH else None
        if source is not None:
            state, reason = REUSE, str(source)
        marked.append((run, state, reason))
    return marked


def copy_finished_run(source: Path, out: Path) -> None:
    """Copy the finished run ``source`` to ``out`` (which holds no checkpoint or summary) so that a
    kill leaves either the old ``out`` or the whole copy: copied beside it, then renamed."""
    staging = out.with_name(out.name + ".reusing")
    shutil.rmtree(staging, ignore_errors=True)  # a copy a kill interrupted
    shutil.copytree(source, staging)
    (staging / TAGS_FILE).unlink(missing_ok=True)  # the source experiment's; the sweep writes its own
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


# ----------------------------------------------------------------------------- running


@dataclass
class SweepResult:
    experiment: str
    budget: str
    runs_dir: Path
    done: list[SweepRun] = field(default_factory=list)
    skipped: list[SweepRun] = field(default_factory=list)
    failed: list[tuple[SweepRun, str]] = field(default_factory=list)  # (run, one-line reason)
    reused: list[tuple[SweepRun, Path]] = field(default_factory=list)  # (run, the finished run copied)

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        reused = f", {len(self.reused)} reused" if self.reused else ""
        return (f"{self.experiment} ({self.budget}): {len(self.done)} done, {len(self.skipped)} skipped{reused}, "
                f"{len(self.failed)} failed")


def run_sweep(
    experiment: Experiment | str | Path,
    budget: str = "quick",
    runs_dir: str | Path = "runs",
    backend: str = "local",
    address: str | None = None,
    mode: str = "auto",
    workers: int | None = None,
    dry_run: bool = False,
    progress: bool = True,
    console=None,
    only: Sequence[str] = (),
    reuse: Sequence[str | Path] = (),
) -> SweepResult:
    """Run (or with ``dry_run`` list) every run of ``experiment`` under ``budget``.

    The runs go to :func:`sparse_reg.training.parallel.run_all`. backend "local" (``mode`` auto: one
    pinned process per core on a CPU, vmapped seed groups on an accelerator). backend "ray": one Ray
    task per run (``num_cpus=1``) on the cluster at ``address`` ("auto" = an existing one), or on a
    local Ray instance started (and stopped) here when ``address`` is None and none is running.
    ``workers``: how many cores the local backend's process queue uses (default: all).
    ``only``: run just the matching runs (see :func:`select`), e.g. ``["dataset=hopper-*", "seed=0"]``.
    ``reuse``: directories searched for finished runs that compute what a run of this sweep would
    (same result fields, e.g. another experiment's cell): those are copied instead of run.
    """
    from ..console import wide_console

    console = console or wide_console()
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend '{backend}': choose local or ray")
    if address is not None and backend != "ray":
        raise ValueError("--address is for --backend ray")
    if workers is not None and (backend != "local" or workers < 1):
        raise ValueError(f"--workers {workers}: must be at least 1, and is for --backend local")
    experiment = experiment if isinstance(experiment, Experiment) else load_experiment(experiment)
    runs = expand(experiment, budget, runs_dir)
    result = SweepResult(experiment.name, budget, Path(runs_dir))
    states = [(run, *run_state(run)) for run in select(runs, only)]
    states = reusable(states, finished_runs(reuse)) if reuse else states
    if dry_run:
        _print_plan(console, experiment, budget, states, _selected(runs, only))
        return result

    _write_manifest(experiment, budget, runs, Path(runs_dir))
    pending: list[SweepRun] = []
    for run, state, reason in states:
        if state == SKIP:
            _write_tags(run, experiment)
            result.skipped.append(run)
        elif state == REUSE:
            copy_finished_run(Path(reason), run.out)
            _write_tags(run, experiment, reused_from=Path(reason))
            result.reused.append((run, Path(reason)))
        elif state == CONFLICT:
            result.failed.append((run, reason))
        else:
            pending.append(run)
    b = experiment.budgets[budget]
    console.print(f"{experiment.name} ({experiment.paper}, budget {budget}: {b.steps:,} steps, "
                  f"{_plural(len(b.seeds), 'seed')}): {_plural(len(states), 'run')}{_selected(runs, only)}, "
                  f"{len(result.skipped)} finished, "
                  + (f"{len(result.reused)} copied from finished runs elsewhere, " if result.reused else "")
                  + f"{len(pending)} to run on {backend}{_eta(pending, result.skipped, backend, workers)}",
                  markup=False, highlight=False)
    pending = _prepare_datasets(pending, result, experiment, console, progress)

    def record(run: SweepRun, error: str | None) -> None:
        _write_tags(run, experiment)
        if error is None:
            (run.out / ERROR_FILE).unlink(missing_ok=True)
            result.done.append(run)
        else:
            run.out.mkdir(parents=True, exist_ok=True)
            (run.out / ERROR_FILE).write_text(error)
            result.failed.append((run, _last_line(error)))

    if pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), disable=not progress, unit="run", desc=f"{experiment.name} {budget}",
                   dynamic_ncols=True)

        finished = itertools.count(1)

        def on_result(run: SweepRun, error: str | None) -> None:
            record(run, error)
            bar.update(1)
            bar.set_postfix(done=len(result.done), failed=len(result.failed))
            if not progress:  # a log file: one line per run instead of the bar
                console.print(_result_line(run, error, next(finished), len(pending)), markup=False, highlight=False)

        try:
            resume = [run_state(run)[0] == RESUME for run in pending]
            run_all([run.job for run in pending], resume, lambda i, error: on_result(pending[i], error),
                    backend=backend, mode=mode, workers=workers, address=address)
        finally:
            bar.close()
    _print_outcome(console, result)
    return result


def _prepare_datasets(pending: list[SweepRun], result: SweepResult, experiment: Experiment, console,
                      progress: bool = True) -> list[SweepRun]:
    """Build each project dataset the pending runs use, once, before any worker starts. Without
    ``progress`` (logs, CI) one line per dataset built replaces the progress bars."""
    from ..data import registry
    from ..data.dataset import DatasetError

    names = sorted({str(r.job.config.dataset) for r in pending} & set(registry.known_names()))
    broken: dict[str, str] = {}
    for name in names:
        try:
            if not progress and not registry.is_built(registry.dataset_path(name)):
                console.print(f"building dataset {name}", markup=False, highlight=False)
            registry.make(name, progress=progress)
        except (DatasetError, OSError, ValueError) as error:
            broken[name] = f"cannot build dataset {name}: {error}"
            console.print(broken[name], style="red", markup=False)
    kept = []
    for run in pending:
        message = broken.get(str(run.job.config.dataset))
        if message is None:
            kept.append(run)
            continue
        _write_tags(run, experiment)
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / ERROR_FILE).write_text(message + "\n")
        result.failed.append((run, message))
    return kept


# ----------------------------------------------------------------------------- files and output


def _family_kind(dataset: str) -> tuple[str | None, str | None]:
    from ..data import registry

    try:
        return registry.parse_name(dataset)
    except Exception:  # noqa: BLE001 - not a project dataset name (a file, a Minari id)
        return None, None


def _write_tags(run: SweepRun, experiment: Experiment, reused_from: Path | None = None) -> None:
    if not run.out.is_dir():
        return
    tags = run.tags(experiment)
    if reused_from is None and (run.out / TAGS_FILE).exists():  # a reused run keeps saying where it came from
        try:
            previous = read_json(run.out / TAGS_FILE)
            reused_from = previous.get(REUSED_KEY) if isinstance(previous, dict) else None
        except (OSError, RunFileError):
            pass
    if reused_from is not None:
        tags[REUSED_KEY] = str(reused_from)
    (run.out / TAGS_FILE).write_text(json.dumps(tags, indent=2) + "\n")


def _write_manifest(experiment: Experiment, budget: str, runs: list[SweepRun], runs_dir: Path) -> Path:
    b = experiment.budgets[budget]
    path = runs_dir / experiment.name / SWEEP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        "experiment": experiment.name,
        "title": experiment.title,
        "paper": experiment.paper,
        "description": experiment.description,
        "config_file": experiment.config_file,
        "budget": {"name": budget, "steps": b.steps, "seeds": list(b.seeds), "eval_every": b.eval_every,
                   "eval_episodes": b.eval_episodes, "base": b.base, "cuts": b.cuts},
        "variants": experiment.variants,
        "report": experiment.report,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": [{"dir": str(r.out.relative_to(path.parent)), "cell": r.cell.id, "variant": r.cell.variant,
                  "seed": r.seed, "axes": r.cell.axes} for r in runs],
    }
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _result_line(run: SweepRun, error: str | None, finished: int, total: int) -> str:
    """"[3/36] 14:02:11 bc-hopper-expert-v0-5000-l1 seed 1: 87.3 normalised (final return 2840), 4.7 min";
    an early-stopping run adds the agent it kept: "...; kept agent (step 5000): 59.9 normalised"."""
    where = f"[{finished}/{total}] {time.strftime('%H:%M:%S')} {run.cell.id} seed {run.seed}"
    if error is not None:
        return f"{where}: failed: {_last_line(error)}"
    try:
        summary = read_json(run.out / SUMMARY_FILE)
    except (OSError, RunFileError):
        summary = None
    if not isinstance(summary, dict):
        return f"{where}: done"
    score, final, wall = (_number(summary, key) for key in ("final_normalized_score", "final_return", "wall_seconds"))
    text = f"{where}: {score:.1f} normalised" if score is not None else f"{where}: done"
    if final is not None:
        text += f" (final return {final:.0f})"
    if wall is not None:
        text += f", {format_duration(wall, 1)}"
    kept = summary.get("lowest_validation_mse")
    if isinstance(kept, dict) and _number(kept, "normalized_score") is not None:
        text += f"; kept agent (step {kept.get('step')}): {kept['normalized_score']:.1f} normalised"
    return text


def _number(mapping: dict, key: str) -> float | None:
    value = mapping.get(key)
    return value if isinstance(value, (int, float)) else None


def _last_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    # "sparse_reg.data.dataset.DatasetError: ..." -> "DatasetError: ..."
    return re.sub(r"^(?:[A-Za-z_]\w*\.)+(?=\w+(?::|$))", "", lines[-1].strip()) if lines else "failed"


def _selected(runs: list[SweepRun], only: Sequence[str]) -> str:
    return f" (of {len(runs)}, selected by --only {' '.join(only)})" if only else ""


def _print_plan(console, experiment: Experiment, budget: str, states: list[tuple[SweepRun, str, str]],
                selected: str = "") -> None:
    from rich.table import Table
    from rich.text import Text

    root = states[0][0].out.parent.parent if states else Path(".")
    table = Table(title=f"{experiment.name}: {experiment.title} ({experiment.paper}), budget {budget}",
                  caption=f"runs in {root}/<cell>/seed_<s>")
    table.add_column("cell", overflow="fold")
    table.add_column("seeds: action", overflow="fold")
    by_cell: dict[str, list[tuple[SweepRun, str, str]]] = {}
    for entry in states:
        by_cell.setdefault(entry[0].cell.id, []).append(entry)
    for cell_id, entries in by_cell.items():
        actions: dict[str, list[str]] = {}
        for run, state, reason in entries:
            action = state if state in (SKIP, FRESH, RESUME) else f"{state} ({reason})"
            actions.setdefault(action, []).append(str(run.seed))
        summary = "; ".join(f"{','.join(seeds)}: {action}" for action, seeds in actions.items())
        table.add_row(Text(cell_id), Text(summary))
    console.print(table)
    counts = {s: sum(1 for _, state, _ in states if state == s) for s in (FRESH, RESUME, SKIP, CONFLICT, REUSE)}
    b = experiment.budgets[budget]
    todo = [run for run, state, _ in states if state in (FRESH, RESUME)]
    measured = measured_cell_seconds(run for run, state, _ in states if state == SKIP)
    timed = sum(1 for run in todo if run.cell.id in measured)
    how = (f" ({timed} of them timed by the finished runs of their cell here, the rest by the model)"
           if 0 < timed < len(todo) else " (timed by the finished runs of their cells here)" if timed else "")
    console.print(f"{_plural(len(states), 'run')}{selected} ({_plural(len(by_cell), 'cell')} x {_plural(len(b.seeds), 'seed')}, "
                  f"{b.steps:,} steps each): {counts[FRESH]} to run, {counts[RESUME]} to resume, "
                  f"{counts[SKIP]} finished, "
                  + (f"{counts[REUSE]} to copy from finished runs elsewhere, " if counts[REUSE] else "")
                  + f"{counts[CONFLICT]} in conflict; about "
                  f"{format_duration(estimate_seconds(todo, measured=measured))} on an idle 2-core CPU{how}",
                  markup=False, highlight=False)
    if b.cuts:
        console.print(f"budget {budget} cuts: {b.cuts}", markup=False, highlight=False)


def _eta(pending: list[SweepRun], finished: list[SweepRun], backend: str, workers: int | None) -> str:
    """", about 1.2 h on 2 cores" for a local sweep (timed as --dry-run does); "" elsewhere."""
    if backend != "local" or not pending:
        return ""
    cores = min(workers or len(available_cores()), len(pending))
    seconds = estimate_seconds(pending, cores=cores, measured=measured_cell_seconds(finished))
    return f", about {format_duration(seconds)} on {_plural(cores, 'core')} if nothing else runs"


def _print_outcome(console, result: SweepResult) -> None:
    console.print(result.line(), style="green" if result.ok else "red", markup=False)
    for run, reason in result.failed:
        where = run.out / ERROR_FILE
        console.print(f"  failed: {run.out}: {reason}" + (f" (traceback in {where})" if where.exists() else ""),
                      markup=False, highlight=False)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
