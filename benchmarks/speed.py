"""Speed benchmark: updates/s, sparse overhead, seeds, evaluation and end-to-end cost, memory.

    python benchmarks/speed.py                 # full measurement (~10 min on 2 CPU cores)
    python benchmarks/speed.py --quick         # a smoke run with tiny budgets (numbers meaningless)
    python benchmarks/speed.py --only updates  # just the updates/s table (~3 min), to its own file
    python benchmarks/speed.py --only seeds    # just 5 seeds vs 1 seed (~5 min), to its own file
    python benchmarks/speed.py --only layouts  # live units vs masked vs dense: per update, whole quick-budget IQL runs (~1.5 h)
    python benchmarks/speed.py --only evaluators  # what each evaluator adds to an evaluation, vs a 5k-step chunk (~2 min)

Writes ``benchmarks/results/speed-<device>.json`` and prints a table. Every figure comes
from one invocation on one machine; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sparse_reg.algorithms import ALGORITHMS, Batch
from sparse_reg.data.collect import collect_rollouts
from sparse_reg.data.reference import D4RL_REFERENCE_SCORES
from sparse_reg.live_layout import LiveNet, block_fraction, live_networks, state_to_dense, state_to_live
from sparse_reg.provenance import cpu_info
from sparse_reg.sparsity import SparseRegConfig, live_units
from sparse_reg.training.compile_cache import CACHE_ENV
from sparse_reg.training.config import RunConfig
from sparse_reg.training.evaluation import RolloutEvaluator, make_policy
from sparse_reg.training.logging import read_rows
from sparse_reg.training.parallel import run_jobs, seed_jobs
from sparse_reg.training.prepare import PreparedData, initial_state, to_device_batch
from sparse_reg.training.trainer import Lanes, chunk_means, make_chunk_runner, make_mask_refresher, train

ENV = "HalfCheetah-v5"
OBS_DIM, ACTION_DIM = 17, 6


def synthetic_batch(n: int, key) -> Batch:
    k = jax.random.split(key, 4)
    return Batch(
        jax.random.normal(k[0], (n, OBS_DIM)),
        jnp.tanh(jax.random.normal(k[1], (n, ACTION_DIM))),
        jax.random.normal(k[2], (n,)),
        jax.random.normal(k[3], (n, OBS_DIM)),
        jnp.zeros(n),
    )


def updates_per_second(algo: str, sparsity: float, steps: int, repeats: int = 3) -> float:
    """Pure update throughput: one ``steps``-long scan, best of ``repeats`` after compilation."""
    config = RunConfig(algo=algo, sparsity=sparsity, steps=steps)
    algorithm = ALGORITHMS[algo]
    sparse_reg = SparseRegConfig(sparsity) if sparsity else None
    state, key = initial_state(config, OBS_DIM, ACTION_DIM, sparse_reg is not None)
    data = synthetic_batch(10_000, jax.random.PRNGKey(1))
    batch_size = config.algorithm_config().batch_size
    if sparse_reg is not None:  # real masks, as in training
        state, key, _ = make_mask_refresher(algorithm, sparse_reg, batch_size)(state, key, data)
    run = make_chunk_runner(algorithm, batch_size)
    jax.block_until_ready(run(state, key, data, steps))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(run(state, key, data, steps))
        best = min(best, time.perf_counter() - started)
    return steps / best


def interleaved_seconds(programs: dict, rounds: int) -> dict:
    """Wall times of each compiled zero-argument program, run in turn ``rounds`` times, so that every
    variant sees the same machine load (the shared machine's load drifts within minutes)."""
    for program in programs.values():
        jax.block_until_ready(program())
    times = {name: [] for name in programs}
    for _ in range(rounds):
        for name, program in programs.items():
            started = time.perf_counter()
            jax.block_until_ready(program())
            times[name].append(time.perf_counter() - started)
    return times


def flops_per_update(algo: str) -> float:
    """FLOPs of one compiled update (XLA's cost analysis), batch 256, dense networks.

    XLA counts both branches of a ``lax.cond``: for TD3+BC, whose actor and targets update every
    second step, this is the cost of an update step *with* the actor update (an upper bound).
    """
    config = RunConfig(algo=algo, sparsity=0.0, steps=10)
    state, _ = initial_state(config, OBS_DIM, ACTION_DIM, False)
    batch = synthetic_batch(config.algorithm_config().batch_size, jax.random.PRNGKey(1))
    cost = jax.jit(ALGORITHMS[algo].update).lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def matmul_gflops(batch: int = 256, width: int = 256, length: int = 2000, repeats: int = 3) -> float:
    """What XLA reaches on this device for the networks' hidden-layer matmuls (batch x width @ width x width,
    with a tanh between them, in one scan): the practical ceiling for an update's FLOP rate."""
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, width))
    w = jax.random.normal(jax.random.PRNGKey(1), (width, width)) / width**0.5

    @jax.jit
    def chain(x):
        return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=length)[0]

    jax.block_until_ready(chain(x))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(chain(x))
        best = min(best, time.perf_counter() - started)
    return 2 * batch * width * width * length / best / 1e9


