"""Evaluation: batched policy rollouts, the behaviour-cloning MSE overfitting signal, and the
evaluators that turn them into a row of metrics.csv.

At each evaluation the trainer runs every seed's episodes (one batched rollout), then, per run,
calls each evaluator with an :class:`EvaluationContext` and joins the columns they return into
the row (later evaluators may replace earlier columns). ``train(..., evaluators=...)`` takes
them, as d3rlpy's ``fit(evaluators=...)`` does; :data:`DEFAULT_EVALUATORS` is the project's
evaluation (the returns, the actor's action MSE on the training and validation data, and each
network's own loss on the validation data).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from ..data.collect import quiet_mujoco_model_warnings
from ..data.dataset import ReferenceScores
from .logging import METRICS_COLUMNS

if TYPE_CHECKING:
    from ..algorithms import Algorithm
    from .prepare import SeedRun

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


def normalized_score(reference: ReferenceScores | None, episode_return: float) -> float:
    """The D4RL-style score of a return (NaN without reference scores)."""
    return float(reference.normalize(episode_return)) if reference is not None else math.nan


# ----------------------------------------------------------------------------- evaluators


@dataclass(frozen=True)
class EvaluationContext:
    """What an evaluator sees of one run at one evaluation."""

    run: "SeedRun"  # its config, data (subsets, normaliser, reference) and device batches
    algorithm: "Algorithm"
    state: Any  # the agent's state (masks applied by its networks)
    step: int
    returns: np.ndarray  # the returns of this evaluation's episodes


Evaluator = Callable[[EvaluationContext], dict]  # -> {column: number}


def returns_evaluator(context: EvaluationContext) -> dict:
    """The episodes' mean and std return, and the mean's normalised score."""
    returns = context.returns
    return {
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "normalized_score": normalized_score(context.run.data.reference, np.mean(returns)),
    }


def action_mse_evaluator(context: EvaluationContext) -> dict:
    """The actor's action MSE on the training data and on the held-out validation episodes."""
    mse = make_action_mse(context.algorithm.act)
    train, validation = context.run.train_batch, context.run.validation_batch
    return {
        "train_mse": mse(context.state, train.observations, train.actions),
        "validation_mse": (
            mse(context.state, validation.observations, validation.actions) if validation is not None else math.nan
        ),
    }


def held_out_chunks(batch, batch_size: int):
    """The rows of ``batch`` as k = ceil(n / batch_size) equal chunks of n // k rows, stacked (k, n // k, ...):
    each chunk at most a training batch, so a loss reads held-out data as it reads a training batch (the
    paper code's B×B losses stay B×B); the n mod k < k rows left over are not used."""
    n = jax.tree_util.tree_leaves(batch)[0].shape[0]
    chunks = -(-n // batch_size)
    rows = n // chunks
    return jax.tree_util.tree_map(lambda x: x[: chunks * rows].reshape(chunks, rows, *x.shape[1:]), batch)


HELD_OUT_CHUNKS_AT_ONCE = 64  # chunks vmapped together: matmuls of ~16k rows, as the action MSE's, not 256
# Rows of the validation episodes the losses read: IQL's three losses make ten network passes per row, so
# the losses over 50k rows cost what the action MSE over 200k does (0.44 s on this project's CPU, 2% of
# the 20 s of 5k dense IQL updates: benchmarks/results/speed-cpu-evaluators.json). The validation
# episodes come in a seeded random order, so these are whole episodes drawn at random.
HELD_OUT_LOSS_ROWS = 50_000


@functools.lru_cache(maxsize=None)
def make_held_out_losses(losses: tuple[tuple[str, Callable], ...]) -> Callable:
    """``held_out(state, chunks) -> {network: loss}``: each network's training loss, averaged over the
    chunks of :func:`held_out_chunks` (``jax.lax.map``, 64 chunks side by side). The losses that draw noise
    (TD3+BC's target smoothing, AWAC's sampled actions, dropout) get a fixed key per chunk, the same at
    every evaluation, so two evaluations differ only by the agent."""

    @jax.jit
    def held_out(state, chunks):
        keys = jax.random.split(jax.random.PRNGKey(0), chunks.observations.shape[0])

        def one_chunk(chunk_and_key):
            chunk, key = chunk_and_key
            return {name: loss(state, chunk, jax.random.fold_in(key, i))[0]
                    for i, (name, loss) in enumerate(losses)}

        per_chunk = jax.lax.map(one_chunk, (chunks, keys), batch_size=HELD_OUT_CHUNKS_AT_ONCE)
        return {name: jnp.mean(values) for name, values in per_chunk.items()}

    return held_out


def held_out_loss_evaluator(context: EvaluationContext) -> dict:
    """Each network's own training loss on the held-out validation episodes (``validation_<network>_loss``,
    e.g. IQL's actor, critic and value): the signals an offline selection rule may use besides the action
    MSE, which suits behaviour cloning but not an actor that weights actions by their advantage. They
    read the first :data:`HELD_OUT_LOSS_ROWS` validation rows (all of a small held-out slice); NaN
    columns without validation data."""
    losses = tuple(context.algorithm.losses.items())
    validation = context.run.validation_batch
    if validation is None or validation.observations.shape[0] == 0:
        return {f"validation_{name}_loss": math.nan for name, _ in losses}
    batch_size = getattr(context.run.config.algorithm_config(), "batch_size", 256)
    validation = jax.tree_util.tree_map(lambda x: x[:HELD_OUT_LOSS_ROWS], validation)
    values = make_held_out_losses(losses)(context.state, held_out_chunks(validation, batch_size))
    return {f"validation_{name}_loss": float(value) for name, value in values.items()}


DEFAULT_EVALUATORS: tuple[Evaluator, ...] = (returns_evaluator, action_mse_evaluator, held_out_loss_evaluator)


def evaluation_row(context: EvaluationContext, evaluators: Sequence[Evaluator], metrics: dict, wall_s: float) -> dict:
    """One line of metrics.csv: the step, the evaluators' columns, the chunk's losses, the wall time."""
    row: dict = {"step": context.step}
    for evaluator in evaluators:
        row.update(evaluator(context))
    missing = [c for c in METRICS_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"the evaluators give no {', '.join(missing)}: every run logs them (its summary and resume "
                         "read them); keep sparse_reg.training.evaluation.DEFAULT_EVALUATORS among them")
    return {**row, **{k: float(v) for k, v in metrics.items()}, "wall_s": round(wall_s, 2)}
