"""Independent references for the per-step metrics, for tests: plain torch, nothing from ``aquin_monitor``.

- ``grad_norm/<group>``: groups from a regular expression over the parameter names of a BERT-style
  model (``embeddings.``, ``encoder.layer.N.``, ``pooler.``, peft's ``lora_A`` / ``lora_B``), each
  group's norm ``sqrt(Σ_p Σ g²)`` accumulated in float64 over the parameters that hold a gradient now.
- ``contrastive/*`` of an in-batch (InfoNCE / MultipleNegativesRanking) loss: sums over one
  micro-batch's query and document embeddings, combined over micro-batches by :func:`combine`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F

BLOCK = re.compile(r"\bencoder\.layer\.(\d+)\.")
LORA = re.compile(r"\.(lora_A|lora_B)\.")


def reference_group(parameter_name: str) -> str:
    """``embeddings``, ``layer.NN`` (``layer.NN/lora_A|B`` for LoRA matrices), ``pooler`` or ``head``.

    >>> reference_group("encoder.0.auto_model.encoder.layer.1.output.dense.weight")
    'layer.01'
    >>> reference_group("0.auto_model.embeddings.LayerNorm.bias"), reference_group("0.auto_model.pooler.dense.bias")
    ('embeddings', 'pooler')
    >>> reference_group("base_model.model.encoder.layer.0.attention.self.value.lora_B.default.weight")
    'layer.00/lora_B'
    """
    block = BLOCK.search(parameter_name)
    if block:
        lora = LORA.search(parameter_name)
        return f"layer.{int(block.group(1)):02d}" + (f"/{lora.group(1)}" if lora else "")
    if ".embeddings." in f".{parameter_name}":
        return "embeddings"
    if ".pooler." in f".{parameter_name}":
        return "pooler"
    return "head"


def reference_group_norms(named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> dict[str, float]:
    """Pre-clip L2 norm of every group whose trainable parameters hold a gradient now, and ``total``.

    Groups none of whose parameters has a ``.grad`` are left out (a group that never receives a
    gradient, like an unused pooler, is not logged by the monitor either).
    """
    squares: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, parameter in named_parameters:
        if not parameter.requires_grad or parameter.grad is None or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        group = reference_group(name)
        square = parameter.grad.detach().double().pow(2).sum()
        squares[group] = squares.get(group, torch.zeros((), dtype=torch.float64)) + square
    norms = {group: float(value.sqrt()) for group, value in squares.items()}
    norms["total"] = float(sum(squares.values()).sqrt()) if squares else 0.0
    return norms


def total_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """L2 norm of all gradients present, in float64."""
    grads = [p.grad.detach().double().reshape(-1) for p in parameters if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.cat(grads))) if grads else 0.0


def in_batch_sums(queries: torch.Tensor, documents: torch.Tensor, scale: float = 20.0) -> dict[str, float]:
    """Sums of one micro-batch of an in-batch loss: row i's positive is document i, the rest negatives.

    ``loss`` is the cross-entropy of ``scale · cos`` (the loss value of that micro-batch).
    """
    cos = F.normalize(queries.double(), dim=1) @ F.normalize(documents.double(), dim=1).T
    n = len(cos)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    labels = torch.arange(n)
    return {
        "pos": cos.diagonal().sum().item(),
        "neg": cos[off_diagonal].sum().item(),
        "neg_count": n * (n - 1),
        "hardest": cos.masked_fill(~off_diagonal, float("-inf")).amax(dim=1).sum().item(),
        "correct": (cos.argmax(dim=1) == labels).sum().item(),
        "rows": n,
        "loss": F.cross_entropy(scale * cos, labels).item(),
        "losses": 1,
    }


def combine(micro_batches: Iterable[dict[str, float]]) -> dict[str, float]:
    """The ``contrastive/*`` values of one optimizer step from its micro-batches' :func:`in_batch_sums`."""
    total: dict[str, float] = {}
    for sums in micro_batches:
        for key, value in sums.items():
            total[key] = total.get(key, 0) + value
    pos, neg = total["pos"] / total["rows"], total["neg"] / total["neg_count"]
    return {
        "pos_sim": pos,
        "neg_sim": neg,
        "gap": pos - neg,
        "hardest_neg_sim": total["hardest"] / total["rows"],
        "in_batch_acc": total["correct"] / total["rows"],
        "loss": total["loss"] / total["losses"],
    }
