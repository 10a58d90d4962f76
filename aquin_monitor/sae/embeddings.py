"""Embed a text corpus for SAE training or evaluation, in cached chunks.

Texts are encoded in chunks through :func:`aquin_monitor.embedding_cache.encode_cached`, so a
long run that is killed loses at most one chunk, and a second run over the same texts (or a prefix
of their chunks) loads instead of encoding. The model is loaded only when a chunk is missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..embedding_cache import CachedModel, EmbeddingCache, model_fingerprint

__all__ = ["PROGRESS_BATCHES", "embed_corpus"]

#: Batches encoded between two moves of the progress bar (each an ``encode`` call; within a call
#: sentence-transformers sorts texts by length, so the numbers equal one call's up to float rounding).
PROGRESS_BATCHES = 4


def embed_corpus(
    model: str | os.PathLike,
    texts: Sequence[str],
    *,
    chunk_size: int = 2048,
    batch_size: int = 64,
    device: str | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    loaded: Any = None,
    prompt_name: str | None = None,
    desc: str | None = None,
) -> np.ndarray:
    """Final embeddings (float32 ``[n, d]``) of ``texts`` by ``model``, chunk by chunk, cached on disk.

    Args:
        model: ``"default"``, a checkpoint directory or a Hub id (resolved by
            :func:`aquin_monitor.encoders.resolve_model`).
        texts: the texts, in order.
        chunk_size: texts per cache entry.
        batch_size: encoding batch size (not part of the cache key).
        device: torch device for the model.
        cache: ``False`` neither reads nor writes the cache (``--no-cache``).
        cache_dir: cache folder (default ``$AQUIN_MONITOR_CACHE/embeddings``).
        show_progress: a bar on stderr counting texts, with the rate and the time left (tqdm); chunks
            read from the cache count at once, missing ones every ``PROGRESS_BATCHES`` batches.
        loaded: an already loaded SentenceTransformer for ``model`` (skips loading).
        prompt_name: the model's prompt to prepend (e.g. ``"query"``); part of the cache key.
        desc: the bar's label (default ``"Embedding N texts with MODEL"``).

    Returns:
        The embeddings, one row per text, as the model's ``encode`` gives them.
    """
    from tqdm.auto import tqdm

    from ..encoders import declared_dimension, encode, load_model, resolve_model

    location = resolve_model(model)
    handle = CachedModel(
        lambda: loaded if loaded is not None else load_model(model, device=device),
        model_fingerprint(location),
        cache=EmbeddingCache(cache_dir),
        enabled=cache,
        dimension=declared_dimension(location),
    )
    texts = list(texts)
    label = desc or f"Embedding {len(texts):,} text{'s' if len(texts) != 1 else ''} with {model}"
    bar = tqdm(total=len(texts), desc=label, unit="text", disable=not show_progress or not texts)
    step = PROGRESS_BATCHES * batch_size

    def run(m: Any, chunk: list[str]) -> np.ndarray:
        # a missing chunk is encoded a few batches at a time, so the bar (and its ETA) moves while it is
        parts = []
        for start in range(0, len(chunk), step):
            parts.append(encode(m, chunk[start : start + step], batch_size=batch_size, prompt_name=prompt_name))
            bar.update(len(parts[-1]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # prompt_name joins the key only when set, so prompt-less entries keep their key
    options: dict[str, Any] = (
        {"kind": "final"} if prompt_name is None else {"kind": "final", "prompt_name": prompt_name}
    )
    parts = []
    with bar:
        for start in range(0, len(texts), chunk_size):
            chunk = texts[start : start + chunk_size]
            counted = bar.n
            parts.append(handle.encode(chunk, options, run))
            bar.update(len(chunk) - (bar.n - counted))  # a chunk read from the cache counts at once
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts, axis=0)
