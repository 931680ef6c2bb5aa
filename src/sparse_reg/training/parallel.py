"""The scheduler: every way this project runs many trainings at once.

Measured on 2-core CPUs (see docs/performance.md): vmapping seeds gains nothing there,
while processes pinned to one core each give more total throughput than one process
using both cores. On an accelerator, the seeds of one configuration vmapped together are
the fast way.

* :func:`run_all` is the one entry point of a sweep: ``(jobs, resume, on_result)`` plus how to
  run them. Each job's outcome (None or its traceback) reaches ``on_result`` as it ends, and a
  failure stops nothing. It hands the jobs to one of three runners of that same signature:
* :func:`run_queue` (runs of different lengths: IQL takes longer than TD3+BC) gives each core
  the next job as soon as its last one ends, so no core waits for a wave's slowest job;
* :func:`run_ray` is the same queue with Ray tasks instead of local processes;
* :func:`run_batches` goes through :func:`run_jobs` in this process (vmapped seed groups, or
  one job after another), running a failed group's jobs one by one.
* :func:`run_jobs` (the seeds of one ``sparse-reg train --seeds``, all the same length, results
  returned) runs waves of one job per core; a last, smaller wave shares the cores among its
  jobs, so e.g. the fifth of five seeds on two cores gets both cores.

Every worker is pinned by :func:`pin_to_cores` before JAX starts in it.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jax

from ..data.dataset import Dataset
from .checkpoint import checkpoint_step
from .config import RunConfig
from .run_directory import is_finished

Mode = Literal["auto", "vmap", "processes", "sequential"]
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Job:
    config: RunConfig
    out: Path


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def read_cpu_times(path: str = "/proc/stat") -> dict[int, tuple[int, int]]:
    """{core: (busy, total)} jiffies since boot, from Linux's ``/proc/stat``; {} where there is none."""
    times = {}
    try:
        with open(path) as stat:
            for line in stat:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                    idle = values[3] + (values[4] if len(values) > 4 else 0)
                    times[int(name[3:])] = (sum(values) - idle, sum(values))
    except (OSError, ValueError, IndexError):
        return {}
    return times


def least_busy(cores: Sequence[int], n: int, before: dict, after: dict) -> list[int]:
    """The ``n`` of ``cores`` that were least busy between two :func:`read_cpu_times` samples (lowest core
    number on ties; a core missing from either sample counts as busy), in core order."""

    def busy_share(core: int) -> float:
        if core not in before or core not in after or after[core][1] <= before[core][1]:
            return 1.0
        return (after[core][0] - before[core][0]) / (after[core][1] - before[core][1])

    return sorted(sorted(cores, key=lambda core: (busy_share(core), core))[:n])


def cores_for_workers(workers: int | None, sample_s: float = 0.5) -> list[int]:
    """The cores a local sweep's ``workers`` processes are pinned to: every available core by default;
    for fewer workers, the least busy cores over ``sample_s`` seconds, so that two sweeps started side by
    side with ``--workers 1`` do not both land on the first core."""
    cores = available_cores()
    if workers is None or workers >= len(cores):
        return cores
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    before = read_cpu_times()
    time.sleep(sample_s if before else 0.0)
    return least_busy(cores, workers, before, read_cpu_times())


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


