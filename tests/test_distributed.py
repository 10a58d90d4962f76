"""Two-process CPU DDP (gloo) runs of both trainers with the monitor and snapshots on.

Each run is a real multi-process launch (Lightning's own ``ddp`` launcher; ``torchrun`` for the
sentence-transformers Trainer) of a script under ``tests/ddp/``, killed after ``RUN_TIMEOUT_S``
so that a deadlock fails the test instead of hanging CI. Checked afterwards:

- only rank zero wrote: one ``metrics.jsonl`` with training steps 1..N each once, one
  ``snapshots.jsonl`` and one snapshot folder per snapshot step, the snapshot hook ran on rank zero only;
- the contrastive statistics are the reduction over both ranks: each rank records the sums of its
  own cosine matrix, computed in the script with plain torch from the embeddings the loss saw,
  and the logged ``pos_sim``/``neg_sim``/``in_batch_acc``/``loss`` must equal the pooled values;
- every rank saw the same reduced values (its monitor's gap history equals rank zero's log).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aquin_monitor.sinks import read_jsonl
from aquin_monitor.snapshot_record import list_snapshots

SCRIPTS = Path(__file__).parent / "ddp"
REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 300
MAX_STEPS = 4
SNAPSHOT_STEPS = [0, 2, 4]  # base, then checkpoints every 2 steps (the end coincides with step 4)
WORLD_SIZE = 2
# variables a launcher reads: inherited ones would make the script believe it is already a worker
_LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _launch(command: list[str], out: Path) -> None:
    """Run ``command`` in its own process group; kill the whole group and fail on timeout or error."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        command, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too, not only the launcher
        output, _ = proc.communicate()
        pytest.fail(f"distributed run did not finish within {RUN_TIMEOUT_S} s (deadlock?):\n{output[-4000:]}")
    assert proc.returncode == 0, f"distributed run failed with exit code {proc.returncode}:\n{output[-4000:]}"


def _check_run(out: Path) -> None:
    run_dir = out / "run"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    for rank, evidence in enumerate(ranks):
        assert evidence["rank"] == rank and evidence["world_size"] == WORLD_SIZE
        assert evidence["global_step"] == MAX_STEPS
        assert len(evidence["local"]) == MAX_STEPS  # one loss call per optimizer step on every rank

    # only rank zero writes; every rank computes
    for name in ("metrics.jsonl", "snapshots.jsonl"):
        assert [p.relative_to(out) for p in out.rglob(name)] == [Path("run") / name]
    assert ranks[0]["n_sinks"] >= 1 and ranks[1]["n_sinks"] == 0
    assert [e["final_state"]["last_step"] for e in ranks] == [MAX_STEPS] * WORLD_SIZE
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train_rows = [r for r in rows if "grad_norm/total" in r]
    assert [r["step"] for r in train_rows] == list(range(1, MAX_STEPS + 1))
    assert [r["step"] for r in read_jsonl(run_dir / "snapshots.jsonl")] == SNAPSHOT_STEPS

    # snapshots: computed on rank zero only, one folder per step, no half-written leftovers
    assert ranks[0]["snapshot_steps"] == SNAPSHOT_STEPS and ranks[1]["snapshot_steps"] == []
    assert [int(p.name) for p in list_snapshots(run_dir)] == SNAPSHOT_STEPS
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == sorted(str(s) for s in SNAPSHOT_STEPS)

    # contrastive statistics: the pooled values over both ranks' own matrices
    for step, row in enumerate(train_rows):
        local = [evidence["local"][step] for evidence in ranks]
        rows_total = sum(x["rows"] for x in local)
        assert row["contrastive/pos_sim"] == pytest.approx(sum(x["pos_sum"] for x in local) / rows_total, rel=1e-5)
        assert row["contrastive/neg_sim"] == pytest.approx(
            sum(x["neg_sum"] for x in local) / sum(x["neg_count"] for x in local), rel=1e-5
        )
        assert row["contrastive/in_batch_acc"] == pytest.approx(sum(x["correct"] for x in local) / rows_total, abs=1e-6)
        assert row["contrastive/loss"] == pytest.approx(sum(x["loss"] for x in local) / WORLD_SIZE, rel=1e-5)
    # the ranks' batches differ, so a rank-zero-only value could not pass the check above
    assert any(
        abs(a["pos_sum"] / a["rows"] - b["pos_sum"] / b["rows"]) > 1e-4
        for a, b in zip(ranks[0]["local"], ranks[1]["local"])
    )

    # every rank took its alarm decisions on the same reduced values rank zero logged
    logged = [[r["contrastive/gap"], r["contrastive/loss"]] for r in train_rows]
    for evidence in ranks:
        assert evidence["final_state"]["gap_history"] == logged


def test_lightning_ddp_two_processes(tiny_mean_model, tmp_path):
    _launch(
        [sys.executable, str(SCRIPTS / "lightning_ddp.py"), tiny_mean_model, str(tmp_path), str(MAX_STEPS)], tmp_path
    )
    _check_run(tmp_path)


def test_one_rank_switching_its_monitor_off_does_not_hang_the_others(tiny_mean_model, tmp_path):
    """Rank zero's monitor fails at step 2 and switches off; rank one keeps reducing and logging nothing."""
    _launch(
        [sys.executable, str(SCRIPTS / "lightning_ddp.py"), tiny_mean_model, str(tmp_path), str(MAX_STEPS), "2"],
        tmp_path,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert [e["global_step"] for e in ranks] == [MAX_STEPS] * WORLD_SIZE  # training finished on both ranks
    assert ranks[0]["monitor_enabled"] is False and ranks[1]["monitor_enabled"] is True
    assert ranks[1]["final_state"]["last_step"] == MAX_STEPS


def test_hf_trainer_torchrun_two_processes(tiny_mean_model, tmp_path):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD_SIZE}",
        str(SCRIPTS / "hf_ddp.py"),
        tiny_mean_model,
        str(tmp_path),
        str(MAX_STEPS),
    ]
    _launch(command, tmp_path)
    _check_run(tmp_path)
    # the monitor's state went into every checkpoint, written once (by rank zero)
    for step in (2, 4):
        state = json.loads((tmp_path / "trainer" / f"checkpoint-{step}" / "aquin_monitor_state.json").read_text())
        assert state["last_step"] == step


def test_losses_gathering_across_ranks_are_read_at_this_ranks_columns(tiny_mean_model, tmp_path):
    """gather_across_devices: each rank's anchors sit at rank * batch + i among every rank's candidates."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD_SIZE}",
        str(SCRIPTS / "gather_ddp.py"),
        tiny_mean_model,
        str(tmp_path),
    ]
    _launch(command, tmp_path)
    for rank in range(WORLD_SIZE):
        evidence = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert sorted(evidence) == ["cached_gist", "cached_mnrl", "gist", "mnrl"]
        for kind, found in evidence.items():
            for key, expected in found["reference"].items():
                assert found["read"][key] == pytest.approx(expected, abs=1e-5), (rank, kind, key)
