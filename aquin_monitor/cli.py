"""Command line: ``aquin-monitor inspect | eval | diff | report | embed | sae``.

Look inside any checkpoint without training. Each command reads and validates its data and
checks that its models exist before it prints or loads anything (so bad input costs one line on
stderr and no wait), then composes :mod:`aquin_monitor.encoders`, :mod:`aquin_monitor.monitor`,
:mod:`aquin_monitor.snapshot_record` and :mod:`aquin_monitor.signals.retrieval`; nothing is computed
here. Results print as a table of metric names (the vocabulary of DESIGN.md) and values on
stdout and, with ``--json OUT``, as JSON (``--json -``: JSON on stdout instead of the table).
Progress bars and data summaries go to stderr.

Exit status: 0 on success; 2 on bad input (a :class:`~aquin_monitor.data.DataError`, a model that
cannot be loaded, a missing file, an output path that cannot be written, a run folder in use,
bad arguments) with one line on stderr naming the file, line and field, never a traceback; 1
when an optional dependency is missing; 130 on Ctrl-C (one line); 141 when the reader of stdout
went away (``aquin-monitor eval ... | head``: nothing on stderr). Every input and output path is
checked before the first model is loaded, and files are written atomically (a temporary name,
then a rename), so an interruption leaves no partial file.

Examples::

    aquin-monitor inspect default --probe probe.jsonl --json inspect.json
    aquin-monitor eval ./checkpoint --beir aquin_monitor/datasets/scifact --split test
    aquin-monitor eval ./checkpoint --pairs pairs.jsonl --cross-encoder ./reranker --rerank-k 50
    aquin-monitor diff default ./checkpoint --probe probe.jsonl --pairs pairs.jsonl
    aquin-monitor report runs/my-run
    aquin-monitor embed default --corpus corpus.jsonl --out store/ --dtype float16 --devices cuda:0,cuda:1
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._optional import MissingDependencyError, require
from .cli_tools import (
    CommandParser,
    InputError,
    cache_option,
    check_declared_outputs,
    check_output_file,
    declare_outputs,
    emit,
    note,
    positive_int,
    print_lines,
    terminal_safe,
    torch_device,
)
from .progress import quiet_progress
from .runlock import RunFolderLocked

__all__ = ["build_parser", "main"]

PROG = "aquin-monitor"
EXIT_OK, EXIT_MISSING_DEPENDENCY, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141  # 128 + SIGINT, 128 + SIGPIPE: what a shell shows for either


# --------------------------------------------------------------------------------------------
# Commands


def _inspect(args: argparse.Namespace) -> dict[str, Any]:
    from .data import read_probe
    from .encoders import check_model
    from .snapshot_runner import SnapshotRunner

    if (args.probe is None) == (args.store is None):
        raise InputError("<command line>", "give exactly one of --probe FILE and --store DIR", field="--probe/--store")
    if args.store is not None:
        return _inspect_store(args)
    if args.model is None:
        raise InputError("<command line>", "MODEL is needed with --probe", field="MODEL")
    probe = _usable_probe(read_probe(args.probe))
    check_model(args.model, adapter=args.adapter)
    note(probe.summary())
    runner = SnapshotRunner(
        probe,
        batch_size=args.batch_size,
        umap=_inspect_needs_umap(args),
        show_progress=args.progress,
        announce=args.progress,
        max_attention_texts=args.attention_texts,
    )
    snap = runner.take(
        _cached_model(args.model, args, args.adapter),
        0,
        tag="inspect",
        model_name=args.model,
        diff_against_history=False,
    )
    if args.run_dir:
        _save_inspect_snapshot(snap, args.run_dir)
    result: dict[str, Any] = {
        "command": "inspect",
        "model": args.model,
        "probe": {"source": probe.source, "n_texts": len(probe), "labels": probe.label_names()},
        "metrics": snap.metrics,
        "details": snap.details,
    }
    if "umap" in snap.arrays:
        result["umap"] = {"ids": probe.ids, "labels": probe.labels, "coordinates": snap.arrays["umap"]}
    emit(result, args.json, _metrics_table(snap.metrics))
    return result


def _inspect_needs_umap(args: argparse.Namespace) -> bool:
    """The UMAP layout (the slowest step of a small inspect) only where something shows it: the JSON
    (``--json``) or the report's figure (``--run-dir``); ``--umap`` forces it, ``--no-umap`` skips it."""
    if args.no_umap:
        return False
    return bool(args.umap or args.json is not None or args.run_dir)


