"""``aquin-monitor sae train | eval``: the SAE sub-commands (argparse and handlers).

Every input is validated before a model is loaded: the corpus (``file:line: field: problem``),
the output paths, the SAE folder (corrupt or missing ``cfg.json``, tensors that disagree with it), and
the SAE's input dimension against the model's embedding size as its checkpoint files declare it. Bad
input raises :class:`~aquin_monitor.cli_tools.InputError` (or another ``ValueError``), which the main
CLI turns into one line on stderr and exit status 2.

``sae train``'s training flags are :class:`~aquin_monitor.sae.train.SaeTrainConfig`'s fields
(``max_epochs`` is ``--max-epochs``, with its help and default taken from the config), except
``batch_size`` (``--train-batch-size``: ``--batch-size`` is the encoding batch of every verb) and
``device`` (the shared ``--device``).

Examples::

    aquin-monitor sae train default --corpus texts.jsonl --out sae/minilm
    aquin-monitor sae eval sae/minilm --corpus heldout.jsonl --beir aquin_monitor/datasets/scifact --json q.json
    aquin-monitor sae eval default --corpus heldout.jsonl --pairs pairs.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

from ..cli_tools import (
    InputError,
    cache_option,
    declare_outputs,
    emit,
    finite_float,
    positive_int,
    read_corpus,
)
from .config import SaeTrainConfig  # torch-free: the parser is built on every start
from .verb_inputs import embed_texts, load_sae_for, phrase_encoder

__all__ = ["add_sae_commands", "config_flags"]

#: SaeTrainConfig fields whose flag is not ``--<field-name>`` (``--batch-size`` is every verb's encoding batch).
TRAIN_FLAG_NAMES = {"batch_size": "--train-batch-size"}
#: Earlier spellings still accepted (the README and tests used them).
TRAIN_FLAG_ALIASES = {"max_epochs": ("--epochs",)}
#: Fields set by a flag every verb shares.
SHARED_FIELDS = {"device": "--device"}


def _field_help(cls: type) -> dict[str, str]:
    """``{field: sentence}`` from the ``Args:`` section of ``cls``'s docstring (one home for each field's meaning)."""
    helps: dict[str, str] = {}
    name = None
    for line in (inspect.getdoc(cls) or "").split("Args:", 1)[-1].splitlines():
        match = re.match(r"^ {4}(\w+): (.*)$", line)
        if match:
            name, helps[match[1]] = match[1], match[2]
        elif name and line.startswith(" " * 8):
            helps[name] += " " + line.strip()
        elif line.strip():
            name = None
    return helps


def _flag_type(cls: type, field: dataclasses.Field) -> Any:
    hint = typing.get_type_hints(cls)[field.name]
    base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
    if base is int:
        return int if field.name == "seed" else positive_int
    return finite_float if base is float else base


def config_flags(parser: argparse.ArgumentParser, cls: type) -> dict[str, str]:
    """Add one flag per field of dataclass ``cls`` (help and default from the class); return ``{field: flag}``.

    Flag names follow the field (``max_epochs`` -> ``--max-epochs``) but for :data:`TRAIN_FLAG_NAMES`;
    fields in :data:`SHARED_FIELDS` are left to the shared flag.
    """
    helps, flags = _field_help(cls), {}
    for field in dataclasses.fields(cls):
        if field.name in SHARED_FIELDS:
            flags[field.name] = SHARED_FIELDS[field.name]
            continue
        flag = TRAIN_FLAG_NAMES.get(field.name, "--" + field.name.replace("_", "-"))
        default = field.default
        text = helps.get(field.name, field.name).replace("``", "")
        text += "" if default is None else f" (default {default})"  # a None default is described by the field's help
        parser.add_argument(
            flag,
            *TRAIN_FLAG_ALIASES.get(field.name, ()),
            dest=field.name,
            default=default,
            type=_flag_type(cls, field),
            metavar=field.name.upper(),
            help=text.replace("%", "%%"),
        )
        flags[field.name] = flag
    return flags


def _check_train_out(out: Path) -> None:
    """``--out`` is a new or empty folder: never a run folder (DESIGN.md: a run folder is written only by its run)
    nor any folder holding files (another tool's, or an earlier SAE whose metrics.jsonl would be appended to).
    (That it can be made at all is :func:`~aquin_monitor.cli_tools.check_output_dir`'s, run before this.)"""
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if CHECKPOINT_NAME in held:  # an interrupted sae train of this folder: resumed, not refused
        return
    if held:
        from ..runlock import LOCK_NAME

        run = [
            name for name in held if name in ("snapshots", "evaluations.jsonl", "report.html", "sae.html", LOCK_NAME)
        ]
        kind = "a training run folder" if run else "an earlier SAE" if "cfg.json" in held else "not empty"
        shown = ", ".join(held[:6]) + (f", ... ({len(held)} entries)" if len(held) > 6 else "")
        raise InputError(
            out,
            f"{kind} (holds {shown}); sae train writes only into a new or empty folder: choose another --out",
            field="--out",
        )


def _check_sizes(args: argparse.Namespace, n_texts: int, location: str) -> None:
    """``--k`` at most ``--num-latents`` (either chosen by default from the corpus size and the model's declared
    dimension) and ``--lr`` > 0: checked before the model loads."""
    import os

    from ..encoders import declared_dimension
    from .train import choose_sizes

    if args.lr is not None and not args.lr > 0:
        raise InputError("<command line>", f"must be > 0, got {args.lr:g}", field="--lr")
    dimension = declared_dimension(location) if os.path.isdir(location) else None
    latents, k = args.num_latents, args.k
    if dimension is not None:
        default_latents, default_k, _ = choose_sizes(n_texts, dimension)
        latents, k = latents or default_latents, k or default_k
    if latents is not None and k is not None and k > latents:
        flag = "--k" if args.k else "--num-latents"
        raise InputError(
            "<command line>",
            f"k = {k} active features cannot exceed num_latents = {latents}"
            + ("" if args.k and args.num_latents else " (the other one by default)"),
            field=flag,
        )


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from ..encoders import resolve_model
    from .train_dist import launched_by_torchrun

    if args.corpus and launched_by_torchrun():
        raise InputError(
            args.corpus,
            "under torchrun every rank would embed the corpus; embed it once and pass --embeddings FILE.npy",
            line=0,
            field="--corpus",
        )
    config = SaeTrainConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(SaeTrainConfig)})
    source = _open_embeddings(args.embeddings) if args.embeddings else _open_store(args.store) if args.store else None
    texts = read_corpus(args.corpus, args.text_field) if args.corpus else None
    location = resolve_model(args.model)  # an unknown model is named before the output folder is checked
    out = Path(args.out)
    _check_train_out(out)
    rows = texts if texts is not None else source
    assert rows is not None  # the parser requires exactly one of --corpus, --embeddings, --store
    _check_sizes(args, len(rows), location)
    out.mkdir(parents=True, exist_ok=True)
    config.checkpoint = config.checkpoint or str(out / CHECKPOINT_NAME)
    if texts is not None:
        print(f"{len(texts)} texts from {args.corpus}", file=sys.stderr)
        metrics, rule = _train_on_texts(args, texts, out, config)
    else:
        written = _train_on_rows(args, source, out, config)
        if written is None:
            return {}
        metrics, rule = written
    Path(config.checkpoint).unlink(missing_ok=True)  # the SAE folder is complete: nothing left to resume
    return _emit_quality_report({"command": "sae train", "out": str(out), "rule": rule, "metrics": metrics}, args)


