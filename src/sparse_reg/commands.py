"""What the ``sparse-reg`` subcommands do and print: the glue between parsed arguments and the library.

One function per subcommand; each takes values (never an argparse namespace) and returns the exit
code. The library modules take values and return results; the tables and one-line summaries
people read in a terminal are made here (``cli.py`` only parses arguments and dispatches).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from .console import wide_console
from .data.dataset import DatasetError
from .data.minari_storage import read_built
from .data.reference import D4RL_REFERENCE_SCORES, GYMNASIUM_ENV_FOR_FAMILY
from .data.registry import (
    REFERENCE_KERNEL_HINT,
    data_dir,
    dataset_path,
    is_built,
    make,
    parse_name,
    read_record,
    reference_build,
    status,
)
from .experiments.export import export_runs
from .experiments.sweep import BUDGETS, cells, estimate_seconds, expand, list_experiments, load_experiment
from .provenance import format_duration

if TYPE_CHECKING:
    from .training.config import RunConfig

# ----------------------------------------------------------------------------- sparse-reg train


def train_command(
    config: "RunConfig",
    out: str | Path,
    *,
    seeds: list[int] | None = None,
    parallel: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    given: dict[str, Any] | None = None,
) -> int:
    """``sparse-reg train``: one run in ``out``, or with ``seeds`` one per seed in ``out/seed_<s>``;
    prints the final scores. ``resume``: each run continues as its directory records it, refusing
    options ``given`` again (field -> value) that would change it (``resume_config``)."""
    from .training.parallel import seed_jobs
    from .training.resume import resume_config

    out = Path(out)
    jobs = seed_jobs(config, seeds, out) if seeds else None
    if resume:  # each run's recorded config, refusing options given again that would change it
        if jobs is None:
            config = resume_config(out, given or {}, config)
        else:
            jobs = [dataclasses.replace(job, config=resume_config(job.out, given or {}, job.config)) for job in jobs]
    if jobs is not None:
        return _train_seeds(jobs, parallel=parallel, resume=resume, overwrite=overwrite, progress=progress)
    from .training.trainer import train

    summary = train(config, out, resume=resume, overwrite=overwrite, progress=progress)
    print(
        f"{summary['algo']} on {summary['dataset']} ({summary['size']} transitions, seed {summary['seed']}): "
        f"final return {summary['final_return']:.1f}, normalised score {summary['final_normalized_score']:.1f}; "
        f"summary in {out / 'summary.json'}"
    )
    if "lowest_validation_mse" in summary:
        print(_lowest_line(summary["lowest_validation_mse"], out))
    return 0


def _lowest_line(lowest: dict, out: Path) -> str:
    return (f"lowest validation MSE {lowest['validation_mse']:.4g} at step {lowest['step']:,}: normalised score "
            f"{lowest['normalized_score']:.1f} there; that agent is in {out / lowest['checkpoint']} "
            "(--checkpoint lowest-validation-mse)")


def _train_seeds(jobs: list, *, parallel: str, resume: bool, overwrite: bool, progress: bool) -> int:
    import numpy as np

    from .training.parallel import run_jobs

    summaries = run_jobs(jobs, mode=parallel, resume=resume, overwrite=overwrite, progress=progress)
    returns = [s["final_return"] for s in summaries]
    scores = [s["final_normalized_score"] for s in summaries]
    for job, s in zip(jobs, summaries):
        print(f"seed {job.config.seed}: return {s['final_return']:.1f}, normalised score "
              f"{s['final_normalized_score']:.1f} ({job.out})")
        if "lowest_validation_mse" in s:
            print("  " + _lowest_line(s["lowest_validation_mse"], job.out))
    print(f"{jobs[0].config.algo} over {len(jobs)} seeds: return {np.mean(returns):.1f} ± {np.std(returns):.1f}, "
          f"normalised score {np.mean(scores):.1f} ± {np.std(scores):.1f}")
    return 0


# ----------------------------------------------------------------------------- sparse-reg evaluate / export-policy


def evaluate_command(path: str | Path, *, checkpoint: str = "latest", episodes: int = 10, seed: int = 0,
                     as_json: bool = False) -> int:
    """``sparse-reg evaluate``: roll out a saved agent and print its return (or the result as JSON)."""
    from .training.agent import load_agent

    result = load_agent(path, checkpoint=checkpoint).evaluate(episodes=episodes, seed=seed)
    print(json.dumps(result, indent=2) if as_json else
          f"step {result['step']}: return {result['return_mean']:.1f} ± {result['return_std']:.1f} "
          f"over {episodes} episodes, normalised score {result['normalized_score']:.1f}")
    return 0


def export_policy_command(path: str | Path, out: str | Path, *, checkpoint: str = "latest") -> int:
    """``sparse-reg export-policy``: write a saved agent's policy as a jax.export file."""
    from .training.agent import load_agent

    agent = load_agent(path, checkpoint=checkpoint)
    data = agent.export_policy(out)
    print(f"policy of {path} (step {agent.step}, {agent.env_id}) -> {out} ({len(data):,} bytes); "
          "load it with jax.export.deserialize, which needs jax, numpy and flatbuffers (pip install jax flatbuffers; "
          "jax alone does not bring flatbuffers; see README, 'Policy export')")
    return 0


