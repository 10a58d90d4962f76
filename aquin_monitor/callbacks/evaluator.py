"""A :class:`~aquin_monitor.snapshot_runner.SnapshotRunner` serving as a sentence-transformers evaluator.

sentence-transformers users read evaluator results: the ``SentenceTransformerTrainer`` calls its
``evaluator`` at every ``eval_strategy`` point and logs what it returns (prefixed ``eval_``) to
``report_to`` and ``trainer.state.log_history``. :class:`SnapshotEvaluator` takes a snapshot there and
returns its metrics, so ``eval_geometry/anisotropy``, ``eval_retrieval/ndcg@10``, ``eval_drift/base/cka``
and the rest appear beside the trainer's own evaluation.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

try:  # sentence-transformers >= 6 (the old name is a deprecated alias there)
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator as _Evaluator
except ImportError:  # pragma: no cover - sentence-transformers < 6
    from sentence_transformers.evaluation import SentenceEvaluator as _Evaluator  # type: ignore[no-redef]

from ..metric_registry import higher_is_better

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..sinks.base import Sink
    from ..snapshot_runner import SnapshotRunner

__all__ = ["SnapshotEvaluator"]


class SnapshotEvaluator(_Evaluator):
    """Take a snapshot at each evaluation and return its metrics (a sentence-transformers evaluator).

    Built around a :class:`~aquin_monitor.snapshot_runner.SnapshotRunner`. Each call snapshots the model at the
    trainer's ``global_step`` (``steps``; 0 outside training), diffs it against the runner's first and previous
    snapshots, saves it under ``<run_dir>/snapshots/<step>/`` when ``run_dir`` is given (so the report
    and ``aquin-monitor diff`` read it like a monitor's snapshot) and logs it to ``sinks``. It returns
    every finite or NaN number of the snapshot under its metric name.

    ``primary_metric`` (what ``metric_for_best_model="eval_<primary_metric>"`` selects on) defaults to
    ``retrieval/ndcg@10`` when the runner has a retrieval set, else ``geometry/anisotropy``; whether greater
    is better comes from :func:`aquin_monitor.metric_registry.higher_is_better` (ndcg: greater; anisotropy:
    lower, a less anisotropic space spreads its texts further apart).

    Args:
        runner: the snapshot runner (probe set, optional retrieval set).
        run_dir: where snapshots are saved; None: not saved.
        sinks: where each snapshot is also logged (e.g. a :class:`~aquin_monitor.sinks.JsonlSink`).
        primary_metric: the metric name returned as primary; None: as above.
        greater_is_better: for ``primary_metric``; None: from the metric registry (True where it declares
            no direction).
        strict: re-raise a failing snapshot instead of warning and returning no metrics.

    Example::

        from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
        from aquin_monitor import SnapshotEvaluator, SnapshotRunner, read_probe

        evaluator = SnapshotEvaluator(SnapshotRunner(read_probe("probe.jsonl"), umap=False), run_dir="runs/x")
        args = SentenceTransformerTrainingArguments("runs/x", eval_strategy="steps", eval_steps=50)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss, evaluator=evaluator)
        trainer.train()   # trainer.state.log_history holds eval_geometry/anisotropy, ...
    """

    def __init__(
        self,
        runner: SnapshotRunner,
        run_dir: str | os.PathLike | None = None,
        *,
        sinks: Sequence[Sink] = (),
        primary_metric: str | None = None,
        greater_is_better: bool | None = None,
        strict: bool = False,
    ):
        super().__init__()
        self.runner = runner
        self.run_dir = run_dir
        self.sinks = list(sinks)
        self.strict = strict
        if primary_metric is None:
            primary_metric = "retrieval/ndcg@10" if runner.retrieval is not None else "geometry/anisotropy"
        if greater_is_better is None:
            greater_is_better = higher_is_better(primary_metric) is not False
        self.primary_metric = primary_metric
        self.greater_is_better = greater_is_better

    def __call__(self, model, output_path: str | None = None, epoch: float = -1, steps: int = -1) -> dict[str, float]:
        """Snapshot ``model`` at step ``steps`` and return ``{metric name: value}`` (empty if the snapshot failed).

        Args:
            model: the SentenceTransformer being trained (left in the training mode it was in).
            output_path: the trainer's evaluation folder (not used: snapshots go to ``run_dir``).
            epoch: the trainer's epoch (not used).
            steps: the trainer's global step; negative outside training, then 0.

        Returns:
            The snapshot's numeric metrics, by metric name.
        """
        step = max(int(steps), 0)
        snap = self.runner.record(model, step, tag="eval", run_dir=self.run_dir, sinks=self.sinks, strict=self.strict)
        if snap is None:
            return {}
        return {
            k: float(v)
            for k, v in snap.metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isinf(v)
        }

    def get_config_dict(self) -> dict[str, object]:
        """What the model card records of this evaluator."""
        return {"probe_texts": len(self.runner.probe.texts), "retrieval": self.runner.retrieval is not None}
