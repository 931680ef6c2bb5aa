"""Live units: while the masks are fixed, run each MLP layer as a dense matmul over the units they leave alive.

At 95% sparsity SNIP leaves many hidden units with no kept input or no kept output weight. Between
two mask refreshes (and after the last one) the masks do not change, so :func:`to_live` cuts every
layer of a :class:`MaskedNet`'s MLP to a dense block over its live units (still masked inside it)
and :func:`to_dense` gives back the ``MaskedNet`` the dense-masked path would hold at the same step.
The trainer converts at the start of a stretch of chunks with fixed masks and back before the next
refresh, evaluation or the end, so refreshes, evaluations, checkpoints, resumes and summaries never
see this layout.

For hidden layer ``i`` a unit ``j`` is *live* when it has a kept input (column ``j`` of ``Dense_i``)
and a kept output (row ``j`` of ``Dense_{i+1}``); *constant* when it has kept outputs but no kept
input (its activation is ``relu(b_j)`` for every input); *dead* when it has kept inputs but no kept
output (nothing reads it); *unused* otherwise. The units of each layer are permuted to
``[live | constant | dead | unused]`` and each ``Dense_i`` kernel becomes a dict in the ``params``
tree (and alike in the masks, which stay in the optimizer state, their one holder, the target copy
and the optimizer moments):

* ``block``: the rows of the previous layer's first ``c_{i-1}`` units (all inputs for ``Dense_0``)
  by the columns of this layer's first ``c_i`` units (all outputs for the last layer), dense;
* ``const``: the rows of the previous layer's next ``k_{i-1}`` units (its constant ones), by the
  same columns; the forward pass adds ``relu(b[c:c+k]) @ const`` (their biases still trained);
* ``dead``: every other kept entry, as a list of values: nothing reads them, so their loss gradient
  is zero, but the optimizer still moves them as the masked path does (Adam's moments, L1's sign
  term, AdamW's decay), so they stay trainable leaves.

Hidden biases stay whole, permuted. Heads stacked on a leading axis (a twin critic) and vmapped
runs (lanes) have their own live sets: every slice is padded to the largest count with the next
units of its own order (a constant unit inside the block computes ``relu(b_j)`` exactly, a dead or
unused one contributes exact zeros and gets exact zero gradients); ``c`` and ``k`` are rounded up to
a multiple of ``WIDTH_MULTIPLE`` so that nearby layouts share a compiled program.

Every entry outside these leaves is pruned and does not move on the masked path either. Its target
entries drift toward the frozen parameter, ``t_n = t_0 + (1 − Π(1 − τ)) (p − t_0)``, so the product
is tracked; its optimizer moments decay on zero gradients by a factor a *probe* gives at
:func:`to_dense`: the optimizer run on zero gradients and parameters, one scalar per leaf, moments
started at one, for as many updates as the net took (which holds for any optimizer whose state decays
linearly under zero gradients: Adam, AdamW, L1 added to the gradient). So :func:`to_dense` is exact up
to float32 rounding, and pruned parameters are bit-identical. The forward pass is
``networks.MLP._live_units``; algorithms never see this module.

This replaces the kept-values layout of issue 16 (after the last refresh, layers stored as their kept
entries with sparse matmuls), which measured slower than live units for every algorithm
(docs/performance.md) and was removed.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .masked_net import MaskedNet, PyTree
from .networks import supports_live_units
from .sparsity import MaskedUpdatesState

# How a sparse run lays out the chunks between mask changes: "live-units" (this module), "masked"
# (dense θ ⊙ m), or "auto": live units on a CPU. The config field keeps its first name, ``frozen_layout``.
FIXED_MASK_LAYOUTS = ("auto", "live-units", "masked")
# Values older runs recorded: the kept-values layout (module docstring) was removed; runs that name it
# resume, and new ones run, on live units.
LEGACY_LAYOUTS = {"kept-values": "live-units"}

# Widths of the live blocks are rounded up to a multiple of this: layouts that differ by a few
# units then run the same compiled update (a new width costs one compilation of the update scan).
WIDTH_MULTIPLE = 8

# Updates unrolled per scan iteration on live units (trainer.SCAN_UNROLL is 4 for the masked layout): unrolling
# gained nothing there (IQL, 256 units, 1000-update scans: 148 vs 129 updates/s unrolled 4 times, within this
# host's noise) and quadrupled the scan's compilation (7.6 s -> 30 s), paid again for each new layout.
LIVE_SCAN_UNROLL = 1

# A network is converted when its live blocks hold at most this fraction of its dense matmul work (block
# areas over full areas). Measured on a 2-core CPU with SNIP masks on HalfCheetah data (median of 5
# interleaved rounds, live ÷ masked updates/s): IQL 1.08x at 50% sparsity (blocks 0.94-0.97 of the work),
# 1.14x at 75% (0.83-0.88), 1.51x at 90% (0.60-0.64); BC 1.08x, 1.10x, 1.46x. Never slower, so only a
# network the masks leave (nearly) whole stays masked, sparing a compilation for nothing.
DEFAULT_MAX_FLOP_FRACTION = 0.97


class LiveNet(MaskedNet):
    """A ``MaskedNet`` whose MLP kernels are ``{"block", "const", "dead"}`` dicts in ``params``, the masks
    and the moments of its optimizer state, and ``target`` (hidden biases whole but permuted); see the
    module docstring."""

    frozen: MaskedNet | None = None  # the dense net at conversion: pruned values, moments, target
    target_decay: jax.Array | None = None  # Π (1 − τ) over the soft updates since the conversion
    updates: jax.Array | None = None  # optimizer steps since the conversion (the probe replays them)

    def apply_gradients(self, grads: PyTree) -> "LiveNet":
        # Counting, not running the probe here: its scalar updates doubled the compilation of the update
        # scan (IQL: 6 s -> 12.5 s) for no gain in speed.
        return super().apply_gradients(grads).replace(updates=self.updates + 1)

    def soft_update_target(self, tau: float) -> "LiveNet":
        return super().soft_update_target(tau).replace(target_decay=self.target_decay * (1.0 - tau))


def _key(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", entry)))


def _mlps(params: PyTree, prefix: tuple = ()) -> dict[tuple, int]:
    """``{path of an MLP's params: number of Dense layers}`` for every plain MLP in ``params``
    (a dict whose keys are exactly ``Dense_0`` … ``Dense_L``, L ≥ 1, each with a kernel and a bias)."""
    found = {}
    if not isinstance(params, dict):
        return found
    keys = set(params)
    depth = len(keys)
    if depth >= 2 and keys == {f"Dense_{i}" for i in range(depth)} and all(
            isinstance(params[k], dict) and set(params[k]) == {"kernel", "bias"} for k in keys):
        return {prefix: depth}
    for key, child in params.items():
        found.update(_mlps(child, prefix + (key,)))
    return found


def _round_up(value: int, multiple: int, limit: int) -> int:
    return min(limit, max(1, math.ceil(value / multiple) * multiple))


class _MLPLayout:
    """The layout of one MLP from its kernel masks (numpy), slices = leading axes flattened."""

    def __init__(self, masks: list[np.ndarray], multiple: int, widths: list[tuple[int, int]] | None = None):
        """``widths``: the (block, const) width of every hidden layer, as an earlier conversion chose them
        (by default from the live counts, rounded up to ``multiple``)."""
        self.lead = masks[0].shape[:-2]
        m = [np.asarray(k).reshape(-1, *k.shape[-2:]) > 0 for k in masks]
        self.depth = len(m) - 1  # hidden layers
        self.perm, self.width, self.const = [], [], []
        for i in range(self.depth):
            fed, read = m[i].any(axis=1), m[i + 1].any(axis=2)  # (S, n)
            category = np.where(fed & read, 0, np.where(read, 1, np.where(fed, 2, 3)))
            perm = np.argsort(category, axis=1, kind="stable").astype(np.int32)
            n = perm.shape[1]
            if widths is None:
                live, reads = (category == 0).sum(1), read.sum(1)
                c = _round_up(int(live.max()), multiple, n)
                k = int(np.maximum(reads - c, 0).max())
                k = _round_up(k, multiple, n - c) if k > 0 else 0
            else:
                c, k = widths[i]
            self.perm.append(perm)
            self.width.append(c)
            self.const.append(k)
        self.dead = []
        for i, mask in enumerate(m):
            slices, n_in, n_out = mask.shape
            rows = self._rows(i, n_in)
            cols = self.perm[i][:, : self.width[i]] if i < self.depth else np.broadcast_to(np.arange(n_out), (slices, n_out))
            covered = np.zeros_like(mask)
            covered[np.arange(slices)[:, None, None], rows[:, :, None], cols[:, None, :]] = True
            extra = mask & ~covered
            nd = int(extra.reshape(slices, -1).sum(1).max())
            if nd == 0:
                self.dead.append(None)
                continue
            indices = []
            for s in range(slices):
                kept = np.flatnonzero(extra[s].ravel())
                free = np.flatnonzero((~mask[s] & ~covered[s]).ravel())[: nd - kept.size]
                if kept.size + free.size < nd:
                    raise _Unconvertible("not enough pruned entries to pad the dead list")
                flat = np.sort(np.concatenate([kept, free]))
                indices.append(np.stack([flat // n_out, flat % n_out], axis=-1))
            self.dead.append(np.asarray(indices, np.int32))

    def _rows(self, i: int, n_in: int) -> np.ndarray:
        """Rows of ``Dense_i`` in the block and const parts: (S, c_{i-1} + k_{i-1}), or all inputs."""
        if i == 0:
            return np.broadcast_to(np.arange(n_in), (self.perm[0].shape[0], n_in))
        return self.perm[i - 1][:, : self.width[i - 1] + self.const[i - 1]]

    def block_fraction(self, shapes: list[tuple[int, int]]) -> float:
        """Multiply-adds of the block and const matmuls over those of the dense layers (batch-independent
        const products excluded)."""
        dense = sum(a * b for a, b in shapes)
        live = 0
        for i, (n_in, n_out) in enumerate(shapes):
            rows = n_in if i == 0 else self.width[i - 1]
            cols = n_out if i == self.depth else self.width[i]
            live += rows * cols
        return live / dense


class _Unconvertible(Exception):
    pass


def _slices(x: np.ndarray, lead: tuple, trailing: int) -> np.ndarray:
    return x.reshape(-1, *x.shape[x.ndim - trailing:])


def _unslice(x: np.ndarray, lead: tuple) -> np.ndarray:
    return x.reshape(*lead, *x.shape[1:])


def _grid(rows: np.ndarray | None, cols: np.ndarray | None, x: np.ndarray) -> tuple:
    """Index arrays selecting ``x[s, rows[s]][:, cols[s]]`` for every slice ``s`` of ``x`` (S, n_in, n_out);
    rows/cols (S, r)/(S, c), None = all."""
    slices, n_in, n_out = x.shape
    rows = np.broadcast_to(np.arange(n_in), (slices, n_in)) if rows is None else rows
    cols = np.broadcast_to(np.arange(n_out), (slices, n_out)) if cols is None else cols
    return np.arange(slices)[:, None, None], rows[:, :, None], cols[:, None, :]


class _Converter:
    """Gathers and scatters (numpy, on the host: once per conversion, no compilation) between the dense
    tree of one net and its live tree, by leaf path."""

    def __init__(self, net: MaskedNet, multiple: int, live_params: PyTree = None):
        """``live_params``: the params of a ``LiveNet`` made from ``net``, whose shapes give the widths."""
        self.mlps = _mlps(net.params)
        if not self.mlps:
            raise _Unconvertible("no plain MLP")
        self.layers: dict[str, dict] = {}  # leaf path -> how it converts
        self.fractions = []
        for prefix, depth in self.mlps.items():
            node_m = net.mask
            for key in prefix:
                node_m = node_m[key]
            masks = [np.asarray(node_m[f"Dense_{i}"]["kernel"]) for i in range(depth)]
            widths = None
            if live_params is not None:
                node = live_params
                for key in prefix:
                    node = node[key]
                kernels = [node[f"Dense_{i}"]["kernel"] for i in range(depth)]
                widths = [(kernels[i]["block"].shape[-1],
                           kernels[i + 1]["const"].shape[-2] if "const" in kernels[i + 1] else 0)
                          for i in range(depth - 1)]
            layout = _MLPLayout(masks, multiple, widths)
            self.fractions.append(layout.block_fraction([k.shape[-2:] for k in masks]))
            for i in range(depth):
                layer = "/".join((*prefix, f"Dense_{i}"))
                c_prev, k_prev = (layout.width[i - 1], layout.const[i - 1]) if i > 0 else (0, 0)
                self.layers[f"{layer}/kernel"] = {
                    "lead": layout.lead,
                    "rows": None if i == 0 else layout.perm[i - 1][:, :c_prev],
                    "const_rows": layout.perm[i - 1][:, c_prev: c_prev + k_prev] if k_prev else None,
                    "cols": layout.perm[i][:, : layout.width[i]] if i < layout.depth else None,
                    "dead": layout.dead[i],
                }
                if i < layout.depth:
                    perm = layout.perm[i]
                    self.layers[f"{layer}/bias"] = {
                        "lead": layout.lead, "perm": perm, "inverse": np.argsort(perm, axis=1)}

    def compact(self, name: str, leaf: np.ndarray):
        spec = self.layers.get(name)
        if spec is None:
            return leaf
        lead = spec["lead"]
        if "perm" in spec:
            return _unslice(np.take_along_axis(_slices(leaf, lead, 1), spec["perm"], axis=1), lead)
        x = _slices(leaf, lead, 2)
        out = {"block": _unslice(x[_grid(spec["rows"], spec["cols"], x)], lead)}
        if spec["const_rows"] is not None:
            out["const"] = _unslice(x[_grid(spec["const_rows"], spec["cols"], x)], lead)
        if spec["dead"] is not None:
            d = spec["dead"]
            out["dead"] = _unslice(x[np.arange(len(x))[:, None], d[..., 0], d[..., 1]], lead)
        return out

    def expand(self, name: str, base: np.ndarray, live):
        """The dense leaf: ``base`` (the frozen value, drifted or decayed) with the live entries put back."""
        spec = self.layers.get(name)
        if spec is None:
            return live
        lead = spec["lead"]
        if "perm" in spec:
            return _unslice(np.take_along_axis(_slices(live, lead, 1), spec["inverse"], axis=1), lead)
        x = np.array(_slices(base, lead, 2))
        x[_grid(spec["rows"], spec["cols"], x)] = _slices(live["block"], lead, 2)
        if spec["const_rows"] is not None:
            x[_grid(spec["const_rows"], spec["cols"], x)] = _slices(live["const"], lead, 2)
        if spec["dead"] is not None:
            d = spec["dead"]
            x[np.arange(len(x))[:, None], d[..., 0], d[..., 1]] = _slices(live["dead"], lead, 1)
        return _unslice(x, lead)


def _names(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map_with_path(lambda path, _: "/".join(_key(p) for p in path), tree)


def _with_layout_masks(opt_state: optax.OptState, masks: PyTree) -> optax.OptState:
    """``opt_state`` with ``masks`` in its ``masked_updates`` state, in another layout than the masks they replace
    (``sparsity.set_masks`` keeps the layout)."""
    is_masked = lambda node: isinstance(node, MaskedUpdatesState)  # noqa: E731
    return jax.tree_util.tree_map(lambda node: node._replace(masks=masks) if is_masked(node) else node, opt_state,
                                  is_leaf=is_masked)


def _roles(tx: optax.GradientTransformation, opt_state: optax.OptState, params: PyTree) -> PyTree:
    """``opt_state``'s structure with, at each leaf, the path of the parameter it mirrors or "" (the masks of a
    ``masked_updates`` state are one "" leaf: ``tree_map_params`` leaves them alone)."""
    return optax.tree_utils.tree_map_params(tx, lambda _, name: name, opt_state, _names(params),
                                            transform_non_params=lambda _: "")


def block_fraction(net: MaskedNet, multiple: int = WIDTH_MULTIPLE) -> float | None:
    """The live layout's matmul work over the dense net's (None: the net cannot be converted)."""
    if net.mask is None or not supports_live_units(net.module):
        return None
    try:
        return max(_Converter(net, multiple).fractions)
    except _Unconvertible:
        return None


def to_live(net: MaskedNet, multiple: int = WIDTH_MULTIPLE, lanes: int = 1,
            max_fraction: float = 1.0) -> MaskedNet:
    """``net`` in the live-units layout; ``net`` itself if it has no mask, an unsupported module, or
    its live blocks keep more than ``max_fraction`` of the dense matmul work. ``lanes`` > 1: the net's
    leaves carry a leading axis of vmapped runs (the layout's scalars get one too)."""
    if isinstance(net, LiveNet) or net.mask is None or not supports_live_units(net.module):
        return net
    host = jax.device_get(net)
    try:
        converter = _Converter(host, multiple)
    except _Unconvertible:
        return net
    if max(converter.fractions) > max_fraction:
        return net
    names = _names(host.params)
    compact = lambda tree: jax.device_put(jax.tree_util.tree_map(converter.compact, names, tree))  # noqa: E731
    params = compact(host.params)
    opt_state = jax.device_put(optax.tree_utils.tree_map_params(
        net.tx, lambda leaf, name: converter.compact(name, leaf), host.opt_state, names))
    return LiveNet(
        params=params,
        opt_state=_with_layout_masks(opt_state, compact(host.mask)),
        target=None if net.target is None else compact(host.target),
        module=net.module,
        tx=net.tx,
        frozen=net,
        target_decay=jnp.ones((lanes,) if lanes > 1 else (), jnp.float32),
        updates=jnp.zeros((lanes,) if lanes > 1 else (), jnp.int32),
    )


@functools.lru_cache(maxsize=64)
def _probe_runner(tx: optax.GradientTransformation):
    """``(state, zeros, steps) -> state``, compiled once per optimizer: ``steps`` updates of ``tx`` on zero
    gradients and zero parameters (L1's sign term and AdamW's decay vanish there, as for pruned weights)."""
    def run(state, zeros, steps):
        return jax.lax.fori_loop(0, steps, lambda _, state: tx.update(zeros, state, zeros)[1], state)

    return jax.jit(run)


def _probe(tx: optax.GradientTransformation, params_like: PyTree, steps: int) -> optax.OptState:
    """The optimizer state of a scalar-per-leaf copy of ``params_like``, moments started at one, after
    ``steps`` updates on zero gradients: each moment leaf is the factor its pruned entries decayed by."""
    zeros = jax.tree_util.tree_map(lambda _: jnp.zeros((), jnp.float32), params_like)
    state = optax.tree_utils.tree_map_params(tx, jnp.ones_like, tx.init(zeros))
    return _probe_runner(tx)(state, zeros, steps)


def _with_lane_axes(factor: np.ndarray, like: np.ndarray) -> np.ndarray:
    return factor.reshape(factor.shape + (1,) * (like.ndim - factor.ndim))


def to_dense(net: MaskedNet) -> MaskedNet:
    """The dense-masked ``MaskedNet`` equal to ``net`` (itself if it is one already)."""
    if not isinstance(net, LiveNet):
        return net
    host = jax.device_get(net)
    frozen = host.frozen
    converter = _Converter(frozen, WIDTH_MULTIPLE, host.params)
    names = _names(frozen.params)
    params = jax.tree_util.tree_map(converter.expand, names, frozen.params, host.params)
    target = None
    if host.target is not None:
        def drifted(name, t0, p, live):  # t_n = t_0 + (1 − Π(1 − τ)) (p − t_0) for entries the live layout did not carry
            spec = converter.layers.get(name)
            if spec is None or "perm" in spec:
                return converter.expand(name, t0, live)
            decay = _with_lane_axes(host.target_decay, p)
            return converter.expand(name, t0 + (np.float32(1) - decay) * (p - t0), live)

        target = jax.tree_util.tree_map(drifted, names, frozen.target, frozen.params, host.target)
    roles = _roles(net.tx, frozen.opt_state, frozen.params)

    def moment(role, base, live, probe):
        if not role:
            return live
        spec = converter.layers.get(role)
        if spec is None or "perm" in spec:
            return converter.expand(role, base, live)
        decay = probe["block"]  # the factor of the kernel's own leaf (one optimizer transforms all its parts alike)
        return converter.expand(role, base * _with_lane_axes(decay, base), live)

    probe = jax.device_get(_probe(net.tx, params_like=host.params, steps=int(np.max(host.updates))))
    opt_state = jax.device_put(jax.tree_util.tree_map(moment, roles, frozen.opt_state, host.opt_state, probe))
    return MaskedNet(params=jax.device_put(params), opt_state=_with_layout_masks(opt_state, net.frozen.mask),
                     target=jax.device_put(target), module=net.module, tx=net.tx)


def uses_live_units(layout: str, backend: str | None = None) -> bool:
    """Whether a sparse run trains its fixed-mask chunks in the live-units layout (``FIXED_MASK_LAYOUTS``):
    "auto" = on a CPU (measured faster there, docs/performance.md; unmeasured on accelerators)."""
    layout = LEGACY_LAYOUTS.get(layout, layout)
    if layout == "masked":
        return False
    return layout == "live-units" or (backend or jax.default_backend()) == "cpu"


def state_to_live(state: Any, names, lanes: int = 1, max_fraction: float = DEFAULT_MAX_FLOP_FRACTION) -> Any:
    """The train ``state`` with networks ``names`` converted by :func:`to_live` where it pays."""
    return state.replace(**{name: to_live(getattr(state, name), lanes=lanes, max_fraction=max_fraction)
                            for name in names})


def state_to_dense(state: Any, names) -> Any:
    return state.replace(**{name: to_dense(getattr(state, name)) for name in names})


def live_networks(state: Any, names) -> list[str]:
    """The networks of ``state`` (among ``names``) in the live-units layout."""
    return [name for name in names if isinstance(getattr(state, name), LiveNet)]
