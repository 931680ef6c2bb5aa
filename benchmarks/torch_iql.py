"""Dense vs Sparse-Reg update rate of the PyTorch IQL example (examples/iql_torch.py), in one invocation.

    python benchmarks/torch_iql.py                # 5 rounds x 200 updates each way (~1-2 min on 1 thread)
    python benchmarks/torch_iql.py --quick        # a smoke run (numbers meaningless)

The same agent, batch size 256 and hidden 256, once as written (dense: no Sparse-Reg at all)
and once with ``sparse_reg.torch.SparseReg`` at 95% sparsity (masks through parametrize, the
optimiser hooks that keep pruned weights frozen); the two alternate round by round so a
change of load on the host hits both. Also the time of one refresh (three networks). Writes
``benchmarks/results/torch-iql-<cpu>.json`` with host, date, commit and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).parent))

import iql_torch  # noqa: E402
from speed import machine_description  # noqa: E402

from sparse_reg.provenance import code_version  # noqa: E402
from sparse_reg.torch import SparseReg  # noqa: E402


def make(sparsity: float, data, batch_size: int, seed: int = 0):
    agent = iql_torch.IQL(data[0].shape[1], data[1].shape[1], 256, 3e-4, seed)
    generator = torch.Generator().manual_seed(seed)
    batch = [x[torch.randint(0, len(x), (batch_size,), generator=generator)] for x in data]
    refresh_s = None
    if sparsity:
        sparse = SparseReg(dict(actor=agent.actor, critic=agent.critic, value=agent.value),
                           dict(actor=agent.actor_loss, critic=agent.critic_loss, value=agent.value_loss),
                           sparsity=sparsity, targets=dict(critic=agent.critic_target), optimizers=agent.optimizers)
        sparse.refresh(batch)  # the first refresh (warm-up)
        started = time.perf_counter()
        sparse.refresh(batch)
        refresh_s = time.perf_counter() - started
    return agent, batch, refresh_s


def updates_per_second(agent, batch, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        agent.update(batch)
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared host)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    commit = code_version()  # at the start: the code that runs, whatever is edited meanwhile
    steps, rounds = (20, 1) if args.quick else (200, 5)
    data = [torch.from_numpy(x) for x in iql_torch.synthetic_data(5000, 0)]
    runs = {"dense": make(0.0, data, 256), "sparse95": make(0.95, data, 256)}
    for agent, batch, _ in runs.values():  # warm-up
        updates_per_second(agent, batch, 10)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    load_before = os.getloadavg()
    for _ in range(rounds):
        for name, (agent, batch, _) in runs.items():
            rates[name].append(round(updates_per_second(agent, batch, steps), 1))
    best = {name: max(r) for name, r in rates.items()}
    ratios = [round(s / d, 3) for s, d in zip(rates["sparse95"], rates["dense"])]  # each round: back to back
    results = {
        "benchmark": "torch IQL example (examples/iql_torch.py): dense vs Sparse-Reg 95%, updates/s",
        "host": socket.gethostname(),
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()) + " UTC",
        "commit": commit,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": args.threads,
        "cpu_cores": len(os.sched_getaffinity(0)),
        **machine_description(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "batch_size": 256, "hidden": 256, "updates_per_round": steps, "rounds": rounds,
        "updates_per_s_per_round": rates,
        "updates_per_s_best": best,
        "sparse_over_dense": round(best["sparse95"] / best["dense"], 3),  # best over best
        "sparse_over_dense_per_round": ratios,
        "sparse_over_dense_median_round": statistics.median(ratios),
        "refresh_s": round(runs["sparse95"][2], 4),
    }
    print(f"dense {best['dense']} updates/s, Sparse-Reg 95% {best['sparse95']} updates/s "
          f"(ratio {results['sparse_over_dense']}, median of per-round ratios {results['sparse_over_dense_median_round']}), one refresh of 3 networks {results['refresh_s']} s; "
          f"load average {results['load_average_before']} -> {results['load_average_after']}")
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "torch-iql-cpu.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written to {path}")


if __name__ == "__main__":
    main()
