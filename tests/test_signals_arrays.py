"""The shared helpers of signals/: input checks, normalisation, blocks, pair sampling, neighbours."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from sklearn.preprocessing import normalize

from aquin_monitor.signals import arrays, neighbours
from aquin_monitor.signals.arrays import (
    as_matrix,
    check_labels,
    normalising_blocks,
    paired_cosines,
    row_blocks,
    sample_distinct_pairs,
    to_numpy,
    unit_rows,
)


@pytest.mark.parametrize("module", [arrays, neighbours])
def test_doctests_pass(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_unit_rows_match_scikit_learn_across_blocks_and_dtypes(monkeypatch):
    monkeypatch.setattr(arrays, "STREAM_BLOCK_ELEMENTS", 5 * 3)  # 3-row blocks of d=5
    x = np.random.default_rng(0).standard_normal((11, 5)).astype(np.float32)
    np.testing.assert_allclose(unit_rows(x), normalize(x.astype(np.float64)), atol=1e-15)
    np.testing.assert_allclose(
        unit_rows(torch.from_numpy(x).to(torch.bfloat16)),
        normalize(torch.from_numpy(x).to(torch.bfloat16).float().double().numpy()),
        atol=1e-15,
    )
    huge = np.array([[1e300, 1e300], [3.0, 4.0]])  # squares overflow float64: rescaled first
    np.testing.assert_allclose(unit_rows(huge), [[2**-0.5, 2**-0.5], [0.6, 0.8]], atol=1e-15)
    assert sum(block.shape[0] for block, _ in normalising_blocks(x)) == 11


def test_as_matrix_keeps_float32_only_when_asked():
    x = np.ones((3, 2), dtype=np.float32)
    assert as_matrix(x, dtype=None) is x  # no copy of a big float32 corpus
    assert as_matrix(x).dtype == np.float64
    assert as_matrix(np.ones((3, 2), dtype=np.int64), dtype=None).dtype == np.float32
    assert as_matrix(torch.ones(3, 2, dtype=torch.float16), dtype=None).dtype == np.float32


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.ones(4), r"x must be a 2-D matrix"),
        (np.ones((0, 3)), r"x is empty: it needs at least 1 row"),
        (np.ones((3, 0)), r"x is empty: it has no columns"),
        (np.array([[1.0, 2.0], [3.0, np.inf], [np.nan, 0.0]]), r"NaN or Inf in row\(s\) 1, 2"),
        (np.array([["1", "2"]]), r"real numeric array, got dtype <U1"),
        (np.array([[1 + 1j, 0]]), r"real numeric array"),
        (torch.ones(2, 2, dtype=torch.complex64), r"must be real"),
        (np.array([["<script>", "$$"]], dtype=object), r"real numeric array, got dtype object"),
    ],
)
def test_as_matrix_names_what_is_wrong(bad, message):
    with pytest.raises(ValueError, match=message):
        as_matrix(bad)


def test_to_numpy_moves_tensors_without_grad():
    tensor = torch.ones(2, 3, requires_grad=True)
    assert to_numpy(tensor, "t").shape == (2, 3)


def test_row_blocks_cover_every_row_once_within_budget(monkeypatch):
    monkeypatch.setattr(arrays, "BLOCK_ELEMENTS", 30)
    matrix = np.arange(20.0).reshape(10, 2)
    blocks = list(row_blocks(matrix))  # 30 // 10 columns = 3 rows per block
    assert [(start, stop) for start, stop, _ in blocks] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    np.testing.assert_array_equal(np.concatenate([rows for _, _, rows in blocks]), matrix)
    assert [stop - start for start, stop, _ in row_blocks(matrix, columns=1000)] == [1] * 10


def test_pair_sampler_is_exhaustive_or_uniform_over_distinct_pairs():
    i, j = sample_distinct_pairs(5, 10, seed=0)
    reference = [(a, b) for a in range(5) for b in range(a + 1, 5)]
    assert list(zip(i.tolist(), j.tolist())) == reference
    i, j = sample_distinct_pairs(6, 14, seed=3)  # 15 distinct pairs > 14: sampled
    assert np.all(i != j) and i.size == 14
    # uniform over the n(n-1) ordered distinct pairs: 300 draws of 1,000 pairs of 50 rows (1,225 pairs)
    counts = np.zeros((50, 50))
    for seed in range(300):
        i, j = sample_distinct_pairs(50, 1000, seed=seed)
        np.add.at(counts, (i, j), 1)
    assert np.all(np.diag(counts) == 0)
    expected = 300 * 1000 / (50 * 49)  # ~122.4 per ordered pair, binomial sd ~11
    off = counts[~np.eye(50, dtype=bool)]
    assert np.abs(off - expected).max() < 6 * np.sqrt(expected)
    assert abs(off.std() - np.sqrt(expected)) < 1.0  # spread of a uniform multinomial, not more
    with pytest.raises(ValueError, match="max_pairs"):
        sample_distinct_pairs(5, 0, seed=0)


def test_paired_cosines_match_the_cosine_matrix_in_chunks():
    x = np.random.default_rng(2).standard_normal((20, 4))
    unit = normalize(x)
    i, j = sample_distinct_pairs(20, 50, seed=7)
    full = unit @ unit.T
    np.testing.assert_allclose(paired_cosines(unit, i, j, chunk=7), full[i, j], atol=1e-15)


def test_check_labels_accepts_tensors_and_rejects_mixed_types():
    assert check_labels(torch.tensor([1, 0, 1]), 3).tolist() == [1, 0, 1]
    assert check_labels(["$$", "<script>", "$$"], 3).tolist() == ["$$", "<script>", "$$"]
    with pytest.raises(ValueError, match="mutually comparable"):
        check_labels(np.array([1, "a", None], dtype=object), 3)
