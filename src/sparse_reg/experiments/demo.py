"""The main job: dense vs Sparse-Reg for BC and IQL on a small expert dataset, on a CPU budget.

Prints a table (final return, normalised score, validation MSE) and writes a plot of the
learning curves. Each run is an ordinary ``sparse-reg train`` run directory under ``out``.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.table import Table

from ..console import wide_console
from ..data import load_dataset
from ..training.config import RunConfig
from ..training.logging import METRICS_FILE, read_rows
from ..training.trainer import train
from .plots import plot_learning_curves

DEMO_RUNS = (("bc", 0.0), ("bc", "auto"), ("iql", 0.0), ("iql", "auto"))


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

    table = Table(title=f"{dataset}, {size} transitions, {steps} gradient steps (seed 0)")
    for column in ("run", "sparsity (actor)", "final return", "normalised score", "validation MSE"):
        table.add_column(column, justify="right" if column != "run" else "left")
    for label, summary in results.items():
        last = summary["eval_history"][-1]
        table.add_row(label, f"{summary['sparsity']['actor']:.0%}", f"{summary['final_return']:.0f}",
                      f"{summary['final_normalized_score']:.1f}", f"{last['validation_mse']:.4f}")
    console.print(table)
    plot = plot_learning_curves(curves, out / "learning_curves.png", title=f"{dataset}, {size} transitions")
    console.print(f"learning curves: [bold]{plot}[/]  (runs in {out}, {time.time() - started:.0f} s)")
    return results
