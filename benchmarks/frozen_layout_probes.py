"""The probe that sized the live-units layout before it was built (docs/performance.md, issue 28):

    python benchmarks/frozen_layout_probes.py live-units RUN    # dense IQL at a sparse run's live widths
    python benchmarks/frozen_layout_probes.py widths            # how often refreshes change the padded widths
    python benchmarks/frozen_layout_probes.py profile [ALGO]    # FLOPs and FLOP rate: masked, live units, dense

(The kept-values layout's probes, per-network / ell / conversion, went with that layout; their
results are in docs/performance.md and the git history.)
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from speed import (  # noqa: E402
    ACTION_DIM,
    OBS_DIM,
    initial_state,
    interleaved_seconds,
    make_chunk_runner,
    make_mask_refresher,
    synthetic_batch,
)

from sparse_reg.algorithms import ALGORITHMS  # noqa: E402
from sparse_reg.sparsity import with_masks  # noqa: E402
from sparse_reg.training.config import RunConfig  # noqa: E402


def live_units_bound(run: str, steps: int = 1000, rounds: int = 7) -> None:
    """The most a live-units layout (issue 28: each layer cut to the units its masks leave alive, run as
    dense matmuls) could gain for IQL: whole updates of a dense IQL whose hidden widths are the largest
    live-unit counts over the networks of a trained sparse run (the layout's FLOPs, without its gathers,
    scatters and Adam bookkeeping), against the masked 256-wide update and the dense 256-wide one.

    RUN: a sparse IQL run directory (e.g. 8k steps on halfcheetah-expert-v0 5k, masks at 0/2k/4k/6k).
    Writes benchmarks/results/live-units-bound-<cpu>.json."""
    import json
    import platform
    import subprocess

    from sparse_reg.sparsity import live_units
    from sparse_reg.training.trainer import load_agent

    agent = load_agent(run)
    algorithm, trained = agent.algorithm, agent.state
    counts, widths = {}, [0, 0]
    for name in algorithm.losses:
        alive = live_units(getattr(trained, name).mask)
        counts[name] = {layer: (int(live), units) for layer, (live, units) in alive.items()}
        # One dense width for all networks: the largest live count of any head (twin critic heads count apart).
        for index, (live, _) in enumerate(live_units(getattr(trained, name).mask, per_head=True).values()):
            widths[index] = max(widths[index], int(np.max(live)))
    data = synthetic_batch(10_000, jax.random.PRNGKey(1))
    masked, key = initial_state(RunConfig(algo="iql", sparsity=0.95, steps=steps), OBS_DIM, ACTION_DIM, True)
    masked = masked.replace(**{n: with_masks(getattr(masked, n), getattr(trained, n).mask) for n in algorithm.losses})
    dense, _ = initial_state(RunConfig(algo="iql", sparsity=0.0, steps=steps), OBS_DIM, ACTION_DIM, False)
    narrow, _ = initial_state(RunConfig(algo="iql", sparsity=0.0, steps=steps, hidden_dims=tuple(widths)),
                              OBS_DIM, ACTION_DIM, False)
    run_chunk = make_chunk_runner(ALGORITHMS["iql"], 256)
    times = interleaved_seconds({name: (lambda s=state: run_chunk(s, key, data, steps)) for name, state in
                                 (("masked", masked), ("dense", dense), ("live_width_dense", narrow))}, rounds)
    ratio = {name: round(statistics.median(m / x for m, x in zip(times["masked"], times[name])), 3) for name in times}
    commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    load = Path("/proc/loadavg").read_text().split()[:3]
    result = {"run": run, "step": agent.step, "live_units": counts, "live_width_dense_hidden_dims": widths,
              "updates_per_s": {name: round(steps / min(ts), 1) for name, ts in times.items()},
              "speedup_over_masked_median": ratio, "rounds": rounds, "steps_per_round": steps,
              "commit": commit, "cpu": cpu, "load_average_at_end": load}
    out = Path(__file__).parent / "results" / f"live-units-bound-{cpu.split()[0].lower()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)


def widths(refreshes: int = 15, interval: int = 2000, multiples=(1, 8, 16, 32)) -> None:
    """How many distinct live layouts (so compilations of the update scan) a run's refreshes make when widths
    are rounded up to each multiple, and the matmul work the rounding adds: 95%-sparse IQL on the quick
    budget's data (HalfCheetah expert, 5k transitions), a refresh every ``interval`` masked updates.
    Writes benchmarks/results/live-units-widths-<cpu>.json."""
    import json
    import platform
    import subprocess

    from speed import quick_budget_state

    from sparse_reg.live_layout import LiveNet, to_live

    algorithm, state, key, batch, config = quick_budget_state("iql", 0)
    refresh = make_mask_refresher(algorithm, config.sparse_reg_config(config.size), 256)
    run = make_chunk_runner(algorithm, 256)
    layouts = {m: [] for m in multiples}
    fractions = {m: [] for m in multiples}
    for r in range(refreshes):
        if r:
            state, key, _ = run(state, key, batch, interval)
            state, key, _ = refresh(state, key, batch)
        for m in multiples:
            shapes, work = [], []
            for name in algorithm.losses:
                live = to_live(getattr(state, name), multiple=m)
                assert isinstance(live, LiveNet)
                shapes.append(tuple(leaf.shape for leaf in jax.tree_util.tree_leaves(live.params)))
                work.append(sum(int(np.prod(leaf.shape[-2:])) for path, leaf in
                                jax.tree_util.tree_flatten_with_path(live.params)[0]
                                if getattr(path[-1], "key", None) == "block"))
            layouts[m].append(hash(tuple(shapes)))
            fractions[m].append(sum(work))
        print(f"refresh {r}: block entries {dict((m, fractions[m][-1]) for m in multiples)}", flush=True)
    result = {
        "refreshes": refreshes, "interval": interval,
        "distinct_layouts": {m: len(set(v)) for m, v in layouts.items()},
        "layout_changes_between_refreshes": {m: sum(a != b for a, b in zip(v, v[1:])) for m, v in layouts.items()},
        "mean_block_entries_over_multiple_1": {m: round(float(np.mean(fractions[m]) / np.mean(fractions[1])), 3)
                                               for m in multiples},
        "commit": subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
    }
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    out = Path(__file__).parent / "results" / f"live-units-widths-{cpu.split()[0].lower()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)


def profile(algo: str = "iql", steps: int = 1000, rounds: int = 5) -> None:
    """Where an update's time goes on each layout: XLA's FLOPs of one compiled update (cost analysis) and the
    FLOP rate it runs at (best of interleaved rounds), for the quick budget's masks from step 5k, against
    the same FLOPs at the dense update's rate (what the live layout would reach if its smaller matmuls ran
    as fast). Writes benchmarks/results/live-units-profile-<algo>-<cpu>.json."""
    import json
    import os
    import platform
    import subprocess

    from speed import quick_budget_state

    from sparse_reg.live_layout import state_to_live
    from sparse_reg.training.trainer import sample_batch

    algorithm, masked, key, batch, config = quick_budget_state(algo, 5000)
    live = state_to_live(masked, algorithm.losses)
    dense, _ = initial_state(RunConfig.from_dict({**config.to_dict(), "sparsity": 0.0}),
                             batch.observations.shape[-1], batch.actions.shape[-1], False)
    one = sample_batch(batch, key, 256)
    flops = {}
    for name, state in (("masked", masked), ("live_units", live), ("dense", dense)):
        cost = jax.jit(algorithm.update).lower(state, one).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops[name] = float(cost["flops"])
    run = make_chunk_runner(algorithm, 256)
    times = interleaved_seconds({name: (lambda s=s: run(s, key, batch, steps)) for name, s in
                                 (("masked", masked), ("live_units", live), ("dense", dense))}, rounds)
    rate = {name: steps / min(ts) for name, ts in times.items()}
    result = {
        "algo": algo, "mflop_per_update": {k: round(v / 1e6, 1) for k, v in flops.items()},
        "updates_per_s_best": {k: round(v, 1) for k, v in rate.items()},
        "gflop_per_s": {k: round(flops[k] * rate[k] / 1e9, 1) for k in rate},
        "live_units_at_the_dense_flop_rate_updates_per_s": round(flops["dense"] * rate["dense"] / flops["live_units"], 1),
        "commit": subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "load_average_at_end": os.getloadavg(),
    }
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    out = Path(__file__).parent / "results" / f"live-units-profile-{algo}-{cpu.split()[0].lower()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["live-units"] and len(sys.argv) > 2:
        live_units_bound(sys.argv[2])
    elif sys.argv[1:2] == ["widths"]:
        widths()
    elif sys.argv[1:2] == ["profile"]:
        profile(*sys.argv[2:3])
    else:
        sys.exit(__doc__)