def evaluation_seconds(episodes: int = 10, repeats: int = 3) -> float:
    """Wall time of ``episodes`` full HalfCheetah episodes, batched, with an IQL policy."""
    config = RunConfig(algo="iql", sparsity=0.0)
    state, _ = initial_state(config, OBS_DIM, ACTION_DIM, False)
    policy = jax.jit(make_policy(ALGORITHMS["iql"].act))
    normalizer = (jnp.zeros(OBS_DIM), jnp.ones(OBS_DIM))
    evaluator = RolloutEvaluator(ENV, episodes)
    act = lambda obs: np.asarray(policy(state, normalizer, obs))  # noqa: E731
    evaluator.run(act, 0)  # compile
    best = float("inf")
    for r in range(repeats):
        started = time.perf_counter()
        evaluator.run(act, r + 1)
        best = min(best, time.perf_counter() - started)
    evaluator.close()
    return best


def agent_evaluate_seconds(episodes: int = 10, repeats: int = 3) -> dict:
    """``Agent.evaluate`` (what ``sparse-reg evaluate`` runs) of ``episodes`` full HalfCheetah episodes
    with an IQL agent: the first call (compiles the policy once) and the best later call."""
    from sparse_reg.data.dataset import Normalizer
    from sparse_reg.training.agent import Agent

    state, _ = initial_state(RunConfig(algo="iql", sparsity=0.0), OBS_DIM, ACTION_DIM, False)
    agent = Agent(ALGORITHMS["iql"], state, Normalizer.passthrough(OBS_DIM), ENV, None, 0)
    started = time.perf_counter()
    agent.evaluate(episodes, seed=0)
    first = time.perf_counter() - started
    best = float("inf")
    for r in range(repeats):
        started = time.perf_counter()
        agent.evaluate(episodes, seed=r + 1)
        best = min(best, time.perf_counter() - started)
    return {"episodes": episodes, "first_call_s": round(first, 3), "later_call_s": round(best, 3)}


