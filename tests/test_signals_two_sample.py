"""The two-sample drift test (signals/two_sample.py) against independent references.

- the vectorised unbiased MMD² equals a direct double loop over the pairs (Gretton et al. 2012, eq. 3);
- the kernel equals scikit-learn's RBF kernel at the median bandwidth computed by hand;
- the permutation p-value equals an exact enumeration of every split (itertools) on a small sample;
- under the null (the same function, also rotated or rescaled) p is uniform: the false-alarm rate at 0.05 over
  200 seeded splits lies in the binomial 99.9 % range, and a Kolmogorov-Smirnov test does not reject uniformity;
- a known change (one cluster merged into another, a collapse) is detected;
- bad input gives one clear ValueError.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom, kstest
from sklearn.metrics.pairwise import rbf_kernel

from aquin_monitor.signals.two_sample import (
    DRIFT_TEST_ALPHA,
    drift_test,
    drift_test_sentence,
    mmd2_from_assignments,
    mmd_permutation_test,
    rbf_kernel_median,
    similarity_profiles,
    split_probe,
)


def loop_mmd2(kernel: np.ndarray, x_rows: list[int], y_rows: list[int]) -> float:
    """Unbiased MMD² written as Gretton et al.'s sums, one pair at a time."""
    m, n = len(x_rows), len(y_rows)
    xx = sum(kernel[i, j] for i in x_rows for j in x_rows if i != j) / (m * (m - 1))
    yy = sum(kernel[i, j] for i in y_rows for j in y_rows if i != j) / (n * (n - 1))
    xy = sum(kernel[i, j] for i in x_rows for j in y_rows) / (m * n)
    return xx + yy - 2.0 * xy


