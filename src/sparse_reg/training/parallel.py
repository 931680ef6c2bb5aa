"""Many runs at once: ``jax.vmap`` over seeds on an accelerator, one pinned process per core on a CPU.

Measured on 2-core CPUs (see docs/performance.md): vmapping seeds gains nothing there,
while processes pinned to one core each give more total throughput than one process
using both cores. Jobs run in waves of one job per core; a last, smaller wave shares the
cores among its jobs, so e.g. the fifth of five seeds on two cores gets both cores.
"""

from __future__ import annotations

import multiprocessing as mp
import os
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
