"""Embeddings computed once, kept on disk: a cache of small embedding stores.

Encoding is the slow part of everything the CLI and the SAE tools do (a small model on a CPU
embeds ~100 short texts a second), so final embeddings are cached, one entry per
(model files, texts, encode options) triple. An entry is a small :mod:`aquin_monitor.store`
(a folder with a manifest and one shard): the cache is a view on the store, not a second format.

- the key hashes the model's files by content (:func:`model_fingerprint`: a hash of each file's
  bytes, itself remembered per path, size, mtime, ctime and inode so that the common case reads
  no weights): a checkpoint rewritten in place is a new key even when its sizes and mtimes were
  preserved (``cp -p``, ``rsync -t``, a restored backup);
- the texts, in order, and the encode options (prompt, adapter, ...) are hashed too, so a change of
  any text gives a new key;
- every entry is checked when read against what the caller expects (rows = number of texts,
  the model's declared dimension, float32): an entry that does not match is recomputed, with one
  :class:`EmbeddingCacheWarning`;
- entries live under ``$AQUIN_MONITOR_CACHE/embeddings/`` (default ``~/.cache/aquin-monitor``) and
  are written under a temporary name holding the writer's host and pid, then renamed: a run killed
  mid-write leaves no entry, and its temporary is removed by the next write to the cache once that
  process is gone. An unreadable entry is treated as a miss.

The model is only loaded on a miss: :func:`encode_cached` takes a loader, so a fully cached
``aquin-monitor eval`` never loads a model.

Example::

    >>> import numpy as np, tempfile
    >>> cache = EmbeddingCache(tempfile.mkdtemp())
    >>> key = cache.key("fingerprint-of-model", ["a text"], {"prompt": None})
    >>> cache.get(key) is None
    True
    >>> cache.put(key, np.ones((1, 3), dtype=np.float32))
    >>> cache.get(key, rows=1, dimension=3).tolist()
    [[1.0, 1.0, 1.0]]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_directory
from .store import (
    EmbeddingStore,
    StoreError,
    remove_dead_temporaries,
    write_atomically,
    write_store,
)

__all__ = [
    "CachedModel",
    "EmbeddingCache",
    "EmbeddingCacheWarning",
    "default_cache_dir",
    "encode_cached",
    "file_content_hash",
    "file_sha256",
    "model_fingerprint",
    "retrieval_embeddings",
]

CACHE_ENV = "AQUIN_MONITOR_CACHE"


class EmbeddingCacheWarning(UserWarning):
    """A cache entry that does not match what its model gives (it is recomputed)."""


def default_cache_dir() -> Path:
    """``$AQUIN_MONITOR_CACHE/embeddings`` or ``~/.cache/aquin-monitor/embeddings``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "aquin-monitor")
    return Path(root) / "embeddings"


