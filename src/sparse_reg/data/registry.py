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
given seed and idempotent (an existing complete dataset is just loaded).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .behaviour_policy import BehaviourPolicy
from .collect import (
    Segment,
    behaviour_policy_fn,
    collect_rollouts,
    collect_schedule,
    quiet_mujoco_model_warnings,
    random_policy_return,
)
from .dataset import Dataset, DatasetError, ReferenceScores
from .reference import D4RL_REFERENCE_SCORES, GYMNASIUM_ENV_FOR_FAMILY

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
POLICY_DIR_ENV = "SPARSE_REG_POLICY_DIR"
BEHAVIOUR_DIR_ENV = "SPARSE_REG_BEHAVIOUR_DIR"
PROVENANCE_FILE = "provenance.json"
MEDIUM_REPLAY_FILE = "medium_replay.npz"  # the true replay buffer's first medium_step transitions
BUFFER_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
_METADATA_KEY = "sparse_reg"  # our entry in Minari's metadata.json

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


def policy_dir() -> Path:
    """Where the shipped behaviour policies live (the package's ``data/policies`` by default)."""
    override = os.environ.get(POLICY_DIR_ENV)
    return Path(override).expanduser() if override else Path(__file__).resolve().parent / "policies"


def dataset_path(name: str, root: Path | None = None) -> Path:
    parse_name(name)
    return (root or data_dir()) / name


def is_built(path: Path) -> bool:
    # The directory only ever appears by an atomic rename of a complete build.
    return (path / "data" / "metadata.json").is_file()


# --------------------------------------------------------------------------- shipped policies


@dataclass(frozen=True)
class ShippedPolicies:
    """What ``scripts/ship_behaviour_policies.py`` wrote for one family."""

    family: str
    root: Path
    provenance: dict

    @classmethod
    def find(cls, family: str, root: Path | None = None) -> "ShippedPolicies | None":
        directory = (root or policy_dir()) / family
        provenance_file = directory / PROVENANCE_FILE
        if not provenance_file.is_file():
            return None
        try:
            provenance = json.loads(provenance_file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DatasetError(f"{provenance_file}: unreadable provenance record ({error})") from None
        return cls(family, directory, provenance)

    def role(self, role: str) -> dict:
        try:
            return self.provenance[role]
        except KeyError:
            raise DatasetError(f"{self.root / PROVENANCE_FILE}: no '{role}' entry") from None

    def policy_file(self, role: str) -> Path:
        return self.root / self.role(role).get("file", f"{role}.npz")

    def medium_replay_file(self) -> Path:
        """The shipped prefix of the true replay buffer (medium-replay)."""
        return self.root / self.provenance.get("medium_replay", {}).get("file", MEDIUM_REPLAY_FILE)

    def replay_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, file) of the shipped training checkpoints (for expert-replay), in training order."""
        files = sorted((self.root / "replay").glob("step_*.npz"))
        return sorted((int(f.stem.split("_")[1]), f) for f in files)

    def can_build(self, kind: str) -> bool:
        if "expert" not in self.provenance:  # every dataset needs the expert's reference score
            return False
        if kind in ("expert", "medium"):
            return kind in self.provenance and self.policy_file(kind).is_file()
        if kind == "medium-replay":
            return "medium" in self.provenance and self.medium_replay_file().is_file()
        return bool(self.replay_checkpoints())  # expert-replay

    def fingerprint(self, kind: str | None = None) -> str:
        """Identifies what a dataset of ``kind`` is built from, so re-shipping one policy rebuilds
        only the datasets made from it: the provenance entries of its roles (the expert's always,
        for the reference score) and the bytes of the files it reads. Without ``kind``: the whole
        provenance record (how builds made before per-kind fingerprints were marked)."""
        import hashlib

        if kind is None:
            return hashlib.sha256(json.dumps(self.provenance, sort_keys=True).encode()).hexdigest()[:16]
        digest = hashlib.sha256(json.dumps(_role_entries(self.provenance, kind), sort_keys=True).encode())
        for path in self._source_files(kind):
            digest.update(path.name.encode())
            digest.update(path.read_bytes() if path.is_file() else b"missing")
        return digest.hexdigest()[:16]

    def _source_files(self, kind: str) -> list[Path]:
        if kind in ("expert", "medium"):
            return [self.policy_file(kind)]
        if kind == "medium-replay":
            return [self.medium_replay_file()]
        return [path for _, path in self.replay_checkpoints()]  # expert-replay

    def is_source_of(self, record: dict, kind: str) -> bool:
        """Whether a build record says the dataset was made from what is shipped now."""
        built_from = record.get("policy_fingerprint")
        return built_from in (self.fingerprint(kind), self.fingerprint())

    def expert_return(self) -> float:
        """The expert policy's deterministic mean return, as measured when it was shipped."""
        expert = self.role("expert")
        for key in ("mean_return", "eval_mean_return"):
            if key in expert:
                return float(expert[key])
        raise DatasetError(f"{self.root / PROVENANCE_FILE}: the 'expert' entry records no mean_return")


