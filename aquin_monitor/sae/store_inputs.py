"""``sae browse | diagnose --store DIR``: a corpus's stored embeddings and its texts, checked, never loaded whole.

The store (``aquin-monitor embed MODEL --corpus FILE --out DIR``) holds the embeddings; ``--corpus``
names the file they are of. Before the SAE reads a row, the store must be complete, of the SAE's input
size, written for this corpus file (same bytes: its hash is in the manifest) and, when the model is
known, for this model's files (its fingerprint is in the manifest); any mismatch is one line naming
what differs (a ``ValueError``: exit status 2). The texts are then read by row
(:class:`~aquin_monitor.sae.corpus_texts.CorpusTexts`), a pass over the file for the few texts shown.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..cli_tools import InputError
from .corpus_texts import CorpusTexts

__all__ = ["open_store_inputs"]


def open_store_inputs(store_dir: str, corpus: str, sae: Any, model: str | None) -> tuple[Any, CorpusTexts]:
    """``(store, texts)`` for ``sae`` over the store in ``store_dir`` of the corpus file ``corpus``.

    Raises:
        InputError: the store is unfinished or does not match the SAE's input size, the corpus file
            (hash, number of texts) or the model's files (fingerprint); ``StoreError`` for a broken store.
    """
    from ..data import corpus_file, iter_corpus
    from ..embed import corpus_hash
    from ..embedding_cache import model_fingerprint
    from ..encoders import resolve_model
    from ..store import EmbeddingStore

    store = EmbeddingStore(store_dir)
    manifest = Path(store_dir) / "manifest.json"
    if store.dimension != sae.d_in:
        raise InputError(manifest, f"the store holds {store.dimension}-dimensional rows, the SAE takes {sae.d_in}",
                         line=1, field="dimension")
    source = corpus_file(corpus)
    if corpus_hash(source) != store.manifest.corpus_hash:
        raise InputError(manifest, f"the store was written for another corpus file than {source} (its bytes differ)",
                         line=1, field="corpus_hash")
    if model:
        location = resolve_model(model)
        if os.path.isdir(location) and model_fingerprint(location) != store.manifest.model_fingerprint:
            raise InputError(manifest, f"the store was written by another model than {model!r} (its files differ); "
                             "pass --model", line=1, field="model_fingerprint")
    # same bytes as the file `embed` read and validated line by line: its texts are the store's rows, in order
    return store, CorpusTexts(lambda: (text for _, text in iter_corpus(source, check_ids=False)))