_CONTENT_HASHES: dict[str, str] = {}  # this process's memo of file_content_hash, by file identity


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in ``chunk_bytes`` pieces (Python 3.10 has no ``hashlib.file_digest``).

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.jsonl"
    >>> _ = path.write_bytes(b"abc")
    >>> file_sha256(path)[:12]
    'ba7816bf8f01'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_content_hash(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime, ctime, inode).

    The memo (in this process and, best effort, one small file per identity in ``memo_dir``, default
    ``file-hashes/`` beside :func:`default_cache_dir`) makes a second call instant. Its key includes the
    ctime and inode, which no user tool can set back: a file rewritten with its size and mtime
    preserved (``cp -p``, ``rsync -t``) is read and hashed again; a file only touched hashes the same.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.bin"
    >>> _ = path.write_bytes(b"abc")
    >>> file_content_hash(path, path.parent)[:12]
    'ba7816bf8f01'
    """
    path = Path(path)
    stat = path.stat()
    identity = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\0{stat.st_ino}\0{stat.st_dev}"
    memo_key = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()
    if memo_key in _CONTENT_HASHES:
        return _CONTENT_HASHES[memo_key]
    memo_path = Path(memo_dir if memo_dir is not None else default_cache_dir().parent / "file-hashes") / memo_key
    with contextlib.suppress(OSError, UnicodeDecodeError):
        remembered = memo_path.read_text(encoding="ascii").strip()
        if len(remembered) == 64:
            _CONTENT_HASHES[memo_key] = remembered
            return remembered
    digest = file_sha256(path)
    _CONTENT_HASHES[memo_key] = digest
    with contextlib.suppress(OSError):
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(memo_path, lambda out: out.write(digest.encode()), durable=False)
    return digest


def model_fingerprint(
    location: str | os.PathLike, adapter: str | os.PathLike | None = None, *, memo_dir: str | os.PathLike | None = None
) -> str:
    """A hash of a checkpoint's files by content: relative path and :func:`file_content_hash` of each.

    Args:
        location: the checkpoint directory (as :func:`aquin_monitor.encoders.resolve_model` gives
            it) or, for a model that is not a local directory, its name (then only the name counts).
        adapter: optional LoRA adapter directory, fingerprinted the same way.
        memo_dir: where :func:`file_content_hash` remembers digests (default beside the cache).

    Returns:
        A hex digest; it changes when any file of the model is added, removed, renamed or rewritten
        with other bytes (also with size and mtime preserved), not when a file is only touched.
    """
    digest = hashlib.sha256()
    for root in (location, adapter):
        if root is None:
            continue
        root = Path(root)
        digest.update(str(root.resolve() if root.exists() else root).encode())
        if root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                digest.update(f"\0{path.relative_to(root)}\0{file_content_hash(path, memo_dir)}".encode())
    return digest.hexdigest()


class EmbeddingCache:
    """A folder of cached embedding entries (small stores), addressed by :meth:`key`.

    Args:
        directory: where entries live (default :func:`default_cache_dir`).
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    @staticmethod
    def key(fingerprint: str, texts: Sequence[str], options: dict[str, Any]) -> str:
        """The entry name of ``texts`` embedded by the model ``fingerprint`` with ``options``."""
        digest = hashlib.sha256(fingerprint.encode())
        digest.update(json.dumps(options, sort_keys=True, default=str).encode())
        for text in texts:
            encoded = text.encode("utf-8", "surrogatepass")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        """The entry's folder (a store)."""
        return self.directory / key

    def get(
        self, key: str, *, rows: int | None = None, dimension: int | None = None, dtype: str = "float32"
    ) -> np.ndarray | None:
        """The cached float32 array, or ``None``: absent, unreadable, or not of ``rows`` x ``dimension``
        rows and columns stored as ``dtype`` (then one :class:`EmbeddingCacheWarning` says so)."""
        folder = self.path(key)
        if not (folder / "manifest.json").is_file():
            return None
        try:
            store = EmbeddingStore(folder)
        except (StoreError, OSError) as exc:
            _mismatch(folder, str(exc))
            return None
        found = f"{len(store)} x {store.dimension} {store.manifest.dtype}"
        if (
            (rows is not None and len(store) != rows)
            or (dimension is not None and store.dimension != dimension)
            or store.manifest.dtype != dtype
        ):
            _mismatch(
                folder, f"holds {found}, expected {rows if rows is not None else 'n'} x {dimension or 'd'} {dtype}"
            )
            return None
        try:
            return store.read(0, len(store))
        except (OSError, ValueError) as exc:
            _mismatch(folder, str(exc))
            return None

    def get_meta(self, key: str) -> dict[str, Any] | None:
        """The JSON metadata stored with an entry, or ``None``."""
        try:
            meta = json.loads((self.path(key) / "manifest.json").read_text(encoding="utf-8")).get("meta")
        except (OSError, ValueError, AttributeError):
            return None
        return meta if isinstance(meta, dict) and meta else None

    def get_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        """The named arrays stored by :meth:`put_arrays`, or ``None`` (absent or unreadable)."""
        try:
            with np.load(self.directory / f"{key}.npz", allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            return None

    def put_arrays(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store several named arrays as one entry (``.npz``), atomically, like :meth:`put`."""
        self._write(f"{key}.npz", lambda out: np.savez(out, **{k: np.ascontiguousarray(v) for k, v in arrays.items()}))  # type: ignore[arg-type]  # numpy stubs read **arrays as allow_pickle

    def put(
        self, key: str, embeddings: np.ndarray, meta: dict[str, Any] | None = None, *, fingerprint: str = ""
    ) -> None:
        """Store ``embeddings`` (with ``meta`` in its manifest) as a one-shard store, built under a
        temporary name and renamed into place; an unwritable folder or a full disk is ignored."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if not self._prepare():
            return
        try:  # a stale or mismatched entry being replaced is set aside, then removed (atomic_directory)
            with atomic_directory(self.path(key)) as tmp:
                write_store(
                    tmp,
                    [embeddings],
                    None,
                    count=len(embeddings),
                    model_fingerprint=fingerprint,
                    corpus_hash=key,
                    shard_rows=max(len(embeddings), 1),
                    meta=meta,
                    durable=False,
                )
        except (OSError, StoreError):  # a full disk costs speed only; Ctrl-C goes on (the temporary is removed)
            pass

    def _prepare(self) -> bool:
        """Create the folder and remove dead writers' temporaries; False when the folder is unusable."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False  # a read-only cache costs speed, never the result
        remove_dead_temporaries(self.directory)
        return True

    def _write(self, name: str, write: Callable[[Any], Any]) -> None:
        if not self._prepare():
            return
        try:
            write_atomically(self.directory / name, write, durable=False)
        except OSError:  # a full disk is ignored; Ctrl-C goes on (write_atomically removed the temporary)
            return


def _mismatch(folder: Path, problem: str) -> None:
    warnings.warn(f"embedding cache entry {folder}: {problem}; recomputing it", EmbeddingCacheWarning, stacklevel=3)


class CachedModel:
    """A model known by its files' fingerprint and loaded only when an uncached result needs it.

    What the CLI hands to :meth:`aquin_monitor.snapshot_runner.SnapshotRunner.take` so that ``inspect`` and
    ``diff`` reuse the embedding cache: a probe pass or retrieval set this model's files have embedded
    before is read back and the model is never loaded.

    Args:
        load: returns the model (called at most once, on the first cache miss).
        fingerprint: :func:`model_fingerprint` of the model's files (and adapter).
        cache: the cache folder (default :func:`default_cache_dir`).
        enabled: ``False`` (``--no-cache``): every result is computed, nothing is read or written.
        dimension: the width the model declares for its embeddings
            (:func:`aquin_monitor.encoders.declared_dimension`), None when unknown; a cached entry of
            another width is recomputed.

    Example::

        >>> import tempfile
        >>> loads = []
        >>> handle = CachedModel(lambda: loads.append(1) or "the model", "fp", cache=EmbeddingCache(tempfile.mkdtemp()))
        >>> handle.loaded, loads
        (False, [])
        >>> handle.model, handle.model, loads
        ('the model', 'the model', [1])
    """

    def __init__(
        self,
        load: Callable[[], Any],
        fingerprint: str,
        *,
        cache: EmbeddingCache | None = None,
        enabled: bool = True,
        dimension: int | None = None,
    ) -> None:
        self._load = load
        self.dimension = dimension
        self._model: Any = None
        self.loaded = False
        self.fingerprint = fingerprint
        self.cache = cache or EmbeddingCache()
        self.enabled = enabled

    @property
    def model(self) -> Any:
        """The model, loaded on first access."""
        if not self.loaded:
            self._model = self._load()
            self.loaded = True
        return self._model

    def map(self, transform: Callable[[Any], Any]) -> CachedModel:
        """The same cached model with ``transform`` applied to it once it is loaded (e.g. merging LoRA)."""
        return CachedModel(
            lambda: transform(self.model),
            self.fingerprint,
            cache=self.cache,
            enabled=self.enabled,
            dimension=self.dimension,
        )

    def arrays(
        self, texts: Sequence[str], options: dict[str, Any], compute: Callable[[Any], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """Named arrays of ``texts`` (``options`` say which and how) from the cache, or ``compute(model)``, stored."""
        key = self.cache.key(self.fingerprint, list(texts), options)
        if self.enabled:
            hit = self.cache.get_arrays(key)
            if hit is not None:
                return hit
        arrays = compute(self.model)
        if self.enabled:
            self.cache.put_arrays(key, arrays)
        return arrays

    def encode(
        self, texts: Sequence[str], options: dict[str, Any], encode: Callable[[Any, list[str]], np.ndarray]
    ) -> np.ndarray:
        """:func:`encode_cached` with this model: the embeddings of ``texts``, the model loaded only on a miss."""
        embeddings, _ = encode_cached(
            lambda: self.model,
            self.fingerprint,
            texts,
            options=options,
            encode=encode,
            cache=self.cache,
            enabled=self.enabled,
            dimension=self.dimension,
        )
        return embeddings

    def retrieval_embeddings(self, query_texts: Sequence[str], doc_texts: Sequence[str], **options: Any):
        """:func:`retrieval_embeddings` with this model (the same entries ``aquin-monitor eval`` writes)."""
        return retrieval_embeddings(
            lambda: self.model,
            self.fingerprint,
            query_texts,
            doc_texts,
            cache=self.cache,
            enabled=self.enabled,
            dimension=self.dimension,
            **options,
        )


def encode_cached(
    load: Callable[[], Any],
    fingerprint: str,
    texts: Sequence[str],
    *,
    options: dict[str, Any] | None = None,
    encode: Callable[[Any, list[str]], np.ndarray] | None = None,
    cache: EmbeddingCache | None = None,
    enabled: bool = True,
    dimension: int | None = None,
) -> tuple[np.ndarray, Any]:
    """Embeddings of ``texts`` from the cache, or from the model (loaded only on a miss) and cached.

    Args:
        load: returns the model; called at most once, and only when the entry is missing.
            It may also return an already loaded model.
        fingerprint: :func:`model_fingerprint` of the model's files.
        texts: the texts, in order.
        options: everything else that changes the embeddings (prompt name, batch-independent encode
            settings); part of the key.
        encode: ``encode(model, texts) -> float32 [n, d]``; default
            :func:`aquin_monitor.encoders.encode`.
        cache: the cache folder (default :func:`default_cache_dir`).
        enabled: ``False`` (``--no-cache``) neither reads nor writes the cache.
        dimension: the model's declared embedding width, if known: an entry of another width is recomputed.

    Returns:
        ``(embeddings, model)`` where ``model`` is ``None`` when nothing had to be loaded.
    """
    texts = list(texts)
    cache = cache or EmbeddingCache()
    key = cache.key(fingerprint, texts, options or {})
    if enabled:
        hit = cache.get(key, rows=len(texts), dimension=dimension)
        if hit is not None:
            return hit, None
    model = load()
    if encode is None:
        from .encoders import encode as encode_with_model

        embeddings = encode_with_model(model, texts)
    else:
        embeddings = encode(model, texts)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if enabled:
        cache.put(key, embeddings, fingerprint=fingerprint)
    return embeddings, model


def retrieval_embeddings(
    load: Callable[[], Any],
    fingerprint: str,
    query_texts: Sequence[str],
    doc_texts: Sequence[str],
    *,
    batch_size: int = 32,
    show_progress: bool = False,
    cache: EmbeddingCache | None = None,
    enabled: bool = True,
    dimension: int | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[str | None, str | None]]:
    """Query and document embeddings with the model's retrieval prompts, cached (``aquin-monitor eval``).

    The prompt names are chosen by :func:`aquin_monitor.encoders.retrieval_prompt_names` from the
    model, which the fingerprint covers, so entries are keyed by role and stored with the names.
    Both entries must hold one row per text and the same width (``dimension`` when given), else both are
    recomputed.

    Returns:
        ``(query_embeddings, document_embeddings, (query_prompt, document_prompt))``.
    """
    cache = cache or EmbeddingCache()
    keys = [
        cache.key(fingerprint, list(texts), {"role": role})
        for role, texts in (("query", query_texts), ("document", doc_texts))
    ]
    if enabled:
        query_hit = cache.get(keys[0], rows=len(query_texts), dimension=dimension)
        width = dimension if dimension is not None else (query_hit.shape[1] if query_hit is not None else None)
        doc_hit = cache.get(keys[1], rows=len(doc_texts), dimension=width) if query_hit is not None else None
        meta = cache.get_meta(keys[0])
        if meta is not None and query_hit is not None and doc_hit is not None:
            return query_hit, doc_hit, (meta.get("query_prompt"), meta.get("document_prompt"))
    from .encoders import encode, retrieval_prompt_names

    model = load()
    prompts = retrieval_prompt_names(model)
    arrays = [
        encode(
            model,
            texts,
            prompt_name=prompt,
            batch_size=batch_size,
            show_progress=show_progress,
            desc=f"Encoding {role}",
        )
        for texts, prompt, role in zip((query_texts, doc_texts), prompts, ("queries", "documents"))
    ]
    if enabled:
        cache.put(keys[1], arrays[1], fingerprint=fingerprint)
        cache.put(
            keys[0],
            arrays[0],
            meta={"query_prompt": prompts[0], "document_prompt": prompts[1]},
            fingerprint=fingerprint,
        )
    return arrays[0], arrays[1], prompts
