"""Building the project's datasets: collection, replay schedule, Minari storage, registry.

Everything runs on Hopper-v5 (cheap steps, and random policies fall over, so episodes end both
by termination and by truncation) with tiny random behaviour policies and a stand-in for the
shipped true-buffer prefix (``medium_replay.npz``) written into a temporary "policies"
directory, short episodes and a few hundred transitions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from sparse_reg.data import loaders, minari_storage, registry, replay_buffer, shipped_policies
from sparse_reg.data.behaviour_policy import BehaviourPolicy
from sparse_reg.data.collect import (
    Segment,
    behaviour_policy_fn,
    collect_rollouts,
    collect_schedule,
    random_policy_return,
)
from sparse_reg.data.dataset import DatasetError
from sparse_reg.data.reference import D4RL_REFERENCE_SCORES

ENV_ID = "Hopper-v5"
OBS_DIM, ACTION_DIM = 11, 3
EXPERT_RETURN = 1234.5
SMALL = dict(n_envs=4, max_episode_steps=30, random_episodes=3, progress=False)
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def tiny_policy(seed: int, metadata: dict | None = None, constant_action: float | None = None) -> BehaviourPolicy:
    """A behaviour policy of the shipped architecture with random (or constant-output) weights."""
    rng = np.random.default_rng(seed)
    widths = (OBS_DIM, 16, 16)
    hidden = tuple(
        (rng.normal(0, 0.5, (a, b)).astype(np.float32), rng.normal(0, 0.1, b).astype(np.float32))
        for a, b in zip(widths[:-1], widths[1:])
    )
    norms = tuple(
        (np.zeros(w, np.float32), np.ones(w, np.float32), np.ones(w, np.float32), np.zeros(w, np.float32))
        for w in widths
    )
    mean_kernel = rng.normal(0, 0.5, (16, ACTION_DIM)).astype(np.float32)
    mean_bias = np.zeros(ACTION_DIM, np.float32)
    log_std_bias = np.full(ACTION_DIM, -1.0, np.float32)
    if constant_action is not None:
        # Zero kernel and a (near) zero std: every action is tanh(constant_action), so the
        # transitions of each checkpoint can be recognised in the data.
        mean_kernel[:] = 0.0
        mean_bias[:] = constant_action
        log_std_bias[:] = -20.0
    return BehaviourPolicy(
        hidden=hidden,
        norms=norms,
        mean_head=(mean_kernel, mean_bias),
        log_std_head=(np.zeros((16, ACTION_DIM), np.float32), log_std_bias),
        metadata=metadata or {},
    )


REPLAY_CONSTANTS = {100: 0.3, 200: -0.6, 300: 0.9}  # step -> constant pre-tanh action
MEDIUM_STEP = 200


def fake_buffer(n: int, seed: int = 4, max_episode_steps: int = 30) -> dict[str, np.ndarray]:
    """A stand-in for a training run's replay buffer: one environment, time order, float64
    observations (as the trainer saves them); the last episode may be cut without a flag."""
    run = collect_rollouts(behaviour_policy_fn(tiny_policy(9)), ENV_ID, n + 1, seed=seed, n_envs=1,
                           max_episode_steps=max_episode_steps)  # fmt: skip
    arrays = {key: value[:n] for key, value in run.arrays().items()}  # drop one: the cut is unflagged
    for key in ("observations", "next_observations"):
        arrays[key] = arrays[key].astype(np.float64)
    return arrays


def write_policies(root: Path, family: str = "hopper") -> Path:
    """A shipped-policies dir: expert/medium random policies, replay checkpoints 100/200/300 and
    a medium_replay.npz of MEDIUM_STEP transitions (as the ship script writes it)."""
    directory = root / family
    (directory / "replay").mkdir(parents=True)
    tiny_policy(1).save(directory / "expert.npz")
    tiny_policy(2).save(directory / "medium.npz")
    for step, constant in REPLAY_CONSTANTS.items():
        tiny_policy(step, constant_action=constant).save(directory / "replay" / f"step_{step:07d}.npz")
    prefix, cut = replay_buffer.buffer_prefix(fake_buffer(MEDIUM_STEP), MEDIUM_STEP)
    np.savez_compressed(directory / shipped_policies.MEDIUM_REPLAY_FILE, **prefix)
    provenance = {
        "family": family,
        "expert": {"file": "expert.npz", "step": 300, "mean_return": EXPERT_RETURN},
        "medium": {"file": "medium.npz", "step": MEDIUM_STEP, "mean_return": 400.0},
        "medium_replay": {"file": shipped_policies.MEDIUM_REPLAY_FILE, "transitions": MEDIUM_STEP, "last_episode_cut": cut},
        "replay": {"every": 100, "steps": sorted(REPLAY_CONSTANTS)},
    }
    (directory / "provenance.json").write_text(json.dumps(provenance))
    return root


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Point the registry at a temporary data dir and a temporary policies dir."""
    data, policies = tmp_path / "datasets", write_policies(tmp_path / "policies")
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(data))
    monkeypatch.setenv(shipped_policies.POLICY_DIR_ENV, str(policies))
    monkeypatch.delenv("MINARI_DATASETS_PATH", raising=False)
    return data, policies


