"""Tests for Sparse-Reg: SNIP scores, global top-k masks, masked training, schedule, statistics.

Every check compares against hand-computed numbers or an exact property (bit-identical
frozen weights, exact mask counts), so a wrong implementation fails.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparse_reg.algorithms import BC, TD3BC, Batch, Regularization
from sparse_reg.algorithms.bc import BCConfig
from sparse_reg.algorithms.td3bc import TD3BCConfig
from sparse_reg.masked_net import MaskedNet
from sparse_reg.networks import MLP, NetworkConfig, TwinQ
from sparse_reg.sparsity import (
    MASK_SCORERS,
    SparseRegConfig,
    apply_masks,
    holds_masks,
    live_units,
    mask_statistics,
    network_masks,
    refresh_masks,
    resolve_sparsity,
    snip_scores,
    topk_masks,
    weight_sparsity,
    with_all_ones_masks,
    with_masked_updates,
    with_masks,
)

OBS_DIM, ACTION_DIM = 3, 2


def tree_np(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def kernel_items(tree):
    """[(path string, leaf)] of every ``kernel`` leaf, in flatten order."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if getattr(path[-1], "key", None) == "kernel":
            out.append(("/".join(str(p.key) for p in path), np.asarray(leaf)))
    return out


_compiled: dict = {}


def init_state(algorithm, config, seed: int):
    """``algorithm.init`` under jit (much faster than op-by-op on a busy 2-core machine)."""
    key = ("init", algorithm.name)
    if key not in _compiled:
        _compiled[key] = jax.jit(algorithm.init, static_argnums=(0, 1, 2, 4))
    return _compiled[key](config, OBS_DIM, ACTION_DIM, jax.random.PRNGKey(seed), 100)


def jit_refresh(algorithm, config: SparseRegConfig):
    key = ("refresh", algorithm.name, config)
    if key not in _compiled:
        _compiled[key] = jax.jit(lambda state, batch, k: refresh_masks(state, algorithm.losses, batch, k, config))
    return _compiled[key]


def sparse_net(net, mask):
    """``net`` with ``mask`` in its optimiser state (made sparse first if it is dense)."""
    return with_masks(with_masked_updates(net), mask)


