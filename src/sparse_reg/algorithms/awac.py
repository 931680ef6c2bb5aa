"""AWAC (Nair et al., 2020), following CORL's offline implementation.

Critic (twin Q, no entropy term), a' ~ π(·|s'):
    y = r + γ (1 − d) min_i Q'_i(s', a')
    L_critic = Σ_i mean (Q_i(s, a) − y)²
Actor, advantage-weighted regression with A = min_i Q_i(s, a) − min_i Q_i(s, a^π), a^π ~ π(·|s):
    w = min(exp(A / λ), w_max)         (no gradient through w)
    L_actor = −mean w · log π(a|s)
The Gaussian actor's mean is unsquashed; sampled actions are clipped to [−1, 1]; the
target critic tracks the critic at rate τ every step. The actor's learning rate is constant
unless ``actor_lr_decay_steps`` sets a cosine horizon (0: the run's length).

``awac-paper-code`` (:data:`AWAC_PAPER_CODE`) is the AWAC that the Sparse-Reg paper's released
code (SaminYeasar/sparse_reg, ``algos.py``) actually computes. There the weights are built from
Q values of shape (B, 1) while ``log_prob`` of its MultivariateNormal has shape (B,), so
``weights * bc_losses`` is a B×B matrix and
    L_actor = −mean_ij w_i · log π(a_j|s_j) = −mean_i w_i · mean_j log π(a_j|s_j):
uniform weighting, i.e. Gaussian behaviour cloning with a loss scale that changes every
batch. Its critic loss is the mean of the two heads' errors, (L_1 + L_2) / 2, instead of the
sum. Its masks are scored with another critic loss than the one it trains with: its
``train_no_grad_update`` compares Q of shape (B, 1) with ``y.flatten()`` of shape (B,), so the
critic is scored on ½ Σ_h mean_ij (Q_h(s_i, a_i) − y_j)² (``SCORING_LOSSES_PAPER_CODE``). The variant
also takes the released code's other choices: unclipped sampled actions, the log-std clipped
to [−5, 2] (not [−20, 2]), λ = 0.3333 (not 1/3), xavier-normal weights and a 1M-step cosine
horizon for the actor's learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ..masked_net import MaskedNet, value_and_grad_of
from ..networks import KERNEL_INITS, GaussianActor, NetworkConfig, TwinQ, gaussian_log_prob
from .base import Algorithm, Batch, Regularization, check_options, make_optimizer


@dataclass(frozen=True)
class AWACConfig:
    actor_learning_rate: float = 1e-3
    critic_learning_rate: float = 1e-3
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 5e-3
    awac_lambda: float = 1.0 / 3.0
    exp_adv_max: float = 100.0
    actor_lr_decay_steps: int | None = None  # cosine horizon of the actor's LR; None = constant, 0 = the run's length
    clip_sampled_actions: bool = True  # clip a ~ π to [-1, 1] (CORL); the paper's code does not
    weight_init: str = "lecun_normal"  # or "xavier_normal", as the paper's code (networks.KERNEL_INITS)
    paper_code_broadcast: bool = False  # the released code's mean(w)·mean(log π) actor loss (module docstring)
    log_std_min: float = -20.0  # lower clip of the policy's log-std (CORL: -20; the paper's code: -5)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    regularization: Regularization = field(default_factory=Regularization)

    def __post_init__(self):
        check_options(
            self,
            positive=("actor_learning_rate", "critic_learning_rate", "batch_size", "awac_lambda", "exp_adv_max"),
            rates=("tau",),
            fractions=("discount",),
        )
        if self.actor_lr_decay_steps is not None and self.actor_lr_decay_steps < 0:
            raise ValueError(f"option actor_lr_decay_steps must be >= 0 or None, got {self.actor_lr_decay_steps}")
        if self.weight_init not in KERNEL_INITS:
            raise ValueError(f"unknown weight_init '{self.weight_init}': choose one of {', '.join(KERNEL_INITS)}")


@dataclass(frozen=True)
class AWACPaperCodeConfig(AWACConfig):
    """Defaults of the paper's released AWAC (see the module docstring); each can be overridden."""

    actor_lr_decay_steps: int | None = 1_000_000
    clip_sampled_actions: bool = False
    weight_init: str = "xavier_normal"
    paper_code_broadcast: bool = True
    awac_lambda: float = 0.3333  # written so in the released code
    log_std_min: float = -5.0


class AWACState(struct.PyTreeNode):
    actor: MaskedNet
    critic: MaskedNet
    rng: jax.Array
    step: jax.Array
    config: AWACConfig = struct.field(pytree_node=False)


