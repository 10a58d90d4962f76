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
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import orthogonal_procrustes
from scipy.stats import wasserstein_distance

from .arrays import (
    as_matrix,
    check_labels,
    metric_name,
    paired_cosines,
    row_blocks,
    sample_distinct_pairs,
    to_numpy,
    unit_rows,
)
from .geometry import anisotropy
from .retrieval import rank_relevant


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
    x_matrix = as_matrix(x, "x", min_rows=2)
    y_matrix = as_matrix(y, "y", min_rows=2)
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
            metric_name(prefix, f"knn_overlap@{self.k}"): self.overlap,
            metric_name(prefix, f"knn_jaccard@{self.k}"): self.jaccard,
        }


def _cosine_neighbours(unit: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[n, k]`` of each row's k most cosine-similar other rows (self excluded)."""
    n = unit.shape[0]
    neighbours = np.empty((n, k), dtype=np.int64)
    for start, stop, rows in row_blocks(unit):
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
    x_unit = unit_rows(x, "x", min_rows=2)
    y_unit = unit_rows(y, "y", min_rows=2)
    _same_inputs(x_unit, y_unit)
    n = x_unit.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be between 1 and n - 1 = {n - 1}, got {k}")
    x_neighbours = np.sort(_cosine_neighbours(x_unit, k), axis=1)
    y_neighbours = np.sort(_cosine_neighbours(y_unit, k), axis=1)
    shared = np.array([np.intersect1d(a, b, assume_unique=True).size for a, b in zip(x_neighbours, y_neighbours)])
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
        return {metric_name(prefix, "procrustes_residual"): self.relative_residual}


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
    x_matrix = as_matrix(x, "x")
    y_matrix = as_matrix(y, "y")
    if x_matrix.shape != y_matrix.shape:
        raise ValueError(
            f"procrustes_align needs x and y of the same shape (same inputs, same dimension), "
            f"got {x_matrix.shape} and {y_matrix.shape}"
        )
    rotation, _ = orthogonal_procrustes(y_matrix, x_matrix)
    aligned = y_matrix @ rotation
    x_norm = np.linalg.norm(x_matrix)
    residual = np.linalg.norm(aligned - x_matrix) / x_norm if x_norm > 0 else math.nan
    return ProcrustesAlignment(rotation=rotation, aligned_y=aligned, relative_residual=float(residual))


@dataclass(frozen=True)
class CentroidShift:
    """Per-label distance between class centroids before (x) and after (y aligned onto x).

    ``centroids_before`` / ``centroids_after`` are the centroids themselves (``[labels, d]``,
    of the unit rows of x and of y rotated onto x); ``before_2d`` / ``after_2d`` are the same
    centroids projected on the first two principal axes of x's unit rows, for a figure.
    """

    labels: np.ndarray
    cosine_distance: np.ndarray
    euclidean_distance: np.ndarray
    centroids_before: np.ndarray | None = field(default=None, compare=False, repr=False)
    centroids_after: np.ndarray | None = field(default=None, compare=False, repr=False)
    before_2d: np.ndarray | None = field(default=None, compare=False, repr=False)
    after_2d: np.ndarray | None = field(default=None, compare=False, repr=False)

    def as_metrics(self, prefix: str = "drift") -> dict[str, float]:
        return {
            metric_name(prefix, "centroid_shift_cosine_mean"): float(self.cosine_distance.mean()),
            metric_name(prefix, "centroid_shift_cosine_max"): float(self.cosine_distance.max()),
            metric_name(prefix, "centroid_shift_euclidean_mean"): float(self.euclidean_distance.mean()),
        }


def centroid_shift(x: object, y: object, labels: Sequence[object]) -> CentroidShift:
    """How far each label's centroid moved, after aligning y onto x.

    Rows are L2-normalised (the geometry retrieval uses), y is rotated onto x with
    :func:`procrustes_align`, then for each label c with centroids μₓ(c), μ_y(c) (means of its
    rows)::

        cosine_distance[c]    = 1 − cos(μₓ(c), μ_y(c))
        euclidean_distance[c] = ‖μₓ(c) − μ_y(c)‖

    For a figure, both sets of centroids are also projected on the plane of the first two
    principal axes of x's unit rows (right singular vectors of the column-centred matrix):
    ``before_2d[c] = μₓ(c) Vᵀ``, ``after_2d[c] = μ_y(c) Vᵀ``.

    ``labels`` (one per row) are reported sorted (``np.unique`` order). A centroid that is the
    zero vector has no direction and raises ``ValueError``.

    Args:
        x: ``[n, d]`` embeddings before. y: ``[n, d]`` embeddings of the same inputs after.
        labels: one label per row.

    Returns:
        A :class:`CentroidShift`.

    >>> x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> shift = centroid_shift(x, x @ np.array([[0.0, -1.0], [1.0, 0.0]]), ["a", "a", "b", "b"])
    >>> shift.labels.tolist(), bool(np.allclose(shift.cosine_distance, 0.0))  # a rotation: no shift
    (['a', 'b'], True)
    """
    x_unit = unit_rows(x, "x")
    y_unit = unit_rows(y, "y")
    _same_inputs(x_unit, y_unit)
    label_array = check_labels(labels, x_unit.shape[0])
    aligned = procrustes_align(x_unit, y_unit).aligned_y
    unique = np.unique(label_array)
    cosine = np.empty(unique.size)
    euclidean = np.empty(unique.size)
    before = np.empty((unique.size, x_unit.shape[1]))
    after = np.empty((unique.size, x_unit.shape[1]))
    for index, label in enumerate(unique):
        members = label_array == label
        before[index], after[index] = x_unit[members].mean(axis=0), aligned[members].mean(axis=0)
        norms = np.linalg.norm(before[index]) * np.linalg.norm(after[index])
        if norms < 1e-24:
            raise ValueError(f"label {label!r}: its centroid is the zero vector (no direction)")
        cosine[index] = 1.0 - np.clip(before[index] @ after[index] / norms, -1.0, 1.0)
        euclidean[index] = np.linalg.norm(before[index] - after[index])
    axes = np.linalg.svd(x_unit - x_unit.mean(axis=0), full_matrices=False)[2][:2]
    return CentroidShift(
        labels=unique,
        cosine_distance=cosine,
        euclidean_distance=euclidean,
        centroids_before=before,
        centroids_after=after,
        before_2d=before @ axes.T,
        after_2d=after @ axes.T,
    )


# --------------------------------------------------------------------------- similarity shift


@dataclass(frozen=True)
class SimilarityShift:
    """Change of the pairwise-cosine distribution from x to y.

    ``mean_before`` / ``mean_after`` are exact means over all distinct pairs (the anisotropy
    of each space); the Wasserstein distance and the paired change come from the sampled
    pairs, whose cosines are kept in ``before_cosines`` / ``after_cosines`` (the same pairs in
    both spaces) so a figure shows exactly the pairs that were measured.
    """

    wasserstein: float
    mean_before: float
    mean_after: float
    mean_absolute_pair_change: float
    n_pairs: int
    before_cosines: np.ndarray | None = field(default=None, compare=False, repr=False)
    after_cosines: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def mean_shift(self) -> float:
        """Exact change of the mean pairwise cosine, ``mean_after − mean_before``."""
        return self.mean_after - self.mean_before

    def as_metrics(self, prefix: str = "drift") -> dict[str, float]:
        return {
            metric_name(prefix, "similarity_wasserstein"): self.wasserstein,
            metric_name(prefix, "similarity_mean_shift"): self.mean_shift,
            metric_name(prefix, "similarity_pair_change"): self.mean_absolute_pair_change,
        }


def similarity_shift(x: object, y: object, max_pairs: int = 20000, seed: int = 0) -> SimilarityShift:
    """Shift of the distribution of pairwise cosines from x to y.

    The mean has a closed form, so it is exact over all n(n−1)/2 distinct pairs, in O(n·d)
    (:func:`aquin_monitor.signals.geometry.anisotropy`, S = Σᵢ x̂ᵢ)::

        mean_before = (‖Σᵢ x̂ᵢ‖² − n) / (n(n − 1)),  mean_after likewise for y
        mean_shift  = mean_after − mean_before

    The distribution distances have none and are **sampled**: pairs (i, j), i ≠ j, all of them
    if n(n−1)/2 ≤ ``max_pairs``, else ``max_pairs`` drawn uniformly with ``seed``
    (:func:`aquin_monitor.signals.arrays.sample_distinct_pairs`); the same pairs in both
    spaces. With cₓ, c_y their cosines::

        wasserstein = W₁(law of cₓ, law of c_y)     (scipy.stats.wasserstein_distance)
        mean_absolute_pair_change = mean |c_y − cₓ|   (paired, so ≥ wasserstein)

    W₁ is in [0, 2] since cosines lie in [−1, 1].

    Args:
        x: ``[n, d₁]`` embeddings before. y: ``[n, d₂]`` embeddings of the same inputs after.
        max_pairs: most pairs sampled for the distribution distances.
        seed: seed of the pair sampler.

    Returns:
        A :class:`SimilarityShift` holding the sampled cosines too.

    >>> x = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    >>> shift = similarity_shift(x, [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    >>> round(shift.mean_before, 4), shift.mean_after, shift.n_pairs
    (0.4714, 1.0, 3)
    """
    x_unit = unit_rows(x, "x", min_rows=2)
    y_unit = unit_rows(y, "y", min_rows=2)
    _same_inputs(x_unit, y_unit)
    i, j = sample_distinct_pairs(x_unit.shape[0], max_pairs, seed)
    x_cosines = paired_cosines(x_unit, i, j)
    y_cosines = paired_cosines(y_unit, i, j)
    return SimilarityShift(
        wasserstein=float(wasserstein_distance(x_cosines, y_cosines)),
        mean_before=anisotropy(x),
        mean_after=anisotropy(y),
        mean_absolute_pair_change=float(np.abs(y_cosines - x_cosines).mean()),
        n_pairs=int(i.size),
        before_cosines=x_cosines,
        after_cosines=y_cosines,
    )


def anisotropy_delta(x: object, y: object) -> float:
    """anisotropy(y) − anisotropy(x): change of the exact mean pairwise cosine (see geometry).

    >>> anisotropy_delta([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]])
    1.0
    """
    return anisotropy(y) - anisotropy(x)


# --------------------------------------------------------------------------- rank changes


def _change_statistics(change: np.ndarray) -> dict[str, float]:
    """Median and improved/worsened fractions of rank changes (NaN when there are none)."""
    if change.size == 0:
        return dict.fromkeys(("median", "improved", "worsened"), math.nan)
    return {
        "median": float(np.median(change)),
        "improved": float(np.mean(change < 0)),
        "worsened": float(np.mean(change > 0)),
    }


@dataclass(frozen=True)
class RankChanges:
    """Rank of each (query, relevant document) pair before (x space) and after (y space)."""

    query_index: np.ndarray
    document_index: np.ndarray
    rank_before: np.ndarray
    rank_after: np.ndarray

    def as_metrics(self, prefix: str = "drift") -> dict[str, float]:
        change = self.rank_after - self.rank_before
        statistics = _change_statistics(change)
        return {
            metric_name(prefix, "rank_change_mean"): float(change.mean()),
            metric_name(prefix, "rank_change_median"): statistics["median"],
            metric_name(prefix, "rank_improved_fraction"): statistics["improved"],
            metric_name(prefix, "rank_worsened_fraction"): statistics["worsened"],
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


def _checked_spaces(named: dict[str, object]) -> dict[str, np.ndarray]:
    """The four matrices of :func:`rank_changes`, with their shapes checked against each other."""
    arrays = {name: to_numpy(value, name) for name, value in named.items()}
    for name, array in arrays.items():
        if array.ndim != 2:
            raise ValueError(f"{name} must be a 2-D matrix [n, d], got shape {tuple(array.shape)}")
    for a, b in (("q_x", "q_y"), ("d_x", "d_y")):
        _same_inputs(arrays[a], arrays[b], (a, b))
    for queries, docs in (("q_x", "d_x"), ("q_y", "d_y")):
        if arrays[queries].shape[1] != arrays[docs].shape[1]:
            raise ValueError(
                f"{queries}/{docs}: queries and documents must share a dimension, got "
                f"{arrays[queries].shape[1]} and {arrays[docs].shape[1]}"
            )
    return arrays


def rank_changes(
    q_x: object,
    d_x: object,
    q_y: object,
    d_y: object,
    relevant: Mapping[int, Iterable[int]] | Sequence[Iterable[int]],
) -> RankChanges:
    """Rank of every ground-truth document for its query, in space x and in space y.

    Ranks are those of :func:`aquin_monitor.signals.retrieval.rank_relevant` (cosine scores,
    its tie policy and its score grid, so the ranks agree with the retrieval metrics). For
    query q and relevant document r::

        rank(q, r) = 1 + #{d : s(q, d) > s(q, r)} + #{d < r : s(q, d) = s(q, r)}

    (ties go to the document earlier in corpus order, as in ``InformationRetrievalEvaluator``).
    ``relevant`` maps a query index to its relevant document indices (a dict, or a list
    indexed by query); pairs are reported in the order given. The x and y spaces may have
    different dimensions; query and document counts must match. Memory stays bounded
    whatever the corpus size (``rank_relevant`` works block by block).

    Args:
        q_x, d_x: query and document embeddings in space x. q_y, d_y: the same in space y.
        relevant: relevant document indices per query index.

    Returns:
        A :class:`RankChanges`.

    >>> q = [[1.0, 0.0]]; d = [[1.0, 0.0], [0.0, 1.0]]
    >>> r = rank_changes(q, d, q, [[0.0, 1.0], [1.0, 0.0]], {0: [0]})
    >>> r.rank_before.tolist(), r.rank_after.tolist()
    ([1], [2])
    """
    spaces = _checked_spaces({"q_x": q_x, "d_x": d_x, "q_y": q_y, "d_y": d_y})
    n_queries, n_docs = spaces["q_x"].shape[0], spaces["d_x"].shape[0]
    query_index, doc_index = _relevant_pairs(relevant, n_queries, n_docs)
    per_query: list[set[int]] = [set() for _ in range(n_queries)]
    for query, doc in zip(query_index.tolist(), doc_index.tolist()):
        per_query[query].add(doc)
    wanted = query_index * n_docs + doc_index

    def ranks(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
        result = rank_relevant(queries, docs, per_query)  # pairs sorted by (query, document)
        return result.rank[np.searchsorted(result.query_index * n_docs + result.doc_index, wanted)]

    return RankChanges(
        query_index=query_index,
        document_index=doc_index,
        rank_before=ranks(spaces["q_x"], spaces["d_x"]),
        rank_after=ranks(spaces["q_y"], spaces["d_y"]),
    )


@dataclass(frozen=True)
class FirstRankChange:
    """Rank of the first relevant document of each query in two retrieval reports.

    ``rank_before`` / ``rank_after`` are per-query arrays as ``RetrievalReport.first_rank``
    (NaN: the query has no relevant document; +inf: none was ranked).
    """

    rank_before: np.ndarray
    rank_after: np.ndarray

    @property
    def compared(self) -> np.ndarray:
        """Queries with a finite first rank on both sides (the ones the metrics use)."""
        return np.isfinite(self.rank_before) & np.isfinite(self.rank_after)

    def as_metrics(self, prefix: str = "drift") -> dict[str, float]:
        change = self.rank_after[self.compared] - self.rank_before[self.compared]
        statistics = _change_statistics(change)
        return {
            metric_name(prefix, "rank_improved_fraction"): statistics["improved"],
            metric_name(prefix, "rank_worsened_fraction"): statistics["worsened"],
            metric_name(prefix, "rank_change_median"): statistics["median"],
        }


def first_rank_change(rank_before: object, rank_after: object) -> FirstRankChange:
    """Change of the first relevant rank of each query between two retrieval reports.

    Over the queries whose first rank is finite in both (see :class:`FirstRankChange`), with
    Δ_q = rank_after[q] − rank_before[q]::

        rank_improved_fraction = mean(Δ < 0)
        rank_worsened_fraction = mean(Δ > 0)
        rank_change_median     = median(Δ)

    all NaN when no query is comparable.

    Args:
        rank_before, rank_after: per-query first ranks of the same queries.

    Returns:
        A :class:`FirstRankChange`.

    >>> change = first_rank_change([1, 5, 3, float("nan")], [2, 1, 3, 4])
    >>> change.as_metrics()  # doctest: +NORMALIZE_WHITESPACE
    {'drift/rank_improved_fraction': 0.3333333333333333, 'drift/rank_worsened_fraction': 0.3333333333333333,
     'drift/rank_change_median': 0.0}
    """
    before = np.asarray(rank_before, dtype=np.float64)
    after = np.asarray(rank_after, dtype=np.float64)
    if before.ndim != 1 or before.shape != after.shape:
        raise ValueError(
            f"rank_before and rank_after must be 1-D of the same length, got shapes {before.shape} and {after.shape}"
        )
    return FirstRankChange(rank_before=before, rank_after=after)


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
            metric_name(prefix, "cka"): self.cka,
            metric_name(prefix, "anisotropy_delta"): self.anisotropy_delta,
            metric_name(prefix, "score"): self.score,
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
    ``centroids`` stays None). The anisotropy before/after is the exact mean pairwise cosine
    of :func:`similarity_shift` (one computation for both metrics)::

        drift_score = ((1 − CKA) + (1 − kNN overlap@k) + min(1, W₁)) / 3

    Args:
        x: ``[n, d₁]`` embeddings before. y: ``[n, d₂]`` embeddings of the same inputs after.
        labels: optional label per row, for the centroid shift.
        k: neighbours for the k-NN overlap.
        max_pairs: pairs sampled for the Wasserstein distance. seed: seed of the sampler.

    Returns:
        A :class:`DriftSummary`; ``as_metrics(prefix)`` names its numbers.

    >>> x = np.random.default_rng(0).standard_normal((30, 4))
    >>> same = drift_summary(x, x @ np.linalg.qr(np.arange(16.0).reshape(4, 4) ** 2)[0])
    >>> round(same.cka, 9), same.knn.overlap, round(same.score, 9)  # a rotation: no drift
    (1.0, 1.0, 0.0)
    """
    x_matrix = as_matrix(x, "x", min_rows=2)
    y_matrix = as_matrix(y, "y", min_rows=2)
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
        anisotropy_before=similarity.mean_before,
        anisotropy_after=similarity.mean_after,
        score=drift_score(cka, knn.overlap, similarity.wasserstein),
        centroids=centroids,
    )
