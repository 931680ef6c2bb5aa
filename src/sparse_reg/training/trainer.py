"""The run loop: dataset → train state → jitted ``lax.scan`` chunks → metrics → logs.

Between chunks (never inside them) the host does the rare things: Sparse-Reg mask
refreshes, evaluations and checkpoints. Chunk boundaries sit on absolute step numbers,
so a resumed run executes exactly the same chunks as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..algorithms import Algorithm, Batch, get_algorithm
from ..data.dataset import Dataset, Normalizer, ReferenceScores
from ..data.loaders import load_dataset
from ..data.reference import resolve_reference
from ..data.splits import split_train_validation
from ..provenance import code_version, wall_seconds
from ..sparse_layout import sparse_networks, state_to_dense, state_to_sparse, uses_kept_values
from ..sparsity import SparseRegConfig, mask_statistics, refresh_masks, weight_sparsity
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .compile_cache import enable_compilation_cache
from .config import RunConfig
from .evaluation import RolloutEvaluator, evaluation_seed, make_action_mse, make_policy
from .logging import RunLogger, check_logs, read_rows
from .run_directory import (
    CHECKPOINT_FILES,
    CONFIG_FILE,
    LOWEST_VALIDATION_MSE_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunFileError,
    atomic_write,
    has_checkpoint,
    is_unfinished_run_file,
    lock_run,
    remove_temporaries,
    run_directory_of,
    run_entries,
)

# Updates unrolled per scan iteration: XLA then schedules several updates as one loop body,
# measured ~5-7% more updates/s for IQL and BC on a 2-core CPU (benchmarks/speed.py).
SCAN_UNROLL = 4
# Most updates one jitted call runs between progress-bar updates (~3 s for IQL on one CPU core).
PROGRESS_PIECE = 1_000


class RunDirectoryError(FileExistsError):
    pass


@dataclass(frozen=True)
class PreparedData:
    """Training and validation subsets, normalised, plus what evaluation needs."""

    train: Dataset
    validation: Dataset | None
    normalizer: Normalizer
    env_id: str
    reference: ReferenceScores | None
    reference_source: str = "none"  # see data.reference.describe_reference
    identity: dict | None = None  # the whole dataset's name, size and fingerprint (Dataset.record)

    @classmethod
    def from_config(cls, config: RunConfig, dataset: Dataset | None = None, identity: dict | None = None) -> "PreparedData":
        dataset = dataset if dataset is not None else load_dataset(config.dataset, env_id=config.env)
        env_id = config.env or dataset.env_id
        if env_id is None:
            raise ValueError(f"dataset '{dataset.name}' does not name its environment: pass --env")
        size = config.size if config.size is not None else len(dataset)
        train, validation = split_train_validation(
            dataset, size, config.validation_size, seed=config.seed, mode=config.subsample
        )
        reference, source = resolve_reference(config.reference, dataset, env_id)
        return cls(train, validation, Normalizer.fit(train.observations), env_id, reference, source,
                   identity or dataset.record())

    def reference_record(self) -> dict | None:
        """The reference as runs record it: its returns and where they come from."""
        if self.reference is None:
            return None
        return {"random": self.reference.random, "expert": self.reference.expert, "source": self.reference_source}


def to_device_batch(data: Dataset, normalizer: Normalizer) -> Batch:
    return Batch(
        observations=jnp.asarray(normalizer(data.observations)),
        actions=jnp.asarray(data.actions),
        rewards=jnp.asarray(data.rewards),
        next_observations=jnp.asarray(normalizer(data.next_observations)),
        dones=jnp.asarray(data.terminals, dtype=jnp.float32),
    )


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

        (state, key), metrics = jax.lax.scan(one_update, (state, key), None, length=length, unroll=SCAN_UNROLL)
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
    algorithm: Algorithm, sparse: SparseRegConfig, batch_size: int, lanes: Lanes = Lanes(1)
) -> Callable:
    def refresh(state, key, data: Batch):
        key, batch_key, score_key = jax.random.split(key, 3)
        state, stats = refresh_masks(state, algorithm.snip_losses(), sample_batch(data, batch_key, batch_size), score_key, sparse)
        return state, key, stats

    return jax.jit(lanes.vmap(refresh))


def with_all_ones_masks(state: Any, networks) -> Any:
    """Give every scored network a mask (all ones) so the state's structure never changes."""
    for name in networks:
        net = getattr(state, name)
        state = state.replace(**{name: net.replace(mask=jax.tree_util.tree_map(jnp.ones_like, net.params))})
    return state


