"""aquin_monitor.encoders against sentence-transformers, peft and hand computations."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_HEADS, TINY_HIDDEN, TINY_LAYERS, build_tiny_model
from sentence_transformers import CrossEncoder, SentenceTransformer

from aquin_monitor import encoders
from aquin_monitor.encoders import (
    DEFAULT_MODEL,
    ModelLoadError,
    ModelNotFoundError,
    add_lora,
    apply_prompt,
    detect_pooling,
    encode,
    has_lora,
    iter_forward,
    load_cross_encoder,
    load_model,
    merged_copy,
    model_prompts,
    resolve_model,
    transformer_of,
)

# Different lengths on purpose: batches carry padding, so masks matter.
TEXTS = [
    "the cat sat on the mat",
    "a",
    "protein folding is studied with molecular dynamics simulations of water and ions",
    "where is my card?",
    "hello world",
]


def _lora_parameters(model):
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def _concat(batches, field):
    return torch.cat([getattr(batch, field) for batch in batches], dim=0)


# ------------------------------------------------------------------ locating and loading


def test_default_resolves_to_bundled_minilm(minilm_path):
    assert resolve_model(DEFAULT_MODEL) == minilm_path
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == minilm_path
    assert resolve_model(minilm_path) == minilm_path


def test_missing_path_error_names_the_path(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        load_model(missing)
    assert issubclass(ModelNotFoundError, ValueError)


def test_uncached_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="nobody-here/not-a-model.*offline"):
        resolve_model("nobody-here/not-a-model")


def test_file_instead_of_directory(tmp_path):
    file_path = tmp_path / "model.bin"
    file_path.write_bytes(b"\x00")
    with pytest.raises(ModelLoadError, match="model.bin"):
        load_model(str(file_path))


def test_empty_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_model(str(tmp_path))


def test_broken_checkpoint_error_names_the_path(tiny_mean_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_mean_model, broken)
    (broken / "config.json").write_text("{ this is not json", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="broken"):
        load_model(str(broken), device="cpu")

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_mean_model, truncated)
    (truncated / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(str(truncated), device="cpu")


def test_missing_adapter_error_names_the_path(tiny_mean_model, tmp_path):
    with pytest.raises(ModelNotFoundError, match="no-adapter"):
        load_model(tiny_mean_model, device="cpu", adapter=str(tmp_path / "no-adapter"))
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_model(tiny_mean_model, device="cpu", adapter=str(tmp_path))


# ------------------------------------------------------------------ pooling


@pytest.mark.parametrize("mode", ["cls", "mean", "weightedmean", "lasttoken", "max"])
def test_detect_pooling_from_saved_config(tiny_model_factory, mode):
    path = tiny_model_factory(pooling=mode)
    with open(os.path.join(path, "1_Pooling", "config.json"), encoding="utf-8") as handle:
        saved = json.load(handle)
    assert saved["pooling_mode"] == mode  # the checkpoint itself records it
    assert detect_pooling(load_model(path, device="cpu")) == mode


def test_detect_pooling_reads_legacy_boolean_config(tiny_cls_model, tmp_path):
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_cls_model, legacy)
    (legacy / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": TINY_HIDDEN,
                "pooling_mode_cls_token": True,
                "pooling_mode_mean_tokens": False,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        ),
        encoding="utf-8",
    )
    assert detect_pooling(load_model(str(legacy), device="cpu")) == "cls"


def test_detect_pooling_without_pooling_module(tiny_mean_model):
    model = load_model(tiny_mean_model, device="cpu")
    bare = SentenceTransformer(modules=[model[0]], device="cpu")
    with pytest.raises(ValueError, match="no Pooling module"):
        detect_pooling(bare)


@pytest.mark.slow
def test_detect_pooling_bundled_minilm_is_mean():
    assert detect_pooling(load_model(DEFAULT_MODEL, device="cpu")) == "mean"


# ------------------------------------------------------------------ forward pass


@pytest.mark.parametrize("mode", ["mean", "cls", "weightedmean", "lasttoken"])
def test_iter_forward_matches_encode(tiny_model_factory, mode):
    model = load_model(tiny_model_factory(pooling=mode, normalize=True), device="cpu")
    batches = list(iter_forward(model, TEXTS, batch_size=2))
    assert [len(b.embeddings) for b in batches] == [2, 2, 1]
    embeddings = _concat(batches, "embeddings")
    assert embeddings.dtype == torch.float32
    reference = model.encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(embeddings, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(encode(model, TEXTS, batch_size=2), reference.numpy(), atol=1e-5)
    # Normalize is applied after pooling: the last pooled layer, normalised, is the embedding.
    for batch in batches:
        torch.testing.assert_close(F.normalize(batch.layer_embeddings[-1], dim=-1), batch.embeddings, atol=1e-5, rtol=0)


def test_layer_embeddings_are_mean_pooled_hidden_states(tiny_mean_model):
    model = load_model(tiny_mean_model, device="cpu")
    (batch,) = iter_forward(model, TEXTS, batch_size=len(TEXTS))
    assert batch.layer_embeddings.shape == (TINY_LAYERS + 1, len(TEXTS), TINY_HIDDEN)
    # Last layer: pooled by hand from the token embeddings encode returns (padding stripped).
    token_embeddings = model.encode(TEXTS, output_value="token_embeddings")
    by_hand = torch.stack([tokens.mean(dim=0) for tokens in token_embeddings])
    torch.testing.assert_close(batch.layer_embeddings[-1], by_hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.layer_embeddings[-1], batch.embeddings, atol=1e-6, rtol=0)
    # Layer 0 is the embedding layer's output, pooled over the real tokens only.
    bert = transformer_of(model)
    features = model.preprocess(TEXTS)
    with torch.no_grad():
        embedded = bert.embeddings(input_ids=features["input_ids"], token_type_ids=features["token_type_ids"])
    mask = features["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(batch.layer_embeddings[0], (embedded * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.attention_mask, features["attention_mask"])


def test_attentions_are_softmax_over_real_tokens(tiny_mean_model):
    model = load_model(tiny_mean_model, device="cpu")
    (batch,) = iter_forward(model, TEXTS, batch_size=len(TEXTS))
    mask = batch.attention_mask
    seq_len = mask.shape[1]
    assert mask.sum(1).min() < seq_len  # the batch really is padded
    assert len(batch.attentions) == TINY_LAYERS
    for weights in batch.attentions:
        assert weights.shape == (len(TEXTS), TINY_HEADS, seq_len, seq_len)
        key_mask = mask[:, None, None, :].bool()
        torch.testing.assert_close(weights.masked_fill(~key_mask, 0).sum(-1), torch.ones(weights.shape[:-1]))
        assert weights.masked_fill(key_mask, 0).abs().max() < 1e-6

    # Layer 0 recomputed by hand: softmax(Q K^T / sqrt(d_head) + padding mask) from layer 0's input.
    bert = transformer_of(model)
    features = model.preprocess(TEXTS)
    self_attention = bert.encoder.layer[0].attention.self
    with torch.no_grad():
        hidden = bert.embeddings(input_ids=features["input_ids"], token_type_ids=features["token_type_ids"])
        head_dim = TINY_HIDDEN // TINY_HEADS

        def heads(x):
            return x.view(len(TEXTS), seq_len, TINY_HEADS, head_dim).transpose(1, 2)

        scores = heads(self_attention.query(hidden)) @ heads(self_attention.key(hidden)).transpose(-1, -2)
        scores = scores / math.sqrt(head_dim)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    torch.testing.assert_close(batch.attentions[0], scores.softmax(-1), atol=1e-5, rtol=0)


def test_iter_forward_restores_attention_implementation_and_mode(tiny_mean_model):
    model = load_model(tiny_mean_model, device="cpu")
    bert = transformer_of(model)
    before = bert.config._attn_implementation
    assert before != "eager"  # sdpa by default: the switch is really exercised
    model.train()
    model[1].eval()  # mixed modes must come back exactly
    for batch in iter_forward(model, TEXTS, batch_size=2):
        # Control is back with the caller between batches: nothing may be left switched.
        assert bert.config._attn_implementation == before
        assert model[0].training and not model[1].training
        assert batch.attentions is not None
    assert bert.config._attn_implementation == before
    assert not bert.config.output_attentions and not bert.config.output_hidden_states
    assert "forward" not in model[0].model.__dict__
    assert all(m.training for m in model[0].modules())
    assert not model[1].training


def test_iter_forward_restores_state_on_error(tiny_mean_model, monkeypatch):
    model = load_model(tiny_mean_model, device="cpu")
    bert = transformer_of(model)
    before = bert.config._attn_implementation
    model.train()

    def explode(features, **kwargs):
        raise RuntimeError("pooling failed")

    monkeypatch.setattr(model[1], "forward", explode)
    with pytest.raises(RuntimeError, match="pooling failed"):
        list(iter_forward(model, TEXTS))
    assert bert.config._attn_implementation == before
    assert not bert.config.output_attentions
    assert "forward" not in model[0].model.__dict__
    assert all(m.training for m in model[0].modules())


def test_iter_forward_without_internals(tiny_cls_model):
    model = load_model(tiny_cls_model, device="cpu")
    (batch,) = iter_forward(model, TEXTS, batch_size=8, hidden_states=False, attentions=False)
    assert batch.layer_embeddings is None and batch.attentions is None
    torch.testing.assert_close(batch.embeddings, model.encode(TEXTS, convert_to_tensor=True), atol=1e-5, rtol=0)


def test_encode_keeps_training_mode_and_handles_empty_input(tiny_mean_model):
    model = load_model(tiny_mean_model, device="cpu")
    model.train()
    assert encode(model, TEXTS).shape == (len(TEXTS), TINY_HIDDEN)
    assert model.training and model[0].model.training
    empty = encode(model, [])
    assert empty.shape == (0, TINY_HIDDEN) and empty.dtype == np.float32
    with pytest.raises(ValueError, match="list of strings"):
        encode(model, "a single string")


# ------------------------------------------------------------------ prompts


def test_prompts_from_config_apply_exactly_as_sentence_transformers(tiny_prompt_model):
    model = load_model(tiny_prompt_model, device="cpu")
    assert model_prompts(model) == {"query": "query: ", "document": "passage: "}
    assert apply_prompt(model, ["a b"], prompt_name="query") == ["query: a b"]
    assert apply_prompt(model, ["a b"], prompt_name="document") == ["passage: a b"]
    assert apply_prompt(model, ["a b"]) == ["a b"]

    for name in ("query", "document"):
        reference = model.encode(TEXTS, prompt_name=name, convert_to_tensor=True)
        prefixed = model.encode(apply_prompt(model, TEXTS, prompt_name=name), convert_to_tensor=True)
        torch.testing.assert_close(prefixed, reference, atol=1e-5, rtol=0)
        np.testing.assert_allclose(encode(model, TEXTS, prompt_name=name), reference.numpy(), atol=1e-5)
        forward = _concat(iter_forward(model, TEXTS, prompt_name=name, batch_size=2), "embeddings")
        torch.testing.assert_close(forward, reference, atol=1e-5, rtol=0)
    plain = model.encode(TEXTS, convert_to_tensor=True)
    assert not torch.allclose(plain, model.encode(TEXTS, prompt_name="query", convert_to_tensor=True), atol=1e-4)


def test_user_prompts_override_and_extend_config(tiny_prompt_model):
    model = load_model(tiny_prompt_model, device="cpu", prompts={"query": "search_query: ", "label": "topic: "})
    assert model_prompts(model) == {"query": "search_query: ", "document": "passage: ", "label": "topic: "}
    assert apply_prompt(model, ["x"], prompt_name="query") == ["search_query: x"]
    # An explicit prompt wins over a prompt name, as in SentenceTransformer.encode.
    assert apply_prompt(model, ["x"], prompt_name="query", prompt="custom: ") == ["custom: x"]
    np.testing.assert_allclose(
        encode(model, TEXTS, prompt="custom: "),
        model.encode(["custom: " + t for t in TEXTS]),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="not one of the model's prompts"):
        apply_prompt(model, ["x"], prompt_name="missing")


def test_default_prompt_name_applies_when_nothing_is_given(tiny_prompt_model):
    model = load_model(tiny_prompt_model, device="cpu")
    model.default_prompt_name = "query"
    assert apply_prompt(model, ["x"]) == ["query: x"]
    forward = _concat(iter_forward(model, TEXTS), "embeddings")
    torch.testing.assert_close(forward, model.encode(TEXTS, convert_to_tensor=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        forward, model.encode(["query: " + t for t in TEXTS], prompt="", convert_to_tensor=True), atol=1e-5, rtol=0
    )


def test_layer_pooling_honours_instructor_style_prompt_exclusion(tiny_model_factory):
    path = tiny_model_factory(pooling="mean", prompts={"query": "represent the question: "}, include_prompt=False)
    model = load_model(path, device="cpu")
    reference = model.encode(TEXTS, prompt_name="query", convert_to_tensor=True)
    batches = list(iter_forward(model, TEXTS, prompt_name="query", batch_size=2))
    torch.testing.assert_close(_concat(batches, "embeddings"), reference, atol=1e-5, rtol=0)
    pooled_last_layer = torch.cat([batch.layer_embeddings[-1] for batch in batches])
    torch.testing.assert_close(pooled_last_layer, reference, atol=1e-5, rtol=0)
    # By hand: the mean over the tokens after [CLS] + prompt tokens.
    prompt_length = len(model.tokenizer("represent the question: ")["input_ids"]) - 1  # minus [SEP]
    tokens = model.encode(TEXTS, prompt_name="query", output_value="token_embeddings")
    by_hand = torch.stack([t[prompt_length:].mean(dim=0) for t in tokens])
    torch.testing.assert_close(pooled_last_layer, by_hand, atol=1e-5, rtol=0)
    with_prompt = torch.stack([t.mean(dim=0) for t in tokens])
    assert not torch.allclose(pooled_last_layer, with_prompt, atol=1e-4)


# ------------------------------------------------------------------ LoRA


def test_lora_adapter_loads_and_changes_outputs(tiny_lora):
    base_path, adapter_path = tiny_lora
    base = load_model(base_path, device="cpu")
    adapted = load_model(base_path, device="cpu", adapter=adapter_path)
    assert not has_lora(base) and has_lora(adapted)
    assert not np.allclose(encode(base, TEXTS), encode(adapted, TEXTS), atol=1e-3)
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and trainable == set(_lora_parameters(adapted))


def test_merged_copy_matches_adapter_forward_and_original_still_trains(tiny_lora):
    base_path, adapter_path = tiny_lora
    model = load_model(base_path, device="cpu", adapter=adapter_path)
    model.to(torch.float32)
    unmerged = encode(model, TEXTS)
    unmerged_forward = _concat(iter_forward(model, TEXTS), "embeddings").numpy()

    merged = merged_copy(model)
    assert not has_lora(merged) and not _lora_parameters(merged)
    assert not getattr(transformer_of(merged), "_hf_peft_config_loaded", False)
    merged_embeddings = encode(merged, TEXTS)
    np.testing.assert_allclose(merged_embeddings, unmerged, atol=1e-5)
    np.testing.assert_allclose(merged_embeddings, unmerged_forward, atol=1e-5)
    # Merging really moved the base weights: W' = W + (alpha / r) B A.
    base = load_model(base_path, device="cpu")
    base_query = transformer_of(base).encoder.layer[0].attention.self.query.weight
    merged_query = transformer_of(merged).encoder.layer[0].attention.self.query.weight
    lora_query = transformer_of(model).encoder.layer[0].attention.self.query
    delta = lora_query.scaling["default"] * lora_query.lora_B["default"].weight @ lora_query.lora_A["default"].weight
    torch.testing.assert_close(merged_query, base_query + delta, atol=1e-6, rtol=0)

    # The original keeps its adapter and trains: one step moves the LoRA weights.
    assert has_lora(model)
    lora = _lora_parameters(model)
    before = {name: p.detach().clone() for name, p in lora.items()}
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    anchors = model(model.preprocess(TEXTS))["sentence_embedding"]
    positives = model(model.preprocess([t.upper() + " !" for t in TEXTS]))["sentence_embedding"]
    scores = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T * 20.0
    loss = F.cross_entropy(scores, torch.arange(len(TEXTS)))
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(before[name], p.detach()) for name, p in lora.items() if "lora_B" in name)
    # The inspection copy is independent of the training model.
    np.testing.assert_allclose(encode(merged, TEXTS), merged_embeddings, atol=0)


def test_merged_copy_of_adapters_loaded_by_sentence_transformers(tiny_lora):
    # Reference route, independent of load_model: ST's own load_adapter injects LoRA layers
    # into the BertModel (transformers' PeftAdapterMixin).
    base_path, adapter_path = tiny_lora
    injected = SentenceTransformer(base_path, device="cpu")
    injected.load_adapter(adapter_path)
    assert has_lora(injected) and type(injected[0].model).__name__ == "BertModel"
    model = load_model(base_path, device="cpu", adapter=adapter_path)
    assert type(model[0].model).__name__ == "PeftModel"
    assert type(transformer_of(model)).__name__ == "BertModel"
    reference = encode(injected, TEXTS)
    np.testing.assert_allclose(encode(model, TEXTS), reference, atol=1e-5)
    forward = _concat(iter_forward(injected, TEXTS), "embeddings").numpy()
    np.testing.assert_allclose(forward, reference, atol=1e-5)

    merged = merged_copy(injected)
    assert not has_lora(merged) and has_lora(injected)
    np.testing.assert_allclose(encode(merged, TEXTS), reference, atol=1e-5)


def test_adapter_model_saves_reloads_and_merged_copy_saves_full_weights(tiny_lora, tmp_path):
    base_path, adapter_path = tiny_lora
    model = load_model(base_path, device="cpu", adapter=adapter_path)
    reference = encode(model, TEXTS)
    model.save(str(tmp_path / "adapter-checkpoint"))
    assert (tmp_path / "adapter-checkpoint" / "adapter_config.json").is_file()
    reloaded = load_model(str(tmp_path / "adapter-checkpoint"), device="cpu")
    assert has_lora(reloaded)
    np.testing.assert_allclose(encode(reloaded, TEXTS), reference, atol=1e-5)

    merged_copy(model).save(str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = load_model(str(tmp_path / "merged"), device="cpu")
    assert not has_lora(merged)
    np.testing.assert_allclose(encode(merged, TEXTS), reference, atol=1e-5)


def test_add_lora_starts_as_a_no_op_and_trains_only_the_adapter(tiny_mean_model):
    model = load_model(tiny_mean_model, device="cpu")
    before = encode(model, TEXTS)
    add_lora(model, rank=2, alpha=4, target_modules=["query", "value"])
    assert has_lora(model)
    np.testing.assert_allclose(encode(model, TEXTS), before, atol=1e-6)  # B = 0 at init
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(_lora_parameters(model))
    assert len(trainable) == TINY_LAYERS * 2 * 2  # layers x (query, value) x (A, B)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        add_lora(model)


def test_merged_copy_of_injected_adapter(tiny_mean_model):
    # What ST's model.add_adapter does under the hood (transformers' PeftAdapterMixin.add_adapter):
    # inject LoRA layers into the live BertModel. transformers 5.24's add_adapter itself insists on
    # peft >= 0.22, so the injection is called directly here.
    from peft import LoraConfig, inject_adapter_in_model

    model = load_model(tiny_mean_model, device="cpu")
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], lora_dropout=0.0)
    inject_adapter_in_model(config, transformer_of(model))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in _lora_parameters(model).items():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    unmerged = encode(model, TEXTS)
    merged = merged_copy(model)
    assert has_lora(model) and not has_lora(merged)
    np.testing.assert_allclose(encode(merged, TEXTS), unmerged, atol=1e-5)
    assert not np.allclose(unmerged, encode(load_model(tiny_mean_model, device="cpu"), TEXTS), atol=1e-3)


def test_merged_copy_without_adapter_is_a_plain_copy(tiny_cls_model):
    model = load_model(tiny_cls_model, device="cpu")
    duplicate = merged_copy(model)
    assert duplicate is not model
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(model.parameters(), duplicate.parameters()))
    np.testing.assert_allclose(encode(duplicate, TEXTS), encode(model, TEXTS), atol=0)


# ------------------------------------------------------------------ cross-encoder


def test_cross_encoder_loads_and_scores_like_its_transformer(tiny_cross_encoder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cross_encoder = load_cross_encoder(tiny_cross_encoder, device="cpu")
    assert isinstance(cross_encoder, CrossEncoder)
    pairs = [("what is a cat", "the cat sat on the mat"), ("hello", "protein folding in water")]
    scores = cross_encoder.predict(pairs, activation_fn=torch.nn.Identity())
    tokenizer = AutoTokenizer.from_pretrained(tiny_cross_encoder)
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder).eval()
    with torch.no_grad():
        inputs = tokenizer([q for q, _ in pairs], [d for _, d in pairs], padding=True, return_tensors="pt")
        logits = classifier(**inputs).logits.squeeze(-1)
    np.testing.assert_allclose(scores, logits.numpy(), atol=1e-5)


def test_cross_encoder_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="missing-ce"):
        load_cross_encoder(str(tmp_path / "missing-ce"))
    with pytest.raises(ValueError, match="no bundled cross-encoder"):
        load_cross_encoder(DEFAULT_MODEL)


# ------------------------------------------------------------------ builder and real model


def test_build_tiny_model_is_deterministic_and_small(tmp_path):
    first = build_tiny_model(tmp_path / "a", pooling="cls", seed=7)
    second = build_tiny_model(tmp_path / "b", pooling="cls", seed=7)
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(first) for f in files)
    assert size < 2_000_000
    np.testing.assert_array_equal(
        encode(load_model(first, device="cpu"), TEXTS), encode(load_model(second, device="cpu"), TEXTS)
    )


@pytest.mark.slow
def test_iter_forward_matches_encode_on_minilm():
    model = load_model(DEFAULT_MODEL, device="cpu")
    texts = TEXTS[:4]
    (batch,) = iter_forward(model, texts, batch_size=len(texts))
    torch.testing.assert_close(batch.embeddings, model.encode(texts, convert_to_tensor=True), atol=1e-5, rtol=0)
    seq_len = batch.attention_mask.shape[1]
    assert batch.layer_embeddings.shape == (7, len(texts), 384)
    assert len(batch.attentions) == 6 and batch.attentions[0].shape == (len(texts), 12, seq_len, seq_len)
    # MiniLM normalises after mean pooling.
    torch.testing.assert_close(F.normalize(batch.layer_embeddings[-1], dim=-1), batch.embeddings, atol=1e-5, rtol=0)
    assert transformer_of(model).config._attn_implementation != "eager"


def test_import_aquin_monitor_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, aquin_monitor; "
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'peft') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    assert encoders.DEFAULT_MODEL == "default"
