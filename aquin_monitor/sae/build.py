"""Train a SAE on a corpus' embeddings and write its folder with everything a user reads.

Folder contents: ``cfg.json`` + ``sae.safetensors`` (sparsify layout, :mod:`.model`),
``features.json`` (per feature: firing frequency, mean and max activation, top-activating texts
with their activations, over the whole corpus), ``training.jsonl`` (one line per epoch),
``quality.json`` / ``quality.txt`` (the held-out quality report) and two figures
(``density.png``, ``training.png``). Every file is written by an atomic rename.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from .evaluate import feature_statistics, quality_metrics, top_activations
from .train import SaeTrainConfig, TrainResult, train_sae

__all__ = ["build_sae_folder", "format_report", "write_features", "write_figures", "write_trained_folder"]


def write_features(
    sae: Any,
    embeddings: np.ndarray,
    texts: Sequence[str],
    folder: Path,
    *,
    top: int = 5,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> None:
    """``features.json``: per feature frequency, mean/max activation, top texts over ``texts`` and a label
    of its top texts (:func:`~aquin_monitor.sae.browser.browse_features`: key phrases chosen with the model's
    ``encode`` when given, with the top c-TF-IDF terms against ``texts`` kept beside them as ``label_ctfidf``;
    else the c-TF-IDF terms alone)."""
    from .browser import browse_features
    from .labels import ctfidf_labels

    stats = feature_statistics(sae, embeddings)
    values, rows = top_activations(sae, embeddings, top=top)
    browsed = browse_features(sae, embeddings, texts, examples=top, encode=encode).features
    labels = {feature.index: ", ".join(feature.label) for feature in browsed}
    ctfidf: dict[int, str] = {}
    if encode is not None:  # the label browse_features gives without an encoder: c-TF-IDF of the same top texts
        terms = ctfidf_labels(texts, [[example.row for example in feature.examples] for feature in browsed])
        ctfidf = {feature.index: ", ".join(words) for feature, words in zip(browsed, terms)}
    features = [
        {
            "id": i,
            "label": labels.get(i, ""),
            "frequency": round(float(stats.frequency[i]), 6),
            "mean_activation": round(float(stats.mean_activation[i]), 5),
            "max_activation": round(float(stats.max_activation[i]), 5),
            "top": [{"text": texts[r], "activation": round(float(v), 5)} for v, r in zip(values[i], rows[i]) if r >= 0],
            **({"label_ctfidf": ctfidf.get(i, "")} if encode is not None else {}),
        }
        for i in range(sae.num_latents)
    ]
    record = {"n_texts": len(texts), "features": features}
    atomic_write_text(folder / "features.json", json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")


def write_figures(folder: Path, frequency: np.ndarray, history: Sequence[Mapping[str, float]]) -> None:
    """``density.png`` (log10 firing frequency) and ``training.png`` (FVU, L0, dead over epochs)."""
    from .plots import feature_density_figure, training_curves_figure

    for name, figure in (
        ("density.png", feature_density_figure(frequency)),
        ("training.png", training_curves_figure(history)),
    ):
        with atomic_path(folder / name) as tmp:
            figure.savefig(tmp, format="png", dpi=80)


def format_report(metrics: Mapping[str, Any]) -> str:
    """The quality report as aligned ``name  value`` lines."""
    width = max((len(k) for k in metrics), default=0)
    lines = []
    for name, value in metrics.items():
        shown = (
            f"{value:.4f}"
            if isinstance(value, float) and not float(value).is_integer()
            else f"{value:g}"
            if isinstance(value, float)
            else str(value)
        )
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)


def build_sae_folder(
    embeddings: np.ndarray,
    texts: Sequence[str],
    out: str | os.PathLike,
    *,
    model: str,
    config: SaeTrainConfig | None = None,
    sinks: Sequence[Any] = (),
    retrieval: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    label_encode: Callable[[list[str]], np.ndarray] | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train on ``embeddings`` of ``texts``, write the SAE folder ``out`` and return its quality report.

    Args:
        embeddings: [n, d] embeddings of ``texts`` by ``model``.
        texts: the texts (for ``features.json``).
        out: the folder to write (created).
        model: the embedding model's name or path, stored in ``cfg.json`` as ``model``.
        config: training settings.
        sinks: receive the per-epoch ``sae/*`` scalars.
        retrieval: optional ``{"queries", "documents", "relevant"}`` embeddings and judgements for
            the retrieval-kept metrics.
        show_progress: progress bar and the size rule on stderr.
        label_encode: the model's encoder for key-phrase labels in ``features.json`` (default: c-TF-IDF).

    Returns:
        ``(train_result, quality_metrics)``; the report is also printed on stderr.
    """
    from .evaluate import retrieval_kept

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result = train_sae(embeddings, config, sinks=sinks, show_progress=show_progress, metadata={"model": str(model)})
    if show_progress:
        print(f"sizes: {result.rule}", file=sys.stderr)
    write_features(result.sae, embeddings, texts, folder, encode=label_encode)
    extra = None
    if retrieval is not None:
        extra = retrieval_kept(result.sae, retrieval["queries"], retrieval["documents"], retrieval["relevant"])
    return result, write_trained_folder(result, folder, model=model, extra_metrics=extra, show_progress=show_progress)


def write_trained_folder(
    result: TrainResult,
    folder: Path,
    *,
    model: str,
    extra_metrics: Mapping[str, float] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Write a trained SAE's folder but ``features.json``: weights, ``training.jsonl``, the held-out quality report,
    figures.

    The quality report is computed on ``result.held_out`` (the rows evaluated each epoch), so a SAE
    trained from a store of any size needs no second pass over it.
    """
    sae = result.sae
    sae.save(folder)
    lines = "".join(json.dumps(row) + "\n" for row in result.history)
    atomic_write_text(folder / "training.jsonl", lines)
    if result.held_out is None:
        raise ValueError("write_trained_folder: the training result carries no held-out rows")
    metrics, stats = quality_metrics(sae, result.held_out)
    metrics.update(extra_metrics or {})
    write_figures(folder, stats.frequency, result.history)
    report = {
        "model": str(model),
        "held_out": "validation split",
        "config": result.config,
        "rule": result.rule,
        "best_epoch": sae.metadata.get("best_epoch"),
        "metrics": metrics,
    }
    atomic_write_text(folder / "quality.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(folder / "quality.txt", format_report(metrics) + "\n")
    if show_progress:
        print(format_report(metrics), file=sys.stderr)
    return metrics
