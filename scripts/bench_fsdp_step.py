"""Cost of the step monitor under FSDP2 (``fully_shard``), as a ratio to the training step, measured in one run.

Usage: ``torchrun --standalone --nproc_per_node=2 scripts/bench_fsdp_step.py [STEPS] [PAIRS_PER_RANK]``
(gloo on CPU; nccl when every rank has a GPU). The bundled all-MiniLM-L6-v2 is sharded per BERT layer
and at the root; each step is forward + backward + AdamW of an InfoNCE loss. Timed per step, with a
barrier before each timer: the training step without the monitor call, and the monitor call
(``on_optimizer_step``: local shard norms, the all_reduce that carries them, host work). Rank zero prints
the medians and the ratio monitor / step.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from aquin_monitor.encoders import load_model
from aquin_monitor.losses import info_nce
from aquin_monitor.monitor import StepMonitor


def main(steps: int = 12, per_rank: int = 16) -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    model = load_model("default").to(device)
    for module in model.modules():
        if type(module).__name__ == "BertLayer":
            fully_shard(module)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    monitor = StepMonitor([], warn=False, histogram_every=0, background=False)
    monitor.start(model, 0)
    texts = [f"query {i} about topic {i % 7} and some more words to embed" for i in range(2 * per_rank)]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()

    train_s, monitor_s = [], []
    for step in range(1, steps + 1):
        sync()
        start = time.perf_counter()
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in model.preprocess(texts).items()}
        embeddings = model(features)["sentence_embedding"]
        info_nce(embeddings[:per_rank], embeddings[per_rank:]).backward()
        sync()
        between = time.perf_counter()
        monitor.on_optimizer_step(step, model)
        sync()
        after = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        sync()
        if step > 2:  # warm-up
            train_s.append((between - start) + (time.perf_counter() - after))
            monitor_s.append(after - between)
    monitor.close()
    if rank == 0:
        step_ms, monitor_ms = 1e3 * statistics.median(train_s), 1e3 * statistics.median(monitor_s)
        print(
            f"device={device.type} world={dist.get_world_size()} sharded={monitor.sharded is not None} "
            f"pairs/rank={per_rank}"
        )
        print(
            f"training step {step_ms:.1f} ms (median of {len(train_s)}), monitor {monitor_ms:.2f} ms: "
            f"ratio {monitor_ms / step_ms:.2%}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
