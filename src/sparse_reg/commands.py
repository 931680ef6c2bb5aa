"""What the ``sparse-reg`` subcommands print: the glue between parsed arguments and the library.

The library modules take values and return results; the tables and one-line summaries people
read in a terminal are made here (``cli.py`` only parses arguments and dispatches).
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .console import wide_console
from .data.dataset import DatasetError
from .data.reference import D4RL_REFERENCE_SCORES, GYMNASIUM_ENV_FOR_FAMILY
from .data.registry import (
    data_dir,
    dataset_path,
    is_built,
    make,
    parse_name,
    read_record,
    status,
)
from .experiments.export import export_runs
from .experiments.sweep import BUDGETS, cells, estimate_seconds, expand, list_experiments, load_experiment
from .provenance import format_duration

# ----------------------------------------------------------------------------- sparse-reg report


def report_command(
    runs_dir: str | Path,
    out: str | Path | None = None,
    paper_csv: str | Path | None = None,
    *,
    include_paper: bool = True,
    reps: int = 2000,
    seed: int = 0,
    mse_algos: tuple[str, ...] = ("bc",),
) -> int:
    """``sparse-reg report RUNS_DIR --out DIR``: write the report (default: into RUNS_DIR/report)
    and print where its index.md is."""
    from .experiments.report import write_report  # the plotting stack only when a report is made

    out = Path(out) if out else Path(runs_dir) / "report"
    index = write_report(runs_dir, out, paper_csv, include_paper=include_paper, reps=reps, seed=seed,
                         mse_algos=mse_algos)
    print(next((line for line in index.read_text().splitlines() if line.startswith("Generated")), ""))
    print(f"report: {index}")
    return 0


# ----------------------------------------------------------------------------- sparse-reg export


def export_command(runs_dir: str | Path, out: str | Path) -> int:
    """``sparse-reg export RUNS --out DEST``: copy the finished runs' results and say how many."""
    count = export_runs(runs_dir, out)
    print(f"exported {count} finished run(s) from {runs_dir} to {out} (no checkpoints, no TensorBoard files)")
    return 0


# ----------------------------------------------------------------------------- sparse-reg datasets


def datasets_list_command(root: Path | None = None, policies: Path | None = None) -> None:
    """Print a table of the project's datasets: state, size, reference scores (ours and D4RL)."""
    table = Table(title=f"sparse-reg datasets (in {root or data_dir()})")
    for column in ("name", "env", "status", "transitions", "random ref", "expert ref", "D4RL random", "D4RL expert"):
        table.add_column(
            column,
            justify="right" if "ref" in column or "D4RL" in column or column == "transitions" else "left",
            no_wrap=column == "name",
        )
    for row in status(root, policies):
        family, _ = parse_name(row.name)
        d4rl = D4RL_REFERENCE_SCORES[family]
        transitions = random_ref = expert_ref = ""
        if row.built:
            state = "[green]built[/green]"
            record = read_record(row.path)
            minari_info = record.get("minari", {})
            transitions = f"{record.get('size', minari_info.get('total_steps')) or 0:,}"
            ref = record.get("reference", {})
            random_ref = _fmt(ref.get("random", minari_info.get("ref_min_score")))
            expert_ref = _fmt(ref.get("expert", minari_info.get("ref_max_score")))
        elif row.can_build:
            state = "not built (can build)"
        else:
            state = "[dim]cannot build (no shipped policy)[/dim]"
        table.add_row(
            row.name, GYMNASIUM_ENV_FOR_FAMILY[family], state, transitions, random_ref, expert_ref,
            _fmt(d4rl.random), _fmt(d4rl.expert),
        )  # fmt: skip
    wide_console().print(table)


def datasets_make_command(
    name: str, seed: int | None = None, size: int | None = None, force: bool = False, from_buffer: bool = False
) -> list[Path]:
    """Build ``name`` (or every buildable dataset for ``"all"``) and print where each one is."""
    console = wide_console()
    if name == "all":
        names = [row.name for row in status() if row.can_build]
        if not names:
            raise DatasetError("no dataset can be built: no behaviour policy is shipped yet")
    else:
        names = [name]
    paths = []
    for each in names:
        was_built = is_built(dataset_path(each))
        path = make(each, seed=seed, size=size, force=force, from_buffer=from_buffer)
        record = read_record(path)
        ref = record.get("reference", {})
        verb = "already built" if was_built and not force else "built"
        console.print(
            f"[bold]{each}[/bold]: {verb}, {record.get('size', 0):,} transitions, "
            f"reference random {_fmt(ref.get('random'))} / expert {_fmt(ref.get('expert'))} -> {path}"
        )
        paths.append(path)
    return paths


def _fmt(value) -> str:
    return "" if value is None else f"{float(value):.1f}"


# ----------------------------------------------------------------------------- sparse-reg experiments


def _short_paper(paper: str) -> str:
    """"Figure 4, Figure 8, Figure 9" -> "Fig. 4, 8, 9"."""
    parts = [p.strip() for p in paper.split(",") if p.strip()]
    if parts and all(p.startswith("Figure ") for p in parts):
        return "Fig. " + ", ".join(p[len("Figure "):] for p in parts)
    return paper


def experiments_list_command(console=None) -> None:
    """``sparse-reg experiments list``: every packaged config with its run counts and time estimates."""
    console = console or wide_console()
    table = Table(title="Paper experiments (sparse-reg sweep NAME / reproduce NAME)")
    names = list_experiments()
    table.add_column("name", no_wrap=True, min_width=max(map(len, names), default=4))
    table.add_column("paper", no_wrap=True)
    for column in ("cells", "quick\nruns", "quick\ntime*", "paper\nruns", "paper\ntime*"):
        table.add_column(column, justify="right", no_wrap=True)
    wide = console.width >= 110  # titles only where they fit
    if wide:
        table.add_column("title", overflow="fold", ratio=1)
    for name in names:
        experiment = load_experiment(name)
        row = [name, _short_paper(experiment.paper), str(len(cells(experiment)))]
        for budget in BUDGETS:
            runs = expand(experiment, budget, "runs")
            row += [str(len(runs)), format_duration(estimate_seconds(runs))]
        table.add_row(*row, *([experiment.title] if wide else []))
    console.print(table)
    console.print("* estimated wall time on an idle 2-core CPU, one pinned process per core "
                  "(see docs/experiments.md for how)")
