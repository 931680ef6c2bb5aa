"""The run loop: dataset → train state → jitted ``lax.scan`` chunks → metrics → logs.

Between chunks (never inside them) the host does the rare things: Sparse-Reg mask
refreshes, evaluations and checkpoints. Chunk boundaries sit on absolute step numbers,
so a resumed run executes exactly the same chunks as an uninterrupted one.

:func:`start_runs` checks everything and opens the runs (data: :mod:`.prepare`; the run
directory: :mod:`.run_directory`; a resume: :mod:`.resume`, :mod:`.checkpoint`);
:func:`run_group` steps them (:class:`GroupLoop`: refresh, chunk, evaluate and checkpoint)
and writes their summaries (:mod:`.summary`). The trained agent is :mod:`.agent`'s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..algorithms import Algorithm, Batch, get_algorithm
from ..data.dataset import Dataset
from ..data.loaders import load_dataset
from ..live_layout import LIVE_SCAN_UNROLL, live_networks, state_to_dense, state_to_live, uses_live_units
from ..sparsity import SparseRegConfig, refresh_masks, with_all_ones_masks
from .agent import Agent, load_agent
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_info,
    checkpoint_to_resume,
    restore_train_state,
    save_checkpoint,
)
from .compile_cache import enable_compilation_cache
from .config import SPARSE_REG_KEY, RunConfig
from .evaluation import (
    DEFAULT_EVALUATORS,
    EvaluationContext,
    Evaluator,
    RolloutEvaluator,
    evaluation_row,
    evaluation_seed,
    make_policy,
)
from .logging import RunLogger, check_logs, read_rows
from .prepare import PreparedData, SeedRun, initial_state, prepare_runs, recorded_config, warn_about_data
from .resume import check_same_data, logged_steps, mask_layers, resume_config, resumed_config, resumed_sparse_reg
from .run_directory import (
    CONFIG_FILE,
    LOWEST_VALIDATION_MSE_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunDirectoryError,
    atomic_write,
    check_run_directory,
    has_checkpoint,
    lock_run,
    prepare_run_directory,
)
from .summary import build_summary, lowest_validation_row

# Agent, load_agent, PreparedData, initial_state, resume_config, RunDirectoryError and
# with_all_ones_masks live in the modules named above; they are still importable from here.
__all__ = [
    "Agent", "GroupLoop", "Lanes", "PreparedData", "RunDirectoryError", "StartedGroup", "chunk_means",
    "initial_state", "load_agent", "make_chunk_runner", "make_mask_refresher", "resume_config", "run_group",
    "start_runs", "train", "train_group", "with_all_ones_masks",
]

# Updates unrolled per scan iteration: XLA then schedules several updates as one loop body,
# measured ~5-7% more updates/s for IQL and BC on a 2-core CPU (benchmarks/speed.py).
SCAN_UNROLL = 4
# Most updates one jitted call runs between progress-bar updates (~3 s for IQL on one CPU core).
PROGRESS_PIECE = 1_000


def sample_batch(data: Batch, key: jax.Array, batch_size: int) -> Batch:
    index = jax.random.randint(key, (batch_size,), 0, data.rewards.shape[0])
    return jax.tree_util.tree_map(lambda x: x[index], data)


class Lanes:
    """``size`` runs of the same shape (seeds) stepped together.

    One lane runs the plain functions; several run them under ``jax.vmap`` with every
    per-run value (train state, RNG, data subset, normaliser) stacked on a leading axis.
    (A vmap of size one costs ~15% on CPU, hence the special case.)
    """

    def __init__(self, size: int):
        self.size = size

    def vmap(self, fn: Callable) -> Callable:
        return fn if self.size == 1 else jax.vmap(fn)

    def stack(self, trees: list) -> Any:
        if self.size == 1:
            return trees[0]
        # By leaves: static parts (modules, optimizers) are equal in value but not identical objects.
        treedef = jax.tree_util.tree_structure(trees[0])
        leaves = [jax.tree_util.tree_leaves(tree) for tree in trees]
        return jax.tree_util.tree_unflatten(treedef, [jnp.stack(xs) for xs in zip(*leaves)])

    def index(self, tree: Any, i: int) -> Any:
        return tree if self.size == 1 else jax.tree_util.tree_map(lambda x: x[i], tree)


def make_chunk_runner(algorithm: Algorithm, batch_size: int, lanes: Lanes = Lanes(1)) -> Callable:
    """``run(state, key, data, length) -> (state, key, metric sums)``: ``length`` updates in one scan.

    The metrics come back as ``{name: (sum, count)}`` over the updates that computed them, so
    that several pieces combine into the exact mean of the whole (:func:`chunk_means`).
    """

    def run(state, key, data: Batch, length: int):
        def one_update(carry, _):
            state, key = carry
            key, batch_key = jax.random.split(key)
            state, metrics = algorithm.update(state, sample_batch(data, batch_key, batch_size))
            return (state, key), metrics

        unroll = LIVE_SCAN_UNROLL if live_networks(state, algorithm.losses) else SCAN_UNROLL
        (state, key), metrics = jax.lax.scan(one_update, (state, key), None, length=length, unroll=unroll)
        # Some metrics are NaN on steps that skip an update (e.g. TD3+BC's delayed actor).
        sums = jax.tree_util.tree_map(lambda m: (jnp.nansum(m, axis=0), jnp.sum(~jnp.isnan(m), axis=0)), metrics)
        return state, key, sums

    compiled: dict[int, Callable] = {}

    def run_chunk(state, key, data: Batch, length: int):
        if length not in compiled:
            compiled[length] = jax.jit(lanes.vmap(partial(run, length=length)))
        return compiled[length](state, key, data)

    return run_chunk


def chunk_means(pieces: list[dict]) -> dict:
    """The per-metric means over a chunk run in pieces (NaN where no update computed a metric)."""
    totals = {}
    for name in pieces[0]:
        total = np.sum([np.asarray(p[name][0], np.float64) for p in pieces], axis=0)
        count = np.sum([np.asarray(p[name][1]) for p in pieces], axis=0)
        totals[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return totals


def make_mask_refresher(
    algorithm: Algorithm, sparse_reg: SparseRegConfig, batch_size: int, lanes: Lanes = Lanes(1)
) -> Callable:
    def refresh(state, key, data: Batch):
        key, batch_key, score_key = jax.random.split(key, 3)
        state, stats = refresh_masks(state, algorithm.snip_losses(), sample_batch(data, batch_key, batch_size),
                                     score_key, sparse_reg)
        return state, key, stats

    return jax.jit(lanes.vmap(refresh))


# ----------------------------------------------------------------------------- starting runs


@dataclass
class StartedGroup:
    """Runs ready to step: data prepared, directories made (or checkpoints read), states at ``step``."""

    runs: list[SeedRun]
    sparse_reg: SparseRegConfig  # resolved once, when the runs started; recorded in config.json
    evaluator: RolloutEvaluator
    states: list[tuple[Any, jax.Array]]  # (agent state, data-sampling key) per run
    step: int
    locks: list = dataclasses.field(default_factory=list)  # the run directories' locks, held until the end

    def release(self) -> None:
        self.evaluator.close()
        for lock in self.locks:
            lock.close()


def train(
    config: RunConfig,
    out: str | Path,
    dataset: Dataset | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_evaluation: Callable[[dict], None] | None = None,
    evaluators: Sequence[Evaluator] | None = None,
) -> dict:
    """Train one agent; writes logs, checkpoints and ``summary.json`` under ``out``; returns the summary.

    ``on_evaluation(row)`` is called after each evaluation's checkpoint is written. ``evaluators``:
    what each evaluation logs, functions ``(EvaluationContext) -> {column: value}`` whose columns
    make the row of metrics.csv (default :data:`~sparse_reg.training.evaluation.DEFAULT_EVALUATORS`:
    the returns, the action MSEs and each network's held-out loss, which every run logs). ``resume``:
    continue from the checkpoint as the run directory records the run (of ``config`` only
    ``frozen_layout`` counts; :func:`resume_config` checks options given again); a run stopped before
    its first checkpoint starts again.
    """
    return train_group([config], [out], dataset, resume=resume, overwrite=overwrite, progress=progress,
                       on_evaluation=on_evaluation, evaluators=evaluators)[0]


def train_group(
    configs: list[RunConfig],
    outs: list[str | Path],
    dataset: Dataset | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_evaluation: Callable[[dict], None] | None = None,
    evaluators: Sequence[Evaluator] | None = None,
) -> list[dict]:
    """Train runs that differ only in their seed, stepped together under ``jax.vmap``.

    Each run gets its own training subset, normaliser, logs, checkpoints and summary,
    identical in form to a single run's. On an accelerator this is the fast way to run
    seeds; on a CPU one process per core is (see :mod:`sparse_reg.training.parallel`).
    """
    enable_compilation_cache()
    group = start_runs(configs, [Path(o) for o in outs], dataset, resume=resume, overwrite=overwrite)
    try:
        return run_group(group, progress=progress, on_evaluation=on_evaluation, evaluators=evaluators)
    finally:
        group.release()


def start_runs(
    configs: list[RunConfig], outs: list[Path], dataset: Dataset | None, *, resume: bool, overwrite: bool
) -> StartedGroup:
    """Check everything, then prepare the data and create the run directories (or read the checkpoints).

    Everything that can be checked is checked before a directory is created or changed, so that
    bad input leaves nothing behind that would block the corrected command.
    """
    if len(outs) != len(configs) or not outs:
        raise ValueError(f"{len(configs)} configs but {len(outs)} output directories")
    resume, overwrite = _resume_or_start(outs, resume, overwrite)
    checkpoints = [checkpoint_to_resume(out) for out in outs] if resume else []
    configs = _configs_to_run(configs, outs, dataset, checkpoints)
    if dataset is None:
        dataset = load_dataset(configs[0].dataset, env_id=configs[0].env)
    data_record = dataset.record()
    for out, checkpoint in zip(outs, checkpoints):
        check_same_data(out, checkpoint.info.get("data"), data_record)
    runs = prepare_runs(configs, outs, dataset, data_record)
    config, lead = configs[0], runs[0].data
    # Resolved once, when the runs start ("auto" depends on the training size), and recorded;
    # a resume reads it back (runs of older versions did not record it: resolved again).
    sparse_reg = (resumed_sparse_reg(outs[0]) if resume else None) or config.sparse_reg_config(len(lead.train))
    warn_about_data(lead.train, config)
    evaluator = _open_evaluator(lead, config.eval_episodes * len(runs))
    states = [initial_state(r.config, lead.train.obs_dim, lead.train.action_dim, sparse_reg.enabled) for r in runs]
    try:
        _check_resumed_logs(outs, checkpoints, config, sparse_reg, states[0][0])
    except BaseException:
        evaluator.close()
        raise
    group = StartedGroup(runs, sparse_reg, evaluator, states, step=0)
    try:
        _open_run_directories(group, checkpoints, resume, overwrite)
    except BaseException:
        group.release()
        raise
    return group


def _resume_or_start(outs: list[Path], resume: bool, overwrite: bool) -> tuple[bool, bool]:
    """(resume, overwrite) as the runs are to be opened: a resume of runs stopped before their first
    checkpoint starts them again."""
    for out in outs:
        check_run_directory(out, resume, overwrite)
    if resume and not any(has_checkpoint(out) for out in outs):
        # Killed before the first checkpoint (check_run_directory made sure that is all there is):
        # nothing to lose, so the run starts again.
        warnings.warn(f"no checkpoint in {', '.join(map(str, outs))} yet (stopped before the first evaluation): "
                      "starting from step 0", stacklevel=4)
        return False, True
    if resume and not all(has_checkpoint(out) for out in outs):
        raise ValueError("some of these runs have a checkpoint and some not: resume them one by one")
    return resume, overwrite


def _configs_to_run(configs: list[RunConfig], outs: list[Path], dataset: Dataset | None,
                    checkpoints: list[Checkpoint]) -> list[RunConfig]:
    """The configs the runs train with: on resume the recorded ones; named after ``dataset``."""
    if checkpoints:
        configs = [resumed_config(o, c, k) for c, o, k in zip(configs, outs, checkpoints)]
    configs = [recorded_config(c, dataset) for c in configs]
    shared = {k: v for k, v in configs[0].to_dict().items() if k != "seed"}
    if any({k: v for k, v in c.to_dict().items() if k != "seed"} != shared for c in configs):
        raise ValueError("runs trained together must differ only in their seed")
    return configs


def _open_evaluator(lead: PreparedData, episodes: int) -> RolloutEvaluator:
    """The group's rollout environments, checked against the data's dimensions."""
    evaluator = RolloutEvaluator(lead.env_id, episodes)
    if (evaluator.obs_dim, evaluator.action_dim) != (lead.train.obs_dim, lead.train.action_dim):
        evaluator.close()
        raise ValueError(
            f"dataset '{lead.train.name}' has obs/action dims {lead.train.obs_dim}/{lead.train.action_dim} but "
            f"environment {lead.env_id} has {evaluator.obs_dim}/{evaluator.action_dim}"
        )
    return evaluator


def _check_resumed_logs(outs: list[Path], checkpoints: list[Checkpoint], config: RunConfig,
                        sparse_reg: SparseRegConfig, template: Any) -> None:
    """The logs of each resumed run are its logs up to its checkpoint (check_logs)."""
    for out, checkpoint in zip(outs, checkpoints):
        check_logs(out, checkpoint.step, *logged_steps(config, sparse_reg, checkpoint.step),
                   mask_layers=mask_layers(template, get_algorithm(config.algo)) if sparse_reg.enabled else [])


def _open_run_directories(group: StartedGroup, checkpoints: list[Checkpoint], resume: bool, overwrite: bool) -> None:
    """Lock the run directories, restore the checkpoints (resume) or empty the directories and write
    config.json (a fresh run), and open the logs."""
    runs, config = group.runs, group.runs[0].config
    # Locked before anything in them changes: two processes never train (or empty) one directory.
    for r in runs:
        group.locks.append(lock_run(r.out))
    if resume:
        steps = {c.step for c in checkpoints}
        if len(steps) > 1:
            raise ValueError(f"the runs' checkpoints are at different steps {sorted(steps)}: resume them one by one")
        group.step = steps.pop()
        if not 0 < group.step <= config.steps:
            raise CheckpointError(f"checkpoint step {group.step} is outside this run's 1..{config.steps} steps")
        group.states = [restore_train_state(c, t, r.out) for c, r, t in zip(checkpoints, runs, group.states)]
    for r in runs:
        record = {**r.config.to_dict(), "data": r.data.data_record, SPARSE_REG_KEY: group.sparse_reg.to_dict()}
        prepare_run_directory(r.out, resume, overwrite)
        if not resume:
            atomic_write(r.out / CONFIG_FILE, json.dumps(record, indent=2).encode())
        r.logger = RunLogger(r.out, resume_step=group.step if resume else None, config=record)


# ----------------------------------------------------------------------------- stepping runs


def run_group(group: StartedGroup, *, progress: bool, on_evaluation: Callable[[dict], None] | None,
              evaluators: Sequence[Evaluator] | None = None) -> list[dict]:
    """Step started runs to the end: mask refreshes, chunks of updates, evaluations, summaries.

    Between mask refreshes, chunks may run in the live-units layout (``config.frozen_layout``): the
    state is converted at the start of a stretch of chunks with fixed masks and back before the next
    refresh, evaluation or the end, so refreshes, evaluations, checkpoints and summaries only ever see
    the masked layout, and a resumed run (it starts at an evaluation) repeats exactly the conversions
    of an uninterrupted one."""
    loop = GroupLoop(group, progress, DEFAULT_EVALUATORS if evaluators is None else tuple(evaluators))
    try:
        while loop.step < loop.config.steps:
            if group.sparse_reg.refresh_due(loop.step):
                loop.refresh_masks()
            sums = loop.train_chunk()
            if loop.step % loop.config.eval_every == 0 or loop.step == loop.config.steps:
                loop.evaluate_and_checkpoint(sums, on_evaluation)
        return loop.write_summaries()
    finally:
        loop.close()


class GroupLoop:
    """The runs of a started group on the device, stacked in lanes, and the steps that move them."""

    def __init__(self, group: StartedGroup, progress: bool, evaluators: Sequence[Evaluator]):
        runs, config = group.runs, group.runs[0].config
        self.runs, self.config, self.sparse_reg, self.step = runs, config, group.sparse_reg, group.step
        self.rollouts, self.evaluators = group.evaluator, evaluators
        self.lanes = lanes = Lanes(len(runs))
        self.algorithm = algorithm = get_algorithm(config.algo)
        self.state = lanes.stack([s for s, _ in group.states])
        self.data_key = lanes.stack([k for _, k in group.states])
        self.train_data = lanes.stack([r.train_batch for r in runs])
        self.normalizers = lanes.stack([(jnp.asarray(r.data.normalizer.mean), jnp.asarray(r.data.normalizer.std))
                                        for r in runs])
        batch_size = config.algorithm_config().batch_size
        self.run_chunk = make_chunk_runner(algorithm, batch_size, lanes)
        self.refresh = make_mask_refresher(algorithm, self.sparse_reg, batch_size, lanes)
        self.policy = jax.jit(lanes.vmap(make_policy(algorithm.act)))
        # Chunks end at every evaluation and mask refresh, on absolute step numbers; each is run in
        # pieces of at most PROGRESS_PIECE updates so the progress bar moves every few seconds.
        sparse_reg = self.sparse_reg
        refreshing = sparse_reg.enabled and sparse_reg.until > 0
        self.chunk = math.gcd(config.eval_every, sparse_reg.interval) if refreshing else config.eval_every
        self.live = sparse_reg.enabled and uses_live_units(config.frozen_layout)
        self.converted, self.live_nets = False, []
        # The lowest validation MSE so far per run; on resume, of the evaluations up to the checkpoint
        # (metrics.csv is cut back to it), so replayed evaluations rewrite the same file.
        self.lowest_mse = [lowest_validation_row(read_rows(r.out / METRICS_FILE)).get("validation_mse", math.inf)
                           for r in runs]
        self.started, self.last_return, self.cut_warned = time.time(), None, False
        seeds = ", ".join(str(r.config.seed) for r in runs)
        self.bar = tqdm(total=config.steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True)
        self.bar.set_description(f"{config.algo} {'sparse' if sparse_reg.enabled else 'dense'} seed {seeds}")

    def refresh_masks(self) -> None:
        """New masks for every scored network of every run; logged, and a cut network warned about."""
        self.bar.set_postfix_str("refreshing masks")
        self.state, self.data_key, stats = self.refresh(self.state, self.data_key, self.train_data)
        stats = jax.device_get(stats)
        for i, r in enumerate(self.runs):
            r.logger.log_masks(self.step, jax.tree_util.tree_map(float, self.lanes.index(stats, i)))
        if not self.cut_warned:
            self.cut_warned = True  # once: later refreshes keep as many weights
            warn_about_cut_networks(jax.tree_util.tree_map(float, self.lanes.index(stats, 0)),
                                    self.sparse_reg.sparsity, self.step)

    def train_chunk(self) -> list[dict]:
        """The updates up to the next chunk boundary; returns their metric sums, piece by piece.

        A sparse run's chunks may run in the live-units layout: converted here at the start of a stretch
        of chunks with fixed masks and back at the end of the chunk after which comes a mask refresh, an
        evaluation (with its checkpoint) or the end, so nothing outside such a stretch sees that layout."""
        end = min(self.step + self.chunk - self.step % self.chunk, self.config.steps)
        if self.live and not self.converted:
            self.state, self.converted = state_to_live(self.state, self.algorithm.losses, self.lanes.size), True
            self.live_nets = live_networks(self.state, self.algorithm.losses)
        self._show(f"training to step {end:,}" + (" on live units" if self.converted and self.live_nets else ""))
        sums = self._run_pieces(end)
        step, config = self.step, self.config
        if self.converted and (step % config.eval_every == 0 or step == config.steps or self.sparse_reg.refresh_due(step)):
            self.state, self.converted = state_to_dense(self.state, self.algorithm.losses), False
        return sums

    def _run_pieces(self, end: int) -> list[dict]:
        sums = []
        while self.step < end:
            length = min(PROGRESS_PIECE, end - self.step)
            self.state, self.data_key, piece = self.run_chunk(self.state, self.data_key, self.train_data, length)
            sums.append(piece)
            self.step += length
            self.bar.update(length)
        return sums

    def _show(self, status: str) -> None:
        self.bar.set_postfix_str(status if self.last_return is None else f"{status}, last return {self.last_return:.0f}")

    def _act_all(self, observations: np.ndarray) -> np.ndarray:
        """Every run's policy on its own episodes (one batched call for all lanes)."""
        episodes = self.config.eval_episodes
        per_lane = observations.reshape(self.lanes.size, episodes, -1) if self.lanes.size > 1 else observations
        actions = self.policy(self.state, self.normalizers, per_lane)
        return np.asarray(actions).reshape(observations.shape[0], -1)

    def evaluate_and_checkpoint(self, sums: list[dict], on_evaluation: Callable[[dict], None] | None) -> None:
        """Every run's episodes; per run its row of metrics.csv and its checkpoint(s)."""
        runs, step, episodes = self.runs, self.step, self.config.eval_episodes
        self.bar.set_postfix_str(f"evaluating {episodes * len(runs)} episodes")
        returns = self.rollouts.run(self._act_all, [
            evaluation_seed(r.config.seed, step) + j for r in runs for j in range(episodes)
        ]).reshape(len(runs), episodes)
        metrics = chunk_means(jax.device_get(sums))
        for i, r in enumerate(runs):
            state = self.lanes.index(self.state, i)
            context = EvaluationContext(r, self.algorithm, state, step, returns[i])
            row = evaluation_row(context, self.evaluators, self.lanes.index(metrics, i), time.time() - self.started)
            r.logger.log_evaluation(row)
            saved = (state, self.lanes.index(self.data_key, i))
            info = checkpoint_info(r.config, r.data, self.sparse_reg.enabled)
            # Written before the latest checkpoint: a kill between the two resumes from the
            # previous checkpoint and replays this evaluation, which writes this file again.
            if r.config.keep_lowest_validation_mse and row["validation_mse"] < self.lowest_mse[i]:
                self.lowest_mse[i] = row["validation_mse"]
                save_checkpoint(r.out, step, saved, info, file=LOWEST_VALIDATION_MSE_FILE)
            save_checkpoint(r.out, step, saved, info)
            if on_evaluation is not None:
                on_evaluation({**row, "seed": r.config.seed})
        self.last_return = float(np.mean(returns))
        self.bar.set_postfix_str(f"last return {self.last_return:.0f}")

    def write_summaries(self) -> list[dict]:
        summaries = []
        for i, r in enumerate(self.runs):
            summary = build_summary(r.config, r.data, self.lanes.index(self.state, i), self.algorithm,
                                    read_rows(r.out / METRICS_FILE), self.sparse_reg)
            if self.sparse_reg.enabled:  # how the chunks ran: it changes speed, results only at rounding
                summary["sparse_layout"] = {"live_units_networks": self.live_nets}
            atomic_write(r.out / SUMMARY_FILE, json.dumps(summary, indent=2).encode())
            summaries.append(summary)
        return summaries

    def close(self) -> None:
        self.bar.close()
        for r in self.runs:
            r.logger.close()


def warn_about_cut_networks(stats: dict, sparsity: float, step: int) -> None:
    """A mask that keeps no weight of some layer cuts the network: its output no longer depends on
    its input (e.g. a constant policy). ``stats``: one run's refresh statistics."""
    for network, layers in stats.items():
        cut = [layer for layer, values in layers.items() if layer != "total" and values["sparsity"] >= 1.0]
        if cut:
            warnings.warn(
                f"sparsity {sparsity:g}: the mask of step {step:,} keeps no weight of {network} layer(s) "
                f"{', '.join(cut)}, so the {network}'s output does not depend on its input (a constant "
                "policy or value); use a lower --sparsity or wider --hidden-dims",
                stacklevel=5,
            )
