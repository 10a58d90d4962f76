"""The framework-free core: per-step monitoring (:class:`StepMonitor`).

The trainer callbacks (:mod:`aquin_monitor.callbacks`) translate hook calls into two calls here:
:meth:`StepMonitor.on_optimizer_step` once per optimizer step, with the gradients in place, and
:meth:`StepMonitor.close` at the end. Everything the monitor computes comes from
:mod:`aquin_monitor.signals`; everything it writes goes to sinks.

Cost discipline (the product promise is ~1% of a training step):

- gradient norms: one fused ``_foreach_norm`` plus a scatter-add (:func:`grouped_grad_norms`);
- contrastive statistics: device-side sums of the score matrices the losses reported, reduced by the
  tap at this call (after ``backward()``, so their kernel launches overlap the device's backward pass)
  and accumulated over micro-batches;
- one host transfer per step, of one small vector. On CUDA it is asynchronous (pinned buffer and an
  event) and read one step later, so the monitor never stalls the device queue;
- DDP: one ``all_reduce`` of the contrastive sums (gradients are already identical across ranks),
  so every rank takes the same alarm and stop decisions, and only rank zero writes.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .capture import ContrastiveTap, default_tap
from .signals.contrastive import STAT_FIELDS, ContrastiveSums, drop_nan, finalize
from .signals.geometry import robust_ood_threshold
from .signals.gradients import (
    DetectorConfig,
    GradientAnomalyDetector,
    ParameterGroups,
    gradient_presence,
    group_parameters,
    grouped_grad_norms,
    groups_with_gradient,
)
from .signals.neighbours import EXACT_KNN_MAX_POINTS, exact_knn

logger = logging.getLogger(__name__)

ALARM_KINDS = ("dead_layer", "spike", "nan", "gap_narrowing")


class AlarmWarning(UserWarning):
    """Raised (as a warning) when the training monitor fires an alarm."""


@dataclass
class AlarmConfig:
    """Alarm thresholds. Gradient alarms: see :class:`DetectorConfig`.

    Gap narrowing compares the first and second half of the last ``gap_window`` steps: it fires when
    the mean positive–negative gap dropped by more than ``gap_min_drop`` (similarity units) and by
    more than ``gap_rel_drop`` of its earlier value, while the mean loss fell.
    """

    gradients: DetectorConfig = field(default_factory=DetectorConfig)
    gap_window: int = 40
    gap_min_drop: float = 0.05
    gap_rel_drop: float = 0.2


@dataclass(frozen=True)
class Alarm:
    step: int
    kind: str
    layer: str | None
    message: str
    value: float | None = None

    def as_event(self) -> dict:
        return asdict(self)


class StepMonitor:
    """Per-step gradient norms, contrastive decomposition and alarms, written to sinks.

    Args:
        sinks: where metrics go (:mod:`aquin_monitor.sinks`); empty on non-zero ranks.
        log_every: compute and log every N optimizer steps.
        histogram_every: log positive/negative similarity histograms every N steps (0: never).
        alarms: thresholds (:class:`AlarmConfig`).
        stop_on: alarm kinds that set :attr:`should_stop` (the callback stops the trainer).
        strict: re-raise failures instead of warning once and switching the failing part off.
        tap: the contrastive tap losses report to (default: the process-wide one).
        warn: emit a Python :class:`AlarmWarning` per alarm (rank zero).
        background: on CUDA, do the host side of a step (alarm detection, sink writes) in a worker
            thread while the next step's backward pass runs (see :class:`_HostWorker`); False does it
            on the training thread at the next step. Results and decisions are the same either way.

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
        alarms: AlarmConfig | None = None,
        stop_on: Sequence[str] = (),
        strict: bool = False,
        tap: ContrastiveTap | None = None,
        warn: bool = True,
        background: bool = True,
    ):
        unknown = set(stop_on) - set(ALARM_KINDS)
        if unknown:
            raise ValueError(f"stop_on names unknown alarm kinds {sorted(unknown)}; known: {list(ALARM_KINDS)}")
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.sinks = list(sinks)
        self.log_every = log_every
        self.histogram_every = histogram_every
        self.alarm_config = alarms or AlarmConfig()
        self.stop_on = tuple(stop_on)
        self.strict = strict
        self.tap = tap or default_tap()
        self.tap.strict = strict
        self.warn = warn
        self.enabled = True
        self.grad_prefix = "grad_norm/"  # the HF callback names post-clip norms differently
        self.should_stop = False
        self.alarms: list[Alarm] = []
        self.last_step = 0
        self.groups: ParameterGroups | None = None
        self.detector: GradientAnomalyDetector | None = None
        self._gap_history: deque[tuple[float, float]] = deque(maxlen=self.alarm_config.gap_window)
        self._gap_cooldown_until = -1
        self._pending: tuple | None = None
        self._host: torch.Tensor | None = None  # pinned buffer of the asynchronous host copy (CUDA)
        self.background = background
        self._worker: _HostWorker | None = None
        self._pending_state: dict | None = None
        self._reduced_step: int | None = None  # last step this rank joined the cross-rank all_reduce
        self._reduce_device: torch.device | None = None
        self._joins_reduce = True  # False once every rank has switched its monitor off

    # -- wiring -------------------------------------------------------------------------------
    def attach(self, model: torch.nn.Module) -> None:
        """Group the model's trainable parameters (once; call again if trainability changes)."""
        self.groups = group_parameters(model.named_parameters())
        # groups none of whose parameters has had a gradient yet (a sentence-transformers model's unused
        # pooler) are not logged: a constant 0 would read as a measured norm. The detector still sees 0.
        self._had_gradient = np.zeros(len(self.groups.names), dtype=bool)
        names = list(self.groups.names) + ["total"]
        self.detector = GradientAnomalyDetector(names, self.alarm_config.gradients)
        if self._pending_state is not None:
            self._load_detector(self._pending_state)

    # -- per step -----------------------------------------------------------------------------
    def on_optimizer_step(self, step: int, model: torch.nn.Module | None = None) -> torch.Tensor | None:
        """Measure the gradients now in ``.grad`` (before the optimizer step) as step ``step``.

        Returns the total gradient norm as a device tensor (bit-identical to
        ``torch.nn.utils.get_total_norm``), so a caller can reuse it for clipping; None if skipped.
        """
        if not self.enabled:
            self.tap.discard()
            self._answer_peers(step, model)
            return None
        try:
            return self._step(step, model)
        except Exception as exc:  # noqa: BLE001 - monitoring must never kill training
            self._fail("per-step monitoring", exc)
            self._answer_peers(step, model)
            return None

    def _step(self, step: int, model: torch.nn.Module | None) -> torch.Tensor | None:
        if step <= self.last_step and self._pending is None and self.last_step:
            # resumed run replaying steps already logged: drop them, never log a step twice
            self.tap.discard()
            return None
        if self.groups is None:
            if model is None:
                raise ValueError("StepMonitor.on_optimizer_step needs the model on its first call")
            self.attach(model)
        next_step = step + 1
        self.tap.keep_samples = bool(self.histogram_every) and next_step % self.histogram_every == 0
        if step % self.log_every:
            self.tap.discard()
            return None
        reading = self.tap.drain()
        present = gradient_presence(self.groups)
        norms = grouped_grad_norms(self.groups, present)
        if not self._had_gradient.all():
            self._had_gradient |= groups_with_gradient(self.groups, present)
        silent = tuple(np.flatnonzero(~self._had_gradient).tolist())
        device = norms.device
        sums = (reading.sums if reading.sums is not None else ContrastiveSums.zeros(device)).values.to(device)
        if reading.loss_sum is not None:
            loss = torch.stack([reading.loss_sum.to(device), torch.full((), float(reading.loss_count), device=device)])
        else:
            loss = torch.zeros(2, device=device)
        # the last entry counts the ranks whose monitor still runs (see _answer_peers)
        reduced = torch.cat([sums, loss, torch.ones(1, device=device)])
        if _world_size() > 1:
            torch.distributed.all_reduce(reduced)
            self._reduced_step, self._reduce_device = step, device
        # histogram samples (every histogram_every steps) ride in the same copy; their sizes are shapes
        pos = [p.detach().float().reshape(-1).to(device) for p in reading.positive_samples]
        neg = [x.detach().float().reshape(-1).to(device) for x in reading.negative_samples]
        layout = (sum(p.numel() for p in pos), sum(x.numel() for x in neg), silent)
        packed = torch.cat([norms, reduced, *pos, *neg])
        self._drain_pending()
        if self._asynchronous(packed):
            host, event = self._copy_to_host(packed)
            self._pending = (step, host, event, layout)
            if self.background:
                if self._worker is None:
                    self._worker = _HostWorker(self._process)
                self._worker.submit(step, host, event, layout)
                self.tap.arm(functools.partial(self._worker.start, step))
        else:
            self._process(step, packed.numpy(), layout)
        return norms[-1]

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
            self._host = torch.empty(max(n, 2 * (self._host.numel() if self._host is not None else 0)), dtype=torch.float32, pin_memory=True)
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
            or _world_size() < 2
            or step % self.log_every
            or step == self._reduced_step
            or (self.last_step and step <= self.last_step)  # peers skip replayed steps too
        ):
            return
        device = self._reduce_device
        if device is None:
            device = next(model.parameters()).device if model is not None else torch.device("cpu")
        vector = torch.zeros(len(STAT_FIELDS) + 3, device=device)
        try:
            torch.distributed.all_reduce(vector)
        except Exception as exc:  # noqa: BLE001 - a broken process group: nothing left to answer
            logger.warning("aquin-monitor: leaving the cross-rank reduction: %r", exc)
            self._joins_reduce = False
            return
        self._reduced_step = step
        if float(vector[-1]) == 0:
            self._joins_reduce = False

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

    def _process(self, step: int, vector: np.ndarray, layout: tuple[int, int, tuple[int, ...]]) -> None:
        """Host side of step ``step``: ``layout`` = (positive samples, negative samples, group indices not logged)."""
        groups = self.groups
        n = len(groups.names) + 1
        norms = vector[:n].astype(np.float64)
        sums = vector[n : n + len(STAT_FIELDS)]
        loss_sum, loss_count = float(vector[n + len(STAT_FIELDS)]), float(vector[n + len(STAT_FIELDS) + 1])
        silent = set(layout[2])
        metrics: dict[str, float] = {
            name: value for i, (name, value) in enumerate(zip(groups.metric_names(self.grad_prefix), norms.tolist())) if i not in silent
        }
        contrastive = finalize(torch.from_numpy(np.asarray(sums, dtype=np.float64)))
        metrics.update({f"contrastive/{k}": v for k, v in contrastive.items()})
        loss = loss_sum / loss_count if loss_count else None
        if loss is not None:
            metrics["contrastive/loss"] = loss

        alarms = self._alarms(step, norms, loss, contrastive, layout[2])
        for alarm in alarms:
            metrics[f"alarm/{alarm.kind}"] = 1.0
        self.last_step = step
        for sink in self.sinks:
            sink.log_scalars(metrics, step)
        end = n + len(STAT_FIELDS) + 3
        hist_pos = vector[end : end + layout[0]]
        hist_neg = drop_nan(vector[end + layout[0] : end + layout[0] + layout[1]])
        for tag, values in (("contrastive/pos_sim_hist", hist_pos), ("contrastive/neg_sim_hist", hist_neg)):
            if values.size:
                for sink in self.sinks:
                    sink.log_histogram(tag, np.array(values, dtype=np.float32), step)
        for alarm in alarms:
            for sink in self.sinks:
                sink.log_event(alarm.as_event())

    def _alarms(self, step: int, norms: np.ndarray, loss: float | None, contrastive: dict, no_gradient=()) -> list[Alarm]:
        found = [Alarm(step, a.kind, a.group, a.message, a.value) for a in self.detector.update(norms, step, no_gradient)]
        if loss is not None and not math.isfinite(loss):
            found.append(Alarm(step, "nan", "loss", f"loss is {loss} at step {step}", loss))
        gap = contrastive.get("gap")
        if gap is not None and loss is not None and math.isfinite(gap) and math.isfinite(loss):
            found.extend(self._gap_alarm(step, gap, loss))
        self.alarms.extend(found)
        for alarm in found:
            if self.warn and self.sinks:
                warnings.warn(f"aquin-monitor alarm [{alarm.kind}] {alarm.message}", AlarmWarning, stacklevel=4)
            if alarm.kind in self.stop_on:
                self.should_stop = True
        return found

    def _gap_alarm(self, step: int, gap: float, loss: float) -> list[Alarm]:
        cfg = self.alarm_config
        self._gap_history.append((gap, loss))
        if len(self._gap_history) < cfg.gap_window or step < self._gap_cooldown_until:
            return []
        half = cfg.gap_window // 2
        hist = np.asarray(self._gap_history)
        gap_before, gap_now = hist[:half, 0].mean(), hist[half:, 0].mean()
        loss_before, loss_now = hist[:half, 1].mean(), hist[half:, 1].mean()
        drop = gap_before - gap_now
        if drop > cfg.gap_min_drop and drop > cfg.gap_rel_drop * abs(gap_before) and loss_now < loss_before:
            self._gap_cooldown_until = step + cfg.gap_window
            return [
                Alarm(
                    step,
                    "gap_narrowing",
                    None,
                    f"positive-negative similarity gap narrowed from {gap_before:.3f} to {gap_now:.3f} over the last "
                    f"{cfg.gap_window} steps while the loss fell ({loss_before:.3f} -> {loss_now:.3f}): negatives are being pulled in",
                    float(gap_now),
                )
            ]
        return []

    # -- lifecycle ----------------------------------------------------------------------------
    def start_fresh(self) -> None:
        """A new run (step 0, nothing resumed): sinks move files an earlier run left in their folder aside."""
        for sink in self.sinks:
            if hasattr(sink, "archive_previous_run"):
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
        if self.strict:
            raise exc
        self.enabled = False
        msg = f"aquin-monitor: {what} failed and is switched off for this run: {exc!r}"
        logger.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        self.flush()
        return {
            "last_step": self.last_step,
            "detector": self.detector.state_dict() if self.detector else None,
            "gap_history": [list(x) for x in self._gap_history],
            "gap_cooldown_until": self._gap_cooldown_until,
            "alarms": [a.as_event() for a in self.alarms],
        }

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state.get("last_step", 0))
        self._gap_history = deque((tuple(x) for x in state.get("gap_history", [])), maxlen=self.alarm_config.gap_window)
        self._gap_cooldown_until = int(state.get("gap_cooldown_until", -1))
        self.alarms = [Alarm(**a) for a in state.get("alarms", [])]
        self._pending_state = state.get("detector")
        if self.detector is not None and self._pending_state is not None:
            self._load_detector(self._pending_state)
        for sink in self.sinks:  # a resumed run replays the steps after the checkpoint: log them once
            if hasattr(sink, "rewind"):
                sink.rewind(self.last_step)

    def _load_detector(self, detector_state: dict) -> None:
        try:
            self.detector.load_state_dict(detector_state)
        except ValueError as exc:  # trainability changed between runs: start the history afresh
            warnings.warn(f"aquin-monitor: gradient history not restored: {exc}", RuntimeWarning, stacklevel=2)
        self._pending_state = None


