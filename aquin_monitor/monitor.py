"""The framework-free core: per-step monitoring (:class:`StepMonitor`).

The trainer callbacks (:mod:`aquin_monitor.callbacks`) translate hook calls into calls here:
:meth:`StepMonitor.start` as training starts or resumes, :meth:`StepMonitor.on_optimizer_step` once
per optimizer step with the gradients in place (then :meth:`StepMonitor.clip_gradients` where the
trainer's own clipping had to be taken over), :meth:`StepMonitor.on_checkpoint` per checkpoint save
and :meth:`StepMonitor.end`. Alarms are decided by :mod:`aquin_monitor.alarms`, snapshots taken by
:mod:`aquin_monitor.snapshot_runner`; everything the monitor computes comes from :mod:`aquin_monitor.signals`;
everything it writes goes to sinks.

Cost discipline (the product promise is ~1% of a training step):

- gradient norms: one fused ``_foreach_norm`` plus a scatter-add (:func:`grouped_grad_norms`);
- contrastive statistics: device-side sums of the score matrices the losses reported, reduced by the
  tap at this call (after ``backward()``, so their kernel launches overlap the device's backward pass)
  and accumulated over micro-batches;
- one host transfer per step, of one small vector. On CUDA it is asynchronous (pinned buffer and an
  event) and read one step later, so the monitor never stalls the device queue;
- DDP: one ``all_reduce`` of the contrastive sums (gradients are already identical across ranks),
  so every rank takes the same alarm and stop decisions, and only rank zero writes;
- FSDP (sharded gradients, :mod:`aquin_monitor.distributed`): the same ``all_reduce`` also sums each
  group's squared norm over the ranks' local shards (``2·G + 1`` more numbers, ``2·P`` more on
  ``tensor_norms_every`` steps), so the norms are those of the whole gradients.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from .alarms import (
    ALARM_KINDS,
    Alarm,
    AlarmConfig,
    AlarmWarning,
    Anomaly,
    CollapseCheck,
    FalseNegativeCheck,
    GapNarrowingCheck,
    GradientAnomalyDetector,
    HostSideChecks,
    LearningRateJumpCheck,
    PlateauCheck,
    loss_alarm,
)
from .capture import ContrastiveTap, default_tap
from .distributed import gradient_shares, rank_and_world_size
from .failsoft import report_failure
from .sharded_gradients import ShardedGradientNorms
from .signals.contrastive import STAT_FIELDS, ContrastiveSums, drop_nan, finalize
from .signals.gradients import (
    ParameterGroups,
    gradient_presence,
    group_parameters,
    grouped_grad_norms,
    groups_with_gradient,
    parameter_grad_norms,
)
from .sinks.base import as_sink

if TYPE_CHECKING:
    from .snapshot_runner import SnapshotSchedule

logger = logging.getLogger(__name__)

__all__ = [
    "StepMonitor",
    "StepLayout",
    "ALARM_KINDS",
    "Alarm",
    "AlarmConfig",
    "AlarmWarning",
    "default_histogram_every",
    "learning_rate_metrics",
    "host_learning_rates",
]

#: histogram steps per run aimed at when the trainer knows its length (:func:`default_histogram_every`)
HISTOGRAMS_PER_RUN = 20


def default_histogram_every(total_steps: int | float | None, fallback: int = 50) -> int:
    """Histogram interval giving about :data:`HISTOGRAMS_PER_RUN` histograms over ``total_steps`` optimizer steps.

    ``ceil(total_steps / 20)``, at least 1; ``fallback`` when the length is unknown (None, 0, negative
    or infinite, as Lightning's ``estimated_stepping_batches`` is for an endless loader).

    >>> default_histogram_every(28), default_histogram_every(1000), default_histogram_every(5)
    (2, 50, 1)
    >>> default_histogram_every(None), default_histogram_every(float("inf"))
    (50, 50)
    """
    if total_steps is None or not np.isfinite(total_steps) or total_steps <= 0:
        return fallback
    return max(1, int(np.ceil(total_steps / HISTOGRAMS_PER_RUN)))


def learning_rate_metrics(learning_rates: Sequence[float]) -> dict[str, float]:
    """``optim/lr`` for one parameter group, ``optim/lr/group.N`` for each of several.

    >>> learning_rate_metrics([2e-5])
    {'optim/lr': 2e-05}
    >>> learning_rate_metrics([1e-3, 1e-4])
    {'optim/lr/group.0': 0.001, 'optim/lr/group.1': 0.0001}
    """
    if len(learning_rates) == 1:
        return {"optim/lr": float(learning_rates[0])}
    return {f"optim/lr/group.{i}": float(lr) for i, lr in enumerate(learning_rates)}


def host_learning_rates(param_groups: Sequence[dict]) -> list[float] | None:
    """The ``lr`` of each optimizer parameter group as host floats; one value when the groups share
    their base learning rate; None when one is a device tensor (reading it would synchronise with the
    device, so such learning rates are not logged).

    The base learning rate is a group's ``initial_lr`` (set by torch's schedulers, constant for the
    run), else its ``lr``: the Hugging Face Trainer's two groups (with and without weight decay) give
    one ``optim/lr``, groups configured with different rates one ``optim/lr/group.N`` each, and the
    choice does not change during the run.

    >>> host_learning_rates([{"lr": 0.1}, {"lr": torch.tensor(0.01)}])
    [0.1, 0.009999999776482582]
    >>> host_learning_rates([{"lr": 0.05, "initial_lr": 0.1}, {"lr": 0.05, "initial_lr": 0.1}])
    [0.05]
    """
    rates, bases = [], set()
    for group in param_groups:
        lr = group.get("lr")
        if isinstance(lr, torch.Tensor):
            if lr.device.type != "cpu":
                return None
            lr = lr.item()
        if lr is None:
            return None
        rates.append(float(lr))
        base = group.get("initial_lr", lr)
        bases.add(id(base) if isinstance(base, torch.Tensor) and base.device.type != "cpu" else float(base))
    return rates[:1] if len(bases) == 1 else rates


class StepLayout(NamedTuple):
    """What a step's packed vector holds after the norms and reduced sums, and host-side extras."""

    positives: int  # histogram samples of positive similarities
    negatives: int  # ... of negative similarities
    silent: tuple[int, ...]  # group indices not logged (no gradient yet)
    tensor_names: tuple[str, ...] = ()  # parameters whose gradient norms follow the samples
    learning_rates: tuple[float, ...] = ()  # host floats, per optimizer parameter group
    # sharded gradients: the world size, and the norms are followed by G + 1 reduced counts (ranks holding a
    # gradient per group, ranks whose part is in), from which the host decides the silent groups; 0: not sharded
    sharded_over: int = 0


