"""Sparse-Reg: SNIP-scored top-k masks, one mechanism for every algorithm.

For each network ``n`` an algorithm names the loss ``L_n(state, batch, key)`` it trains
that network with. A mask refresh, for every such network:

1. scores every weight with SNIP, ``S(θ_q) = |θ_q · ∂L_n/∂θ_q|``, evaluated with the
   mask set to all ones (the full network, pruned weights at their frozen values);
2. keeps the global top-k weight entries of the network, ``k = max(1, round(keep · #weights))``
   (weight matrices only: leaves named ``kernel``; biases stay dense).

Masks are refreshed every ``interval`` steps while ``step < until`` (SPU) or only at
step 0 when ``until == 0`` (SFI, single shot at initialisation). Applying the mask in
forward passes and updates is :class:`sparse_reg.masked_net.MaskedNet`'s job. Nothing
here knows any algorithm: a new algorithm only declares its losses.

Scoring the full network (step 1) and keeping pruned weights at their values is what the
paper's own code does (SaminYeasar/sparse_reg: ``sparse_utils.py`` sets every mask to ones
on a deep copy of the agent before the scoring pass; ``algos.py`` applies masks with
``fixed_weight=-1``, which skips zeroing). One difference: that code scores all networks
of the agent at once, each seeing the *others* unmasked too; here each network is scored
with the other networks as they are trained, masks included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

PyTree = Any
LossFn = Callable[..., tuple[jax.Array, Any]]  # (state, batch, key) -> (loss, aux)

AUTO_SMALL_DATA_LIMIT = 25_000  # the paper: 95% sparse at 5k-10k samples, 75% at 50k-100k


@dataclass(frozen=True)
class SparseRegConfig:
    """sparsity: fraction of weight entries pruned in [0, 1); 0 is dense."""

    sparsity: float = 0.95
    interval: int = 5_000
    until: int = 200_000  # 0 = single shot at initialisation (SFI)

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.interval <= 0:
            raise ValueError(f"mask interval must be positive, got {self.interval}")
        if self.until < 0:
            raise ValueError(f"mask_until must be >= 0, got {self.until}")

    @property
    def enabled(self) -> bool:
        return self.sparsity > 0.0

    def refresh_due(self, step: int) -> bool:
        """Whether masks are (re)computed before training step ``step``."""
        if not self.enabled:
            return False
        return step == 0 or (step % self.interval == 0 and step < self.until)


def resolve_sparsity(value: str | float, train_size: int) -> float:
    """``"auto"`` -> 0.95 up to 25k training transitions, 0.75 above (the paper's rule)."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return 0.95 if train_size <= AUTO_SMALL_DATA_LIMIT else 0.75
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"sparsity must be 'auto' or a number in [0, 1), got {value!r}") from None
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ValueError(f"sparsity must be in [0, 1), got {value}")
    return float(value)


def is_prunable(path: tuple, leaf: jax.Array) -> bool:
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) == "kernel"


def _prunable_flags(params: PyTree) -> PyTree:
    return jax.tree_util.tree_map_with_path(is_prunable, params)


def snip_scores(loss_of_params: Callable[[PyTree], jax.Array], params: PyTree) -> PyTree:
    """|θ · ∂L/∂θ| for every parameter (the caller decides which leaves compete)."""
    grads = jax.grad(loss_of_params)(params)
    return jax.tree_util.tree_map(lambda p, g: jnp.abs(p * g), params, grads)


