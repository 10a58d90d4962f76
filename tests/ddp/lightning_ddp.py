"""Two-process CPU DDP (gloo) Lightning run with the monitor and snapshots on; driven by tests/test_distributed.py.

Usage: ``python lightning_ddp.py MODEL_PATH OUT_DIR MAX_STEPS``. Lightning's ``ddp`` strategy re-launches
this script for rank 1 itself. Besides what the library writes (``OUT_DIR/run``), every rank writes
its own evidence to ``OUT_DIR/rank<r>.json``:

- ``local``: per step, the contrastive sums of *this rank's* batch, computed here from the embeddings
  with plain torch (the reference the all-reduced metrics are checked against);
- ``snapshot_steps``: the steps at which this rank computed a snapshot;
- ``final_state``: the monitor's ``state_dict()`` at train end (gap history holds the reduced values).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from aquin_monitor.callbacks import LightningEmbeddingMonitor  # noqa: E402
from aquin_monitor.losses import info_nce  # noqa: E402
from aquin_monitor.snapshot_runner import SnapshotRunner  # noqa: E402

PAIRS = [(f"question number {i} about topic {i % 5}", f"answer {i} on topic {i % 5}") for i in range(32)]
PROBE = [f"probe sentence {i} about topic {i % 4}" for i in range(12)]
PER_RANK_BATCH = 4


def local_sums(queries: torch.Tensor, documents: torch.Tensor) -> dict:
    """Sums of this rank's in-batch cosine matrix: diagonal = positives, off-diagonal = negatives."""
    cos = F.normalize(queries.detach().double(), dim=-1) @ F.normalize(documents.detach().double(), dim=-1).T
    n = cos.shape[0]
    diag = torch.diagonal(cos)
    return {
        "pos_sum": float(diag.sum()),
        "neg_sum": float(cos.sum() - diag.sum()),
        "correct": int((cos.argmax(dim=1) == torch.arange(n)).sum()),
        "rows": n,
        "neg_count": n * (n - 1),
    }


class PairModule(L.LightningModule):
    def __init__(self, path: str):
        super().__init__()
        self.encoder = SentenceTransformer(path, device="cpu")
        self.encoder.train()
        self.local: list[dict] = []

    def encode(self, texts):
        feats = {
            k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.encoder.preprocess(list(texts)).items()
        }
        return self.encoder(feats)["sentence_embedding"]

    def training_step(self, batch, batch_idx):
        queries, documents = self.encode(batch[0]), self.encode(batch[1])
        loss = info_nce(queries, documents)
        self.local.append(
            {"step": self.global_step + 1, **local_sums(queries, documents), "loss": float(loss.detach())}
        )
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=5e-4)


class RecordingMonitor(LightningEmbeddingMonitor):
    """Keeps the monitor's state at train end, before ``close``."""

    final_state: dict | None = None

    def on_train_end(self, trainer, pl_module) -> None:
        self.final_state = self.monitor.state_dict()
        super().on_train_end(trainer, pl_module)


def _fail_rank_zero_once(step_to_fail: int) -> None:
    """Rank zero's monitor fails once (as a sink or a warnings-as-errors filter could make it)."""
    from aquin_monitor.monitor import StepMonitor

    original = StepMonitor._alarms

    def failing(self, step, *args, **kwargs):
        if step == step_to_fail and torch.distributed.get_rank() == 0:
            raise RuntimeError("injected rank-0-only failure")
        return original(self, step, *args, **kwargs)

    StepMonitor._alarms = failing


def main(model_path: str, out_dir: str, max_steps: int, fail_rank_zero_at: int | None = None) -> None:
    out = Path(out_dir)
    if fail_rank_zero_at is not None:
        _fail_rank_zero_once(fail_rank_zero_at)
    torch.manual_seed(0)
    runner = SnapshotRunner(PROBE, umap=False)
    snapshot_steps: list[int] = []
    take = runner.take

    def recording_take(model, step, **kwargs):
        snapshot_steps.append(int(step))
        return take(model, step, **kwargs)

    runner.take = recording_take
    callback = RecordingMonitor(output_dir=str(out / "run"), snapshots=runner, strict=fail_rank_zero_at is None)
    checkpoints = ModelCheckpoint(dirpath=str(out / "ckpt"), every_n_train_steps=2, save_top_k=-1)
    module = PairModule(model_path)
    loader = DataLoader(PAIRS, batch_size=PER_RANK_BATCH, shuffle=True, collate_fn=lambda b: tuple(zip(*b)))
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=2,
        # the BERT pooler is unused by mean pooling: DDP must be told parameters may get no gradient
        strategy=DDPStrategy(process_group_backend="gloo", find_unused_parameters=True),
        callbacks=[callback, checkpoints],
        default_root_dir=str(out / "root"),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    evidence = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "local": module.local,
        "snapshot_steps": snapshot_steps,
        "final_state": callback.final_state,
        "n_sinks": len(callback.monitor.sinks),
        "monitor_enabled": callback.monitor.enabled,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(evidence), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
