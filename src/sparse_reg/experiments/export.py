"""Copy the small, shareable files of finished runs: what a report needs, without checkpoints.

A finished run directory holds megabytes of checkpoint and TensorBoard files next to a few
kilobytes of results. ``export_runs(RUNS, DEST)`` mirrors every *finished* run under ``RUNS``
(a directory with a ``summary.json``) into ``DEST`` with only its config, summary, metrics,
mask statistics and tags, plus the ``sweep.json`` records of the sweeps; ``sparse-reg report
DEST`` then gives the same report as ``sparse-reg report RUNS``. This is how results are
committed under ``docs/results/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..training.logging import MASKS_FILE, METRICS_FILE
from ..training.run_directory import CONFIG_FILE, SUMMARY_FILE
from .sweep import SWEEP_FILE, TAGS_FILE

RUN_FILES = (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, MASKS_FILE, TAGS_FILE)


def export_runs(runs_dir: str | Path, out_dir: str | Path) -> int:
    """Copy the result files of every finished run under ``runs_dir`` into ``out_dir``; returns the count.

    Relative paths are kept. Files already in ``out_dir`` are overwritten (a re-export after
    more runs finished updates it); runs without a summary (unfinished) are left out.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"no runs directory {runs_dir}")
    if out_dir.resolve().is_relative_to(runs_dir.resolve()):
        raise ValueError(f"export into {out_dir}, inside {runs_dir}, would export the export")
    exported = 0
    for summary in sorted(runs_dir.rglob(SUMMARY_FILE)):
        run = summary.parent
        target = out_dir / run.relative_to(runs_dir)
        target.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        exported += 1
    for record in runs_dir.rglob(SWEEP_FILE):
        target = out_dir / record.relative_to(runs_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(record, target)
    return exported
