"""Issue 24 items 11-13: the embedding cache can no longer serve wrong numbers.

11. an entry of the wrong width, dtype or row count is recomputed, with one warning;
12. a checkpoint rewritten with its sizes and mtimes preserved (``cp -p``) is a new key;
13. a killed writer's temporary is removed by the next write once its process is gone.
Each test reproduces the defect on the code before the fix (it failed there) and checks the fix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from aquin_monitor import embedding_cache
from aquin_monitor.embedding_cache import (
    EmbeddingCache,
    EmbeddingCacheWarning,
    encode_cached,
    file_content_hash,
    model_fingerprint,
)


def fake_encode(_model, texts):
    return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)


class Loader:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return object()


# ------------------------------------------------------------------------------------------
# 11. entries checked against the model's dimension, dtype and rows


@pytest.mark.parametrize(
    ("planted", "problem"),
    [
        (np.ones((3, 10), dtype=np.float32), "holds 3 x 10 float32, expected 3 x 3 float32"),
        (np.ones((2, 3), dtype=np.float32), "holds 2 x 3 float32, expected 3 x 3 float32"),
    ],
)
def test_an_entry_of_the_wrong_shape_is_recomputed_with_one_warning(tmp_path, planted, problem):
    cache = EmbeddingCache(tmp_path)
    texts = ["a cat", "a dog", "x"]
    key = cache.key("fp", texts, {})
    cache.put(key, planted)
    load = Loader()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, model = encode_cached(load, "fp", texts, encode=fake_encode, cache=cache, dimension=3)
    assert [str(w.message) for w in caught if w.category is EmbeddingCacheWarning] == [
        f"embedding cache entry {tmp_path / key}: {problem}; recomputing it"
    ]
    np.testing.assert_array_equal(result, fake_encode(None, texts))
    assert model is not None and load.calls == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry is a clean hit
        again, model = encode_cached(load, "fp", texts, encode=fake_encode, cache=cache, dimension=3)
    assert model is None and np.array_equal(again, result)


def test_an_entry_stored_as_float16_is_recomputed(tmp_path):
    from aquin_monitor.store import write_store

    cache = EmbeddingCache(tmp_path)
    key = cache.key("fp", ["a", "b"], {})
    write_store(
        cache.path(key), [np.ones((2, 3))], None, count=2, model_fingerprint="fp", corpus_hash=key, dtype="float16"
    )
    with pytest.warns(EmbeddingCacheWarning, match="holds 2 x 3 float16, expected 2 x 3 float32"):
        result, _ = encode_cached(Loader(), "fp", ["a", "b"], encode=fake_encode, cache=cache, dimension=3)
    np.testing.assert_array_equal(result, fake_encode(None, ["a", "b"]))


def test_eval_recomputes_a_planted_entry_of_the_wrong_width(tmp_path, monkeypatch, capsys, tiny_mean_model):
    """The issue's case: a document entry with the right rows and 10 columns gave NDCG@10 0.141 instead of 0.938."""
    from aquin_monitor import cli

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"query": f"q {i} cat", "document": f"d {i} the cat {'x' * i}"}) + "\n" for i in range(8))
    )
    monkeypatch.setenv("AQUIN_MONITOR_CACHE", str(tmp_path / "cache"))
    argv = ["eval", tiny_mean_model, "--pairs", str(pairs), "--json", "-", "--no-progress"]
    assert cli.main(argv) == 0
    truth = json.loads(capsys.readouterr().out)["metrics"]
    cache = EmbeddingCache(tmp_path / "cache" / "embeddings")
    entries = [p for p in cache.directory.iterdir() if (p / "manifest.json").is_file()]
    (documents,) = [p for p in entries if not json.loads((p / "manifest.json").read_text())["meta"]]
    cache.put(documents.name, np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32))
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["metrics"] == pytest.approx(truth, abs=1e-6)
    # the CLI shows the cache's EmbeddingCacheWarning as one line of its own (issue 24's one-line warnings)
    warned = [line for line in captured.err.splitlines() if "holds 8 x 10 float32, expected 8 x 32 float32" in line]
    assert len(warned) == 1 and warned[0].startswith("aquin-monitor: warning: ")


# ------------------------------------------------------------------------------------------
# 12. checkpoints keyed on their content


def rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """What ``cp -p``, ``rsync -t`` or a restored backup do: other bytes, same size, same mtime."""
    before = path.stat()
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_checkpoint_rewritten_with_size_and_mtime_preserved_is_a_new_key(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights-1")
    first = model_fingerprint(model, memo_dir=tmp_path / "memo")
    rewrite_keeping_size_and_mtime(model / "model.safetensors", b"weights-2")
    assert model_fingerprint(model, memo_dir=tmp_path / "memo") != first
    rewrite_keeping_size_and_mtime(model / "model.safetensors", b"weights-1")
    assert model_fingerprint(model, memo_dir=tmp_path / "memo") == first  # content, not history


def test_the_content_hash_is_read_once_per_file_version(tmp_path, monkeypatch):
    import hashlib

    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(1 << 16))
    reads = []
    real = embedding_cache.file_sha256
    monkeypatch.setattr(embedding_cache, "file_sha256", lambda p: reads.append(p) or real(p))
    digest = file_content_hash(path, tmp_path / "memo")
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() and len(reads) == 1
    assert file_content_hash(path, tmp_path / "memo") == digest and len(reads) == 1
    monkeypatch.setattr(embedding_cache, "_CONTENT_HASHES", {})  # a new process: the memo file answers
    assert file_content_hash(path, tmp_path / "memo") == digest and len(reads) == 1
    os.utime(path)  # touched: hashed again, same digest
    assert file_content_hash(path, tmp_path / "memo") == digest and len(reads) == 2


def test_inspect_recomputes_a_checkpoint_rewritten_in_place(capsys, tmp_path, monkeypatch, tiny_mean_model):
    """The issue's case through the CLI: weights changed, sizes and mtimes kept (NDCG 0.9383 cached vs 0.9418 true)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from aquin_monitor import cli

    monkeypatch.setenv("AQUIN_MONITOR_CACHE", str(tmp_path / "cache"))
    probe_file = tmp_path / "probe.jsonl"
    probe_file.write_text(
        "".join(
            json.dumps({"text": t}) + "\n"
            for t in ["a cat sat", "dogs bark", "stock prices fell", "the mat", "cats and dogs", "prices rose"]
        )
    )
    model = Path(shutil.copytree(tiny_mean_model, tmp_path / "model"))
    argv = ["inspect", str(model), "--probe", str(probe_file), "--json", "-", "--no-umap", "--no-progress"]
    assert cli.main(argv) == 0
    before = json.loads(capsys.readouterr().out)["metrics"]
    weights = next(model.rglob("*.safetensors"))
    tensors = load_file(weights)
    name = next(n for n in tensors if "word_embeddings" in n)
    tensors[name] = tensors[name] * 3.0
    rewritten = tmp_path / "rewritten.safetensors"
    save_file(tensors, rewritten, metadata={"format": "pt"})
    rewrite_keeping_size_and_mtime(weights, rewritten.read_bytes())
    assert cli.main(argv) == 0
    after = json.loads(capsys.readouterr().out)["metrics"]
    assert cli.main([*argv, "--no-cache"]) == 0
    truth = json.loads(capsys.readouterr().out)["metrics"]
    assert after == pytest.approx(truth, abs=1e-6)
    assert after["geometry/anisotropy"] != pytest.approx(before["geometry/anisotropy"], abs=1e-6)


# ------------------------------------------------------------------------------------------
# 13. a killed writer's temporaries


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from aquin_monitor.embedding_cache import EmbeddingCache
    real_write = np.lib.format.write_array

    def die(handle, data, **kwargs):
        handle.write(b"half an entry")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    np.lib.format.write_array = die
    EmbeddingCache(sys.argv[1]).put("k" * 64, np.ones((4, 3), dtype=np.float32))
""")


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(embedding_cache.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (orphan,) = [p for p in tmp_path.iterdir() if "-tmp-" in p.name]
    assert orphan.name.startswith(f".{'k' * 64}-tmp-")
    cache = EmbeddingCache(tmp_path)
    assert cache.get("k" * 64) is None
    encode_cached(Loader(), "fp", ["x"], encode=fake_encode, cache=cache)
    assert not orphan.exists()
    assert [p.name for p in tmp_path.iterdir() if "-tmp-" in p.name] == []
