"""Feature decomposition of one embedding, and the contrastive split of a cosine between two.

**Decomposition.** A TopK SAE writes an embedding as ``x = b_dec + Σ_i z_i d_i + e`` (``e`` the
reconstruction error). Each active feature's *share of the reconstruction* is its projection on
``x̂``: ``s_i = z_i (d_i · x̂) / ‖x̂‖²``; with the bias share ``s_b = b_dec · x̂ / ‖x̂‖²`` they sum
to exactly 1. The reconstruction error is reported as ``‖e‖ / ‖x‖`` and ``cos(x, x̂)``.

**Contrastive split.** For embeddings ``a`` and ``b`` (any norm) with unit ``â = a/‖a‖``,
``b̂ = b/‖b‖``, expanding ``cos(a, b) = ½(â·b̂ + b̂·â)`` with ``a = b_dec + Σ z_i(a) d_i + e_a``
gives, exactly,

    cos(a, b) = Σ_i φ_i + β + ε,
    φ_i = ½[z_i(a) (d_i·b̂) / ‖a‖ + z_i(b) (d_i·â) / ‖b‖]
    β   = ½[b_dec·b̂ / ‖a‖ + b_dec·â / ‖b‖]      (the bias term)
    ε   = ½[e_a·b̂ / ‖a‖ + e_b·â / ‖b‖]          (the error term)

For unit inputs the ``1/‖a‖`` factors are 1 and φ_i is the issue's
``½[z_i(a)·(d_i·b̂) + z_i(b)·(d_i·â)]``. Computed in float64.

Example:

    >>> import torch
    >>> from aquin_monitor.sae.model import SparseAutoencoder
    >>> sae = SparseAutoencoder(d_in=8, num_latents=32, k=4, seed=0)
    >>> a, b = torch.randn(8, generator=torch.Generator().manual_seed(1)), torch.randn(8)
    >>> split = contrast(sae, a, b)
    >>> abs(sum(t.phi for t in split.terms) + split.bias_term + split.error_term - split.cosine) < 1e-9
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["ActiveFeature", "Contrast", "ContrastTerm", "Decomposition", "contrast", "decompose", "sparse_code"]


def _as_vector(x: Any, d_in: int, name: str) -> torch.Tensor:
    vector = torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(-1)
    if vector.numel() != d_in:
        raise ValueError(f"{name}: expected a {d_in}-dimensional embedding, got {vector.numel()} values")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{name}: embedding has non-finite values")
    return vector


def sparse_code(sae: Any, x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Active features of one embedding: ``(indices, activations)``, activation descending, zeros dropped.

    Args:
        sae: a :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        x: one embedding, ``[d_in]``.

    Returns:
        Feature indices (int64) and their activations (float64), largest first.
    """
    vector = _as_vector(x, sae.d_in, "x")
    with torch.no_grad():
        out = sae.encode_topk(vector[None])
    acts, indices = out.acts[0].double().numpy(), out.indices[0].numpy().astype(np.int64)
    order = np.lexsort((indices, -acts))
    keep = order[acts[order] > 0]
    return indices[keep], acts[keep]


def _label(labels: Sequence[str | None] | None, feature: int) -> str | None:
    return None if labels is None or feature >= len(labels) else labels[feature]


@dataclass
class ActiveFeature:
    feature: int
    activation: float
    share: float
    """``z_i (d_i · x̂) / ‖x̂‖²``: the feature's part of the reconstruction (shares + bias share = 1)."""
    label: str | None = None


@dataclass
class Decomposition:
    """One embedding as ``b_dec + Σ z_i d_i + e`` (see the module docstring)."""

    features: list[ActiveFeature]
    """Active features, activation descending (at most ``top``)."""
    n_active: int
    """Number of active features (all of them, before ``top`` cut the list)."""
    bias_share: float
    relative_error: float
    """``‖x − x̂‖ / ‖x‖``."""
    cosine_reconstruction: float
    """``cos(x, x̂)``."""
    text: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