def make_batch(n: int = 64, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    w = rng.normal(size=(OBS_DIM, ACTION_DIM)).astype(np.float32)
    return Batch(
        observations=jnp.asarray(obs),
        actions=jnp.asarray(np.tanh(obs @ w)),
        rewards=jnp.asarray(rng.normal(size=n).astype(np.float32)),
        next_observations=jnp.asarray(rng.normal(size=(n, OBS_DIM)).astype(np.float32)),
        dones=jnp.asarray((rng.random(n) < 0.2).astype(np.float32)),
    )


# --------------------------------------------------------------------------------------
# 1. topk_masks: global top-k over kernels, exact count, biases dense
# --------------------------------------------------------------------------------------

SHAPES = {"Dense_0": (3, 4), "Dense_1": (4, 2)}  # 12 + 8 = 20 weight entries


def ordered_scores(order: np.ndarray) -> dict:
    """Score tree whose 20 kernel entries (flattened Dense_0 then Dense_1) carry ``order``."""
    return {
        "MLP_0": {
            "Dense_0": {"bias": jnp.full((4,), 1e6), "kernel": jnp.asarray(order[:12].reshape(3, 4), jnp.float32)},
            "Dense_1": {"bias": jnp.full((2,), -1e6), "kernel": jnp.asarray(order[12:].reshape(4, 2), jnp.float32)},
        },
        "log_std": jnp.zeros((2,)),
    }


@pytest.mark.parametrize(
    "keep, expected_k",
    [
        (0.05, 1),  # 1.0
        (0.1, 2),  # 2.0
        (0.33, 7),  # 6.6 -> 7
        (0.37, 7),  # 7.4 -> 7
        (0.5, 10),
        (0.66, 13),  # 13.2 -> 13
        (0.9, 18),
        (1.0, 20),
    ],
)
def test_topk_keeps_exactly_round_k_highest_scores_globally(keep, expected_k):
    assert expected_k == round(keep * 20)
    rng = np.random.default_rng(int(keep * 1000))
    order = rng.permutation(20).astype(np.float32)  # distinct scores: the k largest are unambiguous
    masks = topk_masks(ordered_scores(order), keep=keep)

    flat_mask = np.concatenate([np.asarray(masks["MLP_0"][k]["kernel"]).ravel() for k in SHAPES])
    assert set(np.unique(flat_mask)) <= {0.0, 1.0}
    assert flat_mask.sum() == expected_k
    expected_kept = set(np.argsort(-order)[:expected_k])  # indices of the k largest scores
    assert set(np.flatnonzero(flat_mask)) == expected_kept
    # Everything that is not a kernel is all ones, whatever its score.
    for leaf in (masks["MLP_0"]["Dense_0"]["bias"], masks["MLP_0"]["Dense_1"]["bias"], masks["log_std"]):
        np.testing.assert_array_equal(np.asarray(leaf), 1.0)
    for k, shape in SHAPES.items():
        assert masks["MLP_0"][k]["kernel"].shape == shape


def test_topk_is_global_not_per_layer():
    # All of Dense_1's scores beat all of Dense_0's: keeping 8 of 20 must empty Dense_0 entirely.
    order = np.concatenate([np.arange(12), 100 + np.arange(8)]).astype(np.float32)
    masks = topk_masks(ordered_scores(order), keep=0.4)
    np.testing.assert_array_equal(np.asarray(masks["MLP_0"]["Dense_0"]["kernel"]), 0.0)
    np.testing.assert_array_equal(np.asarray(masks["MLP_0"]["Dense_1"]["kernel"]), 1.0)
    # Keeping 10: Dense_1 whole plus Dense_0's two best entries (scores 11 and 10: flat idx 11, 10).
    masks = topk_masks(ordered_scores(order), keep=0.5)
    d0 = np.asarray(masks["MLP_0"]["Dense_0"]["kernel"]).ravel()
    assert set(np.flatnonzero(d0)) == {10, 11}


def test_topk_on_twin_q_tree_counts_both_heads_together():
    # A real TwinQ parameter tree (leading ensemble axis of 2) with random scores.
    shapes = jax.eval_shape(
        TwinQ(NetworkConfig(hidden_dims=(8, 8))).init, jax.random.PRNGKey(0), jnp.zeros((1, OBS_DIM)), jnp.zeros((1, ACTION_DIM))
    )["params"]
    rng = np.random.default_rng(1)
    scores = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.random(p.shape), jnp.float32), shapes)
    n = sum(leaf.size for _, leaf in kernel_items(scores))
    assert n == 2 * (5 * 8 + 8 * 8 + 8 * 1)
    for keep in (0.05, 0.25, 0.123):
        masks = topk_masks(scores, keep=keep)
        flat_s = np.concatenate([leaf.ravel() for _, leaf in kernel_items(scores)])
        flat_m = np.concatenate([leaf.ravel() for _, leaf in kernel_items(masks)])
        k = round(keep * n)
        assert flat_m.sum() == k
        # Kept entries are exactly the k best scores.
        assert flat_s[flat_m == 1].min() > flat_s[flat_m == 0].max()
        for layer in ("Dense_0", "Dense_1", "Dense_2"):
            np.testing.assert_array_equal(np.asarray(masks["VmapMLP_0"][layer]["bias"]), 1.0)


# --------------------------------------------------------------------------------------
# 2. snip_scores = |θ · ∂L/∂θ| against central finite differences (float64)
# --------------------------------------------------------------------------------------


def test_snip_scores_match_central_finite_differences():
    with jax.enable_x64(True):
        module = MLP(hidden_dims=(3,), output_dim=1)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)), jnp.float64)
        y = jnp.asarray(np.random.default_rng(1).normal(size=(6, 1)), jnp.float64)
        params = module.init(jax.random.PRNGKey(3), x)["params"]
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), params)
        # Non-zero biases so their scores are non-trivial too.
        params["Dense_0"]["bias"] = jnp.asarray([0.1, -0.2, 0.3], jnp.float64)
        params["Dense_1"]["bias"] = jnp.asarray([0.05], jnp.float64)

        @jax.jit
        def loss(p):
            return jnp.mean((module.apply({"params": p}, x) - y) ** 2)

        scores = snip_scores(loss, params)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        score_leaves = jax.tree_util.tree_leaves(scores)
        h = 1e-6
        checked = 0
        for i, leaf in enumerate(leaves):
            assert score_leaves[i].dtype == jnp.float64
            base = np.asarray(leaf)
            for idx in np.ndindex(base.shape):
                def at(delta):
                    changed = base.copy()
                    changed[idx] += delta
                    new = list(leaves)
                    new[i] = jnp.asarray(changed)
                    return float(loss(jax.tree_util.tree_unflatten(treedef, new)))

                fd = (at(h) - at(-h)) / (2 * h)
                expected = abs(base[idx] * fd)
                np.testing.assert_allclose(float(score_leaves[i][idx]), expected, rtol=1e-6, atol=1e-9)
                checked += 1
        assert checked == 2 * 3 + 3 + 3 * 1 + 1
        # Sanity: the scores are not all ~0 (the check above is not vacuous).
        assert max(float(jnp.max(s)) for s in score_leaves) > 1e-3


