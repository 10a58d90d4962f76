"""Contrastive decomposition: what the loss already computed, split into positives and negatives.

Every function here reads a similarity (or distance) matrix that a loss computed anyway and returns
device tensors of *sums and counts*, so that statistics can be accumulated over micro-batches,
gradient-accumulation steps and DDP ranks before a single host transfer. Nothing here calls
``.item()`` or synchronises with the device, and nothing runs a model: no extra forward pass, ever.

Layout of an InfoNCE / MultipleNegativesRanking score matrix ``S`` (rows = anchors,
columns = candidates), as built by sentence-transformers::

    columns = [ positives (W) | hard negatives block 1 (W) | ... | block m (W) ]

with ``W`` the (world) batch size; the positive of row ``r`` sits in column ``p_r`` and its own
labelled hard negatives in columns ``k·W + p_r`` for ``k = 1..m``.

Statistics (all in similarity units, i.e. before the loss's scale/temperature):

- ``pos_sim``: mean of ``S[r, p_r]``
- ``neg_sim``: mean of the in-batch negatives, every column except ``p_r`` and the row's own
  labelled hard negatives
- ``hardest_neg_sim``: mean over rows of the largest non-positive similarity
- ``hard_neg_sim``: mean of the row's own labelled hard negatives (absent without them)
- ``gap``: ``pos_sim − neg_sim`` (a narrowing gap means negatives are being pulled in)
- ``in_batch_acc``: fraction of rows whose arg-max column is the positive
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Order of the accumulator vector; the last entries are counts.
STAT_FIELDS = (
    "pos_sum",
    "neg_sum",
    "hardest_sum",
    "hard_neg_sum",
    "correct",
    "rows",
    "neg_count",
    "hard_neg_count",
)


@dataclass(frozen=True)
class ContrastiveSums:
    """Sums and counts for one or more score matrices, kept on the device (one vector).

    Add two with ``+``; turn into means with :func:`finalize` once, on the host.
    """

    values: torch.Tensor  # [len(STAT_FIELDS)] float32 on the loss's device

    def __add__(self, other: ContrastiveSums) -> ContrastiveSums:
        return ContrastiveSums(self.values + other.values.to(self.values.device))

    @staticmethod
    def zeros(device: torch.device | str = "cpu") -> ContrastiveSums:
        return ContrastiveSums(torch.zeros(len(STAT_FIELDS), dtype=torch.float32, device=device))


def check_scores(scores: torch.Tensor, block_size: int | None = None) -> int:
    """Validate a score matrix's shape for :func:`similarity_sums` (shapes only: no device work).

    An ``[R, C]`` matrix is valid when C = m·W for a whole number m of candidate blocks of width
    W (``block_size``, default R): block 0 holds the in-batch candidates, blocks 1 … m−1 the
    labelled hard negatives.

    Returns the candidate block width W. Raises ``ValueError`` naming what is wrong.

    >>> check_scores(torch.zeros(4, 8))  # in-batch block + one hard-negative block
    4
    >>> check_scores(torch.zeros(4, 6))
    Traceback (most recent call last):
    ...
    ValueError: 6 candidate columns are not a whole number of blocks of width 4
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D anchors x candidates matrix, got shape {tuple(scores.shape)}")
    rows, cols = scores.shape
    width = rows if block_size is None else block_size
    if width <= 0 or cols % width:
        raise ValueError(f"{cols} candidate columns are not a whole number of blocks of width {width}")
    return width


def check_triplet(positive_distance: torch.Tensor, negative_distance: torch.Tensor) -> None:
    """Validate the distances of a triplet loss (as many anchor–negative as anchor–positive distances).

    >>> check_triplet(torch.ones(3), torch.ones(2))
    Traceback (most recent call last):
    ...
    ValueError: positive and negative distances differ in shape: (3,) vs (2,)
    """
    if positive_distance.numel() != negative_distance.numel():
        raise ValueError(
            f"positive and negative distances differ in shape: {tuple(positive_distance.shape)} "
            f"vs {tuple(negative_distance.shape)}"
        )


