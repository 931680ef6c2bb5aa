"""sparse_reg.torch: the SparseReg object on torch.nn.Modules, and mask parity with the JAX side.

Skipped without PyTorch (the optional ``torch`` extra).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from sparse_reg.torch import Schedule, SparseReg, topk_masks  # noqa: E402


def mlp(inputs: int = 5, hidden: int = 32, out: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


class TwinQ(nn.Module):
    def __init__(self):
        super().__init__()
        self.q1, self.q2 = mlp(7, 32, 1), mlp(7, 32, 1)

    def forward(self, obs, act):
        x = torch.cat([obs, act], -1)
        return self.q1(x)[..., 0], self.q2(x)[..., 0]


def batch(seed: int = 0, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.rand(n, 2, generator=g) * 2 - 1


def agent(seed: int = 0, **kwargs):
    """An actor and a twin critic with a target copy; the actor's loss runs the target critic."""
    torch.manual_seed(seed)
    actor, critic = mlp(), TwinQ()
    critic_target = copy.deepcopy(critic)

    def actor_loss(b):
        obs, _ = b
        return -torch.min(*critic_target(obs, torch.tanh(actor(obs)))).mean()

    def critic_loss(b):
        obs, act = b
        q1, q2 = critic(obs, act)
        target = act.sum(-1)
        return ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()

    sparse = SparseReg({"actor": actor, "critic": critic}, {"actor": actor_loss, "critic": critic_loss},
                       targets={"critic": critic_target}, **kwargs)
    return sparse, actor, critic, critic_target, actor_loss, critic_loss


def linear_weights(module):
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def stored(module):
    return [m.parametrizations.weight.original.detach().clone() for m in linear_weights(module)]


def masks_of(sparse, name):
    return [m.clone() for m in sparse.masks()[name].values()]


def test_exact_kept_counts_and_masks_in_the_forward_pass():
    sparse, actor, critic, *_ = agent(sparsity=0.95)
    sparse.refresh(batch())
    for name, net in (("actor", actor), ("critic", critic)):
        n = sum(m.weight.numel() for m in linear_weights(net))
        assert sum(int(m.sum()) for m in sparse.masks()[name].values()) == round(0.05 * n)
        for layer, mask in zip(linear_weights(net), sparse.masks()[name].values()):
            assert torch.equal(layer.weight, layer.parametrizations.weight.original * mask)  # θ ⊙ m
            assert layer.parametrizations.weight.original.count_nonzero() > mask.sum()  # stored: not zeroed
    assert sparse.weight_sparsity()["actor"] == pytest.approx(1 - round(0.05 * 5 * 32 + 0.05 * 32 * 32 + 0.05 * 64) / 1248,
                                                              abs=1e-3)


def test_masks_are_snip_of_the_full_network_with_its_own_loss():
    sparse, actor, _, _, actor_loss, _ = agent(sparsity=0.9)
    b = batch(1)
    # By hand, before the refresh (every mask all ones): |θ · ∂L/∂θ|, then the top-k.
    grads = torch.autograd.grad(actor_loss(b), [e.original for e in sparse.entries["actor"]])
    expected = topk_masks([(e.original * g).abs() for e, g in zip(sparse.entries["actor"], grads)], sparsity=0.9)
    sparse.refresh(b)
    first = masks_of(sparse, "actor")
    assert all(torch.equal(a, b) for a, b in zip(first, expected))


def train(sparse, actor, critic, critic_target, actor_loss, critic_loss, opt_actor, opt_critic, steps, b, refresh=True,
          start=0):
    for step in range(start, start + steps):
        if refresh:
            sparse.maybe_refresh(step, b)
        for opt, loss in ((opt_critic, critic_loss), (opt_actor, actor_loss)):
            opt.zero_grad()
            loss(b).backward()
            opt.step()
        with torch.no_grad():
            for p, t in zip(critic.parameters(), critic_target.parameters()):
                t.mul_(0.95).add_(0.05 * p)


@pytest.mark.parametrize("make_opt", [lambda p: torch.optim.Adam(p, lr=1e-3),
                                      lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01)],
                         ids=["adam", "adamw-wd0.01"])
def test_pruned_weights_bit_identical_after_500_steps(make_opt):
    sparse, actor, critic, target, actor_loss, critic_loss = agent(sparsity=0.9, schedule=Schedule(every=50, until=100))
    opt_a, opt_c = make_opt(actor.parameters()), make_opt(critic.parameters())
    sparse.optimizer(opt_a), sparse.optimizer(opt_c)
    b = batch(2)
    # 100 steps with two refreshes (Adam's moments are non-zero where the second mask prunes), then 500.
    train(sparse, actor, critic, target, actor_loss, critic_loss, opt_a, opt_c, 100, b)
    before = {"actor": stored(actor), "critic": stored(critic)}
    masks = {name: masks_of(sparse, name) for name in ("actor", "critic")}
    train(sparse, actor, critic, target, actor_loss, critic_loss, opt_a, opt_c, 500, b, start=100)
    for name, net in (("actor", actor), ("critic", critic)):
        moved = 0
        for old, new, m in zip(before[name], stored(net), masks[name]):
            assert torch.equal(new[m == 0], old[m == 0]), name  # bit-identical
            moved += int((new[m == 1] != old[m == 1]).sum())
        assert moved > 0
        assert all(torch.equal(a, b) for a, b in zip(masks[name], masks_of(sparse, name)))  # frozen after until


