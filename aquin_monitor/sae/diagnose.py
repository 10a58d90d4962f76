"""Absorption and polysemy diagnostics of a SAE over a corpus (``aquin-monitor sae diagnose``).

- **Absorption pairs** (A → B): among texts where feature A fires (``n_A`` of them, at least
  ``min_support``), the share where B fires too, ``P(B | A) = C_AB / n_A``, is at least
  ``threshold`` (default 0.9): A's firing all but implies B's, so A reads as a part of B (or B has
  absorbed the direction A stands for). A dense B (firing on most texts) passes that bar for any A by
  chance, so each pair also carries B's base rate ``P(B) = n_B / n``, the lift ``P(B | A) / P(B)`` and a
  one-sided test against the base rate: under independence ``C_AB`` is hypergeometric (``n`` texts,
  ``n_B`` of them B's, ``n_A`` drawn), ``p = P(X ≥ C_AB)`` (``scipy.stats.hypergeom.sf``), and the
  Benjamini–Hochberg ``q`` is taken over every ordered pair tested (each A of enough support against
  every other feature that fired; a pair that never co-fires has ``p = 1``; over very many co-firing pairs
  the unlisted ones enter with an upper bound of their p, which can only raise a listed pair's q). A pair is
  ``flagged`` only when ``lift ≥ min_lift`` (default 2) and ``q ≤ alpha`` (default 0.05) as well. Pairs that imply each
  other both ways are listed once per direction. Counts come from
  :func:`aquin_monitor.sae.network.coactivation_counts`.
- **Polysemy** of a feature: ``spread`` = mean pairwise cosine distance of the embeddings of its
  top-activating texts, minus ``baseline`` = the same for random corpus texts (``spread_excess``;
  above 0: its texts are more varied than the corpus itself, a sign of several concepts). Plus a
  2-means split test: scipy's ``kmeans2`` (k-means++ start, seeded) on the top texts' unit embeddings
  and the mean silhouette of that split under cosine distance (Rousseeuw 1987, as scikit-learn's
  ``silhouette_score(metric="cosine")``, computed from the distance matrix the spread already
  needs). A 2-means split finds two sides in any set of texts, so both numbers are set against a null:
  the same measures on ``null_draws`` sets of as many random corpus texts (``spread_z`` = the feature's
  spread in standard deviations of the null's; ``silhouette_p`` = share of null sets splitting at least
  as well, ``(1 + #{s_null ≥ s}) / (1 + draws)``). The feature is flagged ``merged`` when the silhouette
  is at least ``silhouette_threshold`` (default 0.5), ``silhouette_p ≤ alpha`` and each side holds at
  least 2 texts; example texts of each side are kept.

Example:

    >>> import numpy as np, scipy.sparse
    >>> z = scipy.sparse.csr_matrix(np.array([[1, 1], [1, 1], [0, 1], [0, 1.0]]))
    >>> [
    ...     (p.source, p.target, p.probability, p.support, p.target_frequency, p.lift, p.flagged)
    ...     for p in absorption_pairs(z, ["a", "b", "c", "d"], min_support=2)
    ... ]
    [(0, 1, 1.0, 2, 1.0, 1.0, False)]

    B fires on every text: A → B holds by its base rate alone (lift 1), so the pair is listed, not flagged.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse
from scipy.cluster.vq import kmeans2
from scipy.stats import hypergeom
from sklearn.metrics.pairwise import cosine_distances

from ..rows import RowSource, gather_rows
from .browser import feature_table
from .corpus_texts import texts_for
from .network import coactivation_counts
from .stats import (
    ActivationBlocks,
    FeatureStats,
    feature_stats_from_activations,
    first_shared_rows,
    matrix_blocks,
)

__all__ = [
    "AbsorptionPair",
    "Diagnostics",
    "Polysemy",
    "absorption_pairs",
    "benjamini_hochberg",
    "co_firing_p_values",
    "diagnose",
    "pairs_tested",
    "polysemy",
    "random_set_null",
    "silhouette",
    "two_means_split",
]


@dataclass
class AbsorptionPair:
    """``P(target | source) = both / support`` over the corpus, with example texts where both fire."""

    source: int
    target: int
    probability: float
    support: int
    """Texts where the source fires (n_A)."""
    both: int
    """Texts where both fire (C_AB)."""
    target_frequency: float
    """``P(B)``: the target's base rate over the corpus."""
    lift: float = 1.0
    """``P(B | A) / P(B)``."""
    p_value: float = 1.0
    """One-sided hypergeometric ``P(C ≥ C_AB)`` under independence."""
    q_value: float = 1.0
    """Benjamini–Hochberg adjusted ``p_value`` over all ordered pairs tested."""
    flagged: bool = False
    """``lift ≥ min_lift`` and ``q_value ≤ alpha``: more than the base rate explains."""
    examples: list[str] = field(default_factory=list)


