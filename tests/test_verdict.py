"""The retrieval verdict (issue 25 point 3): the paired bootstrap against scipy and hand cases, the sentence, the
metrics it logs, the snapshots that carry it, the report's first line and the message at the end of a run."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from aquin_monitor import snapshot_keys as keys
from aquin_monitor.metric_registry import find_metric
from aquin_monitor.signals import comparison
from aquin_monitor.signals.comparison import bootstrap_mean_interval, paired_comparison
from aquin_monitor.snapshot_record import Snapshot
from aquin_monitor.verdict import (
    NO_PER_QUERY_SCORES,
    NO_RETRIEVAL_SET,
    NO_SNAPSHOTS,
    ONLY_ONE_SNAPSHOT,
    retrieval_verdict,
    run_verdict,
    verdict_records,
)


def _scores(n: int, seed: int, shift: float, moved: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-query NDCG-like scores: ``moved`` of the queries change by N(shift, 0.1), the rest stay."""
    rng = np.random.default_rng(seed)
    before = rng.uniform(size=n)
    change = rng.normal(shift, 0.1, size=n) * (rng.uniform(size=n) < moved)
    return before, np.clip(before + change, 0.0, 1.0)


@pytest.mark.parametrize(("n", "shift"), [(300, 0.02), (60, 0.0), (1000, -0.01)])
def test_interval_agrees_with_scipy_paired_percentile_bootstrap(n, shift):
    before, after = _scores(n, seed=n, shift=shift, moved=0.4)
    ours = paired_comparison(before, after, seed=1)
    reference = stats.bootstrap(
        (before, after),
        lambda x, y, axis: np.mean(y - x, axis=axis),
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=10_000,
        confidence_level=0.95,
        random_state=2,
    ).confidence_interval
    width = reference.high - reference.low
    # two independent Monte Carlo estimates of the same quantiles: a few % of the width apart
    assert ours.ci_low == pytest.approx(reference.low, abs=0.05 * width)
    assert ours.ci_high == pytest.approx(reference.high, abs=0.05 * width)
    # and both near the normal approximation mean ± 1.96 sd / √n of the differences
    d = after - before
    half = 1.96 * d.std() / np.sqrt(n)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), abs=0.1 * width)
    assert ours.delta == pytest.approx(after.mean() - before.mean(), abs=1e-12)
    assert (ours.mean_before, ours.mean_after) == pytest.approx((before.mean(), after.mean()))
    assert ours.better + ours.worse + ours.unchanged == n


def test_every_query_better_gives_an_interval_above_zero():
    before = np.linspace(0.1, 0.8, 50)
    after = before + np.linspace(0.01, 0.1, 50)
    c = paired_comparison(before, after)
    assert c.ci_low > 0 and c.direction == 1 and (c.better, c.worse, c.unchanged) == (50, 0, 0)
    # the bootstrap means lie between the smallest and the largest difference
    assert 0.01 <= c.ci_low < c.delta < c.ci_high <= 0.1
    worse = paired_comparison(after, before)
    assert worse.ci_high < 0 and worse.direction == -1 and (worse.better, worse.worse) == (0, 50)
    assert (worse.ci_low, worse.ci_high) == pytest.approx((-c.ci_high, -c.ci_low))  # same draws, mirrored


def test_no_change_is_no_detectable_change():
    same = paired_comparison([0.2, 0.5, 0.9], [0.2, 0.5, 0.9])
    assert (same.delta, same.ci_low, same.ci_high, same.direction) == (0.0, 0.0, 0.0, 0)
    assert same.unchanged == 3
    # one query up, one down by the same amount: the interval straddles 0
    mixed = paired_comparison([0.5] * 20, [0.6] * 10 + [0.4] * 10)
    assert mixed.ci_low < 0 < mixed.ci_high and mixed.direction == 0 and (mixed.better, mixed.worse) == (10, 10)


def test_two_query_interval_is_the_enumerated_bootstrap():
    """n = 2, d = (0, 1): a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5 % and
    97.5 % quantiles are exactly 0 and 1 (each end has probability 1/4 > 2.5 %)."""
    assert bootstrap_mean_interval(np.array([0.0, 1.0])) == (0.0, 1.0)
    assert bootstrap_mean_interval(np.array([0.0, 1.0]), confidence=0.4) == (0.5, 0.5)


