#!/usr/bin/env python
"""Where does the per-step monitor's GPU cost come from? (CUDA only; a diagnostic beside the benchmark.)

Builds variants ``a`` (unmonitored) and ``b`` (aquin-monitor) of ``bench_step_monitor.py``'s bge-base-sized
step and, for each, prints:

- host time to *issue* a block of steps (no synchronisation inside the block) against the block's wall
  time with a final synchronisation: a host time close to the wall time means the step is bound by
  Python's kernel launches, where every millisecond of host work is step time;
- from ``torch.profiler``: the device's busy time per step (union of kernel intervals), its idle time,
  the number of kernels per step, and the kernels whose total time differs most between b and a.

    PYTHONPATH=. python scripts/profile_step_gpu.py [--steps 10] [--trace-dir DIR]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_step_monitor as bench  # noqa: E402


def busy_and_kernels(prof) -> tuple[float, float, int, dict[str, float]]:
    """(busy µs, window µs, kernel count, µs per kernel name) of the device activity in ``prof``."""
    from torch.autograd import DeviceType

    intervals, per_name = [], defaultdict(float)
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            intervals.append((e.time_range.start, e.time_range.end))
            per_name[e.name] += e.time_range.end - e.time_range.start
    intervals.sort()
    busy, current = 0.0, None
    for start, end in intervals:
        if current is None or start > current[1]:
            if current is not None:
                busy += current[1] - current[0]
            current = [start, end]
        else:
            current[1] = max(current[1], end)
    if current is not None:
        busy += current[1] - current[0]
    window = (intervals[-1][1] - intervals[0][0]) if intervals else 0.0
    return busy, window, len(intervals), per_name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--trace-dir", default=None, help="write one Chrome trace per variant there")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--device", default="cuda", help="cpu only checks that the script runs")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    bert = bench.MeanPooledBert(args.device, 0)
    batches = bench.bert_batches(8, args.batch_size, args.seq_len, bert.vocab_size, args.device, 0)
    workdir = Path(tempfile.mkdtemp(prefix="aquin-profile-"))
    bert.module.train()
    variants = [bench.Variant(k, copy.deepcopy(bert.module), bert, args.device, cuda, workdir) for k in "ab"]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    counter = [0]

    def batch():
        counter[0] += 1
        return batches[counter[0] % len(batches)]

    for v in variants:
        for _ in range(5):
            v.step(batch())
    sync()
    print(f"device {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}")
    for _ in range(2):
        for v in variants:
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                v.step(batch())
            issued = time.perf_counter() - t0
            sync()
            wall = time.perf_counter() - t0
            print(f"{v.key}: issue {issued / args.steps * 1e3:.1f} ms/step, wall {wall / args.steps * 1e3:.1f} ms/step")
    per_variant = {}
    for v in variants:
        sync()
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        ) as prof:
            for _ in range(args.steps):
                v.step(batch())
            sync()
        busy, window, n, per_name = busy_and_kernels(prof)
        per_variant[v.key] = per_name
        print(
            f"{v.key}: device busy {busy / args.steps / 1e3:.2f} ms/step, "
            f"window {window / args.steps / 1e3:.2f} ms/step,"
            f" idle {(window - busy) / args.steps / 1e3:.2f} ms/step, {n / args.steps:.0f} kernels/step"
        )
        if args.trace_dir:
            Path(args.trace_dir).mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(Path(args.trace_dir) / f"trace_{v.key}.json"))
    a, b = per_variant["a"], per_variant["b"]
    diffs = sorted(((b.get(k, 0.0) - a.get(k, 0.0)) / args.steps, k) for k in set(a) | set(b))
    print("kernels with the largest extra time per step in b (µs):")
    for delta, name in reversed(diffs[-15:]):
        print(f"  {delta:9.1f}  {name[:110]}")
    for v in variants:
        v.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
