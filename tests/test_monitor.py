"""StepMonitor end to end on a toy model: what it writes per step, checked against hand computations."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from aquin_monitor.capture import ContrastiveTap, report_similarity
from aquin_monitor.monitor import StepMonitor
from aquin_monitor.sinks import JsonlSink
from aquin_monitor.sinks.jsonl import read_jsonl


def test_histograms_hold_the_positives_and_every_finite_negative(tmp_path):
    model = torch.nn.Linear(3, 2)
    tap = ContrastiveTap(strict=True)
    monitor = StepMonitor([JsonlSink(tmp_path)], histogram_every=2, tap=tap, strict=True, warn=False)
    scores = torch.tensor([[0.9, 0.1, float("-inf")], [0.3, 0.7, -0.2], [0.4, -0.5, 0.8]])
    for step in (1, 2):
        model.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        report_similarity(scores * step, tap=tap)  # step 2 doubles every score
        monitor.on_optimizer_step(step, model)
    monitor.close()

    histograms = read_jsonl(tmp_path / "histograms.jsonl")
    assert [(h["tag"], h["step"]) for h in histograms] == [
        ("contrastive/pos_sim_hist", 2),
        ("contrastive/neg_sim_hist", 2),
    ]
    pos, neg = histograms
    positives = np.array([1.8, 1.4, 1.6])
    negatives = np.array([0.2, 0.6, -0.4, 0.8, -1.0])  # the masked -inf is no negative
    for record, values in ((pos, positives), (neg, negatives)):
        assert (record["count"], record["nonfinite"]) == (values.size, 0)
        assert record["mean"] == pytest.approx(values.mean(), abs=1e-6)
        assert (record["min"], record["max"]) == pytest.approx((values.min(), values.max()), abs=1e-6)
        assert record["quantiles"]["p50"] == pytest.approx(np.median(values), abs=1e-6)


def test_logged_norms_and_contrastive_means_match_hand_computation(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    tap = ContrastiveTap(strict=True)
    monitor = StepMonitor([JsonlSink(tmp_path)], histogram_every=0, tap=tap, strict=True, warn=False)
    model(torch.randn(5, 4)).pow(2).sum().backward()
    report_similarity(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), tap=tap)
    monitor.on_optimizer_step(1, model)
    monitor.close()

    (row,) = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["step"] == 1]
    expected_total = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())).item()
    assert row["grad_norm/total"] == pytest.approx(expected_total, rel=1e-6)
    assert row["contrastive/pos_sim"] == pytest.approx(0.8)
    assert row["contrastive/neg_sim"] == pytest.approx(0.2)
    assert row["contrastive/gap"] == pytest.approx(0.6)
    assert row["contrastive/in_batch_acc"] == 1.0


def test_groups_without_any_gradient_are_not_logged_until_they_get_one(tmp_path, tiny_mean_model):
    """A sentence-transformers model never uses its BERT pooler: no ``grad_norm/pooler`` of 0 is logged."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_mean_model, device="cpu")
    monitor = StepMonitor(
        [JsonlSink(tmp_path)], histogram_every=0, strict=True, warn=False, tap=ContrastiveTap(strict=True)
    )
    for step in (1, 2):
        model.zero_grad(set_to_none=True)
        model(model.preprocess(["a first text", "and a second one"]))["sentence_embedding"].pow(2).sum().backward()
        if step == 2:  # the pooler gets a gradient from now on
            pooler = model[0].auto_model.pooler.dense.weight
            pooler.grad = torch.full_like(pooler, 0.5)
        monitor.on_optimizer_step(step, model)
    monitor.close()

    rows = {r["step"]: r for r in read_jsonl(tmp_path / "metrics.jsonl")}
    n_layers = model[0].auto_model.config.num_hidden_layers
    expected = {"grad_norm/embeddings", "grad_norm/total"} | {f"grad_norm/layer.{i:02d}" for i in range(n_layers)}
    assert {k for k in rows[1] if k.startswith("grad_norm/")} == expected
    assert {k for k in rows[2] if k.startswith("grad_norm/")} == expected | {"grad_norm/pooler"}
    assert rows[2]["grad_norm/pooler"] == pytest.approx(0.5 * pooler.numel() ** 0.5, rel=1e-6)
    with_pooler = [p.grad for p in model.parameters() if p.grad is not None]
    assert rows[2]["grad_norm/total"] == pytest.approx(torch.nn.utils.get_total_norm(with_pooler).item(), rel=1e-6)


def test_an_encoder_layer_that_never_reaches_the_loss_raises_dead_layer(tmp_path, tiny_mean_model):
    """The loss reads the first layer's hidden states: the last layer and the pooler get no gradient."""
    from transformers import AutoModel

    from aquin_monitor.alarms import DetectorConfig

    bert = AutoModel.from_pretrained(tiny_mean_model)
    last = f"layer.{bert.config.num_hidden_layers - 1:02d}"
    cfg = DetectorConfig()
    monitor = StepMonitor(
        [JsonlSink(tmp_path)], histogram_every=0, strict=True, warn=False, tap=ContrastiveTap(strict=True)
    )
    ids = torch.randint(5, 90, (4, 7))
    optimizer = torch.optim.SGD(bert.parameters(), lr=1e-3)
    for step in range(1, 20):
        out = bert(input_ids=ids, output_hidden_states=True)
        out.hidden_states[-2].pow(2).mean().backward()
        monitor.on_optimizer_step(step, bert)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    monitor.close()

    events = read_jsonl(tmp_path / "events.jsonl")
    assert [(e["step"], e["kind"], e["layer"]) for e in events] == [
        (cfg.warmup + cfg.dead_patience, "dead_layer", last)
    ]
    logged = {k for r in read_jsonl(tmp_path / "metrics.jsonl") for k in r if k.startswith("grad_norm/")}
    assert f"grad_norm/{last}" not in logged and "grad_norm/pooler" not in logged and "grad_norm/layer.00" in logged