def test_queries_without_a_score_are_left_out_and_nothing_scored_is_no_verdict():
    c = paired_comparison([0.2, np.nan, 0.4, 0.1], [0.3, 0.9, np.nan, 0.2])
    assert c.n == 2 and c.delta == pytest.approx(0.1) and c.better == 2
    empty = paired_comparison([np.nan], [np.nan])
    assert empty.n == 0 and np.isnan(empty.ci_low) and empty.direction == 0
    with pytest.raises(ValueError, match="same queries"):
        paired_comparison([0.1, 0.2], [0.1])


def test_resampling_in_blocks_draws_what_one_call_draws(monkeypatch):
    """Bounded memory: blocks of resamples give the interval of one ``rng.integers(0, n, (B, n))`` call."""
    d = np.random.default_rng(5).normal(0.01, 0.05, size=97)
    whole = bootstrap_mean_interval(d, n_resamples=1_001, seed=3)
    rng = np.random.default_rng(3)
    means = d[rng.integers(0, 97, size=(1_001, 97))].mean(axis=1)
    assert whole == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-15)
    monkeypatch.setattr(comparison, "_BOOTSTRAP_BLOCK_CELLS", 97 * 10)  # 10 resamples a block, the last one short
    assert bootstrap_mean_interval(d, n_resamples=1_001, seed=3) == pytest.approx(whole, abs=1e-15)


@pytest.mark.parametrize(
    ("before", "after", "opening"),
    [
        ([0.2, 0.4, 0.6, 0.3] * 10, [0.5, 0.6, 0.6, 0.6] * 10, "Retrieval got better from step 0 (base) to step 28: "),
        ([0.5, 0.6, 0.6, 0.6] * 10, [0.2, 0.4, 0.6, 0.3] * 10, "Retrieval got worse from step 0 (base) to step 28: "),
        ([0.5, 0.5] * 10, [0.6, 0.4] * 10, "No detectable change in retrieval from step 0 (base) to step 28: "),
    ],
)
def test_sentence_says_the_direction_the_numbers_and_the_counts(before, after, opening):
    base = SimpleNamespace(step=0, arrays={keys.QUERY_NDCG: np.array(before)})
    last = SimpleNamespace(step=28, arrays={keys.QUERY_NDCG: np.array(after)})
    verdict = retrieval_verdict(base, last)
    assert verdict is not None
    c = verdict.comparison
    sentence = verdict.sentence
    assert sentence.startswith(opening) and sentence.endswith(" unchanged.") and ". " not in sentence  # one sentence
    assert f"NDCG@10 {np.mean(before):.4f} → {np.mean(after):.4f}" in sentence

    def signed(value: float) -> str:  # 4 decimals, a sign, a true minus; a rounded 0 unsigned
        return "0.0000" if abs(value) < 5e-5 else f"{value:+.4f}".replace("-", "−")

    assert f"({signed(c.delta)}, 95 % CI {signed(c.ci_low)} … {signed(c.ci_high)}, paired bootstrap over" in sentence
    assert f"{c.better} queries better, {c.worse} worse, {c.unchanged} unchanged" in sentence
    metrics = verdict.as_metrics()
    assert metrics["verdict/direction"] == c.direction and metrics["verdict/queries_worse"] == c.worse
    assert all(find_metric(name) is not None for name in metrics)  # declared in the registry (and docs/metrics.md)
    assert json.loads(json.dumps(verdict.as_record()))["sentence"] == sentence


def test_snapshots_without_per_query_scores_or_on_other_queries_give_no_verdict():
    base = SimpleNamespace(step=0, arrays={keys.QUERY_NDCG: np.ones(4)})
    assert retrieval_verdict(base, SimpleNamespace(step=5, arrays={})) is None
    assert retrieval_verdict(base, SimpleNamespace(step=5, arrays={keys.QUERY_NDCG: np.ones(5)})) is None


def _snapshot(step: int, scores: list[float] | None, tag: str = "checkpoint") -> Snapshot:
    arrays = {} if scores is None else {keys.QUERY_NDCG: np.asarray(scores, dtype=np.float64)}
    metrics = {} if scores is None else {"retrieval/ndcg@10": float(np.mean(scores))}
    return Snapshot(step=step, tag=tag, model="m", metrics=metrics, arrays=arrays)


