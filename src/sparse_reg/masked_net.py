"""A trainable network whose Sparse-Reg masks live in its optimiser state, as every masked network's do.

:class:`MaskedNet` is how the project's own networks run the one masking rule of
:mod:`sparse_reg.sparsity` (a thin adapter: the rule and the masks' one holder are there, not here):

* a sparse net's optimiser is ``tx = masked_updates(inner)`` and its masks are in its optimiser
  state (``MaskedUpdatesState(masks, inner_state)``), as in a user's Flax ``TrainState``;
  :func:`~sparse_reg.sparsity.with_masked_updates` makes a net sparse (masks all ones) and
  :func:`~sparse_reg.sparsity.masks_of` / ``with_masks`` read and write them, for both kinds alike;
* the forward pass of the network *and of its target copy* uses ``θ ⊙ m`` (:func:`~sparse_reg.sparsity.apply_masks`);
* an update is the plain optax step of ``tx``, so :func:`~sparse_reg.sparsity.masked_step` (inside
  ``masked_updates``): a pruned weight receives no gradient, no Adam-momentum drift and no weight
  decay; it keeps its value and a later mask can revive it exactly as it was.

``mask`` is a read-only view of the masks in the optimiser state: None while the net's optimiser
is not ``masked_updates`` (a dense net: no multiply at all). Checkpoints hold ``params, opt_state
(masks inside), target``. Algorithms never look at masks; they call the net and ``apply_gradients``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import optax
from flax import struct

from .sparsity import PyTree, apply_masks, get_masks, holds_masks


class MaskedNet(struct.PyTreeNode):
    params: PyTree
    opt_state: optax.OptState  # a sparse net's: MaskedUpdatesState(masks, inner optimiser state)
    target: PyTree | None = None  # slowly tracking copy of ``params`` (masked with the online mask)
    module: nn.Module = struct.field(pytree_node=False, default=None)
    tx: optax.GradientTransformation = struct.field(pytree_node=False, default=None)

    @classmethod
    def create(
        cls,
        module: nn.Module,
        key: jax.Array,
        sample_inputs: tuple,
        tx: optax.GradientTransformation,
        with_target: bool = False,
    ) -> "MaskedNet":
        params = module.init(key, *sample_inputs)["params"]
        return cls(
            params=params,
            opt_state=tx.init(params),
            target=params if with_target else None,
            module=module,
            tx=tx,
        )

    @property
    def mask(self) -> PyTree | None:
        """The masks in the optimiser state; None for a dense net (its optimiser is not ``masked_updates``)."""
        return get_masks(self.opt_state) if holds_masks(self) else None

    def __call__(self, *inputs, dropout_key: jax.Array | None = None):
        """Forward pass with ``θ ⊙ m``; dropout is active only when a key is given."""
        return self._apply(self.params, inputs, dropout_key)

    def target_call(self, *inputs, dropout_key: jax.Array | None = None):
        """Forward pass of the target copy, masked with the *online* mask."""
        return self._apply(self.target, inputs, dropout_key)

    def _apply(self, params, inputs, dropout_key):
        mask = self.mask
        variables = {"params": params if mask is None else apply_masks(params, mask)}
        if dropout_key is None:
            return self.module.apply(variables, *inputs)
        return self.module.apply(variables, *inputs, train=True, rngs={"dropout": dropout_key})

    def apply_gradients(self, grads: PyTree) -> "MaskedNet":
        """One step of ``tx`` (for a sparse net ``masked_updates``: the masking is inside the optimiser)."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(params=optax.apply_updates(self.params, updates), opt_state=opt_state)

    def soft_update_target(self, tau: float) -> "MaskedNet":
        target = jax.tree_util.tree_map(lambda p, t: tau * p + (1.0 - tau) * t, self.params, self.target)
        return self.replace(target=target)


def value_and_grad_of(loss_fn: Callable, state: Any, name: str, *args):
    """``(loss, aux), grads`` of ``loss_fn(state, *args)`` w.r.t. the params of network ``state.<name>``.

    Loss functions read every network from the train state; this differentiates one of
    them, so the same loss serves the update and Sparse-Reg's scoring.
    """
    net = getattr(state, name)

    def loss_of_params(params):
        return loss_fn(state.replace(**{name: net.replace(params=params)}), *args)

    return jax.value_and_grad(loss_of_params, has_aux=True)(net.params)