@dataclass
class Polysemy:
    """Spread of a feature's top texts against random corpus texts, and its 2-means split."""

    feature: int
    spread: float
    baseline: float
    spread_excess: float
    silhouette: float
    merged: bool
    split_sizes: tuple[int, int]
    examples: tuple[list[str], list[str]]
    """Up to 3 top texts from each side of the 2-means split."""
    spread_z: float = 0.0
    """``(spread − mean null spread) / sd of null spread`` over random sets of as many texts."""
    silhouette_p: float = 1.0
    """Share of random sets of as many texts whose 2-means split has at least this silhouette."""


@dataclass
class Diagnostics:
    """Absorption pairs (strongest first) and polysemy (largest spread excess first)."""

    absorption: list[AbsorptionPair]
    polysemy: list[Polysemy]
    threshold: float
    baseline: float
    silhouette_threshold: float = 0.5
    min_lift: float = 2.0
    alpha: float = 0.05
    pairs_tested: int = 0
    """Ordered pairs the Benjamini–Hochberg correction counts."""


def absorption_pairs(
    activations: scipy.sparse.spmatrix | FeatureStats,
    texts: Sequence[str] | Mapping[int, str],
    *,
    threshold: float = 0.9,
    min_support: int = 10,
    examples: int = 3,
    blocks: ActivationBlocks | None = None,
    min_lift: float = 2.0,
    alpha: float = 0.05,
    exact_limit: int = 50_000,
) -> list[AbsorptionPair]:
    """Ordered feature pairs (A, B) with ``P(B fires | A fires) ≥ threshold`` on at least ``min_support`` texts,
    each with B's base rate, the lift and its base-rate test (``flagged`` when ``lift ≥ min_lift`` and
    ``q ≤ alpha``; see the module docstring).

    Args:
        activations: sparse activations ``[n, latents]``, or their streamed
            :class:`~aquin_monitor.sae.stats.FeatureStats` (then ``blocks`` gives the examples).
        texts: the corpus texts by row (a mapping needs the example rows only).
        threshold: least ``P(B | A)``.
        min_support: least number of texts where A fires.
        examples: texts kept per pair where both fire (the first ones by row).
        blocks: the activations again, in row order (:func:`~aquin_monitor.sae.stats.activation_blocks`),
            read until every pair has its examples; default: the ``activations`` matrix itself.
        min_lift: least lift of a flagged pair.
        alpha: largest Benjamini–Hochberg ``q`` of a flagged pair.
        exact_limit: up to this many co-firing pairs every p-value is exact; beyond, only the listed pairs'
            are, the others are Chernoff–Hoeffding upper bounds (:func:`co_firing_p_values`), which can only
            raise the listed pairs' q (scipy's exact tail costs ~80 µs a pair: 40 s for 500,000 pairs).

    Returns:
        The pairs, flagged ones first, then by probability and support (descending), each with up to
        ``examples`` texts where both fire.
    """
    if isinstance(activations, FeatureStats):
        stats = activations
        if blocks is None:
            raise ValueError("absorption_pairs: streamed statistics need the activation blocks for the examples")
    else:
        stats, blocks = feature_stats_from_activations(activations, examples=1), matrix_blocks(activations)
    counts, n_i = coactivation_counts(stats)
    n = stats.n_texts
    off = counts.tocoo()
    keep = (off.row != off.col) & (n_i[off.row] >= min_support)
    a, b, c = off.row[keep], off.col[keep], off.data[keep]
    probability = c / n_i[a]
    hit = probability >= threshold
    p_value = co_firing_p_values(c, n_i[a], n_i[b], n, exact=hit if len(c) > exact_limit else None)
    q_value = benjamini_hochberg(p_value, tests=pairs_tested(n_i, min_support))
    a, b, c, probability, p_value, q_value = a[hit], b[hit], c[hit], probability[hit], p_value[hit], q_value[hit]
    lift = probability / (n_i[b] / n)
    flagged = (lift >= min_lift) & (q_value <= alpha)
    order = np.lexsort((b, a, -n_i[a], -probability, ~flagged))
    shared = first_shared_rows(blocks, [(int(a[t]), int(b[t])) for t in order], limit=examples) if len(order) else []
    texts = texts_for(texts, [r for rows in shared for r in rows])
    return [
        AbsorptionPair(
            source=int(a[t]),
            target=int(b[t]),
            probability=float(probability[t]),
            support=int(n_i[a[t]]),
            both=int(c[t]),
            target_frequency=float(n_i[b[t]] / n),
            lift=float(lift[t]),
            p_value=float(p_value[t]),
            q_value=float(q_value[t]),
            flagged=bool(flagged[t]),
            examples=[str(texts[r]) for r in rows],
        )
        for t, rows in zip(order, shared)
    ]


