"""One Sparse-Reg object per agent (JAX): sparsity, schedule, losses, and the masks of each named network.

A thin object over the functional layer in :mod:`sparse_reg.sparsity`: the masks are a
pytree shaped like each network's params, held in one place, its optimiser state
(:func:`masked_updates`), as the project's own networks (``MaskedNet``) hold theirs; so ``jax.jit``,
``lax.scan`` and checkpoints carry them. This object reads and writes them there and decides *when*::

    sparse = sr.SparseReg(losses, sparsity=0.95, schedule=sr.Schedule(every=5_000, until=200_000))
    tx = sparse.tx(optax.adam(3e-4))                        # each network's optimiser: pruned weights frozen
    q = sparse.apply(state.critic, obs, act)                # forward pass with θ ⊙ m (target: params=...)
    agent = sparse.maybe_refresh(step, agent, batch)        # refreshes only when the schedule says so

The object holds no training state of its own (the step is yours, the masks are in the
agent), so a checkpoint of the agent and the step resumes to the same masks.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .sparsity import (
    GroupOf,
    Prunable,
    PyTree,
    Schedule,
    SparseRegConfig,
    _network,
    _with_network,
    first_key,
    loss_value,
    masked_params,
    masked_updates,
    masks_of,
    refresh_masks,
    weight_sparsity,
)


class SparseRegMisuseError(ValueError):
    """A check of ``SparseReg(debug=True)`` failed: a forward pass does not use the masks."""


def _takes_key(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins, some wrappers: assume the full signature
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 3


def _as_loss(fn: Callable) -> Callable:
    """``(agent, batch)`` or ``(agent, batch, key)`` -> ``loss`` or ``(loss, aux)``, as ``(agent, batch, key) -> (loss, aux)``."""
    takes_key = _takes_key(fn)

    def loss(agent, batch, key):
        out = fn(agent, batch, key) if takes_key else fn(agent, batch)
        return (out[0], out[1] if len(out) > 1 else None) if isinstance(out, (tuple, list)) else (out, None)

    return loss


class SparseReg:
    """Sparse-Reg for one agent: which networks, how sparse, when, and their masks.

    ``losses``: ``{name: loss}``, one per network to sparsify, where ``agent.<name>`` (or
    ``agent[name]``) is a Flax ``TrainState`` built with ``tx=sparse.tx(...)`` and
    ``loss(agent, batch)`` or ``loss(agent, batch, key)`` returns ``loss`` or ``(loss, aux)``:
    the loss that network is trained with, its forward passes through :meth:`apply` /
    :meth:`params`. A single loss instead of a dict: the agent *is* the one TrainState.

    ``sparsity``: fraction of weight entries pruned per network (0 = dense, nothing ever
    refreshes). ``schedule``: :class:`Schedule` (default: every 5k steps until 200k, as the
    paper; ``Schedule.at_init()`` is SFI). ``is_prunable(path, leaf)``: which leaves compete
    (default: weight matrices named ``kernel`` / ``w``). ``per_head``: names of networks
    scored with one top-k per top-level submodule (e.g. a twin critic's two Q-networks), or
    ``{name: sr.STACKED}`` for an ensemble stacked on a leading axis (``nn.vmap``), or
    ``{name: group_of(path, leaf)}``; the default is one global top-k per network, as the paper. ``debug=True`` checks after every
    refresh that no loss reads a pruned weight (a forward pass without the masks: the
    target, a critic inside the actor's loss) and raises :class:`SparseRegMisuseError`.
    """

    def __init__(
        self,
        losses: Mapping[str, Callable] | Callable,
        *,
        sparsity: float = 0.95,
        schedule: Schedule = Schedule(),
        is_prunable: Prunable | None = None,
        per_head: Iterable[str] | Mapping[str, GroupOf] = (),
        debug: bool = False,
        jit: bool = True,
    ):
        if callable(losses) and not isinstance(losses, Mapping):
            losses = {None: losses}
        if not losses:
            raise ValueError("SparseReg: losses is empty; give one loss per network to sparsify")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"SparseReg: schedule must be a sr.Schedule, got {type(schedule).__name__}")
        self.config = SparseRegConfig(sparsity, schedule.every, schedule.until)  # checks sparsity
        self.schedule = schedule
        self.sparsity = float(sparsity)
        self.is_prunable = is_prunable
        heads = per_head if isinstance(per_head, Mapping) else {name: first_key for name in per_head}
        unknown = set(heads) - set(losses)
        if unknown:
            raise ValueError(f"SparseReg: per_head names {sorted(unknown)}, which are not in losses ({list(losses)})")
        self.per_head = dict(heads)
        self.losses = {name: _as_loss(fn) for name, fn in losses.items()}
        self.debug = debug
        self.last_stats: dict | None = None  # of the last refresh: per network, per layer

        def refresh(agent, batch, key):
            return refresh_masks(agent, self.losses, batch, key, self.config, is_prunable=self.is_prunable,
                                 group_of=self.per_head)

        self._refresh = jax.jit(refresh) if jit else refresh

    @property
    def networks(self) -> list:
        return list(self.losses)

    # ------------------------------------------------------------------ what the training code uses

    def tx(self, optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
        """``optimizer`` with the masks in its state: pruned weights get no step, no Adam drift, no decay."""
        return masked_updates(optimizer)

    @staticmethod
    def params(net: Any, params: PyTree | None = None) -> PyTree:
        """θ ⊙ m of ``net`` (a TrainState); ``params=net.target_params`` masks its target with the online mask."""
        return masked_params(net, params)

    @staticmethod
    def apply(net: Any, *args, params: PyTree | None = None, **kwargs):
        """``net.apply_fn({"params": θ ⊙ m}, *args, **kwargs)``: the masked forward pass (jit-able)."""
        return net.apply_fn({"params": masked_params(net, params)}, *args, **kwargs)

    def due(self, step: int) -> bool:
        return self.sparsity > 0 and self.schedule.due(step)

    def maybe_refresh(self, step: int, agent: Any, batch: Any, key: jax.Array | None = None) -> Any:
        """The agent with new masks if the schedule has a refresh at ``step``, else ``agent`` itself.

        Returns the agent only (the statistics of the refresh are in ``self.last_stats``). Call it
        with a Python ``int`` step outside your jitted update; the refresh itself is jitted inside
        (compiled on the first refresh, fast afterwards). ``key``: for losses that take one
        (default ``PRNGKey(step)``).
        """
        if not self.due(step):
            return agent
        return self.refresh(agent, batch, jax.random.PRNGKey(step) if key is None else key)

    def refresh(self, agent: Any, batch: Any, key: jax.Array) -> Any:
        """New masks now, whatever the step (SNIP on each full network with its own loss, top-k)."""
        if self.sparsity == 0:
            return agent
        agent, stats = self._refresh(agent, batch, key)
        self.last_stats = jax.device_get(stats)
        if self.debug:
            self.check(agent, batch, key)
        return agent

    # ------------------------------------------------------------------ reading the masks

    def masks(self, agent: Any) -> dict:
        """``{name: masks}`` of every network (one pytree each, shaped like its params)."""
        return {name: masks_of(_network(agent, name), name) for name in self.losses}

    def weight_sparsity(self, agent: Any) -> dict:
        """``{name: fraction of its prunable entries masked}``."""
        return {name: weight_sparsity(_network(agent, name), self.is_prunable) for name in self.losses}

    # ------------------------------------------------------------------ misuse checks

    def check(self, agent: Any, batch: Any, key: jax.Array | None = None) -> None:
        """Raise :class:`SparseRegMisuseError` if some loss reads a pruned weight of some network.

        Every pruned entry of every network (its params and any field shaped like them, such
        as ``target_params``) is moved; with every forward pass masked, no loss changes.
        """
        key = jax.random.PRNGKey(0) if key is None else key
        for loss_name, loss_fn in self.losses.items():
            reference = float(loss_value(loss_fn(agent, batch, key)))
            for name in self.losses:
                moved = float(loss_value(loss_fn(_with_network(agent, name, _move_pruned(_network(agent, name))),
                                                 batch, key)))
                if not np.isclose(moved, reference, rtol=1e-5, atol=1e-7):
                    raise SparseRegMisuseError(
                        f"the loss of {loss_name!r} changes ({reference:.6g} -> {moved:.6g}) when the pruned weights "
                        f"of {name!r} move: one of its forward passes runs {name!r} (or its target) without the "
                        "masks; use sparse.apply(net, ...) or sparse.params(net, params) there"
                    )


def _move_pruned(net: Any) -> Any:
    """``net`` with every pruned entry of its params (and of same-shaped fields, e.g. target_params) moved by 1 + |θ|."""
    masks = masks_of(net)
    structure = jax.tree_util.tree_structure(net.params)

    def move(tree):
        return jax.tree_util.tree_map(lambda p, m: p + (1 - m) * (1 + jnp.abs(p)), tree, masks)

    fields = getattr(net, "__dataclass_fields__", {})
    moved = {"params": move(net.params)}
    for field in fields:
        value = getattr(net, field, None)
        if field not in ("params", "opt_state") and value is not None:
            try:
                same = jax.tree_util.tree_structure(value) == structure
            except TypeError:
                same = False
            if same:
                moved[field] = move(value)
    return net.replace(**moved)
