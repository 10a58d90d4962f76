"""docs/metrics.md documents every metric name a real run writes (issue 15 point 3), and agrees with the
metric registry (issue 20 point 1): every declared name is documented with the same unit, every documented
name is declared, and every name a real run logs is declared.

Two short runs on the tiny model write what the monitor logs: a full fine-tune with hard negatives,
snapshots (a labelled probe and a retrieval set with categories, a checkpoint in the middle so both
drift families appear), histograms and the per-tensor view; and a LoRA run that leaves clipping to the
Trainer (``grad_norm_post_clip/``, ``lora_A`` / ``lora_B`` groups). Every name in their metrics.jsonl,
histograms.jsonl, snapshots.jsonl and snapshot.json files must match a documented name or family.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.losses import MultipleNegativesRankingLoss

from aquin_monitor import SnapshotRunner, TrainerEmbeddingMonitor, monitored, read_probe
from aquin_monitor.alarms import ALARM_KINDS
from aquin_monitor.data import read_pairs
from aquin_monitor.metric_registry import METRICS, find_metric, name_pattern
from aquin_monitor.sinks import read_jsonl

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
NOT_METRICS = {"step", "time", "tag"}
#: A value for each placeholder, to turn a documented name into a name a run could log.
EXAMPLE_VALUES = {
    "NN": "03",
    "N": "2",
    "<vs>": "previous",
    "<parameter>": "0.auto_model.pooler.dense.weight",
    "<metric>": "ndcg@10",
    "<group>": "layer.01",
    "<set>": "banking77",
}


def documented_names(text: str) -> dict[str, list[str]]:
    """``{name: [formula, unit, meaning]}`` of each table row whose first cell holds backticked names.
    Cells are split on ``|`` but not on an escaped ``\\|`` (a formula's absolute value bars); a unit cell
    ``same`` is the unit of the row above."""
    rows: dict[str, list[str]] = {}
    unit = ""
    for line in text.splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) < 4 or not cells[0].startswith("`"):
            continue
        unit = unit if cells[2] == "same" else cells[2]
        for name in re.findall(r"`([^`]+)`", cells[0]):
            rows[name] = [cells[1], unit, cells[3]]
    return rows


def example_name(documented: str) -> str:
    """A name a run could log for a documented one: each placeholder replaced by an example value."""
    for placeholder in sorted(EXAMPLE_VALUES, key=len, reverse=True):
        documented = documented.replace(placeholder, EXAMPLE_VALUES[placeholder])
    return documented


def test_name_pattern():
    assert name_pattern("grad_norm/layer.NN/lora_A").match("grad_norm/layer.03/lora_A")
    assert not name_pattern("grad_norm/layer.NN").match("grad_norm/layer.03/lora_A")
    assert name_pattern("drift/<vs>/knn_overlap@10").match("drift/previous/knn_overlap@10")
    assert not name_pattern("drift/<vs>/cka").match("drift/other/cka")
    assert name_pattern("optim/lr/group.N").match("optim/lr/group.12")
    assert documented_names("| `a/b`, `a/c` | f | u | m |\n| name | x | y | z |") == {
        "a/b": ["f", "u", "m"],
        "a/c": ["f", "u", "m"],
    }
    assert documented_names("| `a` | \\|x\\| | u | m |\n| `b` | y | same | n |") == {
        "a": ["|x|", "u", "m"],
        "b": ["y", "u", "n"],
    }
    assert example_name("drift/<vs>/knn_overlap@10") == "drift/previous/knn_overlap@10"


DOCUMENTED = documented_names(DOC.read_text(encoding="utf-8"))


def test_every_documented_row_has_formula_and_unit():
    assert len(DOCUMENTED) > 60
    for name, (formula, unit, _meaning) in DOCUMENTED.items():
        assert formula and unit, name


def test_every_declared_metric_is_documented_with_its_unit():
    for spec in METRICS:
        assert spec.name in DOCUMENTED, (
            f"{spec.name} is declared in aquin_monitor/metric_registry.py but not in docs/metrics.md"
        )
        assert DOCUMENTED[spec.name][1] == spec.unit, (spec.name, DOCUMENTED[spec.name][1], spec.unit)
        assert spec.meaning.strip(), spec.name


def test_every_documented_name_is_declared_once():
    declared = [spec.name for spec in METRICS]
    assert len(declared) == len(set(declared))
    assert sorted(set(DOCUMENTED) - set(declared)) == []
    for name in DOCUMENTED:
        matches = [spec.name for spec in METRICS if spec.pattern.match(example_name(name))]
        assert matches == [name], (name, matches)  # exactly its own declaration matches it


def test_declared_directions_and_bounds_are_consistent():
    """Bounds are ordered; a fraction lies in [0, 1] (not a difference of two, nor the FVU, which a collapsed
    space sends far above 1: docs/metrics.md); a cosine in [-1, 1]."""
    for spec in METRICS:
        low, high = spec.bounds
        assert low is None or high is None or low < high, spec.name
        if spec.unit.startswith("fraction") and "/delta/" not in spec.name and spec.name != "sae/fvu":
            assert spec.bounds in ((0.0, 1.0), (None, None)), spec.name
        if spec.unit == "cosine" and not spec.name.startswith(("drift/", "retrieval/hard_negative_gap")):
            assert spec.bounds in ((-1.0, 1.0), (0.0, 1.0)), spec.name


def test_alarm_kinds_are_documented():
    assert {f"alarm/{kind}" for kind in ALARM_KINDS} <= DOCUMENTED.keys()


def _logged_names(run: Path) -> set[str]:
    names: set[str] = set()
    for row in read_jsonl(run / "metrics.jsonl"):
        names |= row.keys()
    if (run / "histograms.jsonl").exists():
        names |= {row["tag"] for row in read_jsonl(run / "histograms.jsonl")}
    if (run / "snapshots.jsonl").exists():
        for row in read_jsonl(run / "snapshots.jsonl"):
            names |= row.keys()
    for snapshot in run.glob("snapshots/*/snapshot.json"):
        names |= json.loads(snapshot.read_text(encoding="utf-8"))["metrics"].keys()
    return names - NOT_METRICS


def _train(model, out, rows, monitor, max_steps, max_grad_norm=1.0, save_steps=None):
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        use_cpu=True,
        seed=0,
        max_grad_norm=max_grad_norm,
    )
    loss = monitored(MultipleNegativesRankingLoss(model))
    SentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), loss=loss, callbacks=[monitor]
    ).train()


@pytest.fixture(scope="module")
def logged(tiny_lora, tmp_path_factory) -> set[str]:
    from peft import PeftModel

    base, adapter = tiny_lora
    tmp = tmp_path_factory.mktemp("metrics-doc")
    pairs = [
        {
            "query": f"question {i} about topic {i % 4}",
            "document": f"answer {i} on topic {i % 4}",
            "category": f"c{i % 2}",
        }
        for i in range(16)
    ]
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    labels = ["cards", "loans", "fees"] * 6
    (tmp / "probe.jsonl").write_text(
        "".join(json.dumps({"text": f"probe text {i} about {c}", "label": c}) + "\n" for i, c in enumerate(labels)),
        encoding="utf-8",
    )
    runner = SnapshotRunner(read_probe(tmp / "probe.jsonl"), read_pairs(tmp / "pairs.jsonl"), umap=False)
    rows = [
        {"anchor": p["query"], "positive": p["document"], "negative": pairs[(i + 1) % 16]["document"]}
        for i, p in enumerate(pairs)
    ]
    torch.manual_seed(0)
    full = tmp / "full"
    _train(
        SentenceTransformer(base, device="cpu"),
        full,
        rows * 2,
        TrainerEmbeddingMonitor(snapshots=runner, tensor_norms_every=2, strict=True),
        4,
        save_steps=2,
    )
    lora = tmp / "lora"
    model = SentenceTransformer(base, device="cpu")
    model[0].auto_model = PeftModel.from_pretrained(model[0].auto_model, adapter, is_trainable=True)
    _train(
        model,
        lora,
        [{"anchor": r["anchor"], "positive": r["positive"]} for r in rows],
        TrainerEmbeddingMonitor(take_over_clipping=False, strict=True),
        2,
    )
    return _logged_names(full) | _logged_names(lora)


def test_every_logged_name_is_declared_and_documented(logged):
    undeclared = sorted(name for name in logged if find_metric(name) is None)
    assert not undeclared, f"not in aquin_monitor/metric_registry.py: {undeclared}"
    patterns = [name_pattern(n) for n in DOCUMENTED]
    undocumented = sorted(name for name in logged if not any(p.match(name) for p in patterns))
    assert not undocumented, f"not in docs/metrics.md: {undocumented}"


def test_the_runs_cover_every_family(logged):
    """The runs really wrote each family the test is meant to check (so the check above can fail)."""
    for prefix in (
        "grad_norm/layer.00",
        "grad_norm_post_clip/layer.00/lora_A",
        "grad_norm_tensor/",
        "contrastive/hard_neg_sim",
        "contrastive/pos_sim_hist",
        "optim/lr",
        "geometry/alignment",
        "layers/similarity.",
        "attention/entropy.",
        "retrieval/ndcg@10",
        "drift/base/centroid_shift",
        "drift/previous/cka",
        "drift/base/delta/ndcg@10",
    ):
        assert any(name.startswith(prefix) for name in logged), prefix


def test_readme_links_the_definitions_it_ships():
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    assert "(docs/metrics.md)" in readme
    assert "../shared" not in readme and "DESIGN.md" not in readme  # not in the repository users clone
