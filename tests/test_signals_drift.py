"""Drift signals against reference formulas, scikit-learn and known transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cosine as cosine_distance
from scipy.stats import ortho_group
from sklearn.neighbors import NearestNeighbors

from aquin_monitor.signals import arrays
from aquin_monitor.signals.drift import (
    anisotropy_delta,
    centroid_shift,
    drift_score,
    drift_summary,
    first_rank_change,
    knn_overlap,
    linear_cka,
    procrustes_align,
    rank_changes,
    similarity_shift,
)
from aquin_monitor.signals.geometry import anisotropy
from aquin_monitor.signals.retrieval import rank_relevant


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Reference: Kornblith et al. 2019 eq. 1-3, HSIC with the centring matrix H."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k, l):
        return np.trace(k @ h @ l @ h) / (n - 1) ** 2

    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


# --------------------------------------------------------------------------- CKA


@pytest.mark.parametrize("n, dx, dy", [(60, 8, 5), (12, 30, 40), (40, 20, 20)])
def test_linear_cka_equals_hsic_reference(n, dx, dy):
    # (12, 30, 40) takes the n x n Gram branch, the others the feature-space formula
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, dx)) + 1.0
    y = x[:, :1] * rng.standard_normal(dy) + 0.5 * rng.standard_normal((n, dy))
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-10)


def test_linear_cka_invariances():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, 16))
    y = np.tanh(x @ rng.standard_normal((16, 10)))
    base = linear_cka(x, y)
    rotation = ortho_group.rvs(16, random_state=2)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ rotation) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x @ rotation, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(3.7 * x, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 0.01 * y + 5.0) == pytest.approx(base, rel=1e-10)
    assert linear_cka(torch.from_numpy(x).float(), y) == pytest.approx(base, rel=1e-5)
    assert 0.0 <= base < 1.0


def test_linear_cka_rejects_bad_input():
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(np.ones((4, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="y is constant"):
        linear_cka(np.random.default_rng(0).standard_normal((4, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"NaN or Inf in row\(s\) 0"):
        linear_cka(np.array([[np.nan, 1.0], [1.0, 2.0]]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="at least 2 row"):
        linear_cka(np.ones((0, 2)), np.ones((0, 2)))


# --------------------------------------------------------------------------- k-NN overlap


def sklearn_neighbours(x: np.ndarray, k: int) -> list[set[int]]:
    indices = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(x).kneighbors(x)[1]
    return [set(row) - {i} if i in row else set(row[:k]) for i, row in enumerate(indices)]


def test_knn_overlap_of_rotated_and_scaled_copy_is_one():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((150, 12))
    y = 4.0 * x @ ortho_group.rvs(12, random_state=4)
    result = knn_overlap(x, y, k=10)
    assert result.overlap == 1.0 and result.jaccard == 1.0
    assert result.as_metrics() == {"drift/knn_overlap@10": 1.0, "drift/knn_jaccard@10": 1.0}


def test_knn_overlap_equals_scikit_learn_neighbours(monkeypatch):
    monkeypatch.setattr(arrays, "BLOCK_ELEMENTS", 200)  # several row blocks over 90 rows
    rng = np.random.default_rng(5)
    x = rng.standard_normal((90, 6))
    y = x + 0.6 * rng.standard_normal((90, 6))
    k = 5
    nx, ny = sklearn_neighbours(x, k), sklearn_neighbours(y, k)
    shared = np.array([len(a & b) for a, b in zip(nx, ny)])
    result = knn_overlap(x, y, k=k)
    np.testing.assert_allclose(result.per_input_overlap, shared / k)
    assert result.overlap == pytest.approx(np.mean(shared / k))
    assert result.jaccard == pytest.approx(np.mean([len(a & b) / len(a | b) for a, b in zip(nx, ny)]))
    assert 0.0 < result.overlap < 1.0


def test_knn_overlap_rejects_bad_k():
    x = np.random.default_rng(6).standard_normal((5, 3))
    with pytest.raises(ValueError, match=r"k must be between 1 and n - 1 = 4"):
        knn_overlap(x, x, k=5)
    with pytest.raises(ValueError, match="k must be"):
        knn_overlap(x, x, k=0)


# --------------------------------------------------------------------------- Procrustes, centroids


def test_procrustes_recovers_a_known_rotation():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((100, 8))
    rotation = ortho_group.rvs(8, random_state=8)
    result = procrustes_align(x, x @ rotation)
    np.testing.assert_allclose(result.rotation, rotation.T, atol=1e-10)
    np.testing.assert_allclose(result.aligned_y, x, atol=1e-10)
    assert result.relative_residual < 1e-12
    noisy = procrustes_align(x, x @ rotation + 0.01 * rng.standard_normal((100, 8)))
    np.testing.assert_allclose(noisy.rotation, rotation.T, atol=0.01)
    assert 0 < noisy.relative_residual < 0.02
    with pytest.raises(ValueError, match="same shape"):
        procrustes_align(x, x[:, :4])


def test_centroid_shift_is_zero_for_rotated_copy_and_isolates_a_moved_label():
    rng = np.random.default_rng(9)
    labels = np.repeat(["a", "b", "c"], 40)
    x = rng.standard_normal((120, 10)) + np.repeat(rng.standard_normal((3, 10)) * 3, 40, axis=0)
    rotation = ortho_group.rvs(10, random_state=10)
    still = centroid_shift(x, x @ rotation, labels)
    assert still.labels.tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(still.cosine_distance, 0.0, atol=1e-12)
    np.testing.assert_allclose(still.euclidean_distance, 0.0, atol=1e-7)

    moved = x.copy()
    moved[labels == "b", :2] = moved[labels == "b", :2][:, ::-1]  # label b swaps two coordinates
    result = centroid_shift(x, moved, labels)
    # reference: Procrustes rotation from scipy-free SVD, then distances of normalised centroids
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    yu = moved / np.linalg.norm(moved, axis=1, keepdims=True)
    u, _, vt = np.linalg.svd(yu.T @ xu)
    aligned = yu @ (u @ vt)
    for index, label in enumerate(["a", "b", "c"]):
        before, after = xu[labels == label].mean(0), aligned[labels == label].mean(0)
        assert result.cosine_distance[index] == pytest.approx(cosine_distance(before, after), abs=1e-12)
        assert result.euclidean_distance[index] == pytest.approx(np.linalg.norm(before - after), abs=1e-12)
    assert np.argmax(result.cosine_distance) == 1
    with pytest.raises(ValueError, match="one label per row"):
        centroid_shift(x, moved, labels[:-1])


def test_centroid_shift_keeps_centroids_and_their_projection_on_x_principal_plane():
    rng = np.random.default_rng(19)
    labels = np.repeat(["p", "q", "r"], 20)
    x = rng.standard_normal((60, 7)) + np.repeat(rng.standard_normal((3, 7)) * 2, 20, axis=0)
    y = x @ ortho_group.rvs(7, random_state=20) + 0.3 * rng.standard_normal((60, 7))
    result = centroid_shift(x, y, labels)
    # reference: numpy normalisation, Procrustes by SVD, principal axes from scikit-learn's PCA
    from sklearn.decomposition import PCA

    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    yu = y / np.linalg.norm(y, axis=1, keepdims=True)
    u, _, vt = np.linalg.svd(yu.T @ xu)
    aligned = yu @ (u @ vt)
    before = np.stack([xu[labels == c].mean(0) for c in ["p", "q", "r"]])
    after = np.stack([aligned[labels == c].mean(0) for c in ["p", "q", "r"]])
    np.testing.assert_allclose(result.centroids_before, before, atol=1e-12)
    np.testing.assert_allclose(result.centroids_after, after, atol=1e-10)
    axes = PCA(n_components=2, svd_solver="full").fit(xu).components_  # each axis up to its sign
    reference_before, reference_after = before @ axes.T, after @ axes.T
    signs = np.sign(np.sum(result.before_2d * reference_before, axis=0))
    assert np.all(np.abs(signs) == 1)
    np.testing.assert_allclose(result.before_2d, reference_before * signs, atol=1e-10)
    np.testing.assert_allclose(result.after_2d, reference_after * signs, atol=1e-10)


# --------------------------------------------------------------------------- similarity shift


def test_similarity_shift_exhaustive_mean_shift_is_anisotropy_delta():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((50, 6))
    y = x + 1.5  # pulls everything towards one direction
    result = similarity_shift(x, y, max_pairs=10_000)
    assert result.n_pairs == 50 * 49 // 2
    assert result.mean_shift == pytest.approx(anisotropy(y) - anisotropy(x), abs=1e-12)
    assert result.mean_shift == pytest.approx(anisotropy_delta(x, y), abs=1e-12)
    # W1 between the two laws is at least the gap of their means and at most the paired change
    assert abs(result.mean_shift) - 1e-12 <= result.wasserstein <= result.mean_absolute_pair_change + 1e-12
    rotated = similarity_shift(x, x @ ortho_group.rvs(6, random_state=12))
    assert rotated.wasserstein == pytest.approx(0.0, abs=1e-12)
    assert rotated.mean_absolute_pair_change == pytest.approx(0.0, abs=1e-12)


def test_similarity_shift_of_a_constant_offset_between_point_masses():
    # x: two orthogonal directions (cosine 0); y: the same two at cosine 0.6 -> W1 = 0.6
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[1.0, 0.0], [0.6, 0.8]])
    result = similarity_shift(x, y)
    assert result.wasserstein == pytest.approx(0.6) and result.mean_shift == pytest.approx(0.6)


def test_similarity_shift_samples_the_same_pairs_deterministically():
    rng = np.random.default_rng(13)
    x, y = rng.standard_normal((300, 5)), rng.standard_normal((300, 5))
    a = similarity_shift(x, y, max_pairs=500, seed=1)
    again = similarity_shift(x, y, max_pairs=500, seed=1)
    assert a == again and np.array_equal(a.before_cosines, again.before_cosines)
    assert np.array_equal(a.after_cosines, again.after_cosines)
    assert a.n_pairs == 500 == a.before_cosines.size
    assert similarity_shift(x, x, max_pairs=500, seed=1).wasserstein == 0.0


def all_pairs_mean_cosine(x: np.ndarray) -> float:
    """Reference: the n x n cosine matrix, mean of its off-diagonal entries."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cosines = unit @ unit.T
    n = len(x)
    return float((cosines.sum() - np.trace(cosines)) / (n * (n - 1)))


