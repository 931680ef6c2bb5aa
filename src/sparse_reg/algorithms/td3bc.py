"""TD3+BC (Fujimoto & Gu, 2021): TD3 with a behaviour-cloning term in the actor loss.

Critic (twin Q, target policy smoothing):
    ã = clip(π'(s') + clip(ε, −c, c), −1, 1),  ε ~ N(0, σ²)
    y = r + γ (1 − d) min_i Q'_i(s', ã)
    L_critic = Σ_i mean (Q_i(s, a) − y)²
Actor, every ``policy_freq`` steps, with λ = α / mean|Q_1(s, π(s))| (no gradient through λ):
    L_actor = −λ mean Q_1(s, π(s)) + mean (π(s) − a)²
Target actor and critic track their online nets at rate τ after each actor update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from flax import struct

from ..masked_net import MaskedNet, value_and_grad_of
from ..networks import DeterministicActor, NetworkConfig, TwinQ
from .base import Algorithm, Batch, Regularization, check_options, make_optimizer


@dataclass(frozen=True)
class TD3BCConfig:
    actor_learning_rate: float = 1e-3
    critic_learning_rate: float = 1e-3
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 5e-3
    alpha: float = 2.5
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    network: NetworkConfig = field(default_factory=NetworkConfig)
    regularization: Regularization = field(default_factory=Regularization)

    def __post_init__(self):
        check_options(
            self,
            positive=("actor_learning_rate", "critic_learning_rate", "batch_size", "policy_freq"),
            non_negative=("alpha", "policy_noise", "noise_clip"),
            rates=("tau",),
            fractions=("discount",),
        )


class TD3BCState(struct.PyTreeNode):
    actor: MaskedNet
    critic: MaskedNet
    rng: jax.Array
    step: jax.Array
    config: TD3BCConfig = struct.field(pytree_node=False)


def init(config: TD3BCConfig, obs_dim: int, action_dim: int, key: jax.Array, total_steps: int) -> TD3BCState:
    key, actor_key, critic_key = jax.random.split(key, 3)
    obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    reg = config.regularization
    actor = MaskedNet.create(
        DeterministicActor(config.network, action_dim),
        actor_key,
        (obs,),
        make_optimizer(config.actor_learning_rate, reg),
        with_target=True,
    )
    critic = MaskedNet.create(
        TwinQ(config.network), critic_key, (obs, action), make_optimizer(config.critic_learning_rate, reg), with_target=True
    )
    return TD3BCState(actor=actor, critic=critic, rng=key, step=jnp.zeros((), jnp.int32), config=config)


def critic_loss(state: TD3BCState, batch: Batch, key: jax.Array):
    c = state.config
    noise_key, dropout_key = jax.random.split(key)
    noise = jnp.clip(c.policy_noise * jax.random.normal(noise_key, batch.actions.shape), -c.noise_clip, c.noise_clip)
    next_action = jnp.clip(state.actor.target_call(batch.next_observations) + noise, -1.0, 1.0)
    next_q = jnp.min(state.critic.target_call(batch.next_observations, next_action), axis=0)
    target = jax.lax.stop_gradient(batch.rewards + c.discount * (1.0 - batch.dones) * next_q)
    q = state.critic(batch.observations, batch.actions, dropout_key=dropout_key)
    loss = jnp.sum(jnp.mean((q - target) ** 2, axis=1))
    return loss, {"critic_loss": loss, "q_mean": jnp.mean(q)}


def actor_loss(state: TD3BCState, batch: Batch, key: jax.Array):
    policy_action = state.actor(batch.observations, dropout_key=key)
    q = state.critic(batch.observations, policy_action)[0]
    lmbda = jax.lax.stop_gradient(state.config.alpha / jnp.mean(jnp.abs(q)))
    bc_loss = jnp.mean((policy_action - batch.actions) ** 2)
    loss = -lmbda * jnp.mean(q) + bc_loss
    return loss, {"actor_loss": loss, "bc_loss": bc_loss}


def update(state: TD3BCState, batch: Batch) -> tuple[TD3BCState, dict]:
    c = state.config
    rng, critic_key, actor_key = jax.random.split(state.rng, 3)
    (_, critic_metrics), grads = value_and_grad_of(critic_loss, state, "critic", batch, critic_key)
    state = state.replace(critic=state.critic.apply_gradients(grads))

    def update_actor_and_targets(state):
        (_, metrics), grads = value_and_grad_of(actor_loss, state, "actor", batch, actor_key)
        actor = state.actor.apply_gradients(grads).soft_update_target(c.tau)
        return state.replace(actor=actor, critic=state.critic.soft_update_target(c.tau)), metrics

    def skip(state):
        return state, {"actor_loss": jnp.nan, "bc_loss": jnp.nan}

    state, actor_metrics = jax.lax.cond(state.step % c.policy_freq == 0, update_actor_and_targets, skip, state)
    return state.replace(rng=rng, step=state.step + 1), {**critic_metrics, **actor_metrics}


def act(state: TD3BCState, observations: jax.Array) -> jax.Array:
    return state.actor(observations)


TD3BC = Algorithm("td3bc", TD3BCConfig, init, update, act, losses={"actor": actor_loss, "critic": critic_loss})
