"""How good is a SAE on a set of embeddings: the quality report of ``aquin-monitor sae eval``.

Definitions (held-out embeddings ``x`` [n, d], reconstructions ``x̂``, activations ``z``):

- ``sae/fvu`` = Σ‖x − x̂‖² / Σ‖x − x̄‖² (fraction of variance unexplained);
  ``sae/explained_variance`` = 1 − FVU.
- ``sae/l0``: mean number of non-zero activations per input (at most k; a TopK value can be 0).
- ``sae/dead_fraction``: features that never fire on these inputs; ``sae/dense_fraction``:
  features that fire on more than 10 % of them.
- ``sae/cosine``: mean cos(x, x̂); ``sae/norm_ratio``: mean ‖x̂‖/‖x‖.
- ``sae/redundancy``: mean over features of the largest cosine between its decoder row and any
  other feature's.
- ``sae/retrieval/…``: retrieval metrics with x̂ in place of x for queries and documents, next to
  the same metrics with x (through :func:`aquin_monitor.signals.retrieval.retrieval_metrics`),
  and their difference as ``sae/retrieval/kept_ndcg@10`` (ratio x̂ / x).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "FeatureStatistics",
    "feature_statistics",
    "quality_metrics",
    "reconstruct",
    "reconstructed_retrieval",
    "retrieval_kept",
    "top_activations",
]


@dataclass
class FeatureStatistics:
    """Per-feature and overall statistics of a SAE on a set of inputs (numpy arrays over features)."""

    fvu: float
    l0: float
    frequency: np.ndarray
    """Share of inputs on which each feature fires (activation > 0)."""
    mean_activation: np.ndarray
    """Mean activation of each feature over the inputs where it fires (0 if it never fires)."""
    max_activation: np.ndarray
    cosine: float
    norm_ratio: float
    n: int


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32).to(device)


@torch.no_grad()
def feature_statistics(sae: Any, x: np.ndarray | torch.Tensor, *, batch_size: int = 8192) -> FeatureStatistics:
    """FVU, L0, cosine, norm ratio and per-feature frequency / mean / max activation of ``sae`` on ``x``.

    Args:
        sae: a :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        x: inputs [n, d_in], n ≥ 2.
        batch_size: rows encoded at a time.

    >>> from aquin_monitor.sae.model import SparseAutoencoder
    >>> sae = SparseAutoencoder(4, 8, 2)
    >>> stats = feature_statistics(sae, np.eye(4, dtype="float32"))
    >>> stats.frequency.shape, stats.l0 <= 2
    ((8,), True)
    """
    device = sae.W_dec.device
    x = _as_tensor(x, device)
    n = x.shape[0]
    mean = x.mean(0)
    err = torch.zeros((), dtype=torch.float64, device=device)
    var = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(sae.num_latents, dtype=torch.float64, device=device)
    sums = torch.zeros_like(counts)
    maxima = torch.zeros(sae.num_latents, device=device)
    cos_sum = torch.zeros((), dtype=torch.float64, device=device)
    ratio_sum = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, n, batch_size):
        batch = x[start : start + batch_size]
        acts, indices, _ = sae.encode_topk(batch)
        recon = sae.decode_topk(acts, indices)
        err += (batch - recon).pow(2).sum().double()
        var += (batch - mean).pow(2).sum().double()
        fired = acts > 0
        counts.index_add_(0, indices[fired], torch.ones_like(acts[fired], dtype=torch.float64))
        sums.index_add_(0, indices[fired], acts[fired].double())
        maxima.scatter_reduce_(0, indices.flatten(), acts.flatten(), reduce="amax")
        cos_sum += torch.nn.functional.cosine_similarity(batch, recon, dim=1).double().sum()
        ratio_sum += (recon.norm(dim=1) / batch.norm(dim=1).clamp_min(1e-12)).double().sum()
    l0 = counts.sum() / n
    return FeatureStatistics(
        fvu=float(err / var) if var > 0 else float("nan"),
        l0=float(l0),
        frequency=(counts / n).float().cpu().numpy(),
        mean_activation=torch.where(counts > 0, sums / counts.clamp_min(1), 0).float().cpu().numpy(),
        max_activation=maxima.cpu().numpy(),
        cosine=float(cos_sum / n),
        norm_ratio=float(ratio_sum / n),
        n=n,
    )


@torch.no_grad()
def reconstruct(sae: Any, x: np.ndarray | torch.Tensor, *, batch_size: int = 8192) -> np.ndarray:
    """``x̂`` for every row of ``x``, as float32 numpy."""
    device = sae.W_dec.device
    x = _as_tensor(x, device)
    parts = [sae.decode_topk(*sae.encode_topk(x[s : s + batch_size])[:2]) for s in range(0, len(x), batch_size)]
    return torch.cat(parts).cpu().numpy() if parts else np.zeros((0, sae.d_in), dtype=np.float32)


@torch.no_grad()
def top_activations(
    sae: Any, x: np.ndarray | torch.Tensor, *, top: int = 5, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """For each feature, the ``top`` inputs on which it is most active.

    Returns:
        ``(values, rows)``, each [n_latents, top]: activations (descending) and row indices into
        ``x``; ``rows`` is -1 where a feature fired on fewer than ``top`` inputs.
    """
    device = sae.W_dec.device
    x = _as_tensor(x, device)
    top = min(top, len(x))
    best_values = torch.full((sae.num_latents, top), -1.0, device=device)
    best_rows = torch.full((sae.num_latents, top), -1, dtype=torch.long, device=device)
    for start in range(0, len(x), batch_size):
        z = sae.encode(x[start : start + batch_size]).T  # [latents, batch]
        rows = torch.arange(start, start + z.shape[1], device=device).expand_as(z)
        values = torch.cat([best_values, z], dim=1)
        candidates = torch.cat([best_rows, rows], dim=1)
        best_values, order = torch.topk(values, top, dim=1)
        best_rows = torch.gather(candidates, 1, order)
    best_rows[best_values <= 0] = -1
    return best_values.clamp_min(0).cpu().numpy(), best_rows.cpu().numpy()


def decoder_redundancy(sae: Any) -> float:
    """Mean over features of the largest cosine between its decoder row and another's."""
    with torch.no_grad():
        w = torch.nn.functional.normalize(sae.W_dec, dim=1)
        cos = w @ w.T
        cos.fill_diagonal_(-1.0)
        return float(cos.max(dim=1).values.mean())