def init(config: AWACConfig, obs_dim: int, action_dim: int, key: jax.Array, total_steps: int) -> AWACState:
    key, actor_key, critic_key = jax.random.split(key, 3)
    obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    reg = config.regularization
    network = replace(config.network, kernel_init=config.weight_init)
    actor_lr = config.actor_learning_rate
    if config.actor_lr_decay_steps is not None:
        actor_lr = optax.cosine_decay_schedule(actor_lr, max(config.actor_lr_decay_steps or total_steps, 1))
    actor = MaskedNet.create(
        GaussianActor(network, action_dim, tanh_mean=False, log_std_min=config.log_std_min),
        actor_key,
        (obs,),
        make_optimizer(actor_lr, reg),
    )
    critic = MaskedNet.create(
        TwinQ(network), critic_key, (obs, action), make_optimizer(config.critic_learning_rate, reg), with_target=True
    )
    return AWACState(actor=actor, critic=critic, rng=key, step=jnp.zeros((), jnp.int32), config=config)


def sample_action(state: AWACState, observations: jax.Array, key: jax.Array) -> jax.Array:
    mean, log_std = state.actor(observations)
    action = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    return jnp.clip(action, -1.0, 1.0) if state.config.clip_sampled_actions else action


def critic_prediction_and_target(state: AWACState, batch: Batch, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Q_h(s, a) of both heads, shape (2, B), and the TD target y, shape (B,)."""
    c = state.config
    action_key, dropout_key = jax.random.split(key)
    next_action = sample_action(state, batch.next_observations, action_key)
    next_q = jnp.min(state.critic.target_call(batch.next_observations, next_action), axis=0)
    target = jax.lax.stop_gradient(batch.rewards + c.discount * (1.0 - batch.dones) * next_q)
    return state.critic(batch.observations, batch.actions, dropout_key=dropout_key), target


def critic_loss(state: AWACState, batch: Batch, key: jax.Array):
    q, target = critic_prediction_and_target(state, batch, key)
    per_head = jnp.mean((q - target) ** 2, axis=1)
    loss = jnp.mean(per_head) if state.config.paper_code_broadcast else jnp.sum(per_head)
    return loss, {"critic_loss": loss, "q_mean": jnp.mean(q)}


def paper_code_critic_scoring_loss(state: AWACState, batch: Batch, key: jax.Array):
    """The loss the released code scores the critic's masks with: every Q_h(s_i, a_i) against
    every target y_j, ½ Σ_h mean_ij (Q_h,i − y_j)² (its (B, 1) vs (B,) broadcast)."""
    q, target = critic_prediction_and_target(state, batch, key)
    loss = jnp.mean((q[:, :, None] - target[None, None, :]) ** 2)
    return loss, {"critic_loss": loss, "q_mean": jnp.mean(q)}


def actor_loss(state: AWACState, batch: Batch, key: jax.Array):
    c = state.config
    action_key, dropout_key = jax.random.split(key)
    policy_action = sample_action(state, batch.observations, action_key)
    value = jnp.min(state.critic(batch.observations, policy_action), axis=0)
    q = jnp.min(state.critic(batch.observations, batch.actions), axis=0)
    weights = jax.lax.stop_gradient(jnp.minimum(jnp.exp((q - value) / c.awac_lambda), c.exp_adv_max))
    mean, log_std = state.actor(batch.observations, dropout_key=dropout_key)
    log_prob = gaussian_log_prob(mean, log_std, batch.actions)
    if c.paper_code_broadcast:  # the released code's (B, 1) * (B,) -> (B, B)
        loss = -jnp.mean(weights[:, None] * log_prob[None, :])
    else:
        loss = -jnp.mean(weights * log_prob)
    return loss, {"actor_loss": loss, "adv_weight_mean": jnp.mean(weights)}


def update(state: AWACState, batch: Batch) -> tuple[AWACState, dict]:
    rng, critic_key, actor_key = jax.random.split(state.rng, 3)
    (_, critic_metrics), grads = value_and_grad_of(critic_loss, state, "critic", batch, critic_key)
    state = state.replace(critic=state.critic.apply_gradients(grads))
    (_, actor_metrics), grads = value_and_grad_of(actor_loss, state, "actor", batch, actor_key)
    state = state.replace(
        actor=state.actor.apply_gradients(grads),
        critic=state.critic.soft_update_target(state.config.tau),
        rng=rng,
        step=state.step + 1,
    )
    return state, {**critic_metrics, **actor_metrics}


def act(state: AWACState, observations: jax.Array) -> jax.Array:
    return jnp.clip(state.actor(observations)[0], -1.0, 1.0)


LOSSES = {"actor": actor_loss, "critic": critic_loss}
AWAC = Algorithm("awac", AWACConfig, init, update, act, losses=LOSSES)
SCORING_LOSSES_PAPER_CODE = {"actor": actor_loss, "critic": paper_code_critic_scoring_loss}
AWAC_PAPER_CODE = Algorithm(
    "awac-paper-code", AWACPaperCodeConfig, init, update, act, losses=LOSSES, scoring_losses=SCORING_LOSSES_PAPER_CODE
)