def _inspect_store(args: argparse.Namespace) -> dict[str, Any]:
    """inspect --store: the geometry of every stored row (exact where streamed, else on a seeded sample); no model
    loads."""
    from .corpus_geometry import corpus_geometry
    from .embedding_cache import model_fingerprint
    from .encoders import resolve_model
    from .store import EmbeddingStore

    store = EmbeddingStore(args.store)
    if args.model is not None:
        location = resolve_model(args.model)
        if os.path.isdir(location) and model_fingerprint(location, args.adapter) != store.manifest.model_fingerprint:
            raise InputError(
                Path(args.store) / "manifest.json",
                f"the store was written by another model than {args.model!r} (its files differ)",
                line=1,
                field="model_fingerprint",
            )
    found = corpus_geometry(store, sample_rows=args.sample_rows)
    note(found.details()["sample_note"])
    result: dict[str, Any] = {
        "command": "inspect",
        "model": args.model,
        "store": {"path": str(args.store), "n_rows": len(store), "dimension": store.dimension},
        "metrics": found.as_metrics(),
        "details": {"geometry_sampling": found.details()},
    }
    emit(result, args.json, _metrics_table(result["metrics"]))
    return result


def _eval(args: argparse.Namespace) -> dict[str, Any]:
    from .data import read_beir
    from .encoders import check_model, load_cross_encoder
    from .search import SearchIndex
    from .signals.retrieval import rerank
    from .snapshot_runner import evaluate_retrieval_set

    if args.index in ("ivf", "hnsw"):
        require("faiss", f"--index {args.index}")  # before any data is read or model loaded
    data = _read_pairs(args.pairs) if args.pairs else read_beir(args.beir, args.split, max_corpus=args.max_corpus)
    check_model(args.model, adapter=args.adapter)
    if args.cross_encoder:
        check_model(args.cross_encoder, cross_encoder=True)
    cross_encoder = load_cross_encoder(args.cross_encoder, device=args.device) if args.cross_encoder else None
    note(data.summary())

    query_texts, doc_texts = data.query_texts(), data.doc_texts()
    # embeddings come from the on-disk cache when this model's files have embedded these texts before
    query_emb, doc_emb, (query_prompt, document_prompt) = _cached_model(
        args.model, args, args.adapter
    ).retrieval_embeddings(query_texts, doc_texts, batch_size=args.batch_size, show_progress=args.progress)

    report, by_category, search = evaluate_retrieval_set(data, query_emb, doc_emb, index=args.index)
    if search.index != "exact":
        note(search.line())
    metrics = report.as_metrics()
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
        "search": search.to_json(),
    }
    if cross_encoder is not None:
        candidates = (
            SearchIndex(doc_emb, index=args.index, expected_queries=len(query_emb))
            .search(query_emb, args.rerank_k)
            .indices
        )
        scores: dict[tuple[str, str], float] = {}  # a pair scored once, even when a query is ranked per category too

        def score_pairs(pairs: list[tuple[str, str]]):
            todo = list(dict.fromkeys(p for p in pairs if p not in scores))
            if todo:
                scores.update(
                    zip(todo, cross_encoder.predict(todo, batch_size=args.batch_size, show_progress_bar=args.progress))
                )
            return [scores[p] for p in pairs]

        relevant, _, categories = data.positional()
        reranked = rerank(query_texts, doc_texts, candidates, score_pairs, relevant, categories=categories)
        metrics.update(reranked.as_metrics())
        result["rerank"] = {"cross_encoder": args.cross_encoder, "k": args.rerank_k}
        split = data.positional_category_rows()  # categories given per pair: one row per (query, category)
        if split is not None:
            rows, row_relevant, _, row_categories = split
            reranked = rerank(
                [query_texts[r] for r in rows],
                doc_texts,
                candidates[rows],
                score_pairs,
                row_relevant,
                categories=row_categories,
            )
        if categories or split is not None:
            for category, values in reranked.by_category().items():
                by_category[str(category)].update(values)

    lines = _metrics_table(metrics)
    if by_category:
        lines += [""] + _category_table(by_category)
    lines += ["", "first relevant rank: " + _histogram_line(counts, edges)]
    emit(result, args.json, lines)
    return result


