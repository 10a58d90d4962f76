"""Snapshots: every signal from one pass, saved atomically, diffed; LoRA models are never mutated."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from tiny_sets import probe_and_retrieval

from aquin_monitor import snapshot_keys
from aquin_monitor.encoders import load_model
from aquin_monitor.snapshot_record import Snapshot, diff, list_snapshots
from aquin_monitor.snapshot_runner import SnapshotRunner


class _Collect:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append((name, a))


def test_snapshot_signals_match_direct_computation(tiny_mean_model, tmp_path):
    model = load_model(tiny_mean_model)
    probe, retrieval = probe_and_retrieval()
    runner = SnapshotRunner(probe, retrieval, umap=True, batch_size=4, max_attention_texts=8)
    sink = _Collect()
    snap = runner.record(model, 0, tag="base", run_dir=tmp_path, sinks=[sink], strict=True)
    emb = SentenceTransformer(tiny_mean_model, device="cpu").encode(probe.texts).astype(np.float64)
    np.testing.assert_allclose(snap.arrays["embeddings"], emb, atol=1e-5)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = unit @ unit.T
    assert snap.metrics["geometry/anisotropy"] == pytest.approx((cos.sum() - np.trace(cos)) / (18 * 17), abs=1e-5)
    # one relevant document per query (d_i for q_i): NDCG@10 = 1/log2(1 + rank), RR = 1/rank
    scores = cos[:6, 6:]
    ranks = np.array([1 + np.sum(scores[i] > scores[i, i]) for i in range(6)])
    assert snap.metrics["retrieval/ndcg@10"] == pytest.approx(
        np.mean(np.where(ranks <= 10, 1 / np.log2(1 + ranks), 0.0))
    )
    assert snap.metrics["retrieval/mrr@10"] == pytest.approx(np.mean(np.where(ranks <= 10, 1 / ranks, 0.0)))
    assert snap.metrics["retrieval/recall@1"] == pytest.approx(np.mean(ranks == 1))
    assert snap.arrays["attention_entropy"].shape == (2, 4)  # 2 layers x 4 heads, from the first 8 texts
    assert snap.arrays["layer_similarity"].shape == (3,) and snap.arrays["umap"].shape == (18, 2)
    assert {"log_summary", "log_embeddings", "log_figure"} <= {c[0] for c in sink.calls}
    assert [p.name for p in list_snapshots(tmp_path)] == ["0"]
    assert not [p for p in (tmp_path / "snapshots").iterdir() if p.name.startswith(".")]  # no temp folders left
    loaded = Snapshot.load(tmp_path / "snapshots" / "0")
    assert loaded.tag == "base" and loaded.metrics == pytest.approx(snap.metrics, nan_ok=True)
    np.testing.assert_array_equal(loaded.arrays["embeddings"], snap.arrays["embeddings"])


def test_diff_against_base_and_previous(tiny_mean_model, tmp_path):
    model = load_model(tiny_mean_model)
    probe, retrieval = probe_and_retrieval()
    runner = SnapshotRunner(probe, retrieval, umap=False)
    base = runner.take(model, 0, tag="base", run_dir=tmp_path)
    same = runner.take(model, 1, run_dir=tmp_path)
    assert same.metrics["drift/base/cka"] == pytest.approx(1.0) and same.metrics["drift/base/score"] == pytest.approx(
        0.0, abs=1e-9
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = runner.take(model, 2, run_dir=tmp_path)
    x, y = (s.arrays["embeddings"].astype(np.float64) for s in (base, moved))
    xc, yc = x - x.mean(0), y - y.mean(0)  # linear CKA, Kornblith et al. 2019
    cka = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert moved.metrics["drift/base/cka"] == pytest.approx(cka, abs=1e-6) and cka < 0.999
    assert moved.metrics["drift/base/score"] > 0.0
    assert "drift/previous/cka" in moved.metrics
    assert {
        "centroid_base_2d",
        "centroid_now_2d",
        "rank_before",
        "rank_after",
        "sim_base_values",
    } <= moved.arrays.keys()
    direct = diff(base, moved)
    assert direct.metrics["drift/base/cka"] == pytest.approx(moved.metrics["drift/base/cka"])
    # every array and detail the runner and diff wrote is a declared key (the readers look them up by these names)
    declared = {key for family in snapshot_keys.ARRAY_FAMILIES.values() for key in family}
    assert set(moved.arrays) <= declared, set(moved.arrays) - declared
    assert set(moved.details) <= set(snapshot_keys.DETAIL_KEYS), set(moved.details) - set(snapshot_keys.DETAIL_KEYS)
    assert {snapshot_keys.FIRST_RANK, snapshot_keys.RANK_BEFORE, snapshot_keys.PAIR_HIST_COUNTS} <= set(moved.arrays)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_diff_figures_show_the_pairs_and_centroids_the_metrics_measured():
    from scipy.stats import wasserstein_distance
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(3)
    labels = np.repeat(["a", "b", "c"], 100)
    x = (rng.normal(size=(300, 8)) + np.repeat(rng.normal(size=(3, 8)) * 2, 100, axis=0)).astype(np.float32)
    y = (x + 0.5 * rng.normal(size=x.shape) + 0.3).astype(np.float32)
    first_before, first_after = np.array([1.0, 4.0, np.nan, 2.0]), np.array([2.0, 1.0, np.nan, 2.0])
    before = Snapshot(
        step=0, tag="base", model="m", arrays={"embeddings": x, "labels": labels, "first_rank": first_before}
    )
    after = Snapshot(
        step=5, tag="checkpoint", model="m", arrays={"embeddings": y, "labels": labels, "first_rank": first_after}
    )
    result = diff(before, after, max_pairs=700, seed=4)

    # pairs: the documented sampler (i uniform, j uniform among the others), 700 of 44,850
    sampler = np.random.default_rng(4)
    i = sampler.integers(0, 300, size=700)
    j = sampler.integers(0, 299, size=700)
    j = j + (j >= i)
    xu, yu = _unit(x), _unit(y)
    cos_x, cos_y = np.sum(xu[i] * xu[j], axis=1), np.sum(yu[i] * yu[j], axis=1)
    np.testing.assert_allclose(result.arrays["sim_base_values"], cos_x, atol=1e-6)
    np.testing.assert_allclose(result.arrays["sim_now_values"], cos_y, atol=1e-6)
    assert result.metrics["drift/base/similarity_wasserstein"] == pytest.approx(
        wasserstein_distance(cos_x, cos_y), abs=1e-9
    )

    # the mean shift is exact over all pairs, not the sample's
    def mean_cosine(u):
        return (np.sum(u @ u.T) - len(u)) / (len(u) * (len(u) - 1))

    assert result.metrics["drift/base/similarity_mean_shift"] == pytest.approx(
        mean_cosine(yu) - mean_cosine(xu), abs=1e-9
    )

    # centroids: Procrustes by SVD, then both sets of centroids on x's first two principal axes
    u, _, vt = np.linalg.svd(yu.T @ xu)
    aligned = yu @ (u @ vt)
    cb = np.stack([xu[labels == c].mean(0) for c in "abc"])
    ca = np.stack([aligned[labels == c].mean(0) for c in "abc"])
    axes = PCA(n_components=2, svd_solver="full").fit(xu).components_
    ref_b, ref_a = cb @ axes.T, ca @ axes.T
    signs = np.sign(np.sum(result.arrays["centroid_base_2d"] * ref_b, axis=0))  # an axis is defined up to its sign
    np.testing.assert_allclose(result.arrays["centroid_base_2d"], ref_b * signs, atol=1e-5)
    np.testing.assert_allclose(result.arrays["centroid_now_2d"], ref_a * signs, atol=1e-5)
    assert result.arrays["centroid_labels"].tolist() == ["a", "b", "c"]
    cosine_shift = 1 - np.sum(cb * ca, axis=1) / (np.linalg.norm(cb, axis=1) * np.linalg.norm(ca, axis=1))
    assert [result.details["centroid_shift"][c] for c in "abc"] == pytest.approx(cosine_shift, abs=1e-9)

    # first ranks, hand-checked: changes +1, -3, 0 over the three queries with a rank on both sides
    assert result.metrics["drift/base/rank_improved_fraction"] == pytest.approx(1 / 3)
    assert result.metrics["drift/base/rank_worsened_fraction"] == pytest.approx(1 / 3)
    assert result.metrics["drift/base/rank_change_median"] == 0.0
    assert result.arrays["rank_before"] is first_before


def test_lora_snapshot_uses_merged_copy_and_leaves_training_model_alone(tiny_lora, tmp_path):
    base, adapter = tiny_lora
    model = load_model(base, adapter=adapter)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe, _ = probe_and_retrieval()
    snap = SnapshotRunner(probe, umap=False).take(model, 0, tag="base")
    from peft import PeftModel

    reference = SentenceTransformer(base, device="cpu")  # peft's own merge, on a separate copy
    reference[0].auto_model = PeftModel.from_pretrained(reference[0].auto_model, adapter).merge_and_unload()
    np.testing.assert_allclose(snap.arrays["embeddings"], reference.encode(probe.texts), atol=1e-5)
    after = dict(model.named_parameters())
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert any("lora_A" in n and p.requires_grad for n, p in model.named_parameters())


def test_failed_snapshot_warns_and_keeps_going(tiny_mean_model, tmp_path):
    runner = SnapshotRunner(["a", "b", "c"], umap=False)
    with pytest.warns(RuntimeWarning, match="snapshot at step 3 failed"):
        assert runner.record(object(), 3, run_dir=tmp_path) is None
    with pytest.raises(AttributeError):  # object() is no model: strict re-raises the encoder's own error
        runner.record(object(), 3, run_dir=tmp_path, strict=True)
    assert list_snapshots(tmp_path) == []


def test_exact_knn_matches_sklearn_brute_force(monkeypatch):
    from sklearn.neighbors import NearestNeighbors

    from aquin_monitor.signals import arrays
    from aquin_monitor.signals.neighbours import exact_knn

    x = np.random.default_rng(0).normal(size=(300, 24))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    monkeypatch.setattr(arrays, "BLOCK_ELEMENTS", 64 * 300)  # blocks of 64 rows: several, the last one partial
    indices, distances = exact_knn(unit, 15)
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=15, algorithm="brute").fit(unit).kneighbors(unit)
    assert np.array_equal(indices, ref_idx)
    np.testing.assert_allclose(distances, ref_dist, atol=1e-7)
    assert np.array_equal(exact_knn(unit[:5], 5)[0][:, 0], np.arange(5))  # k = n: every row, itself first


def test_umap_with_exact_neighbours_reproduces_umaps_exact_path():
    umap = pytest.importorskip("umap")
    from aquin_monitor.snapshot_runner import umap_2d

    rng = np.random.default_rng(1)
    emb = (rng.normal(size=(150, 16)) + 3 * rng.integers(0, 3, size=(150, 1))).astype(np.float32)
    unit = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float64)
    distances = np.sqrt(np.clip(2.0 - 2.0 * unit @ unit.T, 0.0, None))
    np.fill_diagonal(distances, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap: random_state forces one thread
        ref = umap.UMAP(
            n_components=2, n_neighbors=15, n_epochs=100, metric="precomputed", random_state=0, init="spectral"
        ).fit_transform(distances)
    np.testing.assert_array_equal(umap_2d(emb, 0), ref.astype(np.float32))


def test_each_snapshot_says_what_it_computes_as_it_starts_and_its_time_as_it_ends(tiny_mean_model, capsys):
    """Issue 25 point 4: a snapshot in a training run worked for minutes without a line."""
    import re

    probe, retrieval = probe_and_retrieval()
    model = load_model(tiny_mean_model)
    capsys.readouterr()  # the model's loading bar
    runner = SnapshotRunner(probe, retrieval, umap=False, max_attention_texts=4)
    runner.take(model, 7, tag="checkpoint")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == (
        "aquin-monitor: snapshot at step 7 (checkpoint): probe pass over 18 texts (hidden states, attention of 4); "
        "retrieval: 6 queries, 12 documents"
    )
    assert re.fullmatch(r"aquin-monitor: snapshot at step 7 \(checkpoint\) done in \d+\.\d s", lines[-1]), lines
    SnapshotRunner(probe, retrieval, umap=False, announce=False).take(model, 8)
    assert capsys.readouterr().err == ""
