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

``iql-paper-code`` (:data:`IQL_PAPER_CODE`) is the IQL that the Sparse-Reg paper's released
code (SaminYeasar/sparse_reg, ``algos.py``) actually computes. There ``TwinQ.forward`` returns
Q of shape (B, 1) while ``ValueFunction`` squeezes V to (B,), so ``adv = target_q − v`` is
the B×B matrix u_ij = Q_i − V(s_j):
    L_value  = mean_ij |τ − 1(u_ij < 0)| · u_ij²      V(s_j) is fitted to the τ-expectile of
                                                      the *whole batch's* Q values
    L_actor  = −mean_ij min(exp(β u_ij), w_max) · log π(a_j|s_j)
             = −mean_j w̄_j · log π(a_j|s_j),   w̄_j = mean_i min(exp(β (Q_i − V(s_j))), w_max)
so a sample's own advantage never reaches its weight: the actor is close to behaviour
cloning. The critic loss has matching shapes there and is the same as ours. The variant also
takes the released code's other choices: an unsquashed Gaussian mean, the log-std clipped to
[−5, 2] (not [−20, 2]), xavier-normal weights, a 1M-step cosine horizon for the actor's
learning rate, and its update order: the value network takes its step first and the actor's
advantage is computed with the *updated* V (``algos.py`` recomputes ``v = self.value(state)``
after ``value_optimizer.step()``), while the critic's target still uses the V from before the
step. Its mask scoring (``train_no_grad_update``) takes no step, so it scores all three
networks on the same state, as ``LOSSES`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ..masked_net import MaskedNet, value_and_grad_of
from ..networks import KERNEL_INITS, GaussianActor, NetworkConfig, StateValue, TwinQ, gaussian_log_prob
from .base import Algorithm, Batch, Regularization, check_options, make_optimizer


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
    tanh_mean: bool = True  # squash the policy's mean into [-1, 1] (CORL); the paper's code does not
    weight_init: str = "lecun_normal"  # or "xavier_normal", as the paper's code (networks.KERNEL_INITS)
    paper_code_broadcast: bool = False  # the released code's B×B value and actor losses (module docstring)
    log_std_min: float = -20.0  # lower clip of the policy's log-std (CORL: -20; the paper's code: -5)
    actor_sees_updated_value: bool = False  # the paper's code: the actor's advantage uses V after its step
    network: NetworkConfig = field(default_factory=NetworkConfig)
    regularization: Regularization = field(default_factory=Regularization)

    def __post_init__(self):
        check_options(
            self,
            positive=("actor_learning_rate", "critic_learning_rate", "value_learning_rate", "batch_size", "exp_adv_max"),
            non_negative=("beta", "actor_lr_decay_steps"),  # actor_lr_decay_steps 0 = the run's length
            rates=("tau",),
            fractions=("discount",),
        )
        if not 0 < self.expectile < 1:
            raise ValueError(f"option expectile must be in (0, 1), got {self.expectile}")
        if self.weight_init not in KERNEL_INITS:
            raise ValueError(f"unknown weight_init '{self.weight_init}': choose one of {', '.join(KERNEL_INITS)}")


@dataclass(frozen=True)
class IQLPaperCodeConfig(IQLConfig):
    """Defaults of the paper's released IQL (see the module docstring); each can be overridden."""

    actor_lr_decay_steps: int = 1_000_000
    tanh_mean: bool = False
    weight_init: str = "xavier_normal"
    paper_code_broadcast: bool = True
    log_std_min: float = -5.0
    actor_sees_updated_value: bool = True


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
    network = replace(config.network, kernel_init=config.weight_init)
    decay_steps = config.actor_lr_decay_steps or total_steps
    actor_schedule = optax.cosine_decay_schedule(config.actor_learning_rate, max(decay_steps, 1))
    actor = MaskedNet.create(
        GaussianActor(network, action_dim, tanh_mean=config.tanh_mean, log_std_min=config.log_std_min),
        actor_key,
        (obs,),
        make_optimizer(actor_schedule, reg),
    )
    critic = MaskedNet.create(
        TwinQ(network), critic_key, (obs, action), make_optimizer(config.critic_learning_rate, reg), with_target=True
    )
    value = MaskedNet.create(StateValue(network), value_key, (obs,), make_optimizer(config.value_learning_rate, reg))
    return IQLState(actor=actor, critic=critic, value=value, rng=key, step=jnp.zeros((), jnp.int32), config=config)


def advantage(state: IQLState, batch: Batch, key: jax.Array | None = None) -> jax.Array:
    """u = min_i Q'_i(s, a) − V(s), shape (B,); (B, B) with u[i, j] = Q_i − V_j for the paper-code
    variant, which is what the released code's (B, 1) − (B,) broadcast computes."""
    target_q = jax.lax.stop_gradient(jnp.min(state.critic.target_call(batch.observations, batch.actions), axis=0))
    v = state.value(batch.observations, dropout_key=key)
    if state.config.paper_code_broadcast:
        return target_q[:, None] - v[None, :]
    return target_q - v


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
    weights = jnp.minimum(jnp.exp(c.beta * u), c.exp_adv_max)  # (B,), or (B, B) for the paper code
    mean, log_std = state.actor(batch.observations, dropout_key=key)
    log_prob = gaussian_log_prob(mean, log_std, batch.actions)  # (B,): broadcasts along the last axis
    loss = -jnp.mean(weights * log_prob)
    return loss, {"actor_loss": loss, "adv_weight_mean": jnp.mean(weights)}


def update(state: IQLState, batch: Batch) -> tuple[IQLState, dict]:
    rng, value_key, critic_key, actor_key = jax.random.split(state.rng, 4)
    (_, value_metrics), value_grads = value_and_grad_of(value_loss, state, "value", batch, value_key)
    (_, critic_metrics), critic_grads = value_and_grad_of(critic_loss, state, "critic", batch, critic_key)
    value = state.value.apply_gradients(value_grads)
    actor_view = state.replace(value=value) if state.config.actor_sees_updated_value else state
    (_, actor_metrics), actor_grads = value_and_grad_of(actor_loss, actor_view, "actor", batch, actor_key)
    state = state.replace(
        value=value,
        critic=state.critic.apply_gradients(critic_grads).soft_update_target(state.config.tau),
        actor=state.actor.apply_gradients(actor_grads),
        rng=rng,
        step=state.step + 1,
    )
    return state, {**value_metrics, **critic_metrics, **actor_metrics}


def act(state: IQLState, observations: jax.Array) -> jax.Array:
    # A no-op with a tanh mean; the paper code's unsquashed mean is clipped as the environment would.
    return jnp.clip(state.actor(observations)[0], -1.0, 1.0)


LOSSES = {"actor": actor_loss, "critic": critic_loss, "value": value_loss}
IQL = Algorithm("iql", IQLConfig, init, update, act, losses=LOSSES)
IQL_PAPER_CODE = Algorithm("iql-paper-code", IQLPaperCodeConfig, init, update, act, losses=LOSSES)