def assert_same(a, b) -> None:
    for key, value in a.arrays().items():
        np.testing.assert_array_equal(value, getattr(b, key), err_msg=key)


def is_reset_state(obs: np.ndarray) -> np.ndarray:
    """Hopper resets to z = 1.25, everything else 0, plus uniform noise of scale 5e-3."""
    return (np.abs(obs[..., 0] - 1.25) <= 5e-3 + 1e-6) & (np.abs(obs[..., 1:]).max(-1) <= 5e-3 + 1e-6)


# --------------------------------------------------------------------------- collection


def test_collected_transitions_are_consistent():
    policy = behaviour_policy_fn(tiny_policy(0))
    data = collect_rollouts(policy, ENV_ID, 500, seed=3, n_envs=3, max_episode_steps=25)
    assert len(data) == 500
    slices = data.episode_slices()
    ends = np.flatnonzero(data.terminals | data.timeouts) + 1
    assert ends[-1] == 500 and len(ends) == len(slices)  # every episode closed by a flag
    assert data.terminals.any() and data.timeouts.any()
    for rows in slices:
        # Chained observations inside an episode, a fresh reset state at its start.
        np.testing.assert_array_equal(data.next_observations[rows][:-1], data.observations[rows][1:])
        assert is_reset_state(data.observations[rows.start])
        assert rows.stop - rows.start <= 25
        # Only the last transition ends the episode.
        assert not (data.terminals[rows][:-1] | data.timeouts[rows][:-1]).any()
    # Every episode starts from its own reset state (environments are seeded differently).
    starts = data.observations[[rows.start for rows in slices]]
    assert len(np.unique(starts, axis=0)) == len(slices)
    # Truncations happen at the time limit, except for the (at most n_envs) episodes cut at the end.
    lengths = np.array([r.stop - r.start for r in slices])
    truncated_early = data.timeouts[ends - 1] & ~data.terminals[ends - 1] & (lengths < 25)
    assert truncated_early.sum() == data.metadata["cut_episodes"] <= 3
    # Terminal flags agree with Hopper's health check on the next observation; no fake transitions.
    z, angle = data.next_observations[:, 0], data.next_observations[:, 1]
    unhealthy = (z <= 0.7) | (np.abs(angle) >= 0.2)
    np.testing.assert_array_equal(data.terminals, unhealthy)


def test_collection_is_deterministic_in_the_seed():
    policy = behaviour_policy_fn(tiny_policy(0))
    a = collect_rollouts(policy, ENV_ID, 200, seed=5, n_envs=4, max_episode_steps=30)
    b = collect_rollouts(policy, ENV_ID, 200, seed=5, n_envs=4, max_episode_steps=30)
    c = collect_rollouts(policy, ENV_ID, 200, seed=6, n_envs=4, max_episode_steps=30)
    assert_same(a, b)
    assert not np.array_equal(a.observations, c.observations)
    assert not np.array_equal(a.actions, c.actions)
    assert random_policy_return(ENV_ID, 4, seed=1, max_episode_steps=30) == random_policy_return(
        ENV_ID, 4, seed=1, max_episode_steps=30
    )


