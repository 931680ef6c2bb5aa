"""The project's own D4RL-style MuJoCo datasets: names, building, caching and loading.

Twelve datasets, ``{halfcheetah,hopper,walker2d}-{expert,medium,medium-replay,expert-replay}-v0``,
on the gymnasium ``*-v5`` environments, made from what ``scripts/ship_behaviour_policies.py``
ships inside the package for each family (``sparse_reg/data/policies/<family>/``) out of one
single-environment sbx CrossQ training run (``scripts/train_behaviour_policy.py``):

* ``expert`` / ``medium``: rollouts of the *stochastic* expert / medium policy, 300_000
  transitions by default, episodes of the environment's 1000-step limit (truncation ->
  ``timeouts``).
* ``medium-replay``: **exact, D4RL's definition**: the replay buffer of the training run up to
  the medium policy, i.e. the true buffer's first ``medium_step`` transitions (every transition
  the run collected before the medium checkpoint was saved, one per environment step, in time
  order, the trainer's short uniform-random warm-up included). The ship script copies that prefix
  from the run's ``replay_buffer.npz`` into ``policies/<family>/medium_replay.npz``; building
  the dataset just converts that file (no rollouts). The episode running at the cut ends with
  ``timeouts=True``; the build record says it is the true buffer prefix and how big it is.
* ``expert-replay``: an **approximation** of the buffer up to the expert policy, regenerated from
  shipped checkpoints: the expert step is 100k+ transitions, too big to ship, so the package
  ships a thinned sequence of training checkpoints (the first one, then one every 20k steps) and
  checkpoint ``k`` (saved at step ``s_k``) is rolled out stochastically for ``s_{k+1} - s_k``
  environment steps, up to the expert's step. It is *not* the true buffer: inside a segment the
  real run used a policy that improved at every gradient step (we keep the segment's first
  policy, with no learning in between); 10 episodes run side by side instead of one; the
  steps before the first shipped checkpoint (10k) are uniform random actions, where the trainer's
  random warm-up was only 100 steps; and the episodes are fresh ones, not the run's. With
  ``from_buffer=True`` and ``SPARSE_REG_BEHAVIOUR_DIR`` pointing at a training artifacts dir
  (``<dir>/<family>/replay_buffer.npz``) the true buffer's first transitions are used instead.

CrossQ learns fast, so the medium policy (about a third of the expert's return) is reached after
only 10k-30k environment steps, and the medium-replay datasets are small. Their size is the medium
step exactly: checkpoints are saved every 10k steps, so a medium checkpoint at step 10k / 20k /
30k gives 10_000 / 20_000 / 30_000 transitions (the medium step of each family is in its
``provenance.json`` and in each build record). That still covers the paper's 5k / 10k
medium-replay experiments (a 10k-step medium leaves exactly 10k: the 10k experiment then uses
the whole dataset).

Reference scores (for the normalised score) are stored with each dataset: ``random`` is the mean
return of 100 uniform-random episodes computed at build time, ``expert`` the expert policy's
deterministic mean return from its provenance record; D4RL's constants are kept next to them.

Datasets are written in Minari's local format under ``SPARSE_REG_DATA_DIR`` (default
``~/.cache/sparse_reg/datasets``), so ``MINARI_DATASETS_PATH=$SPARSE_REG_DATA_DIR`` makes them
readable with ``minari.load_dataset(name)``; :func:`load` reads them without that variable. A
build is written into a hidden temporary directory next to the target and renamed into place
when complete, so a half-written dataset is never visible; building is deterministic for a
given seed *and CPU kernel* and idempotent (an existing complete dataset is just loaded).

A rollout dataset's bits depend on the BLAS kernel NumPy's OpenBLAS runs (its pick for the CPU,
or ``$OPENBLAS_CORETYPE``): the behaviour policy's float32 matrix products round differently with
the AVX-512 ("SkylakeX") and AVX2 ("Haswell") kernels, and MuJoCo's chaotic dynamics turn one
action's last bit into other episodes. The data are the same in distribution, not in bits.
:data:`REFERENCE_FINGERPRINTS` are the builds (seed 0, default size) that most results under
``docs/results`` used, made with the SkylakeX kernel: a build that differs gets a warning, and
``OPENBLAS_CORETYPE=SkylakeX`` (on an AVX-512 CPU) reproduces them bit for bit. ``medium-replay`` has no rollouts, so it is the same
everywhere. Each build records its fingerprint and BLAS kernel.

This module owns the names and the build; the pieces it builds from are their own modules:
:mod:`.shipped_policies` (the shipped policies and their provenance), :mod:`.collect` (rollouts),
:mod:`.replay_buffer` (datasets that are a true replay buffer's prefix) and
:mod:`.minari_storage` (writing and reading the Minari files).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

from .collect import (
    Segment,
    behaviour_policy_fn,
    blas_kernels,
    collect_rollouts,
    collect_schedule,
    random_policy_return,
)
from .dataset import Dataset, DatasetError, ReferenceScores
from .minari_storage import is_built, read_built, read_record, write_atomically
from .reference import D4RL_REFERENCE_SCORES, GYMNASIUM_ENV_FOR_FAMILY
from .replay_buffer import dataset_from_shipped_buffer, dataset_from_true_buffer
from .shipped_policies import (
    MEDIUM_REPLAY_FILE,
    PROVENANCE_FILE,
    ShippedPolicies,
    load_policy,
    policy_dir,
    role_entries,
)

FAMILIES = ("halfcheetah", "hopper", "walker2d")
KINDS = ("expert", "medium", "medium-replay", "expert-replay")
VERSION = "v0"
DEFAULT_SIZE = 300_000  # room for a 100k training pool + 200k validation
DEFAULT_N_ENVS = 50  # expert / medium: 300k / 50 = 6 whole 1000-step episodes per environment
# expert-replay runs fewer environments side by side, so that (as in the single-env training
# run) an episode mostly stays inside one checkpoint's segment; the cost per transition is the
# same, the policy batch is just smaller.
DEFAULT_REPLAY_N_ENVS = 10
RANDOM_EPISODES = 100
BUILD_FORMAT = 1  # bump when the way datasets are built changes

DATA_DIR_ENV = "SPARSE_REG_DATA_DIR"

# Dataset.fingerprint() of the reference builds (module docstring): seed 0, default size and
# environments, OpenBLAS SkylakeX kernel.
REFERENCE_FINGERPRINTS: dict[str, str] = {
    "halfcheetah-expert-v0": "025b568012183b8e",
    "halfcheetah-medium-v0": "30a5e056daaba031",
    "halfcheetah-medium-replay-v0": "783c69a4c3139906",
    "halfcheetah-expert-replay-v0": "d67b03c08335f065",
    "hopper-expert-v0": "2859bdea245c02b4",
    "hopper-medium-v0": "94be95de23dc7f67",
    "hopper-medium-replay-v0": "db54af2213d0eb49",
    "hopper-expert-replay-v0": "376ecbad5598633e",
    "walker2d-expert-v0": "a1b7d188e4e0a4d2",
    "walker2d-medium-v0": "15e48fde8dc60f52",
    "walker2d-medium-replay-v0": "143543ea5947d3f0",
    "walker2d-expert-replay-v0": "275328094f7fe59b",
}
REFERENCE_KERNEL_HINT = "OPENBLAS_CORETYPE=SkylakeX (on a CPU with AVX-512)"

# Reset seeds of the random-reference episodes are offset from the build seed so that they are
# not the very same initial states as the dataset's first episodes.
_RANDOM_REFERENCE_SEED_OFFSET = 1_000_003


# --------------------------------------------------------------------------- names and places


def known_names() -> list[str]:
    return [f"{family}-{kind}-{VERSION}" for family in FAMILIES for kind in KINDS]


def parse_name(name: str) -> tuple[str, str]:
    """``"hopper-medium-replay-v0"`` -> ``("hopper", "medium-replay")``; DatasetError if unknown."""
    if name not in known_names():
        raise DatasetError(f"unknown dataset '{name}'; valid names: {', '.join(known_names())}")
    family, rest = name.split("-", 1)
    return family, rest[: -len(f"-{VERSION}")]


def data_dir() -> Path:
    """Where built datasets live (Minari layout: ``<data_dir>/<name>/data/...``)."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "sparse_reg" / "datasets").expanduser()


