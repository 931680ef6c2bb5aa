"""The sweep report: grouping, paper-form table cells, IQM / bootstrap, figures and index.md links."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from sparse_reg.data.reference import D4RL_REFERENCE_SCORES
from sparse_reg.experiments.report import write_report
from sparse_reg.experiments.runs import load_paper_table, run_variant
from sparse_reg.experiments.statistics import iqm, stratified_bootstrap_ci
from sparse_reg.experiments.tables import comparison_cell

STEPS, EVAL_EVERY = 20_000, 5_000
REFS = {"hopper": (-20.0, 3200.0), "walker2d": (0.0, 4500.0)}

# Final normalised scores per (algo, env, variant), one per seed (seeds 0, 1, 2).
FINAL = {
    ("iql", "hopper", "dense"): [10.0, 20.0, 30.0],
    ("iql", "hopper", "sparse"): [40.0, 50.0, 60.0],
    ("iql", "walker2d", "dense"): [60.0, 70.0, 80.0],
    ("iql", "walker2d", "sparse"): [40.0, 50.0, 60.0],
    ("bc", "hopper", "dense"): [5.0, 15.0, 25.0],
    ("bc", "hopper", "sparse"): [35.0, 45.0, 55.0],
    ("bc", "hopper", "l1"): [20.0, 20.0, 20.0],
}
VARIANT_CONFIG = {"dense": {"sparsity": 0.0}, "sparse": {"sparsity": "auto"}, "l1": {"sparsity": 0.0, "l1": 1e-4}}
ENV_IDS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}


def _config(algo, env, variant, seed, **extra):
    return {
        "algo": algo, "dataset": f"{env}-expert-v0", "env": None, "size": 5000, "subsample": "trajectories",
        "validation_size": 2000, "sparsity": 0.0, "mask_interval": 5000, "mask_until": 10_000, "steps": STEPS,
        "seed": seed, "eval_every": EVAL_EVERY, "eval_episodes": 2, "hidden_dims": [256, 256], "dropout": 0.0,
        "layer_norm": False, "spectral_norm": False, "l1": 0.0, "weight_decay": 0.0, "algo_options": {},
        **VARIANT_CONFIG[variant], **extra,
    }


def _to_return(env, score):
    random, expert = REFS[env]
    return random + score / 100.0 * (expert - random)


def _write_run(directory: Path, algo, env, variant, seed, final_score, *, steps=STEPS, summary=True, **extra):
    directory.mkdir(parents=True)
    config = _config(algo, env, variant, seed, steps=steps, **extra)
    (directory / "config.json").write_text(json.dumps(config))
    history = []
    for i, step in enumerate(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY)):
        score = final_score * (i + 1) / (STEPS // EVAL_EVERY)
        history.append({
            "step": step, "return_mean": _to_return(env, score), "return_std": 1.0, "normalized_score": score,
            "train_mse": 0.1 / (i + 1), "validation_mse": 0.1 + 0.01 * i + (0.0 if variant == "dense" else -0.02),
        })
    with open(directory / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    if variant == "sparse":
        networks = ("actor", "critic", "value") if algo == "iql" else ("actor",)
        with open(directory / "masks.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "network", "layer", "sparsity", "changed", "live_units", "loss_before",
                             "loss_after"])
            for step in (0, 5000):
                for network in networks:
                    for layer, sparsity in (("params/Dense_0", 0.9), ("params/Dense_1", 0.97), ("total", 0.95)):
                        losses = [1.0, 3.0 if step else 1.2] if layer == "total" else ["", ""]
                        # hidden layer Dense_0: 80% of units alive at 0, 40% + 0.1 * seed at 5k; output layer: none
                        live = {"params/Dense_0": 0.8 if step == 0 else 0.4 + 0.1 * seed, "total": 0.8 if step == 0 else 0.5}
                        writer.writerow([step, network, layer, sparsity + (0.01 if step else 0.0),
                                         1.0 if step == 0 else 0.05, live.get(layer, ""), *losses])
    if summary:
        (directory / "summary.json").write_text(json.dumps({
            "algo": algo, "dataset": config["dataset"], "env": ENV_IDS[env], "size": 5000, "validation_size": 2000,
            "seed": seed, "steps": steps, "sparsity": {"actor": 0.95 if variant == "sparse" else 0.0},
            "final_return": history[-1]["return_mean"], "final_normalized_score": history[-1]["normalized_score"],
            "reference_scores": {"random": REFS[env][0], "expert": REFS[env][1]}, "config": config,
            "eval_history": history,
            # the L1 runs stand for runs made before summaries recorded their code and wall time
            **({} if variant == "l1" else {"code_version": "abc1234567", "wall_seconds": 60.0 * (seed + 1),
                                           "machine": "Some CPU (2 cores)"}),
        }))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = root / "runs"
    for (algo, env, variant), scores in FINAL.items():
        for seed, score in enumerate(scores):
            _write_run(runs / "exp" / f"{algo}-{env}-{variant}" / f"seed_{seed}", algo, env, variant, seed, score)
    # a run still in progress (no summary.json), a corrupt summary, and one stopped early
    _write_run(runs / "exp" / "iql-hopper-dense" / "seed_3", "iql", "hopper", "dense", 3, 99.0, summary=False)
    broken = runs / "exp" / "broken" / "seed_0"
    broken.mkdir(parents=True)
    (broken / "summary.json").write_text("{not json")
    _write_run(runs / "exp" / "iql-hopper-sparse" / "seed_9", "iql", "hopper", "sparse", 9, 99.0, steps=40_000)
    # the same cell and seed again (another experiment, another mask schedule): counted once
    _write_run(runs / "other" / "dup" / "seed_1", "iql", "hopper", "dense", 1, 77.0, mask_until=5000)
    # a tags.json naming the variant wins over the config
    _write_run(runs / "other" / "tagged" / "seed_0", "iql", "hopper", "dense", 0, 33.0)
    (runs / "other" / "tagged" / "seed_0" / "tags.json").write_text(json.dumps({"experiment": "x", "variant": "custom"}))
    out = root / "out"
    index = write_report(runs, out, reps=300, seed=0)
    return runs, out, index


# --------------------------------------------------------------------------- statistics


def test_iqm_hand_values():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)  # middle 50% of 1..8: 3, 4, 5, 6
    assert iqm(np.arange(1, 11)) == pytest.approx(5.5)  # cut int(2.5)=2 each end: 3..8
    assert iqm([5.0, 1.0, 100.0, 2.0]) == pytest.approx(3.5)  # unsorted input: 2, 5
    assert iqm([7.0]) == pytest.approx(7.0)
    np.testing.assert_allclose(iqm(np.array([[1, 2, 3, 4], [10, 20, 30, 40]])), [2.5, 25.0])


def test_iqm_matches_scipy_trim_mean():
    stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(3).normal(size=37)
    assert iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))


def test_bootstrap_ci_contains_iqm_and_is_deterministic():
    rng = np.random.default_rng(0)
    strata = [rng.normal(loc, 5.0, size=5) for loc in (10.0, 50.0, 80.0)]
    point, lo, hi = stratified_bootstrap_ci(strata, reps=500, seed=7)
    assert point == pytest.approx(iqm(np.concatenate(strata)))
    assert lo < point < hi
    assert stratified_bootstrap_ci(strata, reps=500, seed=7) == (point, lo, hi)
    assert stratified_bootstrap_ci(strata, reps=500, seed=8)[1:] != (lo, hi)


def test_bootstrap_is_stratified():
    # Resampling within each task keeps exactly one 10 in every replicate: the mean never moves.
    point, lo, hi = stratified_bootstrap_ci([[0.0, 0.0, 0.0], [10.0]], statistic=lambda x: np.mean(x, axis=-1))
    assert (point, lo, hi) == pytest.approx((2.5, 2.5, 2.5))
    assert all(np.isnan(stratified_bootstrap_ci([[np.nan], []])))


def test_run_variant_from_config_and_tags():
    base = _config("iql", "hopper", "dense", 0)
    assert run_variant(base) == "dense"
    assert run_variant({**base, "sparsity": "auto"}) == "sparse"
    assert run_variant({**base, "sparsity": 0.95}) == "sparse95"  # explicit levels are named (Table 3)
    assert run_variant({**base, "sparsity": 0.75}) == "sparse75"
    assert run_variant({**base, "sparsity": "auto", "mask_until": 0}) == "sfi"
    assert run_variant({**base, "sparsity": "auto", "mask_scorer": "random"}) == "sparse-random"
    assert run_variant({**base, "sparsity": 0.95, "mask_scorer": "magnitude"}) == "sparse95-magnitude"
    assert run_variant({**base, "sparsity": "auto", "mask_scorer": "snip"}) == "sparse"
    assert run_variant({**base, "l1": 1e-3}) == "l1"
    assert run_variant({**base, "dropout": 0.1}) == "dropout"
    assert run_variant({**base, "weight_decay": 1e-4}) == "wd"
    assert run_variant({**base, "spectral_norm": True}) == "specnorm"
    assert run_variant({**base, "layer_norm": True}) == "layernorm"
    assert run_variant({**base, "hidden_dims": [64, 64]}) == "hd64"
    assert run_variant({**base, "sparsity": "auto", "l1": 1e-3}) == "sparse+l1"
    assert run_variant({**base, "sparsity": "auto"}, {"variant": "spu"}) == "spu"
    assert run_variant(base, {"experiment": "x"}) == "dense"


def test_comparison_cell_markers():
    assert comparison_cell([1.0, 3.0], [4.0, 6.0]) == "2.0 ± 1.0 → **5.0 ± 1.0** ▲"
    assert comparison_cell([4.0, 6.0], [1.0, 3.0]) == "5.0 ± 1.0 → 2.0 ± 1.0 ▼"
    assert comparison_cell([], [1.0]) == "– → 1.0"  # one seed: no spread to show, not "± 0.0"
    tex = comparison_cell([1.0, 3.0], [4.0, 6.0], latex=True)
    assert tex == r"$2.0 \pm 1.0$ $\rightarrow$ \textcolor{blue}{$5.0 \pm 1.0$}"
    assert r"\textcolor{red}" in comparison_cell([4.0, 6.0], [1.0, 3.0], latex=True)


def test_packaged_paper_csv_has_the_signs_of_the_paper():
    paper = load_paper_table()
    assert len(paper) == 54
    random, expert = D4RL_REFERENCE_SCORES["halfcheetah"].random, D4RL_REFERENCE_SCORES["halfcheetah"].expert
    dense_mean, _ = paper[("expert", 5000, "td3bc", "halfcheetah")]["dense"]
    assert dense_mean == pytest.approx(100 * (-260.51 - random) / (expert - random))


# --------------------------------------------------------------------------- the report


def _table_cell(markdown: str, section: str, algo: str, column: int) -> str:
    text = markdown.split(f"### {section}")[1]
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[1] == algo:
            return cells[column]
    raise AssertionError(f"no row {algo} in {section}")


def _hand(values):
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def test_table_cells_are_dense_to_sparse_with_markers(built):
    _, out, _ = built
    md = (out / "tables" / "normalized_score.md").read_text()
    hop_d, hop_s = FINAL[("iql", "hopper", "dense")], FINAL[("iql", "hopper", "sparse")]
    walk_d, walk_s = FINAL[("iql", "walker2d", "dense")], FINAL[("iql", "walker2d", "sparse")]
    # columns: Size, Algorithm, Hopper, Walker2d
    assert _table_cell(md, "expert", "IQL", 2) == f"{_hand(hop_d)} → **{_hand(hop_s)}** ▲"
    assert _table_cell(md, "expert", "IQL", 2) == "20.0 ± 8.2 → **50.0 ± 8.2** ▲"
    assert _table_cell(md, "expert", "IQL", 3) == f"{_hand(walk_d)} → {_hand(walk_s)} ▼"
    assert _table_cell(md, "expert", "BC", 3) == "– → –"  # no BC runs on walker2d
    # the paper's IQL 5k expert Hopper row, normalised with D4RL's constants
    ref = D4RL_REFERENCE_SCORES["hopper"]
    norm = lambda r: 100 * (r - ref.random) / (ref.expert - ref.random)  # noqa: E731
    scale = 100 / (ref.expert - ref.random)
    paper_cell = _table_cell(md, "expert", "*paper IQL*", 2)
    assert paper_cell == (f"*{norm(895.89):.1f} ± {131.78 * scale:.1f} → {norm(2075.30):.1f} ± "
                          f"{749.97 * scale:.1f} ▲*")
    returns = (out / "tables" / "final_return.md").read_text()
    hop_rd = [_to_return("hopper", s) for s in hop_d]
    hop_rs = [_to_return("hopper", s) for s in hop_s]
    assert _table_cell(returns, "expert", "IQL", 2) == f"{_hand(hop_rd)} → **{_hand(hop_rs)}** ▲"
    tex = (out / "tables" / "normalized_score.tex").read_text()
    assert r"\textcolor{blue}{$50.0 \pm 8.2$}" in tex and r"\textcolor{red}{$50.0 \pm 8.2$}" in tex
    assert "\\begin{tabular}" in tex and "\\bottomrule" in tex


def test_variant_table_and_iqm_table(built):
    _, out, _ = built
    variants = (out / "tables" / "variants.md").read_text()
    row = next(line for line in variants.splitlines() if "| BC | Hopper |" in line)
    assert row.split("|")[4:7] == [" 15.0 ± 8.2 ", " **45.0 ± 8.2** ", " 20.0 ± 0.0 "]
    assert next(line for line in variants.splitlines() if line.startswith("| Size")).split("|")[4:9] == [" dense ", " sparse ", " l1 ", " custom ", ""]
    assert "custom" in variants  # the tags.json variant
    with open(out / "tables" / "iqm.csv") as f:
        rows = list(csv.DictReader(f))
    iql_sparse, late = (next(r for r in rows if r["algo"] == "iql" and r["variant"] == "sparse" and r["size"] == "5000"
                             and r["metric"] == metric) for metric in ("final_score", "late_score"))
    pooled = FINAL[("iql", "hopper", "sparse")] + FINAL[("iql", "walker2d", "sparse")]
    assert float(iql_sparse["iqm"]) == pytest.approx(iqm(pooled))
    # the last 20% of 20k steps holds only the last evaluation here, so late = final score
    assert float(late["iqm"]) == pytest.approx(iqm(pooled)) and late["n_scores"] == "6"
    md = (out / "tables" / "iqm.md").read_text()
    assert md.index("### expert: final normalised score") < md.index("### expert: late normalised score")
    assert int(iql_sparse["min_scores_per_task"]) == 3  # 3 seeds in each task: no dagger
    rows = {line.split("|")[2].strip(): line for line in md.split("### expert: late")[0].splitlines()
            if line.startswith("| IQL |")}
    assert "†" not in rows["sparse"] and re.search(r"\(n=1, lowest -?\d+\.\d\) † \|$", rows["custom"])  # one tagged run
    # The lowest single score beside the IQM: a run that collapses shows even where the IQM trims it away.
    assert float(iql_sparse["lowest"]) == pytest.approx(min(pooled))
    assert f"(n=6, lowest {min(pooled):.1f})" in rows["sparse"]
    assert "cannot resample it" in md
    assert float(iql_sparse["ci_low"]) <= float(iql_sparse["iqm"]) <= float(iql_sparse["ci_high"])
    assert int(iql_sparse["n_scores"]) == 6 and int(iql_sparse["n_tasks"]) == 2


def test_the_index_names_the_dataset_builds_and_flags_runs_on_more_than_one():
    from types import SimpleNamespace

    from sparse_reg.experiments.report import _data_text

    def run(name, fingerprint):
        data = {"name": name, "transitions": 300_000, "fingerprint": fingerprint} if fingerprint else None
        return SimpleNamespace(summary={"data": data}, config={"dataset": name})

    one_build = [run("hopper-expert-v0", "2859bdea245c02b4")] * 3
    assert _data_text(one_build) == "Data (dataset, fingerprint of its transitions × runs): `hopper-expert-v0` `2859bdea245c02b4` × 3."
    mixed = [*one_build, run("halfcheetah-expert-v0", "025b568012183b8e"), run("halfcheetah-expert-v0", "440f8c3427d6d761"),
             run("halfcheetah-expert-v0", "025b568012183b8e"), run("walker2d-expert-v0", None)]
    text = _data_text(mixed)
    assert text.startswith("Data (dataset, fingerprint of its transitions × runs): `halfcheetah-expert-v0` "
                           "`025b568012183b8e` × 2, `440f8c3427d6d761` × 1; `hopper-expert-v0` `2859bdea245c02b4` × 3. "
                           "1 run(s) do not record it. **`halfcheetah-expert-v0`: runs trained on more than one build**")
    assert _data_text([run("walker2d-expert-v0", None)]) == ""


def test_expected_figures_exist_and_are_not_trivial(built):
    _, out, _ = built
    expected = [
        "curves_expert_iql.png", "curves_expert_bc.png", "final_scores_expert_iql.png", "final_scores_expert_bc.png",
        "mse_expert_bc.png", "cell_expert_bc_hopper_5000.png", "masks_expert_iql_5k_sparse.png", "masks_expert_bc_5k_sparse.png", "iqm_expert.png",
    ]
    for name in expected:
        path = out / "figures" / name
        assert path.exists(), name
        assert path.stat().st_size > 10_000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "figures" / "masks_expert_iql_5k_dense.png").exists()  # dense runs have no masks.csv
    # side-by-side variant figures only where a cell has three or more variants (BC hopper: dense, sparse, l1)
    assert [p.name for p in (out / "figures").glob("cell_*")] == ["cell_expert_bc_hopper_5000.png"]


def test_index_links_resolve_and_skips_are_reported(built):
    runs, out, index = built
    assert index == out / "index.md"
    text = index.read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(links) >= 12
    for link in links:
        assert (out / link).exists(), link
    for name in ("curves_expert_iql.png", "iqm_expert.png", "normalized_score.md", "final_scores.csv"):
        assert name in text
    # 19 of the 22 counted runs record code and wall time: 6 cells x (60 + 120 + 180) s + 60 s (tagged)
    assert ("Made by the code at `abc1234567` × 19 (commit × runs); 3 run(s) do not record it. Run on "
            "Some CPU (2 cores) × 19 (machine × runs); 3 run(s) do not record it. Training wall time, "
            "summed over the 19 run(s) that record it: 37.0 min (median 2.0 min per run).") in text
    skipped = text.split("## Skipped")[1].split("\n## ")[0]
    assert "exp/iql-hopper-dense/seed_3" in skipped and "in progress" in skipped
    assert "last evaluation at step 20000" in skipped
    assert "exp/broken/seed_0" in skipped and "not finished: damaged summary.json" in skipped
    assert "exp/iql-hopper-sparse/seed_9" in skipped and "incomplete" in skipped
    assert "other/dup/seed_1" in skipped and "differs in mask_until" in skipped
    # skipped runs are not counted: 3 seeds per cell
    with open(out / "tables" / "final_scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(v) for v in FINAL.values()) + 1
    assert {r["seed"] for r in rows if r["algo"] == "iql" and r["family"] == "hopper" and r["variant"] == "dense"} == {
        "0", "1", "2"}


def test_runs_table_has_each_run_with_hand_computed_numbers(built):
    _, out, index = built
    md = (out / "tables" / "runs.md").read_text()
    # IQL walker2d sparse seed 2: scores 15, 30, 45, 60 at 5k..20k; validation MSE 0.08 + 0.01 i; train 0.1 / (i + 1);
    # the last 20% of 20k steps holds only the 20k evaluation; the score at the lowest validation MSE (5k) is 15;
    # wall 60 s x (seed + 1).
    assert ("| expert | IQL | 5k | Walker2d | sparse | 2 | 20k | 60.0 | 60.0 | 60.0 (20k) | 0.0800 (5k) → 0.1100 "
            "| 15.0 | 0.0250 | 3 min | abc1234 |") in md
    # dense runs have validation MSE 0.02 higher; the L1 runs record no wall time or commit
    assert "| expert | IQL | 5k | Walker2d | dense | 0 | 20k | 60.0 | 60.0 | 60.0 (20k) | 0.1000 (5k) → 0.1300 | 15.0 | 0.0250 | 60 s |" in md
    assert "| expert | BC | 5k | Hopper | l1 | 0 | 20k | 20.0 | 20.0 | 20.0 (20k) | 0.0800 (5k) → 0.1100 | 5.0 | 0.0250 | – | – |" in md
    assert len([line for line in md.splitlines() if line.startswith("| expert |")]) == sum(map(len, FINAL.values())) + 1
    with open(out / "tables" / "final_scores.csv") as f:
        row = next(r for r in csv.DictReader(f) if (r["algo"], r["family"], r["variant"], r["seed"]) == (
            "iql", "walker2d", "sparse", "2"))
    assert float(row["late_normalized_score"]) == pytest.approx(60.0) and row["best_at"] == "20000"
    assert float(row["lowest_validation_mse"]) == pytest.approx(0.08) and row["lowest_validation_at"] == "5000"
    assert float(row["score_at_lowest_validation_mse"]) == pytest.approx(15.0)
    assert float(row["wall_seconds"]) == 180.0 and row["code_version"] == "abc1234567"
    assert "(tables/runs.md)" in index.read_text()


def test_refresh_loss_table_means_the_seeds_at_each_refresh(built):
    _, out, index = built
    md = (out / "tables" / "refresh_losses.md").read_text()
    # masks.csv of every sparse run: total-row losses 1.0 -> 1.2 at step 0, 1.0 -> 3.0 at 5k; IQL masks 3 networks
    iql = md.split("### expert, IQL, 5k, Hopper, sparse (seeds 0, 1, 2)\n")[1].split("###")[0]
    assert "| refresh at step | actor: loss before → after | critic: loss before → after | value: loss before → after |" in iql
    assert "| 0 | 1 → 1.2 | 1 → 1.2 | 1 → 1.2 |" in iql and "| 5k | 1 → 3 | 1 → 3 | 1 → 3 |" in iql
    bc = md.split("### expert, BC, 5k, Hopper, sparse (seeds 0, 1, 2)\n")[1].split("###")[0]
    assert "| 5k | 1 → 3 |" in bc and "critic" not in bc
    assert "dense" not in md and "(tables/refresh_losses.md)" in index.read_text()


def test_live_units_table_first_and_last_masks(built):
    _, out, index = built
    md = (out / "tables" / "live_units.md").read_text()
    iql = md.split("### expert, IQL, 5k, Hopper, sparse (seeds 0, 1, 2)\n")[1].split("###")[0]
    assert "| network | hidden layer | live units, first masks | live units, last masks (5k) |" in iql
    # seeds 0, 1, 2 end at 40%, 50%, 60%: mean 50%
    assert "| critic | params/Dense_0 | 80% | 50% |" in iql and "| value | total | 80% | 50% |" in iql
    assert "Dense_1" not in iql  # an output layer has no hidden units
    assert "dense" not in md and "(tables/live_units.md)" in index.read_text()


def test_best_score_is_the_first_highest_evaluation():
    from sparse_reg.experiments.runs import Run
    from sparse_reg.experiments.tables import best_score

    def run(scores):
        history = [{"step": 1000 * (i + 1), "normalized_score": s} for i, s in enumerate(scores)]
        return Run(Path("r"), {}, {}, "bc", "hopper", "expert", 5000, 1000 * len(scores), 0, "dense", history, [])

    assert best_score(run([10.0, 90.0, 40.0, 90.0])) == (90.0, 2000)  # a peak, then overfitting
    assert best_score(run(["", 5.0])) == (5.0, 2000)  # an evaluation with no score is skipped
    assert np.isnan(best_score(run([]))[0]) and best_score(run([]))[1] is None


def test_cli_entry_on_a_sweep_with_nothing_finished(tmp_path, capsys):
    import argparse

    from sparse_reg.cli import add_report_arguments, cmd_report

    _write_run(tmp_path / "runs" / "a" / "seed_0", "iql", "hopper", "sparse", 0, 10.0, summary=False)
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    args = parser.parse_args([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-paper"])
    assert cmd_report(args) == 0
    text = (tmp_path / "out" / "index.md").read_text()
    assert "No finished runs found." in text and "a/seed_0" in text and "in progress" in text
    assert str(tmp_path / "out" / "index.md") in capsys.readouterr().out


def test_cli_mse_algos_adds_the_action_mse_table_for_other_algorithms(tmp_path):
    import argparse

    from sparse_reg.cli import add_report_arguments, cmd_report

    for variant in ("dense", "sparse"):
        _write_run(tmp_path / "runs" / f"iql-{variant}" / "seed_0", "iql-paper-code", "hopper", variant, 0, 10.0)
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    for extra, expected in (([], False), (["--mse-algos", "bc,iql-paper-code"], True)):
        out = tmp_path / f"out{len(extra)}"
        assert cmd_report(parser.parse_args([str(tmp_path / "runs"), "--out", str(out), "--no-paper", *extra])) == 0
        assert (out / "tables" / "action_mse.md").exists() == expected
    assert "IQL (paper code)" in (out / "tables" / "action_mse.md").read_text()


def test_late_score_averages_the_last_fifth_of_training(built):
    from sparse_reg.experiments.runs import Run

    history = [{"step": s, "normalized_score": v} for s, v in ((2, 10.0), (4, 20.0), (6, 30.0), (8, 40.0), (10, 50.0))]
    run = Run(path=Path("."), summary={}, tags={}, algo="bc", family="hopper", kind="expert", size=5000, steps=10,
              seed=0, variant="dense", history=history, masks=[])
    assert run.late_score == pytest.approx(45.0)  # evaluations at steps 8 and 10
    # an evaluation without a score (a CSV hole) is skipped, not counted as zero
    run.history = [*history[:-1], {"step": 10, "normalized_score": ""}]
    assert run.late_score == pytest.approx(40.0)
    run.history = []
    assert math.isnan(run.late_score)
    # in the sweep fixture the last 20% of 20k steps holds only the final evaluation: same table
    _, out, index = built
    late = (out / "tables" / "late_normalized_score.md").read_text()
    final = (out / "tables" / "normalized_score.md").read_text()
    assert _table_cell(late, "expert", "IQL", 2) == _table_cell(final, "expert", "IQL", 2)
    assert "late_normalized_score.md" in index.read_text()


def test_action_mse_table_hand_values(built):
    from sparse_reg.experiments.runs import Run
    from sparse_reg.experiments.tables import mse_summary, mse_tables

    def run(seed, validation, scores=()):
        history = [{"step": 5000 * (i + 1), "train_mse": 0.1 / (i + 1), "validation_mse": v}
                   for i, v in enumerate(validation)]
        for row, score in zip(history, scores):
            row["normalized_score"] = score
        return Run(path=Path(f"s{seed}"), summary={}, tags={}, algo="bc", family="hopper", kind="expert", size=5000,
                   steps=20_000, seed=seed, variant="dense", history=history, masks=[], section="expert")

    a = run(0, [0.06, 0.05, 0.07, 0.09], scores=[20.0, 50.0, 40.0, 30.0])
    b = run(1, [0.04, 0.05, 0.06, 0.08], scores=[10.0, 90.0, 90.0, 90.0])
    assert mse_summary(a) == {"final_train_mse": pytest.approx(0.025), "final_validation_mse": 0.09,
                              "lowest_validation_mse": 0.05, "lowest_at": 10_000, "score_at_lowest": 50.0}
    assert mse_summary(run(2, [])) is None
    assert np.isnan(mse_summary(run(3, [0.05, 0.04], scores=[70.0]))["score_at_lowest"])  # no evaluation there
    row = mse_tables([a, b])["expert"].splitlines()[2].split(" | ")
    # final validation 0.09, 0.08: mean 0.085, std 0.005; lowest 0.05 at 10k and 0.04 at 5k, where the
    # scores were 50 and 10: mean 30, std 20 (not the later 90s)
    assert row[1:] == ["BC", "Hopper", "dense", "0.0250 ± 0.0000", "0.0850 ± 0.0050", "0.0450 ± 0.0050", "10k, 5k",
                       "30.0 ± 20.0 |"]
    assert mse_tables([a, b], algos=("iql",)) == {}
    # the sweep fixture: BC rows only (mse_algos defaults to BC), linked from index.md
    _, out, index = built
    md = (out / "tables" / "action_mse.md").read_text()
    assert ("| 5k | BC | Hopper | sparse | 0.0250 ± 0.0000 | 0.1100 ± 0.0000 | 0.0800 ± 0.0000 | 5k, 5k, 5k "
            "| 11.2 ± 2.0 |" in md)  # final 35, 45, 55: a quarter of each at 5k
    assert "IQL" not in md and "action_mse.md" in index.read_text()


def test_export_keeps_results_drops_checkpoints_and_reports_the_same(built, tmp_path):
    import shutil

    from sparse_reg.cli import main
    from sparse_reg.experiments.export import export_runs

    runs = tmp_path / "runs"
    shutil.copytree(built[0], runs)
    out = built[1]
    # checkpoint and TensorBoard files of a finished run stay behind
    finished = runs / "exp" / "iql-hopper-dense" / "seed_0"
    (finished / "checkpoint.msgpack").write_bytes(b"\0" * 1000)
    (finished / "tensorboard").mkdir(exist_ok=True)
    (runs / "exp" / "sweep.json").write_text("{}")
    dest = tmp_path / "export"
    assert main(["export", str(runs), "--out", str(dest)]) == 0
    copied = dest / "exp" / "iql-hopper-dense" / "seed_0"
    assert sorted(p.name for p in copied.iterdir()) == ["config.json", "metrics.csv", "summary.json"]
    assert (dest / "exp" / "iql-hopper-sparse" / "seed_0" / "masks.csv").is_file()
    assert (dest / "other" / "tagged" / "seed_0" / "tags.json").is_file()
    assert (dest / "exp" / "sweep.json").is_file()
    assert not (dest / "exp" / "iql-hopper-dense" / "seed_3").exists()  # unfinished: no summary
    # the broken summary is copied as it is (the report skips it there too); same tables from the copy
    write_report(dest, tmp_path / "report", reps=300, seed=0)
    for table in ("normalized_score.md", "final_return.md", "iqm.md"):
        assert (tmp_path / "report" / "tables" / table).read_text() == (out / "tables" / table).read_text()
    with pytest.raises(ValueError, match="inside"):
        export_runs(runs, runs / "copy")


def test_an_early_stopping_run_sits_in_its_cells_size_and_scores_its_kept_checkpoint(tmp_path):
    # A sweep's early-stop variant trains on 4k of a 5k cell, validates on the other 1k and keeps its
    # lowest-validation-MSE checkpoint: the tables must show that checkpoint's score in the 5k row.
    runs = tmp_path / "runs"
    for seed in (0, 1):
        _write_run(runs / "bc-hopper-dense" / f"seed_{seed}", "bc", "hopper", "dense", seed, 20.0 + 10 * seed)
        stop = runs / "bc-hopper-early-stop" / f"seed_{seed}"
        _write_run(stop, "bc", "hopper", "dense", seed, 10.0, size=4000, validation_size=1000,
                   keep_lowest_validation_mse=True)
        summary = json.loads((stop / "summary.json").read_text())
        kept_score = 70.0 + 10 * seed  # final score 10 (from the history), kept checkpoint 70 / 80
        summary["lowest_validation_mse"] = {"checkpoint": "lowest_validation_mse.msgpack", "step": 5000,
                                            "validation_mse": 0.1, "return_mean": _to_return("hopper", kept_score),
                                            "normalized_score": kept_score}
        (stop / "summary.json").write_text(json.dumps(summary))
        (stop / "tags.json").write_text(json.dumps({"variant": "early-stop", "axes": {
            "algo": "bc", "dataset": "hopper-expert-v0", "size": 5000}}))
    out = tmp_path / "out"
    write_report(runs, out, reps=50, seed=0)
    variants = (out / "tables" / "variants.md").read_text()
    rows = [line for line in variants.splitlines() if "| BC | Hopper |" in line]
    assert len(rows) == 1 and rows[0].startswith("| 5k |")  # no 4k row of its own
    assert rows[0].split("|")[4:6] == [" 25.0 ± 5.0 ", " **75.0 ± 5.0** "]  # dense final; early stop at its checkpoint
    md = (out / "tables" / "runs.md").read_text()
    assert "| expert | BC | 5k (4k + 1k held out) | Hopper | early-stop | 1 | 20k | 80.0 (kept at 5k) | 80.0 |" in md
    # The late-score table: dense's last 20% of 20k steps is its 20k evaluation; early stopping's is its kept one.
    late = (out / "tables" / "variants_late.md").read_text()
    row = next(line for line in late.splitlines() if "| BC | Hopper |" in line)
    assert row.split("|")[4:6] == [" 25.0 ± 5.0 ", " **75.0 ± 5.0** "]
    # ... and in returns (the paper's units for its Tables 2 and 3): the same scores mapped through the references.
    returns = (out / "tables" / "variants_return.md").read_text()
    row = next(line for line in returns.splitlines() if "| BC | Hopper |" in line)
    spread = 5.0 / 100 * (REFS["hopper"][1] - REFS["hopper"][0])
    assert row.split("|")[4:6] == [f" {_to_return('hopper', 25.0):.1f} ± {spread:.1f} ",
                                   f" **{_to_return('hopper', 75.0):.1f} ± {spread:.1f}** "]
    with open(out / "tables" / "final_scores.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["variant"] == "early-stop" and r["seed"] == "0")
    assert (row["size"], row["train_size"], row["kept_at"]) == ("5000", "4000", "5000")
    assert float(row["final_return"]) == pytest.approx(_to_return("hopper", 70.0))


def test_selection_table_scores_each_run_where_each_held_out_signal_is_lowest(tmp_path, built):
    """Two IQL seeds whose scores climb 1/4, 2/4, 3/4, 4/4 of their final score over four evaluations, with
    held-out losses lowest at the 1st (actor), 2nd (critic) and 4th (value) evaluation; the action MSE
    (0.1 + 0.01 i) is lowest at the first. A BC run without held-out losses stays out of the table."""
    runs = tmp_path / "runs"
    losses = {"validation_actor_loss": [1.0, 2.0, 3.0, 4.0], "validation_critic_loss": [3.0, 1.0, 2.0, 4.0],
              "validation_value_loss": [4.0, 3.0, 2.0, 1.0]}
    for seed, final in ((0, 40.0), (1, 80.0)):
        directory = runs / "x" / f"seed_{seed}"
        _write_run(directory, "iql", "hopper", "dense", seed, final)
        summary = json.loads((directory / "summary.json").read_text())
        for i, row in enumerate(summary["eval_history"]):
            row.update({name: values[i] for name, values in losses.items()})
        (directory / "summary.json").write_text(json.dumps(summary))
    _write_run(runs / "y" / "seed_0", "bc", "hopper", "dense", 0, 50.0)
    # an early-stopping run that kept its first agent (score 5 of 20): its final score here is the last evaluation
    early = runs / "z" / "seed_0"
    _write_run(early, "iql", "walker2d", "dense", 0, 20.0, keep_lowest_validation_mse=True)
    summary = json.loads((early / "summary.json").read_text())
    for i, row in enumerate(summary["eval_history"]):
        row.update({name: values[i] for name, values in losses.items()})
    summary["lowest_validation_mse"] = {"step": 5000, "validation_mse": 0.1, "return_mean": 225.0,
                                        "normalized_score": 5.0}
    (early / "summary.json").write_text(json.dumps(summary))
    write_report(runs, tmp_path / "out", reps=50, seed=0)
    table = (tmp_path / "out" / "tables" / "selection.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 5k")]
    assert len(rows) == 2 and "IQL" in rows[0] and "Walker2d" in rows[1]
    assert [c.strip() for c in rows[1].strip("|").split("|")][4:7] == ["20.0", "20.0", "5.0 (5k)"]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    # final, best, then at lowest action MSE, actor, critic and value loss (scores 10/20 at 5k, 20/40 at 10k, ...)
    assert cells[4:] == ["60.0 ± 20.0", "60.0 ± 20.0", "15.0 ± 5.0 (5k, 5k)", "15.0 ± 5.0 (5k, 5k)",
                         "30.0 ± 10.0 (10k, 10k)", "60.0 ± 20.0 (20k, 20k)"]
    # IQM over tasks and seeds: the two Hopper seeds and the Walker2d run are one group of 3 scores. Final
    # (last evaluation) 40, 80, 20; at the lowest critic loss 20, 40, 10. With 3 scores the IQM (scipy's
    # trim_mean at 25%: int(0.75) = 0 scores cut from each end) is their mean: 46.7 and 23.3.
    iqm = table.split("IQM over tasks and seeds")[1]
    row = [c.strip() for c in next(line for line in iqm.splitlines() if line.startswith("| IQL")).strip("|").split("|")]
    assert row[:3] == ["IQL", "5k", "dense"] and row[3].startswith("46.7 [") and row[3].endswith("(n=3)")
    assert row[6].startswith("11.7 [") and row[7].startswith("23.3 [")  # at lowest actor, critic loss
    assert "selection.md" in (tmp_path / "out" / "index.md").read_text()
    assert not (built[1] / "tables" / "selection.md").exists()  # no run logs a held-out loss there