CHECKPOINT_NAME = "training_state.pt"


def _open_embeddings(path: str) -> Any:
    """A memory-mapped ``.npy`` of float embeddings [n, d] as a row source, checked before anything is loaded."""
    import numpy as np

    from ..rows import ArrayRows

    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, "no such file", line=0, field="--embeddings") from None
    except (OSError, ValueError) as exc:
        raise InputError(
            path, f"not a readable .npy array ({' '.join(str(exc).split())[:120]})", line=0, field="--embeddings"
        ) from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.shape[0] < 2 or array.dtype.kind != "f":
        raise InputError(
            path,
            f"expected a float array [n >= 2, d], got {getattr(array, 'dtype', '?')} of shape "
            f"{getattr(array, 'shape', '?')}",
            line=0,
            field="--embeddings",
        )
    return ArrayRows(array)


def _open_store(path: str) -> Any:
    """An embedding store (:class:`~aquin_monitor.store.EmbeddingStore`, a row source); a bad one raises its one-line
    ``StoreError``."""
    from ..store import EmbeddingStore

    return EmbeddingStore(path)


def _sinks(args: argparse.Namespace, out: Path) -> list[Any]:
    from ..sinks import JsonlSink

    sinks: list[Any] = [JsonlSink(out)]
    if args.tensorboard:
        from ..sinks import TensorBoardSink

        sinks.append(TensorBoardSink(out / "tensorboard"))
    return sinks


