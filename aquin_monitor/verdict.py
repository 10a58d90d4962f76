"""The retrieval verdict of a run: did retrieval get better, in one sentence, with its uncertainty.

A snapshot taken with a retrieval set keeps each query's NDCG@10 (``query_ndcg@10`` in
``arrays.npz``). The verdict pairs those scores, query by query, between two snapshots of the same
run (the base model and the latest checkpoint; the previous checkpoint and the latest) through
:func:`aquin_monitor.signals.comparison.paired_comparison`: the mean change, its 95 % paired
bootstrap interval over queries, and how many queries got better, worse or stayed the same. The rule
is the interval's sign: "got better" when it lies above 0, "got worse" below 0, "no detectable
change" when it holds 0.

Why NDCG@10: it is the headline of BEIR and MTEB retrieval (so the figure compares with published
ones), it reads graded relevance and every relevant document in the top 10 with a position discount,
where MRR looks only at the first relevant document and recall@10 ignores the order within the top 10;
and it lies in [0, 1] per query, so the mean of the per-query changes is the change of the mean.

The verdict is computed once, when the later snapshot is taken
(:meth:`aquin_monitor.snapshot_runner.SnapshotRunner.attach_diffs`): its numbers go to the dashboards
as ``verdict/...`` (``verdict/previous/...`` against the previous snapshot) and its record, sentence
included, into ``snapshot.json`` (``details["verdict"]``), which the report's first line, the
message at the end of training and ``aquin-monitor diff`` read.

>>> import numpy as np
>>> from types import SimpleNamespace
>>> base = SimpleNamespace(step=0, arrays={"query_ndcg@10": np.array([0.2, 0.5, 0.9, 0.4])})
>>> last = SimpleNamespace(step=28, arrays={"query_ndcg@10": np.array([0.6, 0.7, 0.9, 0.8])})
>>> print(retrieval_verdict(base, last).sentence)  # doctest: +NORMALIZE_WHITESPACE
Retrieval got better from step 0 (base) to step 28: NDCG@10 0.5000 → 0.7500 (+0.2500, 95 % CI +0.1000 … +0.4000,
paired bootstrap over 4 queries); 3 queries better, 0 worse, 1 unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import snapshot_keys as keys
from .signals.comparison import PairedComparison, paired_comparison

__all__ = [
    "HEADLINE",
    "RetrievalVerdict",
    "retrieval_verdict",
    "verdict_records",
    "run_verdict",
    "NO_SNAPSHOTS",
    "NO_RETRIEVAL_SET",
    "ONLY_ONE_SNAPSHOT",
    "NO_PER_QUERY_SCORES",
]

#: The per-query metric the verdict pairs, as the sentence names it.
HEADLINE = "NDCG@10"
#: Bootstrap settings of every verdict.
CONFIDENCE = 0.95
N_RESAMPLES = 10_000

_HOW_TO = (
    'give the snapshots your own query/document pairs: SnapshotRunner(probe, retrieval=read_pairs("pairs.jsonl")) '
    "(README: Bring your own eval pairs)"
)
NO_SNAPSHOTS = f"No retrieval verdict: this run took no snapshots; {_HOW_TO} and pass it as snapshots= to the callback."
NO_RETRIEVAL_SET = (
    f"No retrieval verdict: this run has no retrieval set, so nothing measured whether retrieval got better; {_HOW_TO}."
)
ONLY_ONE_SNAPSHOT = (
    "No retrieval verdict yet: only one snapshot was taken; the verdict compares the last snapshot with the base."
)
NO_PER_QUERY_SCORES = (
    "No retrieval verdict: the snapshots hold retrieval metrics but no per-query NDCG@10 to pair "
    "(taken by an earlier aquin-monitor, or on different queries)."
)


class SnapshotLike(Protocol):
    """What the verdict reads from a snapshot: a :class:`~aquin_monitor.snapshot_record.Snapshot` or a view."""

    @property
    def step(self) -> int | None: ...

    @property
    def arrays(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class RetrievalVerdict:
    """One verdict: ``comparison`` of the per-query NDCG@10 from ``step_before`` to ``step_after``;
    ``against`` names the earlier snapshot (``"base"`` or ``"previous"``)."""

    against: str
    step_before: int | None
    step_after: int | None
    comparison: PairedComparison
    names: tuple[str, str] | None = None  # what the sentence calls the two sides instead of their steps

    @property
    def where(self) -> str:
        """``from step 0 (base) to step 28``, or ``from A to B`` with ``names``."""
        if self.names is not None:
            return f"from {self.names[0]} to {self.names[1]}"
        return f"from step {self.step_before}{' (base)' if self.against == 'base' else ''} to step {self.step_after}"

    @property
    def sentence(self) -> str:
        """One sentence: the direction, the means, the change with its interval, the query counts."""
        c = self.comparison
        where = self.where
        opening = {
            1: f"Retrieval got better {where}",
            -1: f"Retrieval got worse {where}",
            0: f"No detectable change in retrieval {where}",
        }[c.direction]
        if c.n == 0:
            return f"{opening}: no query was scored in both snapshots."
        level = f"{100 * c.confidence:g} %"
        return (
            f"{opening}: {HEADLINE} {c.mean_before:.4f} → {c.mean_after:.4f} ({_signed(c.delta)}, {level} CI "
            f"{_signed(c.ci_low)} … {_signed(c.ci_high)}, paired bootstrap over {c.n:,} queries); "
            f"{c.better:,} {'query' if c.better == 1 else 'queries'} better, {c.worse:,} worse, "
            f"{c.unchanged:,} unchanged."
        )

    def as_metrics(self) -> dict[str, float]:
        """``verdict/<name>`` against the base, ``verdict/previous/<name>`` against the previous snapshot.

        ``direction`` is +1 (better), −1 (worse) or 0 (no detectable change)."""
        prefix = "verdict/" if self.against == "base" else f"verdict/{self.against}/"
        c = self.comparison
        values = {
            "ndcg@10_delta": c.delta,
            "ci_low": c.ci_low,
            "ci_high": c.ci_high,
            "queries_better": float(c.better),
            "queries_worse": float(c.worse),
            "queries_unchanged": float(c.unchanged),
            "direction": float(c.direction),
        }
        return {prefix + name: value for name, value in values.items()}

    def as_record(self) -> dict[str, Any]:
        """The JSON record kept in ``snapshot.json`` (``details["verdict"][against]``); NaN becomes None."""
        c = self.comparison
        numbers = {
            "metric": HEADLINE,
            "step_before": self.step_before,
            "step_after": self.step_after,
            "queries": c.n,
            "before": c.mean_before,
            "after": c.mean_after,
            "delta": c.delta,
            "ci_low": c.ci_low,
            "ci_high": c.ci_high,
            "confidence": c.confidence,
            "resamples": c.n_resamples,
            "better": c.better,
            "worse": c.worse,
            "unchanged": c.unchanged,
            "direction": c.direction,
        }
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in numbers.items()}
        return {"sentence": self.sentence, **clean}


def _signed(value: float) -> str:
    """``+0.0330`` / ``−0.0120`` (a true minus sign) / ``0.0000``.

    >>> _signed(0.033), _signed(-0.012), _signed(0.0)
    ('+0.0330', '−0.0120', '0.0000')
    """
    text = f"{value:+.4f}"
    if text in ("+0.0000", "-0.0000"):
        return "0.0000"
    return text.replace("-", "−")


def retrieval_verdict(
    before: SnapshotLike,
    after: SnapshotLike,
    *,
    against: str = "base",
    seed: int = 0,
    names: tuple[str, str] | None = None,
) -> RetrievalVerdict | None:
    """The verdict from ``before`` to ``after``; None when either lacks per-query NDCG@10 or they
    scored different numbers of queries (other queries cannot be paired). ``names``: how the sentence
    calls the two sides (``aquin-monitor diff``: the two models) instead of their steps."""
    x, y = before.arrays.get(keys.QUERY_NDCG), after.arrays.get(keys.QUERY_NDCG)
    if x is None or y is None or len(x) != len(y):
        return None
    comparison = paired_comparison(x, y, confidence=CONFIDENCE, n_resamples=N_RESAMPLES, seed=seed)
    return RetrievalVerdict(against, before.step, after.step, comparison, names)


def verdict_records(
    snap: SnapshotLike, base: SnapshotLike | None, previous: SnapshotLike | None, *, seed: int = 0
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """``(metrics, records)`` of ``snap`` against ``base`` and against ``previous`` (when it is another
    snapshot than the base): what a snapshot logs and keeps under ``details["verdict"]``."""
    metrics: dict[str, float] = {}
    records: dict[str, dict[str, Any]] = {}
    for against, earlier in (("base", base), ("previous", previous if previous is not base else None)):
        if earlier is None or earlier is snap:
            continue
        verdict = retrieval_verdict(earlier, snap, against=against, seed=seed)
        if verdict is not None:
            metrics.update(verdict.as_metrics())
            records[against] = verdict.as_record()
    return metrics, records


class RecordedSnapshot(Protocol):
    """What :func:`run_verdict` reads: a snapshot's metrics and details (a Snapshot or a report's view)."""

    @property
    def metrics(self) -> Mapping[str, Any]: ...

    @property
    def details(self) -> Mapping[str, Any]: ...


def run_verdict(snapshots: Sequence[RecordedSnapshot]) -> tuple[str, int | None]:
    """``(sentence, direction)`` of a run whose snapshots are ``snapshots`` in step order: the verdict
    against the base recorded by the last snapshot that has one, else the sentence saying why there is
    none and how to get one (direction None).

    >>> run_verdict([])[0] == NO_SNAPSHOTS
    True
    """
    for snapshot in reversed(snapshots):
        verdicts = snapshot.details.get(keys.VERDICT)
        record = verdicts.get("base") if isinstance(verdicts, Mapping) else None  # a hand-edited file: anything
        if isinstance(record, Mapping) and isinstance(record.get("sentence"), str):
            direction = record.get("direction")
            return record["sentence"], direction if isinstance(direction, int) else None
    if not snapshots:
        return NO_SNAPSHOTS, None
    if not any(name.startswith("retrieval/") for snapshot in snapshots for name in snapshot.metrics):
        return NO_RETRIEVAL_SET, None
    if len(snapshots) < 2:
        return ONLY_ONE_SNAPSHOT, None
    return NO_PER_QUERY_SCORES, None