def test_verdict_records_against_base_and_previous_and_the_run_sentence():
    base, middle, last = _snapshot(0, [0.2] * 30, "base"), _snapshot(10, [0.4] * 30), _snapshot(20, [0.3] * 30)
    metrics, records = verdict_records(last, base, middle)
    assert set(records) == {"base", "previous"}
    assert metrics["verdict/ndcg@10_delta"] == pytest.approx(0.1)
    assert metrics["verdict/previous/ndcg@10_delta"] == pytest.approx(-0.1)
    assert metrics["verdict/direction"] == 1 and metrics["verdict/previous/direction"] == -1
    assert records["previous"]["sentence"].startswith("Retrieval got worse from step 10 to step 20")
    # against the base only when the previous snapshot is the base
    assert set(verdict_records(middle, base, base)[1]) == {"base"}
    last.details[keys.VERDICT] = records
    assert run_verdict([base, middle, last]) == (records["base"]["sentence"], 1)


def test_run_without_a_verdict_says_why_and_how_to_get_one():
    assert run_verdict([])[0] == NO_SNAPSHOTS
    geometry_only = [_snapshot(0, None, "base"), _snapshot(10, None)]
    sentence, direction = run_verdict(geometry_only)
    assert sentence == NO_RETRIEVAL_SET and direction is None
    assert 'retrieval=read_pairs("pairs.jsonl")' in sentence and "Bring your own eval pairs" in sentence
    assert run_verdict([_snapshot(0, [0.5], "base")])[0] == ONLY_ONE_SNAPSHOT
    old = [_snapshot(0, [0.5], "base"), _snapshot(10, [0.6])]  # retrieval metrics, no verdict recorded
    assert run_verdict(old)[0] == NO_PER_QUERY_SCORES


def test_report_opens_with_the_verdict(tmp_path):
    """The first thing in report.html's body is the verdict, before the contents and the header."""
    from aquin_monitor.report import render_report

    base, last = _snapshot(0, [0.2, 0.3, 0.5] * 20, "base"), _snapshot(10, [0.4, 0.3, 0.6] * 20)
    last.details[keys.VERDICT] = verdict_records(last, base, base)[1]
    for snap in (base, last):
        snap.arrays[keys.EMBEDDINGS] = np.eye(3, dtype=np.float32)
        snap.save(tmp_path)
    page = render_report(tmp_path)
    body = page[page.index("<body>") + len("<body>") :]
    first = re.match(r'<div id="verdict" class="verdict better"><p>([^<]*)</p></div>', body)
    assert first is not None, body[:300]
    assert first.group(1) == last.details[keys.VERDICT]["base"]["sentence"].replace("&", "&amp;")
    assert first.group(1).startswith("Retrieval got better from step 0 (base) to step 10: NDCG@10 0.3333 → 0.4333")
    assert "40 queries better, 0 worse, 20 unchanged." in first.group(1)


def test_report_without_retrieval_says_how_to_give_it(tmp_path):
    from aquin_monitor.report import render_report

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "contrastive/loss": 2.0}\n', encoding="utf-8")
    body = render_report(tmp_path).split("<body>", 1)[1]
    assert body.startswith('<div id="verdict" class="verdict none"><p>No retrieval verdict: this run took no snapshots')
    snap = _snapshot(0, None, "base")
    snap.arrays[keys.EMBEDDINGS] = np.eye(3, dtype=np.float32)
    snap.save(tmp_path)
    body = render_report(tmp_path).split("<body>", 1)[1]
    assert body.startswith('<div id="verdict" class="verdict none"><p>No retrieval verdict: this run has no retrieval')
    assert "read_pairs(&quot;pairs.jsonl&quot;)" in body.split("</div>", 1)[0]


def test_monitor_prints_the_verdict_once_at_the_end(capsys, tmp_path):
    """StepMonitor.end prints one line on the writing rank: the recorded verdict, or why there is none."""
    from aquin_monitor.monitor import StepMonitor
    from aquin_monitor.sinks.jsonl import JsonlSink
    from aquin_monitor.snapshot_runner import SnapshotSchedule

    runner = SimpleNamespace(base=None, previous=None)
    monitor = StepMonitor([JsonlSink(tmp_path)], snapshots=SnapshotSchedule(runner), run_dir=str(tmp_path))
    monitor.end(None, 0)
    assert capsys.readouterr().out.splitlines() == [f"aquin-monitor: {NO_SNAPSHOTS}"]
    base, last = _snapshot(0, [0.5] * 10, "base"), _snapshot(5, [0.2] * 10)
    last.details[keys.VERDICT] = verdict_records(last, base, base)[1]
    runner.base, runner.previous = base, last
    assert monitor.say_verdict() == last.details[keys.VERDICT]["base"]["sentence"]
    assert capsys.readouterr().out.startswith("aquin-monitor: Retrieval got worse from step 0 (base) to step 5")
    quiet = StepMonitor([], snapshots=SnapshotSchedule(runner))  # a rank that does not write says nothing
    quiet.end(None, 0)
    assert capsys.readouterr().out == ""