def _train_on_texts(args: argparse.Namespace, texts: list[str], out: Path, config: Any) -> tuple[dict[str, Any], str]:
    from .build import build_sae_folder

    embeddings = embed_texts(args.model, texts, args)
    sinks = _sinks(args, out)
    try:
        result, metrics = build_sae_folder(
            embeddings,
            texts,
            out,
            model=args.model,
            config=config,
            sinks=sinks,
            show_progress=args.progress,
            label_encode=None if args.labels == "ctfidf" else phrase_encoder(args.model, args),
        )
    finally:
        for sink in sinks:
            sink.close()
    return metrics, result.rule


def _train_on_rows(args: argparse.Namespace, source: Any, out: Path, config: Any) -> tuple[dict[str, Any], str] | None:
    """Stream ``source`` (alone or as one rank of a torchrun job); rank zero writes the folder, others return None."""
    from .build import write_trained_folder
    from .train import SaeTrainingError, train_rows
    from .train_dist import process_group

    with process_group(config.device or "cpu", timeout_s=args.collective_timeout) as (rank, world_size):
        if rank == 0 and args.progress:
            print(
                f"{len(source)} embeddings from {args.embeddings or args.store}"
                + (f", {world_size} ranks" if world_size > 1 else ""),
                file=sys.stderr,
            )
            if Path(config.checkpoint).exists():
                print(f"resuming from {config.checkpoint}", file=sys.stderr)
        sinks = _sinks(args, out) if rank == 0 else []
        try:
            result = train_rows(
                source, config, sinks=sinks, show_progress=args.progress, metadata={"model": str(args.model)}
            )
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


#: The shipped texts no shipped SAE trained on (SciFact claims): ``sae eval``'s corpus when --corpus is not given.
DEFAULT_EVAL_CORPUS = ("scifact", "queries.jsonl")
#: SciFact documents (judged + others) of the default retrieval-kept evaluation (as the shipped quality.json).
DEFAULT_RETRIEVAL_DOCS = 1000


