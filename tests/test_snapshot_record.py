"""Issue 16, points 7 and 8: re-saving a snapshot never loses it, and snapshots are readable by others.

A kill is a real one: a child process re-saves snapshot 4 and dies (``os._exit``, no cleanup, no
``finally``) right between the two renames; the parent then checks what the next start sees.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from aquin_monitor import snapshot_record as snapshot_module
from aquin_monitor.snapshot_record import Snapshot, list_snapshots, recover_snapshots

ROOT = Path(__file__).parents[1]


def make(step: int, value: float, tag: str = "checkpoint") -> Snapshot:
    return Snapshot(
        step=step,
        tag=tag,
        model="tiny",
        metrics={"geometry/anisotropy": value},
        arrays={"embeddings": np.full((3, 2), value, np.float32)},
    )


def run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env, capture_output=True, text=True
    )


# an embedded child script (run with python -c), kept verbatim as one string
KILLED_BETWEEN_RENAMES = """
    import os, sys
    import numpy as np
    from aquin_monitor import snapshot_record as m
    calls = []
    real = os.replace
    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:   # snapshots/4 has just been moved to .4-old; the new one is not in place yet
            os._exit(137)
        return real(src, dst)
    m.os.replace = dying_replace
    m.Snapshot(step=4, tag="checkpoint", model="tiny", metrics={"geometry/anisotropy": 0.9}, arrays={"embeddings": np.zeros((3, 2), np.float32)}).save(sys.argv[1])
"""  # noqa: E501


def test_kill_between_the_renames_is_recovered_on_the_next_start(tmp_path):
    make(0, 0.1, "base").save(tmp_path)
    make(4, 0.4).save(tmp_path)
    child = run_child(KILLED_BETWEEN_RENAMES, tmp_path)
    assert child.returncode == 137
    left = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert "4" not in left and ".4-old" in left and any(n.startswith(".4-tmp-") for n in left)  # the gap of the issue

    with pytest.warns(RuntimeWarning, match="snapshot 4 was being re-saved"):
        folders = list_snapshots(tmp_path)  # what a resume calls first
    assert [p.name for p in folders] == ["0", "4"]
    assert Snapshot.load(folders[1]).metrics["geometry/anisotropy"] == pytest.approx(0.4)  # the earlier one, whole
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["0", "4"]  # temp folder of the dead run gone


def test_failed_second_rename_puts_the_old_snapshot_back(tmp_path, monkeypatch):
    make(4, 0.4).save(tmp_path)
    real = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("EIO")
        return real(src, dst)

    monkeypatch.setattr(snapshot_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="EIO"):
        make(4, 0.9).save(tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["4"]
    assert Snapshot.load(tmp_path / "snapshots" / "4").metrics["geometry/anisotropy"] == pytest.approx(0.4)


def test_completed_replace_with_a_leftover_old_copy_keeps_the_new_one(tmp_path):
    make(4, 0.4).save(tmp_path)
    (tmp_path / "snapshots" / ".4-old").mkdir()  # the final rmtree was interrupted
    (tmp_path / "snapshots" / ".4-abcd_123").mkdir()  # a temp folder of an earlier version (mkdtemp)
    with pytest.warns(RuntimeWarning, match="repaired .* after a killed save: removed") as caught:
        repairs = recover_snapshots(tmp_path)
    assert len(repairs) == 2 and len(caught) == 1  # one warning for both repairs
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["4"]
    assert Snapshot.load(tmp_path / "snapshots" / "4").metrics["geometry/anisotropy"] == pytest.approx(0.4)


def test_temp_folder_of_a_live_run_is_left_alone(tmp_path):
    make(4, 0.4).save(tmp_path)
    import socket

    live = tmp_path / "snapshots" / f".8-tmp-{socket.gethostname()}-{os.getpid()}-00ff"
    live.mkdir()
    recover_snapshots(tmp_path)
    assert live.is_dir()


def test_nothing_is_repaired_while_another_live_process_holds_the_folder(tmp_path):
    make(4, 0.4).save(tmp_path)
    os.replace(tmp_path / "snapshots" / "4", tmp_path / "snapshots" / ".4-old")  # as if mid-replacement
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom aquin_monitor.runlock import RunLock\n"
            "RunLock(sys.argv[1]).acquire(); print('ready', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert recover_snapshots(tmp_path) == [] and (tmp_path / "snapshots" / ".4-old").is_dir()
    finally:
        holder.kill()
        holder.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [p.name for p in list_snapshots(tmp_path)] == ["4"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_snapshot_folders_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        folder = make(4, 0.4).save(tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    for name in ("snapshot.json", "arrays.npz"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o666 & ~umask


def test_snapshot_is_built_by_keyword_only():
    with pytest.raises(TypeError):
        Snapshot(0, "base", "m")  # which {} would be the metrics? keywords say
    snap = Snapshot(step=0, tag="base", model="m", arrays={"embeddings": np.zeros((3, 2))})
    assert snap.metrics == {} and snap.details == {} and snap.arrays["embeddings"].shape == (3, 2)
