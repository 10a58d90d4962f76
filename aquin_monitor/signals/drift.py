"""Drift between two embedding spaces of the same inputs (row i of ``x`` and of ``y`` = input i).

Two checkpoints' spaces are not aligned (any rotation of a space is the same model), so the
measures here are rotation-invariant — linear CKA, k-NN overlap, pair-similarity
distributions, anisotropy, ranks of ground-truth documents — or align first with orthogonal
Procrustes (per-label centroid shift). Inputs are numpy arrays or torch tensors; computation
is float64. Metric names: ``drift/cka``, ``drift/knn_overlap@10``, ``drift/score``, … (a caller
adds the reference, e.g. prefix ``drift/base``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import orthogonal_procrustes
from scipy.stats import wasserstein_distance

from .geometry import (
    _BLOCK_ELEMENTS,
    _as_matrix,
    _check_labels,
    _metric_name,
    _paired_cosines,
    _row_blocks,
    _sample_distinct_pairs,
    _unit_rows,
    anisotropy,
)


def _same_inputs(x: np.ndarray, y: np.ndarray, names: tuple[str, str] = ("x", "y")) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must hold the same inputs (same number of rows), got "
            f"{x.shape[0]} and {y.shape[0]}"
        )


# --------------------------------------------------------------------------- CKA


def linear_cka(x: object, y: object) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of two representations.

    With X, Y column-centred (n × d₁ and n × d₂; d₁ ≠ d₂ allowed)::

        CKA = ‖YᵀX‖_F² / (‖XᵀX‖_F · ‖YᵀY‖_F)

    equal to HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)) with K = XXᵀ, L = YYᵀ. In [0, 1], 1 for
    identical spaces, invariant to orthogonal transforms and isotropic scaling of either
    side. The Gram (n × n) form tr(KL) / (‖K‖_F‖L‖_F) is used when n is smaller than the
    dimensions. Needs n ≥ 2 and non-constant x and y.

    >>> round(linear_cka([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[0.0, 2.0], [2.0, 0.0], [2.0, 2.0]]), 12)
    1.0
    """
    x_matrix = _as_matrix(x, "x", min_rows=2)
    y_matrix = _as_matrix(y, "y", min_rows=2)
    _same_inputs(x_matrix, y_matrix)
    x_centred = x_matrix - x_matrix.mean(axis=0)
    y_centred = y_matrix - y_matrix.mean(axis=0)
    n = x_centred.shape[0]
    if n < min(x_centred.shape[1], y_centred.shape[1]):
        k, l = x_centred @ x_centred.T, y_centred @ y_centred.T
        cross, x_norm, y_norm = float(np.sum(k * l)), np.linalg.norm(k), np.linalg.norm(l)
    else:
        cross = float(np.linalg.norm(y_centred.T @ x_centred) ** 2)
        x_norm = np.linalg.norm(x_centred.T @ x_centred)
        y_norm = np.linalg.norm(y_centred.T @ y_centred)
    if x_norm == 0.0 or y_norm == 0.0:
        constant = "x" if x_norm == 0.0 else "y"
        raise ValueError(f"{constant} is constant over its rows: CKA is undefined")
    return float(cross / (x_norm * y_norm))


# --------------------------------------------------------------------------- k-NN overlap


@dataclass(frozen=True)
class KnnOverlap:
    """Per-input overlap of the k nearest neighbours in both spaces, and their means."""

    k: int
    per_input_overlap: np.ndarray
    overlap: float
    jaccard: float

    def as_metrics(self, prefix: str = "drift") -> dict[str, float]:
        return {
            _metric_name(prefix, f"knn_overlap@{self.k}"): self.overlap,
            _metric_name(prefix, f"knn_jaccard@{self.k}"): self.jaccard,
        }


