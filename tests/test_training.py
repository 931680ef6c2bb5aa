"""The run loop: logs, mask schedule, checkpoints and exact resume."""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Killed, scripted_validation_mse, stop_at

from sparse_reg.training.checkpoint import checkpoint_step
from sparse_reg.training.config import RunConfig
from sparse_reg.training.logging import read_rows
from sparse_reg.training.trainer import load_agent, train

SMALL = dict(
    dataset="hopper-random",
    size=1500,
    validation_size=800,
    steps=600,
    eval_every=200,
    eval_episodes=2,
    mask_interval=200,
    mask_until=400,
    hidden_dims=(32, 32),
)


def small_config(**changes) -> RunConfig:
    return RunConfig(**{**SMALL, **changes})


def masks_of(run_dir):
    state = load_agent(run_dir).state
    return {name: jax.device_get(getattr(state, name).mask) for name in ("actor", "critic", "value")}


def trees_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_sparse_iql_run_writes_summary_logs_and_follows_mask_schedule(tmp_path, hopper_random):
    captured = {}
    summary = train(
        small_config(algo="iql", sparsity=0.9),
        tmp_path / "run",
        dataset=hopper_random,
        progress=False,
        on_evaluation=lambda row: captured.__setitem__(row["step"], masks_of(tmp_path / "run")),
    )
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("algo", "dataset", "env", "size", "seed", "steps", "sparsity", "final_return",
                "final_normalized_score", "eval_history"):
        assert key in summary
    assert summary["size"] == 1500 and summary["env"] == "Hopper-v5"
    last_wall = read_rows(tmp_path / "run" / "metrics.csv")[-1]["wall_s"]
    # summary.json rounds to 0.1 s and metrics.csv to 0.01 s: 10.25 -> 10.2 differs by 0.05 plus float error.
    assert summary["wall_seconds"] == pytest.approx(last_wall, abs=0.0501) and last_wall > 0
    assert summary["code_version"] and summary["finished_at"].endswith("+00:00")
    assert re.fullmatch(r".+ \(\d+ cores\)(, .+)?", summary["machine"])  # "AMD EPYC (2 cores)"
    assert [row["step"] for row in summary["eval_history"]] == [200, 400, 600]
    for network, fraction in summary["sparsity"].items():
        assert fraction == pytest.approx(0.9, abs=1e-3), network  # k is rounded to whole weights
    ref = summary["reference_scores"]
    expected_score = 100 * (summary["final_return"] - ref["random"]) / (ref["expert"] - ref["random"])
    assert summary["final_normalized_score"] == pytest.approx(expected_score)

    # Masks are refreshed at steps 0 and 200 only (mask_until=400), then frozen.
    mask_rows = read_rows(tmp_path / "run" / "masks.csv")
    assert sorted({row["step"] for row in mask_rows}) == [0, 200]
    assert {row["network"] for row in mask_rows} == {"actor", "critic", "value"}
    assert not trees_equal(captured[200], captured[400])  # the refresh at 200 changed something
    assert trees_equal(captured[400], captured[600])  # nothing after mask_until
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_dense_run_has_no_masks(tmp_path, hopper_random):
    summary = train(small_config(algo="bc", sparsity=0.0, steps=200), tmp_path / "run", dataset=hopper_random,
                    progress=False)
    assert summary["sparsity"] == {"actor": 0.0}
    assert not (tmp_path / "run" / "masks.csv").exists()


# BC, TD3+BC and AWAC run sparse through the trainer in tests/test_learning.py (same checks, plus
# learning); IQL in the mask-schedule test above. Only the paper-code variants are left to run here.
@pytest.mark.parametrize("algo", ["awac-paper-code", "iql-paper-code"])
def test_every_algorithm_runs_sparse_through_the_trainer(tmp_path, hopper_random, algo):
    summary = train(small_config(algo=algo, sparsity="auto", steps=200), tmp_path / "run", dataset=hopper_random,
                    progress=False)
    assert all(f == pytest.approx(0.95, abs=1e-3) for f in summary["sparsity"].values())
    assert np.isfinite(summary["final_return"])
    assert np.isfinite(summary["eval_history"][-1]["validation_mse"])
    # every network's loss on the held-out episodes, through the live-units layout of the sparse run
    last = read_rows(tmp_path / "run" / "metrics.csv")[-1]
    assert all(np.isfinite(last[f"validation_{name}_loss"]) for name in summary["sparsity"])