def _eval_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Every input of ``sae eval``, read and checked before any model loads (corpus, probes, retrieval, SAEs)."""
    from ..data import bundled_dataset, read_beir, read_pairs
    from .model import load_sae, sae_folder
    from .probe_data import labelled_file_splits, shipped_probe_splits

    corpus = args.corpus or str(bundled_dataset(DEFAULT_EVAL_CORPUS[0]) / DEFAULT_EVAL_CORPUS[1])
    texts = read_corpus(corpus, args.text_field)
    splits = (
        []
        if args.no_probe
        else [labelled_file_splits(p, text_field=args.text_field, label_field=args.label_field) for p in args.probe]
        if args.probe
        else shipped_probe_splits()
    )
    if len({split.name for split in splits}) != len(splits):
        raise InputError("<command line>", "two --probe files share a name (their file stem)", field="--probe")
    retrieval = (
        None
        if args.no_retrieval
        else read_pairs(args.pairs)
        if args.pairs
        else read_beir(args.beir or bundled_dataset("scifact"), args.split, max_corpus=_max_corpus(args))
    )
    loaded = load_sae_for(args.sae, args.model)
    second = load_sae(args.second_sae) if args.second_sae else None
    if second is not None and second.d_in != loaded.sae.d_in:
        raise InputError(
            args.second_sae,
            f"reads {second.d_in}-dimensional inputs, the SAE {args.sae} reads {loaded.sae.d_in}",
            field="--second-sae",
        )
    return {
        "corpus": corpus,
        "texts": texts,
        "splits": splits,
        "retrieval": retrieval,
        "loaded": loaded,
        "second": second,
        "folder": sae_folder(args.sae),
    }


def _max_corpus(args: argparse.Namespace) -> int | None:
    return args.max_corpus if args.max_corpus or args.beir else DEFAULT_RETRIEVAL_DOCS


def _eval(args: argparse.Namespace) -> dict[str, Any]:
    """``sae eval``: quality on the corpus beside the held-out figures and a PCA of equal size, retrieval kept (SAE
    and PCA), k-sparse probing, seed stability; the out-of-domain warning on stderr and in the report."""
    from .evaluate import reconstructed_retrieval, retrieval_kept
    from .quality import corpus_fit, probing_report, read_held_out, seed_stability

    inputs = _eval_inputs(args)
    loaded, sae = inputs["loaded"], inputs["loaded"].sae
    embeddings = embed_texts(loaded.model, inputs["texts"], args)
    loaded.check_width(embeddings.shape[1])
    fit = corpus_fit(sae, embeddings, read_held_out(inputs["folder"]), corpus=Path(inputs["corpus"]).name)
    metrics = fit["metrics"]
    retrieval = inputs["retrieval"]
    if retrieval is not None:
        queries = embed_texts(loaded.model, retrieval.query_texts(), args)
        documents = embed_texts(loaded.model, retrieval.doc_texts(), args, chunk_size=256)
        relevant, _, _ = retrieval.positional()
        metrics.update(retrieval_kept(sae, queries, documents, relevant))
        pca = reconstructed_retrieval(fit["pca"].reconstruct, queries, documents, relevant, prefix="sae/pca/retrieval")
        metrics.update({k: v for k, v in pca.items() if "/original/" not in k})
    metrics.update(probing_report(sae, inputs["splits"], lambda texts: embed_texts(loaded.model, texts, args)))
    if inputs["second"] is not None:
        metrics["sae/stability/second_sae"] = seed_stability(sae, inputs["second"])
    if args.seeds > 1:
        metrics["sae/stability/seeds"] = _seed_stability_on(embeddings, sae, inputs["folder"], args)
    warnings = [fit["warning"]] if fit["warning"] else []
    for line in warnings:
        print(line, file=sys.stderr)
    result = {
        "command": "sae eval",
        "sae": args.sae,
        "model": loaded.model,
        "corpus": inputs["corpus"],
        "n_texts": len(inputs["texts"]),
        "retrieval": None if retrieval is None else retrieval.source,
        "probes": {split.name: split.source for split in inputs["splits"]},
        "warnings": warnings,
        "metrics": metrics,
    }
    return _emit_quality_report(result, args)


def _seed_stability_on(embeddings: Any, sae: Any, folder: Path, args: argparse.Namespace) -> float:
    """Mean over pairs of :func:`~aquin_monitor.sae.quality.seed_stability` of ``args.seeds`` SAEs trained on the
    corpus's ``embeddings`` with seeds 0, 1, ..., the SAE's sizes and its recorded training settings."""
    import itertools
    import json

    from .quality import seed_stability
    from .train import train_sae

    recorded: dict[str, Any] = {}
    try:
        recorded = json.loads((folder / "quality.json").read_text(encoding="utf-8")).get("config", {})
    except (OSError, ValueError, AttributeError):
        pass
    fields = {f.name for f in dataclasses.fields(SaeTrainConfig)} - {"seed", "device", "checkpoint", "dead_after"}
    settings = {key: value for key, value in recorded.items() if key in fields}
    settings.update(num_latents=sae.num_latents, k=sae.k)
    if args.seed_epochs:
        settings["max_epochs"] = args.seed_epochs
    decoders = []
    for seed in range(args.seeds):
        config = SaeTrainConfig(**settings, seed=seed, device=args.device)
        decoders.append(train_sae(embeddings, config, show_progress=args.progress).sae)
    pairs = list(itertools.combinations(decoders, 2))
    return sum(seed_stability(a, b) for a, b in pairs) / len(pairs)


def _emit_quality_report(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """:func:`~aquin_monitor.cli_tools.emit` with the quality report as the table; returns ``result``."""
    from .build import format_report

    emit(result, args.json, format_report(result["metrics"]))
    return result


def add_sae_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``sae train`` and ``sae eval`` to the ``aquin-monitor`` sub-command group ``commands``."""
    sae = commands.add_parser(
        "sae",
        help=(
            "sparse autoencoders on embeddings: train, eval, decompose, contrast, trace, steer, faithfulness, match, "
            "browse, diagnose, convert"
        ),
        description="Train, evaluate and analyse TopK sparse autoencoders on a model's embeddings.",
    )
    sub = sae.add_subparsers(dest="sae_command", metavar="SAE_COMMAND", required=True)

    train = sub.add_parser(
        "train",
        parents=[common],
        help="train a TopK SAE on MODEL's embeddings of a corpus",
        description="Embed the corpus (cached), train a TopK SAE with a held-out split and early "
        "stopping, and write OUT (cfg.json, sae.safetensors, features.json, training.jsonl, quality report). "
        "With --store or --embeddings, stream precomputed embeddings instead (bounded memory; under torchrun, "
        "data-parallel; no features.json). A killed run started again resumes from OUT/training_state.pt.",
    )
    rows = train.add_mutually_exclusive_group(required=True)
    rows.add_argument("--corpus", metavar="FILE", help="JSONL with one text per line")
    rows.add_argument(
        "--embeddings", metavar="FILE.npy", help="precomputed embeddings [n, d] (.npy, memory-mapped, streamed)"
    )
    rows.add_argument("--store", metavar="DIR", help="an embedding store written by 'aquin-monitor embed' (streamed)")
    train.add_argument("--text-field", default="text", metavar="NAME", help="field holding the text (default text)")
    cache_option(train)
    train.add_argument(
        "--collective-timeout",
        type=positive_int,
        default=600,
        metavar="S",
        help="under torchrun: seconds a rank waits for a silent peer before stopping (default 600)",
    )
    train.add_argument(
        "model", metavar="MODEL", help="checkpoint directory or Hub id; 'default' = the bundled all-MiniLM-L6-v2"
    )
    train.add_argument("--out", required=True, metavar="DIR", help="folder to write the SAE into")
    config_flags(train, SaeTrainConfig)
    train.add_argument("--tensorboard", action="store_true", help="also stream sae/* per epoch to OUT/tensorboard")
    train.add_argument(
        "--labels",
        choices=("keyphrases", "ctfidf"),
        default="keyphrases",
        help="features.json labels: keyphrases (default): a frame and phrases shared by the top texts, chosen by "
        "how well MODEL's embedding of them singles those texts out; ctfidf: top c-TF-IDF terms (no phrase encoded)",
    )
    train.set_defaults(handler=_train)
    declare_outputs(train, folders=["--out"])

    _add_eval_command(sub, common)

    from .analysis_cli import (
        add_analysis_commands,  # decompose, contrast, trace, steer, faithfulness, match
    )

    add_analysis_commands(sub, common)

    from .page_cli import add_page_commands

    add_page_commands(sub, common)

    from .convert_cli import add_convert_command

    add_convert_command(sub)


