"""The gradient anomaly detector (aquin_monitor.alarms) flags real failure shapes only: quiet on healthy
noisy histories, spikes, dead layers and NaN flagged, state kept across a resume."""

from __future__ import annotations

import numpy as np
import pytest

from aquin_monitor.alarms import DetectorConfig, GradientAnomalyDetector


def _run(detector, series):
    found = []
    for step, row in enumerate(series, 1):
        found.extend((step, a) for a in detector.update(row, step))
    return found


def test_detector_quiet_on_healthy_noisy_history():
    rng = np.random.default_rng(0)
    # log-normal noise around a slowly decaying trend, like a healthy fine-tune
    series = [np.exp(rng.normal(0, 0.3, 3)) * (1.0 - 0.004 * t) for t in range(200)]
    assert _run(GradientAnomalyDetector(["a", "b", "c"]), series) == []


def test_detector_flags_spike_dead_and_nan():
    rng = np.random.default_rng(1)
    series = [np.exp(rng.normal(0, 0.2, 2)) for _ in range(60)]
    series[40] = np.array([50.0, series[40][1]])  # spike in group a
    for t in range(45, 60):
        series[t] = np.array([series[t][0], 0.0])  # group b frozen from step 46
    series.append(np.array([float("nan"), 1.0]))
    found = _run(GradientAnomalyDetector(["a", "b"], DetectorConfig(cooldown=100)), series)
    kinds = [(step, a.kind, a.group) for step, a in found]
    assert (41, "spike", "a") in kinds
    assert (48, "dead_layer", "b") in kinds  # after dead_patience=3 steps
    assert (61, "nan", "a") in kinds
    assert len(kinds) == 3


def _run_without_gradient(detector, series, no_gradient):
    found = []
    for step, row in enumerate(series, 1):
        found.extend((step, a) for a in detector.update(row, step, no_gradient))
    return found


def test_detector_silent_during_warmup_and_for_an_unused_pooler():
    series = [np.array([100.0 if t == 3 else 1.0, 0.0]) for t in range(30)]
    assert _run_without_gradient(GradientAnomalyDetector(["a", "pooler"]), series, no_gradient=[1]) == []


def test_detector_flags_once_a_layer_dead_from_the_start():
    """Zero (or absent) from step 1: no history to collapse from, flagged at warmup + patience."""
    cfg = DetectorConfig()
    series = [np.array([1.0, 0.0, 0.0, 0.0, 1e-13, 1.0]) for _ in range(60)]
    series[30][4] = 5.0  # alive once: not dead from the start
    names = ["layer.00", "layer.01", "layer.02", "pooler", "head", "total"]
    found = _run_without_gradient(GradientAnomalyDetector(names, cfg), series, no_gradient=[2, 3])
    flagged = [(step, a.kind, a.group) for step, a in found]
    at = cfg.warmup + cfg.dead_patience
    assert flagged == [(at, "dead_layer", "layer.01"), (at, "dead_layer", "layer.02"), (at, "dead_layer", "head")]
    messages = {a.group: a.message for _, a in found}
    assert "no gradient" in messages["layer.02"] and "below 1e-12" in messages["layer.01"]


def test_detector_state_keeps_what_was_alive():
    d1 = GradientAnomalyDetector(["a", "b"])
    for t in range(1, 6):
        d1.update([1.0, 0.0], t)
    d2 = GradientAnomalyDetector(["a", "b"])
    d2.load_state_dict(d1.state_dict())
    legacy = {k: v for k, v in d1.state_dict().items() if k != "ever_alive"}  # a checkpoint of an earlier version
    d3 = GradientAnomalyDetector(["a", "b"])
    d3.load_state_dict(legacy)
    for d in (d1, d2, d3):
        flagged = [(t, a.group) for t in range(6, 20) for a in d.update([1.0, 0.0], t)]
        assert flagged == [(13, "b")]


def test_detector_state_roundtrip():
    rng = np.random.default_rng(2)
    d1 = GradientAnomalyDetector(["a"])
    for t in range(30):
        d1.update([float(np.exp(rng.normal()))], t + 1)
    d2 = GradientAnomalyDetector(["a"])
    d2.load_state_dict(d1.state_dict())
    assert d2.update([1000.0], 31) == d1.update([1000.0], 31)
    with pytest.raises(ValueError, match="groups"):
        GradientAnomalyDetector(["b"]).load_state_dict(d1.state_dict())