def initial_state(config: RunConfig, obs_dim: int, action_dim: int, sparse: bool):
    """The algorithm state and the data-sampling key of a fresh run (also a checkpoint template)."""
    algorithm = get_algorithm(config.algo)
    agent_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = algorithm.init(config.algorithm_config(), obs_dim, action_dim, agent_key, config.steps)
    if sparse:
        state = with_all_ones_masks(state, algorithm.losses)
    return state, data_key


def check_run_directory(out: Path, resume: bool, overwrite: bool) -> None:
    """Raise if ``out`` cannot be used as asked; changes nothing on disk.

    A resume of a run killed before its first checkpoint starts it again (it has nothing to lose);
    a directory with other files in it, or none at all, is not such a run."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"output path {out} exists and is not a directory")
    if any(parent.exists() and not parent.is_dir() for parent in out.parents):
        raise RunDirectoryError(f"output path {out} lies under a file, not a directory")
    if resume:
        if has_checkpoint(out):
            return
        entries = run_entries(out)
        if not entries:
            raise FileNotFoundError(f"cannot resume: no run in {out} (no checkpoint): drop --resume to start it")
        others = sorted(p.name for p in entries if not is_unfinished_run_file(p.name))
        if others:
            raise RunDirectoryError(
                f"cannot resume: no checkpoint in {out}, and it holds {', '.join(others[:3])}"
                f"{' ...' if len(others) > 3 else ''}, not files of an unfinished run: use --overwrite to replace it"
            )
        return
    if run_entries(out) and not overwrite:
        raise RunDirectoryError(f"output directory {out} already exists and is not empty: use --resume or --overwrite")


def prepare_run_directory(out: Path, resume: bool, overwrite: bool) -> None:
    """Empty ``out`` for a fresh run (its lock, held by this process, stays)."""
    check_run_directory(out, resume, overwrite)
    if resume:
        remove_temporaries(out)  # left by a process killed while writing
        return
    for entry in run_entries(out):
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)


def checkpoint_to_resume(out: Path):
    """``out``'s checkpoint, or a CheckpointError that says how to go on."""
    try:
        return read_checkpoint(out)
    except CheckpointError as error:
        raise CheckpointError(f"cannot resume: {error}; start the run again with --overwrite") from None


def resumed_config(out: Path, config: RunConfig, checkpoint) -> RunConfig:
    """The config a resume of ``out`` continues with: the one ``config.json`` records, checked against
    the one its checkpoint was trained with (a run never continues as another one); ``config``
    only says how to run it (``frozen_layout``: speed, not results)."""
    path = out / CONFIG_FILE
    recorded = _recorded_config(out)
    saved = checkpoint.info.get("config")  # checkpoints of older versions do not record it
    if saved is not None:
        changed = config_differences(RunConfig.from_dict(saved), recorded)
        if changed:
            raise RunFileError(
                f"cannot resume: {path} no longer describes the run its checkpoint holds: "
                f"{', '.join(f'{k} {new!r} (the checkpoint: {old!r})' for k, (old, new) in changed.items())}; "
                "put back the original, or start the run again with --overwrite"
            )
    return dataclasses.replace(recorded, frozen_layout=config.frozen_layout)


def _recorded_config(out: Path) -> RunConfig:
    """``out``'s config.json, or RunFileError saying how to recover."""
    try:
        return RunConfig.of_run(out)
    except FileNotFoundError:
        raise RunFileError(f"cannot resume: {out / CONFIG_FILE} is missing: put it back, or start the run again "
                           "with --overwrite") from None
    except RunFileError as error:
        raise RunFileError(f"cannot resume: {error}; put back an intact copy, or start the run again with "
                           "--overwrite") from None