class _DoneEvent:
    """Stands in for the CUDA event of the host copy on a CPU-only machine (the copy is done)."""

    def synchronize(self):
        return None


def _as_if_cuda(monkeypatch):
    """Route StepMonitor through its CUDA path (deferred host work, background worker) on the CPU."""
    monkeypatch.setattr(StepMonitor, "_asynchronous", staticmethod(lambda packed: True))
    monkeypatch.setattr(StepMonitor, "_copy_to_host", lambda self, packed: (packed.clone(), _DoneEvent()))


def _run(tmp_path, background, n_steps=30, nan_at=20):
    """A toy contrastive fine-tune; the gradient of one layer turns NaN at step ``nan_at``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4))
    tap = ContrastiveTap(strict=True)
    monitor = StepMonitor(
        [JsonlSink(tmp_path)],
        histogram_every=5,
        tap=tap,
        strict=True,
        warn=False,
        stop_on=["nan"],
        background=background,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 6), torch.randn(8, 6)
    stopped_at, threads = None, set()
    original = monitor._process

    def recording(*args):
        threads.add(threading.current_thread().name)
        return original(*args)

    monitor._process = recording
    for step in range(1, n_steps + 1):
        q, d = torch.nn.functional.normalize(model(x), dim=-1), torch.nn.functional.normalize(model(y), dim=-1)
        scores = q @ d.T
        report_similarity(scores, tap=tap)
        loss = torch.nn.functional.cross_entropy(scores * 20, torch.arange(8))
        loss.backward()
        if step == nan_at:
            model[0].bias.grad[0] = float("nan")
        monitor.on_optimizer_step(step, model)
        if monitor.should_stop and stopped_at is None:
            stopped_at = step
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    return read_jsonl(tmp_path / "metrics.jsonl"), read_jsonl(tmp_path / "events.jsonl"), stopped_at, threads


def test_background_worker_writes_what_the_training_thread_would(tmp_path, monkeypatch):
    direct = _run(tmp_path / "direct", background=False)
    _as_if_cuda(monkeypatch)
    deferred = _run(tmp_path / "deferred", background=False)
    worker = _run(tmp_path / "worker", background=True)

    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(worker[0]) == strip(deferred[0])
    assert strip(direct[0])[:20] == strip(deferred[0])[:20]
    # stop_on nan discards the update of the step the decision is made on: step 20 itself on the CPU,
    # so the weights stay finite; step 21 through the CUDA path, after step 20's NaN update was applied
    assert all(r["grad_norm/total"] is not None for r in direct[0][20:])
    assert all(r["grad_norm/total"] is None for r in deferred[0][20:])
    assert [e["step"] for e in worker[1]] == [e["step"] for e in direct[1]] == [20, 20]  # layer.. and total
    assert {e["kind"] for e in worker[1]} == {"nan"}
    # the alarm of step 20 is known on the CPU at once, through the CUDA path at the next monitor call
    assert direct[2] == 20 and deferred[2] == worker[2] == 21
    assert direct[3] == deferred[3] == {"MainThread"}
    assert worker[3] == {"aquin-monitor-host"}


def test_worker_starts_when_the_next_backward_begins():
    from aquin_monitor.monitor import HostWorker

    order, processed = [], []
    worker = HostWorker(lambda step, vector, sizes: processed.append((step, vector.tolist())))
    worker.submit(7, torch.tensor([1.0, 2.0]), _DoneEvent(), (0, 0))
    tap = ContrastiveTap(strict=True)
    tap.arm(lambda: (order.append("hook"), worker.start(7)))

    weight = torch.ones(3, requires_grad=True)
    scores = torch.outer(weight, weight)
    report_similarity(scores, tap=tap)  # arms a pre-hook on the node that made this matrix
    order.append("forward done")
    (scores * 2).sum().backward()
    order.append("backward done")
    worker.finish(7)
    worker.stop()
    assert order == ["forward done", "hook", "backward done"]
    assert processed == [(7, [1.0, 2.0])]
    assert tap._armed is None  # one-shot: the next report does not hook again


def test_a_failure_in_the_worker_surfaces_on_the_training_thread():
    from aquin_monitor.monitor import HostWorker

    def process(step, vector, sizes):
        raise OSError("disk full")

    worker = HostWorker(process)
    worker.submit(3, torch.zeros(1), _DoneEvent(), (0, 0))
    with pytest.raises(OSError, match="disk full"):
        worker.finish(3)  # no hook fired: finish starts the work itself
    worker.stop()


def test_attention_sample_spreads_over_the_probe():
    from aquin_monitor.snapshot_runner import attention_sample

    picked = attention_sample(1000, 32)
    assert len(picked) == 32 and picked[0] == 0 and picked[-1] == 999
    assert np.all(np.diff(picked) >= 31)  # evenly spaced: no cluster at the start of the file
    assert attention_sample(5, 0).size == 0
