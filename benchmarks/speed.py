"""Speed benchmark: updates/s, sparse overhead, seeds, evaluation and end-to-end cost, memory.

    python benchmarks/speed.py                 # full measurement (~10 min on 2 CPU cores)
    python benchmarks/speed.py --quick         # a smoke run with tiny budgets (numbers meaningless)
    python benchmarks/speed.py --only updates  # just the updates/s table (~3 min), to its own file
    python benchmarks/speed.py --only seeds    # just 5 seeds vs 1 seed (~5 min), to its own file
    python benchmarks/speed.py --only frozen   # frozen-mask phase: kept-values layout vs masked vs dense, per update and per whole run (~15 min)

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
from sparse_reg.sparse_layout import sparse_networks, state_to_dense, state_to_sparse
from sparse_reg.sparsity import SparseRegConfig, mask_statistics
from sparse_reg.training.compile_cache import CACHE_ENV
from sparse_reg.training.config import RunConfig
from sparse_reg.training.evaluation import RolloutEvaluator, make_policy
from sparse_reg.training.parallel import run_jobs, seed_jobs
from sparse_reg.training.trainer import (
    chunk_means,
    initial_state,
    make_chunk_runner,
    make_mask_refresher,
    train,
)

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


def frozen_phase(algo: str, steps: int, rounds: int) -> dict:
    """The frozen-mask phase of one algorithm: the kept-values layout (sparse_layout) against the
    dense-masked layout it replaces and a dense network, updates/s and per-round ratios measured
    in turn; the layers' densities; and how far the two layouts drift apart over ``steps`` updates."""
    algorithm = ALGORITHMS[algo]
    config = RunConfig(algo=algo, sparsity=0.95, steps=steps)
    batch_size = config.algorithm_config().batch_size
    data = synthetic_batch(10_000, jax.random.PRNGKey(1))
    masked, key = initial_state(config, OBS_DIM, ACTION_DIM, True)
    masked, key, _ = make_mask_refresher(algorithm, SparseRegConfig(0.95), batch_size)(masked, key, data)
    fast = state_to_sparse(masked, algorithm.losses)
    dense, _ = initial_state(RunConfig(algo=algo, sparsity=0.0, steps=steps), OBS_DIM, ACTION_DIM, False)
    run = make_chunk_runner(algorithm, batch_size)
    times = interleaved_seconds(
        {name: (lambda s=state: run(s, key, data, steps)) for name, state in
         (("masked", masked), ("sparse_layout", fast), ("dense", dense))},
        rounds,
    )
    after_masked, _, sums_masked = run(masked, key, data, steps)
    after_fast, _, sums_fast = run(fast, key, data, steps)
    metrics_masked, metrics_fast = chunk_means([sums_masked]), chunk_means([sums_fast])
    after_fast = state_to_dense(after_fast, algorithm.losses)
    return {
        "updates_per_s": {name: round(steps / min(ts), 1) for name, ts in times.items()},
        "sparse_layout_vs_masked": {
            "median": round(statistics.median(m / f for m, f in zip(times["masked"], times["sparse_layout"])), 3),
            "per_round": [round(m / f, 3) for m, f in zip(times["masked"], times["sparse_layout"])],
        },
        "dense_vs_masked_median": round(statistics.median(m / d for m, d in zip(times["masked"], times["dense"])), 3),
        "layer_density": {
            name: {layer: round(1 - float(v["sparsity"]), 4)
                   for layer, v in mask_statistics(getattr(masked, name).mask, None).items() if layer != "total"}
            for name in algorithm.losses
        },
        "kept_values_layers": {name: _indices_paths(getattr(fast, name).indices)
                               for name in sparse_networks(fast, algorithm.losses)},
        "max_abs_difference_after_steps": {
            "params": float(max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
                lambda a, b: jnp.max(jnp.abs(a - b)),
                [getattr(after_masked, n).params for n in algorithm.losses],
                [getattr(after_fast, n).params for n in algorithm.losses])))),
            "metrics": {k: float(abs(metrics_masked[k] - metrics_fast[k])) for k in metrics_masked},
        },
    }


def _indices_paths(indices) -> list[str]:
    return ["/".join(str(p.key) for p in path[:-1]) for path, _ in jax.tree_util.tree_flatten_with_path(indices)[0]]


