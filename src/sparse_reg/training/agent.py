"""A trained agent restored from a run directory: acting on raw observations, evaluating, and
exporting its policy with ``jax.export`` (``sparse_reg.load_agent``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..algorithms import Algorithm, get_algorithm
from ..data.dataset import Normalizer, ReferenceScores
from .checkpoint import read_checkpoint, restore_train_state
from .config import RunConfig
from .evaluation import RolloutEvaluator, make_policy, normalized_score
from .prepare import initial_state
from .run_directory import CHECKPOINT_FILES, CONFIG_FILE, LOWEST_VALIDATION_MSE_FILE, run_directory_of


@dataclass
class Agent:
    """A trained agent restored from a run directory: ``act`` takes raw observations.

    The policy (normalisation, then the algorithm's deterministic action) is compiled once per
    agent and per observation batch shape, not on every call.
    """

    algorithm: Algorithm
    state: Any
    normalizer: Normalizer
    env_id: str
    reference: ReferenceScores | None
    step: int
    reference_source: str = "dataset"

    def __post_init__(self):
        self._policy = jax.jit(make_policy(self.algorithm.act))
        self._normalizer = (jnp.asarray(self.normalizer.mean), jnp.asarray(self.normalizer.std))

    def act(self, observations: np.ndarray) -> np.ndarray:
        """Deterministic actions for a batch (n, obs_dim) of raw observations (or one, (obs_dim,))."""
        observations = np.asarray(observations, dtype=np.float32)
        if observations.ndim == 1:
            return self.act(observations[None])[0]
        return np.asarray(self._policy(self.state, self._normalizer, observations))

    def export_policy(self, path: str | Path | None = None) -> bytes:
        """The deterministic policy (normalisation included, weights as constants) serialised with
        ``jax.export``, for any batch size; written to ``path`` if given. Run it without this project::

            import jax, numpy as np
            policy = jax.export.deserialize(open("policy.jaxexport", "rb").read())
            actions = np.asarray(policy.call(np.asarray(observations, np.float32)))  # (n, obs_dim) -> (n, act_dim)
        """
        from jax import export

        state, normalizer = self.state, self._normalizer

        def policy(observations):
            return make_policy(self.algorithm.act)(state, normalizer, observations)

        obs_dim = int(np.asarray(self.normalizer.mean).shape[0])
        shape = export.symbolic_shape(f"batch, {obs_dim}")
        exported = export.export(jax.jit(policy))(jax.ShapeDtypeStruct(shape, jnp.float32))
        try:
            data = bytes(exported.serialize())
        except ModuleNotFoundError as error:
            if error.name != "flatbuffers":
                raise
            raise ModuleNotFoundError(
                "exporting a policy needs the flatbuffers package, which jax does not install: pip install "
                "flatbuffers (loading the exported file needs it too)", name="flatbuffers") from None
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def evaluate(self, episodes: int = 10, seed: int = 0) -> dict:
        evaluator = RolloutEvaluator(self.env_id, episodes)
        try:
            returns = evaluator.run(self.act, seed)
        finally:
            evaluator.close()
        return {
            "step": self.step,
            "episodes": episodes,
            "returns": returns.tolist(),
            "return_mean": float(np.mean(returns)),
            "return_std": float(np.std(returns)),
            "normalized_score": normalized_score(self.reference, float(np.mean(returns))),
            "reference_source": self.reference_source if self.reference is not None else "none",
        }


def load_agent(path: str | Path, checkpoint: str = "latest") -> Agent:
    """Restore the agent of a run directory (or of a checkpoint file inside one).

    ``checkpoint``: "latest" (the last evaluation's) or "lowest-validation-mse" (the evaluation with
    the lowest validation action MSE, kept by runs trained with ``keep_lowest_validation_mse``). A
    path to a checkpoint file picks that file, whatever ``checkpoint`` says.
    """
    path = Path(path)
    directory = run_directory_of(path)
    if checkpoint not in CHECKPOINT_FILES:
        raise ValueError(f"checkpoint must be one of {sorted(CHECKPOINT_FILES)}, got {checkpoint!r}")
    if not (directory / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path} is not a run directory (missing {CONFIG_FILE})")
    file = path.name if path.is_file() and path.name in CHECKPOINT_FILES.values() else CHECKPOINT_FILES[checkpoint]
    if file == LOWEST_VALIDATION_MSE_FILE and not (directory / file).is_file():
        raise FileNotFoundError(
            f"{directory} has no {file}: only runs trained with --keep-lowest-validation-mse "
            "(keep_lowest_validation_mse = true) keep the checkpoint of their lowest validation MSE"
        )
    saved = read_checkpoint(directory, file)
    info = saved.info
    # The config the checkpoint was trained with (older checkpoints do not record it: config.json's).
    config = RunConfig.from_dict(info["config"]) if "config" in info else RunConfig.of_run(directory)
    template = initial_state(config, info["obs_dim"], info["action_dim"], masked=info["sparse"])
    state, _ = restore_train_state(saved, template, directory)
    recorded = info.get("reference")
    reference = ReferenceScores(recorded["random"], recorded["expert"]) if recorded else None
    source = (recorded or {}).get("source", "dataset")
    return Agent(get_algorithm(config.algo), state, Normalizer.from_dict(info["normalizer"]), info["env_id"],
                 reference, saved.step, source)
