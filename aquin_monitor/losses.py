"""Contrastive losses for your own training loop (e.g. a LightningModule) that report their statistics.

Each returns the loss tensor and reports, detached, the score matrix (or distances) it computed to
the contrastive tap the training monitor reads (:mod:`aquin_monitor.capture`); pass
``report=False`` to compute the loss alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .capture import ContrastiveTap, report_loss, report_similarity, report_triplet


def info_nce(
    queries: torch.Tensor,
    documents: torch.Tensor,
    hard_negatives: torch.Tensor | None = None,
    *,
    scale: float = 20.0,
    symmetric: bool = False,
    report: bool = True,
    tap: ContrastiveTap | None = None,
) -> torch.Tensor:
    """InfoNCE / MultipleNegativesRanking loss (van den Oord et al. 2018; Henderson et al. 2017).

    ``L = −mean_i log softmax_j(s·cos(q_i, c_j))[i]`` over candidates ``c = [documents; hard_negatives]``
    (in-batch negatives plus one labelled hard negative per query when given), with ``s`` the scale
    (1/temperature). ``symmetric=True`` averages it with the document→query direction (as
    sentence-transformers' MultipleNegativesSymmetricRankingLoss).

    Inputs: ``queries`` and ``documents`` ``[B, d]`` (row i of each is a positive pair), optional
    ``hard_negatives`` ``[B·m, d]`` in blocks of B. Equals sentence-transformers'
    MultipleNegativesRankingLoss on the same embeddings.
    """
    candidates = documents if hard_negatives is None else torch.cat([documents, hard_negatives])
    scores = F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T * scale
    labels = torch.arange(queries.shape[0], device=queries.device)
    loss = F.cross_entropy(scores, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(scores[:, : queries.shape[0]].T, labels)) / 2
    if report:
        report_similarity(scores, labels, block_size=queries.shape[0], scale=scale, tap=tap)
        report_loss(loss, tap=tap)
    return loss


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, *, temperature: float = 0.1, report: bool = True, tap: ContrastiveTap | None = None
) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020): each of the 2N views against the other 2N−1, positive = its pair.

    ``L = −mean_k log exp(cos(z_k, z_k⁺)/τ) / Σ_{j≠k} exp(cos(z_k, z_j)/τ)``.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    scores = z @ z.T / temperature
    scores = scores.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.arange(2 * n, device=z.device).roll(n)  # view k's positive is k ± n
    loss = F.cross_entropy(scores, positives)
    if report:
        report_similarity(scores, positives, block_size=2 * n, scale=1.0 / temperature, tap=tap)
        report_loss(loss, tap=tap)
    return loss


def triplet(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    margin: float = 5.0,
    distance: str = "euclidean",
    report: bool = True,
    tap: ContrastiveTap | None = None,
) -> torch.Tensor:
    """Triplet loss (Schroff et al. 2015): ``mean max(d(a, p) − d(a, n) + margin, 0)``.

    ``distance`` is ``"euclidean"`` (sentence-transformers' TripletLoss default, margin 5) or
    ``"cosine"`` (``1 − cos``; use a margin below 1).
    """
    if distance == "euclidean":
        dp, dn = F.pairwise_distance(anchor, positive, p=2), F.pairwise_distance(anchor, negative, p=2)
    elif distance == "cosine":
        dp, dn = 1 - F.cosine_similarity(anchor, positive), 1 - F.cosine_similarity(anchor, negative)
    else:
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
    loss = F.relu(dp - dn + margin).mean()
    if report:
        report_triplet(dp, dn, distance_is_cosine=distance == "cosine", tap=tap)
        report_loss(loss, tap=tap)
    return loss
