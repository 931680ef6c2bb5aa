"""Datasets that are a training run's true replay buffer, or its first transitions:
medium-replay from the prefix shipped with the policies, and expert-replay from the full buffer
of a training artifacts directory (``SPARSE_REG_BEHAVIOUR_DIR``) when asked to.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .dataset import Dataset, DatasetError
from .reference import GYMNASIUM_ENV_FOR_FAMILY
from .shipped_policies import ShippedPolicies

BEHAVIOUR_DIR_ENV = "SPARSE_REG_BEHAVIOUR_DIR"
BUFFER_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def buffer_prefix(buffer, n: int, where: str = "the replay buffer") -> tuple[dict[str, np.ndarray], bool]:
    """The first ``n`` transitions of a replay buffer (an ``np.load``-ed file or a dict of arrays).

    Returns float32 observations/actions/rewards/next_observations and bool terminals/timeouts,
    and whether the episode running at the cut had to be closed (its last kept transition,
    neither terminal nor a timeout in the buffer, is marked ``timeouts=True``).
    DatasetError if a key is missing or the buffer holds fewer than ``n`` transitions.
    """
    missing = [key for key in BUFFER_KEYS if key not in buffer]
    if missing:
        raise DatasetError(f"{where}: missing {', '.join(missing)}")
    rows = len(buffer["rewards"])
    if not 0 < n <= rows:
        raise DatasetError(f"{where} holds {rows} transitions; cannot take the first {n}")
    arrays = {key: np.asarray(buffer[key][:n], dtype=np.float32) for key in BUFFER_KEYS[:4]}
    arrays.update({key: np.asarray(buffer[key][:n]).astype(bool) for key in BUFFER_KEYS[4:]})
    arrays["rewards"] = arrays["rewards"].reshape(n)
    cut = not (arrays["terminals"][-1] or arrays["timeouts"][-1])
    if cut:
        arrays["timeouts"][-1] = True
    return arrays, cut


def _buffer_dataset(name: str, family: str, arrays: dict[str, np.ndarray], replay_buffer: dict) -> Dataset:
    return Dataset(
        **arrays,
        env_id=GYMNASIUM_ENV_FOR_FAMILY[family],
        name=name,
        metadata={
            "n_envs": 1,
            "segments": [{"label": "true replay buffer", "start": 0, "end": len(arrays["rewards"])}],
            "cut_episodes": int(replay_buffer["last_episode_cut"]),
            "replay_buffer": replay_buffer,
        },
    )


def dataset_from_shipped_buffer(name: str, shipped: ShippedPolicies, size: int | None) -> Dataset:
    """medium-replay: the shipped prefix of the true training buffer (or its first ``size`` rows)."""
    file = shipped.medium_replay_file()
    entry = shipped.provenance.get("medium_replay", {})
    medium_step = int(shipped.role("medium")["step"])
    try:
        buffer = np.load(file)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{name}: cannot read {file} ({error})") from None
    with buffer:
        rows = len(buffer["rewards"]) if "rewards" in buffer else 0
        n = rows if size is None else int(size)
        arrays, cut = buffer_prefix(buffer, n, where=f"{name}: {file}")
    if rows != medium_step:
        warnings.warn(f"{name}: {file} holds {rows} transitions but the medium step is {medium_step}", stacklevel=3)
    return _buffer_dataset(
        name,
        shipped.family,
        arrays,
        {
            "exact": True,
            "description": f"the first {n} transitions of the behaviour policy's true training replay buffer "
            f"(D4RL's medium-replay: the run's buffer up to the medium policy, saved at step {medium_step})",
            "transitions": n,
            "medium_step": medium_step,
            "shipped_transitions": rows,
            "file": f"{shipped.family}/{file.name}",
            # The shipped file's own last transition was closed by the ship script.
            "last_episode_cut": bool(cut or (n == rows and entry.get("last_episode_cut", False))),
        },
    )


def dataset_from_true_buffer(name: str, shipped: ShippedPolicies, size: int | None) -> Dataset:
    """expert-replay from the real training buffer (optional; needs the artifacts dir)."""
    behaviour_dir = os.environ.get(BEHAVIOUR_DIR_ENV)
    if not behaviour_dir:
        raise DatasetError(f"{name}: --from-buffer needs {BEHAVIOUR_DIR_ENV} pointing at the training artifacts dir")
    buffer_file = Path(behaviour_dir).expanduser() / shipped.family / "replay_buffer.npz"
    if not buffer_file.is_file():
        raise DatasetError(f"{name}: no replay buffer at {buffer_file}")
    target_step = int(shipped.role("expert")["step"])
    n = target_step if size is None else int(size)
    with np.load(buffer_file) as buffer:
        arrays, cut = buffer_prefix(buffer, n, where=f"{name}: {buffer_file}")
    return _buffer_dataset(
        name,
        shipped.family,
        arrays,
        {
            "exact": True,
            "description": f"the first {n} transitions of the true training replay buffer (expert step {target_step})",
            "transitions": n,
            "expert_step": target_step,
            "file": str(buffer_file),
            "last_episode_cut": cut,
        },
    )
