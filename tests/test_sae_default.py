"""The SAE shipped for the bundled all-MiniLM-L6-v2: loadable by us and by sparsify, within the size
budget, its features.json consistent with the SAE applied to the real model's embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aquin_monitor.sae.model import default_sae_path, load_sae


def test_shipped_folder_loads_and_fits_the_budget():
    folder = default_sae_path()
    names = {p.name for p in folder.iterdir()}
    assert {"cfg.json", "sae.safetensors", "features.json", "training.jsonl", "quality.json", "quality.txt"} <= names
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 15 * 2**20
    sae = load_sae("default")
    assert sae.d_in == 384 and sae.metadata["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    norms = sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    quality = json.loads((folder / "quality.json").read_text())
    assert 0 < quality["metrics"]["sae/fvu"] < 1
    features = json.loads((folder / "features.json").read_text())["features"]
    assert [f["id"] for f in features] == list(range(sae.num_latents))
    assert all(0 <= f["frequency"] <= 1 for f in features)


def test_sparsify_reads_the_shipped_sae():
    sparsify = pytest.importorskip("sparsify")
    theirs = sparsify.SparseCoder.load_from_disk(default_sae_path())
    ours = load_sae("default")
    x = torch.nn.functional.normalize(torch.randn(8, 384), dim=1)
    with torch.no_grad():
        assert torch.allclose(theirs(x).sae_out, ours(x).reconstruction, atol=1e-5)


@pytest.mark.slow
def test_recorded_top_activations_are_reproduced_on_minilm():
    from aquin_monitor.encoders import encode, load_model

    sae = load_sae("default")
    features = json.loads((default_sae_path() / "features.json").read_text())["features"]
    chosen = [f for f in features if f["top"]][::150][:8]
    texts = [f["top"][0]["text"] for f in chosen]
    x = torch.from_numpy(encode(load_model("default", device="cpu"), texts))
    with torch.no_grad():
        z = sae.encode(x).numpy()
    for row, feature in zip(z, chosen):
        assert row[feature["id"]] == pytest.approx(feature["top"][0]["activation"], abs=2e-3)
        assert np.count_nonzero(row) <= sae.k
