"""Run logs: CSV files a person or pandas can read, and TensorBoard event files.

``metrics.csv`` has one row per evaluation; ``masks.csv`` one row per (mask refresh,
network, layer). On resume both are cut back to the checkpoint, so a resumed run's
logs read exactly like an uninterrupted one's.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.csv"
MASKS_FILE = "masks.csv"
MASK_COLUMNS = ["step", "network", "layer", "sparsity", "changed", "loss_before", "loss_after"]


class RunLogger:
    def __init__(self, directory: Path, resume_step: int | None = None):
        self.directory = directory
        if resume_step is not None:
            # Evaluations at the checkpoint's step happened before it was written; the
            # mask refresh at that step happens after it and will be redone.
            _keep_rows(directory / METRICS_FILE, lambda step: step <= resume_step)
            _keep_rows(directory / MASKS_FILE, lambda step: step < resume_step)
        self.tensorboard = SummaryWriter(str(directory / "tensorboard"), purge_step=resume_step)

    def log_evaluation(self, row: dict) -> None:
        _append_row(self.directory / METRICS_FILE, row)
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tensorboard.add_scalar(key, value, step)
        self.tensorboard.flush()

    def log_masks(self, step: int, stats: dict) -> None:
        """``stats``: network -> layer -> {"sparsity", "changed"} (floats); the network's "total" also
        has "loss_before" and "loss_after" (its loss with the previous and the new mask)."""
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
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
