"""TensorBoard sink: scalars, histograms, alarms as text, figures, projector, custom-scalars layout."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aquin_monitor._optional import require
from aquin_monitor.sinks.base import check_step, event_text, finite_values, numeric_items, validate_event

#: Text tag alarms are written under (TensorBoard shows it as ``events/text_summary``).
EVENTS_TAG = "events"

#: The custom-scalars layout written once when the sink starts. Chart tags are regular
#: expressions matched against scalar tags (TensorBoard's MultilineChartContent semantics).
CUSTOM_SCALARS_LAYOUT: dict[str, dict[str, list[Any]]] = {
    "aquin-monitor": {
        "contrastive": [
            "Multiline",
            [r"^contrastive/pos_sim$", r"^contrastive/neg_sim$", r"^contrastive/hard_neg_sim$", r"^contrastive/gap$"],
        ],
        "grad_norm": ["Multiline", [r"^grad_norm/layer\.\d+$"]],
        "alarms": ["Multiline", [r"^alarm/"]],
    }
}


class TensorBoardSink:
    """Write to TensorBoard through a ``torch.utils.tensorboard`` ``SummaryWriter``.

    Pass ``log_dir`` to open (and later close) a writer of our own, or ``writer`` to write
    through one the trainer already has (Lightning's ``TensorBoardLogger.experiment``, the HF
    ``TensorBoardCallback.tb_writer``); a borrowed writer is flushed, never closed.

    - scalars: one event per step holding every metric, as ``add_scalar`` would write each (NaN/inf kept:
      they are what an alarm is about);
    - histograms: ``add_histogram`` of the finite values (NaN/inf cannot be binned); an array
      with no finite value is skipped;
    - alarms: one Markdown line under text tag ``events`` plus scalar ``alarm/<kind>`` = 1;
    - figures: ``add_figure`` (the figure is left open: the caller owns it);
    - embeddings: ``add_embedding`` for the projector, labels as metadata;
    - summaries (snapshot records): their numbers only, as scalars, nested keys joined by ``/``.

    When it starts the sink writes :data:`CUSTOM_SCALARS_LAYOUT` (``add_custom_scalars``): one
    chart with pos/neg/hard-neg similarity and gap, one with every ``grad_norm/layer.NN``, one
    with all ``alarm/*``.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, writer: Any = None) -> None:
        if (log_dir is None) == (writer is None):
            raise ValueError("TensorBoardSink needs exactly one of log_dir= or writer=")
        if writer is None:
            tensorboard = require("torch.utils.tensorboard", "TensorBoard logging")
            writer = tensorboard.SummaryWriter(log_dir=os.fspath(log_dir))
            self._owns_writer = True
        else:
            self._owns_writer = False
        self.writer = writer
        self.writer.add_custom_scalars(CUSTOM_SCALARS_LAYOUT)

    def log_scalars(self, metrics: Mapping[str, float], step: int) -> None:
        step = check_step(step)
        file_writer = self._file_writer()
        if file_writer is None:  # not torch's SummaryWriter (e.g. tensorboardX): one call per scalar
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, float(value), global_step=step)
            return
        # one event holding every scalar of the step (what add_scalar writes per tag, simple_value):
        # one serialisation and one write per step instead of one per scalar
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in metrics.items()])
        file_writer.add_summary(summary, step)

    def _file_writer(self):
        """The event-file writer behind a torch ``SummaryWriter``; None for other writers."""
        getter = getattr(self.writer, "_get_file_writer", None)
        return getter() if getter is not None else None

    def log_histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        step = check_step(step)
        finite = finite_values(values)
        if finite.size:
            self.writer.add_histogram(tag, finite, global_step=step)

    def log_event(self, event: Mapping[str, Any]) -> None:
        validate_event(event)
        step = int(event["step"])
        self.writer.add_text(EVENTS_TAG, event_text(event), global_step=step)
        self.writer.add_scalar(f"alarm/{event['kind']}", 1.0, global_step=step)

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        self.writer.add_figure(tag, figure, global_step=check_step(step), close=False)

    def log_embeddings(
        self, tag: str, embeddings: np.ndarray, labels: Sequence[str] | None, step: int
    ) -> None:
        matrix = np.asarray(embeddings, dtype=np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D (n, d) array, got shape {matrix.shape}")
        metadata = None
        if labels is not None:
            if len(labels) != matrix.shape[0]:
                raise ValueError(f"got {len(labels)} labels for {matrix.shape[0]} embeddings")
            # metadata.tsv is one label per line: a tab or newline inside a label would shift rows.
            metadata = [" ".join(str(label).split()) for label in labels]
        self.writer.add_embedding(matrix, metadata=metadata, tag=tag, global_step=check_step(step))

    def log_summary(self, metrics: Mapping[str, Any], step: int) -> None:
        self.log_scalars(numeric_items(metrics), step)

    def rewind(self, step: int) -> None:
        """Make TensorBoard drop what was logged after ``step`` (a resumed run logs those steps again).

        Writes what ``SummaryWriter(purge_step=step + 1)`` writes: a session-start event at ``step + 1``,
        on which TensorBoard's reader discards every event of a later step read before it (older
        event files of the same folder are read first). A borrowed writer gets it too: the trainer
        that owns it replays the same steps.
        """
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        purge = check_step(step) + 1
        file_writer = self._file_writer() or self.writer.file_writer
        file_writer.add_event(Event(step=purge, file_version="brain.Event:2"))
        file_writer.add_event(Event(step=purge, session_log=SessionLog(status=SessionLog.START)))
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        if self._owns_writer:
            self.writer.close()
        else:
            self.writer.flush()
