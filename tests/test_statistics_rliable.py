"""statistics.py's IQM and stratified-bootstrap CI, checked on the committed scores.

Two references, both independent of statistics.py:

* the *exact* bootstrap distribution: with 3 seeds per task there are only 3^3 = 27 equally likely
  resamples of a task, so the 27^3 = 19683 resamples of a 3-task group can all be enumerated and
  the IQM of each computed with scipy's ``trim_mean`` (what rliable's ``aggregate_iqm`` calls);
* rliable itself (Agarwal et al., 2021): ``metrics.aggregate_iqm`` and
  ``library.get_interval_estimates`` (``StratifiedBootstrap``, percentile method). rliable is not in
  the ``test`` extra (see statistics.py's docstring), so those tests skip without it:
  ``pip install rliable 'pandas<3' && pytest tests/test_statistics_rliable.py``.

A bootstrap CI endpoint is the empirical p-quantile (p = 0.025, 0.975) of R replicates. The
empirical CDF at any point has standard deviation at most sigma = sqrt(p (1 - p) / R) around the
exact CDF, so an endpoint outside [Q(p - 5 sigma), Q(p + 5 sigma)] of the exact distribution Q is a
5-sigma event (probability below 1e-6). Each implementation's endpoints must lie in that band, so
the two implementations can differ by at most its width; the widths are computed, not assumed.
A bootstrap that pooled all scores instead of resampling within tasks, or an IQM that trimmed
another fraction, fails these tests.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from sparse_reg.experiments.statistics import iqm, stratified_bootstrap_ci

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
DIRS = ("table1-long", "paper-code")
METRICS = {"final_score": "final_normalized_score", "late_score": "late_normalized_score"}
TAILS = (0.025, 0.975)  # the 95% percentile interval
BAND_SIGMAS = 5.0
REPS = 20_000  # replicates for the comparison with rliable
COMMITTED_REPS = 2000  # what the committed iqm.csv was made with (report.py's default)
MAX_ENUMERATED = 100_000  # resamples of a group enumerated for its exact bootstrap distribution


def score_matrices(directory: str, metric: str) -> dict[tuple[str, str, str], np.ndarray]:
    """(algo, size, variant) -> (runs x tasks) matrix of the committed scores, rliable's layout.

    Tasks are the families (the report's strata); with several sizes an (algo, "all", variant)
    matrix has one column per (size, family), as in tables.iqm_estimates.
    """
    cells: dict[tuple, dict[tuple, dict[int, float]]] = {}
    with open(RESULTS / directory / "report" / "tables" / "final_scores.csv") as f:
        for row in csv.DictReader(f):
            score = float(row[METRICS[metric]])
            for size, task in ((row["size"], (row["family"],)), ("all", (row["size"], row["family"]))):
                cells.setdefault((row["algo"], size, row["variant"]), {}).setdefault(task, {})[int(row["seed"])] = score
    matrices = {}
    for key, tasks in cells.items():
        if key[1] == "all" and len({task[0] for task in tasks}) == 1:
            continue  # one size: no "all" estimate
        seeds = sorted(next(iter(tasks.values())))
        assert all(sorted(runs) == seeds for runs in tasks.values()), f"{directory} {key}: not rectangular"
        matrices[key] = np.array([[tasks[task][seed] for task in sorted(tasks)] for seed in seeds])
    return matrices


def committed_estimates(directory: str, metric: str) -> dict[tuple[str, str, str], dict[str, str]]:
    with open(RESULTS / directory / "report" / "tables" / "iqm.csv") as f:
        return {(r["algo"], r["size"], r["variant"]): r for r in csv.DictReader(f) if r["metric"] == metric}


def exact_bootstrap_iqms(scores: np.ndarray) -> np.ndarray:
    """The IQM of every equally likely stratified resample of a (runs x tasks) matrix, sorted."""
    stats = pytest.importorskip("scipy.stats")
    n, tasks = scores.shape
    picks = np.array(list(itertools.product(range(n), repeat=n)))  # the n^n resamples of one task
    grid = np.meshgrid(*[np.arange(len(picks))] * tasks, indexing="ij")
    resamples = np.concatenate([scores[picks[g.ravel()], t] for t, g in enumerate(grid)], axis=1)
    return np.sort(stats.trim_mean(resamples, 0.25, axis=1))


def band(exact: np.ndarray, p: float, reps: int) -> tuple[float, float]:
    """[Q(p - 5 sigma), Q(p + 5 sigma)] of the exact distribution, sigma = sqrt(p (1 - p) / reps)."""
    sigma = math.sqrt(p * (1.0 - p) / reps)
    q = [min(max(p + s * BAND_SIGMAS * sigma, 0.0), 1.0) for s in (-1, 1)]
    lo, hi = np.quantile(exact, q, method="inverted_cdf")
    return float(lo), float(hi)


def cases(small_only: bool, dirs=DIRS):
    """pytest params over (directory, metric, group); ``small_only``: the groups whose exact
    distribution is enumerable (3 tasks x 3 seeds: 19683 resamples; not the 6-column "all" groups)."""
    out = []
    for directory in dirs:
        for metric in METRICS:
            for key, scores in score_matrices(directory, metric).items():
                n, tasks = scores.shape
                if not small_only or (n**n) ** tasks <= MAX_ENUMERATED:
                    out.append(pytest.param(directory, metric, key, id=f"{directory}-{metric}-{'-'.join(key)}"))
    return out


def _rliable():
    pytest.importorskip("rliable")
    try:
        from rliable import library, metrics
    except TypeError as error:  # arch 7.x (rliable pins arch < 8) does not import with pandas 3
        pytest.skip(f"rliable does not import ({error}); install 'pandas<3'")
    return library, metrics


def rliable_ci(scores: np.ndarray, reps: int, seed: int = 0) -> tuple[float, float, float]:
    """rliable's IQM and 95% stratified-bootstrap percentile CI of a (runs x tasks) matrix.

    rliable's StratifiedBootstrap draws its indices with ``np.random.choice`` (the global
    RandomState), not with the ``random_state`` it is given, so it is seeded through the global
    state, which is put back afterwards.
    """
    library, metrics = _rliable()
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        points, intervals = library.get_interval_estimates(
            {"x": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
    finally:
        np.random.set_state(state)
    (lo,), (hi,) = intervals["x"]
    return float(points["x"][0]), float(lo), float(hi)


# ----------------------------------------------------------------------------- without rliable


@pytest.mark.parametrize("directory, metric, key", cases(small_only=True))
def test_bootstrap_ci_within_monte_carlo_band_of_exact_bootstrap(directory, metric, key):
    """statistics.py's CI at REPS replicates, and the committed iqm.csv's at 2000, against the exact bootstrap."""
    scores = score_matrices(directory, metric)[key]
    exact = exact_bootstrap_iqms(scores)
    committed = committed_estimates(directory, metric)[key]
    _, lo, hi = stratified_bootstrap_ci(list(scores.T), reps=REPS, seed=0)
    for p, ours, theirs in zip(TAILS, (lo, hi), (committed["ci_low"], committed["ci_high"])):
        low, high = band(exact, p, REPS)
        assert low <= ours <= high, f"{p}: {ours} outside [{low}, {high}] (exact {np.quantile(exact, p)})"
        low, high = band(exact, p, COMMITTED_REPS)
        assert low <= float(theirs) <= high, f"committed {p}: {theirs} outside [{low}, {high}]"


# ----------------------------------------------------------------------------- against rliable


@pytest.mark.parametrize("directory", DIRS)
@pytest.mark.parametrize("metric", METRICS)
def test_iqm_equals_rliable_aggregate_iqm(directory, metric):
    """Every group's point IQM (statistics.py, and the committed iqm.csv) is rliable's to 1e-12."""
    _, metrics = _rliable()
    committed = committed_estimates(directory, metric)
    matrices = score_matrices(directory, metric)
    assert set(matrices) == set(committed)  # the same groups as the report
    for key, scores in matrices.items():
        theirs = metrics.aggregate_iqm(scores)
        assert abs(iqm(scores.ravel()) - theirs) < 1e-12, key
        assert abs(stratified_bootstrap_ci(list(scores.T), reps=1)[0] - theirs) < 1e-12, key
        assert abs(float(committed[key]["iqm"]) - theirs) < 1e-12, key  # written with repr()


@pytest.mark.parametrize("directory, metric, key", cases(small_only=True, dirs=("table1-long",)))
def test_bootstrap_ci_agrees_with_rliable(directory, metric, key):
    """Both CIs at REPS replicates fall in the exact bootstrap's 5-sigma band, so they differ by
    less than its width; a non-stratified resample or a different trim falls outside it."""
    scores = score_matrices(directory, metric)[key]
    exact = exact_bootstrap_iqms(scores)
    point, lo, hi = stratified_bootstrap_ci(list(scores.T), reps=REPS, seed=0)
    r_point, r_lo, r_hi = rliable_ci(scores, reps=REPS)
    assert abs(point - r_point) < 1e-12
    for p, ours, theirs in zip(TAILS, (lo, hi), (r_lo, r_hi)):
        low, high = band(exact, p, REPS)
        assert low <= theirs <= high, f"rliable {p}: {theirs} outside [{low}, {high}]"
        assert low <= ours <= high, f"statistics.py {p}: {ours} outside [{low}, {high}]"
        assert abs(ours - theirs) <= high - low