def evaluator_seconds(algos=("bc", "td3bc", "awac", "iql"), rows=(200_000, 1_000), repeats: int = 3,
                      chunk_steps: int = 5_000, quick: bool = False) -> dict:
    """Per algorithm: the wall time of each default evaluator but the returns' (a mean of numbers already
    there) on validation sets of ``rows`` rows (200k: the default ``validation_size``; 1k: an
    early-stopping slice of 5k), best of ``repeats`` after a compiling call, beside the time of the
    ``chunk_steps`` dense updates between two evaluations."""
    from types import SimpleNamespace

    from sparse_reg.training.evaluation import DEFAULT_EVALUATORS, EvaluationContext, returns_evaluator

    out = {}
    for algo in algos:
        config = RunConfig(algo=algo, sparsity=0.0)
        state, _ = initial_state(config, OBS_DIM, ACTION_DIM, False)
        train = synthetic_batch(5_000, jax.random.PRNGKey(1))
        result = {"chunk_s": round(chunk_steps / updates_per_second(algo, 0.0, 200 if quick else 2_000), 3)}
        for n in rows:
            run = SimpleNamespace(config=config, train_batch=train, validation_batch=synthetic_batch(n, jax.random.PRNGKey(2)))
            context = EvaluationContext(run, ALGORITHMS[algo], state, 0, np.zeros(10))
            for evaluator in DEFAULT_EVALUATORS:
                if evaluator is returns_evaluator:
                    continue
                evaluator(context)  # compile
                best = float("inf")
                for _ in range(repeats):
                    started = time.perf_counter()
                    evaluator(context)
                    best = min(best, time.perf_counter() - started)
                result[f"{evaluator.__name__}/{n}_rows_s"] = round(best, 3)
        out[algo] = result
        print(f"{algo:6s} {result}", flush=True)
    return out


def small_dataset(size: int):
    rng_policy = lambda obs, rng: rng.uniform(-1, 1, (obs.shape[0], ACTION_DIM)).astype(np.float32)  # noqa: E731
    data = collect_rollouts(rng_policy, ENV, size, seed=0)
    return data.replace(reference=D4RL_REFERENCE_SCORES["halfcheetah"], env_id=ENV)


@contextlib.contextmanager
def scratch(quick: bool):
    """(a small HalfCheetah dataset, a temporary run directory removed afterwards)."""
    work = Path(tempfile.mkdtemp(prefix="sparse-reg-bench-"))
    try:
        yield small_dataset(12_000 if quick else 40_000), work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def seeds_ratio(dataset, steps: int, mode: str, work: Path, n_seeds: int = 5) -> dict:
    config = RunConfig(algo="iql", dataset="bench", size=10_000, validation_size=20_000, sparsity=0.95,
                       steps=steps, eval_every=steps, eval_episodes=10)
    jax.clear_caches()  # both measurements compile from scratch: nothing reused from earlier ones
    started = time.perf_counter()
    train(config, work / f"{mode}-one", dataset=dataset, progress=False, overwrite=True)
    one = time.perf_counter() - started
    jax.clear_caches()
    # Seed processes share a compilation cache that starts empty: the first ones compile, later ones load.
    os.environ[CACHE_ENV] = str(work / f"jax-cache-{mode}")
    started = time.perf_counter()
    try:
        run_jobs(seed_jobs(config, list(range(n_seeds)), work / f"{mode}-many"), mode=mode, dataset=dataset,
                 progress=False, overwrite=True)
    finally:
        os.environ[CACHE_ENV] = "off"
    many = time.perf_counter() - started
    return {"one_seed_s": round(one, 2), f"{n_seeds}_seeds_s": round(many, 2), "ratio": round(many / one, 2)}


def five_seeds_vs_one(dataset, steps: int, work: Path) -> dict:
    """Both CPU paths (pinned processes, vmap) on a CPU; vmap alone on an accelerator."""
    out = {}
    for mode in ["processes", "vmap"] if jax.default_backend() == "cpu" else ["vmap"]:
        out[mode] = seeds_ratio(dataset, steps, mode, work)
        print(f"5 seeds vs 1 ({mode}): {out[mode]}", flush=True)
    return out


def end_to_end(dataset, steps: int, eval_every: int, work: Path) -> dict:
    """A full sparse IQL run (evaluations, mask refreshes, checkpoints) vs its pure update time."""
    config = RunConfig(algo="iql", dataset="bench", size=10_000, validation_size=20_000, sparsity=0.95,
                       steps=steps, eval_every=eval_every, mask_interval=eval_every, eval_episodes=10)
    started = time.perf_counter()
    train(config, work / "e2e", dataset=dataset, progress=False, overwrite=True)
    total = time.perf_counter() - started
    pure = steps / updates_per_second("iql", 0.95, steps, repeats=1)
    return {"steps": steps, "end_to_end_s": round(total, 2), "pure_update_s": round(pure, 2),
            "ratio": round(total / pure, 3)}


