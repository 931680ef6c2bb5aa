"""Behaviour policies as plain NumPy: the shipped policies run without torch or sbx.

A policy file is an ``.npz`` exported from an sbx CrossQ actor (see
``scripts/train_behaviour_policy.py``). The actor is

    x -> BN_0 -> [Dense_i -> ReLU -> BN_{i+1}]_i -> (Dense_mean, Dense_log_std)

where each BN is a batch-renorm layer evaluated with its running statistics,
``(x - mean) / sqrt(var + eps) * scale + bias``. Actions are ``tanh(mean)``
(deterministic) or ``tanh(mean + std * noise)`` (stochastic), as in sbx.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BATCH_RENORM_EPS = 1e-3  # sbx BatchRenorm default
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # sbx Actor defaults


@dataclass(frozen=True)
class BehaviourPolicy:
    """A tanh-Gaussian MLP policy evaluated in NumPy (batched over the first axis)."""

    hidden: tuple[tuple[np.ndarray, np.ndarray], ...]  # (kernel, bias) per hidden layer
    norms: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]  # (mean, var, scale, bias)
    mean_head: tuple[np.ndarray, np.ndarray]
    log_std_head: tuple[np.ndarray, np.ndarray]
    metadata: dict

    @property
    def obs_dim(self) -> int:
        return int(self.hidden[0][0].shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.mean_head[0].shape[1])

    @classmethod
    def load(cls, path: str | Path) -> "BehaviourPolicy":
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        n_hidden = int(arrays["n_hidden"])
        hidden = tuple((arrays[f"hidden_{i}/kernel"], arrays[f"hidden_{i}/bias"]) for i in range(n_hidden))
        norms = tuple(
            tuple(arrays[f"norm_{i}/{name}"] for name in ("mean", "var", "scale", "bias"))
            for i in range(n_hidden + 1)
        )
        metadata = json.loads(str(arrays["metadata"])) if "metadata" in arrays else {}
        return cls(
            hidden=hidden,
            norms=norms,
            mean_head=(arrays["mean/kernel"], arrays["mean/bias"]),
            log_std_head=(arrays["log_std/kernel"], arrays["log_std/bias"]),
            metadata=metadata,
        )

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"n_hidden": np.array(len(self.hidden))}
        for i, (kernel, bias) in enumerate(self.hidden):
            arrays[f"hidden_{i}/kernel"], arrays[f"hidden_{i}/bias"] = kernel, bias
        for i, stats in enumerate(self.norms):
            for name, value in zip(("mean", "var", "scale", "bias"), stats):
                arrays[f"norm_{i}/{name}"] = value
        arrays["mean/kernel"], arrays["mean/bias"] = self.mean_head
        arrays["log_std/kernel"], arrays["log_std/bias"] = self.log_std_head
        arrays["metadata"] = np.array(json.dumps(self.metadata))
        np.savez_compressed(path, **arrays)

    def astype(self, dtype) -> "BehaviourPolicy":
        """The same policy with every array cast to ``dtype`` (float16 to ship, float32 to compute)."""
        cast = lambda arrays: tuple(np.asarray(a, dtype=dtype) for a in arrays)  # noqa: E731
        return BehaviourPolicy(
            hidden=tuple(cast(layer) for layer in self.hidden),
            norms=tuple(cast(norm) for norm in self.norms),
            mean_head=cast(self.mean_head),
            log_std_head=cast(self.log_std_head),
            metadata=self.metadata,
        )

    def distribution(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the pre-tanh Gaussian for a batch of observations."""
        x = _batch_renorm(np.asarray(obs, dtype=np.float32), self.norms[0])
        for (kernel, bias), norm in zip(self.hidden, self.norms[1:]):
            x = _batch_renorm(np.maximum(x @ kernel + bias, 0.0), norm)
        mean = x @ self.mean_head[0] + self.mean_head[1]
        log_std = np.clip(x @ self.log_std_head[0] + self.log_std_head[1], LOG_STD_MIN, LOG_STD_MAX)
        return mean, np.exp(log_std)

    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Actions in [-1, 1]: deterministic (tanh of the mean) when ``rng`` is None, sampled otherwise."""
        mean, std = self.distribution(obs)
        if rng is None:
            return np.tanh(mean)
        return np.tanh(mean + std * rng.standard_normal(mean.shape, dtype=np.float32))


def _batch_renorm(x: np.ndarray, stats: tuple[np.ndarray, ...]) -> np.ndarray:
    mean, var, scale, bias = stats
    return (x - mean) / np.sqrt(var + BATCH_RENORM_EPS) * scale + bias
