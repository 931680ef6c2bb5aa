"""The layout of a run directory, owned in one place.

A run directory holds::

    config.json          the RunConfig, plus what data it was trained on ("data")
    checkpoint.msgpack   the latest checkpoint: step, run facts and the whole train state, one file
    metrics.csv          one row per evaluation
    masks.csv            one row per (mask refresh, network, layer)
    tensorboard/         TensorBoard event files
    summary.json         written last: its presence means the run finished

Runs written before checkpoints became one file also have ``checkpoint.json`` (the step and run
facts); they are still read, and the file is removed when such a run writes its next checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.msgpack"
LEGACY_CHECKPOINT_INFO = "checkpoint.json"
METRICS_FILE = "metrics.csv"
MASKS_FILE = "masks.csv"
TENSORBOARD_DIR = "tensorboard"


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