def config_differences(old: RunConfig, new: RunConfig) -> dict[str, tuple]:
    """The fields in which two configs train different runs: name -> (old value, new value)."""
    a, b = old.result_fields(), new.result_fields()

    def same(key: str) -> bool:  # the command line gives a sparsity as text ("0.9"), Python as a number
        x, y = a.get(key), b.get(key)
        if key == "sparsity" and "auto" not in (x, y):
            return float(x) == float(y)
        return x == y

    return {k: (a.get(k), b.get(k)) for k in list(a) + [k for k in b if k not in a] if not same(k)}


def resume_config(out: str | Path, given: dict[str, Any], config: RunConfig) -> RunConfig:
    """The config to resume ``out`` with when ``given`` (field -> value) were set again, e.g. on the
    command line: the recorded one, with ``given`` applied where they do not change what the run
    computes (``frozen_layout``); ValueError naming those that would, or a damaged config.json.
    Where there is no run to resume, the error the resume would give."""
    out = Path(out)
    check_run_directory(out, resume=True, overwrite=False)
    recorded = _recorded_config(out)
    wanted = RunConfig.from_dict({**recorded.to_dict(), **given})
    changed = config_differences(recorded, wanted)
    if changed:
        raise ValueError(
            f"cannot resume {out} with other settings than it was started with: "
            f"{', '.join(f'{k} {new!r} (the run: {old!r})' for k, (old, new) in changed.items())}; drop them "
            "(--resume continues the run as it was started) or start it again with --overwrite"
        )
    return wanted


def logged_steps(config: RunConfig, sparse: SparseRegConfig, step: int) -> tuple[list[int], list[int]]:
    """The steps a run has logged when its checkpoint is at ``step``: its evaluations up to ``step``,
    and its mask refreshes before it."""
    evaluations = list(range(config.eval_every, step + 1, config.eval_every))
    if step == config.steps and step % config.eval_every:
        evaluations.append(step)
    refreshes = [s for s in range(0, step, sparse.interval) if sparse.refresh_due(s)] if sparse.enabled else []
    return evaluations, refreshes


def mask_layers(state: Any, algorithm: Algorithm) -> list[tuple[str, str]]:
    """(network, layer) of each row a mask refresh logs, in order (masks.csv)."""
    return [(name, layer) for name in algorithm.losses for layer in mask_statistics(getattr(state, name).mask, None)]


def recorded_config(config: RunConfig, dataset: Dataset | None) -> RunConfig:
    """The config as the run records it: with a dataset passed in, ``dataset`` names that data (its
    name), unless ``config.dataset`` already names where it was loaded from."""
    if dataset is None:
        return config
    source = str(dataset.metadata.get("source", ""))
    names = {dataset.name, source, source.removeprefix("minari:")}
    if config.dataset in names or Path(config.dataset).stem == dataset.name:
        return config
    return dataclasses.replace(config, dataset=dataset.name)


def check_same_data(out: Path, recorded: dict | None, identity: dict) -> None:
    """Refuse to resume a run on other data than it was trained on (runs of older versions did not
    record their data's fingerprint and are not checked)."""
    if not recorded or "fingerprint" not in recorded or recorded["fingerprint"] == identity["fingerprint"]:
        return
    raise ValueError(
        f"cannot resume {out}: it was trained on '{recorded.get('name')}' ({recorded.get('transitions')} transitions, "
        f"fingerprint {recorded['fingerprint']}), not on this data '{identity['name']}' ({identity['transitions']} "
        f"transitions, fingerprint {identity['fingerprint']})"
    )


@dataclass
class SeedRun:
    """What belongs to one seed of a group: its config, directory, data subset and logs."""

    config: RunConfig
    out: Path
    data: PreparedData
    train_batch: Batch
    validation_batch: Batch | None
    logger: RunLogger | None = None


@dataclass
class StartedGroup:
    """Runs ready to step: data prepared, directories made (or checkpoints read), states at ``step``."""

    runs: list[SeedRun]
    sparse: SparseRegConfig
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
) -> dict:
    """Train one agent; writes logs, checkpoints and ``summary.json`` under ``out``; returns the summary.

    ``on_evaluation(row)`` is called after each evaluation's checkpoint is written. ``resume``: continue
    from the checkpoint as the run directory records the run (of ``config`` only ``frozen_layout``
    counts; :func:`resume_config` checks options given again); a run stopped before its first
    checkpoint starts again.
    """
    return train_group([config], [out], dataset, resume=resume, overwrite=overwrite, progress=progress,
                       on_evaluation=on_evaluation)[0]


