"""IQL as you would write it yourself in PyTorch, plus Sparse-Reg for every network.

The PyTorch twin of ``examples/iql_flax.py``: an actor, a twin critic with a target copy and a
value network, plain ``torch.nn`` modules and ``torch.optim.Adam``, each trained with its own
loss and each sparsified with that same loss (SNIP on the full network, global top-k). The
lines that add Sparse-Reg are marked ``# Sparse-Reg (i/6)``; nothing in the modules changes
(masks are applied by ``torch.nn.utils.parametrize``), the target critic runs with the online
critic's mask, and the optimisers leave pruned weights exactly where they were.

    python examples/iql_torch.py --steps 3000                    # synthetic control task, 5k transitions
    python examples/iql_torch.py --sparsity 0 --steps 3000       # the dense baseline
    python examples/iql_torch.py --steps 1000 --save ckpt.pt     # ... then --resume ckpt.pt --steps 3000
    python examples/iql_torch.py --dataset halfcheetah-expert-v0 --size 10000 --steps 20000

The synthetic task is the one of ``iql_flax.py`` (a 3-D point mass on a weak spring, data from
a noisy hand-made controller), in NumPy. ``--dataset`` takes anything
``sparse_reg.load_dataset`` does (no evaluation then: only the losses are printed).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from torch import nn

from sparse_reg.torch import Schedule, SparseReg  # Sparse-Reg (1/6)

DISCOUNT, TAU, EXPECTILE, BETA, MAX_WEIGHT = 0.99, 0.005, 0.7, 3.0, 100.0


# ---------------------------------------------------------------------- networks


def mlp(inputs: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class Actor(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim, hidden, action_dim)
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, obs):
        return torch.tanh(self.net(obs)), self.log_std.clamp(-5.0, 2.0)


class TwinQ(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden: int):
        super().__init__()
        self.q1, self.q2 = mlp(obs_dim + action_dim, hidden, 1), mlp(obs_dim + action_dim, hidden, 1)

    def forward(self, obs, action):
        x = torch.cat([obs, action], -1)
        return self.q1(x)[..., 0], self.q2(x)[..., 0]


class IQL:
    """The agent: networks, optimisers, losses (each reads the agent as it is), one update."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int, lr: float, seed: int):
        torch.manual_seed(seed)
        self.actor = Actor(obs_dim, action_dim, hidden)
        self.critic = TwinQ(obs_dim, action_dim, hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(obs_dim, hidden, 1)
        self.optimizers = [torch.optim.Adam(net.parameters(), lr=lr) for net in (self.actor, self.critic, self.value)]

    def v(self, obs):
        return self.value(obs)[..., 0]

    def value_loss(self, batch):
        obs, actions, _, _, _ = batch
        with torch.no_grad():
            q = torch.min(*self.critic_target(obs, actions))
        u = q - self.v(obs)
        return (torch.abs(EXPECTILE - (u < 0).float()) * u**2).mean()

    def critic_loss(self, batch):
        obs, actions, rewards, next_obs, dones = batch
        with torch.no_grad():
            target = rewards + DISCOUNT * (1.0 - dones) * self.v(next_obs)
        q1, q2 = self.critic(obs, actions)
        return 0.5 * (((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean())

    def actor_loss(self, batch):
        obs, actions, _, _, _ = batch
        with torch.no_grad():
            weights = torch.exp(BETA * (torch.min(*self.critic_target(obs, actions)) - self.v(obs))).clamp(max=MAX_WEIGHT)
        mean, log_std = self.actor(obs)
        log_prob = (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        return -(weights * log_prob).mean()

    def update(self, batch) -> dict:
        # All three losses read the same (pre-update) agent, as the reference IQL does; their gradients are disjoint.
        losses = {"actor": self.actor_loss(batch), "critic": self.critic_loss(batch), "value": self.value_loss(batch)}
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        for opt in self.optimizers:
            opt.step()
        with torch.no_grad():
            for p, t in zip(self.critic.parameters(), self.critic_target.parameters()):
                t.lerp_(p, TAU)
        return {name: float(loss.detach()) for name, loss in losses.items()}

    def state_dict(self) -> dict:
        nets = {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target, "value": self.value}
        return {**{name: net.state_dict() for name, net in nets.items()},
                "optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "critic", "critic_target", "value"):
            getattr(self, name).load_state_dict(state[name])
        for opt, saved in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(saved)


# ---------------------------------------------------------------------- the synthetic task (as iql_flax.py, in NumPy)

DT, EPISODE_LENGTH, POS_DIM = 0.1, 50, 3


def step_env(state, action):
    pos, vel = state[..., :POS_DIM], state[..., POS_DIM:]
    action = np.clip(action, -1.0, 1.0)
    reward = -np.sum(pos**2, -1) - 0.1 * np.sum(action**2, -1)
    vel = vel + DT * (2.0 * action - pos - 0.2 * vel)
    return np.concatenate([pos + DT * vel, vel], -1), reward


def rollout(policy, rng, episodes: int):
    state = rng.uniform(-1.0, 1.0, (episodes, 2 * POS_DIM))
    out = []
    for _ in range(EPISODE_LENGTH):
        action = policy(state, rng)
        next_state, reward = step_env(state, action)
        out.append((state, action, reward, next_state))
        state = next_state
    return [np.stack(x, 1).astype(np.float32) for x in zip(*out)]  # each (episodes, T, ...)


def behaviour_action(state, rng):
    pd = -1.0 * state[..., :POS_DIM] - 1.0 * state[..., POS_DIM:]
    return np.clip(pd + 0.3 * rng.normal(size=pd.shape), -1.0, 1.0)


def synthetic_data(size: int, seed: int):
    episodes = -(-size // EPISODE_LENGTH)
    obs, actions, rewards, next_obs = rollout(behaviour_action, np.random.default_rng(seed + 1000), episodes)
    flat = lambda x: x.reshape(episodes * EPISODE_LENGTH, *x.shape[2:])[:size]  # noqa: E731
    return [flat(obs), flat(actions), flat(rewards), flat(next_obs), np.zeros(size, np.float32)]


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
    parser.add_argument("--save", default=None, help="write a checkpoint (agent, optimisers, masks, step) here at the end")
    parser.add_argument("--resume", default=None, help="continue from a checkpoint written by --save")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 on a busy host)")
    args = parser.parse_args(argv)
    mask_until = args.steps // 5 if args.mask_until is None else args.mask_until
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.dataset:
        import sparse_reg as sr

        d = sr.load_dataset(args.dataset)
        data = [d.observations, d.actions, d.rewards, d.next_observations, d.terminals.astype(np.float32)]
        data = [np.asarray(x[: args.size], np.float32) for x in data]
        source, behaviour_return = d.name, None
    else:
        data = synthetic_data(args.size, args.seed)
        source = "synthetic point-mass"
        behaviour_return = float(np.mean(data[2].reshape(-1, EPISODE_LENGTH).sum(1))) if (
            args.size % EPISODE_LENGTH == 0) else None
    obs_mean, obs_std = data[0].mean(0), data[0].std(0) + 1e-3
    data[0], data[3] = (data[0] - obs_mean) / obs_std, (data[3] - obs_mean) / obs_std
    data = [torch.from_numpy(np.ascontiguousarray(x, np.float32)) for x in data]
    n, obs_dim, action_dim = len(data[2]), data[0].shape[1], data[1].shape[1]
    print(f"IQL (PyTorch) on {source} data: {n} transitions, obs {obs_dim}, actions {action_dim}; sparsity "
          f"{args.sparsity:.0%} per network, masks every {args.mask_interval} steps while step < {mask_until}")

    agent = IQL(obs_dim, action_dim, args.hidden, args.lr, args.seed)
    sparse = SparseReg(dict(actor=agent.actor, critic=agent.critic, value=agent.value),  # Sparse-Reg (2/6)
                       dict(actor=agent.actor_loss, critic=agent.critic_loss, value=agent.value_loss),  # Sparse-Reg (3/6)
                       sparsity=args.sparsity, schedule=Schedule(args.mask_interval, mask_until),  # Sparse-Reg (4/6)
                       targets=dict(critic=agent.critic_target), optimizers=agent.optimizers)  # Sparse-Reg (5/6)
    start_step = 0
    if args.resume:  # the masks are buffers of the modules: the agent's state_dict holds them
        checkpoint = torch.load(args.resume)
        agent.load_state_dict(checkpoint["agent"])
        start_step = checkpoint["step"]
        print(f"resumed from {args.resume} at step {start_step}")

    def evaluate() -> float:
        def policy(state, _):
            with torch.no_grad():
                obs = torch.from_numpy(((state - obs_mean) / obs_std).astype(np.float32))
                return agent.actor(obs)[0].numpy()  # the module's forward: masked, nothing to remember
        return float(np.mean(rollout(policy, np.random.default_rng(args.seed), 20)[2].sum(1)))

    def action_mse() -> float:
        with torch.no_grad():
            return float(((agent.actor(data[0])[0] - data[1]) ** 2).mean())

    mse_before = action_mse()
    history, started = {name: [] for name in ("actor", "critic", "value")}, time.time()
    for step in range(start_step, args.steps):
        idx = torch.from_numpy(np.random.default_rng([args.seed, step]).integers(0, n, args.batch_size))
        batch = [x[idx] for x in data]
        if sparse.maybe_refresh(step, batch):  # Sparse-Reg (6/6): every network scored with its own loss
            print(f"step {step:>6}: masks refreshed, masked " + ", ".join(
                f"{name} {s['sparsity']:.1%} ({s['changed']:.0%} changed)" for name, s in sparse.last_stats.items()))
        for name, value in agent.update(batch).items():
            history[name].append(value)
        if (step + 1) % max(1, args.steps // 5) == 0 or step + 1 == args.steps:
            line = ", ".join(f"{name} loss {np.mean(h[-50:]):.4f}" for name, h in history.items())
            print(f"step {step + 1:>6}: {line}" + ("" if args.dataset else f", return {evaluate():.1f}"))
    elapsed = time.time() - started

    result = {"sparsity": sparse.weight_sparsity(), "updates_per_s": (args.steps - start_step) / max(elapsed, 1e-9)}
    print("masked: " + ", ".join(f"{name} {s:.1%} of weights" for name, s in result["sparsity"].items())
          + " (biases and log-std dense)")
    for name, h in history.items():
        if h:
            result[name] = (float(np.mean(h[:10])), float(np.mean(h[-10:])))
            print(f"{name} loss (mean of 10 steps) {result[name][0]:.4f} -> {result[name][1]:.4f}")
    result["action_mse"] = (mse_before, action_mse())
    print(f"actor's action MSE on the data {result['action_mse'][0]:.4f} -> {result['action_mse'][1]:.4f}")
    if not args.dataset:
        result["return"] = evaluate()
        reference = f" (behaviour data: {behaviour_return:.1f})" if behaviour_return is not None else ""
        print(f"policy return over 20 episodes {result['return']:.1f}{reference}")
    print(f"{args.steps - start_step} steps in {elapsed:.1f} s")
    if args.save:
        torch.save({"agent": agent.state_dict(), "step": args.steps}, args.save)
        print(f"checkpoint written to {args.save}")
    return result


if __name__ == "__main__":
    main()
