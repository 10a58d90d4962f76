"""Two-process CPU DDP (gloo) sentence-transformers Trainer run; launched by tests/test_distributed.py with torchrun.

Usage: ``torchrun --standalone --nproc_per_node=2 hf_ddp.py MODEL_PATH OUT_DIR MAX_STEPS``. The monitor
(with snapshots) writes to ``OUT_DIR/run``; every rank writes its own evidence to
``OUT_DIR/rank<r>.json``:

- ``local``: per call of the loss's similarity function (one per optimizer step here), the
  contrastive sums of *this rank's* cosine matrix, computed here with plain torch;
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

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from datasets import Dataset  # noqa: E402
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402
from sentence_transformers.losses import MultipleNegativesRankingLoss  # noqa: E402

from aquin_monitor.callbacks import TrainerEmbeddingMonitor  # noqa: E402
from aquin_monitor.capture import monitored  # noqa: E402
from aquin_monitor.snapshot_runner import SnapshotRunner  # noqa: E402

ANCHORS = [f"question number {i} about topic {i % 5}" for i in range(48)]
POSITIVES = [f"answer {i} on topic {i % 5}" for i in range(48)]
PROBE = [f"probe sentence {i} about topic {i % 4}" for i in range(12)]
PER_RANK_BATCH = 4
MNRL_SCALE = 20.0  # MultipleNegativesRankingLoss default


class RecordingMonitor(TrainerEmbeddingMonitor):
    """Keeps the monitor's state at train end, before ``close``."""

    final_state: dict | None = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.final_state = self.monitor.state_dict()
        return super().on_train_end(args, state, control, model=model, **kwargs)


def main(model_path: str, out_dir: str, max_steps: int) -> None:
    out = Path(out_dir)
    local: list[dict] = []

    def recording_cos_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """MNRL's default cosine similarity; also notes this rank's own statistics of the matrix."""
        scores = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
        cos = F.normalize(a.detach().double(), dim=-1) @ F.normalize(b.detach().double(), dim=-1).T
        n = cos.shape[0]
        diag = torch.diagonal(cos)
        local.append(
            {
                "pos_sum": float(diag.sum()),
                "neg_sum": float(cos.sum() - diag.sum()),
                "correct": int((cos.argmax(dim=1) == torch.arange(n)).sum()),
                "rows": n,
                "neg_count": n * (n - 1),
                "loss": float(F.cross_entropy(cos * MNRL_SCALE, torch.arange(n))),
            }
        )
        return scores

    runner = SnapshotRunner(PROBE, umap=False)
    snapshot_steps: list[int] = []
    take = runner.take

    def recording_take(model, step, **kwargs):
        snapshot_steps.append(int(step))
        return take(model, step, **kwargs)

    runner.take = recording_take
    callback = RecordingMonitor(output_dir=str(out / "run"), snapshots=runner, strict=True)
    model = SentenceTransformer(model_path, device="cpu")
    loss = monitored(MultipleNegativesRankingLoss(model, scale=MNRL_SCALE, similarity_fct=recording_cos_sim))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=max_steps,
        per_device_train_batch_size=PER_RANK_BATCH,
        learning_rate=5e-4,
        max_grad_norm=1.0,
        report_to=[],
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        seed=0,
        data_seed=0,
        use_cpu=True,
        ddp_backend="gloo",
        # the BERT pooler is unused by mean pooling: DDP must be told parameters may get no gradient
        ddp_find_unused_parameters=True,
        dataloader_drop_last=True,
    )
    data = Dataset.from_dict({"anchor": ANCHORS, "positive": POSITIVES})
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[callback])
    trainer.train()
    evidence = {
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "local": local,
        "snapshot_steps": snapshot_steps,
        "final_state": callback.final_state,
        "n_sinks": len(callback.monitor.sinks),
    }
    (out / f"rank{trainer.args.process_index}.json").write_text(json.dumps(evidence), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
