"""Array helpers shared by every module of :mod:`aquin_monitor.signals`.

Input checks (:func:`to_numpy`, :func:`as_matrix`, :func:`check_labels`), row-normalisation
(:func:`normalising_blocks`, :func:`unit_rows`), memory-bounded row blocks
(:func:`row_blocks`), the pair sampler and paired cosines that every pair-based signal uses
(:func:`sample_distinct_pairs`, :func:`paired_cosines`) and the metric-name join
(:func:`metric_name`). Nothing here computes a signal; it is the torchmetrics
``utilities/checks.py`` of this package.

Bad input raises ``ValueError`` naming the argument and, where it applies, the offending rows.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = [
    "BLOCK_ELEMENTS",
    "STREAM_BLOCK_ELEMENTS",
    "as_matrix",
    "check_labels",
    "metric_name",
    "normalising_blocks",
    "paired_cosines",
    "row_blocks",
    "sample_distinct_pairs",
    "to_numpy",
    "unit_rows",
]

# Numbers per float64 block when streaming over the rows of a matrix: small enough to stay
# in cache, big enough for BLAS.
STREAM_BLOCK_ELEMENTS = 1 << 17
# Numbers per block of a pairwise (rows x n) product: bounds it to ~32 MB whatever n is.
BLOCK_ELEMENTS = 1 << 22
# Rows per chunk when scanning a matrix for NaN/Inf.
_SCAN_ROWS = 65536


def to_numpy(x: object, name: str) -> np.ndarray:
    """Array view of ``x`` (numpy array, torch tensor on any device, or nested lists) without
    forcing a float64 copy of a big matrix.

    float16/bfloat16 tensors become float32 (numpy has no bfloat16). Complex values, strings
    and objects raise ``ValueError`` naming ``name``.

    Args:
        x: the input.
        name: the argument name used in error messages.

    Returns:
        A numpy array of a real numeric (or bool) dtype.

    >>> to_numpy([[1, 2], [3, 4]], "x").dtype.kind
    'i'
    >>> to_numpy([["a", "b"]], "x")
    Traceback (most recent call last):
    ...
    ValueError: x must be a real numeric array, got dtype <U1
    """
    torch = sys.modules.get("torch")  # a torch tensor can only exist if torch is imported
    if torch is not None and isinstance(x, torch.Tensor):
        tensor = x.detach()
        if tensor.is_complex():
            raise ValueError(f"{name} must be real, got a complex tensor")
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()  # numpy has no bfloat16
        return tensor.cpu().numpy()
    array = np.asarray(x)
    if not (array.dtype.kind in "iuf" or array.dtype == bool):
        raise ValueError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    return array


def _first_rows(mask: np.ndarray, offset: int = 0, limit: int = 5) -> str:
    rows = np.flatnonzero(mask)[:limit] + offset
    more = " ..." if mask.sum() > limit else ""
    return ", ".join(str(int(r)) for r in rows) + more


def _check_shape(array: np.ndarray, name: str, min_rows: int) -> None:
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix [n, d], got shape {tuple(array.shape)}")
    n, d = array.shape
    if d == 0:
        raise ValueError(f"{name} is empty: it has no columns (shape {tuple(array.shape)})")
    if n == 0:
        raise ValueError(f"{name} is empty: it needs at least {min_rows} row(s), got 0")
    if n < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row(s), got {n}")


def _check_finite(array: np.ndarray, name: str) -> None:
    # a float64 sum is finite iff every entry is (barring float64 overflow, which the row
    # scan then finds clean)
    if np.isfinite(array.sum(dtype=np.float64)):
        return
    for start in range(0, array.shape[0], _SCAN_ROWS):
        finite = np.isfinite(array[start : start + _SCAN_ROWS]).all(axis=1)
        if not finite.all():
            raise ValueError(f"{name} contains NaN or Inf in row(s) {_first_rows(np.asarray(~finite), start)}")


def as_matrix(x: object, name: str = "x", min_rows: int = 1, *, dtype: type | None = np.float64) -> np.ndarray:
    """``x`` as a finite real ``[n, d]`` matrix, or ``ValueError`` saying what is wrong.

    Args:
        x: numpy array, torch tensor or nested lists.
        name: the argument name used in error messages.
        min_rows: fewest rows accepted.
        dtype: the dtype of the result (``np.float64`` by default). ``None`` keeps float32
            and float64 inputs as they are (no copy of a big float32 corpus) and converts
            other real types to float32.

    Returns:
        The matrix, with every entry finite.

    >>> as_matrix([[1, 2], [3, 4]]).dtype
    dtype('float64')
    >>> as_matrix([[1.0, 2.0], [float("nan"), 0.0]], "emb")
    Traceback (most recent call last):
    ...
    ValueError: emb contains NaN or Inf in row(s) 1
    """
    array = to_numpy(x, name)
    _check_shape(array, name, min_rows)
    if dtype is not None:
        array = np.asarray(array, dtype=dtype)
    elif array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)
    _check_finite(array, name)
    return array


def normalising_blocks(x: object, name: str = "x", min_rows: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield consecutive float64 row blocks of ``x`` with their inverse norms 1/‖xᵢ‖.

    Streams (``STREAM_BLOCK_ELEMENTS`` numbers per block) so that a float32 matrix of millions
    of rows is never copied whole to float64. A row whose squared norm overflows is divided by
    its largest entry first.

    Args:
        x: ``[n, d]`` numpy array or torch tensor.
        name: the argument name used in error messages.
        min_rows: fewest rows accepted.

    Returns:
        An iterator of ``(block [m, d] float64, inverse_norms [m])``.

    Raises ``ValueError`` for NaN/Inf or zero rows, naming them.

    >>> [(b.tolist(), s.tolist()) for b, s in normalising_blocks([[3.0, 4.0]])]
    [([[3.0, 4.0]], [0.2])]
    """
    array = to_numpy(x, name)
    _check_shape(array, name, min_rows)
    n, d = array.shape
    rows_per_block = max(1, STREAM_BLOCK_ELEMENTS // d)
    for start in range(0, n, rows_per_block):
        block = np.asarray(array[start : start + rows_per_block], dtype=np.float64)
        squared_norms = np.einsum("ij,ij->i", block, block)
        suspicious = ~np.isfinite(squared_norms) | (squared_norms == 0.0)
        if suspicious.any():
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                raise ValueError(f"{name} contains NaN or Inf in row(s) {_first_rows(np.asarray(~finite), start)}")
            zero = ~block.any(axis=1)
            if zero.any():
                raise ValueError(
                    f"{name} has zero vector(s), which have no direction, in row(s) "
                    f"{_first_rows(np.asarray(zero), start)}"
                )
            # finite entries whose squares overflow: rescale by the largest entry first
            block = block / np.abs(block).max(axis=1, keepdims=True)
            squared_norms = np.einsum("ij,ij->i", block, block)
        yield block, 1.0 / np.sqrt(squared_norms)


def unit_rows(x: object, name: str = "x", min_rows: int = 1) -> np.ndarray:
    """All rows of ``x`` L2-normalised, x̂ᵢ = xᵢ / ‖xᵢ‖, as one float64 matrix.

    Args:
        x: ``[n, d]`` numpy array or torch tensor.
        name: the argument name used in error messages.
        min_rows: fewest rows accepted.

    Returns:
        ``[n, d]`` float64 with unit rows. Zero, NaN or Inf rows raise ``ValueError``.

    >>> unit_rows([[3.0, 4.0], [0.0, 2.0]]).tolist()
    [[0.6000000000000001, 0.8], [0.0, 1.0]]
    """
    blocks = [block * inverse[:, None] for block, inverse in normalising_blocks(x, name, min_rows)]
    return np.concatenate(blocks, axis=0)


def metric_name(prefix: str, name: str) -> str:
    """``prefix/name``, or ``name`` alone when ``prefix`` is empty.

    >>> metric_name("drift/base", "cka"), metric_name("", "cka")
    ('drift/base/cka', 'cka')
    """
    return f"{prefix}/{name}" if prefix else name


def row_blocks(matrix: np.ndarray, columns: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, rows)`` blocks of ``matrix`` sized so that a block times ``columns``
    (default: the number of rows, for a pairwise product) holds about ``BLOCK_ELEMENTS``
    numbers (~32 MB of float64).

    Args:
        matrix: ``[n, ...]`` array.
        columns: width of the product each block takes part in.

    Returns:
        An iterator of consecutive blocks covering every row once.

    >>> [(start, stop) for start, stop, _ in row_blocks(np.zeros((5, 2)), columns=BLOCK_ELEMENTS // 2)]
    [(0, 2), (2, 4), (4, 5)]
    """
    n = matrix.shape[0]
    rows = max(1, BLOCK_ELEMENTS // max(1, columns if columns is not None else n))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        yield start, stop, matrix[start:stop]


def sample_distinct_pairs(n: int, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) with i ≠ j: all n(n−1)/2 of them (i < j) when that is at most
    ``max_pairs``, else ``max_pairs`` pairs drawn uniformly, with replacement, from the ordered
    distinct pairs with ``numpy.random.default_rng(seed)``.

    Args:
        n: number of rows.
        max_pairs: most pairs returned (≥ 1).
        seed: seed of the sampler.

    Returns:
        ``(i, j)``, two int arrays of the same length.

    >>> i, j = sample_distinct_pairs(3, 10, seed=0)
    >>> list(zip(i.tolist(), j.tolist()))
    [(0, 1), (0, 2), (1, 2)]
    >>> i, j = sample_distinct_pairs(1000, 50, seed=0)
    >>> len(i), bool((i != j).all())
    (50, True)
    """
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return i, j
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = rng.integers(0, n - 1, size=max_pairs)
    j = j + (j >= i)  # uniform over j ≠ i
    return i, j


def paired_cosines(unit: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """cos(i, j) = x̂ᵢ · x̂ⱼ for each pair, clipped to [−1, 1], for rows already of unit norm.

    Rows are gathered ``chunk`` pairs at a time: gathering every pair's rows at once would
    allocate two pairs × d matrices and pay page faults that dwarf the arithmetic.

    Args:
        unit: ``[n, d]`` matrix of unit rows (see :func:`unit_rows`).
        i, j: index arrays of the same length.
        chunk: pairs per gathered block.

    Returns:
        ``[len(i)]`` cosines, dtype of ``unit``.

    >>> paired_cosines(np.eye(2), np.array([0, 0]), np.array([0, 1])).tolist()
    [1.0, 0.0]
    """
    out = np.empty(len(i), dtype=unit.dtype)
    for start in range(0, len(i), chunk):
        a, b = i[start : start + chunk], j[start : start + chunk]
        out[start : start + chunk] = np.einsum("ij,ij->i", unit[a], unit[b])
    return np.clip(out, -1.0, 1.0)


def check_labels(labels: Sequence[object], n: int) -> np.ndarray:
    """``labels`` as a 1-D numpy array with one mutually comparable label per row.

    Args:
        labels: a sequence, numpy array or torch tensor of labels.
        n: the number of rows they label.

    Returns:
        The labels as a numpy array of length ``n``.

    >>> check_labels(["a", "b", "a"], 3).tolist()
    ['a', 'b', 'a']
    >>> check_labels([0, 1], 3)
    Traceback (most recent call last):
    ...
    ValueError: labels must be 1-D with one label per row (3), got shape (2,)
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    label_array = np.asarray(labels)
    if label_array.ndim != 1 or label_array.shape[0] != n:
        raise ValueError(f"labels must be 1-D with one label per row ({n}), got shape {label_array.shape}")
    try:
        np.unique(label_array)
    except TypeError as exc:
        raise ValueError(f"labels must be mutually comparable (e.g. all str or all int): {exc}") from exc
    return label_array