def reference_pairs(n: int, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented sampler: i uniform in [0, n), j uniform over the n - 1 others."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = rng.integers(0, n - 1, size=max_pairs)
    return i, j + (j >= i)


def test_similarity_mean_shift_is_exact_while_the_distribution_is_sampled():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((400, 12)) + 0.4
    y = x + rng.standard_normal((400, 12)) + 0.8
    result = similarity_shift(x, y, max_pairs=300, seed=5)  # 300 of 79,800 pairs
    assert result.n_pairs == 300
    assert result.mean_before == pytest.approx(all_pairs_mean_cosine(x), abs=1e-12)
    assert result.mean_after == pytest.approx(all_pairs_mean_cosine(y), abs=1e-12)
    assert result.mean_shift == pytest.approx(all_pairs_mean_cosine(y) - all_pairs_mean_cosine(x), abs=1e-12)
    # the sampled part: the cosines of the documented sampler's pairs, in both spaces
    i, j = reference_pairs(400, 300, seed=5)
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    yu = y / np.linalg.norm(y, axis=1, keepdims=True)
    np.testing.assert_allclose(result.before_cosines, np.sum(xu[i] * xu[j], axis=1), atol=1e-12)
    np.testing.assert_allclose(result.after_cosines, np.sum(yu[i] * yu[j], axis=1), atol=1e-12)
    from scipy.stats import wasserstein_distance

    expected_w1 = wasserstein_distance(np.sum(xu[i] * xu[j], axis=1), np.sum(yu[i] * yu[j], axis=1))
    assert result.wasserstein == pytest.approx(expected_w1, abs=1e-12)
    paired = np.abs(np.sum(yu[i] * yu[j], axis=1) - np.sum(xu[i] * xu[j], axis=1)).mean()
    assert result.mean_absolute_pair_change == pytest.approx(paired, abs=1e-12)
    summary = drift_summary(x, y, max_pairs=300, seed=5)
    assert summary.as_metrics()["drift/similarity_mean_shift"] == summary.anisotropy_delta


# --------------------------------------------------------------------------- rank changes


def reference_rank(queries, docs, q, r):
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    dn = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    scores = dn @ qn[q]
    order = np.lexsort((np.arange(len(docs)), -scores))  # score descending, then corpus order
    return int(np.flatnonzero(order == r)[0]) + 1


def test_rank_changes_match_sorted_reference_with_ties():
    rng = np.random.default_rng(14)
    docs_x = rng.standard_normal((40, 6))
    docs_x[20:30] = docs_x[0:10]  # exact duplicates: ties resolved by corpus order
    docs_y = rng.standard_normal((40, 9))  # the other space may have another dimension
    docs_y[5] = docs_y[35]
    queries_x, queries_y = rng.standard_normal((7, 6)), rng.standard_normal((7, 9))
    queries_x[0] = docs_x[2]
    relevant = {0: [2, 22], 1: [5, 35], 3: [0], 6: [39, 1, 20]}
    result = rank_changes(queries_x, docs_x, queries_y, docs_y, relevant)
    pairs = [(q, r) for q, rs in relevant.items() for r in rs]
    assert list(zip(result.query_index.tolist(), result.document_index.tolist())) == pairs
    assert result.rank_before.tolist() == [reference_rank(queries_x, docs_x, q, r) for q, r in pairs]
    assert result.rank_after.tolist() == [reference_rank(queries_y, docs_y, q, r) for q, r in pairs]
    assert result.rank_before[:2].tolist() == [1, 2]  # doc 22 duplicates doc 2 and comes later
    as_list = rank_changes(queries_x, docs_x, queries_y, docs_y, [[2, 22], [5, 35], [], [0]])
    assert as_list.rank_before.tolist() == result.rank_before[:5].tolist()
    metrics = result.as_metrics()
    change = result.rank_after - result.rank_before
    assert metrics["drift/rank_change_mean"] == pytest.approx(change.mean())
    assert metrics["drift/rank_improved_fraction"] == pytest.approx(np.mean(change < 0))


def test_rank_changes_tie_semantics_hand_checked_and_equal_to_rank_relevant():
    # query along e1; docs 1, 2 and 4 point the same way (cosine 1, a three-way tie), doc 3 at
    # 45 degrees, doc 0 orthogonal. Ties go to the earlier corpus index: doc 1 -> 1, doc 2 -> 2,
    # doc 4 -> 3, doc 3 -> 4, doc 0 -> 5 (trec_eval orders ties by docno descending, which is
    # this order when docnos sort the other way round).
    q = np.array([[1.0, 0.0]])
    d = np.array([[0.0, 1.0], [1.0, 0.0], [3.0, 0.0], [1.0, 1.0], [0.5, 0.0]])
    # space y: doc 4 turns orthogonal, doc 0 joins the tie in front of everyone
    d_y = np.array([[2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [1.0, 1.0], [0.0, 0.5]])
    result = rank_changes(q, d, q, d_y, {0: [4, 2, 0]})
    assert result.document_index.tolist() == [4, 2, 0]  # the order given
    assert result.rank_before.tolist() == [3, 2, 5]
    assert result.rank_after.tolist() == [5, 3, 1]
    direct = rank_relevant(q, d, [{0: 1, 2: 1, 4: 1}])
    assert direct.ranks_of(0) == {0: 5, 2: 2, 4: 3}
    metrics = result.as_metrics()
    assert metrics["drift/rank_change_mean"] == pytest.approx((2 + 1 - 4) / 3)
    assert metrics["drift/rank_change_median"] == 1.0
    assert metrics["drift/rank_improved_fraction"] == pytest.approx(1 / 3)
    assert metrics["drift/rank_worsened_fraction"] == pytest.approx(2 / 3)


def test_first_rank_change_hand_checked_with_missing_ranks():
    # query 2 has no relevant document (NaN), query 3 lost its document from a candidate list (inf)
    change = first_rank_change([1.0, 4.0, np.nan, 2.0, 7.0], [3.0, 1.0, np.nan, np.inf, 7.0])
    assert change.compared.tolist() == [True, True, False, False, True]
    assert change.as_metrics("drift/base") == {
        "drift/base/rank_improved_fraction": pytest.approx(1 / 3),
        "drift/base/rank_worsened_fraction": pytest.approx(1 / 3),
        "drift/base/rank_change_median": 0.0,  # changes +2, -3, 0
    }
    nothing = first_rank_change([np.nan], [1.0]).as_metrics()
    assert all(np.isnan(v) for v in nothing.values())
    with pytest.raises(ValueError, match="same length"):
        first_rank_change([1.0, 2.0], [1.0])


def test_rank_changes_reject_bad_input():
    rng = np.random.default_rng(15)
    q, d = rng.standard_normal((3, 4)), rng.standard_normal((10, 4))
    with pytest.raises(ValueError, match="document index outside"):
        rank_changes(q, d, q, d, {0: [10]})
    with pytest.raises(ValueError, match="query index outside"):
        rank_changes(q, d, q, d, {3: [0]})
    with pytest.raises(ValueError, match="no \\(query, document\\) pair"):
        rank_changes(q, d, q, d, {0: []})
    with pytest.raises(ValueError, match="share a dimension"):
        rank_changes(q, d[:, :3], q, d, {0: [1]})
    with pytest.raises(ValueError, match="same number of rows"):
        rank_changes(q, d, q, d[:9], {0: [1]})


# --------------------------------------------------------------------------- composite


def test_drift_score_formula_and_range():
    assert drift_score(1.0, 1.0, 0.0) == 0.0
    assert drift_score(0.0, 0.0, 2.0) == 1.0
    assert drift_score(0.7, 0.4, 0.3) == pytest.approx((0.3 + 0.6 + 0.3) / 3)
    assert drift_score(0.7, 0.4, 1.6) == pytest.approx((0.3 + 0.6 + 1.0) / 3)
    for bad in ((1.5, 1.0, 0.0), (1.0, -0.1, 0.0), (1.0, 1.0, 2.5), (float("nan"), 1.0, 0.0)):
        with pytest.raises(ValueError, match="must be in"):
            drift_score(*bad)


def test_drift_summary_of_rotated_copy_is_zero_and_grows_with_noise():
    rng = np.random.default_rng(16)
    x = rng.standard_normal((120, 16)) + 0.3
    labels = np.repeat(np.arange(4), 30)
    rotated = drift_summary(x, x @ ortho_group.rvs(16, random_state=17), labels)
    assert rotated.cka == pytest.approx(1.0, abs=1e-12)
    assert rotated.knn.overlap == 1.0
    assert rotated.score == pytest.approx(0.0, abs=1e-9)
    y = x + 1.0 * rng.standard_normal(x.shape)
    noisy = drift_summary(x, y, labels)
    assert noisy.score > 0.1
    assert noisy.score == pytest.approx(drift_score(noisy.cka, noisy.knn.overlap, noisy.similarity.wasserstein))
    assert noisy.anisotropy_delta == pytest.approx(anisotropy(y) - anisotropy(x))
    metrics = noisy.as_metrics()
    assert {
        "drift/cka",
        "drift/knn_overlap@10",
        "drift/score",
        "drift/anisotropy_delta",
        "drift/similarity_wasserstein",
        "drift/centroid_shift_cosine_mean",
    } <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    assert set(noisy.as_metrics("drift/base")) == {"drift/base/" + m[len("drift/") :] for m in metrics}
    other_dimension = drift_summary(x, np.tanh(x[:, :5]), labels)  # CKA copes, Procrustes cannot
    assert other_dimension.centroids is None and 0 < other_dimension.cka < 1