class _HostWorker:
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

    def __init__(self, process):
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
                self._cond.wait_for(lambda: self._stopping or (self._item is not None and self._started >= self._item[0]))
                if self._item is None:  # stopping, nothing left
                    return
                step, host, event, layout = self._item
                self._item = None
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


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


# ---------------------------------------------------------------------------------------------
# Checkpoint snapshots
# ---------------------------------------------------------------------------------------------


class SnapshotRunner:
    """Probe set → every geometry, layer, attention, OOD and retrieval signal → :class:`Snapshot`.

    One forward pass per probe text yields the embeddings, every layer's pooled hidden states and (for
    ``max_attention_texts`` of them, evenly spaced over the probe: :func:`attention_sample`) every
    head's attention, in eval mode without gradients,
    on an inspection copy when LoRA adapters are present (merged; the training model is never
    mutated). Retrieval queries and documents reuse the probe's embeddings when the texts are in the
    probe and the model has no query/document prompts; anything else is encoded once.

    Args:
        probe: :class:`~aquin_monitor.data.ProbeSet` (texts, optional labels) or a list of texts.
        retrieval: optional :class:`~aquin_monitor.data.RetrievalSet` for retrieval metrics.
        ood_threshold: cosine distance to the probe centroid above which an input is flagged;
            None (default): :func:`robust_ood_threshold` of the probe's own distances.
        max_attention_texts: how many probe texts (evenly spaced) also give every head's attention
            for the attention-entropy signals (default 32: one batch; eager attention is the most
            expensive part of a snapshot after the forward pass itself).
        umap: compute 2-D UMAP coordinates (needs ``aquin-monitor[umap]``).
        model_name: how snapshots (and the report) name the model.
    """

    def __init__(
        self,
        probe=None,
        retrieval=None,
        *,
        batch_size: int = 32,
        max_attention_texts: int = 32,
        ood_threshold: float | None = None,
        umap: bool = True,
        seed: int = 0,
        show_progress: bool = False,
        model_name: str = "",
    ):
        if probe is None and retrieval is None:
            raise ValueError("SnapshotRunner needs a probe set, a retrieval set, or both")
        if probe is not None and not hasattr(probe, "texts"):
            from .data import ProbeSet

            texts = list(probe)
            probe = ProbeSet(texts=texts, labels=None, ids=[str(i) for i in range(len(texts))], source="<list>")
        if probe is None:
            from .data import ProbeSet

            texts = retrieval.query_texts() + retrieval.doc_texts()
            labels = ["query"] * len(retrieval.queries) + ["document"] * len(retrieval.corpus)
            probe = ProbeSet(texts=texts, labels=labels, ids=[f"q:{q}" for q in retrieval.query_ids()] + [f"d:{d}" for d in retrieval.doc_ids()], source=retrieval.source)
        if len(probe.texts) < 3:
            raise ValueError(f"a probe needs at least 3 texts, got {len(probe.texts)}")
        self.probe = probe
        self.retrieval = retrieval
        self.batch_size = batch_size
        self.max_attention_texts = max_attention_texts
        self.ood_threshold = ood_threshold
        self.umap = umap
        self.seed = seed
        self.show_progress = show_progress
        self.model_name = model_name
        self.base = None
        self.previous = None

    def take(self, model, step: int, *, tag: str = "checkpoint", model_name: str = "", run_dir=None, diff_against_history: bool = True):
        """Compute a snapshot of ``model``; diff it against the base and previous snapshots; save it."""
        from .encoders import has_lora, merged_copy

        inspected = merged_copy(model) if has_lora(model) else model
        snap = self.compute(inspected, step, tag=tag, model_name=model_name or self.model_name)
        if diff_against_history:
            self.attach_diffs(snap)
        if run_dir is not None:
            snap.save(run_dir)
        return snap

    def record(self, model, step: int, *, tag: str = "checkpoint", run_dir=None, sinks=(), model_name: str = "", strict: bool = False):
        """:meth:`take` a snapshot and log it to ``sinks``; a failure warns and returns None (checkpoint intact).

        Logged: the record as a summary (every metric a scalar at ``step`` on the dashboards, a line
        of ``snapshots.jsonl`` in the files), its figures, and the probe embeddings with their labels
        for TensorBoard's projector.
        """
        try:
            snap = self.take(model, step, tag=tag, model_name=model_name, run_dir=run_dir)
            labels = self.probe.labels
            figures = snapshot_figures(snap) if sinks else {}
            for sink in sinks:
                sink.log_summary({"tag": tag, **snap.metrics}, step)  # scalars on dashboards, snapshots.jsonl in files
                sink.log_embeddings("probe", snap.arrays["embeddings"], [str(v) for v in labels] if labels else None, step)
                for name, figure in figures.items():
                    sink.log_figure(f"snapshot/{name}", figure, step)
            return snap
        except Exception as exc:  # noqa: BLE001 - a failed snapshot must not cost the checkpoint or the run
            if strict:
                raise
            msg = f"aquin-monitor: snapshot at step {step} failed, training goes on: {exc!r}"
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            return None

    def attach_diffs(self, snap) -> None:
        from .snapshot import diff

        if self.base is not None:
            d = diff(self.base, snap, name="base", seed=self.seed)
            snap.metrics.update(d.metrics)
            snap.arrays.update(d.arrays)
            snap.details["diff_base"] = d.details
        if self.previous is not None and self.previous is not self.base:
            snap.metrics.update(diff(self.previous, snap, name="previous", seed=self.seed).metrics)
        if self.base is None:
            self.base = snap
        self.previous = snap

    def compute(self, model, step: int, *, tag: str = "checkpoint", model_name: str = ""):
        from .encoders import encode, iter_forward, retrieval_prompt_names
        from .signals.geometry import geometry_summary, ood_scores
        from .signals.layers import attention_entropy, layerwise_similarity, summarize_attention_entropy
        from .snapshot import Snapshot

        texts = self.probe.texts
        embeddings, layers, entropy, normalized, order = [], [], [], [], []
        attention_set = set(attention_sample(len(texts), self.max_attention_texts).tolist())
        with_att = [i for i in range(len(texts)) if i in attention_set]
        without_att = [i for i in range(len(texts)) if i not in attention_set]
        # the attention sample is spread over the probe, so its lengths vary as much as the probe's: small
        # batches of similar length keep its padding (which the eager attention pays for too) near zero
        attention_batch = max(1, min(self.batch_size, 8))
        for indices, with_attention in ((with_att, True), (without_att, False)):
            if not indices:
                continue
            # longest first, as SentenceTransformer.encode does: batches of similar length pad least
            chunk = sorted(indices, key=lambda i: -len(texts[i]))
            order.extend(chunk)
            size = attention_batch if with_attention else self.batch_size
            for batch in iter_forward(model, [texts[i] for i in chunk], batch_size=size, hidden_states=True, attentions=with_attention, show_progress=self.show_progress):
                embeddings.append(batch.embeddings.numpy())
                layers.append(batch.layer_embeddings.numpy())
                if batch.attentions is not None:
                    ent = attention_entropy(batch.attentions, batch.attention_mask)
                    entropy.append(ent.entropy)
                    normalized.append(ent.normalized)
        restore = np.argsort(np.asarray(order))
        emb = np.concatenate(embeddings).astype(np.float32)[restore]
        layer_emb = np.concatenate(layers, axis=1)[:, restore]
        labels = self.probe.labels
        metrics: dict[str, float] = {}
        details: dict = {}
        arrays: dict[str, np.ndarray] = {"embeddings": emb}
        if labels is not None:
            arrays["labels"] = np.asarray([str(v) for v in labels])

        threshold = self.ood_threshold
        if threshold is None:
            threshold = robust_ood_threshold(ood_scores(emb, threshold=2.0).scores)
        geo = geometry_summary(emb, labels, ood_threshold=threshold, seed=self.seed)
        metrics["geometry/ood_threshold"] = threshold
        metrics.update(geo.as_metrics("geometry"))
        arrays["pair_hist_counts"] = geo.histogram.counts
        arrays["pair_hist_edges"] = geo.histogram.edges
        arrays["pair_hist_baseline"] = geo.histogram.baseline_probabilities
        arrays["pca_cumulative"] = geo.intrinsic.cumulative_explained_variance
        arrays["ood_score"] = geo.ood.scores.astype(np.float32)
        order = np.argsort(-geo.ood.scores[geo.ood.flagged]) if len(geo.ood.flagged) else []
        details["ood_flagged"] = [
            {"index": int(geo.ood.flagged[k]), "text": texts[int(geo.ood.flagged[k])], "score": float(geo.ood.scores[geo.ood.flagged[k]])}
            for k in list(order)[:50]
        ]
        details["rogue_dimensions"] = _rogue_details(geo.rogue)

        lw = layerwise_similarity(layer_emb)
        metrics.update(lw.as_metrics("layers"))
        arrays["layer_similarity"] = np.asarray(lw.similarity, dtype=np.float32)
        if entropy:
            summary = summarize_attention_entropy(np.concatenate(entropy), np.concatenate(normalized))
            metrics.update(summary.as_metrics("attention"))
            arrays["attention_entropy"] = summary.entropy.astype(np.float32)
            arrays["attention_entropy_normalized"] = summary.normalized.astype(np.float32)
            details["flagged_heads"] = [
                {"layer": int(l), "head": int(h), "kind": "collapsed", "entropy": float(summary.entropy[l, h])} for l, h in summary.collapsed_heads
            ] + [{"layer": int(l), "head": int(h), "kind": "uniform", "entropy": float(summary.entropy[l, h])} for l, h in summary.dead_heads]

        if self.umap and len(texts) >= 10:
            try:
                arrays["umap"] = _umap_2d(emb, self.seed)
            except Exception as exc:  # noqa: BLE001 - a projection is not worth losing the snapshot
                warnings.warn(f"aquin-monitor: UMAP failed, snapshot kept without it: {exc!r}", RuntimeWarning, stacklevel=2)

        if self.retrieval is not None:
            q_prompt, d_prompt = retrieval_prompt_names(model)
            index = {t: i for i, t in enumerate(texts)}
            q_texts, d_texts = self.retrieval.query_texts(), self.retrieval.doc_texts()

            def embed(batch_texts, prompt_name):
                if prompt_name is None and all(t in index for t in batch_texts):
                    return emb[[index[t] for t in batch_texts]]
                return encode(model, batch_texts, prompt_name=prompt_name, batch_size=self.batch_size, show_progress=self.show_progress)

            q_emb, d_emb = embed(q_texts, q_prompt), embed(d_texts, d_prompt)
            report = _retrieval_report(self.retrieval, q_emb, d_emb)
            metrics.update(report.as_metrics())
            arrays["first_rank"] = np.asarray(report.first_rank, dtype=np.float64)
            arrays["hard_negative_gap"] = np.asarray(report.hard_negative_gap, dtype=np.float32)
            if self.retrieval.categories:
                details["retrieval_by_category"] = {str(k): v for k, v in report.by_category().items()}
        return Snapshot(int(step), tag, model_name, metrics, details, arrays)


