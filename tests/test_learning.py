"""Learning on a small real MuJoCo dataset: every algorithm improves the return.

The data are 8k transitions of the shipped Hopper expert policy (stochastic), collected
on the fly; each algorithm trains for 3k steps with Sparse-Reg on ("auto": 95%).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_reg.algorithms import get_algorithm
from sparse_reg.data.collect import behaviour_policy_fn, collect_rollouts
from sparse_reg.data.reference import D4RL_REFERENCE_SCORES
from sparse_reg.data.shipped_policies import load_policy, policy_dir
from sparse_reg.training.config import RunConfig
from sparse_reg.training.evaluation import RolloutEvaluator, make_policy
from sparse_reg.training.trainer import PreparedData, initial_state, train


@pytest.fixture(scope="module")
def hopper_expert():
    policy = load_policy(policy_dir() / "hopper" / "expert.npz")
    data = collect_rollouts(behaviour_policy_fn(policy), "Hopper-v5", 8000, seed=0, n_envs=8)
    return data.replace(env_id="Hopper-v5", reference=D4RL_REFERENCE_SCORES["hopper"])


def untrained_return(config: RunConfig, dataset) -> float:
    data = PreparedData.from_config(config, dataset)
    state, _ = initial_state(config, dataset.obs_dim, dataset.action_dim, masked=False)
    policy = jax.jit(make_policy(get_algorithm(config.algo).act))
    normalizer = (jnp.asarray(data.normalizer.mean), jnp.asarray(data.normalizer.std))
    evaluator = RolloutEvaluator("Hopper-v5", config.eval_episodes)
    try:
        return float(np.mean(evaluator.run(lambda obs: np.asarray(policy(state, normalizer, obs)), seed=0)))
    finally:
        evaluator.close()


# BC and TD3+BC refresh their masks every 1000 steps; AWAC and IQL keep the mask of step 0. A refresh
# disturbs an advantage-weighted actor (docs/results/figure5-quick), and within 3000 steps that made
# their test a draw on the data's bits (the BLAS kernel rounds the behaviour policy: docs/datasets.md)
# and on XLA's rounding: with refreshes IQL ended at 35-1030, under 300 in 2 of 4 runs (data seeds
# 0-2; seed 0 again under this suite's XLA flags), AWAC at 231 and 2455 (seeds 2, 1). With the mask
# of step 0: IQL 945-2406, AWAC 505-3261 over seeds 0-2 and both kernels. BC and TD3+BC with
# refreshes: 743-1486 (seeds 1, 2).
MASKS_KEPT_FROM_STEP_0 = ("awac", "iql")


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["bc", "td3bc", "awac", "iql"])
def test_short_sparse_run_improves_return(tmp_path, hopper_expert, algo):
    # One evaluation, at the end: the assertions read only the last one, and evaluations change
    # nothing in the training (chunks still end at the mask refreshes, every 1000 steps for BC/TD3+BC; the final
    # evaluation's seed depends on the step alone), so the final return is the one an evaluation
    # every 1000 steps gives (checked: identical for BC); the two left out cost ~3 s of CPU of BC's ~11.
    config = RunConfig(algo=algo, dataset="hopper-expert-sample", size=5000, validation_size=3000, steps=3000,
                       eval_every=3000, eval_episodes=5, sparsity="auto", mask_interval=1000,
                       mask_until=0 if algo in MASKS_KEPT_FROM_STEP_0 else RunConfig().mask_until)
    before = untrained_return(config, hopper_expert)
    summary = train(config, tmp_path / algo, dataset=hopper_expert, progress=False)
    after = summary["final_return"]
    assert summary["sparsity"] == {name: pytest.approx(0.95, abs=1e-3) for name in summary["sparsity"]}
    assert set(summary["sparsity"]) == set(get_algorithm(algo).losses)  # every network is masked
    assert np.isfinite(summary["eval_history"][-1]["validation_mse"])
    # Random actions score ~16 on Hopper-v5, an untrained policy ~10-200; the data's policy ~3200.
    assert after > max(3 * before, 300), (before, [r["return_mean"] for r in summary["eval_history"]])
