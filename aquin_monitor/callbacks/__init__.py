"""Trainer callbacks: thin adapters from hook calls to the framework-free monitor.

- :class:`LightningEmbeddingMonitor` for PyTorch Lightning (needs ``aquin-monitor[lightning]``);
- :class:`TrainerEmbeddingMonitor` for the sentence-transformers / Hugging Face ``Trainer``.

Both are twins: the same :class:`~aquin_monitor.monitor.StepMonitor`, the same metric names.
Imported lazily so that using one never imports the other framework.
"""

from __future__ import annotations

__all__ = ["LightningEmbeddingMonitor", "TrainerEmbeddingMonitor"]


def __getattr__(name: str):
    if name == "LightningEmbeddingMonitor":
        from .lightning import LightningEmbeddingMonitor

        return LightningEmbeddingMonitor
    if name == "TrainerEmbeddingMonitor":
        from .hf_trainer import TrainerEmbeddingMonitor

        return TrainerEmbeddingMonitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
