"""The Lightning callback, end to end on a tiny model: same metric names as the HF twin."""

from __future__ import annotations

import math
import os

import lightning as L
import pytest
import torch
from sentence_transformers import SentenceTransformer
from torch.utils.data import DataLoader

from aquin_monitor.callbacks import LightningEmbeddingMonitor
from aquin_monitor.losses import info_nce
from aquin_monitor.sinks import read_jsonl

PAIRS = [(f"question number {i} about topic {i % 5}", f"answer {i} on topic {i % 5}") for i in range(32)]


class PairModule(L.LightningModule):
    def __init__(self, path, lr=5e-4, freeze_layer_at=None, nan_at=None):
        super().__init__()
        self.encoder = SentenceTransformer(path, device="cpu")
        self.encoder.train()
        self.lr, self.freeze_layer_at, self.nan_at = lr, freeze_layer_at, nan_at

    def encode(self, texts):
        feats = {
            k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.encoder.preprocess(list(texts)).items()
        }
        return self.encoder(feats)["sentence_embedding"]

    def training_step(self, batch, batch_idx):
        if self.freeze_layer_at is not None and self.global_step == self.freeze_layer_at:
            for p in self.encoder[0].auto_model.encoder.layer[1].parameters():
                p.requires_grad_(False)
        queries = self.encode(batch[0])
        if self.nan_at is not None and self.global_step >= self.nan_at:
            queries = queries * float("nan")  # injected NaN, as an overflowing activation would produce
        return info_nce(queries, self.encode(batch[1]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def _fit(module, tmp_path, callback, max_steps, accumulate=1):
    torch.manual_seed(0)
    loader = DataLoader(PAIRS, batch_size=8, shuffle=True, collate_fn=lambda b: tuple(zip(*b)))
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=0.01,
        log_every_n_steps=1,
        enable_checkpointing=False,
        logger=L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="tb"),
    )
    trainer.fit(module, loader)
    return trainer


def test_lightning_logs_same_names_pre_clip(tiny_mean_model, tmp_path):
    cb = LightningEmbeddingMonitor(output_dir=str(tmp_path / "run"), strict=True)
    trainer = _fit(PairModule(tiny_mean_model), tmp_path, cb, max_steps=4, accumulate=2)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {
            "grad_norm/embeddings",
            "grad_norm/layer.00",
            "grad_norm/layer.01",
            "grad_norm/total",
            "contrastive/pos_sim",
            "contrastive/neg_sim",
            "contrastive/gap",
            "contrastive/in_batch_acc",
        } <= r.keys()
        assert r["grad_norm/total"] > 0.01  # measured before Lightning's clipping to 0.01
        groups = [v for k, v in r.items() if k.startswith("grad_norm/") and k != "grad_norm/total"]
        assert math.sqrt(sum(v * v for v in groups)) == pytest.approx(r["grad_norm/total"], rel=1e-4)
    # the trainer's own TensorBoard logger got the metrics too
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(trainer.logger.log_dir)
    acc.Reload()
    assert "contrastive/gap" in acc.Tags()["scalars"] and "grad_norm/layer.01" in acc.Tags()["scalars"]
    assert cb.state_dict()["last_step"] == 4


class ValidatedModule(PairModule):
    """Logs its own validation metric: the mean cosine of each pair, recomputed by the test."""

    def validation_step(self, batch, batch_idx):
        with torch.no_grad():
            cosine = torch.nn.functional.cosine_similarity(self.encode(batch[0]), self.encode(batch[1])).mean()
        self.log("val/pair_cosine", cosine, on_epoch=True, batch_size=len(batch[0]))


class _SeenAtValidation(L.Callback):
    """The validation metric computed by hand at each validation end (not the sanity check)."""

    def __init__(self):
        self.seen = {}

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            with torch.no_grad():
                queries, answers = zip(*PAIRS[:8])
                self.seen[trainer.global_step] = (
                    torch.nn.functional.cosine_similarity(module.encode(queries), module.encode(answers)).mean().item()
                )


