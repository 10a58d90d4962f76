"""``aquin-monitor sae decompose | contrast | trace | steer | faithfulness | match``: argparse and handlers.

Each verb validates its inputs first (the SAE folder, feature indices against its size, texts,
corpus / pairs / BEIR files as ``file:line: field: problem``), then loads the model, embeds
(through the embedding cache) and calls the pure analysis function; ``--json`` writes the
result's ``to_json()`` (``-``: JSON on stdout only). Bad input raises
:class:`~aquin_monitor.cli_tools.InputError`, which the main CLI prints as one line with exit status 2.

Examples::

    aquin-monitor sae decompose default "Vitamin D deficiency increases fracture risk." --top 10
    aquin-monitor sae contrast default "text a" "text b" --json -
    aquin-monitor sae trace default "text" --feature 12 --figure trace.png
    aquin-monitor sae steer default "query" --feature 12 --delta 4 --beir aquin_monitor/datasets/scifact
    aquin-monitor sae faithfulness default --beir aquin_monitor/datasets/scifact --features 100
    aquin-monitor sae match sae/base sae/tuned --corpus texts.jsonl
"""

from __future__ import annotations

import argparse
from typing import Any

from .._optional import require
from ..cli_tools import (
    InputError,
    bounded_float,
    cache_option,
    check_command_text,
    declare_outputs,
    emit,
    finite_float,
    non_negative_int,
    positive_int,
    read_corpus,
)
from .verb_inputs import embed_texts, load_sae_for

__all__ = ["add_analysis_commands", "feature_labels"]


def feature_labels(sae_name: str, num_latents: int) -> list[str | None] | None:
    """Per-feature labels of SAE ``sae_name`` (:func:`aquin_monitor.sae.model.feature_labels`; imported
    when called: building the parser imports no torch)."""
    from .model import feature_labels as read_feature_labels

    return read_feature_labels(sae_name, num_latents)


def _sae_and_model(name: str, model: str | None) -> tuple[Any, str, list[str | None] | None]:
    sae, model, _ = load_sae_for(name, model)
    return sae, model, feature_labels(name, sae.num_latents)


def _check_feature(sae: Any, feature: int, name: str) -> None:
    from .model import sae_folder

    if not 0 <= feature < sae.num_latents:
        raise InputError(
            sae_folder(name) / "cfg.json", f"{feature} is outside 0..{sae.num_latents - 1}", line=1, field="--feature"
        )


def _check_text(text: str, what: str) -> str:
    return check_command_text(text, what)  # not empty, no NUL, valid Unicode (non-UTF-8 argv bytes)


def _emit_analysis(result: Any, args: argparse.Namespace, summary: str) -> Any:
    """:func:`~aquin_monitor.cli_tools.emit` of an analysis result (its ``to_json()``); returns the result."""
    emit(result.to_json(), args.json, summary)
    return result


def _named(feature: int, label: str | None) -> str:
    return f"#{feature}" + (f" [{label}]" if label else "")


def _decompose(args: argparse.Namespace) -> Any:
    from .decompose import decompose

    text = _check_text(args.text, "TEXT")
    sae, model, labels = _sae_and_model(args.sae, args.model)
    x = embed_texts(model, [text], args)[0]
    result = decompose(sae, x, top=args.top, labels=labels, text=text)
    lines = [
        f"{_named(f.feature, f.label):<32} activation {f.activation:8.4f}  share {f.share:+.4f}"
        for f in result.features
    ]
    lines.append(
        f"bias share {result.bias_share:+.4f}   relative error {result.relative_error:.4f}   "
        f"cos(x, x̂) {result.cosine_reconstruction:.4f}"
    )
    return _emit_analysis(result, args, "\n".join(lines))


