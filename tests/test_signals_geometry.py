"""Geometry signals against brute force, closed forms and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.spatial.distance import pdist
from scipy.special import gamma, logsumexp
from sklearn.decomposition import PCA

from aquin_monitor.signals import arrays
from aquin_monitor.signals.geometry import (
    alignment,
    anisotropy,
    geometry_summary,
    intrinsic_dimension,
    label_alignment,
    ood_scores,
    pair_cosine_histogram,
    robust_ood_threshold,
    rogue_dimensions,
    uniform_sphere_cosine_bin_probabilities,
    uniformity,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_mean_cosine(x: np.ndarray) -> float:
    u = unit(np.asarray(x, dtype=np.float64))
    cosines = u @ u.T
    n = len(u)
    return float((cosines.sum() - np.trace(cosines)) / (n * (n - 1)))


# --------------------------------------------------------------------------- anisotropy


@pytest.mark.parametrize("n, d, offset", [(2, 3, 0.0), (7, 5, 0.0), (300, 64, 0.5), (500, 8, 3.0)])
def test_anisotropy_equals_brute_force(n, d, offset):
    x = np.random.default_rng(n).standard_normal((n, d)) + offset
    assert anisotropy(x) == pytest.approx(brute_force_mean_cosine(x), abs=1e-12)


def test_anisotropy_adversarial_cases():
    rng = np.random.default_rng(1)
    # norms spanning 300 orders of magnitude: only directions count
    x = rng.standard_normal((50, 6)) * (10.0 ** rng.uniform(-150, 150, size=(50, 1)))
    assert anisotropy(x) == pytest.approx(brute_force_mean_cosine(unit(x)), abs=1e-12)
    # entries whose squares overflow float64 take the rescaling path
    big = rng.standard_normal((20, 4))
    assert anisotropy(big * 1e200) == pytest.approx(anisotropy(big), abs=1e-12)
    # nearly parallel rows: no cancellation trouble near 1
    parallel = np.ones((100, 10)) + 1e-9 * rng.standard_normal((100, 10))
    assert anisotropy(parallel) == pytest.approx(brute_force_mean_cosine(parallel), abs=1e-12)
    assert anisotropy(parallel) == pytest.approx(1.0, abs=1e-12)
    # antipodal pairs cancel exactly: mean cosine is -1/(n-1)
    v = rng.standard_normal((10, 3))
    assert anisotropy(np.vstack([v, -v])) == pytest.approx(brute_force_mean_cosine(np.vstack([v, -v])), abs=1e-12)
    assert anisotropy([[1.0, 0.0], [-1.0, 0.0]]) == -1.0


def test_anisotropy_streams_across_blocks(monkeypatch):
    monkeypatch.setattr(arrays, "STREAM_BLOCK_ELEMENTS", 7 * 3)  # 3-row blocks of d=7
    x = np.random.default_rng(2).standard_normal((50, 7)) + 0.2
    assert anisotropy(x) == pytest.approx(brute_force_mean_cosine(x), abs=1e-12)


def test_anisotropy_accepts_torch_and_float32():
    x = np.random.default_rng(3).standard_normal((40, 16)).astype(np.float32)
    expected = brute_force_mean_cosine(x.astype(np.float64))
    assert anisotropy(x) == pytest.approx(expected, abs=1e-12)
    tensor = torch.from_numpy(x).requires_grad_()
    assert anisotropy(tensor) == pytest.approx(expected, abs=1e-12)
    assert anisotropy(tensor.to(torch.bfloat16)) == pytest.approx(expected, abs=2e-2)


def test_anisotropy_of_uniform_vectors_matches_closed_form_spread():
    # Pairwise cosines of independent uniform directions are uncorrelated with variance 1/d,
    # so the mean over M = n(n-1)/2 pairs has mean 0 and standard deviation 1/sqrt(d M).
    n, d, repeats = 40, 16, 400
    rng = np.random.default_rng(4)
    values = np.array([anisotropy(rng.standard_normal((n, d))) for _ in range(repeats)])
    predicted_std = 1.0 / math.sqrt(d * n * (n - 1) / 2)
    assert abs(values.mean()) < 4 * predicted_std / math.sqrt(repeats)
    assert values.std() == pytest.approx(predicted_std, rel=0.15)
    one_large = anisotropy(rng.standard_normal((3000, 64)))
    assert abs(one_large) < 5 / math.sqrt(64 * 3000 * 2999 / 2)


# --------------------------------------------------------------------------- histogram


def sphere_cosine_density(t: float, d: int) -> float:
    return gamma(d / 2) / (math.sqrt(math.pi) * gamma((d - 1) / 2)) * (1 - t * t) ** ((d - 3) / 2)


@pytest.mark.parametrize("d", [1, 2, 3, 5, 16, 384])
def test_baseline_integrates_to_one(d):
    edges = np.linspace(-1, 1, 51)
    probabilities = uniform_sphere_cosine_bin_probabilities(edges, d)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-12)
    assert (probabilities >= 0).all()


@pytest.mark.parametrize("d", [3, 5, 10, 50])
def test_baseline_equals_integrated_density_and_has_variance_one_over_d(d):
    edges = np.linspace(-1, 1, 21)
    probabilities = uniform_sphere_cosine_bin_probabilities(edges, d)
    by_quadrature = [integrate.quad(sphere_cosine_density, a, b, args=(d,))[0] for a, b in zip(edges[:-1], edges[1:])]
    np.testing.assert_allclose(probabilities, by_quadrature, atol=1e-10)
    # closed form of the density's variance, then the fine-binned baseline against it
    variance = integrate.quad(lambda t: t * t * sphere_cosine_density(t, d), -1, 1)[0]
    assert variance == pytest.approx(1 / d, rel=1e-8)
    fine = np.linspace(-1, 1, 4001)
    middles = (fine[:-1] + fine[1:]) / 2
    assert np.sum(uniform_sphere_cosine_bin_probabilities(fine, d) * middles**2) == pytest.approx(1 / d, rel=1e-3)


def test_baseline_for_three_dimensions_is_uniform_and_d1_is_two_points():
    np.testing.assert_allclose(
        uniform_sphere_cosine_bin_probabilities(np.linspace(-1, 1, 5), 3), [0.25] * 4, atol=1e-12
    )
    np.testing.assert_allclose(uniform_sphere_cosine_bin_probabilities([-1, 0, 1], 1), [0.5, 0.5])


@pytest.mark.parametrize("d", [2, 3, 10, 384])
def test_histogram_of_uniform_vectors_fits_the_baseline(d):
    x = np.random.default_rng(d).standard_normal((4000, d))
    histogram = pair_cosine_histogram(x, bins=40, max_pairs=20000, seed=1)
    assert histogram.n_pairs == 20000 and not histogram.exhaustive
    assert histogram.counts.sum() == 20000
    assert histogram.baseline_std == pytest.approx(1 / math.sqrt(d))
    assert histogram.std == pytest.approx(1 / math.sqrt(d), rel=0.05)
    assert abs(histogram.mean) < 5 / math.sqrt(d * 20000)
    expected = histogram.baseline_probabilities * histogram.n_pairs
    keep = expected >= 5  # chi-square needs populated bins; merge the rest into one
    observed = np.append(histogram.counts[keep], histogram.counts[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    if expected[-1] < 5:
        observed, expected = observed[:-1], expected[:-1] * observed[:-1].sum() / expected[:-1].sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_histogram_uses_every_pair_when_few_and_is_deterministic():
    x = np.random.default_rng(5).standard_normal((30, 4)) + 0.3
    histogram = pair_cosine_histogram(x, bins=10, max_pairs=10_000)
    assert histogram.exhaustive and histogram.n_pairs == 435
    assert histogram.mean == pytest.approx(brute_force_mean_cosine(x), abs=1e-12)
    u = unit(x)
    upper = (u @ u.T)[np.triu_indices(30, 1)]
    np.testing.assert_array_equal(histogram.counts, np.histogram(upper, bins=histogram.edges)[0])
    sampled_a = pair_cosine_histogram(x, max_pairs=100, seed=3)
    sampled_b = pair_cosine_histogram(x, max_pairs=100, seed=3)
    np.testing.assert_array_equal(sampled_a.counts, sampled_b.counts)


# --------------------------------------------------------------------------- rogue dimensions


def test_rogue_contributions_sum_to_anisotropy_and_match_pairs():
    x = np.random.default_rng(6).standard_normal((60, 12))
    x[:, 7] += 8.0  # a planted rogue dimension
    result = rogue_dimensions(x, top=3)
    u = unit(x)
    n = len(u)
    brute = np.array([(np.outer(u[:, k], u[:, k]).sum() - (u[:, k] ** 2).sum()) / (n * (n - 1)) for k in range(12)])
    np.testing.assert_allclose(result.contributions, brute, atol=1e-13)
    assert result.contributions.sum() == pytest.approx(anisotropy(x), abs=1e-12)
    assert result.anisotropy == pytest.approx(anisotropy(x), abs=1e-12)
    assert result.top_dimensions[0] == 7
    assert result.top1_share > 0.9
    assert set(result.as_metrics()) == {"geometry/rogue_top1_share", "geometry/rogue_top3_share"}


# --------------------------------------------------------------------------- intrinsic dimension


def matrix_with_singular_values(singular_values, n, d, seed=0):
    """Centred n x d matrix whose singular values are exactly ``singular_values``."""
    rng = np.random.default_rng(seed)
    r = len(singular_values)
    left = rng.standard_normal((n, r))
    left -= left.mean(axis=0)  # orthogonal to the ones vector, so centring is a no-op
    left, _ = np.linalg.qr(left)
    right, _ = np.linalg.qr(rng.standard_normal((d, r)))
    return left @ np.diag(singular_values) @ right.T


@pytest.mark.parametrize("seed, n, d, decay", [(0, 200, 30, 0.8), (1, 50, 100, 0.95), (2, 400, 16, 0.5)])
def test_pca_thresholds_equal_scikit_learn(seed, n, d, decay):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * decay ** np.arange(d) + rng.standard_normal(d)
    thresholds = (0.5, 0.9, 0.95, 0.99)
    result = intrinsic_dimension(x, thresholds)
    expected = tuple(int(PCA(n_components=t, svd_solver="full").fit(x).n_components_) for t in thresholds)
    assert result.components == expected
    full = PCA(svd_solver="full").fit(x)
    np.testing.assert_allclose(result.explained_variance_ratio, full.explained_variance_ratio_, rtol=1e-9, atol=1e-15)


def test_pca_threshold_rule_is_strictly_greater():
    # variances 1, 1, 2 -> ratios 0.5, 0.25, 0.25 sorted: cumulative 0.5, 0.75, 1.0
    x = matrix_with_singular_values([math.sqrt(2), 1.0, 1.0], 20, 5)
    result = intrinsic_dimension(x, (0.5, 0.74, 0.75, 0.9))
    assert result.components == (2, 2, 3, 3)


def test_effective_rank_of_known_singular_values():
    result = intrinsic_dimension(matrix_with_singular_values([4.0, 2.0, 1.0, 1.0], 30, 10))
    np.testing.assert_allclose(result.singular_values[:4], [4, 2, 1, 1], rtol=1e-10)
    # p = (1/2, 1/4, 1/8, 1/8): H = 1.75 log 2, so exp(H) = 2 ** 1.75
    assert result.effective_rank == pytest.approx(2**1.75, rel=1e-9)
    flat = intrinsic_dimension(matrix_with_singular_values([3.0] * 5, 40, 12, seed=1))
    assert flat.effective_rank == pytest.approx(5.0, rel=1e-9)
    assert flat.as_metrics() == {
        "geometry/id_pca90": 5.0,
        "geometry/id_pca95": 5.0,
        "geometry/id_pca99": 5.0,
        "geometry/effective_rank": pytest.approx(5.0),
    }


def test_intrinsic_dimension_rejects_bad_input():
    with pytest.raises(ValueError, match="zero variance"):
        intrinsic_dimension(np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"thresholds must be in \(0, 1\)"):
        intrinsic_dimension(np.eye(3), (0.9, 1.0))


# --------------------------------------------------------------------------- Wang & Isola


def test_alignment_equals_brute_force():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((25, 6)), rng.standard_normal((25, 6))
    for alpha in (1.0, 2.0, 3.5):
        expected = np.mean([np.linalg.norm(p - q) ** alpha for p, q in zip(unit(a), unit(b))])
        assert alignment(a, b, alpha=alpha) == pytest.approx(expected, rel=1e-12)
    assert alignment(a, 5 * a) == pytest.approx(0.0, abs=1e-24)


@pytest.mark.parametrize("t", [0.5, 2.0, 50.0])
def test_uniformity_equals_brute_force(monkeypatch, t):
    monkeypatch.setattr(arrays, "BLOCK_ELEMENTS", 40 * 7)  # 7-row blocks over 40 rows
    x = np.random.default_rng(8).standard_normal((40, 5)) + 0.4
    squared = pdist(unit(x), "sqeuclidean")
    # logsumexp keeps t = 50 exact, where exp(-t d^2) underflows in a naive mean
    assert uniformity(x, t=t) == pytest.approx(logsumexp(-t * squared) - math.log(squared.size), rel=1e-12)
    if t == 2.0:
        assert uniformity(x) == pytest.approx(np.log(np.mean(np.exp(-2 * squared))), rel=1e-12)


def test_label_alignment_equals_brute_force(monkeypatch):
    monkeypatch.setattr(arrays, "BLOCK_ELEMENTS", 9)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((30, 4))
    labels = rng.integers(0, 4, size=30)
    u = unit(x)
    for alpha in (2.0, 1.0):
        distances = [
            np.linalg.norm(u[i] - u[j]) ** alpha for i in range(30) for j in range(i + 1, 30) if labels[i] == labels[j]
        ]
        assert label_alignment(x, labels, alpha) == pytest.approx(np.mean(distances), rel=1e-12)
    with pytest.raises(ValueError, match="two or more rows"):
        label_alignment(x[:3], [0, 1, 2])


# --------------------------------------------------------------------------- OOD


def test_ood_scores_against_brute_force_and_threshold():
    rng = np.random.default_rng(10)
    reference = rng.standard_normal((100, 8)) + 2.0
    x = np.vstack([rng.standard_normal((5, 8)) + 2.0, -rng.standard_normal((3, 8)) - 2.0])
    centroid = unit(reference).mean(axis=0)
    expected = 1 - unit(x) @ (centroid / np.linalg.norm(centroid))
    result = ood_scores(x, reference=reference, threshold=0.5)
    np.testing.assert_allclose(result.scores, expected, atol=1e-12)
    np.testing.assert_array_equal(result.flagged, np.flatnonzero(expected > 0.5))
    assert result.flagged.tolist() == [5, 6, 7]
    assert result.fraction_flagged == pytest.approx(3 / 8)
    assert ood_scores(x, reference=reference, threshold=2.0).flagged.size == 0
    assert ood_scores(x, reference=reference, threshold=-1.0).fraction_flagged == 1.0
    own = ood_scores(x)  # the centroid of x itself
    own_centroid = unit(x).mean(axis=0)
    np.testing.assert_allclose(own.scores, 1 - unit(x) @ (own_centroid / np.linalg.norm(own_centroid)))


def test_robust_ood_threshold_is_median_plus_three_scaled_mads():
    rng = np.random.default_rng(31)
    scores = np.concatenate([rng.normal(0.6, 0.05, 500), [1.4, 1.6]])  # two outliers
    expected = np.median(scores) + 3 * 1.4826 * stats.median_abs_deviation(scores)
    assert robust_ood_threshold(scores) == pytest.approx(expected, rel=1e-12)
    # hand-checked: median 0.3, |s - 0.3| = .2 .1 0 .1 4.7 -> MAD 0.1
    assert robust_ood_threshold([0.1, 0.2, 0.3, 0.4, 5.0]) == pytest.approx(0.3 + 3 * 1.4826 * 0.1)


def test_ood_rejects_bad_input():
    with pytest.raises(ValueError, match="centroid is zero"):
        ood_scores([[1.0, 0.0]], reference=[[1.0, 0.0], [-1.0, 0.0]])
    with pytest.raises(ValueError, match="same dimension"):
        ood_scores(np.ones((2, 3)), reference=np.ones((2, 4)))


# --------------------------------------------------------------------------- summary


def test_geometry_summary_combines_the_signals():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((120, 10)) + 0.5
    labels = np.repeat(np.arange(6), 20)
    summary = geometry_summary(x, labels, uniformity_max_rows=50, seed=3)
    metrics = summary.as_metrics()
    assert metrics["geometry/anisotropy"] == pytest.approx(anisotropy(x))
    assert metrics["geometry/alignment"] == pytest.approx(label_alignment(x, labels))
    assert metrics["geometry/id_pca95"] == intrinsic_dimension(x).components[1]
    assert summary.uniformity_rows == 50
    rows = np.sort(np.random.default_rng(3).choice(120, 50, replace=False))
    assert summary.uniformity == pytest.approx(uniformity(x[rows]))
    assert {
        "geometry/id_pca90",
        "geometry/id_pca99",
        "geometry/effective_rank",
        "geometry/uniformity",
        "geometry/ood_fraction",
        "geometry/pair_cosine_std",
    } <= set(metrics)
    assert all(name == name.lower() and name.startswith("geometry/") for name in metrics)
    assert all(isinstance(value, float) for value in metrics.values())
    assert "geometry/alignment" not in geometry_summary(x).as_metrics()
    assert set(summary.as_metrics("drift/base")) == {"drift/base/" + m[len("geometry/") :] for m in metrics}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.ones(5), r"2-D matrix"),
        (np.ones((2, 3, 4)), r"2-D matrix"),
        (np.ones((0, 4)), r"at least 2 row"),
        (np.ones((1, 4)), r"at least 2 row"),
        (np.ones((3, 0)), r"no columns"),
        (np.array([[1.0, 2.0], [np.nan, 1.0], [1.0, 1.0]]), r"NaN or Inf in row\(s\) 1"),
        (np.array([[1.0, 2.0], [1.0, 1.0], [np.inf, 1.0]]), r"NaN or Inf in row\(s\) 2"),
        (np.array([[1.0, 2.0], [0.0, 0.0], [1.0, 1.0]]), r"zero vector.*row\(s\) 1"),
        (np.array([["a", "b"], ["c", "d"]], dtype=object), r"real numeric"),
    ],
)
def test_bad_input_raises_clear_value_error(bad, message):
    for function in (anisotropy, uniformity, pair_cosine_histogram, rogue_dimensions):
        with pytest.raises(ValueError, match=message):
            function(bad)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        alignment(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="one label per row"):
        geometry_summary(np.random.default_rng(0).standard_normal((5, 3)), labels=[0, 1])
    with pytest.raises(ValueError, match="top must be"):
        rogue_dimensions(np.eye(3), top=4)
