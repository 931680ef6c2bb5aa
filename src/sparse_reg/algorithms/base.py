"""What every algorithm module provides, and the pieces they share.

An algorithm is a module with a config dataclass, ``init``, one pure ``update`` and a
deterministic ``act``, bundled in an :class:`Algorithm`. ``losses`` maps each network
field of the train state to the loss that trains it; Sparse-Reg scores that network
with the same loss (or with ``scoring_losses`` where an algorithm says otherwise), so a new
algorithm gets Sparse-Reg by declaring ``losses``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Batch(NamedTuple):
    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_observations: jax.Array
    dones: jax.Array  # 1.0 where the episode terminated (not where it was cut by a time limit)


@dataclass(frozen=True)
class Regularization:
    """Optimizer-level regularisers, the same for every network of an agent.

    l1: coefficient of an L1 penalty on weight matrices (added to the gradient as
        ``l1 * sign(θ)``, i.e. the gradient of ``l1 * Σ|θ|``).
    weight_decay: decoupled weight decay (AdamW); 0 means plain Adam.
    """

    l1: float = 0.0
    weight_decay: float = 0.0


def add_l1_gradient(coefficient: float) -> optax.GradientTransformation:
    """Adds ``coefficient * sign(θ)`` to the gradient of every weight matrix (``kernel``; in the live-units
    layout a kernel is a dict of blocks, ``kernel/block`` and so on: every leaf under ``kernel``)."""

    def update_fn(updates, state, params):
        def add(path, g, p):
            is_kernel = any(getattr(entry, "key", None) == "kernel" for entry in path)
            return g + coefficient * jnp.sign(p) if is_kernel else g

        return jax.tree_util.tree_map_with_path(add, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(learning_rate: float | optax.Schedule, reg: Regularization) -> optax.GradientTransformation:
    if reg.weight_decay > 0:
        optimizer = optax.adamw(learning_rate, weight_decay=reg.weight_decay)
    else:
        optimizer = optax.adam(learning_rate)
    if reg.l1 > 0:
        optimizer = optax.chain(add_l1_gradient(reg.l1), optimizer)
    return optimizer


class Algorithm(NamedTuple):
    name: str
    config_class: type
    init: Callable[..., Any]  # (config, obs_dim, action_dim, key, total_steps) -> state
    update: Callable[[Any, Batch], tuple[Any, dict]]  # pure; jit/scan/vmap friendly
    act: Callable[[Any, jax.Array], jax.Array]  # deterministic action for normalised observations
    losses: Mapping[str, Callable]  # network field -> loss(state, batch, key) -> (loss, metrics)
    # The losses Sparse-Reg scores each network with, where they differ from the training losses
    # (the paper's released AWAC scores its critic with another loss than it trains it with).
    scoring_losses: Mapping[str, Callable] | None = None

    def snip_losses(self) -> Mapping[str, Callable]:
        """Network field -> the loss its SNIP scores come from (the training loss by default)."""
        return self.scoring_losses or self.losses


def check_options(
    config: Any,
    positive: tuple[str, ...] = (),
    non_negative: tuple[str, ...] = (),
    rates: tuple[str, ...] = (),
    fractions: tuple[str, ...] = (),
) -> None:
    """Validate an algorithm config where it is made, so the CLI, TOML files and Python all get it.

    Types follow the field annotations (``int``: whole numbers, ``float``: real numbers; integral
    floats and ints are converted; ``bool`` and ``str`` exactly; ``X | None``: None or an X); then ranges: ``positive`` > 0, ``non_negative`` >= 0, ``rates``
    in (0, 1] (e.g. tau), ``fractions`` in [0, 1] (e.g. discount). One-line ValueError otherwise.
    """
    for f in dataclasses.fields(config):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        value = getattr(config, f.name)
        if kind.endswith(" | None"):  # optional: None, or a value of the type before the bar
            if value is None:
                continue
            kind = kind[: -len(" | None")]
        if kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"option {f.name} must be true or false, got {value!r}")
        if kind == "str" and not isinstance(value, str):
            raise ValueError(f"option {f.name} must be a string, got {value!r}")
        if kind not in ("int", "float"):
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"option {f.name} must be a {'whole ' if kind == 'int' else ''}number, got {value!r}")
        if kind == "int" and not float(value).is_integer():
            raise ValueError(f"option {f.name} must be a whole number, got {value!r}")
        object.__setattr__(config, f.name, int(value) if kind == "int" else float(value))
    for names, ok, wanted in (
        (positive, lambda v: v > 0, "> 0"),
        (non_negative, lambda v: v >= 0, ">= 0"),
        (rates, lambda v: 0 < v <= 1, "in (0, 1]"),
        (fractions, lambda v: 0 <= v <= 1, "in [0, 1]"),
    ):
        for name in names:
            if not ok(getattr(config, name)):
                raise ValueError(f"option {name} must be {wanted}, got {getattr(config, name)!r}")
