"""Embed a corpus into an :mod:`aquin_monitor.store`: the work behind ``aquin-monitor embed``.

Three steps, so that bad input costs no model load:

1. :func:`open_store_for` reads the corpus once (validating every line, collecting the ids),
   hashes the corpus file and the model's files, and opens the store: a new one, or the one
   already in the folder if it was written for the same model, corpus and dtype (else
   :class:`~aquin_monitor.store.StoreMismatchError` names what differs). No model is loaded.
2. :func:`shard_encoder` loads the model and gives a function ``texts -> float32 rows``: one
   process on one device, or sentence-transformers' multi-process pool over several devices
   (``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]``).
3. :func:`fill_store` streams the corpus a second time, skips the rows of the shards already
   written (nothing is encoded twice), and encodes and appends one shard at a time.

Documents are encoded with the model's document prompt when it has one (as ``eval`` encodes them);
the prompt is fixed by the model's files, which the store's fingerprint covers.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import corpus_file, iter_corpus
from .embedding_cache import file_sha256, model_fingerprint
from .store import StoreWriter

__all__ = ["corpus_hash", "fill_store", "open_store_for", "shard_encoder"]


def corpus_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a corpus file's bytes (what a store's manifest records as ``corpus_hash``)."""
    return file_sha256(path)


def open_store_for(
    out: str | os.PathLike,
    *,
    model_location: str,
    corpus: str | os.PathLike,
    dtype: str = "float32",
    shard_rows: int = 100_000,
) -> StoreWriter:
    """The store in ``out`` for ``corpus`` embedded by the checkpoint at ``model_location``, opened to write.

    Reads the whole corpus once (a :class:`~aquin_monitor.data.DataError` names a bad line) and hashes
    it and the model's files; loads no model. Resuming needs the same model files, corpus bytes and dtype.
    """
    source = corpus_file(corpus)
    ids = [ident for ident, _ in iter_corpus(source)]
    return StoreWriter(
        out,
        model_fingerprint=model_fingerprint(model_location),
        corpus_hash=corpus_hash(source),
        count=len(ids),
        ids=ids,
        dtype=dtype,
        shard_rows=shard_rows,
        meta={"corpus_file": source.name, "model": Path(model_location).name},
    )


@contextlib.contextmanager
def shard_encoder(
    model: Any, devices: Sequence[str] | None, *, batch_size: int = 32
) -> Iterator[Callable[[list[str]], np.ndarray]]:
    """A function that embeds a list of texts with ``model`` (a loaded SentenceTransformer).

    With two or more ``devices`` the texts go through sentence-transformers' multi-process pool
    (``start_multi_process_pool(devices)``, stopped when the block exits); otherwise ``model`` encodes
    them in this process. Rows are float32, one per text, in order.
    """
    from .encoders import retrieval_prompt_names

    prompt = retrieval_prompt_names(model)[1]
    pool = model.start_multi_process_pool(list(devices)) if devices is not None and len(devices) > 1 else None

    def encode(texts: list[str]) -> np.ndarray:
        rows = model.encode(
            texts, prompt_name=prompt, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False, pool=pool
        )
        return np.asarray(rows, dtype=np.float32)

    try:
        yield encode
    finally:
        if pool is not None:
            model.stop_multi_process_pool(pool)


def fill_store(
    writer: StoreWriter,
    corpus: str | os.PathLike,
    encode: Callable[[list[str]], np.ndarray],
    *,
    show_progress: bool = True,
) -> int:
    """Encode the texts of ``corpus`` past the rows already in ``writer``, one shard at a time.

    Returns the number of texts encoded (0 when the store was complete). A progress bar on stderr
    counts documents (documents/s and the time left), starting at the rows already written.
    """
    from tqdm.auto import tqdm

    done, shard_rows, total = writer.rows_written, writer.manifest.shard_rows, writer.manifest.count
    texts = (text for _, text in itertools.islice(iter_corpus(corpus, check_ids=False), done, None))
    encoded = 0
    with tqdm(total=total, initial=done, desc="Embedding corpus", unit="doc", disable=not show_progress) as bar:
        while not writer.complete:
            batch = list(itertools.islice(texts, shard_rows))
            if not batch:
                raise ValueError(
                    f"{corpus}: the corpus ended after {writer.rows_written:,} of {total:,} texts while it was read"
                )
            writer.append(encode(batch))
            encoded += len(batch)
            bar.update(len(batch))
    return encoded
