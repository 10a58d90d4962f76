"""Embeddings computed once, kept on disk.

Encoding is the slow part of everything the CLI and the SAE tools do (a small model on a CPU
embeds ~100 short texts a second), so final embeddings are cached as ``.npy`` files, one per
(model files, texts, encode options) triple:

- the key hashes the model's files (relative path, size and modification time of every file in the
  checkpoint directory): retraining or replacing a checkpoint in place invalidates its entries;
- the texts, in order, and the encode options (prompt, adapter, ...) are hashed too, so a change of
  any text gives a new key;
- entries live under ``$AQUIN_MONITOR_CACHE/embeddings/`` (default ``~/.cache/aquin-monitor``) and
  are written to a temporary file then renamed: a run killed mid-write leaves no entry, never a
  truncated one. An unreadable entry is treated as a miss.

The model is only loaded on a miss: :func:`encode_cached` takes a loader, so a fully cached
``aquin-monitor eval`` never loads a model.

Example::

    >>> import numpy as np, tempfile
    >>> cache = EmbeddingCache(tempfile.mkdtemp())
    >>> key = cache.key("fingerprint-of-model", ["a text"], {"prompt": None})
    >>> cache.get(key) is None
    True
    >>> cache.put(key, np.ones((1, 3), dtype=np.float32))
    >>> cache.get(key).tolist()
    [[1.0, 1.0, 1.0]]
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path

__all__ = ["CachedModel", "EmbeddingCache", "default_cache_dir", "encode_cached", "model_fingerprint", "retrieval_embeddings"]

CACHE_ENV = "AQUIN_MONITOR_CACHE"


def default_cache_dir() -> Path:
    """``$AQUIN_MONITOR_CACHE/embeddings`` or ``~/.cache/aquin-monitor/embeddings``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "aquin-monitor")
    return Path(root) / "embeddings"


