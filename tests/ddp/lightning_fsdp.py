"""Two-process Lightning ``ModelParallelStrategy`` (FSDP2 through ``configure_model``, gloo on CPU) with the
monitor; driven by tests/test_fsdp.py.

Usage: ``python lightning_fsdp.py MODEL_PATH OUT_DIR MAX_STEPS``. Lightning launches rank 1 itself. The
module shards each BERT layer and the root with ``fully_shard`` over the strategy's data-parallel mesh.
A reference callback, registered before the monitor, reads every gradient in ``on_before_optimizer_step``
as a whole tensor (``DTensor.full_tensor()``: torch's own all-gather, not the monitor's reduction) and
groups it with the test's regular expressions (``reference_stats``); each rank writes those norms to
``OUT_DIR/rank<r>.json``; rank zero's monitor writes ``OUT_DIR/run/metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reference_stats

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from reference_stats import reference_group_norms
from sentence_transformers import SentenceTransformer
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader

from aquin_monitor.callbacks import LightningEmbeddingMonitor
from aquin_monitor.losses import info_nce

PAIRS = [(f"question number {i} about topic {i % 5}", f"answer {i} on topic {i % 5}") for i in range(32)]
PER_RANK_BATCH = 4


class PairModule(L.LightningModule):
    def __init__(self, path: str):
        super().__init__()
        self.encoder = SentenceTransformer(path, device="cpu")

    def configure_model(self) -> None:
        mesh = self.device_mesh["data_parallel"]
        for module in self.encoder.modules():
            if type(module).__name__ == "BertLayer":
                fully_shard(module, mesh=mesh)
        fully_shard(self.encoder, mesh=mesh)

    def training_step(self, batch, batch_idx):
        texts = list(batch[0]) + list(batch[1])
        embeddings = self.encoder(self.encoder.preprocess(texts))["sentence_embedding"]
        return info_nce(embeddings[: len(batch[0])], embeddings[len(batch[0]) :])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=5e-4)


class FullGradientReference(L.Callback):
    """Per-group norms of the whole gradients, gathered by DTensor itself."""

    def __init__(self):
        self.norms: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        whole = [
            (
                name,
                SimpleNamespace(requires_grad=p.requires_grad, grad=None if p.grad is None else p.grad.full_tensor()),
            )
            for name, p in pl_module.named_parameters()
        ]
        self.norms.append(reference_group_norms(whole))


def main(model_path: str, out_dir: str, max_steps: int) -> None:
    out = Path(out_dir)
    torch.manual_seed(0)
    reference = FullGradientReference()
    monitor = LightningEmbeddingMonitor(output_dir=str(out / "run"), strict=True, report=False)
    loader = DataLoader(PAIRS, batch_size=PER_RANK_BATCH, shuffle=True, collate_fn=lambda b: tuple(zip(*b)))
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo"),
        callbacks=[reference, monitor],
        default_root_dir=str(out / "root"),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(PairModule(model_path), loader)
    evidence = {
        "rank": trainer.global_rank,
        "reference": reference.norms,
        "sharded": monitor.monitor.sharded is not None,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(evidence), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
