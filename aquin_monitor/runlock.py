"""One run per run folder: an OS file lock held for as long as the run writes there.

Two trainings writing into one folder corrupt each other (the second moves the first's files to
``previous/`` while the first keeps writing; snapshots of one replace the other's). A run therefore
holds :func:`fcntl.flock` on ``<run_dir>/.aquin-monitor.lock`` while it runs; the file says who
holds it (pid, host, start time, command line). A second process asking for the same folder gets
:class:`RunFolderLocked`, naming the folder and the holder, before it changes anything.

The kernel drops the lock when its process ends, however it ends (``kill -9``, a crash, a power
cut on a local disk), so a lock left by a dead process is never in the way: the next run takes it
over and warns which process left it. Within one process the latest claim wins (a training that
crashed in a notebook and was never closed must not block the next attempt); that is warned too.
On a file system without ``flock`` (some network mounts) or a platform without :mod:`fcntl`, the
run goes on unlocked with one warning: monitoring never stops training.

:class:`aquin_monitor.sinks.JsonlSink` takes this lock when it is created and releases it when it
is closed; the CLI takes it while ``inspect --run-dir`` writes into a folder.

>>> import tempfile
>>> run_dir = tempfile.mkdtemp()
>>> with RunLock(run_dir) as lock:
...     lock_holder(run_dir)["pid"] == os.getpid()
True
>>> lock_holder(run_dir) is None  # released: the file stays, empty
True
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]  # checked before every use

__all__ = ["LOCK_NAME", "RunFolderLocked", "RunLock", "RunLockWarning", "held_elsewhere", "lock_holder"]

logger = logging.getLogger(__name__)

#: Name of the lock file inside a run folder.
LOCK_NAME = ".aquin-monitor.lock"

# Locks this process holds, by lock-file path: a second claim from this same process takes over.
_HELD: dict[str, RunLock] = {}


class RunFolderLocked(RuntimeError):
    """Another live process is writing into this run folder; ``holder`` says which (may be None)."""

    def __init__(self, run_dir: str | os.PathLike, holder: dict[str, Any] | None) -> None:
        self.run_dir = Path(run_dir)
        self.holder = holder
        super().__init__(
            f"run folder {str(self.run_dir)!r} is in use by another run ({describe_holder(holder)}); "
            "wait for it to finish or choose another output folder"
        )


class RunLockWarning(RuntimeWarning):
    """A stale lock was taken over, or the folder could not be locked and the run goes on unlocked."""


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host gpu-1, started 2026-12-01 15:02:11`` from a lock file's record.

    >>> describe_holder({"pid": 123, "host": "gpu-1", "started": "2026-12-01 15:02:11"})
    'pid 123 on host gpu-1, started 2026-12-01 15:02:11'
    >>> describe_holder(None)
    'pid unknown: it is starting up'
    """
    if not holder:
        return "pid unknown: it is starting up"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"


def lock_holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What the lock file of ``run_dir`` says about its last holder; None when there is none.

    The record stays in the file while the lock is held and is emptied on a clean release, so a
    record in an unlocked file names a process that died holding it.
    """
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return _parse_holder(text)


def held_elsewhere(run_dir: str | os.PathLike) -> bool:
    """Whether another live process holds the lock of ``run_dir`` now (never creates the lock file).

    False when this process holds it, when nobody does, and where locks are unavailable.
    """
    path = Path(run_dir) / LOCK_NAME
    earlier = _HELD.get(os.path.realpath(path))
    if (earlier is not None and earlier.held) or fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # drops the probe's own lock, if it got one
    return False


def _parse_holder(text: str) -> dict[str, Any] | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class RunLock:
    """An exclusive, non-blocking OS lock on ``<run_dir>/.aquin-monitor.lock`` (see the module docstring).

    Args:
        run_dir: the run folder (created if missing).

    :meth:`acquire` raises :class:`RunFolderLocked` when another live process holds the folder;
    :meth:`release` (or leaving the ``with`` block) gives it back. Acquiring a lock already held
    by this object does nothing.

    Example::

        lock = RunLock("runs/my-run").acquire()   # RunFolderLocked if another run writes there
        try:
            ...  # train, write files
        finally:
            lock.release()
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._pid: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None and self._pid == os.getpid()

    def acquire(self) -> RunLock:
        """Take the lock (see the class docstring); returns ``self``."""
        if self.held:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        earlier = _HELD.get(key)
        if earlier is not None and earlier.held:
            self._take_over_from(earlier, key)
            return self
        if fcntl is None:
            _warn(f"aquin-monitor: cannot lock {self.run_dir} on this platform (no fcntl); the run goes on unlocked")
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every file
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse_holder(_read_all(fd))
            os.close(fd)
            raise RunFolderLocked(self.run_dir, holder) from None
        except OSError as exc:  # a file system without flock
            os.close(fd)
            _warn(f"aquin-monitor: cannot lock {self.run_dir} ({exc}); the run goes on unlocked")
            return self
        stale = _parse_holder(_read_all(fd))
        if stale is not None:
            _warn(
                f"aquin-monitor: {self.run_dir} was locked by a run that is no longer running "
                f"({describe_holder(stale)}); this run takes it over"
            )
        self._fd, self._pid = fd, os.getpid()
        self._write_holder()
        _HELD[key] = self
        return self

    def _take_over_from(self, earlier: RunLock, key: str) -> None:
        _warn(
            f"aquin-monitor: {self.run_dir} is still claimed by an earlier run of this same process that was "
            "never closed (e.g. a training that crashed in a notebook); this run takes it over"
        )
        self._fd, self._pid = earlier._fd, earlier._pid
        earlier._fd = earlier._pid = None
        self._write_holder()
        _HELD[key] = self

    def _write_holder(self) -> None:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:500],
        }
        data = json.dumps(record).encode("utf-8")
        assert self._fd is not None  # called right after the lock was taken
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Give the lock back (the lock file stays, emptied). Does nothing when not held."""
        if not self.held:
            return
        fd, self._fd, self._pid = self._fd, None, None
        assert fd is not None  # held
        _HELD.pop(os.path.realpath(self.path), None)
        try:
            os.ftruncate(fd, 0)  # an empty file: nobody to name as a stale holder
        except OSError:
            logger.debug("could not empty %s", self.path, exc_info=True)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def _read_all(fd: int) -> str:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, RunLockWarning, stacklevel=3)
