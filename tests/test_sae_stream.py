"""Streaming SAE training: the buffer plan, bounded reads, data-parallel equality, resume after kill -9, a lost rank.

References: the in-memory split (``randperm(n)`` with the seed) and mean (numpy), a single-process run
on the same global batches (for two gloo ranks: state dicts within 1e-5), an uninterrupted run (for a
resumed one: bit-identical on the CPU).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aquin_monitor.rows import ArrayRows
from aquin_monitor.sae.stream import RowPlan, buffer_batches, scan_source
from aquin_monitor.sae.train import (
    SaeTrainConfig,
    SaeTrainingError,
    train_rows,
    train_sae,
)

JOB = Path(__file__).parent / "ddp" / "sae_train_job.py"
REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300
DDP_TOLERANCE = 1e-5
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


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows(n=1000, d=12, seed=1) -> np.ndarray:
    """Sparse combinations of 30 random directions plus noise and an offset (what tests/ddp/sae_train_job.py trains
    on)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(30, d))
    codes = (rng.random((n, 30)) < 0.1) * rng.uniform(0.5, 2, (n, 30))
    return (codes @ directions + 0.05 * rng.normal(size=(n, d)) + 1.0).astype(np.float32)


class CountingRows(ArrayRows):
    """An :class:`ArrayRows` that records the size of every read."""

    def __init__(self, array: np.ndarray) -> None:
        super().__init__(array)
        self.reads: list[int] = []

    def read(self, start: int, stop: int) -> np.ndarray:
        self.reads.append(stop - start)
        return super().read(start, stop)


# ---------------------------------------------------------------- the plan


def test_one_block_splits_as_randperm_of_the_seed():
    plan = RowPlan(n_rows=500, block_rows=1024, val_fraction=0.1, seed=7)
    order = torch.randperm(500, generator=torch.Generator().manual_seed(7))
    train, val = plan.split(0)
    assert torch.equal(val, order[:50].sort().values) and torch.equal(train, order[50:].sort().values)


def test_blocks_partition_the_rows_and_cap_the_held_out_set():
    plan = RowPlan(n_rows=10_000, block_rows=1000, val_fraction=0.2, seed=0, max_val_rows=500)
    seen = []
    for block in range(plan.n_blocks):
        start, _ = plan.block_range(block)
        train, val = plan.split(block)
        assert set(train.tolist()).isdisjoint(val.tolist())
        seen += (train + start).tolist() + (val + start).tolist()
        assert len(val) == 50  # f = min(0.2, 500 / 10,000) = 0.05 of each block
    assert sorted(seen) == list(range(10_000))
    assert plan.split(3)[1].tolist() == RowPlan(10_000, 1000, 0.2, 0, 500).split(3)[1].tolist()  # deterministic
    assert plan.split(3)[1].tolist() != plan.split(4)[1].tolist()


def test_scan_gives_the_training_mean_and_the_held_out_rows():
    x = rows(n=2300)
    plan = RowPlan(len(x), block_rows=500, val_fraction=0.05, seed=3)
    mean, held_out, n_train = scan_source(ArrayRows(x), plan)
    train_idx = np.concatenate([plan.split(b)[0].numpy() + plan.block_range(b)[0] for b in range(plan.n_blocks)])
    val_idx = np.setdiff1d(np.arange(len(x)), train_idx)
    assert n_train == len(train_idx) and np.array_equal(held_out.numpy(), x[val_idx])
    np.testing.assert_allclose(mean.numpy(), x[train_idx].astype(np.float64).mean(0), rtol=0, atol=1e-6)


def test_an_epoch_uses_every_training_row_once_and_ranks_split_each_global_batch():
    n, d = 1100, 3
    x = np.zeros((n, d), dtype=np.float32)
    x[:, 0] = np.arange(n)  # each row carries its own number
    source = CountingRows(x)
    plan = RowPlan(n, block_rows=300, val_fraction=0.1, seed=0)
    held_out = set(scan_source(source, plan)[1][:, 0].long().tolist())
    used = []
    order = torch.randperm(plan.n_blocks, generator=torch.Generator().manual_seed(1)).tolist()
    for blocks in (order[:2], order[2:]):
        n_rows = sum(len(plan.split(b)[0]) for b in blocks)
        permutation = torch.randperm(n_rows, generator=torch.Generator().manual_seed(2))
        alone = buffer_batches(source, plan, blocks, permutation, 64)
        shares = [buffer_batches(source, plan, blocks, permutation, 64, rank=r, world_size=3) for r in range(3)]
        assert sum(len(share.rows) for share in shares) == len(alone.rows)  # each rank reads only its share
        for (_, batch, size), *parts in zip(alone.batches(), *(share.batches() for share in shares)):
            assert size == len(batch) and all(part[2] == size for part in parts)
            assert torch.equal(torch.cat([part[1] for part in parts]), batch)  # rank 0's rows, then rank 1's, ...
            used += batch[:, 0].long().tolist()
    assert sorted(used + sorted(held_out)) == list(range(n))  # every training row once, no held-out row
    assert max(source.reads) <= 300  # one block at a time


def test_multi_block_streaming_trains_as_well_as_one_buffer():
    x = rows(n=6000, d=16, seed=4)
    config = {"num_latents": 64, "k": 4, "batch_size": 128, "max_epochs": 8, "patience": 8, "lr": 3e-3, "seed": 1}
    whole = train_sae(x, SaeTrainConfig(**config), show_progress=False)
    source = CountingRows(x)
    streamed = train_rows(source, SaeTrainConfig(**config, block_rows=500, buffer_blocks=2), show_progress=False)
    assert max(source.reads) <= 500
    best_whole = min(r["sae/fvu"] for r in whole.history)
    best_streamed = min(r["sae/fvu"] for r in streamed.history)
    assert best_streamed < 1.1 * best_whole, (best_streamed, best_whole)


