"""``aquin-monitor sae train | eval``: the SAE sub-commands (argparse and handlers).

Every input is validated before a model is loaded: the corpus (``file:line: field: problem``),
the SAE folder (corrupt or missing ``cfg.json``, tensors that disagree with it), and the SAE's input
dimension against the model's embedding size as its checkpoint files declare it. Bad input raises a
``ValueError`` subclass, which the main CLI turns into one line on stderr and exit status 2.

Examples::

    aquin-monitor sae train default --corpus texts.jsonl --out sae/minilm
    aquin-monitor sae eval sae/minilm --corpus heldout.jsonl --beir aquin_monitor/datasets/scifact --json q.json
    aquin-monitor sae eval default --corpus heldout.jsonl --pairs pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..cli import finite_float, positive_int, print_lines

__all__ = ["add_sae_commands", "declared_dimension", "relevance_by_position"]


class SaeInputError(ValueError):
    """Bad SAE command input (one line: file, line, field, problem)."""


def relevance_by_position(data: Any) -> list[dict[int, int]]:
    """Per query (in ``data.query_ids()`` order), ``{document position: grade}`` as retrieval metrics take it."""
    position = {doc_id: i for i, doc_id in enumerate(data.doc_ids())}
    return [{position[d]: grade for d, grade in data.qrels[q].items()} for q in data.query_ids()]


def declared_dimension(location: str) -> int | None:
    """Embedding size a local sentence-transformers checkpoint declares (last Dense or Pooling), or None."""
    root = Path(location)
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    dimension = None
    for module in modules if isinstance(modules, list) else []:
        kind, path = str(module.get("type", "")), root / str(module.get("path", ""))
        try:
            if kind.endswith("Pooling"):
                config = json.loads((path / "config.json").read_text(encoding="utf-8"))
                # sentence-transformers 6 writes embedding_dimension, earlier versions word_embedding_dimension
                dimension = int(config.get("embedding_dimension", config.get("word_embedding_dimension")))
            elif kind.endswith("Dense"):
                dimension = int(json.loads((path / "config.json").read_text(encoding="utf-8"))["out_features"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return dimension


def _check_dimension(sae_d_in: int, model: str, where: str) -> str:
    from ..encoders import resolve_model

    location = resolve_model(model)
    dimension = declared_dimension(location) if os.path.isdir(location) else None
    if dimension is not None and dimension != sae_d_in:
        raise SaeInputError(f"{where}:1: d_in: the SAE takes {sae_d_in}-dimensional inputs but model {model!r} outputs {dimension}")
    return location


def _read_corpus(path: str, field: str) -> list[str]:
    from ..data import read_probe

    corpus = read_probe(path, text_field=field, label_field=None, id_field=None)
    if len(corpus.texts) < 2:
        raise SaeInputError(f"{path}:1: {field}: need at least 2 texts, got {len(corpus.texts)}")
    return list(corpus.texts)


def _embed(model: str, texts: list[str], args: argparse.Namespace, **kwargs: Any):
    from .embeddings import embed_corpus

    embeddings = embed_corpus(model, texts, batch_size=args.batch_size, device=args.device, cache=args.cache,
                              show_progress=args.progress, **kwargs)
    refuse_non_finite(embeddings, texts, model)
    return embeddings


def refuse_non_finite(embeddings: Any, texts: list[str], model: str) -> None:
    """Raise (one line, naming the first bad row and its text) when an embedding holds NaN or inf: every SAE
    number computed from it would be NaN or meaningless (FVU null, every feature dead)."""
    import numpy as np

    bad = np.flatnonzero(~np.isfinite(np.asarray(embeddings)).all(axis=1))
    if bad.size:
        row = int(bad[0])
        raise SaeInputError(f"model {model!r}: embedding row {row} (text {texts[row][:60]!r}) is not finite (NaN or inf), "
                            f"{bad.size} of {len(texts)} rows; are the model's weights broken?")


#: What ``sae train`` writes into ``--out`` (and nothing else may be there).
SAE_TRAIN_FILES = ("cfg.json", "sae.safetensors", "features.json", "training.jsonl", "quality.json", "quality.txt",
                   "metrics.jsonl", "events.jsonl", "density.png", "training.png", "tensorboard")


def _check_train_out(out: Path) -> None:
    """``--out`` is a new or empty folder that can be made: never a run folder (DESIGN.md: a run folder is written only
    by its run) nor any folder holding files (another tool's, or an earlier SAE whose metrics.jsonl would be appended to)."""
    existing = out.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == out.absolute() and not out.is_dir():
        raise SaeInputError(f"{out}:0: --out: exists and is not a folder")
    if not existing.is_dir():
        raise SaeInputError(f"{out}:0: --out: {existing} is a file, so the folder cannot be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SaeInputError(f"{out}:0: --out: folder {existing} is not writable")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held:
        from ..runlock import LOCK_NAME

        run = [name for name in held if name in ("snapshots", "evaluations.jsonl", "report.html", "sae.html", LOCK_NAME)]
        kind = "a training run folder" if run else "an earlier SAE" if "cfg.json" in held else "not empty"
        shown = ", ".join(held[:6]) + (f", ... ({len(held)} entries)" if len(held) > 6 else "")
        raise SaeInputError(f"{out}:0: --out: {kind} (holds {shown}); sae train writes only into a new or empty "
                            "folder: choose another --out")


def _check_sizes(args: argparse.Namespace, n_texts: int, location: str) -> None:
    """``--k`` at most ``--num-latents`` (either chosen by default from the corpus size and the model's declared
    dimension), and ``--lr`` > 0: checked before the model loads."""
    from .train import choose_sizes

    if args.lr is not None and not args.lr > 0:
        raise SaeInputError(f"<command line>:1: --lr: must be > 0, got {args.lr:g}")
    dimension = declared_dimension(location) if os.path.isdir(location) else None
    latents, k = args.num_latents, args.k
    if dimension is not None:
        default_latents, default_k, _ = choose_sizes(n_texts, dimension)
        latents, k = latents or default_latents, k or default_k
    if latents is not None and k is not None and k > latents:
        flag = "--k" if args.k else "--num-latents"
        raise SaeInputError(f"<command line>:1: {flag}: k = {k} active features cannot exceed num_latents = {latents}"
                            + ("" if args.k and args.num_latents else " (the other one by default)"))


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from ..encoders import resolve_model
    from ..sinks import JsonlSink
    from .build import build_sae_folder
    from .train import SaeTrainConfig

    texts = _read_corpus(args.corpus, args.text_field)
    out = Path(args.out)
    _check_train_out(out)
    _check_sizes(args, len(texts), resolve_model(args.model))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(texts)} texts from {args.corpus}", file=sys.stderr)
    embeddings = _embed(args.model, texts, args)
    config = SaeTrainConfig(num_latents=args.num_latents, k=args.k, lr=args.lr, batch_size=args.train_batch_size,
                            max_epochs=args.epochs, seed=args.seed, device=args.device or "cpu")
    sinks = [JsonlSink(out)]
    if args.tensorboard:
        from ..sinks import TensorBoardSink

        sinks.append(TensorBoardSink(out / "tensorboard"))
    try:
        result, metrics = build_sae_folder(embeddings, texts, out, model=args.model, config=config, sinks=sinks,
                                           show_progress=args.progress)
    finally:
        for sink in sinks:
            sink.close()
    return _emit({"command": "sae train", "out": str(out), "rule": result.rule, "metrics": metrics}, args)


def _eval(args: argparse.Namespace) -> dict[str, Any]:
    from ..data import read_beir, read_pairs
    from .evaluate import quality_metrics, retrieval_kept
    from .model import load_sae

    sae = load_sae(args.sae)
    texts = _read_corpus(args.corpus, args.text_field)
    retrieval = read_pairs(args.pairs) if args.pairs else read_beir(args.beir, args.split, max_corpus=args.max_corpus) if args.beir else None
    model = args.model or sae.metadata.get("model")
    if not model:
        raise SaeInputError(f"{args.sae}/cfg.json:1: model: not recorded; pass --model")
    from .model import CFG_NAME, default_sae_path

    cfg_path = str((default_sae_path() if args.sae == "default" else Path(args.sae)) / CFG_NAME)
    _check_dimension(sae.d_in, model, cfg_path)
    embeddings = _embed(model, texts, args)
    if embeddings.shape[1] != sae.d_in:
        raise SaeInputError(f"{cfg_path}:1: d_in: the SAE takes {sae.d_in}-dimensional inputs but model {model!r} outputs {embeddings.shape[1]}")
    metrics, _ = quality_metrics(sae, embeddings)
    if retrieval is not None:
        queries = _embed(model, retrieval.query_texts(), args)
        documents = _embed(model, retrieval.doc_texts(), args, chunk_size=256)
        metrics.update(retrieval_kept(sae, queries, documents, relevance_by_position(retrieval)))
    return _emit({"command": "sae eval", "sae": args.sae, "model": model, "n_texts": len(texts), "metrics": metrics}, args)


def _emit(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``--json`` written first (atomically), the table printed last: a reader that closes stdout early
    (``| head -1``) cannot lose the file."""
    from ..sinks.jsonl import to_jsonable
    from .build import format_report
    from .files import atomic_write_text

    text = json.dumps(to_jsonable(result), indent=1)
    if args.json == "-":
        print(text)
        return result
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, text + "\n")
    print_lines(format_report(result["metrics"]))
    return result


def add_sae_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``sae train`` and ``sae eval`` to the ``aquin-monitor`` sub-command group ``commands``."""
    sae = commands.add_parser("sae", help="sparse autoencoders on embeddings: train, eval, decompose, contrast, trace, steer, faithfulness, match, browse, diagnose",
                              description="Train, evaluate and analyse TopK sparse autoencoders on a model's embeddings.")
    sub = sae.add_subparsers(dest="sae_command", metavar="SAE_COMMAND", required=True)
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--corpus", required=True, metavar="FILE", help="JSONL with one text per line")
    shared.add_argument("--text-field", default="text", metavar="NAME", help="field holding the text (default text)")
    shared.add_argument("--no-cache", dest="cache", action="store_false", help="neither read nor write the embedding cache")

    train = sub.add_parser("train", parents=[common, shared], help="train a TopK SAE on MODEL's embeddings of a corpus",
                           description="Embed the corpus (cached), train a TopK SAE with a held-out split and early "
                           "stopping, and write OUT (cfg.json, sae.safetensors, features.json, training.jsonl, quality report).")
    train.add_argument("model", metavar="MODEL", help="checkpoint directory or Hub id; 'default' = the bundled all-MiniLM-L6-v2")
    train.add_argument("--out", required=True, metavar="DIR", help="folder to write the SAE into")
    train.add_argument("--num-latents", type=positive_int, default=None, help="dictionary size (default: 4·d, 8·d from 100k texts)")
    train.add_argument("--k", type=positive_int, default=None, help="active features per text (default 32; fewer for small corpora)")
    train.add_argument("--lr", type=finite_float, default=None, help="Adam learning rate (default 2e-4/sqrt(num_latents/2^14))")
    train.add_argument("--epochs", type=positive_int, default=30, help="maximum epochs (default 30)")
    train.add_argument("--train-batch-size", type=positive_int, default=1024, help="SAE batch size (default 1024)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--tensorboard", action="store_true", help="also stream sae/* per epoch to OUT/tensorboard")
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("eval", parents=[common, shared], help="quality report of a SAE on held-out texts",
                              description="FVU, explained variance, L0, dead/dense fractions, cos(x, x̂), norm ratio, "
                              "decoder redundancy, and retrieval kept (NDCG@10, Recall@10 with x̂ vs x).")
    evaluate.add_argument("sae", metavar="SAE", help="SAE folder, or 'default' (shipped for all-MiniLM-L6-v2)")
    evaluate.add_argument("--model", default=None, help="embedding model (default: the one recorded in cfg.json)")
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--beir", metavar="DIR", help="BEIR folder for retrieval kept")
    source.add_argument("--pairs", metavar="FILE", help="query/document pairs JSONL for retrieval kept")
    evaluate.add_argument("--split", default="test", help="BEIR qrels split (default test)")
    evaluate.add_argument("--max-corpus", type=positive_int, default=None, metavar="N", help="BEIR: judged documents plus others up to N")
    evaluate.set_defaults(handler=_eval)

    from .analysis_cli import add_analysis_commands  # decompose, contrast, trace, steer, faithfulness, match

    add_analysis_commands(sub, common)

    from .page_cli import add_page_commands

    add_page_commands(sub, common)
