"""SAE throughput: training samples/s, ``sae eval`` time on 10k embeddings, snapshot SAE part.

Measured in one process, on synthetic unit-norm embeddings with a common direction (like sentence
embeddings); prints the machine's load average before and after, since on a shared machine the
figures scale with the CPU share this process gets.

    python scripts/bench_sae.py [--threads 1] [--steps 60] [--device cpu]

Defaults are the issue's setting: d = 384, 1,536 latents, k = 32, batch 1,024.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from aquin_monitor.rows import ArrayRows
from aquin_monitor.sae.evaluate import quality_metrics
from aquin_monitor.sae.model import SparseAutoencoder
from aquin_monitor.sae.monitoring import snapshot_signals
from aquin_monitor.sae.stream import RowPlan
from aquin_monitor.sae.train import SaeTrainConfig, StreamingTrainer


def embeddings(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) + 3.0 * torch.randn(1, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--latents", type=int, default=1536)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")

    x = embeddings(args.batch * args.steps, args.d).to(args.device)
    # without dead latents (the usual case once trained: no AuxK pass), then with AuxK on every step
    for label, dead_after in (("no dead latents", 10**12), ("AuxK active", args.batch)):
        sae = SparseAutoencoder(args.d, args.latents, args.k).to(args.device)
        config = SaeTrainConfig(batch_size=args.batch, lr=1e-3, dead_after=dead_after, device=args.device)
        # one block holds every row: the timed epoch is one in-memory buffer, as train_sae on an array
        plan = RowPlan(len(x), block_rows=len(x), val_fraction=1e-6, seed=0)
        loop = StreamingTrainer(sae, ArrayRows(x.cpu().numpy()), plan, x[:16], config)
        loop.run_epoch()  # warm-up (allocator, first-call costs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        loop.run_epoch()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        print(
            f"training, {label}: {len(x) / elapsed:,.0f} samples/s ({len(x)} samples in {elapsed:.2f} s, "
            f"d={args.d}, latents={args.latents}, k={args.k}, batch={args.batch}, device={args.device})"
        )

    held_out = embeddings(10_000, args.d, seed=1).numpy()
    sae = sae.cpu()
    start = time.perf_counter()
    quality_metrics(sae, held_out)
    print(f"sae eval (quality metrics, 10,000 cached embeddings): {time.perf_counter() - start:.2f} s")

    probe = held_out[:1000]
    start = time.perf_counter()
    snapshot_signals(sae, probe, [""] * len(probe))
    print(
        f"snapshot SAE part (1,000 probe embeddings): {time.perf_counter() - start:.3f} s "
        "(compare with encoding the same probe: ~10 s at 100 texts/s)"
    )
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
