"""Per-layer signals of the transformer under an embedding model.

- :func:`layerwise_similarity`: anisotropy (mean pairwise cosine) of each layer's pooled
  hidden states, from the embedding layer (index 0) to the last block (index L).
- :func:`attention_entropy` / :func:`summarize_attention_entropy`: Shannon entropy of each
  head's attention over non-padding tokens, per input so batches can be accumulated, then
  reduced to an [L, H] heatmap with collapsed and dead (uniform) heads flagged.

Inputs are numpy arrays or torch tensors; computation is float64. Metric names:
``layers/similarity.00`` …, ``attention/entropy_mean``, ``attention/dead_heads``,
``attention/collapsed_heads``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .arrays import metric_name, to_numpy
from .geometry import anisotropy

# Defaults for flagging heads (see summarize_attention_entropy for the reasoning).
COLLAPSED_BELOW_NATS = 0.1
UNIFORM_ABOVE_NORMALIZED = 0.95
# A softmax row sums to 1; allow float16/bfloat16 rounding before calling it malformed.
_ROW_SUM_TOLERANCE = 1e-2


@dataclass(frozen=True)
class LayerwiseSimilarity:
    """Anisotropy of each layer's pooled states; index 0 is the embedding layer."""

    similarity: np.ndarray

    def as_metrics(self, prefix: str = "layers") -> dict[str, float]:
        return {
            metric_name(prefix, f"similarity.{layer:02d}"): float(value) for layer, value in enumerate(self.similarity)
        }


def layerwise_similarity(layer_embeddings: object) -> LayerwiseSimilarity:
    """Mean pairwise cosine of the pooled hidden states of every layer.

    ``layer_embeddings`` is ``[L+1, n, h]`` (or a sequence of L+1 ``[n, h]`` matrices, whose
    widths may differ): the pooled state of n inputs after the embedding layer and each of
    the L blocks. ``similarity[l]`` = :func:`aquin_monitor.signals.geometry.anisotropy` of
    layer l = (‖Σᵢ x̂ᵢ‖² − n) / (n(n − 1)). Rising values through depth are the usual
    anisotropy of contextual representations (Ethayarajh 2019).

    >>> layerwise_similarity([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.1]]]).similarity.round(3)
    array([0.   , 0.995])
    """
    if isinstance(layer_embeddings, Sequence) and not isinstance(layer_embeddings, np.ndarray):
        layers = list(layer_embeddings)
        if not layers:
            raise ValueError("layer_embeddings is empty: expected L+1 layers of [n, h] states")
    else:
        array = to_numpy(layer_embeddings, "layer_embeddings")
        if array.ndim != 3:
            raise ValueError(f"layer_embeddings must be [L+1, n, h], got shape {tuple(array.shape)}")
        if array.shape[0] == 0:
            raise ValueError("layer_embeddings is empty: expected L+1 layers of [n, h] states")
        layers = list(array)
    row_counts = {
        int(array.shape[0]) for array in (to_numpy(layer, "layer_embeddings") for layer in layers) if array.ndim > 0
    }
    if len(row_counts) > 1:
        raise ValueError(f"every layer must hold the same inputs, got row counts {sorted(row_counts)}")
    values = []
    for index, layer in enumerate(layers):
        try:
            values.append(anisotropy(layer))
        except ValueError as exc:
            raise ValueError(f"layer {index}: {exc}") from exc
    return LayerwiseSimilarity(similarity=np.asarray(values))


@dataclass(frozen=True)
class AttentionEntropy:
    """Per input, layer and head: mean entropy (nats) of attention rows, raw and normalised.

    ``entropy`` and ``normalized`` are ``[B, L, H]``; ``num_tokens`` is ``[B]``. ``normalized``
    is NaN for an input with a single non-padding token (log 1 = 0: no spread possible).
    """

    entropy: np.ndarray
    normalized: np.ndarray
    num_tokens: np.ndarray


