"""The research-grade SAE quality numbers (aquin_monitor.sae.quality) against planted cases and closed forms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from aquin_monitor.sae.model import SparseAutoencoder
from aquin_monitor.sae.quality import (
    balanced_tasks,
    domain_warning,
    fit_pca_baseline,
    k_sparse_probing,
    reconstruction_fit,
    seed_stability,
)
from tests.sae_planted import LATENTS, planted_corpus


@pytest.fixture(scope="module")
def planted():
    sae, x, _ = planted_corpus(n=1280)
    topics = np.arange(len(x)) % LATENTS
    half = len(x) // 2
    return sae, x[:half], topics[:half], x[half:], topics[half:]


def test_a_feature_that_is_the_label_is_found_at_k1(planted):
    """Topic t's texts carry 2·d_t: feature t alone separates class t from the rest (the probe's planted answer)."""
    sae, x_train, y_train, x_test, y_test = planted
    result = k_sparse_probing(sae, x_train, y_train, x_test, y_test, ks=(1, 5))
    assert result["n_tasks"] == LATENTS
    assert result["sae@1"] >= 0.98 and result["sae@5"] >= 0.98
    assert result["embedding"] >= 0.98 and result["reconstruction"] >= 0.98


def test_the_selected_feature_is_the_planted_one(planted):
    """The mean-difference score ranks feature t first for class t (checked by hand on the planted topics)."""
    sae, x_train, y_train, x_test, y_test = planted
    from aquin_monitor.sae.quality import encode_dense

    z = encode_dense(sae, x_train)
    for label, rows, is_class, _, _ in balanced_tasks(y_train, y_test):
        separation = np.abs(z[rows][is_class].mean(0) - z[rows][~is_class].mean(0))
        assert int(np.argmax(separation)) == label


def test_shuffled_labels_probe_at_chance(planted):
    """Labels unrelated to the features: every probe near 0.5 (the balanced tasks' chance), so the test can fail."""
    sae, x_train, y_train, x_test, y_test = planted
    rng = np.random.default_rng(3)
    result = k_sparse_probing(
        sae, x_train, rng.permutation(y_train) % 4, x_test, rng.permutation(y_test) % 4, ks=(1,), max_classes=4
    )
    assert result["n_tasks"] == 4
    assert abs(result["sae@1"] - 0.5) < 0.1 and abs(result["embedding"] - 0.5) < 0.1


def test_balanced_tasks_are_balanced_and_seeded():
    y_train = ["a"] * 10 + ["b"] * 3 + ["c"] * 30
    y_test = ["a"] * 4 + ["b"] * 2 + ["c"] * 5 + ["d"] * 3  # d has no train rows: no task
    tasks = balanced_tasks(y_train, y_test, seed=1)
    assert [t[0] for t in tasks] == ["a", "b", "c"]
    for _, train_rows, train_y, test_rows, test_y in tasks:
        assert train_y.sum() * 2 == len(train_rows) and test_y.sum() * 2 == len(test_rows)
        assert len(set(train_rows.tolist())) == len(train_rows)
    # class c outnumbers the rest (13 train rows): 13 of its 30 rows against all 13 others
    assert len(tasks[2][1]) == 26
    again = balanced_tasks(y_train, y_test, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(tasks, again))


def test_identical_sae_with_shuffled_latents_is_fully_stable():
    sae = SparseAutoencoder(24, 96, 4, seed=0)
    shuffled = sae.W_dec.detach()[torch.randperm(96, generator=torch.Generator().manual_seed(0))]
    assert seed_stability(sae, shuffled) == 1.0
    assert seed_stability(sae.W_dec, 3.0 * shuffled) == 1.0  # decoder norms do not matter


def test_unrelated_saes_are_not_stable():
    """Random unit vectors in 64 dimensions: best matched cosines stay far below 0.7."""
    assert seed_stability(SparseAutoencoder(64, 128, 4, seed=0), SparseAutoencoder(64, 128, 4, seed=1)) == 0.0


def test_stability_counts_against_a_brute_force_assignment():
    """Five features, three kept (cosine 1), one rotated to cosine 0.6, one to 0.8: Hungarian = the best of the 120
    permutations, and the share at 0.7 is 4/5."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    a = basis[:5]
    b = a.copy()
    b[3] = 0.6 * a[3] + 0.8 * basis[8]
    b[4] = 0.8 * a[4] + 0.6 * basis[9]
    b = b[[4, 2, 0, 3, 1]]
    cosine = a @ b.T
    best = max(itertools.permutations(range(5)), key=lambda p: sum(cosine[i, p[i]] for i in range(5)))
    expected = sum(cosine[i, best[i]] >= 0.7 for i in range(5)) / 5
    assert expected == 0.8
    assert seed_stability(a, b) == pytest.approx(expected)
    assert seed_stability(a, b, threshold=0.5) == 1.0
    assert seed_stability(a, b[:3]) == pytest.approx(3 / 5)  # A features left unmatched count as unstable


def test_stability_refuses_decoders_of_different_spaces():
    with pytest.raises(ValueError, match="different input sizes"):
        seed_stability(np.eye(3), np.eye(4))


def test_pca_baseline_matches_the_eigenvalue_closed_form():
    """In-sample FVU of rank-k PCA = (sum of the eigenvalues past k) / (sum of all) of the covariance."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 16)) * np.linspace(3, 0.2, 16)).astype(np.float32) + 5.0
    baseline = fit_pca_baseline(x, 4)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False)))[::-1]
    fit = reconstruction_fit(x, baseline.reconstruct(x))
    assert fit["fvu"] == pytest.approx(eigenvalues[4:].sum() / eigenvalues.sum(), rel=1e-4)
    assert baseline.n_components == 4
    assert fit_pca_baseline(x[:3], 32).n_components == 3  # at most n (and d) components