def model_fingerprint(location: str | os.PathLike, adapter: str | os.PathLike | None = None) -> str:
    """A hash of a checkpoint's files: relative path, size and mtime of each (and of the adapter's).

    Args:
        location: the checkpoint directory (as :func:`aquin_monitor.encoders.resolve_model` gives
            it) or, for a model that is not a local directory, its name (then only the name counts).
        adapter: optional LoRA adapter directory, fingerprinted the same way.

    Returns:
        A hex digest; it changes when any file of the model is added, removed, resized or touched.
    """
    digest = hashlib.sha256()
    for root in (location, adapter):
        if root is None:
            continue
        root = Path(root)
        digest.update(str(root.resolve() if root.exists() else root).encode())
        if root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                stat = path.stat()
                digest.update(f"\0{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class EmbeddingCache:
    """A folder of cached embedding arrays, addressed by :meth:`key`.

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
        return self.directory / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached array, or ``None`` (absent or unreadable entries are misses)."""
        try:
            return np.load(self.path(key), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None

    def get_meta(self, key: str) -> dict[str, Any] | None:
        """The JSON metadata stored with an entry, or ``None``."""
        try:
            meta = json.loads((self.directory / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def get_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        """The named arrays stored by :meth:`put_arrays`, or ``None`` (absent or unreadable)."""
        try:
            with np.load(self.directory / f"{key}.npz", allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            return None

    def put_arrays(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store several named arrays as one entry (``.npz``), atomically, like :meth:`put`."""
        self._write(f"{key}.npz", lambda out: np.savez(out, **{k: np.ascontiguousarray(v) for k, v in arrays.items()}))

    def put(self, key: str, embeddings: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        """Store ``embeddings`` (and ``meta``, before them) atomically; an unwritable folder is ignored."""
        if meta is not None:
            self._write(f"{key}.json", lambda out: out.write(json.dumps(meta).encode()))
        self._write(f"{key}.npy", lambda out: np.save(out, np.ascontiguousarray(embeddings), allow_pickle=False))

    def _write(self, name: str, write: Callable[[Any], Any]) -> None:
        # a read-only cache or a full disk costs speed, never the result; Ctrl-C goes on, and the
        # atomic writer leaves no temporary file behind either way
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.directory / name) as tmp, open(tmp, "wb") as out:
                write(out)
        except OSError:
            return


class CachedModel:
    """A model known by its files' fingerprint and loaded only when an uncached result needs it.

    What the CLI hands to :meth:`aquin_monitor.snapshots.SnapshotRunner.take` so that ``inspect`` and
    ``diff`` reuse the embedding cache: a probe pass or retrieval set this model's files have embedded
    before is read back and the model is never loaded.

    Args:
        load: returns the model (called at most once, on the first cache miss).
        fingerprint: :func:`model_fingerprint` of the model's files (and adapter).
        cache: the cache folder (default :func:`default_cache_dir`).
        enabled: ``False`` (``--no-cache``): every result is computed, nothing is read or written.

    Example::

        >>> import tempfile
        >>> loads = []
        >>> handle = CachedModel(lambda: loads.append(1) or "the model", "fp", cache=EmbeddingCache(tempfile.mkdtemp()))
        >>> handle.loaded, loads
        (False, [])
        >>> handle.model, handle.model, loads
        ('the model', 'the model', [1])
    """

    def __init__(self, load: Callable[[], Any], fingerprint: str, *, cache: EmbeddingCache | None = None, enabled: bool = True) -> None:
        self._load = load
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

    def map(self, transform: Callable[[Any], Any]) -> "CachedModel":
        """The same cached model with ``transform`` applied to it once it is loaded (e.g. merging LoRA)."""
        return CachedModel(lambda: transform(self.model), self.fingerprint, cache=self.cache, enabled=self.enabled)

    def arrays(self, texts: Sequence[str], options: dict[str, Any], compute: Callable[[Any], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
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

    def encode(self, texts: Sequence[str], options: dict[str, Any], encode: Callable[[Any, list[str]], np.ndarray]) -> np.ndarray:
        """:func:`encode_cached` with this model: the embeddings of ``texts``, the model loaded only on a miss."""
        embeddings, _ = encode_cached(lambda: self.model, self.fingerprint, texts, options=options, encode=encode, cache=self.cache, enabled=self.enabled)
        return embeddings

    def retrieval_embeddings(self, query_texts: Sequence[str], doc_texts: Sequence[str], **options: Any):
        """:func:`retrieval_embeddings` with this model (the same entries ``aquin-monitor eval`` writes)."""
        return retrieval_embeddings(lambda: self.model, self.fingerprint, query_texts, doc_texts, cache=self.cache, enabled=self.enabled, **options)


def encode_cached(
    load: Callable[[], Any],
    fingerprint: str,
    texts: Sequence[str],
    *,
    options: dict[str, Any] | None = None,
    encode: Callable[[Any, list[str]], np.ndarray] | None = None,
    cache: EmbeddingCache | None = None,
    enabled: bool = True,
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

    Returns:
        ``(embeddings, model)`` where ``model`` is ``None`` when nothing had to be loaded.
    """
    texts = list(texts)
    cache = cache or EmbeddingCache()
    key = cache.key(fingerprint, texts, options or {})
    if enabled:
        hit = cache.get(key)
        if hit is not None and hit.shape[0] == len(texts):
            return hit, None
    model = load()
    if encode is None:
        from .encoders import encode as encode_with_model

        embeddings = encode_with_model(model, texts)
    else:
        embeddings = encode(model, texts)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if enabled:
        cache.put(key, embeddings)
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
) -> tuple[np.ndarray, np.ndarray, tuple[str | None, str | None]]:
    """Query and document embeddings with the model's retrieval prompts, cached (``aquin-monitor eval``).

    The prompt names are chosen by :func:`aquin_monitor.encoders.retrieval_prompt_names` from the
    model, which the fingerprint covers, so entries are keyed by role and stored with the names.

    Returns:
        ``(query_embeddings, document_embeddings, (query_prompt, document_prompt))``.
    """
    cache = cache or EmbeddingCache()
    keys = [cache.key(fingerprint, list(texts), {"role": role}) for role, texts in (("query", query_texts), ("document", doc_texts))]
    if enabled:
        hits = [cache.get(key) for key in keys]
        meta = cache.get_meta(keys[0])
        if meta is not None and all(h is not None for h in hits):
            if hits[0].shape[0] == len(query_texts) and hits[1].shape[0] == len(doc_texts):
                return hits[0], hits[1], (meta.get("query_prompt"), meta.get("document_prompt"))
    from .encoders import encode, retrieval_prompt_names

    model = load()
    prompts = retrieval_prompt_names(model)
    arrays = [encode(model, texts, prompt_name=prompt, batch_size=batch_size, show_progress=show_progress, desc=f"Encoding {role}")
              for texts, prompt, role in zip((query_texts, doc_texts), prompts, ("queries", "documents"))]
    if enabled:
        cache.put(keys[1], arrays[1])
        cache.put(keys[0], arrays[0], meta={"query_prompt": prompts[0], "document_prompt": prompts[1]})
    return arrays[0], arrays[1], prompts
