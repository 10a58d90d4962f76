"""Weights & Biases sink, on the run the trainer opened (or one of its own), on its own x-axis.

How steps work, and why. W&B's internal ``_step`` must only grow, and a ``wandb.log(...,
step=n)`` with ``n`` below it is dropped. Neither Hugging Face's ``WandbCallback`` nor
Lightning's ``WandbLogger`` passes ``step=``: both log the trainer step as an ordinary metric
(``train/global_step`` / ``trainer/global_step``) and declare it the x-axis of every metric with
``define_metric("*", step_metric=..., step_sync=True)``. This sink does the same with its own
key, :data:`STEP_KEY` = ``aquin/step``: every call is ``run.log({..., "aquin/step": step})``,
never ``step=``, and each key it writes is declared once with
``define_metric(key, step_metric="aquin/step")``. An exact ``define_metric`` takes precedence over
the trainer's ``"*"`` glob, so our charts are plotted against our step and W&B does not stamp
the trainer's (possibly stale) step into our scalar rows; the trainer's own rows are untouched.
(Rows holding media -- histograms, images, tables -- are nested records whose sub-keys W&B
still matches against the trainer's glob, so they also carry the trainer's last step; they
are plotted against ``aquin/step`` all the same.)
``commit=False`` was rejected: it merges values into the trainer's next row, so with
``logging_steps=50`` only one step in fifty would survive.

Lightning: its ``WandbLogger`` logs a batch's metrics at ``trainer/global_step`` = the number of
optimizer steps *before* that batch's step (0 for the first batch), while the monitor counts the
step the batch made (1 for the first). :meth:`WandbSink.follow_lightning_logger` (called by
:func:`~aquin_monitor.sinks.lightning.sinks_for_lightning`) adds ``aquin/step`` = ``trainer/global_step + 1``
to every row that logger writes and declares ``aquin/step`` the x-axis of ``"*"``: one axis for
everything, on which a batch's Lightning loss and its ``contrastive/loss`` sit at the same step.

Hugging Face: its ``train/global_step`` after an optimizer step is the step the monitor counts for it,
so :func:`~aquin_monitor.sinks.hf.sinks_for_hf` makes a sink whose ``step_key`` *is*
``train/global_step``: every row of ours carries it, our keys are declared against it, and the
trainer's loss, its evaluator's ``eval/*`` and our metrics and images share one axis (an image row
carries its snapshot's step, not the last one the trainer logged).

Caveat: if your own code calls ``wandb.log(..., step=n)`` explicitly, our rows advance ``_step``
and W&B will drop yours; log your step as a metric instead (as HF and Lightning do).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aquin_monitor._optional import require
from aquin_monitor.sinks.base import BaseSink, check_step, event_text, finite_values, numeric_items, validate_event

#: The x-axis of everything this sink logs.
STEP_KEY = "aquin/step"
#: Key of the table that lists every alarm so far.
EVENTS_KEY = "events"
EVENT_COLUMNS = ["step", "kind", "layer", "message", "value", "text"]
DEFAULT_PROJECT = "aquin-monitor"


class WandbSink(BaseSink):
    """Write to Weights & Biases.

    The run is resolved at the first write, so a run the trainer opens later (HF's
    ``WandbCallback`` opens it in ``on_train_begin``) is still the one used: ``run`` if given,
    else the active ``wandb.run``, else a new ``wandb.init(project=..., mode=..., dir=...)``.
    ``project`` defaults to ``$WANDB_PROJECT`` or ``"aquin-monitor"``; ``mode=None`` leaves the
    choice to W&B, which honours ``WANDB_MODE`` (``"offline"`` needs no network or login). Only
    a run this sink opened is finished by :meth:`close`.

    Scalars go to history against ``step_key`` (default ``aquin/step``; ``train/global_step`` in a
    Hugging Face run: see the module docstring), histograms as
    ``wandb.Histogram`` of the finite values, alarms as ``alarm/<kind>`` = 1 plus a
    ``wandb.Table`` under ``events`` holding every alarm so far, figures as ``wandb.Image``
    (captioned with their step, in a row at that step), embeddings as a ``wandb.Table`` (columns
    ``text`` when texts are given, ``label``, ``embedding``) for W&B's 2-D projection panel,
    snapshot summaries as their numeric leaves.

    ``config`` (and later :meth:`update_config`) goes to the run's config once the run is known:
    the monitor's settings and the trainer's hyperparameters, so runs can be compared by them.

    Example::

        sink = WandbSink(project="my-project", mode="offline", config={"monitor/log_every": 1})
        sink.update_config({"trainer/learning_rate": 2e-5, "trainer/batch_size": 32})
        sink.log_scalars({"contrastive/gap": 0.4}, step=1)
        sink.close()
    """

    def __init__(
        self,
        run: Any = None,
        project: str | None = None,
        mode: str | None = None,
        dir: str | os.PathLike | None = None,
        config: Mapping[str, Any] | None = None,
        step_key: str = STEP_KEY,
    ) -> None:
        self._run = run
        self.step_key = step_key
        self._owns_run = False
        self.project = project
        self.mode = mode
        self.dir = dir
        self._defined: set[str] = set()
        self._event_rows: list[list[Any]] = []
        self._config: dict[str, Any] = dict(config or {})
        self._config_sent = False
        self._wandb = require("wandb", "Weights & Biases logging")

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Add ``values`` (monitor settings, trainer hyperparameters) to the run's config.

        Sent at once when the run is already known, else with the first write. Values that are
        not JSON-able are written as their ``str``. A later value for a key replaces the earlier one.
        """
        self._config.update({str(key): _config_value(value) for key, value in values.items()})
        self._config_sent = False
        if self._run is not None:
            self._send_config()

    def _send_config(self) -> None:
        if self._config and not self._config_sent:
            self._run.config.update(self._config, allow_val_change=True)
            self._config_sent = True

    def follow_lightning_logger(self, logger: Any) -> None:
        """Put a Lightning ``WandbLogger``'s rows on this sink's axis (see the module docstring).

        Wraps that logger object's ``log_metrics`` (this instance only) so each row it writes at
        ``step`` also carries ``aquin/step = step + 1``, and declares ``aquin/step`` the x-axis of
        every metric (``define_metric("*", ...)``, which replaces the logger's own ``"*"``).
        """
        original = logger.log_metrics
        if getattr(original, "_aquin_follows", False):
            return

        def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
            if step is not None:
                metrics = {**metrics, self.step_key: int(step) + 1}
            original(metrics, step)

        log_metrics._aquin_follows = True  # type: ignore[attr-defined]
        logger.log_metrics = log_metrics
        self._run = logger.experiment
        self._define_axis()
        self._run.define_metric("*", step_metric=self.step_key, step_sync=True)

    @property
    def run(self) -> Any:
        """The W&B run written to (opened on first use when there is none)."""
        if self._run is None:
            if self._wandb.run is not None:
                self._run = self._wandb.run
            else:
                kwargs: dict[str, Any] = {"project": self.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT}
                if self.mode is not None:
                    kwargs["mode"] = self.mode
                if self.dir is not None:
                    os.makedirs(self.dir, exist_ok=True)
                    kwargs["dir"] = os.fspath(self.dir)
                self._run = self._wandb.init(**kwargs)
                self._owns_run = True
            self._send_config()
        return self._run

    def _define_axis(self) -> None:
        if self.step_key not in self._defined:
            # our own axis is hidden from the charts; a trainer's (train/global_step) stays as it declared it
            if self.step_key == STEP_KEY:
                self.run.define_metric(self.step_key, hidden=True)
            else:
                self.run.define_metric(self.step_key)
            self._defined.add(self.step_key)

    def _log(self, row: Mapping[str, Any], step: int) -> None:
        run = self.run
        self._send_config()
        self._define_axis()
        for key in row:
            if key not in self._defined:
                run.define_metric(key, step_metric=self.step_key)
                self._defined.add(key)
        run.log({**row, self.step_key: step})

    def log_scalars(self, metrics: Mapping[str, float], step: int) -> None:
        if self.step_key in metrics:
            raise ValueError(f"metric name {self.step_key!r} is reserved for the sink's x-axis")
        self._log({key: float(value) for key, value in metrics.items()}, check_step(step))

    def log_histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        step = check_step(step)
        finite = finite_values(values)
        if finite.size:
            self._log({tag: self._wandb.Histogram(finite)}, step)

    def log_event(self, event: Mapping[str, Any]) -> None:
        validate_event(event)
        self._event_rows.append(
            [
                int(event["step"]),
                str(event["kind"]),
                None if event.get("layer") is None else str(event["layer"]),
                str(event.get("message") or ""),
                None if event.get("value") is None else float(event["value"]),
                event_text(event),
            ]
        )
        # Tables are immutable once logged: log one with every alarm so far (alarms are rare).
        table = self._wandb.Table(columns=EVENT_COLUMNS, data=[list(row) for row in self._event_rows])
        self._log({f"alarm/{event['kind']}": 1.0, EVENTS_KEY: table}, int(event["step"]))

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        step = check_step(step)
        self._log({tag: self._wandb.Image(png_image(figure), caption=f"step {step}")}, step)

    def log_embeddings(
        self,
        tag: str,
        embeddings: np.ndarray,
        labels: Sequence[str] | None,
        step: int,
        texts: Sequence[str] | None = None,
    ) -> None:
        matrix = np.asarray(embeddings, dtype=np.float64)
        if matrix.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D (n, d) array, got shape {matrix.shape}")
        if labels is None:
            labels = [str(i) for i in range(matrix.shape[0])]
        for name, column in (("labels", labels), ("texts", texts)):
            if column is not None and len(column) != matrix.shape[0]:
                raise ValueError(f"got {len(column)} {name} for {matrix.shape[0]} embeddings")
        rows = [[str(label), vector.tolist()] for label, vector in zip(labels, matrix)]
        columns = ["label", "embedding"]
        if texts is not None:
            rows = [[str(text), *row] for text, row in zip(texts, rows)]
            columns = ["text", *columns]
        table = self._wandb.Table(columns=columns, data=rows)
        self._log({tag: table}, check_step(step))

    def log_summary(self, metrics: Mapping[str, Any], step: int) -> None:
        scalars = numeric_items(metrics)
        if scalars:
            self.log_scalars(scalars, step)

    def flush(self) -> None:
        """Nothing to do: W&B streams every ``log`` to its own service process."""

    def close(self) -> None:
        if self._owns_run and self._run is not None:
            self._run.finish()
            self._run = None
            self._owns_run = False


def _config_value(value: Any) -> Any:
    """``value`` if W&B's config can hold it as it is (JSON-able scalars, lists, dicts), else ``str(value)``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _config_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_config_value(v) for v in value]
    return str(value)


def png_image(figure: Any) -> Any:
    """The figure drawn to PNG and decoded (a PIL image): wandb recognises matplotlib figures by their type's
    module name only, so our figures (``plots.PlainTextFigure``, drawn with LaTeX off) are rendered here."""
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    image = Image.open(buffer)
    image.load()
    return image
