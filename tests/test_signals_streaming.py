"""Streamed geometry (running sums over blocks) equals the in-memory signals and scikit-learn's PCA."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from aquin_monitor.signals.geometry import (
    anisotropy,
    intrinsic_dimension,
    rogue_dimensions,
)
from aquin_monitor.signals.streaming import RowMoments


def blocks_of(x: np.ndarray, size: int):
    return (x[i : i + size] for i in range(0, len(x), size))


def embedding_like(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Anisotropic rows (a common offset, decaying spectrum), float32 like a store's."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.arange(1, d + 1) ** 0.7
    return (rng.normal(size=(n, d)) * scales + 3.0 * rng.normal(size=d)).astype(np.float32)


@pytest.mark.parametrize(("n", "d", "block"), [(2000, 48, 333), (60, 48, 7), (2, 3, 1)])
def test_streamed_signals_equal_the_in_memory_ones(n, d, block):
    x = embedding_like(n, d)
    moments = RowMoments.of_blocks(blocks_of(x, block))
    assert moments.n == n
    assert moments.anisotropy() == pytest.approx(anisotropy(x), rel=1e-9)
    want = intrinsic_dimension(x)
    got = moments.intrinsic_dimension()
    assert got.components == want.components
    assert got.effective_rank == pytest.approx(want.effective_rank, rel=1e-9)
    top = want.explained_variance_ratio > 1e-6  # the ratios that carry variance; the rest are round-off in both
    np.testing.assert_allclose(got.explained_variance_ratio[top], want.explained_variance_ratio[top], rtol=1e-9)
    rogue, streamed_rogue = rogue_dimensions(x, top=3), moments.rogue_dimensions(top=3)
    np.testing.assert_allclose(streamed_rogue.contributions, rogue.contributions, rtol=1e-9, atol=1e-15)
    assert streamed_rogue.top_dimensions.tolist() == rogue.top_dimensions.tolist()
    np.testing.assert_allclose(moments.mean(), x.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)


def test_streamed_spectrum_equals_scikit_learn_pca():
    x = embedding_like(5000, 64, seed=1)
    pca = PCA().fit(x.astype(np.float64))
    moments = RowMoments.of_blocks(blocks_of(x, 1024))
    np.testing.assert_allclose(moments.singular_values(), pca.singular_values_, rtol=1e-9)
    for threshold, components in zip((0.9, 0.95, 0.99), moments.intrinsic_dimension().components):
        assert components == PCA(n_components=threshold).fit(x.astype(np.float64)).n_components_


def test_order_of_blocks_does_not_matter_and_a_far_offset_does_not_cancel():
    x = embedding_like(3000, 16, seed=2).astype(np.float64) + 1e4  # mean ≫ spread: a naive Σxxᵀ − n x̄x̄ᵀ loses digits
    forward = RowMoments.of_blocks(blocks_of(x, 500))
    backward = RowMoments.of_blocks(reversed(list(blocks_of(x, 500))))
    expected = np.linalg.svd(x - x.mean(0), compute_uv=False)
    for moments in (forward, backward):
        np.testing.assert_allclose(moments.singular_values(), expected, rtol=1e-6)


def test_bad_blocks_are_named_by_their_first_row():
    moments = RowMoments(3)
    moments.update(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"NaN or Inf in row\(s\) 1 \(of the block starting at row 4\)"):
        moments.update(np.array([[1.0, 2, 3], [np.nan, 0, 0]]))
    with pytest.raises(ValueError, match=r"zero vector.*row\(s\) 0 \(of the block starting at row 4\)"):
        moments.update(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="2 columns, expected 3"):
        moments.update(np.ones((2, 2)))
    with pytest.raises(ValueError, match="at least 2 rows, got 1"):
        RowMoments.of_blocks([np.ones((1, 3))]).anisotropy()
    with pytest.raises(ValueError, match="no blocks"):
        RowMoments.of_blocks([])
    with pytest.raises(ValueError, match="zero variance"):
        RowMoments.of_blocks([np.ones((5, 3))]).intrinsic_dimension()
