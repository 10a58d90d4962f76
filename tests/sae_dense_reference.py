"""The dense implementation of the SAE feature statistics as it was before streaming (frozen copy).

The streamed statistics (:mod:`aquin_monitor.sae.stats`) must give the same browser, labels, network and
diagnostics on small inputs; the tests compare them against these functions, copied unchanged from
``browser.py``, ``network.py``, ``diagnose.py`` and ``labels.py`` at commit b4e334d (only the imports differ).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse
from scipy.cluster.vq import kmeans2
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.metrics.pairwise import cosine_distances

from aquin_monitor.sae.activations import sparse_activations
from aquin_monitor.sae.browser import BrowserFeature, Example, FeatureBrowser
from aquin_monitor.sae.diagnose import AbsorptionPair, Diagnostics, Polysemy, silhouette
from aquin_monitor.sae.labels import class_tfidf
from aquin_monitor.sae.network import (
    CoactivationNetwork,
    Edge,
    Node,
    communities_and_layout,
)


def ctfidf_labels(
    texts: Sequence[str], classes: Sequence[Sequence[int]], *, top_terms: int = 3, background: bool = True
) -> list[list[str]]:
    """Top c-TF-IDF terms of each class of texts (e.g. each feature's top-activating texts).

    Args:
        texts: the corpus.
        classes: per class, indices into ``texts`` (its top-activating texts); empty classes get ``[]``.
        top_terms: terms per label.
        background: add the whole corpus as one more class, so ``f_x`` counts corpus-wide use.

    Returns:
        Per class, up to ``top_terms`` terms, highest weight first (ties: alphabetical); terms of
        weight 0 are left out.
    """
    documents = [" ".join(texts[i] for i in members) for members in classes]
    if background:
        documents.append(" ".join(texts))
    vectorizer = CountVectorizer(stop_words="english")
    try:
        counts = vectorizer.fit_transform(documents)
    except ValueError:  # no term at all (only stop words, digits or punctuation)
        return [[] for _ in classes]
    weights = class_tfidf(counts)
    vocabulary = vectorizer.get_feature_names_out()
    labels = []
    for c in range(len(classes)):
        row = weights.getrow(c)
        order = sorted(zip(-row.data, vocabulary[row.indices]))[:top_terms]
        labels.append([str(term) for weight, term in order if weight < 0])
    return labels


def feature_table(activations: scipy.sparse.spmatrix, *, examples: int = 20) -> dict[str, np.ndarray]:
    """Per-feature totals, frequency, mean, max and top rows of a sparse activation matrix ``[n, latents]``.

    Returns:
        ``total``, ``frequency``, ``mean``, ``max`` (each ``[latents]``) and ``top_rows``
        and ``top_values`` (lists, per feature, of row indices and their activations, descending,
        at most ``examples``).
    """
    csc = scipy.sparse.csc_matrix(activations)
    n, latents = csc.shape
    counts = np.diff(csc.indptr)
    total = np.asarray(csc.sum(axis=0)).ravel()
    maximum = np.zeros(latents, dtype=np.float64)
    top_rows: list[np.ndarray] = []
    top_values: list[np.ndarray] = []
    for j in range(latents):
        values = csc.data[csc.indptr[j] : csc.indptr[j + 1]]
        rows = csc.indices[csc.indptr[j] : csc.indptr[j + 1]]
        if len(values):
            maximum[j] = values.max()
        order = np.lexsort((rows, -values))[:examples]
        top_rows.append(rows[order])
        top_values.append(values[order])
    mean = np.where(counts > 0, total / np.maximum(counts, 1), 0.0)
    return {
        "total": total,
        "frequency": counts / max(n, 1),
        "mean": mean,
        "max": maximum,
        "top_rows": top_rows,
        "top_values": top_values,
    }


def browse_features(
    sae: Any,
    embeddings: np.ndarray | Any,
    texts: Sequence[str],
    *,
    examples: int = 20,
    label_texts: int = 10,
    label_terms: int = 3,
    activations: scipy.sparse.spmatrix | None = None,
) -> FeatureBrowser:
    """Rank ``sae``'s features over a corpus and label them.

    Args:
        sae: a :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        embeddings: the corpus embeddings ``[n, d_in]`` (ignored when ``activations`` is given).
        texts: the corpus texts, one per embedding row.
        examples: top texts kept per feature (the page shows the first 5 and expands to the rest).
        label_texts: top texts a label is computed from.
        label_terms: terms per label.
        activations: a precomputed :func:`sparse_activations` matrix.

    Returns:
        A :class:`FeatureBrowser` listing every feature that fired at least once.
    """
    z = sparse_activations(sae, embeddings) if activations is None else activations
    if z.shape[0] != len(texts):
        raise ValueError(f"{z.shape[0]} activation rows for {len(texts)} texts")
    table = feature_table(z, examples=examples)
    alive = np.flatnonzero(table["frequency"] > 0)
    order = alive[np.lexsort((alive, -table["total"][alive]))]
    labels = ctfidf_labels(texts, [table["top_rows"][j][:label_texts].tolist() for j in order], top_terms=label_terms)
    features = []
    for j, label in zip(order, labels):
        rows, values = table["top_rows"][j], table["top_values"][j]
        features.append(
            BrowserFeature(
                index=int(j),
                label=label,
                total_activation=float(table["total"][j]),
                frequency=float(table["frequency"][j]),
                mean_activation=float(table["mean"][j]),
                max_activation=float(table["max"][j]),
                examples=[Example(int(r), str(texts[r]), float(v)) for r, v in zip(rows, values)],
            )
        )
    return FeatureBrowser(
        n_texts=len(texts), num_latents=int(z.shape[1]), features=features, dead=int(z.shape[1] - len(alive))
    )


def coactivation_counts(activations: scipy.sparse.spmatrix) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """``(C, n_i)``: sparse co-activation counts ``BᵀB`` (diagonal = ``n_i``) and per-feature counts."""
    binary = scipy.sparse.csr_matrix(activations, copy=True)
    binary.eliminate_zeros()
    binary.data = np.ones_like(binary.data, dtype=np.float64)
    counts = (binary.T @ binary).tocsr()
    return counts, np.asarray(binary.sum(axis=0)).ravel()


def coactivation_network(
    activations: scipy.sparse.spmatrix,
    *,
    threshold: float = 0.3,
    min_support: int = 5,
    max_nodes: int | None = 300,
    seed: int = 0,
) -> CoactivationNetwork:
    """Co-activation network of the features in a sparse activation matrix ``[n texts, n features]``.

    Args:
        activations: SAE activations (e.g. :func:`aquin_monitor.sae.activations.sparse_activations`).
        threshold: least NPMI of an edge.
        min_support: least number of texts two features share for an edge.
        max_nodes: keep the edges among the ``max_nodes`` features of largest total activation that
            have an edge (``None``: all), so the drawing stays readable.
        seed: seeds the communities and the layout.

    Returns:
        A :class:`CoactivationNetwork`; its nodes are the features left with at least one edge.
    """
    n = activations.shape[0]
    counts, n_i = coactivation_counts(activations)
    upper = scipy.sparse.triu(counts, k=1).tocoo()
    keep = upper.data >= min_support
    i, j, c = upper.row[keep], upper.col[keep], upper.data[keep]
    p_ij, p_i, p_j = c / n, n_i[i] / n, n_i[j] / n
    with np.errstate(divide="ignore", invalid="ignore"):
        npmi = np.where(p_ij >= 1.0, 1.0, np.log(p_ij / (p_i * p_j)) / -np.log(p_ij))
    keep = npmi >= threshold
    i, j, c, npmi = i[keep], j[keep], c[keep], npmi[keep]
    total = np.asarray(scipy.sparse.csc_matrix(activations).sum(axis=0)).ravel()
    linked = np.unique(np.concatenate([i, j]))
    if max_nodes is not None and len(linked) > max_nodes:
        linked = linked[np.lexsort((linked, -total[linked]))][:max_nodes]
        inside = np.isin(i, linked) & np.isin(j, linked)
        i, j, c, npmi = i[inside], j[inside], c[inside], npmi[inside]
        linked = np.unique(np.concatenate([i, j]))
    edges = [
        Edge(int(a), int(b), int(k), float(s), float(k / n_i[a]), float(k / n_i[b]))
        for a, b, k, s in zip(i, j, c, npmi)
    ]
    edges.sort(key=lambda e: (e.source, e.target))
    nodes = [Node(int(f), float(n_i[f] / n), float(total[f] / n_i[f])) for f in linked]
    communities = communities_and_layout(nodes, edges, seed)
    return CoactivationNetwork(
        n_texts=n, threshold=threshold, min_support=min_support, nodes=nodes, edges=edges, communities=communities
    )


def absorption_pairs(
    activations: scipy.sparse.spmatrix,
    texts: Sequence[str],
    *,
    threshold: float = 0.9,
    min_support: int = 10,
    examples: int = 3,
) -> list[AbsorptionPair]:
    """Ordered feature pairs (A, B) with ``P(B fires | A fires) ≥ threshold`` on at least ``min_support`` texts.

    Returns:
        The pairs, by probability then support (descending), each with up to ``examples`` texts
        where both fire.
    """
    counts, n_i = coactivation_counts(activations)
    off = counts.tocoo()
    keep = (off.row != off.col) & (n_i[off.row] >= min_support)
    a, b, c = off.row[keep], off.col[keep], off.data[keep]
    probability = c / n_i[a]
    hit = probability >= threshold
    a, b, c, probability = a[hit], b[hit], c[hit], probability[hit]
    order = np.lexsort((b, a, -n_i[a], -probability))
    csc = scipy.sparse.csc_matrix(activations)
    n = activations.shape[0]
    pairs = []
    for t in order:
        rows_a = csc.indices[csc.indptr[a[t]] : csc.indptr[a[t] + 1]]
        rows_b = csc.indices[csc.indptr[b[t]] : csc.indptr[b[t] + 1]]
        shared = np.intersect1d(rows_a, rows_b)[:examples]
        pairs.append(
            AbsorptionPair(
                source=int(a[t]),
                target=int(b[t]),
                probability=float(probability[t]),
                support=int(n_i[a[t]]),
                both=int(c[t]),
                target_frequency=float(n_i[b[t]] / n),
                examples=[str(texts[r]) for r in shared],
            )
        )
    return pairs


def _mean_pairwise_distance(distances: np.ndarray) -> float:
    m = len(distances)
    return float(distances.sum() / (m * (m - 1))) if m > 1 else 0.0


def polysemy(
    activations: scipy.sparse.spmatrix,
    embeddings: np.ndarray,
    texts: Sequence[str],
    *,
    top: int = 20,
    min_examples: int = 6,
    silhouette_threshold: float = 0.5,
    baseline_samples: int = 500,
    seed: int = 0,
) -> tuple[list[Polysemy], float]:
    """Polysemy of every feature with at least ``min_examples`` firing texts.

    Args:
        activations: sparse activations ``[n, latents]``.
        embeddings: the corpus embeddings ``[n, d]`` (the spread is measured on them).
        texts: the corpus texts.
        top: top-activating texts per feature.
        min_examples: least number of firing texts for a feature to be assessed.
        silhouette_threshold: least silhouette of the 2-means split to flag ``merged``.
        baseline_samples: random corpus texts for the baseline spread.
        seed: seeds the baseline sample and the 2-means starts.

    Returns:
        ``(results, baseline)``: per feature, largest ``spread_excess`` first, and the baseline.
    """
    rng = np.random.default_rng(seed)
    embeddings = np.asarray(embeddings, dtype=np.float64)
    sample = rng.choice(len(embeddings), size=min(baseline_samples, len(embeddings)), replace=False)
    baseline = _mean_pairwise_distance(cosine_distances(embeddings[sample]))
    table = feature_table(activations, examples=top)
    results = []
    for j, rows in enumerate(table["top_rows"]):
        if len(rows) < min_examples:
            continue
        x = embeddings[rows]
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        distances = np.clip(cosine_distances(unit), 0.0, 2.0)
        np.fill_diagonal(distances, 0.0)
        spread = _mean_pairwise_distance(distances)
        with warnings.catch_warnings():  # identical texts leave one side empty: then no split
            warnings.simplefilter("ignore")
            _, split = kmeans2(unit, 2, minit="++", seed=seed + j)
        sizes = (int((split == 0).sum()), int((split == 1).sum()))
        score = silhouette(distances, split)
        sides = ([str(texts[r]) for r in rows[split == 0][:3]], [str(texts[r]) for r in rows[split == 1][:3]])
        results.append(
            Polysemy(
                j,
                spread,
                baseline,
                spread - baseline,
                score,
                bool(score >= silhouette_threshold and min(sizes) >= 2),
                sizes,
                sides,
            )
        )
    results.sort(key=lambda p: (-p.spread_excess, p.feature))
    return results, baseline


def diagnose(
    activations: scipy.sparse.spmatrix,
    embeddings: np.ndarray,
    texts: Sequence[str],
    *,
    threshold: float = 0.9,
    min_support: int = 10,
    top: int = 20,
    silhouette_threshold: float = 0.5,
    seed: int = 0,
) -> Diagnostics:
    """Absorption pairs and polysemy of a SAE over a corpus (see the module docstring).

    Args:
        activations: sparse activations ``[n, latents]`` of the corpus embeddings.
        embeddings: the corpus embeddings ``[n, d]``.
        texts: the corpus texts.
        threshold: least ``P(B | A)`` of an absorption pair.
        min_support: least number of texts where A fires.
        top: top-activating texts per feature for polysemy.
        silhouette_threshold: least silhouette of the 2-means split to flag a feature as merged.
        seed: seeds the baseline sample and the 2-means starts.

    Returns:
        A :class:`Diagnostics`.
    """
    if activations.shape[0] != len(texts) or len(embeddings) != len(texts):
        raise ValueError(f"{activations.shape[0]} activation rows, {len(embeddings)} embeddings, {len(texts)} texts")
    pairs = absorption_pairs(activations, texts, threshold=threshold, min_support=min_support)
    found, baseline = polysemy(
        activations, embeddings, texts, top=top, silhouette_threshold=silhouette_threshold, seed=seed
    )
    return Diagnostics(
        absorption=pairs,
        polysemy=found,
        threshold=threshold,
        baseline=baseline,
        silhouette_threshold=silhouette_threshold,
    )
