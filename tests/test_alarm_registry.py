"""The alarm registry (metric_registry.ALARM_REGISTRY, re-exported by alarms): every kind a check raises is in
it, and everything that lists alarm kinds reads it (stop_on, figures' colours, the report's badges, the metric
registry, the README's metric table)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.colors
import pytest

from aquin_monitor import alarms, metric_registry, plots
from aquin_monitor.alarms import ALARM_KINDS, ALARM_REGISTRY, HostSideChecks
from aquin_monitor.monitor import StepMonitor
from aquin_monitor.report import render_report

README = Path(__file__).resolve().parents[1] / "README.md"


def relative_luminance(colour: str) -> float:
    """WCAG 2.1 relative luminance of an sRGB colour."""
    channels = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in matplotlib.colors.to_rgb(colour)]
    return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]


def test_contrast_formula_on_known_pairs():
    assert (1.05 / (relative_luminance("#000000") + 0.05)) == pytest.approx(21.0)
    assert (1.05 / (relative_luminance("#767676") + 0.05)) == pytest.approx(4.54, abs=0.01)  # WCAG's grey on white


def test_one_registry_behind_every_list():
    assert alarms.ALARM_KINDS is metric_registry.ALARM_KINDS
    assert len(set(ALARM_KINDS)) == len(ALARM_KINDS) == len(ALARM_REGISTRY)
    # the kinds the checks raise: the gradient detector's three and the host-side checks' five
    assert {"dead_layer", "spike", "nan", *HostSideChecks.KINDS} == set(ALARM_KINDS)
    registered = [spec.name for spec in metric_registry.METRICS if spec.name.startswith("alarm/")]
    assert registered == [f"alarm/{kind}" for kind in ALARM_KINDS]


def test_stop_on_accepts_every_registered_kind_and_only_those():
    assert StepMonitor([], stop_on=ALARM_KINDS, warn=False).stop_on == ALARM_KINDS
    with pytest.raises(ValueError, match="unknown alarm kinds"):
        StepMonitor([], stop_on=["lr_jumps"], warn=False)


def test_each_kind_has_its_own_colour_visible_on_white():
    colours = [matplotlib.colors.to_hex(kind.colour) for kind in ALARM_REGISTRY]
    assert len(set(colours)) == len(colours)
    assert not {"#666666", "#1a9641"} & set(colours)  # not the unregistered kind's grey, not the report's "ok" green
    for kind in ALARM_REGISTRY:
        contrast = 1.05 / (relative_luminance(kind.colour) + 0.05)
        assert contrast >= 3.0, (kind.name, contrast)  # WCAG non-text contrast (markers on white axes, badge text)


def test_figures_draw_each_kind_in_its_registered_colour():
    rows = [{"step": s, "contrastive/loss": 1.0 / s} for s in range(1, 12)]
    events = [{"step": i + 1, "kind": kind} for i, kind in enumerate(ALARM_KINDS)] + [{"step": 10, "kind": "<$$>"}]
    axes = plots.loss_curve(rows, events).axes[0]
    drawn = {line.get_label(): matplotlib.colors.to_hex(line.get_color()) for line in axes.lines}
    for kind in ALARM_REGISTRY:
        assert drawn[f"alarm: {kind.name}"] == kind.colour
    assert drawn["alarm: <$$>"] == "#666666"  # a kind from elsewhere: grey


def test_report_badges_take_the_registered_colours(tmp_path):
    row = {"step": 1, "contrastive/loss": 0.5, **{f"alarm/{kind}": 1.0 for kind in ALARM_KINDS}}
    row["alarm/<script>x"] = 1.0
    (tmp_path / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    page = render_report(tmp_path)
    for kind in ALARM_REGISTRY:
        assert f".badge.alarm-{kind.name} {{ background: {kind.colour}; }}" in page
        assert f'<span class="badge alarm-{kind.name}">{kind.name}: 1</span>' in page
    assert "<script>x" not in page and "&lt;script&gt;x: 1" in page


def test_readme_metric_table_lists_every_alarm_kind():
    text = README.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| alarms |"))
    assert re.findall(r"`alarm/(\w+)`", row) == list(ALARM_KINDS)
