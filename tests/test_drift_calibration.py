"""The drift test's calibration script (scripts/bench_drift_calibration.py) end to end, on a tiny model.

Fewer splits and one small probe than the README's run, so the bounds are wide, but each is a real check: the
false-alarm count of each null kind lies in the binomial 99.9 % range at alpha = 0.05, the halves null is
exactly ``drift_test`` of one model's embeddings against themselves, and a different function (CLS instead of
mean pooling of one tiny model) is detected at nearly every split.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from aquin_monitor.data import bundled_dataset, read_probe
from aquin_monitor.encoders import encode, load_model
from aquin_monitor.signals.two_sample import drift_test
from aquin_monitor.snapshot_runner import SnapshotRunner

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_drift_calibration.py"


def calibration_script():
    spec = importlib.util.spec_from_file_location("bench_drift_calibration", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_calibration_script_on_a_tiny_model(tmp_path, tiny_mean_model, tiny_cls_model):
    script = calibration_script()
    texts = read_probe(bundled_dataset("banking77") / "test.jsonl").texts
    chosen = np.sort(np.random.default_rng(0).choice(len(texts), 90, replace=False))
    probe = [texts[i] for i in chosen]  # the script's own draw of 90 Banking77 texts
    run_dir = tmp_path / "run"
    runner = SnapshotRunner(probe, umap=False, max_attention_texts=0)
    runner.take(load_model(tiny_mean_model), 0, tag="base", run_dir=run_dir)
    runner.take(load_model(tiny_cls_model), 1, run_dir=run_dir)
    splits = 60
    out = tmp_path / "calibration.json"
    results = script.main(
        [
            "--model", tiny_mean_model, "--probes", "banking77", "--probe-texts", "90", "--splits", str(splits),
            "--permutations", "199", "--seed-steps", "1", "--runs", str(run_dir), "--out", str(out),
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    low, high = binom.ppf(0.0005, splits, 0.05), binom.ppf(0.9995, splits, 0.05)
    for kind in ("halves", "seeds"):
        rate = results["false_alarms"][kind]
        assert rate["trials"] == splits and low <= rate["hits"] <= high, (kind, rate)
        assert rate["ci_low"] <= rate["rate"] <= rate["ci_high"]
    embeddings = encode(load_model(tiny_mean_model), probe, batch_size=32)
    assert results["nulls"]["halves"]["banking77"][7] == pytest.approx(
        drift_test(embeddings, embeddings, seed=7, n_permutations=199).p_value, abs=0.011
    )
    (power,) = results["power"]
    assert power["step"] == 1 and power["power"]["rate"] >= 0.9, power