def dataset_path(name: str, root: Path | None = None) -> Path:
    parse_name(name)
    return (root or data_dir()) / name


# --------------------------------------------------------------------------- status


class DatasetStatus(NamedTuple):
    name: str
    built: bool
    can_build: bool
    path: Path


def status(root: Path | None = None, policies: Path | None = None) -> list[DatasetStatus]:
    """One entry per known name: is it built, could it be built (policies shipped), where is it."""
    rows = []
    shipped = {family: ShippedPolicies.find(family, policies) for family in FAMILIES}
    for name in known_names():
        family, kind = parse_name(name)
        path = dataset_path(name, root)
        can_build = shipped[family] is not None and shipped[family].can_build(kind)
        rows.append(DatasetStatus(name, is_built(path), can_build, path))
    return rows


# --------------------------------------------------------------------------- building


def make(
    name: str,
    seed: int | None = None,
    size: int | None = None,
    force: bool = False,
    *,
    n_envs: int | None = None,
    max_episode_steps: int | None = None,
    random_episodes: int = RANDOM_EPISODES,
    from_buffer: bool = False,
    progress: bool = True,
    root: Path | None = None,
    policies: Path | None = None,
) -> Path:
    """Build dataset ``name`` (if needed) and return its directory.

    ``seed`` defaults to 0. ``size`` is the number of transitions (default 300_000 for
    expert/medium; for medium-replay the whole shipped buffer prefix, i.e. the medium step, and a
    smaller size takes its first transitions; for expert-replay the expert's step).
    ``from_buffer`` builds expert-replay from the true buffer in ``$SPARSE_REG_BEHAVIOUR_DIR``
    instead of checkpoint rollouts (medium-replay is always the true buffer).
    An existing complete dataset is returned as is; if it was built with a different
    *explicitly requested* seed or size, a DatasetError asks for ``force=True``, which rebuilds
    and replaces it (so ``load(name)`` takes whatever build is there).
    ``n_envs``, ``max_episode_steps`` and ``random_episodes`` exist for tests and experiments.
    """
    family, kind = parse_name(name)
    path = dataset_path(name, root)
    shipped = ShippedPolicies.find(family, policies)
    if is_built(path) and not force:
        if shipped is None or shipped.is_source_of(read_record(path), kind):
            _check_matches(path, name, seed, size)
            return path
        # Built from policies that have since been re-shipped: rebuild rather than serve stale data.
        warnings.warn(f"{name} was built from other shipped policies than the current ones: rebuilding", stacklevel=2)
        force = True
    seed = 0 if seed is None else int(seed)

    if shipped is None or not shipped.can_build(kind):
        where = (policies or policy_dir()) / family
        raise DatasetError(
            f"cannot build {name}: no shipped policy for {family} (expected {PROVENANCE_FILE}, the policy files "
            f"and, for medium-replay, {MEDIUM_REPLAY_FILE} in {where}; see scripts/ship_behaviour_policies.py)"
        )
    env_id = GYMNASIUM_ENV_FOR_FAMILY[family]
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"building [bold]{name}[/bold] (seed {seed}) -> {path}")
    if kind == "medium-replay":
        dataset, source = dataset_from_shipped_buffer(name, shipped, size), "shipped-replay-buffer"
    elif kind == "expert-replay" and from_buffer:
        dataset, source = dataset_from_true_buffer(name, shipped, size), "replay-buffer"
    else:
        if from_buffer:
            warnings.warn(f"{name}: from_buffer only applies to expert-replay; collecting rollouts", stacklevel=2)
        dataset, source = _collect(name, shipped, kind, env_id, seed, size, n_envs, max_episode_steps, progress)

    random_return = random_policy_return(
        env_id, random_episodes, seed + _RANDOM_REFERENCE_SEED_OFFSET, max_episode_steps, progress=progress
    )
    reference = ReferenceScores(random=random_return, expert=shipped.expert_return())
    d4rl = D4RL_REFERENCE_SCORES[family]
    record = {
        "name": name,
        "family": family,
        "kind": kind,
        "env_id": env_id,
        "build_format": BUILD_FORMAT,
        "source": source,
        "seed": int(seed),
        "size": int(len(dataset)),
        "requested_size": size,
        "n_envs": dataset.metadata.get("n_envs"),
        "max_episode_steps": max_episode_steps,
        "segments": dataset.metadata.get("segments", []),
        "cut_episodes": dataset.metadata.get("cut_episodes"),
        "replay_buffer": dataset.metadata.get("replay_buffer"),
        "reference": {
            "random": reference.random,
            "expert": reference.expert,
            "random_episodes": int(random_episodes),
            "expert_source": "provenance.json expert mean_return (deterministic policy)",
        },
        "d4rl_reference": {"random": d4rl.random, "expert": d4rl.expert},
        "policy_provenance": _provenance_summary(shipped, kind),
        "policy_fingerprint": shipped.fingerprint(kind),
        "approximation": _approximation_note(source),
        "fingerprint": dataset.fingerprint(),
        "blas": blas_kernels(),
    }
    write_atomically(path, dataset, record, reference, force)
    if reference_build(record) is False:
        warnings.warn(
            f"{name}: this build (fingerprint {record['fingerprint']}) differs from the reference build "
            f"({REFERENCE_FINGERPRINTS[name]}) that the committed results used, because the BLAS kernel in use "
            f"({_kernel_names(record)}) rounds the behaviour policy differently; it is as valid, but to reproduce "
            f"the reference bits rebuild with {REFERENCE_KERNEL_HINT}",
            stacklevel=2,
        )
    return path


