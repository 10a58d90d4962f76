"""Layer tracing: a feature's activation when the SAE reads each encoder layer.

Every hidden state (the embedding output, then each transformer layer) is pooled with the
model's own Pooling module (:func:`aquin_monitor.encoders.iter_forward`) and sent through the
modules that follow pooling in the model (Dense, Normalize), so the last layer's input is the
final embedding itself and its activation equals the final-embedding activation exactly. The
SAE was trained on final embeddings only: earlier layers are read *through the last layer's
dictionary*, which asks "when does this final-layer concept become readable".

A traced feature is classed as

- ``late-binding``: it first fires in one of the last three layers;
- ``progressive``: it fires earlier and is still active in the last layer;
- ``transient``: it fires in some layer but not in the last one;
- ``inactive``: it fires in no layer.

Example:

    >>> import torch
    >>> from aquin_monitor.sae.model import SparseAutoencoder
    >>> sae = SparseAutoencoder(d_in=8, num_latents=16, k=3, seed=0)
    >>> layers = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    >>> t = trace_feature(sae, layers, feature=int(sae.encode(layers[-1:]).argmax()))
    >>> t.activations[-1] > 0, len(t.activations), t.classification in ("late-binding", "progressive")
    (True, 4, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["LayerTrace", "layer_inputs", "trace_feature", "trace_figure"]

LATE_LAYERS = 3


@dataclass
class LayerTrace:
    """The traced feature's activation per layer (index 0 = embedding output) and the co-active features."""

    feature: int
    activations: list[float]
    co_active: list[list[dict[str, Any]]]
    """Per layer, the other active features (``feature``, ``activation``, ``label``), largest first."""
    classification: str
    onset_layer: int | None
    """First layer where the feature fires (None if never)."""
    label: str | None = None
    text: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


def _classify(active: np.ndarray) -> tuple[str, int | None]:
    fired = np.flatnonzero(active)
    if not len(fired):
        return "inactive", None
    onset = int(fired[0])
    if not active[-1]:
        return "transient", onset
    return ("late-binding" if onset >= len(active) - LATE_LAYERS else "progressive"), onset


def trace_feature(
    sae: Any,
    layers: Any,
    feature: int,
    *,
    top: int = 5,
    labels: Sequence[str | None] | None = None,
    text: str | None = None,
) -> LayerTrace:
    """Apply the SAE to each layer's input and follow one feature (module docstring).

    Args:
        sae: a :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        layers: ``[L+1, d_in]`` one text's per-layer inputs (from :func:`layer_inputs`); the last row
            must be the final embedding.
        feature: the feature to trace.
        top: co-active features listed per layer.
        labels: optional label per feature.
        text: the text traced, carried into the result.

    Returns:
        A :class:`LayerTrace`.
    """
    layers = torch.as_tensor(np.asarray(layers, dtype=np.float32))
    if layers.ndim != 2 or layers.shape[1] != sae.d_in:
        raise ValueError(f"layers: expected [n_layers, {sae.d_in}], got {tuple(layers.shape)}")
    if not 0 <= feature < sae.num_latents:
        raise ValueError(f"feature: {feature} is outside 0..{sae.num_latents - 1}")
    with torch.no_grad():
        z = sae.encode(layers)
    activations = z[:, feature].double().numpy()
    co_active = []
    for row in z:
        values, indices = torch.topk(row, min(top + 1, sae.num_latents))
        co_active.append(
            [
                {"feature": int(i), "activation": float(v), "label": None if labels is None else labels[int(i)]}
                for v, i in zip(values, indices)
                if v > 0 and int(i) != feature
            ][:top]
        )
    classification, onset = _classify(activations > 0)
    return LayerTrace(
        feature,
        activations.tolist(),
        co_active,
        classification,
        onset,
        None if labels is None else labels[feature],
        text,
    )


def layer_inputs(model: Any, texts: Sequence[str], *, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer SAE inputs of each text and its final embedding, from one forward pass per batch.

    Args:
        model: a loaded SentenceTransformer.
        texts: the texts.
        batch_size: texts per forward pass.

    Returns:
        ``(layers [n, L+1, d], final [n, d])``: each hidden state pooled by the model's Pooling
        module and passed through the modules after it (Dense, Normalize, ``truncate_dim``).
    """
    from ..encoders import iter_forward

    modules = list(model.children())
    pooling_at = next(i for i, m in enumerate(modules) if type(m).__name__ == "Pooling")
    after = modules[pooling_at + 1 :]
    truncate_dim = getattr(model, "truncate_dim", None)
    layers, finals = [], []
    for batch in iter_forward(model, list(texts), batch_size=batch_size, attentions=False):
        pooled = batch.layer_embeddings  # [L+1, B, h]
        assert pooled is not None  # iter_forward returns hidden states by default
        with torch.inference_mode():
            features = {"sentence_embedding": pooled.reshape(-1, pooled.shape[-1]).to(model.device)}
            for module in after:
                features = module(features)
        out = features["sentence_embedding"].float().cpu()
        if truncate_dim is not None:
            out = out[..., :truncate_dim]
        layers.append(out.reshape(pooled.shape[0], pooled.shape[1], -1).transpose(0, 1).numpy())
        finals.append(batch.embeddings.numpy())
    return np.concatenate(layers), np.concatenate(finals)


def trace_figure(trace: LayerTrace) -> Any:
    """A figure with one column per layer: the traced feature and its co-active features' activations."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from ..plots import PlainTextFigure

    features = [trace.feature] + sorted({c["feature"] for layer in trace.co_active for c in layer} - {trace.feature})
    grid = np.zeros((len(features), len(trace.activations)))
    row_of = {f: r for r, f in enumerate(features)}
    grid[0] = trace.activations
    for column, layer in enumerate(trace.co_active):
        for c in layer:
            grid[row_of[c["feature"]], column] = c["activation"]
    figure = PlainTextFigure(figsize=(1.0 + 0.5 * grid.shape[1], 1.0 + 0.25 * len(features)))
    axis = figure.add_subplot()
    image = axis.imshow(grid, aspect="auto", cmap="viridis")
    axis.set_xticks(range(grid.shape[1]), [str(i) for i in range(grid.shape[1])])
    axis.set_yticks(range(len(features)), [f"#{f}" + (" (traced)" if f == trace.feature else "") for f in features])
    axis.set_xlabel("layer (0 = embeddings)")
    axis.set_title(f"feature {trace.feature}: {trace.classification}")
    figure.colorbar(image, ax=axis, label="activation")
    return figure
