"""Snapshot numbers against independent references, never against the project's own signal functions.

Embeddings come from ``SentenceTransformer.encode`` (and, for layers and attention, the raw
transformers model one text at a time, so no padding); every metric is then recomputed here by its
textbook formula in numpy, pair by pair where that is the definition, or by a trusted library:
scikit-learn (PCA component counts, k nearest neighbours), scipy (MAD, Wasserstein distance,
entropy) and pytrec_eval (NDCG@10, reciprocal rank, recall with graded judgements, trec_eval semantics).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aquin_monitor.data import ProbeSet, RetrievalSet
from aquin_monitor.encoders import load_model
from aquin_monitor.snapshot_runner import SnapshotRunner

TOPICS = ("cats", "markets", "weather")
QUERIES = {f"q{i}": f"what happened with the {TOPICS[i % 3]} story number {i}" for i in range(6)}
DOCS = {f"d{i}": f"report {i}: the {TOPICS[i % 3]} were in the news again, item {i * 7}" for i in range(14)}
# graded judgements: a grade-2 document and a grade-1 document per query (q5 has only one)
QRELS = {f"q{i}": ({f"d{i}": 2, f"d{i + 6}": 1} if i < 5 else {f"d{i}": 1}) for i in range(6)}
TEXTS = list(QUERIES.values()) + list(DOCS.values())
LABELS = [TOPICS[i % 3] for i in range(6)] + [TOPICS[i % 3] for i in range(14)]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pair_cosines(x: np.ndarray) -> np.ndarray:
    """Cosine of every pair i < j, one pair at a time."""
    u = unit(x)
    return np.array([u[i] @ u[j] for i in range(len(u)) for j in range(i + 1, len(u))])


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with centred Gram matrices."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.trace(k @ l) / math.sqrt(np.trace(k @ k) * np.trace(l @ l)))


def knn_sets(x: np.ndarray, k: int) -> list[set[int]]:
    from sklearn.neighbors import NearestNeighbors

    _, indices = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(x).kneighbors(x)
    return [set(row.tolist()) - {i} for i, row in enumerate(indices)]


def trec_eval(q: np.ndarray, d: np.ndarray) -> dict[str, dict[str, float]]:
    """pytrec_eval on the cosine run, cut to each query's top 10 (so recip_rank is MRR@10)."""
    import pytrec_eval

    scores = unit(q) @ unit(d).T
    doc_ids, run = list(DOCS), {}
    for qi, qid in enumerate(QUERIES):
        top = np.argsort(-scores[qi])[:10]
        run[qid] = {doc_ids[j]: float(scores[qi, j]) for j in top}
    measures = {"ndcg_cut.10", "recip_rank", "recall.1", "recall.5", "recall.10"}
    return pytrec_eval.RelevanceEvaluator(QRELS, measures).evaluate(run)


@pytest.fixture(scope="module")
def snapshots(tiny_mean_model, tmp_path_factory):
    """Base snapshot, a snapshot after a seeded perturbation of every weight, and both models' embeddings."""
    from sentence_transformers import SentenceTransformer

    run_dir = tmp_path_factory.mktemp("snapshot-reference")
    probe = ProbeSet(TEXTS, LABELS, [str(i) for i in range(len(TEXTS))], "test")
    retrieval = RetrievalSet(QUERIES, DOCS, QRELS, None, {q: [] for q in QUERIES}, "test")
    runner = SnapshotRunner(probe, retrieval, umap=False, batch_size=8, max_attention_texts=len(TEXTS))
    model = load_model(tiny_mean_model)
    base = runner.take(model, 0, tag="base", run_dir=run_dir)
    reference_model = SentenceTransformer(tiny_mean_model, device="cpu")
    before = reference_model.encode(TEXTS, convert_to_numpy=True).astype(np.float64)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for (name, p), (reference_name, q) in zip(model.named_parameters(), reference_model.named_parameters()):
            assert name == reference_name
            noise = 0.05 * torch.randn(p.shape, generator=generator)
            p.add_(noise)
            q.add_(noise)
    moved = runner.take(model, 1, run_dir=run_dir)
    after = reference_model.encode(TEXTS, convert_to_numpy=True).astype(np.float64)
    return base, moved, before, after


def test_embeddings_are_those_sentence_transformers_encodes(snapshots):
    base, moved, before, after = snapshots
    np.testing.assert_allclose(base.arrays["embeddings"], before, atol=1e-5)
    np.testing.assert_allclose(moved.arrays["embeddings"], after, atol=1e-5)
    assert not np.allclose(before, after, atol=1e-3)  # the perturbation moved the space


