"""aquin-monitor: observability for fine-tuning sentence-embedding models.

The public surface, imported lazily (``import aquin_monitor`` loads no torch, transformers or
lightning; each name loads its own module on first use)::

    from aquin_monitor import (
        LightningEmbeddingMonitor,  # PyTorch Lightning callback
        TrainerEmbeddingMonitor,    # sentence-transformers / Hugging Face Trainer callback
        monitored,                  # wrap a sentence-transformers loss so the monitor sees its scores
        SnapshotRunner,             # probe-set snapshots of the embedding space at checkpoints
        SnapshotEvaluator,          # a SnapshotRunner as a sentence-transformers evaluator
        read_probe,                 # read a probe JSONL file
        load_model,                 # load a checkpoint, a hub id or "default" (the bundled MiniLM)
    )

>>> import aquin_monitor
>>> sorted(aquin_monitor.__all__)[:3]
['LightningEmbeddingMonitor', 'SnapshotEvaluator', 'SnapshotRunner']
"""

from __future__ import annotations

import importlib

__all__ = [
    "LightningEmbeddingMonitor",
    "TrainerEmbeddingMonitor",
    "monitored",
    "SnapshotRunner",
    "SnapshotEvaluator",
    "read_probe",
    "load_model",
]

# public name -> module that defines it (relative to this package)
_HOMES = {
    "LightningEmbeddingMonitor": ".callbacks.lightning",
    "TrainerEmbeddingMonitor": ".callbacks.hf_trainer",
    "monitored": ".capture",
    "SnapshotRunner": ".snapshot_runner",
    "SnapshotEvaluator": ".callbacks.evaluator",
    "read_probe": ".data",
    "load_model": ".encoders",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