def test_validation_metrics_reach_evaluations_jsonl_and_the_report(tiny_mean_model, tmp_path):
    from aquin_monitor.report import render_report

    torch.manual_seed(0)
    loader = DataLoader(PAIRS, batch_size=8, shuffle=True, collate_fn=lambda b: tuple(zip(*b)))
    validation = DataLoader(PAIRS[:8], batch_size=8, collate_fn=lambda b: tuple(zip(*b)))
    reference = _SeenAtValidation()
    trainer = L.Trainer(
        max_steps=4,
        val_check_interval=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[LightningEmbeddingMonitor(output_dir=str(tmp_path / "run"), strict=True), reference],
    )
    trainer.fit(ValidatedModule(tiny_mean_model), loader, validation)
    rows = read_jsonl(tmp_path / "run" / "evaluations.jsonl")
    assert [row["step"] for row in rows] == sorted(reference.seen) == [2, 4]  # the sanity check is not an evaluation
    for row in rows:
        assert row["val/pair_cosine"] == pytest.approx(reference.seen[row["step"]], abs=1e-5)
    section = render_report(tmp_path / "run").split('<section id="evaluations">', 1)[1].split("</section>", 1)[0]
    assert "<th>val/pair_cosine</th>" in section


def test_frozen_layer_raises_dead_layer_alarm(tiny_mean_model, tmp_path):
    cb = LightningEmbeddingMonitor(output_dir=str(tmp_path), strict=True)
    with pytest.warns(Warning, match="dead_layer"):
        _fit(PairModule(tiny_mean_model, freeze_layer_at=20), tmp_path, cb, max_steps=26)
    events = read_jsonl(tmp_path / "events.jsonl")
    dead = [e for e in events if e["kind"] == "dead_layer"]
    assert dead and dead[0]["layer"] == "layer.01" and 21 <= dead[0]["step"] <= 25
    assert not [e for e in events if e["kind"] in ("spike", "nan")]


def test_nan_alarm_names_layers_and_stops(tiny_mean_model, tmp_path):
    cb = LightningEmbeddingMonitor(output_dir=str(tmp_path), stop_on=["nan"], strict=True)
    with pytest.warns(Warning, match="nan"):
        trainer = _fit(PairModule(tiny_mean_model, nan_at=3), tmp_path, cb, max_steps=10)
    events = [e for e in read_jsonl(tmp_path / "events.jsonl") if e["kind"] == "nan"]
    assert events[0]["step"] == 4
    assert {e["layer"] for e in events} >= {"loss", "layer.00", "total"}
    assert trainer.global_step < 10


def test_a_fresh_run_moves_an_earlier_runs_files_aside(tiny_mean_model, tmp_path):
    run = tmp_path / "run"
    _fit(
        PairModule(tiny_mean_model), tmp_path, LightningEmbeddingMonitor(output_dir=str(run), strict=True), max_steps=3
    )
    first = read_jsonl(run / "metrics.jsonl")
    with pytest.warns(RuntimeWarning, match="earlier run"):
        _fit(
            PairModule(tiny_mean_model),
            tmp_path,
            LightningEmbeddingMonitor(output_dir=str(run), strict=True),
            max_steps=2,
        )
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    (archived,) = (run / "previous").iterdir()
    assert read_jsonl(archived / "metrics.jsonl") == first


def test_two_monitors_in_one_trainer_keep_their_states_apart(tmp_path):
    a = LightningEmbeddingMonitor(output_dir=str(tmp_path / "a"))
    b = LightningEmbeddingMonitor(output_dir=str(tmp_path / "b"))
    assert a.state_key != b.state_key
    # stable across processes: a resumed run finds its state under the same key
    assert a.state_key == LightningEmbeddingMonitor(output_dir=str(tmp_path / "a")).state_key
    assert a._legacy_state_key == "LightningEmbeddingMonitor"  # checkpoints of earlier versions are still found


