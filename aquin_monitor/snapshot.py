"""The ``Snapshot`` record of an embedding space, its atomic save/load, and ``diff(a, b)``.

On disk, one folder per snapshot: ``<run>/snapshots/<step>/snapshot.json`` (numbers: ``step``, ``tag``,
``model``, ``metrics`` in the metric vocabulary, small ``details``) and ``arrays.npz`` (embeddings, UMAP
coordinates, histograms, heatmaps...). The folder is written under a temporary name and renamed into
place, so a crash never leaves half a snapshot.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .signals.drift import drift_summary, first_rank_change
from .sinks.jsonl import to_jsonable


@dataclass
class Snapshot:
    step: int
    tag: str  # "base" | "checkpoint" | "inspect"
    model: str
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write ``<run_dir>/snapshots/<step>/`` atomically and return it."""
        root = Path(run_dir) / "snapshots"
        root.mkdir(parents=True, exist_ok=True)
        final = root / str(self.step)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.step}-", dir=root))
        try:
            record = {"step": self.step, "tag": self.tag, "model": self.model, "metrics": to_jsonable(self.metrics), "details": to_jsonable(self.details)}
            (tmp / "snapshot.json").write_text(json.dumps(record, indent=1, allow_nan=False), encoding="utf-8")
            np.savez_compressed(tmp / "arrays.npz", **{k: np.asarray(v) for k, v in self.arrays.items()})
            if final.exists():
                old = root / f".{self.step}-old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Snapshot:
        folder = Path(folder)
        path = folder / "snapshot.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no snapshot here") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        arrays = {}
        if (folder / "arrays.npz").exists():
            with np.load(folder / "arrays.npz", allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        return cls(int(record["step"]), record.get("tag", "checkpoint"), record.get("model", ""), _floats(record.get("metrics", {})), record.get("details", {}), arrays)


def list_snapshots(run_dir: str | os.PathLike) -> list[Path]:
    """Snapshot folders of a run, by step."""
    root = Path(run_dir) / "snapshots"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / "snapshot.json").exists()]
    return sorted(found, key=lambda p: int(p.name))


@dataclass
class Diff:
    """What changed from ``before`` to ``after`` (same probe inputs, row for row)."""

    metrics: dict[str, float]
    arrays: dict[str, np.ndarray]
    details: dict[str, Any]


def diff(before: Snapshot, after: Snapshot, *, name: str = "base", max_pairs: int = 20000, seed: int = 0) -> Diff:
    """Rotation-invariant drift from ``before`` to ``after`` under ``drift/<name>/...``.

    Every number and array comes from one :func:`aquin_monitor.signals.drift.drift_summary` call
    (linear CKA, k-NN overlap, similarity-distribution shift, anisotropy delta, per-label centroid
    shift after orthogonal Procrustes alignment, the composite drift score) and, when both snapshots
    carry retrieval ranks, :func:`aquin_monitor.signals.drift.first_rank_change`; nothing is
    recomputed here. Arrays for the figures: the centroids of both spaces on the first two principal
    axes of ``before`` (``centroid_base_2d`` / ``centroid_now_2d``), the cosines of the pairs the
    similarity shift sampled, in both spaces (``sim_base_values`` / ``sim_now_values``), and the first
    relevant ranks before/after.

    Args:
        before: the reference snapshot (base model or previous checkpoint).
        after: the snapshot of the same probe inputs, row for row.
        name: the reference's name in the metric keys.
        max_pairs: pairs sampled for the similarity distribution.
        seed: seed of the pair sampler.

    Returns:
        A :class:`Diff` of metrics, figure arrays and per-label details.
    """
    x, y = before.arrays.get("embeddings"), after.arrays.get("embeddings")
    if x is None or y is None:
        raise ValueError("both snapshots need their 'embeddings' array to be diffed")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"snapshots were taken on different probes: {x.shape[0]} vs {y.shape[0]} rows")
    labels = before.arrays.get("labels")
    labels = None if labels is None or len(labels) != x.shape[0] else [str(v) for v in labels]
    summary = drift_summary(x, y, labels, max_pairs=max_pairs, seed=seed)
    prefix = f"drift/{name}"
    metrics = summary.as_metrics(prefix)
    arrays: dict[str, np.ndarray] = {
        "sim_base_values": summary.similarity.before_cosines.astype(np.float32),
        "sim_now_values": summary.similarity.after_cosines.astype(np.float32),
    }
    details: dict[str, Any] = {}
    centroids = summary.centroids
    if centroids is not None:
        names = [str(v) for v in centroids.labels]
        arrays["centroid_base_2d"] = centroids.before_2d.astype(np.float32)
        arrays["centroid_now_2d"] = centroids.after_2d.astype(np.float32)
        arrays["centroid_labels"] = np.asarray(names)
        details["centroid_shift"] = {c: float(v) for c, v in zip(names, centroids.cosine_distance)}
    rb, ra = before.arrays.get("first_rank"), after.arrays.get("first_rank")
    if rb is not None and ra is not None and rb.shape == ra.shape:
        arrays["rank_before"], arrays["rank_after"] = rb, ra
        metrics.update(first_rank_change(rb, ra).as_metrics(prefix))
    for key in ("retrieval/ndcg@10", "retrieval/mrr@10", "retrieval/recall@10", "geometry/anisotropy"):
        if key in before.metrics and key in after.metrics:
            metrics[f"{prefix}/delta/{key.split('/', 1)[1]}"] = after.metrics[key] - before.metrics[key]
    return Diff(metrics, arrays, details)


def _floats(metrics: dict) -> dict[str, float]:
    return {k: (math.nan if v is None else float(v)) for k, v in metrics.items()}
