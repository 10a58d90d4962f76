"""Geometry of an embedding space: anisotropy, intrinsic dimension, alignment/uniformity, OOD.

Every function takes a matrix ``x`` of shape ``[n, d]`` (one embedding per row) as a numpy
array or a torch tensor (any device, any float dtype) and computes in float64. Results are
floats or small frozen dataclasses whose ``as_metrics(prefix)`` gives the metric names of
DESIGN.md (``geometry/anisotropy``, ``geometry/id_pca95``, ...).

Bad input (wrong rank, empty, NaN/Inf, zero vectors where a direction is needed) raises
``ValueError`` naming the argument and, where it applies, the offending row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from scipy.stats import beta as beta_distribution

from .arrays import (
    as_matrix,
    check_labels,
    metric_name,
    normalising_blocks,
    paired_cosines,
    row_blocks,
    sample_distinct_pairs,
    unit_rows,
)


def _threshold_name(threshold: float) -> str:
    """0.95 -> '95', 0.999 -> '99.9' (for ``id_pca95`` style names)."""
    return f"{round(threshold * 100, 6):g}"


# --------------------------------------------------------------------------- anisotropy


def anisotropy(x: object) -> float:
    """Exact mean cosine similarity over all distinct pairs of rows.

    With x̂ᵢ = xᵢ/‖xᵢ‖ and S = Σᵢ x̂ᵢ, since Σᵢ Σⱼ x̂ᵢ·x̂ⱼ = ‖S‖² and the n diagonal terms
    are 1::

        anisotropy = (‖S‖² − n) / (n(n − 1))

    computed in O(n·d) time and O(d) extra memory (rows streamed in float64 blocks), never
    an n×n matrix. 0 for directions spread uniformly on the sphere (spread ≈ 1/√d), 1 when all
    rows point the same way. Needs n ≥ 2; NaN/Inf or zero rows raise ``ValueError``.

    >>> anisotropy([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # pairs: 1, 0, 0
    0.3333333333333333
    """
    n = 0
    total = None
    for block, inverse_norms in normalising_blocks(x, "x", min_rows=2):
        n += block.shape[0]
        partial = inverse_norms @ block  # Σ x̂ᵢ without materialising x̂
        total = partial if total is None else total + partial
    assert total is not None
    return float((total @ total - n) / (n * (n - 1)))


@dataclass(frozen=True)
class PairCosineHistogram:
    """Histogram of pairwise cosines, with the uniform-sphere baseline for the same dimension.

    ``counts[k]`` pairs fell in ``[edges[k], edges[k+1])`` (last bin closed);
    ``baseline_probabilities[k]`` is the exact probability of that bin for two independent
    uniform points on S^{d−1}. ``mean``/``std`` are those of the sampled pairs, against the
    baseline's 0 and 1/√d.
    """

    counts: np.ndarray
    edges: np.ndarray
    baseline_probabilities: np.ndarray
    n_pairs: int
    exhaustive: bool
    mean: float
    std: float
    dimension: int
    baseline_mean: float
    baseline_std: float

    def as_metrics(self, prefix: str = "geometry") -> dict[str, float]:
        return {
            metric_name(prefix, "pair_cosine_mean"): self.mean,
            metric_name(prefix, "pair_cosine_std"): self.std,
            metric_name(prefix, "pair_cosine_baseline_std"): self.baseline_std,
        }


def uniform_sphere_cosine_bin_probabilities(edges: Sequence[float] | np.ndarray, d: int) -> np.ndarray:
    """Exact probability of each bin for the cosine t of two independent uniform points on S^{d−1}.

    The density is f(t) = Γ(d/2) / (√π Γ((d−1)/2)) · (1 − t²)^{(d−3)/2} on [−1, 1]; with
    u = (1 + t)/2 this is a Beta((d−1)/2, (d−1)/2) law, so each bin gets
    I_{u(b)}(a, a) − I_{u(a)}(a, a) (regularised incomplete beta). Mean 0, variance 1/d.
    For d = 1 the cosine is ±1 with probability ½ each. Edges outside [−1, 1] are clipped.

    >>> uniform_sphere_cosine_bin_probabilities([-1.0, 0.0, 1.0], 3).tolist()  # d=3: uniform
    [0.5, 0.5]
    """
    if d < 1:
        raise ValueError(f"dimension d must be >= 1, got {d}")
    edges_array = np.clip(np.asarray(edges, dtype=np.float64), -1.0, 1.0)
    if edges_array.ndim != 1 or edges_array.size < 2 or np.any(np.diff(edges_array) < 0):
        raise ValueError("edges must be a 1-D increasing sequence of at least two values")
    if d == 1:
        # the cosine is exactly -1 or +1; histogram bins are [e_k, e_k+1) with the last closed
        probabilities = np.zeros(edges_array.size - 1)
        probabilities[0] += 0.5 if edges_array[0] == -1.0 else 0.0
        probabilities[-1] += 0.5 if edges_array[-1] == 1.0 else 0.0
        return probabilities
    a = (d - 1) / 2.0
    return np.diff(beta_distribution.cdf((1.0 + edges_array) / 2.0, a, a))


def pair_cosine_histogram(x: object, bins: int = 50, max_pairs: int = 20000, seed: int = 0) -> PairCosineHistogram:
    """Histogram over [−1, 1] of cosines of distinct pairs of rows, with the uniform-sphere baseline.

    Uses all n(n−1)/2 pairs when there are at most ``max_pairs``, otherwise ``max_pairs``
    pairs (i, j), i ≠ j, drawn uniformly with ``seed``. The baseline is
    :func:`uniform_sphere_cosine_bin_probabilities` for d = number of columns: mean 0,
    standard deviation 1/√d. With c the cosines of the pairs used::

        counts[k] = #{pairs : edges[k] ≤ c < edges[k+1]}   (last bin closed)
        mean = mean(c),  std = sqrt(mean((c − mean)²))

    Args:
        x: ``[n, d]`` embeddings. bins: bins over [−1, 1].
        max_pairs: most pairs used. seed: seed of the pair sampler.

    Returns:
        A :class:`PairCosineHistogram`.

    >>> h = pair_cosine_histogram([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], bins=4)
    >>> h.counts.tolist(), h.n_pairs, h.exhaustive  # cosines 0, 0.707, 0.707
    ([0, 0, 1, 2], 3, True)
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    unit = unit_rows(x, "x", min_rows=2)
    n, d = unit.shape
    i, j = sample_distinct_pairs(n, max_pairs, seed)
    cosines = paired_cosines(unit, i, j)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    counts, _ = np.histogram(cosines, bins=edges)
    return PairCosineHistogram(
        counts=counts,
        edges=edges,
        baseline_probabilities=uniform_sphere_cosine_bin_probabilities(edges, d),
        n_pairs=int(cosines.size),
        exhaustive=bool(cosines.size == n * (n - 1) // 2),
        mean=float(cosines.mean()),
        std=float(cosines.std()),
        dimension=int(d),
        baseline_mean=0.0,
        baseline_std=1.0 / math.sqrt(d),
    )


@dataclass(frozen=True)
class RogueDimensions:
    """Per-dimension contributions to anisotropy (they sum to it) and the dominant ones.

    ``top_dimensions`` are the column indices with the largest contributions, largest first;
    ``top_share`` is Σ over them of max(c_k, 0) divided by Σ over all k of max(c_k, 0)
    (0 when no contribution is positive): how much of the similarity they carry.
    """

    contributions: np.ndarray
    top_dimensions: np.ndarray
    top_contributions: np.ndarray
    top_share: float
    top1_share: float
    anisotropy: float

    def as_metrics(self, prefix: str = "geometry") -> dict[str, float]:
        return {
            metric_name(prefix, "rogue_top1_share"): self.top1_share,
            metric_name(prefix, f"rogue_top{len(self.top_dimensions)}_share"): self.top_share,
        }


def rogue_dimensions(x: object, top: int = 5) -> RogueDimensions:
    """Split anisotropy into per-dimension terms (Timkey & van Schijndel 2021, "All bark and no bite").

    The mean cosine over distinct pairs is Σ_k c_k with, for dimension k,
    S_k = Σᵢ x̂ᵢₖ and Q_k = Σᵢ x̂ᵢₖ²::

        c_k = (S_k² − Q_k) / (n(n − 1))

    i.e. the mean over distinct pairs of x̂ᵢₖ x̂ⱼₖ. A few "rogue" dimensions with large c_k
    dominate the cosine similarity of many trained models. O(n·d), no n×n matrix.

    >>> r = rogue_dimensions([[1.0, 0.1], [1.0, -0.1], [1.0, 0.0]], top=1)
    >>> int(r.top_dimensions[0]), bool(abs(r.contributions.sum() - r.anisotropy) < 1e-12)
    (0, True)
    """
    n = 0
    sums = squares = None
    for block, inverse_norms in normalising_blocks(x, "x", min_rows=2):
        n += block.shape[0]
        block_sums = inverse_norms @ block
        block_squares = np.square(inverse_norms) @ np.square(block)
        sums = block_sums if sums is None else sums + block_sums
        squares = block_squares if squares is None else squares + block_squares
    assert sums is not None and squares is not None
    return rogue_from_sums(sums, squares, n, top)


def rogue_from_sums(sums: np.ndarray, squares: np.ndarray, n: int, top: int = 5) -> RogueDimensions:
    """:class:`RogueDimensions` from S = Σᵢ x̂ᵢ and Q = Σᵢ x̂ᵢ² over ``n`` ≥ 2 unit rows (see :func:`rogue_dimensions`).

    >>> rogue_from_sums(np.array([2.0, 0.0]), np.array([2.0, 0.0]), 2, top=1).anisotropy
    1.0
    """
    d = sums.size
    if not 1 <= top <= d:
        raise ValueError(f"top must be between 1 and the dimension {d}, got {top}")
    contributions = (np.square(sums) - squares) / (n * (n - 1))
    order = np.argsort(-contributions, kind="stable")[:top]
    positive = np.clip(contributions, 0.0, None)
    positive_total = positive.sum()

    def share(indices: np.ndarray) -> float:
        return float(positive[indices].sum() / positive_total) if positive_total > 0 else 0.0

    return RogueDimensions(
        contributions=contributions,
        top_dimensions=order,
        top_contributions=contributions[order],
        top_share=share(order),
        top1_share=share(order[:1]),
        anisotropy=float(contributions.sum()),
    )


# --------------------------------------------------------------------------- dimension


@dataclass(frozen=True)
class IntrinsicDimension:
    """PCA components needed per explained-variance threshold, and the effective rank."""

    thresholds: tuple[float, ...]
    components: tuple[int, ...]
    explained_variance_ratio: np.ndarray
    cumulative_explained_variance: np.ndarray
    singular_values: np.ndarray
    effective_rank: float

    def as_metrics(self, prefix: str = "geometry") -> dict[str, float]:
        metrics = {
            metric_name(prefix, f"id_pca{_threshold_name(t)}"): float(c)
            for t, c in zip(self.thresholds, self.components)
        }
        metrics[metric_name(prefix, "effective_rank")] = self.effective_rank
        return metrics


def intrinsic_dimension(x: object, thresholds: Sequence[float] = (0.9, 0.95, 0.99)) -> IntrinsicDimension:
    """Linear intrinsic dimension from the singular values σ₁ ≥ … of the column-centred matrix.

    Explained-variance ratio rₖ = σₖ² / Σⱼ σⱼ²; for each threshold τ ∈ (0, 1) the number of
    components is the smallest m with r₁ + … + r_m **strictly greater** than τ (capped at the
    number of singular values), the rule of ``sklearn.decomposition.PCA(n_components=τ)``.
    Effective rank (Roy & Vetterli 2007): exp(H(p)) with pₖ = σₖ / Σⱼ σⱼ and
    H(p) = −Σ pₖ log pₖ (0 log 0 = 0); it lies in [1, rank].

    Needs n ≥ 2 rows that are not all identical (zero variance raises ``ValueError``).

    >>> r = intrinsic_dimension([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.2], [0.0, -0.2]])
    >>> r.components, round(r.effective_rank, 4)
    ((1, 1, 2), 1.5692)
    """
    matrix = as_matrix(x, "x", min_rows=2)
    centred = matrix - matrix.mean(axis=0)
    return intrinsic_dimension_from_singular_values(np.linalg.svd(centred, compute_uv=False), thresholds)


def intrinsic_dimension_from_singular_values(
    singular_values: np.ndarray, thresholds: Sequence[float] = (0.9, 0.95, 0.99)
) -> IntrinsicDimension:
    """:class:`IntrinsicDimension` from the centred matrix's singular values σ₁ ≥ σ₂ ≥ … (see
    :func:`intrinsic_dimension`; a streamed covariance gives them as √ of its eigenvalues).

    >>> intrinsic_dimension_from_singular_values(np.array([2.0, 1.0]), (0.5, 0.9)).components
    (1, 2)
    """
    threshold_tuple = tuple(float(t) for t in thresholds)
    if not threshold_tuple or any(not 0.0 < t < 1.0 for t in threshold_tuple):
        raise ValueError(f"thresholds must be in (0, 1), got {threshold_tuple}")
    singular_values = np.asarray(singular_values, dtype=np.float64)
    variances = np.square(singular_values)
    total_variance = variances.sum()
    if not total_variance > 0.0:
        raise ValueError("x has zero variance (all rows identical): intrinsic dimension undefined")
    ratio = variances / total_variance
    cumulative = np.cumsum(ratio)
    components = tuple(int(min(np.searchsorted(cumulative, t, side="right") + 1, ratio.size)) for t in threshold_tuple)
    weights = singular_values / singular_values.sum()
    nonzero = weights[weights > 0]
    effective_rank = float(np.exp(-(nonzero * np.log(nonzero)).sum()))
    return IntrinsicDimension(
        thresholds=threshold_tuple,
        components=components,
        explained_variance_ratio=ratio,
        cumulative_explained_variance=cumulative,
        singular_values=singular_values,
        effective_rank=effective_rank,
    )


# --------------------------------------------------------------------------- Wang & Isola


def alignment(x_pos_a: object, x_pos_b: object, alpha: float = 2.0) -> float:
    """Alignment of positive pairs (Wang & Isola 2020) on L2-normalised rows.

    ``alignment = mean over i of ‖x̂ᵢ − ŷᵢ‖^α`` where row i of ``x_pos_a`` and of
    ``x_pos_b`` form a positive pair. 0 when every pair coincides, at most 2^α. Lower is
    better.

    >>> alignment([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]])  # 0 and ‖(0,2)‖²=4
    2.0
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    a = unit_rows(x_pos_a, "x_pos_a")
    b = unit_rows(x_pos_b, "x_pos_b")
    if a.shape != b.shape:
        raise ValueError(
            f"x_pos_a and x_pos_b must have the same shape (row i = one positive pair), got {a.shape} and {b.shape}"
        )
    distances = np.linalg.norm(a - b, axis=1)
    return float(np.mean(distances**alpha))


def label_alignment(x: object, labels: Sequence[object], alpha: float = 2.0) -> float:
    """Alignment with classes as positives: mean of ‖x̂ᵢ − x̂ⱼ‖^α over all distinct pairs
    i < j with the same label (Wang & Isola 2020, supervised form).

    Computed exactly, label by label, in row blocks. Raises ``ValueError`` if no label
    has two members.

    >>> label_alignment([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], ["a", "b", "a"])
    0.0
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    unit = unit_rows(x, "x")
    label_array = check_labels(labels, unit.shape[0])
    total, pairs = 0.0, 0
    for label in np.unique(label_array):
        members = unit[label_array == label]
        m = members.shape[0]
        for start, stop, block in row_blocks(members):
            squared = np.clip(2.0 - 2.0 * (block @ members[start:].T), 0.0, None)
            upper = np.arange(start, stop)[:, None] < np.arange(start, m)[None, :]
            total += float(np.sum(squared[upper] ** (alpha / 2.0)))
            pairs += int(upper.sum())
    if pairs == 0:
        raise ValueError("label_alignment needs at least one label with two or more rows")
    return total / pairs


def uniformity(x: object, t: float = 2.0) -> float:
    """Uniformity (Wang & Isola 2020) of L2-normalised rows, exact over all distinct pairs::

        uniformity = log( 2/(n(n−1)) · Σ_{i<j} exp(−t ‖x̂ᵢ − x̂ⱼ‖²) )

    Since ‖x̂ᵢ − x̂ⱼ‖² = 2 − 2 cos(i, j), this is −2t + logsumexp_{i<j}(2t cos) − log(n(n−1)/2),
    accumulated block by block (O(n²·d) time, O(block·n) memory, no overflow). At most 0
    (all rows equal); lower means more uniform, about −2t for uniform points in high
    dimension.

    >>> round(uniformity([[1.0, 0.0], [-1.0, 0.0]]), 6)  # one pair at distance 2
    -8.0
    """
    if t <= 0:
        raise ValueError(f"t must be > 0, got {t}")
    unit = unit_rows(x, "x", min_rows=2)
    n = unit.shape[0]
    partial_logsumexps = []
    for start, stop, block in row_blocks(unit):
        cosines = block @ unit[start:].T  # columns j >= start
        upper = np.arange(start, stop)[:, None] < np.arange(start, n)[None, :]
        if upper.any():
            partial_logsumexps.append(logsumexp(2.0 * t * cosines[upper]))
    pair_count = n * (n - 1) / 2.0
    return float(-2.0 * t + logsumexp(partial_logsumexps) - math.log(pair_count))


# --------------------------------------------------------------------------- OOD


@dataclass(frozen=True)
class OODScores:
    """Cosine distance of each input to the reference centroid, and the inputs above threshold."""

    scores: np.ndarray
    threshold: float
    flagged: np.ndarray
    fraction_flagged: float

    def as_metrics(self, prefix: str = "geometry") -> dict[str, float]:
        return {
            metric_name(prefix, "ood_fraction"): self.fraction_flagged,
            metric_name(prefix, "ood_distance_mean"): float(self.scores.mean()),
        }


def ood_scores(x: object, reference: object | None = None, threshold: float = 0.5) -> OODScores:
    """Out-of-distribution score of each row: cosine distance to the reference corpus centroid.

    c = mean of the L2-normalised rows of ``reference`` (of ``x`` itself when omitted), so
    long vectors do not dominate; ``score_i = 1 − cos(xᵢ, c)`` in [0, 2]. Row i is flagged
    when ``score_i > threshold`` (strictly). A zero centroid (directions cancelling out) has
    no direction and raises ``ValueError``.

    >>> r = ood_scores([[1.0, 0.0], [0.0, 1.0]], reference=[[1.0, 0.0]], threshold=0.5)
    >>> r.scores.tolist(), r.flagged.tolist()
    ([0.0, 1.0], [1])
    """
    unit = unit_rows(x, "x")
    reference_unit = unit if reference is None else unit_rows(reference, "reference")
    if reference_unit.shape[1] != unit.shape[1]:
        raise ValueError(
            f"x and reference must have the same dimension, got {unit.shape[1]} and {reference_unit.shape[1]}"
        )
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    centroid = reference_unit.mean(axis=0)
    centroid_norm = np.linalg.norm(centroid)
    if centroid_norm < 1e-12:
        raise ValueError("the reference centroid is zero (directions cancel out): no direction")
    scores = 1.0 - np.clip(unit @ (centroid / centroid_norm), -1.0, 1.0)
    flagged = np.flatnonzero(scores > threshold)
    return OODScores(
        scores=scores,
        threshold=float(threshold),
        flagged=flagged,
        fraction_flagged=float(flagged.size / scores.size),
    )


def robust_ood_threshold(scores: object) -> float:
    """An OOD threshold robust to the model's anisotropy: median + 3 × 1.4826 × MAD of the
    probe's own centroid distances.

    With s the scores of :func:`ood_scores` (cosine distances to the centroid)::

        threshold = median(s) + 3 · 1.4826 · median(|s − median(s)|)

    1.4826 · MAD estimates the standard deviation of normal data, so this is a "3 sigma" cut
    that outliers do not inflate. A fixed cut does not transfer between models: in an
    anisotropic space every input is far from uniform on the sphere, and a cut made for an
    isotropic one would flag nearly everything. This flags the inputs that are outliers for
    *this* model's own spread.

    Args:
        scores: 1-D distances (e.g. ``ood_scores(x, threshold=2.0).scores``).

    Returns:
        The threshold, a float.

    >>> round(robust_ood_threshold([0.1, 0.2, 0.3, 0.4, 5.0]), 6)  # median 0.3, MAD 0.1
    0.74478
    """
    values = np.asarray(scores, dtype=np.float64)
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    return med + 3 * 1.4826 * mad


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class GeometrySummary:
    """Every geometry signal of one embedding matrix (see :func:`geometry_summary`)."""

    anisotropy: float
    histogram: PairCosineHistogram
    rogue: RogueDimensions
    intrinsic: IntrinsicDimension
    uniformity: float
    uniformity_rows: int
    ood: OODScores
    alignment: float | None = None

    def as_metrics(self, prefix: str = "geometry") -> dict[str, float]:
        metrics = {
            metric_name(prefix, "anisotropy"): self.anisotropy,
            metric_name(prefix, "uniformity"): self.uniformity,
        }
        if self.alignment is not None:
            metrics[metric_name(prefix, "alignment")] = self.alignment
        for part in (self.intrinsic, self.histogram, self.rogue, self.ood):
            metrics.update(part.as_metrics(prefix))
        return metrics


def geometry_summary(
    x: object,
    labels: Sequence[object] | None = None,
    *,
    reference: object | None = None,
    ood_threshold: float = 0.5,
    thresholds: Sequence[float] = (0.9, 0.95, 0.99),
    bins: int = 50,
    max_pairs: int = 20000,
    uniformity_max_rows: int = 10000,
    rogue_top: int = 5,
    seed: int = 0,
) -> GeometrySummary:
    """All geometry signals of ``x`` for a snapshot.

    Anisotropy, rogue dimensions, intrinsic dimension and OOD scores use every row. Uniformity
    is O(n²·d), so above ``uniformity_max_rows`` rows it is computed exactly on that many rows
    drawn without replacement with ``seed`` (``uniformity_rows`` records how many). With
    ``labels``, alignment is :func:`label_alignment` (same-label pairs as positives). Each part
    documents its formula: :func:`anisotropy`, :func:`pair_cosine_histogram`,
    :func:`rogue_dimensions`, :func:`intrinsic_dimension`, :func:`uniformity`,
    :func:`ood_scores`.

    Args:
        x: ``[n, d]`` embeddings (n ≥ 2). labels: optional label per row.
        reference: rows whose centroid the OOD scores measure from (default: x).
        ood_threshold: cosine-distance cut for OOD flags.
        thresholds: explained-variance thresholds of the intrinsic dimension.
        bins, max_pairs: of the pair-cosine histogram.
        uniformity_max_rows: most rows uniformity is computed on.
        rogue_top: rogue dimensions reported. seed: seed of every sampler.

    Returns:
        A :class:`GeometrySummary`; ``as_metrics(prefix)`` names its numbers.

    >>> s = geometry_summary([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], labels=["a", "b", "a"])
    >>> round(s.anisotropy, 4), s.intrinsic.explained_variance_ratio.round(2).tolist(), round(s.alignment, 4)
    (0.4714, [0.75, 0.25], 0.5858)
    """
    matrix = as_matrix(x, "x", min_rows=2)
    n = matrix.shape[0]
    if uniformity_max_rows < 2:
        raise ValueError(f"uniformity_max_rows must be >= 2, got {uniformity_max_rows}")
    if n > uniformity_max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(n, uniformity_max_rows, replace=False))
        uniformity_value = uniformity(matrix[rows])
    else:
        uniformity_value = uniformity(matrix)
    return GeometrySummary(
        anisotropy=anisotropy(matrix),
        histogram=pair_cosine_histogram(matrix, bins=bins, max_pairs=max_pairs, seed=seed),
        rogue=rogue_dimensions(matrix, top=min(rogue_top, matrix.shape[1])),
        intrinsic=intrinsic_dimension(matrix, thresholds),
        uniformity=uniformity_value,
        uniformity_rows=min(n, uniformity_max_rows),
        ood=ood_scores(matrix, reference=reference, threshold=ood_threshold),
        alignment=None if labels is None else label_alignment(matrix, labels),
    )
