"""Run logs: CSV files a person or pandas can read, and TensorBoard event files.

``metrics.csv`` has one row per evaluation; ``masks.csv`` one row per (mask refresh,
network, layer). On resume both are cut back to the checkpoint, so a resumed run's
logs read exactly like an uninterrupted one's; the cut rewrites a copy and renames it over the
log, so an interruption during the cut leaves the complete old log, never a truncated one.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .run_directory import MASKS_FILE, METRICS_FILE, TENSORBOARD_DIR, atomic_write

__all__ = ["MASKS_FILE", "METRICS_FILE", "RunLogger", "read_rows", "tensorboard_tag"]

SummaryWriter = None  # tensorboardX's, imported when the first run logs (tests may put their own here)


def _tensorboard_writer():
    # Not at import: tensorboardX imports torch whenever torch is installed, and `import sparse_reg` must not.
    from tensorboardX import SummaryWriter

    return SummaryWriter


# TensorBoard groups tags by their prefix: evaluation results, training losses, mask statistics, time.
EVAL_KEYS = ("return_mean", "return_std", "normalized_score", "train_mse", "validation_mse")
TIME_KEYS = ("wall_s",)


def tensorboard_tag(key: str) -> str:
    """``eval/return_mean``, ``time/wall_s``, ``train/<algorithm metric>`` (mask tags: ``mask/...``)."""
    group = "eval" if key in EVAL_KEYS else "time" if key in TIME_KEYS else "train"
    return f"{group}/{key}"
MASK_COLUMNS = ["step", "network", "layer", "sparsity", "changed", "live_units", "loss_before", "loss_after"]


class RunLogger:
    def __init__(self, directory: Path, resume_step: int | None = None, config: dict | None = None):
        self.directory = directory
        if resume_step is not None:
            # Evaluations at the checkpoint's step happened before it was written; the
            # mask refresh at that step happens after it and will be redone.
            _keep_rows(directory / METRICS_FILE, lambda step: step <= resume_step)
            _keep_rows(directory / MASKS_FILE, lambda step: step < resume_step)
        writer = SummaryWriter or _tensorboard_writer()
        self.tensorboard = writer(str(directory / TENSORBOARD_DIR), purge_step=resume_step)
        if config is not None and resume_step is None:
            # Markdown code block: TensorBoard's text plugin renders it verbatim.
            text = "\n".join("    " + line for line in json.dumps(config, indent=2).splitlines())
            self.tensorboard.add_text("config", text, 0)

    def log_evaluation(self, row: dict) -> None:
        _append_row(self.directory / METRICS_FILE, row)
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tensorboard.add_scalar(tensorboard_tag(key), value, step)
        self.tensorboard.flush()

    def log_masks(self, step: int, stats: dict) -> None:
        """``stats``: network -> layer -> {"sparsity", "changed"} (floats), hidden layers also "live_units"
        (fraction of their units with a kept input and a kept output); the network's "total" also has
        "loss_before" and "loss_after" (its loss with the previous and the new mask)."""
        for network, layers in stats.items():
            for layer, values in layers.items():
                _append_row(
                    self.directory / MASKS_FILE,
                    {"step": step, "network": network, "layer": layer, **values},
                    columns=MASK_COLUMNS,
                )
                if layer == "total":
                    for key, value in values.items():
                        self.tensorboard.add_scalar(f"mask/{network}/{key}", value, step)

    def close(self) -> None:
        self.tensorboard.close()


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(value: str):
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def _append_row(path: Path, row: dict, columns: list[str] | None = None) -> None:
    new = not path.exists()
    if not new:  # a file from an older version (a resumed run) keeps its columns
        with open(path, newline="") as f:
            columns = next(csv.reader(f), None) or columns
    columns = columns or list(row)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="", extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _keep_rows(path: Path, keep) -> None:
    if not path.exists():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = [row for row in reader if keep(int(float(row["step"])))]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue().encode())