def test_saved_agent_reproduces_its_last_evaluation(tmp_path, hopper_random):
    summary = train(small_config(algo="bc", sparsity=0.5, steps=200), tmp_path / "run", dataset=hopper_random,
                    progress=False)
    agent = load_agent(tmp_path / "run" / "checkpoint.msgpack")
    assert agent.step == 200
    obs = hopper_random.observations[:7]
    actions = agent.act(obs)
    assert actions.shape == (7, 3) and np.all(np.abs(actions) <= 1.0)
    assert summary["sparsity"]["actor"] == pytest.approx(0.5, abs=1e-3)


def test_vmapped_seeds_match_single_seed_runs(tmp_path, hopper_random):
    from sparse_reg.training.trainer import train_group

    configs = [small_config(algo="iql", sparsity=0.9, steps=400, seed=s) for s in (0, 1)]
    group = train_group(configs, [tmp_path / "g0", tmp_path / "g1"], dataset=hopper_random, progress=False)
    for config, grouped in zip(configs, group):
        single = train(config, tmp_path / f"single{config.seed}", dataset=hopper_random, progress=False)
        assert grouped["seed"] == single["seed"]
        assert grouped["sparsity"] == pytest.approx(single["sparsity"])
        for a, b in zip(grouped["eval_history"], single["eval_history"]):
            for key in a:  # same computation, batched: equal up to float rounding
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), key
    # Different seeds draw different training subsets and initialisations.
    assert group[0]["eval_history"][-1]["train_mse"] != group[1]["eval_history"][-1]["train_mse"]


def test_wall_seconds_adds_up_the_invocations_of_a_resumed_run():
    from sparse_reg.provenance import wall_seconds

    rows = [{"wall_s": 10.0}, {"wall_s": 20.0}, {"wall_s": 4.0}, {"wall_s": 9.0}]  # resumed after 20 s
    assert wall_seconds(rows) == 29.0
    assert wall_seconds([]) == 0.0


def test_durations_read_in_seconds_minutes_or_hours():
    from sparse_reg.provenance import format_duration

    assert format_duration(89.4) == "89 s"
    assert format_duration(2220) == "37 min"
    assert format_duration(2220, 1) == "37.0 min"
    assert format_duration(95 * 60) == "1.6 h"


def test_waves_give_one_core_per_job_and_share_the_last_wave():
    from sparse_reg.training.parallel import waves

    assert waves(5, [0, 1]) == [[(0, [0]), (1, [1])], [(2, [0]), (3, [1])], [(4, [0, 1])]]
    assert waves(2, [0, 1, 2, 3]) == [[(0, [0, 1]), (1, [2, 3])]]
    assert waves(3, [0]) == [[(0, [0])], [(1, [0])], [(2, [0])]]


