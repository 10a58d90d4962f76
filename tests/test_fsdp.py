"""Per-group gradient norms under FSDP2 (``torch.distributed.fsdp.fully_shard``) equal an unsharded run's.

Two CPU processes on gloo (``torchrun``) shard the tiny sentence-transformers model of the fixtures
(each BERT layer, then the root), train it with the monitor, and keep an unsharded copy of the same
weights as the reference (``tests/ddp/fsdp_steps.py``): per step, the reference's gradient of the mean
of both ranks' losses on the same global batch is grouped and measured in float64 by the test's own
regular expressions (``reference_stats``), never by the monitor. Checked:

- ``grad_norm/<group>`` and ``grad_norm/total`` equal the reference within rtol 1e-5 on every rank, full
  fine-tune and LoRA (only the adapters train, frozen base weights sharded too), and under FSDP1
  (``FullyShardedDataParallel(use_orig_params=True)``, the monitor handed the root wrapper as Lightning's
  callback hands it ``trainer.model``); a rank's own shard norm could not pass (each rank holds about
  half of every gradient);
- ``grad_norm_tensor/<parameter>`` (every 2 steps) equals each parameter's reference norm, and lists
  exactly the parameters with a gradient (the unused pooler is left out, as without sharding);
- the contrastive loss is the mean of the ranks' losses (the shard sums ride in the same all_reduce);
- a NaN written into one element of rank 1's shard only is seen by both ranks: the group and the
  total are non-finite in both logs, ``alarm/nan`` fires, and both ranks stop at that step;
- Lightning's ``ModelParallelStrategy`` (FSDP2): the norms equal those of the whole gradients gathered by
  ``DTensor.full_tensor()`` in a callback of the test (its ``FSDPStrategy`` is FSDP1, which Lightning
  starts without a ``device_id`` on CPU, where FSDP1 refuses to run: covered by the FSDP1 case above);
- the HF Trainer's FSDP2 through accelerate: same check, plus the total against the Trainer's own
  ``grad_norm``; skipped without 2 GPUs (accelerate runs FSDP only on accelerator devices);
- a rank whose monitor switched itself off still adds its shards (the other's norms stay exact); a
  rank that cannot read its shards adds zeros and a 0 count: the others then log no gradient norm for
  that step rather than a partial one, and keep logging everything else.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from test_distributed import SCRIPTS, WORLD_SIZE, _launch

from aquin_monitor.sinks import read_jsonl

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("this torch has no torch.distributed.fsdp.fully_shard (FSDP2, torch >= 2.6)", allow_module_level=True)

NAN_STEP = 4
RTOL = 1e-5
ATOL = 1e-8  # a few gradients are 0 in exact arithmetic (BERT's key biases), ~1e-11 in float32


def _run(tmp_path, model: str, mode: str, adapter: str | None = None) -> tuple[list[dict], list[list[dict]]]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD_SIZE}",
        str(SCRIPTS / "fsdp_steps.py"),
        model,
        str(tmp_path),
        mode,
        *([adapter] if adapter else []),
    ]
    _launch(command, tmp_path)
    evidence = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    rows = [
        read_jsonl(tmp_path / f"rank{r}" / "metrics.jsonl")
        if (tmp_path / f"rank{r}" / "metrics.jsonl").exists()
        else []
        for r in range(WORLD_SIZE)
    ]
    assert all(e["sharded"] for e in evidence)
    return evidence, rows


def _assert_norms(row: dict, reference: dict, zero_filled: dict | None = None) -> None:
    """``zero_filled``: ``{"groups": ..., "tensors": ...}`` FSDP1 measures as 0 where no gradient flowed (it
    fills a flat parameter's whole gradient, so the unused pooler has zeros, not None)."""
    if zero_filled:
        reference = {key: {**reference[key], **zero_filled[key]} for key in ("groups", "tensors")}
    logged = {k[len("grad_norm/") :]: v for k, v in row.items() if k.startswith("grad_norm/")}
    assert set(logged) == set(reference["groups"]), row["step"]
    for group, value in reference["groups"].items():
        assert logged[group] == pytest.approx(value, rel=RTOL), (row["step"], group)
    tensors = {k[len("grad_norm_tensor/") :]: v for k, v in row.items() if k.startswith("grad_norm_tensor/")}
    if row["step"] % 2 == 0:
        assert set(tensors) == set(reference["tensors"]), row["step"]
        for name, value in reference["tensors"].items():
            assert tensors[name] == pytest.approx(value, rel=RTOL, abs=ATOL), (row["step"], name)
    else:
        assert not tensors


@pytest.mark.parametrize(
    "mode, lora", [("full", False), ("full", True), ("fsdp1", False)], ids=["fsdp2", "fsdp2-lora", "fsdp1"]
)
def test_sharded_group_norms_equal_the_unsharded_reference(tiny_lora, tmp_path, mode, lora):
    base, adapter = tiny_lora
    evidence, rows = _run(tmp_path, base, mode, adapter if lora else None)
    reference = evidence[0]["steps"]
    assert len(reference) == NAN_STEP - 1
    expected_groups = (
        {f"layer.{i:02d}/lora_{m}" for i in range(2) for m in "AB"} if lora else {"embeddings", "layer.00", "layer.01"}
    )
    assert set(reference[0]["groups"]) == expected_groups | {"total"}
    for rank in range(WORLD_SIZE):
        assert [r["step"] for r in rows[rank]] == list(range(1, NAN_STEP + 1))
        zero_filled = None
        if mode == "fsdp1":
            pooler = [n for n in rows[rank][1] if ".pooler." in n]
            assert len(pooler) == 2
            zero_filled = {"groups": {"pooler": 0.0}, "tensors": {n[len("grad_norm_tensor/") :]: 0.0 for n in pooler}}
        for row, expected in zip(rows[rank], reference):
            _assert_norms(row, expected, zero_filled)
            assert row["contrastive/loss"] == pytest.approx(sum(expected["losses"]) / WORLD_SIZE, rel=RTOL)
        # the NaN in rank 1's shard: non-finite (null in JSON) for its group and the total, on both ranks
        nan_row = rows[rank][-1]
        assert (
            nan_row["grad_norm/layer.01" + ("/lora_A" if lora else "")] is None and nan_row["grad_norm/total"] is None
        )
        assert nan_row["alarm/nan"] == 1.0
        finite = [g for g in expected_groups if not g.startswith("layer.01")]
        assert all(nan_row[f"grad_norm/{g}"] is not None for g in finite)
        assert evidence[rank]["stopped"] == [False] * (NAN_STEP - 1) + [True]


def test_a_switched_off_rank_still_adds_its_shards(tiny_mean_model, tmp_path):
    evidence, rows = _run(tmp_path, tiny_mean_model, "off")
    assert evidence[0]["enabled"] is False and evidence[1]["enabled"] is True
    assert [r["step"] for r in rows[0]] == [1]  # rank 0 failed at step 2, before writing it
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4, 5]
    for row, expected in zip(rows[1], evidence[0]["steps"]):
        _assert_norms(row, expected)


