"""Retrieval faithfulness: how much NDCG@10 each SAE feature carries in the query embeddings.

Ablating feature ``i`` in every query embedding removes its decoded part, ``x' = x − z_i(x) d_i``
(the rest of the embedding, reconstruction error included, is kept); the documents are left
as they are. NDCG@10 is recomputed through one :class:`aquin_monitor.search.SearchIndex` over the
documents (up to 100,000 documents: the exact scan of :func:`aquin_monitor.signals.retrieval.retrieval_metrics`;
beyond, faiss, with its measured recall in ``Faithfulness.search``) and the feature's *drop* is
``NDCG(x) − NDCG(x')``.

Only queries where the feature fires change, so each ablation re-ranks just those queries and
swaps their per-query NDCG into the baseline's per-query array; the mean is over the same
evaluated queries, so the result equals a full recomputation (tested).

**Baseline.** A large drop may only mean a feature carries a lot of activation. For each
ablated feature, ``n_random`` draws of other features (random order, accumulated until their
summed activation mass over the queries equals the feature's, the last one removed only
fractionally) are ablated the same way; the feature's ``excess_drop`` is its drop minus the mean
random drop, and ``z`` divides that by the random drops' standard deviation.

Example:

    >>> import numpy as np
    >>> from aquin_monitor.sae.model import SparseAutoencoder
    >>> sae = SparseAutoencoder(d_in=8, num_latents=16, k=3, seed=0)
    >>> rng = np.random.default_rng(0)
    >>> docs = rng.normal(size=(30, 8)).astype("float32")
    >>> queries = docs[:10] + 0.3 * rng.normal(size=(10, 8)).astype("float32")
    >>> result = retrieval_faithfulness(sae, queries, docs, [{i: 1} for i in range(10)], features=[], n_random=0)
    >>> result.features
    []
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["FeatureAblation", "Faithfulness", "ablated_ndcg", "retrieval_faithfulness"]


@dataclass
class FeatureAblation:
    feature: int
    mass: float
    """``Σ_q z_i(q)`` over the queries."""
    n_queries_active: int
    ndcg: float
    drop: float
    random_drop_mean: float
    random_drop_std: float
    excess_drop: float
    z: float
    label: str | None = None


@dataclass
class Faithfulness:
    """Per-feature NDCG drops when the feature is zeroed in every query, against random ablations."""

    ndcg: float
    """NDCG@k of the unmodified queries."""
    ndcg_k: int
    n_queries: int
    features: list[FeatureAblation]
    """Ablated features, drop descending."""
    search: dict[str, Any] | None = None
    """How the documents were ranked (:class:`~aquin_monitor.search.SearchReport`; recall@k when approximate)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


class _Evaluator:
    """Per-query NDCG of the original queries; NDCG after subtracting a change from some queries."""

    def __init__(
        self, queries: np.ndarray, documents: np.ndarray, relevant: Sequence[Any], ndcg_k: int, index: str = "auto"
    ):
        from ..search import SearchIndex

        # one index over the documents for every ablation (exact full scan up to search.EXACT_MAX_DOCS)
        self.search, self.k = SearchIndex(documents, index=index, expected_queries=len(queries)), ndcg_k
        self.queries, self.relevant = queries, list(relevant)
        report, self.search_report = self.search.retrieval_report(queries, self.relevant, ks=(ndcg_k,), ndcg_k=ndcg_k)
        self.per_query = report.ndcg
        self.evaluated = report.evaluated

    @property
    def ndcg(self) -> float:
        return float(np.mean(self.per_query[self.evaluated]))

    def after(self, rows: np.ndarray, change: np.ndarray) -> float:
        """Mean NDCG when ``queries[rows] − change`` replaces those query rows."""
        keep = self.evaluated[rows]
        rows, change = rows[keep], change[keep]
        if not len(rows):
            return self.ndcg
        report, _ = self.search.retrieval_report(
            self.queries[rows] - change, [self.relevant[r] for r in rows], ks=(self.k,), ndcg_k=self.k
        )
        per_query = self.per_query.copy()
        per_query[rows] = report.ndcg
        return float(np.mean(per_query[self.evaluated]))


