"""The false-negative, plateau, collapse and learning-rate-jump alarms (aquin_monitor.alarms): hand-checked
sequences, quiet on healthy histories and on a collapse, state kept across a resume, and wired through StepMonitor."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from aquin_monitor.alarms import (
    ALARM_KINDS,
    AlarmConfig,
    CollapseCheck,
    FalseNegativeCheck,
    LearningRateJumpCheck,
    PlateauCheck,
)
from aquin_monitor.capture import ContrastiveTap, report_similarity
from aquin_monitor.monitor import StepMonitor


def _stats(positive: float, hardest: float) -> dict:
    return {"pos_sim": positive, "hardest_neg_sim": hardest}


def _feed(check: FalseNegativeCheck, pairs, first_step: int = 1) -> list[int]:
    return [s for s, (p, h) in enumerate(pairs, first_step) if check.update(s, _stats(p, h)) is not None]


def test_new_kinds_are_alarm_kinds():
    assert {"false_negatives", "plateau", "collapse", "lr_jump"} <= set(ALARM_KINDS)


def test_false_negatives_fire_on_the_first_closed_margin_and_not_before():
    # margins 0.40, 0.38, 0.42, 0.40 (median 0.40); then 0.05 is above 0.1 * 0.40 = 0.04: quiet;
    # then 0.01 with the positives in place (|0.71 - 0.70| <= 0.5 * 0.40): the alarm
    check = FalseNegativeCheck(AlarmConfig(false_negative_min_history=4))
    history = [(0.70, 0.30), (0.70, 0.32), (0.70, 0.28), (0.70, 0.30)]
    assert _feed(check, history + [(0.70, 0.65), (0.71, 0.70)]) == [6]
    assert check.history[-1][0] == pytest.approx(0.05)  # the 0.05 step was history, the firing step was not


def test_false_negatives_quiet_while_the_history_is_short_and_on_a_collapse():
    check = FalseNegativeCheck(AlarmConfig(false_negative_min_history=4))
    assert _feed(check, [(0.70, 0.30)] * 3 + [(0.70, 0.70)]) == []  # 3 steps of history < 4
    check = FalseNegativeCheck(AlarmConfig(false_negative_min_history=4))
    # a collapse: the positives run to 1 with everything else (shift 0.29 > 0.5 * 0.40)
    assert _feed(check, [(0.70, 0.30)] * 4 + [(0.99, 0.98), (0.999, 0.999)]) == []


def test_false_negatives_cool_down_for_one_window_and_keep_the_healthy_reference():
    config = AlarmConfig(false_negative_min_history=4, false_negative_window=10)
    check = FalseNegativeCheck(config)
    fired = _feed(check, [(0.70, 0.30)] * 4 + [(0.70, 0.70)] * 12)
    assert fired == [5, 15]  # step 5, then quiet until 5 + 10
    assert [m for m, _ in check.history] == pytest.approx([0.40] * 4)  # closed margins never became history


def test_false_negatives_quiet_on_a_healthy_noisy_history():
    rng = np.random.default_rng(0)
    check = FalseNegativeCheck(AlarmConfig())
    positives = 0.7 + rng.normal(0, 0.03, 300)
    hardest = 0.35 + rng.normal(0, 0.05, 300)
    assert _feed(check, zip(positives.tolist(), hardest.tolist())) == []


def test_false_negatives_skip_missing_and_nonfinite_statistics():
    check = FalseNegativeCheck(AlarmConfig(false_negative_min_history=1))
    assert check.update(1, {}) is None
    assert check.update(2, _stats(math.nan, 0.1)) is None
    assert len(check.history) == 0


def test_false_negative_state_round_trip():
    config = AlarmConfig(false_negative_min_history=4, false_negative_window=10)
    check = FalseNegativeCheck(config)
    _feed(check, [(0.70, 0.30)] * 4 + [(0.70, 0.70)])
    resumed = FalseNegativeCheck(config)
    resumed.load_state_dict(json.loads(json.dumps(check.state_dict())))
    assert list(resumed.history) == list(check.history) and resumed.cooldown_until == check.cooldown_until == 15
    assert _feed(resumed, [(0.70, 0.70)] * 10, first_step=6) == [15]


def _negatives(check: CollapseCheck, values, explained=()) -> list[int]:
    return [s for s, n in enumerate(values, 1) if check.update(s, {"neg_sim": n}, s in explained) is not None]


def test_collapse_fires_on_the_second_risen_step_by_hand():
    # history 0.07, 0.09, 0.05, 0.08, 0.06: median 0.07, MAD 0.01, s = 0.014826; risen above
    # 0.07 + max(0.1, 6 s = 0.089) = 0.17: 0.25 is; 0.12 is not (and resets the count; history now has
    # median 0.075, MAD 0.015, so risen above 0.075 + max(0.1, 0.133) = 0.208): 0.25 and 0.30 are
    check = CollapseCheck(AlarmConfig(collapse_min_history=5))
    history = [0.07, 0.09, 0.05, 0.08, 0.06]
    assert _negatives(check, history + [0.25, 0.12, 0.25, 0.30]) == [9]
    assert list(check.history) == history + [0.12]  # risen steps are not history


def test_collapse_needs_both_an_absolute_and_a_robust_rise():
    # a noisy history (s = 0.074): a rise of 0.3 is under 6 s = 0.44
    check = CollapseCheck(AlarmConfig(collapse_min_history=5))
    assert _negatives(check, [0.1, 0.2, 0.3, 0.2, 0.1, 0.5, 0.5, 0.5]) == []
    # a flat history (s = 0): a rise of 0.05 is under collapse_min_rise
    check = CollapseCheck(AlarmConfig(collapse_min_history=5))
    assert _negatives(check, [0.1] * 5 + [0.15] * 4) == []


def test_collapse_ignores_steps_false_negatives_explain_and_cools_down():
    check = CollapseCheck(AlarmConfig(collapse_min_history=5, collapse_window=10))
    assert _negatives(check, [0.07] * 5 + [0.6] * 4, explained={6, 7, 8, 9}) == []
    check = CollapseCheck(AlarmConfig(collapse_min_history=5, collapse_window=10))
    assert _negatives(check, [0.07] * 5 + [0.6] * 20) == [7]  # patience 2; then quiet: still the same stretch


def test_collapse_quiet_on_a_healthy_noisy_history_and_state_round_trip():
    rng = np.random.default_rng(3)
    check = CollapseCheck(AlarmConfig())
    assert _negatives(check, (0.07 + rng.normal(0, 0.025, 300)).tolist()) == []
    config = AlarmConfig(collapse_min_history=5)
    check = CollapseCheck(config)
    _negatives(check, [0.07] * 5 + [0.5])
    resumed = CollapseCheck(config)
    resumed.load_state_dict(json.loads(json.dumps(check.state_dict())))
    assert resumed.update(7, {"neg_sim": 0.5}).kind == "collapse"


def test_plateau_fires_once_per_stretch_of_zero_rates_after_a_positive_one():
    check = PlateauCheck(AlarmConfig(plateau_patience=3))
    rates = [0.0, 0.0, 0.0, 0.0, 1e-5, 1e-5, 0.0, 0.0, 0.0, 0.0, 0.0, 1e-5, 0.0, 0.0, 0.0]
    fired = [s for s, lr in enumerate(rates, 1) if check.update(s, [lr, lr]) is not None]
    assert fired == [9, 15]  # a warm-up from 0 is no plateau; zero steps 7, 8, 9 and 13, 14, 15


def test_plateau_needs_every_group_at_zero_and_known_rates():
    check = PlateauCheck(AlarmConfig(plateau_patience=2))
    assert [check.update(s, [1e-4, 0.0]) for s in range(1, 6)] == [None] * 5  # one group still moves
    assert check.update(6, None) is None and check.update(7, []) is None
    assert check.update(8, [0.0, 0.0]) is None and check.update(9, [0.0, 0.0]).kind == "plateau"


def test_plateau_state_round_trip():
    check = PlateauCheck(AlarmConfig(plateau_patience=3))
    for step, lr in enumerate([1e-4, 0.0, 0.0], 1):
        check.update(step, [lr])
    resumed = PlateauCheck(AlarmConfig(plateau_patience=3))
    resumed.load_state_dict(json.loads(json.dumps(check.state_dict())))
    assert resumed.update(4, [0.0]).step == 4


def test_monitor_raises_both_and_keeps_their_state(tmp_path):
    """Through StepMonitor: the similarity matrices a loss reports and the learning rates a trainer passes."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    tap = ContrastiveTap(strict=True)
    config = AlarmConfig(false_negative_min_history=4, plateau_patience=2)
    monitor = StepMonitor([], alarms=config, histogram_every=0, tap=tap, strict=True, warn=False)
    healthy = torch.tensor([[0.8, 0.3], [0.2, 0.7]])  # margins 0.5 and 0.5
    duplicated = torch.tensor([[0.8, 0.8], [0.7, 0.7]])  # each row's positive reappears as its negative
    schedule = [(healthy, 1e-4)] * 5 + [(duplicated, 1e-4), (healthy, 0.0), (healthy, 0.0)]
    for step, (scores, lr) in enumerate(schedule, 1):
        model(torch.randn(2, 3)).sum().backward()
        report_similarity(scores, tap=tap)
        monitor.on_optimizer_step(step, model, learning_rates=[lr])
        model.zero_grad()
    monitor.close()
    assert [(a.step, a.kind) for a in monitor.alarms] == [(6, "false_negatives"), (8, "plateau")]
    state = json.loads(json.dumps(monitor.state_dict()))
    resumed = StepMonitor([], alarms=config, tap=ContrastiveTap(), warn=False)
    resumed.load_state_dict(state)
    assert resumed.false_negative_check.cooldown_until == 6 + config.false_negative_window
    assert (resumed.plateau_check.armed, resumed.plateau_check.zero_steps) == (True, 2)


