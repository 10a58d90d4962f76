"""SAE analyses (decompose, contrast, trace, steer, faithfulness, match) against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aquin_monitor.sae.decompose import contrast, decompose
from aquin_monitor.sae.faithfulness import retrieval_faithfulness
from aquin_monitor.sae.match import match_features
from aquin_monitor.sae.model import SparseAutoencoder
from aquin_monitor.sae.steer import steer
from aquin_monitor.sae.trace import layer_inputs, trace_feature


def trained_like_sae(d_in=16, num_latents=64, k=4, seed=0) -> SparseAutoencoder:
    """A random SAE with a non-zero b_dec and an encoder that is not the decoder's transpose."""
    sae = SparseAutoencoder(d_in, num_latents, k, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_dec.copy_(0.3 * torch.randn(d_in, generator=g))
        sae.encoder.weight.add_(0.2 * torch.randn(num_latents, d_in, generator=g))
        sae.encoder.bias.copy_(0.05 * torch.randn(num_latents, generator=g))
    return sae.eval()


def reference_code(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Plain-torch TopK SAE activations (dense), written out from the formula."""
    sae = sae.requires_grad_(False)
    pre = torch.relu((x.double() - sae.b_dec.double()) @ sae.encoder.weight.double().T + sae.encoder.bias.double())
    values, indices = pre.topk(sae.k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


# ------------------------------------------------------------------ decompose / contrast


def test_decompose_shares_sum_to_one_and_activations_match_reference():
    sae = trained_like_sae()
    x = torch.randn(16, generator=torch.Generator().manual_seed(3)) * 2.5
    result = decompose(sae, x, top=100)
    z = reference_code(sae, x[None])[0]
    assert [f.feature for f in result.features] == [int(i) for i in torch.argsort(z, descending=True)[: int((z > 0).sum())]]
    for f in result.features:
        assert f.activation == pytest.approx(float(z[f.feature]), rel=1e-5)
    x_hat = z @ sae.W_dec.double() + sae.b_dec.double()
    assert sum(f.share for f in result.features) + result.bias_share == pytest.approx(1.0, abs=1e-9)
    for f in result.features:
        expected = float(z[f.feature] * (sae.W_dec[f.feature].double() @ x_hat) / (x_hat @ x_hat))
        assert f.share == pytest.approx(expected, abs=1e-5)
    assert result.relative_error == pytest.approx(float((x.double() - x_hat).norm() / x.double().norm()), rel=1e-5)
    assert len(decompose(sae, x, top=2).features) == 2


@pytest.mark.parametrize("scale_a,scale_b", [(1.0, 1.0), (3.7, 0.2)])
def test_contrast_split_sums_to_true_cosine(scale_a, scale_b):
    sae = trained_like_sae()
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    a, b = scale_a * a / a.norm(), scale_b * b / b.norm()
    split = contrast(sae, a, b, labels=[f"f{i}" for i in range(64)])
    true_cosine = float(np.dot(a.numpy().astype(np.float64), b.numpy()) / (np.linalg.norm(a.numpy()) * np.linalg.norm(b.numpy())))
    assert split.cosine == pytest.approx(true_cosine, abs=1e-6)
    total = sum(t.phi for t in split.terms) + split.bias_term + split.error_term
    assert abs(total - true_cosine) < 1e-5
    assert split.error_term != 0 and split.bias_term != 0  # both explicit, both needed
    # the formula for unit inputs, on the unit vectors (z of unit a is not z of a when ‖a‖ ≠ 1)
    if scale_a == scale_b == 1.0:
        za, zb = reference_code(sae, a[None])[0], reference_code(sae, b[None])[0]
        W = sae.W_dec.double()
        phi = 0.5 * (za * (W @ b.double()) + zb * (W @ a.double()))
        for t in split.terms:
            assert t.phi == pytest.approx(float(phi[t.feature]), abs=1e-6)
            assert t.label == f"f{t.feature}"
        assert {t.feature for t in split.terms} == set(torch.nonzero((za > 0) | (zb > 0)).flatten().tolist())
    assert abs(split.terms[0].phi) >= abs(split.terms[-1].phi)


def test_contrast_of_a_text_with_itself_has_no_differences():
    sae = trained_like_sae()
    a = torch.randn(16, generator=torch.Generator().manual_seed(9))
    same = contrast(sae, a, a)
    assert same.terms and all(t.difference == 0 for t in same.terms)
    assert sum(t.phi for t in same.terms) + same.bias_term + same.error_term == pytest.approx(1.0, abs=1e-5)
    split = contrast(sae, a, 2 * a)  # the SAE is not scale-invariant (b_dec), the cosine is
    assert split.cosine == pytest.approx(1.0, abs=1e-6)
    assert sum(t.phi for t in split.terms) + split.bias_term + split.error_term == pytest.approx(1.0, abs=1e-5)


def test_contrast_rejects_bad_vectors():
    sae = trained_like_sae()
    with pytest.raises(ValueError, match="zero"):
        contrast(sae, torch.zeros(16), torch.ones(16))
    with pytest.raises(ValueError, match="non-finite"):
        decompose(sae, torch.full((16,), float("nan")))
    with pytest.raises(ValueError, match="16-dimensional"):
        decompose(sae, torch.ones(5))