# ----------------------------------------------------------------------------- sparse-reg demo


def demo_command(out: str | Path, *, steps: int, size: int, dataset: str, record: bool = False) -> int:
    """``sparse-reg demo``: its four runs and table; ``record``: copy them into docs/ and the README."""
    from .experiments.demo import run_demo

    run_demo(Path(out), steps=steps, size=size, dataset=dataset)
    if record:
        from .experiments.demo import record_demo

        recorded = record_demo(Path(out), Path("docs"), Path("README.md"))
        print(f"recorded the demo's table in {recorded} and README.md")
    return 0


# ----------------------------------------------------------------------------- sparse-reg sweep / reproduce


def _sweep(config: str, *, budget: str, runs_dir: str | Path | None, backend: str, address: str | None,
           workers: int | None, progress: bool, only: list[str], reuse: list[str] = (), dry_run: bool = False):
    from .experiments.sweep import run_sweep

    runs_dir = Path(runs_dir) if runs_dir else Path("runs") / budget
    return run_sweep(config, budget=budget, runs_dir=runs_dir, backend=backend, address=address, workers=workers,
                     dry_run=dry_run, progress=progress, only=only, reuse=reuse)


def sweep_command(config: str, *, dry_run: bool = False, **options) -> int:
    """``sparse-reg sweep``: run (or, ``dry_run``, list) an experiment's runs; 1 if any failed.
    ``options``: budget, runs_dir (default runs/<budget>), backend, address, workers, progress, only, reuse."""
    return 0 if _sweep(config, dry_run=dry_run, **options).ok else 1


def reproduce_command(name: str, *, report_dir: str | Path | None = None, **options) -> int:
    """``sparse-reg reproduce``: sweep the experiment, then write its report (default
    reports/<budget>/<experiment>) and print where; 1 if any run failed. ``options``: as :func:`sweep_command`'s."""
    result = _sweep(name, **options)
    from .experiments.report import write_report

    report_dir = Path(report_dir) if report_dir else Path("reports") / options["budget"] / result.experiment
    index = write_report(result.runs_dir / result.experiment, report_dir)
    print(f"report: {index}")
    return 0 if result.ok else 1


# ----------------------------------------------------------------------------- sparse-reg report


def report_command(
    runs_dir: str | Path,
    out: str | Path | None = None,
    paper_csv: str | Path | None = None,
    *,
    include_paper: bool = True,
    reps: int = 2000,
    seed: int = 0,
    mse_algos: tuple[str, ...] = ("bc",),
) -> int:
    """``sparse-reg report RUNS_DIR --out DIR``: write the report (default: into RUNS_DIR/report)
    and print where its index.md is."""
    from .experiments.report import write_report  # the plotting stack only when a report is made

    out = Path(out) if out else Path(runs_dir) / "report"
    index = write_report(runs_dir, out, paper_csv, include_paper=include_paper, reps=reps, seed=seed,
                         mse_algos=mse_algos)
    print(next((line for line in index.read_text().splitlines() if line.startswith("Generated")), ""))
    print(f"report: {index}")
    return 0


# ----------------------------------------------------------------------------- sparse-reg export


def export_command(runs_dir: str | Path, out: str | Path) -> int:
    """``sparse-reg export RUNS --out DEST``: copy the finished runs' results and say how many."""
    count = export_runs(runs_dir, out)
    print(f"exported {count} finished run(s) from {runs_dir} to {out} (no checkpoints, no TensorBoard files)")
    return 0


# ----------------------------------------------------------------------------- sparse-reg datasets


