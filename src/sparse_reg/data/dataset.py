"""The one in-memory dataset type, and the operations the engine needs on it.

A :class:`Dataset` is a flat, time-ordered list of transitions. An episode ends at a
transition whose ``terminals`` (the environment ended it) or ``timeouts`` (it was cut,
e.g. by a time limit or by subsampling) flag is set.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np

ARRAY_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
NORMALISATION_EPS = 1e-3  # added to the std, as in TD3+BC / IQL reference code


class DatasetError(ValueError):
    """A dataset is malformed (NaN/inf, mismatched lengths, wrong shapes) or cannot be read."""


@dataclass(frozen=True)
class ReferenceScores:
    """Returns of a random and an expert policy, for the D4RL normalised score."""

    random: float
    expert: float

    def normalize(self, episode_return):
        return 100.0 * (np.asarray(episode_return) - self.random) / (self.expert - self.random)


@dataclass(frozen=True)
class Dataset:
    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, action_dim) float32
    rewards: np.ndarray  # (N,) float32
    next_observations: np.ndarray  # (N, obs_dim) float32
    terminals: np.ndarray  # (N,) bool
    timeouts: np.ndarray  # (N,) bool
    env_id: str | None = None
    name: str = "dataset"
    reference: ReferenceScores | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, dtype in zip(ARRAY_FIELDS, (np.float32,) * 4 + (bool,) * 2):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=dtype))
        self.validate()

    def validate(self) -> None:
        n = len(self.rewards)
        lengths = {name: len(getattr(self, name)) for name in ARRAY_FIELDS}
        if len(set(lengths.values())) != 1:
            raise DatasetError(f"{self.name}: mismatched lengths {lengths}")
        if n == 0:
            raise DatasetError(f"{self.name}: no transitions")
        if self.observations.ndim != 2 or self.next_observations.shape != self.observations.shape:
            raise DatasetError(
                f"{self.name}: observations {self.observations.shape} and next_observations "
                f"{self.next_observations.shape} must be the same (N, obs_dim) shape"
            )
        if self.actions.ndim != 2:
            raise DatasetError(f"{self.name}: actions must be (N, action_dim), got {self.actions.shape}")
        for name in ARRAY_FIELDS[:4]:
            bad = ~np.isfinite(getattr(self, name))
            if bad.any():
                row = int(np.argwhere(bad)[0][0])
                raise DatasetError(f"{self.name}: {name} has {int(bad.sum())} NaN/inf values (first at row {row})")

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    def episode_ends(self) -> np.ndarray:
        """Exclusive end index of every episode; the last transition always closes one."""
        done = self.terminals | self.timeouts
        done = done.copy()
        done[-1] = True
        return np.flatnonzero(done) + 1

    def episode_slices(self) -> list[slice]:
        ends = self.episode_ends()
        starts = np.concatenate([[0], ends[:-1]])
        return [slice(int(s), int(e)) for s, e in zip(starts, ends)]

    def select(self, indices: np.ndarray, **changes) -> "Dataset":
        """A new dataset holding the given transitions (in the given order)."""
        arrays = {name: getattr(self, name)[indices] for name in ARRAY_FIELDS}
        return dataclasses.replace(self, **arrays, **changes)

    def replace(self, **changes) -> "Dataset":
        return dataclasses.replace(self, **changes)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAY_FIELDS}

    def fingerprint(self) -> str:
        """A short hash of the transitions (all arrays, in order): equal data, equal fingerprint,
        however it was loaded; recorded with every run so a resume on other data is refused."""
        digest = hashlib.sha256()
        for name in ARRAY_FIELDS:
            array = np.ascontiguousarray(getattr(self, name))
            digest.update(f"{name}{array.shape}{array.dtype.str}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()[:16]

    def record(self) -> dict:
        """What a run records about its data: name, size and fingerprint."""
        return {"name": self.name, "transitions": len(self), "fingerprint": self.fingerprint()}


@dataclass(frozen=True)
class Normalizer:
    """Observation standardisation fitted on the training subset: (obs - mean) / (std + eps)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, observations: np.ndarray, eps: float = NORMALISATION_EPS) -> "Normalizer":
        observations = np.asarray(observations, dtype=np.float64)
        return cls(
            mean=observations.mean(0).astype(np.float32),
            std=(observations.std(0) + eps).astype(np.float32),
        )

    @classmethod
    def passthrough(cls, obs_dim: int) -> "Normalizer":
        """The normaliser that changes nothing (mean 0, std 1)."""
        return cls(np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32))

    def __call__(self, observations):
        return (observations - self.mean) / self.std

    def to_dict(self) -> dict:
        return {"mean": np.asarray(self.mean).tolist(), "std": np.asarray(self.std).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))
