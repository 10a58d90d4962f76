#!/usr/bin/env python
"""InfoNCE (MultipleNegativesRankingLoss) fine-tune of a bi-encoder on SciFact, with aquin-monitor watching.

The main job of the README: all-MiniLM-L6-v2 (bundled, offline) with LoRA on query/key/value
(``--full`` for a full fine-tune), SciFact train claims → abstracts as pairs (``--hard-negatives`` adds
one mined negative per pair), the sentence-transformers Trainer, and the training monitor with
snapshots on a SciFact *test* probe: all 300 test queries plus a document subset that contains every
relevant document. At the end: the HTML report, NDCG@10 before and after on that probe, and where the
dashboards are.

``--provoke collapse`` is the failure demonstration: a full fine-tune at a learning rate far too high
(2e-3, no warm-up) and a tiny temperature, which drives the embedding space to collapse; the monitor's
alarms fire and the snapshots show anisotropy rising.

    python recipes/infonce.py                      # defaults: 28 steps
    python recipes/infonce.py --provoke collapse --output-dir runs/collapse
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

    from aquin_monitor.data import ProbeSet, RetrievalSet

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--model",
        default="default",
        help="sentence-transformers checkpoint (path or hub id); 'default' = bundled all-MiniLM-L6-v2",
    )
    p.add_argument("--data", default=None, help="BEIR folder to train/evaluate on (default: the bundled SciFact)")
    p.add_argument(
        "--output-dir", default="runs/infonce", help="run directory (metrics, events, snapshots, TensorBoard, report)"
    )
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument(
        "--max-steps", type=int, default=-1, help="stop after this many optimizer steps (-1: run the epochs)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 2e-4 with LoRA, 2e-5 full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snapshot-every", type=int, default=10, help="checkpoint (and snapshot) every N optimizer steps")
    p.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--hard-negatives", action="store_true", help="mine one hard negative per pair with the base model")
    p.add_argument(
        "--max-train", type=int, default=0, help="use at most this many training pairs (0: all 919 SciFact train pairs)"
    )
    p.add_argument(
        "--probe-docs",
        type=int,
        default=300,
        help="SciFact test documents in the probe (all relevant ones + random others)",
    )
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--scale", type=float, default=20.0, help="MNRL scale (1/temperature)")
    p.add_argument(
        "--provoke", choices=["collapse"], default=None, help="failure demonstration (see the module docstring)"
    )
    p.add_argument(
        "--wandb", action="store_true", help="also report to Weights & Biases (offline works: WANDB_MODE=offline)"
    )
    p.add_argument(
        "--sae",
        default="auto",
        help=(
            "sparse autoencoder whose features snapshots follow: 'default' (shipped for the bundled all-MiniLM-L6-v2), "
            "a folder, or 'none'; 'auto' (default): 'default' for the bundled model, none otherwise"
        ),
    )
    p.add_argument("--no-umap", action="store_true", help="skip UMAP coordinates in snapshots")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (training, encoding, model loading)")
    return p.parse_args(argv)


def training_pairs(retrieval: RetrievalSet, limit: int | None = None) -> list[tuple[str, str]]:
    """(claim, abstract) pairs from the split's relevance judgements, in a stable order."""
    pairs = [
        (retrieval.queries[q], retrieval.corpus[d])
        for q in sorted(retrieval.qrels, key=str)
        for d in sorted(retrieval.qrels[q], key=str)
    ]
    return pairs[:limit] if limit else pairs


def mine_negatives(
    model: SentenceTransformer,
    pairs: list[tuple[str, str]],
    corpus_texts: list[str],
    batch_size: int,
    show_progress: bool = True,
) -> list[str]:
    """For each pair, the highest-scoring corpus document that is not its positive (base model)."""
    from aquin_monitor.encoders import encode
    from aquin_monitor.signals.retrieval import topk

    doc_index = {t: i for i, t in enumerate(corpus_texts)}
    q_emb = encode(model, [q for q, _ in pairs], batch_size=batch_size)
    d_emb = encode(model, corpus_texts, batch_size=batch_size, show_progress=show_progress)
    exclude = [{doc_index[d]} for _, d in pairs]
    _, idx = topk(q_emb, d_emb, 1, exclude=exclude)
    return [corpus_texts[int(i)] for i in idx[:, 0]]


def load_data(args: argparse.Namespace) -> tuple[RetrievalSet, ProbeSet, RetrievalSet]:
    """The training split, and the snapshot probe with the retrieval set it is scored on.

    The bundled SciFact: ``scifact_probe`` (every test query, the relevant documents plus random
    others); ``--data``: every query and document of the folder's test split.
    """
    from aquin_monitor.data import bundled_dataset, read_beir, scifact_probe

    data_dir = Path(args.data) if args.data else bundled_dataset("scifact")
    train = read_beir(data_dir, "train")
    if args.data:
        from aquin_monitor.data import ProbeSet

        test = read_beir(data_dir, "test")
        probe = ProbeSet.from_retrieval(test)
    else:
        probe, test = scifact_probe(n_docs=args.probe_docs, split="test", seed=args.seed)
    return train, probe, test


