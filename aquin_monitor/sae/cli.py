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

from ..cli import positive_int

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

    return embed_corpus(model, texts, batch_size=args.batch_size, device=args.device, cache=args.cache,
                        show_progress=args.progress, **kwargs)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from ..encoders import resolve_model
    from .train import SaeTrainConfig
    from .train_dist import launched_by_torchrun

    if args.corpus and launched_by_torchrun():
        raise SaeInputError(f"{args.corpus}:0: --corpus: under torchrun every rank would embed the corpus; "
                            "embed it once and pass --embeddings FILE.npy")
    source = _open_embeddings(args.embeddings) if args.embeddings else None
    texts = _read_corpus(args.corpus, args.text_field) if args.corpus else None
    resolve_model(args.model)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SaeInputError(f"{out}:0: --out: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise SaeInputError(f"{out}:0: --out: folder is not writable")
    config = SaeTrainConfig(num_latents=args.num_latents, k=args.k, lr=args.lr, batch_size=args.train_batch_size,
                            max_epochs=args.epochs, seed=args.seed, device=args.device or "cpu",
                            checkpoint=str(out / CHECKPOINT_NAME), checkpoint_every=args.checkpoint_every)
    if texts is not None:
        print(f"{len(texts)} texts from {args.corpus}", file=sys.stderr)
        metrics, rule = _train_on_texts(args, texts, out, config)
    else:
        written = _train_on_rows(args, source, out, config)
        if written is None:
            return {}
        metrics, rule = written
    (out / CHECKPOINT_NAME).unlink(missing_ok=True)  # the SAE folder is complete: nothing left to resume
    return _emit({"command": "sae train", "out": str(out), "rule": rule, "metrics": metrics}, args)


CHECKPOINT_NAME = "training_state.pt"


def _open_embeddings(path: str) -> Any:
    """A memory-mapped ``.npy`` of float embeddings [n, d] as a row source, checked before anything is loaded."""
    import numpy as np

    from ..rows import ArrayRows

    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise SaeInputError(f"{path}:0: --embeddings: no such file") from None
    except (OSError, ValueError) as exc:
        raise SaeInputError(f"{path}:0: --embeddings: not a readable .npy array ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.shape[0] < 2 or array.dtype.kind != "f":
        raise SaeInputError(f"{path}:0: --embeddings: expected a float array [n >= 2, d], got "
                            f"{getattr(array, 'dtype', '?')} of shape {getattr(array, 'shape', '?')}")
    return ArrayRows(array)


def _sinks(args: argparse.Namespace, out: Path) -> list[Any]:
    from ..sinks import JsonlSink

    sinks: list[Any] = [JsonlSink(out)]
    if args.tensorboard:
        from ..sinks import TensorBoardSink

        sinks.append(TensorBoardSink(out / "tensorboard"))
    return sinks


def _train_on_texts(args: argparse.Namespace, texts: list[str], out: Path, config: Any) -> tuple[dict[str, Any], str]:
    from .build import build_sae_folder

    embeddings = _embed(args.model, texts, args)
    sinks = _sinks(args, out)
    try:
        result, metrics = build_sae_folder(embeddings, texts, out, model=args.model, config=config, sinks=sinks,
                                           show_progress=args.progress)
    finally:
        for sink in sinks:
            sink.close()
    return metrics, result.rule


def _train_on_rows(args: argparse.Namespace, source: Any, out: Path, config: Any) -> tuple[dict[str, Any], str] | None:
    """Stream ``source`` (alone or as one rank of a torchrun job); rank zero writes the folder, others return None."""
    from .build import write_trained_folder
    from .train import SaeTrainingError, train_rows
    from .train_dist import process_group

    with process_group(config.device, timeout_s=args.collective_timeout) as (rank, world_size):
        if rank == 0 and args.progress:
            print(f"{len(source)} embeddings from {args.embeddings}" + (f", {world_size} ranks" if world_size > 1 else ""),
                  file=sys.stderr)
            if Path(config.checkpoint).exists():
                print(f"resuming from {config.checkpoint}", file=sys.stderr)
        sinks = _sinks(args, out) if rank == 0 else []
        try:
            result = train_rows(source, config, sinks=sinks, show_progress=args.progress, metadata={"model": str(args.model)})
        except SaeTrainingError as exc:
            if isinstance(exc, ValueError):
                raise
            print(f"aquin-monitor sae train: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            for sink in sinks:
                sink.close()
        if rank != 0:
            return None
        if args.progress:
            print(f"sizes: {result.rule}", file=sys.stderr)
        return write_trained_folder(result, out, model=args.model, show_progress=args.progress), result.rule


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
    from ..sinks.jsonl import to_jsonable
    from .build import format_report

    text = json.dumps(to_jsonable(result), indent=1)
    if args.json == "-":
        print(text)
        return result
    print(format_report(result["metrics"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n", encoding="utf-8")
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

    train = sub.add_parser("train", parents=[common], help="train a TopK SAE on MODEL's embeddings of a corpus",
                           description="Embed the corpus (cached), train a TopK SAE with a held-out split and early "
                           "stopping, and write OUT (cfg.json, sae.safetensors, features.json, training.jsonl, quality report). "
                           "With --embeddings, stream precomputed embeddings instead (bounded memory; under torchrun, "
                           "data-parallel; no features.json). A killed run started again resumes from OUT/training_state.pt.")
    rows = train.add_mutually_exclusive_group(required=True)
    rows.add_argument("--corpus", metavar="FILE", help="JSONL with one text per line")
    rows.add_argument("--embeddings", metavar="FILE.npy", help="precomputed embeddings [n, d] (.npy, memory-mapped, streamed)")
    train.add_argument("--text-field", default="text", metavar="NAME", help="field holding the text (default text)")
    train.add_argument("--no-cache", dest="cache", action="store_false", help="neither read nor write the embedding cache")
    train.add_argument("--checkpoint-every", type=positive_int, default=500, metavar="STEPS",
                       help="steps between checkpoints of the training state (default 500; also after every epoch)")
    train.add_argument("--collective-timeout", type=positive_int, default=600, metavar="S",
                       help="under torchrun: seconds a rank waits for a silent peer before stopping (default 600)")
    train.add_argument("model", metavar="MODEL", help="checkpoint directory or Hub id; 'default' = the bundled all-MiniLM-L6-v2")
    train.add_argument("--out", required=True, metavar="DIR", help="folder to write the SAE into")
    train.add_argument("--num-latents", type=positive_int, default=None, help="dictionary size (default: 4·d, 8·d from 100k texts)")
    train.add_argument("--k", type=positive_int, default=None, help="active features per text (default 32; fewer for small corpora)")
    train.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 2e-4/sqrt(num_latents/2^14))")
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
