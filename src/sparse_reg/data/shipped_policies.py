"""The behaviour policies shipped inside the package, one directory per family
(``sparse_reg/data/policies/<family>/``, written by ``scripts/ship_behaviour_policies.py``): the
expert and medium policies, the medium-replay buffer prefix, thinned training checkpoints for
expert-replay and the ``provenance.json`` record of where each came from.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .behaviour_policy import BehaviourPolicy
from .dataset import DatasetError

POLICY_DIR_ENV = "SPARSE_REG_POLICY_DIR"
PROVENANCE_FILE = "provenance.json"
MEDIUM_REPLAY_FILE = "medium_replay.npz"  # the true replay buffer's first medium_step transitions


def policy_dir() -> Path:
    """Where the shipped behaviour policies live (the package's ``data/policies`` by default)."""
    override = os.environ.get(POLICY_DIR_ENV)
    return Path(override).expanduser() if override else Path(__file__).resolve().parent / "policies"


@dataclass(frozen=True)
class ShippedPolicies:
    """What ``scripts/ship_behaviour_policies.py`` wrote for one family."""

    family: str
    root: Path
    provenance: dict

    @classmethod
    def find(cls, family: str, root: Path | None = None) -> "ShippedPolicies | None":
        directory = (root or policy_dir()) / family
        provenance_file = directory / PROVENANCE_FILE
        if not provenance_file.is_file():
            return None
        try:
            provenance = json.loads(provenance_file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DatasetError(f"{provenance_file}: unreadable provenance record ({error})") from None
        return cls(family, directory, provenance)

    def role(self, role: str) -> dict:
        try:
            return self.provenance[role]
        except KeyError:
            raise DatasetError(f"{self.root / PROVENANCE_FILE}: no '{role}' entry") from None

    def policy_file(self, role: str) -> Path:
        return self.root / self.role(role).get("file", f"{role}.npz")

    def medium_replay_file(self) -> Path:
        """The shipped prefix of the true replay buffer (medium-replay)."""
        return self.root / self.provenance.get("medium_replay", {}).get("file", MEDIUM_REPLAY_FILE)

    def replay_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, file) of the shipped training checkpoints (for expert-replay), in training order."""
        files = sorted((self.root / "replay").glob("step_*.npz"))
        return sorted((int(f.stem.split("_")[1]), f) for f in files)

    def can_build(self, kind: str) -> bool:
        if "expert" not in self.provenance:  # every dataset needs the expert's reference score
            return False
        if kind in ("expert", "medium"):
            return kind in self.provenance and self.policy_file(kind).is_file()
        if kind == "medium-replay":
            return "medium" in self.provenance and self.medium_replay_file().is_file()
        return bool(self.replay_checkpoints())  # expert-replay

    def fingerprint(self, kind: str | None = None) -> str:
        """Identifies what a dataset of ``kind`` is built from, so re-shipping one policy rebuilds
        only the datasets made from it: the provenance entries of its roles (the expert's always,
        for the reference score) and the bytes of the files it reads. Without ``kind``: the whole
        provenance record (how builds made before per-kind fingerprints were marked)."""
        if kind is None:
            return hashlib.sha256(json.dumps(self.provenance, sort_keys=True).encode()).hexdigest()[:16]
        digest = hashlib.sha256(json.dumps(role_entries(self.provenance, kind), sort_keys=True).encode())
        for path in self._source_files(kind):
            digest.update(path.name.encode())
            digest.update(path.read_bytes() if path.is_file() else b"missing")
        return digest.hexdigest()[:16]

    def _source_files(self, kind: str) -> list[Path]:
        if kind in ("expert", "medium"):
            return [self.policy_file(kind)]
        if kind == "medium-replay":
            return [self.medium_replay_file()]
        return [path for _, path in self.replay_checkpoints()]  # expert-replay

    def is_source_of(self, record: dict, kind: str) -> bool:
        """Whether a build record says the dataset was made from what is shipped now."""
        built_from = record.get("policy_fingerprint")
        return built_from in (self.fingerprint(kind), self.fingerprint())

    def expert_return(self) -> float:
        """The expert policy's deterministic mean return, as measured when it was shipped."""
        expert = self.role("expert")
        for key in ("mean_return", "eval_mean_return"):
            if key in expert:
                return float(expert[key])
        raise DatasetError(f"{self.root / PROVENANCE_FILE}: the 'expert' entry records no mean_return")


def load_policy(path: Path) -> BehaviourPolicy:
    """Load a shipped policy, computing in float32 even if it was stored as float16."""
    return BehaviourPolicy.load(path).astype(np.float32)


def role_entries(provenance: dict, kind: str) -> dict:
    """The provenance entries of the policies and files a dataset of ``kind`` is made from."""
    roles = ("expert", "medium") if kind.endswith("-replay") else (kind, "expert")
    extra = {"medium-replay": "medium_replay", "expert-replay": "replay"}.get(kind)
    return {key: provenance[key] for key in dict.fromkeys((*roles, extra)) if key in provenance}
