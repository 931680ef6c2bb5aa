"""Paper experiments as data: every packaged config expands as documented; sweeps skip, resume,
record failures and run on Ray (a real local Ray instance)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sparse_reg import provenance
from sparse_reg.cli import main
from sparse_reg.data import registry
from sparse_reg.experiments import sweep
from sparse_reg.experiments.sweep import (
    CONFLICT,
    ERROR_FILE,
    FRESH,
    RESUME,
    SKIP,
    TAGS_FILE,
    ExperimentError,
    expand,
    load_experiment,
    run_state,
    run_sweep,
    select,
)
from sparse_reg.training.checkpoint import save_checkpoint
from sparse_reg.training.config import RunConfig

# cells per packaged config, and seeds per budget (quick, paper)
EXPECTED_CELLS = {
    "figure1": 24, "figure2": 32, "figure3": 48, "figure4": 49, "figure5": 3, "figure6": 13,
    "table1": 36, "table2": 10, "table3": 25, "table4": 81, "table5": 20, "table1-paper-code": 24,
    "figure2-bc": 36, "figure2-long": 12,
}
QUICK_SEEDS = {"figure4": 2}


def test_every_paper_config_is_packaged():
    assert sweep.list_experiments() == sorted(EXPECTED_CELLS)


@pytest.mark.parametrize("budget", ["quick", "paper"])
@pytest.mark.parametrize("name", sorted(EXPECTED_CELLS))
def test_packaged_config_expands(name, budget, tmp_path):
    experiment = load_experiment(name)
    runs = expand(experiment, budget, tmp_path)
    seeds = 5 if budget == "paper" else QUICK_SEEDS.get(name, 3)
    assert len(runs) == EXPECTED_CELLS[name] * seeds
    assert len({r.cell.id for r in runs}) == EXPECTED_CELLS[name]
    assert len({r.out for r in runs}) == len(runs)  # unique run directories
    b = experiment.budgets[budget]
    for run in runs:
        c = run.job.config
        assert run.out == tmp_path / name / run.cell.id / f"seed_{run.seed}"
        assert (c.steps, c.eval_every, c.eval_episodes, c.seed) == (b.steps, b.eval_every, b.eval_episodes, run.seed)
        assert c.dataset in registry.known_names()
        assert c.dataset in run.cell.id and c.algo in run.cell.id
        # the cell names the data budget: an early-stop variant trains on 4k of it and validates on 1k
        data_budget = c.size + c.validation_size if c.keep_lowest_validation_mse else c.size
        assert str(data_budget) in run.cell.id
        assert run.cell.variant and run.cell.id.endswith(run.cell.variant)
    if budget == "paper":
        assert b.steps == (800_000 if name == "figure6" else 1_000_000) and b.eval_every == 5_000
        assert b.eval_episodes == 10 and not b.base
    else:
        assert b.cuts and b.steps < 1_000_000


def test_table1_long_budget_selects_the_value_based_cells_at_5k(tmp_path):
    # 300k steps, masks every 5k during the first 20% (as 200k of 1M), 3 seeds; meant for a subset.
    runs = select(expand(load_experiment("table1"), "long", tmp_path), ["size=5k", "algo=iql"])
    assert len(runs) == 3 * 2 * 3
    for run in runs:
        c = run.job.config
        assert (c.algo, c.size, c.steps, c.mask_interval, c.mask_until) == ("iql", 5000, 300_000, 5_000, 60_000)


def test_cell_ids_are_readable_and_unique_across_configs():
    ids = [r.cell.id for r in expand(load_experiment("table1"), "quick", "runs")]
    assert "iql-halfcheetah-expert-v0-5000-sparse" in ids
    assert "td3bc-walker2d-expert-v0-10000-dense" in ids
    for name in sweep.list_experiments():
        ids = [c.id for c in sweep.cells(load_experiment(name))]
        assert len(ids) == len(set(ids)), name
        assert all(i.replace("-", "").replace(".", "").replace("_", "").isalnum() for i in ids), ids


def test_variants_and_budget_overrides():
    def configs(name, budget="quick"):
        return {(r.cell.variant, r.job.config.dataset, r.job.config.size): r.job.config
                for r in expand(load_experiment(name), budget, "runs") if r.seed == 0}

    t1 = configs("table1")
    assert t1[("dense", "hopper-expert-v0", 5000)].sparsity == 0.0
    assert t1[("sparse", "hopper-expert-v0", 5000)].sparsity == "auto"
    assert t1[("sparse", "hopper-expert-v0", 5000)].mask_until == 6_000  # quick compresses the schedule
    assert configs("table1", "paper")[("sparse", "hopper-expert-v0", 5000)].mask_until == 200_000
    f5 = configs("figure5")
    assert f5[("sfi", "halfcheetah-expert-v0", 5000)].mask_until == 0  # the variant beats the budget
    f2 = {variant: c for (variant, dataset, _), c in configs("figure2").items() if dataset == "walker2d-medium-v0"}
    assert f2["l1"].l1 == 1e-4 and f2["dropout"].dropout == 0.1 and f2["wd"].weight_decay == 0.01
    assert f2["specnorm"].spectral_norm and f2["layernorm"].layer_norm and f2["sparse"].sparsity == "auto"
    assert f2["dense"].sparsity == 0.0 and f2["l1"].sparsity == 0.0
    assert configs("table2")[("hd64", "hopper-expert-v0", 5000)].hidden_dims == (64, 64)
    assert configs("table3")[("sparse20", "halfcheetah-expert-v0", 100000)].sparsity == 0.2
    l1 = [k for k in configs("figure4") if k[0] == "l1"]
    assert l1 == [("l1", "halfcheetah-expert-v0", 50000)]  # Figure 4's L1 only where the paper has it


def test_only_selects_runs_by_axis_variant_seed_and_cell():
    runs = expand(load_experiment("figure4"), "quick", "runs")  # 49 cells x seeds 0, 1
    assert len(runs) == 98
    # hopper-medium: 4 sizes x (dense, sparse) x 2 seeds
    assert len(select(runs, ["dataset=hopper-medium-v0"])) == 16
    assert {(r.cell.variant, r.seed) for r in select(runs, ["dataset=hopper-medium-v0", "size=5k", "seed=0"])} \
        == {("dense", 0), ("sparse", 0)}
    # wildcards and lists: 3 expert datasets x 2 sizes x dense x 2 seeds
    chosen = select(runs, ["dataset=*-expert-v0", "size=50000,100k", "variant=dense"])
    assert len(chosen) == 12 and {r.job.config.size for r in chosen} == {50_000, 100_000}
    assert [r.cell.id for r in select(runs, ["variant=l1", "seed=1"])] == ["bc-halfcheetah-expert-v0-50000-l1"]
    assert len(select(runs, ["cell=bc-walker2d-*-5000-sparse"])) == 4  # expert and medium, 2 seeds
    assert select(runs, []) == runs
    for bad, message in [(["dataset"], "expected KEY=VALUE"), (["env=hopper"], "no key 'env'"),
                         (["size=7k"], "matches none of the sweep's 98 runs")]:
        with pytest.raises(ExperimentError, match=message):
            select(runs, bad)


TINY_TOML = """
name = "tiny"
title = "tiny sweep"
paper = "none"
[base]
algo = "bc"
env = "Hopper-v5"
validation_size = 500
hidden_dims = [16, 16]
[[grid]]
dataset = {datasets}
size = [1000]
[variants.dense]
sparsity = 0.0
[budgets.quick]
steps = 200
seeds = {seeds}
eval_every = 100
eval_episodes = 1
[budgets.paper]
steps = 400
seeds = [0]
eval_every = 200
eval_episodes = 1
[report]
kind = "comparison_table"
"""


def tiny_config(tmp_path: Path, datasets: list[str], seeds=(0,), name="tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(TINY_TOML.format(datasets=json.dumps([str(d) for d in datasets]), seeds=list(seeds)))
    return path


@pytest.mark.parametrize("mutation, fragment", [
    ('[base]\nalgo = "bc"\nwarp = 3', "unknown RunConfig field(s) ['warp']"),
    ("[base]\nsteps = 10", "set by the budget"),
    ("[budgets.quick]\n", "needs a [budgets.quick]"),
    ('size = [1000]\nvariants = ["nope"]', "unknown variant(s) ['nope']"),
    ("size = 1000", "'size' must be a non-empty list"),
])
def test_bad_configs_are_refused(tmp_path, mutation, fragment):
    text = tiny_config(tmp_path, ["d.npz"]).read_text()
    if mutation.startswith("[base]"):
        text = text.replace('[base]\nalgo = "bc"', mutation)
    elif mutation.startswith("[budgets.quick]"):
        text = text.replace("[budgets.quick]", "[budgets.other]")
    else:
        text = text.replace("size = [1000]", mutation)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ExperimentError) as error:
        load_experiment(bad)
    assert fragment in str(error.value) and "bad.toml" in str(error.value)


def test_a_packaged_config_is_named_by_its_package_path():
    # The same in every checkout and install, so a run exported from two checkouts has the same tags.
    assert load_experiment("table3").config_file == "sparse_reg/experiments/configs/table3.toml"


def test_unknown_experiment_name():
    with pytest.raises(ExperimentError, match="unknown experiment 'table9'"):
        load_experiment("table9")


def fake_run(run, summary=False, checkpoint=False, config: RunConfig | None = None):
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "config.json").write_text(json.dumps((config or run.job.config).to_dict()))
    if checkpoint:
        save_checkpoint(run.out, 100, {}, {})
    if summary:
        (run.out / "summary.json").write_text("{}")


def test_run_state_skip_resume_conflict(tmp_path):
    runs = expand(load_experiment(tiny_config(tmp_path, ["a.npz"], seeds=(0, 1, 2, 3, 4))), "quick", tmp_path / "r")
    assert [r.out.name for r in runs] == [f"seed_{s}" for s in range(5)]
    fake_run(runs[0], summary=True, checkpoint=True)
    fake_run(runs[1], checkpoint=True)
    fake_run(runs[2], summary=True, config=RunConfig.from_dict({**runs[2].job.config.to_dict(), "steps": 999}))
    runs[3].out.mkdir(parents=True)
    (runs[3].out / ERROR_FILE).write_text("earlier failure")
    # A dense run made under another mask schedule is the same run (it has no masks) ...
    fake_run(runs[4], summary=True, config=RunConfig.from_dict({**runs[4].job.config.to_dict(), "mask_interval": 7}))
    states = [run_state(r) for r in runs]
    assert [s for s, _ in states] == [SKIP, RESUME, CONFLICT, FRESH, SKIP]
    assert "steps 999 (wanted 200)" in states[2][1]
    # ... a sparse one is not.
    sparse = RunConfig.from_dict({**runs[4].job.config.to_dict(), "sparsity": 0.9})
    assert sparse.result_fields() != RunConfig.from_dict({**sparse.to_dict(), "mask_interval": 7}).result_fields()
    assert "mask_interval" in sparse.result_fields() and "mask_interval" not in runs[4].job.config.result_fields()


def test_local_sweep_records_failures_skips_and_resumes(tmp_path, hopper_random_npz, monkeypatch, capsys):
    config = tiny_config(tmp_path, [hopper_random_npz, tmp_path / "missing.npz"])
    runs_dir = tmp_path / "runs"
    # On a CPU: a queue of pinned worker processes (here one core); the failing run is recorded,
    # the other finishes.
    with pytest.raises(ValueError, match="--workers 0: must be at least 1"):
        run_sweep(config, "quick", runs_dir, workers=0, progress=False)
    capsys.readouterr()
    result = run_sweep(config, "quick", runs_dir, mode="processes", workers=1, progress=False)
    assert (len(result.done), len(result.skipped), len(result.failed)) == (1, 0, 1)
    # Without a progress bar (a log file) each run gets a line as it ends: position, cell, seed, outcome.
    out = capsys.readouterr().out
    # The start line says how long the pending runs should take on the workers asked for.
    assert re.search(r"0 finished, 2 to run on local, about \d+(\.\d)? (s|min) on 1 core if nothing else runs", out)
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == 2 and {line[:5] for line in lines} == {"[1/2]", "[2/2]"}
    good_line = next(line for line in lines if "hopper_random-1000-dense seed 0: " in line)
    assert re.search(r"seed 0: -?\d+\.\d normalised \(final return -?\d+\), \d+ s$", good_line)
    assert "missing-1000-dense seed 0: failed: " in next(line for line in lines if line is not good_line)
    good = runs_dir / "tiny" / "hopper_random-1000-dense" / "seed_0"
    bad = runs_dir / "tiny" / "missing-1000-dense" / "seed_0"
    assert json.loads((good / "summary.json").read_text())["steps"] == 200
    assert "missing.npz" in (bad / ERROR_FILE).read_text() and "missing.npz" in result.failed[0][1]
    tags = json.loads((good / TAGS_FILE).read_text())
    assert tags["experiment"] == "tiny" and tags["variant"] == "dense" and tags["seed"] == 0
    assert tags["cell"] == "hopper_random-1000-dense" and tags["axes"]["size"] == 1000
    assert tags["config_file"] == str(Path(config).resolve())  # a user's file: its absolute path
    manifest = json.loads((runs_dir / "tiny" / "sweep.json").read_text())
    assert [r["dir"] for r in manifest["runs"]] == ["hopper_random-1000-dense/seed_0", "missing-1000-dense/seed_0"]
    assert manifest["report"] == {"kind": "comparison_table"} and manifest["budget"]["steps"] == 200

    # Again: the finished run is skipped, the failing one fails again (alone, so in this process).
    monkeypatch.undo()
    result = run_sweep(config, "quick", runs_dir, mode="sequential", progress=False)
    assert (len(result.done), len(result.skipped), len(result.failed)) == (0, 1, 1)
    # A run killed after its last checkpoint but before its summary resumes (and finishes at once).
    (good / "summary.json").unlink()
    assert run_state(result.skipped[0])[0] == RESUME
    result = run_sweep(config, "quick", runs_dir, mode="sequential", progress=False)
    assert [r.out for r in result.done] == [good] and (good / "summary.json").exists()


def test_a_sweep_copies_the_runs_another_experiment_already_finished(tmp_path, hopper_random_npz, capsys):
    # "tiny" finishes seed 0; "other", another experiment, asks for the same cell (same algorithm,
    # data, size and settings) with seeds 0 and 1: its seed 0 is copied, seed 1 runs.
    runs = tmp_path / "runs"
    run_sweep(tiny_config(tmp_path, [hopper_random_npz]), "quick", runs, mode="sequential", progress=False)
    source = runs / "tiny" / "hopper_random-1000-dense" / "seed_0"
    other = tmp_path / "other.toml"
    other.write_text(tiny_config(tmp_path, [hopper_random_npz], seeds=(0, 1)).read_text()
                     .replace('name = "tiny"', 'name = "other"'))
    capsys.readouterr()
    # A dry run says what it would copy; nothing is written.
    run_sweep(other, "quick", runs, dry_run=True, reuse=[runs / "tiny"])
    plan = " ".join(capsys.readouterr().out.split())
    assert "1 to run, 0 to resume, 0 finished, 1 to copy from finished runs elsewhere" in plan
    assert not (runs / "other").exists()

    result = run_sweep(other, "quick", runs, mode="sequential", progress=False, reuse=[runs])
    copy = runs / "other" / "hopper_random-1000-dense" / "seed_0"
    assert [r.out for r, _ in result.reused] == [copy] and [r.seed for r in result.done] == [1]
    assert "1 reused" in result.line() and "1 copied from finished runs elsewhere, 1 to run" in capsys.readouterr().out
    assert (copy / "metrics.csv").read_bytes() == (source / "metrics.csv").read_bytes()
    tags = json.loads((copy / TAGS_FILE).read_text())
    assert tags["experiment"] == "other" and tags["reused_from"] == str(source)
    assert json.loads((source / TAGS_FILE).read_text())["experiment"] == "tiny"  # the source is untouched
    assert not list(copy.parent.glob("*.reusing"))
    # Next time the copy is this sweep's own finished run, and still says where it came from.
    result = run_sweep(other, "quick", runs, mode="sequential", progress=False, reuse=[runs])
    assert len(result.skipped) == 2 and not result.reused
    assert json.loads((copy / TAGS_FILE).read_text())["reused_from"] == str(source)

    # A run that computes something else is not reused: the paper budget's 400 steps.
    states = sweep.reusable([(run, *run_state(run)) for run in expand(load_experiment(other), "paper", tmp_path / "p")],
                            sweep.finished_runs([runs]))
    assert [state for _, state, _ in states] == [sweep.FRESH]
    with pytest.raises(ExperimentError, match="--reuse .*nowhere: no such directory"):
        sweep.finished_runs([tmp_path / "nowhere"])


def test_sweep_builds_project_datasets_first_quietly_without_progress(tmp_path, monkeypatch, capsys):
    # With --no-progress (a log file) the dataset build prints one line, not progress bars; a
    # dataset that cannot be built fails its runs before any worker starts.
    from sparse_reg.data.dataset import DatasetError

    calls = []

    def make_fails(name, **kwargs):
        calls.append((name, kwargs.get("progress")))
        raise DatasetError("no shipped policy")

    monkeypatch.setattr(registry, "make", make_fails)
    monkeypatch.setattr(registry, "is_built", lambda path: False)
    result = run_sweep(tiny_config(tmp_path, ["hopper-expert-v0"]), "quick", tmp_path / "runs", mode="sequential",
                       progress=False)
    assert calls == [("hopper-expert-v0", False)]
    out = capsys.readouterr()
    assert "building dataset hopper-expert-v0" in out.out and "transition/s" not in out.out + out.err
    assert len(result.failed) == 1 and "cannot build dataset hopper-expert-v0: no shipped policy" in result.failed[0][1]


def test_vmap_sweep_runs_a_failed_groups_runs_one_by_one(tmp_path, hopper_random_npz, monkeypatch):
    config = tiny_config(tmp_path, [hopper_random_npz, tmp_path / "missing.npz"], seeds=(0, 1))
    # On an accelerator each cell's seeds go to run_jobs as one vmapped group, whose first error
    # aborts the group (here before anything ran); the sweep then runs each seed alone.
    from sparse_reg.training import parallel

    calls = []

    def run_jobs_fails(jobs, **kwargs):
        calls.append(len(jobs))
        raise RuntimeError("a vmapped group failed")

    monkeypatch.setattr(parallel, "run_jobs", run_jobs_fails)
    result = run_sweep(config, "quick", tmp_path / "runs", mode="vmap", progress=False)
    assert calls == [2, 2]
    assert sorted(str(r.out.relative_to(tmp_path / "runs" / "tiny")) for r in result.done) == [
        "hopper_random-1000-dense/seed_0", "hopper_random-1000-dense/seed_1"]
    assert len(result.failed) == 2 and all("missing.npz" in reason for _, reason in result.failed)


def test_cli_lists_experiments_and_dry_runs(tmp_path, capsys, hopper_random_npz):
    assert main(["experiments", "list"]) == 0
    out = capsys.readouterr().out
    assert "table1" in out and "figure6" in out and "108" in out  # table1: 36 cells x 3 quick seeds
    config = tiny_config(tmp_path, [hopper_random_npz], seeds=(0, 1))
    assert main(["sweep", str(config), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "hopper_random-1000-dense" in out and "2 to run" in out
    assert main(["sweep", str(config), "--dry-run", "--runs-dir", str(tmp_path / "runs"), "--only", "seed=1"]) == 0
    out = capsys.readouterr().out
    assert "1 run (of 2, selected by --only seed=1)" in out and "1 to run" in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    assert main(["sweep", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparse-reg: error: unknown experiment 'nope'")


def test_cli_reproduce_is_sweep_then_report(tmp_path, capsys, monkeypatch):
    from sparse_reg.experiments import report

    config = tiny_config(tmp_path, ["data.npz"], seeds=(0, 1))
    for run in expand(load_experiment(config), "quick", tmp_path / "runs"):
        fake_run(run, summary=True, checkpoint=True)  # finished: the sweep skips them
    calls = []
    monkeypatch.setattr(report, "write_report", lambda runs, out: calls.append((runs, out)) or Path(out) / "index.md")
    code = main(["reproduce", str(config), "--budget", "quick", "--runs-dir", str(tmp_path / "runs"),
                 "--report-dir", str(tmp_path / "report"), "--no-progress"])
    assert code == 0
    assert calls == [(tmp_path / "runs" / "tiny", tmp_path / "report")]
    assert "0 done, 2 skipped, 0 failed" in capsys.readouterr().out


@pytest.mark.ray
def test_ray_sweep_runs_records_failures_then_skips(tmp_path, hopper_random_npz):
    ray = pytest.importorskip("ray")
    config = tiny_config(tmp_path, [tmp_path / "missing.npz", hopper_random_npz], seeds=(0, 1))
    runs_dir = tmp_path / "runs"
    # No Ray running: the sweep starts a local instance (num_cpus = cores, no dashboard), runs one
    # task per run pinned to a free core, and stops it again.
    result = run_sweep(config, "quick", runs_dir, backend="ray", progress=False)
    assert not ray.is_initialized()
    assert (len(result.done), len(result.skipped), len(result.failed)) == (2, 0, 2), result.failed
    for seed in (0, 1):
        run = runs_dir / "tiny" / "hopper_random-1000-dense" / f"seed_{seed}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["seed"] == seed and summary["eval_history"][-1]["step"] == 200
        assert json.loads((run / TAGS_FILE).read_text())["seed"] == seed
        assert "missing.npz" in (runs_dir / "tiny" / "missing-1000-dense" / f"seed_{seed}" / ERROR_FILE).read_text()
    # The finished runs are skipped (nothing left to run, so Ray is not even started).
    finished_only = tiny_config(tmp_path, [hopper_random_npz], seeds=(0, 1), name="again.toml")
    again = run_sweep(finished_only, "quick", runs_dir, backend="ray", progress=False)
    assert (len(again.done), len(again.skipped), len(again.failed)) == (0, 2, 0)


def test_a_runs_log_line_gives_its_score_and_an_early_stopping_runs_kept_agent(tmp_path):
    from types import SimpleNamespace

    run = SimpleNamespace(cell=SimpleNamespace(id="iql-hopper-expert-v0-5000-early-stop"), seed=2, out=tmp_path)
    summary = {"final_normalized_score": 38.04, "final_return": 3637.6, "wall_seconds": 258.0}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    line = sweep._result_line(run, None, 13, 30)
    assert re.fullmatch(r"\[13/30\] \d\d:\d\d:\d\d iql-hopper-expert-v0-5000-early-stop seed 2: "
                        r"38\.0 normalised \(final return 3638\), 4\.3 min", line), line
    # The agent an early-stopping run keeps is what its results use, so the line names it too.
    kept = {"checkpoint": "lowest_validation_mse", "step": 6000, "validation_mse": 0.05, "return_mean": 4700.0,
            "normalized_score": 52.06}
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "lowest_validation_mse": kept}))
    assert sweep._result_line(run, None, 13, 30).endswith("4.3 min; kept agent (step 6000): 52.1 normalised")
    (tmp_path / "summary.json").write_text("{not json")
    assert sweep._result_line(run, None, 13, 30).endswith("seed 2: done")
    assert sweep._result_line(run, "Traceback...\nsparse_reg.data.dataset.DatasetError: no file x.npz", 1, 2).endswith(
        "seed 2: failed: DatasetError: no file x.npz")


def test_sizes_given_as_counts_in_toml_expand_to_whole_numbers(tmp_path):
    """``size = ["2k"]`` in a TOML grid means 2,000 transitions, as "2k" does on the command line."""
    path = tiny_config(tmp_path, ["a.npz"])
    path.write_text(path.read_text().replace("size = [1000]", 'size = ["2k", 1500]'))
    runs = expand(load_experiment(path), "quick", tmp_path / "r")
    assert sorted(r.job.config.size for r in runs) == [1500, 2000]
    bad = tmp_path / "bad.toml"
    bad.write_text(path.read_text().replace('size = ["2k", 1500]', 'size = ["2q"]'))
    with pytest.raises((ExperimentError, ValueError), match="size"):
        expand(load_experiment(bad), "quick", tmp_path / "r2")


def test_time_estimate_runs_each_run_on_one_core():
    from types import SimpleNamespace

    def run(algo, steps=30_000, **fields):
        config = RunConfig(algo=algo, steps=steps, eval_every=3000, eval_episodes=5, **{"sparsity": 0.0, **fields})
        return SimpleNamespace(job=SimpleNamespace(config=config), cell=SimpleNamespace(id=algo))

    # IQL, one pinned core: 30 s start + 30k / 140 updates/s + 10 evaluations x (1 + 5 x 0.1) s
    one = 30 + 30_000 / 140 + 10 * 1.5
    assert sweep.run_seconds(run("iql").job.config) == pytest.approx(one)
    assert sweep.run_seconds(run("iql-paper-code").job.config) == pytest.approx(one)  # its algorithm's speed
    assert sweep.estimate_seconds([run("iql")]) == pytest.approx(one)  # one run cannot use both cores
    assert sweep.estimate_seconds([run("iql")] * 3) == pytest.approx(2 * one)  # 2 on one core, 1 on the other
    bc = 30 + 30_000 / 900 + 10 * 1.5
    # longest first: one IQL run per core, then each BC run joins the less loaded core
    assert sweep.estimate_seconds([run("bc"), run("iql"), run("bc"), run("iql")]) == pytest.approx(one + bc)
    assert sweep.estimate_seconds([]) == 0.0
    # A cell timed by its finished runs takes that time: 2 IQL runs of 600 s, one per core.
    assert sweep.estimate_seconds([run("iql")] * 2, measured={"iql": 600.0}) == pytest.approx(600)
    assert sweep.estimate_seconds([run("iql"), run("bc")], measured={"iql": 10.0}) == pytest.approx(bc)
    # Narrower networks: a fixed 5% plus the hidden matmul's (width/256)^2; sparse runs 0.65 of dense.
    iql_updates = 30_000 / 140
    assert sweep.run_seconds(run("iql", hidden_dims=(128, 128)).job.config) == pytest.approx(
        one - iql_updates + iql_updates * (0.05 + 0.95 * 0.25))
    assert sweep.run_seconds(run("iql", hidden_dims=(64, 128)).job.config) == pytest.approx(
        one - iql_updates + iql_updates * (0.05 + 0.95 * (96 / 256) ** 2))
    assert sweep.run_seconds(run("iql", sparsity="auto").job.config) == pytest.approx(one - iql_updates + iql_updates * 0.65)


def test_finished_runs_time_the_other_seeds_of_their_cell(tmp_path, capsys):
    config = tiny_config(tmp_path, ["data.npz"], seeds=(0, 1, 2))
    runs = expand(load_experiment(config), "quick", tmp_path / "runs")
    here = provenance.machine()
    for r, seconds in zip(runs, (100.0, 300.0)):  # seeds 0 and 1 finished; seed 2 not
        fake_run(r, summary=True)
        (r.out / "summary.json").write_text(json.dumps({"wall_seconds": seconds, "machine": here}))
    assert sweep.measured_cell_seconds(runs) == {runs[0].cell.id: pytest.approx(200.0)}  # the median
    # Runs of another machine, or with no wall time, do not time this one's.
    assert sweep.measured_cell_seconds(runs, on="another CPU (2 cores)") == {}
    (runs[1].out / "summary.json").write_text(json.dumps({"steps": 1, "machine": here}))
    assert sweep.measured_cell_seconds(runs) == {runs[0].cell.id: pytest.approx(100.0)}
    assert main(["sweep", str(config), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 to run" in out and "about 2 min" in out and "timed by the finished runs of their cells here" in out
