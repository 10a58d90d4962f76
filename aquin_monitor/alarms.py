"""Alarms of the training monitor: their kinds and thresholds, and the stateful checks that raise them.

- :class:`GradientAnomalyDetector`: dead, spiking and non-finite gradient groups, each judged against
  its own recent history (robust statistics over log-norms);
- :class:`GapNarrowingCheck`: the positive–negative similarity gap narrowing while the loss falls
  (negatives are being pulled in);
- :class:`FalseNegativeCheck`: positives no more similar to their anchors than the hardest negative,
  abruptly, while the positives stay where they were (the batch's negatives hold duplicates of the
  positives: false negatives);
- :class:`CollapseCheck`: the mean similarity of in-batch negatives rising far above its own history (the
  embeddings converge: the space is collapsing), unless false negatives explain it;
- :class:`LearningRateJumpCheck`: a learning rate ten times above anything it had been (``lr_jump``);
- :class:`PlateauCheck`: every learning rate 0 for several steps after having been positive (the
  weights stopped moving);
- a non-finite loss (``nan``).

:class:`HostSideChecks` holds the five checks that read a step's contrastive means, loss and learning rates
(gap narrowing, false negatives, collapse, plateau, lr_jump) and feeds them in one order, for the monitor and
the alarm benchmark's replay alike. The kinds themselves (name, meaning, colour) are registered once, in
:data:`~aquin_monitor.metric_registry.ALARM_REGISTRY` (re-exported here with :data:`ALARM_KINDS`).

Everything here is host-side numpy on the small per-step vector :class:`~aquin_monitor.monitor.StepMonitor`
reads back; every check keeps its state in ``state_dict`` form so a resumed run keeps its history.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .metric_registry import ALARM_COLOURS, ALARM_KINDS, ALARM_REGISTRY, AlarmKind
from .signals.gradients import row_nanmedian

__all__ = [
    "ALARM_KINDS",
    "ALARM_REGISTRY",
    "ALARM_COLOURS",
    "AlarmKind",
    "AlarmWarning",
    "DetectorConfig",
    "Anomaly",
    "GradientAnomalyDetector",
    "AlarmConfig",
    "Alarm",
    "loss_alarm",
    "GapNarrowingCheck",
    "FalseNegativeCheck",
    "LearningRateJumpCheck",
    "PlateauCheck",
    "CollapseCheck",
    "HostSideChecks",
]


class AlarmWarning(UserWarning):
    """Raised (as a warning) when the training monitor fires an alarm."""


@dataclass
class DetectorConfig:
    """Thresholds of :class:`GradientAnomalyDetector` (defaults tested on real failure cases).

    - ``window``: steps of history per group (robust statistics over log-norms).
    - ``warmup``: steps during which nothing is flagged (early steps are legitimately wild).
    - ``min_history``: finite observations a group needs before it can be flagged.
    - ``spike_z``: robust z-score ``(log g − median) / (1.4826·MAD)`` above which a step is a spike,
      and ``spike_ratio``: the norm must also be at least this many times the window's median
      (guards against a tiny MAD on very smooth histories).
    - ``dead_ratio`` / ``dead_floor``: a group is dead when its norm falls below ``dead_ratio × median``
      of its history or below ``dead_floor``, for ``dead_patience`` consecutive steps, having been alive.
    - ``cooldown``: steps after an alarm during which the same group/kind is not re-flagged.
    - A group whose norm stayed below ``dead_floor`` on every one of the first ``warmup +
      dead_patience`` steps is flagged ``dead_layer`` once, at that step (a layer whose output never
      reaches the loss, or a parameter left out of the graph): it has no healthy history to collapse
      from. ``total`` is not flagged that way, nor a group that never had a gradient tensor at all
      (``no_gradient``) unless it is an encoder block (``layer.NN``): a sentence-transformers model
      never uses its BERT pooler.
    """

    window: int = 50
    warmup: int = 10
    min_history: int = 8
    spike_z: float = 6.0
    spike_ratio: float = 4.0
    dead_ratio: float = 1e-3
    dead_floor: float = 1e-12
    dead_patience: int = 3
    cooldown: int = 20


@dataclass(frozen=True)
class Anomaly:
    kind: str  # "spike" | "dead_layer" | "nan"
    group: str
    value: float
    message: str


class GradientAnomalyDetector:
    """Running per-group statistics of gradient norms; flags dead, spiking and non-finite groups.

    State is plain numpy (``state_dict``/``load_state_dict``) so a resumed run keeps its history.
    Call :meth:`update` once per optimizer step with the host-side norms of :func:`grouped_grad_norms`.
    """

    def __init__(self, names: Sequence[str], config: DetectorConfig | None = None):
        self.names = list(names)
        self.config = config or DetectorConfig()
        w = self.config.window
        self._history = np.full((len(self.names), w), np.nan)
        self._steps_seen = 0
        self._below = np.zeros(len(self.names), dtype=np.int64)
        self._ever_alive: np.ndarray = np.zeros(len(self.names), dtype=bool)
        self._cooldown: dict[tuple[str, str], int] = {}

    def update(self, norms: Sequence[float] | np.ndarray, step: int, no_gradient: Sequence[int] = ()) -> list[Anomaly]:
        """Flag this step's anomalies; ``no_gradient``: indices of groups that never had a gradient tensor."""
        cfg = self.config
        g = np.asarray(norms, dtype=np.float64)
        if g.shape != (len(self.names),):
            raise ValueError(f"expected {len(self.names)} group norms, got shape {g.shape}")
        self._steps_seen += 1
        with np.errstate(invalid="ignore"):
            self._ever_alive |= g > cfg.dead_floor  # NaN is not alive (the nan alarm covers it)
        found: list[Anomaly | None] = []  # None: an alarm held back by its cooldown, dropped on return
        if self._steps_seen == cfg.warmup + cfg.dead_patience:
            found.extend(self._dead_from_start(g, step, set(no_gradient)))
        counts = np.isfinite(self._history).sum(axis=1)
        with np.errstate(all="ignore"):
            logs = np.log(np.where(self._history > 0, self._history, np.nan))
            med_log = row_nanmedian(logs)
            mad = row_nanmedian(np.abs(logs - med_log[:, None]))
            med = row_nanmedian(self._history)
        for i, name in enumerate(self.names):
            value = g[i]
            if not math.isfinite(value):
                found.append(self._emit("nan", name, value, step, f"gradient of {name} is {value} at step {step}"))
                continue
            ready = self._steps_seen > cfg.warmup and counts[i] >= cfg.min_history
            alive = ready and np.isfinite(med[i]) and med[i] > cfg.dead_floor
            if alive and (value < cfg.dead_floor or value < cfg.dead_ratio * med[i]):
                self._below[i] += 1
                if self._below[i] == cfg.dead_patience:
                    found.append(
                        self._emit(
                            "dead_layer",
                            name,
                            value,
                            step,
                            f"gradient of {name} collapsed to {value:.3g} (median of its last {int(counts[i])} steps: "
                            f"{med[i]:.3g}) at step {step}",
                        )
                    )
                # a collapsed value is not history: keep the healthy median as the reference
                continue
            self._below[i] = 0
            if alive and value > 0 and np.isfinite(med_log[i]):
                z = (math.log(value) - med_log[i]) / (1.4826 * mad[i] + 1e-12)
                if z > cfg.spike_z and value > cfg.spike_ratio * med[i]:
                    found.append(
                        self._emit(
                            "spike",
                            name,
                            value,
                            step,
                            f"gradient of {name} spiked to {value:.3g}, {value / med[i]:.1f}x its median {med[i]:.3g} "
                            f"(robust z {z:.1f}) at step {step}",
                        )
                    )
            self._history[i, (self._steps_seen - 1) % cfg.window] = value
        return [a for a in found if a is not None]

    def _dead_from_start(self, g: np.ndarray, step: int, no_gradient: set[int]) -> list[Anomaly | None]:
        found: list[Anomaly | None] = []
        for i, name in enumerate(self.names):
            if self._ever_alive[i] or name == "total" or not math.isfinite(g[i]):
                continue
            if i in no_gradient and not name.startswith("layer."):
                continue  # e.g. the pooler sentence-transformers never uses
            why = (
                "has had no gradient"
                if i in no_gradient
                else f"has had a gradient norm below {self.config.dead_floor:g}"
            )
            found.append(
                self._emit(
                    "dead_layer",
                    name,
                    g[i],
                    step,
                    f"{name} {why} on every step since the start ({self._steps_seen} steps): "
                    f"its output does not reach the loss (step {step})",
                )
            )
        return found

    def _emit(self, kind: str, group: str, value: float, step: int, message: str) -> Anomaly | None:
        key = (kind, group)
        last = self._cooldown.get(key)
        if last is not None and step - last < self.config.cooldown:
            return None
        self._cooldown[key] = step
        return Anomaly(kind, group, float(value), message)

    def state_dict(self) -> dict:
        return {
            "names": list(self.names),
            "history": self._history.tolist(),
            "steps_seen": self._steps_seen,
            "below": self._below.tolist(),
            "ever_alive": self._ever_alive.tolist(),
            "cooldown": [[k[0], k[1], v] for k, v in self._cooldown.items()],
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(f"detector state is for groups {state['names']}, this model has {self.names}")
        self._history = np.asarray(state["history"], dtype=np.float64)
        self._steps_seen = int(state["steps_seen"])
        self._below = np.asarray(state["below"], dtype=np.int64)
        if "ever_alive" in state:
            self._ever_alive = np.asarray(state["ever_alive"], dtype=bool)
        else:  # a checkpoint from before this field: alive where its history says so
            with np.errstate(invalid="ignore"):
                self._ever_alive = np.asarray((self._history > self.config.dead_floor).any(axis=1))
        self._cooldown = {(k, g): int(v) for k, g, v in state["cooldown"]}


@dataclass
class AlarmConfig:
    """Alarm thresholds. Gradient alarms: see :class:`DetectorConfig`.

    Gap narrowing compares the first and second half of the last ``gap_window`` steps: it fires when
    the mean positive–negative gap dropped by more than ``gap_min_drop`` (similarity units) and by
    more than ``gap_rel_drop`` of its earlier value, while the mean loss fell.

    False negatives (:class:`FalseNegativeCheck`) judge each step's margin ``pos_sim −
    hardest_neg_sim`` against the median ``m̃`` of the last ``false_negative_window`` healthy steps
    (at least ``false_negative_min_history`` of them): it fires when the margin falls to
    ``false_negative_margin_ratio × m̃`` or below while ``pos_sim`` stays within
    ``false_negative_positive_shift × m̃`` of its own median.

    Plateau (:class:`PlateauCheck`): every learning rate 0 on ``plateau_patience`` consecutive steps.

    Learning-rate jump (:class:`LearningRateJumpCheck`): a group's learning rate above ``lr_jump_ratio`` times
    the largest rate that group had on any earlier step.

    Collapse (:class:`CollapseCheck`): ``neg_sim`` above the median of its last ``collapse_window`` healthy
    steps by more than ``collapse_min_rise`` and by more than ``collapse_z`` robust standard deviations
    (1.4826·MAD), on ``collapse_patience`` consecutive steps.
    """

    gradients: DetectorConfig = field(default_factory=DetectorConfig)
    gap_window: int = 40
    gap_min_drop: float = 0.05
    gap_rel_drop: float = 0.2
    false_negative_window: int = 50
    false_negative_min_history: int = 10
    false_negative_margin_ratio: float = 0.1
    false_negative_positive_shift: float = 0.5
    plateau_patience: int = 5
    lr_jump_ratio: float = 10.0
    collapse_window: int = 50
    collapse_min_history: int = 10
    collapse_z: float = 6.0
    collapse_min_rise: float = 0.1
    collapse_patience: int = 2


@dataclass(frozen=True)
class Alarm:
    """One alarm as logged: ``alarm/<kind>`` = 1 at ``step`` and a line of ``events.jsonl``."""

    step: int
    kind: str
    layer: str | None
    message: str
    value: float | None = None

    def as_event(self) -> dict:
        return asdict(self)


def loss_alarm(step: int, loss: float | None) -> Alarm | None:
    """A ``nan`` alarm when the step's mean loss is not finite.

    >>> loss_alarm(3, float("nan")).message, loss_alarm(3, 0.5)
    ('loss is nan at step 3', None)
    """
    if loss is not None and not math.isfinite(loss):
        return Alarm(step, "nan", "loss", f"loss is {loss} at step {step}", loss)
    return None


class GapNarrowingCheck:
    """Fires ``gap_narrowing`` when the positive–negative gap shrinks while the loss falls.

    Keeps the last ``gap_window`` (gap, loss) pairs and compares their halves (:class:`AlarmConfig`);
    after an alarm it stays quiet for one window.

    >>> check = GapNarrowingCheck(AlarmConfig(gap_window=4))
    >>> [check.update(s, gap, loss) for s, (gap, loss) in
    ...  enumerate([(0.5, 2.0), (0.5, 2.0), (0.3, 1.0), (0.3, 1.0)], 1)][-1].kind
    'gap_narrowing'
    """

    def __init__(self, config: AlarmConfig):
        self.config = config
        self.history: deque[tuple[float, float]] = deque(maxlen=config.gap_window)
        self.cooldown_until = -1

    def update(self, step: int, gap: float | None, loss: float | None) -> Alarm | None:
        """Record this step's gap and loss (finite ones only); the alarm, if it fires now."""
        if gap is None or loss is None or not (math.isfinite(gap) and math.isfinite(loss)):
            return None
        cfg = self.config
        self.history.append((gap, loss))
        if len(self.history) < cfg.gap_window or step < self.cooldown_until:
            return None
        half = cfg.gap_window // 2
        hist = np.asarray(self.history)
        gap_before, gap_now = hist[:half, 0].mean(), hist[half:, 0].mean()
        loss_before, loss_now = hist[:half, 1].mean(), hist[half:, 1].mean()
        drop = gap_before - gap_now
        if not (drop > cfg.gap_min_drop and drop > cfg.gap_rel_drop * abs(gap_before) and loss_now < loss_before):
            return None
        self.cooldown_until = step + cfg.gap_window
        return Alarm(
            step,
            "gap_narrowing",
            None,
            f"positive-negative similarity gap narrowed from {gap_before:.3f} to {gap_now:.3f} over the last "
            f"{cfg.gap_window} steps while the loss fell ({loss_before:.3f} -> {loss_now:.3f}): "
            "negatives are being pulled in",
            float(gap_now),
        )

    def state_dict(self) -> dict:
        return {"gap_history": [list(x) for x in self.history], "gap_cooldown_until": self.cooldown_until}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque((tuple(x) for x in state.get("gap_history", [])), maxlen=self.config.gap_window)
        self.cooldown_until = int(state.get("gap_cooldown_until", -1))


class FalseNegativeCheck:
    """Fires ``false_negatives`` when positives are suddenly no more similar than the hardest negative.

    The margin ``m = pos_sim − hardest_neg_sim`` (:mod:`aquin_monitor.signals.contrastive`) of a batch
    whose negatives include a duplicate of each row's positive is ≈ 0 (identical texts embed alike,
    up to dropout), while a healthy batch keeps a margin of the order of its history. A collapse also
    closes the margin, but by moving everything, the positives included (towards similarity 1); a
    false negative leaves the positives where they were. So, with ``m̃`` and ``p̃`` the medians of the
    margin and of ``pos_sim`` over the last ``false_negative_window`` healthy steps, a step fires when::

        m ≤ false_negative_margin_ratio · m̃   and   |pos_sim − p̃| ≤ false_negative_positive_shift · m̃

    (``m̃ > 0``, at least ``false_negative_min_history`` steps of history). A firing step is not added
    to the history (the healthy margin stays the reference); after an alarm the check is quiet for one
    window.

    >>> check = FalseNegativeCheck(AlarmConfig(false_negative_min_history=3))
    >>> healthy = [(0.70, 0.30), (0.72, 0.33), (0.69, 0.31)]          # margins 0.40, 0.39, 0.38
    >>> [check.update(s, {"pos_sim": p, "hardest_neg_sim": h}) for s, (p, h) in enumerate(healthy, 1)]
    [None, None, None]
    >>> check.update(4, {"pos_sim": 0.71, "hardest_neg_sim": 0.70}).kind   # margin 0.01, positives in place
    'false_negatives'
    >>> check = FalseNegativeCheck(AlarmConfig(false_negative_min_history=3))
    >>> _ = [check.update(s, {"pos_sim": p, "hardest_neg_sim": h}) for s, (p, h) in enumerate(healthy, 1)]
    >>> check.update(4, {"pos_sim": 0.99, "hardest_neg_sim": 0.98}) is None   # everything moved: a collapse
    True
    """

    def __init__(self, config: AlarmConfig):
        self.config = config
        self.history: deque[tuple[float, float]] = deque(maxlen=config.false_negative_window)
        self.cooldown_until = -1
        self.explains_step = False  # this step's margin closed with the positives in place (alarm or cooldown)

    def update(self, step: int, contrastive: dict) -> Alarm | None:
        """Record this step's (margin, pos_sim) from the ``contrastive`` means; the alarm, if it fires now."""
        self.explains_step = False
        positive, hardest = contrastive.get("pos_sim"), contrastive.get("hardest_neg_sim")
        if positive is None or hardest is None or not (math.isfinite(positive) and math.isfinite(hardest)):
            return None
        cfg = self.config
        margin = positive - hardest
        if len(self.history) >= cfg.false_negative_min_history:
            typical_margin, typical_positive = np.median(np.asarray(self.history), axis=0)
            if typical_margin > 0 and margin <= cfg.false_negative_margin_ratio * typical_margin:
                # a closed margin is not history: the healthy one stays the reference
                positives_in_place = (
                    abs(positive - typical_positive) <= cfg.false_negative_positive_shift * typical_margin
                )
                if step < self.cooldown_until or not positives_in_place:
                    return None
                self.cooldown_until = step + cfg.false_negative_window
                return Alarm(
                    step,
                    "false_negatives",
                    None,
                    f"positives are as similar as the hardest in-batch negative at step {step} (margin "
                    f"{margin:.3f}, typical {typical_margin:.3f}; positive similarity {positive:.3f}, typical "
                    f"{typical_positive:.3f}): the batch's negatives hold duplicates of its positives "
                    "(false negatives)",
                    float(margin),
                )
        self.history.append((margin, positive))
        return None

    def state_dict(self) -> dict:
        return {
            "false_negative_history": [list(x) for x in self.history],
            "false_negative_cooldown_until": self.cooldown_until,
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(
            (tuple(x) for x in state.get("false_negative_history", [])), maxlen=self.config.false_negative_window
        )
        self.cooldown_until = int(state.get("false_negative_cooldown_until", -1))


class LearningRateJumpCheck:
    """Fires ``lr_jump`` when a parameter group's learning rate exceeds ``lr_jump_ratio`` × the largest rate it
    had on any earlier step.

    A schedule only ever returns to rates it has had (warm restarts go back to the first peak) or climbs to
    them gradually (a linear warm-up at most doubles the running maximum per step once positive; a one-cycle
    ramp rises by a few percent per step), so a rate ten times the group's running maximum in one step is a
    change of configuration: a scheduler stepped with the wrong unit, a rate multiplied on resume, a
    ``param_groups`` edit. It reads the rates the step applied (``optim/lr``) and fires once per jump (the
    running maximum takes the new rate). A run whose trainer does not pass its rates is not checked.

    >>> check = LearningRateJumpCheck(AlarmConfig())
    >>> rates = [0.0, 1e-5, 2e-5, 3e-5, 2e-5, 3e-5, 3e-3, 3e-3]
    >>> [s for s, lr in enumerate(rates, 1) if check.update(s, [lr]) is not None]
    [7]
    """

    def __init__(self, config: AlarmConfig):
        self.config = config
        self.running_max: list[float] = []  # per parameter group, the largest rate seen so far

    def update(self, step: int, learning_rates: Sequence[float] | None) -> Alarm | None:
        """Record the step's learning rates (one per parameter group); the alarm, if it fires now."""
        if not learning_rates:
            return None
        rates = [float(lr) for lr in learning_rates]
        if len(rates) != len(self.running_max):  # groups added or first step: start afresh, nothing to compare
            self.running_max = [max(lr, 0.0) if math.isfinite(lr) else 0.0 for lr in rates]
            return None
        jumped = [
            (group, lr, before)
            for group, (lr, before) in enumerate(zip(rates, self.running_max))
            if math.isfinite(lr) and before > 0 and lr > self.config.lr_jump_ratio * before
        ]
        self.running_max = [max(b, lr) if math.isfinite(lr) else b for lr, b in zip(rates, self.running_max)]
        if not jumped:
            return None
        group, lr, before = max(jumped, key=lambda item: item[1] / item[2])
        return Alarm(
            step,
            "lr_jump",
            f"group.{group}",
            f"learning rate of group {group} jumped to {lr:.3g} at step {step}, {lr / before:.0f}x the largest "
            f"it had before ({before:.3g}): a changed schedule or configuration",
            lr,
        )

    def state_dict(self) -> dict:
        return {"lr_jump_running_max": list(self.running_max)}

    def load_state_dict(self, state: dict) -> None:
        self.running_max = [float(x) for x in state.get("lr_jump_running_max", [])]


class PlateauCheck:
    """Fires ``plateau`` when every learning rate has been 0 for ``plateau_patience`` steps in a row.

    With a learning rate of 0, no torch optimizer moves a weight (SGD, Adam and AdamW scale the step
    and the decoupled weight decay by it): the run goes on, the loss stays where it is. The check
    reads the learning rates the step applied (``optim/lr``); it arms once one was positive, so a
    warm-up starting at 0 is no plateau, and fires once per stretch of zero rates. A run whose
    trainer does not pass its learning rates is not checked.

    >>> check = PlateauCheck(AlarmConfig(plateau_patience=2))
    >>> [a is not None for a in (check.update(s, [lr]) for s, lr in enumerate([0, 1e-4, 1e-4, 0, 0, 0], 1))]
    [False, False, False, False, True, False]
    """

    def __init__(self, config: AlarmConfig):
        self.config = config
        self.armed = False  # a positive learning rate was seen
        self.zero_steps = 0

    def update(self, step: int, learning_rates: Sequence[float] | None) -> Alarm | None:
        """Record the step's learning rates (one per parameter group); the alarm, if it fires now."""
        if not learning_rates:
            return None
        if any(lr > 0 for lr in learning_rates):
            self.armed, self.zero_steps = True, 0
            return None
        if not self.armed:
            return None
        self.zero_steps += 1
        if self.zero_steps != self.config.plateau_patience:
            return None
        return Alarm(
            step,
            "plateau",
            None,
            f"the learning rate has been 0 for {self.zero_steps} steps at step {step}: the weights no longer move",
            0.0,
        )

    def state_dict(self) -> dict:
        return {"plateau_armed": self.armed, "plateau_zero_steps": self.zero_steps}

    def load_state_dict(self, state: dict) -> None:
        self.armed = bool(state.get("plateau_armed", False))
        self.zero_steps = int(state.get("plateau_zero_steps", 0))


class CollapseCheck:
    """Fires ``collapse`` when the in-batch negatives' mean similarity rises far above its own history.

    ``neg_sim`` (the mean cosine of non-matching pairs in the batch) is the batch's anisotropy: it stays
    near its usual level while a fine-tune is healthy and climbs towards the positives' similarity, and
    then 1, as the embeddings converge (a learning rate far too high, a broken schedule). With ``ñ`` the
    median and ``s = 1.4826·MAD`` of ``neg_sim`` over the last ``collapse_window`` healthy steps (at least
    ``collapse_min_history``), a step is *risen* when::

        neg_sim − ñ > collapse_min_rise   and   neg_sim − ñ > collapse_z · s

    and the alarm fires on the ``collapse_patience``-th risen step in a row. A risen step is not history;
    after an alarm the check is quiet for one window. A step that :class:`FalseNegativeCheck` explains
    (duplicates of the positives among the negatives raise ``neg_sim`` too, with the positives in place)
    is neither risen nor history. Unlike ``gap_narrowing`` it does not ask the loss to fall: a collapse
    driven by too large a step raises the loss.

    >>> check = CollapseCheck(AlarmConfig(collapse_min_history=4))
    >>> negatives = [0.07, 0.09, 0.05, 0.08, 0.06, 0.25, 0.36]   # median 0.07, MAD 0.01: s = 0.0148
    >>> [(s, a.kind) for s, a in ((s, check.update(s, {"neg_sim": n})) for s, n in enumerate(negatives, 1)) if a]
    [(7, 'collapse')]
    """

    def __init__(self, config: AlarmConfig):
        self.config = config
        self.history: deque[float] = deque(maxlen=config.collapse_window)
        self.risen = 0
        self.cooldown_until = -1

    def update(self, step: int, contrastive: dict, explained: bool = False) -> Alarm | None:
        """Record this step's ``neg_sim``; ``explained``: false negatives account for this step's similarities."""
        negative = contrastive.get("neg_sim")
        if negative is None or not math.isfinite(negative) or explained:
            return None
        cfg = self.config
        if len(self.history) >= cfg.collapse_min_history:
            history = np.asarray(self.history)
            typical = float(np.median(history))
            spread = 1.4826 * float(np.median(np.abs(history - typical)))
            rise = negative - typical
            if rise > cfg.collapse_min_rise and rise > cfg.collapse_z * spread:
                self.risen += 1
                if self.risen != cfg.collapse_patience or step < self.cooldown_until:
                    return None
                self.cooldown_until = step + cfg.collapse_window
                return Alarm(
                    step,
                    "collapse",
                    None,
                    f"in-batch negatives' mean similarity rose to {negative:.3f} from a typical {typical:.3f} "
                    f"({cfg.collapse_patience} steps in a row, step {step}): the embeddings are converging",
                    float(negative),
                )
        self.risen = 0
        self.history.append(negative)
        return None

    def state_dict(self) -> dict:
        return {
            "collapse_history": list(self.history),
            "collapse_risen": self.risen,
            "collapse_cooldown_until": self.cooldown_until,
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state.get("collapse_history", []), maxlen=self.config.collapse_window)
        self.risen = int(state.get("collapse_risen", 0))
        self.cooldown_until = int(state.get("collapse_cooldown_until", -1))


class HostSideChecks:
    """The alarm checks that read a step's contrastive means, loss and learning rates: one object, one order.

    :class:`~aquin_monitor.monitor.StepMonitor` feeds it each logged step's numbers, and the alarm benchmark
    replays recorded runs through it (``scripts/bench_alarms.py``), so both raise the same alarms from the
    same numbers. Per step, in this order: :class:`GapNarrowingCheck` (``contrastive["gap"]`` and the loss),
    :class:`FalseNegativeCheck`, :class:`CollapseCheck` (told whether false negatives explain the step),
    :class:`PlateauCheck` and :class:`LearningRateJumpCheck` (the learning rates; none given: neither checks).
    Its :meth:`state_dict` is the five checks' keys side by side, flat, as ``StepMonitor.state_dict`` has
    always written them, so a checkpoint from before this class loads.

    >>> checks = HostSideChecks(AlarmConfig(plateau_patience=2))
    >>> [[a.kind for a in checks.update(s, {}, None, [lr])] for s, lr in enumerate([1e-4, 0.0, 0.0, 1e-2], 1)]
    [[], [], ['plateau'], ['lr_jump']]
    >>> resumed = HostSideChecks(AlarmConfig(plateau_patience=2))
    >>> resumed.load_state_dict(checks.state_dict())
    >>> resumed.lr_jump.running_max, resumed.plateau.armed
    ([0.01], True)
    """

    #: the alarm kinds these checks raise
    KINDS = ("gap_narrowing", "false_negatives", "collapse", "plateau", "lr_jump")

    def __init__(self, config: AlarmConfig | None = None):
        self.config = config or AlarmConfig()
        self.gap = GapNarrowingCheck(self.config)
        self.false_negatives = FalseNegativeCheck(self.config)
        self.collapse = CollapseCheck(self.config)
        self.plateau = PlateauCheck(self.config)
        self.lr_jump = LearningRateJumpCheck(self.config)

    @property
    def checks(
        self,
    ) -> tuple[GapNarrowingCheck, FalseNegativeCheck, CollapseCheck, PlateauCheck, LearningRateJumpCheck]:
        """The five checks, in the order :meth:`update` feeds them."""
        return (self.gap, self.false_negatives, self.collapse, self.plateau, self.lr_jump)

    def update(
        self, step: int, contrastive: dict, loss: float | None, learning_rates: Sequence[float] | None = None
    ) -> list[Alarm]:
        """This step's alarms, in check order. ``contrastive``: the step's means by field name (``pos_sim``,
        ``neg_sim``, ``hardest_neg_sim``, ``gap``, …; absent or non-finite ones are skipped by the checks
        that read them); ``loss``: the step's mean loss or None; ``learning_rates``: one per parameter group."""
        fired = (
            self.gap.update(step, contrastive.get("gap"), loss),
            self.false_negatives.update(step, contrastive),
            self.collapse.update(step, contrastive, self.false_negatives.explains_step),
            self.plateau.update(step, learning_rates),
            self.lr_jump.update(step, learning_rates),
        )
        return [alarm for alarm in fired if alarm is not None]

    def state_dict(self) -> dict:
        """The checks' states in one flat dict (their keys do not overlap)."""
        state: dict = {}
        for check in self.checks:
            state.update(check.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`, or from any dict holding its keys (a monitor's whole state)."""
        for check in self.checks:
            check.load_state_dict(state)