def load_policy(path: Path) -> BehaviourPolicy:
    """Load a shipped policy, computing in float32 even if it was stored as float16."""
    return BehaviourPolicy.load(path).astype(np.float32)


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
        dataset, source = _dataset_from_shipped_buffer(name, shipped, size), "shipped-replay-buffer"
    elif kind == "expert-replay" and from_buffer:
        dataset, source = _dataset_from_true_buffer(name, shipped, size), "replay-buffer"
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
    }
    _write_atomically(path, dataset, record, reference, force)
    return path


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


def buffer_prefix(buffer, n: int, where: str = "the replay buffer") -> tuple[dict[str, np.ndarray], bool]:
    """The first ``n`` transitions of a replay buffer (an ``np.load``-ed file or a dict of arrays).

    Returns float32 observations/actions/rewards/next_observations and bool terminals/timeouts,
    and whether the episode running at the cut had to be closed (its last kept transition,
    neither terminal nor a timeout in the buffer, is marked ``timeouts=True``).
    DatasetError if a key is missing or the buffer holds fewer than ``n`` transitions.
    """
    missing = [key for key in BUFFER_KEYS if key not in buffer]
    if missing:
        raise DatasetError(f"{where}: missing {', '.join(missing)}")
    rows = len(buffer["rewards"])
    if not 0 < n <= rows:
        raise DatasetError(f"{where} holds {rows} transitions; cannot take the first {n}")
    arrays = {key: np.asarray(buffer[key][:n], dtype=np.float32) for key in BUFFER_KEYS[:4]}
    arrays.update({key: np.asarray(buffer[key][:n]).astype(bool) for key in BUFFER_KEYS[4:]})
    arrays["rewards"] = arrays["rewards"].reshape(n)
    cut = not (arrays["terminals"][-1] or arrays["timeouts"][-1])
    if cut:
        arrays["timeouts"][-1] = True
    return arrays, cut


def _buffer_dataset(name: str, family: str, arrays: dict[str, np.ndarray], replay_buffer: dict) -> Dataset:
    return Dataset(
        **arrays,
        env_id=GYMNASIUM_ENV_FOR_FAMILY[family],
        name=name,
        metadata={
            "n_envs": 1,
            "segments": [{"label": "true replay buffer", "start": 0, "end": len(arrays["rewards"])}],
            "cut_episodes": int(replay_buffer["last_episode_cut"]),
            "replay_buffer": replay_buffer,
        },
    )


def _dataset_from_shipped_buffer(name: str, shipped: ShippedPolicies, size: int | None) -> Dataset:
    """medium-replay: the shipped prefix of the true training buffer (or its first ``size`` rows)."""
    file = shipped.medium_replay_file()
    entry = shipped.provenance.get("medium_replay", {})
    medium_step = int(shipped.role("medium")["step"])
    try:
        buffer = np.load(file)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{name}: cannot read {file} ({error})") from None
    with buffer:
        rows = len(buffer["rewards"]) if "rewards" in buffer else 0
        n = rows if size is None else int(size)
        arrays, cut = buffer_prefix(buffer, n, where=f"{name}: {file}")
    if rows != medium_step:
        warnings.warn(f"{name}: {file} holds {rows} transitions but the medium step is {medium_step}", stacklevel=3)
    return _buffer_dataset(
        name,
        shipped.family,
        arrays,
        {
            "exact": True,
            "description": f"the first {n} transitions of the behaviour policy's true training replay buffer "
            f"(D4RL's medium-replay: the run's buffer up to the medium policy, saved at step {medium_step})",
            "transitions": n,
            "medium_step": medium_step,
            "shipped_transitions": rows,
            "file": f"{shipped.family}/{file.name}",
            # The shipped file's own last transition was closed by the ship script.
            "last_episode_cut": bool(cut or (n == rows and entry.get("last_episode_cut", False))),
        },
    )


