"""inspect's geometry of a whole corpus: exact streamed signals, the rest on a seeded sample."""

from __future__ import annotations

import numpy as np
import pytest

from aquin_monitor.corpus_geometry import corpus_geometry
from aquin_monitor.rows import ArrayRows
from aquin_monitor.signals.geometry import (
    geometry_summary,
    ood_scores,
    robust_ood_threshold,
)


def rows(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) / np.arange(1, d + 1) ** 0.5 + rng.normal(size=d)).astype(np.float32)


def test_a_corpus_no_larger_than_the_sample_gives_the_in_memory_summary():
    x = rows(700)
    threshold = robust_ood_threshold(ood_scores(x, threshold=2.0).scores)
    want = geometry_summary(x, ood_threshold=threshold).as_metrics()
    found = corpus_geometry(ArrayRows(x), sample_rows=700, block_rows=97)
    got = found.as_metrics()
    assert got.pop("geometry/ood_threshold") == pytest.approx(threshold, rel=1e-12)
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert found.details()["sample_rows"] == 700


def test_a_large_corpus_is_exact_where_streamed_and_sampled_elsewhere():
    x = rows(6000, seed=1)
    full = geometry_summary(x, uniformity_max_rows=6000)
    found = corpus_geometry(ArrayRows(x), sample_rows=1000, seed=3, block_rows=512)
    assert found.summary.anisotropy == pytest.approx(full.anisotropy, rel=1e-9)
    assert found.summary.intrinsic.components == full.intrinsic.components
    assert found.summary.intrinsic.effective_rank == pytest.approx(full.intrinsic.effective_rank, rel=1e-9)
    assert found.summary.rogue.top_dimensions.tolist() == full.rogue.top_dimensions.tolist()
    # sampled: the same seed draws the same rows; estimates close to the full-corpus values
    again = corpus_geometry(ArrayRows(x), sample_rows=1000, seed=3, block_rows=2000)
    assert again.summary.uniformity == found.summary.uniformity
    assert found.summary.uniformity == pytest.approx(full.uniformity, rel=0.05)
    assert found.summary.ood.scores.mean() == pytest.approx(full.ood.scores.mean(), rel=0.05)
    details = found.details()
    assert details["sample_rows"] == 1000 and "anisotropy" in details["exact_over_all_rows"]
    assert "1,000 of 6,000 rows" in details["sample_note"]


def test_too_few_rows_or_a_bad_sample_size_are_refused():
    with pytest.raises(ValueError, match="at least 2 rows, got 1"):
        corpus_geometry(ArrayRows(np.ones((1, 3))))
    with pytest.raises(ValueError, match="sample_rows must be at least 2"):
        corpus_geometry(ArrayRows(rows(10)), sample_rows=1)
    bad = rows(50)
    bad[33, 2] = np.inf
    with pytest.raises(ValueError, match=r"row\(s\) 1 \(of the block starting at row 32\)"):
        corpus_geometry(ArrayRows(bad), block_rows=16)
