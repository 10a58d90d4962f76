#!/usr/bin/env python
"""Snapshot cost against its floor, encoding the same texts alone (issue: ≤ 1.10×).

Prints, measured in this one process on the same model and texts:
  encode      model.encode-equivalent (aquin_monitor.encoders.encode) of the probe texts
  snapshot    SnapshotRunner.take on the same texts (one forward pass with hidden states, attentions for
              32 evenly spaced texts, geometry, layers, attention entropy, OOD, UMAP, retrieval, no diff)
and their ratio; with --full-scifact, also the snapshot time of SciFact's whole 5,183-document corpus.

The two are measured alternately (``--repeats`` pairs, which one goes first alternating), after one
untimed snapshot (numba compiles UMAP's kernels in the first one of a process). Reported: the
ratio of the fastest runs (interference from other processes only ever adds time), the median of
the paired ratios (snapshot over the encode run next to it) and a 95% bootstrap interval of it. On a
shared machine whose speed drifts between runs, the paired median and its interval are the
figures to read.

    python scripts/bench_snapshot.py [--n 1000] [--texts agnews|scifact] [--repeats 6] [--full-scifact] [--no-umap]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument(
        "--texts",
        choices=["agnews", "scifact"],
        default="agnews",
        help="agnews: short news snippets (worst case: encoding is cheap); scifact: 300 claims + abstracts",
    )
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--full-scifact", action="store_true")
    p.add_argument("--no-umap", action="store_true")
    args = p.parse_args()

    import torch

    from aquin_monitor.data import bundled_dataset, read_beir, read_probe, scifact_probe
    from aquin_monitor.encoders import encode, load_model
    from aquin_monitor.snapshot_runner import SnapshotRunner

    torch.manual_seed(0)
    model = load_model(args.model)
    if args.texts == "agnews":
        probe = read_probe(bundled_dataset("agnews") / "test.jsonl", limit=args.n)
    else:
        probe, _ = scifact_probe(n_docs=args.n - 300)
    runner = SnapshotRunner(probe, umap=not args.no_umap)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_step_monitor import bootstrap_median_interval

    encode(model, probe.texts[:64], batch_size=32)  # warm-up
    runner.take(model, 0, diff_against_history=False)  # numba compiles UMAP's kernels here
    timed = {
        "encode": lambda: encode(model, probe.texts, batch_size=32),
        "snapshot": lambda: runner.take(model, 0, diff_against_history=False),
    }
    times: dict[str, list[float]] = {"encode": [], "snapshot": []}
    for r in range(args.repeats):  # alternating, so both see the same machine load
        for name in ("encode", "snapshot") if r % 2 == 0 else ("snapshot", "encode"):
            t = time.perf_counter()
            timed[name]()
            times[name].append(time.perf_counter() - t)
        print(
            f"  pair {r + 1}/{args.repeats}: encode {times['encode'][-1]:.2f} s, "
            f"snapshot {times['snapshot'][-1]:.2f} s",
            flush=True,
        )
    enc, snap = times["encode"], times["snapshot"]
    ratios = [s / e for s, e in zip(snap, enc)]
    low, high = bootstrap_median_interval(ratios)
    print(f"probe: {len(probe.texts)} {args.texts} texts, model {args.model}, torch threads {torch.get_num_threads()}")
    print(f"encode alone     {min(enc):8.2f} s fastest, {statistics.median(enc):.2f} s median")
    print(f"full snapshot    {min(snap):8.2f} s fastest, {statistics.median(snap):.2f} s median")
    print(
        f"ratio            {min(snap) / min(enc):8.3f}x fastest/fastest; paired median {statistics.median(ratios):.3f}x"
        f" (95% CI {low:.3f}-{high:.3f})   (target <= 1.10x)"
    )
    if args.full_scifact:
        corpus = read_beir(bundled_dataset("scifact"), "test")
        _, retrieval = scifact_probe(n_docs=len(corpus.corpus))
        full = SnapshotRunner(retrieval=retrieval, umap=not args.no_umap, batch_size=64)
        t = time.perf_counter()
        full.take(model, 0, diff_against_history=False)
        print(
            f"SciFact full corpus snapshot ({len(retrieval.corpus)} docs + {len(retrieval.queries)} queries): "
            f"{time.perf_counter() - t:.1f} s"
        )


if __name__ == "__main__":
    main()
