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
