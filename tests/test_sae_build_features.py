"""``features.json`` written with the model's encoder keeps the c-TF-IDF label beside the key-phrase one."""

from __future__ import annotations

import json

import numpy as np

from aquin_monitor.sae.build import write_features
from aquin_monitor.sae.model import SparseAutoencoder

WORDS = ["river", "bank", "loan", "card", "music", "drums", "cell", "tumour"]


def _bag_of_words(texts: list[str]) -> np.ndarray:
    """A fake sentence encoder: unit bag-of-words vectors over WORDS (plus one dimension for anything else)."""
    rows = np.zeros((len(texts), len(WORDS) + 1), dtype=np.float32)
    for i, text in enumerate(texts):
        for token in text.lower().split():
            rows[i, WORDS.index(token) if token in WORDS else len(WORDS)] += 1.0
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


def test_key_phrase_features_keep_the_ctfidf_label(tmp_path):
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=3)) + f" item{i} $$ <script>" for i in range(120)]
    embeddings = _bag_of_words(texts)  # the encoder's own space, as with a real model
    sae = SparseAutoencoder(embeddings.shape[1], 24, 3, seed=0)
    plain, keyed = tmp_path / "plain", tmp_path / "keyed"
    plain.mkdir()
    keyed.mkdir()
    write_features(sae, embeddings, texts, plain)
    write_features(sae, embeddings, texts, keyed, encode=_bag_of_words)
    by_ctfidf = json.loads((plain / "features.json").read_text(encoding="utf-8"))["features"]
    by_phrases = json.loads((keyed / "features.json").read_text(encoding="utf-8"))["features"]
    assert all("label_ctfidf" not in feature for feature in by_ctfidf)
    # the c-TF-IDF label of the encoder run is the label of the run without an encoder, feature by feature
    assert [f["label_ctfidf"] for f in by_phrases] == [f["label"] for f in by_ctfidf]
    assert [f["top"] for f in by_phrases] == [f["top"] for f in by_ctfidf]
    assert any(f["label"] != f["label_ctfidf"] for f in by_phrases if f["top"])  # the encoder's labels differ
