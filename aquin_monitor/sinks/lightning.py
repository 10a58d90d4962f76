"""Map a Lightning trainer's loggers to sinks, so monitor output lands where the user already looks."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from aquin_monitor._optional import require
from aquin_monitor.sinks.base import BaseSink, Sink, check_step, numeric_items, validate_event


class LightningLoggerSink(BaseSink):
    """Write scalars through any Lightning logger's ``log_metrics(metrics, step)`` (CSVLogger, MLFlow, ...).

    Alarms become the scalar ``alarm/<kind>`` = 1 and snapshot records their numeric leaves;
    histograms, figures and embeddings have no place in a generic logger and are ignored
    (the JSONL sink keeps them). :meth:`flush` calls ``logger.save()``; :meth:`close` only
    saves, since the trainer finalizes its own loggers.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def log_scalars(self, metrics: Mapping[str, float], step: int) -> None:
        self.logger.log_metrics({key: float(value) for key, value in metrics.items()}, check_step(step))

    def log_histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        """Not representable in a generic logger: ignored."""

    def log_event(self, event: Mapping[str, Any]) -> None:
        validate_event(event)
        self.logger.log_metrics({f"alarm/{event['kind']}": 1.0}, int(event["step"]))

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        """Not representable in a generic logger: ignored."""

    def log_embeddings(
        self,
        tag: str,
        embeddings: np.ndarray,
        labels: Sequence[str] | None,
        step: int,
        texts: Sequence[str] | None = None,
    ) -> None:
        """Not representable in a generic logger: ignored."""

    def log_summary(self, metrics: Mapping[str, Any], step: int) -> None:
        scalars = numeric_items(metrics)
        if scalars:
            self.log_scalars(scalars, step)

    def flush(self) -> None:
        self.logger.save()

    def close(self) -> None:
        self.logger.save()


def sinks_for_lightning(trainer_loggers: Iterable[Any], run_dir: str | os.PathLike) -> list[Sink]:
    """One sink per Lightning logger: TensorBoardLogger -> :class:`TensorBoardSink` on its writer,
    WandbLogger -> :class:`WandbSink` on its run, any other logger -> :class:`LightningLoggerSink`.

    ``run_dir`` is where the caller's own files go; the JSONL sink is not included here (the
    caller always adds ``JsonlSink(run_dir)``), it is accepted so both trainers' factories look
    alike. Touching ``logger.experiment`` creates the writer / run on this process, so call this
    on global rank zero only (Lightning's loggers are rank-zero-only too): that is the caller's
    job, e.g. inside ``if trainer.is_global_zero:``.
    """
    loggers = require("lightning.pytorch.loggers", "Lightning logger support")
    from aquin_monitor.sinks.tensorboard import TensorBoardSink

    sinks: list[Sink] = []
    for logger in trainer_loggers:
        # fabric's TensorBoardLogger is the base of the pytorch one: this catches both.
        if isinstance(logger, _fabric_tensorboard_logger()) or isinstance(logger, loggers.TensorBoardLogger):
            sinks.append(TensorBoardSink(writer=logger.experiment))
        elif isinstance(logger, loggers.WandbLogger):
            from aquin_monitor.sinks.wandb import WandbSink

            sink = WandbSink(run=logger.experiment)
            sink.follow_lightning_logger(logger)  # one x-axis: the logger's rows get aquin/step too
            sinks.append(sink)
        else:
            sinks.append(LightningLoggerSink(logger))
    return sinks


def _fabric_tensorboard_logger() -> Any:
    return require("lightning.fabric.loggers", "Lightning logger support").TensorBoardLogger
