"""Drift explained by the base SAE (aquin_monitor.sae.drift): each pair's cosine change splits exactly into
feature, bias and error terms (a hand-checked case, and random ones against numpy); the per-feature paired
test matches the signed-rank normal approximation and Benjamini-Hochberg done by hand, finds a planted
shift and stays quiet on null comparisons; the snapshot runner writes it into snapshot.json."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm, rankdata
from tiny_sets import DOCS, QUERIES, probe_and_retrieval

from aquin_monitor import snapshot_keys as keys
from aquin_monitor.data import RetrievalSet
from aquin_monitor.encoders import load_model
from aquin_monitor.sae.drift import (
    PairSet,
    evenly_spaced,
    explain_drift,
    explain_pair,
    explanation_lines,
    feature_shift,
    most_changed_probe_pairs,
    sparse_codes,
)
from aquin_monitor.sae.model import SparseAutoencoder
from aquin_monitor.snapshot_record import Snapshot
from aquin_monitor.snapshot_runner import SnapshotRunner


def _identity_sae(d: int, k: int, b_dec=None) -> SparseAutoencoder:
    """A SAE whose features are the coordinate axes: z = TopK(ReLU(x − b_dec)), x̂ = z + b_dec."""
    sae = SparseAutoencoder(d, d, k)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.eye(d))
        sae.encoder.bias.zero_()
        sae.W_dec.copy_(torch.eye(d))
        sae.b_dec.copy_(torch.zeros(d) if b_dec is None else torch.tensor(b_dec, dtype=torch.float32))
    return sae.eval()


def _cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_hand_checked_pair_split():
    # d = 2, features = the axes, k = 1, b_dec = (0, 0.1); a = (1, 0) throughout, b turns from (0.6, 0.8) to (0.8, 0.6).
    # before: z(a) = (1, 0), e_a = (0, -0.1); z(b) = TopK(0.6, 0.7) = (0, 0.7), e_b = (0.6, 0)
    #   phi_0 = ½(1·0.6 + 0·1) = 0.3, phi_1 = ½(0·0.8 + 0.7·0) = 0, bias = ½(0.08 + 0) = 0.04,
    #   error = ½(−0.08 + 0.6) = 0.26; 0.3 + 0 + 0.04 + 0.26 = 0.6 = cos
    # after: z(b) = TopK(0.8, 0.5) = (0.8, 0), e_b = (0, 0.5)
    #   phi_0 = ½(1·0.8 + 0.8·1) = 0.8, bias = ½(0.06 + 0) = 0.03, error = ½(−0.06 + 0) = −0.03; sum 0.8 = cos
    # change: 0.2 = Δphi_0 0.5 + Δbias −0.01 + Δerror −0.29
    sae = _identity_sae(2, 1, b_dec=[0.0, 0.1])
    a = np.array([1.0, 0.0], dtype=np.float32)
    pair = explain_pair(
        sae, (a, np.array([0.6, 0.8], np.float32)), (a, np.array([0.8, 0.6], np.float32)), labels=["x", "y"]
    )
    assert pair.cosine_before == pytest.approx(0.6, abs=1e-7) and pair.cosine_after == pytest.approx(0.8, abs=1e-7)
    assert pair.delta == pytest.approx(0.2, abs=1e-7)
    assert [(t.feature, t.label) for t in pair.terms] == [(0, "x"), (1, "y")]
    assert pair.terms[0].delta_phi == pytest.approx(0.5, abs=1e-7)
    assert (pair.terms[0].phi_before, pair.terms[0].phi_after) == pytest.approx((0.3, 0.8), abs=1e-7)
    assert pair.terms[1].delta_phi == pytest.approx(0.0, abs=1e-7)
    assert pair.bias_delta == pytest.approx(-0.01, abs=1e-7)
    assert pair.error_delta == pytest.approx(-0.29, abs=1e-7)
    assert pair.error_share == pytest.approx(0.29 / (0.5 + 0.01 + 0.29), abs=1e-6)
    assert abs(pair.closure) < 1e-12


def _numpy_split(sae, a, b):
    """cos(a, b) = Σφ + β + ε computed in numpy from the dense code (DESIGN.md's definition), term by term."""
    W, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    with torch.no_grad():
        z = sae.encode(torch.tensor(np.stack([a, b]), dtype=torch.float32)).double().numpy()
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua, ub = a / na, b / nb
    ea, eb = a - (z[0] @ W + b_dec), b - (z[1] @ W + b_dec)
    phi = 0.5 * (z[0] * (W @ ub) / na + z[1] * (W @ ua) / nb)
    return phi, 0.5 * (b_dec @ ub / na + b_dec @ ua / nb), 0.5 * (ea @ ub / na + eb @ ua / nb)


def test_random_pair_changes_close_within_1e6_and_match_numpy():
    rng = np.random.default_rng(1)
    sae = SparseAutoencoder(24, 96, 6, seed=3)
    with torch.no_grad():
        sae.b_dec.copy_(torch.tensor(rng.normal(0, 0.1, 24), dtype=torch.float32))
    before = rng.normal(size=(30, 24)).astype(np.float32)  # any norm: the split divides by it
    after = (before + 0.5 * rng.normal(size=(30, 24))).astype(np.float32)
    result = explain_drift(sae, before, after, [str(i) for i in range(30)], top_pairs=8, top_terms=3)
    assert result.pair_source == "probe" and result.candidate_pairs == 30 * 29 // 2 and len(result.pairs) == 8
    for pair in result.pairs:
        i, j = pair.rows
        measured = _cos(after[i], after[j]) - _cos(before[i], before[j])
        listed = sum(t.delta_phi for t in pair.terms) + pair.other_features_delta
        assert abs(listed + pair.bias_delta + pair.error_delta - measured) < 1e-6
        assert abs(pair.delta - measured) < 1e-12 and abs(pair.closure) < 1e-12
        # the numpy reference encodes in a batch of two: its float32 activations may differ in the last bits
        phi_b, bias_b, err_b = _numpy_split(sae, before[i], before[j])
        phi_a, bias_a, err_a = _numpy_split(sae, after[i], after[j])
        assert pair.bias_delta == pytest.approx(bias_a - bias_b, abs=1e-12)
        assert pair.error_delta == pytest.approx(err_a - err_b, abs=1e-6)
        assert pair.feature_delta == pytest.approx((phi_a - phi_b).sum(), abs=1e-6)
        for term in pair.terms:
            assert term.delta_phi == pytest.approx(phi_a[term.feature] - phi_b[term.feature], abs=1e-6)
        assert abs(pair.terms[0].delta_phi) == pytest.approx(np.abs(phi_a - phi_b).max(), abs=1e-6)
    # the listed pairs are those whose cosine changed most among all pairs
    unit_b, unit_a = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (before.astype(float), after.astype(float)))
    change = np.abs(unit_a @ unit_a.T - unit_b @ unit_b.T)[np.triu_indices(30, 1)]
    assert [abs(p.delta) for p in result.pairs] == pytest.approx(np.sort(change)[::-1][:8], abs=1e-9)