def test_reconstruction_fit_agrees_with_the_sae_statistics():
    """reconstruction_fit on a SAE's x̂ gives the FVU and cosine of feature_statistics (one definition)."""
    from aquin_monitor.sae.evaluate import feature_statistics, reconstruct

    sae, x, _ = planted_corpus(n=320)
    stats = feature_statistics(sae, x)
    fit = reconstruction_fit(x, reconstruct(sae, x))
    assert fit["fvu"] == pytest.approx(stats.fvu, rel=1e-4) and fit["cosine"] == pytest.approx(stats.cosine, rel=1e-5)


@pytest.mark.parametrize(
    ("corpus_fvu", "held_out_fvu", "warns"),
    [(0.30, 0.2, False), (0.31, 0.2, True), (0.9, None, False), (float("nan"), 0.2, False), (0.5, 0.0, False)],
)
def test_domain_warning_threshold(corpus_fvu, held_out_fvu, warns):
    line = domain_warning(corpus_fvu, held_out_fvu, corpus="<script>x.jsonl")
    assert (line is not None) == warns
    if warns:
        assert "\n" not in line and line.startswith("warning: <script>x.jsonl reconstructs much worse")


def test_two_seeds_trained_on_planted_features_find_them_both():
    """Training and matching end to end: two seeds on sums of 3 of 32 orthonormal directions recover most of them
    (measured 0.84 at 6,400 texts: the absorbed pair 4/5 and the merged feature 9 differ), untrained SAEs none."""
    from aquin_monitor.sae.train import SaeTrainConfig, train_sae

    _, x, _ = planted_corpus(n=6400)
    config = {"num_latents": 32, "k": 3, "max_epochs": 30, "batch_size": 256}
    trained = [train_sae(x, SaeTrainConfig(**config, seed=s), show_progress=False).sae for s in (0, 1)]
    assert seed_stability(*trained) >= 0.7
    assert seed_stability(SparseAutoencoder(48, 32, 3, seed=0), SparseAutoencoder(48, 32, 3, seed=1)) < 0.1
