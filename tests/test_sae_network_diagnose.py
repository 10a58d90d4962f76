"""Co-activation network and absorption/polysemy diagnostics on planted structures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
from sae_planted import LATENTS, planted_corpus

from aquin_monitor.sae.activations import sparse_activations
from aquin_monitor.sae.diagnose import absorption_pairs, diagnose
from aquin_monitor.sae.network import coactivation_network


def test_planted_activations_are_exact():
    sae, x, texts = planted_corpus(320)
    z = sparse_activations(sae, x).toarray()
    assert ((z > 0).sum(1) == 3).all()
    assert (z.argmax(1) == np.arange(320) % LATENTS).all()
    assert z[4::LATENTS, 5] == pytest.approx(1.0, abs=1e-5)


def test_coactivation_edge_for_an_always_together_pair_vanishes_when_columns_are_shuffled():
    sae, x, _ = planted_corpus()
    z = sparse_activations(sae, x)
    net = coactivation_network(z, threshold=0.3, min_support=5)
    dense = z.toarray() > 0
    edge = {(e.source, e.target): e for e in net.edges}[(4, 5)]
    both = int((dense[:, 4] & dense[:, 5]).sum())
    assert edge.count == both == int(dense[:, 4].sum())
    assert edge.p_target_given_source == 1.0
    assert edge.p_source_given_target == pytest.approx(both / dense[:, 5].sum())
    p4, p5, p45 = dense[:, 4].mean(), dense[:, 5].mean(), both / len(dense)
    assert edge.npmi == pytest.approx(np.log(p45 / (p4 * p5)) / -np.log(p45))
    # no other planted dependence: random triples give NPMI well under the threshold
    assert [(e.source, e.target) for e in net.edges] == [(4, 5)]
    assert [n.index for n in net.nodes] == [4, 5] and net.nodes[0].community == net.nodes[1].community
    assert net.neighbours(5)[0][0] == 4

    rng = np.random.default_rng(5)
    shuffled = dense.copy()
    for j in range(LATENTS):
        shuffled[:, j] = rng.permutation(shuffled[:, j])
    null = coactivation_network(scipy.sparse.csr_matrix(shuffled.astype(np.float32)), threshold=0.3, min_support=5)
    assert null.edges == [] and null.nodes == []


def test_absorption_finds_the_planted_pair_with_its_support():
    sae, x, texts = planted_corpus()
    z = sparse_activations(sae, x)
    pairs = absorption_pairs(z, texts, threshold=0.9, min_support=10)
    dense = z.toarray() > 0
    assert [(p.source, p.target) for p in pairs] == [(4, 5)]
    pair = pairs[0]
    assert pair.support == int(dense[:, 4].sum()) and pair.both == pair.support and pair.probability == 1.0
    assert pair.examples and all(" topic 4 " in t for t in pair.examples)
    # brute force over all ordered pairs
    counts = dense.sum(0)
    conditional = (dense.T.astype(int) @ dense.astype(int)) / np.maximum(counts[:, None], 1)
    np.fill_diagonal(conditional, 0)
    assert {tuple(ij) for ij in np.argwhere((conditional >= 0.9) & (counts[:, None] >= 10))} == {(4, 5)}


def test_polysemy_flags_the_planted_two_concept_feature():
    sae, x, texts = planted_corpus()
    z = sparse_activations(sae, x)
    result = diagnose(z, x, texts, top=20)
    assert result.polysemy[0].feature == 9
    assert [p.feature for p in result.polysemy if p.merged] == [9]
    nine = result.polysemy[0]
    assert nine.spread > 2 * max(p.spread for p in result.polysemy[1:])
    assert min(nine.split_sizes) >= 5
    # the split follows the planted concept
    sides = [{t.split()[-1] for t in side} for side in nine.examples]
    assert sorted(map(tuple, sides)) == [("0",), ("1",)]
    # the spread is the mean pairwise cosine distance of the top texts, recomputed here
    rows = np.argsort(-z.toarray()[:, 9], kind="stable")[:20]
    unit = x[rows] / np.linalg.norm(x[rows], axis=1, keepdims=True)
    cos = unit @ unit.T
    assert nine.spread == pytest.approx((1 - cos)[~np.eye(20, dtype=bool)].mean(), abs=1e-5)


def test_silhouette_equals_scikit_learns():
    from sklearn.metrics import silhouette_score
    from sklearn.metrics.pairwise import cosine_distances

    from aquin_monitor.sae.diagnose import silhouette

    rng = np.random.default_rng(3)
    for trial in range(5):
        x = rng.normal(size=(15, 8)) + (trial * 0.5) * np.r_[np.ones((7, 8)), -np.ones((8, 8))]
        split = (
            rng.permutation(np.r_[np.zeros(6, int), np.ones(9, int)])
            if trial % 2
            else np.r_[np.zeros(7, int), np.ones(8, int)]
        )
        distances = cosine_distances(x)
        np.fill_diagonal(distances, 0)
        assert silhouette(distances, split) == pytest.approx(silhouette_score(x, split, metric="cosine"), abs=1e-9)
    singleton = np.r_[0, np.ones(14, int)]
    assert silhouette(cosine_distances(x), singleton) == pytest.approx(
        silhouette_score(x, singleton, metric="cosine"), abs=1e-9
    )