def similarity_sums(
    scores: torch.Tensor,
    positive_columns: torch.Tensor | None = None,
    *,
    block_size: int | None = None,
    scale: float = 1.0,
) -> ContrastiveSums:
    """Sums behind pos/neg/hard-negative similarity, from an anchors × candidates score matrix.

    Args:
        scores: ``[R, C]`` scores the loss computed (detached inside). Entries equal to ``-inf``
            (masked by the loss, e.g. false negatives) are not counted as negatives.
        positive_columns: ``[R]`` column of each row's positive; default ``arange(R)``.
        block_size: width ``W`` of one candidate block; ``C`` must be a multiple of it. Columns
            ``k·W + p_r`` (``k ≥ 1``) are the row's labelled hard negatives. Default ``R``.
        scale: the factor the scores were multiplied by (MNRL's ``scale`` = 1/temperature), so the
            statistics come out in similarity units.

    >>> s = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    >>> m = finalize(similarity_sums(s))
    >>> round(m["pos_sim"], 4), round(m["neg_sim"], 4), m["in_batch_acc"]
    (0.8, 0.2, 1.0)
    """
    width = check_scores(scores, block_size)
    s = scores.detach().float()
    if scale != 1.0:
        s = s / scale
    rows, cols = s.shape
    device = s.device
    if positive_columns is None:
        positive_columns = torch.arange(rows, device=device)
    positive_columns = positive_columns.to(device)
    n_blocks = cols // width

    # masks from comparisons only: writing into a mask by index would copy the written value to the
    # device, a synchronisation every step
    pos = s.gather(1, positive_columns.unsqueeze(1)).squeeze(1)
    offset = torch.arange(cols, device=device).unsqueeze(0) - positive_columns.unsqueeze(1)  # column - p_r
    finite = torch.isfinite(s)
    non_positive = finite & (offset != 0)
    hard_mask = finite & (offset > 0) & (offset % width == 0) if n_blocks > 1 else torch.zeros_like(finite)
    in_batch = non_positive & ~hard_mask
    zero = torch.zeros((), device=device)
    neg_sum = torch.where(in_batch, s, zero).sum()
    hard_sum = torch.where(hard_mask, s, zero).sum()
    hardest = torch.where(non_positive, s, torch.full((), float("-inf"), device=device)).amax(dim=1)
    has_negative = non_positive.any(dim=1)
    hardest_sum = torch.where(has_negative, hardest, zero).sum()
    correct = (s.argmax(dim=1) == positive_columns).float().sum()
    values = torch.stack(
        [
            pos.sum(),
            neg_sum,
            hardest_sum,
            hard_sum,
            correct,
            torch.full((), float(rows), device=device),  # a fill kernel: no host-to-device copy, no sync
            in_batch.sum().float(),
            hard_mask.sum().float(),
        ]
    )
    # hardest_sum is averaged over rows that have a negative; rows without one are rare (batch of 1)
    return ContrastiveSums(values)


