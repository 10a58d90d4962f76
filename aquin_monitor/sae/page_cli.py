"""``aquin-monitor sae browse | diagnose``: the feature browser page and the absorption/polysemy report.

Inputs are checked before any model loads: the corpus (``file:line: field: problem``), the output
paths (``--html``, ``--json``: not a folder, in a writable folder), the SAE folder, and the SAE's input
size against the model's declared embedding size. Bad input raises
:class:`~aquin_monitor.cli_tools.InputError`, which the main CLI prints as one line with exit status 2.

Examples::

    aquin-monitor sae browse default --corpus texts.jsonl --html sae_page.html
    aquin-monitor sae browse sae/minilm --corpus texts.jsonl --json -
    aquin-monitor sae diagnose default --corpus texts.jsonl --threshold 0.9
    aquin-monitor sae browse default --corpus big.jsonl --store big_store/ --html page.html

With ``--store DIR`` the embeddings are an embedding store's rows (``aquin-monitor embed``), checked against
the SAE, the corpus file and the model before a row is read (:func:`_open_store`), and
the analysis streams them: memory independent of the corpus size.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..cli_tools import (
    InputError,
    bounded_float,
    cache_option,
    declare_outputs,
    emit,
    positive_int,
    read_corpus,
)
from .verb_inputs import embed_texts, load_sae_for

__all__ = ["add_page_commands"]


def _inputs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Validated (sae, texts, embeddings): the corpus and the SAE are checked before the model loads.

    With ``--store``: (sae, the corpus's texts read by row, the store), and no model loads at all.
    """
    if args.store is not None:
        loaded = load_sae_for(args.sae, args.model)
        store, corpus_texts = _open_store(args.store, args.corpus, loaded.sae, loaded.model)
        return loaded, corpus_texts, store
    texts = read_corpus(args.corpus, args.text_field)
    loaded = load_sae_for(args.sae, args.model)
    x = embed_texts(loaded.model, texts, args)
    loaded.check_width(x.shape[1])
    return loaded, texts, x


def _open_store(store_dir: str, corpus: str, sae: Any, model: str | None) -> tuple[Any, Any]:
    """``(store, texts)`` for ``sae`` over the store in ``store_dir`` of the corpus file ``corpus``.

    Before the SAE reads a row, the store must be complete, of the SAE's input size, written for this
    corpus file (same bytes: its hash is in the manifest) and, when the model's files are local, by this
    model (their fingerprint is in the manifest). The texts are then read by row
    (:class:`~aquin_monitor.sae.corpus_texts.CorpusTexts`), a pass over the file for the few texts shown.

    Raises:
        InputError: the store does not match the SAE's input size, the corpus file
            (hash) or the model's files (fingerprint); ``StoreError`` for a broken store.
    """
    from ..data import corpus_file, iter_corpus
    from ..embed import corpus_hash
    from ..embedding_cache import model_fingerprint
    from ..encoders import resolve_model
    from ..store import EmbeddingStore
    from .corpus_texts import CorpusTexts

    store = EmbeddingStore(store_dir)
    manifest = Path(store_dir) / "manifest.json"
    if store.dimension != sae.d_in:
        raise InputError(
            manifest,
            f"the store holds {store.dimension}-dimensional rows, the SAE takes {sae.d_in}",
            line=1,
            field="dimension",
        )
    source = corpus_file(corpus)
    if corpus_hash(source) != store.manifest.corpus_hash:
        raise InputError(
            manifest,
            f"the store was written for another corpus file than {source} (its bytes differ)",
            line=1,
            field="corpus_hash",
        )
    if model:
        location = resolve_model(model)
        if os.path.isdir(location) and model_fingerprint(location) != store.manifest.model_fingerprint:
            raise InputError(
                manifest,
                f"the store was written by another model than {model!r} (its files differ); pass --model",
                line=1,
                field="model_fingerprint",
            )
    # same bytes as the file `embed` read and validated line by line: its texts are the store's rows, in order
    return store, CorpusTexts(lambda: (text for _, text in iter_corpus(source, check_ids=False)))


