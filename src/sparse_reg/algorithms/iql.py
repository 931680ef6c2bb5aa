"""IQL (Kostrikov et al., 2021), following the reference PyTorch implementation.

All three losses read the same (pre-update) state, as in the reference code:
    u = min_i Q'_i(s, a) − V(s)
    L_value  = mean |τ − 1(u < 0)| · u²                       (expectile τ)
    L_critic = ½ Σ_i mean (Q_i(s, a) − (r + γ (1 − d) V(s')))²
    L_actor  = −mean min(exp(β u), w_max) · log π(a|s)       (no gradient through the weight)
The target critic tracks the critic at rate τ_target; the actor's learning rate decays
with a cosine schedule over ``actor_lr_decay_steps`` (0: the whole run, as in CORL; the
paper's code decays over 1M steps whatever the run's length, so a shortened run that should
keep the paper's learning rate sets it to 1_000_000); the policy is a Gaussian with a tanh
mean, evaluated at its mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ..masked_net import MaskedNet, value_and_grad_of
from ..networks import GaussianActor, NetworkConfig, StateValue, TwinQ, gaussian_log_prob
from .base import Algorithm, Batch, Regularization, make_optimizer


@dataclass(frozen=True)
class IQLConfig:
    actor_learning_rate: float = 1e-3
    critic_learning_rate: float = 1e-3
    value_learning_rate: float = 1e-3
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 5e-3
    expectile: float = 0.7
    beta: float = 3.0
    exp_adv_max: float = 100.0
    actor_lr_decay_steps: int = 0  # cosine horizon of the actor's learning rate; 0 = the run's length
    network: NetworkConfig = field(default_factory=NetworkConfig)
    regularization: Regularization = field(default_factory=Regularization)

    def __post_init__(self):
        if self.actor_lr_decay_steps < 0:
            raise ValueError(f"actor_lr_decay_steps must be >= 0 (0 = the run's length), got {self.actor_lr_decay_steps}")


class IQLState(struct.PyTreeNode):
    actor: MaskedNet
    critic: MaskedNet
    value: MaskedNet
    rng: jax.Array
    step: jax.Array
    config: IQLConfig = struct.field(pytree_node=False)


def init(config: IQLConfig, obs_dim: int, action_dim: int, key: jax.Array, total_steps: int) -> IQLState:
    key, actor_key, critic_key, value_key = jax.random.split(key, 4)
    obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    reg = config.regularization
    decay_steps = config.actor_lr_decay_steps or total_steps
    actor_schedule = optax.cosine_decay_schedule(config.actor_learning_rate, max(decay_steps, 1))
    actor = MaskedNet.create(
        GaussianActor(config.network, action_dim, tanh_mean=True), actor_key, (obs,), make_optimizer(actor_schedule, reg)
    )
    critic = MaskedNet.create(
        TwinQ(config.network), critic_key, (obs, action), make_optimizer(config.critic_learning_rate, reg), with_target=True
    )
    value = MaskedNet.create(StateValue(config.network), value_key, (obs,), make_optimizer(config.value_learning_rate, reg))
    return IQLState(actor=actor, critic=critic, value=value, rng=key, step=jnp.zeros((), jnp.int32), config=config)


def advantage(state: IQLState, batch: Batch, key: jax.Array | None = None) -> jax.Array:
    target_q = jnp.min(state.critic.target_call(batch.observations, batch.actions), axis=0)
    return jax.lax.stop_gradient(target_q) - state.value(batch.observations, dropout_key=key)


def value_loss(state: IQLState, batch: Batch, key: jax.Array):
    u = advantage(state, batch, key)
    weight = jnp.abs(state.config.expectile - (u < 0).astype(jnp.float32))
    loss = jnp.mean(weight * u**2)
    return loss, {"value_loss": loss}


def critic_loss(state: IQLState, batch: Batch, key: jax.Array):
    c = state.config
    next_v = state.value(batch.next_observations)
    target = jax.lax.stop_gradient(batch.rewards + c.discount * (1.0 - batch.dones) * next_v)
    q = state.critic(batch.observations, batch.actions, dropout_key=key)
    loss = jnp.mean(jnp.mean((q - target) ** 2, axis=1))
    return loss, {"critic_loss": loss, "q_mean": jnp.mean(q)}


def actor_loss(state: IQLState, batch: Batch, key: jax.Array):
    c = state.config
    u = jax.lax.stop_gradient(advantage(state, batch))
    weights = jnp.minimum(jnp.exp(c.beta * u), c.exp_adv_max)
    mean, log_std = state.actor(batch.observations, dropout_key=key)
    loss = -jnp.mean(weights * gaussian_log_prob(mean, log_std, batch.actions))
    return loss, {"actor_loss": loss, "adv_weight_mean": jnp.mean(weights)}


def update(state: IQLState, batch: Batch) -> tuple[IQLState, dict]:
    rng, value_key, critic_key, actor_key = jax.random.split(state.rng, 4)
    (_, value_metrics), value_grads = value_and_grad_of(value_loss, state, "value", batch, value_key)
    (_, critic_metrics), critic_grads = value_and_grad_of(critic_loss, state, "critic", batch, critic_key)
    (_, actor_metrics), actor_grads = value_and_grad_of(actor_loss, state, "actor", batch, actor_key)
    state = state.replace(
        value=state.value.apply_gradients(value_grads),
        critic=state.critic.apply_gradients(critic_grads).soft_update_target(state.config.tau),
        actor=state.actor.apply_gradients(actor_grads),
        rng=rng,
        step=state.step + 1,
    )
    return state, {**value_metrics, **critic_metrics, **actor_metrics}


def act(state: IQLState, observations: jax.Array) -> jax.Array:
    return state.actor(observations)[0]


IQL = Algorithm(
    "iql", IQLConfig, init, update, act, losses={"actor": actor_loss, "critic": critic_loss, "value": value_loss}
)
