"""Collecting transitions from gymnasium environments with batched NumPy policies.

A *policy function* maps a batch of observations ``(B, obs_dim)`` (float32) and a NumPy
generator to a batch of actions ``(B, action_dim)`` in ``[-1, 1]``; the collector rescales them
to the environment's action box (the identity for the MuJoCo locomotion tasks, and what SB3 / sbx
do with their squashed policies). One policy call serves every environment at each step, which
is what makes collection fast: the per-step cost is then dominated by MuJoCo itself.

Why plain environments in a list rather than ``gymnasium.vector``: gymnasium 1.x vector envs
auto-reset on the step *after* an episode ends ("next-step" autoreset), so a naive loop records
one fake transition per episode. Stepping single environments ourselves makes every recorded
transition a real one, gives us the true final observation of truncated episodes, and lets us
stop at exactly ``n_transitions`` (stepping only some of the environments in the last round).

The policy's matrix products are run with single-threaded BLAS (``threadpoolctl``): they are
small, and OpenBLAS's worker threads, interleaved with MuJoCo stepping, made collection about 4x
slower on a busy 2-core machine (see ``benchmarks/collect_speed.py``).

Everything is deterministic for a given ``seed`` and ``n_envs``: environment ``j`` is reset once
with a seed drawn from ``SeedSequence(seed)`` (later resets continue its own generator) and all
action noise comes from one generator consumed in a fixed order.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from threadpoolctl import threadpool_limits

from .behaviour_policy import BehaviourPolicy
from .dataset import Dataset

PolicyFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]

DEFAULT_N_ENVS = 50  # 300_000 / 50 = 6_000 steps per env: whole 1000-step episodes when nothing terminates


def make_uniform_policy(action_dim: int) -> PolicyFn:
    """A policy function drawing actions uniformly from [-1, 1]^action_dim."""

    def policy(observations: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=(len(observations), action_dim)).astype(np.float32)

    return policy


def behaviour_policy_fn(policy: BehaviourPolicy, deterministic: bool = False) -> PolicyFn:
    """Wrap a :class:`BehaviourPolicy`: stochastic (sampled) by default, or the tanh of its mean."""

    def act(observations: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return policy.act(observations, None if deterministic else rng)

    return act


@dataclass(frozen=True)
class Segment:
    """Transitions ``[start, next segment's start)`` (global collection order) come from ``policy``."""

    start: int
    policy: PolicyFn | None  # None: uniform random actions (e.g. the warm-up of a training run)
    label: str


def _make_envs(env_id: str, n_envs: int, max_episode_steps: int | None) -> list[gym.Env]:
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": int(max_episode_steps)}
    with quiet_mujoco_model_warnings():
        return [gym.make(env_id, **kwargs) for _ in range(n_envs)]


@contextmanager
def quiet_mujoco_model_warnings() -> Iterator[None]:
    """Swallow MuJoCo's "'settotalmass' is deprecated" warning while models are compiled.

    gymnasium's HalfCheetah XML uses that attribute and MuJoCo warns at every compile: one
    stderr line, and one line appended to ./MUJOCO_LOG.TXT, per environment created (~150 per
    dataset build). Any other MuJoCo warning still gets through, as a Python warning.
    """
    try:
        import mujoco
    except ImportError:
        yield
        return
    previous = mujoco.get_mju_user_warning()

    def handler(message: str) -> None:
        if "settotalmass" in message:
            return
        if previous is not None:
            previous(message)
        else:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


@contextmanager
def _running_envs(env_id: str, n_envs: int, max_episode_steps: int | None) -> Iterator[list[gym.Env]]:
    """Environments to step (closed afterwards), with BLAS limited to one thread meanwhile."""
    envs = _make_envs(env_id, n_envs, max_episode_steps)
    try:
        with single_threaded_blas():
            yield envs
    finally:
        for env in envs:
            env.close()


def _action_scaler(space: gym.Space) -> Callable[[np.ndarray], np.ndarray]:
    """Map actions from [-1, 1] to the (bounded) action box; identity when the box is [-1, 1]."""
    if not isinstance(space, gym.spaces.Box) or not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        raise ValueError(f"only bounded Box action spaces are supported, got {space}")
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    if np.all(low == -1.0) and np.all(high == 1.0):
        return lambda actions: np.asarray(actions, dtype=np.float32)
    return lambda actions: (low + (np.asarray(actions, dtype=np.float32) + 1.0) * 0.5 * (high - low)).astype(np.float32)


def _seeds(seed: int, n: int) -> tuple[list[int], np.random.Generator]:
    """Per-environment reset seeds and the action-noise generator, all derived from ``seed``."""
    sequence = np.random.SeedSequence(int(seed))
    env_sequence, noise_sequence = sequence.spawn(2)
    return [int(s) for s in env_sequence.generate_state(n)], np.random.default_rng(noise_sequence)


def blas_kernels() -> list[dict]:
    """The BLAS libraries NumPy uses and the kernel each picked for this CPU (it decides how the
    policy's matrix products round, hence a rollout dataset's bits: see ``registry``)."""
    from threadpoolctl import threadpool_info

    return [
        {"library": info.get("internal_api"), "version": info.get("version"), "architecture": info.get("architecture")}
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread for the duration."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def collect_schedule(
    segments: Sequence[Segment],
    env_id: str,
    n_transitions: int,
    seed: int,
    n_envs: int = DEFAULT_N_ENVS,
    max_episode_steps: int | None = None,
    progress: bool = False,
    desc: str | None = None,
    name: str = "rollouts",
) -> Dataset:
    """Collect ``n_transitions`` transitions, switching policy at each segment's global start index.

    Transitions are numbered in collection order (round ``r`` of the loop produces numbers
    ``r * n_envs + j`` for environment ``j``), and transition ``t`` uses the policy of the last
    segment with ``start <= t``; so each segment contributes exactly ``next.start - start``
    transitions, also when a boundary falls inside a round. Episodes carry on across a switch, as
    they do in a training run whose policy changes under a running episode.

    The returned dataset lists whole episodes one after another, ordered by the time they
    started; ``next_observations[i] == observations[i + 1]`` inside an episode. An episode still
    running when the budget is spent is cut and its last transition marked ``timeouts=True``.
    """
    if n_transitions <= 0:
        raise ValueError(f"n_transitions must be positive, got {n_transitions}")
    if not segments or segments[0].start != 0:
        raise ValueError("the first segment must start at transition 0")
    starts = np.array([s.start for s in segments])
    if np.any(np.diff(starts) <= 0):
        raise ValueError(f"segment starts must be strictly increasing, got {starts.tolist()}")
    n_envs = max(1, min(int(n_envs), int(n_transitions)))

    with _running_envs(env_id, n_envs, max_episode_steps) as envs:
        scale = _action_scaler(envs[0].action_space)
        obs_dim = int(np.prod(envs[0].observation_space.shape))
        action_dim = int(np.prod(envs[0].action_space.shape))
        uniform = make_uniform_policy(action_dim)
        policies = [s.policy if s.policy is not None else uniform for s in segments]
        env_seeds, rng = _seeds(seed, n_envs)

        observations = np.empty((n_transitions, obs_dim), np.float32)
        next_observations = np.empty((n_transitions, obs_dim), np.float32)
        actions = np.empty((n_transitions, action_dim), np.float32)
        rewards = np.empty(n_transitions, np.float32)
        terminals = np.zeros(n_transitions, bool)
        timeouts = np.zeros(n_transitions, bool)
        episode = np.empty(n_transitions, np.int64)  # id of the episode each transition belongs to

        current = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, env_seeds)]).astype(np.float32)
        current_episode = np.arange(n_envs)  # episode ids are handed out in the order episodes start
        next_episode_id = n_envs

        bar = _progress_bar(n_transitions, desc or f"collecting {env_id}", progress)
        t = 0
        while t < n_transitions:
            k = min(n_envs, n_transitions - t)  # the last round may step only some environments
            segment_of = np.searchsorted(starts, np.arange(t, t + k), side="right") - 1
            batch = np.empty((k, action_dim), np.float32)
            for s in np.unique(segment_of):  # at most two policies in a round (at a switch)
                rows = segment_of == s
                batch[rows] = policies[s](current[:k][rows], rng)
            env_actions = scale(batch)

            rows = slice(t, t + k)
            observations[rows] = current[:k]
            actions[rows] = env_actions
            episode[rows] = current_episode[:k]
            for j in range(k):
                next_obs, reward, terminated, truncated, _ = envs[j].step(env_actions[j])
                next_observations[t + j] = next_obs
                rewards[t + j] = reward
                terminals[t + j] = terminated
                timeouts[t + j] = truncated
                if terminated or truncated:
                    current[j] = envs[j].reset()[0]
                    current_episode[j] = next_episode_id
                    next_episode_id += 1
                else:
                    current[j] = next_obs
            t += k
            bar.update(k)
        bar.close()

    # Group transitions by episode (stable, so time order is kept inside each episode).
    order = np.argsort(episode, kind="stable")
    arrays = dict(
        observations=observations[order],
        actions=actions[order],
        rewards=rewards[order],
        next_observations=next_observations[order],
        terminals=terminals[order],
        timeouts=timeouts[order],
    )
    sorted_episode = episode[order]
    last_of_episode = np.append(sorted_episode[1:] != sorted_episode[:-1], True)
    cut = last_of_episode & ~arrays["terminals"] & ~arrays["timeouts"]
    arrays["timeouts"] = arrays["timeouts"] | cut

    ends = np.append(starts[1:], max(n_transitions, starts[-1]))
    used = [
        {"label": s.label, "start": int(s.start), "end": int(min(e, n_transitions))}
        for s, e in zip(segments, ends)
        if s.start < n_transitions
    ]
    return Dataset(
        **arrays,
        env_id=env_id,
        name=name,
        metadata={
            "seed": int(seed),
            "n_envs": n_envs,
            "max_episode_steps": max_episode_steps,
            "segments": used,
            "cut_episodes": int(cut.sum()),
        },
    )