def snapshot_figures(snap) -> dict:
    """The dashboard figures of a snapshot (those whose arrays it has), by name."""
    from . import plots

    a = snap.arrays
    makers = {
        "umap_by_label": lambda: plots.umap_by_label(a["umap"], a.get("labels")),
        "anisotropy_histogram": lambda: plots.anisotropy_histogram(
            a["pair_hist_counts"], a["pair_hist_edges"], a.get("pair_hist_baseline"), snap.metrics.get("geometry/anisotropy")
        ),
        "layer_similarity": lambda: plots.layer_similarity(a["layer_similarity"]),
        "attention_entropy": lambda: plots.attention_entropy_heatmap(a["attention_entropy"], snap.details.get("flagged_heads")),
        "rank_histogram": lambda: plots.rank_histogram(a["first_rank"]),
        "centroid_drift": lambda: plots.centroid_drift_arrows(a["centroid_base_2d"], a["centroid_now_2d"], a.get("centroid_labels")),
        "similarity_shift": lambda: plots.similarity_shift(a["sim_base_values"], a["sim_now_values"]),
    }
    figures = {}
    for name, make in makers.items():
        try:
            figures[name] = make()
        except (KeyError, ValueError):  # arrays this snapshot does not have (no labels, no retrieval, no diff)
            continue
    return figures