def sparse_layer_sweep(rounds: int, length: int = 500) -> list[dict]:
    """One 256→256 layer, forward and backward (values and inputs), feature-major kept values against
    ``(θ ⊙ m)ᵀ @ x``: where the sparse matmul pays on this CPU, by density and batch size."""
    from jax.experimental import sparse as jsparse

    rows = []
    rng = np.random.default_rng(0)
    for batch in (256, 1024):
        for density in (0.01, 0.03, 0.05, 0.08):
            w = rng.standard_normal((256, 256)).astype(np.float32) / 16
            m = (rng.random((256, 256)) < density).astype(np.float32)
            x = jnp.asarray(rng.standard_normal((256, batch)).astype(np.float32))
            indices = jnp.asarray(np.argwhere(m > 0).astype(np.int32))
            values = jnp.asarray(w[m > 0])

            def dense_loss(w, x):
                return jnp.sum(jnp.tanh((w * m) @ x))

            def sparse_loss(v, x):
                kernel = jsparse.BCOO((v, indices), shape=(256, 256), indices_sorted=True, unique_indices=True)
                return jnp.sum(jnp.tanh(kernel @ x))

            def chain(loss):
                def body(carry, _):
                    p, x = carry
                    gp, gx = jax.grad(loss, argnums=(0, 1))(p, x)
                    return (p - 1e-4 * gp, x - 1e-4 * gx), None

                return jax.jit(lambda p: jax.lax.scan(body, (p, x), None, length=length)[0])

            dense_chain, sparse_chain = chain(dense_loss), chain(sparse_loss)
            w_j = jnp.asarray(w)
            times = interleaved_seconds({"masked": lambda: dense_chain(w_j), "sparse": lambda: sparse_chain(values)}, rounds)
            ratio = statistics.median(d / s for d, s in zip(times["masked"], times["sparse"]))
            rows.append({"batch": batch, "density": density, "sparse_vs_masked_median": round(ratio, 3)})
            print(f"  layer 256x256, batch {batch}, density {density:.0%}: sparse/masked speed {ratio:.2f}x", flush=True)
    return rows


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
    parser.add_argument("--only", choices=["updates", "seeds", "evaluate", "frozen"], default=None,
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
    if args.only == "frozen":
        return _frozen_only(results, args, device)
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
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux
        pass
    isa = [name for name in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if name in flags]
    return {"cpu_model": model, "cpu_isa": isa, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def frozen_layout_runs(dataset, work: Path, steps: int, rounds: int, algos=("bc", "iql")) -> dict:
    """Whole sparse runs (refreshes, evaluations, checkpoints) with the frozen phase on kept weights
    against the masked layout, run in turn: what the trainer's switch buys end to end. The masks
    are final after 20% of the steps, as in the paper's protocol."""
    out = {}
    for algo in algos:
        walls = {"kept-values": [], "masked": []}
        for _ in range(rounds):
            for layout in walls:
                config = RunConfig(algo=algo, dataset="bench", size=5_000, validation_size=5_000, sparsity=0.95,
                                   steps=steps, eval_every=steps // 4, eval_episodes=2, mask_interval=steps // 10,
                                   mask_until=steps // 5, frozen_layout=layout)
                started = time.perf_counter()
                summary = train(config, work / f"{algo}-{layout}", dataset=dataset, progress=False, overwrite=True)
                walls[layout].append(time.perf_counter() - started)
                if layout == "kept-values":
                    networks = summary["frozen_phase"]["kept_values_networks"]
        ratio = statistics.median(m / k for m, k in zip(walls["masked"], walls["kept-values"]))
        out[algo] = {"steps": steps, "wall_s": {k: [round(t, 1) for t in v] for k, v in walls.items()},
                     "kept_values_speedup_median": round(ratio, 3), "kept_values_networks": networks}
        print(f"{algo:6s} whole run of {steps:,} steps: masked / kept-values wall time {ratio:.2f}x "
              f"(kept: {', '.join(networks) or 'none'})", flush=True)
    return out


def _frozen_only(results: dict, args: argparse.Namespace, device: str) -> None:
    del results["updates_per_s"]
    steps, rounds = (50, 2) if args.quick else (300, 7)
    results["load_average_before"] = os.getloadavg()
    results["frozen_phase"] = {}
    for algo in ("bc", "td3bc", "awac", "iql"):
        row = frozen_phase(algo, steps, rounds)
        results["frozen_phase"][algo] = row
        print(f"{algo:6s} updates/s {row['updates_per_s']}, sparse layout / masked "
              f"{row['sparse_layout_vs_masked']['median']:.2f}x (median of {rounds} rounds)", flush=True)
    results["sparse_layer"] = sparse_layer_sweep(rounds)
    with scratch(args.quick) as (dataset, work):
        results["whole_runs"] = frozen_layout_runs(dataset, work, 400 if args.quick else 20_000, 1 if args.quick else 2)
    results["load_average_after"] = os.getloadavg()
    _write(results, args, device, suffix="-frozen")


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
