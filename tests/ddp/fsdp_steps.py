"""Two-process FSDP2 (``fully_shard``, gloo on CPU) training steps with the monitor; driven by tests/test_fsdp.py.

Usage: ``torchrun --nproc_per_node=2 fsdp_steps.py MODEL_PATH OUT_DIR MODE [ADAPTER_PATH]``. MODE:

- ``full``: every rank logs (its own ``OUT_DIR/rank<r>/metrics.jsonl``); at step 4 rank 1 writes a NaN
  into one element of its local shard of the first trainable gradient of block 1 (rank 0's shard of it
  stays finite);
- ``off``: rank 0's monitor fails at step 2 and switches itself off (it keeps adding its shards);
- ``partial``: from step 3 rank 0 cannot measure its shards at all (the peers' norms are incomplete);
- ``fsdp1``: as ``full``, with FSDP1 (``FullyShardedDataParallel(use_orig_params=True)`` around the model,
  each BERT layer wrapped too, ``device_id`` CPU) instead of ``fully_shard``; the monitor is handed the
  inner model and the root wrapper, as Lightning's ``FSDPStrategy`` hands the callback ``pl_module`` and
  ``trainer.model``.

Each rank shards a copy of the tiny sentence-transformers model (each BERT layer, then the root) and
keeps an unsharded copy of the same weights as the reference: per step, the reference takes the
mean of the two ranks' InfoNCE losses on the same global batch (FSDP averages the ranks' gradients)
and records its per-group and per-parameter gradient norms (``tests/reference_stats.py``, float64)
in ``OUT_DIR/rank<r>.json``, with each rank's own loss. Both copies take the same AdamW step, so the
weights stay equal. Dropout is off (``eval()``), so both copies compute the same function.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reference_stats

import torch
import torch.distributed as dist
from reference_stats import reference_group_norms
from sentence_transformers import SentenceTransformer
from torch.distributed.fsdp import fully_shard

from aquin_monitor.distributed import local_tensor
from aquin_monitor.losses import info_nce
from aquin_monitor.monitor import StepMonitor
from aquin_monitor.sinks import JsonlSink

PAIRS = [(f"question number {i} about topic {i % 5}", f"answer {i} on topic {i % 5}") for i in range(40)]
PER_RANK_BATCH = 4
STEPS = 5
NAN_STEP = 4


def load(model_path: str, adapter: str | None) -> SentenceTransformer:
    model = SentenceTransformer(model_path, device="cpu")
    if adapter is not None:
        from peft import PeftModel

        model[0].auto_model = PeftModel.from_pretrained(model[0].auto_model, adapter, is_trainable=True)
    return model.eval()  # no dropout: the sharded and the reference copies compute the same function


class Embedder(torch.nn.Module):
    """The model behind a forward that returns the embedding tensor (FSDP1 hooks the tensors a forward returns)."""

    def __init__(self, model: SentenceTransformer):
        super().__init__()
        self.model = model

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.model(features)["sentence_embedding"]}


def embed(model: SentenceTransformer, pairs, forward=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and document embeddings in one forward pass (FSDP1 allows one forward of the root per backward)."""
    texts = [q for q, _ in pairs] + [d for _, d in pairs]
    embeddings = (forward or model)(model.preprocess(texts))["sentence_embedding"]
    return embeddings[: len(pairs)], embeddings[len(pairs) :]


def shard(model: SentenceTransformer, mode: str) -> torch.nn.Module | None:
    """FSDP2 in place (returns None), or FSDP1: returns the root wrapper."""
    layer_type = type(next(m for m in model.modules() if type(m).__name__ == "BertLayer"))
    if mode == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        return FullyShardedDataParallel(
            Embedder(model),
            use_orig_params=True,
            device_id=torch.device("cpu"),
            auto_wrap_policy=ModuleWrapPolicy({layer_type}),
        )
    for module in model.modules():
        if isinstance(module, layer_type):
            fully_shard(module)
    fully_shard(model)
    return None


def batch(step: int, rank: int) -> list[tuple[str, str]]:
    start = ((step - 1) * 2 + rank) * PER_RANK_BATCH % len(PAIRS)
    return PAIRS[start : start + PER_RANK_BATCH]


def reference_step(model: SentenceTransformer, optimizer, step: int, world_size: int) -> dict:
    """Unsharded: the mean of the ranks' losses, its gradient norms, then the optimizer step."""
    losses = [info_nce(*embed(model, batch(step, r)), report=False) for r in range(world_size)]
    (sum(losses) / world_size).backward()
    named = list(model.named_parameters())
    found = {
        "groups": reference_group_norms(named),
        "tensors": {n: float(p.grad.double().norm()) for n, p in named if p.grad is not None},
        "losses": [float(x.detach()) for x in losses],
    }
    optimizer.step()
    optimizer.zero_grad()
    return found


def break_monitor(monitor: StepMonitor, mode: str, rank: int) -> None:
    """Rank zero's injected failures (``off``, ``partial``)."""
    if rank != 0 or mode in ("full", "fsdp1"):
        return
    if mode == "off":
        original = monitor._alarms

        def failing(step, *args, **kwargs):
            if step == 2:
                raise RuntimeError("injected rank-0-only failure")
            return original(step, *args, **kwargs)

        monitor._alarms = failing
    else:
        original_step, sharded = monitor._step, monitor.sharded

        def failing_step(step, *args, **kwargs):
            if step == 3:

                def cannot(*_args, **_kwargs):
                    raise RuntimeError("injected: this rank cannot read its shards")

                sharded.local_vector = cannot
                raise RuntimeError("injected rank-0-only failure")
            return original_step(step, *args, **kwargs)

        monitor._step = failing_step


def main(model_path: str, out_dir: str, mode: str, adapter: str | None = None) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    out = Path(out_dir)
    torch.manual_seed(0)
    model = load(model_path, adapter)
    reference = copy.deepcopy(model)
    wrapper = shard(model, mode)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=5e-3)
    reference_optimizer = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=5e-3)

    monitor = StepMonitor(
        [JsonlSink(out / f"rank{rank}")],
        strict=mode in ("full", "fsdp1"),
        warn=False,
        tensor_norms_every=2,
        stop_on=["nan"],
        histogram_every=0,
    )
    monitor.start(model, 0, wrapper=wrapper)
    break_monitor(monitor, mode, rank)
    steps, stopped = [], []
    for step in range(1, STEPS + 1):
        local = batch(step, rank)
        loss = info_nce(*embed(model, local, wrapper))
        loss.backward()
        if mode in ("full", "fsdp1") and step == NAN_STEP and rank == 1:  # group layer.01, in rank 1's shard only
            weight = next(
                p for n, p in model.named_parameters() if p.grad is not None and p.grad.numel() and ".layer.1." in n
            )
            local_tensor(weight.grad).view(-1)[0] = float("nan")
        monitor.on_optimizer_step(step, model)
        stopped.append(monitor.should_stop)
        if mode in ("full", "fsdp1") and step == NAN_STEP:
            break  # the update of a NaN step is discarded (stop_on nan); the reference has none to compare
        optimizer.step()
        optimizer.zero_grad()
        steps.append({"step": step, **reference_step(reference, reference_optimizer, step, world_size)})
    monitor.close()
    evidence = {"rank": rank, "world_size": world_size, "steps": steps, "stopped": stopped, "enabled": monitor.enabled}
    evidence["sharded"] = monitor.sharded is not None
    (out / f"rank{rank}.json").write_text(json.dumps(evidence))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
