"""Each algorithm's losses against an independent NumPy computation on a tiny fixed batch.

The networks are tiny (hidden (4, 4), obs_dim 3, action_dim 2) and their parameters are
perturbed away from the initialisation (non-zero biases, targets that differ from the
online nets) so that every term of every formula matters. The NumPy forward pass reads
the Flax parameter tree directly:

    MLP:   params['MLP_0']['Dense_i'] = {'kernel': (in, out), 'bias': (out,)}, ReLU between layers
    TwinQ: params['VmapMLP_0']['Dense_i'] with a leading ensemble axis of 2; input concat(s, a)
    Gaussian actors: params['log_std'] (state independent, clipped to [-20, 2]; [-5, 2] in the paper-code variants)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_reg.algorithms import AWAC, AWAC_PAPER_CODE, BC, IQL, IQL_PAPER_CODE, TD3BC, Batch, get_algorithm, iql
from sparse_reg.algorithms.awac import AWACConfig, AWACPaperCodeConfig
from sparse_reg.algorithms.bc import BCConfig
from sparse_reg.algorithms.iql import IQLConfig, IQLPaperCodeConfig
from sparse_reg.algorithms.td3bc import TD3BCConfig
from sparse_reg.masked_net import value_and_grad_of
from sparse_reg.networks import NetworkConfig

OBS_DIM, ACTION_DIM = 3, 2
TINY = NetworkConfig(hidden_dims=(4, 4))
RTOL = 1e-5

# A fixed batch of 5 transitions.
BATCH_NP = dict(
    observations=np.array(
        [[0.5, -1.2, 0.3], [1.5, 0.2, -0.7], [-0.4, 0.9, 1.1], [0.0, -0.3, -1.6], [2.0, 1.0, 0.5]], np.float32
    ),
    actions=np.array([[0.3, -0.8], [-0.5, 0.1], [0.9, 0.4], [-0.2, -0.6], [0.7, 0.05]], np.float32),
    rewards=np.array([1.0, -0.5, 0.25, 2.0, 0.0], np.float32),
    next_observations=np.array(
        [[0.6, -1.0, 0.2], [1.3, 0.4, -0.9], [-0.6, 1.1, 0.8], [0.2, -0.1, -1.4], [1.8, 1.2, 0.7]], np.float32
    ),
    dones=np.array([0.0, 0.0, 1.0, 0.0, 1.0], np.float32),
)
BATCH = Batch(**{k: jnp.asarray(v) for k, v in BATCH_NP.items()})
S, A, R, S2, D = (BATCH_NP[k].astype(np.float64) for k in
                  ("observations", "actions", "rewards", "next_observations", "dones"))


# ----------------------------------------------------------------------------- helpers

_compiled: dict = {}


def init(algorithm, config, seed=0, total_steps=100):
    key = ("init", algorithm.name)
    if key not in _compiled:
        _compiled[key] = jax.jit(algorithm.init, static_argnums=(0, 1, 2, 4))
    return _compiled[key](config, OBS_DIM, ACTION_DIM, jax.random.PRNGKey(seed), total_steps)


def jitted_update(algorithm):
    key = ("update", algorithm.name)
    if key not in _compiled:
        _compiled[key] = jax.jit(algorithm.update)
    return _compiled[key]


def perturbed(tree, seed, scale=0.3):
    """tree + N(0, scale²) noise on every leaf (biases become non-zero)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: x + jnp.asarray(scale * rng.normal(size=x.shape), x.dtype), tree)


def perturb_state(state, names, seed=0):
    """Perturb online params and make every target a *different* perturbation of them."""
    for i, name in enumerate(names):
        net = getattr(state, name)
        params = perturbed(net.params, seed + 10 * i)
        target = perturbed(params, seed + 10 * i + 1) if net.target is not None else None
        state = state.replace(**{name: net.replace(params=params, target=target)})
    return state


def set_log_std(state, values):
    params = dict(state.actor.params)
    params["log_std"] = jnp.asarray(values, jnp.float32)
    return state.replace(actor=state.actor.replace(params=params))


def np_tree(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), jax.device_get(tree))


def mlp_np(p, x):
    """ReLU MLP from a Flax {'Dense_i': {'kernel','bias'}} dict (in float64)."""
    n = len(p)
    for i in range(n):
        x = x @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"]
        if i < n - 1:
            x = np.maximum(x, 0.0)
    return x


