"""A/B of XLA CPU compiler flags on pure update throughput.

    python benchmarks/xla_flags.py                      # IQL dense, every candidate, 2 rounds
    python benchmarks/xla_flags.py --algo bc --rounds 3
    python benchmarks/xla_flags.py --candidates default,no_eigen_threads

``XLA_FLAGS`` is read once when the backend starts, so every candidate runs in a fresh child
process (compilation cache off, so no candidate loads another's program). Candidates are
interleaved round by round (A B C ... A B C ...) so slow drift of the machine hits all of them
alike; each child reports the best of ``--repeats`` timed scans. Writes
``benchmarks/results/xla-flags-<device>-<algo>.json``. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Flags this jaxlib (0.10.x) accepts that plausibly matter for small dense MLP updates.
CANDIDATES: dict[str, str] = {
    "default": "",
    "no_eigen_threads": "--xla_cpu_multi_thread_eigen=false",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn_dot_fusion": "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "ynn_dot_fusion": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "onednn": "--xla_cpu_use_onednn=true",
    "concurrency_scheduler": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "fast_runtime_preset": "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
    "no_thunk_runtime": "--xla_cpu_use_thunk_runtime=false",
}


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the speed benchmark beside this file


def machine_description() -> dict:
    from speed import machine_description as describe

    return {**describe(), "xla_flags": "per candidate"}


def child(algo: str, sparsity: float, steps: int, repeats: int) -> None:
    from speed import updates_per_second  # same measurement as the speed benchmark

    print(json.dumps({"updates_per_s": updates_per_second(algo, sparsity, steps, repeats)}))


def measure(flags: str, args: argparse.Namespace) -> float | None:
    env = dict(os.environ, XLA_FLAGS=flags, SPARSE_REG_JAX_CACHE="off")
    command = [sys.executable, __file__, "--child", "--algo", args.algo,
               "--sparsity", str(args.sparsity), "--steps", str(args.steps),
               "--repeats", str(args.repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # a flag this build rejects: record it, do not stop the A/B
        print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed",
              file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["updates_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="iql", choices=["bc", "td3bc", "awac", "iql"])
    parser.add_argument("--sparsity", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help="comma-separated names from: " + ", ".join(CANDIDATES))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.algo, args.sparsity, args.steps, args.repeats)
        return

    names = args.candidates.split(",")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {', '.join(CANDIDATES)}")
    rates: dict[str, list[float | None]] = {n: [] for n in names}
    for round_index in range(args.rounds):
        for name in names:
            rate = measure(CANDIDATES[name], args)
            rates[name].append(rate)
            shown = f"{rate:7.1f}" if rate is not None else "   fail"
            print(f"round {round_index + 1}  {name:24s} {shown} updates/s", flush=True)

    baseline = max((r for r in rates.get("default", []) if r is not None), default=None)
    print(f"\n{'candidate':24s} {'best':>8s}  vs default")
    summary = {}
    for name in names:
        ok = [r for r in rates[name] if r is not None]
        best = max(ok) if ok else None
        ratio = best / baseline if best and baseline else None
        summary[name] = {"flags": CANDIDATES[name], "updates_per_s": rates[name],
                         "best": best, "vs_default": ratio}
        print(f"{name:24s} {best or float('nan'):8.1f}  "
              f"{'' if ratio is None else f'{ratio - 1:+.1%}'}")

    out = args.out or (Path(__file__).parent / "results" / f"xla-flags-cpu-{args.algo}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["python", "benchmarks/xla_flags.py", *sys.argv[1:]]),
        "algo": args.algo, "sparsity": args.sparsity, "steps": args.steps,
        "repeats": args.repeats, "rounds": args.rounds, "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"), **machine_description(),
        "candidates": summary,
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
