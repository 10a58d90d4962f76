"""SAE signals for checkpoint snapshots: how a fine-tuned space sits in the *base* model's dictionary.

The pieces the snapshot runner calls (pure: arrays in, numbers and small arrays out):

- :func:`snapshot_signals`: encode a probe's embeddings with the base model's SAE and measure
  ``sae/fvu`` (how far the space has moved out of the base dictionary), ``sae/dead_fraction``
  (features that never fire on the probe), ``sae/l0`` and ``sae/l0_effective`` (mean number of
  features per text with activation above ``threshold``), and each feature's firing frequency and
  mean activation.
- :func:`feature_movers`: the features whose firing frequency rose (``gained``) or fell
  (``lost``) most between two snapshots of the same probe texts, with their labels, supports
  (texts they fire on, at least :func:`movers_min_support`) and top texts.

A collapsing fine-tune (all embeddings pushed onto one direction) shows as FVU rising (the
residual is measured against the probe's now tiny variance) and features dying.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import snapshot_keys as keys
from .evaluate import top_activations

__all__ = ["SaeSnapshot", "feature_movers", "movers_min_support", "sae_choice", "snapshot_signals"]


@dataclass
class SaeSnapshot:
    """SAE view of one snapshot's probe embeddings.

    Attributes:
        metrics: ``sae/fvu``, ``sae/dead_fraction``, ``sae/l0``, ``sae/l0_effective``.
        frequency: share of probe texts on which each feature fires, [n_latents].
        mean_activation: mean activation of each feature where it fires (0 if never), [n_latents].
        top_rows: probe rows with the largest activation per feature, [n_latents, top] (-1: none).
        top_values: those activations, [n_latents, top].
    """

    metrics: dict[str, float]
    frequency: np.ndarray
    mean_activation: np.ndarray
    top_rows: np.ndarray = field(repr=False)
    top_values: np.ndarray = field(repr=False)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-feature arrays under ``sae/…`` names, for a snapshot's ``.npz``."""
        return {
            keys.SAE_FREQUENCY: self.frequency,
            keys.SAE_MEAN_ACTIVATION: self.mean_activation,
            keys.SAE_TOP_ROWS: self.top_rows,
            keys.SAE_TOP_VALUES: self.top_values,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SaeSnapshot:
        """The per-feature view back from a saved snapshot's :meth:`arrays` (its metrics are not kept there)."""
        return cls(
            {},
            arrays[keys.SAE_FREQUENCY],
            arrays[keys.SAE_MEAN_ACTIVATION],
            arrays[keys.SAE_TOP_ROWS],
            arrays[keys.SAE_TOP_VALUES],
        )


@torch.no_grad()
def snapshot_signals(
    sae: Any,
    embeddings: np.ndarray,
    texts: Sequence[str],
    *,
    threshold: float = 0.01,
    top: int = 3,
    batch_size: int = 4096,
) -> SaeSnapshot:
    """SAE metrics and per-feature statistics of a probe's embeddings.

    Args:
        sae: the *base* model's :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        embeddings: probe embeddings [n, d] (n ≥ 2) of the model being monitored.
        texts: the n probe texts (only their count is checked here; :func:`feature_movers` reads them).
        threshold: activation above which a feature counts for ``sae/l0_effective``.
        top: top texts kept per feature.
        batch_size: rows encoded at a time.

    Returns:
        :class:`SaeSnapshot`.

    Raises:
        ValueError: embeddings not [n ≥ 2, sae.d_in], or ``len(texts) != n``.

    Example:

        >>> from aquin_monitor.sae.model import SparseAutoencoder
        >>> sae = SparseAutoencoder(8, 32, 4, seed=0)
        >>> x = np.random.default_rng(0).normal(size=(50, 8)).astype("float32")
        >>> snap = snapshot_signals(sae, x, [str(i) for i in range(50)])
        >>> sorted(snap.metrics)
        ['sae/cosine', 'sae/dead_fraction', 'sae/fvu', 'sae/l0', 'sae/l0_effective']
    """
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32)).to(sae.W_dec.device)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] != sae.d_in:
        raise ValueError(f"embeddings must be [n >= 2, {sae.d_in}] for this SAE, got {tuple(x.shape)}")
    if len(texts) != x.shape[0]:
        raise ValueError(f"{len(texts)} texts for {x.shape[0]} embeddings")
    counts = torch.zeros(sae.num_latents, dtype=torch.float64, device=x.device)
    sums = torch.zeros_like(counts)
    above = torch.zeros((), dtype=torch.float64, device=x.device)
    err = torch.zeros((), dtype=torch.float64, device=x.device)
    cos_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    mean = x.mean(0)
    var = (x - mean).double().pow(2).sum()
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        acts, indices, _ = sae.encode_topk(batch)
        recon = sae.decode_topk(acts, indices)
        err += (batch - recon).double().pow(2).sum()
        cos_sum += torch.nn.functional.cosine_similarity(batch, recon, dim=1).double().sum()
        fired = acts > 0
        counts.index_add_(0, indices[fired], torch.ones_like(acts[fired], dtype=torch.float64))
        sums.index_add_(0, indices[fired], acts[fired].double())
        above += (acts > threshold).sum()
    n = len(x)
    values, rows = top_activations(sae, x, top=top, batch_size=batch_size)
    frequency = (counts / n).float().cpu().numpy()
    metrics = {
        "sae/fvu": float(err / var) if var > 0 else float("inf"),
        "sae/cosine": float(cos_sum / n),
        "sae/dead_fraction": float(np.mean(frequency == 0)),
        "sae/l0": float(counts.sum() / n),
        "sae/l0_effective": float(above / n),
    }
    mean_activation = torch.where(counts > 0, sums / counts.clamp_min(1), 0).float().cpu().numpy()
    return SaeSnapshot(metrics, frequency, mean_activation, rows, values)