def co_firing_p_values(
    both: np.ndarray, source: np.ndarray, target: np.ndarray, n: int, *, exact: np.ndarray | None = None
) -> np.ndarray:
    """One-sided p-values ``P(X ≥ C_AB)`` of co-firing under independence, ``X ~ Hypergeometric(n, n_B, n_A)``.

    Exact (``scipy.stats.hypergeom.sf``) where ``exact`` is True (everywhere when None); elsewhere the
    Chernoff–Hoeffding bound ``exp(−n_A · KL(C_AB/n_A ‖ n_B/n))`` when ``C_AB/n_A > n_B/n``, else 1, an upper
    bound (Hoeffding 1963, Theorem 4: sampling without replacement obeys the binomial's bounds).

    >>> exact = co_firing_p_values(np.array([9.0]), np.array([10.0]), np.array([30.0]), 100)
    >>> bound = co_firing_p_values(np.array([9.0]), np.array([10.0]), np.array([30.0]), 100, exact=np.array([False]))
    >>> bool(exact[0] <= bound[0] < 1e-3)
    True
    """
    both, source, target = (np.asarray(v, dtype=np.float64) for v in (both, source, target))
    if exact is None:
        return np.asarray(hypergeom.sf(both - 1, n, target, source), dtype=np.float64)
    rate, base = both / source, np.clip(target / n, 1e-300, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        divergence = rate * np.log(rate / base) + np.where(
            rate < 1, (1 - rate) * np.log(np.maximum(1 - rate, 1e-300) / np.maximum(1 - base, 1e-300)), 0.0
        )
    p = np.where(rate > base, np.exp(-source * np.nan_to_num(divergence, nan=0.0, posinf=np.inf)), 1.0)
    p[exact] = hypergeom.sf(both[exact] - 1, n, target[exact], source[exact])
    return np.minimum(p, 1.0)


def pairs_tested(counts: np.ndarray, min_support: int) -> int:
    """Ordered pairs (A, B) the absorption test counts: each A firing on ``min_support`` texts or more, against
    every other feature that fired.

    >>> pairs_tested(np.array([12.0, 3.0, 0.0, 40.0]), 10)  # A in {0, 3}, B among the 2 other fired features
    4
    """
    fired = int((counts > 0).sum())
    sources = int((counts >= min_support).sum())
    return sources * max(fired - 1, 0)


def benjamini_hochberg(p_values: np.ndarray, *, tests: int | None = None) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) of ``p_values``, out of ``tests`` tests in all.

    ``q_(i) = min_{j ≥ i} p_(j) · m / j`` over the p-values sorted ascending, capped at 1; tests not given
    are taken as ``p = 1`` (pairs that never co-fire), which rank last and change no given q beyond ``m``.
    Equal to ``scipy.stats.false_discovery_control`` on the p-values padded with ones (tested).

    >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03]), tests=4).round(4).tolist()
    [0.04, 0.0533, 0.0533]
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p) if tests is None else max(int(tests), len(p))
    if len(p) == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, len(p) + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty_like(p)
    q[order] = np.minimum(adjusted, 1.0)
    return q


def _mean_pairwise_distance(distances: np.ndarray) -> float:
    m = len(distances)
    return float(distances.sum() / (m * (m - 1))) if m > 1 else 0.0


