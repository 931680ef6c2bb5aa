"""How far the live-units layout drifts from the masked one over a sparse IQL run, next to how far the
masked layout drifts from itself when every parameter is moved by one float32 ulp at the start:

    python benchmarks/layout_divergence.py [STEPS]   # default 6000 (~5 min on 2 busy CPU cores)

The quick budget's data (halfcheetah-expert-v0, 5k transitions), 95% sparsity, masks refreshed at 0, 2k
and 4k. Three trajectories from one initial state and key: ``masked``; ``live_units`` (converted at the
start of each stretch with fixed masks, back before each refresh, as the trainer does); ``masked_ulp``
(the masked layout, every parameter nudged by one ulp). Every ``PIECE`` updates it records each loss's
relative difference to ``masked`` (the mean over the piece), and at every stretch end the largest
relative parameter difference and the actor's action difference on 2,000 dataset observations. If the
two layouts differ only by float32 rounding, ``live_units`` should drift like ``masked_ulp``: starting at
~1e-7 and growing at a similar rate. Writes benchmarks/results/layout-divergence-<cpu>.json.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sparse_reg.algorithms import ALGORITHMS
from sparse_reg.live_layout import state_to_dense, state_to_live
from sparse_reg.training.config import RunConfig
from sparse_reg.training.prepare import PreparedData, initial_state, to_device_batch
from sparse_reg.training.trainer import chunk_means, make_chunk_runner, make_mask_refresher

PIECE = 250
REFRESH_EVERY, REFRESH_UNTIL = 2000, 4000


def _relative(a, b) -> float:
    """The largest |a - b| over the largest |b|, over all leaves of two trees."""
    diffs = [float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
    scale = max(float(np.max(np.abs(np.asarray(y)))) for y in jax.tree_util.tree_leaves(b))
    return max(diffs) / scale


def main(steps: int = 6000) -> None:
    config = RunConfig(algo="iql", sparsity=0.95, dataset="halfcheetah-expert-v0", size=5000, steps=steps,
                       mask_interval=REFRESH_EVERY, mask_until=REFRESH_UNTIL)
    algorithm = ALGORITHMS["iql"]
    data = PreparedData.from_config(config)
    batch = to_device_batch(data.train, data.normalizer)
    observations = batch.observations[:2000]
    batch_size = config.algorithm_config().batch_size
    state, key = initial_state(config, data.train.obs_dim, data.train.action_dim, True)
    refresh = make_mask_refresher(algorithm, config.sparse_reg_config(5000), batch_size)
    run = make_chunk_runner(algorithm, batch_size)
    act = jax.jit(lambda s, o: algorithm.act(s, o))
    ulp = lambda tree: jax.tree_util.tree_map(lambda p: jnp.nextafter(p, jnp.inf), tree)  # noqa: E731
    nudged = state.replace(**{n: getattr(state, n).replace(params=ulp(getattr(state, n).params))
                              for n in algorithm.losses})

    trajectories = {}
    for name, start, live in (("masked", state, False), ("live_units", state, True), ("masked_ulp", nudged, False)):
        started = time.perf_counter()
        s, k, losses, ends = start, key, [], []
        for step in range(0, steps, PIECE):
            if step % REFRESH_EVERY == 0 and step <= REFRESH_UNTIL:
                s, k, _ = refresh(s, k, batch)
            if live and step % REFRESH_EVERY == 0:  # the start of a stretch with fixed masks
                s = state_to_live(s, algorithm.losses)
            s, k, sums = run(s, k, batch, PIECE)
            losses.append({m: float(v) for m, v in chunk_means([jax.device_get(sums)]).items()})
            end = step + PIECE
            if end % REFRESH_EVERY == 0 or end == steps:  # its end: back to the masked layout
                s = state_to_dense(s, algorithm.losses) if live else s
                ends.append((end, s))
        trajectories[name] = {"losses": losses, "ends": ends, "seconds": round(time.perf_counter() - started, 1)}
        print(f"{name}: {trajectories[name]['seconds']} s", flush=True)

    reference = trajectories["masked"]
    result = {"steps": steps, "piece": PIECE, "refreshes": list(range(0, REFRESH_UNTIL + 1, REFRESH_EVERY)),
              "loss_relative_difference": {}, "at_stretch_ends": {}}
    for name in ("live_units", "masked_ulp"):
        rows = []
        for i, (ours, theirs) in enumerate(zip(trajectories[name]["losses"], reference["losses"])):
            rows.append({"step": (i + 1) * PIECE, **{m: float(f"{abs(ours[m] - v) / max(abs(v), 1e-12):.2e}")
                                                      for m, v in theirs.items() if m.endswith("_loss")}})
        result["loss_relative_difference"][name] = rows
        ends = []
        for (step, ours), (_, theirs) in zip(trajectories[name]["ends"], reference["ends"]):
            nets = {n: float(f"{_relative(getattr(ours, n).params, getattr(theirs, n).params):.2e}")
                    for n in algorithm.losses}
            a, b = np.asarray(act(ours, observations)), np.asarray(act(theirs, observations))
            ends.append({"step": step, "params_max_relative": nets,
                         "actions_max_abs": float(f"{np.max(np.abs(a - b)):.2e}"),
                         "actions_mean_abs": float(f"{np.mean(np.abs(a - b)):.2e}")})
        result["at_stretch_ends"][name] = ends
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    result.update({
        "seconds": {n: t["seconds"] for n, t in trajectories.items()},
        "commit": subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "cpu": cpu, "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load_average_at_end": os.getloadavg(),
    })
    out = Path(__file__).parent / "results" / f"layout-divergence-{cpu.split()[0].lower()}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name in ("live_units", "masked_ulp"):
        print(name)
        for row in result["loss_relative_difference"][name]:
            print("  ", row)
        for row in result["at_stretch_ends"][name]:
            print("  ", row)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