def test_a_rank_that_cannot_read_its_shards_leaves_the_norms_out_not_partial(tiny_mean_model, tmp_path):
    evidence, rows = _run(tmp_path, tiny_mean_model, "partial")
    assert evidence[0]["enabled"] is False and evidence[1]["enabled"] is True
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4, 5]
    for row, expected in zip(rows[1][:2], evidence[0]["steps"]):
        _assert_norms(row, expected)
    for row in rows[1][2:]:
        assert not [k for k in row if k.startswith("grad_norm")], row["step"]
        assert row["contrastive/loss"] is not None  # everything else is still logged
    assert evidence[1]["stopped"] == [False] * 5


def test_lightning_model_parallel_strategy_norms_equal_the_whole_gradients(tiny_mean_model, tmp_path):
    """Lightning's FSDP2 strategy (``ModelParallelStrategy``, ``fully_shard`` in ``configure_model``): the
    logged norms equal those of the whole gradients, gathered by ``DTensor.full_tensor()`` in a callback."""
    _launch([sys.executable, str(SCRIPTS / "lightning_fsdp.py"), tiny_mean_model, str(tmp_path), "3"], tmp_path)
    evidence = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert all(e["sharded"] for e in evidence)
    reference = evidence[0]["reference"]
    assert len(reference) == 3 and set(reference[0]) == {"embeddings", "layer.00", "layer.01", "total"}
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row, expected in zip(rows, reference):
        _assert_norms(row, {"groups": expected, "tensors": {}})


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < WORLD_SIZE,
    reason="the HF Trainer's FSDP goes through accelerate, which enables FSDP only on accelerator devices "
    "(on CPU, DistributedType.MULTI_CPU, fsdp= silently trains with DDP): needs 2 GPUs",
)
def test_hf_trainer_fsdp2_through_accelerate(tiny_mean_model, tmp_path):
    """The Trainer's FSDP2 (accelerate ``fsdp_version: 2``): the logged norms equal the whole gradients' (gathered
    by ``DTensor.full_tensor()``) and the total equals the Trainer's own ``grad_norm`` (accelerate's reduction)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD_SIZE}",
        str(SCRIPTS / "hf_fsdp.py"),
        tiny_mean_model,
        str(tmp_path),
        "3",
    ]
    _launch(command, tmp_path)
    evidence = json.loads((tmp_path / "rank0.json").read_text())
    assert evidence["sharded"]
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row, expected in zip(rows, evidence["reference"]):
        _assert_norms(row, {"groups": expected, "tensors": {}})
    assert [r["grad_norm/total"] for r in rows] == pytest.approx(evidence["trainer_grad_norm"], rel=RTOL)