class StepMonitor:
    """Per-step gradient norms, contrastive decomposition and alarms, written to sinks.

    Args:
        sinks: where metrics go (:mod:`aquin_monitor.sinks`); empty on non-zero ranks.
        log_every: compute and log every N optimizer steps.
        histogram_every: log positive/negative similarity histograms every N steps (0: never). The
            callbacks default to :func:`default_histogram_every` of the trainer's length when it is known.
        tensor_norms_every: every N steps, also log ``grad_norm_tensor/<parameter name>``, each
            trainable parameter's gradient norm (0: never; the view ``wandb.watch`` users know). The
            norms are the per-parameter output of the fused norm the groups are summed from: no
            extra device work, only a longer host copy on those steps.
        alarms: thresholds (:class:`AlarmConfig`).
        stop_on: alarm kinds that set :attr:`should_stop` (the callback stops the trainer).
        strict: re-raise failures instead of warning once and switching the failing part off.
        tap: the contrastive tap losses report to (default: the process-wide one).
        warn: emit a Python :class:`AlarmWarning` per alarm (rank zero).
        background: on CUDA, do the host side of a step (alarm detection, sink writes) in a worker
            thread while the next step's backward pass runs (see :class:`HostWorker`); False does it
            on the training thread at the next step. Results and decisions are the same either way.
        grad_prefix: metric prefix of the gradient norms (``grad_norm_post_clip/`` when a trainer
            clips before the monitor can measure).
        snapshots: when to take checkpoint snapshots (:class:`~aquin_monitor.snapshot_runner.SnapshotSchedule`),
            on the rank that writes; None: no snapshots.
        run_dir: where snapshots are saved.

    A ``stop_on`` alarm of kind ``nan`` also discards the update of the step on which it is decided
    (every gradient is set to None before the optimizer runs, so the weights stay finite): on CPU
    that is the NaN step itself; on CUDA, where a step's numbers are read one step later, it is
    the step after it (the NaN step's own update has then already been applied).

    Example (framework-free)::

        monitor = StepMonitor([JsonlSink("runs/x")])
        for step, batch in enumerate(loader, 1):
            loss = info_nce(model(batch.q), model(batch.d))   # reports its similarity matrix
            loss.backward()
            monitor.on_optimizer_step(step, model)
            optimizer.step(); optimizer.zero_grad()
        monitor.close()
    """

    def __init__(
        self,
        sinks: Sequence = (),
        *,
        log_every: int = 1,
        histogram_every: int = 50,
        tensor_norms_every: int = 0,
        alarms: AlarmConfig | None = None,
        stop_on: Sequence[str] = (),
        strict: bool = False,
        tap: ContrastiveTap | None = None,
        warn: bool = True,
        background: bool = True,
        grad_prefix: str = "grad_norm/",
        snapshots: SnapshotSchedule | None = None,
        run_dir: str | os.PathLike | None = None,
    ):
        unknown = set(stop_on) - set(ALARM_KINDS)
        if unknown:
            raise ValueError(f"stop_on names unknown alarm kinds {sorted(unknown)}; known: {list(ALARM_KINDS)}")
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.sinks = [as_sink(sink) for sink in sinks]  # optional sink methods are no-ops, never probed
        self.log_every = log_every
        self.histogram_every = histogram_every
        self.tensor_norms_every = tensor_norms_every
        self.alarm_config = alarms or AlarmConfig()
        self.stop_on = tuple(stop_on)
        self.strict = strict
        self.tap = tap or default_tap()
        self.tap.strict = strict
        self.warn = warn
        self.enabled = True
        self.grad_prefix = grad_prefix
        self.snapshots = snapshots
        self.run_dir = run_dir
        self._discard_update = False
        self.should_stop = False
        self.alarms: list[Alarm] = []
        self.last_step = 0
        self.groups: ParameterGroups | None = None
        self.detector: GradientAnomalyDetector | None = None
        self.host_checks = HostSideChecks(self.alarm_config)
        self._pending: tuple | None = None
        self._host: torch.Tensor | None = None  # pinned buffer of the asynchronous host copy (CUDA)
        self.background = background
        self._worker: HostWorker | None = None
        self._pending_state: dict | None = None
        self._reduced_step: int | None = None  # last step this rank joined the cross-rank all_reduce
        self._reduce_device: torch.device | None = None
        self._joins_reduce = True  # False once every rank has switched its monitor off
        self.sharded: ShardedGradientNorms | None = None  # set by attach when the gradients are sharded
        self._wrapper: torch.nn.Module | None = None  # the strategy's wrapper of the model (see attach)

    # the host-side checks, by the names they had as attributes of their own
    @property
    def gap_check(self) -> GapNarrowingCheck:
        return self.host_checks.gap

    @property
    def false_negative_check(self) -> FalseNegativeCheck:
        return self.host_checks.false_negatives

    @property
    def collapse_check(self) -> CollapseCheck:
        return self.host_checks.collapse

    @property
    def plateau_check(self) -> PlateauCheck:
        return self.host_checks.plateau

    @property
    def lr_jump_check(self) -> LearningRateJumpCheck:
        return self.host_checks.lr_jump

    # -- wiring -------------------------------------------------------------------------------
    def attach(self, model: torch.nn.Module, wrapper: torch.nn.Module | None = None) -> None:
        r"""Group the model's trainable parameters (once; call again if trainability changes).

        ``wrapper``: the model as the trainer's strategy wrapped it, when that wrapper is not among
        ``model``'s own modules (an FSDP1 ``FullyShardedDataParallel`` around a LightningModule): its
        modules say which parameters are sharded. FSDP2 needs none (its parameters are ``DTensor``\ s).
        """
        self.groups = group_parameters(model.named_parameters())
        modules = list(model.modules()) + (list(wrapper.modules()) if wrapper is not None else [])
        shares = gradient_shares(self.groups.parameters, modules)
        self.sharded = None if shares is None else ShardedGradientNorms(self.groups, shares)
        # groups none of whose parameters has had a gradient yet (a sentence-transformers model's unused
        # pooler) are not logged: a constant 0 would read as a measured norm. The detector still sees 0.
        self._had_gradient = np.zeros(len(self.groups.names), dtype=bool)
        names = list(self.groups.names) + ["total"]
        self.detector = GradientAnomalyDetector(names, self.alarm_config.gradients)
        if self._pending_state is not None:
            self._load_detector(self._pending_state)

    # -- per step -----------------------------------------------------------------------------
    def on_optimizer_step(
        self, step: int, model: torch.nn.Module | None = None, learning_rates: Sequence[float] | None = None
    ) -> torch.Tensor | None:
        """Measure the gradients now in ``.grad`` (before the optimizer step) as step ``step``.

        ``learning_rates``: host floats, the ``lr`` of each optimizer parameter group this step applies
        (:func:`host_learning_rates`), logged as ``optim/lr`` (``optim/lr/group.N`` when several).

        Returns the total gradient norm as a device tensor (bit-identical to
        ``torch.nn.utils.get_total_norm``), so a caller can reuse it for clipping; None if skipped.
        """
        if not self.enabled:
            self.tap.discard()
            self._answer_peers(step, model)
            return None
        try:
            total = self._step(step, model, tuple(learning_rates or ()))
        except Exception as exc:  # noqa: BLE001 - monitoring must never kill training
            self._fail("per-step monitoring", exc)
            self._answer_peers(step, model)
            return None
        if self._discard_update and model is not None:
            self.discard_update(model)
        return total

    def discard_update(self, model: torch.nn.Module) -> None:
        """Set every gradient of ``model`` to None: the optimizer step that follows changes no weight
        (torch optimizers skip parameters without a gradient), so a NaN step never reaches the weights."""
        for parameter in model.parameters():
            parameter.grad = None
        self._discard_update = False

    def clip_gradients(self, model: torch.nn.Module, max_norm: float, total: torch.Tensor | None) -> None:
        """Clip ``model``'s gradients to ``max_norm`` as ``clip_grad_norm_`` would, reusing ``total`` (this
        step's total norm, from :meth:`on_optimizer_step`) when it covers the same gradients."""
        params = [p for p in model.parameters() if p.grad is not None]
        if (
            total is None
            or self.groups is None
            or len(params) != sum(p.grad is not None for p in self.groups.parameters)
        ):
            total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)

    def _step(
        self, step: int, model: torch.nn.Module | None, learning_rates: tuple[float, ...] = ()
    ) -> torch.Tensor | None:
        if step <= self.last_step and self._pending is None and self.last_step:
            # resumed run replaying steps already logged: drop them, never log a step twice
            self.tap.discard()
            return None
        if self.groups is None:
            if model is None:
                raise ValueError("StepMonitor.on_optimizer_step needs the model on its first call")
            self.attach(model, self._wrapper)
        assert self.groups is not None  # attach() set it
        next_step = step + 1
        self.tap.keep_samples = bool(self.histogram_every) and next_step % self.histogram_every == 0
        if step % self.log_every:
            self.tap.discard()
            return None
        reading = self.tap.drain()
        present = gradient_presence(self.groups)
        tensor_step = self._tensor_step(step, present)
        if self.sharded is None:
            per_param = parameter_grad_norms(self.groups, present)
            norms = grouped_grad_norms(self.groups, present, per_param)
            if not self._had_gradient.all():
                self._had_gradient |= groups_with_gradient(self.groups, present)
            shard_part = norms[:0]
        else:  # the norms come out of the reduction below
            per_param, shard_part = self.sharded.local_vector(present, tensor_step)
        silent = tuple(np.flatnonzero(~self._had_gradient).tolist())
        device = norms.device if self.sharded is None else shard_part.device
        sums = (reading.sums if reading.sums is not None else ContrastiveSums.zeros(device)).values.to(device)
        if reading.loss_sum is not None:
            loss = torch.stack([reading.loss_sum.to(device), torch.full((), float(reading.loss_count), device=device)])
        else:
            loss = torch.zeros(2, device=device)
        # the last entry counts the ranks whose monitor still runs (see _answer_peers)
        reduced = torch.cat([shard_part.to(device), sums, loss, torch.ones(1, device=device)])
        world_size = rank_and_world_size()[1]
        if world_size > 1:
            torch.distributed.all_reduce(reduced)
            self._reduced_step, self._reduce_device = step, device
        if self.sharded is not None:
            norms, bookkeeping, tensor_norms, reduced = self.sharded.split(reduced, tensor_step)
            reduced = torch.cat([bookkeeping, reduced])
            per_param = tensor_norms if tensor_step else per_param
            present = None  # the tensor view covers every parameter
        # histogram samples (every histogram_every steps) ride in the same copy; their sizes are shapes
        pos = [p.detach().float().reshape(-1).to(device) for p in reading.positive_samples]
        neg = [x.detach().float().reshape(-1).to(device) for x in reading.negative_samples]
        tensors = self._tensor_names(present) if tensor_step else ()
        layout = StepLayout(
            sum(p.numel() for p in pos),
            sum(x.numel() for x in neg),
            silent,
            tensors,
            learning_rates,
            world_size if self.sharded else 0,
        )
        packed = torch.cat(
            [norms, reduced, *pos, *neg, per_param.to(device)] if tensors else [norms, reduced, *pos, *neg]
        )
        self._drain_pending()
        if self._asynchronous(packed):
            host, event = self._copy_to_host(packed)
            self._pending = (step, host, event, layout)
            if self.background:
                if self._worker is None:
                    self._worker = HostWorker(self._process)
                self._worker.submit(step, host, event, layout)
                self.tap.arm(functools.partial(self._worker.start, step))
        else:
            self._process(step, packed.numpy(), layout)
        return norms[-1]

    def _tensor_step(self, step: int, present) -> bool:
        """Whether this step logs ``grad_norm_tensor/<parameter>`` (a ``tensor_norms_every`` step with gradients)."""
        if not self.tensor_norms_every or step % self.tensor_norms_every:
            return False
        return self.sharded is not None or present is None or bool(present)

    def _tensor_names(self, present) -> tuple[str, ...]:
        """Parameter names of the per-parameter norms of a tensor step (``present``: whose gradients were measured)."""
        assert self.groups is not None  # a step is measured only once attached
        names = self.groups.parameter_names
        return tuple(names) if present is None else tuple(names[i] for i in present)

    @staticmethod
    def _asynchronous(packed: torch.Tensor) -> bool:
        """Whether the step's vector is copied to the host asynchronously (CUDA) or read now (CPU)."""
        return packed.is_cuda

    def _copy_to_host(self, packed: torch.Tensor):
        """Start the asynchronous copy of ``packed`` to page-locked memory; the event marks its end."""
        host = self._pinned(packed.numel())
        host.copy_(packed, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _pinned(self, n: int) -> torch.Tensor:
        """A page-locked host buffer of ``n`` float32, reused across steps (the previous copy was read)."""
        if self._host is None or self._host.numel() < n:
            self._host = torch.empty(
                max(n, 2 * (self._host.numel() if self._host is not None else 0)), dtype=torch.float32, pin_memory=True
            )
        return self._host[:n]

    def _answer_peers(self, step: int, model: torch.nn.Module | None) -> None:
        """Keep joining the per-step all_reduce after this rank's monitor switched itself off.

        Peers whose monitor still runs make one all_reduce per logged step; a rank that stopped
        making it would leave them waiting forever (a deadlock, where a warning was promised). This
        rank adds zeros, so the peers' means cover the ranks still measuring, and 0 to the running
        count; once that count is 0 every rank reads it in the same reduced vector and all stop.
        """
        if (
            not self._joins_reduce
            or rank_and_world_size()[1] < 2
            or step % self.log_every
            or step == self._reduced_step
            or (self.last_step and step <= self.last_step)  # peers skip replayed steps too
        ):
            return
        device = self._reduce_device
        if device is None:
            device = next(model.parameters()).device if model is not None else torch.device("cpu")
        if self.groups is None and model is not None:  # failed before its first step: the peers' vector has the shards
            try:
                self.attach(model, self._wrapper)
            except Exception as exc:  # noqa: BLE001 - then this rank's vector is the short one: the reduction fails below
                logger.warning("aquin-monitor: cannot group the parameters to answer the peers: %r", exc)
        vector = torch.cat([self._shards_for_peers(step, device), torch.zeros(len(STAT_FIELDS) + 3, device=device)])
        try:
            torch.distributed.all_reduce(vector)
        except Exception as exc:  # noqa: BLE001 - a broken process group: nothing left to answer
            logger.warning("aquin-monitor: leaving the cross-rank reduction: %r", exc)
            self._joins_reduce = False
            return
        self._reduced_step = step
        if float(vector[-1]) == 0:
            self._joins_reduce = False

    def _shards_for_peers(self, step: int, device: torch.device) -> torch.Tensor:
        """A switched-off rank's part of the sharded norms: its local shards if it can still measure them
        (the peers' norms stay whole), else zeros, which tell the peers the step's norms are partial."""
        if self.sharded is None:
            return torch.zeros(0, device=device)
        tensor_step = self._tensor_step(step, ())
        try:
            return self.sharded.local_vector(gradient_presence(self.sharded.groups), tensor_step)[1].to(device)
        except Exception:  # noqa: BLE001 - whatever switched this rank off may fail here too
            return self.sharded.zeros(tensor_step, device)

    def _drain_pending(self) -> None:
        """Finish the previous step's host-side work (CUDA): wait for it, or do it now."""
        if self._pending is None:
            return
        step, host, event, layout = self._pending
        self._pending = None
        if self._worker is not None:
            self._worker.finish(step)  # re-raises here what failed in the worker
        else:
            event.synchronize()
            self._process(step, host.numpy(), layout)

    def _process(self, step: int, vector: np.ndarray, layout: StepLayout) -> None:
        """Host side of step ``step``: ``layout`` says what ``vector`` holds beyond the norms and sums."""
        layout = StepLayout(*layout)
        groups = self.groups
        assert groups is not None  # a step is measured only once attached
        n = len(groups.names) + 1
        norms = vector[:n].astype(np.float64)
        silent, measured = set(layout.silent), True
        if layout.sharded_over:
            holding, contributing = vector[n : 2 * n - 1], vector[2 * n - 1]
            self._had_gradient |= holding > 0
            silent = set(np.flatnonzero(~self._had_gradient).tolist())
            # a rank whose monitor failed and could not add its shards: these norms would be partial
            measured = contributing >= layout.sharded_over
            if not measured:
                silent = set(range(n))
            n = 2 * n
        sums = vector[n : n + len(STAT_FIELDS)]
        loss_sum, loss_count = float(vector[n + len(STAT_FIELDS)]), float(vector[n + len(STAT_FIELDS) + 1])
        metrics: dict[str, float] = {
            name: value
            for i, (name, value) in enumerate(zip(groups.metric_names(self.grad_prefix), norms.tolist()))
            if i not in silent
        }
        contrastive = finalize(torch.from_numpy(np.asarray(sums, dtype=np.float64)))
        metrics.update({f"contrastive/{k}": v for k, v in contrastive.items()})
        loss = loss_sum / loss_count if loss_count else None
        if loss is not None:
            metrics["contrastive/loss"] = loss
        end = n + len(STAT_FIELDS) + 3
        samples_end = end + layout.positives + layout.negatives
        tensor_norms = vector[samples_end : samples_end + len(layout.tensor_names)].astype(np.float64).tolist()
        # sharded: [P] norms, then how many ranks hold each gradient (a parameter nobody holds one for is left out)
        holders = (
            vector[samples_end + len(layout.tensor_names) :] if layout.sharded_over else np.ones(len(tensor_norms))
        )
        holders = holders if measured else np.zeros(len(tensor_norms))
        metrics.update(
            {
                f"grad_norm_tensor/{name}": value
                for name, value, held in zip(layout.tensor_names, tensor_norms, holders)
                if held > 0
            }
        )
        if layout.learning_rates:
            metrics.update(learning_rate_metrics(layout.learning_rates))

        alarms = self._alarms(
            step, norms if measured else None, loss, contrastive, tuple(sorted(silent)), layout.learning_rates
        )
        for alarm in alarms:
            metrics[f"alarm/{alarm.kind}"] = 1.0
        self.last_step = step
        for sink in self.sinks:
            sink.log_scalars(metrics, step)
        hist_pos = vector[end : end + layout.positives]
        hist_neg = drop_nan(vector[end + layout.positives : samples_end])
        for tag, values in (("contrastive/pos_sim_hist", hist_pos), ("contrastive/neg_sim_hist", hist_neg)):
            if values.size:
                for sink in self.sinks:
                    sink.log_histogram(tag, np.array(values, dtype=np.float32), step)
        for alarm in alarms:
            for sink in self.sinks:
                sink.log_event(alarm.as_event())

    def _alarms(
        self,
        step: int,
        norms: np.ndarray | None,
        loss: float | None,
        contrastive: dict,
        no_gradient=(),
        learning_rates: Sequence[float] = (),
    ) -> list[Alarm]:
        """This step's alarms; ``norms`` None: the gradient norms are not known this step (nothing to detect);
        ``learning_rates`` empty: not known (no plateau check)."""
        anomalies: list[Anomaly] = []
        if norms is not None:
            assert self.detector is not None  # attach() made it, before any norm is measured
            anomalies = self.detector.update(norms, step, no_gradient)
        found = [Alarm(step, a.kind, a.group, a.message, a.value) for a in anomalies]
        loss_is_nan = loss_alarm(step, loss)
        if loss_is_nan is not None:
            found.append(loss_is_nan)
        found.extend(self.host_checks.update(step, contrastive, loss, learning_rates))
        self.alarms.extend(found)
        for alarm in found:
            if self.warn and self.sinks:
                warnings.warn(f"aquin-monitor alarm [{alarm.kind}] {alarm.message}", AlarmWarning, stacklevel=4)
            if alarm.kind in self.stop_on:
                self.should_stop = True
                if alarm.kind == "nan":
                    self._discard_update = True
        return found

    # -- lifecycle ----------------------------------------------------------------------------
    def start(
        self,
        model: torch.nn.Module,
        step: int,
        snapshot_model: torch.nn.Module | None = None,
        wrapper: torch.nn.Module | None = None,
    ) -> None:
        """Training starts (``step`` 0) or resumes (``step`` > 0) with ``model``.

        A fresh run moves an earlier run's files aside; the parameters are grouped (``wrapper``: see
        :meth:`attach`); the base snapshot (or, on resume without saved snapshots, one of the resumed model)
        is taken of ``snapshot_model`` (default: ``model``; the SentenceTransformer inside a LightningModule).
        """
        self._wrapper = wrapper
        if step == 0 and self.last_step == 0:
            self.start_fresh()
        elif step > 0 and self.last_step == 0 and self.warn:
            warnings.warn(
                f"aquin-monitor: resumed at step {step} without the monitor's saved state "
                "(the checkpoint has none, e.g. the run was killed while saving it): the alarm history "
                "starts afresh and the steps up to the checkpoint are kept as logged",
                RuntimeWarning,
                stacklevel=3,
            )
        if self.groups is None:
            self.attach(model, wrapper)
        # the first step's scores are kept when it is a histogram step (later steps arm the next one)
        self.tap.keep_samples = bool(self.histogram_every) and (step + 1) % self.histogram_every == 0
        if self.snapshots is not None:
            tag = self.snapshots.at_start(self.run_dir, step)
            if tag is not None:
                self.snapshot(snapshot_model or model, step, tag)

    def on_checkpoint(self, model: torch.nn.Module, step: int) -> None:
        """A checkpoint was saved at ``step``: snapshot it when the schedule says so."""
        if self.snapshots is not None and self.snapshots.at_save(step):
            self.snapshot(model, step)

    def end(self, model: torch.nn.Module | None, step: int) -> None:
        """Training ended at ``step``: the last snapshot (unless one was taken at this step), then :meth:`close`,
        then the run's retrieval verdict in one line on stdout (:meth:`say_verdict`)."""
        if self.snapshots is not None and model is not None and self.snapshots.at_end(step):
            self.snapshot(model, step)
        self.close()
        self.say_verdict()

    def say_verdict(self) -> str | None:
        """Print the run's retrieval verdict (:func:`aquin_monitor.verdict.run_verdict`: the one the last
        snapshot recorded against the base, or why there is none and how to get one), on the rank that
        writes; returns the sentence (None on the other ranks). Never raises (``strict`` re-raises)."""
        if not (self.warn and self.sinks):
            return None
        try:
            from .verdict import run_verdict

            runner = self.snapshots.runner if self.snapshots is not None else None
            taken = []  # the base and the last snapshot, once each
            if runner is not None and runner.base is not None:
                last = runner.previous
                taken = [runner.base] if last is None or last is runner.base else [runner.base, last]
            sentence, _ = run_verdict(taken)
            print(f"aquin-monitor: {sentence}", flush=True)
            return sentence
        except Exception as exc:  # noqa: BLE001 - a message is not worth the end of a run
            report_failure("printing the retrieval verdict", exc, strict=self.strict, outcome="is skipped")
            return None

    def log_evaluation(self, metrics: dict, step: int) -> None:
        """The trainer's own evaluation metrics at ``step`` (HF's ``eval_*``, Lightning's validation
        metrics) into the run's files, for the report; the trainer logs them to its dashboards itself.
        Non-numeric values are left out; a failure warns and training goes on."""
        values = {
            str(k): float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
        }
        if not values or not self.sinks:
            return
        try:
            for sink in self.sinks:
                sink.log_evaluation(values, step)
        except Exception as exc:  # noqa: BLE001 - an evaluation record is not worth the run
            report_failure(
                f"recording the trainer's evaluation at step {step}",
                exc,
                strict=self.strict,
                outcome="training goes on",
            )

    def snapshot(self, model: torch.nn.Module, step: int, tag: str = "checkpoint"):
        """Take, save and log a snapshot of ``model`` at ``step`` (after this step's metrics); None if it failed."""
        self.flush()  # this step's metrics before the snapshot's, and the host worker idle
        assert self.snapshots is not None, "StepMonitor.snapshot needs a SnapshotSchedule"
        snap = self.snapshots.runner.record(
            model, step, tag=tag, run_dir=self.run_dir, sinks=self.sinks, strict=self.strict
        )
        self.snapshots.taken(step)
        return snap

    def start_fresh(self) -> None:
        """A new run (step 0, nothing resumed): sinks move files an earlier run left in their folder aside."""
        for sink in self.sinks:
            try:
                sink.archive_previous_run()
            except Exception as exc:  # noqa: BLE001
                self._fail("moving an earlier run's files aside", exc)

    def flush(self) -> None:
        try:
            self._drain_pending()
            for sink in self.sinks:
                sink.flush()
        except Exception as exc:  # noqa: BLE001
            self._fail("flushing", exc)

    def close(self) -> None:
        self.flush()
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                self._fail("closing a sink", exc)

    def _fail(self, what: str, exc: Exception) -> None:
        report_failure(what, exc, strict=self.strict, stacklevel=4)
        self.enabled = False

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        self.flush()
        return {
            "last_step": self.last_step,
            "detector": self.detector.state_dict() if self.detector else None,
            **self.host_checks.state_dict(),  # flat keys, as before HostSideChecks: old checkpoints load
            "alarms": [a.as_event() for a in self.alarms],
        }

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state.get("last_step", 0))
        self.host_checks.load_state_dict(state)
        self.alarms = [Alarm(**a) for a in state.get("alarms", [])]
        self._pending_state = state.get("detector")
        if self.detector is not None and self._pending_state is not None:
            self._load_detector(self._pending_state)
        for sink in self.sinks:  # a resumed run replays the steps after the checkpoint: log them once
            sink.rewind(self.last_step)

    def _load_detector(self, detector_state: dict) -> None:
        assert self.detector is not None  # restored only once attached
        try:
            self.detector.load_state_dict(detector_state)
        except ValueError as exc:  # trainability changed between runs: start the history afresh
            warnings.warn(f"aquin-monitor: gradient history not restored: {exc}", RuntimeWarning, stacklevel=2)
        self._pending_state = None


