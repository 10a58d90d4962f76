#!/usr/bin/env python
"""Calibration of the two-sample drift test (``drift/<vs>/p_value``): false alarms on null comparisons, power on
real fine-tunes.

Null comparisons (the function does not change, so every p < alpha is a false alarm), on three probes of the
shipped data (the demo's SciFact probe: 300 test queries + 300 documents; 600 Banking77 test texts; 600 AG News
test texts, both drawn with seed 0), ``--splits`` seeded splits each:

  halves  the same model's embeddings on both sides: the test compares the profiles of two random halves of the
          probe (split seed = comparison index), the "re-sampling" null of the report's sentence;
  seeds   two LoRA runs (r=8 on q/k/v, dropout 0.1) differing only in their seed (adapter initialisation,
          dropout masks, batch order), trained ``--seed-steps`` steps at learning rate 0 on SNLI pairs, merged;
          the second is also encoded with batch size 16 instead of 32, so the two are not bit-identical (the
          largest |difference| of their embeddings is printed). With lr 0 and LoRA's B = 0 the function is the
          base model's: what differs is everything a seed touches, as between two real runs, minus learning.
          Its splits are drawn from other seeds than the halves kind's (10,000 + i), so the two kinds are
          independent draws.

Each kind's false-alarm rate at alpha = 0.05 comes with its exact (Clopper-Pearson) 95 % interval; the target is
0.05 ± 0.02. Power: for each run folder of ``--runs`` (``make demo`` writes runs/infonce), the fraction of
``--splits`` seeded splits at which the test of the base snapshot against each later snapshot has p < 0.05
(the run's own logged p, at the run's seed, is printed beside it).

    python scripts/bench_drift_calibration.py --runs runs/infonce runs/full runs/collapse
    python scripts/bench_drift_calibration.py --splits 20 --model PATH  # quick, any model

Writes the table to stdout and everything to ``--out`` (JSON, written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from aquin_monitor.atomic import atomic_write_text  # noqa: E402
from aquin_monitor.signals.two_sample import DRIFT_TEST_ALPHA, drift_test  # noqa: E402

PROBE_TEXTS = 600
PROBES = ("scifact", "banking77", "agnews")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="model of the null comparisons ('default': bundled MiniLM)")
    p.add_argument("--splits", type=int, default=100, help="seeded splits per probe and kind (and per snapshot)")
    p.add_argument("--permutations", type=int, default=1000, help="permutations per test (as in every diff)")
    p.add_argument("--probes", nargs="+", default=list(PROBES), choices=PROBES, help="probes of the null comparisons")
    p.add_argument("--probe-texts", type=int, default=PROBE_TEXTS, help="texts per Banking77 / AG News probe")
    p.add_argument("--scifact-docs", type=int, default=300, help="documents in the SciFact probe (the demo's 300)")
    p.add_argument("--seed-steps", type=int, default=3, help="optimizer steps of each lr-0 LoRA run")
    p.add_argument("--runs", nargs="*", default=[], help="run folders whose snapshots give the power")
    p.add_argument("--skip-nulls", action="store_true", help="power only (the null comparisons take longest)")
    p.add_argument("--out", default="runs/drift_calibration.json", help="JSON output (written atomically)")
    return p.parse_args(argv)


def rejection_rate(p_values: Sequence[float], alpha: float = DRIFT_TEST_ALPHA) -> dict[str, float]:
    """Share of ``p_values`` below ``alpha`` with its exact (Clopper-Pearson) 95 % interval.

    >>> rejection_rate([0.01, 0.2, 0.5, 0.04])["rate"]
    0.5
    """
    hits, trials = int(np.sum(np.asarray(p_values) < alpha)), len(p_values)
    interval = binomtest(hits, trials, alpha).proportion_ci(0.95, method="exact")
    return {"hits": hits, "trials": trials, "rate": hits / trials, "ci_low": interval.low, "ci_high": interval.high}


#: The seeds kind draws its splits from seeds 10,000 + i, so its comparisons are not the halves kind's splits again.
SEEDS_KIND_FIRST_SPLIT = 10_000


def split_p_values(
    before: np.ndarray, after: np.ndarray, splits: int, permutations: int, first_seed: int = 0
) -> list[float]:
    """p-values of :func:`drift_test` at split seeds ``first_seed`` … ``first_seed + splits − 1``."""
    seeds = range(first_seed, first_seed + splits)
    return [drift_test(before, after, seed=s, n_permutations=permutations).p_value for s in seeds]


def null_probes(args: argparse.Namespace) -> dict[str, list[str]]:
    """The probes of the null comparisons, by name: the demo's SciFact probe and seeded Banking77 / AG News draws."""
    from aquin_monitor.data import bundled_dataset, read_probe, scifact_probe

    probes = {}
    if "scifact" in args.probes:
        probes["scifact"] = scifact_probe(n_docs=args.scifact_docs, split="test", seed=0)[0].texts
    for name in [probe for probe in args.probes if probe != "scifact"]:
        texts = read_probe(bundled_dataset(name) / "test.jsonl").texts
        chosen = np.sort(np.random.default_rng(0).choice(len(texts), min(args.probe_texts, len(texts)), replace=False))
        probes[name] = [texts[i] for i in chosen]
    return probes


