"""Command line: ``aquin-monitor inspect | eval | diff | report | sae``.

Look inside any checkpoint without training. Each command reads and validates its data and
checks that its models exist before it prints or loads anything (so bad input costs one line on
stderr and no wait), then composes :mod:`aquin_monitor.encoders`, :mod:`aquin_monitor.monitor`,
:mod:`aquin_monitor.snapshot` and :mod:`aquin_monitor.signals.retrieval`; nothing is computed
here. Results print as a table of metric names (the vocabulary of DESIGN.md) and values on
stdout and, with ``--json OUT``, as JSON (``--json -``: JSON on stdout instead of the table).
Progress bars and data summaries go to stderr.

Exit status: 0 on success; 2 on bad input (a :class:`~aquin_monitor.data.DataError`, a model that
cannot be loaded, a missing file, bad arguments) with one line on stderr naming the file, line
and field, never a traceback; 1 when an optional dependency is missing.

Examples::

    aquin-monitor inspect default --probe probe.jsonl --json inspect.json
    aquin-monitor eval ./checkpoint --beir aquin_monitor/datasets/scifact --split test
    aquin-monitor eval ./checkpoint --pairs pairs.jsonl --cross-encoder ./reranker --rerank-k 50
    aquin-monitor diff default ./checkpoint --probe probe.jsonl --pairs pairs.jsonl
    aquin-monitor report runs/my-run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._optional import MissingDependencyError

__all__ = ["build_parser", "main"]

PROG = "aquin-monitor"
EXIT_OK, EXIT_MISSING_DEPENDENCY, EXIT_BAD_INPUT = 0, 1, 2



# --------------------------------------------------------------------------------------------
# Commands


def _inspect(args: argparse.Namespace) -> dict[str, Any]:
    from .data import read_probe
    from .encoders import resolve_model
    from .monitor import SnapshotRunner

    probe = read_probe(args.probe)
    resolve_model(args.model)
    _note(probe.summary())
    model = _load_model(args.model, args, args.adapter)
    runner = SnapshotRunner(probe, batch_size=args.batch_size, umap=not args.no_umap, show_progress=args.progress,
                            max_attention_texts=args.attention_texts)
    snap = runner.take(model, 0, tag="inspect", model_name=args.model, run_dir=args.run_dir, diff_against_history=False)
    result: dict[str, Any] = {
        "command": "inspect",
        "model": args.model,
        "probe": {"source": probe.source, "n_texts": len(probe), "labels": probe.label_names()},
        "metrics": snap.metrics,
        "details": snap.details,
    }
    if "umap" in snap.arrays:
        result["umap"] = {"ids": probe.ids, "labels": probe.labels, "coordinates": snap.arrays["umap"]}
    _emit(result, args, _metrics_table(snap.metrics))
    return result


def _eval(args: argparse.Namespace) -> dict[str, Any]:
    from .data import read_beir, read_pairs
    from .embedding_cache import model_fingerprint, retrieval_embeddings
    from .encoders import load_cross_encoder, resolve_model
    from .signals.retrieval import rerank, retrieval_metrics, topk

    data = read_pairs(args.pairs) if args.pairs else read_beir(args.beir, args.split, max_corpus=args.max_corpus)
    location = resolve_model(args.model)
    cross_encoder = load_cross_encoder(args.cross_encoder, device=args.device) if args.cross_encoder else None
    _note(data.summary())

    query_texts, doc_texts = data.query_texts(), data.doc_texts()
    # embeddings come from the on-disk cache when this model's files have embedded these texts before
    query_emb, doc_emb, (query_prompt, document_prompt) = retrieval_embeddings(
        lambda: _load_model(args.model, args, args.adapter), model_fingerprint(location, args.adapter),
        query_texts, doc_texts, batch_size=args.batch_size, show_progress=args.progress, enabled=args.cache)

    relevant, negatives, categories = _indexed_judgements(data)
    report = retrieval_metrics(
        query_emb, doc_emb, relevant, categories=categories, hard_negatives=negatives if any(negatives) else None
    )
    metrics = report.as_metrics()
    by_category = {str(k): v for k, v in report.by_category().items()} if categories else {}
    counts, edges = report.rank_histogram()
    result: dict[str, Any] = {
        "command": "eval",
        "model": args.model,
        "data": {"source": data.source, "n_queries": len(query_texts), "n_documents": len(doc_texts)},
        "prompts": {"query": query_prompt, "document": document_prompt},
        "metrics": metrics,
        "by_category": by_category,
        "rank_histogram": {"edges": edges, "counts": counts},
        "hard_negative_gap": _gap_summary(report),
    }
    if cross_encoder is not None:
        _, candidates = topk(query_emb, doc_emb, args.rerank_k)

        def score_pairs(pairs: list[tuple[str, str]]):
            return cross_encoder.predict(pairs, batch_size=args.batch_size, show_progress_bar=args.progress)

        reranked = rerank(query_texts, doc_texts, candidates, score_pairs, relevant, categories=categories)
        metrics.update(reranked.as_metrics())
        result["rerank"] = {"cross_encoder": args.cross_encoder, "k": args.rerank_k}
        if categories:
            for category, values in reranked.by_category().items():
                by_category[str(category)].update(values)

    lines = _metrics_table(metrics)
    if by_category:
        lines += [""] + _category_table(by_category)
    lines += ["", "first relevant rank: " + _histogram_line(counts, edges)]
    _emit(result, args, lines)
    return result


def _diff(args: argparse.Namespace) -> dict[str, Any]:
    from .data import read_pairs, read_probe
    from .encoders import resolve_model
    from .monitor import SnapshotRunner
    from .snapshot import diff

    probe = read_probe(args.probe)
    retrieval = read_pairs(args.pairs) if args.pairs else None
    resolve_model(args.base)
    resolve_model(args.other)  # a missing OTHER fails now, not after BASE has been encoded
    _note(probe.summary())
    if retrieval is not None:
        _note(retrieval.summary())
    runner = SnapshotRunner(probe, retrieval, batch_size=args.batch_size, umap=False, show_progress=args.progress)
    # One model in memory at a time.
    before = runner.take(_load_model(args.base, args, None), 0, tag="base", model_name=args.base, diff_against_history=False)
    after = runner.take(_load_model(args.other, args, args.adapter), 1, tag="checkpoint", model_name=args.other, diff_against_history=False)
    change = diff(before, after, name="base")
    # One comparison only, so the keys drop the reference: drift/base/score -> drift/score.
    metrics = {key.replace("drift/base/", "drift/", 1): value for key, value in change.metrics.items()}
    result = {
        "command": "diff",
        "base": {"model": args.base, "metrics": before.metrics},
        "other": {"model": args.other, "adapter": args.adapter, "metrics": after.metrics},
        "probe": {"source": probe.source, "n_texts": len(probe)},
        "metrics": metrics,
        "details": change.details,
    }
    _emit(result, args, _metrics_table(metrics))
    return result


def _report(args: argparse.Namespace) -> dict[str, Any]:
    from .report import write_report  # matplotlib and the page templates only when asked for

    path = write_report(args.run_dir)
    print(path)
    return {"command": "report", "path": str(path)}


# --------------------------------------------------------------------------------------------
# Glue


def _load_model(name: str, args: argparse.Namespace, adapter: str | None):
    from .encoders import load_model

    return load_model(name, device=args.device, adapter=adapter)


def _indexed_judgements(data) -> tuple[list[dict[int, int]], list[list[int]], list[str] | None]:
    """Relevance, hard negatives and categories by position, as ``retrieval_metrics`` takes them."""
    position = {doc_id: i for i, doc_id in enumerate(data.doc_ids())}
    query_ids = data.query_ids()
    relevant = [{position[d]: grade for d, grade in data.qrels[q].items()} for q in query_ids]
    negatives = [[position[d] for d in data.hard_negatives[q]] for q in query_ids]
    categories = [data.categories[q] for q in query_ids] if data.categories else None
    return relevant, negatives, categories


def _gap_summary(report) -> dict[str, Any]:
    """Distribution of sim(closest relevant) − sim(closest negative) over evaluated queries."""
    import numpy as np

    gaps = report.hard_negative_gap[report.evaluated & np.isfinite(report.hard_negative_gap)]
    if not gaps.size:
        return {"n_queries": 0}
    return {
        "n_queries": int(gaps.size),
        "labelled_negatives": int(report.negative_is_labelled[report.evaluated].sum()),
        "mean": float(gaps.mean()),
        "median": float(np.median(gaps)),
        "min": float(gaps.min()),
        "max": float(gaps.max()),
        "fraction_negative": float(np.mean(gaps < 0)),  # a negative outscores every positive
    }


# --------------------------------------------------------------------------------------------
# Output


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value)}"
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _metrics_table(metrics: dict[str, Any], indent: str = "") -> list[str]:
    width = max((len(name) for name in metrics), default=0)
    return [f"{indent}{name:<{width}}  {_format_value(value)}" for name, value in metrics.items()]


def _category_table(by_category: dict[str, dict[str, float]]) -> list[str]:
    """One row per category with the headline metrics (all of them are in the JSON)."""
    first = next(iter(by_category.values()))
    columns = [c for c in ("retrieval/n_queries", "retrieval/ndcg@10", "retrieval/mrr@10", "retrieval/recall@10",
                           "retrieval/hard_negative_gap", "rerank/after/ndcg@10") if c in first]
    header = ["category"] + [c.removeprefix("retrieval/").replace("rerank/after/", "reranked ") for c in columns]
    rows = [[str(name)] + [_format_value(values[c]) for c in columns] for name, values in by_category.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]


def _histogram_line(counts, edges) -> str:
    """``1: 40, 2: 9, 6-10: 3, ...``: bins [a, b) of the default rank edges, empty ones left out."""
    parts = []
    for count, low, high in zip(counts.tolist(), edges[:-1].tolist(), edges[1:].tolist()):
        if count:
            label = f"{int(low)}" if high - low == 1 else f"{int(low)}-{int(high) - 1}"
            parts.append(f"{label}: {count}")
    return ", ".join(parts) or "no evaluated query"


def _emit(result: dict[str, Any], args: argparse.Namespace, table: list[str]) -> None:
    from .sinks.jsonl import to_jsonable

    text = json.dumps(to_jsonable(result), indent=1, allow_nan=False)
    if args.json == "-":
        print(text)
        return
    print("\n".join(table))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
        _note(f"wrote {out}")


# --------------------------------------------------------------------------------------------
# Parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``aquin-monitor`` parser; each subcommand sets ``args.handler``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT ('-': JSON on stdout, no table)")
    common.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="encoding batch size (default 32)")
    common.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: sentence-transformers' choice)")
    common.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    adapter = argparse.ArgumentParser(add_help=False)
    adapter.add_argument("--adapter", metavar="DIR", help="peft LoRA adapter directory loaded on top of the model")

    model_help = "checkpoint directory or Hugging Face Hub id; 'default' = the bundled all-MiniLM-L6-v2"
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look inside sentence-embedding checkpoints: geometry, retrieval, drift, reports.",
        epilog=f"Exit status: {EXIT_OK} success, {EXIT_BAD_INPUT} bad input (one line on stderr), "
        f"{EXIT_MISSING_DEPENDENCY} missing optional dependency.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    inspect = commands.add_parser(
        "inspect", parents=[common, adapter], help="geometry, layers, attention, OOD and UMAP of a probe set",
        description="Embed a probe set (JSONL: text, optional label and id) and report the geometry, "
        "layer-wise similarity, attention entropy and OOD metrics, with 2-D UMAP coordinates in the JSON.",
    )
    inspect.add_argument("model", metavar="MODEL", help=model_help)
    inspect.add_argument("--probe", required=True, metavar="FILE", help="probe set JSONL")
    inspect.add_argument("--no-umap", action="store_true", help="skip the UMAP projection")
    inspect.add_argument("--attention-texts", type=_positive_int, default=32, metavar="N",
                         help="probe texts (evenly spaced) whose attention gives the attention-entropy metrics")
    inspect.add_argument("--run-dir", metavar="DIR", help="also save the snapshot under DIR/snapshots/0/ (for `report`)")
    inspect.set_defaults(handler=_inspect)

    evaluate = commands.add_parser(
        "eval", parents=[common, adapter], help="retrieval metrics, per category, rank histogram, reranking",
        description="Retrieval metrics (recall@1/5/10, MRR@10, NDCG@10, first relevant rank, hard-negative gap) "
        "of MODEL on query/document pairs or a BEIR folder; queries and documents are encoded with the "
        "model's query/document prompts when it has them. With --cross-encoder, metrics before and after "
        "reranking each query's top-k.",
    )
    evaluate.add_argument("model", metavar="MODEL", help=model_help)
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", metavar="FILE", help="JSONL of query/document pairs (optional relevance, category, negative)")
    source.add_argument("--beir", metavar="DIR", help="BEIR folder: corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv")
    evaluate.add_argument("--split", default="test", help="BEIR qrels split (default test)")
    evaluate.add_argument("--max-corpus", type=_positive_int, metavar="N", help="BEIR: keep the judged documents plus others up to N")
    evaluate.add_argument("--cross-encoder", metavar="CE", help="cross-encoder directory or Hub id to rerank the top-k")
    evaluate.add_argument("--rerank-k", type=_positive_int, default=50, metavar="K", help="candidates reranked per query (default 50)")
    evaluate.add_argument("--no-cache", dest="cache", action="store_false",
                          help="neither read nor write the embedding cache ($AQUIN_MONITOR_CACHE, default ~/.cache/aquin-monitor)")
    evaluate.set_defaults(handler=_eval)

    compare = commands.add_parser(
        "diff", parents=[common, adapter], help="embedding drift from BASE to OTHER on a probe set",
        description="Rotation-invariant drift from BASE to OTHER on the same probe texts: linear CKA, k-NN "
        "overlap, similarity-distribution shift, anisotropy delta, per-label centroid shift and the composite "
        "drift score (drift/score); with --pairs also ranks of the relevant documents. --adapter applies to OTHER.",
    )
    compare.add_argument("base", metavar="BASE", help=model_help)
    compare.add_argument("other", metavar="OTHER", help=model_help)
    compare.add_argument("--probe", required=True, metavar="FILE", help="probe set JSONL")
    compare.add_argument("--pairs", metavar="FILE", help="query/document pairs JSONL for rank changes")
    compare.set_defaults(handler=_diff)

    report = commands.add_parser(
        "report", help="write RUN_DIR/report.html",
        description="Write the self-contained HTML report of a run directory to RUN_DIR/report.html and print its path.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by the monitor")
    report.set_defaults(handler=_report)

    from .sae.cli import add_sae_commands  # argparse only; torch is imported by the handlers

    add_sae_commands(commands, common)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``aquin-monitor`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, message already printed)
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    try:
        args.handler(args)
    except MissingDependencyError as error:
        print(f"{PROG} {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_MISSING_DEPENDENCY
    # The project's convention: bad input raises a ValueError subclass (DataError, ModelLoadError,
    # RetrievalInputError, ...); unreadable or missing files raise OSError.
    except (ValueError, OSError) as error:
        print(f"{PROG} {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