def _browse(args: argparse.Namespace) -> dict[str, Any]:
    from .page import analyse_rows, page_data, write_page

    (sae, model, _), texts, x = _inputs(args)
    browser, network, diagnostics = analyse_rows(
        sae,
        x,
        texts,
        examples=args.examples,
        npmi=args.npmi,
        threshold=args.threshold,
        min_support=args.min_support,
        encode=_label_encoder(args, model),
        min_lift=args.min_lift,
        alpha=args.alpha,
    )
    title = f"SAE {args.sae} on {Path(args.corpus).name} ({model})"
    fit = _corpus_fit(sae, x, args)
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        write_page(args.html, browser, network, diagnostics, title=title, fit=fit)
    data = page_data(browser, network, diagnostics, title=title, fit=fit)
    lines = []
    for rank, f in enumerate(browser.features[: args.show], 1):
        top = f.examples[0].text if f.examples else ""
        lines.append(
            f"{rank:>4} feature {f.index:>5}  {', '.join(f.label) or '-':<36} freq {f.frequency:7.2%}  "
            f"max {f.max_activation:6.3f}  {_clip([top], 70)}"
        )
    lines.append(
        f"{len(browser.features)} of {browser.num_latents} features fired on {browser.n_texts} texts; "
        f"network: {len(network.nodes)} nodes, {len(network.edges)} edges"
        + (f"; page: {args.html}" if args.html else "")
    )
    emit(data, args.json, lines)
    return data


def _label_encoder(args: argparse.Namespace, model: str) -> Any:
    """The model's encoder for key-phrase labels (through the embedding cache), or None for c-TF-IDF labels:
    ``--labels auto`` uses the model when the corpus was encoded by it here, not over a ``--store``."""
    if args.labels == "ctfidf" or (args.labels == "auto" and args.store is not None):
        return None
    from .verb_inputs import phrase_encoder

    return phrase_encoder(model, args)


