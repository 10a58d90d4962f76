#!/usr/bin/env python
"""Snapshot cost against its floor, encoding the same texts alone (issue: ≤ 1.10×).

Prints, measured in this one process on the same model and texts:
  encode      model.encode-equivalent (aquin_monitor.encoders.encode) of the probe texts
  snapshot    SnapshotRunner.take on the same texts (one forward pass with hidden states, attentions for
              32 evenly spaced texts, geometry, layers, attention entropy, OOD, UMAP, retrieval, no diff)
and their ratio; with --full-scifact, also the snapshot time of SciFact's whole 5,183-document corpus.

    python scripts/bench_snapshot.py [--n 1000] [--texts agnews|scifact] [--repeats 2] [--full-scifact] [--no-umap]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--texts", choices=["agnews", "scifact"], default="agnews",
                   help="agnews: short news snippets (worst case: encoding is cheap); scifact: 300 claims + abstracts")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full-scifact", action="store_true")
    p.add_argument("--no-umap", action="store_true")
    args = p.parse_args()

    import torch

    from aquin_monitor.data import bundled_dataset, read_beir, read_probe, scifact_probe
    from aquin_monitor.encoders import encode, load_model
    from aquin_monitor.monitor import SnapshotRunner

    torch.manual_seed(0)
    model = load_model(args.model)
    if args.texts == "agnews":
        probe = read_probe(bundled_dataset("agnews") / "test.jsonl", limit=args.n)
    else:
        probe, _ = scifact_probe(n_docs=args.n - 300)
    runner = SnapshotRunner(probe, umap=not args.no_umap)
    encode(model, probe.texts[:64], batch_size=32)  # warm-up
    enc, snap = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        t = time.perf_counter()
        encode(model, probe.texts, batch_size=32)
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        runner.take(model, 0, diff_against_history=False)
        snap.append(time.perf_counter() - t)
    e, s = min(enc), min(snap)
    print(f"probe: {len(probe.texts)} {args.texts} texts, model {args.model}, torch threads {torch.get_num_threads()}")
    print(f"encode alone     {e:8.2f} s")
    print(f"full snapshot    {s:8.2f} s")
    print(f"ratio            {s / e:8.3f}x   (target <= 1.10x)")
    if args.full_scifact:
        corpus = read_beir(bundled_dataset("scifact"), "test")
        _, retrieval = scifact_probe(n_docs=len(corpus.corpus))
        full = SnapshotRunner(retrieval=retrieval, umap=not args.no_umap, batch_size=64)
        t = time.perf_counter()
        full.take(model, 0, diff_against_history=False)
        print(f"SciFact full corpus snapshot ({len(retrieval.corpus)} docs + {len(retrieval.queries)} queries): {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