def _add_eval_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """``sae eval``'s parser: the corpus, retrieval, probing and stability options."""
    evaluate = sub.add_parser(
        "eval",
        parents=[common],
        help="quality report of a SAE: reconstruction, retrieval kept, k-sparse probing, seed stability",
        description="On the corpus: FVU, explained variance, L0, dead/dense fractions, cos(x, x̂), norm ratio, "
        "decoder redundancy, beside the SAE's own held-out figures (its quality.json) and a PCA with k components "
        "fitted on the corpus (a one-line warning when the corpus's FVU exceeds 1.5x the held-out FVU). Retrieval "
        "kept (NDCG@10, Recall@10 with x̂ vs x; SAE and PCA) on SciFact or --beir/--pairs. k-sparse probing "
        "(k = 1, 5, 20 features) on Banking77 and AG News or --probe files. Seed stability with --seeds or "
        "--second-sae. Definitions: docs/metrics.md.",
    )
    evaluate.add_argument(
        "--corpus",
        metavar="FILE",
        help="JSONL with one text per line (default: the shipped SciFact claims, which no shipped SAE trained on)",
    )
    evaluate.add_argument("--text-field", default="text", metavar="NAME", help="field holding the text (default text)")
    cache_option(evaluate)
    evaluate.add_argument("sae", metavar="SAE", help="SAE folder, or 'default' (shipped for all-MiniLM-L6-v2)")
    evaluate.add_argument("--model", default=None, help="embedding model (default: the one recorded in cfg.json)")
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--beir", metavar="DIR", help="BEIR folder for retrieval kept (default: the shipped SciFact)")
    source.add_argument("--pairs", metavar="FILE", help="query/document pairs JSONL for retrieval kept")
    source.add_argument("--no-retrieval", action="store_true", help="skip retrieval kept")
    evaluate.add_argument("--split", default="test", help="BEIR qrels split (default test)")
    evaluate.add_argument(
        "--max-corpus",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"BEIR: judged documents plus others up to N (default: all; {DEFAULT_RETRIEVAL_DOCS} for the shipped "
        "SciFact)",
    )
    probes = evaluate.add_mutually_exclusive_group()
    probes.add_argument(
        "--probe",
        action="append",
        metavar="FILE",
        help="labelled JSONL (text and label fields) for k-sparse probing, split half/half by a seeded permutation; "
        "repeatable (default: the shipped Banking77 and AG News)",
    )
    probes.add_argument("--no-probe", action="store_true", help="skip k-sparse probing")
    evaluate.add_argument("--label-field", default="label", metavar="NAME", help="--probe files' label field")
    evaluate.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        metavar="N",
        help="train N SAEs (seeds 0..N-1, this SAE's sizes and recorded settings) on the corpus and report their "
        "mean pairwise seed stability (default 1: none)",
    )
    evaluate.add_argument(
        "--seed-epochs",
        type=positive_int,
        default=None,
        metavar="N",
        help="--seeds: at most N epochs per SAE (default: the SAE's recorded max_epochs, else SaeTrainConfig's)",
    )
    evaluate.add_argument(
        "--second-sae", metavar="DIR", help="another SAE of the same input space: seed stability against it"
    )
    evaluate.set_defaults(handler=_eval)