def start_runs(
    configs: list[RunConfig], outs: list[Path], dataset: Dataset | None, *, resume: bool, overwrite: bool
) -> StartedGroup:
    """Check everything, then prepare the data and create the run directories (or read the checkpoints).

    Everything that can be checked is checked before a directory is created or changed, so that
    bad input leaves nothing behind that would block the corrected command.
    """
    if len(outs) != len(configs) or not outs:
        raise ValueError(f"{len(configs)} configs but {len(outs)} output directories")
    for out in outs:
        check_run_directory(out, resume, overwrite)
    if resume and not any(has_checkpoint(out) for out in outs):
        # Killed before the first checkpoint (check_run_directory made sure that is all there is):
        # nothing to lose, so the run starts again.
        warnings.warn(f"no checkpoint in {', '.join(map(str, outs))} yet (stopped before the first evaluation): "
                      "starting from step 0", stacklevel=3)
        resume, overwrite = False, True
    elif resume and not all(has_checkpoint(out) for out in outs):
        raise ValueError("some of these runs have a checkpoint and some not: resume them one by one")
    checkpoints = [checkpoint_to_resume(out) for out in outs] if resume else None
    if resume:
        configs = [resumed_config(o, c, k) for c, o, k in zip(configs, outs, checkpoints)]
    configs = [recorded_config(c, dataset) for c in configs]
    shared = {k: v for k, v in configs[0].to_dict().items() if k != "seed"}
    if any({k: v for k, v in c.to_dict().items() if k != "seed"} != shared for c in configs):
        raise ValueError("runs trained together must differ only in their seed")
    if dataset is None:
        dataset = load_dataset(configs[0].dataset, env_id=configs[0].env)
    identity = dataset.record()
    for out, checkpoint in zip(outs, checkpoints or []):
        check_same_data(out, checkpoint.info.get("data"), identity)
    warn_about_actions(dataset)
    runs = []
    for config, out in zip(configs, outs):
        data = PreparedData.from_config(config, dataset, identity)
        if config.keep_lowest_validation_mse and data.validation is None:
            raise ValueError(
                f"keep_lowest_validation_mse: no validation data is left in '{dataset.name}' ({len(dataset)} "
                f"transitions) after {len(data.train)} training transitions; use a smaller size"
            )
        validation = to_device_batch(data.validation, data.normalizer) if data.validation is not None else None
        runs.append(SeedRun(config, out, data, to_device_batch(data.train, data.normalizer), validation))
    config, lead = configs[0], runs[0].data
    sparse = config.sparse_reg_config(len(lead.train))
    warn_about_data(lead.train, config)
    evaluator = RolloutEvaluator(lead.env_id, config.eval_episodes * len(runs))
    if (evaluator.obs_dim, evaluator.action_dim) != (lead.train.obs_dim, lead.train.action_dim):
        evaluator.close()
        raise ValueError(
            f"dataset '{lead.train.name}' has obs/action dims {lead.train.obs_dim}/{lead.train.action_dim} but "
            f"environment {lead.env_id} has {evaluator.obs_dim}/{evaluator.action_dim}"
        )
    states = [initial_state(r.config, lead.train.obs_dim, lead.train.action_dim, sparse.enabled) for r in runs]
    for out, checkpoint in zip(outs, checkpoints or []):
        try:
            check_logs(out, checkpoint.step, *logged_steps(config, sparse, checkpoint.step),
                       mask_layers=mask_layers(states[0][0], get_algorithm(config.algo)) if sparse.enabled else [])
        except BaseException:
            evaluator.close()
            raise
    group = StartedGroup(runs, sparse, evaluator, states, step=0)
    try:
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
            group.states = [restore_train_state(c, t, r.out) for c, r, t in zip(checkpoints, runs, states)]
        for r in runs:
            record = {**r.config.to_dict(), "data": r.data.identity}
            prepare_run_directory(r.out, resume, overwrite)
            if not resume:
                atomic_write(r.out / CONFIG_FILE, json.dumps(record, indent=2).encode())
            r.logger = RunLogger(r.out, resume_step=group.step if resume else None, config=record)
    except BaseException:
        group.release()
        raise
    return group