def training_pairs() -> list[tuple[str, str]]:
    """(anchor, positive) pairs of the shipped SNLI dev triplets, for the lr-0 runs."""
    from aquin_monitor.data import bundled_dataset, read_triplets

    return [(anchor, positive) for anchor, positive, _ in read_triplets(bundled_dataset("snli_triplets") / "dev.jsonl")]


def lr0_lora_run(model_name: str, seed: int, pairs: list[tuple[str, str]], steps: int, batch_size: int = 16):
    """A LoRA "run" at learning rate 0: seeded adapter, dropout masks and batches; merged for encoding."""
    import torch
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from aquin_monitor.encoders import add_lora, load_model, merged_copy

    torch.manual_seed(seed)
    model = load_model(model_name, device="cpu")
    add_lora(model, rank=8, alpha=16, dropout=0.1, target_modules=["query", "key", "value"])
    model.train()
    loss = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    order = random.Random(seed)
    for _ in range(steps):
        batch = order.sample(pairs, batch_size)
        features = [model.tokenize([a for a, _ in batch]), model.tokenize([b for _, b in batch])]
        loss(features, torch.empty(0)).backward()
        optimizer.step()
        optimizer.zero_grad()
    return merged_copy(model).eval()


def null_comparisons(args: argparse.Namespace) -> dict[str, Any]:
    """p-values of both null kinds on every probe, and how far apart the two seed runs' embeddings are."""
    from aquin_monitor.encoders import encode, load_model

    probes = null_probes(args)
    pairs = training_pairs()
    base = load_model(args.model, device="cpu")
    results: dict[str, Any] = {"halves": {}, "seeds": {}, "seed_runs_max_abs_difference": {}}
    for index, (name, texts) in enumerate(probes.items()):
        embeddings = encode(base, texts, batch_size=32)
        results["halves"][name] = split_p_values(embeddings, embeddings, args.splits, args.permutations)
        first = encode(lr0_lora_run(args.model, 2 * index, pairs, args.seed_steps), texts, batch_size=32)
        second = encode(lr0_lora_run(args.model, 2 * index + 1, pairs, args.seed_steps), texts, batch_size=16)
        results["seed_runs_max_abs_difference"][name] = float(np.abs(first - second).max())
        results["seeds"][name] = split_p_values(first, second, args.splits, args.permutations, SEEDS_KIND_FIRST_SPLIT)
        print(f"  {name}: {len(texts)} texts, both null kinds done", file=sys.stderr)
    return results