def _jumps(check: LearningRateJumpCheck, schedule) -> list[tuple[int, str | None]]:
    fired = (check.update(step, rates) for step, rates in enumerate(schedule, 1))
    return [(a.step, a.layer) for a in fired if a is not None]


def test_lr_jump_fires_once_at_a_hundredfold_rate_and_never_on_warm_up_or_decay():
    """Linear warm-up from 0 over 10 steps to 1e-4, linear decay, then the scheduled rate × 100 from step 31."""
    peak = 1e-4
    rates = [peak * s / 10 for s in range(10)] + [peak * (1 - s / 40) for s in range(20)]
    rates += [100 * peak * (1 - s / 40) for s in range(20, 30)]
    assert _jumps(LearningRateJumpCheck(AlarmConfig()), [[lr] for lr in rates]) == [(31, "group.0")]


@pytest.mark.parametrize("name", ["one_cycle", "cosine_warm_restarts", "linear_warmup_then_step_decay"])
def test_lr_jump_is_quiet_on_torch_schedulers(name):
    """torch's own schedulers (the rates a trainer applies): one-cycle's 25-fold ramp, warm restarts back to the
    peak, a warm-up from 1 % then step decay: none is a tenfold jump over the running maximum."""
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    schedulers = {
        "one_cycle": lambda: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=600),
        "cosine_warm_restarts": lambda: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=50),
        "linear_warmup_then_step_decay": lambda: torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [
                torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=30),
                torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.1),
            ],
            milestones=[30],
        ),
    }
    scheduler = schedulers[name]()
    schedule = []
    for _ in range(590):
        schedule.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert max(r[0] for r in schedule) / min(r[0] for r in schedule if r[0] > 0) > 10  # the range is wide
    assert _jumps(LearningRateJumpCheck(AlarmConfig()), schedule) == []


