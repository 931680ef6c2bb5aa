"""Behaviour cloning as you would write it yourself (Flax + optax + TrainState), plus Sparse-Reg.

Nothing here uses sparse-reg's own trainer or networks. The five lines that add Sparse-Reg
are marked ``# Sparse-Reg (i/5)``: one ``sr.SparseReg`` object holds the sparsity, the
schedule and the loss it scores the policy with; delete them (and pass ``--sparsity 0``)
and this is plain dense BC.

    python examples/bc_flax.py --steps 2000                    # synthetic expert data, 5k transitions
    python examples/bc_flax.py --sparsity 0 --steps 2000       # the dense baseline
    python examples/bc_flax.py --dataset halfcheetah-expert-v0 --size 10000 --steps 20000

``--dataset`` takes anything ``sparse_reg.load_dataset`` does (a project dataset name, a
D4RL-style .hdf5 or .npz file, a local Minari id); a project dataset is built on first use.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

import sparse_reg as sr  # Sparse-Reg (1/5)


class Policy(nn.Module):
    action_dim: int
    hidden: int = 256

    @nn.compact
    def __call__(self, obs):
        x = nn.relu(nn.Dense(self.hidden)(obs))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return jnp.tanh(nn.Dense(self.action_dim)(x))


def synthetic_expert_data(size: int, seed: int, obs_dim: int = 11, action_dim: int = 3):
    """Observations and the actions of a fixed random tanh 'expert' (plus a little noise)."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(size=(obs_dim, 32)) / np.sqrt(obs_dim), rng.normal(size=(32, action_dim)) / np.sqrt(32)
    obs = rng.normal(size=(size, obs_dim)).astype(np.float32)
    actions = np.tanh(np.maximum(obs @ w1, 0.0) @ w2 * 2.0) + 0.05 * rng.normal(size=(size, action_dim))
    return obs, np.clip(actions, -1.0, 1.0).astype(np.float32)


def bc_loss(state: TrainState, batch):
    obs, actions = batch
    params = sr.masked_params(state)  # Sparse-Reg (2/5): forward pass with θ ⊙ m (= sparse.params(state))
    return jnp.mean((state.apply_fn({"params": params}, obs) - actions) ** 2)


@jax.jit
def train_step(state: TrainState, obs, actions):
    loss, grads = jax.value_and_grad(lambda p: bc_loss(state.replace(params=p), (obs, actions)))(state.params)
    return state.apply_gradients(grads=grads), loss


@jax.jit
def validation_mse(state: TrainState, obs, actions):
    return bc_loss(state, (obs, actions))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--sparsity", type=float, default=0.95, help="fraction of weights pruned (0: dense)")
    parser.add_argument("--mask-interval", type=int, default=200, help="recompute the masks every K steps ...")
    parser.add_argument("--mask-until", type=int, default=None, help="... while step < this (default: steps / 5)")
    parser.add_argument("--dataset", default=None, help="a dataset for sparse_reg.load_dataset (default: synthetic)")
    parser.add_argument("--size", type=int, default=5000, help="training transitions")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mask_until = args.steps // 5 if args.mask_until is None else args.mask_until

    if args.dataset:
        data = sr.load_dataset(args.dataset)
        obs, actions = data.observations, data.actions
        source = data.name
    else:
        obs, actions = synthetic_expert_data(args.size + 1000, args.seed)
        source = "synthetic expert"
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(obs))
    train_idx, valid_idx = order[: args.size], order[args.size : args.size + 1000]
    train_obs, train_actions = jnp.asarray(obs[train_idx]), jnp.asarray(actions[train_idx])
    valid_obs, valid_actions = jnp.asarray(obs[valid_idx]), jnp.asarray(actions[valid_idx])
    print(f"BC on {source} data: {len(train_idx)} training / {len(valid_idx)} validation transitions, "
          f"obs {obs.shape[1]}, actions {actions.shape[1]}; sparsity {args.sparsity:.0%}, masks every "
          f"{args.mask_interval} steps while step < {mask_until}")

    policy = Policy(actions.shape[1], args.hidden)
    params = policy.init(jax.random.PRNGKey(args.seed), train_obs[:1])["params"]
    sparse = sr.SparseReg(bc_loss, sparsity=args.sparsity, schedule=sr.Schedule(args.mask_interval, mask_until))  # Sparse-Reg (3/5)
    tx = sparse.tx(optax.adam(args.lr))  # Sparse-Reg (4/5): pruned weights get no update, no Adam drift, no decay
    state = TrainState.create(apply_fn=policy.apply, params=params, tx=tx)

    losses, start = [], time.time()
    for step in range(args.steps):
        batch = rng.integers(0, len(train_idx), args.batch_size)
        state = sparse.maybe_refresh(step, state, (train_obs[batch], train_actions[batch]))  # Sparse-Reg (5/5): when due
        if sparse.due(step):
            print(f"step {step:>6}: masks refreshed, {sr.weight_sparsity(state):.1%} of weights masked")
        state, loss = train_step(state, train_obs[batch], train_actions[batch])
        losses.append(float(loss))
        if (step + 1) % max(1, args.steps // 5) == 0 or step + 1 == args.steps:
            print(f"step {step + 1:>6}: train MSE {np.mean(losses[-50:]):.4f}, "
                  f"validation MSE {float(validation_mse(state, valid_obs, valid_actions)):.4f}")

    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    masked = sr.weight_sparsity(state)
    n_weights = sum(leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]
                    if sr.is_weight_matrix(path, leaf))
    print(f"policy: {masked:.1%} of weights masked ({round((1 - masked) * n_weights)} of {n_weights} weight "
          f"entries kept; biases dense)")
    print(f"loss (mean of 10 steps) {first:.4f} -> {last:.4f} in {args.steps} steps, {time.time() - start:.1f} s")
    return {"first_loss": first, "last_loss": last, "sparsity": masked}


if __name__ == "__main__":
    main()