def _diff(args: argparse.Namespace) -> dict[str, Any]:
    from .data import read_probe
    from .encoders import check_model
    from .snapshot_record import diff
    from .snapshot_runner import SnapshotRunner
    from .verdict import retrieval_verdict

    probe = _usable_probe(read_probe(args.probe))
    retrieval = _read_pairs(args.pairs) if args.pairs else None
    check_model(args.base)
    check_model(args.other, adapter=args.adapter)  # a bad OTHER fails now, not after BASE has been encoded
    sae, sae_labels = _diff_sae(args) if args.sae else (None, None)
    note(probe.summary())
    if retrieval is not None:
        note(retrieval.summary())
    runner = SnapshotRunner(
        probe,
        retrieval,
        batch_size=args.batch_size,
        umap=False,
        show_progress=args.progress,
        announce=args.progress,
        sae=sae,
        sae_labels=sae_labels,
    )
    # One model in memory at a time (and none when the cache holds both passes).
    before = runner.take(
        _cached_model(args.base, args, None), 0, tag="base", model_name=args.base, diff_against_history=False
    )
    after = runner.take(
        _cached_model(args.other, args, args.adapter),
        1,
        tag="checkpoint",
        model_name=args.other,
        diff_against_history=False,
    )
    change = diff(before, after, name="base")
    lines: list[str] = []
    explanation = runner.explain_sae_drift(before, after) if sae is not None else None
    if explanation is not None:  # the same call the snapshot runner makes against the base
        from .sae.drift import explanation_lines

        change.metrics.update(explanation.metrics("drift/base"))
        change.details.update(explanation.details())
        lines = ["", *explanation_lines(change.details)]
    # One comparison only, so the keys drop the reference: drift/base/score -> drift/score.
    metrics = {key.replace("drift/base/", "drift/", 1): value for key, value in change.metrics.items()}
    # with --pairs: did retrieval get better, per query, with its interval (printed first, kept under "verdict")
    verdict = retrieval_verdict(before, after, seed=runner.seed, names=(args.base, args.other))
    result = {
        "command": "diff",
        "base": {"model": args.base, "metrics": before.metrics},
        "other": {"model": args.other, "adapter": args.adapter, "metrics": after.metrics},
        "probe": {"source": probe.source, "n_texts": len(probe)},
        "metrics": metrics,
        "details": change.details,
    }
    table = _metrics_table(metrics)
    if verdict is not None:
        result["verdict"] = verdict.as_record()
        table = [verdict.sentence, ""] + table
    if "drift/p_value" in metrics:
        from .signals.two_sample import drift_test_sentence

        table += ["", drift_test_sentence(metrics["drift/p_value"], metrics["drift/mmd2"])]
    emit(result, args.json, table + lines)
    return result


def _diff_sae(args: argparse.Namespace) -> tuple[Any, list[str | None] | None]:
    """``diff --sae``: the SAE (a folder or ``default``) and its feature labels, checked before any model
    loads: it must read the embeddings BASE and OTHER declare (their width, when their files say it)."""
    from .encoders import declared_dimension, resolve_model
    from .sae.model import feature_labels
    from .sae.verb_inputs import load_sae_for

    loaded = load_sae_for(args.sae, args.base)
    for model in (args.base, args.other):
        location = resolve_model(model)
        width = declared_dimension(location) if os.path.isdir(location) else None
        if width is not None:
            loaded = loaded._replace(model=model)
            loaded.check_width(width)
    return loaded.sae, feature_labels(args.sae, loaded.sae.num_latents)


def _report(args: argparse.Namespace) -> dict[str, Any]:
    from .report import (
        write_report,  # matplotlib and the page templates only when asked for
    )

    _check_run_folder(args.run_dir)
    path = write_report(args.run_dir)
    print_lines([str(path)])
    return {"command": "report", "path": str(path)}


