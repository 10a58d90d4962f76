"""Row sources: the one interface every corpus-level job reads embeddings through.

A corpus of 10M documents does not fit in one process's memory, so SAE training, feature
statistics and search never take an ``[n, d]`` array: they take a :class:`RowSource` and read it
a block of rows at a time. The on-disk embedding store (:mod:`aquin_monitor.store`) is one; an
array already in memory (a probe of 1,000 texts, a test) is wrapped in :class:`ArrayRows`.

Example::

    >>> import numpy as np
    >>> rows = ArrayRows(np.arange(12, dtype=np.float32).reshape(6, 2))
    >>> len(rows), rows.dimension
    (6, 2)
    >>> [(start, block.shape) for start, block in iter_blocks(rows, 4)]
    [(0, (4, 2)), (4, (2, 2))]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["ArrayRows", "RowSource", "gather_rows", "iter_blocks"]


@runtime_checkable
class RowSource(Protocol):
    """Rows of embeddings addressed by position: ``len(source)`` rows of ``source.dimension`` floats.

    ``read(start, stop)`` returns rows ``start .. stop-1`` as a new float32 array (never a view a
    later read could change); reading is the only way in, so an implementation may keep its rows on
    disk (memory-mapped shards) and hold none of them.
    """

    @property
    def dimension(self) -> int: ...

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> np.ndarray: ...


class ArrayRows:
    """A :class:`RowSource` over an array in memory (float32 copies of its rows on each read)."""

    def __init__(self, array: np.ndarray) -> None:
        array = np.asarray(array)
        if array.ndim != 2:
            raise ValueError(f"rows: expected a 2-D array [n, d], got shape {array.shape}")
        self._array = array

    @property
    def dimension(self) -> int:
        return int(self._array.shape[1])

    def __len__(self) -> int:
        return int(self._array.shape[0])

    def read(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows: [{start}, {stop}) is outside [0, {len(self)})")
        return np.array(self._array[start:stop], dtype=np.float32)


def iter_blocks(source: RowSource, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, rows)`` blocks of at most ``block_rows`` rows, in order, covering ``source``."""
    if block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    for start in range(0, len(source), block_rows):
        yield start, source.read(start, min(start + block_rows, len(source)))


def gather_rows(embeddings: np.ndarray | RowSource, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of ``embeddings`` as float64 ``[len(rows), d]`` (a row source is read in runs of consecutive rows).

    >>> gather_rows(np.arange(6.0).reshape(3, 2), np.array([2, 0])).tolist()
    [[4.0, 5.0], [0.0, 1.0]]
    """
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(embeddings, np.ndarray) or not isinstance(embeddings, RowSource):
        return np.asarray(embeddings, dtype=np.float64)[rows]
    out = np.zeros((len(rows), embeddings.dimension), dtype=np.float64)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    breaks = np.flatnonzero(np.diff(ordered) > 1) + 1
    for run in np.split(np.arange(len(ordered)), breaks):
        if len(run):
            first, last = int(ordered[run[0]]), int(ordered[run[-1]])
            out[order[run]] = embeddings.read(first, last + 1)[ordered[run] - first]
    return out