def die_with_parent() -> None:
    """Ask Linux to end this worker when the process that started it ends (even by SIGKILL), so a
    stopped sweep leaves no orphan training on behind it (elsewhere: a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent ended before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def pin_to_cores(cores: Sequence[int] | None) -> None:
    """Pin this process to ``cores`` (None: leave it as it is). Call it before JAX starts its
    backend: XLA sizes its thread pool from the cores the process may use."""
    if cores is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, list(cores))


def _run_pinned(job: Job, cores: Sequence[int] | None, dataset: Dataset | None, resume: bool, overwrite: bool) -> dict:
    if mp.parent_process() is not None:  # a local worker process (not a Ray task, not the caller itself)
        die_with_parent()
    pin_to_cores(cores)
    from .trainer import train

    return train(job.config, job.out, dataset=dataset, resume=resume, overwrite=overwrite, progress=False)


def run_one(job: Job, resume: bool, cores: Sequence[int] | None = None) -> str | None:
    """Train one job (in a worker, pinned to ``cores`` if given; a resumed job continues from its
    checkpoint, any other starts afresh): None when it finished, its traceback when it failed.

    A job whose run another process finished since the sweep looked (two sweeps sharing a runs
    directory) is not trained again.
    """
    if finished_as_configured(job):
        return None
    try:
        _run_pinned(job, cores, None, resume, not resume)
    except Exception:  # noqa: BLE001 - any error of a job is that job's failure, reported to the caller
        return traceback.format_exc()
    return None


def finished_as_configured(job: Job) -> bool:
    """Whether ``job.out`` holds a finished run of exactly ``job.config``."""
    if not is_finished(job.out):
        return False
    try:
        return RunConfig.of_run(job.out).result_fields() == job.config.result_fields()
    except (ValueError, TypeError, OSError):  # a missing, unreadable or older config: train as asked
        return False


# ----------------------------------------------------------------------------- one queue, three ways to run it


OnResult = Callable[[int, str | None], None]  # (job index, None or why it failed)


def run_all(
    jobs: list[Job],
    resume: list[bool],
    on_result: OnResult,
    *,
    backend: str = "local",
    mode: Mode = "auto",
    workers: int | None = None,
    address: str | None = None,
) -> None:
    """Run every job and call ``on_result(i, error)`` in this process as job i ends (``error``:
    None, or its traceback or a note that its worker died); a failure stops nothing.
    ``resume[i]``: continue job i from its checkpoint, else start it afresh.

    backend "local" with ``mode`` processes (auto on a CPU): :func:`run_queue` on ``workers``
    cores (default: all; fewer: the least busy, :func:`cores_for_workers`); vmap (auto on an
    accelerator) or sequential: :func:`run_batches`.
    backend "ray": :func:`run_ray` on the cluster at ``address`` (or a local Ray instance).
    """
    if len(resume) != len(jobs):
        raise ValueError(f"{len(jobs)} jobs but {len(resume)} resume flags")
    if backend == "ray":
        run_ray(jobs, resume, on_result, address=address)
        return
    if backend != "local":
        raise ValueError(f"unknown backend '{backend}': choose local or ray")
    mode = resolve_mode(mode)
    if mode == "processes":
        run_queue(jobs, resume, on_result, cores=cores_for_workers(workers))
    else:
        run_batches(jobs, resume, on_result, mode=mode)


def _queue(
    n_jobs: int,
    on_result: OnResult,
    slots: int,
    cores: list[int] | None,
    submit: Callable[[int, list[int] | None], Any],
    finished: Callable[[list[Any]], Iterable[Any]],
    outcome: Callable[[Any, int], str | None],
) -> None:
    """The scheduling loop of :func:`run_queue` and :func:`run_ray`: keep ``slots`` jobs running,
    each pinned to a core of its own when ``cores`` are given, start the next one (in order) as
    soon as one ends and report each as it ends. ``submit(i, cores)`` starts job i and returns a
    handle; ``finished(handles)`` waits until some have ended; ``outcome(handle, i)`` is the error."""
    waiting = list(range(n_jobs))[::-1]  # popped from the end: first job first
    running: dict[Any, tuple[int, int | None]] = {}  # handle -> (job index, its core)
    while waiting or running:
        busy = {core for _, core in running.values()}
        free = [c for c in cores if c not in busy] if cores else []
        while waiting and len(running) < slots:
            index = waiting.pop()
            core = free.pop(0) if cores else None
            running[submit(index, None if core is None else [core])] = (index, core)
        for handle in finished(list(running)):
            index, _ = running.pop(handle)
            on_result(index, outcome(handle, index))


def run_queue(
    jobs: list[Job],
    resume: list[bool],
    on_result: OnResult,
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

    def outcome(future, index: int) -> str | None:
        try:
            return future.result()
        except Exception as crash:  # noqa: BLE001 - e.g. the worker was killed (out of memory)
            return f"the worker process running {jobs[index].out} died: {crash!r}"

    # A fresh interpreter per job (no forked JAX runtime, and XLA sizes its thread pool from the
    # core the job is pinned to before it starts).
    with ProcessPoolExecutor(len(cores), mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as pool:
        _queue(len(jobs), on_result, len(cores), cores,
               submit=lambda i, pinned: pool.submit(run_one, jobs[i], resume[i], pinned),
               finished=lambda handles: wait(handles, return_when=FIRST_COMPLETED)[0],
               outcome=outcome)


def run_ray(jobs: list[Job], resume: list[bool], on_result: OnResult, address: str | None = None) -> None:
    """One Ray task per job (``num_cpus=1``), as :func:`run_queue` does with processes. On a Ray
    instance started here (``address`` None and none running: this machine's cores, stopped
    again at the end) each task is pinned to a free core; on a cluster (``address``, "auto" = the
    running one) Ray places them."""
    if len(resume) != len(jobs):
        raise ValueError(f"{len(jobs)} jobs but {len(resume)} resume flags")
    try:
        import ray
    except ImportError:
        raise ValueError("--backend ray needs Ray: pip install 'sparse-reg[sweep]'") from None

    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=len(available_cores()), include_dashboard=False, log_to_driver=False)
            started = True

    def outcome(ref, index: int) -> str | None:
        try:
            return ray.get(ref)
        except Exception:  # noqa: BLE001 - the worker died (killed, out of memory, ...)
            return traceback.format_exc()

    try:
        task = ray.remote(num_cpus=1, max_calls=1, max_retries=0)(run_one)
        cores = available_cores() if started else None
        slots = len(cores) if started else max(int(ray.cluster_resources().get("CPU", 1)), 1)
        _queue(len(jobs), on_result, slots, cores,
               submit=lambda i, pinned: task.remote(jobs[i], resume[i], pinned),
               finished=lambda refs: ray.wait(refs, num_returns=1)[0],
               outcome=outcome)
    finally:
        if started:
            ray.shutdown()


def run_batches(jobs: list[Job], resume: list[bool], on_result: OnResult, mode: Mode = "auto") -> None:
    """Through :func:`run_jobs` in this process: one seed group per call (``vmap``, on an
    accelerator: the seeds of one configuration, whose checkpoints are at the same step) or one
    job per call (``sequential``).

    ``run_jobs`` stops at the first error of a call, so a call that fails is followed by each of
    its unfinished jobs alone in this process: the others finish (or resume) and the failing one
    fails again with its own traceback.
    """
    mode = resolve_mode(mode)
    for batch in _batches(jobs, resume, width=1 if mode == "sequential" else None):
        try:
            run_jobs([jobs[i] for i in batch], mode=mode, resume=resume[batch[0]], overwrite=not resume[batch[0]],
                     progress=False)
        except Exception:  # noqa: BLE001 - any error of a job is that job's failure
            if len(batch) == 1:
                on_result(batch[0], traceback.format_exc())
                continue
            for i in batch:
                on_result(i, None if is_finished(jobs[i].out) else run_one(jobs[i], resume[i]))
        else:
            for i in batch:
                on_result(i, None)


def _batches(jobs: list[Job], resume: list[bool], width: int | None) -> list[list[int]]:
    """Indices of the jobs one ``run_jobs`` call can take: same resume flag; ``width`` at a time,
    or (``width`` None: vmap) the seeds of one configuration, resumed from the same step."""
    keyed: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        if width is None:
            step = checkpoint_step(job.out) if resume[i] else None
            keyed.setdefault((resume[i], _without_seed(job), step), []).append(i)
        else:
            keyed.setdefault((resume[i],), []).append(i)
    batches = []
    for group in keyed.values():
        size = width or len(group)
        batches += [group[i:i + size] for i in range(0, len(group), size)]
    return batches


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
        return [train(j.config, j.out, dataset, resume=resume, overwrite=overwrite, progress=progress) for j in jobs]
    if mode == "vmap":
        summaries: dict[int, dict] = {}
        for indices in _groups_by_shape(jobs):
            group = train_group(
                [jobs[i].config for i in indices], [jobs[i].out for i in indices], dataset,
                resume=resume, overwrite=overwrite, progress=progress,
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
        groups.setdefault(_without_seed(job), []).append(i)
    return list(groups.values())


def _without_seed(job: Job) -> str:
    """The job's configuration except its seed, as a key."""
    return repr(sorted((k, repr(v)) for k, v in job.config.to_dict().items() if k != "seed"))


def seed_jobs(config: RunConfig, seeds: list[int], out: Path) -> list[Job]:
    """One job per seed, in ``out/seed_<s>``."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"duplicate seeds in {seeds}")
    return [Job(RunConfig.from_dict({**config.to_dict(), "seed": s}), Path(out) / f"seed_{s}") for s in seeds]
