"""This process's place in a ``torch.distributed`` group, and what a sharded gradient's norm needs from it.

Under sharded data parallelism (FSDP) each rank holds a piece of every gradient, so a norm measured
on one rank is the norm of its shard only. The squared norm is additive over disjoint pieces, so with
``s_p`` the number of ranks holding each element of parameter ``p``'s gradient (1 for a fully sharded
gradient, the world size for a replicated one) and ``w_p = 1 / s_p`` (:func:`gradient_shares`)::

    ‖g_p‖² = Σ_ranks w_p · ‖local shard of g_p‖²

and a group's squared norm is the sum of its parameters'
(:func:`~aquin_monitor.signals.gradients.grouped_squared_norms`).
:class:`~aquin_monitor.sharded_gradients.ShardedGradientNorms` builds those sums; the monitor sums those per-group
values over the ranks in the one ``all_reduce`` it already makes each step (one small vector, not one collective per
parameter). A NaN/Inf in any shard makes the sum non-finite on every rank, so every rank sees it.

Recognised: FSDP2 (``torch.distributed.fsdp.fully_shard``: parameters and gradients are ``DTensor``\\ s,
used by Lightning's ``ModelParallelStrategy`` and accelerate's ``fsdp_version: 2``) and FSDP1
(``FullyShardedDataParallel`` with ``use_orig_params=True``, Lightning's ``FSDPStrategy`` and accelerate's
``fsdp_version: 1``, whose original parameters hold flat views of this rank's shard), when the FSDP1
wrapper is among the modules handed in.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import torch


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` outside distributed training.

    >>> rank_and_world_size()
    (0, 1)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without DTensor has no FSDP2 either
        return None
    return DTensor


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's piece of ``tensor``: a ``DTensor``'s local shard, any other tensor itself.

    >>> t = torch.ones(3)
    >>> local_tensor(t) is t
    True
    """
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(tensor, dtensor):
        with torch.no_grad():
            return cast(Any, tensor).to_local()
    return tensor


def local_gradients(parameters: Sequence[torch.nn.Parameter], present: Sequence[int] | None) -> list[torch.Tensor]:
    """The local piece of the gradient of each parameter in ``present`` (all of them when None)."""
    indices = range(len(parameters)) if present is None else present
    return [local_tensor(cast(torch.Tensor, parameters[i].grad)) for i in indices]


def _dtensor_share(parameter) -> float:
    """``1 / copies``: how many ranks of the parameter's mesh hold each element of its gradient."""
    mesh = parameter.device_mesh
    sharded_ranks = 1
    for dim, placement in enumerate(parameter.placements):
        if placement.is_shard():
            sharded_ranks *= mesh.size(dim)
    return sharded_ranks / mesh.size()


def _fsdp1_shares(modules: Iterable[torch.nn.Module], world_size: int) -> dict[int, float]:
    """``{id(parameter): share}`` for the parameters managed by FSDP1 wrappers among ``modules``.

    A parameter belongs to the innermost wrapper above it; a wrapper shards over its ``process_group``
    (``NO_SHARD``: every rank holds the whole gradient).
    """
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    except ImportError:
        return {}
    shares: dict[int, float] = {}
    wrappers = [m for m in modules if isinstance(m, FullyShardedDataParallel)]
    for wrapper in wrappers:  # outer wrappers come first in modules(): inner ones overwrite their parameters
        if wrapper.sharding_strategy == ShardingStrategy.NO_SHARD:
            share = 1.0 / world_size
        else:
            share = torch.distributed.get_world_size(wrapper.process_group) / world_size
        shares.update({id(p): share for p in wrapper.parameters()})
    return shares


def gradient_shares(
    parameters: Sequence[torch.nn.Parameter], modules: Iterable[torch.nn.Module] = ()
) -> np.ndarray | None:
    """``[P]`` float64: each parameter's share ``w_p`` (module docstring), or None when none is sharded.

    ``modules``: where to look for FSDP1 wrappers (``model.modules()`` of the wrapped model). A parameter
    neither a ``DTensor`` nor under a wrapper is replicated (every rank holds all of it: ``1 / world_size``).
    Outside distributed training, or when nothing is sharded, None: the caller measures as before.

    >>> gradient_shares([torch.nn.Parameter(torch.ones(2))]) is None
    True
    """
    _, world_size = rank_and_world_size()
    if world_size < 2:
        return None
    dtensor = _dtensor_type()
    fsdp1 = _fsdp1_shares(modules, world_size)
    outside = sum(id(p) not in fsdp1 and not (dtensor is not None and isinstance(p, dtensor)) for p in parameters)
    if fsdp1 and outside:
        warnings.warn(
            f"aquin-monitor: {outside} trainable parameters are outside every FullyShardedDataParallel wrapper "
            "the monitor can see and are taken as replicated; if they sit under an FSDP1 root wrapper it was not "
            "handed in (the Hugging Face Trainer gives callbacks the unwrapped model), so their norms are this "
            "rank's shard only: use FSDP2 (accelerate's fsdp_version: 2)",
            RuntimeWarning,
            stacklevel=3,
        )
    shares = np.full(len(parameters), 1.0 / world_size)
    distributed_tensors = False
    for i, parameter in enumerate(parameters):
        if dtensor is not None and isinstance(parameter, dtensor):
            shares[i] = _dtensor_share(parameter)
            distributed_tensors = True
        elif id(parameter) in fsdp1:
            shares[i] = fsdp1[id(parameter)]
    # replicated plain tensors everywhere (DDP, FSDP1 NO_SHARD): each rank measures the whole gradient
    return shares if distributed_tensors or not np.allclose(shares, 1.0 / world_size) else None
