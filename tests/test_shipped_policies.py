"""The behaviour policies shipped in the package: they load without torch and behave like experts."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from sparse_reg.data.reference import GYMNASIUM_ENV_FOR_FAMILY
from sparse_reg.data.registry import FAMILIES
from sparse_reg.data.shipped_policies import ShippedPolicies

SHIPPED = [f for f in FAMILIES if ShippedPolicies.find(f) is not None]


def test_at_least_one_family_is_shipped():
    assert SHIPPED, "no behaviour policies in the package"


def test_shipped_policies_do_not_need_torch():
    # In a fresh interpreter: other tests of this session (sparse_reg.torch, the torch examples) import torch.
    script = (
        "import sys\n"
        "from sparse_reg.data.behaviour_policy import BehaviourPolicy\n"
        "from sparse_reg.data.registry import FAMILIES\n"
        "from sparse_reg.data.shipped_policies import ShippedPolicies\n"
        "import numpy as np\n"
        "for family in FAMILIES:\n"
        "    shipped = ShippedPolicies.find(family)\n"
        "    if shipped is not None:\n"
        "        policy = BehaviourPolicy.load(shipped.policy_file('expert'))\n"
        "        policy.act(np.zeros((1, policy.obs_dim), np.float32))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # nothing the package imported pulled torch in


@pytest.mark.parametrize("family", SHIPPED)
def test_policies_load_and_act_in_range(family):
    shipped = ShippedPolicies.find(family)
    env = gym.make(GYMNASIUM_ENV_FOR_FAMILY[family])
    obs = np.stack([env.observation_space.sample() for _ in range(32)]).astype(np.float32)
    for role in ("expert", "medium"):
        from sparse_reg.data.behaviour_policy import BehaviourPolicy

        policy = BehaviourPolicy.load(shipped.policy_file(role))
        assert policy.obs_dim == env.observation_space.shape[0]
        for actions in (policy.act(obs), policy.act(obs, np.random.default_rng(0))):
            assert actions.shape == (32, env.action_space.shape[0])
            assert np.all(np.abs(actions) <= 1.0)
    provenance = json.loads((shipped.root / "provenance.json").read_text())
    assert provenance["expert"]["mean_return"] > provenance["medium"]["mean_return"]


def segment_return(env_id: str, act, steps: int, seed: int) -> float:
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    total = 0.0
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        total += reward
        if terminated or truncated:
            break
    env.close()
    return total


@pytest.mark.parametrize("family", SHIPPED)
def test_expert_is_far_above_random_on_a_short_segment(family):
    from sparse_reg.data.behaviour_policy import BehaviourPolicy

    env_id = GYMNASIUM_ENV_FOR_FAMILY[family]
    expert = BehaviourPolicy.load(ShippedPolicies.find(family).policy_file("expert"))
    rng = np.random.default_rng(0)
    expert_return = segment_return(env_id, lambda o: expert.act(o[None])[0], 200, seed=1)
    random_return = np.mean([
        segment_return(env_id, lambda o: rng.uniform(-1, 1, expert.action_dim), 200, seed=s) for s in range(3)
    ])
    # 200 steps: HalfCheetah expert ~1900 vs random ~-60; Hopper expert ~640 vs random ~20.
    assert expert_return > random_return + 300, (expert_return, random_return)
