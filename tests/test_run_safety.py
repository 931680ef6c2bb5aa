"""No silent corruption: kills at exact points of a checkpoint or a log rewrite, damaged checkpoints,
resumes on other data, and what a run records about its data and reference scores."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import failing_writes, random_policy_dataset, scripted_validation_mse

from sparse_reg.cli import main
from sparse_reg.data import load_dataset
from sparse_reg.data.dataset import ReferenceScores
from sparse_reg.data.reference import D4RL_REFERENCE_SCORES, describe_reference, resolve_reference
from sparse_reg.training import checkpoint as checkpoint_module
from sparse_reg.training import logging as logging_module
from sparse_reg.training import run_directory
from sparse_reg.training.checkpoint import CheckpointError, checkpoint_step, read_checkpoint
from sparse_reg.training.config import RunConfig
from sparse_reg.training.logging import read_rows
from sparse_reg.training.trainer import load_agent, train

RUN = dict(dataset="hopper-random", algo="bc", size=1000, validation_size=500, steps=300, eval_every=100,
           eval_episodes=1, sparsity=0.9, mask_interval=100, mask_until=200, hidden_dims=(16, 16))


class Killed(Exception):
    """Stands for the process dying at the injected point."""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, hopper_random) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    train(RunConfig(**RUN), out, dataset=hopper_random, progress=False)
    return out


def assert_same_run(a: Path, b: Path) -> None:
    def comparable(rows):
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]

    assert comparable(read_rows(a / "metrics.csv")) == comparable(read_rows(b / "metrics.csv"))
    assert read_rows(a / "masks.csv") == read_rows(b / "masks.csv")
    leaves = zip(*(jax.tree_util.tree_leaves(load_agent(d).state) for d in (a, b)))
    assert all(np.array_equal(x, y) for x, y in leaves)


def die_after_rename(monkeypatch, kill_after: int, prefixes=("checkpoint",)) -> list[str]:
    """Make the ``kill_after``-th rename that puts a file named ``prefixes*`` in place the last act
    of the process; returns the names renamed so far."""
    real_replace, renames = os.replace, []

    def replace_then_die(src, dst):
        real_replace(src, dst)
        if Path(dst).name.startswith(prefixes):
            renames.append(Path(dst).name)
            if len(renames) == kill_after:
                raise Killed

    monkeypatch.setattr(os, "replace", replace_then_die)
    return renames


@pytest.mark.parametrize("kill_after", [1, 2, 3])
def test_a_kill_right_after_any_checkpoint_rename_resumes_exactly(tmp_path, hopper_random, uninterrupted,
                                                                    monkeypatch, kill_after):
    """Every rename that puts a checkpoint file in place is a possible last act of a killed process;
    whichever it is, --resume must continue from a consistent state and end where the uninterrupted
    run ended (with two files renamed one after the other, a kill between them did not)."""
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        die_after_rename(patch, kill_after)
        with pytest.raises(Killed):
            train(RunConfig(**RUN), out, dataset=hopper_random, progress=False)
    assert checkpoint_step(out) == 100 * kill_after  # one rename commits one whole checkpoint
    train(RunConfig(**RUN), out, dataset=hopper_random, progress=False, resume=True)
    assert_same_run(uninterrupted, out)


# Validation MSE per evaluation, scripted so that the lowest-MSE checkpoint is written at 100 and 200
# but not at 300: a resume that forgot the minimum before its checkpoint would write it at 300.
SCRIPTED_MSE = {100: 2.0, 200: 1.0, 300: 1.5}
KEEP_LOWEST = RunConfig(**RUN, keep_lowest_validation_mse=True)


@pytest.fixture(scope="module")
def uninterrupted_keeping_the_lowest(tmp_path_factory, hopper_random) -> Path:
    """The run of KEEP_LOWEST with SCRIPTED_MSE, uninterrupted (every kill below is compared with it)."""
    out = tmp_path_factory.mktemp("full") / "keep_lowest"
    train(KEEP_LOWEST, out, dataset=hopper_random, progress=False, evaluators=scripted_validation_mse(SCRIPTED_MSE))
    return out


# Renames of a run keeping its lowest-MSE checkpoint: lowest 100, latest 100, lowest 200, latest 200, latest 300.
@pytest.mark.parametrize("kill_after", [1, 2, 3, 4])
def test_a_kill_after_any_rename_of_either_checkpoint_keeps_the_lowest_validation_mse_one_right(
        tmp_path, hopper_random, uninterrupted_keeping_the_lowest, monkeypatch, kill_after):
    scripted = scripted_validation_mse(SCRIPTED_MSE)
    full = uninterrupted_keeping_the_lowest
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        renames = die_after_rename(patch, kill_after, prefixes=("checkpoint", "lowest_validation_mse"))
        with pytest.raises(Killed):
            train(KEEP_LOWEST, out, dataset=hopper_random, progress=False, evaluators=scripted)
    assert renames[-1] == ("lowest_validation_mse.msgpack" if kill_after % 2 else "checkpoint.msgpack")
    if kill_after == 1:  # killed before its first checkpoint: nothing to lose, the resume starts it over
        with pytest.warns(UserWarning, match="starting from step 0"):
            train(KEEP_LOWEST, out, dataset=hopper_random, progress=False, resume=True, evaluators=scripted)
    else:
        train(KEEP_LOWEST, out, dataset=hopper_random, progress=False, resume=True, evaluators=scripted)
    assert_same_run(full, out)
    kept = out / "lowest_validation_mse.msgpack"
    assert kept.read_bytes() == (full / "lowest_validation_mse.msgpack").read_bytes()
    assert read_checkpoint(out, kept.name).step == 200
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lowest_validation_mse"]["step"] == 200


def dying_open(monkeypatch, modules, dies_on):
    """Make ``open`` in ``modules`` return files that die half-way through their first write when
    ``dies_on(path)`` is true: the file is left with half of what was being written."""
    failing_writes(monkeypatch, modules, dies_on, Killed)


def test_kills_while_writing_a_checkpoint_and_while_cutting_the_logs_leave_a_resumable_run(
    tmp_path, hopper_random, uninterrupted, monkeypatch
):
    out = tmp_path / "run"
    checkpoint_writes = []

    def second_checkpoint(path: Path) -> bool:
        if path.name.startswith("checkpoint"):
            checkpoint_writes.append(path)
        return path.name.startswith("checkpoint") and len(checkpoint_writes) == 2

    with monkeypatch.context() as patch:
        dying_open(patch, [run_directory, checkpoint_module], second_checkpoint)
        with pytest.raises(Killed):
            train(RunConfig(**RUN), out, dataset=hopper_random, progress=False)
    assert checkpoint_step(out) == 100  # the half-written step-200 checkpoint never replaced it
    assert [r["step"] for r in read_rows(out / "metrics.csv")] == [100, 200]  # logged before the checkpoint

    # The resume cuts metrics.csv back to step 100; it dies half-way through that rewrite.
    before = (out / "metrics.csv").read_bytes()
    with monkeypatch.context() as patch:
        dying_open(patch, [run_directory, logging_module], lambda path: path.name.startswith("metrics.csv"))
        with pytest.raises(Killed):
            train(RunConfig(**RUN), out, dataset=hopper_random, progress=False, resume=True)
    assert (out / "metrics.csv").read_bytes() == before  # still the complete old log, header included

    train(RunConfig(**RUN), out, dataset=hopper_random, progress=False, resume=True)
    assert_same_run(uninterrupted, out)


def test_a_damaged_checkpoint_is_refused_with_a_clear_error(tmp_path, uninterrupted, hopper_random, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "checkpoint.msgpack", "metrics.csv"):
        (run / name).write_bytes((uninterrupted / name).read_bytes())
    raw = bytearray((run / "checkpoint.msgpack").read_bytes())
    raw[len(raw) // 2] ^= 0x10  # one flipped bit in the middle of the state
    (run / "checkpoint.msgpack").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_agent(run)
    with pytest.raises(CheckpointError, match="corrupt"):
        train(RunConfig(**RUN), run, dataset=hopper_random, progress=False, resume=True)
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum mismatch" in err[0]
    (run / "checkpoint.msgpack").write_bytes(bytes(raw[:100]))  # truncated
    with pytest.raises(CheckpointError):
        read_checkpoint(run)


def test_checkpoints_of_the_older_two_file_format_still_load_and_resume(tmp_path, uninterrupted, hopper_random):
    from flax import serialization

    checkpoint = read_checkpoint(uninterrupted)
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text((uninterrupted / "config.json").read_text())
    for log in ("metrics.csv", "masks.csv"):  # a resume checks both against the checkpoint
        (old / log).write_bytes((uninterrupted / log).read_bytes())
    info = {k: v for k, v in checkpoint.info.items() if k not in ("data", "config")}  # neither recorded then
    info["reference"] = {k: v for k, v in info["reference"].items() if k != "source"}
    (old / "checkpoint.msgpack").write_bytes(serialization.msgpack_serialize(checkpoint.state_dict))
    (old / "checkpoint.json").write_text(json.dumps(info))
    agent = load_agent(old)
    assert agent.step == 300 and agent.reference == hopper_random.reference
    # Resuming it (here: a longer run) writes the new format and drops the stale checkpoint.json.
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "steps": 400}))
    train(RunConfig(**RUN), old, dataset=hopper_random, progress=False, resume=True)
    assert checkpoint_step(old) == 400 and not (old / "checkpoint.json").exists()


def test_a_run_records_the_data_it_was_given_and_refuses_to_resume_on_other_data(tmp_path, hopper_random):
    config = RunConfig(**{**RUN, "dataset": RunConfig().dataset, "steps": 200})  # the default name, not this data

    def stop(row):
        raise Killed

    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(config, out, dataset=hopper_random, progress=False, on_evaluation=stop)
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["dataset"] == hopper_random.name != RunConfig().dataset
    assert recorded["data"] == {"name": hopper_random.name, "transitions": len(hopper_random),
                                "fingerprint": hopper_random.fingerprint()}
    other = hopper_random.replace(rewards=hopper_random.rewards + 1.0)  # same name, other data
    with pytest.raises(ValueError, match="cannot resume .* fingerprint"):
        train(config, out, dataset=other, progress=False, resume=True)
    summary = train(config, out, dataset=hopper_random, progress=False, resume=True)
    assert summary["dataset"] == hopper_random.name
    assert summary["data"]["fingerprint"] == hopper_random.fingerprint()


def test_the_fingerprint_is_the_data_not_how_it_was_loaded(tmp_path, hopper_random):
    np.savez(tmp_path / "hopper_copy.npz", **hopper_random.arrays())
    loaded = load_dataset(str(tmp_path / "hopper_copy.npz"))
    assert loaded.fingerprint() == hopper_random.fingerprint()
    changed = hopper_random.arrays()
    changed["actions"] = changed["actions"].copy()
    changed["actions"][5, 0] += 1e-3
    assert dataclasses.replace(hopper_random, actions=changed["actions"]).fingerprint() != hopper_random.fingerprint()


def test_the_reference_scores_are_chosen_explicitly_and_say_where_they_come_from(tmp_path, hopper_random):
    np.savez(tmp_path / "hopper_plain.npz", **hopper_random.arrays())  # no reference stored in the file
    from_file = load_dataset(str(tmp_path / "hopper_plain.npz"))
    d4rl = D4RL_REFERENCE_SCORES["hopper"]
    assert resolve_reference("dataset", from_file, "Hopper-v5") == (d4rl, "d4rl")
    project = hopper_random.replace(reference=ReferenceScores(-5.0, 3000.0), metadata={"build_format": 2})
    assert describe_reference(project) == "project"
    assert resolve_reference("dataset", project, "Hopper-v5") == (ReferenceScores(-5.0, 3000.0), "project")
    assert resolve_reference("d4rl", project, "Hopper-v5") == (d4rl, "d4rl")  # same data, the papers' scale
    assert resolve_reference((0.0, 50.0), project, "Hopper-v5") == (ReferenceScores(0.0, 50.0), "explicit")
    with pytest.raises(ValueError, match="no D4RL reference"):
        resolve_reference("d4rl", project.replace(name="x"), "Pendulum-v1")
    with pytest.raises(ValueError, match="reference"):
        RunConfig(reference="1,1")


def test_an_agent_compiles_once_and_evaluates_a_full_1000_step_halfcheetah_episode(tmp_path):
    """One policy compilation per agent, not one per action: a 1000-step episode is 1000 calls."""
    data = random_policy_dataset("HalfCheetah-v5", 600, max_episode_steps=200)
    config = RunConfig(algo="bc", dataset="halfcheetah-random", size=400, validation_size=0, steps=50,
                       eval_every=50, eval_episodes=1, sparsity=0.0, hidden_dims=(16, 16), reference=(0.0, 100.0))
    summary = train(config, tmp_path / "run", dataset=data, progress=False)
    assert summary["reference_scores"] == {"random": 0.0, "expert": 100.0, "source": "explicit"}
    assert summary["final_normalized_score"] == pytest.approx(summary["final_return"])

    agent = load_agent(tmp_path / "run")
    traces, calls = [], []
    act = agent.algorithm.act

    def counting_act(state, observations):
        traces.append(observations.shape)
        return act(state, observations)

    agent = dataclasses.replace(agent, algorithm=agent.algorithm._replace(act=counting_act))
    for _ in range(3):
        agent.act(data.observations[:1])
    assert len(traces) == 1  # compiled on the first call, reused after
    real_act = agent.act
    agent.act = lambda obs: calls.append(1) or real_act(obs)
    result = agent.evaluate(episodes=1, seed=3)
    assert len(calls) == 1000  # HalfCheetah never terminates early: the time limit ends it
    assert len(traces) == 1
    assert result["return_mean"] == pytest.approx(result["normalized_score"]) and np.isfinite(result["return_mean"])
    assert result["reference_source"] == "explicit"
    single = agent.act(data.observations[0])  # one observation: a batch of one, as in the episode
    assert single.shape == (6,) and len(traces) == 1


def test_tensorboard_tags_are_grouped_and_the_config_is_logged_as_text(tmp_path, monkeypatch):
    from sparse_reg.training.logging import RunLogger

    written = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            pass

        def add_scalar(self, tag, value, step):
            written.append(tag)

        def add_text(self, tag, text, step):
            written.append((tag, text))

        def flush(self):
            pass

        close = flush

    monkeypatch.setattr(logging_module, "SummaryWriter", Recorder)
    logger = RunLogger(tmp_path, config={"algo": "iql", "seed": 3})
    logger.log_evaluation({"step": 5, "return_mean": 1.0, "validation_mse": 0.1, "actor_loss": 0.5,
                           "validation_actor_loss": 0.6, "wall_s": 2.0})
    logger.log_masks(5, {"actor": {"total": {"sparsity": 0.9, "changed": 0.1}}})
    assert written[0][0] == "config" and '"seed": 3' in written[0][1]
    assert written[1:] == ["eval/return_mean", "eval/validation_mse", "train/actor_loss", "eval/validation_actor_loss",
                           "time/wall_s",
                           "mask/actor/sparsity", "mask/actor/changed"]


def test_a_run_directory_in_use_is_refused_and_left_as_it_is(tmp_path, hopper_random):
    """Two processes training one directory would interleave their rows and checkpoints (seen when
    a stopped sweep's worker went on beside its successor): the second is refused, nothing changes."""
    from sparse_reg.training.run_directory import RunInUseError, lock_run

    out = tmp_path / "run"
    train(RunConfig(**{**RUN, "steps": 100}), out, dataset=hopper_random, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    holder = lock_run(out)  # another open file description: flock conflicts as with another process
    try:
        for resume, overwrite in ((True, False), (False, True)):
            with pytest.raises(RunInUseError, match="being trained by another process"):
                train(RunConfig(**{**RUN, "steps": 200}), out, dataset=hopper_random, progress=False,
                      resume=resume, overwrite=overwrite)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    finally:
        holder.close()
    train(RunConfig(**{**RUN, "steps": 200}), out, dataset=hopper_random, progress=False, overwrite=True)
    assert json.loads((out / "summary.json").read_text())["steps"] == 200  # free again once released


def test_an_empty_directory_holding_only_a_stale_lock_is_empty(tmp_path, hopper_random):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("")  # left by a process that died before writing anything
    train(RunConfig(**{**RUN, "steps": 100}), out, dataset=hopper_random, progress=False)
    assert (out / "summary.json").exists()


WORKER_SCRIPT = """
import multiprocessing as mp, os, sys, time
from sparse_reg.training.parallel import die_with_parent

def worker(path):
    die_with_parent()
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    child = mp.get_context("spawn").Process(target=worker, args=(sys.argv[1],))
    child.start()
    time.sleep(120)
"""


def test_a_worker_ends_with_the_process_that_started_it(tmp_path):
    """kill -9 of a sweep must not leave its workers training on (they would race the next sweep)."""
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signals are Linux's")
    script, pid_file = tmp_path / "parent.py", tmp_path / "child.pid"
    script.write_text(WORKER_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    try:
        for _ in range(600):  # the child has asked for the signal once it wrote its pid
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.1)
        child = int(pid_file.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        for _ in range(100):
            if not _alive(child):
                break
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False
