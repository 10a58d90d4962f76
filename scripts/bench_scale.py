"""The scale benchmarks of issue 21, each stage in a process of its own (so each peak RSS is its own).

Stages (each a script beside this one, runnable alone; each prints its rows/s or queries/s, its peak RSS
and its ratio against the in-memory baseline it measures in the same process; a stage's own options
(working folder, subset sizes) are given by running its script alone):

- ``store``: ``bench_scale_store.py``: write and read a 1,000,000 × 384 embedding store (float32 and
  float16 shards) against ``np.save`` / ``np.load``; ``aquin-monitor embed``'s documents/s;
- ``sae``: ``bench_scale_sae.py``: streaming SAE training from 1M rows: samples/s and peak RSS, against
  the in-memory trainer on a subset;
- ``stats``: ``bench_scale_stats.py``: ``sae browse`` statistics streamed over 1M rows, against the dense
  path on a subset;
- ``search``: ``bench_scale_search.py``: 10,000 queries against 1M documents through faiss, exact and
  approximate (recall@10 against exact, speed-up).

The rows of every stage are real all-MiniLM-L6-v2 embeddings of texts shipped in the package, tiled to
``--rows`` with small Gaussian noise (fine for memory and speed, as the issue says; not for quality).

    HF_HUB_OFFLINE=1 python scripts/bench_scale.py [--rows 1000000] [--stages store,sae,stats,search]

The README's costs table holds the figures, with the load the machine was under.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = {
    "store": "bench_scale_store.py",
    "sae": "bench_scale_sae.py",
    "stats": "bench_scale_stats.py",
    "search": "bench_scale_search.py",
}


def run_stage(name: str, rows: int) -> int:
    """Run one stage's script with ``--rows``; its output goes straight to ours. Returns its exit code."""
    command = [sys.executable, str(HERE / STAGES[name]), "--rows", str(rows)]
    print(f"\n=== {name}: {' '.join(command[1:])}  (load average {os.getloadavg()[0]:.1f})", flush=True)
    start = time.perf_counter()
    code = subprocess.call(command)
    print(f"=== {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    failed = [name for name in stages if run_stage(name, args.rows) != 0]
    print(f"\nstages failed: {', '.join(failed)}" if failed else "\nall stages ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
