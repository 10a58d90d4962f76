"""This process's place in a ``torch.distributed`` group (rank 0 of 1 when there is none)."""

from __future__ import annotations

import torch


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` outside distributed training.

    >>> rank_and_world_size()
    (0, 1)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
