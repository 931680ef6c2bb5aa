"""Offline RL algorithms, one module each. ``ALGORITHMS`` maps CLI names to them."""

from .awac import AWAC, AWAC_PAPER_CODE
from .base import Algorithm, Batch, Regularization
from .bc import BC
from .iql import IQL, IQL_PAPER_CODE
from .td3bc import TD3BC

# The *-paper-code variants compute what the Sparse-Reg paper's released code computes (see their
# modules' docstrings); the plain names are the algorithms as published.
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (BC, TD3BC, AWAC, IQL, AWAC_PAPER_CODE, IQL_PAPER_CODE)}


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown algorithm '{name}': choose one of {', '.join(ALGORITHMS)}") from None


__all__ = ["ALGORITHMS", "Algorithm", "Batch", "Regularization", "get_algorithm", "AWAC", "AWAC_PAPER_CODE", "BC", "IQL", "IQL_PAPER_CODE", "TD3BC"]
