"""Feature browser: a SAE's features over a corpus, ranked by total activation, with labels and top texts.

For feature ``i`` over ``n`` texts with activations ``z[:, i]`` (as :func:`sparse_activations` gives them):

- ``total_activation`` = Σ_t z[t, i] (the ranking key); ``frequency`` = share of texts with z > 0;
- ``mean_activation`` = mean of z over the texts where it fires; ``max_activation`` = max z;
- ``examples``: the texts with the largest z, descending (ties: earlier text first);
- ``label``: from its first ``label_texts`` (10) examples: with the model's encoder, a frame and key
  phrases shared by them (:func:`aquin_monitor.sae.keyphrases.keyphrase_labels`); without it, the top
  c-TF-IDF terms against the corpus (:func:`aquin_monitor.sae.labels.ctfidf_labels`);
- ``label_score``: the label's term support on those examples, its AUC (with the encoder) and the
  examples' cohesion (:func:`aquin_monitor.sae.label_quality.score_labels`); the browser's
  ``label_summary`` is their distribution.

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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse

from .activations import sparse_activations
from .corpus_texts import CorpusTexts, texts_for
from .keyphrases import keyphrase_labels
from .label_quality import LabelScore, score_labels, summarise
from .labels import ctfidf_labels
from .stats import FeatureStats, feature_stats_from_activations

__all__ = ["BrowserFeature", "Example", "FeatureBrowser", "browse_features", "browser_from_stats", "feature_table"]


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
    label_score: LabelScore | None = None
    """Term support, AUC and cohesion of the label on the texts it was made from (None without embeddings)."""


@dataclass
class FeatureBrowser:
    """Features that fired on the corpus, by total activation (descending)."""

    n_texts: int
    num_latents: int
    features: list[BrowserFeature]
    dead: int
    """Features that never fired on the corpus (not listed)."""
    label_summary: dict[str, float | int | None] | None = None
    """Distribution of the label scores (:func:`~aquin_monitor.sae.label_quality.summarise`)."""
    labeller: str = "c-TF-IDF"
    """How the labels were made: ``"key phrases"`` (with the model's encoder) or ``"c-TF-IDF"``."""


def feature_table(activations: scipy.sparse.spmatrix | FeatureStats, *, examples: int = 20) -> dict[str, Any]:
    """Per-feature totals, frequency, mean, max and top rows of a sparse activation matrix ``[n, latents]``
    (or of :class:`~aquin_monitor.sae.stats.FeatureStats` already streamed).

    Returns:
        ``total``, ``frequency``, ``mean``, ``max`` (each ``[latents]``) and ``top_rows``
        and ``top_values`` (lists, per feature, of row indices and their activations, descending,
        at most ``examples``).
    """
    if isinstance(activations, FeatureStats) and examples > activations.top_rows.shape[1]:
        raise ValueError(
            f"the statistics kept {activations.top_rows.shape[1]} top texts per feature, {examples} asked for"
        )
    stats = (
        activations
        if isinstance(activations, FeatureStats)
        else feature_stats_from_activations(activations, examples=examples)
    )
    tops = [stats.top(j) for j in range(stats.num_latents)]
    return {
        "total": stats.total,
        "frequency": stats.frequency,
        "mean": stats.mean,
        "max": stats.maximum,
        "top_rows": [rows[:examples] for rows, _ in tops],
        "top_values": [values[:examples] for _, values in tops],
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
    encode: Callable[[list[str]], np.ndarray] | None = None,
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
        encode: the model's encoder: labels become key phrases (see :func:`browser_from_stats`).

    Returns:
        A :class:`FeatureBrowser` listing every feature that fired at least once.
    """
    z = sparse_activations(sae, embeddings) if activations is None else activations
    if z.shape[0] != len(texts):
        raise ValueError(f"{z.shape[0]} activation rows for {len(texts)} texts")
    stats = feature_stats_from_activations(z, examples=examples)
    scored = embeddings if isinstance(embeddings, np.ndarray) and len(embeddings) == len(texts) else None
    return browser_from_stats(
        stats, texts, label_texts=label_texts, label_terms=label_terms, embeddings=scored, encode=encode
    )


def browser_from_stats(
    stats: FeatureStats,
    texts: Sequence[str] | Mapping[int, str],
    *,
    corpus: Iterable[Sequence[str]] | None = None,
    examples: int | None = None,
    label_texts: int = 10,
    label_terms: int = 3,
    embeddings: np.ndarray | Any = None,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> FeatureBrowser:
    """The :class:`FeatureBrowser` of streamed :class:`~aquin_monitor.sae.stats.FeatureStats`.

    Args:
        stats: the features' statistics over the corpus.
        texts: the corpus texts, by row: a list, or a mapping holding at least every kept top row
            (:func:`~aquin_monitor.sae.stats` keeps their ids, so a store's corpus need not be in memory).
        corpus: the whole corpus for the labels' background class, as chunks of texts (default: the
            chunks of a :class:`~aquin_monitor.sae.corpus_texts.CorpusTexts`, else ``[texts]``, so ``texts``
            must then be the whole corpus).
        examples: top texts listed per feature (default: all that ``stats`` kept).
        label_texts: top texts a label is computed from.
        label_terms: terms per label.
        embeddings: the corpus embeddings (an array or a row source): with them, each label is scored.
        encode: the model's encoder (phrases in, ``[n, d]`` out): with it and ``embeddings``, labels are key
            phrases (:func:`~aquin_monitor.sae.keyphrases.keyphrase_labels`) and their AUC is measured.
    """
    alive = np.flatnonzero(stats.counts > 0)
    order = alive[np.lexsort((alive, -stats.total[alive]))]
    listed = stats.top_rows.shape[1] if examples is None else examples
    classes = [stats.top(j)[0][: min(label_texts, listed)].tolist() for j in order]  # labels read listed texts only
    listed_rows = stats.top_rows[order, :listed]
    texts = texts_for(texts, listed_rows[listed_rows >= 0].tolist())
    if corpus is None and isinstance(texts, CorpusTexts):
        corpus = texts.chunks()
    if encode is not None and embeddings is not None:
        labels = keyphrase_labels(texts, classes, embeddings, encode, top_terms=label_terms)
    else:
        labels = ctfidf_labels(texts, classes, top_terms=label_terms, corpus=corpus)
    scores: dict[int, LabelScore] = {}
    if embeddings is not None:
        by_feature = {int(j): label for j, label in zip(order, labels)}
        top_rows = {int(j): rows for j, rows in zip(order, classes)}
        scores = {s.feature: s for s in score_labels(by_feature, top_rows, embeddings, texts, encode=encode)}
    frequency, mean = stats.frequency, stats.mean
    features = []
    for j, label in zip(order, labels):
        rows, values = (part[:examples] for part in stats.top(j))
        features.append(
            BrowserFeature(
                index=int(j),
                label=label,
                total_activation=float(stats.total[j]),
                frequency=float(frequency[j]),
                mean_activation=float(mean[j]),
                max_activation=float(stats.maximum[j]),
                examples=[Example(int(r), str(texts[r]), float(v)) for r, v in zip(rows, values)],
                label_score=scores.get(int(j)),
            )
        )
    return FeatureBrowser(
        n_texts=stats.n_texts,
        num_latents=stats.num_latents,
        features=features,
        dead=int(stats.num_latents - len(alive)),
        label_summary=summarise(list(scores.values())) if scores else None,
        labeller="key phrases" if encode is not None and embeddings is not None else "c-TF-IDF",
    )