def _embed(args: argparse.Namespace) -> dict[str, Any]:
    from .embed import fill_store, open_store_for, shard_encoder
    from .encoders import check_model, load_model, resolve_model

    devices = _embed_devices(args)
    check_model(args.model)
    writer = open_store_for(
        args.out,
        model_location=resolve_model(args.model),
        corpus=args.corpus,
        dtype=args.dtype,
        shard_rows=args.shard_rows,
    )
    encoded = 0
    if writer.complete:
        note(f"{args.out}: the store is already complete ({writer.manifest.count:,} rows); nothing to encode")
    else:
        if writer.rows_written:
            note(f"{args.out}: resuming after row {writer.rows_written:,} of {writer.manifest.count:,}")
        model = load_model(
            args.model, device=devices[0] if devices and len(devices) == 1 else ("cpu" if devices else None)
        )
        with shard_encoder(model, devices, batch_size=args.batch_size) as encode:
            encoded = fill_store(writer, args.corpus, encode, show_progress=args.progress)
    manifest = writer.manifest
    result = {
        "command": "embed",
        "out": str(args.out),
        "rows": manifest.count,
        "dimension": manifest.dimension,
        "dtype": manifest.dtype,
        "shards": len(manifest.shards),
        "encoded": encoded,
    }
    emit(result, args.json, _metrics_table({k: v for k, v in result.items() if k != "command"}))
    return result


def _embed_devices(args: argparse.Namespace) -> list[str] | None:
    """``--devices a,b`` (or ``--device a``) checked as torch devices before anything is read; None: ST's choice."""
    if args.devices and args.device:
        raise InputError("<command line>", "give one of them", field="--device and --devices")
    names = args.devices.split(",") if args.devices else ([args.device] if args.device else None)
    if names is None:
        return None
    import torch

    option = "--devices" if args.devices else "--device"
    for name in names:
        try:
            device = torch.device(name.strip())
        except (RuntimeError, ValueError):
            raise InputError(
                "<command line>", f"{name!r} is not a torch device (e.g. cpu, cuda:0)", field=option
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("<command line>", f"{name!r}: CUDA is not available on this machine", field=option)
    return [name.strip() for name in names]


# --------------------------------------------------------------------------------------------
# Glue


def _load_model(name: str, args: argparse.Namespace, adapter: str | None):
    from .encoders import load_model

    return load_model(name, device=args.device, adapter=adapter)


def _cached_model(name: str, args: argparse.Namespace, adapter: str | None):
    """The model as the embedding cache knows it (its files' fingerprint), loaded only on a cache miss."""
    from .embedding_cache import CachedModel, model_fingerprint
    from .encoders import declared_dimension, resolve_model

    location = resolve_model(name)
    return CachedModel(
        lambda: _load_model(name, args, adapter),
        model_fingerprint(location, adapter),
        enabled=args.cache,
        dimension=declared_dimension(location),
    )


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
# Checks before any model loads, and writes that leave nothing half-done


#: Smallest probe a snapshot takes (pairwise and PCA signals need three points).
MIN_PROBE_TEXTS = 3


def _usable_probe(probe):
    """``probe`` if a snapshot can be taken of it; else an :class:`~aquin_monitor.cli_tools.InputError`
    naming the file (found now, not after the model has loaded)."""
    if len(probe.texts) < MIN_PROBE_TEXTS:
        raise InputError(
            probe.source, f"a probe needs at least {MIN_PROBE_TEXTS} texts, got {len(probe.texts)}", field="--probe"
        )
    if len(set(probe.texts)) == 1:
        raise InputError(
            probe.source, f"all {len(probe.texts)} texts are identical; a probe needs different texts", field="--probe"
        )
    return probe


def _check_output_paths(args: argparse.Namespace) -> None:
    """Every path a command will write, checked before it reads a model (nothing is created here)."""
    check_declared_outputs(args)
    if args.command == "inspect" and args.run_dir:
        _check_inspect_run_dir(Path(args.run_dir))
    if args.command == "embed":
        _check_store_folder(Path(args.out))


def _check_store_folder(out: Path) -> None:
    """``embed --out`` writes a store: into a new or empty folder, or one holding a store (to resume)."""
    if (
        out.is_dir()
        and not (out / "manifest.json").is_file()
        and any(not p.name.startswith(".") for p in out.iterdir())
    ):
        raise InputError(
            out, "the folder holds other files and no embedding store; give a new or empty folder", field="--out"
        )


def _check_inspect_run_dir(run_dir: Path) -> None:
    """``inspect --run-dir`` writes ``snapshots/0`` of tag 'inspect': never into a folder a live run
    holds, never over another kind of snapshot (a training run's base)."""
    from .runlock import held_elsewhere, lock_holder
    from .snapshot_record import snapshot_tag

    if held_elsewhere(run_dir):
        raise RunFolderLocked(run_dir, lock_holder(run_dir))
    tag = snapshot_tag(run_dir, 0)
    if tag not in (None, "inspect"):
        raise InputError(
            run_dir,
            f"{run_dir / 'snapshots' / '0'} holds a {tag!r} snapshot, not an inspect one; "
            "inspect never replaces another kind of snapshot: choose another --run-dir",
            field="--run-dir",
        )


def _save_inspect_snapshot(snap, run_dir: str) -> None:
    from .runlock import RunLock

    with RunLock(run_dir):
        _check_inspect_run_dir(Path(run_dir))  # again, now that the folder is ours
        snap.save(run_dir)


#: Files whose presence makes a folder a run folder (besides snapshots/<step>/).
RUN_MARKERS = ("metrics.jsonl", "events.jsonl", "snapshots.jsonl")


def _check_run_folder(run_dir: str) -> None:
    """``report`` reads a run folder: refuse anything else before writing report.html into it."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise InputError(
            folder, "no such folder" if not folder.exists() else "is a file, not a run folder", field="RUN_DIR"
        )
    snapshots = folder / "snapshots"
    has_snapshot = snapshots.is_dir() and any(p.is_dir() and p.name.isdigit() for p in snapshots.iterdir())
    if not has_snapshot and not any((folder / name).is_file() for name in RUN_MARKERS):
        raise InputError(
            folder,
            f"not a run folder (no {', '.join(RUN_MARKERS)} or snapshots/<step>/); nothing written",
            field="RUN_DIR",
        )
    check_output_file(folder / "report.html", "RUN_DIR")


def _drop_stdout() -> None:
    """After the reader of stdout left: send what is still buffered to /dev/null, so the exit is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass


# --------------------------------------------------------------------------------------------
# Output


def _read_pairs(path: str):
    """:func:`~aquin_monitor.data.read_pairs`, its warnings (repeated lines) as one stderr line each."""
    import warnings

    from .data import read_pairs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_pairs(path)
    for warning in caught:
        note(f"{PROG}: warning: {warning.message}")
    return data


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value)}"
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _metrics_table(metrics: dict[str, Any], indent: str = "") -> list[str]:
    """One line per metric: name, value and what it measures (:func:`~aquin_monitor.metric_registry.metric_meaning`;
    nothing for a name the registry does not declare)."""
    from .metric_registry import metric_meaning

    width = max((len(name) for name in metrics), default=0)
    values = {name: _format_value(value) for name, value in metrics.items()}
    value_width = max((len(value) for value in values.values()), default=0)
    return [
        f"{indent}{name:<{width}}  {value:<{value_width}}  {metric_meaning(name)}".rstrip()
        for name, value in values.items()
    ]


