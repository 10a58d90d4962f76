"""SAE snapshot signals and feature movers against plain-torch references; collapse shows as FVU
rising and features dying; the movers figure takes hostile text as plain text."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from aquin_monitor.sae.monitoring import SaeSnapshot, feature_movers, snapshot_signals
from aquin_monitor.sae.plots import feature_density_figure, feature_movers_figure, training_curves_figure
from aquin_monitor.sae.train import SaeTrainConfig, train_sae


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def trained():
    """A SAE trained on unit-norm 'embeddings' made of sparse combinations of 40 directions in 32-d."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    directions = _unit(rng.normal(size=(40, 32)))
    codes = np.zeros((3000, 40))
    for row in codes:
        row[rng.choice(40, 3, replace=False)] = rng.uniform(0.5, 2.0, 3)
    x = _unit(codes @ directions + 0.02 * rng.normal(size=(3000, 32)))
    sae = train_sae(
        x, SaeTrainConfig(num_latents=80, k=4, lr=1e-2, batch_size=256, max_epochs=12), show_progress=False
    ).sae
    return sae, x, rng


def test_snapshot_signals_match_plain_torch(trained):
    sae, x, _ = trained
    probe = x[:500]
    texts = [f"text {i}" for i in range(len(probe))]
    snap = snapshot_signals(sae, probe, texts, threshold=0.05, top=3, batch_size=64)
    with torch.no_grad():
        t = torch.from_numpy(probe)
        pre = torch.relu((t - sae.b_dec) @ sae.encoder.weight.T + sae.encoder.bias)
        kth = pre.sort(1, descending=True).values[:, sae.k - 1 : sae.k]
        z = torch.where(pre >= kth, pre, torch.zeros_like(pre)).numpy().astype(np.float64)
        recon = z @ sae.W_dec.numpy() + sae.b_dec.numpy()
    fired = z > 0
    assert np.allclose(snap.frequency, fired.mean(0), atol=1e-7)
    mean_act = np.where(fired.any(0), (z * fired).sum(0) / np.maximum(fired.sum(0), 1), 0)
    assert np.allclose(snap.mean_activation, mean_act, atol=1e-5)
    assert snap.metrics["sae/l0_effective"] == pytest.approx((z > 0.05).sum(1).mean())
    assert snap.metrics["sae/dead_fraction"] == pytest.approx((~fired.any(0)).mean())
    p = probe.astype(np.float64)
    assert snap.metrics["sae/fvu"] == pytest.approx(((p - recon) ** 2).sum() / ((p - p.mean(0)) ** 2).sum(), rel=1e-4)
    cosines = (p * recon).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(recon, axis=1))
    assert snap.metrics["sae/cosine"] == pytest.approx(cosines.mean(), rel=1e-5)
    for feature in np.flatnonzero(fired.any(0))[:10]:
        best = np.argsort(-z[:, feature], kind="stable")[:1]
        assert z[snap.top_rows[feature, 0], feature] == pytest.approx(z[best[0], feature], rel=1e-5)


def test_collapse_raises_fvu_and_kills_features(trained):
    sae, x, rng = trained
    probe = x[:600]
    texts = [str(i) for i in range(len(probe))]
    base = snapshot_signals(sae, probe, texts)
    # a collapsing fine-tune: every embedding pushed onto one direction
    axis = probe[0]
    collapsed = _unit(axis + 0.05 * probe)
    after = snapshot_signals(sae, collapsed, texts)
    assert after.metrics["sae/fvu"] > 3 * base.metrics["sae/fvu"]
    assert after.metrics["sae/dead_fraction"] > base.metrics["sae/dead_fraction"] + 0.3
    movers = feature_movers(base, after, texts, top=5)
    assert movers["lost"], "features that stop firing must be listed as lost"
    for entry in movers["lost"]:
        assert entry["frequency_after"] < entry["frequency_before"]
        assert entry["top_texts"] and set(entry["top_texts"]) <= set(texts)


