"""What the ``sae`` verbs read first: an SAE with the model it belongs to, and texts embedded with the verb's options.

These helpers load SAEs and encoders (imported when called: building the parser imports no torch), so they
live beside the ``sae`` verbs that use them, above the CLI
toolkit (:mod:`aquin_monitor.cli_tools`), whose :class:`~aquin_monitor.cli_tools.InputError` they raise;
the toolkit itself imports nothing of ``sae/``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..cli_tools import InputError, refuse_non_finite

__all__ = ["LoadedSae", "embed_texts", "load_sae_for", "phrase_encoder"]


class LoadedSae(NamedTuple):
    """A SAE, the model whose embeddings it reads, and its ``cfg.json`` (named in errors)."""

    sae: Any
    model: str
    cfg: str

    def check_width(self, width: int) -> None:
        """Raise :class:`InputError` unless embeddings of ``width`` columns fit the SAE's input."""
        if width != self.sae.d_in:
            raise InputError(
                self.cfg,
                f"the SAE takes {self.sae.d_in}-dimensional inputs but model {self.model!r} outputs {width}",
                line=1,
                field="d_in",
            )


def load_sae_for(name: str, model: str | None = None) -> LoadedSae:
    """Load SAE ``name`` (a folder or ``"default"``) for ``model`` (default: the one its ``cfg.json`` records).

    Raises :class:`InputError` when no model is given or recorded, and when the model's files declare
    an embedding size other than the SAE's ``d_in`` (nothing is loaded for that check). A corrupt SAE
    folder raises :class:`~aquin_monitor.sae.model.SaeFormatError` naming the file.
    """
    from ..encoders import declared_dimension, resolve_model
    from .model import CFG_NAME, load_sae, sae_folder

    sae = load_sae(name)
    cfg = str(sae_folder(name) / CFG_NAME)
    model = model or sae.metadata.get("model")
    if not model:
        raise InputError(cfg, "not recorded; pass --model", line=1, field="model")
    loaded = LoadedSae(sae, str(model), cfg)
    location = resolve_model(loaded.model)
    dimension = declared_dimension(location) if os.path.isdir(location) else None
    if dimension is not None:
        loaded.check_width(dimension)
    return loaded


def embed_texts(model: str, texts: Sequence[str], args: argparse.Namespace, **kwargs: Any) -> Any:
    """``texts`` embedded by ``model`` through the embedding cache, with the verb's ``--batch-size``,
    ``--device``, ``--no-cache`` and ``--no-progress``; ``kwargs`` go to
    :func:`~aquin_monitor.sae.embeddings.embed_corpus`."""
    from .embeddings import embed_corpus

    embeddings = embed_corpus(
        model,
        list(texts),
        batch_size=args.batch_size,
        device=args.device,
        cache=args.cache,
        show_progress=args.progress,
        **kwargs,
    )
    refuse_non_finite(embeddings, texts, model)
    return embeddings


def phrase_encoder(model: str, args: argparse.Namespace) -> Any:
    """``model``'s encoder for the key-phrase labels (phrases in, ``[n, d]`` out, through the embedding cache, with
    the verb's ``--batch-size``, ``--device`` and ``--no-cache``; no progress bar): what ``sae train`` and
    ``sae browse`` pass to :func:`~aquin_monitor.sae.keyphrases.keyphrase_labels`."""
    from .embeddings import embed_corpus

    def encode(phrases: list[str]) -> Any:
        return embed_corpus(
            model, phrases, batch_size=args.batch_size, device=args.device, cache=args.cache, show_progress=False
        )

    return encode
