"""Lightning resume: the monitor's state travels in the checkpoint and the resumed run continues it."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from sentence_transformers import SentenceTransformer
from torch.utils.data import DataLoader

from aquin_monitor.callbacks import LightningEmbeddingMonitor
from aquin_monitor.losses import info_nce
from aquin_monitor.sinks import read_jsonl

PAIRS = [(f"question number {i} about topic {i % 5}", f"answer {i} on topic {i % 5}") for i in range(32)]
FIRST_STEPS, MORE_STEPS = 4, 3


class PairModule(L.LightningModule):
    def __init__(self, path):
        super().__init__()
        self.encoder = SentenceTransformer(path, device="cpu")
        self.encoder.train()

    def encode(self, texts):
        return self.encoder(self.encoder.preprocess(list(texts)))["sentence_embedding"]

    def training_step(self, batch, batch_idx):
        return info_nce(self.encode(batch[0]), self.encode(batch[1]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=5e-4)


class StartStateMonitor(LightningEmbeddingMonitor):
    """Records the monitor's state as training starts, i.e. right after a checkpoint was restored."""

    state_at_start: dict | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.state_at_start = self.monitor.state_dict()


def _fit(model_path, tmp_path, callback, max_steps, ckpt_path=None):
    torch.manual_seed(0)
    loader = DataLoader(PAIRS, batch_size=8, shuffle=True, collate_fn=lambda b: tuple(zip(*b)))
    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        callbacks=[callback, checkpoints],
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(PairModule(model_path), loader, ckpt_path=ckpt_path)
    return trainer


def _assert_detector_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        if key == "history":  # unfilled window slots are NaN: compare NaN-aware
            np.testing.assert_array_equal(np.asarray(actual[key], dtype=float), np.asarray(expected[key], dtype=float))
        else:
            assert actual[key] == expected[key], key


def test_resume_restores_monitor_state_and_continues_steps(tiny_mean_model, tmp_path):
    run_dir = tmp_path / "run"
    first = StartStateMonitor(output_dir=str(run_dir), strict=True)
    _fit(tiny_mean_model, tmp_path, first, FIRST_STEPS)
    ckpt = tmp_path / "ckpt" / f"epoch=0-step={FIRST_STEPS}.ckpt"
    saved = torch.load(ckpt, weights_only=False)["callbacks"][first.state_key]
    assert saved["last_step"] == FIRST_STEPS and saved["detector"]["steps_seen"] == FIRST_STEPS
    assert len(saved["gap_history"]) == FIRST_STEPS

    resumed = StartStateMonitor(output_dir=str(run_dir), strict=True)
    trainer = _fit(tiny_mean_model, tmp_path, resumed, FIRST_STEPS + MORE_STEPS, ckpt_path=str(ckpt))
    assert trainer.global_step == FIRST_STEPS + MORE_STEPS

    # the fresh callback started from exactly the saved state, not from an empty history
    at_start = resumed.state_at_start
    _assert_detector_equal(at_start["detector"], saved["detector"])
    assert at_start["last_step"] == FIRST_STEPS
    assert at_start["gap_history"] == saved["gap_history"]

    # each step logged exactly once, in order, across both runs
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "grad_norm/total" in r]
    total = FIRST_STEPS + MORE_STEPS
    assert [r["step"] for r in rows] == list(range(1, total + 1))

    # the resumed monitor continued the histories: they hold every step's logged values, in order
    final = resumed.state_dict()
    assert final["last_step"] == total
    assert final["detector"]["steps_seen"] == total
    assert final["gap_history"] == [[r["contrastive/gap"], r["contrastive/loss"]] for r in rows]
    history = np.asarray(final["detector"]["history"], dtype=float)
    names = resumed.monitor.groups.metric_names("grad_norm/")
    # a group without any gradient (the unused BERT pooler) is not logged; its detector history holds 0
    assert [n for n in names if n not in rows[0]] == ["grad_norm/pooler"]
    logged = np.asarray([[r.get(name, 0.0) for r in rows] for name in names])
    np.testing.assert_array_equal(history[:, :total], logged)
    np.testing.assert_array_equal(
        history[:, :FIRST_STEPS], np.asarray(saved["detector"]["history"], dtype=float)[:, :FIRST_STEPS]
    )
    assert np.isnan(history[:, total:]).all()
