"""Group norms of sharded gradients from one reduced vector per step (the reduction :mod:`aquin_monitor.distributed`
describes; :class:`~aquin_monitor.monitor.StepMonitor` adds the vector to the ``all_reduce`` it makes anyway)."""

from __future__ import annotations

import numpy as np
import torch

from .distributed import local_gradients, local_tensor
from .signals.gradients import (
    ParameterGroups,
    grouped_squared_norms,
    groups_with_gradient,
    norms_from_squares,
    parameter_grad_norms,
)


class ShardedGradientNorms:
    """Group norms of a sharded model's gradients, from one reduced vector per step.

    Each rank builds :meth:`local_vector` (its weighted squared norms per group, which groups it holds
    a gradient for, a 1 saying its part is in), the caller adds it to the vector it all-reduces anyway,
    and :meth:`split` turns the sum back into ``[G + 1]`` norms (groups, then total). A rank that cannot
    measure adds :meth:`zeros` instead (its 0 tells the others the sum misses a part).

    ``tensor_step``: the vector also carries every parameter's weighted squared norm and whether this
    rank holds its gradient (``[2·P]``, in ``groups.parameters`` order), for ``grad_norm_tensor/<name>``
    of the parameters some rank holds a gradient for.
    """

    def __init__(self, groups: ParameterGroups, shares: np.ndarray):
        self.groups = groups
        self.shares = torch.as_tensor(shares, dtype=torch.float32)
        # where the vector lives (the collective's device), even on a step when this rank holds no gradient
        self.device = local_tensor(groups.parameters[0]).device if groups.parameters else torch.device("cpu")
        # per presence pattern: (weights of the present parameters, which groups hold one, their positions),
        # on the device, built once (a host-to-device copy per step would synchronise)
        self._patterns: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def size(self, tensor_step: bool) -> int:
        """Length of :meth:`local_vector`."""
        groups, parameters = len(self.groups.names), len(self.groups.parameters)
        return 2 * groups + 1 + (2 * parameters if tensor_step else 0)

    def _pattern(self, present: tuple[int, ...] | None, device: torch.device):
        key = (present, device)
        if key not in self._patterns:
            positions = list(range(len(self.groups.parameters))) if present is None else list(present)
            holds = groups_with_gradient(self.groups, present).astype(np.float32)
            self._patterns[key] = (
                self.shares[positions].to(device),
                torch.from_numpy(holds).to(device),
                torch.tensor(positions, dtype=torch.long, device=device),
            )
        return self._patterns[key]

    def local_vector(self, present: tuple[int, ...] | None, tensor_step: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(per_param, vector)``: this rank's local-shard norm of each present gradient, and its part of the sum."""
        groups = self.groups
        per_param = parameter_grad_norms(groups, present, local_gradients(groups.parameters, present)).to(self.device)
        device = self.device
        weights, holds, positions = self._pattern(present, device)
        group_sq = grouped_squared_norms(groups, present, per_param, weights)
        parts = [group_sq.to(device), holds, torch.ones(1, device=device)]
        if tensor_step:
            tensor_sq = torch.zeros(2, len(groups.parameters), dtype=torch.float32, device=device)
            if per_param.numel():
                tensor_sq[0].index_copy_(0, positions, per_param * per_param * weights)
                tensor_sq[1].index_fill_(0, positions, 1.0)
            parts.append(tensor_sq.reshape(-1))
        return per_param, torch.cat(parts)

    def zeros(self, tensor_step: bool, device: torch.device) -> torch.Tensor:
        """What a rank that cannot measure adds to the sum."""
        return torch.zeros(self.size(tensor_step), device=device)

    def split(self, reduced: torch.Tensor, tensor_step: bool):
        """``(norms, bookkeeping, tensor_norms, rest)`` of a reduced vector that starts with the summed
        :meth:`local_vector`: norms ``[G + 1]``; bookkeeping ``[G + 1]`` (ranks holding a gradient per
        group, ranks whose part is in); tensor norms ``[2·P]`` (each parameter's norm, then how many ranks
        hold its gradient) or None; ``rest``: what follows."""
        n_groups, n_parameters = len(self.groups.names), len(self.groups.parameters)
        norms = norms_from_squares(reduced[:n_groups])
        bookkeeping = reduced[n_groups : 2 * n_groups + 1]
        end = 2 * n_groups + 1
        tensor_norms = None
        if tensor_step:
            tensor_norms = torch.cat(
                [reduced[end : end + n_parameters].sqrt(), reduced[end + n_parameters : end + 2 * n_parameters]]
            )
            end += 2 * n_parameters
        return norms, bookkeeping, tensor_norms, reduced[end:]
