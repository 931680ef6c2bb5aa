"""The scheduler's bookkeeping without training anything: which job gets which core and when
(the loop shared by the process queue and Ray), and which jobs one vmapped call may take."""

from __future__ import annotations

import pytest

from sparse_reg.training.checkpoint import save_checkpoint
from sparse_reg.training.config import RunConfig
from sparse_reg.training.parallel import _batches, _queue, run_all, seed_jobs


def test_queue_keeps_one_job_per_core_and_starts_the_next_as_one_ends():
    started, running, results = [], [], []

    def submit(index, cores):
        started.append((index, cores))
        running.append(index)
        return index

    def finished(handles):  # the oldest running job ends first
        assert sorted(handles) == sorted(running)
        return [running.pop(0)]

    _queue(4, lambda i, error: results.append((i, error)), 2, [5, 7], submit, finished,
           outcome=lambda handle, index: "boom" if index == 2 else None)
    # Jobs 0 and 1 start on the two cores; each later job takes the core its predecessor freed.
    assert started == [(0, [5]), (1, [7]), (2, [5]), (3, [7])]
    assert results == [(0, None), (1, None), (2, "boom"), (3, None)]  # a failure stops nothing


def test_queue_on_a_cluster_fills_its_slots_without_pinning():
    started, running = [], []

    def submit(index, cores):
        started.append((index, cores))
        running.append(index)
        return index

    _queue(3, lambda i, error: None, 3, None, submit, lambda handles: [running.pop()], lambda h, i: None)
    assert started == [(0, None), (1, None), (2, None)]


def test_batches_take_the_seeds_of_one_config_with_the_same_resume_state_and_step(tmp_path):
    dense = seed_jobs(RunConfig(algo="bc", sparsity=0.0), [0, 1, 2], tmp_path / "dense")
    sparse = seed_jobs(RunConfig(algo="bc", sparsity=0.9), [0, 1], tmp_path / "sparse")
    jobs = [*dense, *sparse]
    resume = [True, True, True, False, False]
    for job, step in zip(dense, (100, 100, 200)):  # seed 2 was checkpointed later than seeds 0 and 1
        job.out.mkdir(parents=True)
        save_checkpoint(job.out, step, {}, {})
    assert _batches(jobs, resume, width=None) == [[0, 1], [2], [3, 4]]
    # One at a time (sequential): grouped by resume state only, in order within each group.
    assert _batches(jobs, [False, True, False, True, False], width=1) == [[0], [2], [4], [1], [3]]


def test_run_all_refuses_mismatched_flags_and_unknown_backends(tmp_path):
    jobs = seed_jobs(RunConfig(), [0], tmp_path)
    with pytest.raises(ValueError, match="1 jobs but 2 resume flags"):
        run_all(jobs, [False, False], lambda i, error: None)
    with pytest.raises(ValueError, match="unknown backend 'slurm'"):
        run_all(jobs, [False], lambda i, error: None, backend="slurm")


def test_a_job_finished_meanwhile_by_another_sweep_is_not_trained_again(tmp_path):
    """Sweeps decide skip/resume/run when they start; a run that another sweep finished since then
    must not be trained afresh over the finished one."""
    import json

    from sparse_reg.training.config import RunConfig
    from sparse_reg.training.parallel import Job, run_one

    config = RunConfig(algo="bc", dataset=str(tmp_path / "no-such-data.npz"), env="Hopper-v5", steps=10)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**config.to_dict(), "data": {"name": "x"}}))
    (out / "summary.json").write_text("{}")
    assert run_one(Job(config, out), resume=False) is None  # skipped: training would fail on the missing data
    assert (out / "summary.json").read_text() == "{}"
    other = RunConfig(algo="bc", dataset=str(tmp_path / "no-such-data.npz"), env="Hopper-v5", steps=20)
    error = run_one(Job(other, out), resume=False)  # another config in that directory: trained as asked
    assert error is not None and "no-such-data" in error