# --------------------------------------------------------------------------------------
# 3. Scoring ignores the current mask (scores the full network)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bc_setup():
    config = BCConfig(network=NetworkConfig(hidden_dims=(16, 16)))
    state = init_state(BC, config, 0)
    return config, state, make_batch()


def test_network_masks_score_with_mask_set_to_all_ones(bc_setup):
    _, dense, batch = bc_setup
    dense = with_all_ones_masks(dense, BC.losses)  # masks in the optimiser state, all ones
    loss = BC.losses["actor"]
    key = jax.random.PRNGKey(7)
    keep = 0.3
    masks_of = jax.jit(lambda state, batch, key: network_masks(loss, state, "actor", batch, key, sparsity=1 - keep))
    reference = masks_of(dense, batch, key)

    # Mask that prunes exactly the weights the dense scoring would keep (worst case): a
    # scorer that looked through the mask would give them score 0 and never pick them.
    adversarial = jax.tree_util.tree_map(lambda m: 1.0 - m, reference)
    adversarial = jax.tree_util.tree_map_with_path(
        lambda path, m: m if getattr(path[-1], "key", None) == "kernel" else jnp.ones_like(m), adversarial
    )
    pruned = dense.replace(actor=sparse_net(dense.actor, adversarial))
    from_pruned = masks_of(pruned, batch, key)
    for a, b in zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(from_pruned)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # The masked forward really differs, i.e. looking through the mask would change the scores.
    masked_scores = snip_scores(lambda p: loss(pruned.replace(actor=pruned.actor.replace(params=p)), batch, key)[0],
                                pruned.actor.params)
    masked_kernel_scores = np.concatenate([leaf.ravel() for _, leaf in kernel_items(masked_scores)])
    kept_by_reference = np.concatenate([leaf.ravel() for _, leaf in kernel_items(reference)]) == 1
    np.testing.assert_array_equal(masked_kernel_scores[kept_by_reference], 0.0)

    # refresh_masks: same masks from the pruned state as from an all-ones-mask state.
    config = SparseRegConfig(sparsity=0.7)
    ones_state = with_all_ones_masks(dense, BC.losses)
    refresh = jit_refresh(BC, config)
    new_a, stats_a = refresh(ones_state, batch, key)
    new_b, stats_b = refresh(pruned, batch, key)
    for a, b in zip(jax.tree_util.tree_leaves(new_a.actor.mask), jax.tree_util.tree_leaves(new_b.actor.mask)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    n = sum(leaf.size for _, leaf in kernel_items(dense.actor.params))
    assert sum(leaf.sum() for _, leaf in kernel_items(new_a.actor.mask)) == round(0.3 * n)
    # Statistics: the all-ones previous mask -> changed == sparsity; the adversarial one
    # (complement of the new kept set, same k) -> every kernel entry that is kept now was
    # pruned before, plus every pruned now that was kept before.
    np.testing.assert_allclose(float(stats_a["actor"]["total"]["sparsity"]), 1 - round(0.3 * n) / n, rtol=1e-6)
    np.testing.assert_allclose(float(stats_a["actor"]["total"]["changed"]), 1 - round(0.3 * n) / n, rtol=1e-6)
    np.testing.assert_allclose(float(stats_b["actor"]["total"]["changed"]), 1.0, rtol=1e-6)
    # Params untouched by a refresh.
    for a, b in zip(jax.tree_util.tree_leaves(new_b.actor.params), jax.tree_util.tree_leaves(pruned.actor.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------
# 4./5. Masked training: pruned weights frozen bit-for-bit, kept weights move, revival
# --------------------------------------------------------------------------------------

_jitted_updates: dict = {}


def run_updates(state, batch, steps):
    """``steps`` BC updates on a fixed batch in one jitted scan."""
    if "run" not in _jitted_updates:
        def run(state, batch, steps):
            def body(s, _):
                return BC.update(s, batch)[0], None
            return jax.lax.scan(body, state, None, length=steps)[0]

        _jitted_updates["run"] = jax.jit(run, static_argnums=2)
    return _jitted_updates["run"](state, batch, steps)


def sparse_bc_state(regularization: Regularization, hidden=(32, 32)):
    config = BCConfig(network=NetworkConfig(hidden_dims=hidden), regularization=regularization)
    state = with_all_ones_masks(init_state(BC, config, 1), BC.losses)
    return state


def check_frozen_and_moving(before, after, mask, grads_nonzero, all_kept_move: bool):
    """Pruned kernel entries bit-identical; kept entries moved (those that had a gradient,
    or all of them when weight decay / L1 pushes every weight)."""
    n_pruned = n_kept = 0
    for (path, b), (_, a), (_, m), (_, g) in zip(
        kernel_items(before), kernel_items(after), kernel_items(mask), kernel_items(grads_nonzero)
    ):
        pruned, kept = m == 0, m == 1
        assert np.array_equal(a[pruned], b[pruned]), f"pruned weights of {path} moved"
        must_move = kept if all_kept_move else (kept & g)
        assert np.all(a[must_move] != b[must_move]), f"kept weights of {path} did not move"
        n_pruned += pruned.sum()
        n_kept += must_move.sum()
    assert n_pruned > 0 and n_kept > 0


@pytest.mark.parametrize(
    "regularization",
    [Regularization(), Regularization(weight_decay=0.01), Regularization(l1=0.01)],
    ids=["adam", "adamw", "l1"],
)
def test_pruned_weights_are_bit_identical_after_updates(regularization):
    batch = make_batch()
    state = sparse_bc_state(regularization)
    state, _ = jit_refresh(BC, SparseRegConfig(sparsity=0.95))(state, batch, jax.random.PRNGKey(2))
    n = sum(leaf.size for _, leaf in kernel_items(state.actor.params))
    assert sum(leaf.sum() for _, leaf in kernel_items(state.actor.mask)) == round(0.05 * n)

    grads = jax.grad(lambda p: BC.losses["actor"](state.replace(actor=state.actor.replace(params=p)), batch, None)[0])(
        state.actor.params
    )
    grads_nonzero = jax.tree_util.tree_map(lambda g: np.asarray(g) != 0, grads)
    before = tree_np(state.actor.params)
    after_state = run_updates(state, batch, 20)
    assert int(after_state.step) == 20
    check_frozen_and_moving(before, tree_np(after_state.actor.params), tree_np(state.actor.mask), grads_nonzero,
                            all_kept_move=regularization.weight_decay > 0 or regularization.l1 > 0)
    # Biases are dense: under AdamW every bias moves.
    if regularization.weight_decay > 0:
        b0, b1 = before["MLP_0"]["Dense_2"]["bias"], np.asarray(after_state.actor.params["MLP_0"]["Dense_2"]["bias"])
        assert np.all(b0 != b1)


@pytest.mark.parametrize(
    "regularization", [Regularization(), Regularization(weight_decay=0.01)], ids=["adam", "adamw"]
)
def test_newly_pruned_weights_freeze_despite_adam_momentum(regularization):
    batch = make_batch()
    state = sparse_bc_state(regularization)
    state = run_updates(state, batch, 20)  # dense (all-ones masks): Adam moments are non-zero
    mu = state.actor.opt_state.inner_state[0].mu  # ScaleByAdamState is the first link of adam and adamw alike
    assert all(np.abs(np.asarray(leaf)).max() > 0 for _, leaf in kernel_items(mu))
    state, _ = jit_refresh(BC, SparseRegConfig(sparsity=0.95))(state, batch, jax.random.PRNGKey(3))
    before = tree_np(state.actor.params)
    after = tree_np(run_updates(state, batch, 20).actor.params)
    mask = tree_np(state.actor.mask)
    for (path, b), (_, a), (_, m) in zip(kernel_items(before), kernel_items(after), kernel_items(mask)):
        assert np.array_equal(a[m == 0], b[m == 0]), f"newly pruned weights of {path} drifted"
    # Without the mask on the updates they would have drifted (momentum is non-zero there).
    dense_after = tree_np(run_updates(state.replace(actor=with_masks(state.actor, jax.tree_util.tree_map(
        jnp.ones_like, state.actor.mask))), batch, 20).actor.params)
    drifted = sum(np.sum(d[m == 0] != b[m == 0]) for (_, d), (_, b), (_, m) in
                  zip(kernel_items(dense_after), kernel_items(before), kernel_items(mask)))
    assert drifted > 0


def test_revived_weight_returns_with_its_frozen_value_and_then_trains():
    batch = make_batch()
    loss = BC.losses["actor"]
    state = sparse_bc_state(Regularization(), hidden=(16, 16))
    state = run_updates(state, batch, 5)
    state, _ = jit_refresh(BC, SparseRegConfig(sparsity=0.8))(state, batch, jax.random.PRNGKey(4))
    m1 = state.actor.mask

    state = run_updates(state, batch, 10)
    # Revive the m1-pruned output-layer weight with the largest gradient once it is back in.
    k1 = np.asarray(m1["MLP_0"]["Dense_2"]["kernel"])

    def with_revived(idx):
        m2 = jax.tree_util.tree_map(lambda x: x, m1)
        m2["MLP_0"]["Dense_2"]["kernel"] = m1["MLP_0"]["Dense_2"]["kernel"].at[idx].set(1.0)
        return state.replace(actor=with_masks(state.actor, m2))

    @jax.jit
    def output_layer_grad(s):
        g = jax.grad(lambda p: loss(s.replace(actor=s.actor.replace(params=p)), batch, None)[0])(s.actor.params)
        return g["MLP_0"]["Dense_2"]["kernel"]

    def grad_at(s, idx):
        return abs(float(output_layer_grad(s)[idx]))

    candidates = [tuple(int(i) for i in idx) for idx in zip(*np.nonzero(k1 == 0))]
    assert candidates, "m1 prunes nothing in the output layer"
    idx = max(candidates, key=lambda c: grad_at(with_revived(c), c))
    revived = with_revived(idx)
    m2 = revived.actor.mask
    assert grad_at(revived, idx) > 0
    assert grad_at(state, idx) == 0.0  # while pruned it receives no gradient
    frozen_value = np.asarray(state.actor.params["MLP_0"]["Dense_2"]["kernel"])[idx]
    assert frozen_value != 0

    # Forward pass == module applied to params * m2, with the old value in place.
    params_np = tree_np(state.actor.params)
    m2_np = tree_np(m2)
    manual = jax.tree_util.tree_map(lambda p, m: jnp.asarray(p * m), params_np, m2_np)
    assert manual["MLP_0"]["Dense_2"]["kernel"][idx] == frozen_value
    out = np.asarray(revived.actor(batch.observations))
    expected = np.asarray(revived.actor.module.apply({"params": manual}, batch.observations))
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    # The revived weight matters: zeroing it (i.e. m1) changes the output of its action dimension.
    old_out = np.asarray(state.actor(batch.observations))
    assert np.max(np.abs(out[:, idx[1]] - old_out[:, idx[1]])) > 1e-4
    np.testing.assert_allclose(np.delete(out, idx[1], axis=1), np.delete(old_out, idx[1], axis=1), rtol=0, atol=1e-7)

    after = run_updates(revived, batch, 5)
    assert np.asarray(after.actor.params["MLP_0"]["Dense_2"]["kernel"])[idx] != frozen_value


# --------------------------------------------------------------------------------------
# 6. Target networks use the online mask
# --------------------------------------------------------------------------------------


def test_td3bc_targets_are_masked_with_the_online_mask():
    config = TD3BCConfig(network=NetworkConfig(hidden_dims=(16, 16)))
    state = init_state(TD3BC, config, 5)
    batch = make_batch()
    # Random 0/1 masks on the kernels (how they were scored does not matter here).
    rng = np.random.default_rng(0)
    random_mask = lambda tree: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, p: jnp.asarray(rng.random(p.shape) < 0.4, p.dtype)
        if getattr(path[-1], "key", None) == "kernel" else jnp.ones_like(p), tree)
    state = state.replace(actor=sparse_net(state.actor, random_mask(state.actor.params)),
                          critic=sparse_net(state.critic, random_mask(state.critic.params)))
    # Make targets differ from the online params so the test tells them apart.
    noisy = lambda tree: jax.tree_util.tree_map(lambda t: t + jnp.asarray(0.3 * rng.normal(size=t.shape), t.dtype), tree)  # noqa: E731
    state = state.replace(actor=state.actor.replace(target=noisy(state.actor.target)),
                          critic=state.critic.replace(target=noisy(state.critic.target)))

    obs, act = batch.observations, batch.actions
    for net, inputs in ((state.actor, (obs,)), (state.critic, (obs, act))):
        got = np.asarray(net.target_call(*inputs))
        masked = jax.tree_util.tree_map(jnp.multiply, net.target, net.mask)
        expected = np.asarray(net.module.apply({"params": masked}, *inputs))
        unmasked = np.asarray(net.module.apply({"params": net.target}, *inputs))
        online = np.asarray(net(*inputs))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert np.max(np.abs(got - unmasked)) > 1e-3
        assert np.max(np.abs(got - online)) > 1e-3


# --------------------------------------------------------------------------------------
# 7. Schedule and sparsity resolution
# --------------------------------------------------------------------------------------


def test_magnitude_and_random_scorers_keep_the_same_count_by_their_own_rule(bc_setup):
    # The controls of issue 32: same global top-k and count as SNIP, other scores.
    _, dense, batch = bc_setup
    dense = with_all_ones_masks(dense, BC.losses)  # masks in the optimiser state, all ones
    loss, key, keep = BC.losses["actor"], jax.random.PRNGKey(3), 0.1
    params = dense.actor.params
    n = sum(leaf.size for _, leaf in kernel_items(params))
    weights = np.concatenate([np.abs(np.asarray(leaf)).ravel() for _, leaf in kernel_items(params)])
    masks = {}
    for scorer in MASK_SCORERS:
        masks[scorer] = network_masks(loss, dense, "actor", batch, key, sparsity=1 - keep, scorer=scorer)
        kept = np.concatenate([np.asarray(leaf).ravel() for _, leaf in kernel_items(masks[scorer])]) == 1
        assert kept.sum() == round(keep * n), scorer
    # magnitude: exactly the k largest |θ| (no ties among float weights)
    kept = np.concatenate([np.asarray(leaf).ravel() for _, leaf in kernel_items(masks["magnitude"])]) == 1
    assert weights[kept].min() > weights[~kept].max()
    # random: ignores the weights and the loss (each layer keeps about `keep`), reproducible from the key
    for _, leaf in kernel_items(masks["random"]):
        assert abs(float(np.mean(leaf)) - keep) < 0.1, np.shape(leaf)
    again = network_masks(loss, dense, "actor", batch, key, sparsity=1 - keep, scorer="random")
    other = network_masks(loss, dense, "actor", batch, jax.random.PRNGKey(4), sparsity=1 - keep, scorer="random")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(masks["random"])))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(other), jax.tree_util.tree_leaves(again)))
    # the three rules pick different weights
    snip = np.concatenate([np.asarray(leaf).ravel() for _, leaf in kernel_items(masks["snip"])])
    for scorer in ("magnitude", "random"):
        assert not np.array_equal(snip, np.concatenate([np.asarray(leaf).ravel() for _, leaf in kernel_items(masks[scorer])]))
    # refresh_masks takes the scorer from the config
    refreshed, _ = refresh_masks(with_all_ones_masks(dense, BC.losses), BC.losses, batch, key,
                                 SparseRegConfig(sparsity=1 - keep, scorer="magnitude"))
    actor_key = jax.random.split(key, 1)[0]
    want = network_masks(loss, dense, "actor", batch, actor_key, sparsity=1 - keep, scorer="magnitude")
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree_util.tree_leaves(refreshed.actor.mask), jax.tree_util.tree_leaves(want)))
    with pytest.raises(ValueError, match="unknown mask scorer 'grasp'"):
        SparseRegConfig(scorer="grasp")


