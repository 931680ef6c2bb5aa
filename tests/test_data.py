"""Tests for sparse_reg.data: loaders, subsampling/splits, reference scores."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest

from sparse_reg.data import (
    D4RL_REFERENCE_SCORES,
    Dataset,
    DatasetError,
    ReferenceScores,
    load_dataset,
    load_hdf5,
    load_minari,
    load_npz,
    save_hdf5,
    save_npz,
    split_train_validation,
    subsample,
)
from sparse_reg.data.reference import GYMNASIUM_ENV_FOR_FAMILY, env_family

LENGTHS = [5, 3, 8, 4, 6, 2, 7, 5]  # 40 transitions


def make_dataset(lengths=LENGTHS, terminal_episodes=(1, 4), last_flagged=True, **kwargs) -> Dataset:
    """Episodes of the given lengths with recognisable rows: observations[i] = (i, -i).

    Episodes listed in ``terminal_episodes`` end with a terminal, the others with a timeout
    (the very last one carries no flag when ``last_flagged`` is False).
    """
    n = sum(lengths)
    rows = np.arange(n, dtype=np.float32)
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    ends = np.cumsum(lengths) - 1
    for k, end in enumerate(ends):
        if k in terminal_episodes:
            terminals[end] = True
        else:
            timeouts[end] = True
    if not last_flagged:
        terminals[-1] = timeouts[-1] = False
    return Dataset(
        observations=np.stack([rows, -rows], 1),
        actions=(rows * 10)[:, None],
        rewards=rows + 0.5,
        next_observations=np.stack([rows + 1, -rows - 1], 1),
        terminals=terminals,
        timeouts=timeouts,
        **{"name": "toy", **kwargs},
    )


def source_rows(dataset: Dataset) -> np.ndarray:
    return dataset.observations[:, 0].astype(int)


def assert_same_arrays(a: Dataset, b: Dataset) -> None:
    for key, value in a.arrays().items():
        other = b.arrays()[key]
        assert value.dtype == other.dtype, key
        np.testing.assert_array_equal(value, other, err_msg=key)


# --------------------------------------------------------------------------- reference scores


def test_reference_scores_and_families():
    assert D4RL_REFERENCE_SCORES["hopper"] == ReferenceScores(-20.272305, 3234.3)
    assert D4RL_REFERENCE_SCORES["halfcheetah"] == ReferenceScores(-280.178953, 12135.0)
    assert D4RL_REFERENCE_SCORES["walker2d"] == ReferenceScores(1.629008, 4592.3)
    assert env_family("HalfCheetah-v5") == "halfcheetah"
    assert env_family("Walker2d-v5") == "walker2d"
    assert env_family("hopper-medium-v2") == "hopper"
    assert env_family("mujoco/hopper/expert-v0") == "hopper"
    assert env_family("Ant-v5") is None
    assert env_family("grasshopper-v1") is None
    assert GYMNASIUM_ENV_FOR_FAMILY["walker2d"] == "Walker2d-v5"
    assert D4RL_REFERENCE_SCORES["hopper"].normalize(3234.3) == pytest.approx(100.0)


# --------------------------------------------------------------------------- npz / hdf5


@pytest.mark.parametrize("fmt", ["npz", "hdf5"])
def test_file_round_trip(tmp_path, fmt):
    dataset = make_dataset(env_id="Walker2d-v5", reference=ReferenceScores(-3.0, 7.5))
    path = tmp_path / f"my_data.{fmt}"
    (save_npz if fmt == "npz" else save_hdf5)(dataset, path)
    loaded = (load_npz if fmt == "npz" else load_hdf5)(path)
    assert_same_arrays(dataset, loaded)
    assert loaded.name == "my_data"
    assert loaded.env_id == "Walker2d-v5"
    assert loaded.reference == ReferenceScores(-3.0, 7.5)
    via_dispatch = load_dataset(str(path))
    assert_same_arrays(dataset, via_dispatch)


def test_round_trip_without_env_id(tmp_path):
    dataset = make_dataset()
    save_npz(dataset, tmp_path / "plain.npz")
    save_hdf5(dataset, tmp_path / "plain.hdf5")
    for loaded in (load_npz(tmp_path / "plain.npz"), load_hdf5(tmp_path / "plain.hdf5")):
        assert loaded.env_id is None and loaded.reference is None
        assert_same_arrays(dataset, loaded)
    with np.load(tmp_path / "plain.npz", allow_pickle=False) as f:  # no pickled objects inside
        assert set(f.files) == set(dataset.arrays())


def write_d4rl_hdf5(path, **arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


def test_hdf5_without_next_observations_follows_qlearning_dataset(tmp_path):
    # rows:        0  1  2 | 3  4 | 5 | 6  7  8
    # episode end:       T/O   term T/O       (last row, no flag)
    obs = np.stack([np.arange(9.0), np.arange(9.0) * 2], 1)
    terminals = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0], bool)
    timeouts = np.array([0, 0, 1, 0, 0, 1, 0, 0, 0], bool)
    path = tmp_path / "hopper-medium-v2.hdf5"
    write_d4rl_hdf5(
        path,
        observations=obs,
        actions=np.arange(9.0)[:, None],
        rewards=np.arange(9.0) / 10,
        terminals=terminals,
        timeouts=timeouts,
    )
    loaded = load_hdf5(path)
    kept = [0, 1, 3, 4, 6, 7]  # timeout rows 2, 5 and the last row 8 have no stored successor
    np.testing.assert_array_equal(loaded.observations, obs[kept].astype(np.float32))
    np.testing.assert_array_equal(loaded.next_observations, obs[[1, 2, 4, 5, 7, 8]].astype(np.float32))
    np.testing.assert_array_equal(loaded.actions[:, 0], np.array(kept, np.float32))
    np.testing.assert_array_equal(loaded.rewards, (np.array(kept) / 10).astype(np.float32))
    np.testing.assert_array_equal(loaded.terminals, [0, 0, 0, 1, 0, 0])
    # Row 1 now closes episode A and row 7 closes episode D; row 4 stays a terminal.
    np.testing.assert_array_equal(loaded.timeouts, [0, 1, 0, 0, 0, 1])
    assert [(s.start, s.stop) for s in loaded.episode_slices()] == [(0, 2), (2, 4), (4, 6)]
    assert loaded.env_id == "Hopper-v5"
    assert loaded.reference == D4RL_REFERENCE_SCORES["hopper"]
    assert loaded.name == "hopper-medium-v2"


@pytest.mark.parametrize(
    "file_name, env_id",
    [
        ("halfcheetah_expert-v2.hdf5", "HalfCheetah-v5"),
        ("hopper-medium-v2.hdf5", "Hopper-v5"),
        ("walker2d-medium-replay-v2.h5", "Walker2d-v5"),
        ("Walker2d_random-v2.npz", "Walker2d-v5"),
        ("my_hopper_data.hdf5", None),
    ],
)
def test_env_id_inferred_from_d4rl_file_names(tmp_path, file_name, env_id):
    path = tmp_path / file_name
    (save_npz if file_name.endswith(".npz") else save_hdf5)(make_dataset(), path)
    loaded = load_dataset(str(path))
    assert loaded.env_id == env_id
    assert loaded.reference == (D4RL_REFERENCE_SCORES[env_family(env_id)] if env_id else None)


def test_env_id_argument_and_file_attribute_win_over_file_name(tmp_path):
    path = tmp_path / "hopper-medium-v2.hdf5"
    save_hdf5(make_dataset(), path)
    assert load_hdf5(path, env_id="Walker2d-v5").env_id == "Walker2d-v5"
    assert load_hdf5(path, env_id="Walker2d-v5").reference == D4RL_REFERENCE_SCORES["walker2d"]
    with h5py.File(path, "a") as f:
        f.create_group("metadata").create_dataset("env_id", data="HalfCheetah-v5")
    assert load_hdf5(path).env_id == "HalfCheetah-v5"
    save_hdf5(make_dataset(env_id="Ant-v5"), path)
    assert load_hdf5(path).env_id == "Ant-v5"
    assert load_hdf5(path).reference is None
    assert load_hdf5(path, env_id="Hopper-v5").env_id == "Hopper-v5"
    npz_path = tmp_path / "walker2d-expert-v2.npz"
    save_npz(make_dataset(env_id="Ant-v5"), npz_path)
    assert load_npz(npz_path).env_id == "Ant-v5"
    assert load_npz(npz_path, env_id="Hopper-v5").env_id == "Hopper-v5"


def test_corrupt_hdf5_raises_dataset_error(tmp_path):
    path = tmp_path / "broken.hdf5"
    path.write_bytes(b"this is not an HDF5 file" * 10)
    with pytest.raises(DatasetError) as info:
        load_hdf5(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DatasetError, match="broken"):
        load_dataset(str(path))


def test_corrupt_npz_raises_dataset_error(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(DatasetError, match="broken.npz"):
        load_npz(path)


def test_missing_key_raises_dataset_error(tmp_path):
    path = tmp_path / "no_rewards.hdf5"
    zeros = np.zeros(4)
    write_d4rl_hdf5(path, observations=np.zeros((4, 2)), actions=zeros[:, None], terminals=zeros, timeouts=zeros)
    with pytest.raises(DatasetError, match=r"no_rewards.hdf5: missing key\(s\) \['rewards'\]"):
        load_hdf5(path)
    path = tmp_path / "no_timeouts.npz"
    np.savez(path, observations=np.zeros((4, 2)), actions=np.zeros((4, 1)), rewards=np.zeros(4), terminals=np.zeros(4))
    with pytest.raises(DatasetError, match="timeouts"):
        load_npz(path)


def test_missing_file_raises_dataset_error(tmp_path):
    for name in ("nowhere.hdf5", "nowhere.npz"):
        with pytest.raises(DatasetError, match="nowhere"):
            load_dataset(str(tmp_path / name))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fmt", ["npz", "hdf5"])
def test_non_finite_values_raise(tmp_path, bad_value, fmt):
    arrays = make_dataset().arrays()
    arrays["rewards"] = arrays["rewards"].copy()
    arrays["rewards"][7] = bad_value
    path = tmp_path / f"bad.{fmt}"
    if fmt == "npz":
        np.savez(path, **arrays)
    else:
        write_d4rl_hdf5(path, **arrays)
    with pytest.raises(DatasetError, match=r"bad\..*rewards.*NaN/inf.*row 7"):
        load_dataset(str(path))


@pytest.mark.parametrize("fmt", ["npz", "hdf5"])
def test_mismatched_lengths_raise(tmp_path, fmt):
    arrays = make_dataset().arrays()
    arrays["actions"] = arrays["actions"][:-1]
    path = tmp_path / f"short.{fmt}"
    if fmt == "npz":
        np.savez(path, **arrays)
    else:
        write_d4rl_hdf5(path, **arrays)
    with pytest.raises(DatasetError, match="mismatched lengths"):
        load_dataset(str(path))


def test_load_dataset_unknown_name_lists_options(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    try:
        from sparse_reg.data import registry

        project_names = list(registry.known_names())
    except ImportError:
        project_names = []
    with pytest.raises(DatasetError) as info:
        load_dataset("no-such-dataset-xyz")
    message = str(info.value)
    assert message.startswith("unknown dataset 'no-such-dataset-xyz': not a file, not a project dataset (one of: ")
    assert "not a local Minari dataset" in message
    for name in project_names:
        assert name in message


# --------------------------------------------------------------------------- minari


def random_hopper_buffers(lengths, seed=0, unflagged=()):
    """Short Hopper-v5 episodes of random actions; episodes not terminated are truncated,
    except those listed in ``unflagged`` which end with neither flag."""
    import gymnasium as gym
    from minari.data_collector.episode_buffer import EpisodeBuffer

    env = gym.make("Hopper-v5")
    env.action_space.seed(seed)
    buffers = []
    for k, length in enumerate(lengths):
        obs, _ = env.reset(seed=seed + k)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        for t in range(length):
            action = env.action_space.sample()
            obs, reward, terminated, _, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terminations.append(bool(terminated))
            truncations.append(t == length - 1 and not terminated and k not in unflagged)
            if terminated:
                break
        buffers.append(
            EpisodeBuffer(
                observations=np.array(observations),
                actions=np.array(actions),
                rewards=rewards,
                terminations=terminations,
                truncations=truncations,
            )
        )
    env.close()
    return buffers


def create_minari(dataset_id, buffers, **kwargs):
    import minari

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # author/permalink/... recommendations
        minari.create_dataset_from_buffers(dataset_id=dataset_id, buffer=buffers, env="Hopper-v5", **kwargs)


def test_minari_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    buffers = random_hopper_buffers([4, 6, 3], unflagged=(1,))
    assert not (buffers[1].terminations[-1] or buffers[1].truncations[-1])
    create_minari("test/hopper/scored-v0", buffers, ref_min_score=-1.0, ref_max_score=2.0)
    create_minari("test/hopper/plain-v0", buffers)

    expected = {
        "observations": np.concatenate([b.observations[:-1] for b in buffers]),
        "next_observations": np.concatenate([b.observations[1:] for b in buffers]),
        "actions": np.concatenate([b.actions for b in buffers]),
        "rewards": np.concatenate([b.rewards for b in buffers]),
        "terminals": np.concatenate([b.terminations for b in buffers]),
        "timeouts": np.concatenate([b.truncations for b in buffers]),
    }
    expected["timeouts"][len(buffers[0].rewards) + len(buffers[1].rewards) - 1] = True  # closes episode 1
    loaded = load_minari("test/hopper/scored-v0")
    assert len(loaded) == sum(len(b.rewards) for b in buffers)
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded.arrays()[key], value.astype(loaded.arrays()[key].dtype), err_msg=key)
    assert [s.stop - s.start for s in loaded.episode_slices()] == [len(b.rewards) for b in buffers]
    assert loaded.env_id == "Hopper-v5"
    assert loaded.name == "test/hopper/scored-v0"
    assert loaded.reference == ReferenceScores(-1.0, 2.0)

    plain = load_dataset("test/hopper/plain-v0")
    assert_same_arrays(loaded, plain)
    assert plain.reference == D4RL_REFERENCE_SCORES["hopper"]

    with pytest.raises(DatasetError, match="test/hopper/missing-v0"):
        load_minari("test/hopper/missing-v0")
    with pytest.raises(DatasetError, match="test/hopper/plain-v0"):  # listed among local Minari datasets
        load_dataset("test/hopper/missing-v0")


# --------------------------------------------------------------------------- subsample


def episodes_as_source_rows(subset: Dataset) -> list[np.ndarray]:
    rows = source_rows(subset)
    return [rows[s] for s in subset.episode_slices()]


def expected_trajectory_rows(dataset: Dataset, size: int, seed: int) -> np.ndarray:
    """Independent re-statement of the rule: permuted whole episodes, the last cut."""
    episodes = dataset.episode_slices()
    order = np.random.default_rng(seed).permutation(len(episodes))
    rows = np.concatenate([np.arange(episodes[i].start, episodes[i].stop) for i in order])
    return rows[:size]


@pytest.mark.parametrize("size", [1, 5, 13, 39, 40])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_subsample_trajectories(size, seed):
    dataset = make_dataset()
    subset = subsample(dataset, size, seed)
    assert len(subset) == size
    rows = source_rows(subset)
    np.testing.assert_array_equal(rows, expected_trajectory_rows(dataset, size, seed))
    # Source episodes are kept whole, except the last one which is a prefix.
    source_episodes = {(s.start, s.stop) for s in dataset.episode_slices()}
    pieces = episodes_as_source_rows(subset)
    for piece in pieces[:-1]:
        assert (piece[0], piece[-1] + 1) in source_episodes
    last = pieces[-1]
    assert any(start == last[0] and last[-1] < stop for start, stop in source_episodes)
    # The last transition ends an episode: timeout, or the source's real terminal.
    assert subset.timeouts[-1] or (subset.terminals[-1] and dataset.terminals[rows[-1]])
    assert not (subset.timeouts[-1] and subset.terminals[-1])
    # Every other flag is copied from the source.
    np.testing.assert_array_equal(subset.terminals, dataset.terminals[rows])
    np.testing.assert_array_equal(subset.timeouts[:-1], dataset.timeouts[rows[:-1]])


def test_subsample_cut_episode_is_marked_timeout():
    dataset = make_dataset()  # episode 0: rows 0-4 (timeout); episode 1: rows 5-7 (terminal)
    order = np.random.default_rng(3).permutation(len(LENGTHS))
    first_length = LENGTHS[order[0]]
    subset = subsample(dataset, first_length - 1, seed=3)  # cut inside the first drawn episode
    assert subset.timeouts[-1] and not subset.terminals[-1]
    assert not subset.timeouts[:-1].any() and not subset.terminals.any()


def test_subsample_is_deterministic_and_depends_on_seed():
    dataset = make_dataset()
    a, b = subsample(dataset, 17, seed=4), subsample(dataset, 17, seed=4)
    assert_same_arrays(a, b)
    subsets = {tuple(source_rows(subsample(dataset, 17, seed=s))) for s in range(5)}
    assert len(subsets) > 1


def test_subsample_first_mode_equals_first_rows():
    dataset = make_dataset()
    subset = subsample(dataset, 10, seed=123, mode="first")  # rows 0-9: episodes 0, 1 and 2 rows of episode 2
    expected = dataset.select(np.arange(10))
    np.testing.assert_array_equal(subset.timeouts, np.r_[expected.timeouts[:-1], True])
    assert not expected.timeouts[-1]
    assert_same_arrays(subset.replace(timeouts=expected.timeouts), expected)
    assert_same_arrays(subsample(dataset, 10, seed=0, mode="first"), subset)
    # Ending exactly at a real terminal (row 7 ends episode 1) keeps the terminal, adds no timeout.
    exact = subsample(dataset, 8, seed=0, mode="first")
    assert exact.terminals[-1] and not exact.timeouts[-1]
    assert_same_arrays(exact, dataset.select(np.arange(8)))


def test_unflagged_last_source_row_gets_timeout_when_moved():
    dataset = make_dataset(last_flagged=False)
    # Find a seed that draws the last episode (rows 35-39) before another one.
    for seed in range(50):
        rows = expected_trajectory_rows(dataset, 40, seed)
        position = int(np.flatnonzero(rows == 39)[0])
        if position < 39:
            break
    subset = subsample(dataset, 40, seed)
    assert subset.timeouts[position]
    drawn_lengths = [LENGTHS[i] for i in np.random.default_rng(seed).permutation(8)]
    assert [len(p) for p in episodes_as_source_rows(subset)] == drawn_lengths


@pytest.mark.parametrize("size", [0, -3, 41])
def test_subsample_bad_size_raises(size):
    with pytest.raises(DatasetError) as info:
        subsample(make_dataset(), size, seed=0)
    if size > 0:
        assert str(info.value) == "requested size 41 but dataset toy has only 40 transitions"


def test_unknown_mode_raises():
    with pytest.raises(DatasetError, match="mode"):
        subsample(make_dataset(), 5, seed=0, mode="random")


# --------------------------------------------------------------------------- train / validation


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_validation_disjoint_whole_episodes(seed):
    dataset = make_dataset()
    train, val, train_idx, val_idx = split_train_validation(dataset, 12, 10, seed, return_indices=True)
    assert len(train) == 12 and len(val) == 10
    np.testing.assert_array_equal(source_rows(train), train_idx)
    np.testing.assert_array_equal(source_rows(val), val_idx)
    assert not set(train_idx) & set(val_idx)
    # No validation row shares a source episode with any training row.
    episode_of = np.repeat(np.arange(len(LENGTHS)), LENGTHS)
    assert not set(episode_of[train_idx]) & set(episode_of[val_idx])
    # Validation continues the same seeded order after the training episodes.
    order = np.random.default_rng(seed).permutation(len(LENGTHS))
    drawn = list(dict.fromkeys(episode_of[np.r_[train_idx, val_idx]]))
    assert drawn == list(order[: len(drawn)])
    # Whole episodes, the last possibly cut, and marked as the end.
    pieces = episodes_as_source_rows(val)
    starts = np.cumsum([0] + LENGTHS)
    for piece in pieces[:-1]:
        assert piece[0] in starts and len(piece) == LENGTHS[episode_of[piece[0]]]
    assert val.timeouts[-1] or val.terminals[-1]
    assert_same_arrays(train, subsample(dataset, 12, seed))


def test_validation_capped_by_availability():
    dataset = make_dataset()
    train, val, train_idx, val_idx = split_train_validation(dataset, 12, 1000, seed=5, return_indices=True)
    episode_of = np.repeat(np.arange(len(LENGTHS)), LENGTHS)
    unused = set(range(len(LENGTHS))) - set(episode_of[train_idx])
    assert sorted(set(episode_of[val_idx])) == sorted(unused)
    assert len(val) == sum(LENGTHS[e] for e in unused)
    assert len(train) + len(val) <= len(dataset)


def test_validation_none_when_nothing_left():
    dataset = make_dataset()
    train, val = split_train_validation(dataset, 36, 10, seed=0, mode="first")  # cuts the last episode
    assert len(train) == 36 and val is None
    train, val = split_train_validation(dataset, 40, 10, seed=0)
    assert val is None
    train, val = split_train_validation(dataset, 5, 0, seed=0)
    assert val is None


def test_validation_first_mode_starts_after_cut_episode():
    dataset = make_dataset()
    # Training = rows 0-9 (episode 2, rows 8-15, cut after row 9); validation starts at row 16.
    train, val, train_idx, val_idx = split_train_validation(dataset, 10, 7, seed=0, mode="first", return_indices=True)
    np.testing.assert_array_equal(train_idx, np.arange(10))
    np.testing.assert_array_equal(val_idx, np.arange(16, 23))
    np.testing.assert_array_equal(val.timeouts, [0, 0, 0, 1, 0, 0, 1])  # episode 3 end, then the cut
    np.testing.assert_array_equal(val.terminals, np.zeros(7))


def test_split_bad_sizes_raise():
    with pytest.raises(DatasetError, match="requested size 50"):
        split_train_validation(make_dataset(), 50, 5, seed=0)
    with pytest.raises(DatasetError):
        split_train_validation(make_dataset(), 5, -1, seed=0)
