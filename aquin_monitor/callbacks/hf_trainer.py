"""sentence-transformers / Hugging Face ``Trainer`` callback: the twin of the Lightning one."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..alarms import AlarmConfig
from ..atomic import atomic_write_text
from ..monitor import host_learning_rates
from ._settings import MonitorSettings, open_sinks
from .run_pages import write_run_pages

if TYPE_CHECKING:
    from ..snapshot_runner import SnapshotRunner

STATE_FILE = "aquin_monitor_state.json"


class TrainerEmbeddingMonitor(TrainerCallback, ExportableState):
    """Monitor an embedding fine-tune in the sentence-transformers or Hugging Face ``Trainer``.

    Every optimizer step (respecting ``gradient_accumulation_steps``) it logs ``grad_norm/<group>``,
    the contrastive decomposition of a loss wrapped with :func:`aquin_monitor.capture.monitored`, the
    learning rate the step applies (``optim/lr``, ``optim/lr/group.N`` per parameter group when there
    are several), and alarms, to the integrations named in ``args.report_to`` (``tensorboard``, ``wandb``) and always to
    ``metrics.jsonl`` / ``events.jsonl`` in ``output_dir`` (default: ``args.output_dir``).

    Pre-clip gradients, as in Lightning: the Trainer clips *before* its ``on_pre_optimizer_step`` hook,
    so by default (``take_over_clipping=True``) this callback performs the clipping itself, right
    after measuring: it sets ``args.max_grad_norm`` to 0 for the run and calls
    ``torch.nn.utils.clip_grads_with_norm_`` with the same ``max_grad_norm`` and the total norm it just
    computed (bit-identical to ``get_total_norm``), so the optimizer receives exactly the gradients it
    would have received. Under DeepSpeed or FSDP (which clip themselves) or with
    ``take_over_clipping=False`` it leaves clipping alone and logs under ``grad_norm_post_clip/``.

    Evaluation: the trainer's own evaluation results (``eval_loss``, a sentence-transformers evaluator's
    ``eval_<name>_...``) go to ``evaluations.jsonl`` at each ``on_evaluate`` during training (timing, epoch
    and our own :class:`~aquin_monitor.callbacks.evaluator.SnapshotEvaluator` metrics left out), and the report
    shows them beside the snapshots.

    Histograms of the positive and negative similarities: every ``histogram_every`` steps; by default
    about 20 per run (``ceil(max_steps / 20)``). ``tensor_norms_every=N`` adds each parameter's gradient
    norm, ``grad_norm_tensor/<parameter>``, every N steps.

    Snapshots: with ``snapshots=SnapshotRunner(probe, retrieval)``, the base model is snapshotted at
    train start, then every ``snapshot_every``-th checkpoint save and at the end, on rank zero, under
    ``<output_dir>/snapshots/<step>/`` and diffed against the base and the previous snapshot.

    At train end (``report=True``, the default) it writes ``report.html`` into the run folder, as the
    recipes do; when the snapshots used an SAE (``SnapshotRunner(sae=...)``), also ``sae.html``, the
    feature browser of the last snapshot's probe, which the report links.

    Resume: the monitor's state is written into each ``checkpoint-N`` folder (and exported through
    ``ExportableState``), and a resumed run continues from it without duplicated steps.

    Example::

        from sentence_transformers import SentenceTransformerTrainer
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from aquin_monitor.callbacks import TrainerEmbeddingMonitor
        from aquin_monitor.capture import monitored

        trainer = SentenceTransformerTrainer(
            model=model, train_dataset=pairs, loss=monitored(MultipleNegativesRankingLoss(model)),
            callbacks=[TrainerEmbeddingMonitor(stop_on=["nan"])],
        )
        trainer.train()
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
        take_over_clipping: bool = True,
        snapshots: SnapshotRunner | None = None,
        snapshot_every: int = 1,
    ):
        self._init_args = {
            "output_dir": output_dir,
            "log_every": log_every,
            "histogram_every": histogram_every,
            "tensor_norms_every": tensor_norms_every,
            "report": report,
            "stop_on": list(stop_on),
            "strict": strict,
            "take_over_clipping": take_over_clipping,
        }
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
        self.take_over_clipping = take_over_clipping
        self.monitor = None
        self._restored_state: dict | None = None
        self._clip_norm: float | None = None

    # -- training ---------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from ..sinks import JsonlSink, sinks_for_hf

        self.run_dir = self.settings.output_dir or args.output_dir
        rank_zero = state.is_world_process_zero
        makers = [
            ("the trainer's report_to sinks", lambda: sinks_for_hf(args, self.run_dir)),
            ("the JSONL files", lambda: [JsonlSink(self.run_dir)]),
        ]
        sinks = open_sinks(makers, strict=self.settings.strict) if rank_zero else []
        distributed_clipping = bool(getattr(args, "deepspeed", None)) or bool(getattr(args, "fsdp", None))
        clipping = bool(args.max_grad_norm and args.max_grad_norm > 0)
        if self.take_over_clipping and clipping and not distributed_clipping:
            self._clip_norm = float(args.max_grad_norm)
            args.max_grad_norm = 0.0
        prefix = "grad_norm_post_clip/" if clipping and self._clip_norm is None else "grad_norm/"
        self.monitor = self.settings.build(
            sinks, rank_zero=rank_zero, run_dir=self.run_dir, grad_prefix=prefix, trainer_config=args.to_dict()
        )
        restored = self._restored_state or self._read_checkpoint_state(args, state)
        if restored:
            self.monitor.load_state_dict(restored)
        self.monitor.histogram_every = self.settings.histogram_steps(state.max_steps)
        self.monitor.start(model, state.global_step)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        # the learning rates this optimizer step applies (the scheduler steps after it)
        rates = host_learning_rates(optimizer.param_groups) if optimizer is not None else None
        total = self.monitor.on_optimizer_step(state.global_step + 1, model, learning_rates=rates)
        if self._clip_norm is not None:
            self.monitor.clip_gradients(model, self._clip_norm, total)
        if self.monitor.should_stop:
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.monitor is None or not state.is_world_process_zero:
            return
        if model is not None:
            self.monitor.on_checkpoint(model, state.global_step)
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            atomic_write_text(os.path.join(folder, STATE_FILE), json.dumps(self.monitor.state_dict()))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # the trainer's own evaluator results (eval_loss, eval_<evaluator>_...), for the report
        if self.monitor is not None and metrics:
            self.monitor.log_evaluation(trainer_evaluation(metrics), state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._clip_norm is not None:
            args.max_grad_norm = self._clip_norm
            self._clip_norm = None
        if self.monitor is not None:
            self.monitor.end(model, state.global_step)
            write_run_pages(self.monitor, report=self.settings.report, strict=self.settings.strict)

    # -- resume -----------------------------------------------------------------------------
    def _read_checkpoint_state(self, args, state) -> dict | None:
        if not state.global_step:
            return None
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    def state(self) -> dict:
        return {
            "args": dict(self._init_args),
            "attributes": {"_restored_state": self.monitor.state_dict() if self.monitor else None},
        }


#: What HF adds to every evaluation's metrics that measures the run, not the model.
_EVALUATION_BOOKKEEPING = ("epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def trainer_evaluation(metrics: dict) -> dict:
    """The model metrics of an HF evaluation: without timing and epoch, and without the metrics of our own
    :class:`~aquin_monitor.callbacks.evaluator.SnapshotEvaluator` (``eval_geometry/...``: the snapshots hold them).

    >>> trainer_evaluation({"eval_loss": 0.5, "eval_runtime": 2.0, "epoch": 1.0, "eval_geometry/anisotropy": 0.1,
    ...                     "eval_sts-dev_spearman_cosine": 0.8})
    {'eval_loss': 0.5, 'eval_sts-dev_spearman_cosine': 0.8}
    """
    from ..snapshot_record import SNAPSHOT_FAMILIES

    def ours(key: str) -> bool:
        return key.removeprefix("eval_").split("/", 1)[0] in SNAPSHOT_FAMILIES and "/" in key

    return {key: value for key, value in metrics.items() if key not in _EVALUATION_BOOKKEEPING and not ours(key)}
