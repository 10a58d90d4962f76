"""SAE training: recovers a planted dictionary, is deterministic, streams sae/* through the sinks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aquin_monitor.sae.train import SaeTrainConfig, choose_sizes, train_sae


def planted(n=6000, d=24, m=48, active=3, noise=0.01, seed=0):
    """Sparse non-negative combinations of m known random unit directions, plus noise."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(m, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    codes = np.zeros((n, m))
    for row in codes:
        row[rng.choice(m, active, replace=False)] = rng.uniform(0.5, 2.0, active)
    return (codes @ directions + noise * rng.normal(size=(n, d))).astype(np.float32), directions


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_planted_dictionary_is_recovered():
    # 64 directions in 48 dimensions: overcomplete, with little enough interference for a linear encoder
    x, directions = planted(d=48, m=64)
    result = train_sae(
        x, SaeTrainConfig(num_latents=96, k=3, lr=1e-2, batch_size=256, max_epochs=25, patience=3), show_progress=False
    )
    learned = torch.nn.functional.normalize(result.sae.W_dec.detach(), dim=1).numpy()
    best_match = (directions @ learned.T).max(axis=1)
    assert best_match.min() > 0.9, np.sort(best_match)[:5]
    assert min(row["sae/fvu"] for row in result.history) < 0.05


def test_same_seed_same_weights_other_seed_other_weights():
    x, _ = planted(n=1200)
    config = SaeTrainConfig(num_latents=32, k=3, batch_size=128, max_epochs=3, seed=7)
    a = train_sae(x, config, show_progress=False).sae.state_dict()
    b = train_sae(x, config, show_progress=False).sae.state_dict()
    c = train_sae(
        x, SaeTrainConfig(num_latents=32, k=3, batch_size=128, max_epochs=3, seed=8), show_progress=False
    ).sae.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not torch.equal(a["W_dec"], c["W_dec"])


def test_epochs_stream_to_the_jsonl_sink_and_best_epoch_is_kept(tmp_path):
    from aquin_monitor.sae.evaluate import feature_statistics
    from aquin_monitor.sinks import JsonlSink

    x, _ = planted(n=1500)
    sink = JsonlSink(tmp_path)
    result = train_sae(
        x, SaeTrainConfig(num_latents=32, k=3, batch_size=128, max_epochs=4), sinks=[sink], show_progress=False
    )
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    for line, row in zip(lines, result.history):
        for key in ("sae/fvu", "sae/l0", "sae/dead_fraction", "sae/auxk_loss"):
            assert line[key] == pytest.approx(row[key])
    best = min(result.history, key=lambda row: row["sae/fvu"])
    assert result.sae.metadata["best_epoch"] == best["epoch"]
    assert feature_statistics(result.sae, x[result.val_indices]).fvu == pytest.approx(best["sae/fvu"], rel=1e-5)
    assert set(result.train_indices).isdisjoint(result.val_indices)
    assert len(result.train_indices) + len(result.val_indices) == len(x)


def test_b_dec_starts_at_the_data_mean_and_lr_follows_the_rule():
    x, _ = planted(n=400)
    x = x + 5.0  # a large common offset, as sentence embeddings share
    result = train_sae(x, SaeTrainConfig(num_latents=32, k=3, max_epochs=1, lr=1e-12), show_progress=False)
    assert np.allclose(result.sae.b_dec.detach().numpy(), x[result.train_indices].mean(0), atol=1e-4)
    assert train_sae(x, SaeTrainConfig(num_latents=64, k=3, max_epochs=1), show_progress=False).config[
        "lr"
    ] == pytest.approx(2e-4 / np.sqrt(64 / 2**14))


def test_size_rule():
    assert choose_sizes(150_000, 384)[:2] == (3072, 32)
    assert choose_sizes(50_000, 384)[:2] == (1536, 32)
    assert choose_sizes(10_000, 384)[:2] == (1536, 16)
    assert "texts" in choose_sizes(10_000, 384)[2]


def test_bad_embeddings_are_refused():
    with pytest.raises(ValueError, match="finite"):
        train_sae(np.array([[0.0, np.nan], [1.0, 2.0]]), show_progress=False)
