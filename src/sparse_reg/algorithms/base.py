"""What every algorithm module provides, and the pieces they share.

An algorithm is a module with a config dataclass, ``init``, one pure ``update`` and a
deterministic ``act``, bundled in an :class:`Algorithm`. ``losses`` maps each network
field of the train state to the loss that trains it; Sparse-Reg scores that network
with the same loss, so a new algorithm gets Sparse-Reg by declaring ``losses``.
"""

from __future__ import annotations

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
    """Adds ``coefficient * sign(θ)`` to the gradient of every weight matrix (``kernel``)."""

    def update_fn(updates, state, params):
        def add(path, g, p):
            is_kernel = getattr(path[-1], "key", None) == "kernel"
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
