"""A short version of the main job (tiny model, a few steps) writes everything a user is promised."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aquin_monitor.sinks import read_jsonl
from aquin_monitor.snapshot_record import Snapshot, list_snapshots

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "infonce.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("infonce_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_infonce_run_writes_metrics_snapshots_and_report(tiny_mean_model, tmp_path, capfd):
    import warnings

    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = _recipe().main(
            [
                "--model",
                tiny_mean_model,
                "--output-dir",
                str(out),
                "--max-steps",
                "4",
                "--snapshot-every",
                "2",
                "--batch-size",
                "8",
                "--max-train",
                "64",
                "--probe-docs",
                "283",
                "--max-seq-length",
                "32",
                "--no-umap",
            ]
        )
    assert code == 0
    # issue 25 point 6: no deprecation warning caused by the recipe or the package (the old losses import, ...)
    ours = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, (DeprecationWarning, FutureWarning))
        and ("recipes" in w.filename or "aquin_monitor" in w.filename)
    ]
    assert not ours
    printed = capfd.readouterr().err
    assert "deprecated" not in printed.lower(), printed
    # issue 25 point 4: every snapshot says when it starts and how long it took
    for step in (0, 2, 4):
        assert f"aquin-monitor: snapshot at step {step} (" in printed and "done in" in printed
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all("contrastive/gap" in r and "grad_norm/total" in r for r in rows)
    # LoRA on query/key/value: the per-block groups are LoRA matrices
    assert any(k.endswith("/lora_A") for k in rows[0]) and any(k.endswith("/lora_B") for k in rows[0])
    steps = [int(f.name) for f in list_snapshots(out)]
    assert steps == [0, 2, 4]
    base, last = Snapshot.load(out / "snapshots" / "0"), Snapshot.load(out / "snapshots" / "4")
    assert base.tag == "base" and "retrieval/ndcg@10" in base.metrics and "drift/base/cka" in last.metrics
    assert last.arrays["embeddings"].shape == base.arrays["embeddings"].shape == (300 + 283, 32)
    for snap in (base, last):  # anisotropy: the mean cosine over the n(n - 1) ordered pairs i != j, by brute force
        unit = snap.arrays["embeddings"].astype(np.float64)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        cos, n = unit @ unit.T, len(unit)
        assert snap.metrics["geometry/anisotropy"] == pytest.approx(
            (cos.sum() - np.trace(cos)) / (n * (n - 1)), abs=1e-5
        )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["before"]["retrieval/ndcg@10"] == base.metrics["retrieval/ndcg@10"]
    assert (out / "report.html").stat().st_size > 10_000
    event_dirs = {p.parent for p in out.rglob("events.out.tfevents.*")}
    tags = set()
    for d in event_dirs:
        acc = EventAccumulator(str(d))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"contrastive/gap", "grad_norm/total", "geometry/anisotropy"} <= tags