def test_schedule_switches_policy_at_exact_transition_counts():
    # Boundaries (70, 150) are not multiples of n_envs=3, so a switch falls inside a round.
    segments = [
        Segment(0, None, "random"),
        Segment(70, behaviour_policy_fn(tiny_policy(1, constant_action=0.3)), "a"),
        Segment(150, behaviour_policy_fn(tiny_policy(2, constant_action=-0.6)), "b"),
    ]
    data = collect_schedule(segments, ENV_ID, 200, seed=0, n_envs=3, max_episode_steps=30)
    is_a = np.all(np.abs(data.actions - np.tanh(0.3)) < 1e-6, axis=1)
    is_b = np.all(np.abs(data.actions - np.tanh(-0.6)) < 1e-6, axis=1)
    assert (is_a.sum(), is_b.sum(), (~is_a & ~is_b).sum()) == (80, 50, 70)
    assert [s["end"] - s["start"] for s in data.metadata["segments"]] == [70, 80, 50]


# --------------------------------------------------------------------------- registry


def test_unknown_name_lists_the_valid_names(dirs):
    with pytest.raises(DatasetError) as error:
        registry.make("hopper-random-v0")
    message = str(error.value)
    assert len(registry.known_names()) == 12
    assert all(name in message for name in registry.known_names())
    with pytest.raises(DatasetError, match="walker2d-expert-replay-v0"):
        registry.load("walker2d-expert-v2")


def test_families_without_policies_cannot_be_built(dirs):
    rows = {row.name: row for row in registry.status()}
    assert rows["hopper-expert-v0"].can_build and rows["hopper-medium-replay-v0"].can_build
    assert not rows["halfcheetah-expert-v0"].can_build and not rows["walker2d-medium-replay-v0"].can_build
    assert not any(row.built for row in rows.values())
    with pytest.raises(DatasetError, match="no shipped policy for walker2d"):
        registry.make("walker2d-expert-v0", **SMALL)


def test_build_round_trips_through_project_loader_and_minari(dirs, monkeypatch):
    import minari

    data_dir, _ = dirs
    name = "hopper-expert-v0"
    path = registry.make(name, size=400, **SMALL)
    assert path == data_dir / name and {row.name for row in registry.status() if row.built} == {name}

    ours = loaders.load_dataset(name)  # the engine's entry point, no MINARI_DATASETS_PATH needed
    assert "MINARI_DATASETS_PATH" not in os.environ
    assert len(ours) == 400 and ours.env_id == ENV_ID and ours.name == name
    for rows in ours.episode_slices():
        np.testing.assert_array_equal(ours.next_observations[rows][:-1], ours.observations[rows][1:])

    # Reference scores: expert from the provenance, random measured at build time; D4RL kept too.
    assert ours.reference.expert == EXPERT_RETURN
    expected_random = random_policy_return(ENV_ID, 3, seed=registry._RANDOM_REFERENCE_SEED_OFFSET, max_episode_steps=30)
    assert ours.reference.random == pytest.approx(expected_random)
    d4rl = D4RL_REFERENCE_SCORES["hopper"]
    assert ours.metadata["d4rl_reference"] == {"random": d4rl.random, "expert": d4rl.expert}
    assert ours.metadata["seed"] == 0 and ours.metadata["size"] == 400

    # Plain Minari sees the same data when pointed at the cache dir.
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(data_dir))
    assert minari.list_local_datasets().keys() == {name}
    source = minari.load_dataset(name)
    assert source.total_steps == 400
    assert source.storage.metadata["ref_max_score"] == EXPERT_RETURN
    assert_same(loaders.load_minari(name), ours)


def test_build_is_deterministic_in_the_seed(tmp_path, dirs):
    _, policies = dirs
    builds = {}
    for label, seed in (("a", 0), ("b", 0), ("c", 1)):
        path = registry.make("hopper-medium-v0", seed=seed, size=150, root=tmp_path / label, policies=policies, **SMALL)
        builds[label] = minari_storage.read_built(path)
    assert_same(builds["a"], builds["b"])
    assert builds["a"].reference == builds["b"].reference
    assert not np.array_equal(builds["a"].observations, builds["c"].observations)