def triplet_similarities(
    positive_distance: torch.Tensor, negative_distance: torch.Tensor, *, distance_is_cosine: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat, detached similarities of a triplet loss's distances: ``1 − d`` (cosine distance) or ``−d``.

    >>> triplet_similarities(torch.tensor([0.25]), torch.tensor([1.0]), distance_is_cosine=True)
    (tensor([0.7500]), tensor([0.]))
    """
    check_triplet(positive_distance, negative_distance)
    dp = positive_distance.detach().float().reshape(-1)
    dn = negative_distance.detach().float().reshape(-1)
    if distance_is_cosine:
        return 1.0 - dp, 1.0 - dn
    return -dp, -dn


def triplet_sums(
    positive_distance: torch.Tensor,
    negative_distance: torch.Tensor,
    *,
    distance_is_cosine: bool = False,
) -> ContrastiveSums:
    """Sums for a triplet loss from the anchor–positive and anchor–negative distances it computed.

    Similarity is ``1 − d`` for the cosine distance and ``−d`` for other metrics (Euclidean,
    Manhattan), so ``gap = sim(a, p) − sim(a, n) = d(a, n) − d(a, p)`` either way, and
    ``in_batch_acc`` is the triplet accuracy ``mean[d(a, p) < d(a, n)]``. The labelled negative is
    both the in-batch negative and the hard negative here.

    >>> m = finalize(triplet_sums(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])))
    >>> m["pos_sim"], m["neg_sim"], m["gap"], m["in_batch_acc"]
    (-2.0, -2.0, 0.0, 0.5)
    """
    pos, neg = triplet_similarities(positive_distance, negative_distance, distance_is_cosine=distance_is_cosine)
    n = torch.full((), float(pos.numel()), device=pos.device)
    # pos > neg  <=>  d(a, p) < d(a, n) for both conversions
    values = torch.stack([pos.sum(), neg.sum(), neg.sum(), neg.sum(), (pos > neg).float().sum(), n, n, n])
    return ContrastiveSums(values)


def finalize(sums: ContrastiveSums | torch.Tensor) -> dict[str, float]:
    """Means from accumulated sums (host side, once per logged step).

    Returns ``pos_sim``, ``neg_sim``, ``hardest_neg_sim``, ``gap``, ``in_batch_acc`` and, when labelled
    hard negatives were seen, ``hard_neg_sim``. Empty sums give an empty dict. With R rows (anchors)
    accumulated::

        pos_sim = Σ pos / R                  hardest_neg_sim = Σ max-negative / R
        neg_sim = Σ neg / #negatives         hard_neg_sim    = Σ hard-neg / #hard negatives
        gap = pos_sim − neg_sim              in_batch_acc    = #(pos > every negative) / R

    >>> m = finalize(similarity_sums(torch.tensor([[0.9, 0.2], [0.4, 0.6]])))
    >>> {k: round(v, 4) for k, v in sorted(m.items())}
    {'gap': 0.45, 'hardest_neg_sim': 0.3, 'in_batch_acc': 1.0, 'neg_sim': 0.3, 'pos_sim': 0.75}
    """
    v = sums.values if isinstance(sums, ContrastiveSums) else sums
    d = dict(zip(STAT_FIELDS, v.detach().double().cpu().tolist()))
    if d["rows"] <= 0:
        return {}
    out = {
        "pos_sim": d["pos_sum"] / d["rows"],
        "hardest_neg_sim": d["hardest_sum"] / d["rows"],
        "in_batch_acc": d["correct"] / d["rows"],
    }
    if d["neg_count"] > 0:
        out["neg_sim"] = d["neg_sum"] / d["neg_count"]
        out["gap"] = out["pos_sim"] - out["neg_sim"]
    if d["hard_neg_count"] > 0:
        out["hard_neg_sim"] = d["hard_neg_sum"] / d["hard_neg_count"]
    return out


def similarity_samples(
    scores: torch.Tensor,
    positive_columns: torch.Tensor | None = None,
    *,
    scale: float = 1.0,
    max_negatives: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive similarities and (a strided subsample of) negative similarities, for histograms.

    Returns two 1-D detached tensors on the scores' device. Negatives are the non-positive finite
    entries, taken with a fixed stride over the flattened matrix (at most ``max_negatives`` entries,
    deterministic). So that no shape depends on the data (a boolean mask would synchronise the device),
    the positive and masked (``-inf``) entries the stride lands on come back as NaN: drop them on the
    host (:func:`drop_nan`).

    >>> pos, neg = similarity_samples(torch.tensor([[0.9, 0.1], [0.3, 0.7]]))
    >>> pos.double().round(decimals=2).tolist(), drop_nan(neg).astype(float).round(2).tolist()
    ([0.9, 0.7], [0.1, 0.3])
    """
    s = scores.detach().float()
    if scale != 1.0:
        s = s / scale
    rows = s.shape[0]
    if positive_columns is None:
        positive_columns = torch.arange(rows, device=s.device)
    positive_columns = positive_columns.to(s.device)
    pos = s.gather(1, positive_columns.unsqueeze(1)).squeeze(1)
    is_positive = torch.arange(s.shape[1], device=s.device).unsqueeze(0) == positive_columns.unsqueeze(1)
    neg = s.masked_fill(is_positive | ~torch.isfinite(s), float("nan")).reshape(-1)
    if neg.numel() > max_negatives:
        stride = -(-neg.numel() // max_negatives)
        neg = neg[::stride]
    return pos, neg


def drop_nan(values):
    """``values`` (a host numpy array or tensor) without its NaN entries.

    >>> drop_nan([0.5, float("nan"), -1.0]).tolist()
    [0.5, -1.0]
    """
    values = np.asarray(values)
    return values[~np.isnan(values)]
