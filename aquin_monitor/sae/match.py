"""Cross-model feature matching: which features of SAE A and SAE B fire on the same texts.

Both SAEs encode their own model's embeddings of one shared corpus (row ``t`` = the same text).
Each feature's activations are z-scored over the corpus (a feature that never varies gets a
zero column) and the correlation matrix is ``C = Z_Aᵀ Z_B / N`` (Pearson). Then

- one-to-one matching: scipy's ``linear_sum_assignment`` maximising the summed correlation;
- many-to-one: each A feature's best B feature (``argmax_j C_ij``), and back;
- decoder cosine ``d_i^A · d_j^B`` of the matched pairs when both SAEs read one embedding space
  (same ``d_in`` and ``same_space=True``, e.g. base vs fine-tuned checkpoint of one model);
- a feature is *unmatched* (model-specific) when its best correlation is below ``threshold``.

Example:

    >>> import numpy as np
    >>> from aquin_monitor.sae.model import SparseAutoencoder
    >>> sae = SparseAutoencoder(d_in=8, num_latents=16, k=3, seed=0)
    >>> x = np.random.default_rng(0).normal(size=(200, 8)).astype("float32")
    >>> result = match_features(sae, x, sae, x)
    >>> all(p.feature_a == p.feature_b for p in result.pairs)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["FeatureMatch", "MatchedPair", "activation_correlation", "match_features"]


@dataclass
class MatchedPair:
    feature_a: int
    feature_b: int
    correlation: float
    decoder_cosine: float | None = None
    label_a: str | None = None
    label_b: str | None = None


@dataclass
class FeatureMatch:
    """One-to-one and many-to-one matches of two SAEs' features by activation correlation."""

    pairs: list[MatchedPair]
    """One-to-one matches among features alive in both, correlation descending."""
    best_b_for_a: list[int]
    """Per A feature, the B feature it correlates with most (-1 for a feature dead on the corpus)."""
    best_correlation_a: list[float]
    best_a_for_b: list[int]
    best_correlation_b: list[float]
    quality: dict[str, float]
    """Quantiles and mean of the one-to-one correlations, and the share above ``threshold``."""
    unmatched_a: list[int]
    """Alive A features whose best correlation is below ``threshold`` (A-specific)."""
    unmatched_b: list[int]
    threshold: float
    n_texts: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


def _zscored_activations(sae: Any, x: Any, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != sae.d_in:
        raise ValueError(f"embeddings: expected [n, {sae.d_in}], got {tuple(x.shape)}")
    with torch.no_grad():
        z = torch.cat([sae.encode(x[s : s + batch_size]) for s in range(0, len(x), batch_size)]).double()
    std = z.std(0, unbiased=False)
    alive = std > 0
    zs = torch.where(alive, (z - z.mean(0)) / std.clamp_min(1e-300), torch.zeros_like(z))
    return zs.numpy(), alive.numpy()


def activation_correlation(sae_a: Any, x_a: Any, sae_b: Any, x_b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(C [n_a, n_b], alive_a, alive_b)``: Pearson correlation of the two SAEs' activations on paired rows."""
    if len(x_a) != len(x_b):
        raise ValueError(
            f"embeddings: the two corpora must be the same texts in the same order, got {len(x_a)} and {len(x_b)} rows"
        )
    za, alive_a = _zscored_activations(sae_a, x_a)
    zb, alive_b = _zscored_activations(sae_b, x_b)
    return za.T @ zb / len(za), alive_a, alive_b


def _quality(correlations: np.ndarray, threshold: float) -> dict[str, float]:
    if not len(correlations):
        return {"mean": float("nan"), "share_above_threshold": 0.0}
    quantiles = np.quantile(correlations, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "mean": float(correlations.mean()),
        **{f"q{int(q * 100)}": float(v) for q, v in zip([0.1, 0.25, 0.5, 0.75, 0.9], quantiles)},
        "share_above_threshold": float(np.mean(correlations >= threshold)),
    }


def _best(c: np.ndarray, alive: np.ndarray) -> tuple[list[int], list[float]]:
    if c.shape[1] == 0:
        return [-1] * len(c), [float("nan")] * len(c)
    best = c.argmax(1)
    values = c[np.arange(len(c)), best]
    return [int(b) if a else -1 for b, a in zip(best, alive)], [
        float(v) if a else float("nan") for v, a in zip(values, alive)
    ]


def match_features(
    sae_a: Any,
    x_a: Any,
    sae_b: Any,
    x_b: Any,
    *,
    threshold: float = 0.5,
    same_space: bool | None = None,
    labels_a: Sequence[str | None] | None = None,
    labels_b: Sequence[str | None] | None = None,
) -> FeatureMatch:
    """Match the features of two SAEs by their activation correlation on a shared corpus (module docstring).

    Args:
        sae_a, sae_b: the two :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        x_a, x_b: each model's embeddings of the same texts, row for row.
        threshold: correlation under which a feature counts as unmatched.
        same_space: also report decoder cosines; default: when both SAEs have the same ``d_in``.
        labels_a, labels_b: optional label per feature.

    Returns:
        A :class:`FeatureMatch`.
    """
    from scipy.optimize import linear_sum_assignment

    c, alive_a, alive_b = activation_correlation(sae_a, x_a, sae_b, x_b)
    rows_alive, cols_alive = np.flatnonzero(alive_a), np.flatnonzero(alive_b)
    sub = c[np.ix_(rows_alive, cols_alive)]
    r, k = linear_sum_assignment(sub, maximize=True)
    same_space = sae_a.d_in == sae_b.d_in if same_space is None else same_space
    if same_space:
        wa = torch.nn.functional.normalize(sae_a.W_dec.detach().double(), dim=1)
        wb = torch.nn.functional.normalize(sae_b.W_dec.detach().double(), dim=1)
    pairs = []
    for i, j in zip(rows_alive[r], cols_alive[k]):
        cosine = float(wa[i] @ wb[j]) if same_space else None
        pairs.append(
            MatchedPair(
                int(i),
                int(j),
                float(c[i, j]),
                cosine,
                None if labels_a is None else labels_a[i],
                None if labels_b is None else labels_b[j],
            )
        )
    pairs.sort(key=lambda p: (-p.correlation, p.feature_a))
    masked = np.where(alive_b[None, :], c, -np.inf)
    best_b, best_corr_a = _best(masked, alive_a)
    best_a, best_corr_b = _best(np.where(alive_a[:, None], c, -np.inf).T, alive_b)
    return FeatureMatch(
        pairs=pairs,
        best_b_for_a=best_b,
        best_correlation_a=best_corr_a,
        best_a_for_b=best_a,
        best_correlation_b=best_corr_b,
        quality=_quality(np.array([p.correlation for p in pairs]), threshold),
        unmatched_a=[i for i in rows_alive.tolist() if not best_corr_a[i] >= threshold],
        unmatched_b=[j for j in cols_alive.tolist() if not best_corr_b[j] >= threshold],
        threshold=threshold,
        n_texts=len(x_a),
    )