def main() -> None:
    # This process never uses the persistent compilation cache: every in-process figure includes
    # its compilation, as on a fresh machine (the seed processes get their own cache, see above).
    os.environ[CACHE_ENV] = "off"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the script, not the speed")
    parser.add_argument("--only", choices=["updates", "seeds", "evaluate", "layouts", "evaluators"], default=None,
                        help="measure only updates/s, only 5 seeds vs 1, or only Agent.evaluate (each to its own file)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    steps = 200 if args.quick else 5_000
    device = jax.devices()[0].device_kind.replace(" ", "-").lower()
    results: dict = {
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        **machine_description(),
        "quick": args.quick,
        "updates_per_s": {},
    }
    if args.only == "seeds":
        return _seeds_only(results, args, device, steps)
    if args.only == "layouts":
        return _layouts_only(results, args, device)
    if args.only == "evaluators":
        results.pop("updates_per_s")
        results["evaluator_seconds"] = evaluator_seconds(rows=(2_000, 100) if args.quick else (200_000, 1_000),
                                                         quick=args.quick)
        results["commit"] = _commit()
        return _write(results, args, device, suffix="-evaluators")
    if args.only == "evaluate":
        results.pop("updates_per_s")
        results["agent_evaluate"] = agent_evaluate_seconds(episodes=2 if args.quick else 10)
        print(f"Agent.evaluate of HalfCheetah episodes: {results['agent_evaluate']}", flush=True)
        return _write(results, args, device, suffix="-evaluate")
    for algo in ALGORITHMS:
        for sparsity in (0.0, 0.95):
            rate = updates_per_second(algo, sparsity, steps)
            results["updates_per_s"][f"{algo}/{'sparse95' if sparsity else 'dense'}"] = round(rate, 1)
            print(f"{algo:6s} {'sparse 95%' if sparsity else 'dense':10s} {rate:8.1f} updates/s", flush=True)
    results["sparse_overhead"] = {  # dense rate / sparse rate - 1
        algo: round(results["updates_per_s"][f"{algo}/dense"] / results["updates_per_s"][f"{algo}/sparse95"] - 1, 3)
        for algo in ALGORITHMS
    }
    # How close the dense updates come to the device's matmul throughput at these shapes.
    ceiling = matmul_gflops(length=200 if args.quick else 2000)
    results["matmul_256_gflops"] = round(ceiling, 1)
    results["dense_update_gflops"] = {}
    for algo in ALGORITHMS:
        gflop = flops_per_update(algo) / 1e9
        achieved = gflop * results["updates_per_s"][f"{algo}/dense"]
        results["dense_update_gflops"][algo] = {
            "gflop_per_update": round(gflop, 4), "gflops": round(achieved, 1),
            "fraction_of_matmul": round(achieved / ceiling, 3),
        }
        print(f"{algo:6s} {gflop * 1e3:6.1f} MFLOP/update, {achieved:6.1f} GFLOP/s = "
              f"{achieved / ceiling:.0%} of the 256-wide matmul rate ({ceiling:.0f} GFLOP/s)", flush=True)
    if args.only == "updates":
        return _write(results, args, device, suffix="-updates")
    results["eval_10_episodes_s"] = round(evaluation_seconds(), 3)
    print(f"10 HalfCheetah evaluation episodes: {results['eval_10_episodes_s']} s", flush=True)
    results["agent_evaluate"] = agent_evaluate_seconds(episodes=2 if args.quick else 10)
    print(f"Agent.evaluate of HalfCheetah episodes: {results['agent_evaluate']}", flush=True)

    with scratch(args.quick) as (dataset, work):
        results["five_seeds_vs_one"] = five_seeds_vs_one(dataset, steps, work)
        e2e_steps = 400 if args.quick else 50_000
        results["end_to_end"] = end_to_end(dataset, e2e_steps, 200 if args.quick else 5_000, work)
        print(f"end to end: {results['end_to_end']}", flush=True)
    results["peak_rss_mb"] = {
        "main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "largest_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    _write(results, args, device)


def machine_description() -> dict:
    """What the figures depend on besides the code: CPU model, vector ISA, XLA flags.

    Sessions land on different hosts, so two result files are only comparable when these match.
    """
    model, flags = cpu_info()
    isa = [name for name in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if name in flags]
    return {"cpu_model": model, "cpu_isa": isa, "xla_flags": os.environ.get("XLA_FLAGS", "")}


# Table 1's quick budget on its smallest data: what issue 28's targets are stated for.
QUICK_BUDGET = dict(dataset="halfcheetah-expert-v0", size=5_000, steps=30_000, eval_every=3_000, eval_episodes=5,
                    mask_interval=5_000, mask_until=6_000)


def quick_budget_state(algo: str, warmup: int, seed: int = 0, sparsity: float = 0.95):
    """(algorithm, masked train state, key, training batch) of a 95%-sparse quick-budget run on real data
    after ``warmup`` masked updates and the refresh there: at 5,000, the masks such a run trains with from
    step 5k to its end (refreshes at 0 and 5k); at 0, the first masks."""
    config = RunConfig(algo=algo, sparsity=sparsity, seed=seed, **QUICK_BUDGET)
    algorithm, sparse = ALGORITHMS[algo], config.sparse_reg_config(QUICK_BUDGET["size"])
    data = PreparedData.from_config(config)
    batch = to_device_batch(data.train, data.normalizer)
    batch_size = config.algorithm_config().batch_size
    state, key = initial_state(config, data.train.obs_dim, data.train.action_dim, True)
    refresh = make_mask_refresher(algorithm, sparse, batch_size)
    state, key, _ = refresh(state, key, batch)
    if warmup:
        state, key, _ = make_chunk_runner(algorithm, batch_size)(state, key, batch, warmup)
        state, key, _ = refresh(state, key, batch)
    return algorithm, state, key, batch, config


def layout_description(masked, live, names) -> dict:
    """Per network: live units per hidden layer and head, the live layout's (block, const) widths, and
    the share of the dense matmul work its blocks keep."""
    out = {}
    for name in names:
        net, fast = getattr(masked, name), getattr(live, name)
        row = {"live_units_per_head": {layer: [np.asarray(count).tolist(), units] for layer, (count, units)
                                       in live_units(net.mask, per_head=True).items()},
               "block_fraction": round(block_fraction(net), 3), "converted": isinstance(fast, LiveNet)}
        if isinstance(fast, LiveNet):
            row["block_and_const_widths"] = live_widths(fast)
        out[name] = row
    return out


def live_widths(net: LiveNet) -> list[list[int]]:
    """[block width, constant units] of each hidden layer of a live net's MLP (padded, rounded)."""
    mlp = next(v for v in net.params.values() if isinstance(v, dict) and "Dense_0" in v)
    kernels = [mlp[f"Dense_{i}"]["kernel"] for i in range(len(mlp))]
    return [[int(kernels[i]["block"].shape[-1]), int(kernels[i + 1]["const"].shape[-2]) if "const" in kernels[i + 1] else 0]
            for i in range(len(kernels) - 1)]


def layout_updates(algo: str, steps: int, rounds: int, warmup: int) -> dict:
    """Updates/s of one algorithm between refreshes: masked (θ ⊙ m, the scan unrolled 4 times), live units
    (unrolled once), and a dense network, in interleaved rounds; and how far live and masked drift apart."""
    algorithm, masked, key, batch, config = quick_budget_state(algo, warmup)
    live = state_to_live(masked, algorithm.losses)
    dense, _ = initial_state(dataclasses_replace(config, sparsity=0.0), batch.observations.shape[-1],
                             batch.actions.shape[-1], False)
    run = make_chunk_runner(algorithm, config.algorithm_config().batch_size)
    compile_s = {}
    for name, state in (("masked", masked), ("live_units", live)):
        started = time.perf_counter()
        jax.block_until_ready(run(state, key, batch, steps))
        first = time.perf_counter() - started
        started = time.perf_counter()
        jax.block_until_ready(run(state, key, batch, steps))
        compile_s[name] = round(first - (time.perf_counter() - started), 2)
    variants = {"masked": masked, "live_units": live, "dense": dense}
    times = interleaved_seconds({name: (lambda s=s: run(s, key, batch, steps)) for name, s in variants.items()}, rounds)
    after_masked, _, sums_masked = run(masked, key, batch, steps)
    after_live, _, sums_live = run(live, key, batch, steps)
    metrics_masked, metrics_live = chunk_means([sums_masked]), chunk_means([sums_live])
    after_live = state_to_dense(after_live, algorithm.losses)

    def median_ratio(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(times[a], times[b])), 3)

    return {
        "updates_per_s_best": {name: round(steps / min(ts), 1) for name, ts in times.items()},
        "live_units_vs_masked_median": median_ratio("masked", "live_units"),
        "live_units_vs_dense_median": median_ratio("dense", "live_units"),
        "dense_vs_masked_median": median_ratio("masked", "dense"),
        "live_units_vs_masked_per_round": [round(m / x, 3) for m, x in zip(times["masked"], times["live_units"])],
        "compile_s_of_a_scan": compile_s,
        "networks": layout_description(masked, live, algorithm.losses),
        "max_abs_difference_after_steps": {
            "params": float(max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
                lambda a, b: jnp.max(jnp.abs(a - b)),
                [getattr(after_masked, n).params for n in algorithm.losses],
                [getattr(after_live, n).params for n in algorithm.losses])))),
            "metrics_relative": {k: float(abs(metrics_masked[k] - metrics_live[k]) / max(abs(metrics_masked[k]), 1e-12))
                                 for k in metrics_masked},
        },
    }


