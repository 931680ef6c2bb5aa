"""A finished run's ``summary.json``: what it was, where it ended, how it got there.

Made from the run's config, its data, its final state and its evaluations (metrics.csv); it is
written last, so a readable one means the run finished (``run_directory.is_finished``).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from ..algorithms import Algorithm
from ..provenance import code_version, machine, wall_seconds
from ..sparsity import SparseRegConfig, weight_sparsity
from .config import SPARSE_REG_KEY, RunConfig
from .prepare import PreparedData
from .run_directory import LOWEST_VALIDATION_MSE_FILE

HISTORY_KEYS = ("step", "return_mean", "return_std", "normalized_score", "train_mse", "validation_mse")


def is_held_out_loss(column: str) -> bool:
    """``validation_<network>_loss``: a network's own loss on the validation episodes (evaluation.py)."""
    return column.startswith("validation_") and column.endswith("_loss")


def lowest_validation_row(rows: list[dict]) -> dict:
    """The first of the metrics rows at the lowest finite validation MSE ({} if none has one): the
    evaluation whose checkpoint ``keep_lowest_validation_mse`` keeps (it saves on a strict <)."""
    finite = [r for r in rows if isinstance(r.get("validation_mse"), (int, float)) and math.isfinite(r["validation_mse"])]
    return min(finite, key=lambda r: r["validation_mse"], default={})


def network_sparsity(state: Any, algorithm: Algorithm) -> dict[str, float]:
    """Fraction of weight entries masked, per network that Sparse-Reg scores."""
    return {name: weight_sparsity(getattr(state, name)) for name in algorithm.losses}


def build_summary(config: RunConfig, data: PreparedData, state: Any, algorithm: Algorithm, rows: list[dict],
                  sparse_reg: SparseRegConfig | None = None) -> dict:
    """The summary of a run; ``sparse_reg``: the Sparse-Reg settings it ran with (recorded as ``sparse_reg``)."""
    history = [{k: v for k, v in row.items() if k in HISTORY_KEYS or is_held_out_loss(k)} for row in rows]
    final = history[-1] if history else {}
    summary = {
        "algo": config.algo,
        "dataset": config.dataset,
        "env": data.env_id,
        "size": len(data.train),
        "validation_size": 0 if data.validation is None else len(data.validation),
        "seed": config.seed,
        "steps": config.steps,
        "sparsity": network_sparsity(state, algorithm),
        "final_return": final.get("return_mean"),
        "final_normalized_score": final.get("normalized_score"),
        "reference_scores": data.reference_record(),
        "data": data.data_record,
        "config": config.to_dict(),
        "wall_seconds": round(wall_seconds(rows), 1),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "machine": machine(),
        "eval_history": history,
    }
    if sparse_reg is not None:
        summary[SPARSE_REG_KEY] = sparse_reg.to_dict()
    if config.keep_lowest_validation_mse:
        lowest = lowest_validation_row(history)
        summary["lowest_validation_mse"] = {
            "checkpoint": LOWEST_VALIDATION_MSE_FILE,
            **{k: lowest[k] for k in ("step", "validation_mse", "return_mean", "normalized_score")},
        }
    return summary
