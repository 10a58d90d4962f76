"""A calibrated two-sample test of drift: did the space move more than re-sampling the probe explains?

The drift measures of :mod:`aquin_monitor.signals.drift` say *how much* a space moved; this module says
whether the move is larger than noise, with a p-value whose false-alarm rate is measured
(``scripts/bench_drift_calibration.py``, README "Drift test calibration").

The design (:func:`drift_test`). Base and fine-tuned embeddings of the same probe are paired, and a paired
statistic of an unchanged model is exactly 0 (p = 1: no calibration possible), while the two spaces are
not aligned (a rotation of a space is the same model). So the probe is split, with a seed, into a
reference set R and two disjoint halves A and B. The feature of a text t under a model m is its
*similarity profile* to R under that same model::

    profile_m(t) = ( cos(m(t), m(r)) )  for r in R

which is invariant to any rotation or scaling of m's space, hence comparable across unaligned spaces.
The two samples are X = profiles of A under the reference model (before) and Y = profiles of B under
the other model (after); the test is an MMD² permutation test on them (:func:`mmd_permutation_test`).
Under the null "the two models are the same function", the split is uniformly random, so X and Y are
exchangeable and the permutation p-value is exact at every level (up to the Monte-Carlo resolution of
the permutations); a model whose profiles of unseen texts are distributed differently is detected.

>>> rng = np.random.default_rng(0)
>>> base = rng.standard_normal((90, 8))
>>> drift_test(base, base @ np.linalg.qr(rng.standard_normal((8, 8)))[0], seed=1).p_value > 0.05  # a rotation
True
>>> drift_test(base, np.tanh(3 * base) + 1.0, seed=1).p_value < 0.01  # a different function
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import pdist, squareform
from scipy.stats import permutation_test

from .arrays import metric_name, unit_rows

#: Significance level of the one-sentence verdict (the calibrated false-alarm rate is measured at it).
DRIFT_TEST_ALPHA = 0.05
#: Smallest probe the test runs on: two texts in each of R, A and B (the unbiased MMD² needs two per sample).
DRIFT_TEST_MIN_TEXTS = 6


def rbf_kernel_median(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """Gaussian kernel matrix of the rows of ``samples`` with the median-heuristic bandwidth.

    With D the Euclidean distances between rows and σ the median of D over distinct pairs
    (Gretton et al. 2012)::

        K[i, j] = exp(−D[i, j]² / (2σ²))

    σ falls back to the mean of the positive distances when more than half the pairs coincide, and to
    1 when every row is the same (K is then all ones). The bandwidth depends on the pooled rows only, not on
    which sample a row came from, so permuting the samples leaves K unchanged.

    >>> kernel, sigma = rbf_kernel_median(np.array([[0.0], [1.0], [3.0]]))
    >>> sigma, round(float(kernel[0, 1]), 4)  # distances 1, 2, 3: median 2, exp(-1/8)
    (2.0, 0.8825)
    """
    distances = pdist(np.asarray(samples, dtype=np.float64))
    sigma = float(np.median(distances)) if distances.size else 0.0
    if sigma <= 0.0:
        positive = distances[distances > 0.0]
        sigma = float(positive.mean()) if positive.size else 1.0
    return np.exp(-(squareform(distances) ** 2) / (2.0 * sigma**2)), sigma


def mmd2_from_assignments(kernel: np.ndarray, in_x: np.ndarray) -> np.ndarray:
    """Unbiased MMD² (Gretton et al. 2012, eq. 3) of many splits of one pooled sample at once.

    ``kernel`` is the ``[N, N]`` kernel matrix of the pooled rows, ``in_x`` a boolean ``[b, N]`` (or
    ``[N]``) mask per split, True for the rows of X (m of them; the n others are Y)::

        MMD²_u = Σ_{i≠j∈X} K_ij / (m(m−1)) + Σ_{i≠j∈Y} K_ij / (n(n−1)) − 2 Σ_{i∈X, j∈Y} K_ij / (mn)

    The block sums come from one matrix product ``mask @ K`` per batch, O(b·N²), instead of gathering
    three sub-matrices per split. Needs m ≥ 2 and n ≥ 2.

    >>> kernel = np.array([[1.0, 0.5, 0.0, 0.1], [0.5, 1.0, 0.2, 0.0], [0.0, 0.2, 1.0, 0.4], [0.1, 0.0, 0.4, 1.0]])
    >>> round(float(mmd2_from_assignments(kernel, np.array([True, True, False, False]))[0]), 6)  # 0.5 + 0.4 - 0.15
    0.75
    """
    masks = np.atleast_2d(np.asarray(in_x, dtype=np.float64))
    m = masks.sum(axis=1)
    n = kernel.shape[0] - m
    if np.any(m < 2) or np.any(n < 2):
        raise ValueError("MMD² needs at least 2 rows in each sample")
    diagonal_x = masks @ np.diag(kernel)
    x_rows = masks @ kernel  # x_rows[b, j] = Σ_{i∈X} K[i, j]
    block_xx = np.einsum("bn,bn->b", x_rows, masks)  # Σ_{i,j∈X} K_ij, diagonal included
    block_xy = x_rows.sum(axis=1) - block_xx
    block_yy = kernel.sum() - block_xx - 2.0 * block_xy
    sum_xx = block_xx - diagonal_x
    sum_yy = block_yy - (np.trace(kernel) - diagonal_x)
    return sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2.0 * block_xy / (m * n)


@dataclass(frozen=True)
class MmdTest:
    """An MMD² permutation test: the statistic, its p-value and the kernel bandwidth used."""

    statistic: float
    p_value: float
    n_permutations: int
    bandwidth: float


def mmd_permutation_test(x: object, y: object, *, n_permutations: int = 1000, seed: int = 0) -> MmdTest:
    """Two-sample test of "x and y are drawn from one distribution": unbiased MMD² with a permutation p-value.

    The kernel is :func:`rbf_kernel_median` of the pooled rows, computed once; the statistic is
    :func:`mmd2_from_assignments`; the permutations and the p-value are ``scipy.stats.permutation_test``'s
    (``permutation_type="independent"``, ``alternative="greater"``) on the row indices::

        p = (1 + #{permutations π : MMD²_u(π) ≥ MMD²_u(observed)}) / (1 + n_permutations)

    (exact enumeration instead when ``n_permutations`` covers every split). The smallest p is
    1 / (1 + n_permutations): 1000 permutations resolve p to 0.001.

    Args:
        x: ``[m, p]`` rows of the first sample. y: ``[n, p]`` rows of the second (m, n ≥ 2).
        n_permutations: random splits drawn. seed: seed of the permutations.

    Returns:
        An :class:`MmdTest`.

    >>> rng = np.random.default_rng(0)
    >>> same = mmd_permutation_test(rng.normal(size=(40, 3)), rng.normal(size=(40, 3)))
    >>> moved = mmd_permutation_test(rng.normal(size=(40, 3)), rng.normal(1.0, size=(40, 3)))
    >>> same.p_value > 0.05, moved.p_value, moved.statistic > same.statistic
    (True, 0.000999000999000999, True)
    """
    x_rows = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y_rows = np.atleast_2d(np.asarray(y, dtype=np.float64))
    if x_rows.shape[0] < 2 or y_rows.shape[0] < 2 or x_rows.shape[1] != y_rows.shape[1]:
        raise ValueError(f"need two samples of at least 2 rows of one width, got {x_rows.shape} and {y_rows.shape}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    kernel, bandwidth = rbf_kernel_median(np.concatenate([x_rows, y_rows]))
    m, total = x_rows.shape[0], kernel.shape[0]

    def statistic(x_index: np.ndarray, y_index: np.ndarray, axis: int = -1) -> np.ndarray:
        index = np.atleast_2d(x_index).astype(np.intp)
        masks = np.zeros((index.shape[0], total), dtype=bool)
        np.put_along_axis(masks, index, True, axis=1)
        values = mmd2_from_assignments(kernel, masks)
        return values if np.ndim(x_index) > 1 else values[0]

    result = permutation_test(
        (np.arange(m), np.arange(m, total)),
        statistic,
        permutation_type="independent",
        vectorized=True,
        n_resamples=n_permutations,
        alternative="greater",
        batch=256,
        rng=np.random.default_rng(seed),
    )
    return MmdTest(
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        n_permutations=n_permutations,
        bandwidth=bandwidth,
    )


@dataclass(frozen=True)
class ProbeSplit:
    """Disjoint index sets of one probe: the reference texts R and the two halves A (before) and B (after)."""

    reference: np.ndarray
    before: np.ndarray
    after: np.ndarray


def split_probe(n: int, seed: int = 0, reference_fraction: float = 1 / 3) -> ProbeSplit:
    """A seeded random split of ``n`` probe texts into R (``reference_fraction`` of them) and two halves.

    ``|R| = max(2, round(n · reference_fraction))``; the rest is shuffled and halved, A taking the smaller half
    when the count is odd. Needs n ≥ 6 (:data:`DRIFT_TEST_MIN_TEXTS`).

    >>> split = split_probe(10, seed=0)
    >>> len(split.reference), len(split.before), len(split.after)
    (3, 3, 4)
    >>> sorted(np.concatenate([split.reference, split.before, split.after]).tolist()) == list(range(10))
    True
    """
    if n < DRIFT_TEST_MIN_TEXTS:
        raise ValueError(f"the drift test needs at least {DRIFT_TEST_MIN_TEXTS} probe texts, got {n}")
    if not 0.0 < reference_fraction < 1.0:
        raise ValueError(f"reference_fraction must be in (0, 1), got {reference_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_reference = min(max(2, round(n * reference_fraction)), n - 4)
    rest = order[n_reference:]
    half = rest.size // 2
    return ProbeSplit(reference=np.sort(order[:n_reference]), before=np.sort(rest[:half]), after=np.sort(rest[half:]))


def similarity_profiles(embeddings: object, rows: np.ndarray, reference: np.ndarray, name: str = "x") -> np.ndarray:
    """Cosine of each of ``rows`` to each of ``reference``, in one space: ``[len(rows), len(reference)]``.

    profile(t) = (cos(e_t, e_r))_{r ∈ reference}: unchanged by any rotation, reflection or scaling of the
    space, so profiles of two unaligned spaces can be compared.

    >>> space = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> similarity_profiles(space, np.array([2]), np.array([0, 1])).round(4).tolist()
    [[0.7071, 0.7071]]
    """
    unit = unit_rows(embeddings, name, min_rows=1)
    return unit[rows] @ unit[reference].T


@dataclass(frozen=True)
class DriftTest:
    """Result of :func:`drift_test`: the MMD² statistic, its p-value and the sizes of R, A and B."""

    statistic: float
    p_value: float
    n_permutations: int
    bandwidth: float
    n_reference: int
    n_before: int
    n_after: int

    @property
    def significant(self) -> bool:
        """p < :data:`DRIFT_TEST_ALPHA`: the space moved more than re-sampling the probe explains."""
        return self.p_value < DRIFT_TEST_ALPHA

    def as_metrics(self, prefix: str = "drift") -> dict[str, float]:
        return {metric_name(prefix, "p_value"): self.p_value, metric_name(prefix, "mmd2"): self.statistic}


def drift_test(
    before: object, after: object, *, n_permutations: int = 1000, seed: int = 0, reference_fraction: float = 1 / 3
) -> DriftTest:
    """Did the space move from ``before`` to ``after`` more than re-sampling the probe explains?

    Rows of ``before`` and ``after`` are the same probe texts (their dimensions may differ). With the
    :func:`split_probe` (R, A, B) drawn from ``seed`` and :func:`similarity_profiles` in each space::

        X = profile_before(A),  Y = profile_after(B)
        statistic = MMD²_u(X, Y)   (Gaussian kernel, median-heuristic bandwidth)
        p_value   = permutation p-value of the statistic (n_permutations splits of X ∪ Y)

    by :func:`mmd_permutation_test`. When before and after are the same function (or differ by a rotation),
    X and Y are profiles of two random halves of one set, exchangeable, and p is uniform: a false-alarm rate
    of α at level α. The price of that calibration: the test sees the *distribution* of profiles, not
    each text's own change, and spends a third of the probe on R and half the rest on each side.

    Args:
        before: ``[n, d₁]`` embeddings under the reference model. after: ``[n, d₂]`` under the other model.
        n_permutations: permutations of the p-value. seed: seed of the split and of the permutations.
        reference_fraction: share of the probe used as R.

    Returns:
        A :class:`DriftTest`; ``as_metrics(prefix)`` gives ``<prefix>/p_value`` and ``<prefix>/mmd2``.

    >>> space = np.random.default_rng(0).standard_normal((60, 5))
    >>> result = drift_test(space, 3.0 * space, seed=4)  # a rescaled copy: the same function
    >>> result.n_reference, result.n_before, result.n_after, result.significant
    (20, 20, 20, False)
    """
    before_unit = unit_rows(before, "before", min_rows=DRIFT_TEST_MIN_TEXTS)
    after_unit = unit_rows(after, "after", min_rows=DRIFT_TEST_MIN_TEXTS)
    if before_unit.shape[0] != after_unit.shape[0]:
        raise ValueError(
            "before and after must hold the same probe texts, got "
            f"{before_unit.shape[0]} and {after_unit.shape[0]} rows"
        )
    split = split_probe(before_unit.shape[0], seed, reference_fraction)
    x = similarity_profiles(before_unit, split.before, split.reference, "before")
    y = similarity_profiles(after_unit, split.after, split.reference, "after")
    test = mmd_permutation_test(x, y, n_permutations=n_permutations, seed=seed)
    return DriftTest(
        statistic=test.statistic,
        p_value=test.p_value,
        n_permutations=n_permutations,
        bandwidth=test.bandwidth,
        n_reference=int(split.reference.size),
        n_before=int(split.before.size),
        n_after=int(split.after.size),
    )


def drift_test_sentence(p_value: float, statistic: float, alpha: float = DRIFT_TEST_ALPHA) -> str:
    """The plain sentence a report or the CLI prints for one drift test.

    >>> drift_test_sentence(0.000999, 0.0412)
    'The space moved more than re-sampling the probe explains (p = 0.001, MMD² = 0.0412; two-sample test at α = 0.05).'
    >>> print(drift_test_sentence(0.41, -0.0003))  # doctest: +NORMALIZE_WHITESPACE
    The space did not move more than re-sampling the probe explains
    (p = 0.41, MMD² = -0.0003; two-sample test at α = 0.05).
    """
    if not (math.isfinite(p_value) and math.isfinite(statistic)):
        return "The two-sample drift test has no result for this snapshot."
    verdict = "moved" if p_value < alpha else "did not move"
    return (
        f"The space {verdict} more than re-sampling the probe explains "
        f"(p = {p_value:.2g}, MMD² = {statistic:.3g}; two-sample test at α = {alpha:g})."
    )
