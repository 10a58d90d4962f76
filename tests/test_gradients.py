"""Per-block gradient norms equal torch's own norms (the alarms' detector: tests/test_alarms.py)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from reference_stats import reference_group, reference_group_norms
from sentence_transformers import SentenceTransformer

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
    model = torch.nn.ModuleDict(
        {"embeddings": torch.nn.Linear(3, 3), "layer": torch.nn.ModuleList([torch.nn.Linear(3, 3)])}
    )
    groups = group_parameters(model.named_parameters())
    model["embeddings"].weight.grad = torch.ones(3, 3)
    norms = grouped_grad_norms(groups)
    assert groups.names == ("embeddings", "layer.00")
    assert norms.tolist() == pytest.approx([3.0, 0.0, 3.0])
    model["layer"][0].bias.grad = torch.tensor([0.0, float("nan"), 1.0])
    norms = grouped_grad_norms(groups)
    assert math.isfinite(norms[0].item()) and math.isnan(norms[1].item()) and math.isnan(norms[2].item())


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