def _contrast(args: argparse.Namespace) -> Any:
    from .decompose import contrast

    texts = [_check_text(args.text_a, "TEXT_A"), _check_text(args.text_b, "TEXT_B")]
    sae, model, labels = _sae_and_model(args.sae, args.model)
    a, b = embed_texts(model, texts, args)
    result = contrast(sae, a, b, top=args.top, labels=labels, texts=texts)
    lines = [
        f"cos(a, b) = {result.cosine:.5f} = Σφ {sum(t.phi for t in result.terms):+.5f} + bias {result.bias_term:+.5f}"
        f" + error {result.error_term:+.5f} (error share {result.error_share:.3f})"
    ]
    lines += [
        f"{_named(t.feature, t.label):<32} a {t.activation_a:7.4f}  b {t.activation_b:7.4f}  "
        f"diff {t.difference:+.4f}  φ {t.phi:+.5f}"
        for t in result.differing
    ]
    return _emit_analysis(result, args, "\n".join(lines))


def _trace(args: argparse.Namespace) -> Any:
    from ..encoders import load_model
    from .trace import layer_inputs, trace_feature, trace_figure

    text = _check_text(args.text, "TEXT")
    sae, model, labels = _sae_and_model(args.sae, args.model)
    _check_feature(sae, args.feature, args.sae)
    layers, _ = layer_inputs(load_model(model, device=args.device), [text])
    result = trace_feature(sae, layers[0], args.feature, top=args.top, labels=labels, text=text)
    if args.figure:
        from pathlib import Path

        from ..atomic import atomic_path

        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)  # checked writable before anything loaded
        with atomic_path(args.figure) as tmp:
            trace_figure(result).savefig(tmp, format="png", dpi=90)
    lines = [f"feature {_named(result.feature, result.label)}: {result.classification}"]
    lines += [
        f"layer {i:2d}  {a:8.4f}  co-active " + ", ".join(f"#{c['feature']}" for c in co)
        for i, (a, co) in enumerate(zip(result.activations, result.co_active))
    ]
    return _emit_analysis(result, args, "\n".join(lines))


def _retrieval_set(args: argparse.Namespace) -> Any:
    from ..data import read_beir, read_pairs

    if getattr(args, "pairs", None):
        return read_pairs(args.pairs)
    return read_beir(args.beir, args.split, max_corpus=args.max_corpus)


def _steer(args: argparse.Namespace) -> Any:
    from ..data import read_probe
    from .steer import steer

    query = _check_text(args.query, "QUERY")
    if args.corpus:
        corpus = read_probe(args.corpus, text_field=args.text_field, label_field=None, id_field=args.id_field)
        doc_ids, doc_texts = corpus.ids, corpus.texts
    else:
        data = _retrieval_set(args)
        doc_ids, doc_texts = data.doc_ids(), data.doc_texts()
    sae, model, labels = _sae_and_model(args.sae, args.model)
    _check_feature(sae, args.feature, args.sae)
    q = embed_texts(model, [query], args)[0]
    documents = embed_texts(model, doc_texts, args, chunk_size=256, desc=f"Embedding {len(doc_texts):,} documents")
    try:
        result = steer(
            sae,
            q,
            documents,
            args.feature,
            args.delta,
            top=args.top,
            doc_ids=doc_ids,
            texts=doc_texts,
            labels=labels,
            query_text=query,
        )
    except ValueError as error:  # a steered query that is not finite: say which flag made it
        raise InputError("<command line>", str(error), field="--delta") from None
    lines = [
        f"feature {_named(args.feature, result.label)}: "
        f"z {result.activation_before:.4f} -> {result.activation_after:.4f}"
        f" (measured {result.activation_measured:.4f}), cos(q, q') {result.cosine_shift:.4f}"
    ]
    for name, hits in (("before", result.before), ("after", result.after)):
        lines.append(f"{name}:")
        lines += [f"  {h.rank:2d}. {h.score:.4f}  {h.doc_id}  {h.text[:80]!r}" for h in hits]  # type: ignore[index]  # texts=doc_texts: every hit has its text
    return _emit_analysis(result, args, "\n".join(lines))