@pytest.mark.filterwarnings("ignore:Sparse-Reg. pruned weights moved")  # what the next test checks
def test_masking_the_gradient_alone_lets_adam_move_pruned_weights():
    """Why optimizers are hooked: without the hook, the gradient of a pruned weight is zero, yet it moves."""
    for make_opt in (lambda p: torch.optim.Adam(p, lr=1e-3), lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01)):
        sparse, actor, critic, target, actor_loss, critic_loss = agent(sparsity=0.9, schedule=Schedule(every=50, until=100))
        opt_a, opt_c = make_opt(actor.parameters()), make_opt(critic.parameters())  # not given to sparse
        b = batch(2)
        train(sparse, actor, critic, target, actor_loss, critic_loss, opt_a, opt_c, 100, b)
        before, masks = stored(critic), masks_of(sparse, "critic")
        train(sparse, actor, critic, target, actor_loss, critic_loss, opt_a, opt_c, 20, b, start=100)
        assert any(not torch.equal(new[m == 0], old[m == 0]) for old, new, m in zip(before, stored(critic), masks))


def test_an_optimizer_sparse_reg_does_not_know_of_is_reported_at_the_next_refresh():
    import warnings

    sparse, actor, critic, target, actor_loss, critic_loss = agent(sparsity=0.9, schedule=Schedule(every=10, until=100))
    opt_a = sparse.optimizer(torch.optim.Adam(actor.parameters(), lr=1e-3))
    opt_c = torch.optim.AdamW(critic.parameters(), lr=1e-3, weight_decay=0.01)  # forgotten
    b = batch(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(sparse, actor, critic, target, actor_loss, critic_loss, opt_a, opt_c, 10, b)  # the refresh at 0: silent
    with pytest.warns(UserWarning, match="pruned weights moved.*critic/"):
        sparse.maybe_refresh(10, b)
    sparse.optimizer(opt_c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # from here on every optimiser is known: the refresh at 20 is silent
        train(sparse, actor, critic, target, actor_loss, critic_loss, opt_a, opt_c, 1, b, start=10, refresh=False)
        train(sparse, actor, critic, target, actor_loss, critic_loss, opt_a, opt_c, 11, b, start=11)


def test_refresh_outside_the_schedule_changes_nothing_and_masks_change_at_scheduled_steps_only():
    sparse, actor, critic, target, actor_loss, critic_loss = agent(sparsity=0.9, schedule=Schedule(every=10, until=35))
    opt_a = sparse.optimizer(torch.optim.Adam(actor.parameters(), lr=1e-3))
    opt_c = sparse.optimizer(torch.optim.Adam(critic.parameters(), lr=1e-3))
    b, changed_at = batch(3), []
    previous = masks_of(sparse, "actor") + masks_of(sparse, "critic")
    for step in range(60):
        assert sparse.maybe_refresh(step, b) == (step in (0, 10, 20, 30))
        train(sparse, actor, critic, target, actor_loss, critic_loss, opt_a, opt_c, 1, b, refresh=False)
        now = masks_of(sparse, "actor") + masks_of(sparse, "critic")
        if not all(torch.equal(x, y) for x, y in zip(previous, now)):
            changed_at.append(step)
        previous = now
    assert changed_at == [0, 10, 20, 30]
    assert not SparseReg({"a": mlp()}, {"a": lambda b: 0}, sparsity=0.0).maybe_refresh(0, None)


def test_target_effective_weights_are_zero_exactly_where_the_online_mask_is():
    sparse, actor, critic, target, *_ = agent(sparsity=0.95)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)  # no stored target weight is zero
    sparse.refresh(batch(4))
    for online, copy_ in zip(linear_weights(critic), linear_weights(target)):
        mask = online.parametrizations.weight[0].mask
        assert copy_.parametrizations.weight[0].mask is mask  # the same tensor: refreshes reach the target
        assert torch.all(copy_.weight[mask == 0] == 0) and torch.all(copy_.weight[mask == 1] != 0)


def test_a_target_deep_copied_after_sparse_reg_shares_the_online_mask():
    torch.manual_seed(0)
    net = mlp()
    sparse = SparseReg({"q": net}, {"q": lambda b: net(b[0]).pow(2).mean()}, sparsity=0.9)
    target = copy.deepcopy(net)  # copies the parametrization with its own mask ...
    sparse._share_masks("q", target)  # ... which targets= replaces with the online one
    sparse.refresh(batch())
    assert all(torch.equal(a.weight, a.parametrizations.weight.original * b.parametrizations.weight[0].mask)
               for a, b in zip(linear_weights(target), linear_weights(net)))


def test_state_dict_round_trip():
    sparse, actor, critic, target, *_ = agent(sparsity=0.9)
    sparse.refresh(batch(5))
    saved = {"sparse": sparse.state_dict(), "actor": actor.state_dict(), "critic": critic.state_dict(),
             "target": target.state_dict()}
    fresh, actor2, critic2, target2, *_ = agent(seed=9, sparsity=0.9)
    actor2.load_state_dict(saved["actor"]), critic2.load_state_dict(saved["critic"]), target2.load_state_dict(saved["target"])
    fresh.load_state_dict(saved["sparse"])
    for name in ("actor", "critic"):
        assert all(torch.equal(a, b) for a, b in zip(masks_of(sparse, name), masks_of(fresh, name)))
    obs, act = batch(6)
    assert torch.equal(actor(obs), actor2(obs)) and torch.equal(target(obs, act)[0], target2(obs, act)[0])
    with pytest.raises(ValueError, match="sparsity"):
        agent(sparsity=0.5)[0].load_state_dict(saved["sparse"])


def test_per_head_topk_for_a_twin_critic():
    sparse, _, critic, *_ = agent(sparsity=0.95, per_head=["critic"])
    sparse.refresh(batch(7))
    n_head = sum(m.weight.numel() for m in linear_weights(critic.q1))
    kept = {head: sum(int(m.sum()) for k, m in sparse.masks()["critic"].items() if k.startswith(head + "."))
            for head in ("q1", "q2")}
    assert kept == {"q1": round(0.05 * n_head), "q2": round(0.05 * n_head)}


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="one loss per network"):
        SparseReg({"a": mlp()}, {"b": lambda b: 0})
    with pytest.raises(ValueError, match="no prunable weights"):
        SparseReg({"a": nn.LayerNorm(3)}, {"a": lambda b: 0})
    with pytest.raises(ValueError):
        SparseReg({"a": mlp()}, {"a": lambda b: 0}, sparsity=1.0)


