"""How fast does dataset building collect transitions?

Rolls out a stochastic behaviour policy of the shipped architecture (the shipped HalfCheetah
expert if there is one, else ``--policy``, else random weights of the same 17-256-256-6 shape:
the cost is the same) with the collector the registry uses, and writes transitions/s to
``benchmarks/results/collect_speed.json``. The machine's load average is recorded next to the
figure, since MuJoCo stepping is single-threaded and slows down on a busy machine.

    python benchmarks/collect_speed.py --transitions 50000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from sparse_reg.data.behaviour_policy import BehaviourPolicy
from sparse_reg.data.collect import DEFAULT_N_ENVS, behaviour_policy_fn, collect_rollouts
from sparse_reg.data.registry import DEFAULT_SIZE
from sparse_reg.data.shipped_policies import load_policy, policy_dir

RESULTS = Path(__file__).resolve().parent / "results" / "collect_speed.json"


def random_policy(obs_dim: int = 17, action_dim: int = 6, width: int = 256, seed: int = 0) -> BehaviourPolicy:
    rng = np.random.default_rng(seed)
    widths = (obs_dim, width, width)
    dense = lambda a, b: (rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32), np.zeros(b, np.float32))  # noqa: E731
    return BehaviourPolicy(
        hidden=tuple(dense(a, b) for a, b in zip(widths[:-1], widths[1:])),
        norms=tuple((np.zeros(w, np.float32), np.ones(w, np.float32), np.ones(w, np.float32), np.zeros(w, np.float32)) for w in widths),
        mean_head=dense(width, action_dim),
        log_std_head=(np.zeros((width, action_dim), np.float32), np.full(action_dim, -1.0, np.float32)),
        metadata={},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--transitions", type=int, default=50_000)
    parser.add_argument("--n-envs", type=int, default=DEFAULT_N_ENVS)
    parser.add_argument("--policy", type=Path, help="a policy .npz (default: shipped halfcheetah expert, else random weights)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    shipped = policy_dir() / "halfcheetah" / "expert.npz"
    if args.policy is not None:
        policy, source = load_policy(args.policy), str(args.policy)
    elif shipped.is_file() and args.env == "HalfCheetah-v5":
        policy, source = load_policy(shipped), str(shipped)
    else:
        policy, source = random_policy(), "random weights, 17-256-256-6 (shipped architecture)"

    load_before = os.getloadavg()
    start = time.perf_counter()
    data = collect_rollouts(behaviour_policy_fn(policy), args.env, args.transitions, seed=0, n_envs=args.n_envs, progress=True)
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()
    rate = len(data) / seconds
    result = {
        "env_id": args.env,
        "transitions": len(data),
        "n_envs": args.n_envs,
        "seconds": round(seconds, 2),
        "transitions_per_s": round(rate, 1),
        "projected_seconds_for_default_size": round(DEFAULT_SIZE / rate, 1),
        "policy": source,
        "load_average_1_5_15min_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15min_after": [round(x, 2) for x in load_after],
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "versions": {pkg: importlib_metadata.version(pkg) for pkg in ("gymnasium", "mujoco", "numpy")},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