def twin_q_np(params, s, a):
    """(2, batch): Q_e(s, a) = MLP_e(concat(s, a)) for the two heads e = 0, 1."""
    x = np.concatenate([s, a], axis=-1)
    heads = []
    for e in range(2):
        p = {k: {"kernel": v["kernel"][e], "bias": v["bias"][e]} for k, v in params["VmapMLP_0"].items()}
        heads.append(mlp_np(p, x)[:, 0])
    return np.stack(heads)


def gaussian_log_prob_np(mean, log_std, x):
    """log N(x; mean, diag(exp(log_std))²) summed over action dims:
    Σ_d [ −½ ((x_d − μ_d)/σ_d)² − log σ_d − ½ log 2π ]."""
    return np.sum(-0.5 * ((x - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi), axis=-1)


def assert_close(actual, expected, rtol=RTOL):
    np.testing.assert_allclose(float(actual), float(expected), rtol=rtol, atol=1e-7)


def tree_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


# ----------------------------------------------------------------------------- BC


def test_bc_loss_matches_numpy():
    # L = mean over batch and action dims of (π(s) − a)², π(s) = tanh(MLP(s)).
    state = perturb_state(init(BC, BCConfig(network=TINY)), ["actor"])
    p = np_tree(state.actor.params)["MLP_0"]
    expected = np.mean((np.tanh(mlp_np(p, S)) - A) ** 2)
    loss, metrics = BC.losses["actor"](state, BATCH, jax.random.PRNGKey(0))
    assert_close(loss, expected)
    assert_close(metrics["actor_loss"], expected)
    np.testing.assert_allclose(np.asarray(BC.act(state, BATCH.observations)), np.tanh(mlp_np(p, S)), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- TD3+BC


def td3bc_state(**overrides):
    config = TD3BCConfig(network=TINY, policy_noise=0.0, **overrides)
    return perturb_state(init(TD3BC, config), ["actor", "critic"], seed=1)


def test_td3bc_critic_loss_matches_numpy():
    # With policy_noise = 0 the smoothing noise is exactly 0:
    #   ã = clip(π'(s'), −1, 1),  π' = tanh(MLP_target(s'))
    #   y = r + γ (1 − d) min_i Q'_i(s', ã)
    #   L = Σ_i mean_batch (Q_i(s, a) − y)²
    state = td3bc_state()
    c = state.config
    actor_t = np_tree(state.actor.target)["MLP_0"]
    critic, critic_t = np_tree(state.critic.params), np_tree(state.critic.target)
    next_action = np.clip(np.tanh(mlp_np(actor_t, S2)), -1, 1)
    y = R + c.discount * (1 - D) * twin_q_np(critic_t, S2, next_action).min(axis=0)
    q = twin_q_np(critic, S, A)
    expected = np.sum(np.mean((q - y) ** 2, axis=1))
    loss, metrics = TD3BC.losses["critic"](state, BATCH, jax.random.PRNGKey(3))
    assert_close(loss, expected)
    assert_close(metrics["q_mean"], q.mean())
    # The loss depends on the targets: with targets = online params it is different.
    online_targets = state.replace(actor=state.actor.replace(target=state.actor.params),
                                   critic=state.critic.replace(target=state.critic.params))
    assert abs(float(TD3BC.losses["critic"](online_targets, BATCH, jax.random.PRNGKey(3))[0]) - expected) > 1e-3


def test_td3bc_actor_loss_matches_numpy():
    # q1 = Q_1(s, π(s)) (first head), λ = α / mean|q1|
    # L = −λ mean q1 + mean (π(s) − a)²
    state = td3bc_state()
    c = state.config
    pi = np.tanh(mlp_np(np_tree(state.actor.params)["MLP_0"], S))
    # If all q1 share a sign, λ mean q1 = ±α whatever Q is, and the loss value would not test Q
    # at all. Shift the output biases so that q1 has mixed signs and the two heads cross (using
    # min_i Q_i instead of Q_1 would then give a different value).
    q = twin_q_np(np_tree(state.critic.params), S, pi)
    shift0 = -float(np.median(q[0])) + 1e-3
    shift1 = float(np.median(q[0] + shift0 - q[1])) + 1e-3
    params = jax.tree_util.tree_map(lambda x: x, state.critic.params)
    params["VmapMLP_0"]["Dense_2"]["bias"] = params["VmapMLP_0"]["Dense_2"]["bias"] + jnp.asarray([[shift0], [shift1]])
    state = state.replace(critic=state.critic.replace(params=params))
    q = twin_q_np(np_tree(state.critic.params), S, pi)
    assert np.any(q[0] > 0) and np.any(q[0] < 0)
    assert np.any(q[0] > q[1]) and np.any(q[0] < q[1])
    q1 = q[0]
    lam = c.alpha / np.mean(np.abs(q1))
    bc = np.mean((pi - A) ** 2)
    expected = -lam * np.mean(q1) + bc
    loss, metrics = TD3BC.losses["actor"](state, BATCH, jax.random.PRNGKey(4))
    assert_close(loss, expected)
    assert_close(metrics["bc_loss"], bc)


def test_td3bc_actor_and_targets_update_only_every_policy_freq_steps():
    config = TD3BCConfig(network=TINY, policy_freq=2)
    s0 = perturb_state(init(TD3BC, config), ["actor", "critic"], seed=2)
    update = jitted_update(TD3BC)

    s1, m1 = update(s0, BATCH)  # step 0: critic, actor and both targets
    assert int(s1.step) == 1
    assert not tree_equal(s1.actor.params, s0.actor.params)
    assert not tree_equal(s1.critic.params, s0.critic.params)
    tau = config.tau
    for old, new in ((s0.actor, s1.actor), (s0.critic, s1.critic)):
        # Polyak average with the *updated* online params: t' = τ θ' + (1 − τ) t
        for t_new, p_new, t_old in zip(*(jax.tree_util.tree_leaves(x) for x in (new.target, new.params, old.target))):
            np.testing.assert_allclose(np.asarray(t_new), tau * np.asarray(p_new) + (1 - tau) * np.asarray(t_old),
                                       rtol=1e-6, atol=1e-7)
    assert np.isfinite(float(m1["actor_loss"]))

    s2, m2 = update(s1, BATCH)  # step 1 (odd): critic only
    assert int(s2.step) == 2
    assert tree_equal(s2.actor.params, s1.actor.params)
    assert tree_equal(s2.actor.opt_state, s1.actor.opt_state)
    assert tree_equal(s2.actor.target, s1.actor.target)
    assert tree_equal(s2.critic.target, s1.critic.target)
    assert not tree_equal(s2.critic.params, s1.critic.params)
    assert np.isnan(float(m2["actor_loss"]))

    s3, _ = update(s2, BATCH)  # step 2: actor again
    assert not tree_equal(s3.actor.params, s2.actor.params)
    assert not tree_equal(s3.critic.target, s2.critic.target)


# ----------------------------------------------------------------------------- AWAC

LOG_STD = np.array([-0.5, -0.3])


def awac_state(algorithm=AWAC, config_class=AWACConfig):
    state = perturb_state(init(algorithm, config_class(network=TINY)), ["actor", "critic"], seed=3)
    return set_log_std(state, LOG_STD)


def test_awac_critic_loss_matches_numpy():
    # The next action is sampled with the loss's own key split, replicated here exactly:
    #   action_key, _ = split(key);  ε = normal(action_key, (batch, action_dim))
    #   a' = clip(μ(s') + σ ε, −1, 1)   (unsquashed mean)
    #   y = r + γ (1 − d) min_i Q'_i(s', a');   L = Σ_i mean (Q_i(s, a) − y)²
    state = awac_state()
    c = state.config
    key = jax.random.PRNGKey(11)
    eps = np.asarray(jax.random.normal(jax.random.split(key)[0], (5, ACTION_DIM)), np.float64)
    actor = np_tree(state.actor.params)
    next_action = np.clip(mlp_np(actor["MLP_0"], S2) + np.exp(actor["log_std"]) * eps, -1, 1)
    assert np.any(np.abs(next_action) == 1.0) and np.any(np.abs(next_action) < 1.0)  # clip is exercised
    y = R + c.discount * (1 - D) * twin_q_np(np_tree(state.critic.target), S2, next_action).min(axis=0)
    q = twin_q_np(np_tree(state.critic.params), S, A)
    expected = np.sum(np.mean((q - y) ** 2, axis=1))
    loss, _ = AWAC.losses["critic"](state, BATCH, key)
    assert_close(loss, expected)


def awac_actor_expected(state, key):
    """A = min_i Q_i(s, a) − min_i Q_i(s, a^π), a^π = clip(μ(s) + σ ε, −1, 1) (ε from the loss's
    own key split); w = min(exp(A / λ), w_max); L = −mean w · log N(a; μ(s), σ²)."""
    c = state.config
    eps = np.asarray(jax.random.normal(jax.random.split(key)[0], (5, ACTION_DIM)), np.float64)
    actor, critic = np_tree(state.actor.params), np_tree(state.critic.params)
    mean = mlp_np(actor["MLP_0"], S)
    policy_action = np.clip(mean + np.exp(actor["log_std"]) * eps, -1, 1)
    adv = twin_q_np(critic, S, A).min(axis=0) - twin_q_np(critic, S, policy_action).min(axis=0)
    raw = np.exp(adv / c.awac_lambda)
    w = np.minimum(raw, c.exp_adv_max)
    log_prob = gaussian_log_prob_np(mean, actor["log_std"], A)
    return -np.mean(w * log_prob), raw, w


def test_awac_actor_loss_matches_numpy():
    state = awac_state()
    key = jax.random.PRNGKey(12)
    _, raw, _ = awac_actor_expected(state, key)
    # Put the weight cap between the raw weights so both branches of the min are used.
    cap = float(np.sort(raw)[2])
    state = state.replace(config=dataclasses.replace(state.config, exp_adv_max=cap))
    expected, raw, w = awac_actor_expected(state, key)
    assert np.any(raw > cap) and np.any(raw < cap)
    loss, metrics = AWAC.losses["actor"](state, BATCH, key)
    assert_close(loss, expected)
    assert_close(metrics["adv_weight_mean"], w.mean())
    # The deterministic action is the clipped unsquashed mean.
    mean = mlp_np(np_tree(state.actor.params)["MLP_0"], S)
    np.testing.assert_allclose(np.asarray(AWAC.act(state, BATCH.observations)), np.clip(mean, -1, 1), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- IQL


def iql_state(algorithm=IQL, config_class=IQLConfig, **overrides):
    state = perturb_state(init(algorithm, config_class(network=TINY, **overrides)), ["actor", "critic", "value"], seed=4)
    # Shift V's output bias so that u = min Q'(s, a) − V(s) has both signs (both expectile branches).
    q_t = twin_q_np(np_tree(state.critic.target), S, A).min(axis=0)
    v = mlp_np(np_tree(state.value.params)["MLP_0"], S)[:, 0]
    shift = float(np.median(q_t - v))
    params = jax.tree_util.tree_map(lambda x: x, state.value.params)
    params["MLP_0"]["Dense_2"]["bias"] = params["MLP_0"]["Dense_2"]["bias"] + shift + 1e-3
    state = state.replace(value=state.value.replace(params=params))
    # Second log-std above LOG_STD_MAX = 2: the actor must clip it.
    return set_log_std(state, [-0.5, 3.0])


def iql_u(state):
    q_t = twin_q_np(np_tree(state.critic.target), S, A).min(axis=0)
    return q_t - mlp_np(np_tree(state.value.params)["MLP_0"], S)[:, 0]


def test_iql_value_loss_matches_numpy():
    # u = min_i Q'_i(s, a) − V(s);  L_V = mean |τ − 1(u < 0)| u²
    state = iql_state()
    tau = state.config.expectile
    u = iql_u(state)
    assert np.any(u < 0) and np.any(u > 0)
    expected = np.mean(np.where(u < 0, 1 - tau, tau) * u**2)
    loss, _ = IQL.losses["value"](state, BATCH, jax.random.PRNGKey(0))
    assert_close(loss, expected)
    # Asymmetry check: the symmetric (τ = 0.5) loss differs.
    assert abs(expected - np.mean(0.5 * u**2)) > 1e-4


def test_iql_critic_loss_matches_numpy():
    # y = r + γ (1 − d) V(s');  L_Q = ½ Σ_i mean (Q_i(s, a) − y)²
    state = iql_state()
    c = state.config
    y = R + c.discount * (1 - D) * mlp_np(np_tree(state.value.params)["MLP_0"], S2)[:, 0]
    q = twin_q_np(np_tree(state.critic.params), S, A)
    expected = 0.5 * np.sum(np.mean((q - y) ** 2, axis=1))
    loss, _ = IQL.losses["critic"](state, BATCH, jax.random.PRNGKey(0))
    assert_close(loss, expected)


def test_iql_actor_loss_matches_numpy():
    # w = min(exp(β u), w_max);  L_π = −mean w · log N(a; tanh(MLP(s)), exp(clip(log_std, −20, 2)))
    state = iql_state()
    c = state.config
    u = iql_u(state)
    raw = np.exp(c.beta * u)
    cap = float(np.sort(raw)[3])  # some weights capped, some not
    state = state.replace(config=dataclasses.replace(c, exp_adv_max=cap))
    assert np.any(raw > cap) and np.any(raw < cap)
    w = np.minimum(raw, cap)
    actor = np_tree(state.actor.params)
    mean = np.tanh(mlp_np(actor["MLP_0"], S))
    log_std = np.clip(actor["log_std"], -20.0, 2.0)
    assert log_std[1] == 2.0
    expected = -np.mean(w * gaussian_log_prob_np(mean, log_std, A))
    loss, metrics = IQL.losses["actor"](state, BATCH, jax.random.PRNGKey(0))
    assert_close(loss, expected)
    assert_close(metrics["adv_weight_mean"], w.mean())
    np.testing.assert_allclose(np.asarray(IQL.act(state, BATCH.observations)), mean, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- paper-code variants
# The released code (SaminYeasar/sparse_reg, algos.py) computes Q with shape (B, 1) and V or
# log π with shape (B,); PyTorch broadcasts their products and differences to (B, B). The
# expected values below are written with that broadcast, spelled out as NumPy does it.


def iql_paper_state():
    # xavier-normal weights, unsquashed mean; same perturbation and value shift as the IQL fixture
    return iql_state(IQL_PAPER_CODE, IQLPaperCodeConfig)


def test_paper_code_variants_are_registered_and_the_plain_algorithms_stay_correct():
    assert get_algorithm("iql-paper-code") is IQL_PAPER_CODE and get_algorithm("awac-paper-code") is AWAC_PAPER_CODE
    assert not IQLConfig().paper_code_broadcast and not AWACConfig().paper_code_broadcast
    paper_iql, paper_awac = IQLPaperCodeConfig(), AWACPaperCodeConfig()
    assert paper_iql.paper_code_broadcast and not paper_iql.tanh_mean and paper_iql.weight_init == "xavier_normal"
    assert paper_iql.actor_lr_decay_steps == 1_000_000
    assert paper_awac.paper_code_broadcast and not paper_awac.clip_sampled_actions
    assert paper_awac.weight_init == "xavier_normal" and paper_awac.actor_lr_decay_steps == 1_000_000


def test_iql_paper_code_value_loss_is_the_batch_broadcast():
    # u_ij = Q_i − V(s_j) (Q: (B, 1), V: (B,));  L_V = mean_ij |τ − 1(u_ij < 0)| u_ij²
    state = iql_paper_state()
    tau = state.config.expectile
    q_t = twin_q_np(np_tree(state.critic.target), S, A).min(axis=0)
    v = mlp_np(np_tree(state.value.params)["MLP_0"], S)[:, 0]
    u = q_t.reshape(-1, 1) - v  # the released code's shapes, broadcast by NumPy as by PyTorch
    assert u.shape == (5, 5)
    expected = np.mean(np.where(u < 0, 1 - tau, tau) * u**2)
    loss, _ = IQL_PAPER_CODE.losses["value"](state, BATCH, jax.random.PRNGKey(0))
    assert_close(loss, expected)
    # It is not the correct IQL loss on the same parameters.
    correct, _ = IQL.losses["value"](state.replace(config=IQLConfig(network=TINY)), BATCH, jax.random.PRNGKey(0))
    assert abs(float(correct) - expected) > 1e-3


def test_iql_paper_code_actor_weights_ignore_each_samples_own_advantage():
    # L_π = mean_ij min(exp(β (Q_i − V_j)), w_max) · (−log π(a_j|s_j)), unsquashed mean
    state = iql_paper_state()
    c = state.config
    q_t = twin_q_np(np_tree(state.critic.target), S, A).min(axis=0)
    v = mlp_np(np_tree(state.value.params)["MLP_0"], S)[:, 0]
    raw = np.exp(c.beta * (q_t.reshape(-1, 1) - v))
    cap = float(np.median(raw))
    state = state.replace(config=dataclasses.replace(c, exp_adv_max=cap))
    assert np.any(raw > cap) and np.any(raw < cap)
    actor = np_tree(state.actor.params)
    mean = mlp_np(actor["MLP_0"], S)  # no tanh
    log_std = np.clip(actor["log_std"], -20.0, 2.0)
    bc_losses = -gaussian_log_prob_np(mean, log_std, A)
    expected = np.mean(np.minimum(raw, cap) * bc_losses)  # (5, 5) * (5,)
    loss, metrics = IQL_PAPER_CODE.losses["actor"](state, BATCH, jax.random.PRNGKey(0))
    assert_close(loss, expected)
    assert_close(metrics["adv_weight_mean"], np.minimum(raw, cap).mean())
    # The same thing as a per-sample weight: w̄_j = mean_i min(exp(β (Q_i − V_j)), w_max).
    assert_close(loss, np.mean(np.minimum(raw, cap).mean(axis=0) * bc_losses))
    np.testing.assert_allclose(np.asarray(IQL_PAPER_CODE.act(state, BATCH.observations)), np.clip(mean, -1, 1),
                               rtol=1e-5, atol=1e-6)
    # The critic loss has matching shapes in the released code: identical to ours.
    ours, _ = IQL.losses["critic"](state.replace(config=IQLConfig(network=TINY)), BATCH, jax.random.PRNGKey(0))
    paper, _ = IQL_PAPER_CODE.losses["critic"](state, BATCH, jax.random.PRNGKey(0))
    assert float(ours) == float(paper)


def awac_paper_state():
    return awac_state(AWAC_PAPER_CODE, AWACPaperCodeConfig)


def test_awac_paper_code_actor_loss_is_mean_weight_times_mean_log_prob():
    # weights (B, 1) · log π (B,) -> (B, B):  L_π = −mean_i w_i · mean_j log π(a_j|s_j); samples unclipped
    state = awac_paper_state()
    c = state.config
    key = jax.random.PRNGKey(12)
    eps = np.asarray(jax.random.normal(jax.random.split(key)[0], (5, ACTION_DIM)), np.float64)
    actor, critic = np_tree(state.actor.params), np_tree(state.critic.params)
    mean = mlp_np(actor["MLP_0"], S)
    policy_action = mean + np.exp(actor["log_std"]) * eps  # not clipped
    assert np.any(np.abs(policy_action) > 1.0)
    adv = twin_q_np(critic, S, A).min(axis=0) - twin_q_np(critic, S, policy_action).min(axis=0)
    w = np.minimum(np.exp(adv / c.awac_lambda), c.exp_adv_max).reshape(-1, 1)
    log_prob = gaussian_log_prob_np(mean, actor["log_std"], A)
    expected = -np.mean(w * log_prob)
    assert_close(expected, -w.mean() * log_prob.mean())
    loss, _ = AWAC_PAPER_CODE.losses["actor"](state, BATCH, key)
    assert_close(loss, expected)


def test_awac_paper_code_critic_loss_averages_the_heads_and_samples_unclipped():
    # a' = μ(s') + σ ε (no clip);  y = r + γ (1 − d) min_i Q'_i(s', a');  L = ½ Σ_i mean (Q_i − y)²
    state = awac_paper_state()
    c = state.config
    key = jax.random.PRNGKey(11)
    eps = np.asarray(jax.random.normal(jax.random.split(key)[0], (5, ACTION_DIM)), np.float64)
    actor = np_tree(state.actor.params)
    next_action = mlp_np(actor["MLP_0"], S2) + np.exp(actor["log_std"]) * eps
    assert np.any(np.abs(next_action) > 1.0)
    y = R + c.discount * (1 - D) * twin_q_np(np_tree(state.critic.target), S2, next_action).min(axis=0)
    q = twin_q_np(np_tree(state.critic.params), S, A)
    expected = 0.5 * np.sum(np.mean((q - y) ** 2, axis=1))
    loss, _ = AWAC_PAPER_CODE.losses["critic"](state, BATCH, key)
    assert_close(loss, expected)


def test_iql_paper_code_actor_sees_the_value_after_its_step():
    # algos.py steps the value optimizer, then recomputes v = self.value(state) for the actor's
    # advantage; the critic's target keeps the V from before the step. Replayed here by hand.
    for algorithm, config_class, updated in ((IQL_PAPER_CODE, IQLPaperCodeConfig, True), (IQL, IQLConfig, False)):
        state = iql_state(algorithm, config_class)
        for _ in range(2):  # Adam's first step is sign(g)·lr whatever g's size: give it a history
            state, _ = jitted_update(algorithm)(state, BATCH)
        _, value_key, critic_key, actor_key = jax.random.split(state.rng, 4)
        _, value_grads = value_and_grad_of(iql.value_loss, state, "value", BATCH, value_key)
        stepped_value = state.value.apply_gradients(value_grads)
        _, grads_after = value_and_grad_of(iql.actor_loss, state.replace(value=stepped_value), "actor", BATCH, actor_key)
        _, grads_before = value_and_grad_of(iql.actor_loss, state, "actor", BATCH, actor_key)
        actor_after, actor_before = state.actor.apply_gradients(grads_after), state.actor.apply_gradients(grads_before)
        assert not tree_equal(actor_after.params, actor_before.params)  # the order matters on this state
        new, _ = jitted_update(algorithm)(state, BATCH)
        expected = actor_after if updated else actor_before
        for got, want in zip(jax.tree_util.tree_leaves(new.actor.params), jax.tree_util.tree_leaves(expected.params)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
        # The critic trains on the pre-step V in both: its target r + γ (1 − d) V(s') is unchanged.
        _, critic_grads = value_and_grad_of(iql.critic_loss, state, "critic", BATCH, critic_key)
        for got, want in zip(jax.tree_util.tree_leaves(new.critic.params),
                             jax.tree_util.tree_leaves(state.critic.apply_gradients(critic_grads).params)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


def test_paper_code_log_std_is_clipped_at_minus_five():
    # GaussianPolicy in algos.py: log_std.clamp(-5, 2); CORL's (and ours): [-20, 2].
    for state, low in ((set_log_std(iql_paper_state(), [-10.0, -3.0]), -5.0),
                       (set_log_std(iql_state(), [-10.0, -3.0]), -10.0),
                       (set_log_std(awac_paper_state(), [-10.0, -3.0]), -5.0),
                       (set_log_std(awac_state(), [-10.0, -3.0]), -10.0)):
        _, log_std = state.actor(BATCH.observations)
        np.testing.assert_array_equal(np.asarray(log_std), np.array([low, -3.0], np.float32))
    assert AWACPaperCodeConfig().awac_lambda == 0.3333 and AWACConfig().awac_lambda == 1 / 3


def test_awac_paper_code_scores_its_critic_with_the_broadcast_loss():
    # train_no_grad_update: F.mse_loss(Q_h (B, 1), y.flatten() (B,)) = mean_ij (Q_h,i − y_j)², averaged
    # over the two heads. With every transition terminal, y = r exactly.
    state = awac_paper_state()
    batch = BATCH._replace(dones=jnp.ones_like(BATCH.dones))
    q = twin_q_np(np_tree(state.critic.params), S, A)
    expected = np.mean([np.mean((q[h].reshape(-1, 1) - R) ** 2) for h in range(2)])
    scoring = AWAC_PAPER_CODE.snip_losses()["critic"]
    assert scoring is not AWAC_PAPER_CODE.losses["critic"]
    loss, _ = scoring(state, batch, jax.random.PRNGKey(0))
    assert_close(loss, expected)
    trained, _ = AWAC_PAPER_CODE.losses["critic"](state, batch, jax.random.PRNGKey(0))
    assert_close(trained, np.mean((q - R) ** 2))  # the update keeps the matching shapes
    assert abs(float(trained) - expected) > 1e-3
    assert AWAC_PAPER_CODE.snip_losses()["actor"] is AWAC_PAPER_CODE.losses["actor"]
    for algorithm in (BC, TD3BC, AWAC, IQL, IQL_PAPER_CODE):  # the others score with their training losses
        assert algorithm.snip_losses() is algorithm.losses


def test_xavier_normal_initialisation_has_torchs_variance():
    # torch.nn.init.xavier_normal_: N(0, 2 / (fan_in + fan_out)), untruncated; biases zero.
    config = IQLConfig(network=NetworkConfig(hidden_dims=(256, 256)), weight_init="xavier_normal")
    state = init(IQL, config, seed=3)
    kernel = np.asarray(state.value.params["MLP_0"]["Dense_1"]["kernel"])  # 256 x 256
    assert abs(kernel.std() - np.sqrt(2 / 512)) < 0.02 * np.sqrt(2 / 512)
    assert np.abs(kernel).max() > 2.5 * np.sqrt(2 / 512)  # a truncated normal would stop at 2 std
    lecun = np.asarray(init(IQL, IQLConfig(network=NetworkConfig(hidden_dims=(256, 256))), seed=3)
                       .value.params["MLP_0"]["Dense_1"]["kernel"])
    assert abs(lecun.std() - np.sqrt(1 / 256)) < 0.02 * np.sqrt(1 / 256)
    with pytest.raises(ValueError, match="weight_init"):
        IQLConfig(weight_init="orthogonal")


def test_paper_code_options_are_type_checked():
    for make, match in ((lambda: IQLConfig(tanh_mean="abc"), "tanh_mean must be true or false"),
                        (lambda: AWACConfig(clip_sampled_actions=1), "clip_sampled_actions must be true or false"),
                        (lambda: AWACConfig(actor_lr_decay_steps=2.5), "whole number"),
                        (lambda: AWACConfig(actor_lr_decay_steps=-1), ">= 0 or None"),
                        (lambda: IQLConfig(actor_lr_decay_steps=None), "whole number")):
        with pytest.raises(ValueError, match=match):
            make()
    assert AWACConfig(actor_lr_decay_steps=None).actor_lr_decay_steps is None  # None: constant learning rate


def test_awac_actor_learning_rate_is_constant_unless_a_horizon_is_set():
    for decay_steps, moves in ((None, True), (0, False), (1_000_000, True)):
        config = AWACConfig(network=TINY, actor_lr_decay_steps=decay_steps)
        state = perturb_state(init(AWAC, config, total_steps=3), ["actor", "critic"], seed=5)
        update = jax.jit(AWAC.update)
        for _ in range(3):
            state, _ = update(state, BATCH)
        new, _ = update(state, BATCH)
        assert (not tree_equal(new.actor.params, state.actor.params)) == moves, decay_steps


# ----------------------------------------------------------------------------- update


def test_iql_actor_learning_rate_decays_to_zero_at_its_horizon():
    # 0 = the run's length (3 updates here): the 4th update leaves the actor as it was. The
    # paper's code decays over 1M steps whatever the run's length: then the actor still moves.
    for decay_steps, moves in ((0, False), (1_000_000, True)):
        config = IQLConfig(network=TINY, actor_lr_decay_steps=decay_steps)
        state = perturb_state(init(IQL, config, total_steps=3), ["actor", "critic", "value"], seed=5)
        for _ in range(3):
            state, _ = jitted_update(IQL)(state, BATCH)
        new, _ = jitted_update(IQL)(state, BATCH)
        assert (not tree_equal(new.actor.params, state.actor.params)) == moves, decay_steps
        assert not tree_equal(new.critic.params, state.critic.params)  # the critic has no schedule


ALGOS = [
    (BC, BCConfig(network=TINY), ["actor"]),
    (TD3BC, TD3BCConfig(network=TINY), ["actor", "critic"]),
    (AWAC, AWACConfig(network=TINY), ["actor", "critic"]),
    (IQL, IQLConfig(network=TINY), ["actor", "critic", "value"]),
    (AWAC_PAPER_CODE, AWACPaperCodeConfig(network=TINY), ["actor", "critic"]),
    (IQL_PAPER_CODE, IQLPaperCodeConfig(network=TINY), ["actor", "critic", "value"]),
]


@pytest.mark.parametrize("algorithm, config, names", ALGOS, ids=[a.name for a, _, _ in ALGOS])
def test_update_changes_every_network_and_increments_step(algorithm, config, names):
    state = perturb_state(init(algorithm, config), names, seed=5)
    new, metrics = jitted_update(algorithm)(state, BATCH)
    assert int(new.step) == int(state.step) + 1
    assert not np.array_equal(np.asarray(new.rng), np.asarray(state.rng))
    for name in names:
        old_net, new_net = getattr(state, name), getattr(new, name)
        for path, old_leaf in jax.tree_util.tree_flatten_with_path(old_net.params)[0]:
            new_leaf = np.asarray(dict(jax.tree_util.tree_flatten_with_path(new_net.params)[0])[path])
            assert np.any(new_leaf != np.asarray(old_leaf)), f"{algorithm.name}.{name} {path} did not change"
        if old_net.target is not None:
            assert not tree_equal(new_net.target, old_net.target), f"{algorithm.name}.{name} target did not move"
    for value in jax.tree_util.tree_leaves(metrics):
        assert np.isfinite(float(value))


# ----------------------------------------------------------------------------- learning


def test_bc_learns_a_deterministic_mapping():
    rng = np.random.default_rng(0)
    n = 2000
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    w = rng.normal(size=(OBS_DIM, ACTION_DIM)).astype(np.float32)
    data = Batch(
        observations=jnp.asarray(obs),
        actions=jnp.asarray(np.tanh(obs @ w)),
        rewards=jnp.zeros(n),
        next_observations=jnp.asarray(obs),
        dones=jnp.zeros(n),
    )
    config = BCConfig(network=NetworkConfig(hidden_dims=(64, 64)), batch_size=128)
    state = init(BC, config, seed=1)

    @jax.jit
    def train(state, key):
        def body(carry, _):
            state, key = carry
            key, sub = jax.random.split(key)
            idx = jax.random.randint(sub, (config.batch_size,), 0, n)
            state, _ = BC.update(state, jax.tree_util.tree_map(lambda x: x[idx], data))
            return (state, key), None

        return jax.lax.scan(body, (state, key), None, length=300)[0][0]

    def mse(s):
        return float(jnp.mean((BC.act(s, data.observations) - data.actions) ** 2))

    before = mse(state)
    after_state = train(state, jax.random.PRNGKey(2))
    after = mse(after_state)
    assert int(after_state.step) == 300
    assert before > 0.3
    # Observed: 0.63 -> 3.6e-4 (a factor ~1700); thresholds leave ~9x margin.
    assert after < before / 200, (before, after)
    assert after < 5e-3
