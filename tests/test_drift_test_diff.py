"""The two-sample drift test as the diff logs it and the report says it (issue 22 item 2).

- ``diff`` logs ``drift/<vs>/p_value`` and ``drift/<vs>/mmd2`` from one ``drift_test`` call, seeded with the diff's
  seed (one computation, one home), and leaves the test out on a probe too small for it;
- the runner logs it against the base and the previous snapshot at every snapshot;
- the report shows one plain sentence per test, with p and the statistic, and none when the numbers are absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from aquin_monitor import snapshot_keys as keys
from aquin_monitor.report import render_report
from aquin_monitor.signals.two_sample import drift_test, drift_test_sentence
from aquin_monitor.snapshot_record import Snapshot, diff


def snapshot(step: int, embeddings: np.ndarray, tag: str = "checkpoint") -> Snapshot:
    return Snapshot(step=step, tag=tag, model="m <script>", arrays={keys.EMBEDDINGS: embeddings.astype(np.float32)})


def spaces(n: int = 90) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    topics = rng.integers(0, 4, n)
    base = rng.standard_normal((4, 12))[topics] * 2.0 + rng.standard_normal((n, 12))
    collapsed = 0.1 * base + np.ones(12)
    return base, collapsed


def test_diff_logs_the_test_of_one_drift_test_call():
    base, collapsed = spaces()
    change = diff(snapshot(0, base, "base"), snapshot(5, collapsed), name="base", seed=3, n_permutations=299)
    expected = drift_test(base.astype(np.float32), collapsed.astype(np.float32), seed=3, n_permutations=299)
    assert change.metrics["drift/base/p_value"] == expected.p_value
    assert change.metrics["drift/base/mmd2"] == expected.statistic
    assert expected.p_value == pytest.approx(1 / 300)  # a collapse: no permutation reaches it
    assert change.details["drift_test"] == {
        "n_reference": 30,
        "n_before": 30,
        "n_after": 30,
        "n_permutations": 299,
        "bandwidth": expected.bandwidth,
    }


def test_runner_logs_the_test_against_base_and_previous_at_every_snapshot():
    from aquin_monitor.snapshot_runner import SnapshotRunner

    base, collapsed = spaces()
    runner = SnapshotRunner([f"text {i}" for i in range(len(base))], umap=False, seed=2)
    snaps = [snapshot(0, base, "base"), snapshot(5, 0.5 * base + 0.5 * collapsed), snapshot(9, collapsed)]
    for snap in snaps:
        runner.attach_diffs(snap)
    assert not any(key.startswith("drift/") for key in snaps[0].metrics)
    assert {"drift/base/p_value", "drift/base/mmd2"} <= set(snaps[1].metrics)
    assert "drift/previous/p_value" not in snaps[1].metrics  # the previous snapshot is the base: one test
    assert {"drift/base/p_value", "drift/previous/p_value", "drift/previous/mmd2"} <= set(snaps[2].metrics)
    expected = drift_test(snaps[1].arrays[keys.EMBEDDINGS], snaps[2].arrays[keys.EMBEDDINGS], seed=2)
    assert snaps[2].metrics["drift/previous/p_value"] == expected.p_value


def test_a_probe_too_small_for_the_test_keeps_every_other_diff_number():
    base, collapsed = spaces(5)
    change = diff(snapshot(0, base, "base"), snapshot(5, collapsed), name="previous")
    assert "drift/previous/cka" in change.metrics
    assert not any(key.endswith(("/p_value", "/mmd2")) for key in change.metrics)
    assert "drift_test" not in change.details


def test_report_says_one_sentence_per_test(tmp_path):
    base, collapsed = spaces()
    first, later = snapshot(0, base, "base"), snapshot(5, collapsed)
    later.metrics.update(diff(first, later, name="base").metrics)
    previous = diff(first, later, name="previous", seed=1).metrics
    later.metrics.update(previous)
    first.save(tmp_path)
    later.save(tmp_path)
    page = render_report(tmp_path)
    for reference in ("base", "previous"):
        sentence = drift_test_sentence(
            later.metrics[f"drift/{reference}/p_value"], later.metrics[f"drift/{reference}/mmd2"]
        )
        assert sentence in page
        assert "moved more than re-sampling" in sentence
    assert "Against the base model" in page and "Against the previous snapshot" in page
    assert "<script>" not in page


def test_report_without_test_numbers_has_no_sentence(tmp_path):
    base, collapsed = spaces()
    snapshot(0, base, "base").save(tmp_path)
    snapshot(5, collapsed).save(tmp_path)
    assert "re-sampling the probe explains" not in render_report(tmp_path)
