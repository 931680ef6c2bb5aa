"""Probes behind the kept-values limit (docs/performance.md, "Frozen-mask phase"), pinned to one core:

    taskset -c 0 python benchmarks/frozen_layout_probes.py per-network iql   # one network converted at a time
    taskset -c 0 python benchmarks/frozen_layout_probes.py ell               # padded ELL vs BCOO, real SNIP masks
    taskset -c 0 python benchmarks/frozen_layout_probes.py conversion        # state_to_sparse + state_to_dense time
    taskset -c 0 python benchmarks/frozen_layout_probes.py live-units RUN    # bound for a live-units layout (issue 28)

Both use IQL's real SNIP masks at 95% (synthetic HalfCheetah-shaped batch, as benchmarks/speed.py)
and print ratios against the dense masked layout, median over interleaved rounds.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse

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
from sparse_reg.sparse_layout import state_to_dense, state_to_sparse, to_sparse  # noqa: E402
from sparse_reg.sparsity import SparseRegConfig  # noqa: E402
from sparse_reg.training.config import RunConfig  # noqa: E402


def masked_state(algo: str):
    algorithm = ALGORITHMS[algo]
    data = synthetic_batch(10_000, jax.random.PRNGKey(1))
    state, key = initial_state(RunConfig(algo=algo, sparsity=0.95, steps=10), OBS_DIM, ACTION_DIM, True)
    state, key, _ = make_mask_refresher(algorithm, SparseRegConfig(0.95), 256)(state, key, data)
    return algorithm, state, key, data


def per_network(algo: str, steps: int = 1000, rounds: int = 7, max_density: float = 0.05) -> None:
    """Whole updates with one network (or a set) in the kept-values layout, the rest masked; every
    hidden layer up to ``max_density`` converted (5%: the limit before these probes moved it)."""
    algorithm, state, key, data = masked_state(algo)
    variants = {"masked": state}
    for name in algorithm.losses:
        variants[name] = state.replace(**{name: to_sparse(getattr(state, name), max_density)})
    variants["all"] = state.replace(**{n: to_sparse(getattr(state, n), max_density) for n in algorithm.losses})
    variants["all_but_critic"] = state.replace(
        **{n: to_sparse(getattr(state, n), max_density) for n in algorithm.losses if n != "critic"})
    run = make_chunk_runner(algorithm, 256)
    times = interleaved_seconds({k: (lambda s=s: run(s, key, data, steps)) for k, s in variants.items()}, rounds)
    for name in variants:
        print(algo, name, round(statistics.median(m / x for m, x in zip(times["masked"], times[name])), 3), flush=True)


def ell_layout(mask: np.ndarray):
    """Per output row its kept inputs, padded to the longest row; and the transposed layout
    (per input, the flat positions of its entries) so the backward pass gathers instead of scattering."""
    kept = np.asarray(mask).T > 0  # (out, in)
    n_out, n_in = kept.shape
    width = max(1, int(kept.sum(1).max()))
    cols = np.zeros((n_out, width), np.int32)
    valid = np.zeros((n_out, width), np.float32)
    for o in range(n_out):
        idx = np.flatnonzero(kept[o])
        cols[o, :idx.size], valid[o, :idx.size] = idx, 1
    width_t = max(1, int(kept.sum(0).max()))
    rows_t = np.zeros((n_in, width_t), np.int32)
    pos_t = np.full((n_in, width_t), n_out * width, np.int32)  # padding points at an appended zero
    fill = np.zeros(n_in, int)
    for o in range(n_out):
        for k in range(width):
            if valid[o, k]:
                i = cols[o, k]
                rows_t[i, fill[i]], pos_t[i, fill[i]] = o, o * width + k
                fill[i] += 1
    return cols, valid, rows_t, pos_t


def ell_matmul(cols, valid, rows_t, pos_t):
    cols, valid, rows_t, pos_t = map(jnp.asarray, (cols, valid, rows_t, pos_t))

    @jax.custom_vjp
    def matmul(values, h):
        return jnp.einsum("ok,okb->ob", values, h[cols])

    def forward(values, h):
        return matmul(values, h), (values, h)

    def backward(residuals, g):
        values, h = residuals
        d_values = jnp.einsum("ob,okb->ok", g, h[cols]) * valid
        flat = jnp.concatenate([values.ravel(), jnp.zeros(1, values.dtype)])
        return d_values, jnp.einsum("ik,ikb->ib", flat[pos_t], g[rows_t])

    matmul.defvjp(forward, backward)
    return matmul


def ell(batch: int = 256, length: int = 500, rounds: int = 5) -> None:
    """Each 256x256 hidden kernel of IQL alone, forward + backward: masked vs BCOO vs padded ELL."""
    algorithm, state, _, _ = masked_state("iql")
    rng = np.random.default_rng(0)
    for name in algorithm.losses:
        net = getattr(state, name)
        for path, m in jax.tree_util.tree_flatten_with_path(net.mask)[0]:
            label = "/".join(str(getattr(q, "key", q)) for q in path)
            if not label.endswith("kernel") or m.shape[-2:] != (256, 256):
                continue
            for head, mask in enumerate(np.asarray(m).reshape(-1, 256, 256)):
                cols, valid, rows_t, pos_t = ell_layout(mask)
                w = rng.standard_normal((256, 256)).astype(np.float32) / 16
                x = jnp.asarray(rng.standard_normal((256, batch)).astype(np.float32))
                matmul = ell_matmul(cols, valid, rows_t, pos_t)
                ell_values = jnp.asarray(np.take_along_axis(w.T, cols, 1) * valid)
                indices = jnp.asarray(np.argwhere(mask.T > 0).astype(np.int32))
                bcoo_values = jnp.asarray(w.T[mask.T > 0])
                mask_j = jnp.asarray(mask)

                def dense_loss(w, x):
                    return jnp.sum(jnp.tanh(jax.lax.dot_general(w * mask_j, x, (((0,), (0,)), ((), ())))))

                def bcoo_loss(v, x):
                    kernel = jsparse.BCOO((v, indices), shape=(256, 256), indices_sorted=True, unique_indices=True)
                    return jnp.sum(jnp.tanh(kernel @ x))

                def ell_loss(v, x):
                    return jnp.sum(jnp.tanh(matmul(v, x)))

                def chain(loss, p0):
                    def body(carry, _):
                        p, h = carry
                        gp, gh = jax.grad(loss, argnums=(0, 1))(p, h)
                        return (p - 1e-4 * gp, h - 1e-4 * gh), None

                    compiled = jax.jit(lambda p: jax.lax.scan(body, (p, x), None, length=length)[0])
                    return lambda: compiled(p0)

                times = interleaved_seconds({"masked": chain(dense_loss, jnp.asarray(w)),
                                             "bcoo": chain(bcoo_loss, bcoo_values),
                                             "ell": chain(ell_loss, ell_values)}, rounds)
                ratio = {k: statistics.median(a / b for a, b in zip(times["masked"], times[k])) for k in ("bcoo", "ell")}
                print(f"{name} {label} head {head}: kept {mask.mean():.3%}, longest row {cols.shape[1]} "
                      f"(mean {mask.sum() / 256:.1f}), longest column {rows_t.shape[1]} | "
                      f"BCOO {ratio['bcoo']:.2f}x, ELL {ratio['ell']:.2f}x", flush=True)


def conversion(max_density: float = 0.05) -> None:
    """Seconds for one conversion pair of a whole train state (what the trainer does per frozen chunk);
    the first pair includes compiling the eager gathers and scatters."""
    import time

    for algo in ("iql", "bc"):
        algorithm, state, _, _ = masked_state(algo)
        for _ in range(3):
            started = time.perf_counter()
            fast = jax.block_until_ready(state_to_sparse(state, algorithm.losses, max_density))
            middle = time.perf_counter()
            jax.block_until_ready(state_to_dense(fast, algorithm.losses))
            print(f"{algo}: to_sparse {middle - started:.3f} s, to_dense {time.perf_counter() - middle:.3f} s", flush=True)


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
    masked = masked.replace(**{n: getattr(masked, n).replace(mask=getattr(trained, n).mask) for n in algorithm.losses})
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["per-network"]:
        per_network(sys.argv[2] if len(sys.argv) > 2 else "iql")
    elif sys.argv[1:2] == ["ell"]:
        ell()
    elif sys.argv[1:2] == ["conversion"]:
        conversion()
    elif sys.argv[1:2] == ["live-units"] and len(sys.argv) > 2:
        live_units_bound(sys.argv[2])
    else:
        sys.exit(__doc__)