def train_group(
    configs: list[RunConfig],
    outs: list[str | Path],
    dataset: Dataset | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_evaluation: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train runs that differ only in their seed, stepped together under ``jax.vmap``.

    Each run gets its own training subset, normaliser, logs, checkpoints and summary,
    identical in form to a single run's. On an accelerator this is the fast way to run
    seeds; on a CPU one process per core is (see :mod:`sparse_reg.training.parallel`).
    """
    enable_compilation_cache()
    group = start_runs(configs, [Path(o) for o in outs], dataset, resume=resume, overwrite=overwrite)
    try:
        return run_group(group, progress=progress, on_evaluation=on_evaluation)
    finally:
        group.release()


def run_group(group: StartedGroup, *, progress: bool, on_evaluation: Callable[[dict], None] | None) -> list[dict]:
    """Step started runs to the end: mask refreshes, chunks of updates, evaluations, summaries.

    Once the masks are final, chunks may run in the kept-values layout (``config.frozen_layout``):
    the state is converted at the start of each such chunk and back at its end, so evaluations,
    checkpoints and summaries only ever see the masked layout, and a resumed run repeats exactly
    the conversions of an uninterrupted one."""
    runs, sparse, evaluator, step = group.runs, group.sparse, group.evaluator, group.step
    config = runs[0].config
    lanes = Lanes(len(runs))
    algorithm = get_algorithm(config.algo)
    state, data_key = lanes.stack([s for s, _ in group.states]), lanes.stack([k for _, k in group.states])
    train_data = lanes.stack([r.train_batch for r in runs])
    normalizers = lanes.stack([(jnp.asarray(r.data.normalizer.mean), jnp.asarray(r.data.normalizer.std)) for r in runs])

    batch_size = config.algorithm_config().batch_size
    run_chunk = make_chunk_runner(algorithm, batch_size, lanes)
    refresh = make_mask_refresher(algorithm, sparse, batch_size, lanes)
    policy = jax.jit(lanes.vmap(make_policy(algorithm.act)))
    action_mse = make_action_mse(algorithm.act)
    # Chunks end at every evaluation and mask refresh, on absolute step numbers; each is run in
    # pieces of at most PROGRESS_PIECE updates so the progress bar moves every few seconds.
    chunk = math.gcd(config.eval_every, sparse.interval) if sparse.enabled and sparse.until > 0 else config.eval_every
    kept_values = sparse.enabled and uses_kept_values(config.frozen_layout, lanes.size)
    kept_networks: list[str] = []
    # The lowest validation MSE so far per run; on resume, of the evaluations up to the checkpoint
    # (metrics.csv is cut back to it), so replayed evaluations rewrite the same file.
    lowest_mse = [lowest_validation_row(read_rows(r.out / METRICS_FILE)).get("validation_mse", math.inf)
                  for r in runs]

    def act_all(observations: np.ndarray) -> np.ndarray:
        per_lane = observations.reshape(lanes.size, config.eval_episodes, -1) if lanes.size > 1 else observations
        actions = policy(state, normalizers, per_lane)
        return np.asarray(actions).reshape(observations.shape[0], -1)

    seeds = ", ".join(str(r.config.seed) for r in runs)
    bar = tqdm(total=config.steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    bar.set_description(f"{config.algo} {'sparse' if sparse.enabled else 'dense'} seed {seeds}")
    started, last_return, cut_warned = time.time(), None, False
    try:
        while step < config.steps:
            if sparse.refresh_due(step):
                bar.set_postfix_str("refreshing masks")
                state, data_key, stats = refresh(state, data_key, train_data)
                stats = jax.device_get(stats)
                for i, r in enumerate(runs):
                    r.logger.log_masks(step, jax.tree_util.tree_map(float, lanes.index(stats, i)))
                if not cut_warned:
                    cut_warned = True  # once: later refreshes keep as many weights
                    warn_about_cut_networks(jax.tree_util.tree_map(float, lanes.index(stats, 0)), sparse.sparsity, step)
            end = min(step + chunk - step % chunk, config.steps)
            fast = kept_values and step >= sparse.last_refresh
            if fast:
                state = state_to_sparse(state, algorithm.losses)
                kept_networks = sparse_networks(state, algorithm.losses)
            status = f"training to step {end:,}" + (" on kept weights" if fast and kept_networks else "")
            bar.set_postfix_str(status if last_return is None else f"{status}, last return {last_return:.0f}")
            sums = []
            while step < end:
                length = min(PROGRESS_PIECE, end - step)
                state, data_key, piece = run_chunk(state, data_key, train_data, length)
                sums.append(piece)
                step += length
                bar.update(length)
            if fast:
                state = state_to_dense(state, algorithm.losses)
            if step % config.eval_every == 0 or step == config.steps:
                bar.set_postfix_str(f"evaluating {config.eval_episodes * len(runs)} episodes")
                returns = evaluator.run(act_all, [
                    evaluation_seed(r.config.seed, step) + j for r in runs for j in range(config.eval_episodes)
                ]).reshape(len(runs), config.eval_episodes)
                metrics = chunk_means(jax.device_get(sums))
                for i, r in enumerate(runs):
                    row = evaluation_row(r, lanes.index(state, i), step, returns[i], lanes.index(metrics, i),
                                         action_mse, time.time() - started)
                    r.logger.log_evaluation(row)
                    saved = (lanes.index(state, i), lanes.index(data_key, i))
                    info = _checkpoint_info(r.config, r.data, sparse.enabled)
                    # Written before the latest checkpoint: a kill between the two resumes from the
                    # previous checkpoint and replays this evaluation, which writes this file again.
                    if r.config.keep_lowest_validation_mse and row["validation_mse"] < lowest_mse[i]:
                        lowest_mse[i] = row["validation_mse"]
                        save_checkpoint(r.out, step, saved, info, file=LOWEST_VALIDATION_MSE_FILE)
                    save_checkpoint(r.out, step, saved, info)
                    if on_evaluation is not None:
                        on_evaluation({**row, "seed": r.config.seed})
                last_return = float(np.mean(returns))
                bar.set_postfix_str(f"last return {last_return:.0f}")
        summaries = []
        for i, r in enumerate(runs):
            summary = build_summary(r.config, r.data, lanes.index(state, i), algorithm, read_rows(r.out / METRICS_FILE))
            if sparse.enabled:  # how the frozen phase ran: it changes speed, results only at rounding
                summary["frozen_phase"] = {"from_step": sparse.last_refresh, "kept_values_networks": kept_networks}
            atomic_write(r.out / SUMMARY_FILE, json.dumps(summary, indent=2).encode())
            summaries.append(summary)
    finally:
        bar.close()
        for r in runs:
            r.logger.close()
    return summaries


def evaluation_row(run: SeedRun, state: Any, step: int, returns: np.ndarray, metrics: dict,
                   action_mse: Callable, wall_s: float) -> dict:
    """One line of metrics.csv: the evaluation's returns, the actor's action MSE, the chunk's losses."""
    validation = run.validation_batch
    return {
        "step": step,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "normalized_score": _normalized(run.data.reference, np.mean(returns)),
        "train_mse": action_mse(state, run.train_batch.observations, run.train_batch.actions),
        "validation_mse": (
            action_mse(state, validation.observations, validation.actions) if validation is not None else math.nan
        ),
        **{k: float(v) for k, v in metrics.items()},
        "wall_s": round(wall_s, 2),
    }


def lowest_validation_row(rows: list[dict]) -> dict:
    """The first of the metrics rows at the lowest finite validation MSE ({} if none has one): the
    evaluation whose checkpoint ``keep_lowest_validation_mse`` keeps (it saves on a strict <)."""
    finite = [r for r in rows if isinstance(r.get("validation_mse"), (int, float)) and math.isfinite(r["validation_mse"])]
    return min(finite, key=lambda r: r["validation_mse"], default={})


def _normalized(reference: ReferenceScores | None, episode_return: float) -> float:
    return float(reference.normalize(episode_return)) if reference is not None else math.nan


def _checkpoint_info(config: RunConfig, data: PreparedData, sparse: bool) -> dict:
    return {
        "config": config.to_dict(),  # the run's identity: a resume or a load checks config.json against it
        "obs_dim": data.train.obs_dim,
        "action_dim": data.train.action_dim,
        "sparse": sparse,
        "env_id": data.env_id,
        "normalizer": data.normalizer.to_dict(),
        "reference": data.reference_record(),
        "data": data.identity,
    }


def restore_train_state(checkpoint, template: Any, out: Path) -> Any:
    """The (agent state, data key) of ``checkpoint``, checked against the step it was saved at."""
    state, key = checkpoint.restore(template)
    counter = getattr(state, "step", None)  # algorithms that count their updates
    if counter is not None and int(counter) != checkpoint.step:
        raise CheckpointError(f"{out}: checkpoint of step {checkpoint.step} holds a state at update {int(counter)}")
    return state, key


def warn_about_actions(dataset: Dataset) -> None:
    """Policies act through tanh in [-1, 1]: data outside cannot be imitated, say so once."""
    low, high = float(dataset.actions.min()), float(dataset.actions.max())
    if low < -1.0 - 1e-6 or high > 1.0 + 1e-6:
        outside = float(np.mean(np.any(np.abs(dataset.actions) > 1.0 + 1e-6, axis=1)))
        warnings.warn(
            f"dataset '{dataset.name}': actions range over [{low:.3g}, {high:.3g}] but policies act in [-1, 1] "
            f"({outside:.1%} of transitions have an action outside); rescale the actions to [-1, 1] (e.g. divide "
            "by the environment's action bound) before training",
            stacklevel=3,
        )


def warn_about_data(train: Dataset, config: RunConfig) -> None:
    """Say so once when the training data cannot teach what the run expects of it."""
    batch_size = config.algorithm_config().batch_size
    if len(train) < batch_size:
        warnings.warn(
            f"dataset '{train.name}': {len(train)} training transitions, fewer than one batch ({batch_size}): "
            "every batch repeats them; use more data (--size) or a smaller batch (--set batch_size=...)",
            stacklevel=4,
        )
    if not config.algo.startswith("bc") and not np.any(train.rewards):
        warnings.warn(
            f"dataset '{train.name}': every reward of the training data is 0, so {config.algo}'s critic learns "
            "nothing (values are all 0); check the data, or train bc, which does not use rewards",
            stacklevel=4,
        )


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
                stacklevel=4,
            )