class HostWorker:
    """Runs the host side of a CUDA step in a thread, while the training thread is inside ``backward()``.

    On a GPU whose step is bound by Python's kernel launches, every millisecond the training thread
    spends on the monitor's host work (robust statistics, protobuf and JSON encoding) is a millisecond
    of step time. ``backward()`` releases the GIL for its whole duration, so work done then is free;
    work done during the forward pass would take the GIL from the thread launching kernels. Hence:

    - :meth:`submit` hands over step ``s`` (pinned host buffer, CUDA event) at the monitor call;
    - the tap arms a pre-hook on the autograd node of the next reported loss or score matrix, which
      calls :meth:`start` as step ``s + 1``'s backward pass begins; the worker then waits for the
      event (long passed) and processes;
    - :meth:`finish`, at the next monitor call (or flush), starts it if no hook fired and waits for it.
      So step ``s``'s alarms and ``should_stop`` are known at step ``s + 1``'s monitor call on every
      rank, exactly as without the worker, and the worker never runs when the training thread is
      between monitor calls outside a backward pass (no concurrent writes to a trainer's logger).
    """

    def __init__(self, process) -> None:
        self._process = process
        self._cond = threading.Condition()
        self._started = 0  # the highest step allowed to start
        self._item: tuple | None = None
        self._done: int | None = None  # step of the last item finished
        self._error: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="aquin-monitor-host", daemon=True)
        self._thread.start()

    def submit(self, step: int, host: torch.Tensor, event, layout) -> None:
        with self._cond:
            self._item = (step, host, event, layout)
            self._done = None
            self._cond.notify_all()

    def start(self, step: int) -> None:
        with self._cond:
            if step > self._started:
                self._started = step
                self._cond.notify_all()

    def finish(self, step: int) -> None:
        self.start(step)
        with self._cond:
            self._cond.wait_for(lambda: self._done == step or not self._thread.is_alive())
            error, self._error = self._error, None
        if error is not None:
            raise error

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stopping or (self._item is not None and self._started >= self._item[0])
                )
                if self._item is None:  # stopping, nothing left
                    return
                step, host, event, layout = self._item
                self._item = None
            error: BaseException | None
            try:
                event.synchronize()
                self._process(step, host.numpy(), layout)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread by finish()
                error = exc
            else:
                error = None
            with self._cond:
                self._error = error
                self._done = step
                self._cond.notify_all()
