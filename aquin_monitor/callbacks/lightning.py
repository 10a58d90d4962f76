"""PyTorch Lightning callback: per-step gradient norms, contrastive decomposition and alarms."""

from __future__ import annotations

from collections.abc import Sequence

from .._optional import require
from ..monitor import AlarmConfig
from ._settings import MonitorSettings, find_sentence_transformer, restore_history

_pl = require("lightning.pytorch", "LightningEmbeddingMonitor")


class LightningEmbeddingMonitor(_pl.Callback):
    """Monitor an embedding fine-tune in Lightning with one callback.

    Every optimizer step (respecting ``accumulate_grad_batches``) it logs ``grad_norm/<group>``
    per encoder block, the contrastive decomposition ``contrastive/{pos_sim,neg_sim,hard_neg_sim,
    gap,in_batch_acc,loss}`` reported by your loss, and ``alarm/<kind>`` events, to every logger of the
    trainer (TensorBoard, W&B, CSV, ...) and to ``metrics.jsonl`` / ``events.jsonl`` in ``output_dir``
    (default: the trainer's ``log_dir``).

    Gradients are read in ``on_before_optimizer_step``: after AMP unscaling and **before** gradient
    clipping (Lightning clips after this hook). The sentence-transformers twin,
    :class:`~aquin_monitor.callbacks.TrainerEmbeddingMonitor`, measures at the same point, so
    ``grad_norm/*`` means the same in both.

    Snapshots: with ``snapshots=SnapshotRunner(probe, retrieval)``, the SentenceTransformer inside
    your module is snapshotted at train start (base), at every ``snapshot_every``-th checkpoint save
    and at the end, on rank zero, under ``<output_dir>/snapshots/<step>/``.

    Rank-zero discipline: every rank computes (the contrastive sums are all-reduced, so alarm and
    stop decisions agree and no rank waits on another), only global rank zero writes.

    Example::

        import lightning as L
        from aquin_monitor.callbacks import LightningEmbeddingMonitor
        from aquin_monitor.losses import info_nce

        class Module(L.LightningModule):
            def training_step(self, batch, batch_idx):
                return info_nce(self.encode(batch["query"]), self.encode(batch["document"]))  # reports its similarities

        trainer = L.Trainer(max_steps=100, callbacks=[LightningEmbeddingMonitor(stop_on=["nan"])])
        trainer.fit(Module(), loader)
    """

    def __init__(
        self,
        output_dir: str | None = None,
        *,
        log_every: int = 1,
        histogram_every: int = 50,
        alarms: AlarmConfig | None = None,
        stop_on: Sequence[str] = (),
        strict: bool = False,
        snapshots=None,
        snapshot_every: int = 1,
    ):
        super().__init__()
        self.settings = MonitorSettings(output_dir, log_every, histogram_every, alarms or AlarmConfig(), tuple(stop_on), strict, snapshots, snapshot_every)
        self._saves = 0
        self._last_snapshot_step: int | None = None
        self.monitor = None
        self._restored: dict | None = None

    @property
    def state_key(self) -> str:
        return "LightningEmbeddingMonitor"

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.monitor is not None:
            return
        from ..sinks import JsonlSink, sinks_for_lightning

        run_dir = self.settings.output_dir or trainer.log_dir or trainer.default_root_dir
        self.run_dir = run_dir
        sinks = []
        if trainer.is_global_zero:
            sinks = [*sinks_for_lightning(trainer.loggers, run_dir), JsonlSink(run_dir)]
        self.monitor = self.settings.build(sinks, rank_zero=trainer.is_global_zero)
        if self._restored is not None:
            self.monitor.load_state_dict(self._restored)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0 and self.monitor.last_step == 0:
            self.monitor.start_fresh()  # an earlier run's files in the same folder are moved aside
        if self.monitor.groups is None:
            self.monitor.attach(pl_module)
        runner = self.settings.snapshots
        if runner is not None and trainer.is_global_zero:
            step = trainer.global_step
            if not (step and restore_history(runner, self.run_dir, step)):
                self._snapshot(pl_module, step, "base" if not step else "checkpoint")

    def _snapshot(self, pl_module, step: int, tag: str) -> None:
        self.monitor.flush()  # this step's metrics before the snapshot's, and the host worker idle
        self.settings.snapshots.record(
            find_sentence_transformer(pl_module), step, tag=tag, run_dir=self.run_dir,
            sinks=self.monitor.sinks, strict=self.settings.strict,
        )
        self._last_snapshot_step = step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.settings.snapshots is None or not trainer.is_global_zero:
            return
        self._saves += 1
        if self._saves % self.settings.snapshot_every == 0 and self._last_snapshot_step != trainer.global_step:
            self._snapshot(pl_module, trainer.global_step, "checkpoint")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.monitor.on_optimizer_step(trainer.global_step + 1, pl_module)
        if self.monitor.should_stop:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if self.settings.snapshots is not None and trainer.is_global_zero and self._last_snapshot_step != trainer.global_step:
            self._snapshot(pl_module, trainer.global_step, "checkpoint")
        self.monitor.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def state_dict(self) -> dict:
        return {} if self.monitor is None else self.monitor.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        if self.monitor is not None:
            self.monitor.load_state_dict(state_dict)
        else:
            self._restored = state_dict
