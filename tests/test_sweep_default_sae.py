"""scripts/sweep_default_sae.py: the selection rule on hand-checked rows, one configuration trained and evaluated
end to end on a planted corpus (closed-form numbers), and the resumable table on disk."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sae_planted import D_IN, LATENTS, K, planted_sae

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sweep_default_sae.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep_default_sae", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sweep_default_sae"] = module
    spec.loader.exec_module(module)
    return module


def _row(name, dead, kept, probing=None):
    return {"name": name, "dead_fraction": dead, "retrieval_kept": kept, "probing": probing}


def _probing(acc):
    return {"banking77": {"sae@1": acc, "sae@5": acc, "sae@20": acc, "embedding": 0.99}}


def test_score_weighs_probing_and_retrieval_kept_equally(sweep):
    row = _row("L1536-k32", 0.0, 0.9, {"a": {"sae@1": 0.5, "sae@5": 0.7, "reconstruction": 0.1}, "b": {"sae@1": 0.9}})
    # mean over sae@ cells only: (0.5 + 0.7 + 0.9) / 3 = 0.7; score = (0.7 + 0.9) / 2
    assert sweep.probing_mean(row) == pytest.approx(0.7)
    assert sweep.score(row) == pytest.approx(0.8)


def test_winner_must_be_alive_and_beat_the_shipped_by_more_than_the_seed_noise(sweep):
    rows = [
        _row("shipped", 0.0, 0.99, _probing(0.99)),  # the shipped SAE as it is: a reference, never a candidate
        _row("L1536-k32", 0.0, 0.90, _probing(0.60)),  # shipped configuration: score 0.75
        _row("L1536-k32-s1", 0.0, 0.90, _probing(0.64)),  # replicate: 0.77, noise 0.02
        _row("L3072-k32", 0.03, 0.99, _probing(0.90)),  # best score but 3 % dead: not eligible
        _row("L2304-k32", 0.02, 0.92, _probing(0.64)),  # 0.78: +0.03 > 0.02, dead exactly at the bound
        _row("L2304-k48", 0.0, 0.93, _probing(0.60)),  # 0.765: +0.015, within noise
    ]
    result = sweep.select(rows)
    assert result["baseline"] == pytest.approx(0.75)
    assert result["noise"] == pytest.approx(0.02)
    assert result["margin"] == pytest.approx(0.02)
    assert result["best"]["name"] == "L2304-k32"
    assert result["winner"] == "L2304-k32"


def test_no_winner_within_noise_and_the_margin_has_a_floor(sweep):
    rows = [
        _row("L1536-k32", 0.0, 0.900),
        _row("L1536-k32-s1", 0.0, 0.901),  # noise 0.001 < floor 0.005
        _row("L2304-k32", 0.0, 0.904),  # +0.004: not enough
        _row("L3072-k64-s1", 0.0, 0.999),  # a seed replicate never wins
    ]
    result = sweep.select(rows)
    assert result["margin"] == pytest.approx(sweep.MIN_MARGIN)
    assert result["best"]["name"] == "L2304-k32" and result["winner"] is None
    assert "0.0050" in result["reason"]
    assert sweep.select([_row("L3072-k32", 0.5, 0.99)])["best"] is None


def test_evaluate_sae_on_exact_sparse_sums_gives_the_closed_form(sweep):
    """Sums of K orthonormal planted features: a K-sparse SAE reconstructs them exactly (FVU 0, cos 1, retrieval
    kept 1), L0 = K, and the features never used are dead."""
    sae = planted_sae()
    basis = sae.W_dec.detach().numpy()
    rng = np.random.default_rng(0)
    used = LATENTS // 2  # features 0..15 only: half the dictionary is dead
    x = np.stack([rng.uniform(0.5, 1.5, size=K) @ basis[rng.choice(used, K, replace=False)] for _ in range(200)])
    x = x.astype(np.float32)
    queries, documents = x[:20], x[20:]
    relevant = [{i: 1.0} for i in range(20)]
    row = sweep.evaluate_sae(sae, x, {"queries": queries, "documents": documents, "relevant": relevant}, None)
    assert row["fvu"] == pytest.approx(0.0, abs=1e-6)
    assert row["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert row["l0"] == pytest.approx(K)
    assert row["dead_fraction"] == pytest.approx(0.5)
    assert row["retrieval_kept"] == pytest.approx(1.0)
    assert row["probing"] is None
    assert x.shape[1] == D_IN


def test_one_configuration_trains_evaluates_and_lands_in_the_table(sweep, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    documents = x[:100] + 0.3 * rng.normal(size=(100, 16)).astype(np.float32)  # query i's document is row i
    retrieval = {"queries": x[:10], "documents": documents, "relevant": [{i: 1.0} for i in range(10)]}
    calls = []

    def probing(sae):
        calls.append(sae.num_latents)
        return {"toy": {"sae@1": 0.5, "sae@5": 0.75, "sae@20": 1.0}}

    config = sweep.SweepConfig(32, 4)
    row = sweep.run_config(config, x[:300], x[300:], lambda: (retrieval, probing), max_epochs=2)
    assert calls == [32]
    assert row["name"] == "L32-k4" and row["epochs"] == 2 and 1 <= row["best_epoch"] <= 2
    assert 0 < row["fvu"] < 1.5 and row["l0"] <= 4
    assert 0 < row["retrieval_kept"] <= 1.5
    assert row["score"] == pytest.approx(0.5 * 0.75 + 0.5 * row["retrieval_kept"])
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "L1536-k32.json").write_text(json.dumps({**row, "name": "L1536-k32"}))
    table = sweep.write_summary(tmp_path, sweep.DEFAULT_GRID)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["L1536-k32"]
    assert saved["selection"]["winner"] is None
    assert "| L1536-k32 |" in table and "toy k=5" in table
    assert (tmp_path / "sweep.txt").read_text() == table + "\n"


def test_probing_without_references_gives_the_same_sparse_probes():
    """The sweep skips the embedding and reconstruction probes (the same for every SAE); the sparse ones stay."""
    from sae_planted import planted_corpus

    from aquin_monitor.sae.quality import k_sparse_probing

    sae, x, texts = planted_corpus(n=640)
    labels = [int(t.split()[3]) % 4 for t in texts]  # topic mod 4: four classes, each a union of features
    args = (sae, x[:320], labels[:320], x[320:], labels[320:])
    full = k_sparse_probing(*args, ks=(1, 5))
    sparse = k_sparse_probing(*args, ks=(1, 5), references=False)
    assert set(sparse) == {"sae@1", "sae@5", "n_tasks"}
    assert sparse["n_tasks"] == 4 and 0.5 < sparse["sae@1"] <= 1
    assert {key: full[key] for key in sparse} == sparse
    assert "embedding" in full and "reconstruction" in full
