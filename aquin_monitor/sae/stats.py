"""A SAE's feature statistics over a corpus in one streamed pass, in memory independent of the corpus size.

The browser, the co-activation network and the diagnostics all read one :class:`FeatureStats`. It is
built block by block from a :class:`~aquin_monitor.rows.RowSource` (an embedding store of any size, or
:class:`~aquin_monitor.rows.ArrayRows` over an array): each block is encoded with the SAE, only its
sparse top-k codes are kept (:func:`~aquin_monitor.sae.activations.sparse_activations`), and they are
folded into running totals. For feature ``j`` over ``n`` texts with activations ``z[:, j]``:

- ``counts[j]`` = #{t : z[t, j] > 0} (``frequency`` = counts / n), ``total[j]`` = Σ_t z[t, j] (float64),
  ``maximum[j]`` = max_t z[t, j], ``mean`` = total / counts over the texts where it fires (0 if none);
- ``top_rows[j]`` / ``top_values[j]``: the ``examples`` texts with the largest z[t, j], descending,
  ties broken by the earlier text (a bounded top-N table: memory O(features × examples));
- ``coactivation`` = BᵀB with B the binary "feature fires on text" matrix, a ``scipy.sparse`` matrix
  summed block by block (diagonal = ``counts``): memory O(feature pairs that ever meet), never O(n).

Memory: O(features × examples + nnz(BᵀB) + block_rows × k); time: one SAE encoding of every row.

Example:

    >>> import numpy as np
    >>> from aquin_monitor.rows import ArrayRows
    >>> from aquin_monitor.sae.model import SparseAutoencoder
    >>> sae = SparseAutoencoder(8, 32, 4, seed=0)
    >>> stats = stream_feature_stats(sae, ArrayRows(np.random.default_rng(0).normal(size=(10, 8))), block_rows=3)
    >>> stats.n_texts, int(stats.counts.sum()) == 10 * 4, bool((stats.coactivation.diagonal() == stats.counts).all())
    (10, True, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse

from ..rows import RowSource, iter_blocks
from .activations import sparse_activations

__all__ = [
    "ActivationBlocks",
    "FeatureStats",
    "FeatureStatsAccumulator",
    "activation_blocks",
    "feature_stats_from_activations",
    "first_shared_rows",
    "matrix_blocks",
    "stream_feature_stats",
]

ActivationBlocks = Iterable[tuple[int, scipy.sparse.csr_matrix]]
"""``(first_row, activations)`` blocks: rows ``first_row ..`` of the ``[n, latents]`` activation matrix."""


@dataclass
class FeatureStats:
    """Per-feature statistics of a SAE over ``n_texts`` texts (see the module docstring)."""

    n_texts: int
    num_latents: int
    counts: np.ndarray
    """Texts each feature fires on, int64 ``[latents]``."""
    total: np.ndarray
    """Σ of each feature's activations, float64 ``[latents]``."""
    maximum: np.ndarray
    """Largest activation of each feature (0 if it never fires), float64 ``[latents]``."""
    top_rows: np.ndarray
    """``[latents, examples]`` rows of the largest activations, descending; −1 pads."""
    top_values: np.ndarray
    """``[latents, examples]`` their activations (float32); 0 pads."""
    coactivation: scipy.sparse.csr_matrix
    """``[latents, latents]`` int64: texts on which both features fire."""

    @property
    def frequency(self) -> np.ndarray:
        """Share of texts each feature fires on."""
        return self.counts / max(self.n_texts, 1)

    @property
    def mean(self) -> np.ndarray:
        """Mean activation over the texts where the feature fires (0 where it never does)."""
        return np.where(self.counts > 0, self.total / np.maximum(self.counts, 1), 0.0)

    def top(self, feature: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, values)`` of ``feature``'s kept top texts, largest activation first."""
        kept = self.top_rows[feature] >= 0
        return self.top_rows[feature][kept], self.top_values[feature][kept]


