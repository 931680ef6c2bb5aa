"""Sparse-Reg: SNIP-scored top-k masks, one mechanism for every algorithm.

For each network ``n`` an algorithm names the loss ``L_n(state, batch, key)`` it trains
that network with. A mask refresh, for every such network:

1. scores every weight with SNIP, ``S(θ_q) = |θ_q · ∂L_n/∂θ_q|``, evaluated with the
   mask set to all ones (the full network, pruned weights at their frozen values);
2. keeps the global top-k weight entries of the network, ``k = max(1, round(keep · #weights))``
   with ``keep = 1 - sparsity`` (weight matrices only: leaves named ``kernel`` or ``w``;
   biases and scales stay dense).

Masks are refreshed every ``interval`` steps while ``step < until`` (SPU) or only at
step 0 when ``until == 0`` (SFI, single shot at initialisation). A scorer is one function
``scores(params, grads, key)`` (:data:`MASK_SCORERS`): SNIP is the method; ``magnitude``
(|θ|) and ``random`` are the pruning literature's controls, same top-k and schedule. Applying the
mask is one rule, here: :func:`apply_masks` in forward passes, :func:`masked_step` in updates. The
masks have one holder, the state of the optax wrapper :func:`masked_updates`
(``MaskedUpdatesState(masks, inner_state)``), for a user's Flax ``TrainState`` and for the project's
own :class:`sparse_reg.masked_net.MaskedNet` alike: :func:`with_masked_updates` gives any network
(``params``, ``opt_state``, ``tx``) that holder with masks of all ones, and :func:`masks_of` /
:func:`with_masks` read and write it (:func:`get_masks` / :func:`set_masks`). Nothing here knows any
algorithm: a new algorithm only declares its losses.

Scoring the full network (step 1) and keeping pruned weights at their values is what the
paper's own code does (SaminYeasar/sparse_reg: ``sparse_utils.py`` sets every mask to ones
on a deep copy of the agent before the scoring pass; ``algos.py`` applies masks with
``fixed_weight=-1``, which skips zeroing). One difference: that code scores all networks
of the agent at once, each seeing the *others* unmasked too; here each network is scored
with the other networks as they are trained, masks included.

The same mechanism works on any parameter pytree, for an agent written without this
project (a Flax ``TrainState``, Haiku params, a dict)::

    tx = sr.masked_updates(optax.adam(3e-4))                     # pruned weights frozen
    masks = sr.snip_masks(lambda p: loss(p, batch), params, sparsity=0.95)   # full network scored
    opt_state = sr.set_masks(opt_state, masks)                   # a refresh
    loss(sr.apply_masks(params, sr.get_masks(opt_state)), batch)  # forward pass with θ ⊙ m
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
LossFn = Callable[..., tuple[jax.Array, Any]]  # (state, batch, key) -> (loss, aux)
Prunable = Callable[[tuple, Any], bool]  # (pytree path, leaf) -> whether the leaf's entries compete for the top-k

AUTO_SMALL_DATA_LIMIT = 25_000  # the paper: 95% sparse at 5k-10k samples, 75% at 50k-100k
GroupOf = Callable[[tuple, Any], Any]  # (pytree path, leaf) -> the head a prunable leaf belongs to


def _refresh_due(step: int, every: int, until: int) -> bool:
    return step == 0 or (step % every == 0 and step < until)


@dataclass(frozen=True)
class Schedule:
    """When masks are (re)computed: at step 0, then every ``every`` steps while ``step < until``.

    The paper's schedule is ``Schedule(every=5_000, until=200_000)`` (the default); after the last
    refresh the masks never change. ``Schedule.at_init()`` is SFI: one mask at step 0, never again.
    """

    every: int = 5_000
    until: int = 200_000

    def __post_init__(self):
        if self.every <= 0:
            raise ValueError(f"Schedule: every must be positive, got {self.every}")
        if self.until < 0:
            raise ValueError(f"Schedule: until must be >= 0, got {self.until}")

    @classmethod
    def at_init(cls) -> "Schedule":
        """SFI: masks computed once, before the first update, and frozen."""
        return cls(every=1, until=0)

    def due(self, step: int) -> bool:
        """Whether masks are (re)computed before update ``step`` (counting from 0)."""
        return _refresh_due(int(step), self.every, self.until)

    @property
    def last_refresh(self) -> int:
        """The step of the last refresh; from there on the masks never change."""
        return (self.until - 1) // self.every * self.every if self.until > 0 else 0

    def steps(self, total: int) -> list[int]:
        """Every refresh step before update ``total``."""
        return [step for step in range(0, min(total, self.last_refresh + 1), self.every) if self.due(step)]


@dataclass(frozen=True)
class SparseRegConfig:
    """sparsity: fraction of weight entries pruned in [0, 1); 0 is dense."""

    sparsity: float = 0.95
    interval: int = 5_000
    until: int = 200_000  # 0 = single shot at initialisation (SFI)
    scorer: str = "snip"  # a name in MASK_SCORERS

    def __post_init__(self):
        if self.scorer not in MASK_SCORERS:
            raise ValueError(f"unknown mask scorer {self.scorer!r}: choose one of {', '.join(MASK_SCORERS)}")
        check_sparsity(self.sparsity)
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
        return _refresh_due(step, self.interval, self.until)

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.interval, self.until)

    @property
    def last_refresh(self) -> int:
        """The step of the last mask refresh; from there on the masks never change."""
        return self.schedule.last_refresh

    def to_dict(self) -> dict:
        """As runs record it (config.json and summary.json, key ``sparse_reg``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SparseRegConfig":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


AUTO = "auto"


def check_sparsity(value: float) -> float:
    """``value`` if it is a fraction pruned in [0, 1), else ValueError: the one range check."""
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ValueError(f"sparsity must be in [0, 1), got {value}")
    return float(value)


def parse_sparsity(value: str | float) -> str | float:
    """A sparsity as given (a number, its text, or "auto" in any case) as :data:`AUTO` or a checked float."""
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return AUTO
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"sparsity must be 'auto' or a number in [0, 1), got {value!r}") from None
    return check_sparsity(value)


