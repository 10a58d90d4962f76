"""SAE analyses (decompose, contrast, trace, steer, faithfulness, match) against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aquin_monitor.sae.decompose import contrast, decompose
from aquin_monitor.sae.faithfulness import retrieval_faithfulness
from aquin_monitor.sae.match import match_features
from aquin_monitor.sae.model import SparseAutoencoder
from aquin_monitor.sae.steer import steer
from aquin_monitor.sae.trace import layer_inputs, trace_feature


def trained_like_sae(d_in=16, num_latents=64, k=4, seed=0) -> SparseAutoencoder:
    """A random SAE with a non-zero b_dec and an encoder that is not the decoder's transpose."""
    sae = SparseAutoencoder(d_in, num_latents, k, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_dec.copy_(0.3 * torch.randn(d_in, generator=g))
        sae.encoder.weight.add_(0.2 * torch.randn(num_latents, d_in, generator=g))
        sae.encoder.bias.copy_(0.05 * torch.randn(num_latents, generator=g))
    return sae.eval()


def reference_code(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Plain-torch TopK SAE activations (dense), written out from the formula."""
    sae = sae.requires_grad_(False)
    pre = torch.relu((x.double() - sae.b_dec.double()) @ sae.encoder.weight.double().T + sae.encoder.bias.double())
    values, indices = pre.topk(sae.k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


# ------------------------------------------------------------------ decompose / contrast


def test_decompose_shares_sum_to_one_and_activations_match_reference():
    sae = trained_like_sae()
    x = torch.randn(16, generator=torch.Generator().manual_seed(3)) * 2.5
    result = decompose(sae, x, top=100)
    z = reference_code(sae, x[None])[0]
    assert [f.feature for f in result.features] == [
        int(i) for i in torch.argsort(z, descending=True)[: int((z > 0).sum())]
    ]
    for f in result.features:
        assert f.activation == pytest.approx(float(z[f.feature]), rel=1e-5)
    x_hat = z @ sae.W_dec.double() + sae.b_dec.double()
    assert sum(f.share for f in result.features) + result.bias_share == pytest.approx(1.0, abs=1e-9)
    for f in result.features:
        expected = float(z[f.feature] * (sae.W_dec[f.feature].double() @ x_hat) / (x_hat @ x_hat))
        assert f.share == pytest.approx(expected, abs=1e-5)
    assert result.relative_error == pytest.approx(float((x.double() - x_hat).norm() / x.double().norm()), rel=1e-5)
    assert len(decompose(sae, x, top=2).features) == 2


@pytest.mark.parametrize("scale_a,scale_b", [(1.0, 1.0), (3.7, 0.2)])
def test_contrast_split_sums_to_true_cosine(scale_a, scale_b):
    sae = trained_like_sae()
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    a, b = scale_a * a / a.norm(), scale_b * b / b.norm()
    split = contrast(sae, a, b, labels=[f"f{i}" for i in range(64)])
    true_cosine = float(
        np.dot(a.numpy().astype(np.float64), b.numpy()) / (np.linalg.norm(a.numpy()) * np.linalg.norm(b.numpy()))
    )
    assert split.cosine == pytest.approx(true_cosine, abs=1e-6)
    total = sum(t.phi for t in split.terms) + split.bias_term + split.error_term
    assert abs(total - true_cosine) < 1e-5
    assert split.error_term != 0 and split.bias_term != 0  # both explicit, both needed
    # the formula for unit inputs, on the unit vectors (z of unit a is not z of a when ‖a‖ ≠ 1)
    if scale_a == scale_b == 1.0:
        za, zb = reference_code(sae, a[None])[0], reference_code(sae, b[None])[0]
        W = sae.W_dec.double()
        phi = 0.5 * (za * (W @ b.double()) + zb * (W @ a.double()))
        for t in split.terms:
            assert t.phi == pytest.approx(float(phi[t.feature]), abs=1e-6)
            assert t.label == f"f{t.feature}"
        assert {t.feature for t in split.terms} == set(torch.nonzero((za > 0) | (zb > 0)).flatten().tolist())
    assert abs(split.terms[0].phi) >= abs(split.terms[-1].phi)


def test_contrast_of_a_text_with_itself_has_no_differences():
    sae = trained_like_sae()
    a = torch.randn(16, generator=torch.Generator().manual_seed(9))
    same = contrast(sae, a, a)
    assert same.terms and all(t.difference == 0 for t in same.terms)
    assert sum(t.phi for t in same.terms) + same.bias_term + same.error_term == pytest.approx(1.0, abs=1e-5)
    split = contrast(sae, a, 2 * a)  # the SAE is not scale-invariant (b_dec), the cosine is
    assert split.cosine == pytest.approx(1.0, abs=1e-6)
    assert sum(t.phi for t in split.terms) + split.bias_term + split.error_term == pytest.approx(1.0, abs=1e-5)


def test_contrast_rejects_bad_vectors():
    sae = trained_like_sae()
    with pytest.raises(ValueError, match="zero"):
        contrast(sae, torch.zeros(16), torch.ones(16))
    with pytest.raises(ValueError, match="non-finite"):
        decompose(sae, torch.full((16,), float("nan")))
    with pytest.raises(ValueError, match="16-dimensional"):
        decompose(sae, torch.ones(5))


# ------------------------------------------------------------------ trace


@pytest.mark.parametrize("normalize", [False, True])
def test_trace_last_layer_equals_final_embedding_activation(tiny_model_factory, normalize):
    from aquin_monitor.encoders import encode, load_model

    model = load_model(tiny_model_factory(pooling="mean", normalize=normalize))
    texts = ["the cat is on the card", "money news", "$$ <script>"]
    layers, final = layer_inputs(model, texts, batch_size=2)
    assert layers.shape == (3, 3, 32)  # embeddings output + 2 layers
    np.testing.assert_allclose(final, encode(model, texts), atol=1e-5)
    np.testing.assert_array_equal(layers[:, -1], final)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(layers, axis=-1), 1.0, atol=1e-5)
    sae = trained_like_sae(d_in=32, num_latents=48, k=6)
    with torch.no_grad():
        sae.b_dec.copy_(torch.as_tensor(final.mean(0)))
        z_final = sae.encode(torch.as_tensor(final))
    for t in range(3):
        feature = int(z_final[t].argmax())
        traced = trace_feature(sae, layers[t], feature, labels=[f"l{i}" for i in range(48)], text=texts[t])
        assert traced.activations[-1] == float(z_final[t, feature])
        assert len(traced.activations) == 3 and traced.label == f"l{feature}"
        assert all(c["feature"] != feature for layer in traced.co_active for c in layer)


def test_trace_classification_on_constructed_layers():
    sae = SparseAutoencoder(8, 8, 1, seed=0)
    with torch.no_grad():  # identity dictionary: feature i fires on e_i
        sae.W_dec.copy_(torch.eye(8))
        sae.encoder.weight.copy_(torch.eye(8))
    e = torch.eye(8)
    late = torch.stack([e[1], e[1], e[1], e[0], e[0]])  # feature 0 from layer 3 of 0..4
    progressive = torch.stack([e[1], 0.5 * e[0], e[0], e[0], e[0]])
    transient = torch.stack([e[0], e[0], e[1], e[1], e[1]])
    assert trace_feature(sae, late, 0).classification == "late-binding"
    assert trace_feature(sae, late, 0).onset_layer == 3
    assert trace_feature(sae, progressive, 0).classification == "progressive"
    assert trace_feature(sae, transient, 0).classification == "transient"
    assert trace_feature(sae, late, 5).classification == "inactive"
    assert trace_feature(sae, progressive, 0).activations == [0.0, 0.5, 1.0, 1.0, 1.0]


def test_trace_figure_has_one_column_per_layer():
    from aquin_monitor.sae.trace import trace_figure

    sae = trained_like_sae(num_latents=32)
    layers = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    figure = trace_figure(trace_feature(sae, layers, int(sae.encode(layers[-1:]).argmax())))
    image = figure.axes[0].images[0].get_array()
    assert image.shape[1] == 5


# ------------------------------------------------------------------ steer


def planted_corpus(sae: SparseAutoencoder, n_docs: int = 300, active: int = 3, seed: int = 0) -> np.ndarray:
    """Documents made of a few of the SAE's own decoder rows (so its features read them)."""
    rng = np.random.default_rng(seed)
    W = sae.W_dec.detach().numpy()
    docs = np.zeros((n_docs, sae.d_in), dtype=np.float32)
    for i in range(n_docs):
        chosen = rng.choice(sae.num_latents, size=active, replace=False)
        docs[i] = rng.uniform(0.5, 2.0, size=active) @ W[chosen]
    return docs + 0.01 * rng.normal(size=docs.shape).astype(np.float32)


def test_steering_delta_zero_keeps_ranking_and_activation_rises_with_delta():
    from aquin_monitor.signals.retrieval import topk

    sae = SparseAutoencoder(64, 128, 3, seed=0).eval()
    docs = planted_corpus(sae)
    query = planted_corpus(sae, n_docs=1, seed=7)[0]
    ids = [f"d{i}" for i in range(len(docs))]
    feature = 17
    same = steer(sae, query, docs, feature, 0.0, top=10, doc_ids=ids)
    _, reference = topk(query[None], docs, 10)
    assert [h.index for h in same.before] == [h.index for h in same.after] == reference[0].tolist()
    assert same.cosine_shift == pytest.approx(1.0, abs=1e-6) and not same.entered and not same.left
    assert same.before[0].doc_id == ids[same.before[0].index]
    with torch.no_grad():
        z_docs = sae.encode(torch.as_tensor(docs))[:, feature].numpy()
    means = []
    for delta in [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]:
        result = steer(sae, query, docs, feature, delta, top=10)
        means.append(float(z_docs[[h.index for h in result.after]].mean()))
        # q' written out independently
        z_f = float(sae.encode(torch.as_tensor(query[None])).detach()[0, feature])
        moved = query.astype(np.float64) + (max(z_f + delta, 0) - z_f) * sae.W_dec[feature].detach().numpy()
        moved /= np.linalg.norm(moved)
        assert result.cosine_shift == pytest.approx(float(query @ moved / np.linalg.norm(query)), abs=1e-6)
    assert all(b > a for a, b in zip(means, means[1:])), means
    assert means[-1] > 0 and means[0] == 0.0


def test_steering_negative_delta_switches_feature_off():
    sae = SparseAutoencoder(64, 128, 3, seed=0).eval()
    docs = planted_corpus(sae)
    query = docs[5]
    with torch.no_grad():
        z = sae.encode(torch.as_tensor(query[None]))[0]
    feature = int(z.argmax())
    result = steer(sae, query, docs, feature, -100.0)
    assert result.activation_after == 0.0 and result.activation_before == pytest.approx(float(z[feature]))
    assert result.activation_measured < result.activation_before
    with pytest.raises(ValueError, match="feature"):
        steer(sae, query, docs, 128, 1.0)


# ------------------------------------------------------------------ faithfulness


def numpy_ndcg10(queries: np.ndarray, docs: np.ndarray, relevant: list[dict[int, int]]) -> float:
    """Binary-relevance NDCG@10 by brute force (cosine, ties to the smaller index)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    scores = q.astype(np.float64) @ d.T.astype(np.float64)
    values = []
    for i, rel in enumerate(relevant):
        order = np.lexsort((np.arange(len(d)), -scores[i]))
        dcg = sum(1 / math.log2(r + 2) for r, doc in enumerate(order[:10]) if doc in rel)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), 10)))
        values.append(dcg / idcg)
    return float(np.mean(values))


@pytest.fixture(scope="module")
def retrieval_case():
    sae = SparseAutoencoder(32, 64, 4, seed=1).eval()
    docs = planted_corpus(sae, n_docs=200, active=4, seed=2)
    rng = np.random.default_rng(3)
    queries = docs[:60] + 0.35 * rng.normal(size=(60, 32)).astype(np.float32)
    relevant = [{i: 1} for i in range(60)]
    return sae, queries, docs, relevant


def test_faithfulness_matches_full_recomputation(retrieval_case):
    sae, queries, docs, relevant = retrieval_case
    result = retrieval_faithfulness(sae, queries, docs, relevant, features=8, n_random=3, seed=0)
    assert result.ndcg == pytest.approx(numpy_ndcg10(queries, docs, relevant), abs=1e-9)
    assert len(result.features) == 8
    with torch.no_grad():
        z = sae.encode(torch.as_tensor(queries)).numpy()
    W = sae.W_dec.detach().numpy()
    for f in result.features:
        ablated = queries - z[:, [f.feature]] * W[f.feature]
        assert f.ndcg == pytest.approx(numpy_ndcg10(ablated, docs, relevant), abs=1e-9)
        assert f.drop == pytest.approx(result.ndcg - f.ndcg, abs=1e-12)
        assert f.mass == pytest.approx(float(z[:, f.feature].sum()), rel=1e-5)
        assert f.n_queries_active == int((z[:, f.feature] > 0).sum())
        assert f.excess_drop == pytest.approx(f.drop - f.random_drop_mean)
    masses = z.sum(0)
    assert sorted(f.feature for f in result.features) == sorted(np.argsort(-masses, kind="stable")[:8].tolist())
    assert [f.drop for f in result.features] == sorted((f.drop for f in result.features), reverse=True)


def test_ablating_nothing_drops_ndcg_by_exactly_zero(retrieval_case):
    sae, queries, docs, relevant = retrieval_case
    with torch.no_grad():
        z = sae.encode(torch.as_tensor(queries))
    silent = int(torch.nonzero(z.sum(0) == 0).flatten()[0])
    result = retrieval_faithfulness(sae, queries, docs, relevant, features=[silent], n_random=2)
    assert result.features[0].drop == 0.0 and result.features[0].ndcg == result.ndcg
    assert result.features[0].random_drop_mean == 0.0  # zero mass: no random ablation either
    assert retrieval_faithfulness(sae, queries, docs, relevant, features=[]).features == []


def test_faithfulness_random_baseline_has_the_same_activation_mass(retrieval_case, monkeypatch):
    from aquin_monitor.sae import faithfulness

    sae, queries, docs, relevant = retrieval_case
    with torch.no_grad():
        masses = sae.encode(torch.as_tensor(queries)).double().sum(0).numpy()
    seen = []
    original = faithfulness._change

    def spy(z, decoder, weights):
        seen.append(dict(weights))
        return original(z, decoder, weights)

    monkeypatch.setattr(faithfulness, "_change", spy)
    result = retrieval_faithfulness(sae, queries, docs, relevant, features=3, n_random=4, seed=1)
    assert len(seen) == 3 * 5  # per feature: its own ablation, then 4 random draws
    for group in range(3):
        own, *draws = seen[5 * group : 5 * group + 5]
        ((feature, weight),) = own.items()
        assert weight == 1.0 and feature in {f.feature for f in result.features}
        for weights in draws:
            assert feature not in weights and all(0 < w <= 1 for w in weights.values())
            assert sum(masses[j] * w for j, w in weights.items()) == pytest.approx(masses[feature], rel=1e-9)
    assert all(np.isfinite(f.random_drop_std) for f in result.features)


# ------------------------------------------------------------------ match


def permuted_copy(sae: SparseAutoencoder, permutation: torch.Tensor) -> SparseAutoencoder:
    copy = SparseAutoencoder(sae.d_in, sae.num_latents, sae.k, seed=99)
    with torch.no_grad():
        copy.encoder.weight.copy_(sae.encoder.weight[permutation])
        copy.encoder.bias.copy_(sae.encoder.bias[permutation])
        copy.W_dec.copy_(sae.W_dec[permutation])
        copy.b_dec.copy_(sae.b_dec)
    return copy.eval()


def test_matching_recovers_a_permuted_copy_exactly():
    sae = trained_like_sae(d_in=16, num_latents=48, k=4)
    x = planted_corpus(sae, n_docs=1500, active=3, seed=4)
    permutation = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    copy = permuted_copy(sae, permutation)
    result = match_features(sae, x, copy, x, labels_a=[f"a{i}" for i in range(48)])
    inverse = torch.argsort(permutation)
    alive = (sae.encode(torch.as_tensor(x)) > 0).any(0)
    assert len(result.pairs) == int(alive.sum())
    for p in result.pairs:
        assert p.feature_b == int(inverse[p.feature_a])
        assert p.correlation == pytest.approx(1.0, abs=1e-9)
        assert p.decoder_cosine == pytest.approx(1.0, abs=1e-6) and p.label_a == f"a{p.feature_a}"
    assert [result.best_b_for_a[i] for i in range(48) if alive[i]] == [int(inverse[i]) for i in range(48) if alive[i]]
    assert not result.unmatched_a and not result.unmatched_b and result.quality["share_above_threshold"] == 1.0


def test_matching_finds_near_zero_correlation_on_shuffled_texts():
    sae = trained_like_sae(d_in=16, num_latents=48, k=4)
    x = planted_corpus(sae, n_docs=3000, active=3, seed=4)
    shuffled = x[np.random.default_rng(1).permutation(len(x))]
    result = match_features(sae, x, sae, shuffled)
    from aquin_monitor.sae.match import activation_correlation

    c, alive_a, alive_b = activation_correlation(sae, x, sae, shuffled)
    live = c[np.ix_(alive_a, alive_b)]
    assert np.abs(live).mean() < 0.03 and np.abs(live).max() < 0.15
    assert result.quality["mean"] < 0.1 and len(result.unmatched_a) == int(alive_a.sum())
    # the same features, same order: the diagonal is 1 (Pearson against numpy)
    c_same, _, _ = activation_correlation(sae, x, sae, x)
    z = sae.encode(torch.as_tensor(x)).detach().numpy().astype(np.float64)
    i, j = int(np.flatnonzero(alive_a)[0]), int(np.flatnonzero(alive_a)[1])
    assert c_same[i, j] == pytest.approx(np.corrcoef(z[:, i], z[:, j])[0, 1], abs=1e-9)
