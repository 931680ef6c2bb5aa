"""Pick the expert / medium policies of a behaviour-policy training run and ship them in the package.

Reads the artifacts of ``scripts/train_behaviour_policy.py`` (``checkpoints/step_XXXXXXX.npz``,
each carrying its training-time evaluation in its metadata) and writes

    src/sparse_reg/data/policies/<family>/
        expert.npz              the checkpoint with the best training-time evaluation return
        medium.npz              the checkpoint before it whose evaluation return is closest to
                                one third of the expert's
        replay/step_XXXXXXX.npz training checkpoints for the replay-style datasets, float16:
                                all of them before the medium step, then one every --every
                                steps up to the expert step
        provenance.json         training command, library versions, steps, how expert/medium
                                were picked, and their returns re-measured here with more episodes

The expert's deterministic mean return measured here is the datasets' "expert" reference score.

Example (run once training has finished):

    python scripts/ship_behaviour_policies.py --from artifacts/behaviour/halfcheetah --family halfcheetah
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sparse_reg.data.behaviour_policy import BehaviourPolicy  # noqa: E402
from sparse_reg.data.collect import behaviour_policy_fn, collect_rollouts, evaluate_policy  # noqa: E402
from sparse_reg.data.reference import GYMNASIUM_ENV_FOR_FAMILY  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "sparse_reg" / "data" / "policies"
SELECTION_RULE = (
    "expert = the checkpoint with the best training-time evaluation mean return (deterministic policy, "
    "{train_eval_episodes} episodes; earliest on ties); medium = the checkpoint saved before the expert whose "
    "training-time evaluation mean return is closest to one third of the expert's. Both were then re-evaluated "
    "with {eval_episodes} deterministic and {eval_episodes} stochastic episodes (seed {eval_seed}); "
    "'mean_return' is the deterministic figure."
)


def read_checkpoints(run_dir: Path) -> list[tuple[int, Path, dict]]:
    """(step, file, metadata) for every checkpoint of the run, in training order."""
    files = sorted((run_dir / "checkpoints").glob("step_*.npz"))
    if not files:
        raise SystemExit(f"no checkpoints in {run_dir / 'checkpoints'}")
    checkpoints = []
    for file in files:
        metadata = BehaviourPolicy.load(file).metadata
        if "eval_mean_return" not in metadata:
            raise SystemExit(f"{file}: no eval_mean_return in its metadata")
        checkpoints.append((int(file.stem.split("_")[1]), file, metadata))
    return sorted(checkpoints, key=lambda c: c[0])


def select_expert_and_medium(returns: dict[int, float]) -> tuple[int, int]:
    """Steps of the expert (best return) and medium (before it, closest to a third) checkpoints."""
    expert = max(sorted(returns), key=lambda step: returns[step])  # sorted + max: earliest on ties
    earlier = [step for step in sorted(returns) if step < expert]
    if not earlier:
        raise SystemExit(f"the best checkpoint (step {expert}) is the first one: no medium checkpoint before it")
    target = returns[expert] / 3.0
    medium = min(earlier, key=lambda step: abs(returns[step] - target))
    return expert, medium


def as_float16(policy: BehaviourPolicy) -> BehaviourPolicy:
    """Halve the file size of a replay checkpoint; the registry computes in float32 again."""
    f16 = lambda arrays: tuple(np.asarray(a, dtype=np.float16) for a in arrays)  # noqa: E731
    return BehaviourPolicy(
        hidden=tuple(f16(layer) for layer in policy.hidden),
        norms=tuple(f16(norm) for norm in policy.norms),
        mean_head=f16(policy.mean_head),
        log_std_head=f16(policy.log_std_head),
        metadata=policy.metadata,
    )


def measure(policy: BehaviourPolicy, env_id: str, episodes: int, seed: int, max_episode_steps: int | None) -> dict:
    deterministic = evaluate_policy(behaviour_policy_fn(policy, deterministic=True), env_id, episodes, seed, max_episode_steps)
    stochastic = evaluate_policy(behaviour_policy_fn(policy), env_id, episodes, seed, max_episode_steps)
    return {
        "mean_return": float(deterministic.mean()),
        "std_return": float(deterministic.std()),
        "stochastic_mean_return": float(stochastic.mean()),
        "stochastic_std_return": float(stochastic.std()),
        "eval_episodes": episodes,
        "eval_seed": seed,
    }


def float16_action_error(policies: list[BehaviourPolicy], observations: np.ndarray) -> float:
    """Largest change of a deterministic action caused by storing a checkpoint as float16."""
    worst = 0.0
    for policy in policies:
        restored = as_float16(policy)
        restored = BehaviourPolicy(  # what the registry does at load time: back to float32
            hidden=tuple(tuple(a.astype(np.float32) for a in layer) for layer in restored.hidden),
            norms=tuple(tuple(a.astype(np.float32) for a in norm) for norm in restored.norms),
            mean_head=tuple(a.astype(np.float32) for a in restored.mean_head),
            log_std_head=tuple(a.astype(np.float32) for a in restored.log_std_head),
            metadata=restored.metadata,
        )
        worst = max(worst, float(np.abs(restored.act(observations) - policy.act(observations)).max()))
    return worst


def ship(
    run_dir: Path,
    family: str,
    out_root: Path = DEFAULT_OUT,
    every: int = 20_000,
    eval_episodes: int = 20,
    eval_seed: int = 20_240_601,
    max_episode_steps: int | None = None,
) -> Path:
    """Write ``out_root/family`` from the run in ``run_dir``; returns that directory."""
    env_id = GYMNASIUM_ENV_FOR_FAMILY[family]
    checkpoints = read_checkpoints(run_dir)
    by_step = {step: (file, metadata) for step, file, metadata in checkpoints}
    if any(m.get("env_id", env_id) != env_id for _, _, m in checkpoints):
        raise SystemExit(f"{run_dir}: checkpoints were not trained on {env_id}")
    returns = {step: float(metadata["eval_mean_return"]) for step, _, metadata in checkpoints}
    expert_step, medium_step = select_expert_and_medium(returns)
    # Every checkpoint before the medium one is kept (the medium-replay data would otherwise be
    # a few coarse segments, or only the random warm-up when the run learns fast); after it, one
    # every `every` steps up to the expert.
    replay_steps = [
        step for step in sorted(by_step) if step < expert_step and (step < medium_step or step % every == 0)
    ]
    if not replay_steps:
        raise SystemExit(f"no checkpoint to ship for the replay datasets before the expert step {expert_step}")

    warnings = []
    if not any(step < medium_step for step in replay_steps):
        # The run learnt so fast that the medium checkpoint is (one of) its first: medium-replay
        # would be only the uniform-random warm-up. Denser early checkpoints fix this.
        warnings.append(
            f"no checkpoint before the medium one (step {medium_step}): medium-replay would be uniform random "
            f"actions only; retrain with denser early checkpoints (--eval-every) or use --from-buffer"
        )
    for warning in warnings:
        print(f"[{family}] WARNING: {warning}", flush=True)

    expert = BehaviourPolicy.load(by_step[expert_step][0])
    medium = BehaviourPolicy.load(by_step[medium_step][0])
    print(f"[{family}] expert = step {expert_step} (training eval {returns[expert_step]:.1f}), "
          f"medium = step {medium_step} (training eval {returns[medium_step]:.1f}); re-evaluating ...", flush=True)  # fmt: skip
    expert_measured = measure(expert, env_id, eval_episodes, eval_seed, max_episode_steps)
    medium_measured = measure(medium, env_id, eval_episodes, eval_seed, max_episode_steps)

    # Observations the replay checkpoints actually meet, to check the float16 storage.
    probe = collect_rollouts(behaviour_policy_fn(medium), env_id, 2_000, seed=eval_seed, n_envs=4,
                             max_episode_steps=max_episode_steps).observations  # fmt: skip
    replay_policies = [BehaviourPolicy.load(by_step[step][0]) for step in replay_steps]

    first_metadata = checkpoints[0][2]
    command_file = run_dir / "command.json"
    training = {
        "algorithm": first_metadata.get("algorithm", "sbx CrossQ"),
        "env_id": env_id,
        "command": first_metadata.get("command")
        or (" ".join(json.loads(command_file.read_text())["argv"]) if command_file.is_file() else None),
        "seed": first_metadata.get("seed"),
        "versions": first_metadata.get("versions"),
        "python": first_metadata.get("python"),
        "checkpoint_steps": [step for step, _, _ in checkpoints],
        "last_step": checkpoints[-1][0],
        "train_eval_episodes": first_metadata.get("eval_episodes"),
        "evaluations_csv": _read_evaluations(run_dir / "evaluations.csv"),
    }
    role = lambda step, measured: {  # noqa: E731
        "file": None,  # filled in below
        "step": step,
        "source_checkpoint": by_step[step][0].name,
        "training_eval_mean_return": returns[step],
        "training_eval_std_return": by_step[step][1].get("eval_std_return"),
        **measured,
    }
    provenance = {
        "family": family,
        "env_id": env_id,
        "training": training,
        "selection": SELECTION_RULE.format(
            train_eval_episodes=training["train_eval_episodes"], eval_episodes=eval_episodes, eval_seed=eval_seed
        ),
        "expert": {**role(expert_step, expert_measured), "file": "expert.npz"},
        "medium": {
            **role(medium_step, medium_measured),
            "file": "medium.npz",
            "target_return": returns[expert_step] / 3.0,
        },
        "replay": {
            "every": every,
            "dense_until_step": medium_step,
            "steps": replay_steps,
            "dtype": "float16",
            "float16_max_action_error": float16_action_error(replay_policies, probe),
            "note": "Checkpoint k acts for the steps until checkpoint k+1 when the replay-style datasets are "
            "built; uniform random actions before the first. This approximates the true replay buffer.",
        },
        "warnings": warnings,
        "max_episode_steps": max_episode_steps,
        "shipped_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "shipped_with": "scripts/ship_behaviour_policies.py",
    }

    # Write next to the destination and swap in, so a failed run never leaves half a family.
    destination = out_root / family
    staging = out_root / f".shipping-{family}-{uuid.uuid4().hex[:8]}"
    (staging / "replay").mkdir(parents=True)
    try:
        shutil.copyfile(by_step[expert_step][0], staging / "expert.npz")
        shutil.copyfile(by_step[medium_step][0], staging / "medium.npz")
        for step, policy in zip(replay_steps, replay_policies):
            as_float16(policy).save(staging / "replay" / f"step_{step:07d}.npz")
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if destination.exists():
            old = out_root / f".old-{family}-{uuid.uuid4().hex[:8]}"
            os.replace(destination, old)
            shutil.rmtree(old)
        os.replace(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in destination.rglob("*") if f.is_file())
    print(
        f"[{family}] shipped to {destination} ({size / 1e6:.1f} MB): expert {expert_measured['mean_return']:.1f}, "
        f"medium {medium_measured['mean_return']:.1f} (deterministic, {eval_episodes} episodes), "
        f"{len(replay_steps)} replay checkpoints",
        flush=True,
    )
    return destination


def _read_evaluations(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="run_dir", type=Path, required=True, help="e.g. artifacts/behaviour/hopper")
    parser.add_argument("--family", required=True, choices=sorted(GYMNASIUM_ENV_FOR_FAMILY))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="policies root (default: the package's)")
    parser.add_argument("--every", type=int, default=20_000, help="keep replay checkpoints every N steps")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--eval-seed", type=int, default=20_240_601)
    args = parser.parse_args()
    ship(args.run_dir, args.family, args.out, args.every, args.eval_episodes, args.eval_seed)


if __name__ == "__main__":
    main()