def test_geometry_against_brute_force_and_libraries(snapshots):
    from scipy.stats import beta, median_abs_deviation
    from sklearn.decomposition import PCA

    for snap, x in zip(snapshots[:2], snapshots[2:]):
        m = snap.metrics
        cosines = pair_cosines(x)
        assert m["geometry/anisotropy"] == pytest.approx(cosines.mean(), abs=1e-5)
        assert m["geometry/pair_cosine_mean"] == pytest.approx(cosines.mean(), abs=1e-5)
        assert m["geometry/pair_cosine_std"] == pytest.approx(cosines.std(), abs=1e-5)
        assert m["geometry/pair_cosine_baseline_std"] == pytest.approx(1 / math.sqrt(x.shape[1]))
        edges = snap.arrays["pair_hist_edges"]
        counts, _ = np.histogram(cosines, bins=edges)
        assert snap.arrays["pair_hist_counts"].tolist() == counts.tolist()
        # uniform on the sphere S^(d-1): (1 + cos) / 2 follows Beta((d - 1) / 2, (d - 1) / 2)
        half = (x.shape[1] - 1) / 2
        np.testing.assert_allclose(
            snap.arrays["pair_hist_baseline"], np.diff(beta.cdf((edges + 1) / 2, half, half)), atol=1e-9
        )
        # rogue dimensions: dimension k's share of the mean pair cosine, sum over pairs i != j of u_ik u_jk
        u = unit(x)
        share = np.array(
            [
                (np.outer(u[:, k], u[:, k]).sum() - u[:, k] @ u[:, k]) / (len(u) * (len(u) - 1))
                for k in range(u.shape[1])
            ]
        )
        positive = np.sort(np.clip(share, 0, None))[::-1]
        assert m["geometry/rogue_top1_share"] == pytest.approx(positive[0] / positive.sum(), abs=1e-5)
        assert m["geometry/rogue_top5_share"] == pytest.approx(positive[:5].sum() / positive.sum(), abs=1e-5)

        # PCA: explained variance from numpy's SVD; component counts from scikit-learn's rule
        sigma = np.linalg.svd(x - x.mean(0), compute_uv=False)
        np.testing.assert_allclose(snap.arrays["pca_cumulative"], np.cumsum(sigma**2) / np.sum(sigma**2), atol=1e-5)
        for tau in (0.90, 0.95, 0.99):
            assert (
                m[f"geometry/id_pca{round(tau * 100)}"] == PCA(n_components=tau, svd_solver="full").fit(x).n_components_
            )
        p = sigma / sigma.sum()
        assert m["geometry/effective_rank"] == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-5)

        # Wang & Isola: uniformity over all pairs (t = 2), alignment over same-label pairs (alpha = 2)
        pairs = [(i, j) for i in range(len(u)) for j in range(i + 1, len(u))]
        uniformity = math.log(np.mean([math.exp(-2 * np.sum((u[i] - u[j]) ** 2)) for i, j in pairs]))
        assert m["geometry/uniformity"] == pytest.approx(uniformity, abs=1e-5)
        same = [np.sum((u[i] - u[j]) ** 2) for i, j in pairs if LABELS[i] == LABELS[j]]
        assert m["geometry/alignment"] == pytest.approx(np.mean(same), abs=1e-5)

        # OOD: cosine distance to the centroid of the unit rows; threshold median + 3 * (1.4826 * MAD)
        centroid = u.mean(0)
        distances = 1 - u @ (centroid / np.linalg.norm(centroid))
        threshold = np.median(distances) + 3 * median_abs_deviation(distances, scale="normal")
        assert m["geometry/ood_threshold"] == pytest.approx(threshold, abs=1e-5)
        assert m["geometry/ood_distance_mean"] == pytest.approx(distances.mean(), abs=1e-5)
        assert m["geometry/ood_fraction"] == pytest.approx(np.mean(distances > threshold))


def test_layers_and_attention_from_the_raw_transformer(snapshots, tiny_mean_model):
    from scipy.stats import entropy
    from transformers import AutoModel, AutoTokenizer

    base = snapshots[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_mean_model)
    bert = AutoModel.from_pretrained(tiny_mean_model, attn_implementation="eager").eval()
    pooled, head_entropy = [], []
    with torch.no_grad():
        for text in TEXTS:  # one at a time: no padding to mask
            output = bert(**tokenizer(text, return_tensors="pt"), output_hidden_states=True, output_attentions=True)
            pooled.append([h[0].mean(0).double().numpy() for h in output.hidden_states])
            head_entropy.append(
                [
                    [entropy(a[0, h].double().numpy(), axis=1).mean() for h in range(a.shape[1])]
                    for a in output.attentions
                ]
            )
    pooled = np.asarray(pooled)  # [texts, layers + 1, hidden]
    for layer in range(pooled.shape[1]):
        assert base.metrics[f"layers/similarity.{layer:02d}"] == pytest.approx(
            pair_cosines(pooled[:, layer]).mean(), abs=1e-5
        )
    head_entropy = np.asarray(head_entropy)  # [texts, layers, heads]
    np.testing.assert_allclose(base.arrays["attention_entropy"], head_entropy.mean(0), atol=1e-5)
    assert base.metrics["attention/entropy_mean"] == pytest.approx(head_entropy.mean(), abs=1e-5)