def test_refresh_schedule_spu():
    cfg = SparseRegConfig(sparsity=0.95, interval=5000, until=200_000)
    due = [s for s in range(0, 400_001, 100) if cfg.refresh_due(s)]
    assert due == list(range(0, 200_000, 5000))
    assert len(due) == 40
    for s in (1, 4999, 5001, 195_001, 200_000, 205_000, 1_000_000):
        assert not cfg.refresh_due(s)


def test_refresh_schedule_sfi_and_dense():
    sfi = SparseRegConfig(sparsity=0.9, interval=5000, until=0)
    assert [s for s in range(0, 100_001, 500) if sfi.refresh_due(s)] == [0]
    dense = SparseRegConfig(sparsity=0.0)
    assert not dense.enabled
    assert not any(dense.refresh_due(s) for s in (0, 5000, 10_000))


def test_sparse_reg_config_validation():
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            SparseRegConfig(sparsity=bad)
    with pytest.raises(ValueError):
        SparseRegConfig(interval=0)
    with pytest.raises(ValueError):
        SparseRegConfig(until=-1)


def test_resolve_sparsity():
    assert resolve_sparsity("auto", 10_000) == 0.95
    assert resolve_sparsity("auto", 25_000) == 0.95
    assert resolve_sparsity("auto", 25_001) == 0.75
    assert resolve_sparsity("auto", 50_000) == 0.75
    assert resolve_sparsity(" AUTO ", 5_000) == 0.95
    assert resolve_sparsity("0.9", 10) == 0.9
    assert resolve_sparsity(0.5, 10) == 0.5
    assert resolve_sparsity(0, 10) == 0.0
    assert isinstance(resolve_sparsity(0, 10), float)
    for bad in (1.0, -0.1, "abc", math.nan, "nan", "1", ""):
        with pytest.raises(ValueError):
            resolve_sparsity(bad, 10_000)