def collect_rollouts(
    policy_fn: PolicyFn | None,
    env_id: str,
    n_transitions: int,
    seed: int,
    n_envs: int = DEFAULT_N_ENVS,
    max_episode_steps: int | None = None,
    progress: bool = False,
    desc: str | None = None,
    name: str = "rollouts",
) -> Dataset:
    """Roll out one policy (``None``: uniform random actions) for ``n_transitions`` transitions.

    See :func:`collect_schedule` for the layout of the result.
    """
    return collect_schedule(
        [Segment(0, policy_fn, "policy" if policy_fn is not None else "random")],
        env_id,
        n_transitions,
        seed,
        n_envs=n_envs,
        max_episode_steps=max_episode_steps,
        progress=progress,
        desc=desc,
        name=name,
    )


def evaluate_policy(
    policy_fn: PolicyFn | None,
    env_id: str,
    episodes: int,
    seed: int,
    max_episode_steps: int | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes, all run side by side (one policy call per step)."""
    if episodes <= 0:
        raise ValueError(f"episodes must be positive, got {episodes}")
    with _running_envs(env_id, episodes, max_episode_steps) as envs:
        scale = _action_scaler(envs[0].action_space)
        action_dim = int(np.prod(envs[0].action_space.shape))
        policy_fn = policy_fn if policy_fn is not None else make_uniform_policy(action_dim)
        env_seeds, rng = _seeds(seed, episodes)
        current = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, env_seeds)]).astype(np.float32)
        returns = np.zeros(episodes)
        active = np.arange(episodes)
        bar = _progress_bar(episodes, desc or f"evaluating on {env_id}", progress, unit="episode")
        while len(active):
            env_actions = scale(policy_fn(current[active], rng))
            still_running = []
            for row, j in enumerate(active):
                next_obs, reward, terminated, truncated, _ = envs[j].step(env_actions[row])
                returns[j] += reward
                current[j] = next_obs
                if terminated or truncated:
                    bar.update(1)
                else:
                    still_running.append(j)
            active = np.array(still_running, dtype=np.int64)
        bar.close()
    return returns


def random_policy_return(
    env_id: str,
    episodes: int = 100,
    seed: int = 0,
    max_episode_steps: int | None = None,
    progress: bool = False,
) -> float:
    """Mean return of a uniform random policy (D4RL's "random" reference score)."""
    returns = evaluate_policy(
        None, env_id, episodes, seed, max_episode_steps, progress=progress, desc=f"random policy on {env_id}"
    )
    return float(returns.mean())


def _progress_bar(total: int, desc: str, enabled: bool, unit: str = "transition"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not enabled, leave=False)
