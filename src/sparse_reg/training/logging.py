"""Run logs: CSV files a person or pandas can read, and TensorBoard event files.

``metrics.csv`` has one row per evaluation; ``masks.csv`` one row per (mask refresh,
network, layer). On resume both are cut back to the checkpoint, so a resumed run's
logs read exactly like an uninterrupted one's; the cut rewrites a copy and renames it over the
log, so an interruption during the cut leaves the complete old log, never a truncated one.
Before a resume changes anything, :func:`check_logs` makes sure both are logs of the run up to its
checkpoint (a damaged log would otherwise be cut, appended to and summarised into garbage).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .run_directory import MASKS_FILE, METRICS_FILE, TENSORBOARD_DIR, RunFileError, atomic_write, naming

__all__ = ["MASKS_FILE", "METRICS_FILE", "RunLogger", "check_logs", "read_rows", "tensorboard_tag"]

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
    held_out = key.startswith("validation_")  # validation_mse and each network's validation_<network>_loss
    group = "eval" if key in EVAL_KEYS or held_out else "time" if key in TIME_KEYS else "train"
    return f"{group}/{key}"
MASK_COLUMNS = ["step", "network", "layer", "sparsity", "changed", "live_units", "loss_before", "loss_after"]
# What every version's masks.csv has (loss_before/after and live_units came later; a resumed run keeps its columns).
MASK_COLUMNS_ALWAYS = MASK_COLUMNS[:5]
# What every metrics.csv has (the summary is made of them); the algorithm's losses follow.
METRICS_COLUMNS = ["step", "return_mean", "return_std", "normalized_score", "train_mse", "validation_mse"]


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
    try:
        with open(path, newline="") as f:
            return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except UnicodeDecodeError:
        raise RunFileError(f"{path} is damaged: not text") from None


def _complete_lines(path: Path) -> list[str]:
    """The lines of a log that were written whole: a last line without its line end is a row whose
    append was interrupted (it lies after the checkpoint, and the resume drops it)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RunFileError(f"{path} is damaged: not text") from None
    lines = text.splitlines(keepends=True)
    return lines if not lines or lines[-1].endswith(("\n", "\r")) else lines[:-1]


def _problem(path: Path, required: list[str], numeric: set[str], steps_upto: int, expected: list[int],
             per_step: list[tuple[str, str]] | None = None) -> str | None:
    """What is wrong with the log ``path`` as the log of a run whose checkpoint is at ``steps_upto``:
    it must have the ``required`` columns, whole rows with numbers where numbers go, and its rows up
    to ``steps_upto`` must be at exactly the steps ``expected``: one row each, or (``per_step``, for
    masks.csv) one row per (network, layer) in that order."""
    if not path.is_file():
        return "missing" if expected else None
    try:
        lines = _complete_lines(path)
    except RunFileError:
        return "not text"
    if not lines:
        return "empty" if expected else None
    rows = list(csv.reader(lines))
    header = rows[0]
    if header[:1] != ["step"] or any(c not in header for c in required):
        return f"its first line is not the header ({','.join(required)},...)"
    steps, keys = [], {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            return f"line {number} has {len(row)} fields, the header {len(header)}"
        for column, value in zip(header, row):
            if column in numeric and value.strip():
                try:
                    float(value)
                except ValueError:
                    return f"line {number}: {column} is {value[:20]!r}, not a number"
        step = float(row[0] or "nan")
        if not step.is_integer():
            return f"line {number}: step is {row[0][:20]!r}, not a whole number"
        steps.append(int(step))
        keys.setdefault(int(step), []).append(tuple(row[1:3]))
    if steps != sorted(steps):
        return "its steps are out of order"
    logged = [s for s in steps if s <= steps_upto]
    if per_step is not None:
        logged = sorted(set(logged))
        for step in logged:
            if keys[step] != per_step:
                return (f"the rows of step {step:,} are for {len(keys[step])} layers, not the run's "
                        f"{len(per_step)} ({', '.join('/'.join(k) for k in per_step[:3])}, ...)")
    if logged != expected:
        missing = sorted(set(expected) - set(logged))
        return (f"it lacks the rows of step(s) {_steps(missing)}" if missing else
                f"its rows up to step {steps_upto:,} are at steps {_steps(logged)}, not {_steps(expected)}")
    return None


def _steps(steps: list[int]) -> str:
    return ", ".join(f"{s:,}" for s in steps[:5]) + (f" ... ({len(steps)} in all)" if len(steps) > 5 else "")


def check_logs(directory: Path, checkpoint_step: int, evaluations: list[int], refreshes: list[int],
               mask_layers: list[tuple[str, str]]) -> None:
    """Raise :class:`RunFileError` unless ``metrics.csv`` and ``masks.csv`` are the logs of the run whose
    checkpoint is at ``checkpoint_step``: one metrics row per evaluation up to it (``evaluations``) and
    the rows of each mask refresh before it (``refreshes``), one per (network, layer) of
    ``mask_layers``. Changes nothing."""
    metrics = set(METRICS_COLUMNS)
    for name, required, numeric, upto, expected, per_step in (
        (METRICS_FILE, METRICS_COLUMNS, None, checkpoint_step, evaluations, None),
        (MASKS_FILE, MASK_COLUMNS_ALWAYS, set(MASK_COLUMNS) - {"network", "layer"}, checkpoint_step - 1, refreshes,
         mask_layers),
    ):
        path = directory / name
        if numeric is None:  # metrics: every column is a number
            numeric = metrics | set(_header(path))
        problem = _problem(path, required, numeric, upto, expected, per_step)
        if problem:
            raise RunFileError(
                f"cannot resume: {path} is damaged: {problem}; it must hold the run's log up to its checkpoint "
                f"(step {checkpoint_step:,}): put back an intact copy, or start the run again with --overwrite"
            )


def _header(path: Path) -> list[str]:
    try:
        lines = _complete_lines(path)
    except (OSError, RunFileError):
        return []
    return next(csv.reader(lines[:1]), [])


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
    try:
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="", extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
    except OSError as error:  # e.g. a full disk: say which file
        raise naming(error, path) from None


def _keep_rows(path: Path, keep) -> None:
    if not path.exists():
        return
    reader = csv.DictReader(_complete_lines(path))  # checked by check_logs
    columns = reader.fieldnames or []
    rows = [row for row in reader if keep(int(float(row["step"])))]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue().encode())
