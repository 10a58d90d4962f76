"""Exact nearest neighbours of unit vectors, by matrix products in memory-bounded row blocks.

UMAP coordinates of a snapshot take their neighbour graph from here: umap-learn would compute
every pair through scikit-learn with a Python call per pair on small inputs, and run an
approximate nearest-neighbour descent on large ones. Up to :data:`EXACT_KNN_MAX_POINTS` points
the exact graph is cheap, and below umap's own exact-path size it is the one umap would build.
"""

from __future__ import annotations

import numpy as np

from .arrays import row_blocks

__all__ = ["EXACT_KNN_MAX_POINTS", "exact_knn"]

# Above this many points a snapshot leaves the neighbour search to umap (an n x n scan
# grows quadratically).
EXACT_KNN_MAX_POINTS = 20000


def exact_knn(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of each row of ``unit`` (itself included, as umap counts it).

    For unit rows the euclidean distance is a function of the cosine::

        dist(i, j) = ‖x̂ᵢ − x̂ⱼ‖ = sqrt(2 − 2 x̂ᵢ·x̂ⱼ)

    (clipped at 0; a row's distance to itself is set to exactly 0 whatever rounding says).
    Neighbours are sorted nearest first, ties by a stable sort of the candidates. Computed in
    row blocks of about 32 MB of distances (:func:`aquin_monitor.signals.arrays.row_blocks`).

    Args:
        unit: ``[n, d]`` matrix of unit-norm rows.
        k: neighbours per row, 1 ≤ k ≤ n.

    Returns:
        ``(indices, distances)``, both ``[n, k]``, nearest first.

    >>> idx, dist = exact_knn(np.eye(3), 2)
    >>> idx[:, 0].tolist(), np.round(dist[:, 1], 4).tolist()
    ([0, 1, 2], [1.4142, 1.4142, 1.4142])
    """
    n = unit.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=unit.dtype)
    for start, stop, rows in row_blocks(unit):
        block = np.sqrt(np.clip(2.0 - 2.0 * (rows @ unit.T), 0.0, None))
        own = np.arange(stop - start)
        block[own, start + own] = 0.0  # a row is its own nearest neighbour, whatever rounding says
        part = np.argpartition(block, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (stop - start, 1))
        d = np.take_along_axis(block, part, axis=1)
        order = np.argsort(d, axis=1, kind="stable")
        indices[start:stop] = np.take_along_axis(part, order, axis=1)
        distances[start:stop] = np.take_along_axis(d, order, axis=1)
    return indices, distances