def test_fewer_workers_take_the_least_busy_cores(tmp_path, monkeypatch):
    from sparse_reg.training import parallel

    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal, per core; the first line (all cores) is not a core.
    # Waiting for I/O counts as idle: core 2 has 100 idle and 50 iowait jiffies, so 150 of its 200 are idle.
    stat.write_text("cpu  9 9 9 9 9 9 9 9\ncpu0 100 0 0 100 0 0 0 0\ncpu1 10 0 0 190 0 0 0 0\n"
                    "cpu2 30 0 20 100 50 0 0 0\nintr 5\n")
    before = parallel.read_cpu_times(str(stat))
    assert before == {0: (100, 200), 1: (10, 200), 2: (50, 200)}
    # Over the interval: core 0 fully busy (a running sweep), core 1 idle, core 2 a quarter busy.
    after = {0: (200, 300), 1: (10, 300), 2: (75, 300)}
    assert parallel.least_busy([0, 1, 2], 1, before, after) == [1]
    assert parallel.least_busy([0, 1, 2], 2, before, after) == [1, 2]
    assert parallel.least_busy([2, 0], 1, before, after) == [2]  # only the cores this process may use
    # Equal loads, or no samples (not Linux): the lowest core numbers, as before.
    assert parallel.least_busy([0, 1, 2], 2, {}, {}) == [0, 1]
    assert parallel.read_cpu_times(str(tmp_path / "missing")) == {}
    # All cores wanted (or no number given): no sampling, every core.
    monkeypatch.setattr(parallel, "available_cores", lambda: [0, 1])
    monkeypatch.setattr(parallel, "read_cpu_times", lambda: pytest.fail("sampled the cores for all of them"))
    assert parallel.cores_for_workers(None) == parallel.cores_for_workers(2) == parallel.cores_for_workers(5) == [0, 1]
    samples = iter([before, after])
    monkeypatch.setattr(parallel, "available_cores", lambda: [0, 1, 2])
    monkeypatch.setattr(parallel, "read_cpu_times", lambda: next(samples))
    assert parallel.cores_for_workers(1, sample_s=0.0) == [1]


def test_seeds_in_worker_processes_write_one_run_directory_each(tmp_path, hopper_random):
    from sparse_reg.training.parallel import run_jobs, seed_jobs

    jobs = seed_jobs(small_config(algo="bc", sparsity=0.5, steps=200), [3, 4], tmp_path / "runs")
    summaries = run_jobs(jobs, mode="processes", dataset=hopper_random, progress=False)
    assert [s["seed"] for s in summaries] == [3, 4]
    for seed in (3, 4):
        on_disk = json.loads((tmp_path / "runs" / f"seed_{seed}" / "summary.json").read_text())
        assert on_disk["seed"] == seed and len(on_disk["eval_history"]) == 1


def test_queue_runs_every_job_on_one_core_and_reports_failures_without_stopping(tmp_path, hopper_random_npz):
    from sparse_reg.training.parallel import Job, available_cores, run_queue

    def job(name, dataset):
        return Job(RunConfig.from_dict({**small_config(algo="bc", steps=100).to_dict(), "dataset": str(dataset)}),
                   tmp_path / name)

    jobs = [job("a", tmp_path / "missing.npz"), job("b", hopper_random_npz)]  # the failure first: the queue goes on
    results = []
    run_queue(jobs, [False] * 2, lambda i, error: results.append((i, error)), cores=available_cores()[:1])
    assert [i for i, _ in results] == [0, 1]  # one core: one after another, in order
    assert "missing.npz" in results[0][1] and results[1][1] is None
    assert (tmp_path / "b" / "summary.json").exists() and not (tmp_path / "a" / "summary.json").exists()
    with pytest.raises(ValueError, match="2 jobs but 1 resume flags"):
        run_queue(jobs, [False], lambda i, error: None)


def test_action_mse_in_padded_chunks_equals_the_plain_mean():
    from sparse_reg.training.evaluation import make_action_mse

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(5, 3)).astype(np.float32)
    act = lambda w, obs: jnp.tanh(obs @ w)  # noqa: E731  (a stand-in policy: state = weights)
    obs = rng.normal(size=(23, 5)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(23, 3)).astype(np.float32)
    expected = np.mean((np.tanh(obs @ weights) - actions) ** 2)
    for chunk in (7, 23, 64):
        got = make_action_mse(act, chunk)(weights, jnp.asarray(obs), jnp.asarray(actions))
        assert got == pytest.approx(expected, rel=1e-5)


