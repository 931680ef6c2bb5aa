"""The SparseReg object (JAX): the schedule it keeps, exact kept counts, masked targets, per-head top-k,
the debug check, jit, and resume through a checkpoint of the agent."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization, struct
from flax.training.train_state import TrainState

import sparse_reg as sr
from sparse_reg.sparsity import is_weight_matrix


class MLP(nn.Module):
    out: int = 2

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(self.out)(x)


class TwinQ(nn.Module):
    @nn.compact
    def __call__(self, obs, act):
        x = jnp.concatenate([obs, act], -1)
        return MLP(1)(x)[..., 0], MLP(1)(x)[..., 0]


class CriticState(TrainState):
    target_params: Any = None


class Agent(struct.PyTreeNode):
    actor: TrainState
    critic: CriticState


class Batch(struct.PyTreeNode):
    obs: jax.Array
    act: jax.Array


def actor_loss(agent, batch):  # reads the critic's target, masked with the critic's online mask
    act = jnp.tanh(sr.SparseReg.apply(agent.actor, batch.obs))
    return -jnp.mean(jnp.minimum(*sr.SparseReg.apply(agent.critic, batch.obs, act, params=agent.critic.target_params)))


def critic_loss(agent, batch, key):
    q1, q2 = sr.SparseReg.apply(agent.critic, batch.obs, batch.act)
    target = jnp.sum(batch.act, -1)
    return jnp.mean((q1 - target) ** 2) + jnp.mean((q2 - target) ** 2), {"q1": jnp.mean(q1)}


LOSSES = {"actor": actor_loss, "critic": critic_loss}


def make_agent(sparse: sr.SparseReg, seed: int = 0) -> tuple[Agent, Batch]:
    rng = np.random.default_rng(seed)
    batch = Batch(jnp.asarray(rng.normal(size=(64, 5)), jnp.float32), jnp.asarray(rng.uniform(-1, 1, (64, 2)), jnp.float32))
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    actor, critic = MLP(2), TwinQ()
    critic_params = critic.init(k2, batch.obs, batch.act)["params"]
    agent = Agent(
        actor=TrainState.create(apply_fn=actor.apply, params=actor.init(k1, batch.obs)["params"],
                                tx=sparse.tx(optax.adam(1e-3))),
        critic=CriticState.create(apply_fn=critic.apply, params=critic_params, target_params=critic_params,
                                  tx=sparse.tx(optax.adamw(1e-3, weight_decay=0.01))),
    )
    return agent, batch


@jax.jit
def update(agent: Agent, batch: Batch) -> Agent:
    grads_a = jax.grad(lambda p: actor_loss(agent.replace(actor=agent.actor.replace(params=p)), batch))(agent.actor.params)
    grads_c = jax.grad(lambda p: critic_loss(agent.replace(critic=agent.critic.replace(params=p)), batch, None)[0])(
        agent.critic.params)
    critic = agent.critic.apply_gradients(grads=grads_c)
    critic = critic.replace(target_params=optax.incremental_update(critic.params, critic.target_params, 0.05))
    return agent.replace(actor=agent.actor.apply_gradients(grads=grads_a), critic=critic)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))


def kept_weights(masks) -> int:
    return int(sum(float(m.sum()) for path, m in jax.tree_util.tree_flatten_with_path(masks)[0]
                   if is_weight_matrix(path, m)))


def weight_count(params) -> int:
    return sum(p.size for path, p in jax.tree_util.tree_flatten_with_path(params)[0] if is_weight_matrix(path, p))


def test_schedule_is_every_n_until_m_and_sfi():
    paper = sr.Schedule()
    assert (paper.every, paper.until) == (5_000, 200_000)
    assert paper.steps(1_000_000) == list(range(0, 200_000, 5_000))
    assert paper.last_refresh == 195_000 and not paper.due(200_000) and not paper.due(1750)
    assert sr.Schedule(every=100, until=350).steps(10_000) == [0, 100, 200, 300]
    assert sr.Schedule.at_init().steps(10_000) == [0]
    with pytest.raises(ValueError):
        sr.Schedule(every=0)
    assert sr.SparseRegConfig(0.9, 100, 350).schedule == sr.Schedule(100, 350)


def test_exact_kept_counts_per_network_and_snip_of_the_full_network():
    sparse = sr.SparseReg(LOSSES, sparsity=0.95)
    before, batch = make_agent(sparse)
    agent = sparse.maybe_refresh(0, before, batch)
    for name, masks in sparse.masks(agent).items():
        n = weight_count(getattr(agent, name).params)
        assert kept_weights(masks) == round(0.05 * n), name
    assert set(sparse.last_stats) == {"actor", "critic"}
    # The actor's masks are an independent top-k of |θ · ∂L/∂θ| on its full network (the critic as it was).
    expected = sr.snip_masks(lambda p: actor_loss(before.replace(actor=before.actor.replace(params=p)), batch),
                             before.actor.params, sparsity=0.95)
    assert same(sparse.masks(agent)["actor"], expected)


def test_refresh_outside_the_schedule_changes_nothing_and_masks_change_at_scheduled_steps_only():
    sparse = sr.SparseReg(LOSSES, sparsity=0.9, schedule=sr.Schedule(every=10, until=35))
    agent, batch = make_agent(sparse, seed=1)
    changed_at, previous = [], sparse.masks(agent)
    for step in range(60):
        refreshed = sparse.maybe_refresh(step, agent, batch)
        if not sparse.due(step):
            assert refreshed is agent  # nothing at all happens off the schedule
        agent = update(refreshed, batch)
        masks = sparse.masks(agent)
        if not same(masks, previous):
            changed_at.append(step)
        previous = masks
    assert changed_at == [0, 10, 20, 30]  # every scheduled step changes the masks (the weights moved), none other


def test_dense_sparsity_never_refreshes():
    sparse = sr.SparseReg(LOSSES, sparsity=0.0)
    agent, batch = make_agent(sparse)
    assert sparse.maybe_refresh(0, agent, batch) is agent
    assert sparse.weight_sparsity(agent) == {"actor": 0.0, "critic": 0.0}


def test_target_runs_with_the_online_mask_and_pruned_weights_stay_frozen():
    sparse = sr.SparseReg(LOSSES, sparsity=0.95, schedule=sr.Schedule.at_init())
    agent, batch = make_agent(sparse, seed=2)
    agent = sparse.maybe_refresh(0, agent, batch)
    before = agent
    for _ in range(100):
        agent = update(agent, batch)
    masks = sparse.masks(agent)["critic"]
    effective_target = sparse.params(agent.critic, agent.critic.target_params)
    for t, m in zip(leaves(effective_target), leaves(masks)):
        assert np.all(t[m == 0] == 0)
    assert any(np.any(t[m == 1] != 0) for t, m in zip(leaves(effective_target), leaves(masks)))
    for name in LOSSES:
        for p0, p1, m in zip(leaves(getattr(before, name).params), leaves(getattr(agent, name).params),
                             leaves(sparse.masks(agent)[name])):
            np.testing.assert_array_equal(p1[m == 0], p0[m == 0])  # frozen, not zeroed (Adam, AdamW)


def test_per_head_topk_keeps_exactly_k_in_each_q_network():
    batch_agent = make_agent(sr.SparseReg(LOSSES))
    batch = batch_agent[1]
    one = sr.SparseReg(LOSSES, sparsity=0.95)
    two = sr.SparseReg(LOSSES, sparsity=0.95, per_head=["critic"])
    per_head = two.maybe_refresh(0, batch_agent[0], batch)
    global_ = one.maybe_refresh(0, batch_agent[0], batch)
    heads = two.masks(per_head)["critic"]
    n_head = weight_count(per_head.critic.params["MLP_0"])
    assert kept_weights(heads["MLP_0"]) == kept_weights(heads["MLP_1"]) == round(0.05 * n_head)
    g = one.masks(global_)["critic"]
    assert kept_weights(g) == round(0.05 * 2 * n_head)
    assert same(two.masks(per_head)["actor"], one.masks(global_)["actor"])  # per_head only touches the critic
    with pytest.raises(ValueError, match="per_head"):
        sr.SparseReg(LOSSES, per_head=["value"])


def test_per_head_topk_over_a_stacked_ensemble_axis():
    rng = np.random.default_rng(0)
    scores = {"Dense_0": {"kernel": jnp.asarray(rng.random((2, 5, 8))), "bias": jnp.asarray(rng.random((2, 8)))},
              "Dense_1": {"kernel": jnp.asarray(rng.random((2, 8, 1)) * 10)}}  # head 1's second layer dominates
    masks = sr.topk_masks(scores, sparsity=0.75, group_of=sr.STACKED)
    for h in range(2):
        kept = float(masks["Dense_0"]["kernel"][h].sum() + masks["Dense_1"]["kernel"][h].sum())
        assert kept == round(0.25 * 48)
        expected = sr.topk_masks({"Dense_0": {"kernel": scores["Dense_0"]["kernel"][h]},
                                  "Dense_1": {"kernel": scores["Dense_1"]["kernel"][h]}}, sparsity=0.75)
        np.testing.assert_array_equal(np.asarray(masks["Dense_0"]["kernel"][h]), np.asarray(expected["Dense_0"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(masks["Dense_0"]["bias"]), 1.0)
    with pytest.raises(ValueError, match="leading"):
        sr.topk_masks({"a": {"kernel": jnp.ones((2, 3, 3))}, "b": {"kernel": jnp.ones((3, 3, 3))}}, sparsity=0.5,
                      group_of=sr.STACKED)


def test_debug_catches_a_forward_pass_without_masks():
    def leaky_actor_loss(agent, batch):  # the critic's target run with raw params: the dense network
        act = jnp.tanh(sr.SparseReg.apply(agent.actor, batch.obs))
        return -jnp.mean(agent.critic.apply_fn({"params": agent.critic.target_params}, batch.obs, act)[0])

    good = sr.SparseReg(LOSSES, sparsity=0.9, debug=True)
    agent, batch = make_agent(good, seed=3)
    good.maybe_refresh(0, agent, batch)  # passes
    bad = sr.SparseReg({"actor": leaky_actor_loss, "critic": critic_loss}, sparsity=0.9, debug=True)
    with pytest.raises(sr.SparseRegMisuseError, match="'actor'.*'critic'"):
        bad.maybe_refresh(0, agent, batch)


def test_losses_may_return_a_scalar_and_take_no_key():
    sparse = sr.SparseReg({"actor": lambda agent, batch: actor_loss(agent, batch),
                           "critic": lambda agent, batch: critic_loss(agent, batch, None)[0]}, sparsity=0.9)
    reference = sr.SparseReg(LOSSES, sparsity=0.9)
    agent, batch = make_agent(sparse, seed=4)
    assert same(sparse.masks(sparse.maybe_refresh(0, agent, batch)),
                reference.masks(reference.maybe_refresh(0, agent, batch)))


def test_one_train_state_alone():
    module = MLP(2)
    x = jnp.ones((8, 5))
    sparse = sr.SparseReg(lambda state, batch: jnp.mean(sr.SparseReg.apply(state, batch) ** 2), sparsity=0.9)
    state = TrainState.create(apply_fn=module.apply, params=module.init(jax.random.PRNGKey(0), x)["params"],
                              tx=sparse.tx(optax.adam(1e-3)))
    state = sparse.maybe_refresh(0, state, x)
    assert kept_weights(sparse.masks(state)[None]) == round(0.1 * weight_count(state.params))


def test_jit_and_eager_refresh_agree():
    jitted = sr.SparseReg(LOSSES, sparsity=0.95)
    eager = sr.SparseReg(LOSSES, sparsity=0.95, jit=False)
    agent, batch = make_agent(jitted, seed=5)
    assert same(jitted.masks(jitted.maybe_refresh(0, agent, batch)), eager.masks(eager.maybe_refresh(0, agent, batch)))


def test_resume_from_a_checkpoint_gives_the_same_masks():
    def run(sparse, agent, batch, start, stop):
        for step in range(start, stop):
            agent = update(sparse.maybe_refresh(step, agent, batch), batch)
        return agent

    sparse = sr.SparseReg(LOSSES, sparsity=0.9, schedule=sr.Schedule(every=10, until=40))
    agent, batch = make_agent(sparse, seed=6)
    straight = run(sparse, agent, batch, 0, 50)
    halfway = serialization.to_bytes(run(sparse, agent, batch, 0, 25))
    fresh = sr.SparseReg(LOSSES, sparsity=0.9, schedule=sr.Schedule(every=10, until=40))
    resumed = run(fresh, serialization.from_bytes(make_agent(fresh, seed=6)[0], halfway), batch, 25, 50)
    assert same(sparse.masks(straight), fresh.masks(resumed))
    assert same(straight.actor.params, resumed.actor.params)


def test_the_core_never_imports_torch_and_sparse_reg_torch_names_its_extra():
    import subprocess
    import sys

    core = "import sys, sparse_reg, sparse_reg.regularizer; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", core], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    without = "import sys; sys.modules['torch'] = None; import sparse_reg.torch"  # as if torch were not installed
    result = subprocess.run([sys.executable, "-c", without], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: sparse_reg.torch needs PyTorch: pip install 'sparse-reg[torch]'")