def topk_masks(scores: PyTree, keep_ratio: float) -> PyTree:
    """0/1 float masks keeping exactly ``round(keep_ratio * #weights)`` weight entries.

    The top-k is global over all weight matrices of the network; non-weight leaves
    (biases, norm scales, log-stds) get all-ones masks.
    """
    flags = _prunable_flags(scores)
    leaves, treedef = jax.tree_util.tree_flatten(scores)
    prunable = jax.tree_util.tree_leaves(flags)
    weights = [leaf.ravel() for leaf, p in zip(leaves, prunable) if p]
    flat = jnp.concatenate(weights)
    k = max(1, int(round(keep_ratio * flat.size)))  # at least one weight, even for a toy network
    keep = jnp.zeros(flat.size, jnp.float32).at[jax.lax.top_k(flat, k)[1]].set(1.0)
    masks, offset = [], 0
    for leaf, p in zip(leaves, prunable):
        if p:
            masks.append(keep[offset : offset + leaf.size].reshape(leaf.shape))
            offset += leaf.size
        else:
            masks.append(jnp.ones(leaf.shape, jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, masks)


def network_masks(loss_fn: LossFn, state: Any, name: str, batch: Any, key: jax.Array, keep_ratio: float) -> PyTree:
    """SNIP masks for network ``state.<name>`` scored with its own loss, mask set to all ones."""
    dense_net = getattr(state, name).replace(mask=None)

    def loss_of_params(params):
        return loss_fn(state.replace(**{name: dense_net.replace(params=params)}), batch, key)[0]

    return topk_masks(snip_scores(loss_of_params, dense_net.params), keep_ratio)


def refresh_masks(
    state: Any, losses: Mapping[str, LossFn], batch: Any, key: jax.Array, config: SparseRegConfig
) -> tuple[Any, dict]:
    """New masks for every network in ``losses``; returns the state and per-layer statistics.

    The statistics of each network's ``"total"`` also hold its loss on the scoring batch with
    the previous mask and with the new one (``loss_before``, ``loss_after``; other networks as
    they were).

    Every network is scored against the same state (all other masks as they were), so the
    result does not depend on the order in which networks are listed.
    """
    keep_ratio = 1.0 - config.sparsity
    keys = jax.random.split(key, len(losses))
    new_masks = {
        name: network_masks(loss_fn, state, name, batch, subkey, keep_ratio)
        for subkey, (name, loss_fn) in zip(keys, losses.items())
    }
    stats = {name: mask_statistics(mask, getattr(state, name).mask) for name, mask in new_masks.items()}
    refreshed = state.replace(**{name: getattr(state, name).replace(mask=mask) for name, mask in new_masks.items()})
    # How much the refresh moves each network's loss on the scoring batch: reviving frozen weights
    # at their old values and dropping trained ones can change the function a lot.
    for subkey, (name, loss_fn) in zip(keys, losses.items()):
        stats[name]["total"]["loss_before"] = loss_fn(state, batch, subkey)[0]
        stats[name]["total"]["loss_after"] = loss_fn(state.replace(**{name: getattr(refreshed, name)}), batch, subkey)[0]
    return refreshed, stats


def mask_statistics(mask: PyTree, previous: PyTree | None) -> dict:
    """Per weight matrix and per network: fraction pruned, and fraction of entries that flipped."""
    flags = jax.tree_util.tree_leaves(_prunable_flags(mask))
    named = jax.tree_util.tree_flatten_with_path(mask)[0]
    old = jax.tree_util.tree_leaves(previous) if previous is not None else [None] * len(named)
    stats, pruned, changed, total = {}, 0.0, 0.0, 0
    for (path, m), prunable, o in zip(named, flags, old):
        if not prunable:
            continue
        layer = "/".join(str(getattr(p, "key", p)) for p in path[:-1])
        n_pruned = jnp.sum(1.0 - m)
        n_changed = jnp.sum(m != o) if o is not None else jnp.asarray(float(m.size))
        stats[layer] = {"sparsity": n_pruned / m.size, "changed": n_changed / m.size}
        pruned, changed, total = pruned + n_pruned, changed + n_changed, total + m.size
    stats["total"] = {"sparsity": pruned / total, "changed": changed / total}
    return stats


def weight_sparsity(net: Any) -> float:
    """Fraction of the network's weight entries that its mask prunes (0 for a dense net)."""
    if net.mask is None:
        return 0.0
    return float(mask_statistics(net.mask, net.mask)["total"]["sparsity"])
