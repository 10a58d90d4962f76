#!/usr/bin/env python
"""Triplet-loss fine-tune of a bi-encoder on SNLI triplets in PyTorch Lightning, with aquin-monitor watching.

A LightningModule around a sentence-transformers model (default: the bundled all-MiniLM-L6-v2, a full
fine-tune; ``--lora-rank 8`` for LoRA) trained with a triplet loss (Schroff et al. 2015) on the
bundled SNLI (anchor, entailed positive, contradicting negative) triplets. The Lightning monitor logs
gradient norms per block, the positive/negative similarity split and alarms every step; a checkpoint
every ``--snapshot-every`` steps triggers a geometry snapshot on a held-out probe of SNLI sentences
(anchors, positives and negatives, labelled as such). TensorBoard by default, ``--wandb`` adds
Weights & Biases (``WANDB_MODE=offline`` works). At the end: the HTML report and where the dashboards are.

``--provoke collapse`` is the failure demonstration, a broken learning-rate schedule: the fine-tune
runs healthily for ``--provoke-at`` steps (default 20), then the learning rate jumps to
``--collapse-lr`` (default 1e-2, 500x the default). One or two AdamW updates of that size saturate
the encoder: every embedding points the same way, the positive–negative gap closes to 0 and the
loss sits at the margin. The gradients of the blocks below the top collapse by four to five orders
of magnitude and the monitor raises ``dead_layer`` alarms for them (a ``spike`` alarm too when the
blow-up passes through large gradients first, as it does on small models); the snapshots after the
jump show the collapse (anisotropy 0.05 -> 1.00, PCA dimension 126 -> 1, CKA to the base model
near 0 on MiniLM). ``gap_narrowing`` stays silent here by design: it flags a gap shrinking *while
the loss falls*, and this loss rises. The healthy steps first give the detectors the history they
judge against: a run that starts at 1e-2 collapses inside the detectors' warm-up, before there is a
normal to compare with, and only the snapshots would show it.

    python recipes/triplet.py                         # defaults: 100 steps
    python recipes/triplet.py --provoke collapse --output-dir runs/triplet-collapse
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning as L
    from sentence_transformers import SentenceTransformer

    from aquin_monitor.data import ProbeSet

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROBE_LABELS = ("anchor", "positive", "negative")
COLLAPSE_LR = 1e-2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from aquin_monitor.metric_registry import ALARM_KINDS  # the alarm registry, without torch: --help stays quick

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--model",
        default="default",
        help="sentence-transformers checkpoint (path or hub id); 'default' = bundled all-MiniLM-L6-v2",
    )
    p.add_argument(
        "--data",
        default=None,
        help="triplets JSONL with anchor/positive/negative (default: the bundled SNLI dev triplets)",
    )
    p.add_argument("--output-dir", default=None, help="run directory (default: runs/triplet-<timestamp>)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument(
        "--max-steps", type=int, default=100, help="stop after this many optimizer steps (-1: run the epochs)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="triplets per step")
    p.add_argument(
        "--lr", type=float, default=None, help="AdamW learning rate (default 2e-5 full fine-tune, 1e-4 LoRA)"
    )
    p.add_argument("--warmup-steps", type=int, default=10, help="linear learning-rate warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--snapshot-every", type=int, default=50, help="checkpoint (and geometry snapshot) every N optimizer steps"
    )
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training triplets")
    p.add_argument(
        "--probe-triplets",
        type=int,
        default=100,
        help="held-out triplets whose 3 sentences make the snapshot probe (3x texts)",
    )
    p.add_argument("--distance", choices=["cosine", "euclidean"], default="cosine", help="triplet distance")
    p.add_argument("--margin", type=float, default=None, help="triplet margin (default 0.3 cosine, 1.0 euclidean)")
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on query/key/value (0: full fine-tune)")
    p.add_argument(
        "--max-seq-length", type=int, default=64, help="SNLI sentences are short; 64 tokens keep all but a few whole"
    )
    p.add_argument(
        "--provoke", choices=["collapse"], default=None, help="failure demonstration (see the module docstring)"
    )
    p.add_argument(
        "--provoke-at",
        type=int,
        default=20,
        help="--provoke collapse: optimizer steps at the normal learning rate before the jump",
    )
    p.add_argument(
        "--collapse-lr", type=float, default=COLLAPSE_LR, help="--provoke collapse: the learning rate after the jump"
    )
    p.add_argument(
        "--sae",
        default="auto",
        help=(
            "sparse autoencoder whose features snapshots follow: 'default' (shipped for the bundled all-MiniLM-L6-v2), "
            "a folder, or 'none'; 'auto' (default): 'default' for the bundled model, none otherwise"
        ),
    )
    p.add_argument(
        "--wandb", action="store_true", help="also log to Weights & Biases (offline works: WANDB_MODE=offline)"
    )
    p.add_argument("--wandb-project", default="aquin-monitor")
    p.add_argument(
        "--stop-on",
        nargs="*",
        default=[],
        choices=ALARM_KINDS,
        metavar="KIND",
        help=f"alarms that stop training: any of {', '.join(ALARM_KINDS)}",
    )
    p.add_argument("--no-umap", action="store_true", help="skip UMAP coordinates in snapshots (faster)")
    p.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    p.add_argument(
        "--no-progress", action="store_true", help="hide Lightning's progress bar and the snapshots' start/end lines"
    )
    p.add_argument("--device", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    args = p.parse_args(argv)
    for name in ("batch_size", "snapshot_every", "probe_triplets", "epochs", "max_seq_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_train is not None and args.max_train < args.batch_size:
        p.error("--max-train must be at least --batch-size (the last partial batch is dropped)")
    if args.provoke == "collapse":
        args.lora_rank = 0  # LoRA's small update space resists the blow-up; the demo is a full fine-tune
        if args.provoke_at < 0:
            p.error("--provoke-at must be >= 0")
    if args.lr is None:
        args.lr = 1e-4 if args.lora_rank else 2e-5
    if args.margin is None:
        args.margin = 0.3 if args.distance == "cosine" else 1.0
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", "triplet-" + time.strftime("%Y%m%d-%H%M%S"))
    return args


def split_triplets(
    triplets: Sequence[tuple[str, str, str]], probe_triplets: int, seed: int
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Shuffle (seeded), hold out ``probe_triplets`` triplets with distinct anchors for the probe, train on the rest.

    SNLI repeats an anchor across triplets; any training triplet whose anchor is in the probe is
    dropped too, so the probe stays unseen by the optimizer.
    """
    import random

    order = list(triplets)
    random.Random(seed).shuffle(order)
    probe, anchors = [], set()
    for t in order:
        if len(probe) == probe_triplets:
            break
        if t[0] not in anchors:
            anchors.add(t[0])
            probe.append(t)
    train = [t for t in order if t[0] not in anchors]
    if len(probe) < probe_triplets:
        raise ValueError(f"only {len(probe)} triplets with distinct anchors for a probe of {probe_triplets}")
    return train, probe


