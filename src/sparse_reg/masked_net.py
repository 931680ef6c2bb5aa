"""A trainable network with an optional Sparse-Reg mask beside its parameters.

:class:`MaskedNet` is the one place where a mask touches training:

* the forward pass of the network *and of its target copy* uses ``θ ⊙ m``;
* optimizer updates are multiplied by ``m``, so a pruned weight receives no
  gradient, no Adam-momentum drift and no weight decay: it keeps its value and a
  later mask can revive it exactly as it was.

``mask=None`` means dense (no multiply at all). Algorithms never look at masks;
they call the net and ``apply_gradients``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

PyTree = Any


def apply_mask(params: PyTree, mask: PyTree | None) -> PyTree:
    return params if mask is None else jax.tree_util.tree_map(jnp.multiply, params, mask)


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
        # The optimizer sees θ ⊙ m: parameter-dependent terms (L1's sign(θ), AdamW's decay)
        # vanish for pruned weights, so their Adam moments only decay; the update mask
        # then guarantees they do not move at all.
        updates, opt_state = self.tx.update(grads, self.opt_state, apply_mask(self.params, self.mask))
        updates = apply_mask(updates, self.mask)
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
