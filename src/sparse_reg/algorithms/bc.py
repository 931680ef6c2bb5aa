"""Behaviour cloning: a deterministic tanh policy regressed onto the dataset's actions.

    L_actor(θ) = mean over the batch and action dimensions of (π_θ(s) − a)²
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from flax import struct

from ..masked_net import MaskedNet, value_and_grad_of
from ..networks import DeterministicActor, NetworkConfig
from .base import Algorithm, Batch, Regularization, check_options, make_optimizer


@dataclass(frozen=True)
class BCConfig:
    learning_rate: float = 1e-3
    batch_size: int = 256
    network: NetworkConfig = field(default_factory=NetworkConfig)
    regularization: Regularization = field(default_factory=Regularization)

    def __post_init__(self):
        check_options(self, positive=("learning_rate", "batch_size"))


class BCState(struct.PyTreeNode):
    actor: MaskedNet
    rng: jax.Array
    step: jax.Array


def init(config: BCConfig, obs_dim: int, action_dim: int, key: jax.Array, total_steps: int) -> BCState:
    key, actor_key = jax.random.split(key)
    actor = MaskedNet.create(
        DeterministicActor(config.network, action_dim),
        actor_key,
        (jnp.zeros((1, obs_dim)),),
        make_optimizer(config.learning_rate, config.regularization),
    )
    return BCState(actor=actor, rng=key, step=jnp.zeros((), jnp.int32))


def actor_loss(state: BCState, batch: Batch, key: jax.Array):
    predicted = state.actor(batch.observations, dropout_key=key)
    loss = jnp.mean((predicted - batch.actions) ** 2)
    return loss, {"actor_loss": loss}


def update(state: BCState, batch: Batch) -> tuple[BCState, dict]:
    rng, key = jax.random.split(state.rng)
    (_, metrics), grads = value_and_grad_of(actor_loss, state, "actor", batch, key)
    state = state.replace(actor=state.actor.apply_gradients(grads), rng=rng, step=state.step + 1)
    return state, metrics


def act(state: BCState, observations: jax.Array) -> jax.Array:
    return state.actor(observations)


BC = Algorithm("bc", BCConfig, init, update, act, losses={"actor": actor_loss})