def power_of_run(run_dir: str, splits: int, permutations: int) -> list[dict[str, Any]]:
    """For each snapshot after the base: rejection rate over ``splits`` split seeds, with the logged numbers."""
    from aquin_monitor import snapshot_keys as keys
    from aquin_monitor.snapshot_record import Snapshot, list_snapshots

    snapshots = [Snapshot.load(folder) for folder in list_snapshots(run_dir)]
    if not snapshots:
        raise SystemExit(f"{run_dir}: no snapshots (run the fine-tune first, e.g. make demo)")
    base, rows = snapshots[0], []
    for snap in snapshots[1:]:
        p_values = split_p_values(base.arrays[keys.EMBEDDINGS], snap.arrays[keys.EMBEDDINGS], splits, permutations)
        rows.append(
            {
                "run": run_dir,
                "step": snap.step,
                "power": rejection_rate(p_values),
                "logged_p_value": snap.metrics.get("drift/base/p_value"),
                "cka": snap.metrics.get("drift/base/cka"),
                "score": snap.metrics.get("drift/base/score"),
                "delta_ndcg@10": snap.metrics.get("drift/base/delta/ndcg@10"),
            }
        )
    return rows


def table(results: dict[str, Any]) -> list[str]:
    """The README's tables: false alarms per null kind and probe, then power per run and step."""

    def interval(rate: dict[str, float]) -> str:
        return f"{rate['hits']}/{rate['trials']} = {rate['rate']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}]"

    lines = []
    if "nulls" in results:
        lines += ["| null comparison | probe | false alarms at α = 0.05 (95 % CI) |", "|---|---|---|"]
        for kind in ("halves", "seeds"):
            for probe, p_values in results["nulls"][kind].items():
                lines.append(f"| {kind} | {probe} | {interval(rejection_rate(p_values))} |")
            lines.append(f"| **{kind}, all probes** | | **{interval(results['false_alarms'][kind])}** |")
        lines.append(f"| **both kinds** | | **{interval(results['false_alarms']['all'])}** |")
    if results["power"]:
        lines += [
            "",
            "| fine-tune | step | power at α = 0.05 (95 % CI) | logged p | CKA to base | drift score | ΔNDCG@10 |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in results["power"]:
            cells = [_number(row[key]) for key in ("logged_p_value", "cka", "score", "delta_ndcg@10")]
            lines.append(f"| {row['run']} | {row['step']} | {interval(row['power'])} | " + " | ".join(cells) + " |")
    return lines


def _number(value: Any) -> str:
    return "—" if value is None else f"{value:.3g}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.splits < 1 or args.permutations < 1:
        raise SystemExit("--splits and --permutations must be >= 1")
    missing = [run for run in args.runs if not Path(run, "snapshots").is_dir()]
    if missing:
        raise SystemExit(f"{missing[0]}: no snapshots/ folder (run the fine-tune first, e.g. make demo)")
    started = time.perf_counter()
    results: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "alpha": DRIFT_TEST_ALPHA,
    }
    if not args.skip_nulls:
        nulls = null_comparisons(args)
        every = {kind: [p for values in nulls[kind].values() for p in values] for kind in ("halves", "seeds")}
        results["nulls"] = {kind: nulls[kind] for kind in ("halves", "seeds")}
        results["seed_runs_max_abs_difference"] = nulls["seed_runs_max_abs_difference"]
        results["false_alarms"] = {
            "halves": rejection_rate(every["halves"]),
            "seeds": rejection_rate(every["seeds"]),
            "all": rejection_rate(every["halves"] + every["seeds"]),
        }
    results["power"] = [row for run in args.runs for row in power_of_run(run, args.splits, args.permutations)]
    results["seconds"] = round(time.perf_counter() - started, 1)
    lines = table(results)
    if not args.skip_nulls:
        differences = ", ".join(f"{k} {v:.1e}" for k, v in results["seed_runs_max_abs_difference"].items())
        lines += ["", f"largest |difference| between the two lr-0 seed runs' embeddings: {differences}"]
    lines += [f"{results['seconds']:.0f} s in all"]
    print("\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