def dataclasses_replace(config: RunConfig, **changes) -> RunConfig:
    return RunConfig.from_dict({**config.to_dict(), **changes})


def vmapped_lanes(steps: int, rounds: int, seeds=(0, 1, 2)) -> dict:
    """IQL with three seeds stepped together under vmap (each with its own first masks): live units padded to
    the widest lane against the masked layout, and what each lane alone would need."""
    states, keys, batches, widths = [], [], [], {}
    for seed in seeds:
        algorithm, state, key, batch, _ = quick_budget_state("iql", 0, seed)
        alone = state_to_live(state, algorithm.losses)
        widths[f"seed {seed}"] = layout_description(state, alone, algorithm.losses)
        states.append(state), keys.append(key), batches.append(batch)
    size = min(len(b.rewards) for b in batches)  # equal shapes to stack (the subsets differ by a few rows)
    lanes = Lanes(len(seeds))
    state, key = lanes.stack(states), lanes.stack(keys)
    batch = lanes.stack([jax.tree_util.tree_map(lambda x: x[:size], b) for b in batches])
    live = state_to_live(state, algorithm.losses, lanes=lanes.size)
    run = make_chunk_runner(algorithm, 256, lanes)
    times = interleaved_seconds({name: (lambda s=s: run(s, key, batch, steps)) for name, s in
                                 (("masked", state), ("live_units", live))}, rounds)
    padded = {name: live_widths(getattr(live, name)) for name in live_networks(live, algorithm.losses)}
    return {"lanes": len(seeds), "updates_per_s_best": {k: round(steps / min(v), 1) for k, v in times.items()},
            "live_units_vs_masked_median": round(statistics.median(m / x for m, x in zip(times["masked"], times["live_units"])), 3),
            "padded_widths": padded, "per_lane": widths}


