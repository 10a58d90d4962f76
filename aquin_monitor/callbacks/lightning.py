"""PyTorch Lightning callback: per-step gradient norms, contrastive decomposition and alarms."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._optional import require
from ..alarms import AlarmConfig
from ..monitor import host_learning_rates
from ._settings import MonitorSettings, find_sentence_transformer, open_sinks
from .run_pages import write_run_pages

if TYPE_CHECKING:
    from ..monitor import StepMonitor
    from ..sinks.base import Sink
    from ..snapshot_runner import SnapshotRunner

_pl = require("lightning.pytorch", "LightningEmbeddingMonitor")


class LightningEmbeddingMonitor(_pl.Callback):  # type: ignore[name-defined]  # lightning is optional: found at run time
    """Monitor an embedding fine-tune in Lightning with one callback.

    Every optimizer step (respecting ``accumulate_grad_batches``) it logs ``grad_norm/<group>``
    per encoder block, the contrastive decomposition ``contrastive/{pos_sim,neg_sim,hard_neg_sim,
    gap,in_batch_acc,loss}`` reported by your loss, the learning rate of the optimizer step
    (``optim/lr``; ``optim/lr/group.N`` per parameter group when there are several) and ``alarm/<kind>`` events, to
    every logger of the trainer (TensorBoard, W&B, CSV, ...) and to ``metrics.jsonl`` / ``events.jsonl`` in
    ``output_dir`` (default: the trainer's ``log_dir``). A trainer left with Lightning's default logger
    (no ``logger=`` nor ``default_root_dir=``, which would write ``./lightning_logs/`` in the working
    directory) logs into ``<output_dir>/lightning_logs/`` instead, its checkpoints too
    (:func:`rehome_default_logger`).

    Gradients are read in ``on_before_optimizer_step``: after AMP unscaling and **before** gradient
    clipping (Lightning clips after this hook). The sentence-transformers twin,
    :class:`~aquin_monitor.callbacks.TrainerEmbeddingMonitor`, measures at the same point, so
    ``grad_norm/*`` means the same in both.

    Histograms of the positive and negative similarities: every ``histogram_every`` steps; by default
    about 20 per run (``ceil(n / 20)`` with n = ``trainer.max_steps``, else ``trainer.estimated_stepping_batches``).
    ``tensor_norms_every=N`` adds each parameter's gradient norm, ``grad_norm_tensor/<parameter>``, every N steps.

    Snapshots: with ``snapshots=SnapshotRunner(probe, retrieval)``, the SentenceTransformer inside
    your module is snapshotted at train start (base), at every ``snapshot_every``-th checkpoint save
    and at the end, on rank zero, under ``<output_dir>/snapshots/<step>/``.

    Validation: after each validation run (not the sanity check) the metrics Lightning's own callbacks see
    (``trainer.callback_metrics``: what your module logged with ``self.log``, validation metrics and the
    latest training ones, as ``ModelCheckpoint(monitor=...)`` reads them) go to ``evaluations.jsonl``, and
    the report shows them beside the snapshots.

    At train end (``report=True``, the default) it writes ``report.html`` into the run folder, as the
    recipes do; when the snapshots used an SAE (``SnapshotRunner(sae=...)``), also ``sae.html``, the
    feature browser of the last snapshot's probe, which the report links.

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
        histogram_every: int | None = None,
        tensor_norms_every: int = 0,
        report: bool = True,
        alarms: AlarmConfig | None = None,
        stop_on: Sequence[str] = (),
        strict: bool = False,
        snapshots: SnapshotRunner | None = None,
        snapshot_every: int = 1,
    ):
        super().__init__()
        self.settings = MonitorSettings(
            output_dir=output_dir,
            log_every=log_every,
            histogram_every=histogram_every,
            alarms=alarms or AlarmConfig(),
            stop_on=tuple(stop_on),
            strict=strict,
            snapshots=snapshots,
            snapshot_every=snapshot_every,
            tensor_norms_every=tensor_norms_every,
            report=report,
        )
        self.monitor: StepMonitor | None = None
        self._restored: dict | None = None

    @property
    def state_key(self) -> str:
        # one key per configuration, as Lightning's own callbacks do: two monitors in one trainer (other
        # output folders or settings) keep their states apart
        return self._generate_state_key(
            output_dir=self.settings.output_dir, log_every=self.settings.log_every, stop_on=list(self.settings.stop_on)
        )

    @property
    def _legacy_state_key(self) -> str:
        # the key earlier versions saved under; Lightning looks it up when state_key is absent
        return "LightningEmbeddingMonitor"

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.monitor is not None:
            return
        from ..sinks import JsonlSink, sinks_for_lightning

        if self.settings.output_dir is not None:
            rehome_default_logger(trainer, self.settings.output_dir)
        run_dir = self.settings.output_dir or trainer.log_dir or trainer.default_root_dir
        self.run_dir = run_dir
        sinks = []
        if trainer.is_global_zero:
            makers: list[tuple[str, Callable[[], list[Sink]]]] = [
                ("the trainer's loggers", lambda: sinks_for_lightning(trainer.loggers, run_dir)),
                ("the JSONL files", lambda: [JsonlSink(run_dir)]),
            ]
            sinks = open_sinks(makers, strict=self.settings.strict)
        monitor = self.settings.build(
            sinks,
            rank_zero=trainer.is_global_zero,
            run_dir=run_dir,
            trainer_config=dict(getattr(pl_module, "hparams", {}) or {}),
        )
        self.monitor = monitor
        if self._restored is not None:
            monitor.load_state_dict(self._restored)

    def _inspected(self, pl_module):
        """What snapshots embed: the SentenceTransformer inside the module (only looked up when snapshotting)."""
        assert self.monitor is not None  # setup("fit") made it
        return find_sentence_transformer(pl_module) if self.monitor.snapshots is not None else pl_module

    def on_train_start(self, trainer, pl_module) -> None:
        assert self.monitor is not None  # setup("fit") made it
        self.monitor.histogram_every = self.settings.histogram_steps(_run_length(trainer))
        # the strategy's wrapper (an FSDP1 root around the module) says which parameters are sharded
        wrapper = trainer.model if trainer.model is not pl_module else None
        self.monitor.start(pl_module, trainer.global_step, snapshot_model=self._inspected(pl_module), wrapper=wrapper)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.monitor is not None and self.monitor.snapshots is not None:
            self.monitor.on_checkpoint(self._inspected(pl_module), trainer.global_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # the learning rates this optimizer step applies (Lightning steps schedulers after it)
        assert self.monitor is not None  # setup("fit") made it
        self.monitor.on_optimizer_step(
            trainer.global_step + 1, pl_module, learning_rates=host_learning_rates(optimizer.param_groups)
        )
        if self.monitor.should_stop:
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.monitor is not None and not trainer.sanity_checking:
            self.monitor.log_evaluation(
                {name: _scalar(value) for name, value in trainer.callback_metrics.items()}, trainer.global_step
            )

    def on_train_end(self, trainer, pl_module) -> None:
        assert self.monitor is not None  # setup("fit") made it
        self.monitor.end(self._inspected(pl_module), trainer.global_step)
        write_run_pages(self.monitor, report=self.settings.report, strict=self.settings.strict)

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


def _scalar(value) -> float | None:
    """A logged value (a 0-d tensor, a number) as a float; None for anything else."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _run_length(trainer) -> float | None:
    """The run's optimizer steps as the trainer knows them (``max_steps``, else its estimate), or None."""
    if trainer.max_steps and trainer.max_steps > 0:
        return trainer.max_steps
    try:
        return float(trainer.estimated_stepping_batches)
    except Exception:  # noqa: BLE001 - no length known (an iterable loader without len): the fallback interval
        return None


def rehome_default_logger(trainer, run_dir: str | os.PathLike) -> bool:
    """Move Lightning's *default* logger from the working directory into ``run_dir``; True when moved.

    ``L.Trainer()`` with neither ``logger=`` nor ``default_root_dir=`` logs to
    ``<cwd>/lightning_logs/version_N/`` (TensorBoard, or CSV without tensorboard), and
    ``ModelCheckpoint`` saves beside it: outside the run folder the monitor writes. That default
    logger (its class exactly, named ``lightning_logs``, rooted at the working directory) is replaced,
    through the trainer's public ``loggers`` setter, by the same class rooted at ``run_dir``. Any
    logger the user chose, or a ``default_root_dir`` they set, is left alone.

    Lightning creates the logger's experiment just before the callbacks' ``setup`` (where this runs),
    so the default logger has already made ``version_N/`` with an empty event file; that folder is
    removed when it holds nothing but event files of this process (and ``lightning_logs/`` when
    that leaves it empty), nothing else.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = list(trainer.loggers)
    if len(loggers) != 1 or type(loggers[0]) not in (TensorBoardLogger, CSVLogger):
        return False
    logger = loggers[0]
    cwd = os.getcwd()
    at_cwd = os.path.abspath(str(logger.save_dir)) == cwd == os.path.abspath(str(trainer.default_root_dir))
    if logger.name != "lightning_logs" or not at_cwd or os.path.abspath(os.fspath(run_dir)) == cwd:
        return False
    left_behind = Path(logger.log_dir)
    if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
        logger.experiment.close()  # its empty event file, about to be removed
    trainer.loggers = [type(logger)(save_dir=os.fspath(run_dir), name="lightning_logs")]
    if trainer.is_global_zero:
        remove_empty_log_folder(left_behind)
    return True


def remove_empty_log_folder(folder: Path) -> None:
    """Remove ``folder`` if it holds only TensorBoard event files this process wrote (names end in
    ``.<pid>.<n>``), then its parent if that left it empty; anything else stays."""
    try:
        files = list(folder.iterdir())
        ours = [
            f for f in files if f.is_file() and f.name.startswith("events.out.tfevents.")
            and f.name.rsplit(".", 2)[-2] == str(os.getpid())
        ]  # fmt: skip
        if len(ours) != len(files):
            return
        for f in ours:
            f.unlink()
        folder.rmdir()
        folder.parent.rmdir()  # only when empty: other versions stay
    except OSError:
        return
