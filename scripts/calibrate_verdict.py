"""How often the retrieval verdict is wrong: its false-alarm rate on null comparisons and its detection rate
on injected changes (DESIGN.md: a verdict comes with its measured error rate).

The verdict (:mod:`aquin_monitor.verdict`) says "better" or "worse" when the 95 % paired bootstrap interval
of the mean per-query NDCG@10 change excludes 0. Its errors are measured on per-query changes whose truth is
known:

- null comparisons: the per-query changes of a real run (``--run DIR``: its base and last snapshots'
  ``query_ndcg@10``) or, without a run, synthetic ones (70 % of queries unchanged, the rest N(0, 0.15²)),
  each given a random sign: the mean change is then 0 in expectation, so any "better" or "worse" is a false
  alarm (target: ≤ 5 %, the interval's nominal miss rate);
- injected changes: the same null changes plus ``δ`` on every changed query (the unchanged ones stay 0, as
  in a real run where most top-10s do not move): the detection rate is how often the verdict says "better".

Usage::

    python scripts/calibrate_verdict.py [--run runs/infonce] [--trials 400] [--queries 300]

Prints one line per setting; the README's verdict paragraph quotes them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from aquin_monitor import snapshot_keys as keys
from aquin_monitor.signals.comparison import paired_comparison
from aquin_monitor.snapshot_record import list_snapshots, read_arrays


def run_changes(run_dir: str) -> np.ndarray:
    """The per-query NDCG@10 changes from the base to the last snapshot of a run (queries scored in both)."""
    folders = list_snapshots(run_dir)
    if len(folders) < 2:
        raise SystemExit(f"{run_dir}: needs at least two snapshots")
    before, after = (read_arrays(folder / "arrays.npz")[keys.QUERY_NDCG] for folder in (folders[0], folders[-1]))
    d = after - before
    return d[np.isfinite(d)]


def synthetic_changes(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.where(rng.uniform(size=n) < 0.3, rng.normal(0.0, 0.15, size=n), 0.0)


def rates(magnitudes: np.ndarray, shift: float, trials: int, rng: np.random.Generator) -> tuple[float, float]:
    """(fraction "better", fraction "worse") over ``trials`` sign-flipped copies of ``magnitudes`` + ``shift``."""
    moved = magnitudes != 0
    better = worse = 0
    for trial in range(trials):
        d = np.abs(magnitudes) * rng.choice([-1.0, 1.0], size=magnitudes.size) + shift * moved
        direction = paired_comparison(np.zeros_like(d), d, seed=trial).direction
        better += direction == 1
        worse += direction == -1
    return better / trials, worse / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a run folder whose base and last snapshots give the changes")
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--queries", type=int, default=300, help="queries of the synthetic changes (without --run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.run:
        magnitudes = run_changes(args.run)
        source = f"{Path(args.run)}: {magnitudes.size} queries, {np.mean(magnitudes != 0):.0%} changed"
    else:
        magnitudes = synthetic_changes(args.queries, rng)
        source = f"synthetic: {magnitudes.size} queries, {np.mean(magnitudes != 0):.0%} changed (N(0, 0.15²))"
    print(source)
    started = time.perf_counter()
    better, worse = rates(magnitudes, 0.0, args.trials, rng)
    print(
        f"null (random signs), {args.trials} trials: false alarms {better + worse:.1%} ({better:.1%} 'better', "
        f"{worse:.1%} 'worse'); nominal 5 %"
    )
    changed = max(int(np.sum(magnitudes != 0)), 1)
    for shift in (0.02, 0.05, 0.1):
        detected, wrong = rates(magnitudes, shift, args.trials, rng)
        mean_change = shift * changed / magnitudes.size
        print(
            f"+{shift} on each changed query (mean change +{mean_change:.4f}): 'better' {detected:.1%}, "
            f"'worse' {wrong:.1%}"
        )
    print(f"{(time.perf_counter() - started) / (4 * args.trials) * 1000:.0f} ms per verdict")


if __name__ == "__main__":
    main()
