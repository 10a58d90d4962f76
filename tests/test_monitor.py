"""StepMonitor end to end on a toy model: what it writes per step, checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aquin_monitor.capture import ContrastiveTap, report_similarity
from aquin_monitor.monitor import StepMonitor
from aquin_monitor.sinks import JsonlSink
from aquin_monitor.sinks.jsonl import read_jsonl


def test_histograms_hold_the_positives_and_every_finite_negative(tmp_path):
    model = torch.nn.Linear(3, 2)
    tap = ContrastiveTap(strict=True)
    monitor = StepMonitor([JsonlSink(tmp_path)], histogram_every=2, tap=tap, strict=True, warn=False)
    scores = torch.tensor([[0.9, 0.1, float("-inf")], [0.3, 0.7, -0.2], [0.4, -0.5, 0.8]])
    for step in (1, 2):
        model.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        report_similarity(scores * step, tap=tap)  # step 2 doubles every score
        monitor.on_optimizer_step(step, model)
    monitor.close()

    histograms = read_jsonl(tmp_path / "histograms.jsonl")
    assert [(h["tag"], h["step"]) for h in histograms] == [("contrastive/pos_sim_hist", 2), ("contrastive/neg_sim_hist", 2)]
    pos, neg = histograms
    positives = np.array([1.8, 1.4, 1.6])
    negatives = np.array([0.2, 0.6, -0.4, 0.8, -1.0])  # the masked -inf is no negative
    for record, values in ((pos, positives), (neg, negatives)):
        assert (record["count"], record["nonfinite"]) == (values.size, 0)
        assert record["mean"] == pytest.approx(values.mean(), abs=1e-6)
        assert (record["min"], record["max"]) == pytest.approx((values.min(), values.max()), abs=1e-6)
        assert record["quantiles"]["p50"] == pytest.approx(np.median(values), abs=1e-6)


def test_logged_norms_and_contrastive_means_match_hand_computation(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    tap = ContrastiveTap(strict=True)
    monitor = StepMonitor([JsonlSink(tmp_path)], histogram_every=0, tap=tap, strict=True, warn=False)
    model(torch.randn(5, 4)).pow(2).sum().backward()
    report_similarity(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), tap=tap)
    monitor.on_optimizer_step(1, model)
    monitor.close()

    (row,) = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["step"] == 1]
    expected_total = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())).item()
    assert row["grad_norm/total"] == pytest.approx(expected_total, rel=1e-6)
    assert row["contrastive/pos_sim"] == pytest.approx(0.8)
    assert row["contrastive/neg_sim"] == pytest.approx(0.2)
    assert row["contrastive/gap"] == pytest.approx(0.6)
    assert row["contrastive/in_batch_acc"] == 1.0
