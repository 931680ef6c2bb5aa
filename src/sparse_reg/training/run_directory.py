"""The layout of a run directory, owned in one place.

A run directory holds::

    config.json          the RunConfig, plus what data it was trained on ("data")
    checkpoint.msgpack   the latest checkpoint: step, run facts and the whole train state, one file
    lowest_validation_mse.msgpack
                         with ``keep_lowest_validation_mse``: the checkpoint of the evaluation with the
                         lowest validation action MSE so far (early stopping's pick), same format
    metrics.csv          one row per evaluation
    masks.csv            one row per (mask refresh, network, layer)
    tensorboard/         TensorBoard event files
    summary.json         written last: its presence means the run finished
    .lock                held (flock) by the process training the run: a second process that
                         tries to train or resume the same directory is refused, and the lock
                         goes with its holder, however that process ends

Runs written before checkpoints became one file also have ``checkpoint.json`` (the step and run
facts); they are still read, and the file is removed when such a run writes its next checkpoint.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.msgpack"
LOWEST_VALIDATION_MSE_FILE = "lowest_validation_mse.msgpack"
# The checkpoints a run may keep, by the name `load_agent` and `--checkpoint` take.
CHECKPOINT_FILES = {"latest": CHECKPOINT_FILE, "lowest-validation-mse": LOWEST_VALIDATION_MSE_FILE}
LEGACY_CHECKPOINT_INFO = "checkpoint.json"
METRICS_FILE = "metrics.csv"
MASKS_FILE = "masks.csv"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"


class RunInUseError(RuntimeError):
    """Another process is training this run directory."""


def lock_run(directory: str | os.PathLike) -> IO:
    """Take the run directory's lock (creating the directory) and return its open file; closing
    the file, or the end of this process however it happens, releases it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / LOCK_FILE, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunInUseError(
            f"{directory} is being trained by another process (it holds {LOCK_FILE}): stop that one first, "
            "or train into another directory"
        ) from None
    return handle


def run_entries(directory: str | os.PathLike) -> list[Path]:
    """What a run directory holds, its lock file aside (an empty directory holds nothing)."""
    directory = Path(directory)
    return [p for p in directory.iterdir() if p.name != LOCK_FILE] if directory.is_dir() else []


def is_finished(directory: str | os.PathLike) -> bool:
    return (Path(directory) / SUMMARY_FILE).is_file()


def has_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / CHECKPOINT_FILE).is_file()


def run_directory_of(path: str | os.PathLike) -> Path:
    """The run directory of ``path``: the directory itself, or the one holding a file inside it."""
    path = Path(path)
    return path.parent if path.is_file() else path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new one, never
    a mix: write a temporary file, flush it to disk, then rename it over ``path`` (the commit point)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
