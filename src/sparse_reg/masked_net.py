"""A trainable network with an optional Sparse-Reg mask beside its parameters.

:class:`MaskedNet` is how the project's own networks run the one masking rule of
:mod:`sparse_reg.sparsity` (a thin adapter: the rule itself is there, not here):

* the forward pass of the network *and of its target copy* uses ``θ ⊙ m`` (:func:`~sparse_reg.sparsity.apply_masks`);
* an update is :func:`~sparse_reg.sparsity.masked_step`, the step of the optax wrapper
  ``masked_updates``: a pruned weight receives no gradient, no Adam-momentum drift and no
  weight decay; it keeps its value and a later mask can revive it exactly as it was.

The mask is kept beside the params (``mask``), not inside the optimiser state as
``masked_updates`` keeps it: checkpoints hold ``params, opt_state, mask, target``, and
:mod:`sparse_reg.live_layout` stores the mask in its own layout. Refreshes read and write it
through :func:`~sparse_reg.sparsity.masks_of` / ``with_masks`` like any other
network's. ``mask=None`` means dense (no multiply at all). Algorithms never look at masks;
they call the net and ``apply_gradients``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import optax
from flax import struct

from .sparsity import PyTree, apply_masks, masked_step


def apply_mask(params: PyTree, mask: PyTree | None) -> PyTree:
    """θ ⊙ m (:func:`~sparse_reg.sparsity.apply_masks`); ``params`` themselves where there is no mask."""
    return params if mask is None else apply_masks(params, mask)


class MaskedNet(struct.PyTreeNode):
    params: PyTree
    opt_state: optax.OptState
    mask: PyTree | None = None
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

    def __call__(self, *inputs, dropout_key: jax.Array | None = None):
        """Forward pass with ``θ ⊙ m``; dropout is active only when a key is given."""
        return self._apply(self.params, inputs, dropout_key)

    def target_call(self, *inputs, dropout_key: jax.Array | None = None):
        """Forward pass of the target copy, masked with the *online* mask."""
        return self._apply(self.target, inputs, dropout_key)

    def _apply(self, params, inputs, dropout_key):
        variables = {"params": apply_mask(params, self.mask)}
        if dropout_key is None:
            return self.module.apply(variables, *inputs)
        return self.module.apply(variables, *inputs, train=True, rngs={"dropout": dropout_key})

    def apply_gradients(self, grads: PyTree) -> "MaskedNet":
        """One step of ``tx``: :func:`~sparse_reg.sparsity.masked_step` with this net's mask (a plain
        step while it is dense)."""
        if self.mask is None:
            updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        else:
            updates, opt_state = masked_step(self.tx.update, grads, self.opt_state, self.params, self.mask)
        return self.replace(params=optax.apply_updates(self.params, updates), opt_state=opt_state)

    def with_mask(self, mask: PyTree | None) -> "MaskedNet":
        """This net with ``mask`` (what :func:`~sparse_reg.sparsity.with_masks` calls)."""
        return self.replace(mask=mask)

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