def reference_build(record: dict) -> bool | None:
    """Is the build that ``record`` describes the reference build? None where that cannot be told:
    another seed, size or environment count than the reference's, or a record from before builds
    recorded their fingerprint."""
    name, fingerprint = record.get("name"), record.get("fingerprint")
    if name not in REFERENCE_FINGERPRINTS or fingerprint is None:
        return None
    default_envs = {"medium-replay": 1, "expert-replay": DEFAULT_REPLAY_N_ENVS}.get(record.get("kind"), DEFAULT_N_ENVS)
    as_reference = (record.get("seed"), record.get("requested_size"), record.get("max_episode_steps"), record.get("n_envs"))
    if as_reference != (0, None, None, default_envs):
        return None
    return fingerprint == REFERENCE_FINGERPRINTS[name]


def _kernel_names(record: dict) -> str:
    kernels = [f"{k.get('library')} {k.get('architecture')}" for k in record.get("blas") or []]
    return ", ".join(kernels) or "unknown"


def _check_matches(path: Path, name: str, seed: int | None, size: int | None) -> None:
    record = read_record(path)
    built_seed, built_size = record.get("seed"), record.get("size")
    mismatch = []
    if seed is not None and built_seed is not None and built_seed != seed:
        mismatch.append(f"seed={built_seed} (asked for {seed})")
    if size is not None and built_size is not None and built_size != size:
        mismatch.append(f"size={built_size} (asked for {size})")
    if mismatch:
        raise DatasetError(f"{name} is already built at {path} with {', '.join(mismatch)}; pass force=True to rebuild it")


