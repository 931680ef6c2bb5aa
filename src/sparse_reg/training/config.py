"""One run's complete, JSON-serialisable description."""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..algorithms import Regularization, get_algorithm
from ..data.reference import parse_reference
from ..networks import NetworkConfig
from ..provenance import parse_count
from ..sparsity import SparseRegConfig, resolve_sparsity

SUBSAMPLE_MODES = ("trajectories", "first")
# Whole numbers, also given as counts ("10k", "1M") from a TOML file or the Python API.
COUNT_FIELDS = ("size", "validation_size", "mask_interval", "mask_until", "steps", "eval_every", "eval_episodes")
FLOAT_FIELDS = ("dropout", "l1", "weight_decay")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run (defaults: the paper's protocol).

    size: training transitions drawn from the dataset (None = all of it, less validation).
    subsample: "trajectories" (whole episodes at random) or "first" (first N rows, as the paper's code).
    validation_size: held-out transitions, whole episodes disjoint from training (capped by availability).
    sparsity: "auto" (0.95 up to 25k training transitions, else 0.75), or a fraction in [0, 1); 0 = dense.
    mask_interval / mask_until: masks recomputed every interval steps while step < until; until 0 = SFI.
    reference: the random/expert returns that normalise scores: "dataset" (what the data carries: for
        the project's datasets the returns of its own expert and of random actions, for a file the
        values stored in it, else D4RL's for the MuJoCo tasks), "d4rl" (D4RL's published values, as
        papers report), or explicit (random, expert) returns.
    algo_options: overrides of the algorithm's own config (e.g. {"beta": 3.0} for IQL).
    """

    algo: str = "iql"
    dataset: str = "halfcheetah-expert-v0"
    env: str | None = None
    size: int | None = 10_000
    subsample: str = "trajectories"
    validation_size: int = 200_000
    sparsity: str | float = "auto"
    mask_interval: int = 5_000
    mask_until: int = 200_000
    steps: int = 1_000_000
    seed: int = 0
    eval_every: int = 5_000
    eval_episodes: int = 10
    hidden_dims: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    layer_norm: bool = False
    spectral_norm: bool = False
    l1: float = 0.0
    weight_decay: float = 0.0
    reference: str | tuple[float, float] = "dataset"
    algo_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in COUNT_FIELDS + ("seed",):
            value = getattr(self, name)
            if value is not None or name != "size":
                object.__setattr__(self, name, _whole_number(name, value, counts=name != "seed"))
        for name in FLOAT_FIELDS:
            object.__setattr__(self, name, _real_number(name, getattr(self, name)))
        dims = self.hidden_dims
        if isinstance(dims, (int, str)) or not dims:
            raise ValueError(f"hidden_dims must be a non-empty list of layer widths, got {dims!r}")
        object.__setattr__(self, "hidden_dims", tuple(_whole_number("hidden_dims", h) for h in dims))
        if any(h <= 0 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive layer widths, got {list(self.hidden_dims)}")
        object.__setattr__(self, "reference", parse_reference(self.reference))
        if not isinstance(self.algo_options, dict):
            raise ValueError(f"algo_options must be a mapping of option names to values, got {self.algo_options!r}")
        self.validate()

    def validate(self) -> None:
        get_algorithm(self.algo)  # raises on an unknown name
        if self.subsample not in SUBSAMPLE_MODES:
            raise ValueError(f"subsample must be one of {SUBSAMPLE_MODES}, got '{self.subsample}'")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")
        for name in ("steps", "eval_every", "eval_episodes", "mask_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.validation_size < 0 or self.mask_until < 0:
            raise ValueError("validation_size and mask_until must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.l1 < 0 or self.weight_decay < 0:
            raise ValueError("l1 and weight_decay must be >= 0")
        self.sparse_reg_config(1)  # raises on a bad sparsity
        self.algorithm_config()  # raises on unknown algo_options

    def algorithm_config(self):
        algorithm = get_algorithm(self.algo)
        known = {f.name for f in dataclasses.fields(algorithm.config_class)} - {"network", "regularization"}
        unknown = set(self.algo_options) - known
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for {self.algo}; known: {sorted(known)}")
        return algorithm.config_class(
            network=NetworkConfig(self.hidden_dims, self.dropout, self.layer_norm, self.spectral_norm),
            regularization=Regularization(l1=self.l1, weight_decay=self.weight_decay),
            **self.algo_options,
        )

    def sparse_reg_config(self, train_size: int) -> SparseRegConfig:
        """Sparse-Reg's settings for ``train_size`` training transitions ("auto" depends on it)."""
        return SparseRegConfig(resolve_sparsity(self.sparsity, train_size), self.mask_interval, self.mask_until)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        if isinstance(self.reference, tuple):
            d["reference"] = list(self.reference)
        return d

    @property
    def dense(self) -> bool:
        return not self.sparse_reg_config(1).enabled  # "auto" is never dense, whatever the size

    def identity(self) -> dict:
        """The fields that decide what the run computes: ``to_dict`` without the mask schedule of a
        dense run (it has no masks), so that two configs equal here train the same run."""
        d = self.to_dict()
        if self.dense:
            d.pop("mask_interval"), d.pop("mask_until")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        return cls.from_dict(json.loads(path.read_text()))


def _whole_number(name: str, value, counts: bool = True) -> int:
    """``value`` as an int: ints, integral floats (256.0) and, for counts, "10k"/"1M"; else ValueError."""
    if isinstance(value, str) and counts:
        try:
            return parse_count(value)
        except ValueError:
            pass
    elif isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{name} must be a whole number, got {value!r}")


def _real_number(name: str, value) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{name} must be a number, got {value!r}")