def _category_table(by_category: dict[str, dict[str, float]]) -> list[str]:
    """One row per category with the headline metrics (all of them are in the JSON)."""
    first = next(iter(by_category.values()))
    columns = [
        c
        for c in (
            "retrieval/n_queries",
            "retrieval/ndcg@10",
            "retrieval/mrr@10",
            "retrieval/recall@10",
            "retrieval/hard_negative_gap",
            "rerank/after/ndcg@10",
        )
        if c in first
    ]
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


# --------------------------------------------------------------------------------------------
# Parser


#: The MODEL argument's help, shared by the verbs.
MODEL_HELP = "checkpoint directory or Hugging Face Hub id; 'default' = the bundled all-MiniLM-L6-v2"


def build_parser() -> argparse.ArgumentParser:
    """The ``aquin-monitor`` parser; each subcommand sets ``args.handler``."""
    common, model_options = _shared_options()
    parser = CommandParser(
        prog=PROG,
        description="Look inside sentence-embedding checkpoints: geometry, retrieval, drift, reports.",
        epilog=f"Exit status: {EXIT_OK} success, {EXIT_BAD_INPUT} bad input (one line on stderr), "
        f"{EXIT_MISSING_DEPENDENCY} missing optional dependency, {EXIT_INTERRUPTED} interrupted (Ctrl-C), "
        f"{EXIT_BROKEN_PIPE} stdout closed by its reader.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = [common, model_options]
    _add_inspect(commands, parents)
    _add_eval(commands, parents)
    _add_diff(commands, parents)
    _add_report(commands)
    _add_embed(commands, [common])
    from .sae.cli import (
        add_sae_commands,  # argparse only; torch is imported by the handlers
    )

    add_sae_commands(commands, common)
    return parser


def _shared_options() -> tuple[CommandParser, CommandParser]:
    """The parents every verb takes (output, batch, device, progress) and those of the verbs that load a model."""
    common = CommandParser(add_help=False)  # a parent lends its arguments only; typeshed wants the subparsers' class
    common.add_argument(
        "--json", metavar="OUT", help="also write the results as JSON to OUT ('-': JSON on stdout, no table)"
    )
    common.add_argument(
        "--batch-size", type=positive_int, default=32, metavar="N", help="encoding batch size (default 32)"
    )
    common.add_argument(
        "--device",
        type=torch_device,
        default=None,
        help="torch device, e.g. cpu or cuda (default: sentence-transformers' choice)",
    )
    common.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    model_options = CommandParser(add_help=False)  # how the model is loaded and its embeddings cached
    model_options.add_argument(
        "--adapter", metavar="DIR", help="peft LoRA adapter directory loaded on top of the model"
    )
    cache_option(model_options)
    return common, model_options


def _add_inspect(commands: Any, parents: list[CommandParser]) -> None:
    inspect = commands.add_parser(
        "inspect",
        parents=parents,
        help="geometry, layers, attention, OOD and UMAP of a probe set",
        description="Embed a probe set (JSONL: text, optional label and id) and report the geometry, "
        "layer-wise similarity, attention entropy and OOD metrics, with 2-D UMAP coordinates in the JSON.",
    )
    inspect.add_argument(
        "model", metavar="MODEL", nargs="?", default=None, help=MODEL_HELP + " (optional with --store)"
    )
    inspect.add_argument("--probe", metavar="FILE", help="probe set JSONL")
    inspect.add_argument(
        "--store",
        metavar="DIR",
        help="instead of a probe: the geometry of every row of an embedding store "
        "(`aquin-monitor embed`), in memory independent of its size; no model loads",
    )
    inspect.add_argument(
        "--sample-rows",
        type=positive_int,
        default=10_000,
        metavar="N",
        help="with --store: rows (seeded sample) for the signals without a streaming form (default 10000)",
    )
    umap = inspect.add_mutually_exclusive_group()
    umap.add_argument(
        "--umap",
        action="store_true",
        help="compute the 2-D UMAP layout even without --json or --run-dir (default: only for them, which show it)",
    )
    umap.add_argument("--no-umap", action="store_true", help="skip the UMAP projection, even with --json/--run-dir")
    inspect.add_argument(
        "--attention-texts",
        type=positive_int,
        default=32,
        metavar="N",
        help="probe texts (evenly spaced) whose attention gives the attention-entropy metrics",
    )
    inspect.add_argument(
        "--run-dir", metavar="DIR", help="also save the snapshot under DIR/snapshots/0/ (for `report`)"
    )
    inspect.set_defaults(handler=_inspect)
    declare_outputs(inspect, folders=["--run-dir"])


def _add_eval(commands: Any, parents: list[CommandParser]) -> None:
    evaluate = commands.add_parser(
        "eval",
        parents=parents,
        help="retrieval metrics, per category, rank histogram, reranking",
        description="Retrieval metrics (recall@1/5/10, MRR@10, NDCG@10, first relevant rank, hard-negative gap) "
        "of MODEL on query/document pairs or a BEIR folder; queries and documents are encoded with the "
        "model's query/document prompts when it has them. With --cross-encoder, metrics before and after "
        "reranking each query's top-k.",
    )
    evaluate.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--pairs", metavar="FILE", help="JSONL of query/document pairs (optional relevance, category, negative)"
    )
    source.add_argument(
        "--beir", metavar="DIR", help="BEIR folder: corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv"
    )
    evaluate.add_argument("--split", default="test", help="BEIR qrels split (default test)")
    evaluate.add_argument(
        "--max-corpus", type=positive_int, metavar="N", help="BEIR: keep the judged documents plus others up to N"
    )
    evaluate.add_argument("--cross-encoder", metavar="CE", help="cross-encoder directory or Hub id to rerank the top-k")
    evaluate.add_argument(
        "--rerank-k", type=positive_int, default=50, metavar="K", help="candidates reranked per query (default 50)"
    )
    evaluate.add_argument(
        "--index",
        choices=("auto", "exact", "ivf", "hnsw"),
        default="auto",
        help="how documents are searched (aquin_monitor.search): exact, or an approximate faiss index "
        "whose recall@10 against exact search is measured and printed; auto: exact up to "
        "100,000 documents, ivf beyond (default auto)",
    )
    evaluate.set_defaults(handler=_eval)