def test_retrieval_against_pytrec_eval_with_graded_judgements(snapshots):
    for snap, x in zip(snapshots[:2], snapshots[2:]):
        q, d = x[: len(QUERIES)], x[len(QUERIES) :]
        per_query = trec_eval(q, d)
        for ours, theirs in (
            ("ndcg@10", "ndcg_cut_10"),
            ("mrr@10", "recip_rank"),
            ("recall@1", "recall_1"),
            ("recall@5", "recall_5"),
            ("recall@10", "recall_10"),
        ):
            expected = np.mean([per_query[qid][theirs] for qid in QUERIES])
            assert snap.metrics[f"retrieval/{ours}"] == pytest.approx(expected, abs=1e-6), ours
        # rank of the first relevant document, by sorting each query's cosines
        scores = unit(q) @ unit(d).T
        doc_ids = list(DOCS)
        first = [
            min(list(np.argsort(-scores[qi])).index(doc_ids.index(did)) + 1 for did in QRELS[qid])
            for qi, qid in enumerate(QUERIES)
        ]
        assert snap.arrays["first_rank"].tolist() == first
        assert snap.metrics["retrieval/mean_first_rank"] == pytest.approx(np.mean(first))
        assert snap.metrics["retrieval/median_first_rank"] == pytest.approx(np.median(first))
        # no labelled negatives: the closest non-relevant document is the hard negative
        relevant = [[doc_ids.index(did) for did in QRELS[qid]] for qid in QUERIES]
        closest_positive = [scores[qi, rel].max() for qi, rel in enumerate(relevant)]
        closest_negative = [np.delete(scores[qi], rel).max() for qi, rel in enumerate(relevant)]
        assert snap.metrics["retrieval/positive_sim"] == pytest.approx(np.mean(closest_positive), abs=1e-5)
        assert snap.metrics["retrieval/negative_sim"] == pytest.approx(np.mean(closest_negative), abs=1e-5)
        assert snap.metrics["retrieval/hard_negative_gap"] == pytest.approx(
            np.mean(closest_positive) - np.mean(closest_negative), abs=1e-5
        )
    base, moved = snapshots[:2]
    assert moved.metrics["drift/base/delta/ndcg@10"] == pytest.approx(
        moved.metrics["retrieval/ndcg@10"] - base.metrics["retrieval/ndcg@10"], abs=1e-12
    )


def test_drift_against_cka_knn_wasserstein_and_procrustes_formulas(snapshots):
    from scipy.stats import wasserstein_distance

    base, moved, x, y = snapshots
    m = moved.metrics
    cka = linear_cka(x - x.mean(0), y - y.mean(0))
    assert m["drift/base/cka"] == pytest.approx(cka, abs=1e-5)
    assert m["drift/base/cka"] < 0.999  # the reference is not trivially 1
    overlap = np.mean([len(a & b) / 10 for a, b in zip(knn_sets(x, 10), knn_sets(y, 10))])
    assert m["drift/base/knn_overlap@10"] == pytest.approx(overlap)
    cx, cy = pair_cosines(x), pair_cosines(y)  # 190 pairs: all of them are used, no sampling
    w1 = wasserstein_distance(cx, cy)
    assert m["drift/base/similarity_wasserstein"] == pytest.approx(w1, abs=1e-5)
    assert m["drift/base/similarity_mean_shift"] == pytest.approx(cy.mean() - cx.mean(), abs=1e-5)
    assert m["drift/base/similarity_pair_change"] == pytest.approx(np.abs(cy - cx).mean(), abs=1e-5)
    assert m["drift/base/anisotropy_delta"] == pytest.approx(cy.mean() - cx.mean(), abs=1e-5)
    assert m["drift/base/score"] == pytest.approx(((1 - cka) + (1 - overlap) + min(1.0, w1)) / 3, abs=1e-5)

    # per-label centroid shift after the orthogonal Procrustes rotation R = U V^T of svd(yu^T xu)
    xu, yu = unit(x), unit(y)
    left, _, right = np.linalg.svd(yu.T @ xu)
    aligned = yu @ (left @ right)
    shifts = []
    for label in sorted(set(LABELS)):
        rows = np.array(LABELS) == label
        a, b = xu[rows].mean(0), aligned[rows].mean(0)
        shifts.append(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert m["drift/base/centroid_shift_cosine_mean"] == pytest.approx(np.mean(shifts), abs=1e-6)
    assert m["drift/base/centroid_shift_cosine_max"] == pytest.approx(np.max(shifts), abs=1e-6)
    assert moved.details["diff_base"]["centroid_shift"] == pytest.approx(
        dict(zip(sorted(set(LABELS)), shifts)), abs=1e-6
    )
