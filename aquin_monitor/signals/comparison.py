"""Paired comparison of a per-query score before and after: mean change, bootstrap interval, query counts.

Two evaluations of one model family on the same queries give one score per query each (``before[q]``,
``after[q]``, e.g. NDCG@10). Their difference is judged on the paired differences
``d_q = after[q] − before[q]`` over the queries scored in both (finite in both):

    mean change   Δ = (1/n) Σ_q d_q            (= mean(after) − mean(before) over those queries)
    better        #{q : d_q >  tol}
    worse         #{q : d_q < −tol}
    unchanged     #{q : |d_q| ≤ tol}           (tol = 1e-9: a score computed from the same ranks is equal)

Confidence interval: the paired percentile bootstrap over queries (Efron & Tibshirani 1993, ch. 13;
the "paired" resampling of :func:`scipy.stats.bootstrap`): draw n queries with replacement
``n_resamples`` times (``numpy.random.default_rng(seed)``), take the mean of their d_q each time, and
report the (1 − level)/2 and (1 + level)/2 quantiles of those means (linear interpolation, numpy's
default). Resampling whole queries keeps each query's before and after together, so the interval
reflects how much the change varies from query to query, not how good the queries are. Percentile
rather than BCa: the statistic is a plain mean, and the interval of a change that is exactly 0 on
every query is exactly [0, 0]. It is a sampled estimate: two seeds give intervals that differ by
about the Monte Carlo error of a quantile (~1 % of the width at 10,000 resamples).

The verdict rule is the interval's sign: better when the lower end is above 0, worse when the upper end
is below 0, no detectable change otherwise (the interval holds 0).

>>> before = [0.5, 0.2, 0.9, 0.4, 0.0, 0.7]
>>> after = [0.6, 0.3, 0.9, 0.6, 0.1, 0.8]
>>> c = paired_comparison(before, after, seed=0)
>>> round(c.delta, 4), (c.better, c.worse, c.unchanged), c.direction
(0.1, (5, 0, 1), 1)
>>> c.ci_low > 0
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedComparison", "paired_comparison", "bootstrap_mean_interval", "UNCHANGED_TOLERANCE"]

#: |after − before| at or below this counts as unchanged.
UNCHANGED_TOLERANCE = 1e-9
#: Resampled values held at once (resamples × queries) while bootstrapping: bounded memory for any n.
_BOOTSTRAP_BLOCK_CELLS = 1 << 22


@dataclass(frozen=True)
class PairedComparison:
    """The paired comparison of one per-query score (see the module docstring).

    ``mean_before`` / ``mean_after`` are over the ``n`` queries scored in both; ``delta`` is their
    difference; ``ci_low`` / ``ci_high`` the bootstrap interval of ``delta`` at ``confidence``
    (NaN when ``n`` is 0); ``direction`` +1 (better), −1 (worse) or 0 (no detectable change).
    """

    n: int
    mean_before: float
    mean_after: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    n_resamples: int
    better: int
    worse: int
    unchanged: int

    @property
    def direction(self) -> int:
        if self.n and self.ci_low > 0:
            return 1
        if self.n and self.ci_high < 0:
            return -1
        return 0


def bootstrap_mean_interval(
    differences: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (1-D, finite).

    Resamples are drawn in blocks of at most ~4M values, so memory stays bounded whatever the number
    of queries; the draws are those of one ``rng.integers(0, n, size=(n_resamples, n))`` call.

    >>> bootstrap_mean_interval(np.array([0.25, 0.25, 0.25]))
    (0.25, 0.25)
    """
    values = np.asarray(differences, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"differences must be a non-empty 1-D array, got shape {values.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n = values.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    block = max(1, _BOOTSTRAP_BLOCK_CELLS // n)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_comparison(
    before: object,
    after: object,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    tolerance: float = UNCHANGED_TOLERANCE,
) -> PairedComparison:
    """Compare per-query scores ``before`` and ``after`` (same queries, same order; NaN: not scored).

    Queries not finite in both are left out (a query without a relevant document has NaN NDCG).
    With no query left, the means and the interval are NaN and the direction 0.

    >>> c = paired_comparison([0.3, float("nan"), 0.5], [0.3, 0.9, 0.5])
    >>> c.n, c.delta, (c.ci_low, c.ci_high), c.unchanged, c.direction
    (2, 0.0, (0.0, 0.0), 2, 0)
    """
    x = np.asarray(before, dtype=np.float64).ravel()
    y = np.asarray(after, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"before and after must score the same queries: {x.size} vs {y.size} values")
    scored = np.isfinite(x) & np.isfinite(y)
    d = y[scored] - x[scored]
    n = int(d.size)
    if n == 0:
        low = high = math.nan
        mean_before = mean_after = delta = math.nan
    else:
        low, high = bootstrap_mean_interval(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
        mean_before, mean_after = float(x[scored].mean()), float(y[scored].mean())
        delta = float(d.mean())
    return PairedComparison(
        n=n,
        mean_before=mean_before,
        mean_after=mean_after,
        delta=delta,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        n_resamples=n_resamples,
        better=int(np.sum(d > tolerance)),
        worse=int(np.sum(d < -tolerance)),
        unchanged=int(np.sum(np.abs(d) <= tolerance)),
    )
