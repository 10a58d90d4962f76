"""The on-disk embedding cache: hits skip the model, any change of model files or texts misses,
writes are atomic, a broken or read-only cache never breaks a result; `eval` reuses it."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from aquin_monitor.embedding_cache import (
    EmbeddingCache,
    EmbeddingCacheWarning,
    encode_cached,
    model_fingerprint,
)


def fake_encode(_model, texts):
    """A stand-in model: each text's embedding is a function of the text alone."""
    return np.array([[len(t), sum(map(ord, t)) % 97, t.count("a")] for t in texts], dtype=np.float32)


class Loader:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return object()


def test_hit_skips_loading_and_changes_miss(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    load = Loader()
    texts = ["a cat", "$$ <script>", "ünïcode"]
    first, model = encode_cached(load, "fp", texts, encode=fake_encode, cache=cache)
    assert model is not None and load.calls == 1
    np.testing.assert_array_equal(first, fake_encode(None, texts))
    again, model = encode_cached(load, "fp", texts, encode=fake_encode, cache=cache)
    assert model is None and load.calls == 1
    np.testing.assert_array_equal(again, first)
    encode_cached(load, "fp", texts[:2] + ["a dog"], encode=fake_encode, cache=cache)
    encode_cached(load, "other model", texts, encode=fake_encode, cache=cache)
    encode_cached(load, "fp", texts, options={"prompt_name": "query"}, encode=fake_encode, cache=cache)
    assert load.calls == 4
    # texts are delimited: ["ab", "c"] and ["a", "bc"] are different keys
    assert cache.key("fp", ["ab", "c"], {}) != cache.key("fp", ["a", "bc"], {})


def test_no_cache_neither_reads_nor_writes(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    load = Loader()
    encode_cached(load, "fp", ["x"], encode=fake_encode, cache=cache, enabled=False)
    assert not (tmp_path / "c").exists()
    encode_cached(load, "fp", ["x"], encode=fake_encode, cache=cache)
    encode_cached(load, "fp", ["x"], encode=fake_encode, cache=cache, enabled=False)
    assert load.calls == 3


def test_corrupt_entry_is_a_miss_and_gets_rewritten(tmp_path):
    cache = EmbeddingCache(tmp_path)
    load = Loader()
    encode_cached(load, "fp", ["x", "y"], encode=fake_encode, cache=cache)
    (entry,) = tmp_path.glob("*/shard-*.npy")
    entry.write_bytes(entry.read_bytes()[:140])  # a write cut short (not possible through put, simulated)
    with pytest.warns(EmbeddingCacheWarning, match="recomputing"):
        result, _ = encode_cached(load, "fp", ["x", "y"], encode=fake_encode, cache=cache)
    np.testing.assert_array_equal(result, fake_encode(None, ["x", "y"]))
    assert load.calls == 2
    assert not list(tmp_path.glob(".*-tmp-*"))


def test_unwritable_cache_folder_still_gives_the_result(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # the cache folder cannot be created under a file, even by root
    result, _ = encode_cached(Loader(), "fp", ["x"], encode=fake_encode, cache=EmbeddingCache(blocker / "cache"))
    np.testing.assert_array_equal(result, fake_encode(None, ["x"]))


def test_fingerprint_follows_the_model_files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"1234")
    first = model_fingerprint(model)
    assert model_fingerprint(model) == first
    (model / "weights.bin").write_bytes(b"12345")
    assert model_fingerprint(model) != first
    second = model_fingerprint(model)
    later = time.time() + 10
    os.utime(model / "weights.bin", (later, later))
    assert model_fingerprint(model) == second  # touched, same bytes: the same model (keyed on content)
    (model / "extra.json").write_text("{}")
    assert model_fingerprint(model) != second
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert model_fingerprint(model, adapter) != model_fingerprint(model)


def test_embed_corpus_equals_direct_encoding(tiny_mean_model, tmp_path):
    from aquin_monitor.encoders import encode, load_model
    from aquin_monitor.sae.embeddings import embed_corpus

    texts = [f"the cat number {i}" for i in range(7)]
    cached = embed_corpus(tiny_mean_model, texts, chunk_size=3, cache_dir=tmp_path, show_progress=False)
    direct = encode(load_model(tiny_mean_model, device="cpu"), texts)
    np.testing.assert_allclose(cached, direct, atol=1e-5)
    assert len(list(tmp_path.glob("*/manifest.json"))) == 3  # chunks 3 + 3 + 1, one store each


def test_second_eval_reads_the_cache_without_loading_the_model(tiny_mean_model, tmp_path, monkeypatch, capsys):
    from aquin_monitor import cli, encoders

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"query": f"q {i} cat", "document": f"d {i} the cat"}) + "\n" for i in range(6))
    )
    monkeypatch.setenv("AQUIN_MONITOR_CACHE", str(tmp_path / "cache"))
    assert cli.main(["eval", tiny_mean_model, "--pairs", str(pairs), "--json", "-", "--no-progress"]) == 0
    first = json.loads(capsys.readouterr().out)

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although its embeddings are cached")

    monkeypatch.setattr(encoders, "load_model", refuse)
    assert cli.main(["eval", tiny_mean_model, "--pairs", str(pairs), "--json", "-", "--no-progress"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["metrics"] == first["metrics"] and second["prompts"] == first["prompts"]
    with pytest.raises(AssertionError, match="was loaded"):
        cli.main(["eval", tiny_mean_model, "--pairs", str(pairs), "--no-cache", "--no-progress"])


def test_cached_model_arrays_survive_a_cut_entry_and_load_once(tmp_path):
    """Several arrays per entry (a snapshot's probe pass): a truncated .npz is a miss, recomputed and
    rewritten; the model is loaded once, on the first miss, and never on a hit."""
    from aquin_monitor.embedding_cache import CachedModel

    load = Loader()
    calls = []

    def compute(model):
        calls.append(model)
        return {
            "embeddings": fake_encode(None, ["x", "yy"]),
            "layers": np.arange(12, dtype=np.float32).reshape(2, 2, 3),
        }

    handle = CachedModel(load, "fp", cache=EmbeddingCache(tmp_path))
    first = handle.arrays(["x", "yy"], {"kind": "probe_pass"}, compute)
    again = CachedModel(load, "fp", cache=EmbeddingCache(tmp_path)).arrays(["x", "yy"], {"kind": "probe_pass"}, compute)
    assert load.calls == 1 and len(calls) == 1
    assert first.keys() == again.keys() and all(np.array_equal(first[k], again[k]) for k in first)
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])  # a write cut short
    repaired = CachedModel(load, "fp", cache=EmbeddingCache(tmp_path)).arrays(
        ["x", "yy"], {"kind": "probe_pass"}, compute
    )
    assert load.calls == 2 and all(np.array_equal(first[k], repaired[k]) for k in first)
    assert (
        CachedModel(load, "fp", cache=EmbeddingCache(tmp_path))
        .arrays(["x", "yy"], {"kind": "probe_pass"}, compute)
        .keys()
        == first.keys()
    )
    assert load.calls == 2 and not list(tmp_path.glob("*.tmp"))
    # a mapped handle (LoRA merged on load) loads through the original, once
    mapped = CachedModel(load, "fp2", cache=EmbeddingCache(tmp_path)).map(lambda m: ("merged", m))
    assert mapped.model[0] == "merged" and mapped.model is mapped.model and load.calls == 3


def test_an_interrupted_cache_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Ctrl-C while an entry is written: the interruption goes on, no entry and no temporary file stay."""
    cache = EmbeddingCache(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.put_arrays("k", {"embeddings": np.ones((2, 3), dtype=np.float32)})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [] and cache.get_arrays("k") is None