def silhouette(distances: np.ndarray, split: np.ndarray) -> float:
    """Mean silhouette of a two-way ``split`` from a distance matrix (0 when a side is empty).

    ``s(i) = (b(i) − a(i)) / max(a(i), b(i))`` with ``a`` the mean distance to the other members of
    its side and ``b`` to the other side's; ``s = 0`` for a point alone on its side (as scikit-learn).
    Equal to ``sklearn.metrics.silhouette_score(distances, split, metric="precomputed")`` (tested), which
    costs ten times as much on these 20-text matrices (0.8 ms against 0.08 ms a call, once per feature).
    """
    sides = [split == 0, split == 1]
    if not all(side.any() for side in sides):
        return 0.0
    scores = np.zeros(len(split))
    for own, other in (sides, sides[::-1]):
        if own.sum() < 2:
            continue
        a = distances[np.ix_(own, own)].sum(axis=1) / (own.sum() - 1)
        b = distances[np.ix_(own, other)].mean(axis=1)
        scores[own] = np.where(np.maximum(a, b) > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
    return float(scores.mean())


def two_means_split(unit: np.ndarray, seed: int) -> tuple[float, np.ndarray, float]:
    """``(spread, split, silhouette)`` of a set of unit rows: mean pairwise cosine distance, the 2-means
    split (scipy's ``kmeans2``, k-means++ start) and its silhouette under cosine distance."""
    distances = np.clip(cosine_distances(unit), 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    with warnings.catch_warnings():  # identical texts leave one side empty: then no split
        warnings.simplefilter("ignore")
        _, split = kmeans2(unit, 2, minit="++", seed=seed)
    return _mean_pairwise_distance(distances), split, silhouette(distances, split)


def random_set_null(pool: np.ndarray, size: int, *, draws: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spreads and 2-means silhouettes of ``draws`` random sets of ``size`` rows of ``pool`` (unit rows): what
    :func:`two_means_split` reads off texts that share nothing but the corpus."""
    rng = np.random.default_rng(seed)
    spreads, silhouettes = np.zeros(draws), np.zeros(draws)
    for t in range(draws):
        rows = rng.choice(len(pool), size=min(size, len(pool)), replace=False)
        spreads[t], _, silhouettes[t] = two_means_split(pool[rows], seed + t)
    return spreads, silhouettes


def polysemy(
    activations: scipy.sparse.spmatrix | FeatureStats,
    embeddings: np.ndarray | RowSource,
    texts: Sequence[str] | Mapping[int, str],
    *,
    top: int = 20,
    min_examples: int = 6,
    silhouette_threshold: float = 0.5,
    baseline_samples: int = 500,
    seed: int = 0,
    null_draws: int = 100,
    alpha: float = 0.05,
) -> tuple[list[Polysemy], float]:
    """Polysemy of every feature with at least ``min_examples`` firing texts.

    Args:
        activations: sparse activations ``[n, latents]``, or their streamed statistics (which keep at most
            their own number of top texts per feature).
        embeddings: the corpus embeddings ``[n, d]`` (the spread is measured on them), an array or a
            :class:`~aquin_monitor.rows.RowSource` (only the top texts' rows and the baseline sample are read).
        texts: the corpus texts by row (a mapping needs the top rows only).
        top: top-activating texts per feature.
        min_examples: least number of firing texts for a feature to be assessed.
        silhouette_threshold: least silhouette of the 2-means split to flag ``merged``.
        baseline_samples: random corpus texts for the baseline spread (the null sets are drawn from them).
        seed: seeds the baseline sample, the null sets and the 2-means starts.
        null_draws: random sets per set size in the null.
        alpha: largest ``silhouette_p`` of a ``merged`` feature.

    Returns:
        ``(results, baseline)``: per feature, largest ``spread_excess`` first, and the baseline.
    """
    rng = np.random.default_rng(seed)
    n = len(embeddings)
    sample = rng.choice(n, size=min(baseline_samples, n), replace=False)
    pool = gather_rows(embeddings, sample)
    pool /= np.maximum(np.linalg.norm(pool, axis=1, keepdims=True), 1e-12)
    baseline = _mean_pairwise_distance(cosine_distances(pool))
    table = feature_table(activations, examples=top)
    wanted = [rows for rows in table["top_rows"] if len(rows) >= min_examples]
    needed = np.unique(np.concatenate(wanted)) if wanted else np.zeros(0, dtype=np.int64)
    vectors = gather_rows(embeddings, needed)
    texts = texts_for(texts, needed.tolist())
    nulls: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    results = []
    for j, rows in enumerate(table["top_rows"]):
        if len(rows) < min_examples:
            continue
        if len(rows) not in nulls:
            nulls[len(rows)] = random_set_null(pool, len(rows), draws=null_draws, seed=seed + 7919 * len(rows))
        null_spread, null_silhouette = nulls[len(rows)]
        x = vectors[np.searchsorted(needed, rows)]
        spread, split, score = two_means_split(
            x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), seed + j
        )
        sizes = (int((split == 0).sum()), int((split == 1).sum()))
        p_null = float((1 + np.sum(null_silhouette >= score - 1e-12)) / (1 + len(null_silhouette)))
        results.append(
            Polysemy(
                feature=j,
                spread=spread,
                baseline=baseline,
                spread_excess=spread - baseline,
                silhouette=score,
                merged=bool(score >= silhouette_threshold and p_null <= alpha and min(sizes) >= 2),
                split_sizes=sizes,
                examples=tuple([str(texts[r]) for r in rows[split == side][:3]] for side in (0, 1)),  # type: ignore[arg-type]
                spread_z=float((spread - null_spread.mean()) / max(float(null_spread.std()), 1e-12)),
                silhouette_p=p_null,
            )
        )
    results.sort(key=lambda p: (-p.spread_excess, p.feature))
    return results, baseline


def diagnose(
    activations: scipy.sparse.spmatrix | FeatureStats,
    embeddings: np.ndarray | RowSource,
    texts: Sequence[str] | Mapping[int, str],
    *,
    threshold: float = 0.9,
    min_support: int = 10,
    top: int = 20,
    silhouette_threshold: float = 0.5,
    seed: int = 0,
    blocks: ActivationBlocks | None = None,
    min_lift: float = 2.0,
    alpha: float = 0.05,
) -> Diagnostics:
    """Absorption pairs and polysemy of a SAE over a corpus (see the module docstring).

    Args:
        activations: sparse activations ``[n, latents]`` of the corpus embeddings, or their streamed
            :class:`~aquin_monitor.sae.stats.FeatureStats` (keeping at least ``top`` texts per feature).
        embeddings: the corpus embeddings ``[n, d]``, an array or a :class:`~aquin_monitor.rows.RowSource`.
        texts: the corpus texts by row (a mapping: at least the top rows of every feature).
        threshold: least ``P(B | A)`` of an absorption pair.
        min_support: least number of texts where A fires.
        top: top-activating texts per feature for polysemy.
        silhouette_threshold: least silhouette of the 2-means split to flag a feature as merged.
        seed: seeds the baseline sample and the 2-means starts.
        blocks: with streamed statistics, the activations again for the absorption examples
            (:func:`absorption_pairs`).
        min_lift: least lift of a flagged absorption pair.
        alpha: largest Benjamini–Hochberg q of a flagged pair, and largest null p of a merged feature.

    Returns:
        A :class:`Diagnostics`.
    """
    n = activations.n_texts if isinstance(activations, FeatureStats) else activations.shape[0]
    n_texts = n if isinstance(texts, Mapping) else len(texts)
    if n != n_texts or len(embeddings) != n:
        raise ValueError(f"{n} activation rows, {len(embeddings)} embeddings, {n_texts} texts")
    pairs = absorption_pairs(
        activations,
        texts,
        threshold=threshold,
        min_support=min_support,
        blocks=blocks,
        min_lift=min_lift,
        alpha=alpha,
    )
    found, baseline = polysemy(
        activations, embeddings, texts, top=top, silhouette_threshold=silhouette_threshold, seed=seed, alpha=alpha
    )
    counts = activations.counts if isinstance(activations, FeatureStats) else (activations > 0).sum(axis=0)
    return Diagnostics(
        absorption=pairs,
        polysemy=found,
        threshold=threshold,
        baseline=baseline,
        silhouette_threshold=silhouette_threshold,
        min_lift=min_lift,
        alpha=alpha,
        pairs_tested=pairs_tested(np.asarray(counts, dtype=np.float64).ravel(), min_support),
    )
