"""IQL as you would write it yourself (Flax + optax + TrainState), plus Sparse-Reg for every network.

An actor, a twin critic with a target copy and a value network, each a Flax ``TrainState``
in one ``flax.struct`` agent; each trained with its own loss, and each sparsified with that
same loss (SNIP on the full network, global top-k). The lines that add Sparse-Reg are
marked ``# Sparse-Reg (i/5)``: one ``sr.SparseReg`` object per agent holds the sparsity, the
schedule and the losses; the target critic runs with the online critic's mask. The PyTorch
twin of this file is ``examples/iql_torch.py``.

    python examples/iql_flax.py --steps 3000                     # synthetic control task, 5k transitions
    python examples/iql_flax.py --sparsity 0 --steps 3000        # the dense baseline
    python examples/iql_flax.py --dataset halfcheetah-expert-v0 --size 10000 --steps 20000

The synthetic task is a 3-D point mass on a weak spring (position and velocity, force as
action, reward ``-|position|² - 0.1 |action|²``) with data from a noisy hand-made controller; the policy is
evaluated there too. ``--dataset`` takes anything ``sparse_reg.load_dataset`` does (no
evaluation then: only the losses are printed).
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

import sparse_reg as sr  # Sparse-Reg (1/5)

DISCOUNT, TAU, EXPECTILE, BETA, MAX_WEIGHT = 0.99, 0.005, 0.7, 3.0, 100.0


# ---------------------------------------------------------------------- networks


class MLP(nn.Module):
    hidden: int
    out: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.out)(x)


class Actor(nn.Module):
    hidden: int
    action_dim: int

    @nn.compact
    def __call__(self, obs):
        mean = jnp.tanh(MLP(self.hidden, self.action_dim)(obs))
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return mean, jnp.clip(log_std, -5.0, 2.0)


class TwinQ(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], -1)
        return MLP(self.hidden, 1)(x)[..., 0], MLP(self.hidden, 1)(x)[..., 0]


class ValueNet(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, obs):
        return MLP(self.hidden, 1)(obs)[..., 0]


class CriticState(TrainState):
    target_params: Any = None


class Agent(struct.PyTreeNode):
    actor: TrainState
    critic: CriticState
    value: TrainState


class Batch(NamedTuple):
    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_obs: jax.Array
    dones: jax.Array


def run(net: TrainState, *inputs, target: bool = False):
    params = net.target_params if target else net.params
    params = sr.masked_params(net, params)  # Sparse-Reg (2/5): θ ⊙ m, the target with the online mask (= sparse.params)
    return net.apply_fn({"params": params}, *inputs)


# ---------------------------------------------------------------------- losses: (agent, batch, key) -> (loss, info)


def value_loss(agent: Agent, batch: Batch, key=None):
    q = jax.lax.stop_gradient(jnp.minimum(*run(agent.critic, batch.obs, batch.actions, target=True)))
    u = q - run(agent.value, batch.obs)
    loss = jnp.mean(jnp.abs(EXPECTILE - (u < 0)) * u**2)
    return loss, {"value_loss": loss}


def critic_loss(agent: Agent, batch: Batch, key=None):
    next_v = run(agent.value, batch.next_obs)
    target = jax.lax.stop_gradient(batch.rewards + DISCOUNT * (1.0 - batch.dones) * next_v)
    q1, q2 = run(agent.critic, batch.obs, batch.actions)
    loss = 0.5 * (jnp.mean((q1 - target) ** 2) + jnp.mean((q2 - target) ** 2))
    return loss, {"critic_loss": loss}


def actor_loss(agent: Agent, batch: Batch, key=None):
    q = jnp.minimum(*run(agent.critic, batch.obs, batch.actions, target=True))
    weights = jax.lax.stop_gradient(jnp.minimum(jnp.exp(BETA * (q - run(agent.value, batch.obs))), MAX_WEIGHT))
    mean, log_std = run(agent.actor, batch.obs)
    log_prob = jnp.sum(-0.5 * ((batch.actions - mean) / jnp.exp(log_std)) ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi), -1)
    loss = -jnp.mean(weights * log_prob)
    return loss, {"actor_loss": loss}


LOSSES = {"actor": actor_loss, "critic": critic_loss, "value": value_loss}


def value_and_grad_of(loss_fn, agent: Agent, name: str, batch: Batch):
    """Gradient of ``loss_fn`` with respect to the params of ``agent.<name>``."""
    net = getattr(agent, name)
    loss_of_params = lambda params: loss_fn(agent.replace(**{name: net.replace(params=params)}), batch)[0]  # noqa: E731
    return jax.value_and_grad(loss_of_params)(net.params)


@jax.jit
def update(agent: Agent, batch: Batch):
    # All three losses read the same (pre-update) agent, as the reference IQL does.
    value_l, value_grads = value_and_grad_of(value_loss, agent, "value", batch)
    critic_l, critic_grads = value_and_grad_of(critic_loss, agent, "critic", batch)
    actor_l, actor_grads = value_and_grad_of(actor_loss, agent, "actor", batch)
    critic = agent.critic.apply_gradients(grads=critic_grads)
    critic = critic.replace(target_params=optax.incremental_update(critic.params, critic.target_params, TAU))
    agent = agent.replace(actor=agent.actor.apply_gradients(grads=actor_grads), critic=critic,
                          value=agent.value.apply_gradients(grads=value_grads))
    return agent, {"actor": actor_l, "critic": critic_l, "value": value_l}


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))  # initialising under jit is much faster than op by op
def create_agent(sparse: sr.SparseReg, obs_dim: int, action_dim: int, hidden: int, lr: float, seed: int) -> Agent:
    def optimizer():
        return sparse.tx(optax.adam(lr))  # Sparse-Reg (3/5): pruned weights get no update, no Adam drift

    obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    k_actor, k_critic, k_value = jax.random.split(jax.random.PRNGKey(seed), 3)
    actor, critic, value = Actor(hidden, action_dim), TwinQ(hidden), ValueNet(hidden)
    critic_params = critic.init(k_critic, obs, action)["params"]
    return Agent(
        actor=TrainState.create(apply_fn=actor.apply, params=actor.init(k_actor, obs)["params"], tx=optimizer()),
        critic=CriticState.create(apply_fn=critic.apply, params=critic_params, target_params=critic_params,
                                  tx=optimizer()),
        value=TrainState.create(apply_fn=value.apply, params=value.init(k_value, obs)["params"], tx=optimizer()),
    )


# ---------------------------------------------------------------------- a small control task

DT, EPISODE_LENGTH, POS_DIM = 0.1, 50, 3


def step_env(state, action):
    pos, vel = state[..., :POS_DIM], state[..., POS_DIM:]
    action = jnp.clip(action, -1.0, 1.0)
    reward = -jnp.sum(pos**2, -1) - 0.1 * jnp.sum(action**2, -1)
    vel = vel + DT * (2.0 * action - pos - 0.2 * vel)  # a weakly damped spring, pushed by the action
    return jnp.concatenate([pos + DT * vel, vel], -1), reward


def behaviour_action(state, key):
    pd = -1.0 * state[..., :POS_DIM] - 1.0 * state[..., POS_DIM:]  # a mediocre controller ...
    return jnp.clip(pd + 0.3 * jax.random.normal(key, pd.shape), -1.0, 1.0)  # ... with noise


@partial(jax.jit, static_argnums=(0, 2))
def rollout(policy, key, episodes: int):
    """(obs, actions, rewards, next_obs) of ``episodes`` episodes, each (episodes, T, ...)."""
    key, start_key = jax.random.split(key)
    start = jax.random.uniform(start_key, (episodes, 2 * POS_DIM), minval=-1.0, maxval=1.0)

    def body(state, key):
        action = policy(state, key)
        next_state, reward = step_env(state, action)
        return next_state, (state, action, reward, next_state)

    _, out = jax.lax.scan(body, start, jax.random.split(key, EPISODE_LENGTH))
    return [jnp.swapaxes(x, 0, 1) for x in out]


def synthetic_data(size: int, seed: int) -> Batch:
    episodes = -(-size // EPISODE_LENGTH)
    obs, actions, rewards, next_obs = rollout(behaviour_action, jax.random.PRNGKey(seed + 1000), episodes)
    flat = lambda x: np.asarray(x).reshape(episodes * EPISODE_LENGTH, *x.shape[2:])[:size]  # noqa: E731
    return Batch(flat(obs), flat(actions), flat(rewards), flat(next_obs), np.zeros(size, np.float32))


@jax.jit
def action_mse(agent: Agent, obs: jax.Array, actions: jax.Array) -> jax.Array:
    """How far the policy's mean is from the data's actions (falls as the actor learns, weighted or not)."""
    return jnp.mean((run(agent.actor, obs)[0] - actions) ** 2)


@jax.jit
def policy_return(agent: Agent, key: jax.Array, obs_mean: jax.Array, obs_std: jax.Array) -> jax.Array:
    """Mean return of the policy's mean action over 20 episodes."""
    policy = lambda state, _: run(agent.actor, (state - obs_mean) / obs_std)[0]  # noqa: E731
    return jnp.mean(jnp.sum(rollout(policy, key, 20)[2], axis=1))


