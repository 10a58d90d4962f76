"""Learning rate, default histogram interval and the per-tensor gradient view in both trainers
(issue 15 points 5 and 6), against the scheduler's own values and the test's own gradient norms."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.losses import MultipleNegativesRankingLoss
from test_resume_lightning import PairModule
from torch.utils.data import DataLoader
from transformers import TrainerCallback, get_linear_schedule_with_warmup

from aquin_monitor import LightningEmbeddingMonitor, TrainerEmbeddingMonitor, monitored
from aquin_monitor.sinks import read_jsonl

ANCHORS = [f"question number {i} about topic {i % 5}" for i in range(48)]
POSITIVES = [f"answer {i} on topic {i % 5}" for i in range(48)]


def _scheduler_lrs(make_scheduler, base_lrs: list[float], steps: int) -> list[list[float]]:
    """The lr of each group at each optimizer step, read from a fresh scheduler on a dummy optimizer."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)])
    scheduler = make_scheduler(optimizer)
    out = []
    for _ in range(steps):
        out.append(list(scheduler.get_last_lr()))
        optimizer.step()
        scheduler.step()
    return out


class _GradNorms(TrainerCallback):
    """HF reference: each parameter's gradient norm at the pre-optimizer hook, before the monitor."""

    def __init__(self):
        self.steps: dict[int, dict[str, float]] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps[state.global_step + 1] = {
            n: float(torch.linalg.vector_norm(p.grad)) for n, p in model.named_parameters() if p.grad is not None
        }


def _hf_run(model_path, out, callbacks, max_steps):
    torch.manual_seed(0)
    model = SentenceTransformer(model_path, device="cpu")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        warmup_steps=3,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=True,
        dataloader_drop_last=True,
    )
    data = Dataset.from_dict({"anchor": ANCHORS, "positive": POSITIVES})
    loss = monitored(MultipleNegativesRankingLoss(model))
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=callbacks).train()


def test_hf_logs_lr_histograms_and_tensor_norms(tiny_mean_model, tmp_path):
    reference = _GradNorms()
    _hf_run(
        tiny_mean_model, tmp_path, [reference, TrainerEmbeddingMonitor(strict=True, tensor_norms_every=4)], max_steps=42
    )
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 43))
    expected = _scheduler_lrs(lambda o: get_linear_schedule_with_warmup(o, 3, 42), [1e-3], 42)
    assert [r["optim/lr"] for r in rows] == pytest.approx([e[0] for e in expected], rel=1e-12)
    assert not any(k.startswith("optim/lr/") for r in rows for k in r)
    # max_steps 42 -> ceil(42 / 20) = 3: histograms at steps 3, 6, ..., 42
    hist_steps = sorted({h["step"] for h in read_jsonl(tmp_path / "histograms.jsonl")})
    assert hist_steps == list(range(3, 43, 3))
    _check_tensor_norms(rows, reference.steps, every=4)


def _check_tensor_norms(rows, reference, every):
    for r in rows:
        tensors = {k[len("grad_norm_tensor/") :]: v for k, v in r.items() if k.startswith("grad_norm_tensor/")}
        if r["step"] % every:
            assert not tensors
            continue
        assert tensors.keys() == reference[r["step"]].keys()
        for name, value in tensors.items():
            assert value == pytest.approx(reference[r["step"]][name], rel=1e-5, abs=1e-12), name
        assert math.sqrt(sum(v * v for v in tensors.values())) == pytest.approx(r["grad_norm/total"], rel=1e-5)


class _TwoGroups(PairModule):
    """The resume test's module with two parameter groups at different learning rates."""

    def configure_optimizers(self):
        embeddings = [p for n, p in self.named_parameters() if "embeddings" in n]
        rest = [p for n, p in self.named_parameters() if "embeddings" not in n]
        optimizer = torch.optim.AdamW([{"params": embeddings, "lr": 1e-4}, {"params": rest, "lr": 1e-3}])
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": _lightning_schedule(optimizer), "interval": "step"},
        }


def _lightning_schedule(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.9**k)


class _LightningGradNorms(L.Callback):
    def __init__(self):
        self.steps: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps[trainer.global_step + 1] = {
            n: float(torch.linalg.vector_norm(p.grad)) for n, p in pl_module.named_parameters() if p.grad is not None
        }


def test_lightning_logs_lr_per_group_histograms_and_tensor_norms(tiny_mean_model, tmp_path):
    torch.manual_seed(0)
    pairs = list(zip(ANCHORS[:32], POSITIVES[:32]))
    loader = DataLoader(pairs, batch_size=4, shuffle=True, collate_fn=lambda b: tuple(zip(*b)))
    reference = _LightningGradNorms()
    monitor = LightningEmbeddingMonitor(output_dir=str(tmp_path / "run"), strict=True, tensor_norms_every=5)
    trainer = L.Trainer(
        max_epochs=6,
        accelerator="cpu",
        devices=1,
        callbacks=[reference, monitor],
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
    )
    trainer.fit(_TwoGroups(tiny_mean_model), loader)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 49))  # 6 epochs of 8 batches
    expected = _scheduler_lrs(_lightning_schedule, [1e-4, 1e-3], 48)
    for r, lrs in zip(rows, expected):
        assert "optim/lr" not in r
        assert [r["optim/lr/group.0"], r["optim/lr/group.1"]] == pytest.approx(lrs, rel=1e-12)
    # no max_steps: the length is trainer.estimated_stepping_batches = 48 -> every ceil(48 / 20) = 3 steps
    hist_steps = sorted({h["step"] for h in read_jsonl(tmp_path / "run" / "histograms.jsonl")})
    assert hist_steps == list(range(3, 49, 3))
    _check_tensor_norms(rows, reference.steps, every=5)


def test_user_histogram_every_wins(tiny_mean_model, tmp_path):
    _hf_run(tiny_mean_model, tmp_path, [TrainerEmbeddingMonitor(strict=True, histogram_every=4)], max_steps=9)
    assert sorted({h["step"] for h in read_jsonl(tmp_path / "histograms.jsonl")}) == [4, 8]
    assert not any(k.startswith("grad_norm_tensor/") for r in read_jsonl(tmp_path / "metrics.jsonl") for k in r)
