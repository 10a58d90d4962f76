"""The one atomic writer: a file or folder is written under a temporary name beside its target, then renamed.

A reader sees the old content or the new, never half of either; an exception or Ctrl-C while writing
removes the temporary and keeps the old content. Every file the project writes goes through here,
with one permission policy: **the mode the process umask gives a new file** (``0o666 & ~umask``;
folders ``0o777 & ~umask``), like ``open(path, "w")`` would, so a teammate or a TensorBoard server
can read a run folder when the umask allows it. ``tempfile.mkstemp`` would give ``0o600``; writers that
recreate the file (safetensors, matplotlib) are set back to the policy before the rename.

Temporary names are ``.<name>-tmp-<host>-<pid>-<token>``: :func:`abandoned_temporary` tells those of a
dead process on this host (a ``kill -9`` mid-write), so folders can be tidied later.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> atomic_write_text(folder / "a.txt", "new")
>>> try:
...     with atomic_path(folder / "a.txt") as tmp:
...         _ = tmp.write_text("half")
...         raise KeyboardInterrupt
... except KeyboardInterrupt:
...     pass
>>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
('new', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "abandoned_temporary",
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "process_alive",
    "set_aside_name",
    "temporary_name",
]

_TEMPORARY = re.compile(r"^\.(?P<target>.+)-tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]+$")


def temporary_name(target_name: str) -> str:
    """The temporary name a write of ``target_name`` uses in the same folder.

    >>> name = temporary_name("report.html")
    >>> name.startswith(".report.html-tmp-") and str(os.getpid()) in name
    True
    """
    return f".{target_name}-tmp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def set_aside_name(target_name: str) -> str:
    """Where :func:`atomic_directory` keeps the old folder while the new one is renamed in: ``.<name>-old``."""
    return f".{target_name}-old"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a process of another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def abandoned_temporary(name: str) -> str | None:
    """The target name when ``name`` is a temporary of a process that died on this host, else None.

    >>> abandoned_temporary(temporary_name("a.txt")) is None  # this process: alive
    True
    >>> abandoned_temporary(f".a.txt-tmp-{socket.gethostname()}-999999999-00ff")
    'a.txt'
    >>> abandoned_temporary("a.txt") is None
    True
    """
    match = _TEMPORARY.match(name)
    if match is None or match["host"] != socket.gethostname() or process_alive(int(match["pid"])):
        return None
    return match["target"]


def _create_with_umask_mode(path: Path) -> int:
    """Create the empty file ``path`` (exclusively) and return the mode the umask gave it."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
    try:
        return stat.S_IMODE(os.fstat(handle).st_mode)
    finally:
        os.close(handle)


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield an empty temporary file beside ``target`` to write; when the block ends normally it becomes
    ``target`` (umask mode), else it is removed and ``target`` is left as it was.

    ``fsync=True`` also forces the bytes and the rename to disk before returning (a power cut then
    leaves the old file or the new one, not an empty one). The folder must exist.
    """
    target = Path(target)
    tmp = target.with_name(temporary_name(target.name))
    mode = _create_with_umask_mode(tmp)
    try:
        yield tmp
        os.chmod(tmp, mode)  # a writer that replaced the file (safetensors) may have left 0o600
        if fsync:
            _fsync_path(tmp)
        os.replace(tmp, target)
        if fsync:
            with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
                _fsync_path(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(target: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically (see :func:`atomic_path`)."""
    atomic_write_bytes(target, text.encode("utf-8"), fsync=fsync)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``target`` to fill; when the block ends normally it becomes ``target``.

    An existing ``target`` is renamed to :func:`set_aside_name` first and removed once the new folder
    is in place (put back if that rename fails), so a kill between the two renames leaves the old
    folder under ``.<name>-old`` for the owner to restore. On an exception the new folder is removed.
    The folder gets ``0o777 & ~umask`` (``tempfile.mkdtemp`` would give ``0o700``).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with atomic_directory(root / "4") as tmp:
    ...     _ = (tmp / "x.json").write_text("{}")
    >>> sorted(p.name for p in root.iterdir()), sorted(p.name for p in (root / "4").iterdir())
    (['4'], ['x.json'])
    """
    target = Path(target)
    tmp = target.with_name(temporary_name(target.name))
    tmp.mkdir()
    try:
        yield tmp
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.with_name(set_aside_name(final.name))
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)  # put the old folder back rather than leave a gap
        raise
    shutil.rmtree(old, ignore_errors=True)
