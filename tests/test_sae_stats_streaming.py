"""Streamed feature statistics give the dense implementation's browser, labels, network and diagnostics.

The reference is the dense code as it was before streaming (``sae_dense_reference``, a frozen copy);
the streamed side reads the embeddings through a RowSource in small blocks, so every block boundary,
top-N merge and co-activation sum is exercised.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sae_dense_reference as dense
import scipy.sparse
from sae_planted import planted_corpus

from aquin_monitor.rows import ArrayRows, gather_rows
from aquin_monitor.sae.activations import sparse_activations
from aquin_monitor.sae.browser import browser_from_stats
from aquin_monitor.sae.corpus_texts import CorpusTexts
from aquin_monitor.sae.diagnose import absorption_pairs, diagnose, polysemy
from aquin_monitor.sae.labels import ctfidf_labels
from aquin_monitor.sae.model import SparseAutoencoder
from aquin_monitor.sae.network import coactivation_network
from aquin_monitor.sae.page import analyse_rows, page_data
from aquin_monitor.sae.stats import (
    FeatureStatsAccumulator,
    activation_blocks,
    feature_stats_from_activations,
    first_shared_rows,
    stream_feature_stats,
)

WORDS = ["apple", "river", "stone", "cloud", "engine", "violin", "harbor", "pepper", "<script>", "$$", "the", "42"]


def random_case(n: int = 900, d: int = 24, latents: int = 64, k: int = 5, seed: int = 3):
    rng = np.random.default_rng(seed)
    sae = SparseAutoencoder(d, latents, k, seed=seed).eval()
    # a few repeated rows make exact activation ties, which the top-N tables must break by row
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[100:110] = x[5]
    texts = [" ".join(rng.choice(WORDS, size=4)) + f" doc{i % 37}" for i in range(n)]
    return sae, x, texts


def cases():
    return {"planted": planted_corpus(1600), "random": random_case()}


@pytest.fixture(params=["planted", "random"])
def case(request):
    return cases()[request.param]


def test_accumulated_totals_equal_dense_sums_and_brute_force_top_tables(case):
    sae, x, _ = case
    z = sparse_activations(sae, x)
    stats = stream_feature_stats(sae, ArrayRows(x), examples=7, block_rows=97)
    zd = z.toarray().astype(np.float64)
    assert stats.n_texts == len(x)
    np.testing.assert_array_equal(stats.counts, (zd > 0).sum(0))
    np.testing.assert_allclose(stats.total, zd.sum(0), rtol=1e-12)
    np.testing.assert_array_equal(stats.maximum, zd.max(0))
    np.testing.assert_array_equal(stats.coactivation.toarray(), (zd > 0).astype(int).T @ (zd > 0).astype(int))
    for j in range(zd.shape[1]):  # brute force: sort the whole column, value descending then row ascending
        fired = np.flatnonzero(zd[:, j] > 0)
        order = fired[np.lexsort((fired, -zd[fired, j]))][:7]
        rows, values = stats.top(j)
        np.testing.assert_array_equal(rows, order)
        np.testing.assert_array_equal(values, zd[order, j].astype(np.float32))


def test_streamed_browser_equals_the_dense_browser(case):
    sae, x, texts = case
    expected = dense.browse_features(sae, x, texts, examples=9)
    stats = stream_feature_stats(sae, ArrayRows(x), examples=9, block_rows=128)
    chunks = [texts[i : i + 50] for i in range(0, len(texts), 50)]
    got = browser_from_stats(
        stats, {r: texts[r] for r in np.unique(stats.top_rows[stats.top_rows >= 0])}, corpus=chunks
    )
    assert (got.n_texts, got.num_latents, got.dead) == (expected.n_texts, expected.num_latents, expected.dead)
    assert [f.index for f in got.features] == [f.index for f in expected.features]
    for new, old in zip(got.features, expected.features):
        assert new.label == old.label and new.examples == old.examples
        assert (new.frequency, new.max_activation) == (old.frequency, old.max_activation)
        # totals: float64 sums now, float32 sums before
        assert new.total_activation == pytest.approx(old.total_activation, rel=1e-6)
        assert new.mean_activation == pytest.approx(old.mean_activation, rel=1e-6)


def test_streamed_labels_equal_the_joined_corpus_labels():
    _, _, texts = random_case()
    classes = [[1, 2, 3], [10, 200, 300, 301], [5, 105], [], [7]]
    expected = dense.ctfidf_labels(texts, classes, top_terms=4)
    assert ctfidf_labels(texts, classes, top_terms=4) == expected
    chunks = [texts[i : i + 64] for i in range(0, len(texts), 64)]
    members = {i: texts[i] for group in classes for i in group}
    assert ctfidf_labels(members, classes, top_terms=4, corpus=chunks) == expected
    assert ctfidf_labels(["the a", "of"], [[0], [1]]) == dense.ctfidf_labels(["the a", "of"], [[0], [1]]) == [[], []]


def test_streamed_network_absorption_and_polysemy_equal_the_dense_ones(case):
    sae, x, texts = case
    z = sparse_activations(sae, x)
    stats = stream_feature_stats(sae, ArrayRows(x), examples=20, block_rows=101)
    for threshold, support in ((0.3, 5), (0.05, 2)):
        got_net = coactivation_network(stats, threshold=threshold, min_support=support)
        want_net = dense.coactivation_network(z, threshold=threshold, min_support=support)
        # node sizes: mean activation from float64 sums now, float32 sums before
        assert [n.mean_activation for n in got_net.nodes] == pytest.approx(
            [n.mean_activation for n in want_net.nodes], rel=1e-6
        )
        for node in got_net.nodes + want_net.nodes:
            node.mean_activation = 0.0
        assert got_net == want_net
    for threshold, support in ((0.9, 10), (0.3, 3)):
        got = absorption_pairs(
            stats,
            texts,
            threshold=threshold,
            min_support=support,
            blocks=activation_blocks(sae, ArrayRows(x), block_rows=101),
        )
        # the stream gives exactly what the in-memory matrix gives, base-rate test included
        assert got == absorption_pairs(z, texts, threshold=threshold, min_support=support)
        # and the reference's pairs, counts and examples (the pre-test fields; the base-rate test is checked
        # against scipy in test_sae_labels), listed in the reference's order within flagged / not flagged
        want = dense.absorption_pairs(z, texts, threshold=threshold, min_support=support)
        assert sorted(map(_reference_pair, got)) == sorted(map(_reference_pair, want))
    got_poly, got_base = polysemy(stats, ArrayRows(x), texts)
    in_memory_poly, in_memory_base = polysemy(z, x, texts)
    assert got_base == in_memory_base and got_poly == in_memory_poly
    want_poly, want_base = dense.polysemy(z, x, texts)
    # the pool is normalised before its distances now: the same numbers up to the last bits (1e-12)
    assert got_base == pytest.approx(want_base, rel=1e-12)
    assert list(map(_reference_polysemy, got_poly)) == list(map(_reference_polysemy, want_poly))
    assert diagnose(
        stats, ArrayRows(x), texts, blocks=activation_blocks(sae, ArrayRows(x), block_rows=101)
    ) == diagnose(z, x, texts)


_CHANCE_FIELDS = ("lift", "p_value", "q_value", "flagged", "spread_z", "silhouette_p", "merged")


def _reference_pair(pair) -> tuple:
    """An absorption pair's fields that the dense reference computes (all but the base-rate test)."""
    return tuple((k, str(v)) for k, v in sorted(dataclasses.asdict(pair).items()) if k not in _CHANCE_FIELDS)


