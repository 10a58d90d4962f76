"""What a streaming SAE training reads, and in which order: a plan over a :class:`~aquin_monitor.rows.RowSource`.

The corpus is cut into fixed blocks of ``block_rows`` consecutive rows. Everything is decided per
block, so memory is bounded by a few blocks whatever the corpus size:

- **Held-out split.** In each block a seeded permutation picks ``round(len · f)`` held-out rows,
  ``f = min(val_fraction, max_val_rows / n)``: a deterministic set of rows, never trained on, at
  most about ``max_val_rows`` in all (it is held in memory for the per-epoch evaluation). Block 0's
  permutation is seeded with ``seed`` itself, so a corpus of one block is split exactly as
  ``randperm(n)`` with that seed splits it (the in-memory trainer's split).
- **Shuffle.** Each epoch permutes the block order (generator ``seed + 2``); consecutive groups
  of ``buffer_blocks`` blocks form a buffer whose training rows are permuted together (generator
  ``seed + 1``) and cut into global batches. One buffer = one block for a small corpus: then the
  epoch is one ``randperm`` of the training rows, as in memory.
- **Data parallel.** Rank ``r`` of ``W`` takes rows ``[r·m/W, (r+1)·m/W)`` of each global batch of
  ``m`` rows and reads only those rows of the buffer (plus one block at a time).

Example:

    >>> plan = RowPlan(n_rows=10, block_rows=4, val_fraction=0.25, seed=0)
    >>> [plan.block_range(b) for b in range(plan.n_blocks)]
    [(0, 4), (4, 8), (8, 10)]
    >>> train, val = plan.split(0)
    >>> sorted(train.tolist() + val.tolist()), len(val)
    ([0, 1, 2, 3], 1)
    >>> rank_share(10, rank=1, world_size=3)
    (3, 6)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..rows import RowSource

__all__ = ["BufferBatches", "RowPlan", "buffer_batches", "rank_share", "scan_source"]


def rank_share(batch_rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s rows in a global batch of ``batch_rows`` rows (sizes differ by ≤ 1)."""
    return rank * batch_rows // world_size, (rank + 1) * batch_rows // world_size


def _block_seed(seed: int, block: int) -> int:
    # block 0 keeps the seed itself (one block = the in-memory split); the others get independent streams
    return seed if block == 0 else int(np.random.SeedSequence([seed, block]).generate_state(1, np.uint64)[0])


@dataclass(frozen=True)
class RowPlan:
    """Block layout and held-out split of ``n_rows`` rows (see the module docstring)."""

    n_rows: int
    block_rows: int
    val_fraction: float
    seed: int
    max_val_rows: int = 65_536

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.n_rows < 2 or self.block_rows < 2 or self.max_val_rows < 1:
            raise ValueError(f"need n_rows >= 2, block_rows >= 2, max_val_rows >= 1, got {self}")

    @property
    def n_blocks(self) -> int:
        return -(-self.n_rows // self.block_rows)

    @property
    def held_out_fraction(self) -> float:
        """``min(val_fraction, max_val_rows / n_rows)``."""
        return min(self.val_fraction, self.max_val_rows / self.n_rows)

    def block_range(self, block: int) -> tuple[int, int]:
        return block * self.block_rows, min((block + 1) * self.block_rows, self.n_rows)

    def split(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted offsets (within the block) of its training rows and of its held-out rows."""
        start, stop = self.block_range(block)
        size = stop - start
        order = torch.randperm(size, generator=torch.Generator().manual_seed(_block_seed(self.seed, block)))
        n_val = min(size - 1, max(1, round(size * self.held_out_fraction))) if size > 1 else 0
        return order[n_val:].sort().values, order[:n_val].sort().values


@torch.no_grad()
def scan_source(source: RowSource, plan: RowPlan) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over ``source``: the mean of the training rows and the held-out rows.

    The mean is combined from per-block float32 means in float64 (so a one-block corpus gets
    exactly ``x[train].mean(0)``).

    Returns:
        ``(train_mean [d] float32, held_out [n_val, d] float32, n_train)``.
    """
    total = torch.zeros(source.dimension, dtype=torch.float64)
    n_train, held_out = 0, []
    for block in range(plan.n_blocks):
        rows = torch.from_numpy(source.read(*plan.block_range(block)))
        if not torch.isfinite(rows).all():
            bad = int(torch.nonzero(~torch.isfinite(rows).all(1))[0]) + plan.block_range(block)[0]
            raise ValueError(f"embeddings must be finite: row {bad} holds NaN or infinity")
        train, val = plan.split(block)
        if len(train):
            total += rows[train].mean(0).double() * len(train)
            n_train += len(train)
        held_out.append(rows[val])
    return (total / n_train).float(), torch.cat(held_out), n_train


@dataclass
class BufferBatches:
    """One buffer's global batches, as this rank sees them.

    ``rows`` holds this rank's rows of every batch, batch after batch; ``local_sizes[i]`` and
    ``global_sizes[i]`` are batch ``i``'s row counts on this rank and in all.
    """

    rows: torch.Tensor
    local_sizes: list[int]
    global_sizes: list[int]

    def batches(self, first: int = 0) -> Iterator[tuple[int, torch.Tensor, int]]:
        """``(index, local rows, global batch size)`` from batch ``first`` on."""
        offsets = np.concatenate([[0], np.cumsum(self.local_sizes)])
        for i in range(first, len(self.local_sizes)):
            yield i, self.rows[offsets[i] : offsets[i + 1]], self.global_sizes[i]


def buffer_batches(
    source: RowSource,
    plan: RowPlan,
    blocks: list[int],
    permutation: torch.Tensor,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    min_batch: int = 2,
) -> BufferBatches:
    """Read this rank's rows of a buffer made of ``blocks`` (training rows only, concatenated in that order).

    Global batch ``i`` is ``permutation[i·batch_size : (i+1)·batch_size]``; a batch smaller than
    ``min_batch`` is dropped (the FVU of fewer than two rows is undefined). A rank may get no row
    of a batch smaller than the world size: it still takes part in the step, with an empty share.
    """
    global_sizes, wanted = [], []
    for start in range(0, len(permutation), batch_size):
        batch = permutation[start : start + batch_size]
        if len(batch) < min_batch:
            continue  # the same rule on every rank and for any world size: the same global batches
        lo, hi = rank_share(len(batch), rank, world_size)
        global_sizes.append(len(batch))
        wanted.append(batch[lo:hi])
    positions = torch.cat(wanted) if wanted else torch.zeros(0, dtype=torch.long)
    local = torch.empty(len(positions), source.dimension)
    offset = 0
    for block in blocks:
        train, _ = plan.split(block)
        here = (positions >= offset) & (positions < offset + len(train))
        if here.any():
            start, _ = plan.block_range(block)
            rows = torch.from_numpy(source.read(start + int(train[0]), start + int(train[-1]) + 1))
            local[here] = rows[train - train[0]][positions[here] - offset]
        offset += len(train)
    local_sizes = [
        rank_share(size, rank, world_size)[1] - rank_share(size, rank, world_size)[0] for size in global_sizes
    ]
    return BufferBatches(local, local_sizes, global_sizes)