def test_rebuild_is_idempotent_and_checks_the_request(dirs):
    name = "hopper-medium-v0"
    path = registry.make(name, size=120, **SMALL)
    stamp = (path / "data" / "metadata.json").stat().st_mtime_ns
    assert registry.make(name, **SMALL) == path and registry.make(name, seed=0, size=120) == path
    assert (path / "data" / "metadata.json").stat().st_mtime_ns == stamp  # not rebuilt
    with pytest.raises(DatasetError, match="force=True"):
        registry.make(name, seed=7, **SMALL)
    registry.make(name, seed=7, size=120, force=True, **SMALL)
    assert minari_storage.read_record(path)["seed"] == 7
    assert [p.name for p in path.parent.iterdir()] == [name]  # no staging leftovers


def test_interrupted_build_leaves_nothing_visible(dirs, monkeypatch):
    import minari
    from minari.dataset._storages.hdf5_storage import HDF5Storage

    data_dir, _ = dirs
    name = "hopper-expert-v0"
    original = HDF5Storage.update_episodes

    def crash_half_way(self, episodes):
        episodes = list(episodes)
        original(self, episodes[: len(episodes) // 2])  # part of the data is on disk ...
        raise KeyboardInterrupt("simulated interruption")  # ... when the build dies

    monkeypatch.setattr(HDF5Storage, "update_episodes", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        registry.make(name, size=300, **SMALL)
    assert not (data_dir / name).exists()
    assert list(data_dir.iterdir()) == []  # the staging dir was cleaned up
    assert not any(row.built for row in registry.status())

    # A hard kill cannot clean up: a leftover staging dir must stay invisible and harmless.
    leftover = data_dir / f".building-{name}-999-deadbeef" / name / "data"
    leftover.mkdir(parents=True)
    (leftover / "metadata.json").write_text("{}")
    monkeypatch.setattr(HDF5Storage, "update_episodes", original)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(data_dir))
    assert minari.list_local_datasets() == {}
    path = registry.make(name, size=300, **SMALL)
    assert len(registry.load(name)) == 300 and path == data_dir / name


def test_expert_replay_build_uses_the_checkpoints_in_order(dirs):
    # n_envs=1: the dataset's order is the collection order, like a training run's buffer.
    small = {**SMALL, "n_envs": 1}
    expert_replay = registry.load("hopper-expert-replay-v0", **small)  # expert checkpoint at step 300
    assert len(expert_replay) == 300
    actions = expert_replay.actions
    assert not np.allclose(actions[:100], actions[0])  # warm-up: uniform random actions
    np.testing.assert_allclose(actions[100:200], np.tanh(REPLAY_CONSTANTS[100]), atol=1e-6)
    np.testing.assert_allclose(actions[200:300], np.tanh(REPLAY_CONSTANTS[200]), atol=1e-6)
    segments = expert_replay.metadata["segments"]
    assert [(s["label"], s["start"], s["end"]) for s in segments] == [
        ("random", 0, 100), ("step_0000100", 100, 200), ("step_0000200", 200, 300),
    ]  # fmt: skip; the step-300 checkpoint (the expert's own) is not part of its buffer
    assert expert_replay.metadata["source"] == "replay-approximation"
    assert "approximat" in expert_replay.metadata["approximation"].lower()


def shipped_medium_replay(policies: Path) -> dict[str, np.ndarray]:
    with np.load(policies / "hopper" / shipped_policies.MEDIUM_REPLAY_FILE) as f:
        return {key: f[key] for key in f.files}


def test_medium_replay_is_the_shipped_true_buffer_prefix(dirs, tmp_path, monkeypatch):
    import minari

    data_dir, policies = dirs
    name = "hopper-medium-replay-v0"
    shipped = shipped_medium_replay(policies)
    assert {key: value.dtype for key, value in shipped.items()} == {
        "observations": np.float32, "actions": np.float32, "rewards": np.float32,
        "next_observations": np.float32, "terminals": np.bool_, "timeouts": np.bool_,
    }  # fmt: skip

    registry.make(name, **SMALL)
    ours = loaders.load_dataset(name)  # the engine's entry point
    assert len(ours) == MEDIUM_STEP and ours.env_id == ENV_ID
    for key, value in shipped.items():
        np.testing.assert_array_equal(getattr(ours, key), value, err_msg=key)
    record = ours.metadata
    assert record["source"] == "shipped-replay-buffer" and record["approximation"] is None
    assert record["replay_buffer"]["exact"] and "true training replay buffer" in record["replay_buffer"]["description"]
    assert record["replay_buffer"]["transitions"] == record["replay_buffer"]["medium_step"] == MEDIUM_STEP
    assert record["policy_provenance"]["medium_replay"]["transitions"] == MEDIUM_STEP
    assert "replay" not in record["policy_provenance"]  # no checkpoints involved
    # Reference scores as for the other datasets.
    assert ours.reference.expert == EXPERT_RETURN
    expected_random = random_policy_return(ENV_ID, 3, seed=registry._RANDOM_REFERENCE_SEED_OFFSET, max_episode_steps=30)
    assert ours.reference.random == pytest.approx(expected_random)

    # Plain Minari reads the very same transitions.
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(data_dir))
    source = minari.load_dataset(name)
    assert source.total_steps == MEDIUM_STEP and source.storage.metadata["ref_max_score"] == EXPERT_RETURN
    episodes = list(source.iterate_episodes())
    np.testing.assert_array_equal(np.concatenate([e.observations[:-1] for e in episodes]), shipped["observations"])
    np.testing.assert_array_equal(np.concatenate([e.actions for e in episodes]), shipped["actions"])
    assert_same(loaders.load_minari(name), ours)

    # A smaller size takes the prefix's beginning, closing the episode running at the cut.
    ends = shipped["terminals"] | shipped["timeouts"]
    n = int(np.flatnonzero(~ends)[-1]) + 1  # a cut inside an episode
    small = registry.load(name, size=n, root=tmp_path / "small", **SMALL)
    for key, value in shipped.items():
        expected = value[:n].copy()
        if key == "timeouts":
            expected[-1] = True
        np.testing.assert_array_equal(getattr(small, key), expected, err_msg=key)
    assert small.metadata["replay_buffer"]["last_episode_cut"] and small.metadata["cut_episodes"] == 1


def test_ship_script_output_builds(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("ship", REPO / "scripts" / "ship_behaviour_policies.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)

    run = tmp_path / "artifacts" / "hopper"
    (run / "checkpoints").mkdir(parents=True)
    training_returns = {10: 10.0, 20: 100.0, 30: 40.0, 40: 300.0, 50: 280.0, 60: 200.0}
    # Re-measured over more episodes (stubbed: tiny random policies all score alike): the medium is
    # chosen by these, 30 (closest to 290 / 3), not by the noisy training-time returns (20 there).
    remeasured = {10: 10.0, 20: 200.0, 30: 95.0, 40: 290.0}
    stub = lambda policies, *args: {step: np.full(2, remeasured[step]) for step in policies}  # noqa: E731
    monkeypatch.setattr(ship, "remeasure", stub)
    for step, value in training_returns.items():
        metadata = {"env_id": ENV_ID, "train_steps": step, "eval_mean_return": value, "eval_episodes": 10,
                    "command": "train ...", "seed": 0}  # fmt: skip
        tiny_policy(step, metadata).save(run / "checkpoints" / f"step_{step:07d}.npz")
    buffer = fake_buffer(45, max_episode_steps=20)  # saved at "step 45", after the medium step 30
    ends = buffer["terminals"] | buffer["timeouts"]
    assert not ends[29] and buffer["observations"].dtype == np.float64  # the cut at 30 falls inside an episode
    np.savez_compressed(run / "replay_buffer.npz", **{k: v[:25] for k, v in buffer.items()})
    with pytest.raises(SystemExit, match="holds 25 transitions, fewer than the medium step 30"):
        ship.ship(run, "hopper", tmp_path / "policies", every=20, eval_episodes=2, max_episode_steps=20)
    assert not (tmp_path / "policies" / "hopper").exists()
    np.savez_compressed(run / "replay_buffer.npz", **buffer)
    out = ship.ship(run, "hopper", tmp_path / "policies", every=20, eval_episodes=2, max_episode_steps=20)

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["expert"]["step"] == 40  # best training-time return
    assert provenance["medium"]["step"] == 30  # before it, closest to a third by the re-measured returns
    assert provenance["medium"]["target_return"] == pytest.approx(290.0 / 3)
    assert provenance["medium_candidates"] == {str(step): value for step, value in remeasured.items()}
    assert sorted(p.name for p in (out / "replay").iterdir()) == ["step_0000010.npz", "step_0000020.npz"]
    assert np.load(out / "replay" / "step_0000010.npz")["hidden_0/kernel"].dtype == np.float16
    assert shipped_policies.load_policy(out / "replay" / "step_0000020.npz").hidden[0][0].dtype == np.float32
    assert provenance["replay"]["float16_max_action_error"] < 1e-2

    # medium-replay: exactly the buffer's first medium_step (30) rows, the cut episode closed.
    shipped = shipped_medium_replay(tmp_path / "policies")
    for key, value in shipped.items():
        expected = buffer[key][:30].astype(value.dtype)
        if key == "timeouts":
            assert not expected[-1] and value[-1]
            expected[-1] = True
        np.testing.assert_array_equal(value, expected, err_msg=key)
    assert shipped["observations"].dtype == np.float32 and shipped["terminals"].dtype == bool
    assert provenance["medium_replay"]["transitions"] == provenance["medium_replay"]["medium_step"] == 30
    assert provenance["medium_replay"]["last_episode_cut"] is True
    assert provenance["medium_replay"]["source"] == "true replay buffer prefix"

    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path / "datasets"))
    monkeypatch.setenv(shipped_policies.POLICY_DIR_ENV, str(tmp_path / "policies"))
    data = registry.load("hopper-medium-replay-v0", **SMALL)
    assert len(data) == 30 and data.reference.expert == provenance["expert"]["mean_return"]
    for key, value in shipped.items():
        np.testing.assert_array_equal(getattr(data, key), value, err_msg=key)
    assert data.metadata["replay_buffer"]["last_episode_cut"] and data.metadata["cut_episodes"] == 1
    expert_replay = registry.load("hopper-expert-replay-v0", **SMALL)
    assert len(expert_replay) == 40
    assert [s["label"] for s in expert_replay.metadata["segments"]] == ["random", "step_0000010", "step_0000020"]


def test_ship_prefix_extraction_takes_exactly_medium_step_rows(tmp_path):
    spec = importlib.util.spec_from_file_location("ship", REPO / "scripts" / "ship_behaviour_policies.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)

    buffer = fake_buffer(100, max_episode_steps=20)
    np.savez_compressed(tmp_path / "replay_buffer.npz", **buffer)
    ends = np.flatnonzero(buffer["terminals"] | buffer["timeouts"]) + 1
    inside = int(ends[0]) + 1  # cuts the second episode after its first step
    for n, cut in ((inside, True), (int(ends[0]), False), (100, True)):
        prefix, was_cut = ship.medium_replay_prefix(tmp_path / "replay_buffer.npz", n)
        assert was_cut == cut and all(len(value) == n for value in prefix.values())
        for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
            np.testing.assert_array_equal(prefix[key], buffer[key][:n].astype(prefix[key].dtype), err_msg=key)
        np.testing.assert_array_equal(prefix["timeouts"][:-1], buffer["timeouts"][: n - 1])
        assert prefix["timeouts"][-1] == (cut or buffer["timeouts"][n - 1])
    with pytest.raises(SystemExit, match="holds 100 transitions, fewer than the medium step 101"):
        ship.medium_replay_prefix(tmp_path / "replay_buffer.npz", 101)
    with pytest.raises(SystemExit, match="no replay buffer"):
        ship.medium_replay_prefix(tmp_path / "missing.npz", 10)


def test_expert_replay_from_the_true_buffer(dirs, tmp_path, monkeypatch):
    # A stand-in for artifacts/behaviour/hopper/replay_buffer.npz: one env, in time order.
    run = fake_buffer(400)
    (tmp_path / "behaviour" / "hopper").mkdir(parents=True)
    np.savez(tmp_path / "behaviour" / "hopper" / "replay_buffer.npz", **run)
    with pytest.raises(DatasetError, match=replay_buffer.BEHAVIOUR_DIR_ENV):
        registry.make("hopper-expert-replay-v0", from_buffer=True, **SMALL)
    monkeypatch.setenv(replay_buffer.BEHAVIOUR_DIR_ENV, str(tmp_path / "behaviour"))
    data = registry.load("hopper-expert-replay-v0", from_buffer=True, **SMALL)  # expert step 300
    assert data.metadata["source"] == "replay-buffer" and len(data) == 300
    assert data.metadata["replay_buffer"]["exact"] and data.metadata["approximation"] is None
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        np.testing.assert_array_equal(getattr(data, key), run[key][:300].astype(np.float32), err_msg=key)
    ends = run["terminals"][:300] | run["timeouts"][:300]
    assert data.timeouts[-1] and data.metadata["replay_buffer"]["last_episode_cut"] == (not ends[-1])


def test_reshipped_policies_trigger_a_rebuild_instead_of_stale_data(dirs):
    name = "hopper-medium-v0"
    _, policies = dirs
    path = registry.make(name, size=120, **SMALL)
    before = minari_storage.read_built(path)
    provenance_file = policies / "hopper" / "provenance.json"
    provenance = json.loads(provenance_file.read_text())
    provenance["expert"]["mean_return"] += 1.0  # as if a better expert had been shipped
    provenance_file.write_text(json.dumps(provenance))
    with pytest.warns(UserWarning, match="rebuilding"):
        registry.make(name, size=120, **SMALL)
    record = minari_storage.read_record(path)
    assert record["reference"]["expert"] == provenance["expert"]["mean_return"]
    assert record["policy_fingerprint"] == shipped_policies.ShippedPolicies.find("hopper", policies).fingerprint("medium")
    assert_same(before, minari_storage.read_built(path))  # same policy weights and seed: same data


def assert_served_without_rebuild(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rebuild would warn
        registry.make(name, size=120, **SMALL)


def test_reshipping_one_policy_rebuilds_only_the_datasets_made_from_it(dirs):
    _, policies = dirs
    registry.make("hopper-expert-v0", size=120, **SMALL)
    medium = registry.make("hopper-medium-v0", size=120, **SMALL)
    medium_fingerprint = minari_storage.read_record(medium)["policy_fingerprint"]
    provenance_file = policies / "hopper" / "provenance.json"
    provenance = json.loads(provenance_file.read_text())
    provenance["medium"]["step"] += 100  # a new medium; the expert is the same
    provenance["selection"] = {"medium_candidates": [1, 2]}  # family-wide notes do not count
    provenance_file.write_text(json.dumps(provenance))
    assert_served_without_rebuild("hopper-expert-v0")
    with pytest.warns(UserWarning, match="rebuilding"):
        registry.make("hopper-medium-v0", size=120, **SMALL)
    assert minari_storage.read_record(medium)["policy_fingerprint"] != medium_fingerprint

    # The policy file's bytes count too, not only what the provenance says of it.
    tiny_policy(7).save(policies / "hopper" / "medium.npz")
    with pytest.warns(UserWarning, match="rebuilding"):
        registry.make("hopper-medium-v0", size=120, **SMALL)
    assert_served_without_rebuild("hopper-expert-v0")


def test_builds_marked_with_the_whole_family_fingerprint_are_still_current(dirs):
    # Datasets built before per-dataset fingerprints carry the fingerprint of the whole record.
    _, policies = dirs
    path = registry.make("hopper-expert-v0", size=120, **SMALL)
    metadata_file = path / "data" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    shipped = shipped_policies.ShippedPolicies.find("hopper", policies)
    metadata[minari_storage.METADATA_KEY]["policy_fingerprint"] = shipped.fingerprint()
    metadata_file.write_text(json.dumps(metadata))
    assert_served_without_rebuild("hopper-expert-v0")


# --------------------------------------------------------------------------- reference builds


def test_a_build_records_its_fingerprint_and_blas_kernel(dirs):
    path = registry.make("hopper-medium-v0", size=120, **SMALL)
    record = minari_storage.read_record(path)
    assert record["fingerprint"] == minari_storage.read_built(path).fingerprint()
    # NumPy's wheels bring OpenBLAS, which names the kernel it picked for this CPU.
    assert [k["library"] for k in record["blas"]] == ["openblas"] and record["blas"][0]["architecture"]


def test_reference_build_is_told_only_at_the_reference_settings():
    expert = dict(name="hopper-expert-v0", kind="expert", seed=0, requested_size=None, max_episode_steps=None,
                  n_envs=registry.DEFAULT_N_ENVS, fingerprint=registry.REFERENCE_FINGERPRINTS["hopper-expert-v0"])
    assert registry.reference_build(expert) is True
    assert registry.reference_build({**expert, "fingerprint": "0" * 16}) is False
    for change in ({"seed": 1}, {"requested_size": 5000}, {"n_envs": 4}, {"max_episode_steps": 30},
                   {"fingerprint": None}, {"name": "hopper-expert-v1"}):
        assert registry.reference_build({**expert, **change}) is None, change
    # Each kind has its own default environment count: 10 for expert-replay, one (the buffer) for medium-replay.
    replay = dict(expert, name="hopper-expert-replay-v0", kind="expert-replay", n_envs=registry.DEFAULT_REPLAY_N_ENVS,
                  fingerprint=registry.REFERENCE_FINGERPRINTS["hopper-expert-replay-v0"])
    assert registry.reference_build(replay) is True
    assert registry.reference_build({**replay, "n_envs": registry.DEFAULT_N_ENVS}) is None
    medium_replay = dict(expert, name="hopper-medium-replay-v0", kind="medium-replay", n_envs=1,
                         fingerprint=registry.REFERENCE_FINGERPRINTS["hopper-medium-replay-v0"])
    assert registry.reference_build(medium_replay) is True


def test_a_build_other_than_the_reference_says_how_to_get_the_reference(dirs, monkeypatch):
    monkeypatch.setattr(registry, "reference_build", lambda record: False)
    with pytest.warns(UserWarning, match=r"differs from the reference build .*OPENBLAS_CORETYPE=SkylakeX"):
        registry.make("hopper-medium-v0", size=120, **SMALL)


def test_datasets_list_marks_builds_that_are_not_the_reference(dirs, monkeypatch, capsys):
    from sparse_reg import commands

    registry.make("hopper-medium-v0", size=120, **SMALL)
    commands.datasets_list_command()
    assert "other" not in capsys.readouterr().out  # a small build: not comparable with the reference
    monkeypatch.setattr(commands, "reference_build", lambda record: False)
    commands.datasets_list_command()
    out = capsys.readouterr().out
    assert "│ other" in out and "OPENBLAS_CORETYPE=SkylakeX" in out


def test_datasets_list_takes_the_fingerprint_of_an_older_build_from_its_data(dirs, monkeypatch, capsys):
    # Builds made before records kept a fingerprint still get a "bits" verdict: from the data.
    from sparse_reg import commands
    from sparse_reg.data.minari_storage import METADATA_KEY

    path = registry.make("hopper-medium-v0", size=120, **SMALL)
    expected = registry.load("hopper-medium-v0").fingerprint()
    metadata_file = path / "data" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    del metadata[METADATA_KEY]["fingerprint"]
    metadata_file.write_text(json.dumps(metadata))
    assert registry.read_record(path).get("fingerprint") is None
    seen = []
    monkeypatch.setattr(commands, "reference_build", lambda record: seen.append(record["fingerprint"]) or True)
    commands.datasets_list_command()
    assert seen == [expected] and "│ reference" in capsys.readouterr().out