class FeatureStatsAccumulator:
    """Folds activation blocks, in row order, into a :class:`FeatureStats` (``add`` per block, then ``result``).

    >>> acc = FeatureStatsAccumulator(3, examples=2)
    >>> acc.add(0, scipy.sparse.csr_matrix(np.array([[1.0, 2, 0], [3, 0, 0]], dtype=np.float32)))
    >>> acc.add(2, scipy.sparse.csr_matrix(np.array([[3.0, 0, 1]], dtype=np.float32)))
    >>> s = acc.result()
    >>> s.counts.tolist(), s.total.tolist(), s.top_rows[0].tolist(), s.coactivation.toarray().tolist()
    ([3, 1, 1], [7.0, 2.0, 1.0], [1, 2], [[3, 1, 1], [1, 1, 0], [1, 0, 1]])
    """

    def __init__(self, num_latents: int, *, examples: int = 20) -> None:
        if examples < 1:
            raise ValueError(f"examples must be at least 1, got {examples}")
        self.num_latents, self.examples, self.n_texts = int(num_latents), int(examples), 0
        self.counts = np.zeros(num_latents, dtype=np.int64)
        self.total = np.zeros(num_latents, dtype=np.float64)
        self.maximum = np.zeros(num_latents, dtype=np.float64)
        self.top_rows = np.full((num_latents, examples), -1, dtype=np.int64)
        self.top_values = np.zeros((num_latents, examples), dtype=np.float32)
        self.coactivation = scipy.sparse.csr_matrix((num_latents, num_latents), dtype=np.int64)

    def add(self, first_row: int, block: scipy.sparse.spmatrix) -> None:
        """Fold in rows ``first_row ..`` (activations ``[rows, latents]``; stored entries ≤ 0 do not count)."""
        if first_row != self.n_texts:
            raise ValueError(f"blocks must come in row order: expected row {self.n_texts}, got {first_row}")
        coo = scipy.sparse.coo_matrix(block)
        if coo.shape[1] != self.num_latents:
            raise ValueError(f"activation block has {coo.shape[1]} features, expected {self.num_latents}")
        fired = coo.data > 0
        rows, cols, values = (
            coo.row[fired].astype(np.int64) + first_row,
            coo.col[fired],
            coo.data[fired].astype(np.float32),
        )
        self.counts += np.bincount(cols, minlength=self.num_latents)
        self.total += np.bincount(cols, weights=values.astype(np.float64), minlength=self.num_latents)
        np.maximum.at(self.maximum, cols, values.astype(np.float64))
        self._merge_top(rows, cols, values)
        binary = scipy.sparse.csr_matrix(
            (np.ones(len(cols), dtype=np.int64), (rows - first_row, cols)), shape=(coo.shape[0], self.num_latents)
        )
        self.coactivation = (self.coactivation + (binary.T @ binary).tocsr()).tocsr()
        self.n_texts += coo.shape[0]

    def _merge_top(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        """Keep, per feature, the ``examples`` largest activations (ties: smaller row) of the table and the block."""
        full = self.top_rows[:, -1] >= 0
        floor = np.where(full, self.top_values[:, -1], -np.inf)
        # a new row ties with the table's last entry only to lose (it comes later), so only strictly larger enter
        enters = values > floor[cols]
        if not enters.any():
            return
        kept = self.top_rows >= 0
        feature = np.concatenate([np.nonzero(kept)[0], cols[enters]])
        row = np.concatenate([self.top_rows[kept], rows[enters]])
        value = np.concatenate([self.top_values[kept], values[enters]])
        order = np.lexsort((row, -value, feature))
        feature, row, value = feature[order], row[order], value[order]
        starts = np.searchsorted(feature, feature, side="left")
        rank = np.arange(len(feature)) - starts
        keep = rank < self.examples
        self.top_rows.fill(-1)
        self.top_values.fill(0.0)
        self.top_rows[feature[keep], rank[keep]] = row[keep]
        self.top_values[feature[keep], rank[keep]] = value[keep]

    def result(self) -> FeatureStats:
        """The statistics of every row added so far (copies: adding more later does not change them)."""
        return FeatureStats(
            self.n_texts,
            self.num_latents,
            self.counts.copy(),
            self.total.copy(),
            self.maximum.copy(),
            self.top_rows.copy(),
            self.top_values.copy(),
            self.coactivation.copy(),
        )


def activation_blocks(
    sae: Any, source: RowSource, *, block_rows: int = 8192
) -> Iterator[tuple[int, scipy.sparse.csr_matrix]]:
    """``(first_row, activations)`` of ``sae`` on ``source``, ``block_rows`` rows at a time (one block in memory)."""
    for start, rows in iter_blocks(source, block_rows):
        try:
            yield start, sparse_activations(sae, rows, batch_size=block_rows)
        except ValueError as error:  # name the row in the whole source, not in the block
            raise ValueError(f"{error} (block starting at row {start})") from error


def matrix_blocks(activations: scipy.sparse.spmatrix) -> list[tuple[int, scipy.sparse.csr_matrix]]:
    """An activation matrix already in memory as a single block."""
    return [(0, scipy.sparse.csr_matrix(activations))]


def feature_stats_from_activations(activations: scipy.sparse.spmatrix, *, examples: int = 20) -> FeatureStats:
    """:class:`FeatureStats` of an activation matrix ``[n, latents]`` held in memory (the same accumulator)."""
    accumulator = FeatureStatsAccumulator(activations.shape[1], examples=examples)
    accumulator.add(0, activations)
    return accumulator.result()


def stream_feature_stats(
    sae: Any, source: RowSource, *, examples: int = 20, block_rows: int = 8192, progress: Any = None
) -> FeatureStats:
    """:class:`FeatureStats` of ``sae`` over every row of ``source``, one block of ``block_rows`` rows at a time.

    Args:
        sae: a :class:`~aquin_monitor.sae.model.SparseAutoencoder`.
        source: the corpus embeddings (``len(source)`` rows of ``sae.d_in`` floats).
        examples: top texts kept per feature.
        block_rows: rows read and encoded at a time.
        progress: optional callable given the number of rows done after each block.
    """
    if source.dimension != sae.d_in:
        raise ValueError(f"embeddings have dimension {source.dimension}, the SAE takes {sae.d_in}")
    accumulator = FeatureStatsAccumulator(sae.num_latents, examples=examples)
    for start, block in activation_blocks(sae, source, block_rows=block_rows):
        accumulator.add(start, block)
        if progress is not None:
            progress(accumulator.n_texts)
    return accumulator.result()


def first_shared_rows(blocks: ActivationBlocks, pairs: Sequence[tuple[int, int]], *, limit: int = 3) -> list[list[int]]:
    """For each feature pair ``(a, b)``, the first ``limit`` rows (by index) on which both fire.

    Reads ``blocks`` in order and stops as soon as every pair has ``limit`` rows, so a second pass over a
    store is usually short (a pair counted on ``support`` texts is met early); memory O(pairs × limit).

    >>> z = scipy.sparse.csr_matrix(np.array([[1.0, 1], [0, 1], [1, 1], [1, 1]]))
    >>> first_shared_rows(matrix_blocks(z), [(0, 1), (1, 0)], limit=2)
    [[0, 2], [0, 2]]
    """
    found: list[list[int]] = [[] for _ in pairs]
    pending = [i for i in range(len(pairs))]
    for start, block in blocks:
        if not pending:
            break
        csc = scipy.sparse.csc_matrix(block)
        csc.eliminate_zeros()
        for i in pending:
            a, b = pairs[i]
            rows_a = csc.indices[csc.indptr[a] : csc.indptr[a + 1]]
            rows_b = csc.indices[csc.indptr[b] : csc.indptr[b + 1]]
            shared = np.intersect1d(rows_a, rows_b)[: limit - len(found[i])]
            found[i].extend(int(r) + start for r in shared)
        pending = [i for i in pending if len(found[i]) < limit]
    return found
