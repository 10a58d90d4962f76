"""One SAE training job for the streaming/DDP/resume tests (run alone, under torchrun, or as plain ranks).

    python sae_train_job.py ROWS.npy OUT.pt [--die-at-step N --die-rank R --die-how kill|exit] [--checkpoint FILE]

Trains on the memory-mapped ``ROWS.npy`` with the small fixed settings below and (rank zero) saves
the final SAE state, history and seen counter to ``OUT.pt``; with ``--die-at-step``, rank ``R``
kills itself (SIGKILL) or exits abruptly right after that step.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import numpy as np
import torch

from aquin_monitor.rows import ArrayRows
from aquin_monitor.sae.train import SaeTrainConfig, SaeTrainingError, train_rows
from aquin_monitor.sae.train_dist import process_group

CONFIG = {
    "num_latents": 96,
    "k": 4,
    "batch_size": 64,
    "max_epochs": 3,
    "patience": 5,
    "block_rows": 256,
    "buffer_blocks": 2,
    "dead_after": 128,
    "lr": 3e-3,
    "seed": 5,
    "checkpoint_every": 2,
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows")
    parser.add_argument("out")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--die-at-step", type=int, default=None)
    parser.add_argument("--die-rank", type=int, default=0)
    parser.add_argument("--die-how", choices=["kill", "exit"], default="kill")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = SaeTrainConfig(**CONFIG, checkpoint=args.checkpoint)

    with process_group("cpu", timeout_s=60) as (rank, world_size):

        def on_step(trainer):
            if args.die_at_step is not None and trainer.step == args.die_at_step and rank == args.die_rank:
                if args.die_how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                os._exit(3)

        try:
            result = train_rows(
                ArrayRows(np.load(args.rows, mmap_mode="r")), config, show_progress=False, on_step=on_step
            )
        except SaeTrainingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if rank == 0:
            torch.save(
                {"state": result.sae.state_dict(), "history": result.history, "world_size": world_size}, args.out
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
