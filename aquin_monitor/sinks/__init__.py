"""Where monitor results go, behind one protocol (:class:`Sink`); sinks never compute.

- :class:`JsonlSink`: plain files in the run directory, always on (``metrics.jsonl``,
  ``events.jsonl``, ``snapshots.jsonl``, ``histograms.jsonl``, figures, embeddings).
- :class:`TensorBoardSink`, :class:`WandbSink`: the dashboards (optional dependencies,
  imported when the sink is created).
- :class:`MultiSink`: fans out; a sink that fails is warned about once and switched off.
- :func:`sinks_for_lightning`, :func:`sinks_for_hf`: pick sinks from the trainer's own logging
  configuration.
"""

from aquin_monitor.sinks.base import BaseSink, MultiSink, Sink, SinkWarning
from aquin_monitor.sinks.hf import sinks_for_hf
from aquin_monitor.sinks.jsonl import JsonlFormatError, JsonlSink, read_jsonl
from aquin_monitor.sinks.lightning import LightningLoggerSink, sinks_for_lightning
from aquin_monitor.sinks.tensorboard import TensorBoardSink
from aquin_monitor.sinks.wandb import WandbSink

__all__ = [
    "BaseSink",
    "JsonlFormatError",
    "JsonlSink",
    "LightningLoggerSink",
    "MultiSink",
    "Sink",
    "SinkWarning",
    "TensorBoardSink",
    "WandbSink",
    "read_jsonl",
    "sinks_for_hf",
    "sinks_for_lightning",
]
