"""The package's docstring examples run as pytest items (``--doctest-modules``, ``aquin_monitor`` in ``testpaths``).

pytest runs them; these checks keep that so: the configuration collects the package, and the modules
whose examples document their public entry points still have examples (a module whose examples were
deleted would otherwise pass silently).
"""

from __future__ import annotations

import doctest
import importlib

import pytest

# module -> fewest examples it must keep (its count when the doctest runners moved into pytest)
DOCUMENTED = {
    "aquin_monitor._optional": 1,
    "aquin_monitor.alarms": 3,
    "aquin_monitor.atomic": 10,
    "aquin_monitor.cli_tools": 10,
    "aquin_monitor.capture": 20,
    "aquin_monitor.data": 15,
    "aquin_monitor.encoders": 10,
    "aquin_monitor.losses": 15,
    "aquin_monitor.metric_registry": 10,
    "aquin_monitor.failsoft": 3,
    "aquin_monitor.jsonio": 2,
    "aquin_monitor.distributed": 1,
    "aquin_monitor.plots": 2,
    "aquin_monitor.report": 5,
    "aquin_monitor.signals.contrastive": 6,
    "aquin_monitor.signals.drift": 6,
    "aquin_monitor.signals.two_sample": 8,
    "aquin_monitor.signals.geometry": 6,
    "aquin_monitor.signals.gradients": 2,
    "aquin_monitor.signals.layers": 2,
    "aquin_monitor.signals.retrieval": 6,
    "aquin_monitor.sinks.base": 6,
    "aquin_monitor.sinks.jsonl": 6,
    "aquin_monitor.snapshot_runner": 4,
    "aquin_monitor.snapshot_keys": 1,
    "aquin_monitor.snapshot_record": 12,
    "aquin_monitor.signals.neighbours": 2,
    "aquin_monitor.signals.arrays": 15,
    "aquin_monitor.signals.streaming": 4,
    "aquin_monitor.sae.stats": 8,
    "aquin_monitor.sae.corpus_texts": 4,
    "aquin_monitor.corpus_geometry": 4,
    "aquin_monitor.verdict": 6,
    "aquin_monitor.signals.comparison": 8,
}


def test_pytest_collects_the_package_doctests(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.getoption("doctestmodules")
    assert "aquin_monitor" in pytestconfig.getini("testpaths")


@pytest.mark.parametrize(("module", "fewest"), sorted(DOCUMENTED.items()))
def test_module_keeps_its_examples(module: str, fewest: int) -> None:
    found = doctest.DocTestFinder().find(importlib.import_module(module))
    assert sum(len(test.examples) for test in found) >= fewest
