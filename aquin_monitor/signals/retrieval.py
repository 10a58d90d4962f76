"""Retrieval signals: exact ranks of relevant documents, top-k, IR metrics, hard-negative gap, reranking.

Everything starts from embeddings (any query embeddings: a fine-tuned model's, or modified /
ablated ones) and integer corpus indices; the caller maps its own ids to indices.

Score
    ``similarity="cosine"``: s(q, d) = <q/||q||, d/||d||> (a zero vector has cosine 0 with
    everything); ``similarity="dot"``: s(q, d) = <q, d>. Stored as float32, computed as
    round(x / step) * step with x the float64 dot product (of the float64-normalised rows for
    cosine) and step = 2**-30 for cosine, 2**(e - 30) for dot where 2**e is the smallest power
    of two above ||q|| * max_d ||d||. Why: matrix products of different block shapes (so of
    different chunkings) differ in their last bits, in float32 visibly and in float64 slightly;
    the grid, a billion times coarser than the float64 error, absorbs that, so equal scores are
    exactly equal, ties are real ties and ranks never depend on chunk sizes.

Tie policy (the same everywhere: ranks, top-k, reranking)
    Documents are ordered by score descending, then corpus index ascending. The rank of
    document r for query q is ``1 + #{d : s(q,d) > s(q,r)} + #{d < r : s(q,d) == s(q,r)}``.
    It equals sentence-transformers' ``InformationRetrievalEvaluator`` order when corpus ids
    sort like the indices, and trec_eval's order (ties by docno descending) when docnos sort the
    other way round.

Relevance
    ``relevant[q]`` maps corpus index -> grade (a number >= 0) or is a plain collection of
    indices (grade 1). A document is relevant when its grade is > 0; grade 0 means judged
    non-relevant, as in trec_eval. A query without a relevant document is excluded from every
    average and counted in ``n_queries_without_relevant``.

Metrics (trec_eval semantics, per query then averaged over evaluated queries)
    recall@k = |{relevant r : rank(r) <= k}| / |relevant|
    RR@k     = 1 / first_rank if first_rank <= k else 0              (MRR@k = mean RR@k)
    NDCG@k   = sum_{rank(r) <= k} g_r / log2(1 + rank(r))  /  sum_{i <= min(k, |rel|)} g_(i) / log2(1 + i)
               with g the grades and g_(i) the i-th largest (trec_eval ``ndcg_cut``, gain = grade)
    hard-negative gap = max_{r relevant} s(q, r) - max_{n negative} s(q, n), negatives being the
               labelled ones when given for that query, else the highest-scoring non-relevant
               document of the corpus (mined).

Memory: scores are computed block by block (queries x corpus chunks) sized to
``max_memory_bytes`` (working buffers of roughly 24 bytes per block cell); no
queries x corpus matrix is allocated unless it fits. Computation runs on the CPU.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .arrays import as_matrix

__all__ = [
    "RankResult",
    "RankingMetrics",
    "RerankReport",
    "RetrievalInputError",
    "RetrievalReport",
    "pair_scores",
    "rank_relevant",
    "ranked_list_report",
    "rerank",
    "retrieval_metrics",
    "topk",
]

SIMILARITIES = ("cosine", "dot")
DEFAULT_MAX_MEMORY_BYTES = 512 * 2**20
DEFAULT_QUERY_CHUNK = 1024
# Scores are rounded to about this many bits below their bound (see _Scorer).
_GRID_BITS = 30
# Working bytes per cell of a score block: float64 product, float32 score, and the masks,
# copies and int32 counters of the tie handling.
_BYTES_PER_CELL = 24


class RetrievalInputError(ValueError):
    """Bad input to a retrieval signal (shape, non-finite value, index out of range, ...)."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankResult:
    """Rank of every relevant (grade > 0) document, one row per (query, document) pair.

    Pairs are sorted by query index, then corpus index. ``rank`` is 1-based (tie policy in the
    module docstring): int64 over the whole corpus, float64 with +inf for a document outside a
    ranked list (:func:`ranked_list_report`); ``score`` is s(q, d) as float32.
    """

    query_index: np.ndarray
    doc_index: np.ndarray
    grade: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    n_queries: int
    n_docs: int

    def n_relevant(self) -> np.ndarray:
        """Number of relevant documents per query, shape [n_queries]."""
        return np.bincount(self.query_index, minlength=self.n_queries)

    def first_rank(self) -> np.ndarray:
        """Rank of the best-ranked relevant document per query; 0 for a query without one."""
        first = np.zeros(self.n_queries, dtype=self.rank.dtype)
        if len(self.rank):
            starts = np.flatnonzero(np.r_[True, self.query_index[1:] != self.query_index[:-1]])
            first[self.query_index[starts]] = np.minimum.reduceat(self.rank, starts)
        return first

    def ranks_of(self, query: int) -> dict[int, int]:
        """``{corpus index: rank}`` of the relevant documents of one query."""
        lo, hi = np.searchsorted(self.query_index, [query, query + 1])
        return dict(zip(self.doc_index[lo:hi].tolist(), self.rank[lo:hi].tolist()))