def _retrieval_report(retrieval, q_emb, d_emb):
    from .signals.retrieval import retrieval_metrics

    doc_pos = {d: i for i, d in enumerate(retrieval.doc_ids())}
    qids = retrieval.query_ids()
    relevant = [{doc_pos[d]: g for d, g in retrieval.qrels.get(q, {}).items()} for q in qids]
    negatives = [[doc_pos[d] for d in retrieval.hard_negatives.get(q, [])] for q in qids]
    categories = [retrieval.categories.get(q) for q in qids] if retrieval.categories else None
    return retrieval_metrics(q_emb, d_emb, relevant, categories=categories, hard_negatives=negatives if any(negatives) else None)


def _rogue_details(rogue) -> list[dict]:
    total = float(np.clip(rogue.contributions, 0, None).sum()) or 1.0
    return [{"dim": int(d), "share": float(max(c, 0.0) / total)} for d, c in zip(rogue.top_dimensions, rogue.top_contributions)]


def attention_sample(n: int, k: int) -> np.ndarray:
    """Indices of the ``k`` probe texts (of ``n``) whose attentions a snapshot keeps: evenly spaced.

    Attentions need eager attention, which costs several times the fused kernel; the per-head
    entropy is a mean over texts and tokens, so a sample spread over the whole probe (not its first
    texts, which a file sorted by label would fill with one class) estimates it well.

    >>> attention_sample(10, 4).tolist(), attention_sample(3, 8).tolist()
    ([0, 3, 6, 9], [0, 1, 2])
    """
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.arange(0)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


