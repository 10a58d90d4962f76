"""SAE training under ``torchrun``: the process group from torchrun's environment, with a timeout.

``torchrun --nproc_per_node N -m aquin_monitor sae train --store DIR --out OUT`` starts N processes
with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; ``sae train`` sees them and
trains inside :func:`process_group` (gloo on CPU, NCCL on CUDA, one GPU per ``LOCAL_RANK``).
Every rank streams its share of each global batch (:mod:`.stream`), ``DistributedDataParallel``
averages the gradients (:class:`~aquin_monitor.sae.train.StreamingTrainer`), rank zero writes the
checkpoints and the SAE folder. A rank that dies makes the others' next collective fail (or time
out after ``timeout_s``): they stop with one line naming the step and the last checkpoint.

Example (no torchrun variables: nothing to set up)::

    >>> with process_group("cpu") as (rank, world_size):
    ...     rank, world_size
    (0, 1)
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch

__all__ = ["launched_by_torchrun", "process_group"]


def launched_by_torchrun() -> bool:
    """True when torchrun's variables say this process is one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@contextlib.contextmanager
def process_group(device: str, *, timeout_s: float = 600.0) -> Iterator[tuple[int, int]]:
    """Join the torchrun job (if any) for the ``with`` body; yields ``(rank, world_size)``.

    Args:
        device: the training device; ``cuda``/``auto`` with CUDA present → NCCL, else gloo.
        timeout_s: how long a collective waits for a silent rank before failing.
    """
    if not launched_by_torchrun() or torch.distributed.is_initialized():
        from ..distributed import rank_and_world_size

        yield rank_and_world_size()
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield torch.distributed.get_rank(), torch.distributed.get_world_size()
    finally:
        torch.distributed.destroy_process_group()
