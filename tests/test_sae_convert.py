"""Converters (aquin_monitor.sae.convert, `sae convert`): SAEs built and run by sentence-transformers' own
``SparseAutoEncoder`` (CSR) and by latentsae's own ``Sae`` give the codes and reconstructions our converted
SAE gives, within 1e-5, on random inputs; what cannot convert exactly is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from cli_errors import one_line_error

from aquin_monitor import cli
from aquin_monitor.sae.convert import convert_sae
from aquin_monitor.sae.model import SaeFormatError, load_sae

D, N = 16, 64


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AQUIN_MONITOR_CACHE", str(tmp_path / "cache"))


def _csr(k=4, seed=0, latent_shift=0.0):
    """A CSR SparseAutoEncoder with random non-unit encoder rows and non-zero biases."""
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    torch.manual_seed(seed)
    csr = SparseAutoEncoder(input_dim=D, hidden_dim=N, k=k, k_aux=8)
    with torch.no_grad():
        csr.encoder.weight.mul_(torch.rand(N, 1) * 3 + 0.2)  # row norms spread over ~0.2..3
        csr.pre_bias.normal_()
        csr.latent_bias.normal_(latent_shift, 0.5)
    return csr.eval()


def _save(csr, folder):
    folder.mkdir(parents=True, exist_ok=True)
    csr.save(str(folder))
    return folder


def _csr_outputs(csr, x):
    """CSR's own forward: its codes (TopK then ReLU) and its reconstruction from them."""
    with torch.no_grad():
        features = csr({"sentence_embedding": x.clone()})
    return features["sentence_embedding"], features["decoded_embedding_k"], features["sentence_embedding_encoded"]


def _ours(sae, x):
    with torch.no_grad():
        return sae.encode(x), sae(x).reconstruction


def test_csr_codes_and_reconstructions_match_sentence_transformers(tmp_path):
    csr = _csr()
    _save(csr, tmp_path / "csr")
    sae = convert_sae(tmp_path / "csr", "csr")
    x = torch.randn(200, D)
    codes, reconstruction, _ = _csr_outputs(csr, x)
    ours_codes, ours_reconstruction = _ours(sae, x)
    assert torch.allclose(ours_codes, codes, atol=1e-5)
    assert torch.allclose(ours_reconstruction, reconstruction, atol=1e-5)
    assert torch.equal(ours_codes != 0, codes != 0)
    # untied: a copy, so training ours cannot move CSR's encoder through the decoder
    assert sae.W_dec.data_ptr() != sae.encoder.weight.data_ptr()
    norms = sae.W_dec.detach().norm(dim=1)
    assert not sae.decoder_normalized and float(norms.max() / norms.min()) > 2  # kept as trained, not rescaled


def test_topk_then_relu_equals_relu_then_topk_when_fewer_than_k_are_positive(tmp_path):
    """The case the two orders could differ in: CSR's top k include negative pre-activations (ReLU'd to 0)."""
    csr = _csr(k=8, latent_shift=-4.0)
    _save(csr, tmp_path / "csr")
    sae = convert_sae(tmp_path / "csr", "csr")
    x = torch.randn(300, D)
    codes, reconstruction, pre = _csr_outputs(csr, x)
    positives = (pre > 0).sum(1)
    few = positives < 8
    assert few.sum() > 100 and (positives[few] > 0).any()  # the case is hit, and not only at zero positives
    ours_codes, ours_reconstruction = _ours(sae, x)
    assert torch.allclose(ours_codes[few], codes[few], atol=1e-5)
    assert torch.allclose(ours_reconstruction[few], reconstruction[few], atol=1e-5)
    assert torch.equal((ours_codes != 0).sum(1)[few], positives[few])  # exactly the positive ones fire


def test_converted_csr_keeps_contrast_exact_and_round_trips(tmp_path):
    from aquin_monitor.sae.decompose import contrast

    _save(_csr(), tmp_path / "csr")
    sae = convert_sae(tmp_path / "csr", "csr", model="some/model")
    folder = sae.save(tmp_path / "ours")
    assert json.loads((folder / "cfg.json").read_text())["normalize_decoder"] is False
    again = load_sae(folder)
    assert not again.decoder_normalized and again.metadata["model"] == "some/model"
    assert again.metadata["converted_from"] == "csr"
    a, b = torch.randn(D), torch.randn(D)
    result = contrast(again, a, b)
    total = sum(t.phi for t in result.terms) + result.bias_term + result.error_term
    assert total == pytest.approx(float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0)), abs=1e-9)


