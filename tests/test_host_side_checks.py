"""HostSideChecks: the five host-side checks in one object, fed as StepMonitor and the alarm benchmark's replay
used to feed them each by hand; and StepMonitor's state in the layout it had before (flat keys) still loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aquin_monitor.alarms import (
    AlarmConfig,
    CollapseCheck,
    FalseNegativeCheck,
    GapNarrowingCheck,
    HostSideChecks,
    LearningRateJumpCheck,
    PlateauCheck,
)
from aquin_monitor.monitor import StepMonitor

CONFIG = AlarmConfig(
    gap_window=6, false_negative_min_history=4, collapse_min_history=4, collapse_window=12, plateau_patience=3
)

#: the keys StepMonitor.state_dict wrote before HostSideChecks (one flat dict, each check's keys side by side)
OLD_MONITOR_KEYS = {
    "last_step",
    "detector",
    "gap_history",
    "gap_cooldown_until",
    "false_negative_history",
    "false_negative_cooldown_until",
    "plateau_armed",
    "plateau_zero_steps",
    "lr_jump_running_max",
    "collapse_history",
    "collapse_risen",
    "collapse_cooldown_until",
    "alarms",
}


class HandWired:
    """The wiring StepMonitor._alarms and bench_alarms.replay_checks each had, check by check: the reference."""

    def __init__(self, config: AlarmConfig):
        self.gap, self.false_negatives = GapNarrowingCheck(config), FalseNegativeCheck(config)
        self.collapse, self.plateau = CollapseCheck(config), PlateauCheck(config)
        self.lr_jump = LearningRateJumpCheck(config)

    def update(self, step, contrastive, loss, rates):
        fired = (
            self.gap.update(step, contrastive.get("gap"), loss),
            self.false_negatives.update(step, contrastive),
            self.collapse.update(step, contrastive, self.false_negatives.explains_step),
            self.plateau.update(step, rates),
            self.lr_jump.update(step, rates),
        )
        return [a for a in fired if a is not None]

    def old_monitor_state(self, last_step: int) -> dict:
        return {
            "last_step": last_step,
            "detector": None,
            **self.gap.state_dict(),
            **self.false_negatives.state_dict(),
            **self.plateau.state_dict(),
            **self.lr_jump.state_dict(),
            **self.collapse.state_dict(),
            "alarms": [],
        }


def stream(seed: int, steps: int = 120):
    """Noisy healthy steps with, at random places, each failure the checks look for (and NaN/None gaps)."""
    rng = np.random.default_rng(seed)
    events = {kind: int(rng.integers(15, steps - 10)) for kind in ("dup", "collapse", "narrow", "zero_lr", "jump")}
    lr_scale = 1.0
    for step in range(1, steps + 1):
        pos, hardest, neg = 0.7 + 0.02 * rng.standard_normal(), 0.3 + 0.02 * rng.standard_normal(), 0.07
        neg += 0.01 * rng.standard_normal()
        loss = 2.0 - 0.002 * step + 0.01 * rng.standard_normal()
        if 0 <= step - events["dup"] < 2:
            hardest = pos - 0.01
        if 0 <= step - events["collapse"] < 4:
            pos, hardest, neg = 0.97, 0.95, 0.6 + 0.05 * (step - events["collapse"])
        if 0 <= step - events["narrow"] < 8:
            pos, hardest = pos - 0.25, hardest - 0.1  # gap shrinks while the loss keeps falling
        lr = 1e-4 * lr_scale
        if 0 <= step - events["zero_lr"] < 5:
            lr = 0.0
        if step == events["jump"]:
            lr_scale = 50.0
            lr = 1e-4 * lr_scale
        gap = pos - neg if rng.random() > 0.03 else float("nan")
        contrastive = {"pos_sim": pos, "neg_sim": neg, "hardest_neg_sim": hardest, "gap": gap}
        rates = None if rng.random() < 0.02 else [lr, lr / 10]
        yield step, contrastive, (None if rng.random() < 0.02 else loss), rates


def _kinds(alarms):
    return [(a.step, a.kind, a.layer, a.message, a.value) for a in alarms]


@pytest.mark.parametrize("seed", range(6))
def test_same_alarms_as_the_checks_wired_by_hand(seed):
    ours, reference = HostSideChecks(CONFIG), HandWired(CONFIG)
    for step, contrastive, loss, rates in stream(seed):
        assert _kinds(ours.update(step, contrastive, loss, rates)) == _kinds(
            reference.update(step, contrastive, loss, rates)
        )


def test_the_streams_raise_every_kind_the_checks_own():
    """The comparison above is not vacuous: over the seeds, each of the five kinds fires."""
    fired = set()
    for seed in range(6):
        checks = HostSideChecks(CONFIG)
        for step, contrastive, loss, rates in stream(seed):
            fired |= {a.kind for a in checks.update(step, contrastive, loss, rates)}
    assert fired == set(HostSideChecks.KINDS)


def test_a_monitor_state_written_before_host_side_checks_resumes_the_same_alarms():
    """A StepMonitor checkpoint in the old layout (built here from the five checks, as the old code did) loads,
    and the resumed checks raise what an uninterrupted run raises."""
    steps = list(stream(3))
    cut = 60
    uninterrupted, before = HostSideChecks(CONFIG), HandWired(CONFIG)
    expected = []
    for step, contrastive, loss, rates in steps:
        alarms = uninterrupted.update(step, contrastive, loss, rates)
        if step > cut:
            expected += _kinds(alarms)
        else:
            before.update(step, contrastive, loss, rates)
    old_state = json.loads(json.dumps(before.old_monitor_state(cut)))
    assert set(old_state) == OLD_MONITOR_KEYS
    monitor = StepMonitor([], alarms=CONFIG, warn=False)
    monitor.load_state_dict(old_state)
    resumed = [a for s, c, lo, r in steps[cut:] for a in _kinds(monitor.host_checks.update(s, c, lo, r))]
    assert resumed == expected and expected  # something fired after the cut


def test_the_monitor_state_keeps_the_old_flat_layout():
    monitor = StepMonitor([], alarms=CONFIG, warn=False)
    for step, contrastive, loss, rates in stream(1, steps=40):
        monitor.host_checks.update(step, contrastive, loss, rates)
    state = json.loads(json.dumps(monitor.state_dict()))
    assert set(state) == OLD_MONITOR_KEYS
    assert state["lr_jump_running_max"] == monitor.lr_jump_check.running_max
    assert monitor.plateau_check is monitor.host_checks.plateau  # the old attribute names still reach the checks


def test_checks_state_round_trips_through_json():
    checks = HostSideChecks(CONFIG)
    steps = list(stream(4))
    for step, contrastive, loss, rates in steps[:50]:
        checks.update(step, contrastive, loss, rates)
    resumed = HostSideChecks(CONFIG)
    resumed.load_state_dict(json.loads(json.dumps(checks.state_dict())))
    for step, contrastive, loss, rates in steps[50:]:
        assert _kinds(resumed.update(step, contrastive, loss, rates)) == _kinds(
            checks.update(step, contrastive, loss, rates)
        )
