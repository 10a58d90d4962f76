"""Issue 16, point 4: one run per run folder, held by an OS lock across processes.

The other process is a real one (``subprocess``): it takes the folder through the same public
API a training does (:class:`JsonlSink`), writes a line, then waits, exits, or is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from aquin_monitor.runlock import LOCK_NAME, RunFolderLocked, RunLock, RunLockWarning, lock_holder
from aquin_monitor.sinks import JsonlSink, read_jsonl

HOLDER = textwrap.dedent(
    """
    import sys, time
    from aquin_monitor.sinks import JsonlSink
    sink = JsonlSink(sys.argv[1])
    sink.log_scalars({"contrastive/loss": 1.0}, step=0)
    print("ready", flush=True)
    if sys.argv[2] == "close":
        sink.close()
    elif sys.argv[2] == "hold":
        time.sleep(120)
    """
)


def start_holder(run_dir: Path, mode: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir), mode], stdout=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def folder_state(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_second_live_run_fails_fast_naming_folder_and_pid_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir, "hold")
    try:
        before = folder_state(run_dir)
        with pytest.raises(RunFolderLocked) as caught:
            JsonlSink(run_dir)
        message = str(caught.value)
        assert str(run_dir) in message and f"pid {holder.pid}" in message
        assert caught.value.holder["pid"] == holder.pid
        with pytest.raises(RunFolderLocked):
            RunLock(run_dir).acquire()
        assert folder_state(run_dir) == before  # nothing archived, nothing appended, nothing created
        assert not (run_dir / "previous").exists()
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_holder_is_taken_over_with_a_warning(tmp_path):
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir, "hold")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock_holder(run_dir)["pid"] == holder.pid  # the dead process's record is still in the file
    with pytest.warns(RunLockWarning, match=f"no longer running.*pid {holder.pid}"):
        sink = JsonlSink(run_dir)
    assert lock_holder(run_dir)["pid"] == os.getpid()
    sink.log_scalars({"contrastive/loss": 0.5}, step=1)
    sink.close()
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1]
    assert lock_holder(run_dir) is None  # a clean release leaves nobody to name


def test_lock_released_by_a_finished_run_is_taken_without_warning(tmp_path):
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir, "close")
    holder.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunLockWarning)
        with RunLock(run_dir) as lock:
            assert lock.held and (run_dir / LOCK_NAME).is_file()
    assert not lock.held


def test_a_live_holder_blocks_a_child_process_too(tmp_path):
    # the lock belongs to the process: a second process is refused even while this one is idle
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        code = (
            "import sys\nfrom aquin_monitor.runlock import RunLock, RunFolderLocked\n"
            "try:\n    RunLock(sys.argv[1]).acquire()\nexcept RunFolderLocked as e:\n    print(e)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, env=env, check=True
        )
        assert f"pid {os.getpid()}" in out.stdout and "is in use by another run" in out.stdout


def test_same_process_claim_takes_over_an_unclosed_earlier_run(tmp_path):
    # a training that crashed in a notebook never closed its sink: the next attempt must not be blocked
    first = JsonlSink(tmp_path)
    with pytest.warns(RunLockWarning, match="earlier run of this same process"):
        second = JsonlSink(tmp_path)
    assert second.lock.held and not first.lock.held
    first.close()  # closing the superseded sink does not release the new owner's lock
    assert second.lock.held and lock_holder(tmp_path)["pid"] == os.getpid()
    second.close()
    assert lock_holder(tmp_path) is None


def test_unwritable_folder_is_an_os_error_naming_the_lock_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    run_dir = tmp_path / "ro"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=LOCK_NAME):
            JsonlSink(run_dir)
        assert list(run_dir.iterdir()) == []
    finally:
        run_dir.chmod(0o700)