def quick_budget_runs(work: Path, rounds: int, variants=("dense", "live-units", "masked")) -> dict:
    """Whole IQL runs of the quick budget (5k transitions, 30k steps, refreshes at 0 and 5k, an evaluation
    of 5 episodes every 3k): dense, 95% sparse on live units, 95% sparse masked; in turn, ``rounds`` times.
    Everything a run does is timed (data preparation, compilation with no cache, refreshes, evaluations,
    validation MSE, checkpoints); the dataset is loaded once beforehand, for all."""
    from sparse_reg.data.loaders import load_dataset

    dataset = load_dataset(QUICK_BUDGET["dataset"])
    walls: dict = {v: [] for v in variants}
    summaries, timelines = {}, {}
    for _ in range(rounds):
        for variant in variants:
            config = RunConfig(algo="iql", sparsity=0.0 if variant == "dense" else 0.95,
                               frozen_layout="masked" if variant == "dense" else variant, **QUICK_BUDGET)
            jax.clear_caches()
            started = time.perf_counter()
            summary = train(config, work / variant, dataset=dataset, progress=False, overwrite=True)
            walls[variant].append(round(time.perf_counter() - started, 1))
            summaries[variant] = summary
            timelines[variant] = [row["wall_s"] for row in read_rows(work / variant / "metrics.csv")]
            print(f"  whole run {variant}: {walls[variant][-1]} s, final return {summary['final_return']:.0f}", flush=True)
    out = {"config": QUICK_BUDGET, "wall_s": walls,
           "final_return": {v: round(summaries[v]["final_return"], 1) for v in variants},
           # wall_s at each evaluation (every 3k steps) of the last round: compilation and refreshes show early
           "wall_s_at_evaluations_last_round": timelines,
           "live_units_networks": summaries.get("live-units", {}).get("sparse_layout", {}).get("live_units_networks")}
    for variant in variants:
        if variant != "dense":
            out[f"{variant}_over_dense_median"] = round(statistics.median(
                s / d for s, d in zip(walls[variant], walls["dense"])), 3)
    return out