def test_runner_keeps_per_query_ndcg_and_records_the_verdict(tiny_mean_model, tmp_path):
    """A snapshot's ``query_ndcg@10`` is each query's NDCG@10 (one relevant document each: 1 / log2(1 + rank)),
    their mean is ``retrieval/ndcg@10``, and the next snapshot records the verdict from those arrays."""
    import torch
    from sentence_transformers import SentenceTransformer

    from aquin_monitor.data import ProbeSet, RetrievalSet
    from aquin_monitor.encoders import load_model
    from aquin_monitor.snapshot_runner import SnapshotRunner

    queries = {f"q{i}": f"what is topic number {i} about" for i in range(8)}
    docs = {f"d{i}": f"topic number {i} is about the thing {i}" for i in range(16)}
    retrieval = RetrievalSet(queries, docs, {f"q{i}": {f"d{i}": 1} for i in range(8)}, None, {}, "test")
    runner = SnapshotRunner(ProbeSet.from_retrieval(retrieval), retrieval, umap=False, seed=3)
    model = load_model(tiny_mean_model)
    base = runner.take(model, 0, tag="base", run_dir=tmp_path)
    emb = SentenceTransformer(tiny_mean_model, device="cpu").encode(list(queries.values()) + list(docs.values()))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores = unit[:8] @ unit[8:].T
    ranks = np.array([1 + np.sum(scores[i] > scores[i, i] + 1e-6) for i in range(8)])
    expected = np.where(ranks <= 10, 1 / np.log2(1 + ranks), 0.0)
    np.testing.assert_allclose(base.arrays[keys.QUERY_NDCG], expected, atol=1e-9)
    assert base.metrics["retrieval/ndcg@10"] == pytest.approx(base.arrays[keys.QUERY_NDCG].mean())
    assert keys.VERDICT not in base.details  # nothing to compare the base with
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter, generator=torch.Generator().manual_seed(0)))
    moved = runner.take(model, 7, run_dir=tmp_path)
    record = Snapshot.load(tmp_path / "snapshots" / "7").details[keys.VERDICT]["base"]
    reference = paired_comparison(base.arrays[keys.QUERY_NDCG], moved.arrays[keys.QUERY_NDCG], seed=3)
    assert (record["delta"], record["ci_low"], record["ci_high"]) == pytest.approx(
        (reference.delta, reference.ci_low, reference.ci_high)
    )
    assert moved.metrics["verdict/ndcg@10_delta"] == pytest.approx(
        moved.metrics["retrieval/ndcg@10"] - base.metrics["retrieval/ndcg@10"]
    )
    assert record["better"] + record["worse"] + record["unchanged"] == 8 and record["unchanged"] < 8  # it moved
    assert record["sentence"].split(" from ")[1].startswith("step 0 (base) to step 7:")


@pytest.mark.parametrize(
    "recorded",
    [
        {"base": {"sentence": "<script>alert(1)</script> $$ got better", "direction": "1"}},
        {"base": 5, "previous": {"sentence": "<b>x</b>"}},
        "not a mapping",
    ],
)
def test_report_escapes_or_skips_a_hostile_verdict_record(tmp_path, recorded):
    """A hand-edited or broken ``details["verdict"]`` is escaped (text) or left out (wrong types): the page still
    opens with one verdict line and carries no markup from the record."""
    from aquin_monitor.report import render_report

    base, last = _snapshot(0, [0.2] * 5, "base"), _snapshot(10, [0.3] * 5)
    last.details[keys.VERDICT] = recorded
    for snap in (base, last):
        snap.arrays[keys.EMBEDDINGS] = np.eye(3, dtype=np.float32)
        snap.save(tmp_path)
    body = render_report(tmp_path).split("<body>", 1)[1]
    line = body[: body.index("</div>")]
    assert line.startswith('<div id="verdict" class="verdict none"><p>')
    assert "<script>" not in body and "<b>x</b>" not in body
    if isinstance(recorded, dict) and isinstance(recorded["base"], dict):
        assert "&lt;script&gt;alert(1)&lt;/script&gt; $$ got better" in line
    else:
        assert NO_PER_QUERY_SCORES in line  # retrieval metrics but no usable record
