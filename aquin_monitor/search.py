"""Nearest documents of query embeddings through faiss: exact where it fits, approximate with measured recall.

One home for every "which documents are closest" question of the package: ``eval``'s ranking against all
documents, ``sae steer``'s results before and after, ``sae faithfulness``'s NDCG and the snapshot's
neighbour graph above :data:`aquin_monitor.signals.neighbours.EXACT_KNN_MAX_POINTS` points.

Index kinds (``index=``)
    ``exact``: faiss ``IndexFlatIP`` on unit rows (cosine) or raw rows (dot). faiss scores in float32; the
    candidate lists it returns are re-scored with :func:`aquin_monitor.signals.retrieval.pair_scores` and
    re-sorted by the tie policy of :mod:`aquin_monitor.signals.retrieval` (score descending, then corpus
    index), and a list is accepted only when it provably holds the exact top k: its k-th exact score
    exceeds the last float32 score by more than the float32 error bound
    ε = 1.05 · (d + 4) · 2⁻²⁴ · ‖q‖ · maxᵢ‖dᵢ‖ (‖·‖ = 1 for cosine); otherwise the list is widened (doubled)
    and searched again. The result equals :func:`~aquin_monitor.signals.retrieval.topk`'s, ids and scores.
    Without faiss installed, exact search runs through ``topk`` itself.
    ``ivf``: ``IndexIVFFlat`` with nlist = ⌊4√n⌋ lists, trained on 39·nlist sampled rows (faiss' minimum
    per list). Chosen over HNSW as the default approximate index: on CPU its build is a k-means and one
    assignment pass (minutes for 1M rows on two cores, HNSW's graph build is several times that), it runs
    on faiss' GPUs, and one parameter (nprobe) trades speed for recall.
    ``hnsw``: ``IndexHNSWFlat`` (M = 32, efConstruction = 64), on request.
    ``auto``: exact up to :data:`EXACT_MAX_DOCS` documents, or when fewer queries are expected than the
    IVF index would have lists (building it costs about as much as nlist exact queries); else ``ivf``.

Recall (every approximate result)
    A seeded sample of the queries (``recall_sample``, default 1,000) is searched exactly (a streamed
    brute-force scan in faiss, never the whole corpus in memory). Unless fixed by the caller, nprobe
    (efSearch for HNSW) is the smallest power of two whose recall@k on the first half of the sample reaches
    ``recall_target`` (0.95); the recall printed and returned is measured on the other half, which the
    tuning did not see: recall@k = mean over queries of |approximate top k ∩ exact top k| / k.

Scores returned are always the canonical scores of :mod:`aquin_monitor.signals.retrieval`, whatever the
index. Documents come as a :class:`~aquin_monitor.rows.RowSource` (added to the index block by block, so a
memory-mapped store is read in bounded memory beyond the index itself) or an array. faiss' GPU indexes are
used for ``exact`` and ``ivf`` when faiss sees GPUs (``faiss.get_num_gpus()``, the ``faiss-gpu`` package).

Example::

    >>> import numpy as np
    >>> docs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    >>> result = SearchIndex(docs, index="exact").search(np.array([[1.0, 0.05]]), 2)
    >>> result.indices.tolist(), result.report.index
    ([[2, 0]], 'exact')
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._optional import require
from .rows import ArrayRows, RowSource, iter_blocks
from .signals.arrays import as_matrix
from .signals.retrieval import (
    RetrievalInputError,
    RetrievalReport,
    pair_scores,
    ranked_list_report,
    retrieval_metrics,
    topk,
)

__all__ = [
    "EXACT_MAX_DOCS",
    "INDEX_KINDS",
    "SearchIndex",
    "SearchReport",
    "SearchResult",
    "faiss_available",
    "ivf_lists",
    "neighbour_graph",
]

INDEX_KINDS = ("auto", "exact", "ivf", "hnsw")
# Above this many documents ``auto`` goes approximate (when enough queries come to pay for the build).
EXACT_MAX_DOCS = 100_000
DEFAULT_RECALL_TARGET = 0.95
DEFAULT_RECALL_SAMPLE = 1000
# Ranked-list depth of ``retrieval_report`` beyond the metrics' cutoffs: ranks up to it are exact.
DEFAULT_RANK_DEPTH = 100
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 64
_QUERY_BLOCK = 512
_UNIT_ROUNDING = 2.0**-24


def faiss_available() -> bool:
    """Whether ``import faiss`` works (``pip install 'aquin-monitor[faiss]'``)."""
    try:
        require("faiss", "search")
    except ImportError:
        return False
    return True


def ivf_lists(n_docs: int) -> int:
    """nlist of the IVF index for ``n_docs`` documents: ⌊4√n⌋, at least 1, at most n / 39 (faiss' rows per list).

    >>> ivf_lists(1_000_000), ivf_lists(100), ivf_lists(10)
    (4000, 2, 1)
    """
    return max(1, min(int(4 * math.sqrt(n_docs)), n_docs // 39))


@dataclass(frozen=True)
class SearchReport:
    """How a search was done: the index, its parameters, its measured recall and its time.

    ``recall_at_k`` is None for exact search; for an approximate index it is the mean
    |approximate top k ∩ exact top k| / k over ``recall_queries`` held-out sampled queries.
    ``widened_queries``: exact search only, queries whose faiss candidate list had to grow to
    prove that it held the exact top k. ``search_seconds`` times the search of all queries;
    ``recall_seconds`` the exact search of the recall sample and the nprobe / efSearch tuning.
    """

    index: str
    engine: str
    n_docs: int
    n_queries: int
    k: int
    parameters: dict[str, int] = field(default_factory=dict)
    recall_at_k: float | None = None
    recall_queries: int = 0
    build_seconds: float = 0.0
    search_seconds: float = 0.0
    widened_queries: int = 0
    recall_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)

    def line(self) -> str:
        """One line for stderr, e.g. ``search: ivf (nlist=4000, nprobe=32) on faiss-cpu, recall@10 0.962 ...``."""
        params = ", ".join(f"{k}={v}" for k, v in self.parameters.items())
        text = (
            f"search: {self.index}{f' ({params})' if params else ''} on {self.engine}, "
            f"{self.n_queries} queries x {self.n_docs} documents"
        )
        if self.recall_at_k is not None:
            text += f", recall@{self.k} {self.recall_at_k:.3f} vs exact on {self.recall_queries} held-out queries"
        text += f", build {self.build_seconds:.1f} s, search {self.search_seconds:.1f} s"
        return text + (f", recall measurement {self.recall_seconds:.1f} s" if self.recall_at_k is not None else "")


@dataclass(frozen=True)
class SearchResult:
    """``scores``, ``indices`` [Q, k'] best first (k' = min(k, n); -1 / -inf padding) and the :class:`SearchReport`."""

    scores: np.ndarray
    indices: np.ndarray
    report: SearchReport


class SearchIndex:
    """An index over documents answering top-k queries (module docstring: kinds, exactness, recall).

    Args:
        documents: a :class:`~aquin_monitor.rows.RowSource` or an ``[n, d]`` array.
        index: ``auto`` | ``exact`` | ``ivf`` | ``hnsw``.
        similarity: ``cosine`` or ``dot`` (as :mod:`aquin_monitor.signals.retrieval`).
        expected_queries: how many queries will come (``auto`` stays exact below the IVF list count).
        nlist / nprobe / ef_search: fix the index parameters instead of the defaults / tuning.
        recall_target / recall_sample / seed: the nprobe tuning and recall measurement.
        block_rows: rows read from ``documents`` at a time while building.
    """

    def __init__(
        self,
        documents: RowSource | np.ndarray,
        *,
        index: str = "auto",
        similarity: str = "cosine",
        expected_queries: int | None = None,
        nlist: int | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        recall_target: float = DEFAULT_RECALL_TARGET,
        recall_sample: int = DEFAULT_RECALL_SAMPLE,
        seed: int = 0,
        block_rows: int = 65536,
    ) -> None:
        if index not in INDEX_KINDS:
            raise RetrievalInputError(f"index must be one of {INDEX_KINDS}, got {index!r}")
        if similarity not in ("cosine", "dot"):
            raise RetrievalInputError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        self._array: np.ndarray | None = None
        if isinstance(documents, RowSource):
            self.source: RowSource = documents
        else:
            self._array = _checked_array(documents, "documents")
            self.source = ArrayRows(self._array)
        self.n_docs, self.dimension = len(self.source), self.source.dimension
        if self.n_docs == 0:
            raise RetrievalInputError("documents: no rows to search")
        self.similarity, self.seed, self.block_rows = similarity, seed, block_rows
        self.nlist = nlist or ivf_lists(self.n_docs)
        self.nprobe, self.ef_search = nprobe, ef_search
        self.recall_target, self.recall_sample = recall_target, recall_sample
        self.kind = index if index != "auto" else self._auto_kind(expected_queries)
        self._faiss = require("faiss", f"The {self.kind} index") if self.kind != "exact" else _faiss_or_none()
        self._index: Any = None
        self._max_norm: float | None = self._array_max_norm()
        self.build_seconds = 0.0

    def _auto_kind(self, expected_queries: int | None) -> str:
        if self.n_docs <= EXACT_MAX_DOCS or (expected_queries is not None and expected_queries < self.nlist):
            return "exact"
        return "ivf" if faiss_available() else "exact"

    @property
    def engine(self) -> str:
        if self._faiss is None:
            return "numpy (faiss not installed)"
        gpus = self._faiss.get_num_gpus()
        return f"faiss-gpu ({gpus} GPUs)" if gpus and self.kind != "hnsw" else "faiss-cpu"

    # ----------------------------------------------------------------------------------------
    # Searching

    def search(self, queries, k: int, *, exclude: Sequence[Collection[int] | None] | None = None) -> SearchResult:
        """The ``k`` best documents of each query, best first, canonical scores (module docstring).

        ``exclude[q]`` removes documents for query q, as :func:`~aquin_monitor.signals.retrieval.topk`.
        """
        queries = _checked_array(queries, "queries")
        if queries.shape[1] != self.dimension:
            raise RetrievalInputError(f"queries have dimension {queries.shape[1]} but documents have {self.dimension}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise RetrievalInputError(f"k must be an integer >= 1, got {k!r}")
        width = min(int(k), self.n_docs)
        excluded = _excluded_sets(exclude, len(queries), self.n_docs)
        if self._faiss is not None:
            self._build()
        started = time.perf_counter()
        params: dict[str, int] = {}
        recall, recall_queries, widened, recall_seconds = None, 0, 0, 0.0
        if self._faiss is None:
            scores, indices = topk(queries, self._in_memory(), width, similarity=self.similarity, exclude=exclude)
        elif self.kind == "exact":
            scores, indices, widened = self._exact_search(queries, width, excluded)
        else:
            scores, indices, params, recall, recall_queries, recall_seconds = self._approximate_search(
                queries, width, excluded
            )
        report = SearchReport(
            self.kind,
            self.engine,
            self.n_docs,
            len(queries),
            width,
            params,
            recall,
            recall_queries,
            self.build_seconds,
            time.perf_counter() - started - recall_seconds,
            widened,
            recall_seconds,
        )
        return SearchResult(scores, indices, report)

    def retrieval_report(
        self,
        queries,
        relevant: Sequence[Mapping[int, float] | Collection[int] | None],
        *,
        depth: int | None = None,
        ks: Sequence[int] = (1, 5, 10),
        ndcg_k: int | None = 10,
        mrr_k: int | None = 10,
        categories: Sequence[Hashable] | None = None,
        hard_negatives: Sequence[Collection[int] | None] | None = None,
    ) -> tuple[RetrievalReport, SearchReport]:
        """:func:`~aquin_monitor.signals.retrieval.retrieval_metrics`' report, through this index.

        Exact index over documents in memory and ``depth=None``: the full scan of
        ``retrieval_metrics`` itself (every rank exact, the numbers of every earlier release). Else
        the ranked lists of :meth:`search` to ``depth`` (default: 100 or the largest cutoff)
        through :func:`~aquin_monitor.signals.retrieval.ranked_list_report`: ranks up to ``depth``
        are exact for the exact index; a relevant document beyond it counts as not retrieved.
        """
        metric_args: dict[str, Any] = dict(
            ks=ks, ndcg_k=ndcg_k, mrr_k=mrr_k, categories=categories, hard_negatives=hard_negatives
        )
        if depth is None and self.kind == "exact" and self._array is not None and self.n_docs <= EXACT_MAX_DOCS:
            started = time.perf_counter()
            report = retrieval_metrics(queries, self._array, relevant, similarity=self.similarity, **metric_args)
            scan = SearchReport(
                "exact",
                "full scan",
                self.n_docs,
                len(report.n_relevant),
                self.n_docs,
                search_seconds=time.perf_counter() - started,
            )
            return report, scan
        cutoffs = [c for c in (*ks, ndcg_k, mrr_k) if c is not None]
        depth = depth if depth is not None else max([DEFAULT_RANK_DEPTH, *cutoffs])
        queries = _checked_array(queries, "queries")
        result = self.search(queries, depth)
        report = ranked_list_report(result.indices, relevant, self.pair_scorer(queries), self.n_docs, **metric_args)
        return report, result.report

    def pair_scorer(self, queries: np.ndarray):
        """``score(query_index, doc_index)`` -> canonical float32 scores of those pairs (signals.retrieval's)."""

        def score(query_index: np.ndarray, doc_index: np.ndarray) -> np.ndarray:
            out = np.empty(len(query_index), dtype=np.float32)
            for start in range(0, len(query_index), 65536):
                q, d = query_index[start : start + 65536], doc_index[start : start + 65536]
                out[start : start + 65536] = pair_scores(
                    queries[q], self.rows(d), similarity=self.similarity, corpus_max_norm=self._corpus_max_norm()
                )
            return out

        return score

    def rows(self, doc_index: np.ndarray) -> np.ndarray:
        """The document rows at ``doc_index`` (any order, repeats allowed), as given (arrays) or float32 (sources)."""
        doc_index = np.asarray(doc_index, dtype=np.int64)
        if self._array is not None:
            return self._array[doc_index]
        unique, inverse = np.unique(doc_index, return_inverse=True)
        out = np.empty((len(unique), self.dimension), dtype=np.float32)
        # consecutive ids are read in one call of at most block_rows rows (a memory-mapped store reads runs cheaply)
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        for run in np.split(np.arange(len(unique)), breaks):
            for part in np.split(run, range(self.block_rows, len(run), self.block_rows)):
                if len(part):
                    out[part] = self.source.read(int(unique[part[0]]), int(unique[part[-1]]) + 1)
        return out[inverse]

    # ----------------------------------------------------------------------------------------
    # Exact

    def _exact_search(self, queries: np.ndarray, k: int, excluded: list[set[int]]):
        """faiss candidates, re-scored and re-sorted; widened until each list provably holds the exact top k."""
        n_queries = len(queries)
        scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
        indices = np.full((n_queries, k), -1, dtype=np.int64)
        most_excluded = max((len(e) for e in excluded), default=0)
        width = min(self.n_docs, 2 * k + 16 + most_excluded)
        todo, widened = np.arange(n_queries), 0
        while len(todo):
            raw_scores, candidates = self._faiss_search(queries[todo], width)
            top_scores, top_index = self._rescored_top(queries, todo, candidates, k, excluded)
            if width >= self.n_docs:
                done = np.ones(len(todo), dtype=bool)
            else:  # a document outside the list scores at most raw_scores[:, -1] + eps
                bound = raw_scores[:, -1].astype(np.float64) + self._float32_error(queries[todo])
                done = np.isfinite(top_scores[:, -1]) & (top_scores[:, -1] > bound)
            scores[todo[done]], indices[todo[done]] = top_scores[done], top_index[done]
            todo = todo[~done]
            widened += len(todo) if width < self.n_docs else 0
            width = min(self.n_docs, 2 * width)
        return scores, indices, widened

    def _rescored_top(
        self, queries: np.ndarray, rows: np.ndarray, candidates: np.ndarray, k: int, excluded: list[set[int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top k of each candidate row under the tie policy, by canonical scores; -1 / -inf padding."""
        q_index = np.repeat(rows, candidates.shape[1])
        flat = candidates.reshape(-1)
        flat_scores = np.full(flat.shape, -np.inf, dtype=np.float32)
        valid = flat >= 0
        flat_scores[valid] = self.pair_scorer(queries)(q_index[valid], flat[valid])
        exact = flat_scores.reshape(candidates.shape)
        for i, q in enumerate(rows.tolist()):
            if excluded[q]:
                exact[i, np.isin(candidates[i], list(excluded[q]))] = -np.inf
        order = np.lexsort((np.where(candidates >= 0, candidates, np.iinfo(np.int64).max), -exact), axis=1)[:, :k]
        top_scores = np.take_along_axis(exact, order, 1)
        top_index = np.take_along_axis(candidates, order, 1)
        top_index[np.isneginf(top_scores)] = -1
        return top_scores, top_index

    def _float32_error(self, queries: np.ndarray) -> np.ndarray:
        """Bound on |faiss float32 score − exact score| per query (module docstring)."""
        scale = 1.05 * (self.dimension + 4) * _UNIT_ROUNDING + 2.0**-29
        if self.similarity == "cosine":
            return np.full(len(queries), scale)
        norms = np.sqrt(np.einsum("ij,ij->i", queries.astype(np.float64), queries.astype(np.float64)))
        return scale * norms * self._corpus_max_norm()

    # ----------------------------------------------------------------------------------------
    # Approximate

    def _approximate_search(self, queries: np.ndarray, k: int, excluded: list[set[int]]):
        """Tune on half of a query sample, search every query, measure recall on the other half."""
        started = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        sample = np.sort(rng.choice(len(queries), min(len(queries), self.recall_sample), replace=False))
        tune, held = (sample[::2], sample[1::2]) if len(sample) >= 2 else (sample, sample)
        truth = self._brute_force(queries[sample], k, [excluded[q] for q in sample.tolist()])
        truth_of = dict(zip(sample.tolist(), truth))
        name = "nprobe" if self.kind == "ivf" else "efSearch"
        fixed = self.nprobe if self.kind == "ivf" else self.ef_search
        if fixed is None:
            limit = self.nlist if self.kind == "ivf" else 4096
            value = 1 if self.kind == "ivf" else max(16, k)
            while True:
                self._set_parameter(name, value)
                _, found = self._approximate_lists(queries[tune], k, [excluded[q] for q in tune.tolist()])
                if _recall(found, [truth_of[q] for q in tune.tolist()], k) >= self.recall_target or value >= limit:
                    break
                value = min(limit, 2 * value)
        else:
            value = fixed
        self._set_parameter(name, value)
        recall_seconds = time.perf_counter() - started
        scores, indices = self._approximate_lists(queries, k, excluded)
        recall = _recall(indices[held], [truth_of[q] for q in held.tolist()], k)
        params = {"nlist": self.nlist, name: value} if self.kind == "ivf" else {"M": HNSW_M, name: value}
        return scores, indices, params, recall, len(held), recall_seconds

    def _approximate_lists(self, queries: np.ndarray, k: int, excluded: list[set[int]]):
        width = min(self.n_docs, k + max((len(e) for e in excluded), default=0))
        _, candidates = self._faiss_search(queries, width)
        return self._rescored_top(queries, np.arange(len(queries)), candidates, k, excluded)

    def _brute_force(self, queries: np.ndarray, k: int, excluded: list[set[int]]) -> list[np.ndarray]:
        """Exact top-k ids (float32 faiss scores) by streaming over the documents: no index, bounded memory."""
        faiss = self._faiss
        width = min(self.n_docs, k + max((len(e) for e in excluded), default=0))
        prepared = self._prepare(queries)
        best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        best_index = np.full((len(queries), 0), -1, dtype=np.int64)
        for start, block in iter_blocks(self.source, self.block_rows):
            d, i = faiss.knn(prepared, self._prepare(block), min(width, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
            merged_s, merged_i = np.hstack([best_scores, d]), np.hstack([best_index, i + start])
            order = np.lexsort((merged_i, -merged_s), axis=1)[:, :width]
            best_scores, best_index = np.take_along_axis(merged_s, order, 1), np.take_along_axis(merged_i, order, 1)
        return [np.array([d for d in row.tolist() if d not in ex][:k]) for row, ex in zip(best_index, excluded)]

    def _set_parameter(self, name: str, value: int) -> None:
        faiss = self._faiss
        space = faiss.GpuParameterSpace() if self.engine.startswith("faiss-gpu") else faiss.ParameterSpace()
        space.set_index_parameter(self._index, name, int(value))

    # ----------------------------------------------------------------------------------------
    # Building

    def _build(self) -> None:
        """Build the faiss index once, adding the documents block by block."""
        if self._index is not None:
            return
        faiss, started = self._faiss, time.perf_counter()
        if self.kind == "exact":
            index = faiss.IndexFlatIP(self.dimension)
        elif self.kind == "ivf":
            index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(self.dimension), self.dimension, self.nlist, faiss.METRIC_INNER_PRODUCT
            )
            index.cp.niter, index.cp.seed = 10, self.seed
            index.train(self._prepare(self._training_sample()))
        else:
            index = faiss.IndexHNSWFlat(self.dimension, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        for _, block in iter_blocks(self.source, self.block_rows):
            index.add(self._prepare(block))
        if faiss.get_num_gpus() and self.kind != "hnsw":
            index = faiss.index_cpu_to_all_gpus(index)
        self._index = index
        self.build_seconds = time.perf_counter() - started

    def _training_sample(self) -> np.ndarray:
        """39·nlist rows at seeded random positions (all rows when fewer), read block by block."""
        size = min(self.n_docs, 39 * self.nlist)
        chosen = np.sort(np.random.default_rng(self.seed).choice(self.n_docs, size, replace=False))
        parts = []
        for start, block in iter_blocks(self.source, self.block_rows):
            lo, hi = np.searchsorted(chosen, [start, start + len(block)])
            parts.append(block[chosen[lo:hi] - start])
        return np.concatenate(parts)

    def _prepare(self, rows: np.ndarray) -> np.ndarray:
        """float32 rows for faiss: normalised in float64 first for cosine (zero rows stay zero); checked finite."""
        rows = np.asarray(rows, dtype=np.float64)
        if not np.isfinite(rows).all():
            bad = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
            raise RetrievalInputError(f"a row holds NaN or Inf (row {bad} of its block)")
        if self.similarity == "cosine":
            norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
            rows = rows / np.where(norms > 0, norms, 1.0)[:, None]
        return np.ascontiguousarray(rows, dtype=np.float32)

    def _faiss_search(self, queries: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.empty((len(queries), width), dtype=np.float32)
        ids = np.empty((len(queries), width), dtype=np.int64)
        for start in range(0, len(queries), _QUERY_BLOCK):
            block = self._prepare(queries[start : start + _QUERY_BLOCK])
            scores[start : start + len(block)], ids[start : start + len(block)] = self._index.search(block, width)
        return scores, ids

    def _corpus_max_norm(self) -> float:
        if self._max_norm is None:
            self._max_norm = max(
                float(np.sqrt(np.einsum("ij,ij->i", b.astype(np.float64), b.astype(np.float64))).max())
                for _, b in iter_blocks(self.source, self.block_rows)
            )
        return self._max_norm

    def _array_max_norm(self) -> float | None:
        """maxᵢ‖dᵢ‖ for dot scores of an array (a row source's is read on first use); cosine needs none."""
        if self.similarity == "cosine":
            return 1.0
        if self._array is None:
            return None
        rows = self._array.astype(np.float64)
        return float(np.sqrt(np.einsum("ij,ij->i", rows, rows)).max())

    def _in_memory(self) -> np.ndarray:
        return self._array if self._array is not None else self.source.read(0, self.n_docs)


def neighbour_graph(unit: np.ndarray, k: int, *, index: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of each unit row (itself included, as umap counts it), through :class:`SearchIndex`.

    ``(indices, distances)`` [n, k], nearest first, with dist = sqrt(max(0, 2 − 2 cos)) as
    :func:`aquin_monitor.signals.neighbours.exact_knn` (which snapshots use up to its size limit:
    this is for larger probes, where an exact n × n scan in numpy would take too long).

    >>> idx, dist = neighbour_graph(np.eye(3), 2)
    >>> idx[:, 0].tolist(), np.round(dist[:, 1], 4).tolist()
    ([0, 1, 2], [1.4142, 1.4142, 1.4142])
    """
    result = SearchIndex(unit, index=index, expected_queries=len(unit)).search(unit, k)
    distances = np.sqrt(np.clip(2.0 - 2.0 * result.scores.astype(np.float64), 0.0, None))
    return result.indices, distances.astype(unit.dtype)


def _faiss_or_none():
    try:
        return require("faiss", "search")
    except ImportError:
        return None


def _checked_array(x, name: str) -> np.ndarray:
    try:
        return as_matrix(x, name, dtype=None)
    except ValueError as exc:
        raise RetrievalInputError(str(exc)) from None


def _excluded_sets(exclude, n_queries: int, n_docs: int) -> list[set[int]]:
    if exclude is None:
        return [set() for _ in range(n_queries)]
    if len(exclude) != n_queries:
        raise RetrievalInputError(f"exclude has {len(exclude)} entries for {n_queries} queries")
    sets = [set() if e is None else {int(d) for d in e} for e in exclude]
    for q, entry in enumerate(sets):
        if any(not 0 <= d < n_docs for d in entry):
            raise RetrievalInputError(f"exclude[{q}]: corpus index out of range for a corpus of {n_docs} documents")
    return sets


def _recall(found: np.ndarray, truth: list[np.ndarray], k: int) -> float:
    """Mean |found[q] ∩ truth[q]| / |truth[q]| over queries (recall@k of an approximate index)."""
    values = [len(set(row[row >= 0].tolist()) & set(t.tolist())) / len(t) for row, t in zip(found, truth) if len(t)]
    return float(np.mean(values)) if values else math.nan