def _reference_polysemy(feature) -> tuple:
    """A polysemy result's fields that the dense reference computes (all but the random-set null and the
    verdict that rests on it)."""
    return tuple(
        (k, f"{v:.10g}" if isinstance(v, float) else str(v))
        for k, v in sorted(dataclasses.asdict(feature).items())
        if k not in _CHANCE_FIELDS
    )


def test_planted_absorption_is_found_through_the_stream():
    sae, x, texts = planted_corpus(1600)
    stats = stream_feature_stats(sae, ArrayRows(x), block_rows=64)
    pairs = absorption_pairs(stats, texts, blocks=activation_blocks(sae, ArrayRows(x), block_rows=64))
    assert [(p.source, p.target, p.probability) for p in pairs] == [(4, 5, 1.0)]
    assert pairs[0].examples == [texts[4], texts[36], texts[68]]


def test_analyse_rows_over_a_row_source_gives_the_dense_page_data():
    sae, x, texts = planted_corpus(1600)
    expected = page_data(
        dense.browse_features(sae, x, texts, examples=8),
        dense.coactivation_network(sparse_activations(sae, x), min_support=10),
        diagnose(sparse_activations(sae, x), x, texts),  # the in-memory path (its parts: the test above)
    )
    asked: set[int] = set()

    class LazyTexts(dict):
        def __getitem__(self, row):
            asked.add(row)
            return texts[row]

    browser, network, found = analyse_rows(
        sae, ArrayRows(x), LazyTexts(), corpus=[texts[:700], texts[700:]], examples=8, block_rows=200
    )
    got = page_data(browser, network, found)
    # label scores are the streamed browser's own (sae/label_quality.py, checked in test_sae_labels.py); the
    # dense reference predates them: every feature has one, about itself, and the summary counts them all
    assert [f.pop("label_score")["feature"] for f in got["features"]] == [f["index"] for f in got["features"]]
    assert got.pop("label_summary")["n"] == len(got["features"]) and expected.pop("label_summary", None) is None
    for feature in expected["features"]:
        assert feature.pop("label_score", None) is None
    for part in ("features", "network"):  # totals and means: float64 sums now, float32 sums before
        mine = got[part] if part == "features" else got[part]["nodes"]
        theirs = expected[part] if part == "features" else expected[part]["nodes"]
        for key in ("total_activation", "mean_activation"):
            if key in theirs[0]:
                assert [f[key] for f in mine] == pytest.approx([f[key] for f in theirs], rel=1e-6)
                for feature in mine + theirs:
                    feature[key] = 0.0
    assert got == expected
    assert 0 < len(asked) < len(texts)  # only top texts and examples were read