def _corpus_fit(sae: Any, x: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """The page's "fit on this corpus" section for embeddings in memory (None for a store: the PCA would need them
    all in memory); its warning line also goes to stderr."""
    import numpy as np

    from .model import sae_folder
    from .quality import corpus_fit, read_held_out

    if not isinstance(x, np.ndarray):
        return None
    fit = corpus_fit(sae, x, read_held_out(sae_folder(args.sae)), corpus=Path(args.corpus).name)
    if fit["warning"]:
        print(fit["warning"], file=sys.stderr)
    return fit


def _clip(texts: list[str], width: int = 60) -> str:
    text = texts[0] if texts else ""
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def _diagnose(args: argparse.Namespace) -> Any:
    import dataclasses

    import numpy as np

    from ..rows import ArrayRows
    from .diagnose import diagnose
    from .stats import activation_blocks, stream_feature_stats

    (sae, _, _), texts, x = _inputs(args)
    source = ArrayRows(x) if isinstance(x, np.ndarray) else x
    result = diagnose(
        stream_feature_stats(sae, source),
        x,
        texts,
        threshold=args.threshold,
        min_support=args.min_support,
        blocks=activation_blocks(sae, source),
        min_lift=args.min_lift,
        alpha=args.alpha,
    )
    flagged = sum(p.flagged for p in result.absorption)
    lines = [
        f"absorption pairs (P(B | A) >= {result.threshold}): {len(result.absorption)}, flagged {flagged} "
        f"(lift >= {result.min_lift} and BH q <= {result.alpha} over {result.pairs_tested} pairs tested); "
        f"the rest B's base rate explains"
    ]
    lines += [
        f"  {p.source:>5} -> {p.target:<5} P={p.probability:.3f}  P(B)={p.target_frequency:.3f}  lift {p.lift:.2f}  "
        f"q {p.q_value:.1e}  {'ABSORPTION' if p.flagged else 'base rate'}  A fires on {p.support}, both on {p.both}  "
        f"e.g. {_clip(p.examples)}"
        for p in result.absorption[: args.show]
    ]
    lines.append(f"polysemy, widest spread of top texts (minus random texts' {result.baseline:.3f}):")
    lines += [
        f"  {p.feature:>5} excess {p.spread_excess:+.3f} (z {p.spread_z:+.1f})  silhouette {p.silhouette:.2f} "
        f"(p {p.silhouette_p:.3f})  "
        f"{_clip(p.examples[0])} | {_clip(p.examples[1])}"
        for p in result.polysemy[: args.show]
    ]
    merged = sorted((p for p in result.polysemy if p.merged), key=lambda p: (-p.silhouette, p.feature))
    lines.append(
        f"merged (2-means split of top texts, silhouette >= {result.silhouette_threshold}, random sets of as many "
        f"texts reach it with p <= {result.alpha}): {len(merged)}"
    )
    lines += [
        f"  {p.feature:>5} silhouette {p.silhouette:.2f} (p {p.silhouette_p:.3f})  sides {p.split_sizes}  "
        f"{_clip(p.examples[0])} | {_clip(p.examples[1])}"
        for p in merged[: args.show]
    ]
    emit(dataclasses.asdict(result), args.json, lines)
    return result


def add_page_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``browse`` and ``diagnose`` to the ``aquin-monitor sae`` sub-command group ``commands``."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("sae", metavar="SAE", help="SAE folder, or 'default' (shipped for all-MiniLM-L6-v2)")
    shared.add_argument("--corpus", required=True, metavar="FILE", help="JSONL with one text per line")
    shared.add_argument(
        "--store",
        metavar="DIR",
        default=None,
        help="read the corpus's embeddings from this store (`aquin-monitor embed`) instead of encoding: "
        "memory independent of the corpus size; --corpus names the file it was written from",
    )
    shared.add_argument("--text-field", default="text", metavar="NAME", help="field holding the text (default text)")
    shared.add_argument("--model", default=None, help="embedding model (default: the one recorded in cfg.json)")
    cache_option(shared)
    shared.add_argument(
        "--threshold", type=bounded_float(0.0, 1.0), default=0.9, help="absorption: least P(B | A) (default 0.9)"
    )
    shared.add_argument(
        "--min-support",
        type=positive_int,
        default=10,
        metavar="N",
        help="least texts for an absorption pair or a network edge (default 10)",
    )
    shared.add_argument(
        "--min-lift",
        type=bounded_float(1.0, 1e9),
        default=2.0,
        metavar="X",
        help="absorption: least lift P(B | A) / P(B) of a flagged pair (default 2)",
    )
    shared.add_argument(
        "--alpha",
        type=bounded_float(0.0, 1.0),
        default=0.05,
        help="largest Benjamini-Hochberg q of a flagged absorption pair and null p of a merged feature (default 0.05)",
    )
    shared.add_argument("--show", type=positive_int, default=20, metavar="N", help="rows printed (default 20)")

    browse = commands.add_parser(
        "browse",
        parents=[common, shared],
        help="feature browser, co-activation network, diagnostics",
        description="Rank the SAE's features over a corpus (labels by c-TF-IDF), build the co-activation "
        "network and the absorption/polysemy diagnostics; --html writes one self-contained page.",
    )
    browse.add_argument("--html", metavar="OUT", default=None, help="write the interactive page to OUT")
    browse.add_argument(
        "--examples", type=positive_int, default=20, metavar="N", help="top texts kept per feature (default 20)"
    )
    browse.add_argument(
        "--npmi", type=bounded_float(-1.0, 1.0), default=0.3, help="least NPMI of a network edge (default 0.3)"
    )
    browse.add_argument(
        "--labels",
        choices=("auto", "keyphrases", "ctfidf"),
        default="auto",
        help="keyphrases: a frame and phrases shared by the top texts, chosen by how well the model's embedding "
        "of them singles those texts out; "
        "ctfidf: top c-TF-IDF terms; auto (default): keyphrases, but ctfidf over a --store (no model loads)",
    )
    browse.set_defaults(handler=_browse)
    declare_outputs(browse, files=["--html"])

    diagnose = commands.add_parser(
        "diagnose",
        parents=[common, shared],
        help="absorption pairs and polysemous features",
        description="Absorption pairs (P(B | A) >= threshold, with support) and polysemy (spread of "
        "top texts against random texts, 2-means split), with example texts.",
    )
    diagnose.set_defaults(handler=_diagnose)