# --------------------------------------------------------------------------------------
# 8. mask_statistics on hand-made masks
# --------------------------------------------------------------------------------------


def test_mask_statistics_hand_computed():
    mask = {
        "a": {"kernel": jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), "bias": jnp.zeros(3)},  # 4/6 pruned
        "b": {"kernel": jnp.asarray([[1.0, 1.0], [1.0, 0.0]]), "bias": jnp.ones(2)},  # 1/4 pruned
        "log_std": jnp.zeros(2),
    }
    previous = {
        "a": {"kernel": jnp.asarray([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), "bias": jnp.ones(3)},  # a: 2 of 6 flipped
        "b": {"kernel": jnp.asarray([[1.0, 1.0], [1.0, 0.0]]), "bias": jnp.zeros(2)},  # b: 0 of 4 flipped
        "log_std": jnp.ones(2),
    }
    stats = mask_statistics(mask, previous)
    assert set(stats) == {"a", "b", "total"}  # biases / log_std are not weight matrices
    np.testing.assert_allclose(float(stats["a"]["sparsity"]), 4 / 6)
    np.testing.assert_allclose(float(stats["a"]["changed"]), 2 / 6)
    np.testing.assert_allclose(float(stats["b"]["sparsity"]), 1 / 4)
    np.testing.assert_allclose(float(stats["b"]["changed"]), 0.0)
    np.testing.assert_allclose(float(stats["total"]["sparsity"]), 5 / 10)
    np.testing.assert_allclose(float(stats["total"]["changed"]), 2 / 10)

    first = mask_statistics(mask, None)  # no previous mask: everything counts as changed
    np.testing.assert_allclose(float(first["a"]["changed"]), 1.0)
    np.testing.assert_allclose(float(first["total"]["changed"]), 1.0)
    np.testing.assert_allclose(float(first["total"]["sparsity"]), 0.5)


def test_live_units_hand_computed():
    # Dense_0 (3 in, 4 units), Dense_1 (4 units -> 2 units), Dense_2 (2 -> 1 output).
    # Unit j of Dense_0 lives if column j of Dense_0 and row j of Dense_1 both keep something.
    d0 = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], np.float32)  # feeds units 0 and 2
    d1 = np.array([[0, 1], [1, 0], [0, 0], [0, 0]], np.float32)  # reads units 0 and 1; feeds unit 0 and 1
    d2 = np.array([[0], [1]], np.float32)  # reads unit 1 of Dense_1
    mask = {"MLP_0": {"Dense_0": {"kernel": d0, "bias": np.ones(4)}, "Dense_1": {"kernel": d1, "bias": np.ones(2)},
                      "Dense_2": {"kernel": d2, "bias": np.ones(1)}}}
    alive = {k: (int(v[0]), v[1]) for k, v in live_units(mask).items()}
    assert alive == {"MLP_0/Dense_0": (1, 4), "MLP_0/Dense_1": (1, 2)}  # unit 0 only; unit 1 only
    stats = mask_statistics(mask, None)
    assert float(stats["MLP_0/Dense_0"]["live_units"]) == 0.25 and float(stats["MLP_0/Dense_1"]["live_units"]) == 0.5
    assert "live_units" not in stats["MLP_0/Dense_2"]  # an output layer has no hidden units
    assert float(stats["total"]["live_units"]) == pytest.approx(2 / 6)
    # Stacked heads (twin critic, leading axis 2) count per head: head 0 all alive, head 1 none.
    twin = {"VmapMLP_0": {"Dense_0": {"kernel": np.stack([np.ones((3, 2)), np.ones((3, 2))])},
                          "Dense_1": {"kernel": np.stack([np.ones((2, 1)), np.zeros((2, 1))])}}}
    assert {k: (int(v[0]), v[1]) for k, v in live_units(twin).items()} == {"VmapMLP_0/Dense_0": (2, 4)}
    per_head = live_units(twin, per_head=True)["VmapMLP_0/Dense_0"]
    assert per_head[0].tolist() == [2, 0] and per_head[1] == 2


