"""Built datasets on disk, in Minari's local format (``<data_dir>/<name>/data/...``): written
atomically (a hidden staging directory renamed into place when complete, so a half-written
dataset is never visible) and read back, with our build record in Minari's metadata, without
needing ``MINARI_DATASETS_PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .collect import quiet_mujoco_model_warnings
from .dataset import Dataset, DatasetError, ReferenceScores

METADATA_KEY = "sparse_reg"  # our entry in Minari's metadata.json


def is_built(path: Path) -> bool:
    # The directory only ever appears by an atomic rename of a complete build.
    return (path / "data" / "metadata.json").is_file()


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


def write_atomically(path: Path, dataset: Dataset, record: dict, reference: ReferenceScores, force: bool) -> None:
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
        created.storage.update_metadata({METADATA_KEY: record})
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


def read_record(path: Path) -> dict:
    """Our build record (seed, size, references, provenance) from a built dataset's metadata."""
    try:
        metadata = json.loads((path / "data" / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read dataset metadata ({error})") from None
    record = dict(metadata.get(METADATA_KEY, {}))
    record.setdefault("minari", {k: metadata.get(k) for k in ("ref_min_score", "ref_max_score", "total_steps", "total_episodes")})
    return record


def read_built(path: Path, name: str | None = None) -> Dataset:
    """Read a dataset this module built (a Minari dataset directory) without MINARI_DATASETS_PATH."""
    from minari import MinariDataset

    name = name or path.name
    try:
        source = MinariDataset(path / "data")
    except Exception as error:  # noqa: BLE001 - minari raises ValueError, KeyError, OSError, ...
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
