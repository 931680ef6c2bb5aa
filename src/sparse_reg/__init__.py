"""sparse-reg: offline RL on small datasets with sparse sub-networks (Sparse-Reg).

Quick start::

    import sparse_reg as sr

    data = sr.load_dataset("halfcheetah-expert-v0")           # or a .hdf5 / .npz path, or a Minari id
    config = sr.RunConfig(algo="iql", size=10_000, sparsity="auto", steps=100_000)
    summary = sr.train(config, out="runs/iql-sparse", dataset=data)
    agent = sr.load_agent("runs/iql-sparse")
    actions = agent.act(data.observations[:5])                 # raw observations in, actions out

``sparsity=0`` trains the dense baseline; everything else is the same.

Sparse-Reg in an agent of your own (Flax TrainStates, any optax optimiser), one object per agent::

    sparse = sr.SparseReg({"actor": actor_loss, "critic": critic_loss}, sparsity=0.95,
                          schedule=sr.Schedule(every=5_000, until=200_000))
    tx = sparse.tx(optax.adam(3e-4))                              # each network's optimiser: pruned weights frozen
    q = sparse.apply(agent.critic, obs, act)                      # every forward pass with θ ⊙ m
    agent = sparse.maybe_refresh(step, agent, batch)              # new masks only when the schedule says so

Underneath, the functional layer on any params pytree: ``snip_masks``, ``topk_masks``,
``apply_masks``, ``masked_updates`` with ``get_masks`` / ``set_masks``, ``refresh_masks``.
PyTorch: ``sparse_reg.torch.SparseReg`` (the ``torch`` extra). See ``examples/``.
"""

from .algorithms import ALGORITHMS, get_algorithm
from .data import Dataset, DatasetError, load_dataset
from .regularizer import SparseReg, SparseRegMisuseError
from .sparsity import (
    STACKED,
    MaskedUpdatesState,
    Schedule,
    SparseRegConfig,
    apply_masks,
    dense_masks,
    first_key,
    get_masks,
    is_weight_matrix,
    masked_params,
    masked_updates,
    refresh_masks,
    set_masks,
    snip_masks,
    snip_scores,
    snip_scores_from_grads,
    topk_masks,
    weight_sparsity,
)
from .training.agent import Agent, load_agent
from .training.config import RunConfig
from .training.trainer import train

__all__ = [
    "ALGORITHMS",
    "Agent",
    "Dataset",
    "DatasetError",
    "MaskedUpdatesState",
    "RunConfig",
    "STACKED",
    "Schedule",
    "SparseReg",
    "SparseRegConfig",
    "SparseRegMisuseError",
    "apply_masks",
    "dense_masks",
    "first_key",
    "get_algorithm",
    "get_masks",
    "is_weight_matrix",
    "load_agent",
    "load_dataset",
    "masked_params",
    "masked_updates",
    "refresh_masks",
    "set_masks",
    "snip_masks",
    "snip_scores",
    "snip_scores_from_grads",
    "topk_masks",
    "train",
    "weight_sparsity",
]
