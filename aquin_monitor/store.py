"""The embedding store: a corpus's embeddings on disk, in shards, read back by memory map.

A corpus of 10M documents has 15 GB of 384-d float32 embeddings: more than one process should
hold, and hours of encoding that a crash must not throw away. The store keeps them as

- ``shard-00000.npy``, ``shard-00001.npy``, ...: float16 or float32 ``[rows, dimension]`` arrays
  (numpy's ``.npy`` format, read with ``numpy.load(mmap_mode="r")``: nothing is read until asked);
- ``ids.jsonl``: the text ids in row order, one JSON string a line, written once before any shard;
- ``manifest.json``: the model's file fingerprint, the corpus file's hash, the number of rows the
  finished store holds, the dimension, the dtype, and the list of shards written so far.

Writes are atomic shard by shard: a shard is written under a temporary name
(``.shard-00003.npy-tmp-<host>-<pid>-<hex>``, :mod:`aquin_monitor.atomic`'s names), flushed to disk and renamed into
place, and only then is the manifest rewritten (itself through a temporary name and a rename) to list it. A shard that
the manifest does not list is never read, so a kill at any point leaves a store that reopens with
every listed shard whole; :class:`StoreWriter` resumes after the last listed shard. Temporary
files of processes that are no longer running are removed when a store is opened for writing.

:class:`EmbeddingStore` is a :class:`~aquin_monitor.rows.RowSource`: SAE training, feature
statistics and search read it a block of rows at a time and never hold the corpus.

Example::

    >>> import numpy as np, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    >>> manifest = write_store(folder, [rows[:3], rows[3:]], ["a", "b", "c", "d", "e"], model_fingerprint="m",
    ...                        corpus_hash="c", dtype="float32", shard_rows=2)
    >>> store = EmbeddingStore(folder)
    >>> len(store), store.dimension, store.shard_bounds
    (5, 2, [(0, 2), (2, 4), (4, 5)])
    >>> store.read(1, 4).tolist(), store.ids[:2]
    ([[2.0, 3.0], [4.0, 5.0], [6.0, 7.0]], ['a', 'b'])
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .atomic import abandoned_temporary, atomic_path, temporary_name

__all__ = [
    "EmbeddingStore",
    "ShardRecord",
    "StoreError",
    "StoreManifest",
    "StoreMismatchError",
    "StoreSpaceError",
    "StoreWriter",
    "remove_dead_temporaries",
    "temporary_path",
    "write_store",
]

STORE_FORMAT = "aquin-monitor-embedding-store/1"
MANIFEST_NAME = "manifest.json"
IDS_NAME = "ids.jsonl"
DTYPES = ("float16", "float32")


class StoreError(ValueError):
    """A store that cannot be used as asked (unreadable manifest, a shard of the wrong shape, unfinished)."""


class StoreMismatchError(StoreError):
    """A store written for another model, corpus or dtype than the one asked for."""


class StoreSpaceError(OSError):
    """The disk filled up while a shard or the manifest was written (nothing partial is kept)."""


@dataclasses.dataclass(frozen=True)
class ShardRecord:
    """One complete shard: its file name (in the store's folder) and its number of rows."""

    file: str
    rows: int


@dataclasses.dataclass(frozen=True)
class StoreManifest:
    """What a store holds and for which model and corpus (``manifest.json``).

    Attributes:
        model_fingerprint: :func:`aquin_monitor.embedding_cache.model_fingerprint` of the model's files.
        corpus_hash: hash of the corpus file's bytes (or another key of the texts, for cache entries).
        count: rows of the finished store (one per text).
        dimension: columns; None until the first shard is written.
        dtype: ``"float16"`` or ``"float32"``, the dtype of every shard.
        shard_rows: rows per shard (the last one may hold fewer).
        shards: the complete shards, in row order.
        has_ids: whether ``ids.jsonl`` holds the text ids (else the ids are the positions ``"0"``, ``"1"``, ...).
        meta: free-form JSON facts (prompt name, corpus file name, ...).
    """

    model_fingerprint: str
    corpus_hash: str
    count: int
    dimension: int | None
    dtype: str
    shard_rows: int
    shards: tuple[ShardRecord, ...] = ()
    has_ids: bool = True
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def rows_written(self) -> int:
        """Rows in complete shards."""
        return sum(shard.rows for shard in self.shards)

    @property
    def complete(self) -> bool:
        return self.rows_written == self.count

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["shards"] = [dataclasses.asdict(shard) for shard in self.shards]
        return {"format": STORE_FORMAT, **record}

    @classmethod
    def from_json(cls, record: Any, source: str | os.PathLike) -> StoreManifest:
        """The manifest in ``record``; :class:`StoreError` naming ``source`` and the field when it is malformed."""
        if not isinstance(record, dict) or record.get("format") != STORE_FORMAT:
            raise StoreError(f"{source}: not an embedding store manifest (format {STORE_FORMAT!r} expected)")
        try:
            shards = tuple(ShardRecord(str(s["file"]), _count(s["rows"], "shards[].rows")) for s in record["shards"])
            manifest = cls(
                model_fingerprint=str(record["model_fingerprint"]),
                corpus_hash=str(record["corpus_hash"]),
                count=_count(record["count"], "count"),
                dimension=None if record["dimension"] is None else _count(record["dimension"], "dimension"),
                dtype=str(record["dtype"]),
                shard_rows=_count(record["shard_rows"], "shard_rows"),
                shards=shards,
                has_ids=bool(record.get("has_ids", True)),
                meta=dict(record.get("meta") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{source}: malformed manifest ({type(exc).__name__}: {exc})") from None
        if manifest.dtype not in DTYPES:
            raise StoreError(f"{source}: dtype {manifest.dtype!r} is not one of {', '.join(DTYPES)}")
        if manifest.rows_written > manifest.count:
            raise StoreError(
                f"{source}: shards hold {manifest.rows_written} rows, more than the {manifest.count} of the corpus"
            )
        return manifest


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
    return value


def read_manifest(directory: str | os.PathLike) -> StoreManifest | None:
    """The manifest of the store in ``directory``, None when it has none; :class:`StoreError` if unreadable."""
    path = Path(directory) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        raise StoreError(f"{path}: not valid JSON") from None
    return StoreManifest.from_json(record, path)


# --------------------------------------------------------------------------------------------
# Reading


class EmbeddingStore:
    """A finished store opened for reading: a :class:`~aquin_monitor.rows.RowSource` over its shards.

    Every shard is checked against the manifest (rows, dimension, dtype: its ``.npy`` header) when
    the store opens, so a shard replaced or cut after writing is refused with a :class:`StoreError`
    naming it, never read as wrong numbers. Reads go through memory maps
    (``numpy.load(mmap_mode="r")``), at most :attr:`MAPPED_SHARDS` kept open: a pass over the whole
    store keeps a bounded number of mapped pages resident, whatever its size.

    Args:
        directory: the store's folder.
        allow_incomplete: open a store whose writing has not finished (its complete shards only);
            by default such a store is refused.

    ``read(start, stop)`` returns float32 rows (float16 shards are converted).
    """

    def __init__(self, directory: str | os.PathLike, *, allow_incomplete: bool = False) -> None:
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        if manifest is None:
            raise StoreError(f"{self.directory}: no embedding store here (no {MANIFEST_NAME})")
        if not manifest.complete and not allow_incomplete:
            raise StoreError(
                f"{self.directory}: unfinished store ({manifest.rows_written:,} of {manifest.count:,} rows); "
                "rerun `aquin-monitor embed` with the same arguments to finish it"
            )
        self.manifest = manifest
        self._mapped: dict[int, np.ndarray] = {}  # shard index -> its memory map, the most recent last
        for shard in manifest.shards:
            self._open_shard(shard)
        self._starts = [0]
        for shard in manifest.shards:
            self._starts.append(self._starts[-1] + shard.rows)
        self._ids: list[str] | None = None

    def _open_shard(self, shard: ShardRecord) -> np.ndarray:
        path = self.directory / shard.file
        if Path(shard.file).name != shard.file:
            raise StoreError(f"{self.directory / MANIFEST_NAME}: shard name {shard.file!r} is not a file of the store")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise StoreError(f"{path}: unreadable shard ({exc})") from None
        expected = (shard.rows, self.manifest.dimension)
        if array.shape != expected or array.dtype != np.dtype(self.manifest.dtype):
            raise StoreError(
                f"{path}: holds {array.dtype} {array.shape}, the manifest says {self.manifest.dtype} {expected}"
            )
        return array

    MAPPED_SHARDS = 2

    def _shard(self, index: int) -> np.ndarray:
        """The memory map of shard ``index``; the least recently used map beyond :attr:`MAPPED_SHARDS` is closed."""
        mapped = self._mapped.pop(index, None)
        if mapped is None:
            mapped = self._open_shard(self.manifest.shards[index])
        self._mapped[index] = mapped
        while len(self._mapped) > self.MAPPED_SHARDS:
            del self._mapped[next(iter(self._mapped))]
        return mapped

    @property
    def dimension(self) -> int:
        return int(self.manifest.dimension or 0)

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def shard_bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` rows of each shard, in order."""
        return list(zip(self._starts[:-1], self._starts[1:], strict=True))

    @property
    def ids(self) -> list[str]:
        """The text ids in row order (read from ``ids.jsonl`` on first use)."""
        if self._ids is None:
            self._ids = read_ids(self.directory, self.manifest)[: len(self)]
        return self._ids

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start .. stop-1`` as a new float32 array."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"store: [{start}, {stop}) is outside [0, {len(self)})")
        out = np.empty((stop - start, self.dimension), dtype=np.float32)
        shard = bisect.bisect_right(self._starts, start) - 1
        row = start
        while row < stop:
            first = self._starts[shard]
            end = min(stop, self._starts[shard + 1])
            out[row - start : end - start] = self._shard(shard)[row - first : end - first]
            row, shard = end, shard + 1
        return out


def read_ids(directory: str | os.PathLike, manifest: StoreManifest) -> list[str]:
    """The ids of a store: ``ids.jsonl`` (checked to hold ``manifest.count`` strings), or positions."""
    if not manifest.has_ids:
        return [str(i) for i in range(manifest.count)]
    path = Path(directory) / IDS_NAME
    try:
        with open(path, encoding="utf-8") as handle:
            ids = [json.loads(line) for line in handle]
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable ids ({exc})") from None
    if len(ids) != manifest.count or not all(isinstance(i, str) for i in ids):
        raise StoreError(f"{path}: expected {manifest.count} string ids, got {len(ids)} lines")
    return ids


# --------------------------------------------------------------------------------------------
# Writing


def temporary_path(final: Path) -> Path:
    """The house temporary beside ``final`` (:func:`aquin_monitor.atomic.temporary_name`: host and pid in it)."""
    return final.with_name(temporary_name(final.name))


def remove_dead_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporaries (files or folders) that processes now dead left in ``directory``.

    Told by :func:`aquin_monitor.atomic.abandoned_temporary`: a temporary of another machine (shared
    file system) or of a live process is left alone. Returns what was removed; nothing is raised (a
    folder that cannot be listed or cleaned is left).
    """
    removed: list[Path] = []
    try:
        children = list(Path(directory).iterdir())
    except OSError:
        return removed
    for child in children:
        if abandoned_temporary(child.name) is None:
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            removed.append(child)
    return removed


def write_atomically(path: Path, write: Callable[[BinaryIO], Any], *, durable: bool = True) -> None:
    """:func:`aquin_monitor.atomic.atomic_path` with an open binary file: on any failure no file (and no
    temporary) is left; a full disk raises :class:`StoreSpaceError` naming ``path``."""
    try:
        with atomic_path(path, fsync=durable) as tmp, open(tmp, "wb") as handle:
            write(handle)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreSpaceError(errno.ENOSPC, f"{path}: no space left on device; nothing partial was kept") from exc
        raise


class StoreWriter:
    """Opens (creating or resuming) a store for writing; :meth:`append` adds one shard at a time.

    On an existing store, the manifest must name the same model fingerprint, corpus hash, number of
    rows and dtype, else :class:`StoreMismatchError` says what differs (nothing is written then):
    all of this is known before a model is loaded. Writing resumes at :attr:`rows_written`.

    One writer at a time: a second process opening the same folder gets a :class:`StoreError`
    (an exclusive ``flock`` on ``.writer.lock``, released when the writer is closed or its process dies).

    Args:
        directory: the store's folder (created if missing).
        model_fingerprint, corpus_hash: what the embeddings are of (see :class:`StoreManifest`).
        count: rows of the finished store.
        ids: the ``count`` text ids in row order, or None for positional ids.
        dtype: ``"float16"`` or ``"float32"``.
        shard_rows: rows per shard.
        meta: extra JSON facts kept in the manifest.
        durable: fsync every shard and manifest (a cache entry can skip it: losing one costs a recompute).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        model_fingerprint: str,
        corpus_hash: str,
        count: int,
        ids: Sequence[str] | None,
        dtype: str = "float32",
        shard_rows: int = 100_000,
        meta: dict[str, Any] | None = None,
        durable: bool = True,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
        if ids is not None and len(ids) != count:
            raise ValueError(f"{len(ids)} ids for {count} rows")
        self.directory = Path(directory)
        self.durable = durable
        wanted = StoreManifest(
            model_fingerprint,
            corpus_hash,
            count,
            None,
            dtype,
            shard_rows,
            has_ids=ids is not None,
            meta=dict(meta or {}),
        )
        existing = read_manifest(self.directory) if self.directory.is_dir() else None
        if existing is not None:  # refused before anything is created or locked
            check_same_store(existing, wanted, self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = exclusive_writer_lock(self.directory)
        existing = read_manifest(self.directory)  # again, now that no other writer can change it
        if existing is not None:
            check_same_store(existing, wanted, self.directory)
            self.manifest = dataclasses.replace(existing, shard_rows=shard_rows)
        else:
            if ids is not None:
                write_atomically(self.directory / IDS_NAME, lambda out: _write_ids(out, ids), durable=durable)
            self.manifest = wanted
            self._write_manifest()
        remove_dead_temporaries(self.directory)

    def close(self) -> None:
        """Release the writer's lock (also done when the writer is garbage-collected or its process exits)."""
        self._lock.close()

    @property
    def rows_written(self) -> int:
        return self.manifest.rows_written

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    def append(self, rows: np.ndarray) -> None:
        """Write ``rows`` (the next rows in order, at most ``count - rows_written``) as one shard, atomically."""
        rows = np.asarray(rows)
        dimension = self.manifest.dimension
        if rows.ndim != 2 or (dimension is not None and rows.shape[1] != dimension):
            raise StoreError(
                f"{self.directory}: rows of shape {rows.shape} do not fit a store of dimension {dimension}"
            )
        if rows.shape[0] == 0 or self.rows_written + rows.shape[0] > self.manifest.count:
            raise StoreError(
                f"{self.directory}: {rows.shape[0]} rows after {self.rows_written} "
                f"overflow the {self.manifest.count} expected"
            )
        if not np.isfinite(rows).all():
            bad = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
            raise StoreError(
                f"{self.directory}: row {self.rows_written + bad} is not finite (NaN or inf); nothing written"
            )
        shard = ShardRecord(f"shard-{len(self.manifest.shards):05d}.npy", int(rows.shape[0]))
        stored = np.ascontiguousarray(rows, dtype=self.manifest.dtype)
        write_atomically(
            self.directory / shard.file,
            lambda out: np.lib.format.write_array(out, stored, allow_pickle=False),
            durable=self.durable,
        )
        self.manifest = dataclasses.replace(
            self.manifest, dimension=int(rows.shape[1]), shards=self.manifest.shards + (shard,)
        )
        self._write_manifest()

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest.to_json(), indent=1).encode()
        write_atomically(self.directory / MANIFEST_NAME, lambda out: out.write(text), durable=self.durable)


LOCK_NAME = ".writer.lock"


def exclusive_writer_lock(directory: Path) -> BinaryIO:
    """An open ``.writer.lock`` holding an exclusive ``flock`` (released when the file is closed or the
    process dies); :class:`StoreError` when another process writes this store now."""
    import fcntl

    handle = open(directory / LOCK_NAME, "ab")  # noqa: SIM115 - kept open: it is the lock
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreError(
            f"{directory}: another process is writing this store now; wait for it or use another folder"
        ) from None
    return handle


def _write_ids(out: BinaryIO, ids: Iterable[str]) -> None:
    out.writelines(json.dumps(ident).encode() + b"\n" for ident in ids)


def check_same_store(existing: StoreManifest, wanted: StoreManifest, directory: Path) -> None:
    """Raise :class:`StoreMismatchError` naming every field in which ``existing`` differs from ``wanted``."""
    differences = []
    for field, label in (
        ("model_fingerprint", "the model files differ"),
        ("corpus_hash", "the corpus file differs"),
        ("count", "the number of texts differs"),
        ("dtype", "the dtype differs"),
    ):
        before, now = getattr(existing, field), getattr(wanted, field)
        if before != now:
            shown = (
                f"{before!r} in the store, {now!r} now"
                if field in ("count", "dtype")
                else f"{str(before)[:12]}… in the store, {str(now)[:12]}… now"
            )
            differences.append(f"{label} ({shown})")
    if existing.has_ids != wanted.has_ids:
        differences.append("the ids differ (named vs positional)")
    if differences:
        raise StoreMismatchError(
            f"{directory}: this store was written for other inputs: {'; '.join(differences)}; "
            "give another --out or remove the folder"
        )


def write_store(
    directory: str | os.PathLike,
    blocks: Iterable[np.ndarray],
    ids: Sequence[str] | None,
    *,
    model_fingerprint: str,
    corpus_hash: str,
    dtype: str = "float32",
    shard_rows: int = 100_000,
    count: int | None = None,
    meta: dict[str, Any] | None = None,
    durable: bool = True,
) -> StoreManifest:
    """Write the rows of ``blocks`` (any sizes, in order) as a store of ``shard_rows``-row shards.

    Resumes a store left unfinished: the first :attr:`StoreWriter.rows_written` rows of ``blocks`` are
    skipped (read, not written again). ``count`` defaults to ``len(ids)``. Returns the final manifest.
    """
    if count is None:
        if ids is None:
            raise ValueError("write_store: give ids or count")
        count = len(ids)
    writer = StoreWriter(
        directory,
        model_fingerprint=model_fingerprint,
        corpus_hash=corpus_hash,
        count=count,
        ids=ids,
        dtype=dtype,
        shard_rows=shard_rows,
        meta=meta,
        durable=durable,
    )
    for shard in rebatch(_skip_rows(blocks, writer.rows_written), shard_rows):
        writer.append(shard)
    if not writer.complete:
        raise StoreError(f"{directory}: the blocks held {writer.rows_written} rows, {count} expected")
    return writer.manifest


def _skip_rows(blocks: Iterable[np.ndarray], skip: int) -> Iterator[np.ndarray]:
    for block in blocks:
        if skip >= len(block):
            skip -= len(block)
            continue
        yield block[skip:]
        skip = 0


def rebatch(blocks: Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """Regroup row blocks of any sizes into blocks of exactly ``rows`` rows (the last may be shorter).

    >>> [b.shape[0] for b in rebatch([np.zeros((3, 2)), np.zeros((4, 2)), np.zeros((1, 2))], 5)]
    [5, 3]
    """
    pending: list[np.ndarray] = []
    held = 0
    for block in blocks:
        while len(block):
            take = min(rows - held, len(block))
            pending.append(block[:take])
            held += take
            block = block[take:]
            if held == rows:
                yield np.concatenate(pending)
                pending, held = [], 0
    if held:
        yield np.concatenate(pending)