def probe_set(probe_triplets: Sequence[tuple[str, str, str]]) -> ProbeSet:
    """The probe: every anchor, then every positive, then every negative, labelled by role."""
    from aquin_monitor.data import ProbeSet

    texts, labels, ids = [], [], []
    for role_index, role in enumerate(PROBE_LABELS):
        for i, t in enumerate(probe_triplets):
            texts.append(t[role_index])
            labels.append(role)
            ids.append(f"{role}:{i}")
    return ProbeSet(texts=texts, labels=labels, ids=ids, source="snli triplets (held out)")


def lr_factor(step: int, args: argparse.Namespace) -> float:
    """Learning-rate multiplier for 0-based optimizer step ``step``: linear warm-up, then 1.

    With ``--provoke collapse``, ``collapse_lr / lr`` from step ``provoke_at`` on (the broken schedule).
    """
    if args.provoke == "collapse" and step >= args.provoke_at:
        return args.collapse_lr / args.lr
    return min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps > 0 else 1.0


def build_module(model: SentenceTransformer, args: argparse.Namespace) -> L.LightningModule:
    import lightning as L
    import torch

    from aquin_monitor.losses import triplet

    class TripletModule(L.LightningModule):
        """A SentenceTransformer trained with :func:`aquin_monitor.losses.triplet` (reports its distances)."""

        def __init__(self):
            super().__init__()
            self.encoder = model

        def encode(self, texts):
            features = self.encoder.preprocess(list(texts))
            features = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in features.items()}
            return self.encoder(features)["sentence_embedding"]

        def training_step(self, batch, batch_idx):
            anchors, positives, negatives = batch
            # one forward over all three roles: one tokenisation, one padded batch
            embeddings = self.encode([*anchors, *positives, *negatives])
            a, p, n = embeddings.split(len(anchors))
            loss = triplet(a, p, n, margin=args.margin, distance=args.distance)
            self.log("train/loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            params = [p for p in self.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=args.lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, args))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    return TripletModule()


def summarize(out: Path, monitor: Any) -> None:
    """Print what the monitor saw: alarms by kind, the first and last contrastive numbers, snapshot geometry."""
    from aquin_monitor.sinks import read_jsonl
    from aquin_monitor.snapshot_record import Snapshot, list_snapshots

    alarms = monitor.monitor.alarms if monitor.monitor is not None else []
    if alarms:
        kinds: dict[str, int] = {}
        for a in alarms:
            kinds[a.kind] = kinds.get(a.kind, 0) + 1
        first = alarms[0]
        print(
            f"alarms: {', '.join(f'{k} x{v}' for k, v in kinds.items())}; first at step {first.step}: {first.message}"
        )
    else:
        print("alarms: none")
    metrics_path = out / "metrics.jsonl"
    rows = [r for r in read_jsonl(metrics_path) if "contrastive/gap" in r] if metrics_path.exists() else []
    if rows:
        head, tail = rows[: min(10, len(rows))], rows[-min(10, len(rows)) :]

        def mean(part, key):
            values = [r[key] for r in part if key in r]
            return sum(values) / len(values) if values else float("nan")

        for key in (
            "contrastive/loss",
            "contrastive/pos_sim",
            "contrastive/neg_sim",
            "contrastive/gap",
            "contrastive/in_batch_acc",
        ):
            print(
                f"  {key:28s} first {len(head)} steps {mean(head, key):8.4f}   "
                f"last {len(tail)} steps {mean(tail, key):8.4f}"
            )
    for folder in list_snapshots(out):
        snap = Snapshot.load(folder)
        m = snap.metrics
        print(
            f"  snapshot step {snap.step:4d} ({snap.tag}): "
            f"anisotropy {m.get('geometry/anisotropy', float('nan')):.3f}, "
            f"id_pca95 {m.get('geometry/id_pca95', float('nan')):.0f}"
            + (f", CKA vs base {m['drift/base/cka']:.3f}" if "drift/base/cka" in m else "")
        )


def write_html_report(out: Path) -> Path | None:
    try:
        from aquin_monitor.report import write_report
    except ImportError as exc:  # the report module is optional for this recipe
        print(f"report: skipped, aquin_monitor.report.write_report is not available ({exc})")
        return None
    return write_report(out)


def load_data(args: argparse.Namespace) -> tuple[list[tuple[str, str, str]], ProbeSet]:
    """Training triplets and the held-out probe (see :func:`split_triplets`), ``--max-train`` applied."""
    from aquin_monitor.data import bundled_dataset, read_triplets

    data_path = Path(args.data) if args.data else bundled_dataset("snli_triplets") / "dev.jsonl"
    train, held_out = split_triplets(read_triplets(data_path), args.probe_triplets, args.seed)
    if args.max_train is not None:
        train = train[: args.max_train]
    if len(train) < args.batch_size:
        raise ValueError(
            f"{len(train)} training triplets left after holding out the probe; "
            f"need at least --batch-size {args.batch_size}"
        )
    probe = probe_set(held_out)
    print(f"data: {data_path}: {len(train)} training triplets, probe of {len(probe)} held-out sentences")
    return train, probe


def build_trainer(args: argparse.Namespace, out: Path, loggers: list[Any], monitor: Any) -> L.Trainer:
    """The Lightning trainer: the monitor, and a checkpoint (hence a snapshot) every ``--snapshot-every`` steps."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    # every checkpoint save is a snapshot; save_top_k=1 keeps only the newest checkpoint on disk
    checkpoints = ModelCheckpoint(
        dirpath=str(out / "checkpoints"), every_n_train_steps=args.snapshot_every, save_top_k=1
    )
    return L.Trainer(
        accelerator=args.device,
        devices=1,
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        logger=loggers,
        callbacks=[monitor, checkpoints],
        log_every_n_steps=1,
        enable_progress_bar=not args.no_progress,
        enable_model_summary=False,
        default_root_dir=str(out),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader

    from aquin_monitor.callbacks import LightningEmbeddingMonitor
    from aquin_monitor.encoders import add_lora, load_model
    from aquin_monitor.sae import sae_choice
    from aquin_monitor.snapshot_runner import SnapshotRunner

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    L.seed_everything(args.seed, verbose=False)
    train, probe = load_data(args)

    model = load_model(args.model, device="cpu")
    model.max_seq_length = args.max_seq_length
    if args.lora_rank:
        add_lora(model, rank=args.lora_rank, alpha=2 * args.lora_rank, target_modules=["query", "key", "value"])
    module = build_module(model, args)
    module.train()  # loaded for inference (eval mode); a fine-tune trains with dropout on
    print(
        f"model: {args.model} ({'LoRA rank %d' % args.lora_rank if args.lora_rank else 'full fine-tune'}), "
        f"triplet loss ({args.distance}, margin {args.margin:g}), lr {args.lr:g}, batch {args.batch_size}"
        + (
            f"; PROVOKING COLLAPSE: lr jumps to {args.collapse_lr:g} after step {args.provoke_at}"
            if args.provoke
            else ""
        )
    )

    loader = DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=lambda b: tuple(map(list, zip(*b))),
        generator=torch.Generator().manual_seed(args.seed),
    )
    loggers = [TensorBoardLogger(save_dir=str(out), name="", version="tensorboard", default_hp_metric=False)]
    if args.wandb:
        from lightning.pytorch.loggers import WandbLogger

        # W&B's own WANDB_DIR wins over the run folder when set (WandbLogger's save_dir would override it)
        wandb_logger = WandbLogger(
            project=args.wandb_project, save_dir=os.environ.get("WANDB_DIR") or str(out), name=out.name
        )
        wandb_logger.log_hyperparams(vars(args))  # the run's config: this run's hyperparameters
        loggers.append(wandb_logger)
    runner = SnapshotRunner(
        probe,
        batch_size=64,
        umap=not args.no_umap,
        seed=args.seed,
        sae=sae_choice(args.sae, args.model),
        announce=not args.no_progress,
    )
    monitor = LightningEmbeddingMonitor(
        str(out), snapshots=runner, snapshot_every=1, stop_on=args.stop_on, report=False
    )  # written below
    trainer = build_trainer(args, out, loggers, monitor)
    with warnings.catch_warnings():
        # a list of strings needs no worker processes; Lightning's advice to add some is noise here
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, loader)

    summarize(out, monitor)
    report = None if args.no_report else write_html_report(out)
    print_locations(args, out, f"{trainer.global_step} steps in {time.time() - started:.0f} s", report)
    if args.wandb:  # finish the run here, not in wandb's exit hook (which abandons its pending handles)
        loggers[-1].experiment.finish()
    return 0


def print_locations(args: argparse.Namespace, out: Path, done: str, report: Path | None) -> None:
    """Where the run's dashboards and files are."""
    print(f"\nrun directory: {out}  ({done})")
    print(f"  TensorBoard:  tensorboard --logdir {out}")
    if args.wandb:
        mode = os.environ.get("WANDB_MODE", "online")
        folder = Path(os.environ.get("WANDB_DIR") or out) / "wandb"
        where = "wandb sync " + str(folder) + "/offline-run-*" if mode == "offline" else "see the run URL above"
        print(f"  W&B:          {where}")
    print(f"  metrics:      {out / 'metrics.jsonl'}, alarms: {out / 'events.jsonl'}, snapshots: {out / 'snapshots'}")
    if report is not None:
        print(f"  report:       {report}")


if __name__ == "__main__":
    sys.exit(main())
