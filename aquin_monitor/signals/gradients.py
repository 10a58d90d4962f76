"""Per-block gradient norms in one fused device operation (the dead/spike detector that reads them is
:class:`aquin_monitor.alarms.GradientAnomalyDetector`).

Grouping (the ``grad_norm/<group>`` vocabulary of DESIGN.md) from parameter names:

- ``embeddings``: token/position/type embeddings (``embeddings.``, ``embed_tokens``, ``wte``, ``wpe``)
- ``layer.NN``: encoder block ``NN`` (names containing ``layer.N.``, ``layers.N.``, ``h.N.``, ``block.N.``)
- ``layer.NN/lora_A``, ``layer.NN/lora_B``: peft LoRA matrices of block ``NN``
- ``pooler``: the transformer's pooler; ``head``: everything else (Dense/projection modules)

The norm of a group is ``sqrt(Σ_p ‖g_p‖²)`` over its parameters and ``total`` is the same over all
parameters, which equals ``torch.nn.utils.get_total_norm`` of all gradients. Per-parameter norms
come from one ``torch._foreach_norm`` call (a single fused multi-tensor kernel on CUDA), followed by
a scatter-add into groups: no per-parameter host synchronisation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens|wte|wpe|word_embeddings|shared)(?:\.|$)")
_POOLER = re.compile(r"(?:^|\.)pooler\.")
_LORA = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)\.")


def group_name(parameter_name: str) -> str:
    """The ``grad_norm`` group of a parameter name.

    >>> group_name("0.auto_model.encoder.layer.3.attention.self.query.weight")
    'layer.03'
    >>> group_name("base_model.model.encoder.layer.11.attention.self.query.lora_B.default.weight")
    'layer.11/lora_B'
    >>> group_name("0.auto_model.embeddings.word_embeddings.weight"), group_name("2.linear.weight")
    ('embeddings', 'head')
    """
    lora = _LORA.search(parameter_name)
    layer = _LAYER.search(parameter_name)
    if layer:
        base = f"layer.{int(layer.group(1)):02d}"
        if lora:
            return f"{base}/{lora.group(1).replace('lora_embedding_', 'lora_')}"
        return base
    if lora:
        return f"other/{lora.group(1).replace('lora_embedding_', 'lora_')}"
    if _EMBEDDINGS.search(parameter_name):
        return "embeddings"
    if _POOLER.search(parameter_name):
        return "pooler"
    return "head"


#: module names that wrappers (FSDP1, activation checkpointing) insert into parameter names
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def unwrapped_name(parameter_name: str) -> str:
    """The parameter's name without the module names wrappers insert (the same name as in an unwrapped run).

    >>> unwrapped_name("0.auto_model.encoder.layer.1._fsdp_wrapped_module.output.dense.weight")
    '0.auto_model.encoder.layer.1.output.dense.weight'
    """
    for prefix in WRAPPER_PREFIXES:
        parameter_name = parameter_name.replace(prefix, "")
    return parameter_name


def _group_order(name: str) -> tuple:
    if name == "embeddings":
        return (0, 0, name)
    if name.startswith("layer."):
        return (1, int(name[6:8]), name)
    return (2, 0, name)


@dataclass(frozen=True)
class ParameterGroups:
    """Trainable parameters and the group each belongs to (computed once per model)."""

    names: tuple[str, ...]  # group names, sorted: embeddings, layer.00 …, then the rest
    parameters: tuple[torch.nn.Parameter, ...] = field(repr=False)
    parameter_names: tuple[str, ...] = field(repr=False)
    index: torch.Tensor = field(repr=False)  # [P] long: group of each parameter
    group_of: np.ndarray | None = field(default=None, repr=False, compare=False)  # the same on the host
    # device index tensors per pattern of present gradients, built once: creating one per step from
    # a Python list would be a host-to-device copy, i.e. a device synchronisation every step
    _present_index: dict = field(default_factory=dict, repr=False, compare=False)

    def metric_names(self, prefix: str = "grad_norm/") -> list[str]:
        """Metric names in the order of :func:`grouped_grad_norms`' output (groups, then total)."""
        return [prefix + n for n in self.names] + [prefix + "total"]


