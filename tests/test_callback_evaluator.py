"""SnapshotEvaluator: a SnapshotRunner as a sentence-transformers evaluator (issue 15 point 11), in a real
SentenceTransformerTrainer run with eval_strategy="steps"."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.losses import MultipleNegativesRankingLoss
from transformers import TrainerCallback

import aquin_monitor
from aquin_monitor import SnapshotRunner
from aquin_monitor.callbacks.evaluator import SnapshotEvaluator
from aquin_monitor.data import ProbeSet
from aquin_monitor.snapshot_record import Snapshot

ANCHORS = [f"question number {i} about topic {i % 5}" for i in range(32)]
POSITIVES = [f"answer {i} on topic {i % 5}" for i in range(32)]
PROBE = [f"a probe sentence about subject {i} and colour {c}" for i, c in enumerate(["red", "blue", "green"] * 4)]


def _mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """Brute force over all ordered pairs i != j (the test's own reference for geometry/anisotropy)."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cos = unit.astype(np.float64) @ unit.T.astype(np.float64)
    n = len(unit)
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


class _Reference(TrainerCallback):
    """At each evaluation: the trainer's logged metrics and the brute-force anisotropy of the model then."""

    def __init__(self):
        self.seen: dict[int, tuple[dict, float]] = {}

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        was_training = model.training
        embeddings = model.encode(PROBE, convert_to_numpy=True, batch_size=64)
        model.train(was_training)
        self.seen[state.global_step] = (dict(metrics), _mean_pairwise_cosine(embeddings))


def test_snapshot_metrics_appear_under_eval_strategy(tiny_mean_model, tmp_path):
    torch.manual_seed(0)
    model = SentenceTransformer(tiny_mean_model, device="cpu")
    runner = SnapshotRunner(ProbeSet.from_texts(PROBE), umap=False)
    evaluator = SnapshotEvaluator(runner, run_dir=tmp_path / "run", strict=True)
    assert aquin_monitor.SnapshotEvaluator is SnapshotEvaluator  # the public name
    assert (evaluator.primary_metric, evaluator.greater_is_better) == ("geometry/anisotropy", False)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=2,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=True,
    )
    reference = _Reference()
    data = Dataset.from_dict({"anchor": ANCHORS, "positive": POSITIVES})
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=data,
        loss=MultipleNegativesRankingLoss(model),
        evaluator=evaluator,
        callbacks=[reference],
    )
    trainer.train()
    assert sorted(reference.seen) == [2, 4]
    for step, (metrics, anisotropy) in reference.seen.items():
        assert metrics["eval_geometry/anisotropy"] == pytest.approx(anisotropy, rel=1e-4, abs=1e-6)
        saved = Snapshot.load(tmp_path / "run" / "snapshots" / str(step))
        assert (saved.step, saved.tag) == (step, "eval")
        assert saved.metrics["geometry/anisotropy"] == pytest.approx(metrics["eval_geometry/anisotropy"], rel=1e-12)
    # the second evaluation is diffed against the first: the same quantity from the two anisotropies
    metrics_4, anisotropy_4 = reference.seen[4]
    assert metrics_4["eval_drift/base/anisotropy_delta"] == pytest.approx(anisotropy_4 - reference.seen[2][1], abs=1e-5)
    logged = [row for row in trainer.state.log_history if "eval_geometry/anisotropy" in row]
    assert [row["step"] for row in logged] == [2, 4]


def test_direct_call_keeps_training_mode_and_failure_returns_nothing(tiny_mean_model):
    model = SentenceTransformer(tiny_mean_model, device="cpu").train()
    assert SnapshotEvaluator(SnapshotRunner(PROBE, umap=False))(model)["geometry/anisotropy"] == pytest.approx(
        _mean_pairwise_cosine(model.encode(PROBE, convert_to_numpy=True)), rel=1e-4
    )
    model.train()
    SnapshotEvaluator(SnapshotRunner(PROBE, umap=False))(model)
    assert model.training
    evaluator = SnapshotEvaluator(SnapshotRunner(PROBE, umap=False), primary_metric="retrieval/ndcg@10")
    assert evaluator.greater_is_better
    evaluator.runner.forward = lambda m: (_ for _ in ()).throw(RuntimeError("broken probe pass"))
    with pytest.warns(Warning, match="broken probe pass"):
        assert evaluator(model, steps=3) == {}


def test_the_trainers_own_evaluation_reaches_the_report(tiny_mean_model, tmp_path):
    """With the monitor callback, each evaluation's results as the trainer logged them (eval_loss, a
    sentence-transformers evaluator's metrics) are kept in evaluations.jsonl at their step, without timing
    and without our own snapshot metrics, and the report shows them in a table."""
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator, SequentialEvaluator

    from aquin_monitor.callbacks import TrainerEmbeddingMonitor
    from aquin_monitor.report import render_report
    from aquin_monitor.sinks import read_jsonl

    torch.manual_seed(0)
    model = SentenceTransformer(tiny_mean_model, device="cpu")
    similarity = EmbeddingSimilarityEvaluator(ANCHORS[:8], POSITIVES[:8], [i / 8 for i in range(8)], name="$$<script>")
    evaluator = SequentialEvaluator(
        [similarity, SnapshotEvaluator(SnapshotRunner(ProbeSet.from_texts(PROBE), umap=False))]
    )
    run_dir = tmp_path / "run"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=2,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=True,
    )
    data = Dataset.from_dict({"anchor": ANCHORS, "positive": POSITIVES})
    reference = _Reference()
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data.select(range(16)),
        loss=MultipleNegativesRankingLoss(model),
        evaluator=evaluator,
        callbacks=[reference, TrainerEmbeddingMonitor(output_dir=str(run_dir), strict=True)],
    )
    trainer.train()

    rows = read_jsonl(run_dir / "evaluations.jsonl")
    assert [row["step"] for row in rows] == sorted(reference.seen) == [2, 4]
    for row in rows:
        logged, _ = reference.seen[row["step"]]
        expected = {
            k: v
            for k, v in logged.items()
            if k not in ("epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
            and not k.startswith("eval_geometry/")
            and not k.startswith(("eval_layers/", "eval_attention/", "eval_drift/"))
        }
        assert "eval_loss" in expected and "eval_$$<script>_spearman_cosine" in expected
        assert {k: v for k, v in row.items() if k not in ("step", "time")} == pytest.approx(expected)
    page = render_report(run_dir)
    section = page.split('<section id="evaluations">', 1)[1].split("</section>", 1)[0]
    assert "<th>eval_$$&lt;script&gt;_spearman_cosine</th>" in section and "<script>" not in section
    assert "eval_geometry" not in section and "eval_runtime" not in section
    assert f"<td>{rows[-1]['step']}</td>" in section


def test_direction_of_the_primary_metric_comes_from_the_metric_registry():
    from aquin_monitor.metric_registry import find_metric

    runner = SnapshotRunner(PROBE, umap=False)
    for name, expected in (
        ("geometry/anisotropy", False),
        ("retrieval/mean_first_rank", False),
        ("retrieval/ndcg@10", True),
        ("geometry/id_pca95", True),
        ("drift/base/score", True),
        ("custom/metric", True),
    ):
        spec = find_metric(name)
        assert expected == (spec is None or spec.higher_is_better is not False), name  # the registry says so too
        assert SnapshotEvaluator(runner, primary_metric=name).greater_is_better is expected, name
    assert SnapshotEvaluator(runner, primary_metric="geometry/anisotropy", greater_is_better=True).greater_is_better