def _dataset_from_true_buffer(name: str, shipped: ShippedPolicies, size: int | None) -> Dataset:
    """expert-replay from the real training buffer (optional; needs the artifacts dir)."""
    behaviour_dir = os.environ.get(BEHAVIOUR_DIR_ENV)
    if not behaviour_dir:
        raise DatasetError(f"{name}: --from-buffer needs {BEHAVIOUR_DIR_ENV} pointing at the training artifacts dir")
    buffer_file = Path(behaviour_dir).expanduser() / shipped.family / "replay_buffer.npz"
    if not buffer_file.is_file():
        raise DatasetError(f"{name}: no replay buffer at {buffer_file}")
    target_step = int(shipped.role("expert")["step"])
    n = target_step if size is None else int(size)
    with np.load(buffer_file) as buffer:
        arrays, cut = buffer_prefix(buffer, n, where=f"{name}: {buffer_file}")
    return _buffer_dataset(
        name,
        shipped.family,
        arrays,
        {
            "exact": True,
            "description": f"the first {n} transitions of the true training replay buffer (expert step {target_step})",
            "transitions": n,
            "expert_step": target_step,
            "file": str(buffer_file),
            "last_episode_cut": cut,
        },
    )


def _provenance_summary(shipped: ShippedPolicies, kind: str) -> dict:
    provenance = shipped.provenance
    summary = {key: provenance[key] for key in ("training", "selection") if key in provenance}
    return {**summary, **_role_entries(provenance, kind)}


def _role_entries(provenance: dict, kind: str) -> dict:
    """The provenance entries of the policies and files a dataset of ``kind`` is made from."""
    roles = ("expert", "medium") if kind.endswith("-replay") else (kind, "expert")
    extra = {"medium-replay": "medium_replay", "expert-replay": "replay"}.get(kind)
    return {key: provenance[key] for key in dict.fromkeys((*roles, extra)) if key in provenance}


def _approximation_note(source: str) -> str | None:
    if source == "replay-approximation":
        return (
            "Approximates the training run's replay buffer by rolling out the shipped thinned checkpoints in "
            "order, each for the steps until the next one (uniform random actions before the first); "
            "it is not the true buffer."
        )
    return None


# --------------------------------------------------------------------------- Minari storage