def test_feature_movers_order_ties_and_unchanged_features():
    freq_before = np.array([0.1, 0.5, 0.2, 0.3, 0.0])
    freq_after = np.array([0.4, 0.2, 0.2, 0.3, 0.1])
    mean_before = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    mean_after = np.array([1.0, 1.0, 1.5, 1.0, 0.7])
    rows = np.array([[0, 1], [1, -1], [2, 0], [0, 1], [1, 0]])
    base = SaeSnapshot({}, freq_before, mean_before, rows, np.ones((5, 2)))
    now = SaeSnapshot({}, freq_after, mean_after, rows[::-1].copy(), np.ones((5, 2)))
    texts = ["alpha", "beta", "gamma"]
    movers = feature_movers(base, now, texts, top=10, min_support=0)
    # gained: feature 0 (+0.3), feature 4 (+0.1), feature 2 (0 frequency change, mean +0.5); 3 unchanged
    assert [e["feature"] for e in movers["gained"]] == [0, 4, 2]
    assert [e["feature"] for e in movers["lost"]] == [1]
    lost = movers["lost"][0]
    assert lost["top_texts"] == ["beta"]  # from the base snapshot's rows, -1 dropped
    assert movers["gained"][0]["top_texts"] == ["beta", "alpha"]  # from the new snapshot's rows
    assert lost["frequency_before"] == 0.5 and lost["frequency_after"] == pytest.approx(0.2)
    assert feature_movers(base, now, texts, top=1, min_support=0)["gained"][0]["feature"] == 0


def test_bad_shapes_are_refused(trained):
    sae, x, _ = trained
    with pytest.raises(ValueError, match=r"\[n >= 2, 32\]"):
        snapshot_signals(sae, x[:5, :10], ["a"] * 5)
    with pytest.raises(ValueError, match="3 texts for 5 embeddings"):
        snapshot_signals(sae, x[:5], ["a"] * 3)


def test_figures_draw_hostile_text_as_plain_text():
    hostile = ["$$ \\frac{a}{b", "<script>alert(1)</script>", "x_1^2 $ 50% & {}"]
    movers = {
        "gained": [
            {"feature": i, "frequency_before": 0.0, "frequency_after": 0.1 * (i + 1), "top_texts": [t]}
            for i, t in enumerate(hostile)
        ],
        "lost": [{"feature": 9, "frequency_before": 0.3, "frequency_after": 0.0, "top_texts": []}],
    }
    fig = feature_movers_figure(movers)
    fig.savefig(io.BytesIO(), format="png")
    shown = [t.get_text() for ax in fig.axes for t in ax.texts]
    for text in hostile:
        assert any(text in s for s in shown)
    for figure in (
        feature_density_figure(np.array([0, 0.001, 0.2])),
        training_curves_figure([{"epoch": 1, "sae/fvu": 0.4}]),
    ):
        figure.savefig(io.BytesIO(), format="png")


def test_movers_below_the_support_are_left_out_and_the_rest_carry_labels_and_counts():
    """Issue 25 point 5: a feature going from 4 to 8 of 600 texts was listed as gained."""
    n = 600
    counts_before = np.array([4, 0, 300, 30, 17])
    counts_after = np.array([8, 60, 100, 10, 5])  # 0: +4 texts (noise); 1: born; 2, 3: lost; 4: lost below 18
    base = SaeSnapshot({}, counts_before / n, np.ones(5), np.zeros((5, 1), int), np.ones((5, 1)))
    now = SaeSnapshot({}, counts_after / n, np.ones(5), np.zeros((5, 1), int), np.ones((5, 1)))
    texts = [f"text {i}" for i in range(n)]
    labels = ["noise", "born <b>", None, "card, payment", "tiny"]
    movers = feature_movers(base, now, texts, labels=labels)
    assert [e["feature"] for e in movers["gained"]] == [1]  # 8 < 18 = max(3, ceil(0.03 * 600)) texts
    assert [e["feature"] for e in movers["lost"]] == [2, 3]  # 17 < 18: feature 4 left out
    born = movers["gained"][0]
    assert (born["label"], born["texts_before"], born["texts_after"], born["n_texts"], born["min_support"]) == (
        "born <b>",
        0,
        60,
        600,
        18,
    )
    assert [e["label"] for e in movers["lost"]] == ["", "card, payment"]
    everything = feature_movers(base, now, texts, min_support=0)
    assert [e["feature"] for e in everything["gained"]] == [1, 0] and len(everything["lost"]) == 3
    assert feature_movers(base, now, texts, min_support=9)["gained"][0]["feature"] == 1
