"""The package's short public surface (issue 15 point 2): seven names, imported lazily."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aquin_monitor

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "lightning.pytorch", "transformers", "sentence_transformers", "numpy")


def _modules_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter (this worktree first on the path) after running ``code``."""
    script = (
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_is_cheap():
    loaded = _modules_after("import aquin_monitor\nassert aquin_monitor.__file__.startswith(sys.path[0])")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_one_name_loads_only_its_own_framework():
    loaded = _modules_after("from aquin_monitor import read_probe")
    assert "aquin_monitor.data" in loaded
    assert "lightning" not in loaded and "transformers" not in loaded


def test_every_public_name_is_the_defining_modules_object():
    from aquin_monitor.callbacks.evaluator import SnapshotEvaluator
    from aquin_monitor.callbacks.hf_trainer import TrainerEmbeddingMonitor
    from aquin_monitor.callbacks.lightning import LightningEmbeddingMonitor
    from aquin_monitor.capture import monitored
    from aquin_monitor.data import read_probe
    from aquin_monitor.encoders import load_model
    from aquin_monitor.snapshot_runner import SnapshotRunner

    expected = {
        "LightningEmbeddingMonitor": LightningEmbeddingMonitor,
        "TrainerEmbeddingMonitor": TrainerEmbeddingMonitor,
        "monitored": monitored,
        "SnapshotRunner": SnapshotRunner,
        "SnapshotEvaluator": SnapshotEvaluator,
        "read_probe": read_probe,
        "load_model": load_model,
    }
    assert sorted(aquin_monitor.__all__) == sorted(expected)
    for name, obj in expected.items():
        assert getattr(aquin_monitor, name) is obj
    assert set(expected) <= set(dir(aquin_monitor))


def test_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no_such_thing"):
        aquin_monitor.no_such_thing  # noqa: B018


def test_building_the_cli_parser_loads_no_framework():
    """``aquin-monitor --help`` (and every verb's help) answers without torch, transformers or numpy: the
    parser is built, every sub-command's help formatted and ``main(["--help"])`` run, in a fresh interpreter."""
    loaded = _modules_after(
        "import argparse\n"
        "from aquin_monitor.cli import build_parser\n"
        "def walk(parser):\n"
        "    parser.format_help()\n"
        "    for action in parser._actions:\n"
        "        if isinstance(action, argparse._SubParsersAction):\n"
        "            for sub in action.choices.values():\n"
        "                walk(sub)\n"
        "walk(build_parser())\n"
        "import contextlib, io\n"
        "from aquin_monitor.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as shown:\n"
        "    assert main(['--help']) == 0 and main(['sae', 'convert', '--help']) == 0\n"
        "assert '--from' in shown.getvalue()"
    )
    assert "aquin_monitor.cli" in loaded and "aquin_monitor.sae.convert_cli" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
