"""Sparse-Reg for any ``torch.nn.Module`` (``pip install 'sparse-reg[torch]'``).

The same object as :class:`sparse_reg.SparseReg`, for PyTorch agents::

    from sparse_reg.torch import SparseReg, Schedule

    sparse = SparseReg({"actor": actor, "critic": critic}, losses={"actor": actor_loss, "critic": critic_loss},
                       sparsity=0.95, schedule=Schedule(every=5_000, until=200_000),
                       targets={"critic": critic_target}, optimizers=[actor_opt, critic_opt])
    ...
    sparse.maybe_refresh(step, batch)        # in the training loop, before the update

- Masks are applied in the forward pass by ``torch.nn.utils.parametrize``: ``layer.weight`` *is*
  ``θ ⊙ m`` (the stored tensor is ``layer.parametrizations.weight.original``), so every forward
  pass, evaluation included, runs the sparse network; nothing in the module changes. A target
  copy named in ``targets`` runs with the *online* network's mask (the same tensor).
- Pruned weights are frozen, not zeroed: their gradient is zero (chain rule through ``θ ⊙ m``),
  and each optimiser in ``optimizers`` (or given to :meth:`SparseReg.optimizer`) puts them back
  bit for bit after every ``step()``, so Adam's momentum and (decoupled or L2) weight decay
  cannot move them. Masking the gradient alone is not enough: Adam's moments move them.
- A refresh scores every weight with SNIP, ``|θ · ∂L/∂θ|``, on the full network (its masks set to
  all ones, the other networks masked as they are), with that network's own loss, then keeps
  the global top-k per network: ``k = max(1, round(keep · n))`` over its prunable entries
  (``nn.Linear`` weights by default). Ties go to the entry that comes first in the order
  shared with the JAX side: prunable tensors in registration order, each in the layout of a
  Flax kernel (``(in, out)`` for a Linear weight: its transpose, row-major), so that the same
  weights and batch give the same masks in both frameworks.
"""

from __future__ import annotations

try:
    import torch
except ImportError:  # pragma: no cover - exercised without torch installed
    raise ImportError("sparse_reg.torch needs PyTorch: pip install 'sparse-reg[torch]'") from None

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from torch import nn
from torch.nn.utils import parametrize

from .sparsity import Schedule, _keep_fraction

__all__ = ["Schedule", "SparseReg", "is_linear_weight", "topk_masks"]

TorchPrunable = Callable[[str, torch.Tensor, nn.Module], bool]  # (parameter name, tensor, its module) -> prunable?


def is_linear_weight(name: str, param: torch.Tensor, module: nn.Module) -> bool:
    """The default prunable predicate: the weight matrix of an ``nn.Linear``."""
    return isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] == "weight"