def _umap_2d(embeddings: np.ndarray, seed: int) -> np.ndarray:
    import warnings as _w

    from ._optional import require

    umap = require("umap", "UMAP coordinates in snapshots")
    n = embeddings.shape[0]
    k = min(15, n - 1)
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        # seeded, hence single-threaded. Cosine neighbours = euclidean neighbours of unit vectors.
        unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        # Up to EXACT_KNN_MAX_POINTS the neighbours come from matrix products (exact_knn): umap itself would
        # compute every pair through sklearn with a Python call per pair below 4,096 points (~1.5 s for
        # 1,000), and run its approximate nearest-neighbour descent above. Below 4,096 points the graph
        # and the coordinates are those of umap's exact path, bit for bit (tests/test_snapshot.py).
        knn = exact_knn(unit.astype(np.float64), k) if n <= EXACT_KNN_MAX_POINTS else None
        reducer = umap.UMAP(
            # 100 epochs (umap: 500 below 10k points): on 1,000 MiniLM embeddings of AG News, trustworthiness@10
            # 0.917 against 0.918 at 200 and 0.921 at 500; 75 epochs 0.911, 50 epochs 0.900
            n_components=2, n_neighbors=k, n_epochs=100,
            random_state=seed, init="spectral" if n > 20 else "random",
            precomputed_knn=(*knn, None) if knn is not None else (None, None, None),
        )
        return reducer.fit_transform(unit).astype(np.float32)
