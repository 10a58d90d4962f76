"""recipes/triplet.py, short: a tiny model, a few steps, a small probe; checks what the run wrote."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from aquin_monitor.alarms import ALARM_KINDS
from aquin_monitor.sinks import read_jsonl

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "triplet.py"
STEPS, SNAPSHOT_EVERY, PROBE_TRIPLETS = 4, 2, 6


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_triplet", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    return load_recipe()


@pytest.fixture(scope="module")
def captured_run(recipe, tiny_mean_model, tmp_path_factory):
    """The short run, and every training forward's sentence embeddings (a forward hook of the test's own)."""
    out = tmp_path_factory.mktemp("triplet") / "run"
    argv = [
        "--model",
        tiny_mean_model,
        "--output-dir",
        str(out),
        "--max-steps",
        str(STEPS),
        "--snapshot-every",
        str(SNAPSHOT_EVERY),
        "--batch-size",
        "4",
        "--max-train",
        "40",
        "--probe-triplets",
        str(PROBE_TRIPLETS),
        "--lr",
        "1e-3",
        "--no-umap",
        "--no-progress",
        "--no-report",
        "--device",
        "cpu",
    ]
    outputs = []

    def keep(module, args, output):  # training forwards only: snapshots encode in eval mode without gradients
        if isinstance(module, SentenceTransformer) and module.training and torch.is_grad_enabled():
            outputs.append(output["sentence_embedding"].detach().double().clone())

    handle = torch.nn.modules.module.register_module_forward_hook(keep)
    try:
        assert recipe.main(argv) == 0
    finally:
        handle.remove()
    return out, outputs


@pytest.fixture(scope="module")
def short_run(captured_run):
    return captured_run[0]


def test_metrics_every_step_with_gradient_and_contrastive_names(captured_run):
    short_run, outputs = captured_run
    rows = [r for r in read_jsonl(short_run / "metrics.jsonl") if "grad_norm/total" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert len(outputs) == STEPS  # one forward per step over anchors, positives and negatives
    for r, embeddings in zip(rows, outputs):
        assert {"grad_norm/embeddings", "grad_norm/layer.00", "grad_norm/layer.01"} <= r.keys()
        groups = [v for k, v in r.items() if k.startswith("grad_norm/") and k != "grad_norm/total"]
        assert math.sqrt(sum(v * v for v in groups)) == pytest.approx(r["grad_norm/total"], rel=1e-4)
        # cosine triplet (the recipe's default, margin 0.3) recomputed from the batch's embeddings
        a, p, n = torch.nn.functional.normalize(embeddings, dim=1).split(4)
        pos, neg = (a * p).sum(1), (a * n).sum(1)
        assert r["contrastive/pos_sim"] == pytest.approx(pos.mean().item(), rel=1e-5, abs=1e-6)
        assert r["contrastive/neg_sim"] == pytest.approx(neg.mean().item(), rel=1e-5, abs=1e-6)
        assert r["contrastive/hard_neg_sim"] == pytest.approx(neg.mean().item(), rel=1e-5, abs=1e-6)
        assert r["contrastive/gap"] == pytest.approx((pos - neg).mean().item(), rel=1e-5, abs=1e-6)
        assert r["contrastive/in_batch_acc"] == (pos > neg).double().mean().item()  # d(a, p) < d(a, n)
        hinge = torch.relu((1 - pos) - (1 - neg) + 0.3).mean().item()
        assert r["contrastive/loss"] == pytest.approx(hinge, rel=1e-5, abs=1e-7)
    assert (short_run / "events.jsonl").exists()
    assert all(
        json.loads(line)["kind"] in ALARM_KINDS
        for line in (short_run / "events.jsonl").read_text().splitlines()
        if line.strip()
    )


def test_tap_loss_equals_lightnings_own_logged_loss(short_run):
    """Two independent paths: the monitor's tap and Lightning's self.log("train/loss") to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(short_run / "tensorboard"))
    acc.Reload()
    lightning_loss = [e.value for e in sorted(acc.Scalars("train/loss"), key=lambda e: e.step)]
    monitor_loss = [r["contrastive/loss"] for r in read_jsonl(short_run / "metrics.jsonl") if "contrastive/loss" in r]
    assert len(lightning_loss) == STEPS
    assert monitor_loss == pytest.approx(lightning_loss, rel=1e-5)