def clustered_space(n: int, d: int = 16, clusters: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``n`` texts in ``clusters`` topics (a probe-like space), and each text's topic."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)) * 2.0
    topics = rng.integers(0, clusters, n)
    return centres[topics] + rng.standard_normal((n, d)), topics


def random_rotation(d: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


def test_vectorised_mmd2_equals_the_double_loop():
    rng = np.random.default_rng(3)
    kernel, _ = rbf_kernel_median(rng.standard_normal((13, 4)))
    masks = np.zeros((6, 13), dtype=bool)
    for row in range(6):
        masks[row, rng.choice(13, size=2 + row, replace=False)] = True
    values = mmd2_from_assignments(kernel, masks)
    for row in range(6):
        x_rows = np.flatnonzero(masks[row]).tolist()
        y_rows = np.flatnonzero(~masks[row]).tolist()
        assert values[row] == pytest.approx(loop_mmd2(kernel, x_rows, y_rows), abs=1e-12)


def test_kernel_is_scikit_learn_rbf_at_the_median_distance():
    rows = np.random.default_rng(4).standard_normal((9, 3))
    distances = [math.dist(rows[i], rows[j]) for i in range(9) for j in range(i + 1, 9)]
    sigma = float(np.median(distances))
    kernel, bandwidth = rbf_kernel_median(rows)
    assert bandwidth == pytest.approx(sigma, rel=1e-12)
    np.testing.assert_allclose(kernel, rbf_kernel(rows, gamma=1.0 / (2.0 * sigma**2)), rtol=1e-12, atol=1e-15)


def test_kernel_of_coinciding_rows_falls_back_to_a_positive_bandwidth():
    rows = np.array([[0.0], [0.0], [0.0], [0.0], [2.0]])  # 6 of 10 distances are 0: the median is 0
    kernel, bandwidth = rbf_kernel_median(rows)
    assert bandwidth == pytest.approx(2.0) and np.all(np.isfinite(kernel))
    assert rbf_kernel_median(np.zeros((4, 2)))[1] == 1.0


def test_p_value_equals_an_exact_enumeration_of_every_split():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((4, 2)), rng.standard_normal((4, 2)) + 0.8
    pooled = np.concatenate([x, y])
    kernel, _ = rbf_kernel_median(pooled)
    observed = loop_mmd2(kernel, [0, 1, 2, 3], [4, 5, 6, 7])
    splits = list(itertools.combinations(range(8), 4))  # 70 splits, the observed one among them
    null = [loop_mmd2(kernel, list(s), [i for i in range(8) if i not in s]) for s in splits]
    expected = sum(value >= observed - 1e-12 for value in null) / len(splits)
    result = mmd_permutation_test(x, y, n_permutations=500)  # 500 > 70: scipy enumerates every split
    assert result.statistic == pytest.approx(observed, abs=1e-12)
    assert result.p_value == pytest.approx(expected, abs=1e-12)


def test_randomised_p_value_has_the_plus_one_form_and_its_resolution():
    rng = np.random.default_rng(6)
    far = mmd_permutation_test(rng.standard_normal((30, 3)), rng.standard_normal((30, 3)) + 5.0, n_permutations=99)
    assert far.p_value == pytest.approx(1 / 100)  # no permutation reaches a separated pair of samples


def test_split_is_disjoint_covering_and_seeded():
    a, b = split_probe(100, seed=3), split_probe(100, seed=3)
    assert all(np.array_equal(u, v) for u, v in zip((a.reference, a.before, a.after), (b.reference, b.before, b.after)))
    every = np.concatenate([a.reference, a.before, a.after])
    assert sorted(every.tolist()) == list(range(100))
    assert (len(a.reference), len(a.before), len(a.after)) == (33, 33, 34)
    assert not np.array_equal(split_probe(100, seed=4).reference, a.reference)


def test_profiles_are_rotation_and_scale_invariant_cosines():
    space, _ = clustered_space(20)
    turned = 2.5 * space @ random_rotation(16, 1)
    rows, reference = np.arange(10), np.arange(10, 20)
    expected = [
        [np.dot(space[i], space[r]) / (np.linalg.norm(space[i]) * np.linalg.norm(space[r])) for r in reference]
        for i in rows
    ]
    np.testing.assert_allclose(similarity_profiles(space, rows, reference), expected, atol=1e-12)
    np.testing.assert_allclose(similarity_profiles(turned, rows, reference), expected, atol=1e-12)


def test_null_p_values_are_uniform_over_splits():
    """The same function (here rotated and rescaled, as a retrained-but-equivalent model would be) over 200 seeds."""
    space, _ = clustered_space(90, seed=7)
    same_function = 0.5 * space @ random_rotation(16, 8)
    p_values = np.array([drift_test(space, same_function, seed=s, n_permutations=199).p_value for s in range(200)])
    alarms = int(np.sum(p_values < DRIFT_TEST_ALPHA))
    low, high = binom.ppf(0.0005, 200, DRIFT_TEST_ALPHA), binom.ppf(0.9995, 200, DRIFT_TEST_ALPHA)
    assert low <= alarms <= high, f"{alarms} false alarms of 200 at alpha 0.05"
    assert kstest(p_values, "uniform").pvalue > 0.001


def test_a_merged_cluster_and_a_collapse_are_detected():
    space, topics = clustered_space(300, seed=9)
    merged = space.copy()
    merged[topics == 1] += space[topics == 0].mean(axis=0) - space[topics == 1].mean(axis=0)  # topic 1 joins 0
    collapsed = space * 0.05 + np.ones(16)  # every text points one way
    for after in (merged, collapsed):
        p_values = [drift_test(space, after, seed=s, n_permutations=199).p_value for s in range(10)]
        assert max(p_values) < 0.01, p_values


def test_statistic_and_p_do_not_depend_on_the_rotation_of_either_space():
    space, topics = clustered_space(60, seed=10)
    moved = space + 3.0 * (topics == 2)[:, None]
    plain = drift_test(space, moved, seed=2, n_permutations=199)
    turned = drift_test(
        space @ random_rotation(16, 3), 4.0 * moved @ random_rotation(16, 4), seed=2, n_permutations=199
    )
    assert turned.statistic == pytest.approx(plain.statistic, abs=1e-9)
    assert turned.p_value == plain.p_value


def test_spaces_of_different_dimensions_can_be_tested():
    space, _ = clustered_space(30)
    result = drift_test(space, np.concatenate([space, space], axis=1), seed=0, n_permutations=99)
    assert result.n_reference + result.n_before + result.n_after == 30 and 0.0 < result.p_value <= 1.0


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        (np.ones((5, 3)), np.ones((5, 3)), "at least 6"),
        (np.eye(8) + 0.1, np.eye(9)[:, :8] + 0.1, "same probe texts"),
        (np.eye(8), np.where(np.eye(8) == 1, np.nan, 0.5), "NaN"),
        (np.eye(8), np.vstack([np.zeros(8), np.eye(8)[1:]]), "zero"),
    ],
)
def test_bad_input_names_the_problem(before, after, message):
    with pytest.raises(ValueError, match=message):
        drift_test(before, after)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reference_fraction"):
        split_probe(10, reference_fraction=1.0)
    with pytest.raises(ValueError, match="n_permutations"):
        mmd_permutation_test(np.ones((3, 2)), np.zeros((3, 2)), n_permutations=0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        mmd_permutation_test(np.ones((1, 2)), np.zeros((3, 2)))


def test_sentence_says_moved_only_below_alpha_and_handles_nan():
    assert "moved more than" in drift_test_sentence(0.01, 0.2)
    assert "did not move" in drift_test_sentence(0.05, 0.2)
    assert "no result" in drift_test_sentence(float("nan"), 0.2)
