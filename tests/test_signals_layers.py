"""Layer-wise similarity and attention entropy against hand-built cases and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from aquin_monitor.signals.geometry import anisotropy
from aquin_monitor.signals.layers import (
    attention_entropy,
    layerwise_similarity,
    summarize_attention_entropy,
)

# --------------------------------------------------------------------------- layer similarity


def test_layerwise_similarity_is_anisotropy_per_layer():
    rng = np.random.default_rng(0)
    states = rng.standard_normal((4, 30, 8)) + np.arange(4)[:, None, None] * 0.5
    result = layerwise_similarity(states)
    for layer in range(4):
        u = states[layer] / np.linalg.norm(states[layer], axis=1, keepdims=True)
        cosines = u @ u.T
        brute = (cosines.sum() - 30) / (30 * 29)
        assert result.similarity[layer] == pytest.approx(brute, abs=1e-12)
    assert list(result.as_metrics()) == [f"layers/similarity.{i:02d}" for i in range(4)]
    assert layerwise_similarity(torch.from_numpy(states)).similarity == pytest.approx(result.similarity)


def test_layerwise_similarity_accepts_layers_of_different_width():
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((10, 4)), rng.standard_normal((10, 6)) + 1]
    np.testing.assert_allclose(layerwise_similarity(parts).similarity, [anisotropy(parts[0]), anisotropy(parts[1])])


def test_layerwise_similarity_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[L\+1, n, h\]"):
        layerwise_similarity(np.ones((3, 4)))
    with pytest.raises(ValueError, match="empty"):
        layerwise_similarity([])
    with pytest.raises(ValueError, match="same inputs"):
        layerwise_similarity([np.ones((3, 2)), np.ones((4, 2))])
    states = np.random.default_rng(2).standard_normal((3, 5, 4))
    states[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"layer 2: .*NaN or Inf in row\(s\) 3"):
        layerwise_similarity(states)


# --------------------------------------------------------------------------- attention entropy


def padded_uniform_attention(lengths, tokens, heads=2):
    """[B, H, T, T]: each real query spreads evenly over the real keys; padding keys get 0;
    padding query rows are garbage (they must be ignored)."""
    batch = len(lengths)
    attention = np.zeros((batch, heads, tokens, tokens))
    mask = np.zeros((batch, tokens), dtype=np.int64)
    for b, m in enumerate(lengths):
        mask[b, :m] = 1
        attention[b, :, :m, :m] = 1.0 / m
        attention[b, :, m:, :] = 1.0 / tokens  # padding queries: must not count
    return attention, mask


def test_one_hot_attention_has_zero_entropy():
    tokens = 5
    one_hot = np.zeros((1, 3, tokens, tokens))
    for h in range(3):
        one_hot[0, h, np.arange(tokens), (np.arange(tokens) + h) % tokens] = 1.0
    result = attention_entropy([one_hot, one_hot], np.ones((1, tokens)))
    assert result.entropy.shape == (1, 2, 3)
    np.testing.assert_array_equal(result.entropy, 0.0)
    np.testing.assert_array_equal(result.normalized, 0.0)


def test_uniform_attention_over_m_tokens_is_log_m_and_padding_is_ignored():
    lengths = [2, 5, 8]
    attention, mask = padded_uniform_attention(lengths, tokens=8)
    result = attention_entropy([attention], mask)
    for b, m in enumerate(lengths):
        np.testing.assert_allclose(result.entropy[b], math.log(m), rtol=1e-12)
    np.testing.assert_allclose(result.normalized, 1.0, rtol=1e-12)
    np.testing.assert_array_equal(result.num_tokens, lengths)


def test_entropy_matches_scipy_on_random_softmax_with_padding():
    rng = np.random.default_rng(3)
    batch, heads, tokens = 3, 4, 7
    lengths = np.array([7, 4, 2])
    mask = (np.arange(tokens)[None, :] < lengths[:, None]).astype(np.int64)
    scores = torch.from_numpy(rng.standard_normal((batch, heads, tokens, tokens)) * 2)
    scores = scores.masked_fill(~torch.from_numpy(mask).bool()[:, None, None, :], float("-inf"))
    attention = torch.softmax(scores, dim=-1).float()  # what a masked HF model returns
    result = attention_entropy([attention, attention.flip(1)], torch.from_numpy(mask))
    for b, m in enumerate(lengths):
        for h in range(heads):
            rows = attention[b, h, :m, :m].double().numpy()
            expected = np.mean([scipy_entropy(row) for row in rows])
            assert result.entropy[b, 0, h] == pytest.approx(expected, rel=1e-6)
            assert result.entropy[b, 1, heads - 1 - h] == pytest.approx(expected, rel=1e-6)
            assert result.normalized[b, 0, h] == pytest.approx(expected / math.log(m), rel=1e-6)


def test_padding_keys_with_weight_are_renormalised_away():
    # a model run without the mask spreads weight onto padding keys: only real keys count
    attention = np.zeros((1, 1, 4, 4))
    attention[0, 0, :, :] = [0.3, 0.1, 0.3, 0.3]
    mask = np.array([[1, 1, 0, 0]])
    result = attention_entropy([attention], mask)
    assert result.entropy[0, 0, 0] == pytest.approx(scipy_entropy([0.3, 0.1]), rel=1e-12)


def test_single_token_input_has_nan_normalised_entropy():
    attention, mask = padded_uniform_attention([1, 3], tokens=3)
    result = attention_entropy([attention], mask)
    assert result.entropy[0, 0, 0] == 0.0
    assert np.isnan(result.normalized[0]).all()
    np.testing.assert_allclose(result.normalized[1], 1.0)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a, m: ([a], m[:, :3]), r"attention_mask must be \[B, T\]"),
        (lambda a, m: ([a, a[:, :1]], m), r"attentions\[1\] has shape"),
        (lambda a, m: ([a[0]], m), r"\[B, H, T, T\]"),
        (lambda a, m: ([], m), "empty"),
        (lambda a, m: ([a], m * np.array([[1], [0]])), "no non-padding token"),
        (lambda a, m: ([a * 2], m), "sum to"),
        (lambda a, m: ([a - 0.5], m), "negative weights"),
        (lambda a, m: ([np.where(a > 0, np.nan, a)], m), "NaN or Inf"),
        (lambda a, m: ([a], m * 2), "only 0/1"),
    ],
)
def test_attention_entropy_rejects_bad_input(mutate, message):
    attention, mask = padded_uniform_attention([3, 4], tokens=4)
    attentions, bad_mask = mutate(attention, mask)
    with pytest.raises(ValueError, match=message):
        attention_entropy(attentions, bad_mask)


def test_zero_mass_on_real_tokens_raises():
    attention = np.zeros((1, 1, 3, 3))
    attention[..., 2] = 1.0  # every query looks only at the padding token
    with pytest.raises(ValueError, match="zero weight to every non-padding token"):
        attention_entropy([attention], [[1, 1, 0]])


# --------------------------------------------------------------------------- summary


def hand_built_heads(batch=2, tokens=6):
    """Layer 0: head 0 one-hot (collapsed), head 1 uniform (dead), head 2 in between;
    layer 1: all three in between."""
    rng = np.random.default_rng(4)
    mask = np.ones((batch, tokens))
    layer0 = np.empty((batch, 3, tokens, tokens))
    layer0[:, 0] = np.eye(tokens)
    layer0[:, 1] = 1.0 / tokens
    middle = rng.dirichlet(np.full(tokens, 0.5), size=(batch, 4, tokens))
    layer0[:, 2] = middle[:, 0]
    layer1 = middle[:, 1:]
    return [layer0, layer1], mask


def test_summary_flags_collapsed_and_dead_heads():
    attentions, mask = hand_built_heads()
    per_input = attention_entropy(attentions, mask)
    summary = summarize_attention_entropy(per_input.entropy, per_input.normalized)
    np.testing.assert_allclose(summary.entropy, per_input.entropy.mean(axis=0))
    assert summary.collapsed_heads == ((0, 0),)
    assert summary.dead_heads == ((0, 1),)
    assert summary.entropy[0, 1] == pytest.approx(math.log(6))
    metrics = summary.as_metrics()
    assert metrics["attention/collapsed_heads"] == 1.0
    assert metrics["attention/dead_heads"] == 1.0
    assert metrics["attention/entropy_mean"] == pytest.approx(per_input.entropy.mean())
    assert metrics["attention/entropy.01"] == pytest.approx(per_input.entropy[:, 1].mean())
    loose = summarize_attention_entropy(
        per_input.entropy, per_input.normalized, collapsed_below=10.0, uniform_above=0.0
    )
    assert len(loose.collapsed_heads) == 6
    assert (0, 0) not in loose.dead_heads and len(loose.dead_heads) == 5  # one-hot: exactly 0


def test_summary_accumulates_over_batches():
    attentions, mask = hand_built_heads(batch=4)
    whole = attention_entropy(attentions, mask)
    first = attention_entropy([a[:1] for a in attentions], mask[:1])
    rest = attention_entropy([a[1:] for a in attentions], mask[1:])
    combined = summarize_attention_entropy(
        np.concatenate([first.entropy, rest.entropy]),
        np.concatenate([first.normalized, rest.normalized]),
    )
    np.testing.assert_allclose(combined.entropy, summarize_attention_entropy(whole.entropy, whole.normalized).entropy)


def test_summary_ignores_nan_normalised_entries_and_rejects_bad_input():
    entropy = np.zeros((2, 1, 1))
    normalized = np.array([[[np.nan]], [[0.5]]])
    assert summarize_attention_entropy(entropy, normalized).normalized[0, 0] == 0.5
    with pytest.raises(ValueError, match="shape of per_input_entropy"):
        summarize_attention_entropy(entropy, normalized[:1])
    with pytest.raises(ValueError, match=r"non-empty \[B, L, H\]"):
        summarize_attention_entropy(np.zeros((0, 1, 1)), np.zeros((0, 1, 1)))
    with pytest.raises(ValueError, match="finite and non-negative"):
        summarize_attention_entropy(-entropy - 1, normalized)
    with pytest.raises(ValueError, match="uniform_above"):
        summarize_attention_entropy(entropy, normalized, uniform_above=2.0)


# --------------------------------------------------------------------------- a real transformer


def test_padded_batch_of_a_real_bert_equals_each_input_alone():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        attn_implementation="eager",
    )
    model = BertModel(config).eval()
    lengths = [9, 4, 6]
    input_ids = torch.randint(5, 50, (3, 9))
    mask = (torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        batch = model(input_ids=input_ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
        batched = attention_entropy(batch.attentions, mask)
        for b, m in enumerate(lengths):
            alone = model(input_ids=input_ids[b : b + 1, :m], output_attentions=True)
            single = attention_entropy(alone.attentions)
            np.testing.assert_allclose(batched.entropy[b], single.entropy[0], rtol=1e-5)
            np.testing.assert_allclose(batched.normalized[b], single.entropy[0] / math.log(m), rtol=1e-5)
    assert batched.entropy.shape == (3, 2, 4)
    pooled = torch.stack([(h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) for h in batch.hidden_states])
    assert layerwise_similarity(pooled).similarity.shape == (3,)
