"""Checkpoints: the whole training state (params, masks, optimizer states, RNGs) with its step and
the run facts needed to rebuild it (dimensions, normaliser, environment, reference scores, data).

One file, one commit point: the step, the facts and the state are serialised together, written to a
temporary file and renamed over the previous checkpoint, so a crash at any moment leaves either the
old checkpoint or the new one, each complete and self-consistent. A SHA-256 checksum of the content
is stored in front of it; a damaged file is refused with a :class:`CheckpointError` rather than
resumed with garbage. The latest checkpoint is kept, and, where the run asks for it, the one of
the lowest validation action MSE (another file name, the same format).

File layout: ``MAGIC`` (16 bytes) + SHA-256 of the payload (32 bytes) + payload, where the payload
is a Flax msgpack of ``{"step", "info" (JSON text), "state"}``. Each network in the state is
``{params, opt_state, target}``, a sparse network's masks inside its optimiser state
(``{masks, inner_state}``); checkpoints written before the masks had that one holder keep them beside
the params (``{params, opt_state, mask, target}``) and are migrated when restored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
from flax import serialization

from ..masked_net import MaskedNet
from ..sparsity import MaskedUpdatesState, holds_masks
from .run_directory import CHECKPOINT_FILE, LEGACY_CHECKPOINT_INFO, atomic_write

if TYPE_CHECKING:
    from .config import RunConfig
    from .prepare import PreparedData

MAGIC = b"sparse-reg-ckpt2"
_DIGEST_BYTES = 32


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be trusted (corrupt, truncated, inconsistent)."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    info: dict  # JSON-able run facts; info["step"] == step
    state_dict: dict  # the train state as a Flax state dict; see restore()

    def restore(self, template: Any) -> Any:
        """The saved pytree, with the structure of ``template``."""
        try:
            return serialization.from_state_dict(template, migrated_state_dict(template, self.state_dict))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(f"checkpoint does not fit this run's train state ({type(error).__name__}: "
                                  f"{error}); was config.json edited?") from None


def _state_dict_key(entry: Any) -> str:
    for attribute in ("name", "key", "idx"):  # GetAttrKey, DictKey, SequenceKey: as Flax names them in a state dict
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def migrated_state_dict(template: Any, state_dict: dict) -> dict:
    """``state_dict`` with every :class:`MaskedNet` of ``template`` in today's layout.

    Checkpoints written before the masks moved into the optimiser state hold a network as ``{params,
    opt_state, mask, target}``: ``mask`` beside the params (None for a dense net) and the optimiser's own
    state. A sparse net of ``template`` (its optimiser ``masked_updates``) gets ``opt_state = {masks: mask,
    inner_state: opt_state}``, what ``MaskedUpdatesState(mask, opt_state)`` serialises to: the same values
    in their one holder; a dense one loses its ``mask: None``. Other entries are returned as they are."""
    masks_field, inner_field = MaskedUpdatesState._fields
    is_net = lambda node: isinstance(node, MaskedNet)  # noqa: E731
    for path, net in jax.tree_util.tree_flatten_with_path(template, is_leaf=is_net)[0]:
        if not is_net(net):
            continue
        keys = [_state_dict_key(entry) for entry in path]
        parents = [state_dict]
        for key in keys:
            node = parents[-1].get(key) if isinstance(parents[-1], dict) else None
            parents.append(node)
        old = parents[-1]
        if not isinstance(old, dict) or "mask" not in old:
            continue  # today's layout (or not this template's: restoring says so)
        new = {key: value for key, value in old.items() if key != "mask"}
        if holds_masks(net) and old["mask"] is not None:
            new["opt_state"] = {masks_field: old["mask"], inner_field: old["opt_state"]}
        for parent, key in zip(reversed(parents[:-1]), reversed(keys)):  # copies along the path, no mutation
            new = {**parent, key: new}
        state_dict = new
    return state_dict


def save_checkpoint(directory: Path, step: int, train_state: Any, info: dict, file: str = CHECKPOINT_FILE) -> None:
    """``train_state`` is any pytree (here: agent state, data key); ``info`` must be JSON-able."""
    info = {**info, "step": int(step)}
    payload = serialization.msgpack_serialize(
        {
            "step": int(step),
            "info": json.dumps(info),
            "state": serialization.to_state_dict(jax.device_get(train_state)),
        }
    )
    atomic_write(directory / file, MAGIC + hashlib.sha256(payload).digest() + payload)
    if file == CHECKPOINT_FILE:
        # A run started by an older version also has a checkpoint.json; it is stale from now on.
        (directory / LEGACY_CHECKPOINT_INFO).unlink(missing_ok=True)


def read_checkpoint(directory: Path, file: str = CHECKPOINT_FILE) -> Checkpoint:
    """The checkpoint ``file`` of run directory ``directory``, verified (checksum, step)."""
    path = directory / file
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {directory} (missing {file})")
    raw = path.read_bytes()
    if not raw.startswith(MAGIC) and file == CHECKPOINT_FILE:
        return _read_legacy(directory, raw)
    digest, payload = raw[len(MAGIC) : len(MAGIC) + _DIGEST_BYTES], raw[len(MAGIC) + _DIGEST_BYTES :]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path} is corrupt (checksum mismatch): it cannot be resumed or loaded")
    try:
        content = serialization.msgpack_restore(payload)
        step, info = int(content["step"]), json.loads(content["info"])
        state_dict = content["state"]
    except Exception as error:  # noqa: BLE001 - a checksummed file that does not parse is corrupt too
        raise CheckpointError(f"{path} cannot be read ({type(error).__name__}: {error})") from None
    if info.get("step") != step:
        raise CheckpointError(f"{path} is inconsistent: step {step} but its info says {info.get('step')}")
    return Checkpoint(step, info, state_dict)


def _read_legacy(directory: Path, raw: bytes) -> Checkpoint:
    """Checkpoints of older versions: a bare state msgpack plus ``checkpoint.json`` (no checksum)."""
    info_path = directory / LEGACY_CHECKPOINT_INFO
    if not info_path.is_file():
        raise CheckpointError(f"{directory / CHECKPOINT_FILE} is not a sparse-reg checkpoint or is corrupt")
    try:
        info = json.loads(info_path.read_text())
        state_dict = serialization.msgpack_restore(raw)
        return Checkpoint(int(info["step"]), info, state_dict)
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"{directory}: unreadable checkpoint ({type(error).__name__}: {error})") from None


def checkpoint_step(directory: Path) -> int | None:
    """The step of the run's checkpoint, or None if it has none or it cannot be read."""
    try:
        return read_checkpoint(Path(directory)).step
    except (OSError, ValueError):
        return None


