"""One run's complete, JSON-serialisable description."""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..algorithms import ALGORITHMS, Regularization, get_algorithm
from ..data.reference import parse_reference
from ..live_layout import FIXED_MASK_LAYOUTS, LEGACY_LAYOUTS
from ..networks import NetworkConfig
from ..provenance import parse_count
from ..sparsity import MASK_SCORERS, SparseRegConfig, parse_sparsity, resolve_sparsity
from .run_directory import CONFIG_FILE, RunFileError, read_json

SUBSAMPLE_MODES = ("trajectories", "first")
# Whole numbers, also given as counts ("10k", "1M") from a TOML file or the Python API.
COUNT_FIELDS = ("size", "validation_size", "mask_interval", "mask_until", "steps", "eval_every", "eval_episodes")
FLOAT_FIELDS = ("dropout", "l1", "weight_decay")


def _field(default, help: str, variant: str | None = None, **cli):
    """A run setting with its help (the CLI's ``--help`` shows it) and, for regularisers, the short
    name that reports give runs using it (``variant``); ``cli`` holds argparse extras (metavar, choices)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, "variant": variant, "cli": cli})
    return field(default=default, metadata={"help": help, "variant": variant, "cli": cli})


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run (defaults: the paper's protocol).

    Each field's help is in its metadata (``sparse-reg train --help`` prints them all); the
    command-line options are made from these fields, so the two cannot drift apart.
    """

    algo: str = _field("iql", "algorithm: " + ", ".join(ALGORITHMS) + "; the *-paper-code variants compute what "
                       "the paper's released code computes (docs/experiments.md)")
    dataset: str = _field("halfcheetah-expert-v0", "project dataset name, Minari id, .hdf5 or .npz path")
    env: str | None = _field(None, "gymnasium id, if the dataset does not name it")
    size: int | None = _field(10_000, "training transitions drawn from the dataset, less validation (None, or 0 on the command line: all)")
    subsample: str = _field("trajectories", "'trajectories': whole episodes at random; 'first': the dataset's first "
                            "rows (as the paper's code)", choices=SUBSAMPLE_MODES)
    validation_size: int = _field(200_000, "held-out transitions: whole episodes disjoint from training (capped by "
                                  "availability)")
    sparsity: str | float = _field("auto", "'auto' (95% up to 25k training transitions, else 75%) or a fraction "
                                   "in [0, 1); 0 = dense")
    mask_interval: int = _field(5_000, "steps between Sparse-Reg mask refreshes")
    mask_until: int = _field(200_000, "masks refreshed while step < this; 0 = one mask at step 0, never refreshed "
                             "(the paper's 'SFI' runs; runs with refreshes are its 'SPU', periodic updates)")
    mask_scorer: str = _field("snip", "how a mask refresh ranks weights: 'snip' = |θ·∂L/∂θ| (Sparse-Reg); "
                              "'magnitude' = |θ| and 'random' are controls at the same sparsity and schedule",
                              choices=tuple(MASK_SCORERS))
    steps: int = _field(1_000_000, "gradient steps")
    seed: int = _field(0, "training seed (data subset, initialisation, batches)")
    eval_every: int = _field(5_000, "steps between evaluations and checkpoints")
    eval_episodes: int = _field(10, "episodes per evaluation")
    keep_lowest_validation_mse: bool = _field(
        False, "also keep the checkpoint of the evaluation with the lowest validation action MSE "
        "(lowest_validation_mse.msgpack; load it with --checkpoint lowest-validation-mse): early stopping's "
        "agent without a second run")
    hidden_dims: tuple[int, ...] = _field((256, 256), "hidden layer widths")
    l1: float = _field(0.0, "L1 penalty coefficient on weights", variant="l1")
    dropout: float = _field(0.0, "dropout rate on hidden layers", variant="dropout")
    weight_decay: float = _field(0.0, "AdamW decoupled weight decay (paper: 0.01)", variant="wd")
    layer_norm: bool = _field(False, "LayerNorm after every hidden layer", variant="layernorm")
    spectral_norm: bool = _field(False, "spectral norm on the penultimate layer", variant="specnorm")
    reference: str | tuple[float, float] = _field(
        "dataset", "returns that normalise scores: 'dataset' = what the data carries (project datasets: the returns "
        "of their own expert and of random actions; files: values stored in them, else D4RL's), 'd4rl' = D4RL's "
        "published values (as papers report), or two numbers RANDOM,EXPERT", metavar="dataset|d4rl|RANDOM,EXPERT")
    algo_options: dict[str, Any] = _field({}, "overrides of the algorithm's own config, e.g. beta=3.0 for IQL")
    frozen_layout: str = _field(
        "auto", "how a sparse run's updates run between mask refreshes: 'live-units' = every layer cut to the "
        "units its masks leave alive, as dense matmuls over those (docs/performance.md); 'masked' = dense "
        "matrices times masks; 'auto' = live units on a CPU, for the networks where the cut pays. Same results "
        "to float32 rounding; checkpoints are the same either way ('kept-values', the former layout, now means "
        "'live-units')", choices=FIXED_MASK_LAYOUTS + tuple(LEGACY_LAYOUTS))

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
        if self.keep_lowest_validation_mse and self.validation_size == 0:
            raise ValueError("keep_lowest_validation_mse needs validation data: set validation_size > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.l1 < 0 or self.weight_decay < 0:
            raise ValueError("l1 and weight_decay must be >= 0")
        if self.frozen_layout not in FIXED_MASK_LAYOUTS + tuple(LEGACY_LAYOUTS):
            raise ValueError(f"frozen_layout must be one of {FIXED_MASK_LAYOUTS}, got {self.frozen_layout!r}")
        parse_sparsity(self.sparsity)  # raises on a bad sparsity
        self.algorithm_config()  # raises on unknown algo_options

    @staticmethod
    def algorithm_options() -> dict[str, list[str]]:
        """The ``algo_options`` keys (``--set KEY=VALUE``) each algorithm takes."""
        return {name: [f.name for f in dataclasses.fields(algorithm.config_class)
                       if f.name not in ("network", "regularization")] for name, algorithm in ALGORITHMS.items()}

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
        """Sparse-Reg's settings for ``train_size`` training transitions ("auto" depends on it).

        The trainer resolves them once per run and records them (``sparse_reg`` in config.json and
        summary.json); what reads a run reads them back from there (:func:`recorded_sparse_reg`)."""
        return SparseRegConfig(
            resolve_sparsity(self.sparsity, train_size), self.mask_interval, self.mask_until, self.mask_scorer
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        if isinstance(self.reference, tuple):
            d["reference"] = list(self.reference)
        return d

    @property
    def dense(self) -> bool:
        return parse_sparsity(self.sparsity) == 0.0  # "auto" is never dense, whatever the size

    def result_fields(self) -> dict:
        """The fields that decide what the run computes: ``to_dict`` without the mask schedule of a
        dense run (it has no masks) and without the layout sparse chunks run on (it changes speed, and
        results only at float32 rounding), so that two configs equal here train the same run."""
        d = self.to_dict()
        d.pop("frozen_layout")
        if self.dense:
            d.pop("mask_interval"), d.pop("mask_until"), d.pop("mask_scorer")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        """The config in the JSON file ``path``: ``RunFileError`` (a ValueError) naming the file if it is
        not a config, ``OSError`` if it cannot be read."""
        content = read_json(path)
        if not isinstance(content, dict):
            raise RunFileError(f"{path} is damaged: not a JSON object")
        try:
            return cls.from_dict(content)
        except (ValueError, TypeError) as error:
            raise RunFileError(f"{path} does not describe a run: {error}") from None

    @classmethod
    def of_run(cls, directory: str | Path) -> "RunConfig":
        """The config a run directory records (OSError or ValueError naming the file if it cannot be read)."""
        return cls.load(Path(directory) / CONFIG_FILE)


def recorded_sparse_reg(record: dict) -> SparseRegConfig | None:
    """The resolved Sparse-Reg settings a run's config.json or summary.json records (key
    ``sparse_reg``), or None for runs of versions that did not record them."""
    recorded = record.get(SPARSE_REG_KEY)
    return SparseRegConfig.from_dict(recorded) if isinstance(recorded, dict) else None


SPARSE_REG_KEY = "sparse_reg"


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