def group_parameters(named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> ParameterGroups:
    """Group the trainable (``requires_grad``) parameters by :func:`group_name`; frozen ones are
    skipped and tied weights counted once. Groups are sorted: embeddings, layer.00 …, the rest.

    >>> model = torch.nn.ModuleDict({"embeddings": torch.nn.Linear(2, 2), "pooler": torch.nn.Linear(2, 1)})
    >>> group_parameters(model.named_parameters()).names
    ('embeddings', 'pooler')
    """
    params, pnames, groups = [], [], []
    seen: set[int] = set()
    for name, p in named_parameters:
        if not p.requires_grad or id(p) in seen:  # tied weights count once
            continue
        seen.add(id(p))
        params.append(p)
        name = unwrapped_name(name)
        pnames.append(name)
        groups.append(group_name(name))
    names = tuple(sorted(set(groups), key=_group_order))
    lookup = {n: i for i, n in enumerate(names)}
    device = params[0].device if params else torch.device("cpu")
    index = torch.tensor([lookup[g] for g in groups], dtype=torch.long, device=device)
    return ParameterGroups(
        names, tuple(params), tuple(pnames), index, np.array([lookup[g] for g in groups], dtype=np.int64)
    )


def gradient_presence(groups: ParameterGroups) -> tuple[int, ...] | None:
    """Indices of the parameters that have a ``.grad`` now, or None when all of them have one.

    Host-side only (``p.grad is None`` reads no device memory).

    >>> layer = torch.nn.Linear(2, 1)
    >>> groups = group_parameters([("layer.0.w", layer.weight), ("layer.1.b", layer.bias)])
    >>> layer.weight.grad = torch.ones(1, 2)
    >>> gradient_presence(groups), groups_with_gradient(groups, gradient_presence(groups)).tolist()
    ((0,), [True, False])
    """
    present = tuple(i for i, p in enumerate(groups.parameters) if p.grad is not None)
    return None if len(present) == len(groups.parameters) else present


def groups_with_gradient(groups: ParameterGroups, present: tuple[int, ...] | None) -> np.ndarray:
    """``[G]`` bool: which groups have at least one parameter with a gradient (``present`` as
    :func:`gradient_presence` returns it; see its example)."""
    mask = np.zeros(len(groups.names), dtype=bool)
    if present is None:
        mask[:] = True
    elif present:
        assert groups.group_of is not None  # group_parameters fills it
        mask[groups.group_of[list(present)]] = True
    return mask


_ASK = object()  # grouped_grad_norms: look up which parameters have a gradient


def parameter_grad_norms(
    groups: ParameterGroups, present=_ASK, gradients: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """``[len(present)]`` float32 device tensor: the L2 norm of each present parameter's gradient.

    One fused ``torch._foreach_norm`` (per device). ``present``: what :func:`gradient_presence`
    returned for this step (None: every parameter, in ``groups.parameters`` order). ``gradients``: the
    tensors to measure instead of the ``.grad`` of the present parameters, in the same order (a sharded
    run hands in each gradient's local shard).

    >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
    >>> parameter_grad_norms(group_parameters([("encoder.layer.0.w", p)])).tolist()
    [5.0]
    """
    if present is _ASK:
        present = gradient_presence(groups)
    if present is None:
        present = range(len(groups.parameters))
    grads = list(gradients) if gradients is not None else [groups.parameters[i].grad for i in present]
    if not grads:
        return torch.zeros(0, dtype=torch.float32)
    device = grads[0].device
    if all(g.device == device for g in grads):
        return torch.stack(torch._foreach_norm(grads)).float()
    # model split over devices: one norm per parameter, gathered on the first device
    return torch.stack([torch.linalg.vector_norm(g).float().to(device) for g in grads])


def _present_group_index(groups: ParameterGroups, present, device: torch.device) -> torch.Tensor:
    """The group of each present parameter as a device tensor (cached per presence pattern)."""
    index = groups.index
    if present is not None and len(present) != len(groups.parameters):
        key = tuple(present)
        if key not in groups._present_index:
            groups._present_index[key] = groups.index[list(key)].to(device)
        index = groups._present_index[key]
    return index.to(device)


def grouped_squared_norms(
    groups: ParameterGroups, present, per_param: torch.Tensor, shares: torch.Tensor | None = None
) -> torch.Tensor:
    """``[G]`` float32 device tensor: ``Σ_{p ∈ group} w_p ‖g_p‖²`` over the present parameters.

    ``per_param``: :func:`parameter_grad_norms` of the present parameters (``present`` as
    :func:`gradient_presence` returns it); ``shares``: the weights ``w_p`` of the same parameters,
    aligned with ``per_param`` (None: all 1). With each rank's local shard norms and ``w_p`` = 1 / (ranks
    holding each element), the sum of this vector over the ranks is the squared group norm of the
    whole gradient (:mod:`aquin_monitor.distributed`).

    >>> a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    >>> groups = group_parameters([("layer.0.a", a), ("layer.0.b", b)])
    >>> grouped_squared_norms(groups, None, torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.5])).tolist()
    [17.0]
    """
    n_groups = len(groups.names)
    if per_param.numel() == 0:
        return torch.zeros(n_groups, dtype=torch.float32)
    device = per_param.device
    squares = per_param * per_param
    if shares is not None:
        squares = squares * shares.to(device)
    index = _present_group_index(groups, present, device)
    return torch.zeros(n_groups, dtype=torch.float32, device=device).index_add_(0, index, squares)


def grouped_grad_norms(groups: ParameterGroups, present=_ASK, per_param: torch.Tensor | None = None) -> torch.Tensor:
    """``[G + 1]`` float32 device tensor: the L2 norm of each group's gradients, then the total.

    With g_p the gradient of parameter p::

        norm[group] = sqrt(Σ_{p ∈ group} ‖g_p‖²)        total = sqrt(Σ_p ‖g_p‖²)

    (``total`` equals ``torch.nn.utils.get_total_norm`` of all gradients, bit for bit). A parameter
    whose ``.grad`` is None (unused this step, or frozen after grouping) counts as zero. A NaN/Inf
    anywhere in a group makes that group's norm and the total non-finite. ``present``: what
    :func:`gradient_presence` returned for this step, if the caller already asked it; ``per_param``:
    :func:`parameter_grad_norms` of the same step, if the caller already computed it (reused as is).

    >>> a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    >>> a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])
    >>> grouped_grad_norms(group_parameters([("layer.0.a", a), ("layer.1.b", b)])).tolist()
    [5.0, 12.0, 13.0]
    """
    n_groups = len(groups.names)
    if present is _ASK:
        present = gradient_presence(groups)
    if present is not None and not present:
        return torch.zeros(n_groups + 1, dtype=torch.float32)
    if per_param is None:
        per_param = parameter_grad_norms(groups, present)
    group_sq = grouped_squared_norms(groups, present, per_param)
    # the total as torch.nn.utils.get_total_norm computes it, bit for bit (clipping may reuse it)
    return torch.cat([group_sq.sqrt(), torch.linalg.vector_norm(per_param).reshape(1)])


def norms_from_squares(group_squares: torch.Tensor) -> torch.Tensor:
    """``[G + 1]``: each group's norm and the total, ``sqrt(Σ_groups squares)``, from ``[G]`` squared norms.

    >>> norms_from_squares(torch.tensor([9.0, 16.0])).tolist()
    [3.0, 4.0, 5.0]
    """
    return torch.cat([group_squares.sqrt(), group_squares.sum().sqrt().reshape(1)])


def row_nanmedian(a: np.ndarray) -> np.ndarray:
    """``np.nanmedian(a, axis=1)`` of a 2-D array, NaN for an all-NaN row, without a warning.

    numpy's nanmedian loops over rows in Python for small arrays; this sorts once (NaN sorts last) and
    picks the middle of each row's finite prefix (the detector calls it on [groups, 50] every step).

    >>> row_nanmedian(np.array([[3.0, np.nan, 1.0, 2.0], [np.nan] * 4, [4.0, 1.0, 2.0, 3.0]])).tolist()
    [2.0, nan, 2.5]
    """
    ordered = np.sort(a, axis=1)
    k = (~np.isnan(a)).sum(axis=1)
    lo = np.take_along_axis(ordered, np.maximum((k - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(ordered, (k // 2)[:, None], axis=1)[:, 0]
    return np.where(k > 0, (lo + hi) / 2, np.nan)