@dataclass(frozen=True)
class RankingMetrics:
    """Per-query ranking metrics, aligned with the input queries.

    ``first_rank`` is NaN for a query without a relevant document and +inf when none of its
    relevant documents was ranked (reranking a truncated candidate list). The other arrays are
    NaN for queries without a relevant document.
    """

    n_relevant: np.ndarray
    first_rank: np.ndarray
    recall: dict[int, np.ndarray]
    reciprocal_rank: np.ndarray
    ndcg: np.ndarray
    mrr_k: int | None
    ndcg_k: int | None
    categories: list | None

    @property
    def evaluated(self) -> np.ndarray:
        """Queries with at least one relevant document (the ones averaged)."""
        return self.n_relevant > 0

    def _summary(self, mask: np.ndarray) -> dict[str, float]:
        used = mask & self.evaluated
        out = {f"recall@{k}": _mean(values[used]) for k, values in self.recall.items()}
        out[_cut_name("mrr", self.mrr_k)] = _mean(self.reciprocal_rank[used])
        out[_cut_name("ndcg", self.ndcg_k)] = _mean(self.ndcg[used])
        out["n_queries"] = float(used.sum())
        out["n_queries_without_relevant"] = float((mask & ~self.evaluated).sum())
        return out

    def _category_masks(self) -> dict[Hashable, np.ndarray]:
        if self.categories is None:
            raise RetrievalInputError("no categories were given")
        labels = list(dict.fromkeys(self.categories))
        try:
            labels = sorted(labels)
        except TypeError:
            pass  # mixed label types: keep first-appearance order
        return {label: np.array([c == label for c in self.categories], dtype=bool) for label in labels}


@dataclass(frozen=True)
class RetrievalReport(RankingMetrics):
    """Retrieval metrics of query embeddings against a corpus (see ``retrieval_metrics``).

    Per-query arrays (length n_queries): ``first_rank``, ``recall[k]``, ``reciprocal_rank``
    (cut at ``mrr_k``), ``ndcg`` (cut at ``ndcg_k``), ``positive_sim`` (closest relevant),
    ``negative_sim`` and ``negative_index`` (closest labelled or mined negative; -1 when the
    corpus has no non-relevant document), ``negative_is_labelled``, ``hard_negative_gap``.
    ``ranks`` holds the rank of every relevant document.
    """

    ranks: RankResult
    positive_sim: np.ndarray
    negative_sim: np.ndarray
    negative_index: np.ndarray
    negative_is_labelled: np.ndarray
    hard_negative_gap: np.ndarray

    def _metrics(self, mask: np.ndarray) -> dict[str, float]:
        out = self._summary(mask)
        used = mask & self.evaluated
        finite_gap = used & np.isfinite(self.hard_negative_gap)
        out["hard_negative_gap"] = _mean(self.hard_negative_gap[finite_gap])
        out["positive_sim"] = _mean(self.positive_sim[used])
        out["negative_sim"] = _mean(self.negative_sim[finite_gap])
        out["mean_first_rank"] = _mean(self.first_rank[used])
        out["median_first_rank"] = float(np.median(self.first_rank[used])) if used.any() else math.nan
        return {f"retrieval/{name}": value for name, value in out.items()}

    def as_metrics(self) -> dict[str, float]:
        """Averages over queries with a relevant document, named ``retrieval/<metric>``.

        Keys: ``recall@k`` for each k, ``mrr@<mrr_k>``, ``ndcg@<ndcg_k>``,
        ``hard_negative_gap``, ``positive_sim``, ``negative_sim`` (gap and sims over queries
        with a negative), ``mean_first_rank``, ``median_first_rank``, ``n_queries`` (averaged)
        and ``n_queries_without_relevant`` (excluded).
        """
        return self._metrics(np.ones(len(self.n_relevant), dtype=bool))

    def by_category(self) -> dict[Hashable, dict[str, float]]:
        """``as_metrics()`` restricted to the queries of each category."""
        return {label: self._metrics(mask) for label, mask in self._category_masks().items()}

    def rank_histogram(self, bins: int | Sequence[int] | None = None, *, which: str = "first"):
        """Histogram of ranks: ``(counts, edges)`` as ``numpy.histogram`` (bins [a, b)).

        ``which="first"``: the first relevant rank of each evaluated query; ``"all"``: the rank
        of every relevant document. Default edges 1, 2, 3, 4, 5, 6, 11, 21, 51, 101, 201, 501,
        1001, ... closed by n_docs + 1, so the first bins are single ranks.
        """
        if which == "first":
            values = self.first_rank[self.evaluated]
        elif which == "all":
            values = self.ranks.rank.astype(np.float64)
        else:
            raise RetrievalInputError(f"which must be 'first' or 'all', got {which!r}")
        top = self.ranks.n_docs + 1
        if bins is None:
            edges = [1, 2, 3, 4, 5, 6, 11, 21, 51]
            scale = 100
            while scale < top:
                edges += [scale + 1, 2 * scale + 1, 5 * scale + 1]
                scale *= 10
            bins = [e for e in edges if e < top] + [top]
        elif isinstance(bins, int):
            return np.histogram(values, bins=bins, range=(1, top))
        return np.histogram(values, bins=np.asarray(bins))