def test_tensorboard_has_monitor_scalars(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(short_run / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"contrastive/gap", "contrastive/pos_sim", "grad_norm/layer.01", "grad_norm/total"} <= set(scalars)
    written = {
        r["step"]: r["contrastive/gap"] for r in read_jsonl(short_run / "metrics.jsonl") if "contrastive/gap" in r
    }
    read_back = {e.step: e.value for e in acc.Scalars("contrastive/gap")}
    assert read_back == pytest.approx(written, rel=1e-6)  # float32 in the event file


def test_snapshots_at_base_and_every_checkpoint(short_run):
    folders = sorted((p for p in (short_run / "snapshots").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert [int(p.name) for p in folders] == list(range(0, STEPS + 1, SNAPSHOT_EVERY))
    records = [json.loads((p / "snapshot.json").read_text()) for p in folders]
    assert records[0]["tag"] == "base" and all(r["tag"] == "checkpoint" for r in records[1:])
    assert "drift/base/cka" in records[-1]["metrics"]
    for folder, record in zip(folders, records):
        arrays = np.load(folder / "arrays.npz")
        emb, labels = arrays["embeddings"].astype(np.float64), arrays["labels"]
        assert emb.shape[0] == 3 * PROBE_TRIPLETS
        assert (
            list(labels) == ["anchor"] * PROBE_TRIPLETS + ["positive"] * PROBE_TRIPLETS + ["negative"] * PROBE_TRIPLETS
        )
        # anisotropy against a brute-force mean over distinct pairs
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        cos = unit @ unit.T
        n = len(unit)
        brute = (cos.sum() - np.trace(cos)) / (n * (n - 1))
        assert record["metrics"]["geometry/anisotropy"] == pytest.approx(brute, abs=1e-5)
    # a checkpoint was saved, so on_save_checkpoint fired and the last one is on disk
    assert list((short_run / "checkpoints").glob("*.ckpt"))


def test_probe_is_held_out_and_labelled(recipe):
    triplets = [(f"a{i % 30}", f"p{i}", f"n{i}") for i in range(90)]  # anchors repeat, as in SNLI
    train, probe = recipe.split_triplets(triplets, 10, seed=3)
    assert len({t[0] for t in probe}) == 10
    assert not {t[0] for t in train} & {t[0] for t in probe}
    assert len(train) == 90 - 10 * 3  # every triplet sharing a probe anchor leaves training
    probe_set = recipe.probe_set(probe)
    assert probe_set.labels.count("anchor") == probe_set.labels.count("negative") == 10
    assert probe_set.texts[10] == probe[0][1]
    with pytest.raises(ValueError, match="distinct anchors"):
        recipe.split_triplets(triplets, 31, seed=0)


def test_provoke_collapse_schedule(recipe):
    """Warm-up to the healthy rate, then the jump to --collapse-lr from --provoke-at on (0-based scheduler steps)."""
    args = recipe.parse_args(["--provoke", "collapse", "--lora-rank", "8", "--warmup-steps", "4", "--provoke-at", "6"])
    assert args.lora_rank == 0 and args.lr == 2e-5 and args.collapse_lr == recipe.COLLAPSE_LR
    factors = [recipe.lr_factor(step, args) for step in range(8)]
    assert factors == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 500, 500])
    healthy = recipe.parse_args(["--warmup-steps", "0"])
    assert [recipe.lr_factor(step, healthy) for step in (0, 50, 500)] == [1, 1, 1]
    assert recipe.parse_args(["--lora-rank", "4"]).lr == 1e-4
    with pytest.raises(SystemExit):
        recipe.parse_args(["--batch-size", "0"])


def _alarm_run(recipe, model, out, *extra):
    """24 steps on the tiny model at a healthy learning rate (1e-3), optionally with the provoked collapse."""
    argv = [
        "--model",
        model,
        "--output-dir",
        str(out),
        "--max-steps",
        "24",
        "--snapshot-every",
        "24",
        "--batch-size",
        "8",
        "--probe-triplets",
        "10",
        "--lr",
        "1e-3",
        "--no-umap",
        "--no-progress",
        "--no-report",
        "--device",
        "cpu",
        *extra,
    ]
    assert recipe.main(argv) == 0
    events = read_jsonl(out / "events.jsonl")
    snapshots = {
        p.name: json.loads((p / "snapshot.json").read_text()) for p in (out / "snapshots").iterdir() if p.name.isdigit()
    }
    return events, snapshots


def test_provoked_collapse_fires_alarms_and_the_healthy_run_stays_silent(recipe, tiny_mean_model, tmp_path):
    healthy, _ = _alarm_run(recipe, tiny_mean_model, tmp_path / "healthy")
    assert healthy == []

    # the jump to lr 1.0 is applied by optimizer step 13; its gradients (measured at step 14) blow up
    sae = _tiny_model_sae(tiny_mean_model, tmp_path / "sae")
    with pytest.warns(Warning, match="aquin-monitor alarm"):
        events, snapshots = _alarm_run(
            recipe,
            tiny_mean_model,
            tmp_path / "collapse",
            "--provoke",
            "collapse",
            "--provoke-at",
            "12",
            "--collapse-lr",
            "1.0",
            "--sae",
            str(sae),
        )
    kinds = {e["kind"] for e in events}
    assert {"spike", "dead_layer"} <= kinds
    assert min(e["step"] for e in events) > 12  # nothing before the jump
    first_spike = min(e["step"] for e in events if e["kind"] == "spike")
    first_dead = min(e["step"] for e in events if e["kind"] == "dead_layer")
    assert first_spike < first_dead  # blow-up, then saturation
    # the snapshots show the collapse: every probe sentence points the same way
    assert snapshots["24"]["metrics"]["geometry/anisotropy"] > 0.99
    assert snapshots["24"]["metrics"]["geometry/anisotropy"] > snapshots["0"]["metrics"]["geometry/anisotropy"]
    # and in the base model's SAE: the collapsed space leaves its dictionary, its features die
    before, after = snapshots["0"]["metrics"], snapshots["24"]["metrics"]
    assert after["sae/fvu"] > 2 * before["sae/fvu"]
    assert after["sae/dead_fraction"] > before["sae/dead_fraction"]
    lost = snapshots["24"]["details"]["sae/lost"]
    assert lost and all(f["frequency_after"] < f["frequency_before"] for f in lost)
    from aquin_monitor.report import write_report

    page = write_report(tmp_path / "collapse").read_text(encoding="utf-8")
    assert (
        "SAE features lost against the base model" in page and "SAE features gained and lost" in page
    )  # table and figure
    assert (tmp_path / "collapse" / "sae.html").is_file() and 'href="sae.html"' in page  # the run's SAE page, linked


def _tiny_model_sae(model_path, folder):
    """A small SAE of the tiny model's space, trained on its embeddings of held-out SNLI sentences."""
    from aquin_monitor.data import bundled_dataset
    from aquin_monitor.sae import SaeTrainConfig, train_sae

    rows = [
        json.loads(line) for line in (bundled_dataset("snli_triplets") / "test.jsonl").read_text().splitlines()[:400]
    ]
    texts = [row[key] for row in rows for key in ("anchor", "positive", "negative")]
    embeddings = SentenceTransformer(model_path, device="cpu").encode(texts, batch_size=64)
    result = train_sae(
        embeddings, SaeTrainConfig(num_latents=64, k=8, max_epochs=20, batch_size=256), show_progress=False
    )
    result.sae.save(folder)
    return folder


def test_wandb_offline_one_axis_config_probe_table_and_clean_exit(tiny_mean_model, tmp_path):
    """``python recipes/triplet.py --wandb`` as a user runs it (its own process, so wandb's exit path runs too),
    offline with WANDB_DIR set; the run's own files are read back (.wandb records, debug logs)."""
    import os
    import subprocess
    import sys

    import wandb  # noqa: F401  (the recipe's --wandb needs it: fail here with ImportError, not in the subprocess)
    from test_sinks import history_rows, wandb_records

    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(RECIPE.parents[1]),
    }
    env.pop("WANDB_API_KEY", None)
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        (tmp_path / name.lower()).mkdir()
        env[name] = str(tmp_path / name.lower())
    out = tmp_path / "run"
    argv = [
        "--model",
        tiny_mean_model,
        "--output-dir",
        str(out),
        "--max-steps",
        "3",
        "--snapshot-every",
        "2",
        "--batch-size",
        "4",
        "--max-train",
        "40",
        "--probe-triplets",
        "4",
        "--lr",
        "1e-3",
        "--no-umap",
        "--no-progress",
        "--no-report",
        "--device",
        "cpu",
        "--wandb",
    ]
    done = subprocess.run([sys.executable, str(RECIPE), *argv], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    (run_dir,) = (tmp_path / "wandb_dir" / "wandb").glob("offline-run-*")  # under WANDB_DIR, not the run folder
    assert not (out / "wandb").exists()
    assert str(tmp_path / "wandb_dir" / "wandb") in done.stdout  # where the recipe says the run is
    logs = "".join(p.read_text(errors="replace") for p in run_dir.glob("logs/debug*.log"))
    assert logs and "HandleAbandonedError" not in logs
    records = wandb_records(run_dir)
    rows = history_rows(records)
    lightning = [r for r in rows if "train/loss" in r]
    assert [r["trainer/global_step"] for r in lightning] == [0, 1, 2]
    assert all(r["aquin/step"] == r["trainer/global_step"] + 1 for r in lightning)  # every row on one axis
    monitor_loss = {r["aquin/step"]: r["contrastive/loss"] for r in rows if "contrastive/loss" in r}
    for row in lightning:  # one batch's loss: the same value at the same step in both
        assert monitor_loss[row["aquin/step"]] == pytest.approx(row["train/loss"], rel=1e-5)
    globs = [m.metric for m in records if m.WhichOneof("record_type") == "metric" and m.metric.glob_name == "*"]
    assert globs[-1].step_metric == "aquin/step"  # the last "*" definition wins over the logger's

    snapshot_steps = {r["aquin/step"] for r in rows if "geometry/anisotropy" in r}
    assert snapshot_steps == {0, 2, 3}
    images = [r for r in rows if any(k.endswith("/_type") and v == "image-file" for k, v in r.items())]
    assert images and {r["aquin/step"] for r in images} <= snapshot_steps
    for row in images:  # captioned with their own step
        captions = [v for k, v in row.items() if k.endswith("/caption")]
        assert captions and captions == [f"step {row['aquin/step']}"] * len(captions)

    config = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert config["lr"] == 1e-3 and config["batch_size"] == 4 and config["max_steps"] == 3

    probe_row = next(r for r in rows if r.get("probe/_type") == "table-file" and r["aquin/step"] == 3)
    table = json.loads((run_dir / "files" / probe_row["probe/path"]).read_text())
    assert table["columns"] == ["text", "label", "embedding"]
    saved = np.load(out / "snapshots" / "3" / "arrays.npz")
    assert [row[1] for row in table["data"]] == saved["labels"].tolist()
    assert len(table["data"]) == 3 * 4 and all(isinstance(row[0], str) and row[0] for row in table["data"])
    np.testing.assert_allclose(np.array([row[2] for row in table["data"]]), saved["embeddings"], rtol=1e-6)


def test_stop_on_takes_every_registered_alarm_kind(recipe, capsys):
    """``--stop-on`` choices come from the alarm registry: the kinds added after the recipe are accepted."""
    assert recipe.parse_args(["--stop-on", *ALARM_KINDS]).stop_on == list(ALARM_KINDS)
    assert recipe.parse_args(["--stop-on", "lr_jump", "collapse"]).stop_on == ["lr_jump", "collapse"]
    with pytest.raises(SystemExit) as exit_info:
        recipe.parse_args(["--stop-on", "lr_jumps"])
    assert exit_info.value.code == 2
    assert "--stop-on: invalid choice: 'lr_jumps'" in capsys.readouterr().err
