"""Checkpoints: the whole training state (params, masks, optimizer states, RNGs, step) plus
the run facts needed to rebuild it (dimensions, normaliser, environment, reference scores).

Written atomically (temporary file, then rename) so an interrupted write never leaves a
half checkpoint behind; only the latest one is kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
from flax import serialization

CHECKPOINT_FILE = "checkpoint.msgpack"
CHECKPOINT_INFO = "checkpoint.json"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def save_checkpoint(directory: Path, train_state: Any, info: dict) -> None:
    """``train_state`` is any pytree (here: agent state, data key); ``info`` must be JSON-able."""
    state_dict = serialization.to_state_dict(jax.device_get(train_state))
    _atomic_write(directory / CHECKPOINT_FILE, serialization.msgpack_serialize(state_dict))
    _atomic_write(directory / CHECKPOINT_INFO, json.dumps(info, indent=2).encode())


def read_checkpoint_info(directory: Path) -> dict:
    path = directory / CHECKPOINT_INFO
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint in {directory} (missing {CHECKPOINT_INFO})")
    return json.loads(path.read_text())


def load_checkpoint(directory: Path, template: Any) -> Any:
    """Restore a pytree with the structure of ``template`` from ``directory``."""
    path = directory / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint in {directory} (missing {CHECKPOINT_FILE})")
    state_dict = serialization.msgpack_restore(path.read_bytes())
    return serialization.from_state_dict(template, state_dict)