def test_mask_statistics_nested_layer_names_and_weight_sparsity():
    mask = {"VmapMLP_0": {"Dense_0": {"kernel": jnp.asarray([[[1.0, 0.0]], [[0.0, 0.0]]]), "bias": jnp.ones((2, 2))}}}
    stats = mask_statistics(mask, mask)
    assert set(stats) == {"VmapMLP_0/Dense_0", "total"}
    np.testing.assert_allclose(float(stats["VmapMLP_0/Dense_0"]["sparsity"]), 0.75)
    np.testing.assert_allclose(float(stats["total"]["changed"]), 0.0)

    net = MaskedNet(params={"k": jnp.zeros(1)}, opt_state=None)
    assert weight_sparsity(net) == 0.0
    net = MaskedNet(params=mask, opt_state=optax.adam(1e-3).init(mask), tx=optax.adam(1e-3))
    net = sparse_net(net, mask)
    assert weight_sparsity(net) == pytest.approx(0.75)


def test_a_dense_net_runs_its_params_as_they_are():
    params = {"kernel": jnp.arange(3.0)}
    net = MaskedNet(params=params, opt_state=optax.sgd(1.0).init(params), tx=optax.sgd(1.0))
    assert net.mask is None and not holds_masks(net)  # no masks: no multiply at all
    sparse = sparse_net(net, {"kernel": jnp.asarray([1.0, 0.0, 1.0])})
    np.testing.assert_array_equal(np.asarray(apply_masks(params, sparse.mask)["kernel"]), [0.0, 0.0, 2.0])
    assert with_masked_updates(sparse) is sparse  # made sparse once


