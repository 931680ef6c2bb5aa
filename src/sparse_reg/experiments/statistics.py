"""The numbers behind the report: IQM, stratified-bootstrap CIs, mean ± std and ± standard error.

std over seeds is the population std (``ddof=0``, what ``np.std`` gives, as in most offline RL
papers). Curves are mean ± standard error over seeds; the aggregate over tasks is the mean of
the task means with standard error ``sqrt(sum_t s_t^2 / n_t) / T``. IQM and its CI follow
rliable (Agarwal et al., 2021): the IQM is the mean of the middle 50% of all (task, seed) scores
after cutting ``int(0.25 n)`` from each end (``scipy.stats.trim_mean(x, 0.25)``), and the CI is
the percentile interval of the IQM over bootstrap replicates that resample seeds with
replacement *within each task* (stratified bootstrap).

rliable itself is not a dependency, not even of the ``test`` extra; it is the reference that
``tests/test_statistics_rliable.py`` checks :func:`iqm` and :func:`stratified_bootstrap_ci`
against, on the committed scores (``docs/results/{table1-long,paper-code}``, final and late).
To run that check::

    pip install rliable 'pandas<3' && pytest tests/test_statistics_rliable.py

(about 1.5 minutes on 2 busy cores; without rliable those tests skip). It asserts that every
group's IQM, here and in the committed ``iqm.csv``, equals rliable's ``metrics.aggregate_iqm`` to
1e-12, and that the 95% CI endpoints of both, at 20000 replicates, lie within the Monte-Carlo
band [Q(p - 5 sigma), Q(p + 5 sigma)], sigma = sqrt(p (1 - p) / 20000), of the exact bootstrap
distribution Q (all 19683 stratified resamples of 3 tasks x 3 seeds, enumerated), so that they
differ by less than its width. On table1-long 13 of the 16 endpoints are identical and the
largest difference is 0.29 points (band 1.2 wide). The same test module checks this function's
CIs, and the committed ones (2000 replicates), against the exact distribution without rliable.

The two implementations resample the same way (each task's column with replacement, keeping its
count, tasks independent; rliable's default ``task_bootstrap=False``) and take the same
``np.percentile`` interval. They differ in what does not change the distribution: rliable wants a
rectangular (runs x tasks) matrix, where this takes one array per task, so tasks may have
different seed counts and NaNs are dropped; rliable draws its indices with ``np.random.choice``
from NumPy's global RandomState (the ``random_state`` it is given does not seed them, and passing
one warns), one replicate per Python call, where this draws from ``default_rng(seed)`` in one
vectorised step (20000 replicates of one group: 5-16 s against 0.02 s or less, on 2 busy cores).

Why not depend on it: rliable 1.2.0 pulls in arch, statsmodels, pandas, patsy, formulaic
(interface-meta, narwhals, wrapt), seaborn and absl-py: about 480 MB of site-packages in a fresh venv
with numpy and scipy (54 s to install); 165 MB of it (pandas 79, statsmodels 65) beyond what
this project installs, for the ~30 lines below. And as resolved by pip today it does not import: rliable caps arch below 8, and
arch 7.2.0 fails against pandas 3 (``deprecate_kwarg() missing 1 required positional argument``),
hence the ``pandas<3`` above (with pandas 2.3.3 it imports cleanly with NumPy 2.4.6).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np

LATE_FRACTION_START = 0.8  # late_mean averages the evaluations from 80% of the steps on


def iqm(values: Any) -> np.ndarray | float:
    """Interquartile mean along the last axis: drop ``int(0.25 n)`` values at each end, average the rest."""
    x = np.sort(np.asarray(values, dtype=float), axis=-1)
    n = x.shape[-1]
    cut = int(0.25 * n)
    return x[..., cut : n - cut].mean(axis=-1)


def stratified_bootstrap_ci(
    strata: Sequence[Sequence[float]],
    statistic: Callable[[np.ndarray], Any] = iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(point, lo, hi)``: the statistic of all scores and its percentile bootstrap CI.

    ``strata`` holds one array of scores (one per seed) per task. Each replicate resamples every
    task's scores with replacement, keeping each task's count (rliable's stratified bootstrap),
    and ``statistic`` is applied along the last axis of the (reps, n) replicate matrix.
    NaNs are dropped; empty tasks are ignored; no scores at all gives NaNs.
    """
    strata = [np.asarray(s, dtype=float).ravel() for s in strata]
    strata = [s[np.isfinite(s)] for s in strata]
    strata = [s for s in strata if s.size]
    if not strata:
        return math.nan, math.nan, math.nan
    point = float(statistic(np.concatenate(strata)))
    rng = np.random.default_rng(seed)
    replicates = np.concatenate([s[rng.integers(0, s.size, size=(reps, s.size))] for s in strata], axis=1)
    estimates = np.asarray(statistic(replicates), dtype=float)
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(estimates, [tail, 100.0 - tail])
    return point, float(lo), float(hi)


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, population std (ddof=0) and count of the finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std()), int(x.size)


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard error (from the ddof=1 variance; 0 for one value) and count of the finite values."""
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, 0
    var = float(x.var(ddof=1)) if x.size > 1 else 0.0
    return float(x.mean()), math.sqrt(var / x.size), int(x.size)


def late_mean(evaluations: Sequence[tuple[float, float]], steps: float | None) -> float:
    """Mean score of the ``(step, score)`` evaluations in the last 20% of ``steps`` (NaN scores
    left out; ``steps`` falsy: the last evaluation's step stands for the run's length)."""
    start = LATE_FRACTION_START * (steps or max((step for step, _ in evaluations), default=math.nan))
    scores = [score for step, score in evaluations if step >= start and not math.isnan(score)]
    return float(np.mean(scores)) if scores else math.nan


def as_float(value) -> float:
    """A CSV or JSON cell as a float; NaN when it is empty or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