def test_retrieval_pairs_are_ranked_by_change_and_split():
    rng = np.random.default_rng(2)
    sae = SparseAutoencoder(16, 64, 4, seed=0)
    q_before, d_before = rng.normal(size=(2, 12, 16)).astype(np.float32)
    d_before[5] = q_before[5] + 0.1 * rng.normal(size=16)  # pair 5 starts close (cos near 1) ...
    q_after = q_before + 0.1 * rng.normal(size=(12, 16)).astype(np.float32)
    d_after = d_before.copy()
    d_after[5] = -d_before[5]  # ... and its document flips: the largest change, near -2
    texts = [(f"q{k}", f"d{k}") for k in range(12)]
    pairs = PairSet(q_before, d_before, q_after, d_after, texts, [(k, k) for k in range(12)])
    probe = rng.normal(size=(20, 16)).astype(np.float32)
    result = explain_drift(sae, probe, probe, [str(i) for i in range(20)], pairs=pairs, top_pairs=3)
    assert result.pair_source == "retrieval" and result.candidate_pairs == 12
    assert result.pairs[0].texts == ["q5", "d5"] and result.pairs[0].rows == [5, 5]
    expected = -_cos(q_after[5], d_before[5]) - _cos(q_before[5], d_before[5])
    assert result.pairs[0].delta == pytest.approx(expected, abs=1e-9) and expected < -1.9
    assert result.features.n_tested == 0 and result.features.n_moved == 0  # the probe did not move