@pytest.mark.parametrize(
    "regularization", [Regularization(l1=0.01), Regularization(weight_decay=0.01)], ids=["l1", "adamw"]
)
def test_pruned_weights_accumulate_no_adam_moments_under_l1_or_decay(regularization):
    """The optimizer sees θ ⊙ m, so L1's sign(θ) and AdamW's decay vanish for pruned weights:
    with masks from the start, their first and second Adam moments stay exactly zero."""
    state = sparse_bc_state(regularization)
    state, _ = jit_refresh(BC, SparseRegConfig(0.9))(state, make_batch(), jax.random.PRNGKey(0))
    state = run_updates(state, make_batch(seed=1), 20)
    adam = [s for s in jax.tree_util.tree_leaves(state.actor.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
            if hasattr(s, "mu")][0]
    for (path, m), (_, mu), (_, nu) in zip(kernel_items(state.actor.mask), kernel_items(adam.mu),
                                           kernel_items(adam.nu)):
        pruned = np.asarray(m) == 0
        assert pruned.any()
        assert np.all(np.asarray(mu)[pruned] == 0) and np.all(np.asarray(nu)[pruned] == 0), path
        assert np.any(np.asarray(mu)[~pruned] != 0), path


def test_refresh_scores_every_network_against_the_original_state():
    """The critic is scored with the actor's *old* mask, not the one just computed before it
    (TD3+BC's critic loss runs the masked target actor), so the order of networks is irrelevant."""
    config = TD3BCConfig(network=NetworkConfig(hidden_dims=(32, 32)))
    state = with_all_ones_masks(init_state(TD3BC, config, 2), TD3BC.losses)
    batch, key = make_batch(), jax.random.PRNGKey(3)
    keys = dict(zip(TD3BC.losses, jax.random.split(key, 2)))
    refreshed, _ = refresh_masks(state, TD3BC.losses, batch, key, SparseRegConfig(0.9))
    leaves_equal = lambda a, b: all(  # noqa: E731
        np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    for name in TD3BC.losses:
        expected = network_masks(TD3BC.losses[name], state, name, batch, keys[name], sparsity=0.9)
        assert leaves_equal(expected, getattr(refreshed, name).mask), name
    # Precondition: scoring the critic after installing the new actor mask would give another mask.
    with_new_actor = state.replace(actor=with_masks(state.actor, refreshed.actor.mask))
    sequential = network_masks(TD3BC.losses["critic"], with_new_actor, "critic", batch, keys["critic"], sparsity=0.9)
    assert not leaves_equal(sequential, refreshed.critic.mask)


def test_refresh_reports_each_networks_loss_with_the_old_and_the_new_mask():
    config = TD3BCConfig(network=NetworkConfig(hidden_dims=(32, 32)))
    state = with_all_ones_masks(init_state(TD3BC, config, 4), TD3BC.losses)
    batch, key = make_batch(), jax.random.PRNGKey(5)
    keys = dict(zip(TD3BC.losses, jax.random.split(key, 2)))
    first, _ = refresh_masks(state, TD3BC.losses, batch, key, SparseRegConfig(0.9))
    second, stats = refresh_masks(first, TD3BC.losses, make_batch(seed=1), key, SparseRegConfig(0.5))
    batch = make_batch(seed=1)
    for name, loss_fn in TD3BC.losses.items():
        before = float(loss_fn(first, batch, keys[name])[0])
        # only this network's mask changes; the others keep theirs (as when it was scored)
        after = float(loss_fn(first.replace(**{name: getattr(second, name)}), batch, keys[name])[0])
        assert float(stats[name]["total"]["loss_before"]) == pytest.approx(before, rel=1e-6), name
        assert float(stats[name]["total"]["loss_after"]) == pytest.approx(after, rel=1e-6), name
        assert before != pytest.approx(after), name  # 90% -> 50% sparse changes the function
        assert set(stats[name]["total"]) == {"sparsity", "changed", "live_units", "loss_before", "loss_after"}


@pytest.mark.parametrize("interval, until, last", [(5000, 200_000, 195_000), (5000, 6000, 5000), (5000, 5000, 0),
                                                   (5000, 60_000, 55_000), (5000, 0, 0), (200, 400, 200)])
def test_last_refresh_is_the_last_step_refresh_due_holds(interval, until, last):
    config = SparseRegConfig(0.9, interval, until)
    assert config.last_refresh == last
    assert max(s for s in range(0, until + 2 * interval, 100) if config.refresh_due(s)) == last