def _add_diff(commands: Any, parents: list[CommandParser]) -> None:
    compare = commands.add_parser(
        "diff",
        parents=parents,
        help="embedding drift from BASE to OTHER on a probe set",
        description="Rotation-invariant drift from BASE to OTHER on the same probe texts: linear CKA, k-NN "
        "overlap, similarity-distribution shift, anisotropy delta, per-label centroid shift and the composite "
        "drift score (drift/score), and a two-sample test of whether the space moved more than re-sampling the "
        "probe explains (drift/p_value, drift/mmd2); with --pairs also ranks of the relevant documents. --adapter "
        "applies to OTHER. With --sae, the drift read through BASE's sparse autoencoder: the features whose "
        "activation moved (Wilcoxon signed-rank per feature, Benjamini-Hochberg q < 0.05) and the pairs whose "
        "cosine changed most, each change split exactly into feature, bias and error terms.",
    )
    compare.add_argument("base", metavar="BASE", help=MODEL_HELP)
    compare.add_argument("other", metavar="OTHER", help=MODEL_HELP)
    compare.add_argument("--probe", required=True, metavar="FILE", help="probe set JSONL")
    compare.add_argument("--pairs", metavar="FILE", help="query/document pairs JSONL for rank changes")
    compare.add_argument(
        "--sae",
        metavar="SAE",
        help="BASE's sparse autoencoder (a folder, or 'default' for the bundled model) to explain the drift by "
        "its features; pairs: those of --pairs, else pairs of probe texts",
    )
    compare.set_defaults(handler=_diff)


