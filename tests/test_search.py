"""aquin_monitor.search: faiss exact search equals signals.retrieval's exact scan (ids and scores), approximate
indexes report a recall that an independent computation confirms, documents stream from a RowSource."""

from __future__ import annotations

import numpy as np
import pytest

from aquin_monitor import search
from aquin_monitor._optional import MissingDependencyError
from aquin_monitor.rows import ArrayRows
from aquin_monitor.search import SearchIndex, neighbour_graph
from aquin_monitor.signals.neighbours import exact_knn
from aquin_monitor.signals.retrieval import RetrievalInputError, retrieval_metrics, topk

pytest.importorskip("faiss")


class CountingRows:
    """A RowSource that records every read (to check that building reads bounded blocks)."""

    def __init__(self, array: np.ndarray) -> None:
        self.rows = ArrayRows(array)
        self.reads: list[tuple[int, int]] = []

    @property
    def dimension(self) -> int:
        return self.rows.dimension

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        self.reads.append((start, stop))
        return self.rows.read(start, stop)


def corpus_with_ties(seed: int = 0, n: int = 2000, d: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Random documents with exact duplicates and a zero row, queries that equal some documents."""
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n, d)).astype(np.float32)
    docs[[50, 7, 900]] = docs[400]  # four equal rows: their order must follow the corpus index
    docs[3] = 0.0  # cosine 0 with everything
    queries = rng.normal(size=(120, d)).astype(np.float32)
    queries[[0, 1]] = docs[[400, 3]]
    return docs, queries


def clustered(seed: int, n: int, d: int = 32, centres: int = 40, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(centres, d))
    docs = centre[rng.integers(centres, size=n)] + noise * rng.normal(size=(n, d))
    queries = centre[rng.integers(centres, size=300)] + noise * rng.normal(size=(300, d))
    return docs.astype(np.float32), queries.astype(np.float32)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("k", [1, 10, 2000, 2500])
def test_exact_search_equals_topk_ids_and_scores(similarity, k):
    docs, queries = corpus_with_ties()
    exclude = [None] * len(queries)
    exclude[0], exclude[5] = [400, 7], list(range(0, 2000, 2))
    ref_scores, ref_index = topk(queries, docs, k, similarity=similarity, exclude=exclude)
    result = SearchIndex(docs, index="exact", similarity=similarity).search(queries, k, exclude=exclude)
    assert result.report.index == "exact" and result.report.engine == "faiss-cpu"
    np.testing.assert_array_equal(result.indices, ref_index)
    np.testing.assert_array_equal(result.scores, ref_scores)
    if k == 10:
        assert result.indices[0, :2].tolist() == [50, 900]  # the equal rows, by index, 400 and 7 excluded


def test_exact_search_without_faiss_is_topk(monkeypatch):
    docs, queries = corpus_with_ties(1)

    def no_faiss(module, purpose):
        raise MissingDependencyError(f"{purpose} needs faiss: pip install 'aquin-monitor[faiss]'")

    monkeypatch.setattr(search, "require", no_faiss)
    index = SearchIndex(CountingRows(docs), index="exact")
    result = index.search(queries, 7)
    assert result.report.engine.startswith("numpy")
    ref_scores, ref_index = topk(queries, docs, 7)
    np.testing.assert_array_equal(result.indices, ref_index)
    np.testing.assert_array_equal(result.scores, ref_scores)
    with pytest.raises(MissingDependencyError, match=r"aquin-monitor\[faiss\]"):
        SearchIndex(docs, index="ivf")


def test_near_ties_below_float32_resolution_widen_the_list_and_stay_exact():
    # every document is the same direction up to 1e-7: float32 cannot order them, the exact scores can
    rng = np.random.default_rng(2)
    base = rng.normal(size=32)
    docs = base + 1e-7 * rng.normal(size=(3000, 32))
    queries = base + 1e-3 * rng.normal(size=(8, 32))
    result = SearchIndex(docs, index="exact").search(queries, 5)
    assert result.report.widened_queries > 0
    ref_scores, ref_index = topk(queries, docs, 5)
    np.testing.assert_array_equal(result.indices, ref_index)
    np.testing.assert_array_equal(result.scores, ref_scores)


def test_row_source_is_read_in_blocks_and_gives_the_array_result():
    docs, queries = corpus_with_ties(3)
    rows = CountingRows(docs)
    result = SearchIndex(rows, index="exact", block_rows=300).search(queries, 10)
    ref_scores, ref_index = topk(queries, docs, 10)
    np.testing.assert_array_equal(result.indices, ref_index)
    np.testing.assert_array_equal(result.scores, ref_scores)
    build_reads = [r for r in rows.reads if r[1] - r[0] > 1]
    assert build_reads[:2] == [(0, 300), (300, 600)]
    assert max(stop - start for start, stop in rows.reads) <= 300


@pytest.mark.parametrize("depth", [None, 10, 2000])
def test_retrieval_report_equals_retrieval_metrics(depth):
    docs, queries = corpus_with_ties(4)
    rng = np.random.default_rng(4)
    relevant = [{int(d): int(g) for d, g in zip(rng.choice(2000, 3, replace=False), [2, 1, 0])} for _ in queries]
    relevant[0] = {400: 1, 900: 1}  # tied with its duplicates 7 and 50
    relevant[1] = None
    negatives = [[int(rng.integers(2000))] if q % 3 == 0 else None for q in range(len(queries))]
    negatives = [None if n and n[0] in (relevant[q] or {}) else n for q, n in enumerate(negatives)]
    categories = ["a" if q % 2 else "b" for q in range(len(queries))]
    args = dict(ks=(1, 5, 10), categories=categories, hard_negatives=negatives)
    ref = retrieval_metrics(queries, docs, relevant, **args)
    report, how = SearchIndex(docs, index="exact").retrieval_report(queries, relevant, depth=depth, **args)
    assert how.engine == ("full scan" if depth is None else "faiss-cpu")
    cut = [
        "retrieval/recall@1",
        "retrieval/recall@5",
        "retrieval/recall@10",
        "retrieval/mrr@10",
        "retrieval/ndcg@10",
        "retrieval/positive_sim",
        "retrieval/n_queries",
    ]
    for key in cut:
        assert report.as_metrics()[key] == ref.as_metrics()[key], key
    assert report.by_category()["a"]["retrieval/ndcg@10"] == ref.by_category()["a"]["retrieval/ndcg@10"]
    if depth != 10:  # the lists hold every document: every rank, negative and figure is the full scan's
        assert report.as_metrics() == pytest.approx(ref.as_metrics(), rel=0, abs=0, nan_ok=True)
        np.testing.assert_array_equal(report.ranks.rank, ref.ranks.rank)
        np.testing.assert_array_equal(report.negative_index, ref.negative_index)
        np.testing.assert_array_equal(report.hard_negative_gap, ref.hard_negative_gap)
    else:  # ranks beyond the list are +inf, the ones inside exact
        inside = np.isfinite(report.ranks.rank)
        assert (ref.ranks.rank[~inside] > 10).all()
        np.testing.assert_array_equal(report.ranks.rank[inside], ref.ranks.rank[inside])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_reports_the_recall_an_independent_count_gives(kind):
    docs, queries = clustered(5, 6000)
    result = SearchIndex(docs, index=kind, recall_sample=len(queries)).search(queries, 10)
    report = result.report
    _, exact = topk(queries, docs, 10)
    held = np.arange(len(queries))[1::2]  # the half of the sample the tuning did not see
    recall = np.mean([len(set(result.indices[q]) & set(exact[q])) / 10 for q in held])
    assert report.recall_at_k == pytest.approx(recall, abs=1e-12)
    assert report.recall_queries == len(held) and report.k == 10
    assert report.recall_at_k >= 0.9
    assert "recall@10" in report.line()
    # scores are the canonical ones, the order the tie policy's
    from aquin_monitor.signals.retrieval import pair_scores

    q = np.repeat(np.arange(len(queries)), 10)
    np.testing.assert_array_equal(result.scores.reshape(-1), pair_scores(queries[q], docs[result.indices.reshape(-1)]))
    assert (np.diff(result.scores, axis=1) <= 0).all()


def test_ivf_nprobe_is_the_smallest_power_of_two_reaching_the_target():
    docs, queries = clustered(6, 8000, noise=0.6)
    index = SearchIndex(docs, index="ivf", recall_sample=len(queries), recall_target=0.95)
    chosen = index.search(queries, 10).report.parameters["nprobe"]
    assert index.nlist == search.ivf_lists(8000)
    _, exact = topk(queries, docs, 10)
    tune = np.arange(len(queries))[::2]

    def recall_at(nprobe: int) -> float:
        found = SearchIndex(docs, index="ivf", nprobe=nprobe).search(queries[tune], 10).indices
        return float(np.mean([len(set(f) & set(exact[q])) / 10 for f, q in zip(found, tune)]))

    assert recall_at(chosen) >= 0.95
    if chosen > 1:
        assert recall_at(chosen // 2) < 0.95


def test_auto_is_exact_for_small_corpora_and_few_queries():
    docs, _ = clustered(7, 500)
    assert SearchIndex(docs).kind == "exact"
    assert search.EXACT_MAX_DOCS >= 100_000


def test_neighbour_graph_equals_exact_knn():
    rng = np.random.default_rng(8)
    unit = rng.normal(size=(700, 16))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    idx, dist = neighbour_graph(unit, 15)
    ref_idx, ref_dist = exact_knn(unit, 15)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, atol=1e-7)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda d, q: SearchIndex(d, index="annoy"), "index must be one of"),
        (lambda d, q: SearchIndex(d).search(q, 0), "k must be an integer"),
        (lambda d, q: SearchIndex(d).search(q[:, :3], 2), "dimension 3"),
        (lambda d, q: SearchIndex(d).search(np.full_like(q, np.nan), 2), "NaN"),
        (lambda d, q: SearchIndex(np.zeros((0, 4), np.float32)), "documents"),
        (lambda d, q: SearchIndex(d).search(q, 2, exclude=[[10**6]] * len(q)), "out of range"),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    docs, queries = corpus_with_ties(9, n=1000)
    with pytest.raises(RetrievalInputError, match=message):
        call(docs, queries)


def test_nan_row_in_a_row_source_is_named():
    docs, queries = corpus_with_ties(10, n=1000)
    docs[123, 4] = np.nan
    with pytest.raises(RetrievalInputError, match="NaN"):
        SearchIndex(CountingRows(docs), index="exact").search(queries, 3)


def write_pairs(path) -> str:
    import json

    rng = np.random.default_rng(11)
    words = ["cell", "gene", "virus", "protein", "tumour", "brain", "heart", "blood", "immune", "drug"]
    lines = []
    for q in range(12):
        query = " ".join(rng.choice(words, 3))
        document = query + " " + " ".join(rng.choice(words, 4))
        lines.append({"query": query + f" {q}", "document": document + f" {q}"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_eval_index_exact_and_ivf_give_the_default_metrics_and_ivf_prints_its_recall(capsys, tmp_path, tiny_mean_model):
    import json

    from aquin_monitor.cli import main

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    results = {}
    for kind in ("auto", "exact", "ivf"):
        code = main(["eval", tiny_mean_model, "--pairs", pairs, "--index", kind, "--json", "-", "--no-progress"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        results[kind] = json.loads(captured.out)
        assert ("recall@" in captured.err) == (kind == "ivf")
    assert results["auto"]["search"]["engine"] == "full scan"
    assert results["ivf"]["search"]["recall_at_k"] == 1.0  # one list: IVF scans everything
    for kind in ("exact", "ivf"):
        for key in ("retrieval/recall@1", "retrieval/recall@10", "retrieval/mrr@10", "retrieval/ndcg@10"):
            assert results[kind]["metrics"][key] == results["auto"]["metrics"][key], (kind, key)


def test_eval_bad_index_is_an_argument_error(capsys, tmp_path):
    from aquin_monitor.cli import main

    code = main(["eval", "default", "--pairs", str(tmp_path / "none.jsonl"), "--index", "annoy"])
    assert code == 2 and "invalid choice: 'annoy'" in capsys.readouterr().err


def test_embedding_store_searches_like_its_rows(tmp_path):
    from aquin_monitor.store import EmbeddingStore, write_store

    docs, queries = corpus_with_ties(12, n=1500)
    write_store(
        tmp_path / "store",
        [docs[:700], docs[700:]],
        [f"d{i}" for i in range(len(docs))],
        model_fingerprint="m",
        corpus_hash="c",
        shard_rows=400,
        durable=False,
    )
    store = EmbeddingStore(tmp_path / "store")
    result = SearchIndex(store, index="exact", block_rows=256).search(queries, 10)
    ref_scores, ref_index = topk(queries, docs, 10)
    np.testing.assert_array_equal(result.indices, ref_index)
    np.testing.assert_array_equal(result.scores, ref_scores)
