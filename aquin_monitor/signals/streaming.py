"""Geometry signals with closed forms over blocks of rows: memory O(d²), whatever the number of rows.

A corpus read block by block (an embedding store of millions of rows) never fits in one array, but
the signals below depend on the rows only through a few running sums, so one pass suffices:

- Anisotropy (mean cosine over distinct pairs) from S = Σᵢ x̂ᵢ: (‖S‖² − n) / (n(n − 1)), as
  :func:`~aquin_monitor.signals.geometry.anisotropy`; rogue-dimension terms from S and Q = Σᵢ x̂ᵢ²
  (:func:`~aquin_monitor.signals.geometry.rogue_dimensions`).
- Intrinsic dimension (PCA spectrum) from the streamed covariance: with a shift c (the first block's
  mean, so that the subtraction below does not cancel), u = Σ (xᵢ − c) and M = Σ (xᵢ − c)(xᵢ − c)ᵀ in
  float64, the centred scatter is M − u uᵀ / n; its eigenvalues are the squared singular values σₖ²
  of the column-centred matrix, which is all
  :func:`~aquin_monitor.signals.geometry.intrinsic_dimension` reads (id_pca90/95/99, effective rank).

Example:

    >>> import numpy as np
    >>> from aquin_monitor.signals.geometry import anisotropy, intrinsic_dimension
    >>> x = np.random.default_rng(0).normal(size=(300, 5)) + 1.0
    >>> moments = RowMoments.of_blocks(x[i : i + 64] for i in range(0, 300, 64))
    >>> abs(moments.anisotropy() - anisotropy(x)) < 1e-12
    True
    >>> moments.intrinsic_dimension().components == intrinsic_dimension(x).components
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .arrays import normalising_blocks
from .geometry import (
    IntrinsicDimension,
    RogueDimensions,
    intrinsic_dimension_from_singular_values,
    rogue_from_sums,
)

__all__ = ["RowMoments"]


class RowMoments:
    """Running sums of rows, unit rows and outer products, folded in block by block (``update``)."""

    def __init__(self, dimension: int) -> None:
        self.dimension, self.n = int(dimension), 0
        self.shift: np.ndarray | None = None
        self.shifted_sum = np.zeros(dimension, dtype=np.float64)
        self.shifted_scatter = np.zeros((dimension, dimension), dtype=np.float64)
        self.unit_sum = np.zeros(dimension, dtype=np.float64)
        self.unit_square_sum = np.zeros(dimension, dtype=np.float64)

    @classmethod
    def of_blocks(cls, blocks: Iterable[object], dimension: int | None = None) -> RowMoments:
        """The moments of all rows of ``blocks`` (arrays ``[m, d]``, in any order)."""
        moments: RowMoments | None = None if dimension is None else cls(dimension)
        for block in blocks:
            array = np.asarray(block)
            if moments is None:
                moments = cls(array.shape[1])
            moments.update(array)
        if moments is None:
            raise ValueError("no blocks: the dimension is unknown")
        return moments

    def update(self, block: object) -> None:
        """Fold in a block of rows ``[m, d]`` (float64 accumulation); NaN/Inf or zero rows raise ``ValueError``."""
        first_row = self.n
        try:
            parts = list(normalising_blocks(block, "x"))
        except ValueError as error:
            raise ValueError(f"{error} (of the block starting at row {first_row})") from error
        if parts and parts[0][0].shape[1] != self.dimension:
            raise ValueError(f"block has {parts[0][0].shape[1]} columns, expected {self.dimension}")
        start = 0
        for rows, inverse_norms in parts:  # rows may be rescaled (huge entries): only their directions are used
            self.unit_sum += inverse_norms @ rows
            self.unit_square_sum += np.square(inverse_norms) @ np.square(rows)
            raw = np.asarray(np.asarray(block)[start : start + rows.shape[0]], dtype=np.float64)
            start += rows.shape[0]
            if self.shift is None:
                self.shift = raw.mean(axis=0)
            shifted = raw - self.shift
            self.shifted_sum += shifted.sum(axis=0)
            self.shifted_scatter += shifted.T @ shifted
            self.n += rows.shape[0]

    def _need_pairs(self) -> None:
        if self.n < 2:
            raise ValueError(f"x needs at least 2 rows, got {self.n}")

    def anisotropy(self) -> float:
        """Mean cosine over distinct pairs, (‖Σ x̂ᵢ‖² − n) / (n(n − 1))."""
        self._need_pairs()
        return float((self.unit_sum @ self.unit_sum - self.n) / (self.n * (self.n - 1)))

    def rogue_dimensions(self, top: int = 5) -> RogueDimensions:
        """Per-dimension anisotropy terms c_k = (S_k² − Q_k) / (n(n − 1)) and the dominant ones."""
        self._need_pairs()
        return rogue_from_sums(self.unit_sum, self.unit_square_sum, self.n, top)

    def mean(self) -> np.ndarray:
        """Mean row (float64)."""
        self._need_pairs()
        assert self.shift is not None
        return self.shift + self.shifted_sum / self.n

    def scatter(self) -> np.ndarray:
        """Centred scatter Σ (xᵢ − x̄)(xᵢ − x̄)ᵀ = M − u uᵀ / n (symmetric, float64)."""
        self._need_pairs()
        centred = self.shifted_scatter - np.outer(self.shifted_sum, self.shifted_sum) / self.n
        return (centred + centred.T) / 2.0

    def singular_values(self) -> np.ndarray:
        """Singular values of the column-centred row matrix, descending: √ of the scatter's eigenvalues.

        ``min(n, d)`` of them, as an SVD of the rows gives. Eigenvalues carry round-off of about
        d·ε·σ₁², so σ below √(d·ε)·σ₁ (about 10⁻⁷·σ₁ at d = 384) is not resolved and is set to 0, as are
        those past the centred matrix's rank bound n − 1.
        """
        eigenvalues = np.linalg.eigvalsh(self.scatter())[::-1][: min(self.n, self.dimension)]
        resolved = eigenvalues > max(eigenvalues[0], 0.0) * self.dimension * np.finfo(np.float64).eps
        resolved[self.n - 1 :] = False
        return np.sqrt(np.where(resolved, eigenvalues, 0.0))

    def intrinsic_dimension(self, thresholds: Sequence[float] = (0.9, 0.95, 0.99)) -> IntrinsicDimension:
        """:func:`~aquin_monitor.signals.geometry.intrinsic_dimension` from the streamed covariance."""
        return intrinsic_dimension_from_singular_values(self.singular_values(), thresholds)
