"""sparse-reg: offline RL on small datasets with sparse sub-networks (Sparse-Reg).

Quick start::

    import sparse_reg as sr

    data = sr.load_dataset("halfcheetah-expert-v0")           # or a .hdf5 / .npz path, or a Minari id
    config = sr.RunConfig(algo="iql", size=10_000, sparsity="auto", steps=100_000)
    summary = sr.train(config, out="runs/iql-sparse", dataset=data)
    agent = sr.load_agent("runs/iql-sparse")
    actions = agent.act(observations)

``sparsity=0`` trains the dense baseline; everything else is the same.
"""

from .algorithms import ALGORITHMS, get_algorithm
from .data import Dataset, DatasetError, load_dataset
from .sparsity import SparseRegConfig, refresh_masks, snip_scores, topk_masks
from .training.config import RunConfig
from .training.trainer import Agent, load_agent, train

__all__ = [
    "ALGORITHMS",
    "Agent",
    "Dataset",
    "DatasetError",
    "RunConfig",
    "SparseRegConfig",
    "get_algorithm",
    "load_agent",
    "load_dataset",
    "refresh_masks",
    "snip_scores",
    "topk_masks",
    "train",
]