def ablated_ndcg(
    sae: Any, queries: Any, documents: Any, relevant: Sequence[Any], weights: Mapping[int, float], *, ndcg_k: int = 10
) -> float:
    """NDCG@k after removing ``weight · z_i d_i`` from every query for each ``feature: weight`` (full recomputation).

    The reference :func:`retrieval_faithfulness` is tested against.
    """
    from ..signals.retrieval import retrieval_metrics

    x = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    with torch.no_grad():
        z = sae.encode(x)
        for feature, weight in weights.items():
            x = x - weight * z[:, feature : feature + 1] * sae.W_dec[feature]
    return retrieval_metrics(x.numpy(), documents, relevant, ks=(ndcg_k,), ndcg_k=ndcg_k).as_metrics()[
        f"retrieval/ndcg@{ndcg_k}"
    ]


def _random_mass_set(order: np.ndarray, mass: np.ndarray, target: float) -> dict[int, float]:
    chosen: dict[int, float] = {}
    total = 0.0
    for j in order:
        if total >= target:
            break
        take = min(1.0, (target - total) / mass[j])
        chosen[int(j)] = take
        total += take * mass[j]
    return chosen


def _change(z: torch.Tensor, decoder: torch.Tensor, weights: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
    columns = torch.as_tensor(list(weights))
    part = z[:, columns] * torch.as_tensor(list(weights.values()), dtype=z.dtype)
    rows = torch.nonzero(part.abs().sum(1) > 0).flatten()
    return rows.numpy(), (part[rows] @ decoder[columns]).numpy()


def retrieval_faithfulness(
    sae: Any,
    queries: Any,
    documents: Any,
    relevant: Sequence[Any],
    *,
    features: int | Sequence[int] = 100,
    n_random: int = 5,
    ndcg_k: int = 10,
    seed: int = 0,
    labels: Sequence[str | None] | None = None,
    index: str = "auto",
) -> Faithfulness:
    """Zero each chosen feature in all query embeddings and measure the NDCG@k drop (module docstring).

    Args:
        sae: a :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        queries: query embeddings ``[Q, d_in]``; documents: corpus embeddings ``[N, d_in]``.
        relevant: per query, ``{document index: grade}``
            (as :func:`~aquin_monitor.signals.retrieval.retrieval_metrics`).
        features: an int N (the N features with the largest activation mass over the queries) or a list.
        n_random: random same-mass ablations per feature for the baseline (0: none).
        ndcg_k: NDCG cutoff.
        seed: seeds the random baseline.
        labels: optional label per feature.
        index: the :class:`~aquin_monitor.search.SearchIndex` kind ranking the documents (``auto``: the
            exact full scan up to :data:`~aquin_monitor.search.EXACT_MAX_DOCS` documents).

    Returns:
        A :class:`Faithfulness`; features sorted by drop, largest first.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    documents = np.ascontiguousarray(documents, dtype=np.float32)
    evaluator = _Evaluator(queries, documents, relevant, ndcg_k, index)
    with torch.no_grad():
        z = sae.encode(torch.as_tensor(queries)).double()
    decoder = sae.W_dec.detach().double()
    mass = z.sum(0).numpy()
    if isinstance(features, int):
        chosen = [int(i) for i in np.argsort(-mass, kind="stable")[:features] if mass[i] > 0]
    else:
        chosen = [int(i) for i in features]
    rng = np.random.default_rng(seed)
    alive = np.flatnonzero(mass > 0)
    results = []
    for feature in chosen:
        rows, change = _change(z, decoder, {feature: 1.0})
        ndcg = evaluator.after(rows, change.astype(np.float32))
        drops = []
        others = alive[alive != feature]
        for _ in range(n_random if mass[feature] > 0 and len(others) else 0):
            weights = _random_mass_set(rng.permutation(others), mass, float(mass[feature]))
            rows_r, change_r = _change(z, decoder, weights)
            drops.append(evaluator.ndcg - evaluator.after(rows_r, change_r.astype(np.float32)))
        drop = evaluator.ndcg - ndcg
        mean = float(np.mean(drops)) if drops else 0.0
        std = float(np.std(drops, ddof=1)) if len(drops) > 1 else float("nan")
        results.append(
            FeatureAblation(
                feature=feature,
                mass=float(mass[feature]),
                n_queries_active=int((z[:, feature] > 0).sum()),
                ndcg=ndcg,
                drop=drop,
                random_drop_mean=mean,
                random_drop_std=std,
                excess_drop=drop - mean,
                z=(drop - mean) / std if std and np.isfinite(std) else float("nan"),
                label=None if labels is None else labels[feature],
            )
        )
    results.sort(key=lambda r: (-r.drop, r.feature))
    return Faithfulness(
        ndcg=evaluator.ndcg,
        ndcg_k=ndcg_k,
        n_queries=int(evaluator.evaluated.sum()),
        features=results,
        search=evaluator.search_report.to_json(),
    )