def quality_metrics(
    sae: Any, x: np.ndarray | torch.Tensor, *, dense_threshold: float = 0.1
) -> tuple[dict[str, float], FeatureStatistics]:
    """The ``sae/*`` quality metrics of ``sae`` on held-out inputs ``x`` (see the module docstring).

    Returns:
        ``(metrics, statistics)``; ``statistics`` holds the per-feature arrays behind them.
    """
    stats = feature_statistics(sae, x)
    metrics = {
        "sae/fvu": stats.fvu,
        "sae/explained_variance": 1.0 - stats.fvu,
        "sae/l0": stats.l0,
        "sae/dead_fraction": float(np.mean(stats.frequency == 0)),
        "sae/dense_fraction": float(np.mean(stats.frequency > dense_threshold)),
        "sae/cosine": stats.cosine,
        "sae/norm_ratio": stats.norm_ratio,
        "sae/redundancy": decoder_redundancy(sae),
        "sae/n_texts": float(stats.n),
        "sae/num_latents": float(sae.num_latents),
        "sae/k": float(sae.k),
    }
    return metrics, stats


def retrieval_kept(
    sae: Any,
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    relevant: Sequence[Mapping[int, float]],
    *,
    ndcg_k: int = 10,
) -> dict[str, float]:
    """NDCG@10 and Recall@10 with x̂ in place of x (queries and documents) and with x.

    Both go through :func:`aquin_monitor.signals.retrieval.retrieval_metrics`.

    Returns:
        ``sae/retrieval/original/{ndcg@10,recall@10}``, ``sae/retrieval/reconstructed/…`` and
        ``sae/retrieval/kept_ndcg@10`` (reconstructed / original).
    """
    return reconstructed_retrieval(lambda x: reconstruct(sae, x), query_emb, doc_emb, relevant, ndcg_k=ndcg_k)


def reconstructed_retrieval(
    reconstruct_rows: Callable[[np.ndarray], np.ndarray],
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    relevant: Sequence[Mapping[int, float]],
    *,
    ndcg_k: int = 10,
    prefix: str = "sae/retrieval",
) -> dict[str, float]:
    """:func:`retrieval_kept` for any reconstruction ``reconstruct_rows`` (a SAE's, a PCA baseline's), its names
    under ``prefix``.

    >>> import numpy as np
    >>> x = np.eye(3, dtype="float32")
    >>> reconstructed_retrieval(lambda rows: rows, x, x, [{0: 1}, {1: 1}, {2: 1}])["sae/retrieval/kept_ndcg@10"]
    1.0
    """
    from ..signals.retrieval import retrieval_metrics

    out: dict[str, float] = {}
    pairs = {
        "original": (query_emb, doc_emb),
        "reconstructed": (reconstruct_rows(query_emb), reconstruct_rows(doc_emb)),
    }
    for name, (queries, docs) in pairs.items():
        metrics = retrieval_metrics(queries, docs, relevant, ks=(10,), ndcg_k=ndcg_k).as_metrics()
        out[f"{prefix}/{name}/ndcg@{ndcg_k}"] = metrics[f"retrieval/ndcg@{ndcg_k}"]
        out[f"{prefix}/{name}/recall@10"] = metrics["retrieval/recall@10"]
    original = out[f"{prefix}/original/ndcg@{ndcg_k}"]
    out[f"{prefix}/kept_ndcg@{ndcg_k}"] = (
        out[f"{prefix}/reconstructed/ndcg@{ndcg_k}"] / original if original else float("nan")
    )
    return out