def datasets_list_command(root: Path | None = None, policies: Path | None = None) -> None:
    """Print a table of the project's datasets: state, size, reference scores (ours and D4RL)."""
    table = Table(title=f"sparse-reg datasets (in {root or data_dir()})")
    columns = ("name", "env", "status", "transitions", "bits", "random ref", "expert ref", "D4RL random", "D4RL expert")
    for column in columns:
        table.add_column(
            column,
            justify="right" if "ref" in column or "D4RL" in column or column == "transitions" else "left",
            no_wrap=column == "name",
        )
    other_bits = False
    for row in status(root, policies):
        family, _ = parse_name(row.name)
        d4rl = D4RL_REFERENCE_SCORES[family]
        transitions = random_ref = expert_ref = bits = ""
        if row.built:
            state = "[green]built[/green]"
            record = read_record(row.path)
            minari_info = record.get("minari", {})
            transitions = f"{record.get('size', minari_info.get('total_steps')) or 0:,}"
            ref = record.get("reference", {})
            random_ref = _fmt(ref.get("random", minari_info.get("ref_min_score")))
            expert_ref = _fmt(ref.get("expert", minari_info.get("ref_max_score")))
            if record.get("fingerprint") is None:  # built before records kept it: take it from the data
                record["fingerprint"] = _data_fingerprint(row.path, row.name)
            is_reference = reference_build(record)
            bits, other_bits = BUILD_BITS[is_reference], other_bits or is_reference is False
        elif row.can_build:
            state = "not built (can build)"
        else:
            state = "[dim]cannot build (no shipped policy)[/dim]"
        table.add_row(
            row.name, GYMNASIUM_ENV_FOR_FAMILY[family], state, transitions, bits, random_ref, expert_ref,
            _fmt(d4rl.random), _fmt(d4rl.expert),
        )  # fmt: skip
    wide_console().print(table)
    if other_bits:
        wide_console().print(f"[yellow]'other' bits: built with a BLAS kernel that rounds the behaviour policy otherwise "
                             f"than the reference builds the committed results used (docs/datasets.md); {REFERENCE_KERNEL_HINT} "
                             f"reproduces them (sparse-reg datasets make NAME --force)[/yellow]")


def _data_fingerprint(path: Path, name: str) -> str | None:
    try:
        return read_built(path, name).fingerprint()
    except (DatasetError, OSError):
        return None


# Whether a build is the reference build (registry.reference_build), as the datasets table says it.
BUILD_BITS = {True: "reference", False: "[yellow]other[/yellow]", None: ""}


def datasets_make_command(
    name: str, seed: int | None = None, size: int | None = None, force: bool = False, from_buffer: bool = False
) -> list[Path]:
    """Build ``name`` (or every buildable dataset for ``"all"``) and print where each one is."""
    console = wide_console()
    if name == "all":
        names = [row.name for row in status() if row.can_build]
        if not names:
            raise DatasetError("no dataset can be built: no behaviour policy is shipped yet")
    else:
        names = [name]
    paths = []
    for each in names:
        was_built = is_built(dataset_path(each))
        path = make(each, seed=seed, size=size, force=force, from_buffer=from_buffer)
        record = read_record(path)
        ref = record.get("reference", {})
        verb = "already built" if was_built and not force else "built"
        console.print(
            f"[bold]{each}[/bold]: {verb}, {record.get('size', 0):,} transitions, "
            f"reference random {_fmt(ref.get('random'))} / expert {_fmt(ref.get('expert'))} -> {path}"
        )
        paths.append(path)
    return paths


def _fmt(value) -> str:
    return "" if value is None else f"{float(value):.1f}"


# ----------------------------------------------------------------------------- sparse-reg experiments


def _short_paper(paper: str) -> str:
    """"Figure 4, Figure 8, Figure 9" -> "Fig. 4, 8, 9"."""
    parts = [p.strip() for p in paper.split(",") if p.strip()]
    if parts and all(p.startswith("Figure ") for p in parts):
        return "Fig. " + ", ".join(p[len("Figure "):] for p in parts)
    return paper


def experiments_list_command(console=None) -> None:
    """``sparse-reg experiments list``: every packaged config with its run counts and time estimates."""
    console = console or wide_console()
    table = Table(title="Paper experiments (sparse-reg sweep NAME / reproduce NAME)")
    names = list_experiments()
    table.add_column("name", no_wrap=True, min_width=max(map(len, names), default=4))
    table.add_column("paper", no_wrap=True)
    for column in ("cells", "quick\nruns", "quick\ntime*", "paper\nruns", "paper\ntime*"):
        table.add_column(column, justify="right", no_wrap=True)
    wide = console.width >= 110  # titles only where they fit
    if wide:
        table.add_column("title", overflow="fold", ratio=1)
    for name in names:
        experiment = load_experiment(name)
        row = [name, _short_paper(experiment.paper), str(len(cells(experiment)))]
        for budget in BUDGETS:
            runs = expand(experiment, budget, "runs")
            row += [str(len(runs)), format_duration(estimate_seconds(runs))]
        table.add_row(*row, *([experiment.title] if wide else []))
    console.print(table)
    console.print("* estimated wall time on an idle 2-core CPU, one pinned process per core "
                  "(see docs/experiments.md for how)")
