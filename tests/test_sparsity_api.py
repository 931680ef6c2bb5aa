"""The functional Sparse-Reg API on any params pytree (Flax TrainState, Haiku-style dicts, NNX state).

Hand-computed SNIP scores and top-k masks on tiny trees, the prunable predicate, and
``masked_updates`` against the project's reference path, ``MaskedNet.apply_gradients``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct
from flax.training.train_state import TrainState

import sparse_reg as sr
from sparse_reg.algorithms.base import Regularization, make_optimizer
from sparse_reg.masked_net import MaskedNet
from sparse_reg.sparsity import SparseRegConfig, is_weight_matrix, mask_statistics, with_masked_updates, with_masks


def np_tree(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------------------
# SNIP scores, by hand
# --------------------------------------------------------------------------------------


def test_snip_scores_from_grads_is_abs_theta_times_g():
    params = {"layer": {"w": jnp.asarray([[1.0, -2.0], [3.0, 0.5]]), "b": jnp.asarray([1.0, -1.0])}}
    grads = {"layer": {"w": jnp.asarray([[0.5, 0.25], [-1.0, -4.0]]), "b": jnp.asarray([-3.0, 0.0])}}
    scores = sr.snip_scores_from_grads(params, grads)
    np.testing.assert_array_equal(np.asarray(scores["layer"]["w"]), [[0.5, 0.5], [3.0, 2.0]])
    np.testing.assert_array_equal(np.asarray(scores["layer"]["b"]), [3.0, 0.0])


# A linear unit on one example: x = (1, 2), w = (0.5, -1)ᵀ, b = 0.25, y = 1.
# pred = 0.5 - 2 + 0.25 = -1.25, r = pred - y = -2.25, L = r² ; ∂L/∂w = 2 r x = (-4.5, -9), ∂L/∂b = 2 r = -4.5.
# SNIP: |0.5 · -4.5| = 2.25, |-1 · -9| = 9, |0.25 · -4.5| = 1.125.
LINEAR = {"w": jnp.asarray([[0.5], [-1.0]]), "b": jnp.asarray([0.25])}


def linear_loss(params):
    x, y = jnp.asarray([[1.0, 2.0]]), 1.0
    return jnp.sum((x @ params["w"] + params["b"] - y) ** 2)


def test_snip_scores_hand_computed():
    scores = sr.snip_scores(linear_loss, LINEAR)
    np.testing.assert_allclose(np.asarray(scores["w"]), [[2.25], [9.0]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(scores["b"]), [1.125], rtol=1e-6)
    grads = jax.grad(linear_loss)(LINEAR)
    assert_trees_equal(scores, sr.snip_scores_from_grads(LINEAR, grads))


def test_snip_masks_keep_the_best_scored_weight_and_leave_biases_dense():
    masks = sr.snip_masks(linear_loss, LINEAR, sparsity=0.5)  # 2 weights, keep round(0.5 · 2) = 1: score 9
    np.testing.assert_array_equal(np.asarray(masks["w"]), [[0.0], [1.0]])
    np.testing.assert_array_equal(np.asarray(masks["b"]), [1.0])
    assert masks["w"].dtype == jnp.float32


# --------------------------------------------------------------------------------------
# top-k: global, exact k, deterministic ties, sparsity / keep
# --------------------------------------------------------------------------------------

# Flatten order: "layer" < "out"; inside "layer", "b" < "w". Six weight entries, biases huge.
TINY_SCORES = {
    "layer": {"w": jnp.asarray([[0.1, 0.9], [0.5, 0.3]]), "b": jnp.asarray([100.0, 100.0])},
    "out": {"kernel": jnp.asarray([[0.7], [0.2]]), "bias": jnp.asarray([-5.0])},
}


def test_topk_hand_computed_on_a_tiny_tree():
    masks = sr.topk_masks(TINY_SCORES, keep=0.5)  # k = 3: scores 0.9, 0.7, 0.5
    np.testing.assert_array_equal(np.asarray(masks["layer"]["w"]), [[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(masks["out"]["kernel"]), [[1.0], [0.0]])
    np.testing.assert_array_equal(np.asarray(masks["layer"]["b"]), [1.0, 1.0])  # biases never compete
    np.testing.assert_array_equal(np.asarray(masks["out"]["bias"]), [1.0])
    masks = sr.topk_masks(TINY_SCORES, sparsity=5 / 6)  # k = 1: only 0.9
    np.testing.assert_array_equal(np.asarray(masks["layer"]["w"]), [[0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(masks["out"]["kernel"]), [[0.0], [0.0]])
    masks = sr.topk_masks(TINY_SCORES, sparsity=0.99)  # round(0.06) = 0, but at least one weight is kept
    assert sum(float(m.sum()) for m in (masks["layer"]["w"], masks["out"]["kernel"])) == 1.0


def test_ties_go_to_the_first_entries_in_flatten_order_and_k_is_exact():
    ones = jax.tree_util.tree_map(jnp.ones_like, TINY_SCORES)
    masks = sr.topk_masks(ones, keep=0.5)  # all six weights tie: the first three in flatten order
    np.testing.assert_array_equal(np.asarray(masks["layer"]["w"]), [[1.0, 1.0], [1.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(masks["out"]["kernel"]), [[0.0], [0.0]])
    # A tie across the cut: scores (2, 1, 2, 2 | 2, 0); keep 2 -> the first two 2s, not all four.
    scores = {"layer": {"w": jnp.asarray([[2.0, 1.0], [2.0, 2.0]])}, "out": {"kernel": jnp.asarray([[2.0], [0.0]])}}
    masks = sr.topk_masks(scores, keep=2 / 6)
    np.testing.assert_array_equal(np.asarray(masks["layer"]["w"]), [[1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(masks["out"]["kernel"]), [[0.0], [0.0]])
    for keep in (1 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0):
        masks = sr.topk_masks(scores, keep=keep)
        assert float(masks["layer"]["w"].sum() + masks["out"]["kernel"].sum()) == round(keep * 6)


def test_sparsity_and_keep_are_the_same_masks():
    rng = np.random.default_rng(0)
    scores = {"a": {"kernel": jnp.asarray(rng.random((7, 9)))}, "b": {"w": jnp.asarray(rng.random((9, 3)))}}
    for sparsity in (0.0, 0.5, 0.75, 0.9, 0.95):
        a = sr.topk_masks(scores, sparsity=sparsity)
        b = sr.topk_masks(scores, keep=1 - sparsity)
        assert_trees_equal(a, b)
        kept = sum(float(m.sum()) for m in jax.tree_util.tree_leaves(a))
        assert kept == max(1, round((1 - sparsity) * 90))


def test_topk_arguments_are_keyword_only_and_exactly_one():
    with pytest.raises(TypeError):
        sr.topk_masks(TINY_SCORES, 0.5)  # positional: which of the two was meant?
    with pytest.raises(TypeError, match="exactly one"):
        sr.topk_masks(TINY_SCORES)
    with pytest.raises(TypeError, match="exactly one"):
        sr.topk_masks(TINY_SCORES, sparsity=0.5, keep=0.5)
    for bad in ({"sparsity": 1.0}, {"sparsity": -0.1}, {"keep": 0.0}, {"keep": 1.5}):
        with pytest.raises(ValueError):
            sr.topk_masks(TINY_SCORES, **bad)


def test_haiku_style_w_is_pruned_and_biases_scales_are_not():
    rng = np.random.default_rng(1)
    params = {  # what hk.Linear / hk.LayerNorm name their parameters
        "mlp/~/linear_0": {"w": jnp.asarray(rng.random((4, 8))), "b": jnp.asarray(rng.random(8))},
        "mlp/~/layer_norm": {"scale": jnp.asarray(rng.random(8)), "offset": jnp.asarray(rng.random(8))},
        "mlp/~/linear_1": {"w": jnp.asarray(rng.random((8, 2))), "b": jnp.asarray(rng.random(2))},
        "log_std": jnp.asarray(rng.random(2)),
    }
    masks = sr.topk_masks(params, sparsity=0.75)  # 48 weights, keep 12
    assert float(masks["mlp/~/linear_0"]["w"].sum() + masks["mlp/~/linear_1"]["w"].sum()) == 12
    for leaf in (masks["mlp/~/linear_0"]["b"], masks["mlp/~/linear_1"]["b"], masks["log_std"],
                 *masks["mlp/~/layer_norm"].values()):
        np.testing.assert_array_equal(np.asarray(leaf), 1.0)
    # A one-dimensional leaf called w is a scale, not a weight matrix.
    assert not is_weight_matrix((jax.tree_util.DictKey("w"),), jnp.ones(3))
    assert is_weight_matrix((jax.tree_util.DictKey("w"),), jnp.ones((3, 2)))


def test_nnx_state_kernels_are_pruned():
    from flax import nnx

    model = nnx.Sequential(nnx.Linear(3, 8, rngs=nnx.Rngs(0)), nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
    state = nnx.state(model, nnx.Param)  # paths end in .../kernel/value
    scores = jax.tree_util.tree_map(lambda p: jnp.abs(p) + 1.0, state)
    masks = sr.topk_masks(scores, sparsity=0.9)  # 40 weights, keep 4
    flat = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(masks)[0]}
    kernels = [m for name, m in flat.items() if "kernel" in name]
    biases = [m for name, m in flat.items() if "bias" in name]
    assert len(kernels) == 2 and len(biases) == 2
    assert sum(float(m.sum()) for m in kernels) == 4
    assert all(np.all(np.asarray(b) == 1.0) for b in biases)
    stats = mask_statistics(masks, None)
    assert set(stats) == {"layers/0", "layers/1", "total"}
    np.testing.assert_allclose(float(stats["total"]["sparsity"]), 36 / 40)


def test_custom_predicate_overrides_the_default():
    # Prune every leaf, biases included: 6 weights + 3 biases compete, keep 3: the biases (100, 100) and 0.9.
    masks = sr.topk_masks(TINY_SCORES, keep=3 / 9, is_prunable=lambda path, leaf: True)
    np.testing.assert_array_equal(np.asarray(masks["layer"]["b"]), [1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(masks["layer"]["w"]), [[0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(masks["out"]["bias"]), [0.0])
    np.testing.assert_array_equal(np.asarray(masks["out"]["kernel"]), [[0.0], [0.0]])
    # Only the output layer: "layer" stays dense, 1 of 2 output weights kept.
    only_out = lambda path, leaf: is_weight_matrix(path, leaf) and path[0].key == "out"  # noqa: E731
    masks = sr.topk_masks(TINY_SCORES, sparsity=0.5, is_prunable=only_out)
    np.testing.assert_array_equal(np.asarray(masks["layer"]["w"]), 1.0)
    np.testing.assert_array_equal(np.asarray(masks["out"]["kernel"]), [[1.0], [0.0]])


def test_no_prunable_leaf_is_a_clear_error():
    with pytest.raises(ValueError, match="is_prunable"):
        sr.topk_masks({"weights": jnp.ones((3, 3))}, sparsity=0.5)


def test_dense_and_apply_masks():
    params = {"w": jnp.asarray([[1.0, -2.0]]), "b": jnp.asarray([3.0])}
    ones = sr.dense_masks(params)
    assert_trees_equal(ones, {"w": jnp.ones((1, 2)), "b": jnp.ones(1)})
    masked = sr.apply_masks(params, {"w": jnp.asarray([[0.0, 1.0]]), "b": jnp.ones(1)})
    np.testing.assert_array_equal(np.asarray(masked["w"]), [[0.0, -2.0]])
    np.testing.assert_array_equal(np.asarray(masked["b"]), [3.0])
    half = {"w": jnp.ones((1, 2), jnp.bfloat16)}
    assert sr.apply_masks(half, {"w": jnp.ones((1, 2), jnp.float32)})["w"].dtype == jnp.bfloat16


# --------------------------------------------------------------------------------------
# masked_updates == MaskedNet.apply_gradients
# --------------------------------------------------------------------------------------


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x))
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(2)(x)


def regression_data(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(3, 2))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def mse(apply_fn, params, x, y):
    return jnp.mean((apply_fn({"params": params}, x) - y) ** 2)


def random_masks(params, sparsity, seed):
    rng = np.random.default_rng(seed)
    scores = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.random(p.shape), jnp.float32), params)
    return sr.topk_masks(scores, sparsity=sparsity)


@jax.jit
def _train_state_steps(state, x, y):
    def step(state, _):
        masks = sr.get_masks(state.opt_state)
        grads = jax.grad(lambda p: mse(state.apply_fn, sr.apply_masks(p, masks), x, y))(state.params)
        return state.apply_gradients(grads=grads), None

    return jax.lax.scan(step, state, None, length=30)[0]


@jax.jit
def _masked_net_steps(net, x, y):
    def step(net, _):
        grads = jax.grad(lambda p: jnp.mean((net.replace(params=p)(x) - y) ** 2))(net.params)
        return net.apply_gradients(grads), None

    return jax.lax.scan(step, net, None, length=30)[0]


def inner_optimizers():
    return {
        "adam": optax.adam(1e-2),
        "adamw": optax.adamw(1e-2, weight_decay=0.1),
        "l1+adam (chain)": make_optimizer(1e-2, Regularization(l1=0.01)),
    }


@pytest.mark.parametrize("name", list(inner_optimizers()))
def test_masked_updates_equal_masked_net_apply_gradients(name):
    inner = inner_optimizers()[name]
    module, (x, y) = TinyMLP(), regression_data()
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    masks = random_masks(params, 0.8, seed=1)

    net = MaskedNet(params=params, opt_state=inner.init(params), module=module, tx=inner)
    net = with_masks(with_masked_updates(net), masks)  # the masks in its optimiser state
    state = TrainState.create(apply_fn=module.apply, params=params, tx=sr.masked_updates(inner))
    state = state.replace(opt_state=sr.set_masks(state.opt_state, masks))

    net = _masked_net_steps(net, x, y)
    state = _train_state_steps(state, x, y)
    moved = 0
    for (path, a), b, m, p0 in zip(jax.tree_util.tree_flatten_with_path(state.params)[0],
                                   jax.tree_util.tree_leaves(net.params), jax.tree_util.tree_leaves(masks),
                                   jax.tree_util.tree_leaves(params)):
        a, b, m, p0 = map(np.asarray, (a, b, m, p0))
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
        np.testing.assert_array_equal(a[m == 0], p0[m == 0])  # pruned: bit-identical to before
        moved += np.sum(a[m == 1] != p0[m == 1])
    assert moved > 0
    # The wrapped optimiser's state is the reference one (Adam moments included).
    inner_state = [s for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=lambda s: isinstance(
        s, sr.MaskedUpdatesState)) if isinstance(s, sr.MaskedUpdatesState)][0].inner_state
    for a, b in zip(jax.tree_util.tree_leaves(inner_state), jax.tree_util.tree_leaves(net.opt_state.inner_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-7)


def test_pruned_weights_stay_frozen_for_many_steps_and_a_new_mask_revives_them():
    module, (x, y) = TinyMLP(), regression_data(seed=2)
    params = module.init(jax.random.PRNGKey(3), x)["params"]
    state = TrainState.create(apply_fn=module.apply, params=params,
                              tx=sr.masked_updates(optax.adamw(1e-2, weight_decay=0.1)))
    # Dense first, so Adam's moments are non-zero everywhere when the mask arrives.
    state = _train_state_steps(state, x, y)
    m1 = random_masks(params, 0.9, seed=4)
    state = state.replace(opt_state=sr.set_masks(state.opt_state, m1))
    frozen = np_tree(state.params)
    for _ in range(5):  # 150 steps
        state = _train_state_steps(state, x, y)
    after = np_tree(state.params)
    moved = 0
    for a, b, m in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(frozen), jax.tree_util.tree_leaves(m1)):
        m = np.asarray(m)
        np.testing.assert_array_equal(a[m == 0], b[m == 0])
        moved += np.sum(a[m == 1] != b[m == 1])
    assert moved > 0

    # Revive every weight of the output layer: it comes back with its frozen value, then trains.
    m2 = jax.tree_util.tree_map(lambda m: m, m1)
    m2["Dense_2"]["kernel"] = jnp.ones_like(m1["Dense_2"]["kernel"])
    revived = np.asarray(m1["Dense_2"]["kernel"]) == 0
    assert revived.any()
    state = state.replace(opt_state=sr.set_masks(state.opt_state, m2))
    forward = sr.apply_masks(state.params, sr.get_masks(state.opt_state))
    np.testing.assert_array_equal(np.asarray(forward["Dense_2"]["kernel"])[revived], frozen["Dense_2"]["kernel"][revived])
    state = _train_state_steps(state, x, y)
    assert np.all(np.asarray(state.params["Dense_2"]["kernel"])[revived] != frozen["Dense_2"]["kernel"][revived])


def test_adam_moments_of_pruned_weights_stay_zero_with_masks_from_the_start():
    module, (x, y) = TinyMLP(), regression_data(seed=5)
    params = module.init(jax.random.PRNGKey(6), x)["params"]
    state = TrainState.create(apply_fn=module.apply, params=params,
                              tx=sr.masked_updates(optax.adamw(1e-2, weight_decay=0.1)))
    masks = random_masks(params, 0.8, seed=7)
    state = _train_state_steps(state.replace(opt_state=sr.set_masks(state.opt_state, masks)), x, y)
    adam = state.opt_state.inner_state[0]
    for mu, nu, m in zip(jax.tree_util.tree_leaves(adam.mu), jax.tree_util.tree_leaves(adam.nu),
                         jax.tree_util.tree_leaves(masks)):
        pruned = np.asarray(m) == 0
        assert np.all(np.asarray(mu)[pruned] == 0) and np.all(np.asarray(nu)[pruned] == 0)


# --------------------------------------------------------------------------------------
# get_masks / set_masks through optax.chain
# --------------------------------------------------------------------------------------


def test_set_and_get_masks_through_chains():
    params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    masks = {"dense": {"kernel": jnp.asarray(np.eye(3, 4), jnp.float32), "bias": jnp.ones(4)}}
    for tx in (
        optax.chain(optax.clip_by_global_norm(1.0), sr.masked_updates(optax.adamw(1e-3))),
        sr.masked_updates(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))),
        optax.chain(optax.identity(), optax.chain(optax.scale(2.0), sr.masked_updates(optax.sgd(0.1)))),
    ):
        opt_state = tx.init(params)
        assert_trees_equal(sr.get_masks(opt_state), sr.dense_masks(params))
        new_state = sr.set_masks(opt_state, masks)
        assert_trees_equal(sr.get_masks(new_state), masks)
        assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(opt_state)
        # Everything but the masks is untouched.
        old_rest = [x for x in jax.tree_util.tree_leaves(opt_state) if x.shape not in ((3, 4), (4,))]
        new_rest = [x for x in jax.tree_util.tree_leaves(new_state) if x.shape not in ((3, 4), (4,))]
        assert all(a is b for a, b in zip(old_rest, new_rest))
        # One update through the chain: the pruned entries get exactly zero.
        updates, _ = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), new_state, params)
        np.testing.assert_array_equal(np.asarray(updates["dense"]["kernel"])[np.eye(3, 4) == 0], 0.0)
        assert np.all(np.asarray(updates["dense"]["kernel"])[np.eye(3, 4) == 1] != 0.0)
    # Masks keep their stored dtype (a jit/scan carry must not change type).
    bool_masks = jax.tree_util.tree_map(lambda m: m > 0, masks)
    assert sr.get_masks(sr.set_masks(opt_state, bool_masks))["dense"]["kernel"].dtype == jnp.float32


def test_get_and_set_masks_errors():
    params = {"dense": {"kernel": jnp.ones((3, 4))}}
    with pytest.raises(ValueError, match="masked_updates"):
        sr.get_masks(optax.adam(1e-3).init(params))
    twice = optax.chain(sr.masked_updates(optax.sgd(0.1)), sr.masked_updates(optax.sgd(0.1))).init(params)
    with pytest.raises(ValueError, match="2 masked_updates"):
        sr.get_masks(twice)
    opt_state = sr.masked_updates(optax.sgd(0.1)).init(params)
    with pytest.raises(ValueError, match="structure"):
        sr.set_masks(opt_state, {"dense": {"w": jnp.ones((3, 4))}})
    with pytest.raises(ValueError, match="shape"):
        sr.set_masks(opt_state, {"dense": {"kernel": jnp.ones((4, 3))}})


# --------------------------------------------------------------------------------------
# refresh_masks on TrainStates held in a dict, a PyTreeNode, or given alone
# --------------------------------------------------------------------------------------


class Batch(struct.PyTreeNode):
    x: jax.Array
    y: jax.Array


def two_nets(seed=0):
    """An 'actor' and a 'critic' whose critic loss reads the actor (as in actor-critic agents)."""
    module = TinyMLP()
    x, y = regression_data(seed)
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    make = lambda key: TrainState.create(  # noqa: E731
        apply_fn=module.apply, params=module.init(key, x)["params"], tx=sr.masked_updates(optax.adam(1e-3)))
    return {"actor": make(k1), "critic": make(k2)}, Batch(x, y)


def forward(ts, x):
    return ts.apply_fn({"params": sr.apply_masks(ts.params, sr.get_masks(ts.opt_state))}, x)


def actor_loss(state, batch, key):
    loss = jnp.mean((forward(state["actor"], batch.x) - batch.y) ** 2)
    return loss, {}


def critic_loss(state, batch, key):
    loss = jnp.mean((forward(state["critic"], batch.x) - jax.lax.stop_gradient(forward(state["actor"], batch.x))) ** 2)
    return loss, {}


LOSSES = {"actor": actor_loss, "critic": critic_loss}


def kernel_count(params):
    return sum(leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if is_weight_matrix(path, leaf))


def test_refresh_masks_on_a_dict_of_train_states():
    state, batch = two_nets()
    refreshed, stats = sr.refresh_masks(state, LOSSES, batch, jax.random.PRNGKey(0), SparseRegConfig(0.9))
    assert isinstance(refreshed, dict) and set(refreshed) == {"actor", "critic"}
    n = kernel_count(state["actor"].params)
    for name in LOSSES:
        masks = sr.get_masks(refreshed[name].opt_state)
        kept = sum(float(m.sum()) for path, m in jax.tree_util.tree_flatten_with_path(masks)[0]
                   if is_weight_matrix(path, m))
        assert kept == round(0.1 * n)
        np.testing.assert_allclose(sr.weight_sparsity(refreshed[name]), 1 - round(0.1 * n) / n, rtol=1e-6)
        assert_trees_equal(refreshed[name].params, state[name].params)  # a refresh moves no weight
        assert set(stats[name]["total"]) == {"sparsity", "changed", "live_units", "loss_before", "loss_after"}
    # The actor's masks are SNIP on its full network, by hand with snip_masks.
    expected = sr.snip_masks(lambda p: jnp.mean((state["actor"].apply_fn({"params": p}, batch.x) - batch.y) ** 2),
                             state["actor"].params, sparsity=0.9)
    assert_trees_equal(sr.get_masks(refreshed["actor"].opt_state), expected)
    # Scoring sees the full network: refreshing the refreshed actor on the same batch gives the same masks
    # (the critic's would change: its loss runs the actor, now masked).
    again, stats = sr.refresh_masks(refreshed, {"actor": actor_loss}, batch, jax.random.PRNGKey(0), SparseRegConfig(0.9))
    assert_trees_equal(sr.get_masks(again["actor"].opt_state), expected)
    assert float(stats["actor"]["total"]["changed"]) == 0.0
    assert again["critic"] is refreshed["critic"]


class AgentState(struct.PyTreeNode):
    actor: TrainState
    critic: TrainState


def test_refresh_masks_on_a_pytree_node_and_on_one_train_state_match_the_masked_net_path():
    nets, batch = two_nets(seed=1)
    config = SparseRegConfig(0.8)
    key = jax.random.PRNGKey(2)
    as_dict, _ = sr.refresh_masks(nets, LOSSES, batch, key, config)

    node_losses = {name: (lambda fn: lambda s, b, k: fn({"actor": s.actor, "critic": s.critic}, b, k))(fn)
                   for name, fn in LOSSES.items()}
    as_node, _ = sr.refresh_masks(AgentState(**nets), node_losses, batch, key, config)
    for name in LOSSES:
        assert_trees_equal(sr.get_masks(getattr(as_node, name).opt_state), sr.get_masks(as_dict[name].opt_state))

    alone, stats = sr.refresh_masks(nets["actor"], lambda ts, b, k: actor_loss({"actor": ts}, b, k), batch, key, config)
    assert_trees_equal(sr.get_masks(alone.opt_state), sr.get_masks(as_dict["actor"].opt_state))
    assert set(stats) == {None}

    # The project's own networks (MaskedNet in a PyTreeNode) give the same masks for the same losses.
    class MaskedAgent(struct.PyTreeNode):
        actor: MaskedNet

    module = TinyMLP()
    actor = MaskedNet(params=nets["actor"].params, opt_state=optax.identity().init(nets["actor"].params),
                      module=module, tx=optax.identity())
    masked = MaskedAgent(actor=with_masked_updates(actor))
    masked_loss = {"actor": lambda s, b, k: (jnp.mean((s.actor(b.x) - b.y) ** 2), {})}
    reference, _ = sr.refresh_masks(masked, masked_loss, batch, key, config)
    assert_trees_equal(reference.actor.mask, sr.get_masks(alone.opt_state))


def test_refresh_masks_says_what_it_needs():
    nets, batch = two_nets()
    with pytest.raises(ValueError, match="no network 'critic'.*actor"):
        sr.refresh_masks({"actor": nets["actor"]}, LOSSES, batch, jax.random.PRNGKey(0), SparseRegConfig(0.9))
    plain = TrainState.create(apply_fn=TinyMLP().apply, params=nets["actor"].params, tx=optax.adam(1e-3))
    with pytest.raises(ValueError, match="'actor'.*masked_updates"):
        sr.refresh_masks({**nets, "actor": plain}, LOSSES, batch, jax.random.PRNGKey(0), SparseRegConfig(0.9))
    with pytest.raises(ValueError, match="MaskedNet or a train state"):
        sr.refresh_masks({"actor": nets["actor"].params}, {"actor": actor_loss}, batch, jax.random.PRNGKey(0),
                         SparseRegConfig(0.9))


def test_refresh_masks_under_jit_on_train_states():
    nets, batch = two_nets(seed=3)
    refresh = jax.jit(lambda s, b, k: sr.refresh_masks(s, LOSSES, b, k, SparseRegConfig(0.95)))
    eager, _ = sr.refresh_masks(nets, LOSSES, batch, jax.random.PRNGKey(1), SparseRegConfig(0.95))
    jitted, _ = refresh(nets, batch, jax.random.PRNGKey(1))
    for name in LOSSES:
        assert_trees_equal(sr.get_masks(jitted[name].opt_state), sr.get_masks(eager[name].opt_state))


def test_masked_updates_pass_extra_arguments_on():
    """Optimisers that take extra arguments (e.g. a loss ``value=``) keep working when wrapped."""
    seen = {}

    def update_fn(updates, state, params=None, *, value):
        seen["value"] = value
        return updates, state

    needs_value = optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
    params = {"dense": {"kernel": jnp.ones((2, 2))}}
    tx = sr.masked_updates(needs_value)
    opt_state = sr.set_masks(tx.init(params), {"dense": {"kernel": jnp.asarray([[1.0, 0.0], [0.0, 1.0]])}})
    updates, _ = tx.update({"dense": {"kernel": jnp.full((2, 2), 3.0)}}, opt_state, params, value=0.5)
    assert seen["value"] == 0.5
    np.testing.assert_array_equal(np.asarray(updates["dense"]["kernel"]), [[3.0, 0.0], [0.0, 3.0]])
    plain_updates, _ = sr.masked_updates(optax.sgd(1.0)).update(
        {"dense": {"kernel": jnp.ones((2, 2))}}, sr.masked_updates(optax.sgd(1.0)).init(params), params, value=0.5)
    np.testing.assert_array_equal(np.asarray(plain_updates["dense"]["kernel"]), -1.0)