def movers_min_support(n_texts: int) -> int:
    """The support a feature needs to be listed as gained or lost: ``max(3, ceil(3 % of the probe))`` texts.

    A feature going from 4 to 8 of 600 texts doubles its firing frequency on a handful of texts:
    noise, not a change the fine-tune made. 3 % of the probe (18 of 600) keeps features whose
    change concerns a visible share of it; 3 texts is the floor for small probes.

    >>> movers_min_support(600), movers_min_support(1000), movers_min_support(12)
    (18, 30, 3)
    """
    return max(3, math.ceil(0.03 * n_texts))


def feature_movers(
    base: SaeSnapshot,
    now: SaeSnapshot,
    texts: Sequence[str],
    top: int = 20,
    *,
    min_support: int | None = None,
    labels: Sequence[str | None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Features whose firing frequency rose or fell most from ``base`` to ``now`` (same probe texts).

    Features are ordered by the change in firing frequency, ties broken by the change in mean
    activation; a feature whose frequency and mean activation are both unchanged is not listed, nor
    one firing on fewer than ``min_support`` probe texts on its busier side (after for a gained
    feature, before for a lost one; a feature born or dead in the fine-tune has 0 on the other).

    Args:
        base: :func:`snapshot_signals` of the base model's embeddings.
        now: the same for the checkpoint.
        texts: the probe texts both snapshots were taken on.
        top: features per list.
        min_support: texts a listed feature fires on at least (on its busier side); None:
            :func:`movers_min_support` of the probe size; 0 lists every moved feature.
        labels: a label per feature (the SAE folder's ``features.json``:
            :func:`~aquin_monitor.sae.model.feature_labels`).

    Returns:
        ``{"gained": [...], "lost": [...]}``, each entry ``{"feature", "label", "frequency_before",
        "frequency_after", "texts_before", "texts_after", "n_texts", "min_support",
        "mean_activation_before", "mean_activation_after", "top_texts"}`` (``texts_*``: probe texts the
        feature fires on, of ``n_texts``); top texts are those where the feature fires most *now*
        (gained) or *before* (lost).

    Example:

        >>> f = lambda freq: SaeSnapshot({}, np.array(freq), np.array(freq), np.array([[0], [1]]), np.ones((2, 1)))
        >>> m = feature_movers(f([0.1, 0.5]), f([0.4, 0.2]), ["a", "b"], min_support=0)
        >>> [e["feature"] for e in m["gained"]], [e["feature"] for e in m["lost"]]
        ([0], [1])
        >>> m = feature_movers(f([0.01, 0.5]), f([0.02, 0.2]), [str(i) for i in range(600)], labels=["x", "y"])
        >>> [(e["feature"], e["label"], e["texts_before"], e["texts_after"]) for e in m["gained"] + m["lost"]]
        [(1, 'y', 300, 120)]
    """
    if base.frequency.shape != now.frequency.shape:
        raise ValueError("snapshots of different SAEs")
    n = len(texts)
    needed = movers_min_support(n) if min_support is None else int(min_support)
    d_freq = now.frequency.astype(np.float64) - base.frequency
    d_mean = now.mean_activation.astype(np.float64) - base.mean_activation
    order = np.lexsort((d_mean, d_freq))  # ascending by frequency change, then by mean change
    moved = (d_freq != 0) | (d_mean != 0)
    before = np.rint(base.frequency.astype(np.float64) * n).astype(np.int64)  # frequency = count / n
    after = np.rint(now.frequency.astype(np.float64) * n).astype(np.int64)

    def entry(i: int, source: SaeSnapshot) -> dict[str, Any]:
        rows = [int(r) for r in source.top_rows[i] if r >= 0]
        return {
            "feature": int(i),
            "label": (labels[i] or "") if labels is not None and i < len(labels) else "",
            "frequency_before": float(base.frequency[i]),
            "frequency_after": float(now.frequency[i]),
            "texts_before": int(before[i]),
            "texts_after": int(after[i]),
            "n_texts": n,
            "min_support": needed,
            "mean_activation_before": float(base.mean_activation[i]),
            "mean_activation_after": float(now.mean_activation[i]),
            "top_texts": [texts[r] for r in rows],
        }

    gained = [i for i in order[::-1] if moved[i] and (d_freq[i], d_mean[i]) > (0, 0) and after[i] >= needed][:top]
    lost = [i for i in order if moved[i] and (d_freq[i], d_mean[i]) < (0, 0) and before[i] >= needed][:top]
    return {"gained": [entry(i, now) for i in gained], "lost": [entry(i, base) for i in lost]}


def sae_choice(choice: str, model: str) -> str | None:
    """What a recipe's ``--sae`` means for ``model``: ``"auto"`` is the shipped SAE (``"default"``) for the
    bundled model and none for any other (its embedding space is not the shipped SAE's); ``"none"`` is none;
    anything else (``"default"``, a folder) is passed on to :func:`~aquin_monitor.sae.load_sae`.

    >>> (
    ...     sae_choice("auto", "default"),
    ...     sae_choice("auto", "my/model"),
    ...     sae_choice("none", "default"),
    ...     sae_choice("sae/x", "m"),
    ... )
    ('default', None, None, 'sae/x')
    """
    if choice == "none" or (choice == "auto" and model != "default"):
        return None
    return "default" if choice == "auto" else choice