def resolve_sparsity(value: str | float, train_size: int) -> float:
    """``"auto"`` -> 0.95 up to 25k training transitions, 0.75 above (the paper's rule)."""
    level = parse_sparsity(value)
    if level == AUTO:
        return 0.95 if train_size <= AUTO_SMALL_DATA_LIMIT else 0.75
    return level


# --------------------------------------------------------------------------------------
# Which leaves compete for the top-k
# --------------------------------------------------------------------------------------

WEIGHT_NAMES = frozenset({"kernel", "w"})  # Flax / NNX weight matrices; Haiku's (and many hand-written) ``w``
_WRAPPER_NAMES = frozenset({"value", "raw_value"})  # NNX state paths end in <name>/value


def _key_name(entry: Any) -> Any:
    for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
        if hasattr(entry, attribute):
            return getattr(entry, attribute)
    return str(entry)


def _names(path: tuple) -> list:
    names = [_key_name(entry) for entry in path]
    while len(names) > 1 and names[-1] in _WRAPPER_NAMES:
        names.pop()
    return names


def leaf_name(path: tuple) -> Any:
    """The parameter's own name at the end of a pytree path (``kernel``, ``w``, ``bias``, ...)."""
    names = _names(path)
    return names[-1] if names else None


def layer_name(path: tuple) -> str:
    """``MLP_0/Dense_1`` for ``MLP_0/Dense_1/kernel``; the leaf's own name for a top-level leaf."""
    names = _names(path)
    return "/".join(map(str, names[:-1] or names))


def is_weight_matrix(path: tuple, leaf: Any) -> bool:
    """The default prunable predicate: a leaf named ``kernel`` or ``w`` with at least two axes.

    Biases, LayerNorm scales and log-stds are never pruned. Write your own
    ``(path, leaf) -> bool`` for other names (``is_prunable=`` of :func:`topk_masks`).
    """
    return leaf_name(path) in WEIGHT_NAMES and getattr(leaf, "ndim", 0) >= 2


