"""Reading and writing datasets: D4RL-style HDF5, NumPy .npz, and locally stored Minari datasets.

All loaders return a validated :class:`Dataset` with ``name`` (file stem or dataset id),
``env_id`` and ``reference`` set when they are known. Any problem with the data (unreadable
file, missing key, NaN/inf, mismatched lengths) is reported as a one-line :class:`DatasetError`.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import h5py
import numpy as np

from .dataset import ARRAY_FIELDS, Dataset, DatasetError, ReferenceScores
from .reference import GYMNASIUM_ENV_FOR_FAMILY, env_family, reference_scores_for

HDF5_SUFFIXES = (".hdf5", ".h5")
NPZ_SUFFIXES = (".npz",)
REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
# Names under which a file may record its environment id (file attribute or metadata entry).
ENV_ID_KEYS = ("env_id", "env_name", "env")
REFERENCE_KEYS = ("reference_random", "reference_expert")


# --------------------------------------------------------------------------- shared helpers


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _as_str(value) -> str:
    value = np.asarray(value).item() if isinstance(value, np.ndarray) else value
    return value.decode() if isinstance(value, bytes) else str(value)


def env_id_from_file_name(path: str | os.PathLike) -> str | None:
    """The gymnasium id for a D4RL-like file name (``hopper-medium-v2.hdf5`` -> ``Hopper-v5``).

    Only names *starting* with a family name count, so that an arbitrary user file is not
    silently given MuJoCo reference scores.
    """
    stem = Path(path).stem.lower()
    family = env_family(stem)
    return GYMNASIUM_ENV_FOR_FAMILY[family] if family and stem.startswith(family) else None


def _next_observations_from_rows(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add ``next_observations`` to D4RL arrays that lack them, as D4RL's ``qlearning_dataset`` does.

    ``next_observations[i] = observations[i + 1]``. Row ``i`` is dropped when that row is not its
    successor: when ``timeouts[i]`` is set (the next row starts a new episode and the true final
    observation was not stored) and for the very last row. The row before a dropped one becomes
    the last transition of its episode, so it is marked ``timeouts=True`` unless it already ends an
    episode. For a terminal row ``observations[i + 1]`` belongs to the next episode, exactly as in
    D4RL; that is harmless because terminal transitions are never bootstrapped.
    """
    timeouts = arrays["timeouts"]
    keep = ~timeouts.copy()
    keep[-1] = False
    dropped = np.flatnonzero(~keep)
    previous = dropped[dropped > 0] - 1
    # The previous row closes the (shortened) episode, unless it already closed its own episode
    # (then the dropped row was a one-step episode that disappears entirely).
    previous = previous[keep[previous] & ~arrays["terminals"][previous]]
    new_timeouts = timeouts.copy()
    new_timeouts[previous] = True
    out = {name: value[keep] for name, value in arrays.items() if name != "timeouts"}
    out["timeouts"] = new_timeouts[keep]
    out["next_observations"] = arrays["observations"][np.flatnonzero(keep) + 1]
    return out


def _build_dataset(
    arrays: dict[str, np.ndarray],
    source: str,
    name: str,
    env_id: str | None,
    reference: ReferenceScores | None,
    metadata: dict | None = None,
) -> Dataset:
    """Check the raw arrays, fill in what is missing and construct the dataset."""
    try:
        arrays = {key: np.asarray(value) for key, value in arrays.items()}
        for key in ("rewards", "terminals", "timeouts"):
            # Some writers store (N, 1) columns.
            if key in arrays and arrays[key].ndim == 2 and arrays[key].shape[1] == 1:
                arrays[key] = arrays[key][:, 0]
        lengths = {key: len(value) for key, value in arrays.items()}
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{source}: malformed arrays ({_one_line(error)})") from None
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"{source}: mismatched lengths {lengths}")
    if lengths["rewards"] == 0:
        raise DatasetError(f"{source}: no transitions")
    if "timeouts" not in arrays:
        if "next_observations" not in arrays:
            raise DatasetError(
                f"{source}: missing key 'timeouts' (needed to find episode ends without next_observations)"
            )
        arrays["timeouts"] = np.zeros(len(arrays["rewards"]), dtype=bool)
    arrays["terminals"] = arrays["terminals"].astype(bool)
    arrays["timeouts"] = arrays["timeouts"].astype(bool)
    if "next_observations" not in arrays:
        arrays = _next_observations_from_rows(arrays)
        if len(arrays["rewards"]) == 0:
            raise DatasetError(f"{source}: no transition left after building next_observations")
    reference_source = "file" if reference is not None else None
    if reference is None:
        reference = reference_scores_for(env_id)
        reference_source = "d4rl" if reference is not None else None
    try:
        return Dataset(
            **{key: arrays[key] for key in ARRAY_FIELDS},
            env_id=env_id,
            name=name,
            reference=reference,
            metadata=dict(metadata or {}, source=source, reference_source=reference_source),
        )
    except DatasetError as error:
        message = _one_line(error).removeprefix(f"{name}: ")  # the source already names it
        raise DatasetError(f"{source}: {message}") from None
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{source}: malformed arrays ({_one_line(error)})") from None


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")