def _cosine_neighbours(unit: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[n, k]`` of each row's k most cosine-similar other rows (self excluded)."""
    n = unit.shape[0]
    neighbours = np.empty((n, k), dtype=np.int64)
    for start, stop, rows in _row_blocks(unit):
        similarities = rows @ unit.T
        similarities[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        neighbours[start:stop] = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
    return neighbours


def knn_overlap(x: object, y: object, k: int = 10) -> KnnOverlap:
    """How many of each input's k nearest neighbours (cosine, self excluded) survive a change.

    With N_x(i), N_y(i) the k-NN sets of input i in each space::

        overlap_i = |N_x(i) ∩ N_y(i)| / k
        jaccard_i = |N_x(i) ∩ N_y(i)| / |N_x(i) ∪ N_y(i)|

    ``overlap`` and ``jaccard`` are the means over inputs; both are 1 for a rotated or rescaled
    copy. Exact ties among neighbour similarities are broken arbitrarily. O(n²·d) time in
    row blocks (~32 MB of similarities at a time). Needs 1 ≤ k ≤ n − 1.

    >>> x = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]
    >>> knn_overlap(x, [[-a, b] for a, b in x], k=1).overlap  # a reflection keeps neighbours
    1.0
    """
    x_unit = _unit_rows(x, "x", min_rows=2)
    y_unit = _unit_rows(y, "y", min_rows=2)
    _same_inputs(x_unit, y_unit)
    n = x_unit.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be between 1 and n - 1 = {n - 1}, got {k}")
    x_neighbours = np.sort(_cosine_neighbours(x_unit, k), axis=1)
    y_neighbours = np.sort(_cosine_neighbours(y_unit, k), axis=1)
    shared = np.array(
        [np.intersect1d(a, b, assume_unique=True).size for a, b in zip(x_neighbours, y_neighbours)]
    )
    return KnnOverlap(
        k=k,
        per_input_overlap=shared / k,
        overlap=float(np.mean(shared / k)),
        jaccard=float(np.mean(shared / (2 * k - shared))),
    )


# --------------------------------------------------------------------------- Procrustes


@dataclass(frozen=True)
class ProcrustesAlignment:
    """``aligned_y = y @ rotation``, the orthogonal map bringing ``y`` closest to ``x``."""

    rotation: np.ndarray
    aligned_y: np.ndarray
    relative_residual: float

    def as_metrics(self, prefix: str = "drift") -> dict[str, float]:
        return {_metric_name(prefix, "procrustes_residual"): self.relative_residual}


def procrustes_align(x: object, y: object) -> ProcrustesAlignment:
    """Orthogonal Procrustes: R = argmin over RᵀR = I of ‖yR − x‖_F.

    R = UVᵀ from the SVD yᵀx = UΣVᵀ (Schönemann 1966), via
    ``scipy.linalg.orthogonal_procrustes``. No centring or scaling: embeddings are compared
    by cosine, which rotations about the origin preserve. ``relative_residual`` =
    ‖yR − x‖_F / ‖x‖_F (0 when y is an exact rotation/reflection of x). x and y need the
    same dimension.

    >>> rotation = np.array([[0.0, -1.0], [1.0, 0.0]])
    >>> x = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    >>> bool(np.allclose(procrustes_align(x, x @ rotation).rotation, rotation.T))
    True
    """
    x_matrix = _as_matrix(x, "x")
    y_matrix = _as_matrix(y, "y")
    if x_matrix.shape != y_matrix.shape:
        raise ValueError(
            f"procrustes_align needs x and y of the same shape (same inputs, same dimension), "
            f"got {x_matrix.shape} and {y_matrix.shape}"
        )
    rotation, _ = orthogonal_procrustes(y_matrix, x_matrix)
    aligned = y_matrix @ rotation
    x_norm = np.linalg.norm(x_matrix)
    residual = np.linalg.norm(aligned - x_matrix) / x_norm if x_norm > 0 else math.nan
    return ProcrustesAlignment(
        rotation=rotation, aligned_y=aligned, relative_residual=float(residual)
    )


@dataclass(frozen=True)
class CentroidShift:
    """Per-label distance between class centroids before (x) and after (y aligned onto x)."""

    labels: np.ndarray
    cosine_distance: np.ndarray
    euclidean_distance: np.ndarray

    def as_metrics(self, prefix: str = "drift") -> dict[str, float]:
        return {
            _metric_name(prefix, "centroid_shift_cosine_mean"): float(self.cosine_distance.mean()),
            _metric_name(prefix, "centroid_shift_cosine_max"): float(self.cosine_distance.max()),
            _metric_name(prefix, "centroid_shift_euclidean_mean"): float(
                self.euclidean_distance.mean()
            ),
        }


def centroid_shift(x: object, y: object, labels: Sequence[object]) -> CentroidShift:
    """How far each label's centroid moved, after aligning y onto x.

    Rows are L2-normalised (the geometry retrieval uses), y is rotated onto x with
    :func:`procrustes_align`, then for each label c with centroids μₓ(c), μ_y(c) (means of its
    rows)::

        cosine_distance[c]    = 1 − cos(μₓ(c), μ_y(c))
        euclidean_distance[c] = ‖μₓ(c) − μ_y(c)‖

    ``labels`` (one per row) are reported sorted (``np.unique`` order). A centroid that is the
    zero vector has no direction and raises ``ValueError``.
    """
    x_unit = _unit_rows(x, "x")
    y_unit = _unit_rows(y, "y")
    _same_inputs(x_unit, y_unit)
    label_array = _check_labels(labels, x_unit.shape[0])
    aligned = procrustes_align(x_unit, y_unit).aligned_y
    unique = np.unique(label_array)
    cosine = np.empty(unique.size)
    euclidean = np.empty(unique.size)
    for index, label in enumerate(unique):
        members = label_array == label
        before, after = x_unit[members].mean(axis=0), aligned[members].mean(axis=0)
        norms = np.linalg.norm(before) * np.linalg.norm(after)
        if norms < 1e-24:
            raise ValueError(f"label {label!r}: its centroid is the zero vector (no direction)")
        cosine[index] = 1.0 - np.clip(before @ after / norms, -1.0, 1.0)
        euclidean[index] = np.linalg.norm(before - after)
    return CentroidShift(labels=unique, cosine_distance=cosine, euclidean_distance=euclidean)


# --------------------------------------------------------------------------- similarity shift


@dataclass(frozen=True)
class SimilarityShift:
    """Change of the pairwise-cosine distribution, measured on the same pairs in both spaces."""

    wasserstein: float
    mean_shift: float
    mean_absolute_pair_change: float
    n_pairs: int

    def as_metrics(self, prefix: str = "drift") -> dict[str, float]:
        return {
            _metric_name(prefix, "similarity_wasserstein"): self.wasserstein,
            _metric_name(prefix, "similarity_mean_shift"): self.mean_shift,
            _metric_name(prefix, "similarity_pair_change"): self.mean_absolute_pair_change,
        }


def similarity_shift(
    x: object, y: object, max_pairs: int = 20000, seed: int = 0
) -> SimilarityShift:
    """Shift of the distribution of pairwise cosines from x to y.

    Pairs (i, j), i ≠ j: all of them if n(n−1)/2 ≤ ``max_pairs``, else ``max_pairs`` drawn
    uniformly with ``seed``; the same pairs in both spaces. With cₓ, c_y their cosines::

        wasserstein = W₁(law of cₓ, law of c_y)     (scipy.stats.wasserstein_distance)
        mean_shift  = mean(c_y) − mean(cₓ)
        mean_absolute_pair_change = mean |c_y − cₓ|   (paired, so ≥ wasserstein)

    W₁ is in [0, 2] since cosines lie in [−1, 1].
    """
    x_unit = _unit_rows(x, "x", min_rows=2)
    y_unit = _unit_rows(y, "y", min_rows=2)
    _same_inputs(x_unit, y_unit)
    i, j = _sample_distinct_pairs(x_unit.shape[0], max_pairs, seed)
    x_cosines = _paired_cosines(x_unit, i, j)
    y_cosines = _paired_cosines(y_unit, i, j)
    return SimilarityShift(
        wasserstein=float(wasserstein_distance(x_cosines, y_cosines)),
        mean_shift=float(y_cosines.mean() - x_cosines.mean()),
        mean_absolute_pair_change=float(np.abs(y_cosines - x_cosines).mean()),
        n_pairs=int(i.size),
    )


def anisotropy_delta(x: object, y: object) -> float:
    """anisotropy(y) − anisotropy(x): change of the exact mean pairwise cosine (see geometry).

    >>> anisotropy_delta([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]])
    1.0
    """
    return anisotropy(y) - anisotropy(x)


# --------------------------------------------------------------------------- rank changes


@dataclass(frozen=True)
class RankChanges:
    """Rank of each (query, relevant document) pair before (x space) and after (y space)."""

    query_index: np.ndarray
    document_index: np.ndarray
    rank_before: np.ndarray
    rank_after: np.ndarray

    def as_metrics(self, prefix: str = "drift") -> dict[str, float]:
        change = self.rank_after - self.rank_before
        return {
            _metric_name(prefix, "rank_change_mean"): float(change.mean()),
            _metric_name(prefix, "rank_change_median"): float(np.median(change)),
            _metric_name(prefix, "rank_improved_fraction"): float(np.mean(change < 0)),
            _metric_name(prefix, "rank_worsened_fraction"): float(np.mean(change > 0)),
        }


def _relevant_pairs(
    relevant: Mapping[int, Iterable[int]] | Sequence[Iterable[int]], n_queries: int, n_docs: int
) -> tuple[np.ndarray, np.ndarray]:
    items = relevant.items() if isinstance(relevant, Mapping) else enumerate(relevant)
    queries, documents = [], []
    for query, docs in items:
        for doc in docs:
            queries.append(int(query))
            documents.append(int(doc))
    if not queries:
        raise ValueError("relevant lists no (query, document) pair")
    query_array, doc_array = np.asarray(queries), np.asarray(documents)
    if query_array.min() < 0 or query_array.max() >= n_queries:
        raise ValueError(f"relevant names a query index outside 0..{n_queries - 1}")
    if doc_array.min() < 0 or doc_array.max() >= n_docs:
        raise ValueError(f"relevant names a document index outside 0..{n_docs - 1}")
    return query_array, doc_array


def _ranks(
    queries: np.ndarray, docs: np.ndarray, query_index: np.ndarray, doc_index: np.ndarray
) -> np.ndarray:
    ranks = np.empty(query_index.size, dtype=np.int64)
    doc_positions = np.arange(docs.shape[0])
    rows = max(1, _BLOCK_ELEMENTS // docs.shape[0])
    for start in range(0, query_index.size, rows):
        stop = min(query_index.size, start + rows)
        scores = queries[query_index[start:stop]] @ docs.T  # [pairs, documents]
        target = scores[np.arange(stop - start), doc_index[start:stop]][:, None]
        earlier_tie = (scores == target) & (doc_positions[None, :] < doc_index[start:stop, None])
        ranks[start:stop] = 1 + (scores > target).sum(axis=1) + earlier_tie.sum(axis=1)
    return ranks


def rank_changes(
    q_x: object,
    d_x: object,
    q_y: object,
    d_y: object,
    relevant: Mapping[int, Iterable[int]] | Sequence[Iterable[int]],
) -> RankChanges:
    """Rank of every ground-truth document for its query, in space x and in space y.

    Scores are cosine similarities. For query q and relevant document r::

        rank(q, r) = 1 + #{d : s(q, d) > s(q, r)} + #{d < r : s(q, d) = s(q, r)}

    (ties go to the document earlier in corpus order). ``relevant`` maps a query index to
    its relevant document indices (a dict, or a list indexed by query). The x and y spaces
    may have different dimensions; query and document counts must match. Memory stays at
    ~32 MB of scores per block whatever the corpus size.

    >>> q = [[1.0, 0.0]]; d = [[1.0, 0.0], [0.0, 1.0]]
    >>> r = rank_changes(q, d, q, [[0.0, 1.0], [1.0, 0.0]], {0: [0]})
    >>> r.rank_before.tolist(), r.rank_after.tolist()
    ([1], [2])
    """
    queries_x, docs_x = _unit_rows(q_x, "q_x"), _unit_rows(d_x, "d_x")
    queries_y, docs_y = _unit_rows(q_y, "q_y"), _unit_rows(d_y, "d_y")
    for (a, b), names in (
        ((queries_x, queries_y), ("q_x", "q_y")),
        ((docs_x, docs_y), ("d_x", "d_y")),
    ):
        _same_inputs(a, b, names)
    for (queries, docs), names in (
        ((queries_x, docs_x), "q_x/d_x"),
        ((queries_y, docs_y), "q_y/d_y"),
    ):
        if queries.shape[1] != docs.shape[1]:
            raise ValueError(
                f"{names}: queries and documents must share a dimension, got "
                f"{queries.shape[1]} and {docs.shape[1]}"
            )
    query_index, doc_index = _relevant_pairs(relevant, queries_x.shape[0], docs_x.shape[0])
    return RankChanges(
        query_index=query_index,
        document_index=doc_index,
        rank_before=_ranks(queries_x, docs_x, query_index, doc_index),
        rank_after=_ranks(queries_y, docs_y, query_index, doc_index),
    )


# --------------------------------------------------------------------------- composite


def drift_score(cka: float, knn_overlap: float, similarity_wasserstein: float) -> float:
    """Composite drift in [0, 1]: 0 = same geometry, 1 = unrelated.

    ::

        drift_score = ( (1 − CKA) + (1 − kNN overlap) + min(1, W₁) ) / 3

    where W₁ is the Wasserstein distance between the pair-cosine distributions
    (:func:`similarity_shift`, at most 2; a shift of the whole distribution by 1 — e.g. mean
    cosine 0 → 1 — saturates its term). The three terms cover global structure (CKA), local
    neighbourhoods (k-NN) and the similarity scale a retrieval threshold depends on (W₁).

    >>> drift_score(1.0, 1.0, 0.0), drift_score(0.0, 0.0, 1.5)
    (0.0, 1.0)
    """
    for name, value, low, high in (
        ("cka", cka, 0.0, 1.0),
        ("knn_overlap", knn_overlap, 0.0, 1.0),
        ("similarity_wasserstein", similarity_wasserstein, 0.0, 2.0),
    ):
        if not math.isfinite(value) or not low - 1e-9 <= value <= high + 1e-9:
            raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    terms = (1.0 - min(cka, 1.0), 1.0 - min(knn_overlap, 1.0), min(1.0, similarity_wasserstein))
    return float(np.clip(sum(terms) / 3.0, 0.0, 1.0))


@dataclass(frozen=True)
class DriftSummary:
    """Every drift signal between two embedding matrices of the same inputs."""

    cka: float
    knn: KnnOverlap
    similarity: SimilarityShift
    anisotropy_before: float
    anisotropy_after: float
    score: float
    centroids: CentroidShift | None = None

    @property
    def anisotropy_delta(self) -> float:
        return self.anisotropy_after - self.anisotropy_before

    def as_metrics(self, prefix: str = "drift") -> dict[str, float]:
        metrics = {
            _metric_name(prefix, "cka"): self.cka,
            _metric_name(prefix, "anisotropy_delta"): self.anisotropy_delta,
            _metric_name(prefix, "score"): self.score,
        }
        metrics.update(self.knn.as_metrics(prefix))
        metrics.update(self.similarity.as_metrics(prefix))
        if self.centroids is not None:
            metrics.update(self.centroids.as_metrics(prefix))
        return metrics


def drift_summary(
    x: object,
    y: object,
    labels: Sequence[object] | None = None,
    *,
    k: int = 10,
    max_pairs: int = 20000,
    seed: int = 0,
) -> DriftSummary:
    """All drift signals from x (before) to y (after) and the composite :func:`drift_score`.

    ``k`` is capped at n − 1. With ``labels`` and equal dimensions, adds the per-label
    :func:`centroid_shift` (Procrustes needs equal dimensions; with different ones
    ``centroids`` stays None).
    """
    x_matrix = _as_matrix(x, "x", min_rows=2)
    y_matrix = _as_matrix(y, "y", min_rows=2)
    _same_inputs(x_matrix, y_matrix)
    cka = linear_cka(x_matrix, y_matrix)
    knn = knn_overlap(x_matrix, y_matrix, k=min(k, x_matrix.shape[0] - 1))
    similarity = similarity_shift(x_matrix, y_matrix, max_pairs=max_pairs, seed=seed)
    centroids = None
    if labels is not None and x_matrix.shape[1] == y_matrix.shape[1]:
        centroids = centroid_shift(x_matrix, y_matrix, labels)
    return DriftSummary(
        cka=cka,
        knn=knn,
        similarity=similarity,
        anisotropy_before=anisotropy(x_matrix),
        anisotropy_after=anisotropy(y_matrix),
        score=drift_score(cka, knn.overlap, similarity.wasserstein),
        centroids=centroids,
    )