# ---------------------------------------------------------------- checkpoints


def test_a_checkpoint_of_other_settings_or_a_cut_file_is_refused(tmp_path):
    x = rows(n=400)
    checkpoint = tmp_path / "state.pt"
    config = SaeTrainConfig(num_latents=32, k=4, batch_size=64, max_epochs=1, checkpoint=str(checkpoint))
    train_rows(ArrayRows(x), config, show_progress=False)
    with pytest.raises(SaeTrainingError, match=r"state.pt: batch_size: 64 in the checkpoint, 32 now"):
        train_rows(ArrayRows(x), SaeTrainConfig(**{**config.__dict__, "batch_size": 32}), show_progress=False)
    with pytest.raises(
        SaeTrainingError, match=r"rows: the checkpoint was trained on 400 rows of dimension 12, these are 300"
    ):
        train_rows(ArrayRows(x[:300]), config, show_progress=False)
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(SaeTrainingError, match=r"state.pt: not a readable training checkpoint"):
        train_rows(ArrayRows(x), config, show_progress=False)


def test_a_finished_run_resumed_returns_the_same_sae(tmp_path):
    x = rows(n=400)
    config = SaeTrainConfig(num_latents=32, k=4, batch_size=64, max_epochs=2, checkpoint=str(tmp_path / "s.pt"))
    first = train_rows(ArrayRows(x), config, show_progress=False)
    again = train_rows(ArrayRows(x), config, show_progress=False)
    assert again.history == first.history
    assert all(torch.equal(first.sae.state_dict()[k], again.sae.state_dict()[k]) for k in first.sae.state_dict())


# ---------------------------------------------------------------- processes


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_to_end(command: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=_env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{command} did not finish within {TIMEOUT_S} s (deadlock?):\n{output[-4000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, output, None)


def _job(tmp_path: Path, out: str, *args: str) -> subprocess.CompletedProcess:
    return run_to_end([sys.executable, str(JOB), str(tmp_path / "rows.npy"), str(tmp_path / out), *args], tmp_path)


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


@pytest.fixture
def job_rows(tmp_path):
    np.save(tmp_path / "rows.npy", rows())
    return tmp_path


def test_two_gloo_ranks_train_the_same_sae_as_one_process(job_rows):
    one = _job(job_rows, "one.pt")
    assert one.returncode == 0, one.stdout[-3000:]
    two = run_to_end(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(JOB),
            str(job_rows / "rows.npy"),
            str(job_rows / "two.pt"),
        ],
        job_rows,
    )
    assert two.returncode == 0, two.stdout[-3000:]
    a, b = _load(job_rows / "one.pt"), _load(job_rows / "two.pt")
    assert a["world_size"] == 1 and b["world_size"] == 2
    for name in a["state"]:
        torch.testing.assert_close(b["state"][name], a["state"][name], rtol=0, atol=DDP_TOLERANCE)
    assert any(row["sae/auxk_loss"] > 0 for row in a["history"])  # dead latents were tracked and revived
    for x, y in zip(a["history"], b["history"]):
        assert x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], abs=DDP_TOLERANCE) for k in x)


def test_training_killed_mid_run_resumes_to_the_same_sae(job_rows):
    assert _job(job_rows, "whole.pt").returncode == 0
    checkpoint = job_rows / "state.pt"
    killed = _job(job_rows, "never.pt", "--checkpoint", str(checkpoint), "--die-at-step", "7", "--die-how", "kill")
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(checkpoint, weights_only=True)["step"] == 6  # the last one written (every 2 steps)
    assert sorted(p.name for p in job_rows.iterdir()) == ["rows.npy", "state.pt", "whole.pt"]  # no temporary left
    resumed = _job(job_rows, "resumed.pt", "--checkpoint", str(checkpoint))
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    a, b = _load(job_rows / "whole.pt"), _load(job_rows / "resumed.pt")
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"]) and a["history"] == b["history"]


def test_a_rank_that_dies_stops_the_other_with_one_line_and_the_checkpoint_intact(job_rows):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    checkpoint = job_rows / "state.pt"
    command = [
        sys.executable,
        str(JOB),
        str(job_rows / "rows.npy"),
        str(job_rows / "never.pt"),
        "--checkpoint",
        str(checkpoint),
        "--die-at-step",
        "5",
        "--die-rank",
        "1",
        "--die-how",
        "exit",
    ]
    procs = [
        subprocess.Popen(
            command,
            cwd=job_rows,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
        )
        for r in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[1].returncode == 3
    assert procs[0].returncode == 1, outputs[0][-3000:]
    message = [line for line in outputs[0].splitlines() if line.startswith("error: ")]
    assert len(message) == 1, outputs[0][-3000:]
    assert "rank 0 of 2: another rank stopped answering" in message[0] and "at step 6" in message[0]
    assert f"{checkpoint} (step 4), is intact" in message[0]
    assert torch.load(checkpoint, weights_only=True)["step"] == 4
    # the job goes on from it (here on one process: positions and dead counters are global)
    resumed = _job(job_rows, "resumed.pt", "--checkpoint", str(checkpoint))
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert _job(job_rows, "whole.pt").returncode == 0
    a, b = _load(job_rows / "whole.pt"), _load(job_rows / "resumed.pt")
    for name in a["state"]:
        torch.testing.assert_close(b["state"][name], a["state"][name], rtol=0, atol=DDP_TOLERANCE)