def test_held_out_rows_are_cut_into_equal_chunks_no_larger_than_a_training_batch():
    from sparse_reg.training.evaluation import held_out_chunks

    for rows, batch_size, shape in ((1000, 256, (4, 250)), (1030, 256, (5, 206)), (200, 256, (1, 200)),
                                    (512, 256, (2, 256))):
        batch = {"x": np.arange(rows * 3).reshape(rows, 3)}
        chunks = held_out_chunks(batch, batch_size)["x"]
        assert chunks.shape == (*shape, 3)
        # the rows in order, the left-over ones (1030 = 5 * 206) dropped from the end
        np.testing.assert_array_equal(chunks.reshape(-1, 3), batch["x"][: shape[0] * shape[1]])


def _held_out_context(algo: str, rows: int, obs_dim: int = 5, action_dim: int = 3, seed: int = 0, **options):
    """An :class:`EvaluationContext` with a freshly initialised agent and ``rows`` random validation rows."""
    from types import SimpleNamespace

    from sparse_reg.algorithms import Batch, get_algorithm
    from sparse_reg.training.evaluation import EvaluationContext

    config = small_config(algo=algo, sparsity=0.0, hidden_dims=(16, 16), algo_options=options)
    algorithm = get_algorithm(algo)
    state = algorithm.init(config.algorithm_config(), obs_dim, action_dim, jax.random.PRNGKey(seed), 100)
    rng = np.random.default_rng(seed)
    validation = Batch(*(jnp.asarray(x, jnp.float32) for x in (
        rng.normal(size=(rows, obs_dim)), rng.uniform(-1, 1, size=(rows, action_dim)), rng.normal(size=rows),
        rng.normal(size=(rows, obs_dim)), (rng.uniform(size=rows) < 0.1))))
    run = SimpleNamespace(config=config, validation_batch=validation)
    return EvaluationContext(run, algorithm, state, 0, np.zeros(1))


def test_behaviour_cloning_held_out_loss_is_the_validation_action_mse():
    # BC's loss is the action MSE, and 1000 rows are 4 chunks of 250: every row counts once.
    from sparse_reg.training.evaluation import action_mse_evaluator, held_out_loss_evaluator

    context = _held_out_context("bc", 1000)
    context.run.train_batch = context.run.validation_batch
    held_out = held_out_loss_evaluator(context)
    assert list(held_out) == ["validation_actor_loss"]
    assert held_out["validation_actor_loss"] == pytest.approx(action_mse_evaluator(context)["validation_mse"], rel=1e-5)


@pytest.mark.parametrize("algo", ["iql", "iql-paper-code", "td3bc", "awac"])
def test_held_out_losses_are_each_networks_loss_averaged_over_training_sized_chunks(algo):
    """Against the losses called chunk by chunk: 700 rows are 3 chunks of 233 (the paper code's B×B losses
    stay 233×233); the losses that draw noise get one fixed key per chunk and network, so an evaluation is
    a function of the agent alone."""
    from sparse_reg.training.evaluation import held_out_chunks, held_out_loss_evaluator

    context = _held_out_context(algo, 700)
    held_out = held_out_loss_evaluator(context)
    losses = context.algorithm.losses
    assert set(held_out) == {f"validation_{name}_loss" for name in losses}
    chunks = held_out_chunks(context.run.validation_batch, 256)
    assert chunks.observations.shape[:2] == (3, 233)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    for i, (name, loss) in enumerate(losses.items()):
        by_hand = np.mean([float(loss(context.state, jax.tree_util.tree_map(lambda x: x[c], chunks),
                                      jax.random.fold_in(keys[c], i))[0]) for c in range(3)])
        assert held_out[f"validation_{name}_loss"] == pytest.approx(by_hand, rel=1e-5)
    assert held_out_loss_evaluator(context) == held_out  # deterministic


