"""TensorBoard sink: scalars, histograms, alarms as text, figures, projector, custom-scalars layout."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from aquin_monitor._optional import require
from aquin_monitor.sinks.base import BaseSink, check_step, event_text, finite_values, numeric_items, validate_event

#: Text tag alarms are written under (TensorBoard shows it as ``events/text_summary``).
EVENTS_TAG = "events"

#: Custom-scalars charts, one per family of tags: (chart title, regular expression a tag of the
#: family matches). A chart lists the tags actually logged (exact ``^tag$`` patterns), so one that
#: would stay empty is never drawn; the first matching family wins.
CHART_FAMILIES: tuple[tuple[str, str], ...] = (
    ("gradient norm per layer", r"^grad_norm/(embeddings|layer\.\d+|pooler|head)$"),
    ("gradient norm lora_A", r"^grad_norm/.+/lora_A$"),
    ("gradient norm lora_B", r"^grad_norm/.+/lora_B$"),
    ("gradient norm total", r"^grad_norm/total$"),
    ("contrastive similarity: positive, negative, gap", r"^contrastive/(pos_sim|neg_sim|hard_neg_sim|gap)$"),
    ("hardest negative similarity", r"^contrastive/hardest_neg_sim$"),
    ("in-batch accuracy", r"^contrastive/in_batch_acc$"),
    ("contrastive loss", r"^contrastive/loss$"),
    ("learning rate", r"^optim/lr(/group\.\d+)?$"),
    ("alarms", r"^alarm/"),
)
#: Category (section) the charts are shown under on the custom-scalars page.
LAYOUT_CATEGORY = "aquin-monitor"


def custom_scalars_layout(tags: Iterable[str]) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout (``SummaryWriter.add_custom_scalars`` form) for the scalar ``tags`` logged.

    One chart per family of :data:`CHART_FAMILIES` that has a tag, listing its tags in sorted order.

    >>> layout = custom_scalars_layout(["grad_norm/layer.01/lora_A", "grad_norm/layer.00/lora_A", "optim/lr", "loss"])
    >>> for title, (kind, patterns) in layout["aquin-monitor"].items():
    ...     print(title, kind, *patterns)
    gradient norm lora_A Multiline ^grad_norm/layer\\.00/lora_A$ ^grad_norm/layer\\.01/lora_A$
    learning rate Multiline ^optim/lr$
    """
    members: dict[str, list[str]] = {}
    for tag in sorted(set(tags)):
        family = next((title for title, pattern in CHART_FAMILIES if re.search(pattern, tag)), None)
        if family is not None:
            members.setdefault(family, []).append(tag)
    charts = {
        title: ["Multiline", [f"^{re.escape(tag)}$" for tag in members[title]]]
        for title, _ in CHART_FAMILIES
        if title in members
    }
    return {LAYOUT_CATEGORY: charts} if charts else {}


class TensorBoardSink(BaseSink):
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
    - embeddings: ``add_embedding`` for the projector, with metadata columns ``text`` and ``label``
      when texts are given (``label`` alone otherwise);
    - summaries (snapshot records): their numbers only, as scalars, nested keys joined by ``/``.

    The custom-scalars page gets one chart per family of tags (:data:`CHART_FAMILIES`: per-layer
    gradient norms, lora_A, lora_B, total, contrastive pos/neg/gap, hardest negative, in-batch
    accuracy, loss, learning rate, alarms), built from the tags actually logged: the layout is
    written again (``add_custom_scalars``, at the step it changed) whenever a tag of a new family
    or a new tag of a family appears, and TensorBoard shows the latest one.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, writer: Any = None) -> None:
        if (log_dir is None) == (writer is None):
            raise ValueError("TensorBoardSink needs exactly one of log_dir= or writer=")
        if writer is None:
            tensorboard = require("torch.utils.tensorboard", "TensorBoard logging")
            assert log_dir is not None  # exactly one of log_dir and writer: checked above
            writer = tensorboard.SummaryWriter(log_dir=os.fspath(log_dir))
            self._owns_writer = True
        else:
            self._owns_writer = False
        self.writer = writer
        self._tags: set[str] = set()  # scalar tags logged so far that belong to a chart

    def _note_tags(self, tags: Iterable[str], step: int) -> None:
        """Write the custom-scalars layout again when ``tags`` add a tag to one of its charts."""
        new = [tag for tag in tags if tag not in self._tags]
        if not new:
            return
        charted = [tag for tag in new if any(re.search(pattern, tag) for _, pattern in CHART_FAMILIES)]
        self._tags.update(new)  # unmatched tags too: each is checked once
        if charted:
            from torch.utils.tensorboard.summary import custom_scalars

            layout = custom_scalars_layout(
                tag for tag in self._tags if any(re.search(p, tag) for _, p in CHART_FAMILIES)
            )
            file_writer = self._file_writer()
            if file_writer is not None:
                file_writer.add_summary(custom_scalars(layout), step)
            else:
                self.writer.add_custom_scalars(layout)

    def log_scalars(self, metrics: Mapping[str, float], step: int) -> None:
        step = check_step(step)
        self._note_tags(metrics, step)
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
        self._note_tags([f"alarm/{event['kind']}"], step)
        self.writer.add_scalar(f"alarm/{event['kind']}", 1.0, global_step=step)

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        self.writer.add_figure(tag, figure, global_step=check_step(step), close=False)

    def log_embeddings(
        self,
        tag: str,
        embeddings: np.ndarray,
        labels: Sequence[str] | None,
        step: int,
        texts: Sequence[str] | None = None,
    ) -> None:
        matrix = np.asarray(embeddings, dtype=np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D (n, d) array, got shape {matrix.shape}")
        for name, column in (("labels", labels), ("texts", texts)):
            if column is not None and len(column) != matrix.shape[0]:
                raise ValueError(f"got {len(column)} {name} for {matrix.shape[0]} embeddings")
        header: list[str] | None = None
        metadata: list[list[str]] | list[str] | None = None
        if texts is not None and labels is not None:  # two columns need a header row (the projector's rule)
            header = ["text", "label"]
            metadata = [[_cell(text), _cell(label)] for text, label in zip(texts, labels)]
        elif texts is not None or labels is not None:  # one column: no header
            metadata = [_cell(value) for value in (texts if texts is not None else labels or ())]
        self.writer.add_embedding(
            matrix, metadata=metadata, metadata_header=header, tag=tag, global_step=check_step(step)
        )

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


def _cell(value: Any) -> str:
    """One metadata.tsv cell: a tab or newline inside it would shift rows or columns."""
    return " ".join(str(value).split())
