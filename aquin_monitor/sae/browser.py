"""Feature browser: a SAE's features over a corpus, ranked by total activation, with labels and top texts.

For feature ``i`` over ``n`` texts with activations ``z[:, i]`` (as :func:`sparse_activations` gives them):

- ``total_activation`` = Σ_t z[t, i] (the ranking key); ``frequency`` = share of texts with z > 0;
- ``mean_activation`` = mean of z over the texts where it fires; ``max_activation`` = max z;
- ``examples``: the texts with the largest z, descending (ties: earlier text first);
- ``label``: the top c-TF-IDF terms of its first ``label_texts`` (10) examples against the corpus
  (:func:`aquin_monitor.sae.labels.ctfidf_labels`).

Example:

    >>> import numpy as np
    >>> from aquin_monitor.sae.model import SparseAutoencoder
    >>> sae = SparseAutoencoder(4, 8, 2, seed=0)
    >>> texts = ["red apple", "green apple", "fast car", "slow car"]
    >>> browser = browse_features(sae, np.random.default_rng(0).normal(size=(4, 4)), texts)
    >>> browser.n_texts, all(f.frequency > 0 for f in browser.features)
    (4, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse

from .activations import sparse_activations
from .labels import ctfidf_labels

__all__ = ["BrowserFeature", "Example", "FeatureBrowser", "browse_features", "feature_table"]


@dataclass
class Example:
    """One text that activates a feature."""

    row: int
    text: str
    activation: float


@dataclass
class BrowserFeature:
    """One feature of the browser (statistics over the corpus, label, top texts)."""

    index: int
    label: list[str]
    total_activation: float
    frequency: float
    mean_activation: float
    max_activation: float
    examples: list[Example] = field(default_factory=list)


@dataclass
class FeatureBrowser:
    """Features that fired on the corpus, by total activation (descending)."""

    n_texts: int
    num_latents: int
    features: list[BrowserFeature]
    dead: int
    """Features that never fired on the corpus (not listed)."""


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
    return {"total": total, "frequency": counts / max(n, 1), "mean": mean, "max": maximum, "top_rows": top_rows, "top_values": top_values}


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
        features.append(BrowserFeature(
            index=int(j), label=label, total_activation=float(table["total"][j]),
            frequency=float(table["frequency"][j]), mean_activation=float(table["mean"][j]),
            max_activation=float(table["max"][j]),
            examples=[Example(int(r), str(texts[r]), float(v)) for r, v in zip(rows, values)],
        ))
    return FeatureBrowser(n_texts=len(texts), num_latents=int(z.shape[1]), features=features, dead=int(z.shape[1] - len(alive)))