class _Mask(nn.Module):
    """The parametrization ``θ -> θ ⊙ m``; ``m`` is a buffer (moves with ``.to()``, saved in ``state_dict``)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


@dataclass
class _Entry:
    name: str  # "0.weight", as in the module's state_dict before Sparse-Reg
    module: nn.Module
    attr: str  # "weight"
    mask: torch.Tensor

    @property
    def original(self) -> torch.nn.Parameter:
        return self.module.parametrizations[self.attr].original


# --------------------------------------------------------------------------------------
# Top-k with the JAX side's tie order
# --------------------------------------------------------------------------------------


def _jax_order(t: torch.Tensor) -> list[int]:
    """The permutation from torch's layout to Flax's: (out, in, *k) -> (*k, in, out)."""
    return [*range(2, t.ndim), 1, 0] if t.ndim >= 2 else list(range(t.ndim))


def topk_masks(scores: list[torch.Tensor], *, sparsity: float | None = None, keep: float | None = None,
               groups: list[Any] | None = None) -> list[torch.Tensor]:
    """0/1 masks keeping the ``k = max(1, round(keep · n))`` highest scores over all tensors together.

    Ties go to the entry first in flatten order, each tensor flattened in Flax's layout
    (a Linear weight transposed), as :func:`sparse_reg.topk_masks` does. ``groups``: one top-k
    per distinct value (per-head), ``groups[i]`` the head of ``scores[i]``.
    """
    keep_fraction = _keep_fraction(sparsity, keep)
    if groups is not None:
        masks: list[torch.Tensor | None] = [None] * len(scores)
        for head in dict.fromkeys(groups):
            index = [i for i, g in enumerate(groups) if g == head]
            for i, m in zip(index, topk_masks([scores[i] for i in index], keep=keep_fraction)):
                masks[i] = m
        return masks  # type: ignore[return-value]
    permuted = [s.detach().permute(*_jax_order(s)) for s in scores]
    flat = torch.cat([p.reshape(-1) for p in permuted])
    k = max(1, int(round(keep_fraction * flat.numel())))
    kept = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    kept[torch.sort(flat, descending=True, stable=True).indices[:k]] = True  # stable: ties to the lower index
    masks, offset = [], 0
    for s, p in zip(scores, permuted):
        block = kept[offset: offset + p.numel()].reshape(p.shape)
        inverse = [0] * s.ndim
        for i, axis in enumerate(_jax_order(s)):
            inverse[axis] = i
        masks.append(block.permute(*inverse).to(s.dtype).contiguous())
        offset += p.numel()
    return masks


# --------------------------------------------------------------------------------------
# The object
# --------------------------------------------------------------------------------------


class SparseReg:
    """Sparse-Reg for the named ``torch.nn.Module`` networks of one agent.

    ``networks``: ``{name: module}``. ``losses``: ``{name: loss(batch) -> loss or (loss, ...)}``,
    the loss each network is trained with (a closure over your agent, as in your update).
    ``sparsity``: fraction of prunable entries pruned per network (0: dense, never refreshes).
    ``schedule``: :class:`Schedule` (default every 5k steps until 200k; ``Schedule.at_init()``
    = SFI). ``targets``: ``{name: module or [modules]}``, target copies run with the online
    mask. ``optimizers``: every optimiser that steps these networks (more with
    :meth:`optimizer`). ``is_prunable(name, param, module)``: default :func:`is_linear_weight`.
    ``per_head``: networks scored with one top-k per top-level child (``q1`` / ``q2`` of a twin
    critic); the default is one global top-k per network, as the paper.
    """

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        losses: Mapping[str, Callable[[Any], Any]],
        *,
        sparsity: float = 0.95,
        schedule: Schedule = Schedule(),
        targets: Mapping[str, nn.Module | Iterable[nn.Module]] | None = None,
        optimizers: Iterable[torch.optim.Optimizer] = (),
        is_prunable: TorchPrunable | None = None,
        per_head: Iterable[str] = (),
    ):
        if set(losses) != set(networks):
            raise ValueError(f"SparseReg: one loss per network: networks {sorted(networks)}, losses {sorted(losses)}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"SparseReg: schedule must be a Schedule, got {type(schedule).__name__}")
        _keep_fraction(sparsity, None)  # checks it
        self.sparsity, self.schedule = float(sparsity), schedule
        self.networks, self.losses = dict(networks), dict(losses)
        self.per_head = set(per_head)
        if self.per_head - set(networks):
            raise ValueError(f"SparseReg: per_head names {sorted(self.per_head - set(networks))}, not networks")
        predicate = is_prunable or is_linear_weight
        self.entries: dict[str, list[_Entry]] = {}
        for net_name, net in self.networks.items():
            found = [(f"{module_name}.{attr}" if module_name else attr, module, attr, param)
                     for module_name, module in net.named_modules()
                     for attr, param in module.named_parameters(recurse=False)]
            entries = []
            for name, module, attr, param in found:  # registration order: the tie order, as a Flax params tree
                if predicate(name, param, module):
                    mask = torch.ones_like(param, requires_grad=False)
                    parametrize.register_parametrization(module, attr, _Mask(mask))
                    entries.append(_Entry(name, module, attr, mask))
            if not entries:
                raise ValueError(f"SparseReg: network {net_name!r} has no prunable weights (nn.Linear weights by "
                                 "default); pass is_prunable=lambda name, param, module: ... to choose")
            self.entries[net_name] = entries
        for net_name, copies in (targets or {}).items():
            if net_name not in self.networks:
                raise ValueError(f"SparseReg: targets names {net_name!r}, which is not a network")
            for target in [copies] if isinstance(copies, nn.Module) else list(copies):
                self._share_masks(net_name, target)
        self.last_stats: dict | None = None
        self._hooked: set[int] = set()
        self._at_refresh: dict[int, torch.Tensor] = {}  # stored weights at the last refresh (the drift check)
        for opt in optimizers:
            self.optimizer(opt)

    def _share_masks(self, net_name: str, target: nn.Module) -> None:
        modules = dict(target.named_modules())
        for entry in self.entries[net_name]:
            module_name = entry.name.rsplit(".", 1)[0] if "." in entry.name else ""
            module = modules.get(module_name)
            if module is None:
                raise ValueError(f"SparseReg: target of {net_name!r} has no module {module_name!r}")
            if parametrize.is_parametrized(module, entry.attr):  # a deepcopy made after SparseReg: share the mask
                module.parametrizations[entry.attr][0].mask = entry.mask
            else:
                parametrize.register_parametrization(module, entry.attr, _Mask(entry.mask))

    # ------------------------------------------------------------------ optimisers: frozen, not zeroed

    def optimizer(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Make ``opt.step()`` leave every pruned weight bit-identical; returns ``opt``."""
        if id(opt) in self._hooked:
            return opt
        ids = {id(p) for group in opt.param_groups for p in group["params"]}
        entries = [e for es in self.entries.values() for e in es if id(e.original) in ids]
        saved: list[torch.Tensor] = []

        def before(optimizer, args, kwargs):
            saved[:] = [e.original.detach().clone() for e in entries]

        @torch.no_grad()
        def after(optimizer, args, kwargs):
            for e, old in zip(entries, saved):
                e.original.copy_(torch.where(e.mask.bool(), e.original, old))
            saved.clear()

        opt.register_step_pre_hook(before)
        opt.register_step_post_hook(after)
        self._hooked.add(id(opt))
        return opt

    # ------------------------------------------------------------------ refreshing

    def due(self, step: int) -> bool:
        return self.sparsity > 0 and self.schedule.due(step)

    def maybe_refresh(self, step: int, batch: Any) -> bool:
        """New masks if the schedule has a refresh at ``step``; returns whether it refreshed."""
        if not self.due(step):
            return False
        self.refresh(batch)
        return True

    def scores(self, name: str, batch: Any) -> list[torch.Tensor]:
        """SNIP scores ``|θ · ∂L/∂θ|`` of network ``name``'s prunable tensors, its masks set to all ones."""
        entries = self.entries[name]
        old = [e.mask.clone() for e in entries]
        try:
            for e in entries:
                e.mask.fill_(1.0)
            with torch.enable_grad():
                out = self.losses[name](batch)
                loss = out[0] if isinstance(out, (tuple, list)) else out
                grads = torch.autograd.grad(loss, [e.original for e in entries], allow_unused=True)
        finally:
            for e, m in zip(entries, old):
                e.mask.copy_(m)
        return [(e.original.detach() * (torch.zeros_like(e.original) if g is None else g)).abs()
                for e, g in zip(entries, grads)]

    def new_masks(self, name: str, batch: Any) -> list[torch.Tensor]:
        scores = self.scores(name, batch)
        groups = [e.name.split(".", 1)[0] for e in self.entries[name]] if name in self.per_head else None
        return topk_masks(scores, sparsity=self.sparsity, groups=groups)

    @torch.no_grad()
    def refresh(self, batch: Any) -> None:
        """New masks for every network now, whatever the step (each scored against the same agent)."""
        if self.sparsity == 0:
            return
        self._check_frozen()
        new = {name: self.new_masks(name, batch) for name in self.networks}
        stats = {}
        for name, masks in new.items():
            total = sum(m.numel() for m in masks)
            changed = sum(int((e.mask != m).sum()) for e, m in zip(self.entries[name], masks))
            for e, m in zip(self.entries[name], masks):
                e.mask.copy_(m)
            stats[name] = {"sparsity": 1 - sum(float(m.sum()) for m in masks) / total, "changed": changed / total}
        self.last_stats = stats
        self._at_refresh = {id(e): e.original.detach().clone() for es in self.entries.values() for e in es}

    def _check_frozen(self) -> None:
        """Warn if a pruned weight moved since the last refresh: an optimiser Sparse-Reg does not know of."""
        moved = [f"{name}/{e.name}" for name, es in self.entries.items() for e in es if id(e) in self._at_refresh
                 and not torch.equal(e.original[e.mask == 0], self._at_refresh[id(e)][e.mask == 0])]
        if moved:
            warnings.warn(f"Sparse-Reg: pruned weights moved since the last mask refresh ({', '.join(moved[:3])}"
                          f"{', ...' if len(moved) > 3 else ''}): give every optimiser that steps these networks to "
                          "SparseReg(optimizers=[...]) or sparse.optimizer(opt), or the pruned weights are not frozen",
                          stacklevel=3)

    # ------------------------------------------------------------------ reading and saving

    def masks(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{network: {parameter name: mask}}`` (names as in the module before Sparse-Reg, e.g. ``0.weight``)."""
        return {name: {e.name: e.mask for e in entries} for name, entries in self.entries.items()}

    def weight_sparsity(self) -> dict[str, float]:
        return {name: 1 - sum(float(e.mask.sum()) for e in es) / sum(e.mask.numel() for e in es)
                for name, es in self.entries.items()}

    def state_dict(self) -> dict:
        return {"sparsity": self.sparsity, "schedule": {"every": self.schedule.every, "until": self.schedule.until},
                "masks": {name: {k: m.detach().cpu().clone() for k, m in ms.items()} for name, ms in self.masks().items()}}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping) -> None:
        if (state["sparsity"], state["schedule"]) != (self.sparsity, {"every": self.schedule.every,
                                                                      "until": self.schedule.until}):
            raise ValueError(f"SparseReg.load_state_dict: saved with sparsity {state['sparsity']} and schedule "
                             f"{state['schedule']}, this object has {self.sparsity} and {self.schedule}")
        for name, entries in self.entries.items():
            for e in entries:
                e.mask.copy_(state["masks"][name][e.name])
        self._at_refresh = {}  # the weights are probably being loaded too: nothing to compare with
