"""TopK SAE: forward, AuxK, FVU and the decoder constraint against plain-torch/numpy references
written here; the folder format against EleutherAI sparsify (both directions) and bad folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aquin_monitor.sae.evaluate import feature_statistics
from aquin_monitor.sae.model import SaeFormatError, SparseAutoencoder, load_sae


def _sae(d=16, m=64, k=4, seed=0) -> SparseAutoencoder:
    sae = SparseAutoencoder(d, m, k, seed=seed)
    with torch.no_grad():  # move away from the symmetric init so biases matter
        for p in sae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return sae


def _reference_forward(x, W_enc, b_enc, W_dec, b_dec, k):
    """z = TopK(ReLU(W_enc (x - b_dec) + b_enc)), x̂ = W_decᵀ z + b_dec, dense and sorted."""
    pre = torch.relu((x - b_dec) @ W_enc.T + b_enc)
    kth = pre.sort(dim=1, descending=True).values[:, k - 1 : k]
    z = torch.where(pre >= kth, pre, torch.zeros_like(pre))
    return z, z @ W_dec + b_dec, pre


def test_topk_forward_matches_plain_torch():
    torch.manual_seed(0)
    sae = _sae()
    x = torch.randn(50, 16)
    z_ref, x_hat_ref, _ = _reference_forward(x, sae.encoder.weight, sae.encoder.bias, sae.W_dec, sae.b_dec, sae.k)
    with torch.no_grad():
        z = sae.encode(x)
        out = sae(x)
    assert torch.allclose(z, z_ref, atol=1e-6)
    assert ((z != 0).sum(1) <= sae.k).all()
    assert torch.allclose(out.reconstruction, x_hat_ref, atol=1e-5)
    assert torch.allclose(sae.decode(z), x_hat_ref, atol=1e-5)


def test_fvu_is_its_closed_form():
    torch.manual_seed(1)
    sae = _sae()
    x = torch.randn(40, 16)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x)).numpy()
    xn = x.numpy().astype(np.float64)
    expected = ((xn - x_hat) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    with torch.no_grad():
        assert float(sae(x).fvu) == pytest.approx(expected, rel=1e-5)
    assert feature_statistics(sae, x, batch_size=7).fvu == pytest.approx(expected, rel=1e-5)


def test_auxk_loss_matches_plain_torch():
    torch.manual_seed(2)
    sae = _sae(d=16, m=64, k=4)
    x = torch.randn(30, 16)
    for n_dead in (3, 20):  # fewer and more dead latents than k_aux = d/2 = 8
        dead = torch.zeros(64, dtype=torch.bool)
        dead[torch.randperm(64)[:n_dead]] = True
        out = sae(x, dead_mask=dead, auxk_coefficient=0.5)
        _, x_hat, pre = _reference_forward(x, sae.encoder.weight, sae.encoder.bias, sae.W_dec, sae.b_dec, sae.k)
        k_aux = min(8, n_dead)
        masked = pre.masked_fill(~dead, float("-inf"))
        kth = masked.sort(dim=1, descending=True).values[:, k_aux - 1 : k_aux]
        z_aux = torch.where((masked >= kth) & dead, pre, torch.zeros_like(pre))
        residual = x - x_hat
        variance = ((x - x.mean(0)) ** 2).sum()
        expected = 0.5 * min(n_dead / 8, 1.0) * ((z_aux @ sae.W_dec - residual) ** 2).sum() / variance
        assert float(out.auxk_loss) == pytest.approx(float(expected), rel=1e-4)
    assert float(sae(x).auxk_loss) == 0.0


def test_decoder_rows_stay_unit_norm_and_parallel_gradient_is_removed():
    from aquin_monitor.rows import ArrayRows
    from aquin_monitor.sae.stream import RowPlan
    from aquin_monitor.sae.train import SaeTrainConfig, StreamingTrainer

    torch.manual_seed(3)
    sae = _sae()
    x = torch.randn(256, 16)
    plan = RowPlan(len(x), block_rows=1024, val_fraction=0.01, seed=0, max_val_rows=3)
    loop = StreamingTrainer(
        sae, ArrayRows(x.numpy()), plan, x[:20], SaeTrainConfig(batch_size=32, lr=1e-2, dead_after=64)
    )
    original_step = loop.optimizer.step
    seen = []

    def checked_step(*args, **kwargs):
        grad = sae.W_dec.grad
        direction = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
        seen.append(float((grad * direction).sum(1).abs().max()))  # no component along a row
        return original_step(*args, **kwargs)

    loop.optimizer.step = checked_step
    norms = []
    original_normalize = sae.normalize_decoder

    def normalize_and_record():
        original_normalize()
        norms.append(sae.W_dec.detach().norm(dim=1))

    sae.normalize_decoder = normalize_and_record
    loop.run_epoch()
    assert len(seen) == len(norms) == 8  # one check per step (253 training rows: 7 full batches and one of 29)
    assert max(seen) < 1e-6
    for row_norms in norms:
        assert torch.allclose(row_norms, torch.ones_like(row_norms), atol=1e-6)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    sae = _sae()
    sae.metadata["model"] = "some/model"
    sae.save(tmp_path / "s")
    again = load_sae(tmp_path / "s")
    for (name, a), (_, b) in zip(sae.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert again.metadata["model"] == "some/model" and again.k == sae.k
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["cfg.json", "sae.safetensors"]


def test_sparsify_loads_ours_and_we_load_sparsify(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    sae = _sae()
    sae.save(tmp_path / "ours")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "ours")
    x = torch.randn(20, 16)
    with torch.no_grad():
        ours_out = sae.encode_topk(x)
        their_out = theirs.encode(x)
        assert torch.equal(their_out.top_indices.sort(1).values, ours_out.indices.sort(1).values)
        assert torch.allclose(their_out.top_acts.sort(1).values, ours_out.acts.sort(1).values, atol=1e-6)
        assert torch.allclose(theirs(x).sae_out, sae(x).reconstruction, atol=1e-5)

    config = sparsify.SparseCoderConfig(num_latents=48, k=5)
    coder = sparsify.SparseCoder(12, config, device="cpu")
    with torch.no_grad():
        coder.b_dec.normal_()
        coder.encoder.bias.normal_()
    coder.save_to_disk(tmp_path / "theirs")
    loaded = load_sae(tmp_path / "theirs")
    assert (loaded.d_in, loaded.num_latents, loaded.k) == (12, 48, 5)
    y = torch.randn(10, 12)
    with torch.no_grad():
        assert torch.allclose(coder(y).sae_out, loaded(y).reconstruction, atol=1e-5)


def test_bad_folders_give_one_line_with_file_line_and_field(tmp_path):
    sae = _sae()
    folder = sae.save(tmp_path / "s")
    cfg_path = folder / "cfg.json"
    good = cfg_path.read_text()

    with pytest.raises(SaeFormatError, match=r"cfg.json:0: cfg.json: missing"):
        load_sae(tmp_path / "nowhere")
    cfg_path.write_text(good.replace('"k": 4', '"k": 4,,'))
    with pytest.raises(SaeFormatError, match=r"cfg.json:\d+: cfg.json: not valid JSON"):
        load_sae(folder)
    cfg = json.loads(good)
    cfg["d_in"] = 17
    cfg_path.write_text(json.dumps(cfg, indent=1))
    with pytest.raises(SaeFormatError, match=r"sae.safetensors:0: encoder.weight: shape \(64, 16\) disagrees"):
        load_sae(folder)
    cfg["d_in"], cfg["k"] = 16, "$$"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    with pytest.raises(SaeFormatError, match=r"cfg.json:\d+: k: expected an integer"):
        load_sae(folder)
    cfg["k"] = 4
    cfg_path.write_text(json.dumps(cfg, indent=1))
    (folder / "sae.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SaeFormatError, match="sae.safetensors: unreadable"):
        load_sae(folder)


def test_nan_weights_are_refused(tmp_path):
    sae = _sae()
    with torch.no_grad():
        sae.W_dec[0, 0] = float("nan")
    sae.save(tmp_path / "s")
    with pytest.raises(SaeFormatError, match="W_dec: not finite"):
        load_sae(tmp_path / "s")


def test_sparse_backward_equals_dense_autograd():
    """The encoder's index_add backward gives autograd's gradients (with and without AuxK)."""
    torch.manual_seed(4)
    sae = _sae(d=16, m=64, k=4)
    x = torch.randn(40, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    for dead_mask in (None, dead):
        sae.zero_grad()
        out = sae(x, dead_mask=dead_mask)
        (out.fvu + out.auxk_loss).backward()
        ours = {name: p.grad.clone() for name, p in sae.named_parameters()}
        params = {name: p.detach().clone().requires_grad_() for name, p in sae.named_parameters()}
        W_enc, b_enc, W_dec, b_dec = params["encoder.weight"], params["encoder.bias"], params["W_dec"], params["b_dec"]
        _z, x_hat, pre = _reference_forward(x, W_enc, b_enc, W_dec, b_dec, sae.k)
        variance = ((x - x.mean(0)) ** 2).sum()
        loss = ((x - x_hat) ** 2).sum() / variance
        if dead_mask is not None:
            masked = pre.masked_fill(~dead_mask, float("-inf"))
            kth = masked.sort(dim=1, descending=True).values[:, 7:8]  # k_aux = d/2 = 8
            z_aux = torch.where((masked >= kth) & dead_mask, pre, torch.zeros_like(pre))
            loss = (
                loss
                + min(dead_mask.sum().item() / 8, 1.0) * ((z_aux @ W_dec - (x - x_hat).detach()) ** 2).sum() / variance
            )
        loss.backward()
        for name, p in params.items():
            assert torch.allclose(ours[name], p.grad, atol=1e-5), name
