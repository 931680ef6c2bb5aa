"""Train a behaviour policy with sbx-rl's CrossQ and keep what dataset building needs.

Needs the ``behaviour`` extra (``pip install -e '.[behaviour]'``: sbx-rl, torch 2.13.0 CPU).

Every ``--eval-every`` environment steps it evaluates the deterministic policy on
``--eval-episodes`` episodes and exports the actor as a torch-free NumPy policy
(``checkpoints/step_XXXXXXX.npz``), appending the result to ``evaluations.csv``.
The replay buffer (every transition the run collected, in order) is written to
``replay_buffer.npz`` periodically and at the end, so medium-replay / expert-replay
datasets are the buffer's first N transitions. ``model.zip`` holds the latest full
model so an interrupted run can be resumed with ``--resume``.

Example (the command the shipped policies came from is in their provenance record):

    python scripts/train_behaviour_policy.py --env HalfCheetah-v5 --steps 400000 --seed 0 \
        --out artifacts/behaviour/halfcheetah
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np
from flax import traverse_util
from sbx import CrossQ
from stable_baselines3.common.callbacks import BaseCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sparse_reg.data.behaviour_policy import BehaviourPolicy  # noqa: E402


def export_actor(model: CrossQ) -> BehaviourPolicy:
    """Copy the CrossQ actor's weights and batch-renorm running statistics into NumPy."""
    state = model.policy.actor_state
    params = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
    stats = traverse_util.flatten_dict(jax.device_get(state.batch_stats), sep="/")
    n_hidden = len(model.policy.net_arch_pi)
    get = lambda d, k: np.asarray(d[k], dtype=np.float32)  # noqa: E731
    hidden = tuple((get(params, f"Dense_{i}/kernel"), get(params, f"Dense_{i}/bias")) for i in range(n_hidden))
    norms = tuple(
        (
            get(stats, f"BatchRenorm_{i}/mean"),
            get(stats, f"BatchRenorm_{i}/var"),
            get(params, f"BatchRenorm_{i}/scale"),
            get(params, f"BatchRenorm_{i}/bias"),
        )
        for i in range(n_hidden + 1)
    )
    return BehaviourPolicy(
        hidden=hidden,
        norms=norms,
        mean_head=(get(params, f"Dense_{n_hidden}/kernel"), get(params, f"Dense_{n_hidden}/bias")),
        log_std_head=(get(params, f"Dense_{n_hidden + 1}/kernel"), get(params, f"Dense_{n_hidden + 1}/bias")),
        metadata={},
    )


def evaluate(policy: BehaviourPolicy, env_id: str, episodes: int, seed: int) -> list[float]:
    envs = gym.make_vec(env_id, num_envs=episodes, vectorization_mode="sync")
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(episodes)
    done = np.zeros(episodes, dtype=bool)
    while not done.all():
        obs, reward, terminated, truncated, _ = envs.step(policy.act(obs))
        returns += np.where(done, 0.0, reward)
        done |= terminated | truncated
    envs.close()
    return returns.tolist()


def save_replay_buffer(model: CrossQ, path: Path) -> int:
    buffer = model.replay_buffer
    n = buffer.buffer_size if buffer.full else buffer.pos
    arrays = dict(
        observations=buffer.observations[:n, 0],
        actions=buffer.actions[:n, 0],
        rewards=buffer.rewards[:n, 0],
        next_observations=buffer.next_observations[:n, 0],
        # SB3 stores done = terminated or truncated, and timeouts separately.
        terminals=(buffer.dones[:n, 0] * (1 - buffer.timeouts[:n, 0])).astype(bool),
        timeouts=buffer.timeouts[:n, 0].astype(bool),
    )
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return n


class CheckpointCallback(BaseCallback):
    def __init__(self, args: argparse.Namespace, out: Path):
        super().__init__()
        self.args, self.out = args, out
        self.started = time.time()

    def _on_step(self) -> bool:
        step = self.num_timesteps
        if step % self.args.eval_every:
            return True
        policy = export_actor(self.model)
        returns = evaluate(policy, self.args.env, self.args.eval_episodes, seed=10_000 + step)
        check_export(self.model, policy)
        policy = BehaviourPolicy(**{**policy.__dict__, "metadata": self.policy_metadata(step, returns)})
        policy.save(self.out / "checkpoints" / f"step_{step:07d}.npz")
        new_file = not (self.out / "evaluations.csv").exists()
        with open(self.out / "evaluations.csv", "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["step", "mean_return", "std_return", "wall_s"])
            writer.writerow([step, np.mean(returns), np.std(returns), round(time.time() - self.started, 1)])
        print(f"[{self.args.env}] step {step}: return {np.mean(returns):.1f} ± {np.std(returns):.1f}", flush=True)
        if step % self.args.buffer_every == 0:
            save_replay_buffer(self.model, self.out / "replay_buffer.npz")
            self.model.save(self.out / "model.zip")
        return True

    def policy_metadata(self, step: int, returns: list[float]) -> dict:
        return {
            "env_id": self.args.env,
            "algorithm": "sbx CrossQ",
            "train_steps": step,
            "seed": self.args.seed,
            "eval_episodes": len(returns),
            "eval_mean_return": float(np.mean(returns)),
            "eval_std_return": float(np.std(returns)),
            "command": " ".join(sys.argv),
            "versions": {
                pkg: importlib_metadata.version(pkg)
                for pkg in ("sbx-rl", "stable_baselines3", "jax", "gymnasium", "mujoco", "numpy")
            },
            "python": platform.python_version(),
        }


def check_export(model: CrossQ, policy: BehaviourPolicy) -> None:
    """The NumPy policy must give the same deterministic actions as sbx itself."""
    obs = model.replay_buffer.observations[: min(256, model.replay_buffer.pos), 0]
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(policy.act(obs), expected, atol=1e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, help="gymnasium id, e.g. HalfCheetah-v5")
    parser.add_argument("--steps", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--buffer-every", type=int, default=50_000, help="replay buffer / model save period")
    parser.add_argument("--critic-width", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/model.zip")
    args = parser.parse_args()
    if args.buffer_every % args.eval_every:
        parser.error("--buffer-every must be a multiple of --eval-every")

    (args.out / "checkpoints").mkdir(parents=True, exist_ok=True)
    env = gym.make(args.env)
    if args.resume:
        model = CrossQ.load(args.out / "model.zip", env=env)
        buffer = np.load(args.out / "replay_buffer.npz")
        n = len(buffer["rewards"])
        rb = model.replay_buffer
        rb.observations[:n, 0] = buffer["observations"]
        rb.actions[:n, 0] = buffer["actions"]
        rb.rewards[:n, 0] = buffer["rewards"]
        rb.next_observations[:n, 0] = buffer["next_observations"]
        rb.dones[:n, 0] = buffer["terminals"] | buffer["timeouts"]
        rb.timeouts[:n, 0] = buffer["timeouts"]
        rb.pos = n
        remaining = args.steps - model.num_timesteps
    else:
        model = CrossQ(
            "MlpPolicy",
            env,
            policy_kwargs={"net_arch": {"pi": [256, 256], "qf": [args.critic_width] * 2}},
            seed=args.seed,
            verbose=0,
        )
        remaining = args.steps
    (args.out / "command.json").write_text(json.dumps({"argv": sys.argv}, indent=2))
    model.learn(total_timesteps=remaining, callback=CheckpointCallback(args, args.out), reset_num_timesteps=not args.resume)
    save_replay_buffer(model, args.out / "replay_buffer.npz")
    model.save(args.out / "model.zip")


if __name__ == "__main__":
    main()
