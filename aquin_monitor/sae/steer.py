"""Steering a query along one SAE feature and re-ranking a corpus.

With ``z = SAE(q)`` and the feature's decoder row ``d_F``, the steered query is

    q' = normalise(q + (z'_F − z_F) d_F),    z'_F = max(z_F + delta, 0)

so everything the SAE does not explain (the reconstruction error) is kept, and a negative
``delta`` can at most switch the feature off. Documents are ranked by cosine through one
:class:`aquin_monitor.search.SearchIndex` before and after (exact for two queries, whatever the
corpus size: the order and scores of :func:`aquin_monitor.signals.retrieval.topk`).

Example:

    >>> import numpy as np
    >>> from aquin_monitor.sae.model import SparseAutoencoder
    >>> sae = SparseAutoencoder(d_in=8, num_latents=16, k=3, seed=0)
    >>> rng = np.random.default_rng(0)
    >>> docs, q = rng.normal(size=(20, 8)).astype("float32"), rng.normal(size=8).astype("float32")
    >>> result = steer(sae, q, docs, feature=3, delta=0.0, top=5)
    >>> [h.index for h in result.before] == [h.index for h in result.after]
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Hit", "Steering", "steer", "steered_query"]


@dataclass
class Hit:
    rank: int
    index: int
    score: float
    doc_id: str | None = None
    text: str | None = None


@dataclass
class Steering:
    """A query steered along one feature, and the corpus ranked before and after."""

    feature: int
    delta: float
    activation_before: float
    """``z_F`` of the query."""
    activation_after: float
    """``z'_F`` requested (``max(z_F + delta, 0)``)."""
    activation_measured: float
    """The SAE's activation of feature F on the steered query (re-encoded)."""
    cosine_shift: float
    """``cos(q, q')``."""
    before: list[Hit]
    after: list[Hit]
    entered: list[int]
    """Corpus indices in the top list after, not before."""
    left: list[int]
    label: str | None = None
    text: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


def steered_query(sae: Any, q: Any, feature: int, delta: float) -> tuple[np.ndarray, float, float]:
    """``(q', z_F, z'_F)`` for one query ``q`` [d_in] (module docstring)."""
    if not 0 <= feature < sae.num_latents:
        raise ValueError(f"feature: {feature} is outside 0..{sae.num_latents - 1}")
    query = torch.as_tensor(np.asarray(q, dtype=np.float32)).reshape(1, -1)
    if query.shape[1] != sae.d_in:
        raise ValueError(f"query: expected a {sae.d_in}-dimensional embedding, got {query.shape[1]}")
    if not (math.isfinite(float(delta)) and bool(torch.isfinite(query).all())):
        raise ValueError(f"delta {delta} and the query must be finite")
    with torch.no_grad():
        z_f = float(sae.encode(query)[0, feature])
        z_new = max(z_f + float(delta), 0.0)
        moved = query.double() + (z_new - z_f) * sae.W_dec[feature].detach().double()
        # scaled by its largest entry first: the norm of a huge move (delta 1e308) would overflow to inf
        moved = moved / moved.abs().max().clamp_min(1e-300)
        moved = moved / moved.norm().clamp_min(1e-12)
    if not (math.isfinite(z_new) and bool(torch.isfinite(moved).all()) and float(moved.norm()) > 0.5):
        raise ValueError(f"steering feature {feature} by {delta:g} gives no finite unit query")
    return moved[0].float().numpy(), z_f, z_new


def _hits(
    scores: np.ndarray, index: np.ndarray, doc_ids: Sequence[str] | None, texts: Sequence[str] | None
) -> list[Hit]:
    return [
        Hit(rank, int(i), float(s), None if doc_ids is None else doc_ids[i], None if texts is None else texts[i])
        for rank, (s, i) in enumerate(zip(scores, index), 1)
        if i >= 0
    ]


def steer(
    sae: Any,
    query: Any,
    documents: Any,
    feature: int,
    delta: float,
    *,
    top: int = 10,
    doc_ids: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    labels: Sequence[str | None] | None = None,
    query_text: str | None = None,
    index: str = "auto",
) -> Steering:
    """Steer ``query`` along ``feature`` by ``delta`` and re-rank ``documents`` by cosine.

    Args:
        sae: a :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        query: the query embedding ``[d_in]``.
        documents: corpus embeddings ``[N, d_in]``.
        feature: the feature to steer.
        delta: added to the query's activation of the feature (clipped at 0 from below).
        top: results listed before and after.
        doc_ids: optional id per document; texts: optional text per document.
        labels: optional label per feature.
        query_text: the query's text, carried into the result.
        index: the :class:`~aquin_monitor.search.SearchIndex` kind (``auto``: exact for these two queries).

    Returns:
        A :class:`Steering`.
    """
    from ..search import SearchIndex

    documents = np.asarray(documents, dtype=np.float32)
    moved, z_f, z_new = steered_query(sae, query, feature, delta)
    original = np.asarray(query, dtype=np.float32).reshape(1, -1)
    found = SearchIndex(documents, index=index, expected_queries=2).search(np.vstack([original, moved[None]]), top)
    (scores_before, scores_after), (index_before, index_after) = found.scores[:, None], found.indices[:, None]
    with torch.no_grad():
        measured = float(sae.encode(torch.as_tensor(moved[None]))[0, feature])
    cosine = float(original[0].astype(np.float64) @ moved / (np.linalg.norm(original[0].astype(np.float64)) or 1.0))
    before, after = set(index_before[0].tolist()), set(index_after[0].tolist())
    return Steering(
        feature=feature,
        delta=float(delta),
        activation_before=z_f,
        activation_after=z_new,
        activation_measured=measured,
        cosine_shift=cosine,
        before=_hits(scores_before[0], index_before[0], doc_ids, texts),
        after=_hits(scores_after[0], index_after[0], doc_ids, texts),
        entered=[i for i in index_after[0].tolist() if i not in before],
        left=[i for i in index_before[0].tolist() if i not in after],
        label=None if labels is None else labels[feature],
        text=query_text,
    )