def test_accumulator_refuses_blocks_out_of_order_or_of_the_wrong_width():
    acc = FeatureStatsAccumulator(4, examples=2)
    acc.add(0, scipy.sparse.csr_matrix(np.ones((2, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="expected row 2, got 5"):
        acc.add(5, scipy.sparse.csr_matrix(np.ones((1, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="3 features, expected 4"):
        acc.add(2, scipy.sparse.csr_matrix(np.ones((1, 3), dtype=np.float32)))
    with pytest.raises(ValueError, match="at least 1"):
        FeatureStatsAccumulator(4, examples=0)


def test_a_nan_row_is_named_by_its_row_in_the_whole_source():
    sae, x, _ = random_case(n=50)
    x[37, 3] = np.nan
    with pytest.raises(ValueError, match=r"row 7: not finite.*block starting at row 30"):
        stream_feature_stats(sae, ArrayRows(x), block_rows=10)
    with pytest.raises(ValueError, match="dimension 24, the SAE takes 8"):
        stream_feature_stats(SparseAutoencoder(8, 16, 2), ArrayRows(x))


def test_statistics_of_an_empty_source_and_pairs_never_met():
    sae = SparseAutoencoder(4, 8, 2, seed=0)
    stats = stream_feature_stats(sae, ArrayRows(np.zeros((0, 4), dtype=np.float32)))
    assert stats.n_texts == 0 and stats.counts.sum() == 0 and stats.coactivation.nnz == 0
    assert (stats.top_rows == -1).all() and (stats.mean == 0).all()
    z = scipy.sparse.csr_matrix(np.array([[1.0, 0], [0, 1]], dtype=np.float32))
    assert first_shared_rows([(0, z)], [(0, 1)]) == [[]]
    assert dataclasses.asdict(feature_stats_from_activations(z))["counts"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="kept 2 top texts per feature, 20 asked for"):
        polysemy(feature_stats_from_activations(z, examples=2), np.eye(2), ["a", "b"])


def test_gather_rows_reads_a_row_source_in_runs_and_keeps_the_asked_order():
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    reads: list[tuple[int, int]] = []

    class Counting(ArrayRows):
        def read(self, start, stop):
            reads.append((start, stop))
            return super().read(start, stop)

    rows = np.array([7, 3, 4, 5, 19, 3])
    np.testing.assert_array_equal(gather_rows(Counting(x), rows), x[rows].astype(np.float64))
    assert reads == [(3, 6), (7, 8), (19, 20)]


def test_corpus_texts_read_only_the_rows_shown_in_few_passes():
    sae, x, texts = planted_corpus(1600)
    passes: list[int] = []

    def iterate():
        passes.append(1)
        return iter(texts)

    corpus = CorpusTexts(iterate, chunk_texts=500)
    expected = analyse_rows(sae, x, texts, examples=8)
    got = analyse_rows(sae, ArrayRows(x), corpus, examples=8, block_rows=300)
    assert [f.label for f in got[0].features] == [f.label for f in expected[0].features]
    assert [f.examples for f in got[0].features] == [f.examples for f in expected[0].features]
    assert got[2].absorption == expected[2].absorption and got[2].polysemy == expected[2].polysemy
    assert len(corpus.held) < len(texts) and len(passes) <= 4  # background, top texts, absorption examples
    with pytest.raises(KeyError, match="row 5000 asked for, but the corpus has 1600 texts"):
        corpus.fetch([5000])
    with pytest.raises(KeyError, match="row 1599 was not fetched"):
        CorpusTexts(iterate)[1599]
