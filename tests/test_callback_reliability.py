"""Both callbacks under failure: a NaN step stopped before it reaches the weights, sinks that cannot be
opened, and a resume whose checkpoint lost the monitor's state."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from safetensors.torch import load_file
from test_callback_hf import _train
from test_callback_lightning import PairModule, _fit
from transformers import TrainerCallback

from aquin_monitor.callbacks import LightningEmbeddingMonitor, TrainerEmbeddingMonitor
from aquin_monitor.sinks import read_jsonl
from aquin_monitor.snapshot_record import list_snapshots
from aquin_monitor.snapshot_runner import SnapshotRunner

PROBE = [f"probe sentence {i} about topic {i % 3}" for i in range(12)]


class PoisonGradient(TrainerCallback):
    """Turns one gradient entry NaN just before the optimizer step ``at`` (an overflow would)."""

    def __init__(self, at: int):
        self.at = at

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.at:
            next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_hf_nan_stop_discards_the_nan_update_and_saves_finite_weights(tiny_mean_model, tmp_path):
    monitor = TrainerEmbeddingMonitor(stop_on=["nan"])
    with pytest.warns(Warning, match="aquin-monitor alarm"):
        model, trainer = _train(
            tiny_mean_model, tmp_path, callbacks=[PoisonGradient(3), monitor], max_steps=8, save_steps=1
        )
    assert trainer.state.global_step == 3  # stopped at the NaN step
    assert {e["kind"] for e in read_jsonl(tmp_path / "events.jsonl")} == {"nan"}
    before, last = _weights(tmp_path / "checkpoint-2"), _weights(tmp_path / "checkpoint-3")
    for name, tensor in last.items():
        assert torch.isfinite(tensor).all(), name
        assert torch.equal(tensor, before[name]), name  # the NaN step changed no weight
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_hf_nan_without_stop_on_still_trains_on(tiny_mean_model, tmp_path):
    """The update is only discarded when the user asked to stop on NaN: otherwise the monitor only reports."""
    with pytest.warns(Warning, match="aquin-monitor alarm"):
        _, trainer = _train(
            tiny_mean_model, tmp_path, callbacks=[PoisonGradient(3), TrainerEmbeddingMonitor()], max_steps=4
        )
    assert trainer.state.global_step == 4


def test_lightning_nan_stop_keeps_the_weights_of_the_last_finite_step(tiny_mean_model, tmp_path):
    clean = PairModule(tiny_mean_model)
    _fit(clean, tmp_path / "clean", LightningEmbeddingMonitor(output_dir=str(tmp_path / "clean-run")), max_steps=2)
    poisoned = PairModule(tiny_mean_model, nan_at=2)  # the loss is NaN from the third step on
    with pytest.warns(Warning, match="aquin-monitor alarm"):
        trainer = _fit(
            poisoned,
            tmp_path / "nan",
            LightningEmbeddingMonitor(output_dir=str(tmp_path / "nan-run"), stop_on=["nan"]),
            max_steps=10,
        )
    assert trainer.global_step == 3
    for (name, a), (_, b) in zip(clean.named_parameters(), poisoned.named_parameters()):
        assert torch.isfinite(b).all(), name
        assert torch.equal(a, b), name  # the same data order and steps 1-2; step 3's update discarded


def test_hf_run_goes_on_when_its_folder_cannot_be_opened(tiny_mean_model, tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the run folder should be")
    monitor = TrainerEmbeddingMonitor(output_dir=str(blocker / "aquin"))
    with pytest.warns(RuntimeWarning, match="opening the JSONL files failed"):
        _, trainer = _train(tiny_mean_model, tmp_path / "out", callbacks=[monitor], max_steps=3)
    assert trainer.state.global_step == 3
    assert blocker.read_text() == "a file where the run folder should be"


def test_lightning_run_goes_on_when_its_folder_cannot_be_opened(tiny_mean_model, tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="opening the JSONL files failed"):
        trainer = _fit(
            PairModule(tiny_mean_model),
            tmp_path,
            LightningEmbeddingMonitor(output_dir=str(blocker / "aquin")),
            max_steps=2,
        )
    assert trainer.global_step == 2


def test_resume_after_a_crash_in_a_snapshot_fills_the_gap_and_warns(tiny_mean_model, tmp_path):
    def monitor():
        return TrainerEmbeddingMonitor(snapshots=SnapshotRunner(PROBE, umap=False), strict=True)

    _train(tiny_mean_model, tmp_path, callbacks=[monitor()], max_steps=4, save_steps=2)
    assert [int(f.name) for f in list_snapshots(tmp_path)] == [0, 2, 4]
    # a kill during snapshot 4: the checkpoint is saved, the snapshot and the monitor's state are not
    for leftover in (tmp_path / "snapshots" / "4").iterdir():
        leftover.unlink()
    (tmp_path / "snapshots" / "4").rmdir()
    (tmp_path / "checkpoint-4" / "aquin_monitor_state.json").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(
            tiny_mean_model,
            tmp_path,
            callbacks=[monitor()],
            max_steps=6,
            save_steps=2,
            resume=str(tmp_path / "checkpoint-4"),
        )
    assert any("without the monitor's saved state" in str(w.message) for w in caught)
    assert [int(f.name) for f in list_snapshots(tmp_path)] == [0, 2, 4, 6]
    record = json.loads((tmp_path / "snapshots" / "4" / "snapshot.json").read_text())
    assert record["tag"] == "checkpoint" and math.isfinite(record["metrics"]["drift/base/cka"])


def test_settings_reach_sinks_that_keep_a_run_config_and_a_failing_one_is_skipped():
    from aquin_monitor.callbacks._settings import MonitorSettings
    from aquin_monitor.sinks import BaseSink

    class Keeps(BaseSink):  # a sink declares it keeps a run config by overriding BaseSink.update_config
        def __init__(self, fail=False):
            self.config, self.fail = {}, fail

        def update_config(self, values):
            if self.fail:
                raise OSError("offline")
            self.config.update(values)

    kept, broken = Keeps(), Keeps(fail=True)
    with pytest.warns(RuntimeWarning, match="sending the run config failed"):
        MonitorSettings(log_every=3, stop_on=("nan",)).build(
            [broken, kept], rank_zero=True, run_dir="unused", trainer_config={"learning_rate": 5e-4}
        )
    assert kept.config["learning_rate"] == 5e-4
    assert kept.config["aquin_monitor/log_every"] == 3 and kept.config["aquin_monitor/stop_on"] == ["nan"]
    assert kept.config["aquin_monitor/alarms"]["gap_window"] == 40
