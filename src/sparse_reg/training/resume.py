"""What a resume continues with, checked before anything in the run directory changes.

A run continues as the run directory records it: ``config.json`` (checked against the config its
checkpoint was trained with), the Sparse-Reg settings resolved when it started (``sparse_reg`` in
config.json; runs of older versions resolve them again), the data it was trained on (its
fingerprint) and the logs up to the checkpoint's step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..algorithms import Algorithm
from ..sparsity import SparseRegConfig, mask_statistics
from .checkpoint import Checkpoint
from .config import RunConfig, recorded_sparse_reg
from .run_directory import CONFIG_FILE, RunFileError, check_run_directory, read_json


def resumed_config(out: Path, config: RunConfig, checkpoint: Checkpoint) -> RunConfig:
    """The config a resume of ``out`` continues with: the one ``config.json`` records, checked against
    the one its checkpoint was trained with (a run never continues as another one); ``config``
    only says how to run it (``frozen_layout``: speed, not results)."""
    path = out / CONFIG_FILE
    recorded = _recorded_config(out)
    saved = checkpoint.info.get("config")  # checkpoints of older versions do not record it
    if saved is not None:
        changed = config_differences(RunConfig.from_dict(saved), recorded)
        if changed:
            raise RunFileError(
                f"cannot resume: {path} no longer describes the run its checkpoint holds: "
                f"{', '.join(f'{k} {new!r} (the checkpoint: {old!r})' for k, (old, new) in changed.items())}; "
                "put back the original, or start the run again with --overwrite"
            )
    return dataclasses.replace(recorded, frozen_layout=config.frozen_layout)


def _recorded_config(out: Path) -> RunConfig:
    """``out``'s config.json, or RunFileError saying how to recover."""
    try:
        return RunConfig.of_run(out)
    except FileNotFoundError:
        raise RunFileError(f"cannot resume: {out / CONFIG_FILE} is missing: put it back, or start the run again "
                           "with --overwrite") from None
    except RunFileError as error:
        raise RunFileError(f"cannot resume: {error}; put back an intact copy, or start the run again with "
                           "--overwrite") from None


def resumed_sparse_reg(out: Path) -> SparseRegConfig | None:
    """The Sparse-Reg settings ``out``'s config.json recorded when the run started (None: a run of a
    version that did not record them; its settings are resolved from its config again)."""
    record = read_json(out / CONFIG_FILE)  # read and checked by resumed_config before this
    return recorded_sparse_reg(record) if isinstance(record, dict) else None


def config_differences(old: RunConfig, new: RunConfig) -> dict[str, tuple]:
    """The fields in which two configs train different runs: name -> (old value, new value)."""
    a, b = old.result_fields(), new.result_fields()

    def same(key: str) -> bool:  # the command line gives a sparsity as text ("0.9"), Python as a number
        x, y = a.get(key), b.get(key)
        if key == "sparsity" and "auto" not in (x, y):
            return float(x) == float(y)
        return x == y

    return {k: (a.get(k), b.get(k)) for k in list(a) + [k for k in b if k not in a] if not same(k)}


def resume_config(out: str | Path, given: dict[str, Any], config: RunConfig) -> RunConfig:
    """The config to resume ``out`` with when ``given`` (field -> value) were set again, e.g. on the
    command line: the recorded one, with ``given`` applied where they do not change what the run
    computes (``frozen_layout``); ValueError naming those that would, or a damaged config.json.
    Where there is no run to resume, the error the resume would give."""
    out = Path(out)
    check_run_directory(out, resume=True, overwrite=False)
    recorded = _recorded_config(out)
    wanted = RunConfig.from_dict({**recorded.to_dict(), **given})
    changed = config_differences(recorded, wanted)
    if changed:
        raise ValueError(
            f"cannot resume {out} with other settings than it was started with: "
            f"{', '.join(f'{k} {new!r} (the run: {old!r})' for k, (old, new) in changed.items())}; drop them "
            "(--resume continues the run as it was started) or start it again with --overwrite"
        )
    return wanted


def check_same_data(out: Path, recorded: dict | None, data_record: dict) -> None:
    """Refuse to resume a run on other data than it was trained on (runs of older versions did not
    record their data's fingerprint and are not checked)."""
    if not recorded or "fingerprint" not in recorded or recorded["fingerprint"] == data_record["fingerprint"]:
        return
    raise ValueError(
        f"cannot resume {out}: it was trained on '{recorded.get('name')}' ({recorded.get('transitions')} transitions, "
        f"fingerprint {recorded['fingerprint']}), not on this data '{data_record['name']}' "
        f"({data_record['transitions']} transitions, fingerprint {data_record['fingerprint']})"
    )


def logged_steps(config: RunConfig, sparse_reg: SparseRegConfig, step: int) -> tuple[list[int], list[int]]:
    """The steps a run has logged when its checkpoint is at ``step``: its evaluations up to ``step``,
    and its mask refreshes before it."""
    evaluations = list(range(config.eval_every, step + 1, config.eval_every))
    if step == config.steps and step % config.eval_every:
        evaluations.append(step)
    refreshes = (
        [s for s in range(0, step, sparse_reg.interval) if sparse_reg.refresh_due(s)] if sparse_reg.enabled else []
    )
    return evaluations, refreshes


def mask_layers(state: Any, algorithm: Algorithm) -> list[tuple[str, str]]:
    """(network, layer) of each row a mask refresh logs, in order (masks.csv)."""
    return [(name, layer) for name in algorithm.losses for layer in mask_statistics(getattr(state, name).mask, None)]