def _reference_from(values: dict) -> ReferenceScores | None:
    if all(key in values for key in REFERENCE_KEYS):
        return ReferenceScores(float(values["reference_random"]), float(values["reference_expert"]))
    return None


# --------------------------------------------------------------------------- HDF5


def load_hdf5(path: str | os.PathLike, env_id: str | None = None) -> Dataset:
    """Load a D4RL-layout HDF5 file (top-level ``observations``, ``actions``, ``rewards``, ...).

    Without ``next_observations`` they are rebuilt from consecutive rows (see
    :func:`_next_observations_from_rows`). The env id is the argument, else one recorded in the
    file (attribute or ``metadata/`` entry), else inferred from a D4RL-like file name.
    """
    path = Path(path)
    _check_file(path)
    try:
        with h5py.File(path, "r") as file:
            missing = [key for key in REQUIRED_KEYS if key not in file]
            if missing:
                raise DatasetError(f"{path}: missing key(s) {missing} (found {sorted(file.keys())})")
            arrays = {}
            for key in ARRAY_FIELDS:
                if key in file:
                    if not isinstance(file[key], h5py.Dataset):
                        raise DatasetError(f"{path}: '{key}' is a group, expected an array")
                    arrays[key] = file[key][()]
            recorded = dict(file.attrs)
            if "metadata" in file and isinstance(file["metadata"], h5py.Group):
                for key, item in file["metadata"].items():
                    if isinstance(item, h5py.Dataset) and item.shape == ():
                        recorded.setdefault(key, item[()])
    except OSError as error:
        raise DatasetError(f"{path}: cannot read HDF5 file ({_one_line(error)})") from None
    file_env_id = next((_as_str(recorded[key]) for key in ENV_ID_KEYS if key in recorded), None)
    env_id = env_id or file_env_id or env_id_from_file_name(path)
    return _build_dataset(arrays, str(path), path.stem, env_id, _reference_from(recorded))


def save_hdf5(dataset: Dataset, path: str | os.PathLike) -> None:
    """Write ``dataset`` in the D4RL layout, plus next_observations, env id and reference scores."""
    with h5py.File(path, "w") as file:
        for key, value in dataset.arrays().items():
            file.create_dataset(key, data=value)
        if dataset.env_id is not None:
            file.attrs["env_id"] = dataset.env_id
        if dataset.reference is not None:
            file.attrs["reference_random"] = dataset.reference.random
            file.attrs["reference_expert"] = dataset.reference.expert


# --------------------------------------------------------------------------- NPZ