def network_sparsity(state: Any, algorithm: Algorithm) -> dict[str, float]:
    """Fraction of weight entries masked, per network that Sparse-Reg scores."""
    return {name: weight_sparsity(getattr(state, name)) for name in algorithm.losses}


def build_summary(config: RunConfig, data: PreparedData, state: Any, algorithm: Algorithm, rows: list[dict]) -> dict:
    history = [
        {k: row[k] for k in ("step", "return_mean", "return_std", "normalized_score", "train_mse", "validation_mse")}
        for row in rows
    ]
    final = history[-1] if history else {}
    summary = {
        "algo": config.algo,
        "dataset": config.dataset,
        "env": data.env_id,
        "size": len(data.train),
        "validation_size": 0 if data.validation is None else len(data.validation),
        "seed": config.seed,
        "steps": config.steps,
        "sparsity": network_sparsity(state, algorithm),
        "final_return": final.get("return_mean"),
        "final_normalized_score": final.get("normalized_score"),
        "reference_scores": data.reference_record(),
        "data": data.identity,
        "config": config.to_dict(),
        "wall_seconds": round(wall_seconds(rows), 1),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "eval_history": history,
    }
    if config.keep_lowest_validation_mse:
        lowest = lowest_validation_row(history)
        summary["lowest_validation_mse"] = {
            "checkpoint": LOWEST_VALIDATION_MSE_FILE,
            **{k: lowest[k] for k in ("step", "validation_mse", "return_mean", "normalized_score")},
        }
    return summary