def test_csr_inside_a_sparse_encoder_folder(tiny_mean_model, tmp_path):
    """A whole SparseEncoder (transformer, pooling, CSR): our SAE on the dense model's embeddings gives its codes."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    dense = SentenceTransformer(tiny_mean_model, device="cpu")
    width = dense.get_embedding_dimension()
    torch.manual_seed(1)
    csr = SparseAutoEncoder(input_dim=width, hidden_dim=4 * width, k=6)
    with torch.no_grad():
        csr.pre_bias.normal_(0, 0.1)
        csr.latent_bias.normal_(0, 0.1)
    SparseEncoder(modules=[*dense, csr], device="cpu").save(str(tmp_path / "sparse"))
    sparse = SparseEncoder(str(tmp_path / "sparse"), device="cpu")
    texts = ["a cat on the mat", "bank card money", "$$ <script>alert(1)</script>", "science news"]
    codes = sparse.encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
    sae = convert_sae(tmp_path / "sparse", "csr")
    ours, _ = _ours(sae, dense.encode(texts, convert_to_tensor=True))
    assert torch.allclose(ours, codes.to_dense() if codes.is_sparse else codes, atol=1e-5)


def _latentsae(tmp_path, name, **settings):
    latentsae = pytest.importorskip("latentsae")
    torch.manual_seed(2)
    if "sae_type" in settings:
        settings = {**settings, "sae_type": latentsae.SaeType(settings["sae_type"])}
    sae = latentsae.Sae(D, latentsae.SaeConfig(**settings))
    with torch.no_grad():
        sae.b_dec.normal_()
        if hasattr(sae, "encoder"):  # a gated SAE has W_gate and W_mag instead
            sae.encoder.bias.normal_(0, 0.3)
        if hasattr(sae, "input_mean"):
            sae.input_mean.normal_(0, 2)
    sae.save_to_disk(tmp_path / name)
    return latentsae.Sae.load_from_disk(tmp_path / name).eval()


@pytest.mark.parametrize(
    "settings",
    [
        {"num_latents": N, "k": 5},
        {"num_latents": N, "k": 5, "mean_center": True},
        {"num_latents": N, "k": 5, "sae_type": "matryoshka", "matryoshka_sizes": "16,64", "matryoshka_ks": "2,6"},
    ],
    ids=["topk", "mean_center", "matryoshka"],
)
def test_latentsae_codes_and_reconstructions_match_latentsae(tmp_path, settings):
    theirs = _latentsae(tmp_path, "theirs", **settings)
    sae = convert_sae(tmp_path / "theirs", "latentsae")
    x = torch.randn(200, D) * 2
    with torch.no_grad():
        encoded = theirs.encode(x)
        codes = torch.zeros(200, N).scatter_(1, encoded.top_indices, encoded.top_acts)
        reconstruction = theirs.decode(encoded.top_acts, encoded.top_indices)
        forward = theirs(x).sae_out
    ours_codes, ours_reconstruction = _ours(sae, x)
    assert sae.k == int(encoded.top_indices.shape[1])
    assert torch.allclose(ours_codes, codes, atol=1e-5)
    assert torch.allclose(ours_reconstruction, reconstruction, atol=1e-5)
    assert torch.allclose(ours_reconstruction, forward, atol=1e-5)
    assert sae.decoder_normalized  # latentsae keeps unit rows


def test_load_sae_points_foreign_folders_to_the_converter(tmp_path):
    _latentsae(tmp_path, "centred", num_latents=N, k=5, mean_center=True)
    with pytest.raises(SaeFormatError, match=r"cfg.json:\d+: mean_center: .*sae convert SRC --from latentsae"):
        load_sae(tmp_path / "centred")
    _save(_csr(), tmp_path / "csr")
    with pytest.raises(SaeFormatError, match=r"cfg.json:0: cfg.json: missing .*--from csr"):
        load_sae(tmp_path / "csr")


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"num_latents": N, "k": 5, "sae_type": "gated"}, "sae_type"),
        ({"num_latents": N, "k": 5, "sae_type": "abstopk"}, "sae_type"),
        ({"num_latents": N, "k": 5, "use_skip": True}, "use_skip"),
    ],
)
def test_latentsae_types_that_encode_differently_are_refused(tmp_path, settings, field):
    _latentsae(tmp_path, "theirs", **settings)
    with pytest.raises(SaeFormatError, match=rf"cfg.json:\d+: {field}: "):
        convert_sae(tmp_path / "theirs", "latentsae")


def test_sparsify_folder_converts_to_itself(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    coder = sparsify.SparseCoder(12, sparsify.SparseCoderConfig(num_latents=48, k=5), device="cpu")
    with torch.no_grad():
        coder.b_dec.normal_()
        coder.encoder.bias.normal_()
    coder.save_to_disk(tmp_path / "theirs")
    sae = convert_sae(tmp_path / "theirs", "sparsify", model="m")
    y = torch.randn(10, 12)
    with torch.no_grad():
        assert torch.allclose(coder(y).sae_out, sae(y).reconstruction, atol=1e-5)
    sae.save(tmp_path / "ours")
    back = sparsify.SparseCoder.load_from_disk(tmp_path / "ours")
    with torch.no_grad():
        assert torch.allclose(back(y).sae_out, sae(y).reconstruction, atol=1e-5)


def test_cli_convert_writes_a_folder_that_loads(tmp_path, capsys):
    csr = _csr()
    _save(csr, tmp_path / "csr")
    out = tmp_path / "out" / "sae"
    code = cli.main(
        [
            "sae",
            "convert",
            str(tmp_path / "csr"),
            "--from",
            "csr",
            "--out",
            str(out),
            "--model",
            "m",
            "--json",
            str(tmp_path / "summary.json"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["d_in"], summary["num_latents"], summary["k"], summary["decoder_normalized"]) == (D, N, 4, False)
    x = torch.randn(50, D)
    codes, reconstruction, _ = _csr_outputs(csr, x)
    ours_codes, ours_reconstruction = _ours(load_sae(out), x)
    assert torch.allclose(ours_codes, codes, atol=1e-5) and torch.allclose(
        ours_reconstruction, reconstruction, atol=1e-5
    )
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae.safetensors"]


def _write_csr(folder, config=None, **tensors):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or {"input_dim": 4, "hidden_dim": 8, "k": 2}, indent=1))
    weights = {"encoder.weight": torch.randn(8, 4), "pre_bias": torch.zeros(4), "latent_bias": torch.zeros(8)}
    weights.update(tensors)
    save_file(weights, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize(
    "config, tensors, parts",
    [
        ({"input_dim": 4, "hidden_dim": 8, "k": 2, "normalize": True}, {}, ["config.json:", "normalize:"]),
        ({"input_dim": 4, "hidden_dim": 8, "k": 9}, {}, ["config.json:", "k: 9 is more than hidden_dim 8"]),
        ({"input_dim": "$$", "hidden_dim": 8, "k": 2}, {}, ["config.json:2: input_dim:", "'$$'"]),
        (
            None,
            {"pre_bias": torch.tensor([0.0, float("nan"), 0.0, 0.0])},
            ["model.safetensors:0: pre_bias: not finite"],
        ),
        (None, {"latent_bias": torch.zeros(7)}, ["model.safetensors:0: latent_bias: shape (7,)"]),
        (None, {"<script>": torch.zeros(1)}, ["model.safetensors:0: <script>: unexpected tensor"]),
    ],
    ids=["layer-norm", "k", "odd-value", "nan", "shape", "odd-tensor"],
)
def test_cli_convert_bad_csr_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, config, tensors, parts):
    src = _write_csr(tmp_path / "csr", config, **tensors)
    out = tmp_path / "out"
    assert cli.main(["sae", "convert", str(src), "--from", "csr", "--out", str(out)]) == 2
    one_line_error(capsys, *parts)
    assert not out.exists()


def test_cli_convert_bad_paths_exit_2(tmp_path, capsys):
    src = _write_csr(tmp_path / "csr")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["sae", "convert", str(src), "--from", "csr", "--out", str(blocker)]) == 2
    one_line_error(capsys, "--out")
    assert (
        cli.main(["sae", "convert", str(tmp_path / "nowhere"), "--from", "latentsae", "--out", str(tmp_path / "o")])
        == 2
    )
    one_line_error(capsys, "nowhere", "SRC: not a folder")
    assert not (tmp_path / "o").exists()
    assert blocker.read_text() == "x"


def test_csr_saved_as_pytorch_bin_with_both_tied_names(tmp_path):
    """safe_serialization=False writes torch's state dict: encoder.weight and decoder.linear.weight both."""
    csr = _csr()
    (tmp_path / "csr").mkdir()
    csr.save(str(tmp_path / "csr"), safe_serialization=False)
    assert (tmp_path / "csr" / "pytorch_model.bin").is_file()
    x = torch.randn(100, D)
    codes, reconstruction, _ = _csr_outputs(csr, x)
    ours_codes, ours_reconstruction = _ours(convert_sae(tmp_path / "csr", "csr"), x)
    assert torch.allclose(ours_codes, codes, atol=1e-5) and torch.allclose(
        ours_reconstruction, reconstruction, atol=1e-5
    )