def load_npz(path: str | os.PathLike, env_id: str | None = None) -> Dataset:
    """Load an .npz with the dataset keys; ``env_id``/``reference_*`` are optional 0-d entries."""
    path = Path(path)
    _check_file(path)
    try:
        with np.load(path, allow_pickle=False) as file:
            values = {key: file[key] for key in file.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetError(f"{path}: cannot read .npz file ({_one_line(error)})") from None
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise DatasetError(f"{path}: missing key(s) {missing} (found {sorted(values)})")
    file_env_id = _as_str(values["env_id"]) if "env_id" in values else None
    env_id = env_id or file_env_id or env_id_from_file_name(path)
    arrays = {key: values[key] for key in ARRAY_FIELDS if key in values}
    return _build_dataset(arrays, str(path), path.stem, env_id, _reference_from(values))


def save_npz(dataset: Dataset, path: str | os.PathLike) -> None:
    """Write ``dataset`` to exactly ``path`` (np.savez would append .npz to a str path without it)."""
    extras = {}
    if dataset.env_id is not None:
        extras["env_id"] = np.array(dataset.env_id)
    if dataset.reference is not None:
        extras["reference_random"] = np.array(dataset.reference.random, dtype=np.float64)
        extras["reference_expert"] = np.array(dataset.reference.expert, dtype=np.float64)
    with open(path, "wb") as file:
        np.savez(file, **dataset.arrays(), **extras)


# --------------------------------------------------------------------------- Minari


def _minari_root() -> Path:
    """Minari's local dataset directory (same rule as minari, without creating it)."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def local_minari_ids() -> list[str]:
    """Ids of the locally stored Minari datasets; never touches the network."""
    if not _minari_root().is_dir():
        return []
    try:
        import minari
    except ImportError:
        return []
    return sorted(minari.list_local_datasets())


def load_minari(dataset_id: str, env_id: str | None = None) -> Dataset:
    """Flatten a locally stored Minari dataset into transitions (never downloads).

    Each episode of T steps stores T + 1 observations: ``observations[:-1]`` become the
    observations and ``observations[1:]`` the next observations. The last step of every episode is
    marked ``timeouts=True`` if Minari recorded neither a termination nor a truncation there, so
    episode boundaries survive the flattening.
    """
    try:
        import minari

        source = minari.load_dataset(dataset_id, download=False)
    except ImportError as error:
        raise DatasetError(f"minari dataset '{dataset_id}': minari is not installed ({_one_line(error)})") from None
    except Exception as error:  # noqa: BLE001 - minari raises FileNotFoundError, ValueError, KeyError, OSError, ...
        raise DatasetError(f"minari dataset '{dataset_id}': cannot load it locally ({_one_line(error)})") from None

    columns: dict[str, list[np.ndarray]] = {key: [] for key in ARRAY_FIELDS}
    for episode in source.iterate_episodes():
        observations = episode.observations
        if not isinstance(observations, np.ndarray) or not isinstance(episode.actions, np.ndarray):
            raise DatasetError(f"minari dataset '{dataset_id}': only flat (Box) observations and actions are supported")
        steps = len(episode.rewards)
        if len(observations) != steps + 1:
            raise DatasetError(
                f"minari dataset '{dataset_id}': episode {episode.id} has {len(observations)} observations "
                f"for {steps} steps"
            )
        terminals = np.asarray(episode.terminations, dtype=bool)
        timeouts = np.asarray(episode.truncations, dtype=bool).copy()
        if steps and not (terminals[-1] or timeouts[-1]):
            timeouts[-1] = True
        columns["observations"].append(observations[:-1].reshape(steps, -1))
        columns["next_observations"].append(observations[1:].reshape(steps, -1))
        columns["actions"].append(episode.actions.reshape(steps, -1))
        columns["rewards"].append(np.asarray(episode.rewards))
        columns["terminals"].append(terminals)
        columns["timeouts"].append(timeouts)
    if not columns["rewards"]:
        raise DatasetError(f"minari dataset '{dataset_id}': no episodes")
    arrays = {key: np.concatenate(value) for key, value in columns.items()}

    metadata = source.storage.metadata
    spec = source.env_spec
    env_id = env_id or (spec.id if spec is not None else None)
    reference = None
    if metadata.get("ref_min_score") is not None and metadata.get("ref_max_score") is not None:
        reference = ReferenceScores(float(metadata["ref_min_score"]), float(metadata["ref_max_score"]))
    elif env_id is None:
        reference = reference_scores_for(dataset_id)  # e.g. "mujoco/hopper/expert-v0"
    return _build_dataset(arrays, f"minari:{dataset_id}", dataset_id, env_id, reference)


# --------------------------------------------------------------------------- dispatch


def _project_dataset_names():
    """The project's named datasets (``sparse_reg.data.registry``), or none if it is not available."""
    try:
        from . import registry
    except ImportError:
        return None, []
    return registry, list(registry.known_names())


def load_dataset(spec: str, env_id: str | None = None) -> Dataset:
    """Load a dataset from a file path, a project dataset name, or a local Minari dataset id."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return load_hdf5(path, env_id)
    if suffix in NPZ_SUFFIXES:
        return load_npz(path, env_id)
    if path.is_file():
        expected = ", ".join(HDF5_SUFFIXES + NPZ_SUFFIXES)
        raise DatasetError(f"{spec}: unsupported file type '{suffix}' (expected {expected})")

    registry, names = _project_dataset_names()
    if spec in names:
        dataset = registry.load(spec)
        return dataset.replace(env_id=env_id) if env_id else dataset

    minari_ids = local_minari_ids()
    if spec in minari_ids:
        return load_minari(spec, env_id)

    raise DatasetError(
        f"unknown dataset '{spec}': not a file, "
        f"not a project dataset (one of: {', '.join(names) or 'none'}), "
        f"not a local Minari dataset ({', '.join(minari_ids) or f'none in {_minari_root()}'})"
    )