@dataclass
class Agent:
    """A trained agent restored from a run directory: ``act`` takes raw observations.

    The policy (normalisation, then the algorithm's deterministic action) is compiled once per
    agent and per observation batch shape, not on every call.
    """

    algorithm: Algorithm
    state: Any
    normalizer: Normalizer
    env_id: str
    reference: ReferenceScores | None
    step: int
    reference_source: str = "dataset"

    def __post_init__(self):
        self._policy = jax.jit(make_policy(self.algorithm.act))
        self._normalizer = (jnp.asarray(self.normalizer.mean), jnp.asarray(self.normalizer.std))

    def act(self, observations: np.ndarray) -> np.ndarray:
        """Deterministic actions for a batch (n, obs_dim) of raw observations (or one, (obs_dim,))."""
        observations = np.asarray(observations, dtype=np.float32)
        if observations.ndim == 1:
            return self.act(observations[None])[0]
        return np.asarray(self._policy(self.state, self._normalizer, observations))

    def export_policy(self, path: str | Path | None = None) -> bytes:
        """The deterministic policy (normalisation included, weights as constants) serialised with
        ``jax.export``, for any batch size; written to ``path`` if given. Run it without this project::

            import jax, numpy as np
            policy = jax.export.deserialize(open("policy.jaxexport", "rb").read())
            actions = np.asarray(policy.call(np.asarray(observations, np.float32)))  # (n, obs_dim) -> (n, act_dim)
        """
        from jax import export

        state, normalizer = self.state, self._normalizer

        def policy(observations):
            return make_policy(self.algorithm.act)(state, normalizer, observations)

        obs_dim = int(np.asarray(self.normalizer.mean).shape[0])
        shape = export.symbolic_shape(f"batch, {obs_dim}")
        exported = export.export(jax.jit(policy))(jax.ShapeDtypeStruct(shape, jnp.float32))
        try:
            data = bytes(exported.serialize())
        except ModuleNotFoundError as error:
            if error.name != "flatbuffers":
                raise
            raise ModuleNotFoundError(
                "exporting a policy needs the flatbuffers package, which jax does not install: pip install "
                "flatbuffers (loading the exported file needs it too)", name="flatbuffers") from None
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def evaluate(self, episodes: int = 10, seed: int = 0) -> dict:
        evaluator = RolloutEvaluator(self.env_id, episodes)
        try:
            returns = evaluator.run(self.act, seed)
        finally:
            evaluator.close()
        return {
            "step": self.step,
            "episodes": episodes,
            "returns": returns.tolist(),
            "return_mean": float(np.mean(returns)),
            "return_std": float(np.std(returns)),
            "normalized_score": _normalized(self.reference, float(np.mean(returns))),
            "reference_source": self.reference_source if self.reference is not None else "none",
        }