def attention_entropy(attentions: Sequence[object], attention_mask: object | None = None) -> AttentionEntropy:
    """Shannon entropy of each head's attention over the non-padding tokens of each input.

    For input b (m_b non-padding tokens), layer l, head h and non-padding query q, with
    p_k = A[b,h,q,k] / Σ_{k' real} A[b,h,q,k'] over non-padding keys k (a renormalisation
    that is a no-op up to rounding for models that mask padding keys, as Hugging Face
    models do)::

        H_q = −Σ_k p_k log p_k                  (nats, 0 log 0 = 0)
        entropy[b, l, h]    = mean over non-padding q of H_q
        normalized[b, l, h] = entropy[b, l, h] / log(m_b)   ∈ [0, 1]

    0 means every query attends to one token, log m_b (normalised 1) means uniform attention.

    ``attentions``: L arrays ``[B, H, T, T]`` (query × key), e.g. ``output_attentions=True``
    of a transformers model. ``attention_mask``: ``[B, T]``, 1/True for real tokens (all real
    when omitted). Negative or non-finite weights, rows not summing to 1, zero attention
    mass on the real tokens, an input without tokens or mismatched shapes raise ``ValueError``.

    >>> one_hot = np.eye(3)[None, None]  # each query attends to itself only
    >>> float(attention_entropy([one_hot]).entropy[0, 0, 0])
    0.0
    """
    layers = list(attentions)
    if not layers:
        raise ValueError("attentions is empty: expected one [B, H, T, T] array per layer")
    first = to_numpy(layers[0], "attentions[0]")
    if first.ndim != 4 or first.shape[2] != first.shape[3]:
        raise ValueError(f"attentions[0] must be [B, H, T, T], got shape {tuple(first.shape)}")
    batch, heads, tokens, _ = first.shape
    if batch == 0 or tokens == 0:
        raise ValueError(f"attentions[0] is empty (shape {tuple(first.shape)})")
    if attention_mask is None:
        mask = np.ones((batch, tokens), dtype=bool)
    else:
        mask_array = to_numpy(attention_mask, "attention_mask")
        if mask_array.shape != (batch, tokens):
            raise ValueError(f"attention_mask must be [B, T] = {(batch, tokens)}, got {tuple(mask_array.shape)}")
        if not np.isin(mask_array, (0, 1)).all():
            raise ValueError("attention_mask must contain only 0/1 (or False/True)")
        mask = mask_array.astype(bool)
    num_tokens = mask.sum(axis=1)
    if (num_tokens == 0).any():
        empty = np.flatnonzero(num_tokens == 0)[:5].tolist()
        raise ValueError(f"input(s) {empty} have no non-padding token in attention_mask")

    entropy = np.empty((batch, len(layers), heads))
    for layer_index, layer in enumerate(layers):
        weights = first if layer_index == 0 else to_numpy(layer, f"attentions[{layer_index}]")
        if weights.shape != (batch, heads, tokens, tokens):
            raise ValueError(
                f"attentions[{layer_index}] has shape {tuple(weights.shape)}, expected "
                f"{(batch, heads, tokens, tokens)} like attentions[0]"
            )
        # inputs in chunks whose temporaries stay near 64 MB, whatever the sequence length
        chunk = max(1, (1 << 24) // (heads * tokens * tokens))
        for lo in range(0, batch, chunk):
            hi = min(batch, lo + chunk)
            entropy[lo:hi, layer_index] = _chunk_entropy(weights[lo:hi], mask[lo:hi], layer_index, lo)
    log_tokens = np.log(num_tokens.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        normalized = np.where(num_tokens[:, None, None] > 1, entropy / log_tokens[:, None, None], np.nan)
    return AttentionEntropy(entropy=entropy, normalized=normalized, num_tokens=num_tokens)


def _chunk_entropy(weights, mask: np.ndarray, layer_index: int, first_input: int) -> np.ndarray:
    """Mean row entropy ``[c, H]`` of attentions ``[c, H, T, T]`` over the real queries and keys.

    Real query rows must be finite, non-negative and sum to 1 over all keys, and give some weight
    to the real keys; the first input (``first_input`` + offset) breaking a rule is named. The checks
    run over the whole chunk at once; the entropy over each input's real tokens (terms in the weights'
    precision, sums in float64).
    """
    import torch

    w = torch.as_tensor(np.asarray(weights) if not isinstance(weights, torch.Tensor) else weights)
    if w.dtype != torch.float64:
        w = w.float()
    m = torch.as_tensor(mask)
    real_query = m[:, None, :]  # [c, 1, T] over the [c, H, T] row statistics

    def first(violations) -> int:
        return first_input + int(torch.nonzero(violations.reshape(len(violations), -1).any(dim=1))[0, 0])

    sums = w.sum(dim=-1)  # [c, H, T]; weights are at most 1, so a sum is finite iff its terms are
    bad = ~torch.isfinite(sums) & real_query
    if bad.any():
        raise ValueError(f"attentions[{layer_index}] input {first(bad)} contains NaN or Inf")
    negative = (w.amin(dim=-1) < 0) & real_query
    if negative.any():
        raise ValueError(
            f"attentions[{layer_index}] input {first(negative)} has negative weights: expected softmax "
            "probabilities, not scores"
        )
    off = ((sums - 1.0).abs() > _ROW_SUM_TOLERANCE) & real_query
    if off.any():
        b = first(off) - first_input
        real_sums = sums[b][:, m[b]]
        raise ValueError(
            f"attentions[{layer_index}] input {first_input + b}: attention rows sum to "
            f"{float(real_sums.min()):.4g}..{float(real_sums.max()):.4g}, expected 1 (softmax over keys, last axis)"
        )
    out = np.empty((len(w), w.shape[1]))
    for b in range(len(w)):  # each input's real tokens only (a padded batch is mostly padding)
        real = m[b]
        n_real = int(real.sum())
        if bool(real[:n_real].all()):  # right padding, as tokenizers do: a slice, no copy
            rows = w[b, :, :n_real, :n_real]
        else:
            idx = torch.nonzero(real)[:, 0]
            rows = w[b][:, idx][:, :, idx]
        mass = rows.sum(dim=-1, keepdim=True, dtype=torch.float64)  # [H, m, 1]
        if bool((mass <= 0).any()):
            raise ValueError(
                f"attentions[{layer_index}] input {first_input + b}: a query gives zero weight to every "
                "non-padding token (is attention_mask the one the model used?)"
            )
        # with p = w / s (s = the row's mass on the real keys): −Σ p log p = (−Σ w log w) / s + log s, one
        # pass over the weights without materialising p; −w log w in the weights' own precision (float32
        # from a model: ~1e-7 relative), sums in float64
        row_entropy = torch.special.entr(rows).sum(dim=-1, dtype=torch.float64) / mass[..., 0] + torch.log(mass[..., 0])
        out[b] = row_entropy.mean(dim=-1).numpy()
    return out


@dataclass(frozen=True)
class AttentionEntropySummary:
    """Mean attention entropy per [layer, head] over inputs, and the flagged heads.

    ``collapsed_heads`` / ``dead_heads`` list ``(layer, head)`` pairs.
    """

    entropy: np.ndarray
    normalized: np.ndarray
    collapsed_heads: tuple[tuple[int, int], ...]
    dead_heads: tuple[tuple[int, int], ...]
    collapsed_below: float
    uniform_above: float

    def as_metrics(self, prefix: str = "attention") -> dict[str, float]:
        known = self.normalized[~np.isnan(self.normalized)]
        metrics = {
            metric_name(prefix, "entropy_mean"): float(self.entropy.mean()),
            metric_name(prefix, "normalized_entropy_mean"): (float(known.mean()) if known.size else math.nan),
            metric_name(prefix, "collapsed_heads"): float(len(self.collapsed_heads)),
            metric_name(prefix, "dead_heads"): float(len(self.dead_heads)),
        }
        for layer, value in enumerate(self.entropy.mean(axis=1)):
            metrics[metric_name(prefix, f"entropy.{layer:02d}")] = float(value)
        return metrics


def summarize_attention_entropy(
    per_input_entropy: object,
    per_input_normalized: object,
    collapsed_below: float = COLLAPSED_BELOW_NATS,
    uniform_above: float = UNIFORM_ABOVE_NORMALIZED,
) -> AttentionEntropySummary:
    """Reduce ``[B, L, H]`` per-input entropies to an ``[L, H]`` heatmap and flag heads.

    ``entropy[l, h]`` = mean over inputs of ``per_input_entropy[:, l, h]``;
    ``normalized[l, h]`` = mean over inputs (ignoring NaN, i.e. one-token inputs) of
    ``per_input_normalized[:, l, h]``. A head is

    - **collapsed** when ``entropy[l, h] < collapsed_below`` (nats). exp(H) is the effective
      number of tokens attended to; the default 0.1 nats means ≤ 1.105 tokens, i.e. each query
      puts essentially all of its weight on a single token (e.g. 98% on one of 20 tokens
      already gives 0.16 nats, so 0.1 only catches real one-token heads).
    - **dead** (uniform) when ``normalized[l, h] > uniform_above``; the default 0.95 means
      at least m^0.95 effective tokens out of m (≥ 89% of 10 tokens, ≥ 79% of 100): the head
      averages its input instead of selecting from it.

    The arguments are those of :class:`AttentionEntropy`, possibly concatenated over batches.

    >>> entropy = np.array([[[0.0, 2.0]], [[0.1, 2.0]]])  # 2 inputs of 8 tokens, 1 layer, 2 heads
    >>> s = summarize_attention_entropy(entropy, entropy / np.log(8.0))  # 2 / log 8 = 0.96
    >>> s.entropy.tolist(), s.collapsed_heads, s.dead_heads
    ([[0.05, 2.0]], ((0, 0),), ((0, 1),))
    """
    entropy = np.asarray(to_numpy(per_input_entropy, "per_input_entropy"), dtype=np.float64)
    normalized = np.asarray(to_numpy(per_input_normalized, "per_input_normalized"), dtype=np.float64)
    if entropy.ndim != 3 or entropy.shape[0] == 0:
        raise ValueError(f"per_input_entropy must be a non-empty [B, L, H], got {entropy.shape}")
    if normalized.shape != entropy.shape:
        raise ValueError(
            f"per_input_normalized must have the shape of per_input_entropy {entropy.shape}, got {normalized.shape}"
        )
    if not np.isfinite(entropy).all() or (entropy < 0).any():
        raise ValueError("per_input_entropy must be finite and non-negative")
    if np.isinf(normalized).any():
        raise ValueError("per_input_normalized contains Inf")
    if not collapsed_below >= 0 or not 0 <= uniform_above <= 1:
        raise ValueError(
            f"need collapsed_below >= 0 and 0 <= uniform_above <= 1, got {collapsed_below}, {uniform_above}"
        )
    mean_entropy = entropy.mean(axis=0)
    counted = (~np.isnan(normalized)).sum(axis=0)
    mean_normalized = np.divide(
        np.nansum(normalized, axis=0),
        counted,
        out=np.full(mean_entropy.shape, np.nan),
        where=counted > 0,
    )
    collapsed = tuple((int(l), int(h)) for l, h in np.argwhere(mean_entropy < collapsed_below))
    with np.errstate(invalid="ignore"):
        dead = tuple((int(l), int(h)) for l, h in np.argwhere(mean_normalized > uniform_above))
    return AttentionEntropySummary(
        entropy=mean_entropy,
        normalized=mean_normalized,
        collapsed_heads=collapsed,
        dead_heads=dead,
        collapsed_below=float(collapsed_below),
        uniform_above=float(uniform_above),
    )