@dataclass(frozen=True)
class RerankReport:
    """Ranks and metrics before and after reranking a candidate list (see ``rerank``).

    ``reranked``: candidate indices in the new order ([Q, k], -1 padding kept last);
    ``rerank_scores``: the scorer's score aligned with ``reranked`` (NaN for padding).
    Pair arrays (relevant documents, sorted by query then corpus index): ``query_index``,
    ``doc_index``, ``rank_before``, ``rank_after`` (1-based position in the candidate list,
    +inf when the document is not among the candidates).
    """

    before: RankingMetrics
    after: RankingMetrics
    candidates: np.ndarray
    reranked: np.ndarray
    rerank_scores: np.ndarray
    query_index: np.ndarray
    doc_index: np.ndarray
    rank_before: np.ndarray
    rank_after: np.ndarray

    def _metrics(self, mask: np.ndarray) -> dict[str, float]:
        out = {f"rerank/before/{k}": v for k, v in self.before._summary(mask).items()}
        out.update({f"rerank/after/{k}": v for k, v in self.after._summary(mask).items()})
        return out

    def as_metrics(self) -> dict[str, float]:
        """``rerank/before/<metric>`` and ``rerank/after/<metric>`` (recall@k, mrr, ndcg, counts)."""
        return self._metrics(np.ones(len(self.before.n_relevant), dtype=bool))

    def by_category(self) -> dict[Hashable, dict[str, float]]:
        """``as_metrics()`` restricted to the queries of each category."""
        return {label: self._metrics(mask) for label, mask in self.before._category_masks().items()}


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def rank_relevant(
    query_emb,
    corpus_emb,
    relevant: Sequence[Mapping[int, float] | Collection[int] | None],
    *,
    similarity: str = "cosine",
    query_chunk_size: int | None = None,
    corpus_chunk_size: int | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> RankResult:
    """Exact 1-based rank of every relevant document among the whole corpus, per query.

    rank(q, r) = 1 + #{d : s(q,d) > s(q,r)} + #{d < r : s(q,d) == s(q,r)}, computed block by
    block so memory stays within ``max_memory_bytes`` (or the explicit chunk sizes).

    Args:
        query_emb: [Q, dim] array or tensor. corpus_emb: [N, dim].
        relevant: one entry per query: ``{corpus index: grade}`` or a collection of indices
            (grade 1); grade-0 entries are judged non-relevant and get no rank.

    >>> import numpy as np
    >>> q = np.array([[1.0, 0.0]]); docs = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    >>> rank_relevant(q, docs, [{2: 1, 0: 1}]).ranks_of(0)  # doc 1 ties doc 2 and wins
    {0: 3, 2: 2}
    """
    queries, corpus = _check_embeddings(query_emb, corpus_emb)
    _check_similarity(similarity)
    pairs = _relevance_pairs(relevant, len(queries), len(corpus))
    qc, cc = _plan_chunks(
        len(queries), len(corpus), corpus.shape[1], query_chunk_size, corpus_chunk_size, max_memory_bytes
    )
    scorer = _Scorer(queries, corpus, similarity, min(qc, len(queries)) * min(cc, len(corpus)))
    scores, ranks, _, _ = _scan_ranks(scorer, pairs, qc, cc, mine_negative=False)
    return RankResult(pairs.query, pairs.doc, pairs.grade, scores, ranks, len(queries), len(corpus))


def topk(
    query_emb,
    corpus_emb,
    k: int,
    *,
    similarity: str = "cosine",
    exclude: Sequence[Collection[int] | None] | None = None,
    query_chunk_size: int | None = None,
    corpus_chunk_size: int | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best documents per query: ``(scores [Q, k'], indices [Q, k'])``, best first.

    Order: score descending, then corpus index ascending (the tie policy). k' = min(k, N):
    asking for more documents than the corpus holds returns the whole corpus ranked.
    ``exclude[q]`` removes documents for query q (e.g. the query itself); when fewer than k'
    remain, the row is padded with index -1 and score -inf. Streams over corpus chunks, merging
    each chunk's exact top-k into a running one.

    >>> import numpy as np
    >>> q = np.array([[1.0, 0.0]]); docs = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    >>> scores, idx = topk(q, docs, 2)
    >>> idx.tolist(), scores.tolist()
    ([[1, 2]], [[1.0, 1.0]])
    """
    queries, corpus = _check_embeddings(query_emb, corpus_emb)
    _check_similarity(similarity)
    k = _positive_int(k, "k")
    n_queries, n_docs = len(queries), len(corpus)
    width = min(k, n_docs)
    excluded = _index_sets(exclude, n_queries, n_docs, "exclude")
    qc, cc = _plan_chunks(n_queries, n_docs, corpus.shape[1], query_chunk_size, corpus_chunk_size, max_memory_bytes)
    out_scores = np.empty((n_queries, width), dtype=np.float32)
    out_index = np.empty((n_queries, width), dtype=np.int64)
    scorer = _Scorer(queries, corpus, similarity, min(qc, n_queries) * min(cc, n_docs))
    for qs in range(0, n_queries, qc):
        qe = min(qs + qc, n_queries)
        q_rows = scorer.rows(queries[qs:qe])
        e0, e1 = np.searchsorted(excluded[0], [qs, qe])
        ex_q, ex_d = excluded[0][e0:e1] - qs, excluded[1][e0:e1]
        best_scores = np.empty((qe - qs, 0), dtype=np.float32)
        best_index = np.empty((qe - qs, 0), dtype=np.int64)
        for cs in range(0, n_docs, cc):
            ce = min(cs + cc, n_docs)
            block = scorer.block(q_rows, qs, scorer.rows(corpus[cs:ce]))
            inside = (ex_d >= cs) & (ex_d < ce)
            block[ex_q[inside], ex_d[inside] - cs] = -np.inf
            cols = _block_topk(block, min(width, ce - cs))
            merged_scores = np.concatenate([best_scores, np.take_along_axis(block, cols, 1)], axis=1)
            merged_index = np.concatenate([best_index, cols + cs], axis=1)
            order = np.lexsort((merged_index, -merged_scores), axis=1)[:, :width]
            best_scores = np.take_along_axis(merged_scores, order, 1)
            best_index = np.take_along_axis(merged_index, order, 1)
        best_index[np.isneginf(best_scores)] = -1
        out_scores[qs:qe], out_index[qs:qe] = best_scores, best_index
    return out_scores, out_index


def retrieval_metrics(
    query_emb,
    corpus_emb,
    relevant: Sequence[Mapping[int, float] | Collection[int] | None],
    *,
    ks: Sequence[int] = (1, 5, 10),
    ndcg_k: int | None = 10,
    mrr_k: int | None = 10,
    categories: Sequence[Hashable] | None = None,
    hard_negatives: Sequence[Collection[int] | None] | None = None,
    similarity: str = "cosine",
    query_chunk_size: int | None = None,
    corpus_chunk_size: int | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> RetrievalReport:
    """Recall@k, MRR@k, NDCG@k (graded), first relevant rank and hard-negative gap per query.

    Formulas in the module docstring (trec_eval semantics; equal to sentence-transformers'
    ``InformationRetrievalEvaluator`` for binary relevance). One pass over the corpus gives the
    exact rank of every relevant document and the best non-relevant score (mined negative).
    ``hard_negatives[q]``, when non-empty, replaces the mined negative of query q by the
    closest of those labelled negatives. ``mrr_k`` / ``ndcg_k`` = None: no cutoff.
    Raises ``RetrievalInputError`` when no query has a relevant document.

    >>> import numpy as np
    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]]); docs = np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 1.0]])
    >>> report = retrieval_metrics(q, docs, [{0: 1}, {2: 1}], ks=(1, 2))
    >>> report.first_rank.tolist(), round(report.as_metrics()["retrieval/mrr@10"], 3)
    ([1.0, 2.0], 0.75)
    """
    queries, corpus = _check_embeddings(query_emb, corpus_emb)
    _check_similarity(similarity)
    n_queries, n_docs = len(queries), len(corpus)
    ks, mrr_k, ndcg_k = _check_cutoffs(ks, mrr_k, ndcg_k)
    categories = _check_categories(categories, n_queries)
    pairs = _relevance_pairs(relevant, n_queries, n_docs)
    if len(pairs.query) == 0:
        raise RetrievalInputError("no query has a relevant document (grade > 0): nothing to evaluate")
    labelled = _labelled_negatives(hard_negatives, pairs, n_queries, n_docs)

    qc, cc = _plan_chunks(n_queries, n_docs, corpus.shape[1], query_chunk_size, corpus_chunk_size, max_memory_bytes)
    scorer = _Scorer(queries, corpus, similarity, min(qc, n_queries) * min(cc, n_docs))
    scores, ranks, neg_sim, neg_index = _scan_ranks(scorer, pairs, qc, cc, mine_negative=True)
    return _assemble_report(
        pairs,
        scores,
        ranks,
        neg_sim,
        neg_index,
        labelled,
        scorer.pairs,
        n_queries,
        n_docs,
        ks,
        mrr_k,
        ndcg_k,
        categories,
    )


def pair_scores(
    query_rows, doc_rows, *, similarity: str = "cosine", corpus_max_norm: float | None = None
) -> np.ndarray:
    """s(query_rows[i], doc_rows[i]) for aligned rows, as float32: the scores of :func:`topk` and :func:`rank_relevant`.

    The canonical score of the module docstring ("Score"), so a candidate list found by another
    engine (faiss, in float32) can be re-scored and re-sorted into exactly :func:`topk`'s order.
    For ``similarity="dot"`` the grid step depends on the largest document norm of the whole
    corpus: pass it as ``corpus_max_norm`` (default: the largest norm among ``doc_rows``).

    >>> import numpy as np
    >>> pair_scores(np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 2.0]])).tolist()
    [1.0, 0.0]
    """
    queries, docs = _check_embeddings(query_rows, doc_rows)
    _check_similarity(similarity)
    if len(queries) != len(docs):
        raise RetrievalInputError(f"query_rows has {len(queries)} rows but doc_rows has {len(docs)}")
    scorer = _Scorer(queries, docs, similarity, 0, corpus_max_norm=corpus_max_norm)
    every = np.arange(len(queries))
    return scorer.pairs(every, every)


def ranked_list_report(
    candidates,
    relevant: Sequence[Mapping[int, float] | Collection[int] | None],
    pair_score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_docs: int,
    *,
    ks: Sequence[int] = (1, 5, 10),
    ndcg_k: int | None = 10,
    mrr_k: int | None = 10,
    categories: Sequence[Hashable] | None = None,
    hard_negatives: Sequence[Collection[int] | None] | None = None,
) -> RetrievalReport:
    """The :func:`retrieval_metrics` report of ranked lists ``candidates`` [Q, K] (best first, -1 padding).

    When each row is the exact top-K of its query under the tie policy (e.g. :func:`topk`, or
    :mod:`aquin_monitor.search`'s exact index), rank(q, r) = 1 + position of r in row q, so every
    metric at cutoffs ≤ K equals :func:`retrieval_metrics`'; a relevant document outside the list
    gets rank +inf (not retrieved; ``first_rank`` +inf when none is in the list). The mined
    negative is the first non-relevant document of the list (none when all K are relevant).
    ``pair_score(query_index, doc_index)`` returns the canonical scores of those pairs
    (:func:`pair_scores`): they give ``positive_sim`` and the labelled negatives' scores.

    >>> import numpy as np
    >>> report = ranked_list_report([[2, 0], [1, 2]], [{0: 1}, {0: 1}], lambda q, d: np.ones(len(q), np.float32), 3)
    >>> report.first_rank.tolist(), report.ranks.rank.tolist(), report.negative_index.tolist()
    ([2.0, inf], [2.0, inf], [2, 1])
    """
    ks, mrr_k, ndcg_k = _check_cutoffs(ks, mrr_k, ndcg_k)
    n_docs = _positive_int(n_docs, "n_docs")
    cand = _check_candidates(candidates, len(candidates), n_docs)
    n_queries = len(cand)
    categories = _check_categories(categories, n_queries)
    pairs = _relevance_pairs(relevant, n_queries, n_docs)
    if len(pairs.query) == 0:
        raise RetrievalInputError("no query has a relevant document (grade > 0): nothing to evaluate")
    labelled = _labelled_negatives(hard_negatives, pairs, n_queries, n_docs)
    ranks = _position_in_rows(cand, pairs.query, pairs.doc)
    scores = np.asarray(pair_score(pairs.query, pairs.doc), dtype=np.float32)
    is_relevant = np.zeros(cand.shape, dtype=bool)
    found = np.isfinite(ranks)
    is_relevant[pairs.query[found], ranks[found].astype(np.int64) - 1] = True
    negative = (cand >= 0) & ~is_relevant
    has_negative = negative.any(axis=1)
    first = negative.argmax(axis=1)
    neg_index = np.where(has_negative, cand[np.arange(n_queries), first] if cand.shape[1] else -1, -1)
    neg_sim = np.full(n_queries, -np.inf, dtype=np.float32)
    rows = np.flatnonzero(has_negative)
    neg_sim[rows] = pair_score(rows, neg_index[rows]) if len(rows) else neg_sim[rows]
    return _assemble_report(
        pairs, scores, ranks, neg_sim, neg_index, labelled, pair_score, n_queries, n_docs, ks, mrr_k, ndcg_k, categories
    )


def _assemble_report(
    pairs: _Pairs,
    scores,
    ranks,
    neg_sim,
    neg_index,
    labelled,
    pair_score,
    n_queries,
    n_docs,
    ks,
    mrr_k,
    ndcg_k,
    categories,
) -> RetrievalReport:
    """The report from the ranks and scores of the relevant pairs and each query's mined negative."""
    is_labelled = np.zeros(n_queries, dtype=bool)
    if len(labelled[0]):
        labelled_scores = pair_score(labelled[0], labelled[1])
        # closest labelled negative per query, ties to the smaller corpus index
        order = np.lexsort((labelled[1], -labelled_scores, labelled[0]))
        q_sorted = labelled[0][order]
        firsts = order[np.r_[True, q_sorted[1:] != q_sorted[:-1]]]
        neg_sim[labelled[0][firsts]] = labelled_scores[firsts]
        neg_index[labelled[0][firsts]] = labelled[1][firsts]
        is_labelled[labelled[0][firsts]] = True

    rank_result = RankResult(pairs.query, pairs.doc, pairs.grade, scores, ranks, n_queries, n_docs)
    base = _ranking_metrics(
        pairs.query, ranks.astype(np.float64), pairs.grade, n_queries, ks, mrr_k, ndcg_k, categories
    )
    positive = np.full(n_queries, np.nan)
    np.fmax.at(positive, pairs.query, scores.astype(np.float64))
    negative = np.where(neg_index >= 0, neg_sim.astype(np.float64), np.nan)
    return RetrievalReport(
        **vars(base),
        ranks=rank_result,
        positive_sim=positive,
        negative_sim=negative,
        negative_is_labelled=is_labelled,
        negative_index=neg_index,
        hard_negative_gap=positive - negative,
    )


def rerank(
    query_texts: Sequence[str],
    corpus_texts: Sequence[str],
    candidates,
    scorer: Callable[[list[tuple[str, str]]], Iterable[float]],
    relevant: Sequence[Mapping[int, float] | Collection[int] | None],
    *,
    ks: Sequence[int] = (1, 5, 10),
    ndcg_k: int | None = 10,
    mrr_k: int | None = 10,
    categories: Sequence[Hashable] | None = None,
) -> RerankReport:
    """Rerank each query's candidate list with a pair scorer (a cross-encoder) and compare.

    ``candidates`` is [Q, k] corpus indices, best first (e.g. ``topk(...)[1]``; -1 = padding).
    ``scorer`` receives every (query text, document text) pair in one list, row by row, and
    returns one score per pair (``CrossEncoder.predict`` fits). The new order is score
    descending, ties kept in candidate order. A relevant document outside the list counts as
    not retrieved (rank +inf) both before and after, so the "before" metrics equal the
    retriever's at cutoffs <= k. Ranks are positions in the list::

        rank_before(q, r) = 1 + position of r in candidates[q]      (+inf if absent)
        rank_after(q, r)  = 1 + position of r in reranked[q]

    and the metrics are those of :func:`retrieval_metrics` (module docstring) on these ranks.

    >>> report = rerank(["q"], ["a", "b", "c"], [[0, 1]], lambda pairs: [len(d) for _, d in pairs], [{1: 1}])
    >>> report.rank_before.tolist(), report.rank_after.tolist()  # equal scores keep list order
    ([2.0], [2.0])
    >>> report = rerank(["q"], ["a", "bb", "c"], [[0, 1]], lambda pairs: [len(d) for _, d in pairs], [{1: 1}])
    >>> report.rank_after.tolist(), report.as_metrics()["rerank/after/mrr@10"]
    ([1.0], 1.0)
    """
    n_queries, n_docs = len(query_texts), len(corpus_texts)
    if n_queries == 0 or n_docs == 0:
        raise RetrievalInputError("query_texts and corpus_texts must not be empty")
    ks, mrr_k, ndcg_k = _check_cutoffs(ks, mrr_k, ndcg_k)
    categories = _check_categories(categories, n_queries)
    cand = _check_candidates(candidates, n_queries, n_docs)
    pairs = _relevance_pairs(relevant, n_queries, n_docs)

    valid = cand >= 0
    rows, cols = np.nonzero(valid)
    text_pairs = [(query_texts[q], corpus_texts[d]) for q, d in zip(rows.tolist(), cand[rows, cols].tolist())]
    raw = scorer(text_pairs) if text_pairs else []
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy()
    flat = np.asarray(raw, dtype=np.float64).reshape(-1)
    if flat.shape[0] != len(text_pairs):
        raise RetrievalInputError(f"scorer returned {flat.shape[0]} scores for {len(text_pairs)} pairs")
    if not np.isfinite(flat).all():
        raise RetrievalInputError("scorer returned NaN or Inf scores")
    pair_scores = np.full(cand.shape, np.nan)
    pair_scores[rows, cols] = flat

    sort_key = np.where(valid, -pair_scores, np.inf)  # padding last
    position = np.broadcast_to(np.arange(cand.shape[1]), cand.shape)
    order = np.lexsort((position, sort_key), axis=1)
    reranked = np.take_along_axis(cand, order, 1)
    reranked_scores = np.take_along_axis(pair_scores, order, 1)

    rank_before = _position_in_rows(cand, pairs.query, pairs.doc)
    rank_after = _position_in_rows(reranked, pairs.query, pairs.doc)
    metrics = [
        _ranking_metrics(pairs.query, r, pairs.grade, n_queries, ks, mrr_k, ndcg_k, categories)
        for r in (rank_before, rank_after)
    ]
    return RerankReport(
        metrics[0], metrics[1], cand, reranked, reranked_scores, pairs.query, pairs.doc, rank_before, rank_after
    )


# --------------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------------


class _Scorer:
    """Canonical scores s(q, d), block by block (module docstring, "Score").

    Each score is accumulated in float64, rounded to a multiple of the query's grid step
    (a power of two about 2**-30 times a bound on |s(q, .)|) and stored as float32. Products
    computed in differently shaped blocks differ in their last float64 bits, which the grid
    absorbs (also around 0, where float32 alone would keep the noise).
    """

    def __init__(
        self, queries: np.ndarray, corpus: np.ndarray, similarity: str, cells: int, corpus_max_norm: float | None = None
    ):
        self.queries, self.corpus, self.similarity = queries, corpus, similarity
        self._f64 = np.empty(cells, dtype=np.float64)
        self._f32 = np.empty(cells, dtype=np.float32)
        if similarity == "cosine":
            self.grid_scale = np.full(len(queries), 2.0**_GRID_BITS)
        else:
            if corpus_max_norm is None:
                corpus_max_norm = float(_row_norms(corpus).max()) if len(corpus) else 0.0
            bound = _row_norms(queries) * corpus_max_norm  # Cauchy-Schwarz
            exponent = np.frexp(bound)[1]  # bound < 2**exponent
            self.grid_scale = np.where(bound > 0, np.ldexp(1.0, _GRID_BITS - exponent), 1.0)

    def rows(self, x: np.ndarray) -> np.ndarray:
        """float64 copy of the rows, L2-normalised for cosine (zero rows stay zero)."""
        out = np.array(x, dtype=np.float64)
        if self.similarity == "cosine":
            norms = np.sqrt(np.einsum("ij,ij->i", out, out))
            out /= np.where(norms > 0, norms, 1.0)[:, None]
        return out

    def block(self, q_rows: np.ndarray, first_query: int, d_rows: np.ndarray) -> np.ndarray:
        """[len(q_rows), len(d_rows)] float32 scores, in a reused buffer."""
        m, n = len(q_rows), len(d_rows)
        exact = self._f64[: m * n].reshape(m, n)
        torch.matmul(torch.from_numpy(q_rows), torch.from_numpy(d_rows).T, out=torch.from_numpy(exact))
        scores = self._f32[: m * n].reshape(m, n)
        self._round(exact, self.grid_scale[first_query : first_query + m, None], out=scores)
        return scores

    def pairs(self, query_index: np.ndarray, doc_index: np.ndarray) -> np.ndarray:
        """s(query_index[i], doc_index[i]) as float32."""
        scores = np.empty(len(query_index), dtype=np.float32)
        step = 65536
        for start in range(0, len(query_index), step):
            q, d = query_index[start : start + step], doc_index[start : start + step]
            exact = np.einsum("ij,ij->i", self.rows(self.queries[q]), self.rows(self.corpus[d]))
            self._round(exact, self.grid_scale[q], out=scores[start : start + step])
        return scores

    def _round(self, exact: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
        values, steps = torch.from_numpy(exact), torch.from_numpy(np.ascontiguousarray(scale))
        values.mul_(steps).round_().div_(steps)
        torch.from_numpy(out).copy_(values)
        if self.similarity == "dot" and out.size and not (np.isfinite(out.max()) and np.isfinite(out.min())):
            raise RetrievalInputError(
                "dot-product scores overflow float32; rescale the embeddings or use similarity='cosine'"
            )


def _row_norms(x: np.ndarray) -> np.ndarray:
    norms = np.empty(len(x))
    for start in range(0, len(x), 65536):
        rows = x[start : start + 65536].astype(np.float64)
        norms[start : start + 65536] = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return norms


def _scan_ranks(scorer: _Scorer, pairs: _Pairs, qc: int, cc: int, *, mine_negative: bool):
    """One pass over the corpus: rank of each pair, and the best non-relevant doc per query."""
    queries, corpus = scorer.queries, scorer.corpus
    n_queries, n_docs = len(queries), len(corpus)
    counts = np.zeros(len(pairs.query), dtype=np.int64)
    pair_scores = np.empty(len(pairs.query), dtype=np.float32)
    neg_score = np.full(n_queries, -np.inf, dtype=np.float32)
    neg_index = np.full(n_queries, -1, dtype=np.int64)
    for qs in range(0, n_queries, qc):
        qe = min(qs + qc, n_queries)
        p0, p1 = (int(i) for i in np.searchsorted(pairs.query, [qs, qe]))
        if p0 == p1 and not mine_negative:
            continue
        q_rows = scorer.rows(queries[qs:qe])
        pq, pd = pairs.query[p0:p1] - qs, pairs.doc[p0:p1]
        s_rel = scorer.pairs(pairs.query[p0:p1], pd)
        pair_scores[p0:p1] = s_rel
        slots = pairs.slot[p0:p1]
        # pairs grouped by their position within the query: at most one per query row
        by_slot = [np.flatnonzero(slots == j) for j in range(int(slots.max()) + 1)] if p1 > p0 else []
        below = np.nextafter(s_rel, np.float32(-np.inf))
        for cs in range(0, n_docs, cc):
            ce = min(cs + cc, n_docs)
            block = scorer.block(q_rows, qs, scorer.rows(corpus[cs:ce]))
            for sel in by_slot:
                rows, r = pq[sel], pd[sel]
                # the whole chunk precedes r: ties count, so compare with ">=" (> one ulp below)
                threshold = np.where(r >= ce, below[sel], s_rel[sel])
                sub = block if len(rows) == len(block) else block[rows]
                counts[p0 + sel] += np.count_nonzero(sub > threshold[:, None], axis=1)
                for i in np.flatnonzero((r >= cs) & (r < ce)).tolist():
                    row, col, s = block[rows[i]], int(r[i]) - cs, s_rel[sel[i]]
                    # add ties before r; drop r itself if its block score came out above s
                    counts[p0 + sel[i]] += np.count_nonzero(row[:col] == s) - int(row[col] > s)
            if mine_negative:
                own = (pd >= cs) & (pd < ce)
                block[pq[own], pd[own] - cs] = -np.inf
                best = block.argmax(axis=1)
                value = block[np.arange(len(block)), best]
                better = value > neg_score[qs:qe]  # strict: an earlier chunk wins ties
                neg_score[qs:qe][better] = value[better]
                neg_index[qs:qe][better] = best[better] + cs
    return pair_scores, counts + 1, neg_score, neg_index


def _block_topk(block: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k best cells per row under (score desc, column asc); any order."""
    m, n = block.shape
    if k >= n:
        return np.broadcast_to(np.arange(n), (m, n)).copy()
    values, top = torch.topk(torch.from_numpy(block), k, dim=1, sorted=False)
    cols = top.numpy()
    threshold = values.numpy().min(axis=1, keepdims=True)
    # torch.topk picks arbitrarily among cells tied with the k-th score: redo those rows
    boundary = np.flatnonzero(np.count_nonzero(block >= threshold, axis=1) > k)
    if len(boundary):
        sub, t = block[boundary], threshold[boundary]
        above, tied = sub > t, sub == t
        room = k - np.count_nonzero(above, axis=1)
        keep = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room[:, None]))
        cols[boundary] = np.nonzero(keep)[1].reshape(len(boundary), k)
    return cols


def _position_in_rows(table: np.ndarray, query_index: np.ndarray, doc_index: np.ndarray) -> np.ndarray:
    """1-based column of doc_index[i] in row query_index[i] of table, +inf when absent."""
    if len(query_index) == 0 or table.shape[1] == 0:
        return np.full(len(query_index), np.inf)
    hit = table[query_index] == doc_index[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1.0, np.inf)


# --------------------------------------------------------------------------------------------
# Metrics from ranks
# --------------------------------------------------------------------------------------------


def _ranking_metrics(query_index, rank, grade, n_queries, ks, mrr_k, ndcg_k, categories) -> RankingMetrics:
    """Per-query metrics from the rank (float, +inf = not retrieved) of each relevant pair."""
    n_rel = np.bincount(query_index, minlength=n_queries)
    evaluated = n_rel > 0
    safe_n = np.maximum(n_rel, 1)

    def per_query(weights):
        values = np.bincount(query_index, weights=weights, minlength=n_queries).astype(np.float64)
        values[~evaluated] = np.nan
        return values

    first = np.full(n_queries, np.inf)
    np.minimum.at(first, query_index, rank)
    first[~evaluated] = np.nan
    recall = {k: per_query((rank <= k).astype(np.float64)) / safe_n for k in ks}
    mrr_cut = math.inf if mrr_k is None else mrr_k
    with np.errstate(divide="ignore"):
        rr = np.where(first <= mrr_cut, 1.0 / first, 0.0)
    rr[~evaluated] = np.nan

    ndcg_cut = math.inf if ndcg_k is None else ndcg_k
    dcg = per_query(np.where(rank <= ndcg_cut, grade / np.log2(rank + 1.0), 0.0))
    order = np.lexsort((-grade, query_index))  # ideal ranking: grades descending within a query
    ideal_position = np.arange(len(order)) - np.searchsorted(query_index[order], query_index[order]) + 1.0
    ideal_gain = np.where(ideal_position <= ndcg_cut, grade[order] / np.log2(ideal_position + 1.0), 0.0)
    idcg = np.bincount(query_index[order], weights=ideal_gain, minlength=n_queries)
    ndcg = dcg / np.where(evaluated, idcg, 1.0)
    return RankingMetrics(n_rel, first, recall, rr, ndcg, mrr_k, ndcg_k, categories)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _cut_name(metric: str, k: int | None) -> str:
    return metric if k is None else f"{metric}@{k}"


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pairs:
    query: np.ndarray  # int64, sorted
    doc: np.ndarray  # int64, ascending within a query
    grade: np.ndarray  # float64, > 0
    slot: np.ndarray  # position of the pair within its query


def _retrieval_matrix(x, name: str) -> np.ndarray:
    """:func:`arrays.as_matrix` keeping float32/float64 as given, errors as RetrievalInputError."""
    try:
        return as_matrix(x, name, dtype=None)
    except ValueError as exc:
        raise RetrievalInputError(str(exc)) from None


def _check_embeddings(query_emb, corpus_emb) -> tuple[np.ndarray, np.ndarray]:
    queries = _retrieval_matrix(query_emb, "query_emb")
    corpus = _retrieval_matrix(corpus_emb, "corpus_emb")
    if queries.shape[1] != corpus.shape[1]:
        raise RetrievalInputError(f"query_emb has dimension {queries.shape[1]} but corpus_emb has {corpus.shape[1]}")
    return queries, corpus


def _check_similarity(similarity: str) -> None:
    if similarity not in SIMILARITIES:
        raise RetrievalInputError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")


def _positive_int(value, name: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise RetrievalInputError(f"{name} must be an integer, got {value!r}") from None
    if value < 1:
        raise RetrievalInputError(f"{name} must be >= 1, got {value}")
    return value


def _check_cutoffs(ks, mrr_k, ndcg_k):
    ks = tuple(_positive_int(k, "each of ks") for k in ks)
    mrr_k = None if mrr_k is None else _positive_int(mrr_k, "mrr_k")
    ndcg_k = None if ndcg_k is None else _positive_int(ndcg_k, "ndcg_k")
    return ks, mrr_k, ndcg_k


def _check_categories(categories, n_queries: int) -> list | None:
    if categories is None:
        return None
    categories = list(categories)
    if len(categories) != n_queries:
        raise RetrievalInputError(f"categories has {len(categories)} entries for {n_queries} queries")
    return categories


def _doc_index(value, n_docs: int, where: str) -> int:
    try:
        index = operator.index(value)
    except TypeError:
        raise RetrievalInputError(f"{where}: corpus index must be an integer, got {value!r}") from None
    if not 0 <= index < n_docs:
        raise RetrievalInputError(f"{where}: corpus index {index} out of range for a corpus of {n_docs} documents")
    return index


def _per_query_entries(entries, n_queries: int, name: str):
    if isinstance(entries, (Mapping, str)) or not isinstance(entries, Sequence):
        raise RetrievalInputError(f"{name} must be a sequence with one entry per query")
    if len(entries) != n_queries:
        raise RetrievalInputError(f"{name} has {len(entries)} entries for {n_queries} queries")
    return entries


def _relevance_pairs(relevant, n_queries: int, n_docs: int) -> _Pairs:
    relevant = _per_query_entries(relevant, n_queries, "relevant")
    queries, docs, grades = [], [], []
    for q, entry in enumerate(relevant):
        if entry is None:
            continue
        if isinstance(entry, str):
            raise RetrievalInputError(f"relevant[{q}] must be a mapping or a collection of indices")
        items = entry.items() if isinstance(entry, Mapping) else dict.fromkeys(entry, 1).items()
        for doc, grade in items:
            doc = _doc_index(doc, n_docs, f"relevant[{q}]")
            try:
                grade = float(grade)
            except (TypeError, ValueError):
                raise RetrievalInputError(f"relevant[{q}][{doc}]: grade must be a number, got {grade!r}") from None
            if not (math.isfinite(grade) and grade >= 0):
                raise RetrievalInputError(f"relevant[{q}][{doc}]: grade must be finite and >= 0, got {grade}")
            if grade > 0:
                queries.append(q)
                docs.append(doc)
                grades.append(grade)
    query, doc, grade = (
        np.array(queries, dtype=np.int64),
        np.array(docs, dtype=np.int64),
        np.array(grades, dtype=np.float64),
    )
    order = np.lexsort((doc, query))
    query, doc, grade = query[order], doc[order], grade[order]
    slot = np.arange(len(query)) - np.searchsorted(query, query)
    return _Pairs(query, doc, grade, slot)


def _index_sets(entries, n_queries: int, n_docs: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, de-duplicated (query, corpus index) pairs of a per-query collection of indices."""
    if entries is None:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    entries = _per_query_entries(entries, n_queries, name)
    pairs: set[tuple[int, int]] = set()
    for q, entry in enumerate(entries):
        if entry is None:
            continue
        if isinstance(entry, (str, Mapping)):
            raise RetrievalInputError(f"{name}[{q}] must be a collection of corpus indices")
        pairs.update((q, _doc_index(d, n_docs, f"{name}[{q}]")) for d in entry)
    if not pairs:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    table = np.array(sorted(pairs), dtype=np.int64)
    return table[:, 0].copy(), table[:, 1].copy()


def _labelled_negatives(hard_negatives, pairs: _Pairs, n_queries: int, n_docs: int):
    """The (query, corpus index) pairs of labelled hard negatives; none may be relevant to its query."""
    labelled = _index_sets(hard_negatives, n_queries, n_docs, "hard_negatives")
    clash = np.isin(labelled[0] * n_docs + labelled[1], pairs.query * n_docs + pairs.doc)
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise RetrievalInputError(
            f"hard_negatives[{labelled[0][i]}] contains corpus index {labelled[1][i]}, which is relevant to that query"
        )
    return labelled


def _check_candidates(candidates, n_queries: int, n_docs: int) -> np.ndarray:
    if isinstance(candidates, torch.Tensor):
        candidates = candidates.detach().cpu().numpy()
    cand = np.asarray(candidates)
    if cand.ndim != 2 or cand.shape[0] != n_queries:
        raise RetrievalInputError(f"candidates must be [n_queries={n_queries}, k], got shape {cand.shape}")
    if cand.size and not np.issubdtype(cand.dtype, np.integer):
        raise RetrievalInputError(f"candidates must hold integer corpus indices, got dtype {cand.dtype}")
    cand = cand.astype(np.int64)
    if ((cand < -1) | (cand >= n_docs)).any():
        raise RetrievalInputError(f"candidates hold indices outside [0, {n_docs}) (other than -1 padding)")
    ordered = np.sort(cand, axis=1)
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
        raise RetrievalInputError("a candidate list repeats a corpus index")
    return cand


def _plan_chunks(n_queries, n_docs, dim, query_chunk_size, corpus_chunk_size, max_memory_bytes):
    """(query chunk, corpus chunk) whose working buffers fit max_memory_bytes."""
    budget = _positive_int(max_memory_bytes, "max_memory_bytes")
    qc = None if query_chunk_size is None else _positive_int(query_chunk_size, "query_chunk_size")
    cc = None if corpus_chunk_size is None else _positive_int(corpus_chunk_size, "corpus_chunk_size")

    def corpus_chunk_for(q_rows: int) -> int:
        if cc is not None:
            return min(cc, n_docs)
        fits = (budget - q_rows * dim * 8) // (q_rows * _BYTES_PER_CELL + dim * 8)
        return int(max(1, min(n_docs, fits)))

    if qc is None:
        qc = min(n_queries, DEFAULT_QUERY_CHUNK)
        # a small budget: trade query rows for corpus columns until the blocks are not thin
        while qc > 1 and corpus_chunk_for(qc) < min(n_docs, qc):
            qc //= 2
    qc = min(qc, n_queries)
    return qc, corpus_chunk_for(qc)