def _faithfulness(args: argparse.Namespace) -> Any:
    from ..search import SearchReport
    from .faithfulness import retrieval_faithfulness

    if args.index in ("ivf", "hnsw"):
        require("faiss", f"--index {args.index}")  # before any data is read or model loaded
    data = _retrieval_set(args)
    sae, model, labels = _sae_and_model(args.sae, args.model)
    queries = embed_texts(model, data.query_texts(), args, desc=f"Embedding {len(data.query_texts()):,} queries")
    documents = embed_texts(
        model, data.doc_texts(), args, chunk_size=256, desc=f"Embedding {len(data.doc_texts()):,} documents"
    )
    relevant, _, _ = data.positional()
    result = retrieval_faithfulness(
        sae,
        queries,
        documents,
        relevant,
        features=args.features,
        n_random=args.random,
        seed=args.seed,
        labels=labels,
        index=args.index,
    )
    lines = [f"NDCG@{result.ndcg_k} {result.ndcg:.4f} over {result.n_queries} queries"]
    if result.search and result.search["recall_at_k"] is not None:
        lines.insert(0, SearchReport(**result.search).line())
    lines += [
        f"{_named(f.feature, f.label):<32} drop {f.drop:+.4f}  random {f.random_drop_mean:+.4f}  "
        f"excess {f.excess_drop:+.4f}"
        f"  ({f.n_queries_active} queries)"
        for f in result.features[:20]
    ]
    return _emit_analysis(result, args, "\n".join(lines))


def _match(args: argparse.Namespace) -> Any:
    from .match import match_features

    texts = read_corpus(args.corpus, args.text_field, minimum=3)
    sae_a, model_a, labels_a = _sae_and_model(args.sae_a, args.model_a)
    sae_b, model_b, labels_b = _sae_and_model(args.sae_b, args.model_b)
    x_a = embed_texts(model_a, texts, args)
    x_b = x_a if model_b == model_a else embed_texts(model_b, texts, args)
    result = match_features(sae_a, x_a, sae_b, x_b, threshold=args.threshold, labels_a=labels_a, labels_b=labels_b)
    q = result.quality
    lines = [
        f"{len(result.pairs)} one-to-one pairs, mean correlation {q['mean']:.3f}, "
        f"{q['share_above_threshold']:.1%} ≥ {result.threshold}",
        f"unmatched: {len(result.unmatched_a)} in A, {len(result.unmatched_b)} in B",
    ]
    lines += [
        f"{_named(p.feature_a, p.label_a):<28} ~ {_named(p.feature_b, p.label_b):<28} r {p.correlation:.3f}"
        for p in result.pairs[:20]
    ]
    return _emit_analysis(result, args, "\n".join(lines))


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="embedding model (default: the one recorded in the SAE's cfg.json)"
    )


