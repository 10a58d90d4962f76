"""``grad_norm/<group>`` from real trainer runs equals the pre-clip norms measured by the test's own hooks.

For both trainers, with gradient clipping on and small enough to bite, a hook registered by the test
(not by the monitor) reads every parameter's ``.grad`` at the point the optimizer is about to receive
it, before any clipping, groups the parameters by a regular expression written here
(:mod:`reference_stats`) and computes each group's L2 norm in float64. A second hook, after the
optimizer step, checks that clipping really changed the gradients (their total norm is the clip
value), so a monitor that measured after clipping could not pass. The Lightning run also checks
``contrastive/*`` against the module's own embeddings, recomputed per micro-batch in plain torch.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from datasets import Dataset
from reference_stats import combine, in_batch_sums, reference_group_norms, total_norm
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.losses import MultipleNegativesRankingLoss
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from aquin_monitor.callbacks import LightningEmbeddingMonitor, TrainerEmbeddingMonitor
from aquin_monitor.capture import monitored
from aquin_monitor.losses import info_nce
from aquin_monitor.sinks import read_jsonl

PAIRS = [(f"question number {i} about topic {i % 5}", f"answer {i} on topic {i % 5}") for i in range(32)]
# far below the tiny model's gradient norms (about 1; about 0.08 for its LoRA matrices): clipping scales every step
CLIP = 0.002


def assert_rows_match(rows: list[dict], reference: list[dict[str, float]], post_clip: list[float]) -> None:
    """Step by step: the logged groups are exactly those with a gradient, each within rtol 1e-5."""
    assert [r["step"] for r in rows] == list(range(1, len(reference) + 1))
    assert len(post_clip) == len(reference)
    for row, expected, after in zip(rows, reference, post_clip):
        logged = {k[len("grad_norm/") :]: v for k, v in row.items() if k.startswith("grad_norm/")}
        assert set(logged) == set(expected), row["step"]
        for group, value in expected.items():
            assert logged[group] == pytest.approx(value, rel=1e-5), (row["step"], group)
        # the clip bit: what reached the optimizer had total norm CLIP, far below the measured one
        assert expected["total"] > 10 * CLIP
        assert after == pytest.approx(CLIP * expected["total"] / (expected["total"] + 1e-6), rel=1e-4)


# ------------------------------------------------------------------------------------------ Lightning


class PairModule(L.LightningModule):
    def __init__(self, path: str):
        super().__init__()
        self.encoder = SentenceTransformer(path, device="cpu")
        self.encoder.train()
        self.embeddings: list[tuple[torch.Tensor, torch.Tensor]] = []  # (queries, documents) per micro-batch

    def encode(self, texts):
        features = self.encoder.preprocess(list(texts))
        return self.encoder(features)["sentence_embedding"]

    def training_step(self, batch, batch_idx):
        queries, documents = self.encode(batch[0]), self.encode(batch[1])
        self.embeddings.append((queries.detach().clone(), documents.detach().clone()))
        return info_nce(queries, documents)  # scale 20

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=5e-4)


class LightningReference(L.Callback):
    """Pre-clip group norms in ``on_before_optimizer_step``; post-clip total after ``optimizer.step``."""

    def __init__(self):
        self.pre_clip: list[dict[str, float]] = []
        self.post_clip: list[float] = []

    def on_train_start(self, trainer, pl_module):
        params = list(pl_module.parameters())
        trainer.optimizers[0].register_step_post_hook(lambda *_: self.post_clip.append(total_norm(params)))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.pre_clip.append(reference_group_norms(pl_module.named_parameters()))


def test_lightning_group_norms_equal_pre_clip_reference_with_accumulation(tiny_mean_model, tmp_path):
    reference = LightningReference()
    callbacks = [LightningEmbeddingMonitor(output_dir=str(tmp_path / "run"), strict=True), reference]
    torch.manual_seed(0)
    loader = DataLoader(PAIRS, batch_size=8, shuffle=True, collate_fn=lambda b: tuple(zip(*b)))
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=2,
        gradient_clip_val=CLIP,
        gradient_clip_algorithm="norm",
        logger=False,
        enable_checkpointing=False,
    )
    module = PairModule(tiny_mean_model)
    trainer.fit(module, loader)
    assert len(reference.pre_clip) == 3 and len(module.embeddings) == 6  # 3 optimizer steps of 2 micro-batches
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert {"embeddings", "layer.00", "layer.01", "total"} <= set(reference.pre_clip[0])
    assert_rows_match(rows, reference.pre_clip, reference.post_clip)
    micro = [in_batch_sums(q, d) for q, d in module.embeddings]
    for row, first, second in zip(rows, micro[::2], micro[1::2]):
        expected = combine([first, second])
        for key in ("pos_sim", "neg_sim", "gap", "hardest_neg_sim", "loss"):
            assert row[f"contrastive/{key}"] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
        assert row["contrastive/in_batch_acc"] == expected["in_batch_acc"]


# ------------------------------------------------------------------------------------------ HF / ST


class TrainerReference(TrainerCallback):
    """Registered before the monitor: its ``on_pre_optimizer_step`` runs before the monitor clips."""

    def __init__(self):
        self.pre_clip: list[dict[str, float]] = []
        self.post_clip: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.pre_clip.append(reference_group_norms(model.named_parameters()))

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.post_clip.append(total_norm(model.parameters()))  # .grad survives until zero_grad


def _trainer(model_path: str, out, accumulation: int, monitor: TrainerEmbeddingMonitor, adapter: str | None = None):
    torch.manual_seed(0)
    model = SentenceTransformer(model_path, device="cpu")
    if adapter is not None:
        from peft import PeftModel

        model[0].auto_model = PeftModel.from_pretrained(model[0].auto_model, adapter, is_trainable=True)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        max_steps=3,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=accumulation,
        learning_rate=5e-4,
        max_grad_norm=CLIP,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        data_seed=0,
        use_cpu=True,
        dataloader_drop_last=True,
    )
    data = Dataset.from_dict({"anchor": [a for a, _ in PAIRS], "positive": [p for _, p in PAIRS]})
    reference = TrainerReference()
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=data,
        loss=monitored(MultipleNegativesRankingLoss(model)),
        callbacks=[reference, monitor],
    )
    trainer.train()
    assert len(reference.pre_clip) == 3
    return trainer, reference


@pytest.mark.parametrize("accumulation, lora", [(1, False), (2, True)])
def test_trainer_group_norms_equal_pre_clip_reference(tiny_lora, tmp_path, accumulation, lora):
    """Full fine-tune, and LoRA (only lora_A / lora_B train: groups layer.NN/lora_A|B) with accumulation 2."""
    base, adapter = tiny_lora
    monitor = TrainerEmbeddingMonitor(strict=True)
    trainer, reference = _trainer(base, tmp_path, accumulation, monitor, adapter if lora else None)
    lora_groups = {f"layer.{i:02d}/lora_{m}" for i in range(2) for m in "AB"}
    assert set(reference.pre_clip[0]) == (
        lora_groups | {"total"} if lora else {"embeddings", "layer.00", "layer.01", "total"}
    )
    assert_rows_match(read_jsonl(tmp_path / "metrics.jsonl"), reference.pre_clip, reference.post_clip)
    # and the Trainer's own (pre-clip) grad_norm agrees with the reference total
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert logged == pytest.approx([r["total"] for r in reference.pre_clip], rel=1e-5)


def test_trainer_without_takeover_logs_post_clip_norms_under_their_own_name(tiny_mean_model, tmp_path):
    """take_over_clipping=False: the Trainer clips before any callback runs, so the monitor (and the test's
    hook, at the same point) see clipped gradients; they are logged as grad_norm_post_clip/<group>."""
    _, reference = _trainer(
        tiny_mean_model, tmp_path, 1, TrainerEmbeddingMonitor(strict=True, take_over_clipping=False)
    )
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row, expected, after in zip(rows, reference.pre_clip, reference.post_clip):
        assert not [k for k in row if k.startswith("grad_norm/")]
        logged = {k[len("grad_norm_post_clip/") :]: v for k, v in row.items() if k.startswith("grad_norm_post_clip/")}
        assert set(logged) == set(expected)
        for group, value in expected.items():
            assert logged[group] == pytest.approx(value, rel=1e-5), (row["step"], group)
        assert logged["total"] == pytest.approx(CLIP, rel=1e-4) and after == pytest.approx(CLIP, rel=1e-4)
