"""Data preparation for runs: the training and validation subsets, normalised and on the device,
the checks and warnings about the data, and the fresh train state of a run.

Each seed of a group gets its own subset and normaliser (:class:`PreparedData`); the whole
dataset is loaded, fingerprinted and checked once for the group (:func:`prepare_runs`).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..algorithms import Batch, get_algorithm
from ..data.dataset import Dataset, Normalizer, ReferenceScores
from ..data.loaders import load_dataset
from ..data.reference import resolve_reference
from ..data.splits import split_train_validation
from ..sparsity import with_all_ones_masks
from .config import RunConfig
from .logging import RunLogger


@dataclass(frozen=True)
class PreparedData:
    """Training and validation subsets, normalised, plus what evaluation needs."""

    train: Dataset
    validation: Dataset | None
    normalizer: Normalizer
    env_id: str
    reference: ReferenceScores | None
    reference_source: str = "none"  # see data.reference.describe_reference
    data_record: dict | None = None  # the whole dataset's name, size and fingerprint (Dataset.record)

    @classmethod
    def from_config(cls, config: RunConfig, dataset: Dataset | None = None, data_record: dict | None = None
                    ) -> "PreparedData":
        dataset = dataset if dataset is not None else load_dataset(config.dataset, env_id=config.env)
        env_id = config.env or dataset.env_id
        if env_id is None:
            raise ValueError(f"dataset '{dataset.name}' does not name its environment: pass --env")
        size = config.size if config.size is not None else len(dataset)
        train, validation = split_train_validation(
            dataset, size, config.validation_size, seed=config.seed, mode=config.subsample
        )
        reference, source = resolve_reference(config.reference, dataset, env_id)
        return cls(train, validation, Normalizer.fit(train.observations), env_id, reference, source,
                   data_record or dataset.record())

    def reference_record(self) -> dict | None:
        """The reference as runs record it: its returns and where they come from."""
        if self.reference is None:
            return None
        return {"random": self.reference.random, "expert": self.reference.expert, "source": self.reference_source}


def to_device_batch(data: Dataset, normalizer: Normalizer) -> Batch:
    return Batch(
        observations=jnp.asarray(normalizer(data.observations)),
        actions=jnp.asarray(data.actions),
        rewards=jnp.asarray(data.rewards),
        next_observations=jnp.asarray(normalizer(data.next_observations)),
        dones=jnp.asarray(data.terminals, dtype=jnp.float32),
    )


@dataclass
class SeedRun:
    """What belongs to one seed of a group: its config, directory, data subset and logs."""

    config: RunConfig
    out: Path
    data: PreparedData
    train_batch: Batch
    validation_batch: Batch | None
    logger: RunLogger | None = None


def initial_state(config: RunConfig, obs_dim: int, action_dim: int, masked: bool):
    """The algorithm state and the data-sampling key of a fresh run (also a checkpoint template).

    ``masked``: whether its scored networks carry masks (a Sparse-Reg run; all ones until the first
    refresh), so that the state has the structure of every later one."""
    algorithm = get_algorithm(config.algo)
    agent_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = algorithm.init(config.algorithm_config(), obs_dim, action_dim, agent_key, config.steps)
    if masked:
        state = with_all_ones_masks(state, algorithm.losses)
    return state, data_key


def recorded_config(config: RunConfig, dataset: Dataset | None) -> RunConfig:
    """The config as the run records it: with a dataset passed in, ``dataset`` names that data (its
    name), unless ``config.dataset`` already names where it was loaded from."""
    if dataset is None:
        return config
    source = str(dataset.metadata.get("source", ""))
    names = {dataset.name, source, source.removeprefix("minari:")}
    if config.dataset in names or Path(config.dataset).stem == dataset.name:
        return config
    return dataclasses.replace(config, dataset=dataset.name)


def prepare_runs(configs: list[RunConfig], outs: list[Path], dataset: Dataset, data_record: dict) -> list[SeedRun]:
    """One :class:`SeedRun` per config: its subsets of ``dataset``, normalised and on the device."""
    warn_about_actions(dataset)
    runs = []
    for config, out in zip(configs, outs):
        data = PreparedData.from_config(config, dataset, data_record)
        if config.keep_lowest_validation_mse and data.validation is None:
            raise ValueError(
                f"keep_lowest_validation_mse: no validation data is left in '{dataset.name}' ({len(dataset)} "
                f"transitions) after {len(data.train)} training transitions; use a smaller size"
            )
        validation = to_device_batch(data.validation, data.normalizer) if data.validation is not None else None
        runs.append(SeedRun(config, out, data, to_device_batch(data.train, data.normalizer), validation))
    return runs


def warn_about_actions(dataset: Dataset) -> None:
    """Policies act through tanh in [-1, 1]: data outside cannot be imitated, say so once."""
    low, high = float(dataset.actions.min()), float(dataset.actions.max())
    if low < -1.0 - 1e-6 or high > 1.0 + 1e-6:
        outside = float(np.mean(np.any(np.abs(dataset.actions) > 1.0 + 1e-6, axis=1)))
        warnings.warn(
            f"dataset '{dataset.name}': actions range over [{low:.3g}, {high:.3g}] but policies act in [-1, 1] "
            f"({outside:.1%} of transitions have an action outside); rescale the actions to [-1, 1] (e.g. divide "
            "by the environment's action bound) before training",
            stacklevel=4,
        )


def warn_about_data(train: Dataset, config: RunConfig) -> None:
    """Say so once when the training data cannot teach what the run expects of it."""
    batch_size = config.algorithm_config().batch_size
    if len(train) < batch_size:
        warnings.warn(
            f"dataset '{train.name}': {len(train)} training transitions, fewer than one batch ({batch_size}): "
            "every batch repeats them; use more data (--size) or a smaller batch (--set batch_size=...)",
            stacklevel=4,
        )
    if not config.algo.startswith("bc") and not np.any(train.rewards):
        warnings.warn(
            f"dataset '{train.name}': every reward of the training data is 0, so {config.algo}'s critic learns "
            "nothing (values are all 0); check the data, or train bc, which does not use rewards",
            stacklevel=4,
        )
