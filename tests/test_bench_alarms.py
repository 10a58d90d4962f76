"""scripts/bench_alarms.py: its scoring against hand-checked runs, and a --quick run on a tiny model whose
JSON shows the injected failures detected where they must be and a healthy run left alone."""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_alarms.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_alarms", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_alarms"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_docstring_examples(bench):
    assert doctest.testmod(bench).failed == 0


def _run(bench, failure, inject_at, alarms, seed=0):
    spec = bench.RunSpec("report", seed, failure, "lora", "infonce", inject_at, 60)
    return bench.RunResult(spec, [{"step": s, "kind": k, "layer": None} for s, k in alarms], 1.0)


def test_score_counts_precision_recall_and_latency_by_hand(bench):
    results = [
        _run(bench, "nan", 30, [(30, "nan"), (30, "nan"), (31, "spike")]),  # detected at 0; spike is false here
        _run(bench, "nan", 32, [(25, "nan")]),  # before the injection: false, and not detected
        _run(bench, "dead_layer", 30, [(32, "dead_layer")]),  # latency 2
        _run(bench, "dead_layer", 30, [(55, "dead_layer")]),  # latency 25 > horizon 20: not detected, but true
        _run(bench, "lr_x100", 30, [(34, "dead_layer")]),  # dead_layer counts for lr_x100: latency 4
        _run(bench, "healthy", None, []),
        _run(bench, "healthy", None, [(12, "dead_layer")]),
    ]
    scored = bench.score(results, horizon=20)
    assert scored["failures"]["nan"] == {
        "runs": 2,
        "detected": 1,
        "recall": 0.5,
        "median_latency": 0,
        "worst_latency": 0,
        "alarm_kinds": ["nan"],
    }
    dead = scored["failures"]["dead_layer"]
    assert (dead["recall"], dead["median_latency"], dead["worst_latency"]) == (0.5, 2, 2)
    assert scored["failures"]["lr_x100"]["median_latency"] == 4
    assert scored["alarm_kinds"]["nan"] == {"alarms": 3, "true": 2, "precision": pytest.approx(2 / 3)}
    # dead_layer: true on the two dead_layer runs and the lr_x100 run, false on the healthy run
    assert scored["alarm_kinds"]["dead_layer"] == {"alarms": 4, "true": 3, "precision": 0.75}
    assert scored["alarm_kinds"]["spike"]["precision"] == 0.0
    assert scored["alarm_kinds"]["plateau"] == {"alarms": 0, "true": 0, "precision": None}
    assert scored["healthy"] == {"runs": 2, "quiet": 1, "quiet_share": 0.5}


def test_runs_cover_both_modes_and_losses_and_inject_after_the_warm_up(bench):
    args = bench.parse_args(["--seeds-tune", "0-3", "--seeds-report", "100-103", "--healthy", "4"])
    runs = bench.plan(args)
    assert {r.seed_set for r in runs} == {"tune", "report"}
    for failure in ("nan", "dead_layer", "plateau", "healthy"):
        combos = {(r.mode, r.loss) for r in runs if r.failure == failure and r.seed_set == "report"}
        assert combos == {(m, lo) for m in bench.MODES for lo in bench.LOSSES}
    assert {r.mode for r in runs if r.failure == "collapse"} == {"full"}
    injected = [r for r in runs if r.inject_at is not None]
    assert all(30 <= r.inject_at <= 40 and r.steps == min(60, r.inject_at + 20) for r in injected)
    assert not set(bench.seed_list("0-3")) & set(bench.seed_list("100-103"))


@pytest.mark.parametrize(
    "flags, message",
    [(["--kinds", "nan,bogus"], "unknown failures ['bogus']"), (["--steps", "10"], "--steps must be >= 24")],
)
def test_bad_flags_exit_2_with_one_line(flags, message, tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *flags, "--out", str(tmp_path / "r.json")], capture_output=True, text=True
    )
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_quick_run_on_a_tiny_model_detects_what_it_must(tmp_path, tiny_mean_model):
    out = tmp_path / "alarms.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--model", tiny_mean_model, "--seeds-tune", ""]
    command += ["--kinds", "nan,plateau,dead_layer", "--healthy", "1", "--threads", "1", "--traces", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(out.read_text())
    assert document["complete"] and set(document["sets"]) == {"report"}
    runs = {r["failure"]: r for r in document["runs"]}
    assert set(runs) == {"nan", "plateau", "dead_layer", "healthy"}
    nan, plateau, dead = runs["nan"], runs["plateau"], runs["dead_layer"]
    # the NaN batch is flagged at its own step, before anything else
    assert min(a["step"] for a in nan["alarms"]) == nan["inject_at"]
    assert {a["kind"] for a in nan["alarms"] if a["step"] == nan["inject_at"]} == {"nan"}
    # lr 0 from t: the fifth zero step (plateau_patience 5) and no other alarm
    assert [(a["step"], a["kind"]) for a in plateau["alarms"]] == [(plateau["inject_at"] + 4, "plateau")]
    # the middle block's gradients cut at t: dead after dead_patience (3) steps, that block only (with LoRA:
    # its lora_A and lora_B groups)
    assert dead["alarms"] and {(a["step"], a["layer"].split("/")[0]) for a in dead["alarms"]} == {
        (dead["inject_at"] + 2, "layer.01")
    }
    assert runs["healthy"]["alarms"] == []
    scores = document["sets"]["report"]
    assert scores["failures"]["plateau"]["median_latency"] == 4
    assert scores["failures"]["dead_layer"]["median_latency"] == 2
    assert scores["healthy"]["quiet_share"] == 1.0
    assert "| `plateau` | plateau | 1 | 1.00 | 4 | 4 |" in done.stdout

    # a replay of the recorded traces with the same thresholds raises exactly the alarms the run raised
    replay = tmp_path / "replayed.json"
    command = [sys.executable, str(SCRIPT), "--replay", str(out), "--seeds-tune", "", "--seeds-report", "100"]
    done = subprocess.run(command + ["--out", str(replay)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    replayed = json.loads(replay.read_text())
    assert [r["alarms"] for r in replayed["runs"]] == [r["alarms"] for r in document["runs"]]
    assert replayed["sets"]["report"] == document["sets"]["report"]


def test_readme_table_is_the_committed_measurement(bench):
    """The README's results are the table of the JSON committed beside it (docs/bench_alarms_minilm.json)."""
    root = SCRIPT.parents[1]
    document = json.loads((root / "docs" / "bench_alarms_minilm.json").read_text())
    assert document["settings"]["model"] == "default" and document["settings"]["steps"] == 60
    assert set(document["sets"]) == {"tune", "report"}
    tune = {r["seed"] for r in document["runs"] if r["seed_set"] == "tune"}
    report = {r["seed"] for r in document["runs"] if r["seed_set"] == "report"}
    assert tune and report and not tune & report  # the report seeds were never used for tuning
    rescored = {
        name: bench.score(
            [
                bench.RunResult(
                    bench.RunSpec(**{k: r[k] for k in bench.RunSpec.__dataclass_fields__}), r["alarms"], 0.0
                )
                for r in document["runs"]
                if r["seed_set"] == name
            ],
            document["settings"]["horizon"],
        )
        for name in ("tune", "report")
    }
    assert rescored == document["sets"]
    assert bench.table(document) in (root / "README.md").read_text(encoding="utf-8")