# --------------------------------------------------------------------------------------
# Parity with the JAX side
# --------------------------------------------------------------------------------------


def test_topk_ties_go_the_same_way_as_jax():
    import jax.numpy as jnp

    import sparse_reg as sr

    rng = np.random.default_rng(0)
    kernels = [np.round(rng.random((4, 3)), 1).astype(np.float32), np.ones((3, 2), np.float32)]  # many ties
    for keep in (0.1, 0.25, 0.5, 0.8):
        jax_masks = sr.topk_masks({"Dense_0": {"kernel": jnp.asarray(kernels[0])},
                                   "Dense_1": {"kernel": jnp.asarray(kernels[1])}}, keep=keep)
        torch_masks = topk_masks([torch.from_numpy(k.T.copy()) for k in kernels], keep=keep)  # torch: (out, in)
        for i, t in enumerate(torch_masks):
            np.testing.assert_array_equal(t.numpy().T, np.asarray(jax_masks[f"Dense_{i}"]["kernel"]))


@pytest.mark.parametrize("sparsity", [0.95, 0.75, 0.05])
def test_same_weights_and_batch_give_the_same_masks_in_jax_and_torch(sparsity):
    """A Flax MLP's parameters copied into a torch MLP: SNIP masks equal, layer by layer.

    Six of the eight inputs are always zero, so their weights score exactly zero in both: at 5%
    sparsity the cut falls among those ties, and the tie order decides which are kept.
    """
    import flax.linen as fnn
    import jax
    import jax.numpy as jnp

    import sparse_reg as sr

    class FlaxMLP(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            x = fnn.relu(fnn.Dense(32)(x))
            x = fnn.relu(fnn.Dense(32)(x))
            return fnn.Dense(2)(x)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    x[:, 2:] = 0.0
    y = rng.normal(size=(64, 2)).astype(np.float32)
    params = FlaxMLP().init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
    jax_masks = sr.snip_masks(lambda p: jnp.mean((FlaxMLP().apply({"params": p}, jnp.asarray(x)) - y) ** 2), params,
                              sparsity=sparsity)

    net = mlp(8, 32, 2)
    with torch.no_grad():
        for i, layer in enumerate(linear_weights(net)):
            layer.weight.copy_(torch.from_numpy(np.asarray(params[f"Dense_{i}"]["kernel"]).T.copy()))
            layer.bias.copy_(torch.from_numpy(np.array(params[f"Dense_{i}"]["bias"])))
    sparse = SparseReg({"policy": net}, {"policy": lambda b: ((net(b[0]) - b[1]) ** 2).mean()}, sparsity=sparsity)
    sparse.refresh((torch.from_numpy(x), torch.from_numpy(y)))
    for i, mask in enumerate(sparse.masks()["policy"].values()):
        np.testing.assert_array_equal(mask.numpy().T, np.asarray(jax_masks[f"Dense_{i}"]["kernel"]), err_msg=f"layer {i}")