def test_converted_sparse_encoder_drives_sae_decompose(tiny_mean_model, tmp_path, capsys):
    """Convert a whole SparseEncoder folder, then an analysis verb runs on it with the dense model's embeddings."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    dense = SentenceTransformer(tiny_mean_model, device="cpu")
    width = dense.get_embedding_dimension()
    SparseEncoder(modules=[*dense, SparseAutoEncoder(input_dim=width, hidden_dim=2 * width, k=3)], device="cpu").save(
        str(tmp_path / "sparse")
    )
    out = tmp_path / "converted"
    assert (
        cli.main(
            ["sae", "convert", str(tmp_path / "sparse"), "--from", "csr", "--out", str(out), "--model", tiny_mean_model]
        )
        == 0
    ), capsys.readouterr().err
    capsys.readouterr()
    assert (
        cli.main(["sae", "decompose", str(out), "a cat on the mat", "--json", "-", "--no-cache", "--no-progress"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    sparse = SparseEncoder(str(tmp_path / "sparse"), device="cpu")
    codes = sparse.encode(["a cat on the mat"], convert_to_tensor=True, convert_to_sparse_tensor=False)[0]
    expected = {int(i): float(codes[i]) for i in torch.nonzero(codes).flatten()}
    assert len(expected) == 3  # k features fire: the comparison below is not between two empty sets
    assert {f["feature"]: f["activation"] for f in result["features"]} == pytest.approx(expected, abs=1e-5)
