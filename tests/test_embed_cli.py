"""`aquin-monitor embed` (issue 21 item 1): the store's rows are the model's own encodings, a store for
other inputs is refused before any model loads, a kill -9 is resumed without encoding anything twice,
and sentence-transformers' multi-process pool gives the single-process rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aquin_monitor import cli, encoders
from aquin_monitor.store import EmbeddingStore

TEXTS = [f"the cat number {i} sat on the mat" if i % 2 else f"stock {i} prices fell" for i in range(11)]


@pytest.fixture()
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    lines = [{"_id": f"d{i}", "title": "T" if i == 3 else "", "text": text} for i, text in enumerate(TEXTS)]
    lines[5]["_id"] = "<script>$$"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def expected_texts() -> list[str]:
    return [f"T {t}" if i == 3 else t for i, t in enumerate(TEXTS)]


def embed(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["embed", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def refuse_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(encoders, "load_model", refuse)


def test_embed_writes_the_models_rows_and_ids(capsys, tmp_path, corpus, tiny_mean_model):
    code, out, err = embed(
        capsys,
        tiny_mean_model,
        "--corpus",
        corpus,
        "--out",
        tmp_path / "s",
        "--shard-rows",
        "4",
        "--json",
        "-",
        "--no-progress",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result == {
        "command": "embed",
        "out": str(tmp_path / "s"),
        "rows": 11,
        "dimension": 32,
        "dtype": "float32",
        "shards": 3,
        "encoded": 11,
    }
    store = EmbeddingStore(tmp_path / "s")
    direct = encoders.encode(encoders.load_model(tiny_mean_model, device="cpu"), expected_texts())
    np.testing.assert_allclose(store.read(0, len(store)), direct, atol=1e-5)
    assert store.ids == [f"d{i}" if i != 5 else "<script>$$" for i in range(11)]
    assert store.shard_bounds == [(0, 4), (4, 8), (8, 11)]
    # a second run finds the store complete and loads nothing
    code, _, err = embed(capsys, tiny_mean_model, "--corpus", corpus, "--out", tmp_path / "s", "--no-progress")
    assert code == 0 and "already complete" in err


def test_float16_store_and_progress_bar_in_documents(capsys, tmp_path, corpus, tiny_mean_model):
    code, _, err = embed(capsys, tiny_mean_model, "--corpus", corpus, "--out", tmp_path / "s", "--dtype", "float16")
    assert code == 0, err
    assert "Embedding corpus" in err and "doc/s" in err and "11/11" in err
    store = EmbeddingStore(tmp_path / "s")
    direct = encoders.encode(encoders.load_model(tiny_mean_model, device="cpu"), expected_texts())
    assert store.manifest.dtype == "float16" and np.load(tmp_path / "s" / "shard-00000.npy").dtype == np.float16
    np.testing.assert_allclose(store.read(0, 11), direct.astype(np.float16).astype(np.float32), atol=2e-3)


def test_a_store_of_another_model_or_corpus_exits_2_before_any_model_loads(
    capsys, tmp_path, corpus, tiny_mean_model, tiny_cls_model, monkeypatch
):
    out = tmp_path / "s"
    assert embed(capsys, tiny_mean_model, "--corpus", corpus, "--out", out, "--no-progress")[0] == 0
    refuse_loading(monkeypatch)
    code, _, err = embed(capsys, tiny_cls_model, "--corpus", corpus, "--out", out, "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{out}: this store was written for other inputs: the model files differ" in err
    corpus.write_text(corpus.read_text() + json.dumps({"_id": "new", "text": "one more"}) + "\n")
    code, _, err = embed(capsys, tiny_mean_model, "--corpus", corpus, "--out", out, "--no-progress")
    assert (
        code == 2
        and "the corpus file differs" in err
        and "the number of texts differs (11 in the store, 12 now)" in err
    )
    code, _, err = embed(
        capsys, tiny_mean_model, "--corpus", corpus, "--out", out, "--dtype", "float16", "--no-progress"
    )
    assert code == 2 and "the dtype differs" in err


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        ("bad-line", [], "corpus.jsonl:2: malformed JSON"),
        ("duplicate", [], "duplicate id 'd0' (first on line 1)"),
        ("folder-with-files", [], "the folder holds other files and no embedding store"),
        ("", ["--devices", "cpu,nonsense"], "--devices: 'nonsense' is not a torch device"),
        ("", ["--devices", "cpu,cpu", "--device", "cpu"], "--device and --devices: give one of them"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_any_load(
    capsys, tmp_path, tiny_mean_model, monkeypatch, setup, argv, message
):
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        '{"_id": "d0", "text": "a"}\n'
        + {"bad-line": "{oops\n", "duplicate": '{"_id": "d0", "text": "b"}\n'}.get(setup, "")
    )
    out = tmp_path / "out"
    if setup == "folder-with-files":
        out.mkdir()
        (out / "metrics.jsonl").write_text("{}\n")
    refuse_loading(monkeypatch)
    code, _, err = embed(capsys, tiny_mean_model, "--corpus", path, "--out", out, "--no-progress", *argv)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (out / "manifest.json").exists()


def test_a_full_disk_is_one_clear_line_and_the_rerun_resumes(capsys, tmp_path, corpus, tiny_mean_model, monkeypatch):
    import errno

    real_write = np.lib.format.write_array
    calls = []

    def full_on_the_second_shard(handle, data, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(handle, data, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", full_on_the_second_shard)
    code, _, err = embed(
        capsys, tiny_mean_model, "--corpus", corpus, "--out", tmp_path / "s", "--shard-rows", "4", "--no-progress"
    )
    assert code == 2 and "shard-00001.npy: no space left on device; nothing partial was kept" in err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        ".writer.lock",
        "ids.jsonl",
        "manifest.json",
        "shard-00000.npy",
    ]
    monkeypatch.setattr(np.lib.format, "write_array", real_write)
    code, out, err = embed(
        capsys, tiny_mean_model, "--corpus", corpus, "--out", tmp_path / "s", "--no-progress", "--json", "-"
    )
    assert code == 0 and json.loads(out)["encoded"] == 7 and "resuming after row 4 of 11" in err


KILLER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from aquin_monitor import cli
    real_write = np.lib.format.write_array
    written = []

    def write_then_die(handle, data, **kwargs):
        written.append(1)
        if len(written) == int(sys.argv[1]):  # kill -9 in the middle of this shard's write
            handle.write(b"half a shard")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(handle, data, **kwargs)

    np.lib.format.write_array = write_then_die
    sys.exit(cli.main(sys.argv[2:]))
""")


