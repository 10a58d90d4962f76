"""Two-process sentence-transformers Trainer with FSDP2 through accelerate (``fsdp_version: 2``) and the
monitor; launched by tests/test_fsdp.py with torchrun, on 2 GPUs (nccl). accelerate enables FSDP only on
accelerator devices: on CPU the same arguments run plain DDP (``sharded`` is then False in the evidence).

Usage: ``torchrun --standalone --nproc_per_node=2 hf_fsdp.py MODEL_PATH OUT_DIR MAX_STEPS``. Clipping is
off (``max_grad_norm=0``), so the Trainer's own logged ``grad_norm`` (accelerate's ``clip_grad_norm_``
with an infinite bound, which reduces DTensor norms itself) is the reference for ``grad_norm/total``,
and a reference callback, registered before the monitor, groups the whole gradients gathered by
``DTensor.full_tensor()`` with the test's regular expressions. Rank zero writes ``OUT_DIR/rank0.json``.
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

import torch
from datasets import Dataset
from reference_stats import reference_group_norms
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.losses import MultipleNegativesRankingLoss
from transformers import TrainerCallback

from aquin_monitor.callbacks import TrainerEmbeddingMonitor
from aquin_monitor.capture import monitored

PAIRS = [(f"question number {i} about topic {i % 5}", f"answer {i} on topic {i % 5}") for i in range(32)]


class FullGradientReference(TrainerCallback):
    def __init__(self):
        self.norms: list[dict[str, float]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        def whole(p):
            return p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad

        pairs = [
            (n, SimpleNamespace(requires_grad=p.requires_grad, grad=None if p.grad is None else whole(p)))
            for n, p in model.named_parameters()
        ]
        self.norms.append(reference_group_norms(pairs))


def main(model_path: str, out_dir: str, max_steps: int) -> None:
    out = Path(out_dir)
    model = SentenceTransformer(model_path, device="cuda" if torch.cuda.is_available() else "cpu")
    reference = FullGradientReference()
    monitor = TrainerEmbeddingMonitor(output_dir=str(out / "run"), strict=True, report=False)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=5e-4,
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        data_seed=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="nccl" if torch.cuda.is_available() else "gloo",
        dataloader_drop_last=True,
        fsdp="full_shard auto_wrap",
        fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"]},
    )
    data = Dataset.from_dict({"anchor": [a for a, _ in PAIRS], "positive": [p for _, p in PAIRS]})
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=data,
        loss=monitored(MultipleNegativesRankingLoss(model)),
        callbacks=[reference, monitor],
    )
    trainer.train()
    if trainer.is_world_process_zero():
        logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
        evidence = {
            "reference": reference.norms,
            "trainer_grad_norm": [float(x) for x in logged],
            "sharded": monitor.monitor.sharded is not None,
        }
        (out / "rank0.json").write_text(json.dumps(evidence), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
