"""The one atomic writer (aquin_monitor.atomic): its file-mode policy, what an exception or a kill leaves,
and that every writer of the package goes through it."""

from __future__ import annotations

import ast
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aquin_monitor.atomic import abandoned_temporary, atomic_directory, atomic_path, atomic_write_text, temporary_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "aquin_monitor"


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_umask_mode_even_when_the_writer_recreates_them_0600(tmp_path, umask):
    atomic_write_text(tmp_path / "a.txt", "x")
    assert mode(tmp_path / "a.txt") == 0o666 & ~umask
    with atomic_path(tmp_path / "b.bin") as tmp:  # as safetensors does: a new file, private
        tmp.unlink()
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))
    assert mode(tmp_path / "b.bin") == 0o666 & ~umask
    with atomic_directory(tmp_path / "folder") as folder:
        (folder / "f").write_text("y")
    assert mode(tmp_path / "folder") == 0o777 & ~umask


def test_an_exception_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.html"
    atomic_write_text(target, "old", fsync=True)
    for error in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_path(target, fsync=True) as tmp:
                tmp.write_text("half")
                raise error
        assert target.read_text() == "old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_a_failed_folder_write_keeps_the_old_folder(tmp_path):
    with atomic_directory(tmp_path / "4") as tmp:
        (tmp / "snapshot.json").write_text("old")
    with pytest.raises(ValueError):
        with atomic_directory(tmp_path / "4") as tmp:
            (tmp / "snapshot.json").write_text("new")
            raise ValueError("NaN in the record")
    assert (tmp_path / "4" / "snapshot.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4"]


KILLED_WHILE_WRITING = """
    import os, sys
    from aquin_monitor.atomic import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_text("half")
        os._exit(137)
"""


def test_a_kill_mid_write_leaves_the_target_alone_and_a_temporary_known_as_abandoned(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_WHILE_WRITING), str(target)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert child.returncode == 137, child.stderr
    assert target.read_text() == "old"
    left = [p.name for p in tmp_path.iterdir() if p.name != "metrics.json"]
    assert len(left) == 1 and abandoned_temporary(left[0]) == "metrics.json"  # its process is dead
    assert abandoned_temporary(temporary_name("metrics.json")) is None  # this process is alive
    assert abandoned_temporary(f".metrics.json-tmp-{socket.gethostname()}x-1-00") is None  # another host's: unknown


def test_report_and_embedding_cache_follow_the_umask(tmp_path, umask):
    """Before the one writer: report.html was always 0644 and cache entries 0600 (mkstemp); an entry is now a
    one-shard store folder (the embedding store), its folder and files under the same policy."""
    from aquin_monitor.embedding_cache import EmbeddingCache
    from aquin_monitor.report import write_report

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "contrastive/loss": 2.0}\n')
    assert mode(write_report(tmp_path / "run")) == 0o666 & ~umask
    cache = EmbeddingCache(tmp_path / "cache")
    cache.put("k", np.ones((2, 3), np.float32), meta={"n": 2})
    entries = list((tmp_path / "cache").iterdir())
    assert [p.is_dir() for p in entries] == [True] and mode(entries[0]) == 0o777 & ~umask
    assert {mode(p) for p in entries[0].iterdir()} == {0o666 & ~umask}
    np.testing.assert_array_equal(cache.get("k"), np.ones((2, 3), np.float32))


def test_an_interrupted_cache_write_leaves_no_temporary(tmp_path):
    from aquin_monitor.embedding_cache import EmbeddingCache

    class Interrupting:
        def __array__(self, *args, **kwargs):
            raise KeyboardInterrupt

    cache = EmbeddingCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.put_arrays("k", {"a": Interrupting()})
    assert list(tmp_path.iterdir()) == []


WRITE_CALLS = {"replace", "rename", "mkstemp", "mkdtemp", "NamedTemporaryFile"}
#: Renames that move finished files or folders (not writes): a run's files moved aside, a set-aside snapshot put back.
MOVES = {"sinks/jsonl.py": 1, "snapshot_record.py": 1}


def test_every_writer_goes_through_the_atomic_module():
    """No module but atomic.py makes temporary files or renames a write into place (os.replace, mkstemp,
    NamedTemporaryFile), except the listed moves; before, 7 modules did it with 4 file-mode policies."""
    found: dict[str, int] = {}
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        if name == "atomic.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in WRITE_CALLS:
                if isinstance(node.value, ast.Name) and node.value.id in {"os", "tempfile"}:
                    found[name] = found.get(name, 0) + 1
    assert found == MOVES
