"""Feature browser and c-TF-IDF labels against brute-force numpy and a hand-written c-TF-IDF."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
import torch
from sae_planted import planted_sae
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from aquin_monitor.sae.activations import sparse_activations
from aquin_monitor.sae.browser import browse_features
from aquin_monitor.sae.labels import class_tfidf, ctfidf_labels
from aquin_monitor.sae.model import SparseAutoencoder

FILLER = [
    "river",
    "table",
    "window",
    "garden",
    "pencil",
    "yellow",
    "music",
    "doctor",
    "winter",
    "letter",
    "bottle",
    "forest",
]


def test_sparse_activations_equal_dense_encode():
    sae = SparseAutoencoder(16, 64, 5, seed=3)
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    z = sparse_activations(sae, x, batch_size=64)
    with torch.no_grad():
        dense = sae.encode(x).numpy()
    np.testing.assert_array_equal(z.toarray(), dense)


def test_non_finite_embeddings_are_refused_by_row():
    sae = SparseAutoencoder(4, 8, 2)
    x = np.ones((5, 4), dtype=np.float32)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="row 3: not finite"):
        sparse_activations(sae, x)
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        sparse_activations(sae, np.ones((5, 3)))


def test_browser_numbers_against_brute_force_numpy():
    sae = SparseAutoencoder(16, 64, 5, seed=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    texts = [f"text number {i} about {FILLER[i % len(FILLER)]}" for i in range(500)]
    browser = browse_features(sae, x, texts, examples=7)
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x)).numpy().astype(np.float64)
    fired = (z > 0).sum(0)
    assert browser.dead == int((fired == 0).sum())
    assert len(browser.features) == int((fired > 0).sum())
    expected_order = sorted(np.flatnonzero(fired), key=lambda j: (-z[:, j].sum(), j))
    assert [f.index for f in browser.features] == expected_order
    for f in browser.features:
        column = z[:, f.index]
        assert f.frequency == pytest.approx((column > 0).mean())
        assert f.max_activation == pytest.approx(column.max(), rel=1e-6)
        assert f.total_activation == pytest.approx(column.sum(), rel=1e-5)
        assert f.mean_activation == pytest.approx(column[column > 0].mean(), rel=1e-5)
        top = [r for r in np.argsort(-column, kind="stable")[:7] if column[r] > 0]
        assert [e.row for e in f.examples] == top
        assert [e.text for e in f.examples] == [texts[r] for r in top]
        np.testing.assert_allclose([e.activation for e in f.examples], column[top], rtol=1e-6)


def reference_ctfidf(documents: list[str]) -> list[dict[str, float]]:
    """c-TF-IDF written out from BERTopic's formula, with plain Python counting."""
    tokens = [[t for t in re.findall(r"(?u)\b\w\w+\b", d.lower()) if t not in ENGLISH_STOP_WORDS] for d in documents]
    tf = [Counter(t) for t in tokens]
    f = Counter()
    for counts in tf:
        f.update(counts)
    average = sum(len(t) for t in tokens) / len(tokens)
    return [{x: c / sum(counts.values()) * math.log(1 + average / f[x]) for x, c in counts.items()} for counts in tf]


def test_class_tfidf_against_the_formula():
    documents = ["the cat and the cat sat on a mat", "dogs chase cats in the park park", "mat sales rose; stocks fell"]
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(stop_words="english")
    weights = class_tfidf(vectorizer.fit_transform(documents)).toarray()
    vocabulary = list(vectorizer.get_feature_names_out())
    for row, expected in zip(weights, reference_ctfidf(documents)):
        got = {vocabulary[i]: w for i, w in enumerate(row) if w}
        assert got.keys() == expected.keys()
        for term, w in expected.items():
            assert got[term] == pytest.approx(w)


def test_label_finds_a_keyword_planted_in_one_features_top_texts():
    """Texts carry feature 7's direction strongly exactly when they contain 'zeppelin' (and then their
    other features weakly, so 'zeppelin' texts are not among other features' top texts)."""
    sae = planted_sae()
    rng = np.random.default_rng(2)
    directions = sae.W_dec.detach().numpy()
    texts, rows = [], []
    for i in range(400):
        chosen = rng.choice([f for f in range(32) if f != 7], size=3, replace=False)
        weights = rng.uniform(0.5, 1.0, size=3)
        words = list(rng.choice(FILLER, size=6))
        if i % 10 == 0:
            chosen[0], weights = 7, np.array([3.0, 0.1, 0.1])
            words.insert(int(rng.integers(0, 6)), "zeppelin")
        texts.append(" ".join(words))
        rows.append(weights @ directions[chosen])
    browser = browse_features(sae, np.array(rows, dtype=np.float32), texts)
    by_index = {f.index: f for f in browser.features}
    assert by_index[7].label[0] == "zeppelin"
    assert all("zeppelin" not in f.label for f in browser.features if f.index != 7)
    assert all(len(f.label) == 3 for f in browser.features)


def test_labels_without_any_term():
    assert ctfidf_labels(["the a", "$$ !!", "of"], [[0], [1, 2]]) == [[], []]
