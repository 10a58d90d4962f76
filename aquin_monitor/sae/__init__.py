"""Sparse autoencoders on sentence embeddings: train, evaluate, ship, monitor.

- :func:`load_sae` (``"default"``: the SAE shipped for the bundled all-MiniLM-L6-v2) and
  :class:`SparseAutoencoder` (``encode`` / ``decode`` on embedding tensors; sparsify's folder layout).
- :func:`train_sae` with :class:`SaeTrainConfig`; :func:`build_sae_folder` writes a complete folder.
- :func:`quality_metrics`, :func:`retrieval_kept`: the ``sae eval`` report.
- :func:`snapshot_signals`, :func:`feature_movers`: SAE signals for checkpoint snapshots.
- :func:`explain_drift`: the drift between two checkpoints by the base SAE's features (moved features, pair splits).

Example::

    >>> from aquin_monitor.sae import load_sae
    >>> import torch
    >>> sae = load_sae("default")
    >>> z = sae.encode(torch.nn.functional.normalize(torch.randn(2, sae.d_in), dim=1))
    >>> tuple(z.shape) == (2, sae.num_latents)
    True
"""

import importlib
from typing import Any

# Lazy exports (PEP 562): ``aquin_monitor.sae.cli`` is imported by the main parser, which must not
# pay for torch; the names below load their module on first use.
_EXPORTS = {
    "build_sae_folder": "build",
    "DriftExplanation": "drift",
    "explain_drift": "drift",
    "FeatureStatistics": "evaluate",
    "feature_statistics": "evaluate",
    "quality_metrics": "evaluate",
    "reconstruct": "evaluate",
    "retrieval_kept": "evaluate",
    "SaeFormatError": "model",
    "SparseAutoencoder": "model",
    "default_sae_path": "model",
    "load_sae": "model",
    "SaeSnapshot": "monitoring",
    "feature_movers": "monitoring",
    "snapshot_signals": "monitoring",
    "sae_choice": "monitoring",
    "SaeTrainConfig": "config",
    "TrainResult": "train",
    "choose_sizes": "train",
    "train_sae": "train",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DriftExplanation",
    "FeatureStatistics",
    "SaeFormatError",
    "SaeSnapshot",
    "SaeTrainConfig",
    "SparseAutoencoder",
    "TrainResult",
    "build_sae_folder",
    "choose_sizes",
    "default_sae_path",
    "explain_drift",
    "feature_movers",
    "feature_statistics",
    "load_sae",
    "quality_metrics",
    "reconstruct",
    "retrieval_kept",
    "sae_choice",
    "snapshot_signals",
    "train_sae",
]
