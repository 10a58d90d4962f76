"""Per-block gradient norms equal torch's own norms; the detector flags real failure shapes only."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from reference_stats import reference_group, reference_group_norms
from sentence_transformers import SentenceTransformer

from aquin_monitor.alarms import DetectorConfig, GradientAnomalyDetector
from aquin_monitor.signals.gradients import (
    group_parameters,
    grouped_grad_norms,
    row_nanmedian,
)


def _backward(model, texts):
    feats = model.preprocess(texts)
    model(feats)["sentence_embedding"].pow(2).sum().backward()


def test_group_norms_equal_vector_norm_per_group(tiny_mean_model):
    """Groups and norms against tests/reference_stats.py: names parsed by the test's own regex, float64 norms."""
    model = SentenceTransformer(tiny_mean_model, device="cpu")
    _backward(model, ["hello world", "a second sentence"])
    groups = group_parameters(model.named_parameters())
    parsed = {reference_group(n) for n, p in model.named_parameters() if p.requires_grad}
    assert parsed == {"embeddings", "layer.00", "layer.01", "pooler"}
    assert groups.names == ("embeddings", "layer.00", "layer.01", "pooler")
    expected = reference_group_norms(model.named_parameters())
    assert "pooler" not in expected  # the mean-pooled model never uses its pooler: no gradient
    norms = grouped_grad_norms(groups)
    for gi, name in enumerate(groups.names):
        assert norms[gi].item() == pytest.approx(expected.get(name, 0.0), rel=1e-5), name
    assert norms[-1].item() == pytest.approx(expected["total"], rel=1e-6)
    every = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.equal(norms[-1], torch.nn.utils.get_total_norm(every))


def test_frozen_parameters_are_skipped_and_lora_split(tiny_lora):
    from peft import PeftModel

    base, adapter = tiny_lora
    model = SentenceTransformer(base, device="cpu")
    model[0].auto_model = PeftModel.from_pretrained(model[0].auto_model, adapter, is_trainable=True)
    groups = group_parameters(model.named_parameters())
    assert all(("lora_A" in n or "lora_B" in n) for n in groups.parameter_names)
    assert set(groups.names) == {f"layer.{i:02d}/lora_{m}" for i in range(2) for m in "AB"}
    _backward(model, ["lora gradients only"])
    norms = grouped_grad_norms(groups)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    expected = reference_group_norms(trainable)
    assert set(expected) == set(groups.names) | {"total"}
    for gi, name in enumerate(groups.names):
        assert norms[gi].item() == pytest.approx(expected[name], rel=1e-5), name
    assert norms[-1].item() == pytest.approx(expected["total"], rel=1e-5)


def test_missing_grad_counts_as_zero_and_nan_propagates():
    model = torch.nn.ModuleDict({"embeddings": torch.nn.Linear(3, 3), "layer": torch.nn.ModuleList([torch.nn.Linear(3, 3)])})
    groups = group_parameters(model.named_parameters())
    model["embeddings"].weight.grad = torch.ones(3, 3)
    norms = grouped_grad_norms(groups)
    assert groups.names == ("embeddings", "layer.00")
    assert norms.tolist() == pytest.approx([3.0, 0.0, 3.0])
    model["layer"][0].bias.grad = torch.tensor([0.0, float("nan"), 1.0])
    norms = grouped_grad_norms(groups)
    assert math.isfinite(norms[0].item()) and math.isnan(norms[1].item()) and math.isnan(norms[2].item())


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


def test_row_nanmedian_equals_numpy_nanmedian():
    rng = np.random.default_rng(0)
    for n_cols in (1, 2, 7, 50):
        a = rng.lognormal(size=(40, n_cols))
        a[rng.random(a.shape) < 0.3] = np.nan
        a[0] = np.nan  # an all-NaN row
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(a, axis=1)
        np.testing.assert_array_equal(row_nanmedian(a), expected)
