"""The layout of a run directory, owned in one place.

A run directory holds::

    config.json          the RunConfig, plus what data it was trained on ("data") and the Sparse-Reg
                         settings resolved when it started ("sparse_reg"; not in runs of older versions)
    checkpoint.msgpack   the latest checkpoint: step, run facts (the config among them: a resume
                         refuses a config.json that no longer matches it) and the whole train
                         state, one file
    lowest_validation_mse.msgpack
                         with ``keep_lowest_validation_mse``: the checkpoint of the evaluation with the
                         lowest validation action MSE so far (early stopping's pick), same format
    metrics.csv          one row per evaluation
    masks.csv            one row per (mask refresh, network, layer)
    tensorboard/         TensorBoard event files
    summary.json         written last: a readable one means the run finished (a damaged one: not)
    .lock                held (flock) by the process training the run: a second process that
                         tries to train or resume the same directory is refused, and the lock
                         goes with its holder, however that process ends

Files a reader may see half-written are replaced atomically (:func:`atomic_write`); its
``*.tmp`` files, left only by a process killed while writing, are removed on resume.

Runs written before checkpoints became one file also have ``checkpoint.json`` (the step and run
facts); they are still read, and the file is removed when such a run writes its next checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
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
TMP_SUFFIX = ".tmp"  # atomic_write's temporaries


class RunInUseError(RuntimeError):
    """Another process is training this run directory."""


class RunFileError(ValueError):
    """A file of a run directory is damaged or does not belong to the run; the message names the
    file and how to recover."""


class RunDirectoryError(FileExistsError):
    """A run's output path cannot be used as asked (a file, a directory of something else)."""


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


def is_unfinished_run_file(name: str) -> bool:
    """Whether a file named ``name`` belongs in a run stopped before its first checkpoint."""
    return name in (CONFIG_FILE, METRICS_FILE, MASKS_FILE, TENSORBOARD_DIR, LOWEST_VALIDATION_MSE_FILE) or \
        name.endswith(TMP_SUFFIX)


def is_finished(directory: str | os.PathLike) -> bool:
    """Whether the run wrote its summary: a ``summary.json`` holding a JSON object (a damaged one,
    e.g. truncated by a full disk, means the run is not finished: ``--resume`` writes it again)."""
    try:
        return isinstance(read_json(Path(directory) / SUMMARY_FILE), dict)
    except (OSError, RunFileError):
        return False


def read_json(path: Path):
    """The JSON content of ``path``; a file that is not JSON text raises :class:`RunFileError`
    naming it (a missing one: ``FileNotFoundError``)."""
    raw = Path(path).read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunFileError(f"{path} is damaged: not text") from None
    except json.JSONDecodeError as error:
        raise RunFileError(f"{path} is damaged: not JSON ({error})") from None


def has_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / CHECKPOINT_FILE).is_file()


def run_directory_of(path: str | os.PathLike) -> Path:
    """The run directory of ``path``: the directory itself, or the one holding a file inside it."""
    path = Path(path)
    return path.parent if path.is_file() else path


def check_run_directory(out: Path, resume: bool, overwrite: bool) -> None:
    """Raise if ``out`` cannot be used as asked; changes nothing on disk.

    A resume of a run killed before its first checkpoint starts it again (it has nothing to lose);
    a directory with other files in it, or none at all, is not such a run."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"output path {out} exists and is not a directory")
    if any(parent.exists() and not parent.is_dir() for parent in out.parents):
        raise RunDirectoryError(f"output path {out} lies under a file, not a directory")
    if resume:
        if has_checkpoint(out):
            return
        entries = run_entries(out)
        if not entries:
            raise FileNotFoundError(f"cannot resume: no run in {out} (no checkpoint): drop --resume to start it")
        others = sorted(p.name for p in entries if not is_unfinished_run_file(p.name))
        if others:
            raise RunDirectoryError(
                f"cannot resume: no checkpoint in {out}, and it holds {', '.join(others[:3])}"
                f"{' ...' if len(others) > 3 else ''}, not files of an unfinished run: use --overwrite to replace it"
            )
        return
    if run_entries(out) and not overwrite:
        raise RunDirectoryError(f"output directory {out} already exists and is not empty: use --resume or --overwrite")


def prepare_run_directory(out: Path, resume: bool, overwrite: bool) -> None:
    """Empty ``out`` for a fresh run (its lock, held by this process, stays); on resume, remove the
    temporaries a process killed while writing left."""
    check_run_directory(out, resume, overwrite)
    if resume:
        remove_temporaries(out)
        return
    for entry in run_entries(out):
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new one, never
    a mix: write a temporary file, flush it to disk, then rename it over ``path`` (the commit point)."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as error:
        # e.g. a full disk: the half-written temporary would keep it full (the next try fails alike).
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise naming(error, tmp) from None
        raise
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def naming(error: OSError, path: Path) -> OSError:
    """``error`` with ``path`` as its file where the system did not say which (a failed write)."""
    if error.filename is not None or error.errno is None:
        return error
    return type(error)(error.errno, error.strerror, str(path))


def remove_temporaries(directory: str | os.PathLike) -> None:
    """Remove what :func:`atomic_write` left half-written in ``directory`` (a process killed while
    writing); call it holding the run's lock."""
    for tmp in Path(directory).glob("*" + TMP_SUFFIX):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


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
