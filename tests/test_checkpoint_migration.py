"""Checkpoints written before the masks moved into the optimiser state (issue 31) still resume and load.

Those checkpoints hold each network as ``{params, opt_state, mask, target}``: the mask beside the params
(None for a dense net) and the unwrapped optimiser state. Today a sparse network's masks are in its
optimiser state (``{masks, inner_state}``). The old layout is built here from a new checkpoint, as the
older code wrote it (same values, other places), since that code is not around at test time.
"""

from __future__ import annotations

import hashlib
import json

import jax
import numpy as np
import pytest
from conftest import Killed, stop_at
from flax import serialization

from sparse_reg.algorithms import get_algorithm
from sparse_reg.sparsity import MaskedUpdatesState
from sparse_reg.training.checkpoint import MAGIC, Checkpoint, read_checkpoint
from sparse_reg.training.config import RunConfig
from sparse_reg.training.logging import read_rows
from sparse_reg.training.prepare import initial_state
from sparse_reg.training.run_directory import CHECKPOINT_FILE
from sparse_reg.training.trainer import load_agent, train

CONFIG = dict(dataset="hopper-random", size=1500, validation_size=800, steps=400, eval_every=200, eval_episodes=2,
              mask_interval=200, mask_until=400, hidden_dims=(32, 32))


def old_layout(state_dict, names):
    """The agent part of a checkpoint's state dict as the older code wrote it: masks beside the params."""
    masks_field, inner_field = MaskedUpdatesState._fields
    agent = dict(state_dict["0"])
    for name in names:
        net = dict(agent[name])
        opt_state = net["opt_state"]
        if isinstance(opt_state, dict) and set(opt_state) == {masks_field, inner_field}:
            net["opt_state"], net["mask"] = opt_state[inner_field], opt_state[masks_field]
        else:
            net["mask"] = None
        agent[name] = net
    return {**state_dict, "0": agent}


def rewrite_in_old_layout(directory, names):
    saved = read_checkpoint(directory)
    payload = serialization.msgpack_serialize(
        {"step": saved.step, "info": json.dumps(saved.info), "state": old_layout(saved.state_dict, names)})
    (directory / CHECKPOINT_FILE).write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
    assert "mask" in read_checkpoint(directory).state_dict["0"][names[0]]


def leaves_equal(a, b) -> bool:
    a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_sparse_run_checkpointed_in_the_old_layout_resumes_to_the_same_run(tmp_path, hopper_random):
    config = RunConfig(**CONFIG, algo="bc", sparsity=0.9)
    names = list(get_algorithm("bc").losses)
    train(config, tmp_path / "whole", dataset=hopper_random, progress=False)

    with pytest.raises(Killed):
        train(config, tmp_path / "cut", dataset=hopper_random, progress=False, on_evaluation=stop_at(200))
    rewrite_in_old_layout(tmp_path / "cut", names)
    old_agent = load_agent(tmp_path / "cut")  # load_agent reads the old layout too
    assert old_agent.state.actor.mask is not None
    train(config, tmp_path / "cut", dataset=hopper_random, progress=False, resume=True)

    def comparable(rows):
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]

    assert comparable(read_rows(tmp_path / "cut" / "metrics.csv")) == comparable(
        read_rows(tmp_path / "whole" / "metrics.csv"))
    assert read_rows(tmp_path / "cut" / "masks.csv") == read_rows(tmp_path / "whole" / "masks.csv")
    assert leaves_equal(load_agent(tmp_path / "cut").state, load_agent(tmp_path / "whole").state)


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "sparse"])
def test_old_state_dicts_restore_into_the_new_structure(masked):
    config = RunConfig(**CONFIG, algo="td3bc", sparsity=0.9 if masked else 0.0)
    names = list(get_algorithm("td3bc").losses)
    template = initial_state(config, 11, 3, masked)
    state, key = template
    state = state.replace(actor=state.actor.replace(params=jax.tree_util.tree_map(lambda p: p + 1.0, state.actor.params)))
    new = serialization.to_state_dict(jax.device_get((state, key)))
    restored = Checkpoint(0, {"step": 0}, old_layout(new, names)).restore(template)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure((state, key))
    assert leaves_equal(restored, (state, key))
    assert (restored[0].actor.mask is not None) == masked
