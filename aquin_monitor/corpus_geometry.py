"""Geometry of a whole corpus's embeddings (an embedding store of any size) in memory independent of its size.

``aquin-monitor inspect --store DIR`` reports the geometry signals of every stored row:

- exact over all rows, in one streamed pass (:class:`~aquin_monitor.signals.streaming.RowMoments`):
  ``geometry/anisotropy``, the rogue-dimension shares, ``geometry/id_pca90/95/99`` and
  ``geometry/effective_rank`` (the PCA spectrum of the streamed covariance);
- on a seeded sample of ``sample_rows`` rows drawn without replacement (these signals have no
  streaming form): the pair-cosine histogram, uniformity, and the OOD distances, measured against the
  exact centroid of all rows' unit vectors, with the robust threshold of the sample's own distances.

With at most ``sample_rows`` rows the sample is every row and the numbers equal
:func:`~aquin_monitor.signals.geometry.geometry_summary`'s on the whole matrix.

Example:

    >>> import numpy as np
    >>> from aquin_monitor.rows import ArrayRows
    >>> x = np.random.default_rng(0).normal(size=(500, 8)) + 0.5
    >>> found = corpus_geometry(ArrayRows(x), sample_rows=100, block_rows=128)
    >>> found.sample_size, round(found.summary.anisotropy, 3) > 0
    (100, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .rows import RowSource, gather_rows, iter_blocks
from .signals.geometry import (
    GeometrySummary,
    ood_scores,
    pair_cosine_histogram,
    robust_ood_threshold,
    uniformity,
)
from .signals.streaming import RowMoments

__all__ = ["CorpusGeometry", "corpus_geometry"]


@dataclass
class CorpusGeometry:
    """The geometry of all rows (``summary``), which parts are exact and which come from the sample."""

    summary: GeometrySummary
    n_rows: int
    sample_size: int
    sample_seed: int
    ood_threshold: float

    def as_metrics(self, prefix: str = "geometry") -> dict[str, float]:
        metrics = self.summary.as_metrics(prefix)
        metrics[f"{prefix}/ood_threshold"] = self.ood_threshold
        return metrics

    def details(self) -> dict[str, Any]:
        """What the JSON says about how each number was measured."""
        return {
            "rows": self.n_rows,
            "exact_over_all_rows": [
                "anisotropy",
                "rogue_top1_share",
                "rogue_top5_share",
                "id_pca90",
                "id_pca95",
                "id_pca99",
                "effective_rank",
            ],
            "on_a_sample": [
                "pair_cosine histogram",
                "uniformity",
                "ood_fraction",
                "ood_distance_mean",
                "ood_threshold",
            ],
            "sample_rows": self.sample_size,
            "sample_seed": self.sample_seed,
            "sample_note": (
                f"{self.sample_size:,} of {self.n_rows:,} rows drawn without replacement "
                f"(numpy default_rng({self.sample_seed})); OOD distances are to the exact centroid of all rows"
            ),
        }


def corpus_geometry(
    source: RowSource,
    *,
    sample_rows: int = 10_000,
    seed: int = 0,
    block_rows: int = 65_536,
    thresholds: Sequence[float] = (0.9, 0.95, 0.99),
    bins: int = 50,
    max_pairs: int = 20_000,
    rogue_top: int = 5,
    ood_threshold: float | None = None,
) -> CorpusGeometry:
    """Geometry of every row of ``source``: exact signals streamed, the others on a seeded sample.

    Args:
        source: the rows (``len(source)`` ≥ 2).
        sample_rows: rows of the sample (all rows when there are fewer).
        seed: seeds the sample and the histogram's pairs.
        block_rows: rows read at a time.
        thresholds, bins, max_pairs, rogue_top: as :func:`~aquin_monitor.signals.geometry.geometry_summary`.
        ood_threshold: a fixed OOD cut (default: median + 3·1.4826·MAD of the sample's distances).

    Memory: O(d² + block_rows·d + sample_rows·d); time: one read of every row.
    """
    n = len(source)
    if n < 2:
        raise ValueError(f"need at least 2 rows, got {n}")
    if sample_rows < 2:
        raise ValueError(f"sample_rows must be at least 2, got {sample_rows}")
    moments = RowMoments(source.dimension)
    for _, block in iter_blocks(source, block_rows):
        moments.update(block)
    size = min(sample_rows, n)
    rows = np.arange(n) if size == n else np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    sample = gather_rows(source, rows)
    centroid = moments.unit_sum[None, :] / n
    distances = ood_scores(sample, reference=centroid, threshold=2.0).scores
    threshold = robust_ood_threshold(distances) if ood_threshold is None else float(ood_threshold)
    summary = GeometrySummary(
        anisotropy=moments.anisotropy(),
        histogram=pair_cosine_histogram(sample, bins=bins, max_pairs=max_pairs, seed=seed),
        rogue=moments.rogue_dimensions(top=min(rogue_top, source.dimension)),
        intrinsic=moments.intrinsic_dimension(thresholds),
        uniformity=uniformity(sample),
        uniformity_rows=size,
        ood=ood_scores(sample, reference=centroid, threshold=threshold),
    )
    return CorpusGeometry(summary, n, size, seed, threshold)