def decompose(
    sae: Any, x: Any, *, top: int = 20, labels: Sequence[str | None] | None = None, text: str | None = None
) -> Decomposition:
    """Active features of one embedding with their activation, label and share of the reconstruction.

    Args:
        sae: a :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        x: the embedding ``[d_in]``, as the model outputs it (not re-normalised).
        top: how many features to list (activation descending).
        labels: optional label per feature (e.g. from the SAE folder's ``features.json``).
        text: the text embedded, carried into the result.

    Returns:
        A :class:`Decomposition`.

    Example::

        >>> import torch
        >>> from aquin_monitor.sae.model import SparseAutoencoder
        >>> sae = SparseAutoencoder(d_in=8, num_latents=32, k=4, seed=0)
        >>> result = decompose(sae, torch.ones(8), top=2)
        >>> len(result.features) <= 2
        True
    """
    vector = _as_vector(x, sae.d_in, "x").double()
    indices, acts = sparse_code(sae, vector)
    decoder = sae.W_dec.detach().double()[torch.as_tensor(indices)]
    b_dec = sae.b_dec.detach().double()
    x_hat = b_dec + torch.as_tensor(acts) @ decoder
    norm2 = float(x_hat @ x_hat) or 1.0
    shares = (torch.as_tensor(acts) * (decoder @ x_hat)).numpy() / norm2
    x_norm = float(vector.norm()) or 1.0
    features = [
        ActiveFeature(int(i), float(a), float(s), _label(labels, int(i)))
        for i, a, s in zip(indices[:top], acts[:top], shares[:top])
    ]
    return Decomposition(
        features=features,
        n_active=len(indices),
        bias_share=float(b_dec @ x_hat) / norm2,
        relative_error=float((vector - x_hat).norm()) / x_norm,
        cosine_reconstruction=float(torch.nn.functional.cosine_similarity(vector, x_hat, dim=0)),
        text=text,
    )


@dataclass
class ContrastTerm:
    feature: int
    activation_a: float
    activation_b: float
    difference: float
    """``z_i(a) − z_i(b)``."""
    phi: float
    """The feature's term of ``cos(a, b)``."""
    label: str | None = None


@dataclass
class Contrast:
    """``cos(a, b) = Σ φ_i + bias_term + error_term`` and the features that differ between a and b."""

    cosine: float
    """The true cosine of the two embeddings."""
    terms: list[ContrastTerm]
    """Every feature active in a or b, by |φ| descending."""
    differing: list[ContrastTerm]
    """The same features by |activation difference| descending (at most ``top``)."""
    bias_term: float
    error_term: float
    error_share: float
    """``|ε| / (Σ|φ_i| + |β| + |ε|)``: how much of the split the SAE does not explain."""
    texts: list[str | None] = field(default_factory=lambda: [None, None])

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


def contrast(
    sae: Any,
    a: Any,
    b: Any,
    *,
    top: int = 20,
    labels: Sequence[str | None] | None = None,
    texts: Sequence[str | None] = (None, None),
) -> Contrast:
    """Split ``cos(a, b)`` into per-feature terms plus a bias and an error term (exact; module docstring).

    Args:
        sae: a :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        a: first embedding ``[d_in]`` (any norm).
        b: second embedding ``[d_in]``.
        top: length of ``differing``.
        labels: optional label per feature.
        texts: the two texts, carried into the result.

    Returns:
        A :class:`Contrast`; ``sum(φ) + bias_term + error_term == cosine`` up to float64 rounding.
    """
    a = _as_vector(a, sae.d_in, "a").double()
    b = _as_vector(b, sae.d_in, "b").double()
    norm_a, norm_b = float(a.norm()), float(b.norm())
    if norm_a == 0 or norm_b == 0:
        raise ValueError("a, b: the cosine of a zero embedding is undefined")
    unit_a, unit_b = a / norm_a, b / norm_b
    W, b_dec = sae.W_dec.detach().double(), sae.b_dec.detach().double()
    (idx_a, z_a), (idx_b, z_b) = sparse_code(sae, a), sparse_code(sae, b)
    za, zb = torch.zeros(sae.num_latents, dtype=torch.float64), torch.zeros(sae.num_latents, dtype=torch.float64)
    za[torch.as_tensor(idx_a)], zb[torch.as_tensor(idx_b)] = torch.as_tensor(z_a), torch.as_tensor(z_b)
    error_a, error_b = a - (za @ W + b_dec), b - (zb @ W + b_dec)
    phi = 0.5 * (za * (W @ unit_b) / norm_a + zb * (W @ unit_a) / norm_b)
    bias = 0.5 * (float(b_dec @ unit_b) / norm_a + float(b_dec @ unit_a) / norm_b)
    error = 0.5 * (float(error_a @ unit_b) / norm_a + float(error_b @ unit_a) / norm_b)
    active = sorted(set(idx_a.tolist()) | set(idx_b.tolist()))
    terms = [
        ContrastTerm(i, float(za[i]), float(zb[i]), float(za[i] - zb[i]), float(phi[i]), _label(labels, i))
        for i in active
    ]
    total = sum(abs(t.phi) for t in terms) + abs(bias) + abs(error)
    return Contrast(
        cosine=float(unit_a @ unit_b),
        terms=sorted(terms, key=lambda t: (-abs(t.phi), t.feature)),
        differing=sorted(terms, key=lambda t: (-abs(t.difference), t.feature))[:top],
        bias_term=bias,
        error_term=error,
        error_share=abs(error) / total if total else 0.0,
        texts=list(texts),
    )