def load_agent(path: str | Path, checkpoint: str = "latest") -> Agent:
    """Restore the agent of a run directory (or of a checkpoint file inside one).

    ``checkpoint``: "latest" (the last evaluation's) or "lowest-validation-mse" (the evaluation with
    the lowest validation action MSE, kept by runs trained with ``keep_lowest_validation_mse``). A
    path to a checkpoint file picks that file, whatever ``checkpoint`` says.
    """
    path = Path(path)
    directory = run_directory_of(path)
    if checkpoint not in CHECKPOINT_FILES:
        raise ValueError(f"checkpoint must be one of {sorted(CHECKPOINT_FILES)}, got {checkpoint!r}")
    if not (directory / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path} is not a run directory (missing {CONFIG_FILE})")
    file = path.name if path.is_file() and path.name in CHECKPOINT_FILES.values() else CHECKPOINT_FILES[checkpoint]
    if file == LOWEST_VALIDATION_MSE_FILE and not (directory / file).is_file():
        raise FileNotFoundError(
            f"{directory} has no {file}: only runs trained with --keep-lowest-validation-mse "
            "(keep_lowest_validation_mse = true) keep the checkpoint of their lowest validation MSE"
        )
    saved = read_checkpoint(directory, file)
    info = saved.info
    # The config the checkpoint was trained with (older checkpoints do not record it: config.json's).
    config = RunConfig.from_dict(info["config"]) if "config" in info else RunConfig.of_run(directory)
    template = initial_state(config, info["obs_dim"], info["action_dim"], info["sparse"])
    state, _ = restore_train_state(saved, template, directory)
    recorded = info.get("reference")
    reference = ReferenceScores(recorded["random"], recorded["expert"]) if recorded else None
    source = (recorded or {}).get("source", "dataset")
    return Agent(get_algorithm(config.algo), state, Normalizer.from_dict(info["normalizer"]), info["env_id"],
                 reference, saved.step, source)