def test_kill_9_mid_shard_then_rerun_resumes_and_encodes_nothing_twice(
    capsys, tmp_path, corpus, tiny_mean_model, monkeypatch
):
    out = tmp_path / "s"
    argv = ["embed", tiny_mean_model, "--corpus", str(corpus), "--out", str(out), "--shard-rows", "3", "--no-progress"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(cli.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "3", *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".shard-00002.npy-tmp-")]
    assert len(leftovers) == 1  # the cut shard, under its temporary name
    assert len(EmbeddingStore(out, allow_incomplete=True)) == 6
    encoded = []
    real_encode = encoders.load_model

    def counting_load(*args, **kwargs):
        model = real_encode(*args, **kwargs)
        original = model.encode
        model.encode = lambda texts, **kw: encoded.extend(texts) or original(texts, **kw)
        return model

    monkeypatch.setattr(encoders, "load_model", counting_load)
    code, _, err = embed(capsys, *argv[1:])
    assert code == 0, err
    assert encoded == expected_texts()[6:]  # the two complete shards were not encoded again
    assert sorted(p.name for p in out.iterdir()) == [".writer.lock", "ids.jsonl", "manifest.json"] + [
        f"shard-0000{i}.npy" for i in range(4)
    ]
    monkeypatch.undo()
    direct = encoders.encode(encoders.load_model(tiny_mean_model, device="cpu"), expected_texts())
    np.testing.assert_allclose(EmbeddingStore(out).read(0, 11), direct, atol=1e-5)


def test_two_cpu_processes_through_the_pool_give_the_single_process_rows(capsys, tmp_path, corpus, tiny_mean_model):
    code, _, err = embed(capsys, tiny_mean_model, "--corpus", corpus, "--out", tmp_path / "one", "--no-progress")
    assert code == 0, err
    code, _, err = embed(
        capsys,
        tiny_mean_model,
        "--corpus",
        corpus,
        "--out",
        tmp_path / "two",
        "--devices",
        "cpu,cpu",
        "--shard-rows",
        "6",
        "--no-progress",
    )
    assert code == 0, err
    one, two = EmbeddingStore(tmp_path / "one"), EmbeddingStore(tmp_path / "two")
    assert two.shard_bounds == [(0, 6), (6, 11)] and two.ids == one.ids
    np.testing.assert_allclose(two.read(0, 11), one.read(0, 11), atol=1e-5)