def test_a_checkpoint_of_an_earlier_version_restores_the_monitor(tiny_mean_model, tmp_path):
    """Earlier versions saved the monitor's state under the class name; a resume still finds it."""
    from lightning.pytorch.trainer import call

    cb = LightningEmbeddingMonitor(output_dir=str(tmp_path / "run"))
    trainer = L.Trainer(callbacks=[cb], default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False)
    state = {"last_step": 7, "detector": None, "gap_history": [], "gap_cooldown_until": -1, "alarms": []}
    call._call_callbacks_load_state_dict(trainer, {"callbacks": {"LightningEmbeddingMonitor": state}})
    assert cb._restored == state


def _fit_with_lightning_defaults(module, callback, **trainer_options):
    """A trainer as the README's snippet builds it: no logger=, no default_root_dir= (unless given)."""
    torch.manual_seed(0)
    loader = DataLoader(PAIRS, batch_size=8, shuffle=True, collate_fn=lambda b: tuple(zip(*b)))
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", devices=1, callbacks=[callback], enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1, **trainer_options,
    )  # fmt: skip
    trainer.fit(module, loader)
    return trainer


def test_the_default_logger_and_checkpoints_land_in_the_run_folder(tiny_mean_model, tmp_path, monkeypatch):
    """Issue 25 point 6: Lightning's default logger wrote ./lightning_logs/ outside the run folder."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "my-run"
    trainer = _fit_with_lightning_defaults(PairModule(tiny_mean_model), LightningEmbeddingMonitor(str(run)))
    assert not (tmp_path / "lightning_logs").exists(), sorted(p.name for p in tmp_path.iterdir())
    version = run / "lightning_logs" / "version_0"
    assert list(version.glob("events.out.tfevents.*")), sorted(p.name for p in run.rglob("*"))
    assert list((version / "checkpoints").glob("*.ckpt"))  # ModelCheckpoint follows the logger
    assert (run / "metrics.jsonl").exists() and trainer.log_dir == str(version)


def test_a_logger_or_root_the_user_chose_is_left_alone(tiny_mean_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    _fit_with_lightning_defaults(
        PairModule(tiny_mean_model), LightningEmbeddingMonitor(str(tmp_path / "run")), default_root_dir=str(root)
    )
    assert list((root / "lightning_logs" / "version_0").glob("events.out.tfevents.*"))
    assert not (tmp_path / "run" / "lightning_logs").exists()
    chosen = L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="mine")  # in the working directory, chosen
    _fit_with_lightning_defaults(
        PairModule(tiny_mean_model), LightningEmbeddingMonitor(str(tmp_path / "run2")), logger=chosen
    )
    assert list((tmp_path / "mine" / "version_0").glob("events.out.tfevents.*"))
    assert not (tmp_path / "run2" / "lightning_logs").exists() and not (tmp_path / "lightning_logs").exists()


def test_only_the_empty_default_folder_is_removed(tmp_path, monkeypatch):
    from aquin_monitor.callbacks.lightning import remove_empty_log_folder

    pid = os.getpid()
    ours = tmp_path / "lightning_logs" / "version_1"
    ours.mkdir(parents=True)
    (ours / f"events.out.tfevents.1.my.host.{pid}.0").write_bytes(b"")
    kept = tmp_path / "lightning_logs" / "version_0"  # an earlier run's: stays, and so does the parent
    kept.mkdir()
    (kept / f"events.out.tfevents.1.host.{pid + 1}.0").write_bytes(b"x")
    remove_empty_log_folder(ours)
    assert not ours.exists() and kept.exists() and (tmp_path / "lightning_logs").exists()
    foreign = tmp_path / "other"
    foreign.mkdir()
    (foreign / f"events.out.tfevents.1.host.{pid}.0").write_bytes(b"")
    (foreign / "hparams.yaml").write_text("a: 1\n")
    remove_empty_log_folder(foreign)
    assert sorted(p.name for p in foreign.iterdir())[-1] == "hparams.yaml"
    remove_empty_log_folder(kept)  # another process's file: stays
    assert kept.exists()
