"""Many runs at once: ``jax.vmap`` over seeds on an accelerator, one pinned process per core on a CPU.

Measured on 2-core CPUs (see docs/performance.md): vmapping seeds gains nothing there,
while processes pinned to one core each give more total throughput than one process
using both cores. Two schedules of pinned processes:

* :func:`run_jobs` (the seeds of one run, all the same length) runs waves of one job per
  core; a last, smaller wave shares the cores among its jobs, so e.g. the fifth of five
  seeds on two cores gets both cores.
* :func:`run_queue` (a sweep's runs, of different lengths: IQL takes longer than TD3+BC)
  gives each core the next job as soon as its last one ends, so no core waits for a wave's
  slowest job, and reports every job's outcome as it comes (a failure stops nothing).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jax

from ..data.dataset import Dataset
from .config import RunConfig

Mode = Literal["auto", "vmap", "processes", "sequential"]


@dataclass(frozen=True)
class Job:
    config: RunConfig
    out: Path


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def resolve_mode(mode: Mode) -> str:
    if mode == "auto":
        return "vmap" if jax.default_backend() != "cpu" else "processes"
    if mode not in ("vmap", "processes", "sequential"):
        raise ValueError(f"unknown parallel mode '{mode}': choose auto, vmap, processes or sequential")
    return mode


def waves(n_jobs: int, cores: list[int]) -> list[list[tuple[int, list[int]]]]:
    """Job indices and the cores each gets, wave by wave: full waves get one core per job,
    the last partial wave splits all cores between its jobs."""
    result, start = [], 0
    while start < n_jobs:
        wave = list(range(start, min(start + len(cores), n_jobs)))
        share = len(cores) // len(wave)
        result.append([(job, cores[i * share : (i + 1) * share]) for i, job in enumerate(wave)])
        start += len(wave)
    return result


def _run_pinned(job: Job, cores: list[int], dataset: Dataset | None, resume: bool, overwrite: bool) -> dict:
    # Before JAX starts its backend: XLA sizes its thread pool from the cores it may use.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    from .trainer import train

    return train(job.config, job.out, dataset=dataset, resume=resume, overwrite=overwrite, progress=False)


def _run_pinned_reporting(job: Job, core: int, resume: bool) -> str | None:
    """One queued job in its worker: None when it finished, its traceback when it failed."""
    try:
        _run_pinned(job, [core], None, resume, not resume)
    except Exception:  # noqa: BLE001 - any error of a job is that job's failure, reported to the caller
        return traceback.format_exc()
    return None


def run_queue(
    jobs: list[Job],
    resume: list[bool],
    on_result: Callable[[int, str | None], None],
    cores: list[int] | None = None,
) -> None:
    """Run ``jobs`` in fresh processes, one per core and pinned to it, each core taking the next
    job as soon as its last one ends. ``resume[i]``: continue job i from its checkpoint (else
    start it afresh). ``on_result(i, error)`` is called in this process as each job ends, with
    its traceback (or a note that its worker died) when it failed; a failure stops nothing.
    """
    if len(resume) != len(jobs):
        raise ValueError(f"{len(jobs)} jobs but {len(resume)} resume flags")
    cores = list(cores or available_cores())
    waiting = list(range(len(jobs)))[::-1]  # popped from the end: first job first
    running = {}  # future -> (job index, core)
    # A fresh interpreter per job (no forked JAX runtime, and XLA sizes its thread pool from the
    # core the job is pinned to before it starts).
    with ProcessPoolExecutor(len(cores), mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as pool:
        while waiting or running:
            busy = {core for _, core in running.values()}
            for core in [c for c in cores if c not in busy]:
                if not waiting:
                    break
                index = waiting.pop()
                running[pool.submit(_run_pinned_reporting, jobs[index], core, resume[index])] = (index, core)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                index, _ = running.pop(future)
                try:
                    error = future.result()
                except Exception as crash:  # noqa: BLE001 - e.g. the worker was killed (out of memory)
                    error = f"the worker process running {jobs[index].out} died: {crash!r}"
                on_result(index, error)


def run_jobs(
    jobs: list[Job],
    mode: Mode = "auto",
    dataset: Dataset | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Run every job; returns their summaries in order.

    ``vmap`` trains jobs that differ only in their seed as one vmapped group (others one
    by one); ``processes`` runs one pinned worker process per core; ``sequential`` runs
    them one after another in this process.
    """
    from .trainer import train, train_group

    mode = resolve_mode(mode)
    if mode == "sequential" or len(jobs) == 1:
        return [train(j.config, j.out, dataset, resume, overwrite, progress) for j in jobs]
    if mode == "vmap":
        summaries: dict[int, dict] = {}
        for indices in _groups_by_shape(jobs):
            group = train_group(
                [jobs[i].config for i in indices], [jobs[i].out for i in indices], dataset, resume, overwrite, progress
            )
            summaries.update(zip(indices, group))
        return [summaries[i] for i in range(len(jobs))]

    summaries = {}
    context = mp.get_context("spawn")  # fresh interpreters: no forked JAX runtime
    for wave in waves(len(jobs), available_cores()):
        with context.Pool(len(wave), maxtasksperchild=1) as pool:  # a fresh process per job
            pending = {
                job: pool.apply_async(_run_pinned, (jobs[job], cores, dataset, resume, overwrite)) for job, cores in wave
            }
            for job, result in pending.items():
                summaries[job] = result.get()
                if progress:
                    s = summaries[job]
                    print(f"  done: {jobs[job].out} (return {s['final_return']:.1f}, score {s['final_normalized_score']:.1f})")
    return [summaries[i] for i in range(len(jobs))]


def _groups_by_shape(jobs: list[Job]) -> list[list[int]]:
    """Indices of jobs whose configs are equal except for the seed."""
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        key = repr(sorted((k, repr(v)) for k, v in job.config.to_dict().items() if k != "seed"))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def seed_jobs(config: RunConfig, seeds: list[int], out: Path) -> list[Job]:
    """One job per seed, in ``out/seed_<s>``."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"duplicate seeds in {seeds}")
    return [Job(RunConfig.from_dict({**config.to_dict(), "seed": s}), Path(out) / f"seed_{s}") for s in seeds]