def checkpoint_to_resume(out: Path) -> Checkpoint:
    """``out``'s checkpoint, or a CheckpointError that says how to go on."""
    try:
        return read_checkpoint(out)
    except CheckpointError as error:
        raise CheckpointError(f"cannot resume: {error}; start the run again with --overwrite") from None


def checkpoint_info(config: "RunConfig", data: "PreparedData", masked: bool) -> dict:
    """The run facts a checkpoint carries beside the state: enough to rebuild the agent without the
    data (``load_agent``) and to check a resume (config, data fingerprint)."""
    return {
        "config": config.to_dict(),  # the run's identity: a resume or a load checks config.json against it
        "obs_dim": data.train.obs_dim,
        "action_dim": data.train.action_dim,
        "sparse": masked,  # whether the state's networks carry masks (the template's structure)
        "env_id": data.env_id,
        "normalizer": data.normalizer.to_dict(),
        "reference": data.reference_record(),
        "data": data.data_record,
    }


def restore_train_state(checkpoint: Checkpoint, template: Any, out: Path) -> Any:
    """The (agent state, data key) of ``checkpoint``, checked against the step it was saved at."""
    state, key = checkpoint.restore(template)
    counter = getattr(state, "step", None)  # algorithms that count their updates
    if counter is not None and int(counter) != checkpoint.step:
        raise CheckpointError(f"{out}: checkpoint of step {checkpoint.step} holds a state at update {int(counter)}")
    return state, key
