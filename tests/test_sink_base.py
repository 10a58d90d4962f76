"""BaseSink: optional sink capabilities are documented no-ops on the base class, so no caller probes a sink
(hasattr / inspect.signature); a third-party sink with only the required protocol still works everywhere;
and both callbacks build their MonitorSettings by keyword."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest

from aquin_monitor.callbacks._settings import MonitorSettings
from aquin_monitor.sinks import BaseSink, JsonlSink, MultiSink
from aquin_monitor.sinks.base import as_sink, send_embeddings

PACKAGE = Path(__file__).resolve().parents[1] / "aquin_monitor"


class ProtocolOnly:
    """A third-party sink: the required protocol and nothing else."""

    def __init__(self):
        self.calls = []

    def log_scalars(self, metrics, step):
        self.calls.append(("scalars", dict(metrics), step))

    def log_histogram(self, tag, values, step):
        self.calls.append(("histogram", tag, step))

    def log_event(self, event):
        self.calls.append(("event", event["kind"]))

    def log_figure(self, tag, figure, step):
        self.calls.append(("figure", tag, step))

    def log_embeddings(self, tag, embeddings, labels, step):
        self.calls.append(("embeddings", tag, labels, step))

    def log_summary(self, metrics, step):
        self.calls.append(("summary", step))

    def flush(self):
        self.calls.append(("flush",))

    def close(self):
        self.calls.append(("close",))


class Recording(BaseSink):
    def __init__(self):
        self.calls = []

    def log_embeddings(self, tag, embeddings, labels, step, texts=None):
        self.calls.append(("embeddings", tag, texts))

    def rewind(self, step):
        self.calls.append(("rewind", step))


def test_a_protocol_only_sink_gets_every_call_it_implements_and_no_optional_one():
    plain = ProtocolOnly()
    multi = MultiSink([plain], strict=True)  # strict: any AttributeError would raise here
    multi.log_scalars({"contrastive/gap": 0.5}, 1)
    multi.log_event({"step": 1, "kind": "spike"})
    multi.log_embeddings("probe", np.zeros((2, 3)), ["a", "b"], 1, texts=["x", "y"])
    multi.log_evaluation({"eval_loss": 1.0}, 1)
    multi.rewind(0)
    multi.archive_previous_run()
    multi.update_config({"lr": 1e-4})
    multi.flush()
    multi.close()
    assert plain.calls == [
        ("scalars", {"contrastive/gap": 0.5}, 1),
        ("event", "spike"),
        ("embeddings", "probe", ["a", "b"], 1),
        ("flush",),
        ("close",),
    ]
    assert multi.switched_off == []


def test_a_failing_protocol_only_sink_is_named_by_its_own_class():
    class Broken(ProtocolOnly):
        def log_scalars(self, metrics, step):
            raise OSError("disk full")

    multi = MultiSink([Broken()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        multi.log_scalars({"a": 1.0}, 1)
    assert multi.switched_off == [("Broken", "log_scalars")] and "Broken" in str(caught[0].message)


def test_texts_reach_base_sinks_and_optional_methods_they_override():
    recording = Recording()
    send_embeddings(recording, "probe", np.zeros((1, 2)), None, 3, texts=["t"])
    MultiSink([recording], strict=True).rewind(5)
    assert recording.calls == [("embeddings", "probe", ["t"]), ("rewind", 5)]
    assert as_sink(recording) is recording


def test_the_monitor_takes_protocol_only_sinks(tmp_path):
    from aquin_monitor.monitor import StepMonitor

    plain = ProtocolOnly()
    monitor = StepMonitor([plain, JsonlSink(tmp_path)], histogram_every=0, strict=True, warn=False)
    monitor.start_fresh()
    monitor.log_evaluation({"eval_loss": 0.25}, 4)
    assert "eval_loss" in (tmp_path / "evaluations.jsonl").read_text()
    monitor.load_state_dict(monitor.state_dict())  # a resume at step 0 rewinds every sink: step 4 is dropped
    monitor.close()
    assert (tmp_path / "evaluations.jsonl").read_text() == ""
    assert ("close",) in plain.calls and not [c for c in plain.calls if c[0] not in {"flush", "close"}]


def test_bundled_sinks_are_base_sinks():
    from aquin_monitor.sinks import LightningLoggerSink, TensorBoardSink, WandbSink

    bundled = (JsonlSink, LightningLoggerSink, TensorBoardSink, WandbSink, MultiSink)
    assert all(issubclass(cls, BaseSink) for cls in bundled)


def test_no_caller_probes_a_sink():
    """Before: 5 hasattr probes (monitor.py, sinks/base.py, callbacks/_settings.py) and one inspect.signature."""
    probes = []
    for name in ("monitor.py", "sinks/base.py", "callbacks/_settings.py"):
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr":
                probes.append((name, ast.unparse(node)))
            if isinstance(node, ast.Attribute) and node.attr == "signature":
                probes.append((name, ast.unparse(node)))
    assert probes == []


# ------------------------------------------------------------------------------------------ settings


def test_settings_are_keyword_only():
    with pytest.raises(TypeError):
        MonitorSettings("runs/x", 5)  # positional: a field inserted later could shift the values silently
    assert MonitorSettings(log_every=5).log_every == 5


def distinct_values() -> dict:
    from aquin_monitor.alarms import AlarmConfig

    return {
        "output_dir": "runs/x",
        "log_every": 3,
        "histogram_every": 7,
        "alarms": AlarmConfig(),
        "stop_on": ("nan",),
        "strict": True,
        "snapshots": None,
        "snapshot_every": 4,
        "tensor_norms_every": 9,
        "report": False,
    }


@pytest.mark.parametrize("callback", ["lightning", "hf"])
def test_callbacks_pass_every_setting_to_its_own_field(callback):
    if callback == "lightning":
        from aquin_monitor.callbacks.lightning import LightningEmbeddingMonitor as Callback
    else:
        from aquin_monitor.callbacks.hf_trainer import TrainerEmbeddingMonitor as Callback
    values = distinct_values()
    assert set(values) == {f.name for f in dataclasses.fields(MonitorSettings)}
    parameters = inspect.signature(Callback.__init__).parameters
    assert set(values) <= set(parameters)
    settings = Callback(**values).settings
    assert {name: getattr(settings, name) for name in values} == values