# ---------------------------------------------------------------------- training


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--sparsity", type=float, default=0.95, help="fraction of weights pruned (0: dense)")
    parser.add_argument("--mask-interval", type=int, default=200, help="recompute the masks every K steps ...")
    parser.add_argument("--mask-until", type=int, default=None, help="... while step < this (default: steps / 5)")
    parser.add_argument("--dataset", default=None, help="a dataset for sparse_reg.load_dataset (default: synthetic)")
    parser.add_argument("--size", type=int, default=5000, help="training transitions")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mask_until = args.steps // 5 if args.mask_until is None else args.mask_until

    if args.dataset:
        d = sr.load_dataset(args.dataset)
        data = Batch(d.observations, d.actions, d.rewards, d.next_observations, d.terminals.astype(np.float32))
        data = Batch(*(x[: args.size] for x in data))
        source, behaviour_return = d.name, None
    else:
        data = synthetic_data(args.size, args.seed)
        source = "synthetic point-mass"
        behaviour_return = float(np.mean(data.rewards.reshape(-1, EPISODE_LENGTH).sum(1))) if (
            args.size % EPISODE_LENGTH == 0) else None
    # Normalised observations, as most offline RL code does.
    obs_mean, obs_std = np.mean(data.obs, 0), np.std(data.obs, 0) + 1e-3
    data = data._replace(obs=(data.obs - obs_mean) / obs_std, next_obs=(data.next_obs - obs_mean) / obs_std)
    data = Batch(*(jnp.asarray(x) for x in data))

    def evaluate(agent):
        return float(policy_return(agent, jax.random.PRNGKey(args.seed), obs_mean, obs_std))

    n, obs_dim, action_dim = len(data.rewards), data.obs.shape[1], data.actions.shape[1]
    print(f"IQL on {source} data: {n} transitions, obs {obs_dim}, actions {action_dim}; sparsity "
          f"{args.sparsity:.0%} per network, masks every {args.mask_interval} steps while step < {mask_until}")

    sparse = sr.SparseReg(LOSSES, sparsity=args.sparsity, schedule=sr.Schedule(args.mask_interval, mask_until))  # Sparse-Reg (4/5)
    agent = create_agent(sparse, obs_dim, action_dim, args.hidden, args.lr, args.seed)

    rng = np.random.default_rng(args.seed)
    mse_before = float(action_mse(agent, data.obs, data.actions))
    history, start = {name: [] for name in LOSSES}, time.time()
    for step in range(args.steps):
        idx = rng.integers(0, n, args.batch_size)
        batch = Batch(*(x[idx] for x in data))
        agent = sparse.maybe_refresh(step, agent, batch)  # Sparse-Reg (5/5): each network scored with its own loss, when due
        if sparse.due(step):
            print(f"step {step:>6}: masks refreshed, masked " + ", ".join(
                f"{name} {float(s['total']['sparsity']):.1%} ({float(s['total']['changed']):.0%} changed)"
                for name, s in sparse.last_stats.items()))
        agent, losses = update(agent, batch)
        for name, value in losses.items():
            history[name].append(float(value))
        if (step + 1) % max(1, args.steps // 5) == 0 or step + 1 == args.steps:
            line = ", ".join(f"{name} loss {np.mean(h[-50:]):.4f}" for name, h in history.items())
            print(f"step {step + 1:>6}: {line}" + ("" if args.dataset else f", return {evaluate(agent):.1f}"))

    result = {"sparsity": sparse.weight_sparsity(agent)}
    print("masked: " + ", ".join(f"{name} {s:.1%} of weights" for name, s in result["sparsity"].items())
          + " (biases and log-std dense)")
    for name, h in history.items():
        result[name] = (float(np.mean(h[:10])), float(np.mean(h[-10:])))
        print(f"{name} loss (mean of 10 steps) {result[name][0]:.4f} -> {result[name][1]:.4f}")
    result["action_mse"] = (mse_before, float(action_mse(agent, data.obs, data.actions)))
    print(f"actor's action MSE on the data {result['action_mse'][0]:.4f} -> {result['action_mse'][1]:.4f}")
    if not args.dataset:
        result["return"] = evaluate(agent)
        reference = f" (behaviour data: {behaviour_return:.1f})" if behaviour_return is not None else ""
        print(f"policy return over 20 episodes {result['return']:.1f}{reference}")
    print(f"{args.steps} steps in {time.time() - start:.1f} s")
    return result


if __name__ == "__main__":
    main()