def _signed_rank_p(delta: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value by the normal approximation, zeros dropped (Wilcoxon 1945)."""
    d = delta[delta != 0]
    n = len(d)
    ranks = rankdata(np.abs(d))
    t_plus = ranks[d > 0].sum()
    _, counts = np.unique(np.abs(d), return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - (counts**3 - counts).sum() / 48
    return float(2 * norm.sf(abs(t_plus - n * (n + 1) / 4) / np.sqrt(var)))


def _benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    order = np.argsort(p)
    m = len(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1)
    return out


def test_feature_test_matches_signed_rank_and_bh_by_hand():
    rng = np.random.default_rng(3)
    n, f = 50, 12
    before = np.where(rng.random((n, f)) < 0.4, rng.random((n, f)), 0.0)
    after = np.where(rng.random((n, f)) < 0.4, rng.random((n, f)), 0.0)
    after[:, 0] = before[:, 0] + rng.uniform(0.05, 0.2, n)  # a clear rise
    after[:, 1] = before[:, 1]  # unchanged: not tested
    shift = feature_shift(before, after, alpha=1.0, top=f)  # alpha 1: every tested feature listed
    delta = after - before
    tested = [j for j in range(f) if np.any(delta[:, j] != 0)]
    assert shift.n_tested == len(tested) == f - 1 and shift.n_texts == n
    p = np.array([_signed_rank_p(delta[:, j]) for j in tested])
    q = _benjamini_hochberg(p)
    listed = {m.feature: m for m in shift.moved}
    for j, pj, qj in zip(tested, p, q):
        assert listed[j].p_value == pytest.approx(pj, rel=1e-9)
        assert listed[j].q_value == pytest.approx(qj, rel=1e-9)
        assert listed[j].mean_delta == pytest.approx(delta[:, j].mean())
        assert listed[j].firing_before == pytest.approx((before[:, j] > 0).mean())
        assert listed[j].texts_changed == np.count_nonzero(delta[:, j])
    assert [m.feature for m in shift.moved] == sorted(tested, key=lambda j: (-abs(delta[:, j].mean()), j))
    strict = feature_shift(before, after)
    assert strict.n_moved == int(np.sum(q < 0.05)) and strict.moved[0].feature == 0


def _planted(seed: int, shift: float, n: int = 80, d: int = 16):
    """Embeddings as sparse non-negative combinations of the axes, seen twice through independent noise;
    ``shift`` is added to axis 3 in the second view."""
    rng = np.random.default_rng(seed)
    codes = np.where(rng.random((n, d)) < 0.25, rng.uniform(0.5, 1.5, (n, d)), 0.0)
    before = codes + 0.05 * rng.normal(size=(n, d))
    after = codes + 0.05 * rng.normal(size=(n, d))
    after[:, 3] += shift
    return before.astype(np.float32), after.astype(np.float32)


def test_planted_shift_is_found_and_null_comparisons_stay_quiet():
    sae = _identity_sae(16, 4)
    labels = [f"axis {i}" for i in range(16)]
    found, false_alarm_runs = 0, 0
    runs = 40
    for seed in range(runs):
        before, after = _planted(seed, 0.0)
        null = feature_shift(sparse_codes(sae, before), sparse_codes(sae, after))
        false_alarm_runs += null.n_moved > 0
        before, after = _planted(seed, 0.4)
        planted = feature_shift(sparse_codes(sae, before), sparse_codes(sae, after), labels=labels)
        found += bool(planted.moved) and planted.moved[0].feature == 3 and planted.moved[0].mean_delta > 0
    # BH at 0.05 under the global null bounds the chance of any false discovery by 0.05 (2 of 40 expected)
    assert false_alarm_runs <= 5, false_alarm_runs
    assert found == runs
    assert planted.moved[0].label == "axis 3" and planted.moved[0].firing_after > planted.moved[0].firing_before


def test_bad_shapes_and_helpers():
    sae = SparseAutoencoder(8, 16, 2)
    x = np.zeros((5, 8), np.float32)
    with pytest.raises(ValueError, match="one shape"):
        explain_drift(sae, x, x[:4], ["t"] * 5)
    with pytest.raises(ValueError, match="8"):
        explain_drift(sae, np.zeros((5, 7), np.float32), np.zeros((5, 7), np.float32), ["t"] * 5)
    with pytest.raises(ValueError, match="one shape"):
        feature_shift(np.zeros((3, 2)), np.zeros((3, 3)))
    assert evenly_spaced(1000, 3).tolist() == [0, 500, 999]
    pairs, candidates = most_changed_probe_pairs(np.eye(4), np.eye(4), top=2, max_rows=3)
    assert candidates == 3 and pairs == []  # nothing changed: nothing listed


def test_explanation_lines_keep_hostile_text_plain():
    sae = _identity_sae(4, 2)
    before = np.abs(np.random.default_rng(0).normal(size=(6, 4))).astype(np.float32)
    after = before[:, ::-1].copy()
    texts = ["<script>alert(1)</script>\nline", "$$ \\frac{a}{b} $$", "c", "d", "e", "f"]
    result = explain_drift(sae, before, after, texts, labels=["<b>x</b>", None, "$$", "y"], top_pairs=2)
    lines = explanation_lines(result.details())
    assert all("\n" not in line for line in lines)
    assert any("Δcos = Σ Δφ + Δbias + Δerror" in line for line in lines)


# ------------------------------------------------------------------ the snapshot runner


def _nudged(model, scale: float):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def test_runner_explains_drift_against_base_in_snapshot_json(tiny_mean_model, tmp_path):
    torch.manual_seed(0)
    model = load_model(tiny_mean_model)
    dim = model.get_embedding_dimension()
    probe, retrieval = probe_and_retrieval()
    labels = [f"<i>feature {i}</i>" for i in range(64)]
    runner = SnapshotRunner(probe, retrieval, umap=False, sae=SparseAutoencoder(dim, 64, 8), sae_labels=labels)
    base = runner.take(model, 0, tag="base", run_dir=tmp_path)
    assert base.arrays[keys.SAE_PAIR_QUERIES].shape == (6, dim)
    first = runner.take(_nudged(model, 0.05), 1, run_dir=tmp_path)
    moved = runner.take(_nudged(model, 0.05), 2, run_dir=tmp_path)
    assert {"drift/base/sae_features_moved", "drift/previous/sae_features_moved"} <= set(moved.metrics)
    assert 0 <= moved.metrics["drift/base/sae_pair_error_share"] <= 1
    saved = Snapshot.load(tmp_path / "snapshots" / "2")
    features, pairs = saved.details[keys.SAE_DRIFT_FEATURES], saved.details[keys.SAE_DRIFT_PAIRS]
    assert features["n_texts"] == 18 and features["n_moved"] == moved.metrics["drift/base/sae_features_moved"]
    assert pairs["source"] == "retrieval" and pairs["candidates"] == 6 and len(pairs["pairs"]) == 6
    q_texts, d_texts = list(QUERIES.values()), list(DOCS.values())
    for pair in pairs["pairs"]:
        q, d = pair["rows"]
        assert pair["texts"] == [q_texts[q], d_texts[d]]
        row_q, row_d = probe.texts.index(q_texts[q]), probe.texts.index(d_texts[d])  # the probe holds the pair texts
        x, y = base.arrays[keys.EMBEDDINGS], moved.arrays[keys.EMBEDDINGS]
        measured = _cos(y[row_q], y[row_d]) - _cos(x[row_q], x[row_d])
        terms = sum(t["delta_phi"] for t in pair["terms"]) + pair["other_features_delta"]
        assert abs(terms + pair["bias_delta"] + pair["error_delta"] - measured) < 1e-6
        assert all(t["label"] == labels[t["feature"]] for t in pair["terms"])
    # the explanation is the one the runner method gives (one computation, one home)
    direct = runner.explain_sae_drift(base, moved)
    assert direct is not None and direct.details()[keys.SAE_DRIFT_FEATURES] == features
    # the first checkpoint's previous snapshot is the base: one comparison, no drift/previous
    assert "drift/base/sae_features_moved" in first.metrics and "drift/previous/sae_features_moved" not in first.metrics


def test_report_shows_the_explanation_with_user_text_escaped(tiny_mean_model, tmp_path):
    from aquin_monitor.report import render_report

    torch.manual_seed(1)
    model = load_model(tiny_mean_model)
    dim = model.get_embedding_dimension()
    evil = "<script>alert('x')</script>"
    queries = {f"q{i}": f"{evil} query {i}" for i in range(4)}
    docs = {f"d{i}": f"document $$ {i} & more" for i in range(6)}
    retrieval = RetrievalSet(queries, docs, {f"q{i}": {f"d{i}": 1} for i in range(4)}, None, {}, "t")
    labels = [f"<img src=x onerror=alert({i})>" for i in range(32)]
    runner = SnapshotRunner(None, retrieval, umap=False, sae=SparseAutoencoder(dim, 32, 4), sae_labels=labels)
    runner.take(model, 0, tag="base", run_dir=tmp_path)
    snap = runner.take(_nudged(model, 0.1), 1, run_dir=tmp_path)
    html = render_report(tmp_path)
    assert "Drift explained by the base SAE" in html
    assert evil not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; query" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(" in html
    pairs = snap.details[keys.SAE_DRIFT_PAIRS]["pairs"]
    assert len(pairs) == 4 and html.count("of the split)") == 4  # one table row per listed pair


def test_runner_without_retrieval_explains_probe_pairs_and_a_failure_is_isolated(tiny_mean_model, monkeypatch):
    model = load_model(tiny_mean_model)
    dim = model.get_embedding_dimension()
    probe, _ = probe_and_retrieval()
    runner = SnapshotRunner(probe, umap=False, sae=SparseAutoencoder(dim, 32, 4))
    runner.take(model, 0, tag="base")
    snap = runner.take(_nudged(model, 0.05), 1)
    assert snap.details[keys.SAE_DRIFT_PAIRS]["source"] == "probe"
    assert snap.details[keys.SAE_DRIFT_PAIRS]["candidates"] == 18 * 17 // 2

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("aquin_monitor.sae.drift.feature_shift", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        later = runner.take(_nudged(model, 0.05), 2)
    assert any("SAE drift explanation" in str(w.message) and "boom" in str(w.message) for w in caught)
    assert "drift/base/cka" in later.metrics and "sae/fvu" in later.metrics  # the rest of the snapshot is kept
    assert keys.SAE_DRIFT_FEATURES not in later.details


# ------------------------------------------------------------------ aquin-monitor diff --sae


def _write_jsonl(path, records):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _cli_files(tmp_path):
    probe = [f"sentence {i} about <script>topic</script> {i % 4}" for i in range(16)]
    pairs = [{"query": f"question about topic {i}", "document": probe[i]} for i in range(6)]
    return (
        _write_jsonl(tmp_path / "probe.jsonl", [{"text": t} for t in probe]),
        _write_jsonl(tmp_path / "pairs.jsonl", pairs),
        probe,
        pairs,
    )


def test_cli_diff_sae_prints_and_writes_the_explanation(capsys, tmp_path, tiny_mean_model, tiny_cls_model):
    import json

    from sentence_transformers import SentenceTransformer

    from aquin_monitor.cli import main

    probe_file, pairs_file, _, pairs = _cli_files(tmp_path)
    folder = tmp_path / "sae"
    SparseAutoencoder(32, 64, 4, seed=1).save(folder)
    (folder / "features.json").write_text(
        json.dumps({"features": [{"id": i, "label": f"$$ f{i} <b>"} for i in range(64)]}), encoding="utf-8"
    )
    argv = ["diff", tiny_mean_model, tiny_cls_model, "--probe", probe_file, "--pairs", pairs_file, "--sae", str(folder)]
    assert main([*argv, "--no-progress", "--json", str(tmp_path / "diff.json")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "diff.json").read_text(encoding="utf-8"))
    assert "drift/sae_features_moved" in result["metrics"] and "drift/sae_pair_error_share" in result["metrics"]
    assert "SAE features moved (q < 0.05)" in out and "Δcos = Σ Δφ + Δbias + Δerror" in out
    listed = result["details"][keys.SAE_DRIFT_PAIRS]
    assert listed["source"] == "retrieval" and listed["candidates"] == 6
    base, other = (SentenceTransformer(m, device="cpu") for m in (tiny_mean_model, tiny_cls_model))
    for pair in listed["pairs"]:
        q, d = pair["texts"]
        assert [q, d] in [[p["query"], p["document"]] for p in pairs]
        measured = _cos(*other.encode([q, d])) - _cos(*base.encode([q, d]))
        terms = sum(t["delta_phi"] for t in pair["terms"]) + pair["other_features_delta"]
        assert abs(terms + pair["bias_delta"] + pair["error_delta"] - measured) < 1e-5  # float32 encoders, two runs
        assert all(t["label"] == f"$$ f{t['feature']} <b>" for t in pair["terms"])
    assert result["metrics"]["drift/sae_features_moved"] == result["details"][keys.SAE_DRIFT_FEATURES]["n_moved"]


def test_cli_diff_bad_sae_exits_2_before_any_model_loads(capsys, tmp_path, tiny_mean_model, monkeypatch):
    from aquin_monitor import encoders
    from aquin_monitor.cli import main

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the SAE was checked")

    monkeypatch.setattr(encoders, "load_model", no_loading)
    probe_file, pairs_file, _, _ = _cli_files(tmp_path)
    base = ["diff", tiny_mean_model, tiny_mean_model, "--probe", probe_file, "--no-progress"]
    # the shipped SAE reads 384-d embeddings, the tiny model outputs 32
    assert main([*base, "--sae", "default"]) == 2
    err = capsys.readouterr().err
    assert "cfg.json" in err and "384" in err and "32" in err and len(err.strip().splitlines()) == 1
    assert main([*base, "--sae", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cfg.json").write_text("{not json", encoding="utf-8")
    assert main([*base, "--sae", str(broken)]) == 2
    assert "cfg.json" in capsys.readouterr().err
