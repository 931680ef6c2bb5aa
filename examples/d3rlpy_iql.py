"""d3rlpy's own IQL (d3rlpy 2.8), plus Sparse-Reg for its actor, twin Q-function and value function.

Nothing of d3rlpy is changed or subclassed: ``sparse_reg.torch.SparseReg`` takes d3rlpy's
modules, its optimisers and its own loss functions, applies the masks through
``torch.nn.utils.parametrize`` and keeps pruned weights frozen across d3rlpy's optimiser steps;
the target Q-functions run with the online mask. The training loop is the one ``fit`` runs
(sample a batch, ``algo.update(batch)``), written out so the refresh can come before each
update. The lines that add Sparse-Reg are marked ``# Sparse-Reg (i/8)``: two more than in
``iql_torch.py``, because d3rlpy keeps its networks, optimisers and losses inside ``algo.impl``
and its batches as NumPy until ``update`` converts them.

    python examples/d3rlpy_iql.py --steps 3000                 # the synthetic task of iql_torch.py
    python examples/d3rlpy_iql.py --sparsity 0 --steps 3000    # the dense baseline

Needs ``pip install 'd3rlpy==2.8.*'`` beside the ``torch`` extra.
"""

from __future__ import annotations

import argparse
import time

import d3rlpy
import numpy as np
import torch
from d3rlpy.torch_utility import TorchMiniBatch
from iql_torch import EPISODE_LENGTH, rollout, synthetic_data  # the same data and task as examples/iql_torch.py

from sparse_reg.torch import Schedule, SparseReg  # Sparse-Reg (1/8)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--sparsity", type=float, default=0.95, help="fraction of weights pruned (0: dense)")
    parser.add_argument("--mask-interval", type=int, default=200, help="recompute the masks every K steps ...")
    parser.add_argument("--mask-until", type=int, default=None, help="... while step < this (default: steps / 5)")
    parser.add_argument("--size", type=int, default=5000, help="training transitions")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 on a busy host)")
    args = parser.parse_args(argv)
    mask_until = args.steps // 5 if args.mask_until is None else args.mask_until
    if args.threads:
        torch.set_num_threads(args.threads)
    d3rlpy.seed(args.seed)

    obs, actions, rewards, next_obs, _ = synthetic_data(args.size, args.seed)
    obs_mean, obs_std = obs.mean(0), obs.std(0) + 1e-3
    terminals, timeouts = np.zeros(len(obs), np.float32), np.zeros(len(obs), np.float32)
    timeouts[EPISODE_LENGTH - 1::EPISODE_LENGTH] = 1.0
    dataset = d3rlpy.dataset.MDPDataset(((obs - obs_mean) / obs_std).astype(np.float32), actions, rewards, terminals,
                                        timeouts, action_space=d3rlpy.ActionSpace.CONTINUOUS)
    print(f"d3rlpy {d3rlpy.__version__} IQL on synthetic point-mass data: {len(obs)} transitions; sparsity "
          f"{args.sparsity:.0%} per network, masks every {args.mask_interval} steps while step < {mask_until}")

    iql = d3rlpy.algos.IQLConfig(batch_size=args.batch_size, expectile=0.7, weight_temp=3.0, max_weight=100.0
                                 ).create(device="cpu:0")
    iql.build_with_dataset(dataset)

    m, impl, c = iql.impl._modules, iql.impl, iql.config  # Sparse-Reg (2/8): d3rlpy's modules, its losses below
    sparse = SparseReg(dict(actor=m.policy, critic=m.q_funcs, value=m.value_func), dict(  # Sparse-Reg (3/8)
        actor=lambda b: impl.compute_actor_loss(b, m.policy(b.observations)).actor_loss,  # Sparse-Reg (4/8)
        critic=lambda b: impl.compute_critic_loss(b, impl.compute_target(b)).q_loss, value=impl.compute_value_loss),  # Sparse-Reg (5/8)
        sparsity=args.sparsity, schedule=Schedule(args.mask_interval, mask_until), targets=dict(critic=m.targ_q_funcs),  # Sparse-Reg (6/8)
        optimizers=[m.actor_optim.optim, m.critic_optim.optim])  # Sparse-Reg (7/8)

    def evaluate() -> float:
        policy = lambda state, _: iql.predict(((state - obs_mean) / obs_std).astype(np.float32))  # noqa: E731
        return float(np.mean(rollout(policy, np.random.default_rng(args.seed), 20)[2].sum(1)))

    history, started = {}, time.time()
    for step in range(args.steps):
        batch = dataset.sample_transition_batch(args.batch_size)
        if sparse.maybe_refresh(step, TorchMiniBatch.from_batch(batch, c.gamma, False, "cpu:0")):  # Sparse-Reg (8/8)
            print(f"step {step:>6}: masks refreshed, masked " + ", ".join(
                f"{name} {s['sparsity']:.1%} ({s['changed']:.0%} changed)" for name, s in sparse.last_stats.items()))
        for name, value in iql.update(batch).items():
            history.setdefault(name, []).append(value)
        if (step + 1) % max(1, args.steps // 5) == 0 or step + 1 == args.steps:
            print(f"step {step + 1:>6}: " + ", ".join(f"{k} {np.mean(h[-50:]):.4f}" for k, h in history.items())
                  + f", return {evaluate():.1f}")

    result = {"sparsity": sparse.weight_sparsity(), "return": evaluate()}
    print("masked: " + ", ".join(f"{name} {s:.1%} of weights" for name, s in result["sparsity"].items()))
    for name in ("critic_loss", "actor_loss"):
        if name in history:
            result[name] = (float(np.mean(history[name][:10])), float(np.mean(history[name][-10:])))
            print(f"{name} (mean of 10 steps) {result[name][0]:.4f} -> {result[name][1]:.4f}")
    print(f"policy return over 20 episodes {result['return']:.1f}")
    print(f"{args.steps} steps in {time.time() - started:.1f} s")
    return result


if __name__ == "__main__":
    main()
