"""Sweep report: tables in the paper's form, aggregate curves, IQM with bootstrap CIs, BC MSE and masks.

``write_report(runs_dir, out_dir)`` finds every finished run under ``runs_dir`` (any depth: a
directory with a ``summary.json``), groups runs into cells (data kind, algorithm, size, task,
variant) x seeds and writes ``out_dir/index.md`` with everything linked from it:

* ``tables/final_return.{md,tex}`` and ``tables/normalized_score.{md,tex}``: the paper's Table 1
  form, rows size x algorithm, a column per task, each cell "dense mean ± std → sparse mean ± std"
  over seeds of the final evaluation (▲ / blue where Sparse-Reg is better, ▼ / red where worse).
  The normalised table has, under each of our rows, the paper's numbers for the same cell
  (Tables 1 and 4, D4RL ``-v2`` returns normalised with D4RL's reference scores).
* ``tables/late_normalized_score.{md,tex}``: the same table for each run's mean normalised
  score over its evaluations in the last 20% of training (ours, not the paper's: one
  evaluation of a few episodes swings a lot on small data).
* ``tables/variants.{md,tex}`` and ``tables/variants_late.{md,tex}``: one column per variant (L1, dropout,
  SFI, ...) when there are any, final and late normalised score.
* ``tables/refresh_losses.md``: each network's loss just before and after every mask refresh.
* ``tables/live_units.md``: the fraction of hidden units the masks leave alive.
* ``tables/iqm.{md,csv}``: IQM of final and of late normalised scores with 95% stratified-bootstrap CIs.
* ``tables/final_scores.csv`` and ``tables/runs.md``: one row per run (the numbers behind
  everything else, plus late and best score, action MSE, wall time and commit).
* ``figures/*.png``: learning curves (per task and aggregated over tasks), quantile bars of the
  final scores, IQM interval estimates, BC train/validation MSE, layer-wise mask sparsity and
  the fraction of each mask that changed at every refresh.

The statistics are :mod:`.statistics`'s, the runs and cells :mod:`.runs`'s, the tables
:mod:`.tables`' and the figures :mod:`.figures`'; this module puts them together and writes
``index.md``. ``sparse-reg report`` is :func:`sparse_reg.commands.report_command`.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.reference import D4RL_REFERENCE_SCORES
from ..provenance import format_duration
from .figures import (
    cell_comparison_items,
    curve_items,
    figure_groups,
    final_score_items,
    iqm_items,
    mask_items,
    mse_items,
)
from .items import Item
from .runs import (
    PAPER_CSV,
    Collection,
    Run,
    algo_name,
    collect_runs,
    count_label,
    family_name,
    group_cells,
    load_paper_table,
    relative_path,
    variant_colors,
)
from .tables import (
    iqm_estimates,
    iqm_table_item,
    live_unit_item,
    markdown_table,
    mse_table_items,
    refresh_loss_item,
    runs_table_item,
    selection_item,
    table_items,
)

INDEX_FILE = "index.md"


def write_report(
    runs_dir: str | Path,
    out_dir: str | Path,
    paper_csv: str | Path | None = None,
    *,
    include_paper: bool = True,
    reps: int = 2000,
    seed: int = 0,
    mse_algos: Sequence[str] = ("bc",),
) -> Path:
    """Write tables, figures and ``index.md`` for every run under ``runs_dir``; returns the index path.

    paper_csv: the paper's Table 1/4 CSV (default: the copy shipped with the package);
    ``include_paper=False`` leaves the paper's numbers out. ``reps``/``seed``: bootstrap
    replicates and seed (the report is deterministic for a given seed). ``mse_algos``:
    algorithms that get train/validation MSE figures (the paper shows them for BC).
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    collection = collect_runs(runs_dir, exclude=out_dir)
    runs = collection.runs
    for sub in ("tables", "figures"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    paper = load_paper_table(paper_csv or PAPER_CSV) if include_paper else {}
    colors = variant_colors({r.variant for r in runs})
    cells = group_cells(runs)

    items = table_items(runs, out_dir / "tables", paper)
    items += mse_table_items(runs, out_dir / "tables", mse_algos)
    estimates = iqm_estimates(runs, reps=reps, seed=seed)
    late_estimates = iqm_estimates(runs, reps=reps, seed=seed, metric="late_score")
    if estimates or late_estimates:
        items.append(iqm_table_item(estimates + late_estimates, out_dir / "tables", reps))
    items += refresh_loss_item(runs, out_dir / "tables")
    items += live_unit_item(runs, out_dir / "tables")
    items += selection_item(runs, out_dir / "tables", reps=reps, seed=seed)
    items.append(runs_table_item(runs, out_dir / "tables"))
    for group in figure_groups(runs):
        items += curve_items(group, cells, colors, out_dir / "figures")
        items += final_score_items(group, cells, colors, out_dir / "figures")
        if group.algo in mse_algos:
            items += mse_items(group, cells, colors, out_dir / "figures")
            items += cell_comparison_items(group, cells, colors, out_dir / "figures")
        items += mask_items(group, out_dir / "figures")
    items += iqm_items(estimates, colors, out_dir / "figures", reps)

    index = out_dir / INDEX_FILE
    index.write_text(_index_text(runs_dir, out_dir, collection, items))
    return index


def _compute_text(runs: list[Run]) -> str:
    """Which code made the runs, on which machine, and what they cost (from their summaries; older runs lack these)."""
    versions = Counter(r.summary["code_version"] for r in runs if r.summary.get("code_version"))
    walls = [float(r.summary["wall_seconds"]) for r in runs if r.summary.get("wall_seconds") is not None]
    parts = []
    if versions:
        listed = ", ".join(f"`{v}` × {n}" for v, n in versions.most_common())
        unknown = len(runs) - sum(versions.values())
        parts.append(f"Made by the code at {listed} (commit × runs)"
                     + (f"; {unknown} run(s) do not record it." if unknown else "."))
    machines = Counter(r.summary["machine"] for r in runs if r.summary.get("machine"))
    if machines:
        listed = ", ".join(f"{m} × {n}" for m, n in machines.most_common())
        unknown = len(runs) - sum(machines.values())
        parts.append(f"Run on {listed} (machine × runs)" + (f"; {unknown} run(s) do not record it." if unknown else "."))
    if walls:
        parts.append(f"Training wall time, summed over the {len(walls)} run(s) that record it: "
                     f"{format_duration(sum(walls), 1)} (median {format_duration(float(np.median(walls)), 1)} per run).")
    return " ".join(parts)


def _data_text(runs: list[Run]) -> str:
    """Which builds of each dataset the runs trained on (their summaries' data fingerprints).

    A project dataset is built on each machine from the shipped policies. A rebuild on the same
    machine is identical, but builds made on different machines have differed (the committed
    results hold runs on two builds of each expert dataset), and runs on two builds trained on
    different transitions of the same policies: they are not repeats of one another to the digit."""
    builds: dict[str, Counter] = defaultdict(Counter)
    for r in runs:
        data = r.summary.get("data") or {}
        if data.get("fingerprint"):
            builds[data.get("name") or r.config.get("dataset", "?")][data["fingerprint"]] += 1
    if not builds:
        return ""
    parts = [f"`{name}` " + ", ".join(f"`{fp}` × {n}" for fp, n in counts.most_common())
             for name, counts in sorted(builds.items())]
    unrecorded = len(runs) - sum(sum(c.values()) for c in builds.values())
    text = "Data (dataset, fingerprint of its transitions × runs): " + "; ".join(parts) + "."
    if unrecorded:
        text += f" {unrecorded} run(s) do not record it."
    several = [name for name, counts in sorted(builds.items()) if len(counts) > 1]
    if several:
        text += (f" **{', '.join(f'`{n}`' for n in several)}: runs trained on more than one build** (datasets built "
                 "on different machines can differ), so equal settings need not give equal numbers; each run's "
                 "fingerprint is in [final_scores.csv](tables/final_scores.csv).")
    return text


def _index_text(runs_dir: Path, out_dir: Path, collection: Collection, items: list[Item]) -> str:
    runs = collection.runs
    n_cells = len({r.cell for r in runs})
    lines = [
        "# Sparse-Reg sweep report",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} from `{runs_dir}`: {len(runs)} finished run(s) in "
        f"{n_cells} cell(s) (data, algorithm, size, task, variant), {len(collection.skipped)} skipped. "
        "Per-run numbers: [runs.md](tables/runs.md), [final_scores.csv](tables/final_scores.csv).",
        "",
    ]
    for text in (_compute_text(runs), _data_text(runs)):
        if text:
            lines += [text, ""]
    if runs:
        lines += ["Cells and seeds:", ""]
        counts = defaultdict(list)
        for r in runs:
            counts[r.cell].append(r.seed)
        header = ["Data", "Algorithm", "Size", "Task", "Variant", "Seeds"]
        rows = [[c[0], algo_name(c[1]), count_label(c[2]), family_name(c[3]), c[4], ", ".join(map(str, sorted(s)))]
                for c, s in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0, kv[0][3], kv[0][4]))]
        lines += _collapsible(f"{len(rows)} cells", markdown_table(header, rows), len(rows) > 30)
        references = defaultdict(set)
        for r in runs:
            ref = r.summary.get("reference_scores")
            if ref:
                references[r.family].add((round(float(ref["random"]), 3), round(float(ref["expert"]), 3)))
        if references:
            lines += ["Normalised score = 100 × (return − random) / (expert − random), with each run's own "
                      "reference scores (as stored in its summary; D4RL's for comparison):", ""]
            for family, refs in sorted(references.items()):
                d4rl = D4RL_REFERENCE_SCORES.get(family)
                ours = "; ".join(f"random {a:g} / expert {b:g}" for a, b in sorted(refs))
                theirs = f" (D4RL: {d4rl.random:g} / {d4rl.expert:g})" if d4rl else ""
                lines.append(f"- {family_name(family)}: {ours}{theirs}")
            lines.append("")
    if collection.skipped:
        lines += ["## Skipped", ""]
        lines += [f"- `{relative_path(path, runs_dir)}`: {reason}" for path, reason in collection.skipped]
        lines.append("")
    headings = []
    for item in items:
        if item.heading not in headings:
            headings.append(item.heading)
    for heading in headings:
        lines += [f"## {heading}", ""]
        entries = []
        mine = [i for i in items if i.heading == heading]
        for item in mine:
            link = item.path.relative_to(out_dir).as_posix()
            if item.path.suffix == ".png":
                entries += [f"![{item.path.stem}]({link})", "", f"*{item.caption}*", ""]
            else:
                entries += [f"[{link}]({link}): {item.caption}", ""]
                if item.inline:
                    entries += [item.inline, ""]
        lines += _collapsible(f"{len(mine)} figures", "\n".join(entries), heading == "Masks" and len(mine) > 4)
    if not runs:
        lines += ["No finished runs found.", ""]
    return "\n".join(lines)


def _collapsible(summary: str, body: str, collapse: bool) -> list[str]:
    """Markdown lines; long blocks go inside <details> (blank lines keep the Markdown inside rendered)."""
    if not collapse:
        return [body, ""]
    return [f"<details><summary>{summary}</summary>", "", body, "", "</details>", ""]