def test_lr_jump_names_the_group_that_jumped_and_keeps_its_state():
    check = LearningRateJumpCheck(AlarmConfig(lr_jump_ratio=10.0))
    assert _jumps(check, [[1e-4, 1e-3], [1e-4, 1e-3], [1e-4, 2e-2]]) == [(3, "group.1")]
    resumed = LearningRateJumpCheck(AlarmConfig(lr_jump_ratio=10.0))
    resumed.load_state_dict(json.loads(json.dumps(check.state_dict())))
    assert resumed.running_max == [1e-4, 2e-2]
    assert resumed.update(4, [1e-4, 1.9e-1]) is None  # 9.5x the new maximum: not a jump
    alarm = resumed.update(5, [2e-3, 0.0])
    assert (alarm.kind, alarm.layer, alarm.value) == ("lr_jump", "group.0", 2e-3)


def test_lr_jump_through_the_monitor():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    monitor = StepMonitor([], histogram_every=0, strict=True, warn=False)
    for step, lr in enumerate([0.0, 1e-5, 2e-5, 2e-5, 2e-3, 2e-3], 1):
        model(torch.randn(2, 3)).sum().backward()
        monitor.on_optimizer_step(step, model, learning_rates=[lr])
        model.zero_grad()
    monitor.close()
    assert [(a.step, a.kind) for a in monitor.alarms if a.kind == "lr_jump"] == [(5, "lr_jump")]
    assert StepMonitor([], warn=False).state_dict().get("lr_jump_running_max") == []