def build_model(args: argparse.Namespace, train: RetrievalSet) -> tuple[SentenceTransformer, dict[str, list[str]]]:
    """The model (LoRA added unless ``--full``) and the training columns, hard negatives mined by the base model."""
    from aquin_monitor.encoders import add_lora, load_model

    model = load_model(args.model)
    model.max_seq_length = args.max_seq_length
    pairs = training_pairs(train, args.max_train)
    columns = {"anchor": [q for q, _ in pairs], "positive": [d for _, d in pairs]}
    if args.hard_negatives:
        columns["negative"] = mine_negatives(
            model, pairs, train.doc_texts(), args.batch_size, show_progress=not args.no_progress
        )
    if not args.full:
        add_lora(model, rank=args.lora_rank, alpha=2 * args.lora_rank, target_modules=["query", "key", "value"])
    return model, columns


def training_arguments(args: argparse.Namespace, out: Path, lr: float) -> SentenceTransformerTrainingArguments:
    """The Trainer's arguments: a checkpoint (hence a snapshot) every ``--snapshot-every`` steps."""
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments

    report_to = ["tensorboard"] + (["wandb"] if args.wandb else [])
    return SentenceTransformerTrainingArguments(
        output_dir=str(out),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=lr,
        warmup_steps=0 if args.provoke else 0.1,
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=args.snapshot_every,
        save_total_limit=1,
        report_to=report_to,
        batch_sampler="no_duplicates",
        use_cpu=not torch.cuda.is_available(),
        dataloader_drop_last=True,
        disable_tqdm=args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from aquin_monitor.progress import quiet_progress

    args = parse_args(argv)
    with quiet_progress(args.no_progress):  # --no-progress: model loading bars too
        return run(args)


def run(args: argparse.Namespace) -> int:
    if args.provoke == "collapse":
        args.full = True
        args.lr = args.lr or 2e-3
        args.scale = 100.0
    lr = args.lr or (2e-5 if args.full else 2e-4)

    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer

    try:  # sentence-transformers >= 6 (the old path warns that it is deprecated)
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    from aquin_monitor.callbacks import TrainerEmbeddingMonitor
    from aquin_monitor.capture import monitored
    from aquin_monitor.sae import sae_choice
    from aquin_monitor.snapshot_runner import SnapshotRunner

    torch.manual_seed(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    train, probe, test = load_data(args)
    print(f"train: {train.summary()}")
    print(f"probe: {len(probe.texts)} texts; retrieval: {test.summary()}")
    model, columns = build_model(args, train)

    name = "all-MiniLM-L6-v2 (bundled)" if args.model == "default" else args.model
    runner = SnapshotRunner(
        probe,
        test,
        batch_size=64,
        umap=not args.no_umap,
        seed=args.seed,
        sae=sae_choice(args.sae, args.model),
        model_name=f"{name}, {'full fine-tune' if args.full else f'LoRA r={args.lora_rank} on q/k/v'}",
        announce=not args.no_progress,
    )
    monitor = TrainerEmbeddingMonitor(
        str(out), snapshots=runner, snapshot_every=1, report=False
    )  # written below, with the summary
    training_args = training_arguments(args, out, lr)
    loss = monitored(MultipleNegativesRankingLoss(model, scale=args.scale))
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=Dataset.from_dict(columns), loss=loss, callbacks=[monitor]
    )
    trainer.train()
    report_results(args, out, trainer.state.global_step, test, started)
    return 0


def report_results(args: argparse.Namespace, out: Path, steps: int, test: RetrievalSet, started: float) -> None:
    """Write the HTML report and ``summary.json`` (first and last snapshot's numbers), and print where things are."""
    from aquin_monitor.report import write_report
    from aquin_monitor.snapshot_record import Snapshot, list_snapshots

    report = write_report(out)
    snaps = [Snapshot.load(f) for f in list_snapshots(out)]
    before, after = snaps[0].metrics, snaps[-1].metrics
    alarms = (
        [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
        if (out / "events.jsonl").exists()
        else []
    )
    summary = {
        "model": args.model,
        "mode": "full" if args.full else f"lora r={args.lora_rank}",
        "steps": steps,
        "seconds": round(time.time() - started, 1),
        "probe": f"{len(test.queries)} SciFact test queries vs {len(test.corpus)} documents",
        "before": {
            k: before.get(k)
            for k in ("retrieval/ndcg@10", "retrieval/mrr@10", "retrieval/recall@10", "geometry/anisotropy")
        },
        "after": {
            k: after.get(k)
            for k in ("retrieval/ndcg@10", "retrieval/mrr@10", "retrieval/recall@10", "geometry/anisotropy")
        },
        "alarms": len(alarms),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print()
    print(
        f"NDCG@10 on the probe ({summary['probe']}): before {before.get('retrieval/ndcg@10', float('nan')):.4f} "
        f"-> after {after.get('retrieval/ndcg@10', float('nan')):.4f}"
    )
    print(
        f"anisotropy: before {before.get('geometry/anisotropy', float('nan')):.3f} "
        f"-> after {after.get('geometry/anisotropy', float('nan')):.3f}"
    )
    print(
        f"alarms: {len(alarms)}" + "".join(f"\n  step {a['step']}: [{a['kind']}] {a['message']}" for a in alarms[:10])
    )
    print(f"report:      {report}")
    print(f"dashboards:  tensorboard --logdir {out}")
    print(f"plain files: {out}/metrics.jsonl, {out}/events.jsonl, {out}/snapshots/")


if __name__ == "__main__":
    sys.exit(main())
