"""Offline RL algorithms, one module each. ``ALGORITHMS`` maps CLI names to them."""

from .awac import AWAC
from .base import Algorithm, Batch, Regularization
from .bc import BC
from .iql import IQL
from .td3bc import TD3BC

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (BC, TD3BC, AWAC, IQL)}


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown algorithm '{name}': choose one of {', '.join(ALGORITHMS)}") from None


__all__ = ["ALGORITHMS", "Algorithm", "Batch", "Regularization", "get_algorithm", "AWAC", "BC", "IQL", "TD3BC"]
