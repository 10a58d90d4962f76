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
    sentence-transformers' MultipleNegativesSymmetricRankingLoss). Equals sentence-transformers'
    MultipleNegativesRankingLoss on the same embeddings.

    Args:
        queries: ``[B, d]`` query (anchor) embeddings.
        documents: ``[B, d]`` document embeddings; row i is the positive of query i, and the
            negative of every other query.
        hard_negatives: optional ``[B·m, d]`` labelled hard negatives in m blocks of B rows (row
            ``k·B + i`` belongs to query i).
        scale: multiplier of the cosine similarities (1/temperature).
        symmetric: also the document→query direction (in-batch documents only), averaged.
        report: report the score matrix and the loss to the tap (the training monitor's
            ``contrastive/*`` metrics); False computes the loss alone.
        tap: where to report; default the process-wide :func:`aquin_monitor.capture.default_tap`.

    Returns:
        The scalar loss (differentiable; reporting never changes it).

    References:
        - van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding",
          https://arxiv.org/abs/1807.03748
        - Henderson et al. 2017, "Efficient Natural Language Response Suggestion for Smart Reply",
          https://arxiv.org/abs/1705.00652

    Inputs:
        +-------------------------------------------+------------------------------------------+
        | Texts                                     | Labels                                   |
        +===========================================+==========================================+
        | (query, document) pairs                   | none (row i of each is a positive pair)  |
        +-------------------------------------------+------------------------------------------+
        | (query, document, hard negative) triplets | none                                     |
        +-------------------------------------------+------------------------------------------+

    Example:
        ::

            >>> import torch
            >>> from aquin_monitor.capture import ContrastiveTap
            >>> from aquin_monitor.signals.contrastive import finalize
            >>> queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
            >>> documents = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
            >>> tap = ContrastiveTap()
            >>> loss = info_nce(queries, documents, scale=1.0, tap=tap)
            >>> expected = (torch.log1p(torch.exp(torch.tensor(-0.4))) + torch.log1p(torch.exp(torch.tensor(-0.8)))) / 2
            >>> bool(torch.isclose(loss, expected))
            True
            >>> stats = finalize(tap.drain().sums)  # diagonal: 1.0 and 0.8; off-diagonal: 0.6 and 0.0
            >>> round(stats["pos_sim"], 4), round(stats["neg_sim"], 4), stats["in_batch_acc"]
            (0.9, 0.3, 1.0)
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
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    report: bool = True,
    tap: ContrastiveTap | None = None,
) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020): each of the 2N views against the other 2N−1, positive = its pair.

    ``L = −mean_k log exp(cos(z_k, z_k⁺)/τ) / Σ_{j≠k} exp(cos(z_k, z_j)/τ)``.

    Args:
        z1: ``[N, d]`` embeddings of the first view of N examples.
        z2: ``[N, d]`` embeddings of the second view; row i pairs with row i of ``z1``.
        temperature: τ, the divisor of the cosine similarities.
        report: report the ``[2N, 2N]`` score matrix and the loss to the tap; False computes the loss alone.
        tap: where to report; default the process-wide :func:`aquin_monitor.capture.default_tap`.

    Returns:
        The scalar loss.

    References:
        Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
        Representations", https://arxiv.org/abs/2002.05709

    Inputs:
        +-------------------------------+----------------------------------+
        | Texts                         | Labels                           |
        +===============================+==================================+
        | two views of each example     | none (row i of each is a pair)   |
        +-------------------------------+----------------------------------+

    Example:
        ::

            >>> import math, torch
            >>> z1, z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
            >>> loss = nt_xent(z1, z2, temperature=1.0, report=False)
            >>> # each view: its pair at cosine 1, the two others at cosine 0
            >>> math.isclose(loss.item(), -math.log(math.e / (math.e + 2)), rel_tol=1e-6)
            True
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

    Args:
        anchor: ``[B, d]`` anchor embeddings.
        positive: ``[B, d]`` embeddings that should be close to the anchor of the same row.
        negative: ``[B, d]`` embeddings that should be farther from it than the positive.
        margin: how much farther the negative must be.
        distance: ``"euclidean"`` or ``"cosine"``.
        report: report the distances and the loss to the tap (similarity is ``1 − d`` for the
            cosine distance, ``−d`` for the Euclidean one); False computes the loss alone.
        tap: where to report; default the process-wide :func:`aquin_monitor.capture.default_tap`.

    Returns:
        The scalar loss.

    Raises:
        ValueError: ``distance`` is neither ``"euclidean"`` nor ``"cosine"``.

    References:
        Schroff et al. 2015, "FaceNet: A Unified Embedding for Face Recognition and Clustering",
        https://arxiv.org/abs/1503.03832

    Inputs:
        +-------------------------------------+--------+
        | Texts                               | Labels |
        +=====================================+========+
        | (anchor, positive, negative) rows   | none   |
        +-------------------------------------+--------+

    Example:
        ::

            >>> import torch
            >>> anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
            >>> positive = torch.tensor([[3.0, 4.0], [1.0, 0.0]])   # distances 5 and 1
            >>> negative = torch.tensor([[0.0, 2.0], [0.0, 6.0]])   # distances 2 and 6
            >>> loss = triplet(anchor, positive, negative, margin=1.0, report=False)
            >>> round(loss.item(), 4)  # (max(5 - 2 + 1, 0) + max(1 - 6 + 1, 0)) / 2
            2.0
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
