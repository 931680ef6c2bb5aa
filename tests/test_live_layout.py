"""The live-units layout (live_layout) against the dense-masked path it stands in for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Killed, stop_at

from sparse_reg.algorithms import ALGORITHMS, Batch
from sparse_reg.live_layout import (
    LiveNet,
    block_fraction,
    live_networks,
    state_to_dense,
    state_to_live,
    to_dense,
    to_live,
)
from sparse_reg.masked_net import MaskedNet
from sparse_reg.networks import MLP
from sparse_reg.sparsity import with_masked_updates, with_masks
from sparse_reg.training.checkpoint import checkpoint_step
from sparse_reg.training.config import RunConfig
from sparse_reg.training.logging import read_rows
from sparse_reg.training.prepare import initial_state
from sparse_reg.training.trainer import Lanes, chunk_means, load_agent, make_chunk_runner, train

OBS, ACT = 5, 2


def _data(n=512, seed=3):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return Batch(jax.random.normal(k[0], (n, OBS)), jnp.tanh(jax.random.normal(k[1], (n, ACT))),
                 jax.random.normal(k[2], (n,)), jax.random.normal(k[3], (n, OBS)), jnp.zeros(n))


def _masks(mask, rng):
    """Random masks keeping ~15% of each kernel, with whole columns of the first layer and whole rows and
    columns of the second pruned (so units without kept inputs, without kept outputs, or both), each head
    differently; what SNIP leaves at 95% on 256-wide networks, at test size and without its compilation."""
    def one(path, m):
        keys = [getattr(p, "key", None) for p in path]
        if keys[-1] != "kernel":
            return m
        kept = rng.random(m.shape) < 0.15
        units = m.shape[-1]
        if keys[-2] == "Dense_0":
            kept &= rng.random((*m.shape[:-2], 1, units)) > 0.25
        elif keys[-2] == "Dense_1":
            kept &= rng.random((*m.shape[:-1], 1)) > 0.3
            kept &= rng.random((*m.shape[:-2], 1, units)) > 0.3
        return jnp.asarray(kept, m.dtype)

    return jax.tree_util.tree_map_with_path(one, mask)


def _masked_state(algo, seed=0, **run_options):
    config = RunConfig(algo=algo, sparsity=0.95, steps=1000, hidden_dims=(48, 48), algo_options={"batch_size": 32},
                       seed=seed, **run_options)
    algorithm = ALGORITHMS[algo]
    state, key = initial_state(config, OBS, ACT, True)
    rng = np.random.default_rng(seed)
    state = state.replace(**{n: with_masks(getattr(state, n), _masks(getattr(state, n).mask, rng))
                             for n in algorithm.losses})
    return algorithm, state, key


@pytest.fixture(autouse=True)
def no_unrolling(monkeypatch):
    """The trainer unrolls its update scan 4 times, which only doubles compilation here."""
    monkeypatch.setattr("sparse_reg.training.trainer.SCAN_UNROLL", 1)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _assert_same_training(algorithm, before, masked_after, live_after, masked_sums, live_sums):
    masked_metrics, live_metrics = chunk_means([masked_sums]), chunk_means([live_sums])
    for name, value in masked_metrics.items():
        np.testing.assert_allclose(live_metrics[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    live_after = state_to_dense(live_after, algorithm.losses)
    for name in algorithm.losses:
        start, masked, live = getattr(before, name), getattr(masked_after, name), getattr(live_after, name)
        assert type(live) is MaskedNet
        for part in ("params", "opt_state", "target"):
            if getattr(masked, part) is None:
                continue
            assert jax.tree_util.tree_structure(getattr(live, part)) == jax.tree_util.tree_structure(getattr(masked, part))
            for x, y in zip(_leaves(getattr(live, part)), _leaves(getattr(masked, part))):
                np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4, err_msg=f"{name} {part}")
        for p, p0, m in zip(_leaves(live.params), _leaves(start.params), _leaves(start.mask)):
            assert np.array_equal(p[m == 0], p0[m == 0])  # pruned weights never move, bit for bit
        for m, m0 in zip(_leaves(live.mask), _leaves(start.mask)):
            assert np.array_equal(m, m0)


def test_round_trip_is_exact_and_the_layout_has_every_kind_of_unit():
    algorithm, state, _ = _masked_state("iql")
    live = state_to_live(state, algorithm.losses, max_fraction=1.0)
    assert live_networks(live, algorithm.losses) == ["actor", "critic", "value"]
    kernels = live.critic.params["VmapMLP_0"]["Dense_1"]["kernel"]
    assert set(kernels) == {"block", "const", "dead"}  # these masks leave constant and dead units
    assert kernels["block"].shape[0] == 2 and kernels["block"].shape[-1] % 8 == 0  # two heads, one padded width
    back = state_to_dense(live, algorithm.losses)
    for name in algorithm.losses:
        for x, y in zip(_leaves(getattr(state, name)), _leaves(getattr(back, name))):
            assert np.array_equal(x, y)


@pytest.mark.parametrize(
    "algo, run_options",
    [("bc", {}), ("td3bc", {}), ("awac", {}), ("iql", {}), ("iql-paper-code", {}), ("awac-paper-code", {}),
     # L1's sign term and AdamW's decay move dead units' weights (IQL: also its value network)
     ("td3bc", {"l1": 1e-3, "weight_decay": 1e-2}), ("iql", {"l1": 1e-3, "weight_decay": 1e-2})],
)
def test_same_training_as_dense_masked(algo, run_options):
    algorithm, state, key = _masked_state(algo, **run_options)
    live = state_to_live(state, algorithm.losses, max_fraction=1.0)
    assert isinstance(live.actor, LiveNet) and isinstance(getattr(live, "critic", live.actor), LiveNet)
    run = make_chunk_runner(algorithm, 32)
    data = _data()
    masked_after, _, masked_sums = run(state, key, data, 300)
    live_after, _, live_sums = run(live, key, data, 300)
    _assert_same_training(algorithm, state, masked_after, live_after, masked_sums, live_sums)


def test_vmapped_runs_pad_each_lane_to_the_widest():
    algorithm = ALGORITHMS["iql"]
    states, keys = zip(*[_masked_state("iql", seed=s)[1:] for s in (0, 1)])
    lanes = Lanes(2)
    state, key = lanes.stack(list(states)), lanes.stack(list(keys))
    data = lanes.stack([_data(seed=3), _data(seed=4)])
    live = state_to_live(state, algorithm.losses, lanes=2, max_fraction=1.0)
    assert live.critic.params["VmapMLP_0"]["Dense_0"]["kernel"]["block"].shape[:2] == (2, 2)  # lanes, heads
    run = make_chunk_runner(algorithm, 32, lanes)
    masked_after, _, masked_sums = run(state, key, data, 100)
    live_after, _, live_sums = run(live, key, data, 100)
    _assert_same_training(algorithm, state, masked_after, live_after, masked_sums, live_sums)


def test_units_by_hand():
    """3 inputs, hidden (4, 4), 2 outputs. Layer 0: unit 0 live, 1 constant (no kept input), 2 dead (no kept
    output), 3 unused. The constant unit reaches the output through relu(b_1), its bias still trained."""
    module = MLP((4, 4), 2)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.3, params)  # positive biases: the constant unit is on
    m0 = np.zeros((3, 4), np.float32)
    m0[0, 0] = m0[2, 0] = m0[1, 2] = 1
    m1 = np.zeros((4, 4), np.float32)
    m1[0, 0] = m1[1, 0] = m1[1, 3] = 1
    m2 = np.zeros((4, 2), np.float32)
    m2[0, :] = m2[3, 1] = 1
    mask = {"Dense_0": {"kernel": m0, "bias": np.ones(4)}, "Dense_1": {"kernel": m1, "bias": np.ones(4)},
            "Dense_2": {"kernel": m2, "bias": np.ones(2)}}
    mask = jax.tree_util.tree_map(jnp.asarray, mask)
    import optax

    net = MaskedNet(params=params, opt_state=optax.adam(1e-2).init(params), module=module, tx=optax.adam(1e-2))
    net = with_masks(with_masked_updates(net), mask)
    live = to_live(net, multiple=1)
    p = live.params
    assert p["Dense_0"]["kernel"]["block"].shape == (3, 1)  # unit 0 only
    assert p["Dense_0"]["kernel"]["dead"].shape == (1,)  # unit 2's kept input
    assert p["Dense_1"]["kernel"]["const"].shape == (1, 2)  # unit 1 of layer 0 feeds layer 1's live units 0, 3
    assert p["Dense_2"]["kernel"]["block"].shape == (2, 2)
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 3))
    np.testing.assert_allclose(live(x), net(x), rtol=1e-6)

    def loss(n, params):
        return jnp.sum(n.replace(params=params)(x) ** 2)

    # Gradients put back where the dense path has them (to_dense fills the pruned entries from the net).
    g_live = to_dense(live.replace(params=jax.grad(lambda q: loss(live, q))(live.params)))
    g_net = jax.grad(lambda q: loss(net, q))(net.params)
    for a, b, m in zip(_leaves(g_live.params), _leaves(g_net), _leaves(mask)):
        np.testing.assert_allclose(a * m, b, rtol=1e-6, atol=1e-7)
    assert float(g_net["Dense_0"]["bias"][1]) != 0  # the constant unit's bias is trained


def test_what_stays_masked():
    algorithm, state, _ = _masked_state("bc")
    fraction = block_fraction(state.actor)
    assert 0 < fraction < 1
    assert to_live(state.actor, max_fraction=fraction / 2) is state.actor  # the cut would not pay
    assert to_dense(state.actor) is state.actor
    _, with_dropout, _ = _masked_state("bc", dropout=0.1)
    assert to_live(with_dropout.actor) is with_dropout.actor  # dropout, LayerNorm, spectral norm: masked layout


def test_a_run_converts_per_stretch_of_fixed_masks_and_resumes_bit_identical(tmp_path, hopper_random):
    """The trainer on live units against the masked layout, for IQL (three networks): evaluations every 300
    steps and refreshes every 200 until 400 make chunks of 100, so a stretch with fixed masks spans several
    chunks (0-200, 200-300, 300-400, 400-600) and ends at a refresh or an evaluation. Same logs to float32
    rounding; interrupted at its evaluation at 300 and resumed, the same logs and checkpoint bit for bit."""

    options = dict(algo="iql", dataset="hopper-random", size=1500, validation_size=800, steps=600, eval_every=300,
                   eval_episodes=2, sparsity=0.95, mask_interval=200, mask_until=400, hidden_dims=(32, 32))
    live, masked = RunConfig(**options, frozen_layout="live-units"), RunConfig(**options, frozen_layout="masked")
    fast = train(live, tmp_path / "live", dataset=hopper_random, progress=False)
    train(masked, tmp_path / "masked", dataset=hopper_random, progress=False)
    assert fast["sparse_layout"] == {"live_units_networks": ["actor", "critic", "value"]}
    rows_live, rows_masked = (read_rows(tmp_path / d / "metrics.csv") for d in ("live", "masked"))
    assert [r["step"] for r in rows_live] == [r["step"] for r in rows_masked] == [300, 600]
    for a, b in zip(rows_live, rows_masked):
        for key in ("critic_loss", "value_loss", "actor_loss", "train_mse", "validation_mse"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    for a, b in zip(*(read_rows(tmp_path / d / "masks.csv") for d in ("live", "masked"))):
        assert a == {**b, "loss_before": a["loss_before"], "loss_after": a["loss_after"]}  # the same masks

    with pytest.raises(Killed):
        train(live, tmp_path / "cut", dataset=hopper_random, progress=False, on_evaluation=stop_at(300))
    assert checkpoint_step(tmp_path / "cut") == 300
    train(live, tmp_path / "cut", dataset=hopper_random, progress=False, resume=True)
    drop_wall = lambda rows: [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]  # noqa: E731
    assert drop_wall(read_rows(tmp_path / "cut" / "metrics.csv")) == drop_wall(rows_live)
    assert read_rows(tmp_path / "cut" / "masks.csv") == read_rows(tmp_path / "live" / "masks.csv")
    resumed, uninterrupted = load_agent(tmp_path / "cut").state, load_agent(tmp_path / "live").state
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(resumed), _leaves(uninterrupted)))
