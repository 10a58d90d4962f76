"""Losses that gather their candidates across ranks, read by the wrapper on two CPU processes (gloo).

Usage: ``torchrun --standalone --nproc_per_node=2 gather_ddp.py MODEL_PATH OUT_DIR``; launched by
tests/test_distributed.py. Each rank runs one forward/backward pass of each monitored loss with
``gather_across_devices=True`` on its own 4 anchors (with one hard negative each), then writes to
``OUT_DIR/rank<r>.json``, per loss, the statistics its tap read (before any cross-rank reduction) and
the same statistics computed here with plain torch: this rank's anchors against the candidates of
every rank, the positive of local anchor ``i`` in column ``rank * 4 + i`` of the positives' block
and its hard negative at the same place in the negatives' block.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sentence_transformers import SentenceTransformer, losses  # noqa: E402

from aquin_monitor.capture import ContrastiveTap, monitored  # noqa: E402
from aquin_monitor.signals.contrastive import finalize  # noqa: E402

ANCHORS = [f"question {i} on topic {i % 3} with detail {i * 7 % 5}" for i in range(8)]
POSITIVES = [f"an answer to question {i} about topic {i % 3}" for i in range(8)]
NEGATIVES = [f"an unrelated remark number {i} on weather {i % 2}" for i in range(8)]
PER_RANK = 4


def _make(kind: str, model, guide):
    if kind == "mnrl":
        return losses.MultipleNegativesRankingLoss(model, gather_across_devices=True)
    if kind == "cached_mnrl":
        return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=3, gather_across_devices=True)
    if kind == "gist":
        return losses.GISTEmbedLoss(model, guide, gather_across_devices=True)
    if kind == "cached_gist":
        return losses.CachedGISTEmbedLoss(model, guide, mini_batch_size=3, gather_across_devices=True)
    raise ValueError(kind)


def _reference(model, columns, rank: int, world: int) -> dict:
    with torch.no_grad():
        emb = [F.normalize(model(model.preprocess(c))["sentence_embedding"], dim=-1) for c in columns]
    gathered = []
    for e in emb[1:]:
        parts = [torch.empty_like(e) for _ in range(world)]
        dist.all_gather(parts, e)
        gathered.append(torch.cat(parts))
    s = emb[0] @ torch.cat(gathered).T  # [4, 2 blocks x 8]
    width = PER_RANK * world
    rows = torch.arange(PER_RANK)
    pos_col, hard_col = rank * PER_RANK + rows, width + rank * PER_RANK + rows
    pos = s[rows, pos_col]
    hard = s[rows, hard_col]
    neg = s.clone()
    neg[rows, pos_col] = float("nan")
    neg[rows, hard_col] = float("nan")
    others = s.clone()
    others[rows, pos_col] = -float("inf")
    return {
        "pos_sim": pos.mean().item(),
        "neg_sim": neg.nanmean().item(),
        "hard_neg_sim": hard.mean().item(),
        "hardest_neg_sim": others.max(dim=1).values.mean().item(),
        "in_batch_acc": (s.argmax(dim=1) == pos_col).float().mean().item(),
    }


def main(model_path: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = SentenceTransformer(model_path, device="cpu")
    for module in model.modules():  # the reference embeddings must equal those the loss saw
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    guide = SentenceTransformer(model_path, device="cpu")
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    columns = [ANCHORS[mine], POSITIVES[mine], NEGATIVES[mine]]
    evidence = {}
    for kind in ("mnrl", "cached_mnrl", "gist", "cached_gist"):
        tap = ContrastiveTap(strict=True)
        loss = monitored(_make(kind, model, guide), tap=tap)
        model.train()
        loss([model.preprocess(c) for c in columns], torch.tensor([])).backward()
        model.zero_grad(set_to_none=True)
        model.eval()
        evidence[kind] = {"read": finalize(tap.drain().sums), "reference": _reference(model, columns, rank, world)}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(evidence), encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
