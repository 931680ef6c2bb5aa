"""D4RL reference returns, so that scores on the MuJoCo locomotion tasks are comparable to papers.

Values are D4RL's ``infos.py`` REF_MIN_SCORE / REF_MAX_SCORE (identical for all v2 datasets of a
family). They are used for the gymnasium ``*-v5`` environments too: the dynamics and rewards
are the same task, which is how the paper's numbers are reported.
"""

from __future__ import annotations

import re

from .dataset import ReferenceScores

D4RL_REFERENCE_SCORES: dict[str, ReferenceScores] = {
    "halfcheetah": ReferenceScores(random=-280.178953, expert=12135.0),
    "hopper": ReferenceScores(random=-20.272305, expert=3234.3),
    "walker2d": ReferenceScores(random=1.629008, expert=4592.3),
}

GYMNASIUM_ENV_FOR_FAMILY: dict[str, str] = {
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
}

# A family name at the start of the id or of one of its "/"-separated parts, so that gymnasium
# ids ("Hopper-v5"), D4RL names ("hopper-medium-v2", "halfcheetah_expert-v2") and Minari ids
# ("mujoco/hopper/expert-v0") all match, but an unrelated name merely containing "hopper" does not.
_FAMILY_PATTERN = re.compile(r"(?:^|/)(" + "|".join(D4RL_REFERENCE_SCORES) + r")(?![a-z0-9])")


def env_family(env_id: str | None) -> str | None:
    """The D4RL locomotion family of an environment or dataset id, e.g. "HalfCheetah-v5" -> "halfcheetah"."""
    if not env_id:
        return None
    match = _FAMILY_PATTERN.search(env_id.lower())
    return match.group(1) if match else None


def reference_scores_for(env_id: str | None) -> ReferenceScores | None:
    """D4RL reference scores for the family of ``env_id``, or None for other environments."""
    family = env_family(env_id)
    return D4RL_REFERENCE_SCORES[family] if family else None


# --------------------------------------------------------------------------- which reference a run uses

REFERENCE_CHOICES = ("dataset", "d4rl")


def describe_reference(dataset) -> str:
    """Where a dataset's reference scores come from: "project" (measured when the project built it:
    its own expert policy and random episodes), "file" (stored in the file), "d4rl" (D4RL's published
    values for the task family), "dataset" (set by whoever made the Dataset), or "none"."""
    if dataset.reference is None:
        return "none"
    recorded = dataset.metadata.get("reference_source")
    if recorded:
        return recorded
    if "build_format" in dataset.metadata:  # a dataset built by sparse_reg.data.registry
        return "project"
    if dataset.reference == reference_scores_for(dataset.env_id or dataset.name):
        return "d4rl"
    return "dataset"


def resolve_reference(choice, dataset, env_id: str | None) -> tuple[ReferenceScores | None, str]:
    """The reference scores a run normalises returns with, and their source's name.

    ``choice``: "dataset" (what the data carries: see :func:`describe_reference`), "d4rl" (D4RL's
    values for the environment's family, as papers report), or explicit ``(random, expert)`` returns.
    """
    if choice == "dataset":
        return dataset.reference, describe_reference(dataset)
    if choice == "d4rl":
        reference = reference_scores_for(env_id) or reference_scores_for(dataset.name)
        if reference is None:
            raise ValueError(f"no D4RL reference scores for environment '{env_id}': use reference=\"dataset\" "
                             "or give explicit random,expert returns")
        return reference, "d4rl"
    random, expert = choice
    return ReferenceScores(float(random), float(expert)), "explicit"


def parse_reference(value):
    """A config's ``reference``: "dataset", "d4rl", or (random, expert) from a pair or "RANDOM,EXPERT"."""
    if isinstance(value, str) and value in REFERENCE_CHOICES:
        return value
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = []
    try:
        random, expert = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"reference must be 'dataset', 'd4rl' or RANDOM,EXPERT returns, got {value!r}") from None
    if not (abs(random) < float("inf") and abs(expert) < float("inf")) or expert == random:
        raise ValueError(f"reference returns must be finite with expert != random, got {random}, {expert}")
    return (random, expert)
