"""Shared fixtures: small real MuJoCo datasets made on the fly (no downloads)."""

from __future__ import annotations

import atexit
import builtins
import os
import shutil
import tempfile

# The suite compiles hundreds of small programs and runs each for a moment, so XLA's backend
# optimisation costs more than it saves here (`make test` on a fresh clone, idle 2-core CPU: 660 s
# with the default, 581 s without; docs/architecture.md, Tests). What the tests check does not
# depend on it; set XLA_FLAGS (even empty) to run them under other settings. Processes the tests
# start inherit it.
if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import pytest

from sparse_reg.data import Dataset, ReferenceScores, save_npz
from sparse_reg.data.reference import D4RL_REFERENCE_SCORES

# The tests' worker processes share a compilation cache of their own, not the user's; the process
# that made it (pytest's controller: the workers inherit the variable) removes it when it exits.
# A killed run cannot: its directory names its process, and the next run removes those of dead ones.
_TEST_JAX_CACHE_PREFIX = "sparse-reg-test-jax-cache-"


def _remove_caches_of_dead_runs() -> None:
    for directory in Path(tempfile.gettempdir()).glob(f"{_TEST_JAX_CACHE_PREFIX}*-*"):
        pid = directory.name[len(_TEST_JAX_CACHE_PREFIX):].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(directory, ignore_errors=True)


if "SPARSE_REG_JAX_CACHE" not in os.environ:
    if Path("/proc/self").exists():  # Linux: process ids can be checked
        _remove_caches_of_dead_runs()
    _TEST_JAX_CACHE = tempfile.mkdtemp(prefix=f"{_TEST_JAX_CACHE_PREFIX}{os.getpid()}-")
    os.environ["SPARSE_REG_JAX_CACHE"] = _TEST_JAX_CACHE
    atexit.register(shutil.rmtree, _TEST_JAX_CACHE, ignore_errors=True)


class Killed(Exception):
    """Stands for the process dying at an injected point (raised from a trainer hook)."""


def stop_at(step: int):
    """An ``on_evaluation`` hook for ``train`` that kills the run at its evaluation of ``step``
    (just after that step's checkpoint is written)."""

    def on_evaluation(row):
        if row["step"] == step:
            raise Killed

    return on_evaluation


def random_policy_dataset(env_id: str, n: int, seed: int = 0, max_episode_steps: int = 200) -> Dataset:
    """``n`` transitions of uniform random actions; episodes cut at ``max_episode_steps``."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    rng = np.random.default_rng(seed)
    columns = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
    obs, _ = env.reset(seed=seed)
    for i in range(n):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        truncated = truncated or i == n - 1
        for key, value in zip(columns, (obs, action, reward, next_obs, terminated, truncated)):
            columns[key].append(value)
        obs = env.reset()[0] if (terminated or truncated) else next_obs
    env.close()
    return Dataset(**{k: np.asarray(v) for k, v in columns.items()}, env_id=env_id, name=f"{env_id}-random",
                   reference=D4RL_REFERENCE_SCORES["hopper"] if env_id.startswith("Hopper") else None)


@pytest.fixture(scope="session")
def hopper_random() -> Dataset:
    return random_policy_dataset("Hopper-v5", 3000)


@pytest.fixture(scope="session")
def hopper_random_npz(hopper_random, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "hopper_random.npz"
    save_npz(hopper_random, path)
    return str(path)


def scripted_validation_mse(script: dict[int, float]) -> tuple:
    """Evaluators for ``train(..., evaluators=...)`` that log ``script[step]`` as each evaluation's
    validation MSE (the rest of the row is real), to steer what ``keep_lowest_validation_mse`` keeps."""
    from sparse_reg.training.evaluation import DEFAULT_EVALUATORS

    def scripted(context) -> dict:
        return {"validation_mse": script[context.step]}

    return (*DEFAULT_EVALUATORS, scripted)


def failing_writes(monkeypatch, modules, fails_on, error: Callable[[], BaseException], modes: str = "wa",
                   kept: Callable[[bytes], bytes] = lambda data: data[: len(data) // 2]) -> None:
    """Make ``open`` in ``modules`` return files whose writes fail, for files opened in one of ``modes``
    whose path satisfies ``fails_on(path)``: each write writes ``kept(data)`` and raises ``error()``
    (a process killed half-way through a write, a full disk)."""
    real_open = builtins.open

    class FailingFile:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(kept(data))
            self.file.flush()
            raise error()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def __getattr__(self, name):
            return getattr(self.file, name)

    def failing_open(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return FailingFile(file) if any(m in mode for m in modes) and fails_on(Path(path)) else file

    for module in modules:
        monkeypatch.setattr(module, "open", failing_open, raising=False)


__all__ = ["ReferenceScores", "failing_writes", "random_policy_dataset", "scripted_validation_mse"]
