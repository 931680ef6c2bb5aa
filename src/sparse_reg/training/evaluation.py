"""Evaluation: batched policy rollouts and the behaviour-cloning MSE overfitting signal."""

from __future__ import annotations

import functools
from typing import Callable

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from ..data.collect import quiet_mujoco_model_warnings

PolicyFn = Callable[[np.ndarray], np.ndarray]  # raw observations (n, obs_dim) -> actions (n, action_dim)


class RolloutEvaluator:
    """Runs ``episodes`` episodes side by side: one batched policy call per environment step.

    The vector environment is built once and reused; every evaluation resets it with an
    explicit seed, so a run's evaluations are reproducible (and identical after a resume).
    """

    def __init__(self, env_id: str, episodes: int):
        self.env_id, self.episodes = env_id, episodes
        try:
            with quiet_mujoco_model_warnings():
                self.envs = gym.make_vec(env_id, num_envs=episodes, vectorization_mode="sync")
        except gym.error.Error as error:
            raise ValueError(f"cannot make environment '{env_id}': {error}") from None

    @property
    def obs_dim(self) -> int:
        return int(np.prod(self.envs.single_observation_space.shape))

    @property
    def action_dim(self) -> int:
        return int(np.prod(self.envs.single_action_space.shape))

    def run(self, policy: PolicyFn, seed: int | list[int]) -> np.ndarray:
        """Undiscounted return of each episode; ``seed`` seeds env i with seed + i, or give one per env."""
        obs, _ = self.envs.reset(seed=seed)
        returns = np.zeros(self.episodes)
        done = np.zeros(self.episodes, dtype=bool)
        while not done.all():
            obs, reward, terminated, truncated, _ = self.envs.step(np.asarray(policy(obs)))
            returns += np.where(done, 0.0, reward)  # finished episodes autoreset: ignore them
            done |= terminated | truncated
        return returns

    def close(self) -> None:
        self.envs.close()


def make_policy(act: Callable) -> Callable:
    """``policy(state, (mean, std), raw_obs) -> action``: normalises observations, then acts."""

    def policy(state, normalizer: tuple[jax.Array, jax.Array], observations):
        mean, std = normalizer
        return act(state, (observations - mean) / std)

    return policy


@functools.lru_cache(maxsize=None)
def make_action_mse(act: Callable, chunk: int = 16_384) -> Callable:
    """``mse(state, observations, actions)``: mean over all entries of (π(s) − a)².

    Rows go through the policy in fixed-size chunks (the last one zero-padded and masked
    out), so memory stays bounded and one compilation serves any number of rows.
    """

    @jax.jit
    def chunk_sum(state, observations, actions, valid):
        errors = jnp.sum((act(state, observations) - actions) ** 2, axis=-1)
        return jnp.sum(jnp.where(valid, errors, 0.0))

    def mse(state, observations: jax.Array, actions: jax.Array) -> float:
        n = observations.shape[0]
        total = 0.0
        for start in range(0, n, chunk):
            obs, act_ = observations[start : start + chunk], actions[start : start + chunk]
            rows = obs.shape[0]
            if rows < chunk:
                obs = jnp.pad(obs, ((0, chunk - rows), (0, 0)))
                act_ = jnp.pad(act_, ((0, chunk - rows), (0, 0)))
            total += chunk_sum(state, obs, act_, jnp.arange(chunk) < rows)
        return float(total) / actions.size

    return mse


def evaluation_seed(run_seed: int, step: int) -> int:
    """Environment seed of the evaluation at ``step``: fixed per (run seed, step)."""
    return int(np.random.SeedSequence([run_seed, step]).generate_state(1)[0])
