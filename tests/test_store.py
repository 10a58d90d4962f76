"""The embedding store (issue 21 item 1): shards + manifest, atomic per shard, resumable, memory-mapped.

Every read is compared with the array that was written (float16 shards with numpy's own float16
rounding of it); faults are provoked, not assumed: a shard not in the manifest, a shard replaced
after writing, a disk that fills up mid-shard, a writer interrupted between two shards.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket

import numpy as np
import pytest

from aquin_monitor.rows import RowSource, iter_blocks
from aquin_monitor.store import (
    EmbeddingStore,
    StoreError,
    StoreMismatchError,
    StoreSpaceError,
    StoreWriter,
    remove_dead_temporaries,
    write_store,
)

IDS = [f"doc-{i}" for i in range(23)] + ["$$", "<script>alert(1)</script>", "ünï\ncode"]


def rows(n: int = len(IDS), d: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def write(folder, array, ids=IDS, **options):
    settings = {"model_fingerprint": "model-a", "corpus_hash": "corpus-a", "dtype": "float32", "shard_rows": 7}
    settings.update(options)
    return write_store(folder, np.array_split(array, 4), ids, **settings)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_by_blocks_across_shard_boundaries(tmp_path, dtype):
    array = rows()
    write(tmp_path / "s", array, dtype=dtype)
    store = EmbeddingStore(tmp_path / "s")
    expected = array.astype(dtype).astype(np.float32)
    assert isinstance(store, RowSource)
    assert len(store) == len(IDS) and store.dimension == 5 and store.ids == IDS
    assert store.shard_bounds == [(0, 7), (7, 14), (14, 21), (21, 26)]
    assert store.manifest.dtype == dtype and store.manifest.model_fingerprint == "model-a"
    for start, stop in [(0, 26), (3, 19), (6, 8), (7, 7), (25, 26)]:
        block = store.read(start, stop)
        assert block.dtype == np.float32 and block.flags.owndata
        np.testing.assert_array_equal(block, expected[start:stop])
    np.testing.assert_array_equal(np.concatenate([b for _, b in iter_blocks(store, 4)]), expected)
    with pytest.raises(IndexError):
        store.read(20, 27)
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == [".writer.lock", "ids.jsonl", "manifest.json"] + [
        f"shard-0000{i}.npy" for i in range(4)
    ]  # no temporaries
    assert isinstance(np.load(tmp_path / "s" / "shard-00000.npy", mmap_mode="r"), np.memmap)


def test_a_shard_the_manifest_does_not_list_is_never_read_and_resume_replaces_it(tmp_path):
    array = rows()
    folder = tmp_path / "s"
    writer = StoreWriter(folder, model_fingerprint="m", corpus_hash="c", count=len(IDS), ids=IDS, shard_rows=10)
    writer.append(array[:10])
    writer.close()  # as when its process ends
    np.save(
        folder / "shard-00001.npy", np.full((10, 5), 99, dtype=np.float32)
    )  # a kill after the rename, before the manifest
    with pytest.raises(StoreError, match="unfinished store"):
        EmbeddingStore(folder)
    partial = EmbeddingStore(folder, allow_incomplete=True)
    assert len(partial) == 10 and not (partial.read(0, 10) == 99).any()
    write_store(folder, [array], IDS, model_fingerprint="m", corpus_hash="c", shard_rows=10)
    np.testing.assert_array_equal(EmbeddingStore(folder).read(0, len(IDS)), array)


def test_resume_writes_only_what_is_missing(tmp_path):
    """write_store on an unfinished store skips the rows of its complete shards: those files stay as they were."""
    array = rows()
    folder = tmp_path / "s"
    writer = StoreWriter(folder, model_fingerprint="m", corpus_hash="c", count=len(IDS), ids=IDS, shard_rows=6)
    writer.append(array[:6])
    writer.append(array[6:12])
    writer.close()  # as when its process ends
    before = {name: (folder / name).stat().st_ino for name in ("shard-00000.npy", "shard-00001.npy")}
    reopened = StoreWriter(folder, model_fingerprint="m", corpus_hash="c", count=len(IDS), ids=IDS, shard_rows=6)
    assert reopened.rows_written == 12
    reopened.close()
    blocks = (array[start : start + 5] for start in range(0, len(array), 5))  # boundaries unlike the shards'
    write_store(folder, blocks, IDS, model_fingerprint="m", corpus_hash="c", shard_rows=6)
    assert {name: (folder / name).stat().st_ino for name in before} == before  # not rewritten
    store = EmbeddingStore(folder)
    assert store.shard_bounds == [(0, 6), (6, 12), (12, 18), (18, 24), (24, 26)]
    np.testing.assert_array_equal(store.read(0, len(IDS)), array)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("model_fingerprint", "model-b", "the model files differ (model-a… in the store, model-b… now)"),
        ("corpus_hash", "corpus-b", "the corpus file differs (corpus-a… in the store, corpus-b… now)"),
        ("dtype", "float16", "the dtype differs ('float32' in the store, 'float16' now)"),
    ],
)
def test_a_store_for_other_inputs_is_refused_naming_what_differs(tmp_path, field, value, named):
    write(tmp_path / "s", rows())
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    with pytest.raises(StoreMismatchError, match=re.escape(named)):
        StoreWriter(
            tmp_path / "s",
            **{
                "model_fingerprint": "model-a",
                "corpus_hash": "corpus-a",
                "count": len(IDS),
                "ids": IDS,
                "dtype": "float32",
                field: value,
            },
        )
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before  # nothing written


def test_a_shard_replaced_after_writing_is_refused_not_read(tmp_path):
    write(tmp_path / "s", rows())
    np.save(tmp_path / "s" / "shard-00001.npy", rows(7, 10))  # right rows, wrong width
    with pytest.raises(
        StoreError, match=r"shard-00001.npy: holds float32 \(7, 10\), the manifest says float32 \(7, 5\)"
    ):
        EmbeddingStore(tmp_path / "s")
    (tmp_path / "s" / "shard-00002.npy").write_bytes(b"\x93NUMPY cut")
    np.save(tmp_path / "s" / "shard-00001.npy", rows(7, 5))
    with pytest.raises(StoreError, match="shard-00002.npy: unreadable shard"):
        EmbeddingStore(tmp_path / "s")


def test_a_full_disk_leaves_no_partial_shard_and_a_rerun_resumes(tmp_path, monkeypatch):
    array = rows()
    folder = tmp_path / "s"
    writer = StoreWriter(folder, model_fingerprint="m", corpus_hash="c", count=len(IDS), ids=IDS, shard_rows=10)
    writer.append(array[:10])
    real_write = np.lib.format.write_array

    def disk_full(handle, data, **kwargs):
        handle.write(b"\x93NUMPY" + b"\0" * 100)  # part of the shard reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", disk_full)
    with pytest.raises(StoreSpaceError, match=r"shard-00001.npy: no space left on device; nothing partial was kept"):
        writer.append(array[10:20])
    writer.close()
    monkeypatch.setattr(np.lib.format, "write_array", real_write)
    assert sorted(p.name for p in folder.iterdir()) == [".writer.lock", "ids.jsonl", "manifest.json", "shard-00000.npy"]
    assert len(EmbeddingStore(folder, allow_incomplete=True)) == 10
    write_store(folder, [array], IDS, model_fingerprint="m", corpus_hash="c", shard_rows=10)
    np.testing.assert_array_equal(EmbeddingStore(folder).read(0, len(IDS)), array)


def test_non_finite_rows_are_refused_before_anything_is_written(tmp_path):
    array = rows()
    array[12, 3] = np.nan
    with pytest.raises(StoreError, match="row 12 is not finite"):
        write(tmp_path / "s", array)
    assert len(EmbeddingStore(tmp_path / "s", allow_incomplete=True)) == 7


def test_malformed_manifest_is_one_clear_error(tmp_path):
    write(tmp_path / "s", rows())
    manifest = tmp_path / "s" / "manifest.json"
    record = json.loads(manifest.read_text())
    record["shards"][0]["rows"] = -1
    manifest.write_text(json.dumps(record))
    with pytest.raises(StoreError, match="malformed manifest"):
        EmbeddingStore(tmp_path / "s")
    record["shards"][0] = {"file": "../../etc/passwd", "rows": 7}
    manifest.write_text(json.dumps(record))
    with pytest.raises(StoreError, match="is not a file of the store"):
        EmbeddingStore(tmp_path / "s")
    manifest.write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        EmbeddingStore(tmp_path / "s")


def test_only_dead_processes_temporaries_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    host = socket.gethostname()
    names = {
        "dead": f".shard-00001.npy-tmp-{host}-{dead}-ab12",
        "mine": f".shard-00002.npy-tmp-{host}-{os.getpid()}-cd34",
        "elsewhere": f".shard-00003.npy-tmp-other-host-{dead}-ef56",
        "dead-folder": f".key-tmp-{host}-{dead}-0a0b",
        "user": "notes.tmp",
    }
    for label, name in names.items():
        (tmp_path / name).mkdir() if label == "dead-folder" else (tmp_path / name).write_bytes(b"x")
    removed = remove_dead_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["dead-folder"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["mine"], names["elsewhere"], names["user"]])


def test_a_second_writer_of_the_same_store_is_refused_until_the_first_closes(tmp_path):
    first = StoreWriter(tmp_path / "s", model_fingerprint="m", corpus_hash="c", count=len(IDS), ids=IDS, shard_rows=10)
    with pytest.raises(StoreError, match="another process is writing this store now"):
        StoreWriter(tmp_path / "s", model_fingerprint="m", corpus_hash="c", count=len(IDS), ids=IDS, shard_rows=10)
    first.append(rows()[:10])
    first.close()
    second = StoreWriter(tmp_path / "s", model_fingerprint="m", corpus_hash="c", count=len(IDS), ids=IDS, shard_rows=10)
    assert second.rows_written == 10