@contextmanager
def _minari_root(root: Path):
    """Point Minari at ``root`` for the duration (its writer only takes the env variable)."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def _episode_buffers(dataset: Dataset):
    """Minari episode buffers: T steps store T + 1 observations (the last next_observation)."""
    from minari.data_collector import EpisodeBuffer

    # That layout can only hold episodes whose next observation is the following observation.
    inner = np.ones(len(dataset), bool)
    inner[dataset.episode_ends() - 1] = False
    rows = np.flatnonzero(inner)
    if not np.array_equal(dataset.next_observations[rows], dataset.observations[rows + 1]):
        raise DatasetError(f"{dataset.name}: next_observations do not chain inside episodes; cannot store it")

    for index, rows in enumerate(dataset.episode_slices()):
        observations = np.concatenate([dataset.observations[rows], dataset.next_observations[rows][-1:]])
        yield EpisodeBuffer(
            id=index,
            observations=observations,
            actions=dataset.actions[rows],
            rewards=dataset.rewards[rows],
            terminations=dataset.terminals[rows],
            truncations=dataset.timeouts[rows],
            infos={},
        )


def _write_atomically(path: Path, dataset: Dataset, record: dict, reference: ReferenceScores, force: bool) -> None:
    """Write the Minari dataset into a hidden temporary dir next to ``path``, then rename it into place."""
    import minari

    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden (dot) names are skipped by minari.list_local_datasets, so a leftover from a crash
    # never shows up as a dataset.
    staging = path.parent / f".building-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        description = (
            f"{record['name']}: {record['kind']} data on {record['env_id']} made by sparse-reg "
            f"(seed {record['seed']}, {len(dataset)} transitions)."
        )
        if record.get("approximation"):
            description += " " + record["approximation"]
        elif record.get("replay_buffer"):
            description += " Exact: " + record["replay_buffer"]["description"] + "."
        # Minari builds the environment (for its spaces and spec): keep that compile quiet too.
        with warnings.catch_warnings(), _minari_root(staging), quiet_mujoco_model_warnings():
            warnings.simplefilter("ignore")  # minari nags about optional fields we do not use
            created = minari.create_dataset_from_buffers(
                dataset_id=record["name"],
                buffer=list(_episode_buffers(dataset)),
                env=record["env_id"],
                eval_env=record["env_id"],
                algorithm_name=f"sbx CrossQ behaviour policy ({record['source']})",
                author="sparse-reg",
                author_email="none",
                code_permalink="sparse_reg.data.registry",
                ref_min_score=reference.random,
                ref_max_score=reference.expert,
                num_episodes_average_score=record["reference"]["random_episodes"],
                description=description,
            )
        created.storage.update_metadata({_METADATA_KEY: record})
        built = staging / record["name"]
        if force and path.exists():
            # Move the old build aside first: os.replace cannot replace a non-empty directory.
            trash = staging / "previous"
            os.replace(path, trash)
        try:
            os.replace(built, path)
        except OSError:
            if not is_built(path):
                raise
            # Another process finished the same dataset first; keep theirs.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- loading


def read_record(path: Path) -> dict:
    """Our build record (seed, size, references, provenance) from a built dataset's metadata."""
    try:
        metadata = json.loads((path / "data" / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read dataset metadata ({error})") from None
    record = dict(metadata.get(_METADATA_KEY, {}))
    record.setdefault("minari", {k: metadata.get(k) for k in ("ref_min_score", "ref_max_score", "total_steps", "total_episodes")})
    return record


def read_built(path: Path, name: str | None = None) -> Dataset:
    """Read a dataset this module built (a Minari dataset directory) without MINARI_DATASETS_PATH."""
    from minari import MinariDataset

    name = name or path.name
    try:
        source = MinariDataset(path / "data")
    except Exception as error:  # minari raises ValueError, KeyError, OSError, ...
        raise DatasetError(f"{path}: cannot read the dataset ({error})") from None
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next", "act", "rew", "term", "trunc")}
    for episode in source.iterate_episodes():
        steps = len(episode.rewards)
        terminals = np.asarray(episode.terminations, dtype=bool)
        timeouts = np.asarray(episode.truncations, dtype=bool).copy()
        if not (terminals[-1] or timeouts[-1]):
            timeouts[-1] = True  # keep the episode boundary when flattening
        columns["obs"].append(episode.observations[:steps])
        columns["next"].append(episode.observations[1 : steps + 1])
        columns["act"].append(episode.actions)
        columns["rew"].append(episode.rewards)
        columns["term"].append(terminals)
        columns["trunc"].append(timeouts)
    arrays = {key: np.concatenate(value) for key, value in columns.items()}
    record = read_record(path)
    minari_metadata = source.storage.metadata
    reference = ReferenceScores(float(minari_metadata["ref_min_score"]), float(minari_metadata["ref_max_score"]))
    env_spec = source.env_spec
    return Dataset(
        observations=arrays["obs"],
        actions=arrays["act"],
        rewards=arrays["rew"],
        next_observations=arrays["next"],
        terminals=arrays["term"],
        timeouts=arrays["trunc"],
        env_id=record.get("env_id") or (env_spec.id if env_spec is not None else None),
        name=name,
        reference=reference,
        metadata={**record, "path": str(path)},
    )


def load(name: str, **make_kwargs) -> Dataset:
    """The dataset ``name``, building it first (with a progress bar) if it is not built yet."""
    path = make(name, **make_kwargs)
    return read_built(path, name)
