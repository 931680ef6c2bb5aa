"""The frozen-mask fast path: after the last mask refresh, train only the kept weights.

Once masks stop changing (``step >= SparseRegConfig.last_refresh``), a pruned weight never
moves again, so a weight matrix whose mask keeps few entries can be stored as those entries
alone. :func:`to_sparse` turns a :class:`MaskedNet` into a :class:`SparseNet` whose trainable
leaves for such a matrix are the kept values (its Adam moments and target copy likewise); the
network then runs feature-major with sparse matmuls (``networks.MLP._feature_major``).
:func:`to_dense` turns it back into the ``MaskedNet`` the dense-masked path would hold at the
same step, so checkpoints, evaluation and summaries never see the fast layout:

* kept entries: scattered back from the values trained here;
* pruned parameters: unchanged (as in the dense path, their updates are masked);
* pruned target entries: the dense path's soft update ``t ← τ p + (1 − τ) t`` moves them toward
  the frozen parameter, ``t_n = p + Π(1 − τ) (t_0 − p)``, so the product is tracked here;
* pruned optimizer moments: the dense path feeds them zero gradients, so Adam's moments decay
  geometrically; a *probe* (the optimizer run on zero gradients with moments started at one,
  one scalar per leaf) tracks the factor, which holds for any optimizer whose state decays
  linearly under zero gradients (Adam, AdamW, L1 added to the gradient; not a stateful one
  whose state does something else).

Algorithms never see this module: a ``SparseNet`` answers the same calls as a ``MaskedNet``.
Only matrices of MLPs without dropout, LayerNorm or spectral norm are converted, and only
where the layer's kept fraction is at most ``max_density``; other leaves stay dense-masked.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .masked_net import MaskedNet, PyTree, apply_mask
from .networks import SPARSE_KERNELS, supports_sparse_kernels

# How the frozen-mask phase is laid out: "kept-values" (this module), "masked" (dense θ ⊙ m), or
# "auto": kept values on a CPU for a single run. On CPU, updates on kept values measured 1.96x (BC),
# 1.04x (TD3+BC), 1.03x (AWAC), 1.05x (IQL) the masked rate (docs/performance.md); sparse matmuls
# are unmeasured on accelerators, and vmapped seeds have different masks (so different layouts).
FROZEN_LAYOUTS = ("auto", "kept-values", "masked")

# One 256x256 layer alone, batch 256: the sparse matmul wins below ~5% kept entries (issue 16's
# prototype). Inside whole updates (benchmarks/speed.py, 2026-12-03) it paid for actors at 3.2-3.6%
# (IQL 1.05x, BC 1.96x, AWAC's 3.6% 1.03x) and lost for IQL's value net (0.95x at 4.3%; a whole IQL
# run with its value net converted at <= 4% was 0.96x) and twin critic (0.89x at 4.4%). At 3.5%
# the BC, TD3+BC and IQL actors convert, AWAC's barely misses; above the limit a layer stays
# dense-masked.
DEFAULT_MAX_DENSITY = 0.035


class SparseNet(MaskedNet):
    """A ``MaskedNet`` whose converted kernels hold kept values ``(…, nse)`` in ``params``,
    ``target`` and the optimizer moments; ``mask`` there is 1 for kept entries and 0 for padding
    (heads stacked on a leading axis are padded to the same ``nse`` with pruned entries)."""

    indices: PyTree = None  # the SPARSE_KERNELS collection: {…: {"Dense_i": {"indices": (…, nse, 2)}}}
    frozen: MaskedNet | None = None  # the dense net at the switch: pruned values, moments, target
    target_decay: jax.Array | None = None  # Π (1 − τ) over the soft updates since the switch
    probe: optax.OptState = None  # optimizer state of a scalar-per-leaf copy fed zero gradients

    def _apply(self, params, inputs, dropout_key):
        variables = {"params": apply_mask(params, self.mask), SPARSE_KERNELS: self.indices}
        if dropout_key is None:
            return self.module.apply(variables, *inputs)
        return self.module.apply(variables, *inputs, train=True, rngs={"dropout": dropout_key})

    def apply_gradients(self, grads: PyTree) -> "SparseNet":
        net = super().apply_gradients(grads)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, self.probe_params())
        _, probe = self.tx.update(zeros, self.probe, zeros)
        return net.replace(probe=probe)

    def soft_update_target(self, tau: float) -> "SparseNet":
        return super().soft_update_target(tau).replace(target_decay=self.target_decay * (1.0 - tau))

    def probe_params(self) -> PyTree:
        return jax.tree_util.tree_map(lambda _: jnp.zeros((), jnp.float32), self.params)


def _path_name(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def _convertible(path, leaf, mask_leaf, max_density: float) -> bool:
    keys = [getattr(p, "key", None) for p in path]
    if len(keys) < 3 or keys[-1] != "kernel" or not str(keys[-2]).startswith("Dense_"):
        return False
    if leaf.ndim < 2:
        return False
    m = np.asarray(mask_leaf).reshape(-1, *leaf.shape[-2:])
    return float(m.sum(axis=(1, 2)).max()) / (leaf.shape[-2] * leaf.shape[-1]) <= max_density


def _layout(mask_leaf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(…, nse, 2)`` of the kept entries of each kernelᵀ, sorted, padded per leading slice
    to the largest count with pruned entries; and the ``(…, nse)`` 0/1 validity of each."""
    lead, (n_in, n_out) = mask_leaf.shape[:-2], mask_leaf.shape[-2:]
    slices = mask_leaf.reshape(-1, n_in, n_out)
    nse = max(1, int(slices.sum(axis=(1, 2)).max()))
    indices, valid = [], []
    for m in slices:
        kept = np.flatnonzero(m.T.ravel() > 0)  # flat positions in kernelᵀ (output-major), sorted
        pad = np.flatnonzero(m.T.ravel() == 0)[: nse - kept.size]
        flat = np.concatenate([kept, pad])
        order = np.argsort(flat, kind="stable")
        indices.append(np.stack([flat[order] // n_in, flat[order] % n_in], axis=-1))
        valid.append(np.concatenate([np.ones(kept.size), np.zeros(pad.size)])[order])
    return (
        np.asarray(indices, np.int32).reshape(*lead, nse, 2),
        np.asarray(valid, np.float32).reshape(*lead, nse),
    )


def _gather(dense: jax.Array, indices: jax.Array) -> jax.Array:
    """Entries of ``dense`` (…, in, out) at kernelᵀ positions ``indices`` (…, nse, 2)."""
    return dense[..., indices[..., 1], indices[..., 0]] if dense.ndim == 2 else jax.vmap(_gather)(dense, indices)


def _scatter(dense: jax.Array, indices: jax.Array, values: jax.Array) -> jax.Array:
    if dense.ndim == 2:
        return dense.at[indices[:, 1], indices[:, 0]].set(values)
    return jax.vmap(_scatter)(dense, indices, values)


def _nest(flat: dict[tuple, Any]) -> dict:
    tree: dict = {}
    for keys, value in flat.items():
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return tree


def _moment_paths(tx: optax.GradientTransformation, opt_state: optax.OptState, params: PyTree) -> list[str]:
    """For each leaf of ``opt_state``: the path of the parameter it mirrors, or "" (counts and such)."""
    names = jax.tree_util.tree_map_with_path(lambda path, _: _path_name(path), params)
    roles = optax.tree_utils.tree_map_params(tx, lambda _, name: name, opt_state, names, transform_non_params=lambda _: "")
    return jax.tree_util.tree_leaves(roles)


def to_sparse(net: MaskedNet, max_density: float = DEFAULT_MAX_DENSITY) -> MaskedNet:
    """``net`` with every kernel whose layer keeps at most ``max_density`` of its entries stored as
    kept values; ``net`` itself if it has no mask, an unsupported module or no such layer."""
    if isinstance(net, SparseNet) or net.mask is None or not supports_sparse_kernels(net.module):
        return net
    flat_params = jax.tree_util.tree_flatten_with_path(net.params)[0]
    masks = jax.tree_util.tree_leaves(net.mask)
    layouts = {
        _path_name(path): _layout(np.asarray(m))
        for (path, leaf), m in zip(flat_params, masks)
        if _convertible(path, leaf, m, max_density)
    }
    if not layouts:
        return net
    indices = {name: jnp.asarray(ix) for name, (ix, _) in layouts.items()}

    def compact(path, leaf):
        name = _path_name(path)
        return _gather(leaf, indices[name]) if name in indices else leaf

    def compact_mask(path, leaf):
        name = _path_name(path)
        return jnp.asarray(layouts[name][1]) if name in layouts else leaf

    paths = _moment_paths(net.tx, net.opt_state, net.params)
    opt_leaves, opt_def = jax.tree_util.tree_flatten(net.opt_state)
    params_by_name = {_path_name(p): leaf for p, leaf in flat_params}
    opt_state = jax.tree_util.tree_unflatten(
        opt_def,
        [_gather(leaf, indices[name]) if name in indices and leaf.shape == params_by_name[name].shape else leaf
         for leaf, name in zip(opt_leaves, paths)],
    )
    sparse_params = jax.tree_util.tree_map_with_path(compact, net.params)
    probe_params = jax.tree_util.tree_map(lambda _: jnp.zeros((), jnp.float32), sparse_params)
    probe = optax.tree_utils.tree_map_params(net.tx, jnp.ones_like, net.tx.init(probe_params))
    index_tree = _nest({tuple(name.split("/")[:-1]) + ("indices",): ix for name, ix in indices.items()})
    return SparseNet(
        params=sparse_params,
        opt_state=opt_state,
        mask=jax.tree_util.tree_map_with_path(compact_mask, net.mask),
        target=None if net.target is None else jax.tree_util.tree_map_with_path(compact, net.target),
        module=net.module,
        tx=net.tx,
        indices=index_tree,
        frozen=net,
        target_decay=jnp.ones((), jnp.float32),
        probe=probe,
    )


def to_dense(net: MaskedNet) -> MaskedNet:
    """The dense-masked ``MaskedNet`` equal to ``net`` (itself if it is one already)."""
    if not isinstance(net, SparseNet):
        return net
    frozen = net.frozen
    indices = {
        _path_name(path[:-1]) + "/kernel": ix
        for path, ix in jax.tree_util.tree_flatten_with_path(net.indices)[0]
    }

    def expand(base_tree, fast_tree, pruned_of=lambda path, base: base):
        def one(path, base, fast):
            name = _path_name(path)
            if name not in indices:
                return fast
            return _scatter(pruned_of(path, base), indices[name], fast)

        return jax.tree_util.tree_map_with_path(one, base_tree, fast_tree)

    params = expand(frozen.params, net.params)
    target = None
    if net.target is not None:
        frozen_params = {_path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(frozen.params)[0]}

        def drifted(path, t0):  # t_n = p + Π(1 − τ) (t_0 − p) for entries the fast path did not carry
            p = frozen_params[_path_name(path)]
            return p + net.target_decay * (t0 - p)

        target = expand(frozen.target, net.target, drifted)
    paths = _moment_paths(net.tx, frozen.opt_state, frozen.params)
    frozen_leaves, opt_def = jax.tree_util.tree_flatten(frozen.opt_state)
    fast_leaves = jax.tree_util.tree_leaves(net.opt_state)
    probe_leaves = jax.tree_util.tree_leaves(net.probe)
    opt_leaves = []
    for name, base, fast, decay in zip(paths, frozen_leaves, fast_leaves, probe_leaves):
        if name in indices and base.shape != fast.shape:
            opt_leaves.append(_scatter(base * decay, indices[name], fast))
        else:
            opt_leaves.append(fast)
    return MaskedNet(
        params=params,
        opt_state=jax.tree_util.tree_unflatten(opt_def, opt_leaves),
        mask=frozen.mask,
        target=target,
        module=net.module,
        tx=net.tx,
    )


def uses_kept_values(frozen_layout: str, lanes: int, backend: str | None = None) -> bool:
    """Whether a run's frozen-mask phase trains in the kept-values layout (see ``FROZEN_LAYOUTS``);
    ``lanes`` runs stepped together under vmap always use the masked layout."""
    if frozen_layout == "masked" or lanes > 1:
        return False
    return frozen_layout == "kept-values" or (backend or jax.default_backend()) == "cpu"


def state_to_sparse(state: Any, names, max_density: float = DEFAULT_MAX_DENSITY) -> Any:
    """The train ``state`` with networks ``names`` converted by :func:`to_sparse`."""
    return state.replace(**{name: to_sparse(getattr(state, name), max_density) for name in names})


def state_to_dense(state: Any, names) -> Any:
    return state.replace(**{name: to_dense(getattr(state, name)) for name in names})


def sparse_networks(state: Any, names) -> list[str]:
    """The networks of ``state`` (among ``names``) that run in the fast layout."""
    return [name for name in names if isinstance(getattr(state, name), SparseNet)]