def _prunable_flags(tree: PyTree, is_prunable: Prunable | None = None) -> list[bool]:
    predicate = is_prunable or is_weight_matrix
    return [bool(predicate(path, leaf)) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


# --------------------------------------------------------------------------------------
# Scores and masks on any parameter pytree
# --------------------------------------------------------------------------------------


def snip_scores(loss_of_params: Callable[[PyTree], jax.Array], params: PyTree) -> PyTree:
    """|θ · ∂L/∂θ| for every parameter (the caller decides which leaves compete).

    Pass the *full* network's loss (no mask applied) to score every weight, pruned or not.
    """
    return snip_scores_from_grads(params, jax.grad(loss_of_params)(params))


def snip_scores_from_grads(params: PyTree, grads: PyTree) -> PyTree:
    """|θ · g| leaf by leaf, for gradients you already have."""
    return jax.tree_util.tree_map(lambda p, g: jnp.abs(p * g), params, grads)


def magnitude_scores(params: PyTree, grads: PyTree, key: jax.Array) -> PyTree:
    """|θ|: global magnitude pruning, the classic control for a data-driven score."""
    return jax.tree_util.tree_map(jnp.abs, params)


def random_scores(params: PyTree, grads: PyTree, key: jax.Array) -> PyTree:
    """Uniform noise: a random mask, each layer keeping about the same fraction."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(treedef, [jax.random.uniform(k, jnp.shape(p)) for k, p in zip(keys, leaves)])


# name -> scores(params, grads, key): how a refresh ranks the weights before the top-k.
MASK_SCORERS: dict[str, Callable[[PyTree, PyTree, jax.Array], PyTree]] = {
    "snip": lambda params, grads, key: snip_scores_from_grads(params, grads),
    "magnitude": magnitude_scores,
    "random": random_scores,
}


def _keep_fraction(sparsity: float | None, keep: float | None) -> float:
    if (sparsity is None) == (keep is None):
        raise TypeError("give exactly one of sparsity= (fraction pruned, in [0, 1)) or keep= (fraction kept, in (0, 1])")
    if keep is None:
        return 1.0 - check_sparsity(sparsity)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    return keep


def topk_masks(
    scores: PyTree,
    *,
    sparsity: float | None = None,
    keep: float | None = None,
    is_prunable: Prunable | None = None,
    group_of: GroupOf | None = None,
) -> PyTree:
    """0/1 float32 masks keeping the ``k`` highest-scoring prunable entries, globally.

    Exactly one of ``sparsity`` (fraction pruned) or ``keep`` (fraction kept, ``1 - sparsity``).
    ``k = max(1, round(keep · n))`` where ``n`` counts every entry of every prunable leaf
    (default :func:`is_weight_matrix`; ``is_prunable(path, leaf) -> bool`` overrides); the
    top-k is over all of them together, not per layer. Ties go to the entry that comes first
    in flatten order, so exactly ``k`` are kept. Other leaves get all-ones masks.

    ``group_of(path, leaf) -> head`` makes one top-k per head instead (each head keeps its own
    ``k``): e.g. :func:`first_key` for a twin critic whose two Q-networks are two submodules, or
    ``STACKED`` for an ensemble stacked on a leading axis (``nn.vmap``): head ``h`` is entry ``h``
    of that axis of every prunable leaf.
    """
    if isinstance(group_of, str) and group_of == STACKED:
        return _stacked_topk_masks(scores, sparsity, keep, is_prunable)
    if group_of is not None:
        return _grouped_topk_masks(scores, sparsity, keep, is_prunable, group_of)
    keep_fraction = _keep_fraction(sparsity, keep)
    leaves, treedef = jax.tree_util.tree_flatten(scores)
    prunable = _prunable_flags(scores, is_prunable)
    if not any(prunable):
        names = sorted({str(leaf_name(path)) for path, _ in jax.tree_util.tree_flatten_with_path(scores)[0]})
        raise ValueError(
            f"no prunable leaves: the default prunes weight matrices named 'kernel' or 'w', these params have "
            f"{', '.join(names) or 'no leaves'}; pass is_prunable=lambda path, leaf: ... to choose"
        )
    flat = jnp.concatenate([leaf.ravel() for leaf, p in zip(leaves, prunable) if p])
    k = max(1, int(round(keep_fraction * flat.size)))  # at least one weight, even for a toy network
    # lax.top_k breaks ties by the lower index: deterministic, and exactly k entries.
    kept = jnp.zeros(flat.size, jnp.float32).at[jax.lax.top_k(flat, k)[1]].set(1.0)
    masks, offset = [], 0
    for leaf, p in zip(leaves, prunable):
        if p:
            masks.append(kept[offset : offset + leaf.size].reshape(leaf.shape))
            offset += leaf.size
        else:
            masks.append(jnp.ones(leaf.shape, jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, masks)


def first_key(path: tuple, leaf: Any = None) -> Any:
    """The head of a leaf for per-head top-k: its top-level submodule (``MLP_0`` / ``MLP_1`` of a twin critic)."""
    return _key_name(path[0]) if path else None


STACKED = "stacked"  # per-head top-k over the leading axis of every prunable leaf (a vmapped ensemble)


def _stacked_topk_masks(scores, sparsity, keep, is_prunable) -> PyTree:
    predicate = is_prunable or is_weight_matrix
    named, treedef = jax.tree_util.tree_flatten_with_path(scores)
    flags = [bool(predicate(path, leaf)) for path, leaf in named]
    heads = {leaf.shape[0] for (_, leaf), f in zip(named, flags) if f}
    if len(heads) != 1:
        raise ValueError(f"per-head top-k over a stacked axis: every prunable leaf needs the same leading (head) axis, "
                         f"got sizes {sorted(heads)}")
    prunable = [leaf for (_, leaf), f in zip(named, flags) if f]
    per_head = [topk_masks([leaf[h] for leaf in prunable], sparsity=sparsity, keep=keep,
                           is_prunable=lambda path, leaf: True) for h in range(heads.pop())]
    stacked = iter([jnp.stack(masks) for masks in zip(*per_head)])
    return jax.tree_util.tree_unflatten(
        treedef, [next(stacked) if f else jnp.ones(leaf.shape, jnp.float32) for (_, leaf), f in zip(named, flags)])


def _grouped_topk_masks(scores, sparsity, keep, is_prunable, group_of: GroupOf) -> PyTree:
    predicate = is_prunable or is_weight_matrix
    named = jax.tree_util.tree_flatten_with_path(scores)[0]
    heads = list(dict.fromkeys(group_of(path, leaf) for path, leaf in named if predicate(path, leaf)))
    masks = None
    for head in heads:  # each call keeps its head's top-k and gives every other leaf all ones
        in_head = lambda path, leaf, head=head: predicate(path, leaf) and group_of(path, leaf) == head  # noqa: E731
        head_masks = topk_masks(scores, sparsity=sparsity, keep=keep, is_prunable=in_head)
        masks = head_masks if masks is None else jax.tree_util.tree_map(jnp.multiply, masks, head_masks)
    if masks is None:
        return topk_masks(scores, sparsity=sparsity, keep=keep, is_prunable=is_prunable)  # its clear error
    return masks


def snip_masks(
    loss_of_params: Callable[[PyTree], jax.Array],
    params: PyTree,
    *,
    sparsity: float,
    is_prunable: Prunable | None = None,
    group_of: GroupOf | None = None,
) -> PyTree:
    """SNIP scores of the full network, then global top-k masks, in one call.

    ``loss_of_params(params) -> scalar`` must run the network *unmasked* (pass the raw
    params, not ``apply_masks(params, masks)``), so weights pruned so far can come back.
    """
    return topk_masks(snip_scores(loss_of_params, params), sparsity=sparsity, is_prunable=is_prunable, group_of=group_of)


def dense_masks(params: PyTree) -> PyTree:
    """All-ones float32 masks shaped like ``params`` (the dense network)."""
    return jax.tree_util.tree_map(lambda p: jnp.ones(jnp.shape(p), jnp.float32), params)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """θ ⊙ m, leaf by leaf, in the params' dtype: use it in the forward pass of a network and of its target copy."""
    return jax.tree_util.tree_map(lambda p, m: p * jnp.asarray(m, jnp.result_type(p)), params, masks)


def masked_params(net: Any, params: PyTree | None = None) -> PyTree:
    """θ ⊙ m for a train state whose optimiser is :func:`masked_updates`: its params, or ``params``
    (e.g. its target copy, which runs with the online network's mask) masked with its masks."""
    return apply_masks(net.params if params is None else params, get_masks(net.opt_state))


# --------------------------------------------------------------------------------------
# The optimiser side: pruned weights frozen, not zeroed
# --------------------------------------------------------------------------------------


class MaskedUpdatesState(NamedTuple):
    """State of :func:`masked_updates`: the current masks and the wrapped optimiser's state."""

    masks: PyTree
    inner_state: optax.OptState


def masked_step(
    update: Callable, updates: PyTree, state: optax.OptState, params: PyTree | None, masks: PyTree, **extra_args
) -> tuple[PyTree, optax.OptState]:
    """One optimiser step under ``masks``, the rule every masked network trains with: ``update`` (an
    optax ``update`` function) sees the params ``θ ⊙ m`` (so weight decay and L1 terms vanish for
    pruned weights) and its updates are multiplied by ``m``: a pruned weight gets no gradient step,
    no Adam-momentum drift and no decay. Returns (masked updates, ``update``'s new state)."""
    masked = None if params is None else apply_masks(params, masks)
    updates, state = update(updates, state, masked, **extra_args)
    return apply_masks(updates, masks), state


def masked_updates(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Wrap an optax optimiser so that only the weights the current mask keeps are trained.

    The state holds the masks (all ones at ``init``; replace them with :func:`set_masks`).
    Each update is :func:`masked_step`: a pruned weight keeps its value, and a later mask that
    keeps it again revives it as it was. The forward pass still has to use ``apply_masks(params, masks)``.
    """

    inner = optax.with_extra_args_support(inner)  # pass on extra arguments (e.g. value=) to optimisers that take them

    def init_fn(params):
        return MaskedUpdatesState(masks=dense_masks(params), inner_state=inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        updates, inner_state = masked_step(inner.update, updates, state.inner_state, params, state.masks, **extra_args)
        return updates, MaskedUpdatesState(state.masks, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _is_masked_state(node: Any) -> bool:
    return isinstance(node, MaskedUpdatesState)


def _masked_states(opt_state: optax.OptState) -> list[MaskedUpdatesState]:
    return [node for node in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_masked_state) if _is_masked_state(node)]


def _one_masked_state(opt_state: optax.OptState) -> MaskedUpdatesState:
    found = _masked_states(opt_state)
    if not found:
        raise ValueError(
            "this optimiser state holds no Sparse-Reg masks: build the optimiser with "
            "sr.masked_updates(optimizer) (e.g. TrainState.create(..., tx=sr.masked_updates(optax.adam(3e-4))))"
        )
    if len(found) > 1:
        raise ValueError(f"this optimiser state holds {len(found)} masked_updates states; wrap the optimiser once")
    return found[0]


def get_masks(opt_state: optax.OptState) -> PyTree:
    """The masks inside an optimiser state built with :func:`masked_updates` (chained or nested)."""
    return _one_masked_state(opt_state).masks


def set_masks(opt_state: optax.OptState, masks: PyTree) -> optax.OptState:
    """The optimiser state with new masks (a mask refresh); everything else, Adam moments included, unchanged.

    The masks must have the params' tree structure and shapes; they are stored in the dtype
    of the masks they replace, so the state's structure never changes (jit, scan).
    """
    old = _one_masked_state(opt_state).masks
    old_leaves, old_def = jax.tree_util.tree_flatten(old)
    new_leaves, new_def = jax.tree_util.tree_flatten(masks)
    if new_def != old_def:
        raise ValueError(f"masks do not match the params' structure:\n  expected {old_def}\n  got      {new_def}")
    for o, n in zip(old_leaves, new_leaves):
        if jnp.shape(o) != jnp.shape(n):
            raise ValueError(f"mask of shape {jnp.shape(n)} where the params have shape {jnp.shape(o)}")
    masks = jax.tree_util.tree_unflatten(old_def, [jnp.asarray(n, o.dtype) for o, n in zip(old_leaves, new_leaves)])
    return jax.tree_util.tree_map(
        lambda node: node._replace(masks=masks) if _is_masked_state(node) else node, opt_state, is_leaf=_is_masked_state
    )


# --------------------------------------------------------------------------------------
# Refreshing the networks of a train state
# --------------------------------------------------------------------------------------


def _network(state: Any, name: str | None) -> Any:
    if name is None:
        return state
    try:
        return state[name] if isinstance(state, Mapping) else getattr(state, name)
    except (KeyError, AttributeError):
        if isinstance(state, Mapping):
            found = ", ".join(map(str, state)) or "none"
        else:
            found = ", ".join(getattr(state, "__dataclass_fields__", {})) or "none"
        raise ValueError(
            f"refresh_masks: no network {name!r} in the {type(state).__name__} it was given (its fields: {found}). "
            "Give a state with one field or dict entry per name in losses (a flax.struct.PyTreeNode, a dataclass "
            "with .replace, or a dict), each a MaskedNet or a TrainState whose tx is sr.masked_updates(...)"
        ) from None


def _with_network(state: Any, name: str | None, net: Any) -> Any:
    if name is None:
        return net
    if isinstance(state, Mapping):
        return {**state, name: net}
    return state.replace(**{name: net})


def holds_masks(net: Any) -> bool:
    """Whether ``net`` (anything with an ``opt_state``) keeps masks: its optimiser is :func:`masked_updates`."""
    return bool(_masked_states(getattr(net, "opt_state", None)))


def with_masked_updates(net: Any) -> Any:
    """``net`` made sparse, masks all ones (the dense network): the one way a network gets a place for masks.

    ``net`` is anything with ``params``, ``opt_state``, ``tx`` and ``.replace`` (a :class:`MaskedNet`, a
    Flax ``TrainState``): its ``tx`` becomes ``masked_updates(tx)`` and its ``opt_state``
    ``MaskedUpdatesState(all ones, opt_state)``, which is what ``masked_updates(tx).init`` gives for the
    same params, Adam moments and step counts kept. ``net`` itself if it already holds masks. A
    ``MaskedNet`` runs its forward pass with these masks; a ``TrainState``'s own forward pass must use
    ``apply_masks(params, get_masks(opt_state))`` (or ``SparseReg.apply``)."""
    if holds_masks(net):
        return net
    return net.replace(tx=masked_updates(net.tx), opt_state=MaskedUpdatesState(dense_masks(net.params), net.opt_state))


def masks_of(net: Any, name: str | None = None) -> PyTree:
    """The masks of a network, from their one holder: its optimiser state (a :class:`MaskedNet` or a train
    state with ``params`` and ``opt_state`` whose tx is :func:`masked_updates`; a network without masks
    is an error: make it sparse with :func:`with_masked_updates` or :func:`with_all_ones_masks`).
    ``name``: the network's name, for errors."""
    if not (hasattr(net, "params") and hasattr(net, "opt_state")):
        raise ValueError(
            f"refresh_masks: network {name!r} is a {type(net).__name__}; expected a MaskedNet or a train state with "
            "params and opt_state (flax.training.train_state.TrainState) whose tx is sr.masked_updates(...)"
        )
    try:
        return get_masks(net.opt_state)
    except ValueError as error:
        raise ValueError(f"refresh_masks: network {name!r}: {error}") from None


def with_masks(net: Any, mask: PyTree | None) -> Any:
    """``net`` with ``mask`` in its optimiser state, where :func:`masks_of` reads it (None: all ones, the
    dense network)."""
    return net.replace(opt_state=set_masks(net.opt_state, dense_masks(net.params) if mask is None else mask))


def with_all_ones_masks(state: Any, networks) -> Any:
    """Every network in ``networks`` made sparse (:func:`with_masked_updates`) with masks of all ones (the
    dense network), so that the state has the structure it keeps through every later refresh (jit, scan,
    checkpoints)."""
    for name in networks:
        state = _with_network(state, name, with_masks(with_masked_updates(_network(state, name)), None))
    return state


def loss_value(out: Any) -> jax.Array:
    """The scalar of a loss that returns ``loss`` or ``(loss, aux)``."""
    return out[0] if isinstance(out, (tuple, list)) else out


def network_masks(
    loss_fn: LossFn,
    state: Any,
    name: str | None,
    batch: Any,
    key: jax.Array,
    *,
    sparsity: float,
    is_prunable: Prunable | None = None,
    group_of: GroupOf | None = None,
    scorer: str = "snip",
) -> PyTree:
    """SNIP masks for network ``name`` of ``state`` scored with its own loss, its mask set to all ones
    (or the masks of another of :data:`MASK_SCORERS`)."""
    net = _network(state, name)
    masks_of(net, name)  # a clear error for what is not a network or holds no masks
    dense_net = with_masks(net, None)

    def loss_of_params(params):
        return loss_value(loss_fn(_with_network(state, name, dense_net.replace(params=params)), batch, key))

    if scorer == "snip":
        return snip_masks(loss_of_params, dense_net.params, sparsity=sparsity, is_prunable=is_prunable, group_of=group_of)
    grads = jax.grad(loss_of_params)(dense_net.params)
    scores = MASK_SCORERS[scorer](dense_net.params, grads, jax.random.fold_in(key, 1))
    return topk_masks(scores, sparsity=sparsity, is_prunable=is_prunable, group_of=group_of)


def refresh_masks(
    state: Any,
    losses: Mapping[str, LossFn] | LossFn,
    batch: Any,
    key: jax.Array,
    config: SparseRegConfig,
    *,
    is_prunable: Prunable | None = None,
    group_of: Mapping[Any, GroupOf] | None = None,
) -> tuple[Any, dict]:
    """New masks for every network in ``losses``; returns ``(state, stats)``: the state and per-layer statistics.

    It refreshes whenever it is called: ``config.interval`` and ``config.until`` are not
    consulted here (call it when ``config.refresh_due(step)``, or use :class:`sparse_reg.SparseReg`,
    whose ``maybe_refresh(step, ...)`` keeps the schedule).

    ``state`` holds the networks: a ``flax.struct.PyTreeNode`` (or anything with attribute
    access and ``.replace``) or a dict, with one entry per name in ``losses``. Each network is
    a :class:`MaskedNet`, or a train state with ``params`` and ``opt_state`` (e.g. Flax's
    ``TrainState``) whose optimiser is wrapped in :func:`masked_updates`; its masks are read
    and written with :func:`get_masks` / :func:`set_masks`. ``losses[name](state, batch, key)
    -> (loss, aux)`` (or just ``loss``) must run that network with its current masks (``apply_masks(params,
    get_masks(opt_state))`` for a TrainState), so that scoring with the masks set to all ones
    scores the full network. ``state`` may also be one such TrainState, with ``losses`` a
    single loss ``(train_state, batch, key) -> (loss, aux)``; the statistics then have the key
    ``None``.

    The statistics of each network's ``"total"`` also hold its loss on the scoring batch with
    the previous mask and with the new one (``loss_before``, ``loss_after``; other networks as
    they were).

    Every network is scored against the same state (all other masks as they were), so the
    result does not depend on the order in which networks are listed.

    ``group_of[name]``: per-head top-k for that network (see :func:`topk_masks`).
    """
    if callable(losses) and not isinstance(losses, Mapping):
        losses = {None: losses}
    if not losses:
        raise ValueError("refresh_masks: losses is empty; give one loss per network to sparsify")
    keys = jax.random.split(key, len(losses))
    new_masks = {
        name: network_masks(loss_fn, state, name, batch, subkey, sparsity=config.sparsity, is_prunable=is_prunable,
                            group_of=(group_of or {}).get(name), scorer=config.scorer)
        for subkey, (name, loss_fn) in zip(keys, losses.items())
    }
    stats = {
        name: mask_statistics(mask, masks_of(_network(state, name), name), is_prunable)
        for name, mask in new_masks.items()
    }
    refreshed = {name: with_masks(_network(state, name), mask) for name, mask in new_masks.items()}
    # How much the refresh moves each network's loss on the scoring batch: reviving frozen weights
    # at their old values and dropping trained ones can change the function a lot.
    for subkey, (name, loss_fn) in zip(keys, losses.items()):
        stats[name]["total"]["loss_before"] = loss_value(loss_fn(state, batch, subkey))
        stats[name]["total"]["loss_after"] = loss_value(loss_fn(_with_network(state, name, refreshed[name]), batch, subkey))
    for name, net in refreshed.items():
        state = _with_network(state, name, net)
    return state, stats


def live_units(mask: PyTree, is_prunable: Prunable | None = None,
               per_head: bool = False) -> dict[str, tuple[jax.Array, int]]:
    """Hidden units the mask leaves alive, per layer: ``{layer: (live count, unit count)}``.

    For consecutive weight matrices ``Dense_i`` (in, out) and ``Dense_{i+1}`` of one MLP, unit ``j``
    of layer ``i``'s output is alive when a kept weight feeds it (column ``j`` of ``Dense_i``) and a
    kept weight reads it (row ``j`` of ``Dense_{i+1}``); a dead unit is as if the layer were narrower.
    Leading axes (the stacked heads of a twin critic) count as separate units; with ``per_head`` the
    live count is one per head instead (an array of the leading axes' shape) and the unit count that
    of one head. Layers not named ``Dense_<i>``, and output layers, have no entry.
    """
    kernels: dict[tuple[str, int], tuple[str, jax.Array]] = {}
    for (path, m), prunable in zip(jax.tree_util.tree_flatten_with_path(mask)[0], _prunable_flags(mask, is_prunable)):
        layer = layer_name(path)
        parent, _, own = layer.rpartition("/")
        if prunable and own.startswith("Dense_") and own[len("Dense_"):].isdigit():
            kernels[(parent, int(own[len("Dense_"):]))] = (layer, m)
    out = {}
    for (parent, index), (layer, m) in kernels.items():
        successor = kernels.get((parent, index + 1))
        if successor is None or successor[1].shape[-2] != m.shape[-1]:
            continue
        fed = jnp.any(m != 0, axis=-2)  # (..., out): some kept input weight
        read = jnp.any(successor[1] != 0, axis=-1)  # (..., out): some kept output weight
        if per_head:
            out[layer] = (jnp.sum(fed & read, axis=-1), int(fed.shape[-1]))
        else:
            out[layer] = (jnp.sum(fed & read), int(fed.size))
    return out


def mask_statistics(mask: PyTree, previous: PyTree | None, is_prunable: Prunable | None = None) -> dict:
    """Per weight matrix and per network: fraction pruned, fraction of entries that flipped and, for
    hidden layers, the fraction of units left alive (:func:`live_units`)."""
    flags = _prunable_flags(mask, is_prunable)
    named = jax.tree_util.tree_flatten_with_path(mask)[0]
    old = jax.tree_util.tree_leaves(previous) if previous is not None else [None] * len(named)
    stats, pruned, changed, total = {}, 0.0, 0.0, 0
    for (path, m), prunable, o in zip(named, flags, old):
        if not prunable:
            continue
        layer = layer_name(path)
        n_pruned = jnp.sum(1.0 - m)
        n_changed = jnp.sum(m != o) if o is not None else jnp.asarray(float(m.size))
        stats[layer] = {"sparsity": n_pruned / m.size, "changed": n_changed / m.size}
        pruned, changed, total = pruned + n_pruned, changed + n_changed, total + m.size
    stats["total"] = {"sparsity": pruned / total, "changed": changed / total}
    alive = live_units(mask, is_prunable)
    for layer, (live, units) in alive.items():
        stats[layer]["live_units"] = live / units
    if alive:
        stats["total"]["live_units"] = sum(live for live, _ in alive.values()) / sum(n for _, n in alive.values())
    return stats


def weight_sparsity(net: Any, is_prunable: Prunable | None = None) -> float:
    """Fraction of the network's prunable entries that its mask prunes (0 for a dense net).

    ``net``: a :class:`MaskedNet` or a TrainState whose optimiser is :func:`masked_updates` (else dense).
    """
    if not holds_masks(net):
        return 0.0
    mask = masks_of(net)
    return float(mask_statistics(mask, mask, is_prunable)["total"]["sparsity"])
