"""The sentence-transformers Trainer callback, end to end on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset
from reference_stats import combine, in_batch_sums
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.losses import MultipleNegativesRankingLoss

from aquin_monitor.callbacks import TrainerEmbeddingMonitor
from aquin_monitor.capture import monitored
from aquin_monitor.sinks import read_jsonl

ANCHORS = [f"question number {i} about topic {i % 5}" for i in range(48)]
POSITIVES = [f"answer {i} on topic {i % 5}" for i in range(48)]


def _train(
    model_path,
    out,
    *,
    callbacks=(),
    max_steps=6,
    max_grad_norm=1.0,
    wrap=True,
    accumulation=1,
    resume=None,
    save_steps=None,
    lr=5e-4,
):
    torch.manual_seed(0)
    model = SentenceTransformer(model_path, device="cpu")
    loss = MultipleNegativesRankingLoss(model)
    if wrap:
        loss = monitored(loss)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=accumulation,
        learning_rate=lr,
        max_grad_norm=max_grad_norm,
        report_to=[],
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        logging_steps=1,
        seed=0,
        data_seed=0,
        use_cpu=True,
        dataloader_drop_last=True,
    )
    data = Dataset.from_dict({"anchor": ANCHORS, "positive": POSITIVES})
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=data, loss=loss, callbacks=list(callbacks)
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def test_metrics_every_optimizer_step_with_accumulation(tiny_mean_model, tmp_path):
    cb = TrainerEmbeddingMonitor(strict=True)
    outputs = []  # every SentenceTransformer forward: MNRL embeds the anchors, then the positives

    def keep(module, args, output):
        if isinstance(module, SentenceTransformer):
            outputs.append(output["sentence_embedding"].detach().clone())

    handle = torch.nn.modules.module.register_module_forward_hook(keep)
    try:
        _train(tiny_mean_model, tmp_path, callbacks=[cb], max_steps=3, accumulation=2)
    finally:
        handle.remove()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert len(outputs) == 3 * 2 * 2  # steps x micro-batches x (anchor, positive)
    micro = [in_batch_sums(outputs[k], outputs[k + 1]) for k in range(0, len(outputs), 2)]  # MNRL: scale 20
    for r, first, second in zip(rows, micro[::2], micro[1::2]):
        assert {"grad_norm/embeddings", "grad_norm/layer.00", "grad_norm/layer.01", "grad_norm/total"} <= r.keys()
        expected = combine([first, second])
        for key in ("pos_sim", "neg_sim", "gap", "hardest_neg_sim", "loss"):
            assert r[f"contrastive/{key}"] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
        assert r["contrastive/in_batch_acc"] == expected["in_batch_acc"]
        per_group = [v for k, v in r.items() if k.startswith("grad_norm/") and k != "grad_norm/total"]
        assert math.sqrt(sum(v * v for v in per_group)) == pytest.approx(r["grad_norm/total"], rel=1e-4)


def test_clipping_takeover_changes_nothing_in_training(tiny_mean_model, tmp_path):
    """Monitored (callback does the clipping) and unmonitored runs end with bit-identical weights."""
    plain, _ = _train(tiny_mean_model, tmp_path / "plain", wrap=False, max_grad_norm=0.05)
    cb = TrainerEmbeddingMonitor(strict=True)
    watched, trainer = _train(tiny_mean_model, tmp_path / "watched", callbacks=[cb], max_grad_norm=0.05)
    for (name, a), (_, b) in zip(plain.named_parameters(), watched.named_parameters()):
        assert torch.equal(a, b), name
    assert trainer.args.max_grad_norm == 0.05  # restored after training
    rows = read_jsonl(tmp_path / "watched" / "metrics.jsonl")
    # pre-clip: the logged total exceeds the clip threshold, as HF's own pre-clip grad_norm does
    assert all(r["grad_norm/total"] > 0.05 for r in rows)
    hf_logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert [r["grad_norm/total"] for r in rows] == pytest.approx(hf_logged, rel=1e-5)


def test_resume_continues_without_duplicate_steps(tiny_mean_model, tmp_path):
    _train(tiny_mean_model, tmp_path, callbacks=[TrainerEmbeddingMonitor(strict=True)], max_steps=4, save_steps=2)
    assert (tmp_path / "checkpoint-2" / "aquin_monitor_state.json").exists()
    state = json.loads((tmp_path / "checkpoint-4" / "aquin_monitor_state.json").read_text())
    assert state["last_step"] == 4
    _train(
        tiny_mean_model,
        tmp_path,
        callbacks=[TrainerEmbeddingMonitor(strict=True)],
        max_steps=6,
        save_steps=2,
        resume=str(tmp_path / "checkpoint-4"),
    )
    steps = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_stop_on_nan_stops_training(tiny_mean_model, tmp_path):
    cb = TrainerEmbeddingMonitor(stop_on=["nan"])
    with pytest.warns(Warning):
        _, trainer = _train(tiny_mean_model, tmp_path, callbacks=[cb], max_steps=20, lr=1e6)
    events = read_jsonl(tmp_path / "events.jsonl")
    assert any(e["kind"] == "nan" for e in events)
    assert trainer.state.global_step < 20


def test_resume_from_an_older_checkpoint_logs_each_step_once(tiny_mean_model, tmp_path):
    """Steps logged after the checkpoint by the first run are replaced by the resumed run's (like purge_step)."""
    _train(tiny_mean_model, tmp_path, callbacks=[TrainerEmbeddingMonitor(strict=True)], max_steps=4, save_steps=2)
    first = {r["step"]: r for r in read_jsonl(tmp_path / "metrics.jsonl")}
    _train(
        tiny_mean_model,
        tmp_path,
        callbacks=[TrainerEmbeddingMonitor(strict=True)],
        max_steps=6,
        save_steps=2,
        resume=str(tmp_path / "checkpoint-2"),
    )
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["time"] == first[1]["time"] and rows[2]["time"] > first[4]["time"]  # 1-2 kept, 3-4 re-logged


def test_a_fresh_run_moves_an_earlier_runs_files_aside(tiny_mean_model, tmp_path):
    _train(tiny_mean_model, tmp_path, callbacks=[TrainerEmbeddingMonitor(strict=True)], max_steps=3)
    first = read_jsonl(tmp_path / "metrics.jsonl")
    with pytest.warns(RuntimeWarning, match="earlier run"):
        _train(tiny_mean_model, tmp_path, callbacks=[TrainerEmbeddingMonitor(strict=True)], max_steps=2)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]  # not 1, 2, 3, 1, 2
    (archived,) = (tmp_path / "previous").iterdir()
    assert read_jsonl(archived / "metrics.jsonl") == first  # nothing lost