def _collect(
    name: str,
    shipped: ShippedPolicies,
    kind: str,
    env_id: str,
    seed: int,
    size: int | None,
    n_envs: int | None,
    max_episode_steps: int | None,
    progress: bool,
) -> tuple[Dataset, str]:
    if kind in ("expert", "medium"):
        policy = load_policy(shipped.policy_file(kind))
        dataset = collect_rollouts(
            behaviour_policy_fn(policy),
            env_id,
            size or DEFAULT_SIZE,
            seed,
            n_envs=n_envs or DEFAULT_N_ENVS,
            max_episode_steps=max_episode_steps,
            progress=progress,
            desc=name,
            name=name,
        )
        return dataset, "rollouts"
    segments, target_step = replay_segments(shipped)
    n = target_step if size is None else int(size)
    if not 0 < n <= target_step:
        raise DatasetError(f"{name}: size must be in 1..{target_step} (the expert checkpoint's step)")
    dataset = collect_schedule(
        segments,
        env_id,
        n,
        seed,
        n_envs=n_envs or DEFAULT_REPLAY_N_ENVS,
        max_episode_steps=max_episode_steps,
        progress=progress,
        desc=name,
        name=name,
    )
    return dataset, "replay-approximation"


def replay_segments(shipped: ShippedPolicies) -> tuple[list[Segment], int]:
    """The schedule approximating the training run's buffer up to the expert checkpoint.

    Checkpoint ``k`` saved at step ``s_k`` acts for steps ``[s_k, s_{k+1})``; steps before the
    first shipped checkpoint use uniform random actions (the run's warm-up; we have no earlier
    policy). Checkpoints at or after the expert's step are not used.
    """
    target_step = int(shipped.role("expert")["step"])
    segments = [Segment(0, None, "random")]
    for step, file in shipped.replay_checkpoints():
        if 0 < step < target_step:
            segments.append(Segment(step, behaviour_policy_fn(load_policy(file)), file.stem))
    return segments, target_step


def _provenance_summary(shipped: ShippedPolicies, kind: str) -> dict:
    provenance = shipped.provenance
    summary = {key: provenance[key] for key in ("training", "selection") if key in provenance}
    return {**summary, **role_entries(provenance, kind)}


def _approximation_note(source: str) -> str | None:
    if source == "replay-approximation":
        return (
            "Approximates the training run's replay buffer by rolling out the shipped thinned checkpoints in "
            "order, each for the steps until the next one (uniform random actions before the first); "
            "it is not the true buffer."
        )
    return None


# --------------------------------------------------------------------------- loading


def load(name: str, **make_kwargs) -> Dataset:
    """The dataset ``name``, building it first (with a progress bar) if it is not built yet."""
    path = make(name, **make_kwargs)
    return read_built(path, name)