def test_held_out_losses_read_at_most_their_row_cap_and_are_nan_without_validation(monkeypatch):
    from sparse_reg.training import evaluation

    context = _held_out_context("iql", 900)
    monkeypatch.setattr(evaluation, "HELD_OUT_LOSS_ROWS", 300)
    capped = evaluation.held_out_loss_evaluator(context)
    context.run.validation_batch = jax.tree_util.tree_map(lambda x: x[:300], context.run.validation_batch)
    assert evaluation.held_out_loss_evaluator(context) == capped
    empty = jax.tree_util.tree_map(lambda x: x[:0], context.run.validation_batch)
    for context.run.validation_batch in (None, empty):
        missing = evaluation.held_out_loss_evaluator(context)
        assert set(missing) == {"validation_actor_loss", "validation_critic_loss", "validation_value_loss"}
        assert all(np.isnan(v) for v in missing.values())


def test_compilation_cache_directory_comes_from_the_environment(tmp_path, monkeypatch):
    from sparse_reg.training.compile_cache import cache_directory

    monkeypatch.setenv("SPARSE_REG_JAX_CACHE", str(tmp_path / "c"))
    assert cache_directory() == tmp_path / "c"
    monkeypatch.setenv("SPARSE_REG_JAX_CACHE", "off")
    assert cache_directory() is None
    monkeypatch.delenv("SPARSE_REG_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_directory() == tmp_path / "xdg" / "sparse-reg" / "jax"


def test_a_second_process_loads_the_compiled_program_from_the_cache(tmp_path):
    import subprocess
    import sys

    program = (
        "import jax, jax.numpy as jnp\n"
        "from sparse_reg.training.compile_cache import enable_compilation_cache\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "print(enable_compilation_cache())\n"
        "f = jax.jit(lambda x: jax.lax.scan(lambda c, _: (jnp.tanh(c @ c), None), x, None, length=3)[0])\n"
        "print(float(f(jnp.eye(8) * 0.5).sum()))\n"
    )
    env = {**os.environ, "SPARSE_REG_JAX_CACHE": str(tmp_path / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    first = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
    entries = lambda: {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}  # noqa: E731
    written = entries()
    assert first.stdout.splitlines()[0] == str(tmp_path / "cache") and written
    second = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
    assert second.stdout == first.stdout  # same result from the cached executable
    assert entries() == written  # every program was a cache hit: nothing compiled and written again
    off = subprocess.run([sys.executable, "-c", program], env={**env, "SPARSE_REG_JAX_CACHE": "off"},
                         capture_output=True, text=True, check=True)
    assert off.stdout.splitlines()[0] == "None"


def test_logs_written_by_an_older_version_keep_their_columns_when_a_run_resumes(tmp_path):
    from sparse_reg.training.logging import MASKS_FILE, RunLogger, read_rows

    (tmp_path / MASKS_FILE).write_text("step,network,layer,sparsity,changed\n0,actor,total,0.95,1.0\n")
    logger = RunLogger(tmp_path, resume_step=5)
    logger.log_masks(5, {"actor": {"Dense_0": {"sparsity": 0.9, "changed": 0.1},
                                   "total": {"sparsity": 0.95, "changed": 0.05, "loss_before": 1.0, "loss_after": 2.0}}})
    logger.close()
    rows = read_rows(tmp_path / MASKS_FILE)
    assert [r["layer"] for r in rows] == ["total", "Dense_0", "total"]
    assert all(set(r) == {"step", "network", "layer", "sparsity", "changed"} for r in rows)
    # a new run writes the new columns, empty where a layer row has no loss
    fresh = tmp_path / "new"
    fresh.mkdir()
    logger = RunLogger(fresh)
    logger.log_masks(0, {"actor": {"Dense_0": {"sparsity": 0.9, "changed": 1.0},
                                   "total": {"sparsity": 0.95, "changed": 1.0, "loss_before": 1.0, "loss_after": 2.0}}})
    logger.close()
    header, layer_row, total_row = (fresh / MASKS_FILE).read_text().splitlines()
    assert header == "step,network,layer,sparsity,changed,live_units,loss_before,loss_after"
    assert layer_row.endswith(",,,") and total_row.endswith(",,1.0,2.0")


def test_chunks_run_in_pieces_give_the_same_run_and_exact_chunk_means(tmp_path, hopper_random, monkeypatch):
    """The progress bar's pieces change nothing but float rounding (XLA compiles each scan length on
    its own): the same losses (means over the whole chunk, also for TD3+BC's actor loss, which only
    every second update computes) and the same final parameters."""
    from sparse_reg.training import trainer

    config = small_config(algo="td3bc", sparsity=0.0, steps=400)
    train(config, tmp_path / "whole", dataset=hopper_random, progress=False)
    monkeypatch.setattr(trainer, "PROGRESS_PIECE", 70)  # 200-step chunks as 70 + 70 + 60
    train(config, tmp_path / "pieces", dataset=hopper_random, progress=False)
    whole, pieces = (read_rows(tmp_path / d / "metrics.csv") for d in ("whole", "pieces"))
    assert [r["step"] for r in whole] == [r["step"] for r in pieces] == [200, 400]
    for a, b in zip(whole, pieces):
        for key in a:
            if key not in ("wall_s",):
                assert a[key] == pytest.approx(b[key], rel=1e-6, nan_ok=True), key
    final = [jax.tree_util.tree_leaves(load_agent(tmp_path / d).state) for d in ("whole", "pieces")]
    for a, b in zip(*final):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_chunk_means_weigh_pieces_by_the_updates_that_computed_each_metric():
    from sparse_reg.training.trainer import chunk_means

    pieces = [{"loss": (np.float32(6.0), 3), "actor": (np.float32(0.0), 0)},
              {"loss": (np.float32(4.0), 1), "actor": (np.float32(5.0), 2)}]
    means = chunk_means(pieces)
    assert means["loss"] == pytest.approx(10.0 / 4) and means["actor"] == pytest.approx(2.5)
    assert np.isnan(chunk_means([{"actor": (np.float32(0.0), 0)}])["actor"])


def test_progress_bar_moves_within_a_chunk_and_says_what_it_does(tmp_path, hopper_random, monkeypatch):
    from sparse_reg.training import trainer

    events = []

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def update(self, n):
            events.append(("update", n))

        def set_postfix_str(self, text):
            events.append(("status", text))

        set_description = close = lambda self, *args: None

    monkeypatch.setattr(trainer, "tqdm", Bar)
    monkeypatch.setattr(trainer, "PROGRESS_PIECE", 50)
    train(small_config(algo="bc", sparsity=0.9, steps=200, eval_every=200, mask_interval=100, mask_until=150),
          tmp_path / "run", dataset=hopper_random, progress=True)
    assert [n for kind, n in events if kind == "update"] == [50] * 4
    statuses = [text for kind, text in events if kind == "status"]
    assert statuses[0] == "refreshing masks" and statuses.count("refreshing masks") == 2  # steps 0 and 100
    assert any(text.startswith("evaluating 2 episodes") for text in statuses)


def test_resumed_run_gives_the_same_metrics_as_an_uninterrupted_one(tmp_path, hopper_random):
    """Also: the chunks between refreshes on live units (live_layout) match the masked layout; mask_until=400,
    interval 200: refreshes at 0 and 200, every chunk runs on live units (converted back at each evaluation)."""
    live = small_config(algo="td3bc", sparsity=0.95, frozen_layout="live-units")
    masked = small_config(algo="td3bc", sparsity=0.95, frozen_layout="masked")
    assert live.result_fields() == masked.result_fields()  # the layout changes speed, not the run
    fast = train(live, tmp_path / "live", dataset=hopper_random, progress=False)
    slow = train(masked, tmp_path / "masked", dataset=hopper_random, progress=False)
    assert fast["sparse_layout"] == {"live_units_networks": ["actor", "critic"]}
    assert slow["sparse_layout"] == {"live_units_networks": []}
    rows_fast, rows_slow = (read_rows(tmp_path / d / "metrics.csv") for d in ("live", "masked"))
    for a, b in zip(rows_fast, rows_slow):
        for key in ("critic_loss", "actor_loss", "train_mse", "validation_mse", "return_mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    for a, b in zip(*(read_rows(tmp_path / d / "masks.csv") for d in ("live", "masked"))):
        assert a == {**b, "loss_before": a["loss_before"], "loss_after": a["loss_after"]}  # the same masks
        for key in ("loss_before", "loss_after"):  # logged on the "total" rows only
            assert a[key] == (pytest.approx(b[key], rel=1e-4) if isinstance(b[key], float) else b[key])
    # Checkpoints hold the masked layout either way. (Pruned weights are equal only to rounding here: they
    # were trained before the refresh at 200 pruned them; tests/test_live_layout.py checks they never move.)
    state_fast, state_slow = load_agent(tmp_path / "live").state, load_agent(tmp_path / "masked").state
    for name in ("actor", "critic"):
        net_fast, net_slow = getattr(state_fast, name), getattr(state_slow, name)
        parts = lambda net: (net.params, net.opt_state, net.mask, net.target)  # noqa: E731
        assert jax.tree_util.tree_structure(parts(net_fast)) == jax.tree_util.tree_structure(parts(net_slow))
        for p, q in zip(*(jax.tree_util.tree_leaves(t) for t in (net_fast.params, net_slow.params))):
            np.testing.assert_allclose(p, q, rtol=1e-3, atol=1e-5)

    with pytest.raises(Killed):
        train(live, tmp_path / "cut", dataset=hopper_random, progress=False, on_evaluation=stop_at(400))
    assert checkpoint_step(tmp_path / "cut") == 400
    train(live, tmp_path / "cut", dataset=hopper_random, progress=False, resume=True)

    def comparable(rows):
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]

    rows_cut = read_rows(tmp_path / "cut" / "metrics.csv")
    assert [r["step"] for r in rows_cut] == [200, 400, 600]
    assert comparable(rows_cut) == comparable(rows_fast)
    assert read_rows(tmp_path / "live" / "masks.csv") == read_rows(tmp_path / "cut" / "masks.csv")
    assert trees_equal(load_agent(tmp_path / "cut").state, state_fast)


def test_the_resolved_sparse_reg_settings_are_recorded_and_a_resume_reads_them_back(tmp_path, hopper_random,
                                                                                     monkeypatch):
    """"auto" is resolved once, when the run starts (95% for 1500 training transitions), and recorded in
    config.json and summary.json; a resume reads it back, and a run of an older version, which did not
    record it, resolves it again."""
    import shutil

    config = small_config(algo="bc", sparsity="auto", steps=400)

    with pytest.raises(Killed):
        train(config, tmp_path / "run", dataset=hopper_random, progress=False, on_evaluation=stop_at(200))
    expected = {"sparsity": 0.95, "interval": 200, "until": 400, "scorer": "snip"}
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["sparse_reg"] == expected
    shutil.copytree(tmp_path / "run", tmp_path / "old")
    del record["sparse_reg"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(record, indent=2))

    with monkeypatch.context() as patch:
        patch.setattr(RunConfig, "sparse_reg_config", lambda self, size: pytest.fail("resolved again on resume"))
        summary = train(config, tmp_path / "run", dataset=hopper_random, progress=False, resume=True)
    assert summary["sparse_reg"] == expected
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["sparse_reg"] == expected
    old = train(config, tmp_path / "old", dataset=hopper_random, progress=False, resume=True)
    assert old["sparse_reg"] == expected and "sparse_reg" not in json.loads((tmp_path / "old" / "config.json").read_text())
    assert old["eval_history"] == summary["eval_history"]


def test_layout_choice():
    from sparse_reg.live_layout import uses_live_units

    assert uses_live_units("auto", "cpu") and not uses_live_units("auto", "gpu")
    assert uses_live_units("live-units", "gpu") and not uses_live_units("masked", "cpu")
    assert uses_live_units("kept-values", "cpu")  # the former layout's name: runs that recorded it resume on live units
    assert (small_config(frozen_layout="kept-values").result_fields()
            == small_config(frozen_layout="masked").result_fields())
    with pytest.raises(ValueError, match="frozen_layout"):
        small_config(frozen_layout="sparse")


# ----------------------------------------------------------------------------- the lowest-validation-MSE checkpoint

# Validation MSEs scripted per evaluation step: the minimum (1.0) comes first at step 400 and again at 800.
SCRIPTED_MSE = {200: 3.0, 400: 1.0, 600: 2.0, 800: 1.0, 1000: 4.0}


def test_the_lowest_validation_mse_checkpoint_is_the_first_evaluation_at_the_minimum(tmp_path, hopper_random,
                                                                                       monkeypatch):
    out, latest_at = tmp_path / "run", {}

    def copy_latest(row):  # the latest checkpoint is written just before this is called
        latest_at[row["step"]] = (out / "checkpoint.msgpack").read_bytes()

    summary = train(small_config(algo="bc", sparsity=0.5, steps=1000, keep_lowest_validation_mse=True), out,
                    dataset=hopper_random, progress=False, on_evaluation=copy_latest,
                    evaluators=scripted_validation_mse(SCRIPTED_MSE))
    # 400, not 800: a tie does not replace it (that is the run's first stop at its lowest point).
    assert (out / "lowest_validation_mse.msgpack").read_bytes() == latest_at[400]
    assert summary["lowest_validation_mse"] == {
        "checkpoint": "lowest_validation_mse.msgpack", "step": 400, "validation_mse": 1.0,
        "return_mean": summary["eval_history"][1]["return_mean"],
        "normalized_score": summary["eval_history"][1]["normalized_score"],
    }
    kept, latest = load_agent(out, checkpoint="lowest-validation-mse"), load_agent(out)
    assert (kept.step, latest.step) == (400, 1000)
    assert load_agent(out / "lowest_validation_mse.msgpack").step == 400
    assert not trees_equal(kept.state.actor.params, latest.state.actor.params)


def test_the_kept_agent_has_the_lowest_validation_mse_the_run_logged(tmp_path, hopper_random):
    """Unscripted: the kept agent's action MSE on the validation episodes, computed here from its
    actions, is the lowest validation_mse in metrics.csv."""
    from sparse_reg.training.trainer import PreparedData

    config = small_config(algo="bc", sparsity=0.0, steps=1000, keep_lowest_validation_mse=True)
    train(config, tmp_path / "run", dataset=hopper_random, progress=False)
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    best = min(rows, key=lambda r: r["validation_mse"])
    agent = load_agent(tmp_path / "run", checkpoint="lowest-validation-mse")
    validation = PreparedData.from_config(config, hopper_random).validation
    mse = float(np.mean((agent.act(validation.observations) - validation.actions) ** 2))
    assert agent.step == best["step"]
    assert mse == pytest.approx(best["validation_mse"], rel=1e-4)


def test_keeping_the_lowest_validation_mse_needs_validation_data(tmp_path, hopper_random):
    with pytest.raises(ValueError, match="validation_size > 0"):
        small_config(validation_size=0, keep_lowest_validation_mse=True)
    with pytest.raises(ValueError, match="no validation data is left"):  # 3000 transitions, all for training
        train(small_config(size=3000, keep_lowest_validation_mse=True), tmp_path / "run", dataset=hopper_random,
              progress=False)
    assert not (tmp_path / "run").exists()
    train(small_config(algo="bc", steps=200), tmp_path / "plain", dataset=hopper_random, progress=False)
    with pytest.raises(FileNotFoundError, match="--keep-lowest-validation-mse"):
        load_agent(tmp_path / "plain", checkpoint="lowest-validation-mse")
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        load_agent(tmp_path / "plain", checkpoint="best")