def _retrieval_options(parser: argparse.ArgumentParser, *, corpus: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    if corpus:
        source.add_argument("--corpus", metavar="FILE", help="JSONL documents to rank (text field, optional id field)")
    else:
        source.add_argument("--pairs", metavar="FILE", help="query/document pairs JSONL")
    source.add_argument("--beir", metavar="DIR", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    parser.add_argument("--split", default="test", help="BEIR qrels split (default test)")
    parser.add_argument(
        "--max-corpus", type=positive_int, default=None, metavar="N", help="BEIR: judged documents plus others up to N"
    )


def add_analysis_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the analysis verbs to the ``aquin-monitor sae`` sub-command group ``sub``."""
    cache = argparse.ArgumentParser(add_help=False)
    cache_option(cache)
    parents = [common, cache]
    sae_help = "SAE folder, or 'default' (shipped for all-MiniLM-L6-v2)"
    _add_text_verbs(sub, parents, sae_help)
    _add_retrieval_verbs(sub, parents, sae_help)


def _add_text_verbs(sub: Any, parents: list[argparse.ArgumentParser], sae_help: str) -> None:
    """decompose, contrast, trace: what a text (or a pair) is made of."""
    p = sub.add_parser(
        "decompose",
        parents=parents,
        help="active features of one text, with their share of the reconstruction",
        description="The text's active SAE features by activation (label, activation, share of the "
        "reconstruction), the bias share and the reconstruction error.",
    )
    p.add_argument("sae", metavar="SAE", help=sae_help)
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--top", type=positive_int, default=20, help="features listed (default 20)")
    _model_option(p)
    p.set_defaults(handler=_decompose)

    p = sub.add_parser(
        "contrast",
        parents=parents,
        help="split cos(a, b) into per-feature terms",
        description="Features that differ between two texts, and cos(a, b) = Σφ_i + bias + error exactly.",
    )
    p.add_argument("sae", metavar="SAE", help=sae_help)
    p.add_argument("text_a", metavar="TEXT_A")
    p.add_argument("text_b", metavar="TEXT_B")
    p.add_argument("--top", type=positive_int, default=20, help="differing features listed (default 20)")
    _model_option(p)
    p.set_defaults(handler=_contrast)

    p = sub.add_parser(
        "trace",
        parents=parents,
        help="a feature's activation at each encoder layer",
        description="Apply the SAE to each layer's pooled hidden state (through the model's own pooling "
        "and the modules after it) and follow one feature; classes it progressive or late-binding.",
    )
    p.add_argument("sae", metavar="SAE", help=sae_help)
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--feature", type=int, required=True, metavar="F")
    p.add_argument("--top", type=positive_int, default=5, help="co-active features per layer (default 5)")
    p.add_argument("--figure", metavar="PNG", help="write the one-column-per-layer figure here")
    _model_option(p)
    p.set_defaults(handler=_trace)
    declare_outputs(p, files=["--figure"])


def _add_retrieval_verbs(sub: Any, parents: list[argparse.ArgumentParser], sae_help: str) -> None:
    """steer, faithfulness, match: features against retrieval and against another SAE."""
    p = sub.add_parser(
        "steer",
        parents=parents,
        help="steer a query along a feature and re-rank a corpus",
        description="q' = normalise(q + (z'_F − z_F)·d_F) with z'_F = max(z_F + delta, 0); the corpus "
        "ranked by cosine before and after.",
    )
    p.add_argument("sae", metavar="SAE", help=sae_help)
    p.add_argument("query", metavar="QUERY")
    p.add_argument("--feature", type=int, required=True, metavar="F")
    p.add_argument("--delta", type=finite_float, required=True, help="added to the query's activation of F")
    p.add_argument("--top", type=positive_int, default=10, help="results listed before and after (default 10)")
    p.add_argument("--text-field", default="text", metavar="NAME", help="--corpus: text field (default text)")
    p.add_argument("--id-field", default="id", metavar="NAME", help="--corpus: id field if present (default id)")
    _retrieval_options(p, corpus=True)
    _model_option(p)
    p.set_defaults(handler=_steer)

    p = sub.add_parser(
        "faithfulness",
        parents=parents,
        help="NDCG@10 drop when each top feature is zeroed in the queries",
        description="Zero each of the top-N features in every query embedding (x' = x − z_i·d_i), "
        "recompute NDCG@10, and compare with ablating random features of the same activation mass.",
    )
    p.add_argument("sae", metavar="SAE", help=sae_help)
    p.add_argument(
        "--features", type=positive_int, default=100, metavar="N", help="top features by activation mass (default 100)"
    )
    p.add_argument(
        "--random",
        type=non_negative_int,
        default=5,
        metavar="R",
        help="random same-mass ablations per feature (default 5)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--index",
        choices=("auto", "exact", "ivf", "hnsw"),
        default="auto",
        help="document search (aquin_monitor.search): auto is exact up to 100,000 documents (default auto)",
    )
    _retrieval_options(p, corpus=False)
    _model_option(p)
    p.set_defaults(handler=_faithfulness)

    p = sub.add_parser(
        "match",
        parents=parents,
        help="match two SAEs' features by activation correlation",
        description="Correlate the two SAEs' activations on a shared corpus, match one-to-one "
        "(linear_sum_assignment) and many-to-one, and list each side's unmatched features.",
    )
    p.add_argument("sae_a", metavar="SAE_A", help=sae_help)
    p.add_argument("sae_b", metavar="SAE_B", help=sae_help)
    p.add_argument("--corpus", required=True, metavar="FILE", help="JSONL with one text per line")
    p.add_argument("--text-field", default="text", metavar="NAME")
    p.add_argument("--model-a", default=None, help="model of SAE_A (default: recorded in its cfg.json)")
    p.add_argument("--model-b", default=None, help="model of SAE_B (default: recorded in its cfg.json)")
    p.add_argument(
        "--threshold",
        type=bounded_float(-1.0, 1.0),
        default=0.5,
        help="correlation under which a feature is unmatched (default 0.5)",
    )
    p.set_defaults(handler=_match)
