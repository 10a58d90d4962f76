"""``aquin-monitor sae browse | diagnose``: the feature browser page and the absorption/polysemy report.

Inputs are checked before any model loads: the corpus (``file:line: field: problem``), the output
paths (``--html``, ``--json``: not a folder, in a writable folder), the SAE folder, and the SAE's input
size against the model's declared embedding size. Bad input raises a ``ValueError`` subclass, which
the main CLI prints as one line with exit status 2.

Examples::

    aquin-monitor sae browse default --corpus texts.jsonl --html sae_page.html
    aquin-monitor sae browse sae/minilm --corpus texts.jsonl --json -
    aquin-monitor sae diagnose default --corpus texts.jsonl --threshold 0.9
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..cli import bounded_float, positive_int, print_lines

__all__ = ["add_page_commands"]


class PageInputError(ValueError):
    """Bad ``sae browse`` / ``sae diagnose`` input (one line: file, line, field, problem)."""


def _check_output(path: str | None, flag: str) -> None:
    if path is None or path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise PageInputError(f"{target}:0: {flag}: is a folder, expected a file path")
    folder = target.parent if str(target.parent) else Path(".")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise PageInputError(f"{target}:0: {flag}: folder {existing} is not writable")


def _inputs(args: argparse.Namespace) -> tuple[Any, list[str], str]:
    """Validated (sae, texts, model) — nothing here loads a model."""
    from ..data import read_probe
    from ..encoders import resolve_model
    from .cli import declared_dimension
    from .model import CFG_NAME, default_sae_path, load_sae

    corpus = read_probe(args.corpus, text_field=args.text_field, label_field=None, id_field=None)
    if len(corpus.texts) < 2:
        raise PageInputError(f"{args.corpus}:1: {args.text_field}: need at least 2 texts, got {len(corpus.texts)}")
    _check_output(getattr(args, "html", None), "--html")
    _check_output(args.json, "--json")
    sae = load_sae(args.sae)
    cfg = (default_sae_path() if args.sae == "default" else Path(args.sae)) / CFG_NAME
    model = args.model or sae.metadata.get("model")
    if not model:
        raise PageInputError(f"{cfg}:1: model: not recorded; pass --model")
    location = resolve_model(model)
    dimension = declared_dimension(location) if os.path.isdir(location) else None
    if dimension is not None and dimension != sae.d_in:
        raise PageInputError(f"{cfg}:1: d_in: the SAE takes {sae.d_in}-dimensional inputs but model {model!r} outputs {dimension}")
    return sae, list(corpus.texts), str(model)


def _embeddings(args: argparse.Namespace, sae: Any, texts: list[str], model: str) -> Any:
    from .cli import refuse_non_finite
    from .embeddings import embed_corpus

    x = embed_corpus(model, texts, batch_size=args.batch_size, device=args.device, cache=args.cache,
                     show_progress=args.progress)
    refuse_non_finite(x, texts, model)
    if x.shape[1] != sae.d_in:
        raise PageInputError(f"{args.sae}/cfg.json:1: d_in: the SAE takes {sae.d_in}-dimensional inputs but model {model!r} outputs {x.shape[1]}")
    return x


def _write_json(result: Any, path: str | None) -> None:
    from ..sinks.jsonl import to_jsonable
    from .files import atomic_write_text

    text = json.dumps(to_jsonable(result), indent=1)
    if path == "-":
        print(text)
    elif path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text + "\n")


def _browse(args: argparse.Namespace) -> dict[str, Any]:
    from .page import analyse_corpus, page_data, write_page

    sae, texts, model = _inputs(args)
    x = _embeddings(args, sae, texts, model)
    browser, network, diagnostics = analyse_corpus(
        sae, x, texts, examples=args.examples, npmi=args.npmi, threshold=args.threshold, min_support=args.min_support
    )
    title = f"SAE {args.sae} on {Path(args.corpus).name} ({model})"
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        write_page(args.html, browser, network, diagnostics, title=title)
    data = page_data(browser, network, diagnostics, title=title)
    _write_json(data, args.json)
    if args.json != "-":
        lines = [f"{rank:>4} feature {f.index:>5}  {', '.join(f.label) or '-':<36} freq {f.frequency:7.2%}  "
                 f"max {f.max_activation:6.3f}  {_clip([f.examples[0].text if f.examples else ''], 70)}"
                 for rank, f in enumerate(browser.features[: args.show], 1)]
        lines.append(f"{len(browser.features)} of {browser.num_latents} features fired on {browser.n_texts} texts; "
                     f"network: {len(network.nodes)} nodes, {len(network.edges)} edges" + (f"; page: {args.html}" if args.html else ""))
        print_lines(lines)
    return data


def _clip(texts: list[str], width: int = 60) -> str:
    text = texts[0] if texts else ""
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def _diagnose(args: argparse.Namespace) -> Any:
    import dataclasses

    from .activations import sparse_activations
    from .diagnose import diagnose

    sae, texts, model = _inputs(args)
    x = _embeddings(args, sae, texts, model)
    result = diagnose(sparse_activations(sae, x), x, texts, threshold=args.threshold, min_support=args.min_support)
    _write_json(dataclasses.asdict(result), args.json)
    if args.json != "-":
        lines = []
        lines.append(f"absorption pairs (P(B | A) >= {result.threshold}): {len(result.absorption)}")
        for p in result.absorption[: args.show]:
            lines.append(f"  {p.source:>5} -> {p.target:<5} P={p.probability:.3f}  A fires on {p.support}, both on {p.both}  e.g. {_clip(p.examples)}")
        lines.append(f"polysemy, widest spread of top texts (minus random texts' {result.baseline:.3f}):")
        for p in result.polysemy[: args.show]:
            lines.append(f"  {p.feature:>5} excess {p.spread_excess:+.3f}  silhouette {p.silhouette:.2f}  {_clip(p.examples[0])} | {_clip(p.examples[1])}")
        merged = sorted((p for p in result.polysemy if p.merged), key=lambda p: (-p.silhouette, p.feature))
        lines.append(f"merged (2-means split of top texts, silhouette >= {result.silhouette_threshold}): {len(merged)}")
        for p in merged[: args.show]:
            lines.append(f"  {p.feature:>5} silhouette {p.silhouette:.2f}  sides {p.split_sizes}  {_clip(p.examples[0])} | {_clip(p.examples[1])}")
        print_lines(lines)
    return result


def add_page_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``browse`` and ``diagnose`` to the ``aquin-monitor sae`` sub-command group ``commands``."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("sae", metavar="SAE", help="SAE folder, or 'default' (shipped for all-MiniLM-L6-v2)")
    shared.add_argument("--corpus", required=True, metavar="FILE", help="JSONL with one text per line")
    shared.add_argument("--text-field", default="text", metavar="NAME", help="field holding the text (default text)")
    shared.add_argument("--model", default=None, help="embedding model (default: the one recorded in cfg.json)")
    shared.add_argument("--no-cache", dest="cache", action="store_false", help="neither read nor write the embedding cache")
    shared.add_argument("--threshold", type=bounded_float(0.0, 1.0), default=0.9, help="absorption: least P(B | A) (default 0.9)")
    shared.add_argument("--min-support", type=positive_int, default=10, metavar="N",
                        help="least texts for an absorption pair or a network edge (default 10)")
    shared.add_argument("--show", type=positive_int, default=20, metavar="N", help="rows printed (default 20)")

    browse = commands.add_parser("browse", parents=[common, shared], help="feature browser, co-activation network, diagnostics",
                                 description="Rank the SAE's features over a corpus (labels by c-TF-IDF), build the co-activation "
                                 "network and the absorption/polysemy diagnostics; --html writes one self-contained page.")
    browse.add_argument("--html", metavar="OUT", default=None, help="write the interactive page to OUT")
    browse.add_argument("--examples", type=positive_int, default=20, metavar="N", help="top texts kept per feature (default 20)")
    browse.add_argument("--npmi", type=bounded_float(-1.0, 1.0), default=0.3, help="least NPMI of a network edge (default 0.3)")
    browse.set_defaults(handler=_browse)

    diagnose = commands.add_parser("diagnose", parents=[common, shared], help="absorption pairs and polysemous features",
                                   description="Absorption pairs (P(B | A) >= threshold, with support) and polysemy (spread of "
                                   "top texts against random texts, 2-means split), with example texts.")
    diagnose.set_defaults(handler=_diagnose)