def _layouts_only(results: dict, args: argparse.Namespace, device: str) -> None:
    """Issue 28's rows: per algorithm live units vs masked vs dense between refreshes, vmapped lanes, and whole
    quick-budget IQL runs sparse vs dense, all in this one invocation."""
    del results["updates_per_s"]
    steps, rounds, warmup = (50, 2, 100) if args.quick else (1000, 5, 5000)
    results["load_average_before"] = os.getloadavg()
    results["commit"] = _commit()
    results["updates_between_refreshes"] = {}
    for algo in ("bc", "td3bc", "awac", "iql"):
        row = layout_updates(algo, steps, rounds, warmup)
        results["updates_between_refreshes"][algo] = row
        print(f"{algo:6s} updates/s {row['updates_per_s_best']}, live units / masked "
              f"{row['live_units_vs_masked_median']:.2f}x, / dense {row['live_units_vs_dense_median']:.2f}x "
              f"(median of {rounds} rounds)", flush=True)
    results["vmapped_lanes"] = vmapped_lanes(steps, rounds)
    print(f"3 vmapped IQL lanes: {results['vmapped_lanes']['updates_per_s_best']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sparse-reg-bench-") as work:
        results["quick_budget_runs"] = quick_budget_runs(
            Path(work), 1 if args.quick else 2) if not args.quick else {"skipped": "quick mode"}
    print(f"whole runs: {results['quick_budget_runs']}", flush=True)
    results["load_average_after"] = os.getloadavg()
    _write(results, args, device, suffix="-layouts")


def _commit() -> str:
    import subprocess

    return subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()


def _seeds_only(results: dict, args: argparse.Namespace, device: str, steps: int) -> None:
    del results["updates_per_s"]
    with scratch(args.quick) as (dataset, work):
        results["five_seeds_vs_one"] = five_seeds_vs_one(dataset, steps, work)
    _write(results, args, device, suffix="-seeds")


def _write(results: dict, args: argparse.Namespace, device: str, suffix: str = "") -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"speed-{device}{suffix}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
