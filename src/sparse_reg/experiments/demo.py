"""The main job: dense vs Sparse-Reg for BC and IQL on a small expert dataset, on a CPU budget.

Prints a table (final return, normalised score, validation MSE) and writes a plot of the
learning curves and ``results.md`` (the table with the commit, machine and wall time that made
it). Each run is an ordinary ``sparse-reg train`` run directory under ``out``.

The README shows the demo's table between two markers; :func:`record_demo` (``sparse-reg demo
--record``, ``make demo-record``) re-runs nothing itself but copies a finished demo's
``results.md`` and figure into ``docs/`` and rewrites that README block, so a change that moves
the demo's numbers is recorded by running the demo once more, never by hand.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.table import Table

from ..console import wide_console
from ..data import load_dataset
from ..provenance import code_version, format_duration, machine
from ..training.config import RunConfig
from ..training.logging import METRICS_FILE, read_rows
from ..training.trainer import train
from .plots import plot_learning_curves

DEMO_RUNS = (("bc", 0.0), ("bc", "auto"), ("iql", 0.0), ("iql", "auto"))
RESULTS_FILE = "results.md"
FIGURE_FILE = "learning_curves.png"
README_START, README_END = "<!-- demo-results:start -->", "<!-- demo-results:end -->"
COLUMNS = ("run", "sparsity (actor)", "final return", "normalised score", "validation MSE")


def run_demo(out: Path, steps: int = 20_000, size: int = 10_000, dataset: str = "halfcheetah-expert-v0") -> dict:
    console = wide_console()
    console.print(f"[bold]sparse-reg demo[/]: {dataset}, {size} training transitions, {steps} steps per run")
    data = load_dataset(dataset)
    results, curves = {}, {}
    started = time.time()
    for algo, sparsity in DEMO_RUNS:
        label = f"{algo.upper()} {'dense' if sparsity == 0.0 else 'Sparse-Reg'}"
        run_dir = out / f"{algo}-{'dense' if sparsity == 0.0 else 'sparse'}"
        # The paper refreshes masks during the first 20% of training (200k of 1M steps) and then
        # lets the sub-network settle; a short budget keeps those proportions.
        config = RunConfig(algo=algo, dataset=dataset, size=size, sparsity=sparsity, steps=steps,
                           eval_every=max(steps // 8, 1), mask_interval=max(steps // 20, 1),
                           mask_until=steps // 5)
        results[label] = train(config, run_dir, dataset=data, overwrite=True)
        curves[label] = read_rows(run_dir / METRICS_FILE)

    rows = [_row(label, summary) for label, summary in results.items()]
    table = Table(title=f"{dataset}, {size} transitions, {steps} gradient steps (seed 0)")
    for column in COLUMNS:
        table.add_column(column, justify="right" if column != "run" else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    plot = plot_learning_curves(curves, out / FIGURE_FILE, title=f"{dataset}, {size} transitions")
    wall = time.time() - started
    (out / RESULTS_FILE).write_text(results_markdown(rows, dataset, size, steps, wall))
    console.print(f"learning curves: [bold]{plot}[/]  (runs in {out}, {wall:.0f} s; table in {out / RESULTS_FILE})")
    return results


def _row(label: str, summary: dict) -> tuple[str, ...]:
    last = summary["eval_history"][-1]
    return (label, f"{summary['sparsity']['actor']:.0%}", f"{summary['final_return']:.0f}",
            f"{summary['final_normalized_score']:.1f}", f"{last['validation_mse']:.4f}")


def results_markdown(rows: list[tuple[str, ...]], dataset: str, size: int, steps: int, wall: float) -> str:
    """The demo's table as Markdown, headed by what made it: command, commit, machine, date, wall time."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"`sparse-reg demo` ({dataset}, {size:,} training transitions, {steps:,} steps per run, seed 0) at "
        f"commit `{code_version()}`, {when}, {machine()}; {format_duration(wall, 1)} for the four runs:",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"


def record_demo(demo_dir: Path, docs_dir: Path, readme: Path) -> Path:
    """Copy a finished demo's table and figure into ``docs_dir`` and put the table into ``readme``
    between :data:`README_START` and :data:`README_END`; returns the recorded table's path."""
    results = demo_dir / RESULTS_FILE
    if not results.is_file():
        raise FileNotFoundError(f"no {RESULTS_FILE} in {demo_dir}: run `sparse-reg demo --out {demo_dir}` first")
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no '{README_START}' ... '{README_END}' block to put the demo's table in")
    docs_dir.mkdir(parents=True, exist_ok=True)
    recorded = docs_dir / "demo_results.md"
    shutil.copyfile(results, recorded)
    shutil.copyfile(demo_dir / FIGURE_FILE, docs_dir / "demo_learning_curves.png")
    block = f"{README_START}\n{results.read_text()}{README_END}"
    readme.write_text(text[:start] + block + text[end + len(README_END):])
    return recorded
