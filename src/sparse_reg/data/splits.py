"""Small training subsets and a disjoint validation set, drawn from a larger dataset.

Subsets are made of whole episodes, so returns and episode boundaries stay meaningful; only the
last episode is cut to hit the requested size exactly. Validation episodes are never touched,
not even partially, by the training subset (the paper's code let them overlap).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .dataset import Dataset, DatasetError

Mode = Literal["trajectories", "first"]
MODES = ("trajectories", "first")


def _episode_order(dataset: Dataset, seed: int, mode: str) -> list[slice]:
    """Episodes in the order they are drawn: a seeded permutation, or dataset order for "first"."""
    if mode not in MODES:
        raise DatasetError(f"unknown subsample mode '{mode}' (expected one of {MODES})")
    episodes = dataset.episode_slices()
    if mode == "first":
        return episodes
    order = np.random.default_rng(seed).permutation(len(episodes))
    return [episodes[i] for i in order]


def _take(episodes: list[slice], size: int) -> tuple[np.ndarray, int]:
    """Row indices of whole episodes taken in turn until ``size`` rows (the last one cut).

    Returns the indices and how many episodes were used (partly or fully).
    """
    parts, total, used = [], 0, 0
    for episode in episodes:
        if total >= size:
            break
        rows = np.arange(episode.start, episode.stop)[: size - total]
        parts.append(rows)
        total += len(rows)
        used += 1
    indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return indices, used


def _subset(dataset: Dataset, indices: np.ndarray, **metadata) -> Dataset:
    """The rows ``indices`` with every episode end flagged.

    A kept episode can end where the source episode did not (it was cut), or at the source's
    very last row which may carry no flag; moved next to other episodes, those ends would be
    lost, so they are marked ``timeouts=True``. A real terminal end stays a terminal.
    """
    subset = dataset.select(indices, metadata={**dataset.metadata, **metadata})
    # Row i ends a kept episode where the next kept row is not its successor in the source.
    next_rows = np.append(indices[1:], -1)
    ends_here = next_rows != indices + 1
    timeouts = subset.timeouts | (ends_here & ~subset.terminals)
    return subset.replace(timeouts=timeouts)


def _check_size(dataset: Dataset, size: int, what: str) -> None:
    if size <= 0:
        raise DatasetError(f"{what} must be positive, got {size}")
    if size > len(dataset):
        raise DatasetError(f"requested size {size} but dataset {dataset.name} has only {len(dataset)} transitions")


def subsample(dataset: Dataset, size: int, seed: int, mode: Mode = "trajectories") -> Dataset:
    """A subset of exactly ``size`` transitions.

    "trajectories": whole episodes in a seeded random order, the last one cut to fit.
    "first": the first ``size`` rows, as the paper's code does.
    The last transition is marked ``timeouts=True`` unless it is a real terminal.
    """
    return split_train_validation(dataset, size, 0, seed, mode)[0]


def split_train_validation(
    dataset: Dataset,
    train_size: int,
    validation_size: int,
    seed: int,
    mode: Mode = "trajectories",
    return_indices: bool = False,
) -> tuple[Dataset, Dataset | None] | tuple[Dataset, Dataset | None, np.ndarray, np.ndarray]:
    """A training subset (as :func:`subsample`) and a validation set of whole unused episodes.

    Validation episodes are drawn in the same order, after the training ones ("first": those
    starting after the training portion's last, possibly cut, episode), up to
    ``validation_size`` transitions; the last may be cut. Fewer are returned if fewer remain, and
    None if none remain or ``validation_size`` is 0. With ``return_indices=True`` also returns the
    source row indices of both sets, ``(train, validation, train_indices, validation_indices)``.
    """
    _check_size(dataset, train_size, "train_size")
    if validation_size < 0:
        raise DatasetError(f"validation_size must be >= 0, got {validation_size}")
    episodes = _episode_order(dataset, seed, mode)
    train_indices, used = _take(episodes, train_size)
    validation_indices, _ = _take(episodes[used:], validation_size)

    common = {"seed": seed, "subsample_mode": mode}
    train = _subset(dataset, train_indices, subset="train", **common)
    validation = None
    if len(validation_indices):
        validation = _subset(dataset, validation_indices, subset="validation", **common)
    if return_indices:
        return train, validation, train_indices, validation_indices
    return train, validation