def _add_report(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="write RUN_DIR/report.html",
        description=(
            "Write the self-contained HTML report of a run directory to RUN_DIR/report.html and print its path."
        ),
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by the monitor")
    report.set_defaults(handler=_report)


def _add_embed(commands: Any, parents: list[CommandParser]) -> None:
    embed = commands.add_parser(
        "embed",
        parents=parents,
        help="embed a corpus into a sharded, resumable embedding store",
        description="Embed every text of a corpus (a BEIR corpus.jsonl[.gz] or folder, or a probe JSONL) into an "
        "embedding store: fp16/fp32 .npy shards and a manifest naming the model's files and the corpus's hash. "
        "Rerun the same command after an interruption to resume after the last complete shard.",
    )
    embed.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    embed.add_argument(
        "--corpus", required=True, metavar="FILE", help="corpus JSONL (_id/title/text or text/id), or a BEIR folder"
    )
    embed.add_argument(
        "--out", required=True, metavar="DIR", help="the store's folder (created; an unfinished store there is resumed)"
    )
    embed.add_argument(
        "--devices", metavar="LIST", help="several devices, e.g. cuda:0,cuda:1 or cpu,cpu: one encoding process each"
    )
    embed.add_argument(
        "--dtype", choices=("float16", "float32"), default="float32", help="shard dtype (default float32)"
    )
    embed.add_argument(
        "--shard-rows", type=positive_int, default=100_000, metavar="N", help="rows per shard (default 100000)"
    )
    declare_outputs(embed, folders=["--out"])
    embed.set_defaults(handler=_embed)


def _warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A warning on the command line: one terminal-safe line ``aquin-monitor: warning: ...`` (not Python's two)."""
    text = " ".join(str(message).split()).removeprefix(f"{PROG}: ")
    print(terminal_safe(f"{PROG}: warning: {text}"), file=sys.stderr)


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
        _check_output_paths(args)
        with (
            quiet_progress(not getattr(args, "progress", True)),
            warnings.catch_warnings(),
        ):  # --no-progress: model loading bars too
            warnings.showwarning = _warning_line
            args.handler(args)
        sys.stdout.flush()  # a reader that went away shows here, not as a message at interpreter exit
    except BrokenPipeError:  # `aquin-monitor eval ... | head`: not an error of ours, nothing to say
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # files are written atomically: nothing partial is left behind
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MissingDependencyError as error:
        print(terminal_safe(f"{PROG} {args.command}: error: {_one_line(error)}"), file=sys.stderr)
        return EXIT_MISSING_DEPENDENCY
    # The project's convention: bad input raises a ValueError subclass (DataError, ModelLoadError,
    # RetrievalInputError, ...); unreadable or missing files raise OSError.
    except (ValueError, OSError, RunFolderLocked) as error:
        print(terminal_safe(f"{PROG} {args.command}: error: {_one_line(error)}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
