#!/usr/bin/env python
"""Do the alarms fire when training breaks, and stay quiet when it does not? A failure-injection benchmark.

Real short fine-tunes of a sentence-transformers model (default: the bundled all-MiniLM-L6-v2) on the
bundled SNLI triplets, each watched by a :class:`~aquin_monitor.monitor.StepMonitor` with its default
thresholds, in one process: a plain torch loop (forward over anchors and positives, plus the negatives
for the triplet loss, the loss reporting its similarities to the monitor's tap, backward, the monitor,
AdamW, a linear warm-up and decay schedule like the sentence-transformers Trainer's). Every run is one of:

==================  =========================================================  ==============================
failure             injected at step t (1-based optimizer step)                alarm kinds that count (``M``)
==================  =========================================================  ==============================
``nan``             one NaN in the step-t batch's anchor embeddings (the       ``nan``
                    update is applied: the weights stay NaN after it)
``lr_x100``         the scheduled learning rate times 100 from step t on       ``collapse``, ``spike``,
                                                                               ``dead_layer``, ``nan``
``dead_layer``      the middle encoder block's gradients (block 3 of MiniLM's  ``dead_layer``
                    6) set to zero from step t on, after ``backward()``: a
                    frozen or dead layer
``collapse``        ``--provoke collapse`` of the recipes from step t on: a    ``collapse``, ``dead_layer``,
                    full fine-tune jumping to lr 2e-3 with scale 100 (InfoNCE, ``spike``, ``gap_narrowing``,
                    ``recipes/infonce.py``) or lr 1e-2 (triplet,               ``nan``
                    ``recipes/triplet.py``)
``false_negatives`` from step t on, every batch's in-batch negatives include   ``false_negatives``
                    a duplicate of each row's positive (InfoNCE: the batch is
                    half its pairs, twice; triplet: the negative is the
                    positive)
``plateau``         learning rate 0 from step t on (the weights stop moving)   ``plateau``
``healthy``         nothing                                                    none: any alarm is false
==================  =========================================================  ==============================

Each run's mode (LoRA r=8 on query/key/value, or the full model) and loss (InfoNCE with in-batch negatives,
scale 20, or the triplet loss with cosine distance, margin 0.3) follow from its seed and failure, so that
four consecutive seeds cover the four combinations (``collapse`` is always a full fine-tune, as in the
recipes); the data order is shuffled by the seed; t is drawn per run in ``[steps/2, steps/2 + steps/6]``
(after the detectors' warm-up and enough healthy history to judge against).

Scoring, per set of seeds:

- a failure run is *detected* when an alarm of a kind in ``M`` fires at a step in ``[t, t + horizon]``;
  its latency is that step − t. A failure run stops at ``t + horizon``, a healthy run at ``--steps``.
- recall of a failure: detected runs / runs; median and worst latency over the detected runs.
- precision of an alarm kind K: the alarms of kind K raised on a run whose failure maps to K (K in its
  ``M``) at or after its injection step, over all alarms of kind K raised in the set (healthy runs
  included); an alarm before t, of a kind outside ``M``, or on a healthy run is a false alarm.
- healthy-run quiet share: healthy runs with no alarm at all / healthy runs.

Thresholds were tuned on the ``--seeds-tune`` set only (default 0-3); ``--seeds-report`` (default 100-103)
is the held-out set whose figures the README reports. The JSON (``--out``, written atomically after every
run, so a stopped benchmark keeps what it measured) holds the settings, every run (its alarms, t, mode,
loss, seconds) and the scores per set.

    python scripts/bench_alarms.py                                  # MiniLM, both seed sets
    python scripts/bench_alarms.py --seeds-tune '' --steps 60      # the held-out set only
    python scripts/bench_alarms.py --quick --model tests/tiny-model  # seconds, on a tiny model
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: failure -> alarm kinds that count as detecting it (see the module docstring)
FAILURE_ALARMS: dict[str, tuple[str, ...]] = {
    "nan": ("nan",),
    "lr_x100": ("spike", "dead_layer", "nan", "collapse", "lr_jump"),
    "dead_layer": ("dead_layer",),
    "collapse": ("collapse", "dead_layer", "spike", "gap_narrowing", "nan", "lr_jump"),
    "false_negatives": ("false_negatives",),
    "plateau": ("plateau",),
}
FAILURES = tuple(FAILURE_ALARMS)
MODES = ("lora", "full")
LOSSES = ("infonce", "triplet")
LEARNING_RATES = {"lora": 2e-4, "full": 2e-5}  # the recipes' defaults
COLLAPSE = {"infonce": (2e-3, 100.0), "triplet": (1e-2, 20.0)}  # --provoke collapse: (lr, InfoNCE scale)
INFONCE_SCALE = 20.0
TRIPLET_MARGIN = 0.3
FULL = {"steps": 60, "horizon": 20, "batch_size": 8, "seq_len": 32, "healthy": 12}
QUICK = {"steps": 40, "horizon": 15, "batch_size": 4, "seq_len": 16, "healthy": 2}
TARGETS = {"precision": 0.9, "recall": 0.9, "median_latency": 20, "healthy_quiet_share": 0.9}


def seed_list(text: str) -> list[int]:
    """Seeds from ``'0-3'``, ``'100,105'`` or ``'0-2,7'``; ``''`` is none.

    >>> seed_list("0-3"), seed_list("100,105"), seed_list("0-1,7"), seed_list("")
    ([0, 1, 2, 3], [100, 105], [0, 1, 7], [])
    """
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default="default", help="sentence-transformers checkpoint; 'default': bundled MiniLM")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of a healthy run (default 60)")
    p.add_argument(
        "--horizon", type=int, default=None, help="steps after the injection a detection may take (default 20)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="pairs (or triplets) per step (default 8)")
    p.add_argument("--seq-len", type=int, default=None, help="max_seq_length (default 32: SNLI sentences are short)")
    p.add_argument("--seeds-tune", type=seed_list, default=seed_list("0-3"), help="seeds the thresholds were tuned on")
    p.add_argument("--seeds-report", type=seed_list, default=seed_list("100-103"), help="held-out seeds")
    p.add_argument(
        "--healthy", type=int, default=None, help="healthy runs per seed set (default 12; seeds base, base+1, ...)"
    )
    p.add_argument("--kinds", default=",".join(FAILURES), help="failures to inject, comma-separated")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--out", default="runs/bench_alarms.json", help="results JSON (written atomically after each run)")
    p.add_argument("--traces", action="store_true", help="keep every run's per-step scalars in the JSON")
    p.add_argument(
        "--replay",
        nargs="*",
        default=[],
        metavar="JSON",
        help="no training: merge these result files (written with --traces), a run in the tune set when its seed is "
        "in --seeds-tune, in the report set when in --seeds-report, replaying the contrastive and learning-rate "
        "checks with the current thresholds (see replay_checks)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="defaults for tests: --steps 40 --horizon 15 --batch-size 4 --seq-len 16 --healthy 2, one seed per set",
    )
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.quick:
        args.seeds_tune, args.seeds_report = args.seeds_tune[:1], args.seeds_report[:1]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(args.kinds) - set(FAILURES))
    if unknown:
        p.error(f"--kinds: unknown failures {unknown}; known: {', '.join(FAILURES)}")
    for name in ("steps", "horizon", "batch_size", "seq_len", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.healthy < 0:
        p.error("--healthy must be >= 0")
    if args.steps < 24:
        p.error("--steps must be >= 24 (the detectors' warm-up and history come first)")
    if args.batch_size < 2:
        p.error("--batch-size must be >= 2 (in-batch negatives)")
    if not args.seeds_tune and not args.seeds_report:
        p.error("no seeds: give --seeds-tune or --seeds-report")
    for path in args.replay:
        if not Path(path).is_file():
            p.error(f"--replay: {path}: no such file")
    if set(args.seeds_tune) & set(args.seeds_report):
        p.error(f"--seeds-tune and --seeds-report share seeds {sorted(set(args.seeds_tune) & set(args.seeds_report))}")
    return args


@dataclass
class RunSpec:
    """One fine-tune: which failure (``healthy``: none), injected at which step, in which mode and loss."""

    seed_set: str
    seed: int
    failure: str
    mode: str
    loss: str
    inject_at: int | None
    steps: int

    @staticmethod
    def make(seed_set: str, seed: int, failure: str, args: argparse.Namespace) -> RunSpec:
        """The run of ``failure`` for ``seed``: mode and loss from (seed + failure index), t drawn from the seed."""
        index = seed + (FAILURES.index(failure) if failure in FAILURES else 0)
        mode = "full" if failure == "collapse" else MODES[index % 2]
        loss = LOSSES[(index // 2) % 2]
        if failure == "healthy":
            return RunSpec(seed_set, seed, failure, mode, loss, None, args.steps)
        rng = random.Random(f"{seed}:{failure}")
        inject_at = rng.randint(args.steps // 2, args.steps // 2 + args.steps // 6)
        return RunSpec(seed_set, seed, failure, mode, loss, inject_at, min(args.steps, inject_at + args.horizon))


def plan(args: argparse.Namespace) -> list[RunSpec]:
    """Every run of the benchmark: per seed set, each failure once per seed, then the healthy runs."""
    runs = []
    for name, seeds in (("tune", args.seeds_tune), ("report", args.seeds_report)):
        if not seeds:
            continue
        runs.extend(RunSpec.make(name, seed, failure, args) for seed in seeds for failure in args.kinds)
        runs.extend(RunSpec.make(name, seeds[0] + i, "healthy", args) for i in range(args.healthy))
    return runs


@dataclass
class Injection:
    """What a run's failure changes in the training loop, step by step (1-based optimizer steps)."""

    failure: str
    at: int | None
    loss: str
    dead_block: int = 0  # the encoder block whose gradients the dead_layer failure cuts

    def active(self, step: int) -> bool:
        return self.at is not None and step >= self.at

    def lr_factor(self, step: int) -> float:
        """Multiplier of the scheduled learning rate at ``step`` (collapse: of the base rate, see :func:`train`)."""
        if not self.active(step):
            return 1.0
        return {"lr_x100": 100.0, "plateau": 0.0}.get(self.failure, 1.0)

    def batch(self, step: int, rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """The batch as trained: false negatives make each positive reappear among the row's negatives."""
        if self.failure != "false_negatives" or not self.active(step):
            return rows
        if self.loss == "triplet":
            return [(a, p, p) for a, p, _ in rows]
        half = rows[: max(1, len(rows) // 2)]
        return (half * 2)[: len(rows)]

    def embeddings(self, step: int, anchors):
        """NaN failure: one NaN in the anchors of step ``at`` (as a corrupted input would give)."""
        if self.failure == "nan" and step == self.at:
            anchors = anchors.clone()
            anchors[0, 0] = float("nan")
        return anchors

    def gradients(self, step: int, model) -> None:
        """Dead layer: block ``dead_block``'s gradients set to zero after ``backward()``."""
        if self.failure != "dead_layer" or not self.active(step):
            return
        marker = f"layer.{self.dead_block}."
        for name, parameter in model.named_parameters():
            if marker in name and parameter.grad is not None:
                parameter.grad.zero_()


@dataclass
class RunResult:
    spec: RunSpec
    alarms: list[dict]
    seconds: float
    trace: list[dict] = field(default_factory=list)


class TraceSink:
    """A sink keeping each step's scalars (``--traces``: for tuning thresholds offline); the rest it drops."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log_scalars(self, metrics, step: int) -> None:
        self.rows.append({"step": step, **{k: round(v, 6) if math.isfinite(v) else None for k, v in metrics.items()}})

    def log_histogram(self, tag, values, step) -> None:
        pass

    def log_event(self, event) -> None:
        pass

    def log_figure(self, tag, figure, step) -> None:
        pass

    def log_embeddings(self, tag, embeddings, labels, step) -> None:
        pass

    def log_summary(self, metrics, step) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def schedule(step: int, steps: int) -> float:
    """Linear warm-up over the first 10 % of the steps from 0, then linear decay (the ST Trainer's default).

    ``step`` is 1-based; the first step's rate is 0, as with ``get_linear_schedule_with_warmup``.

    >>> [round(schedule(s, 20), 3) for s in (1, 2, 3, 10, 20)]
    [0.0, 0.5, 1.0, 0.611, 0.056]
    """
    warmup = max(1, steps // 10)
    done = step - 1
    if done < warmup:
        return done / warmup
    return max(0.0, (steps - done) / max(1, steps - warmup))


class Bench:
    """The loaded base model and data, shared by every run of the process."""

    def __init__(self, args: argparse.Namespace):
        from aquin_monitor.data import bundled_dataset, read_triplets
        from aquin_monitor.encoders import load_model

        self.args = args
        self.base = load_model(args.model, device="cpu")
        self.base.max_seq_length = args.seq_len
        self.triplets = read_triplets(bundled_dataset("snli_triplets") / "dev.jsonl")
        self.middle_block = self.base[0].auto_model.config.num_hidden_layers // 2

    def model_for(self, spec: RunSpec):
        from aquin_monitor.encoders import add_lora

        model = copy.deepcopy(self.base)
        if spec.mode == "lora":
            add_lora(model, rank=8, alpha=16, target_modules=["query", "key", "value"])
        model.train()
        return model

    def batches(self, seed: int):
        """Batches of triplets in a seeded order, cycling through the data."""
        order = list(self.triplets)
        random.Random(seed).shuffle(order)
        size, start = self.args.batch_size, 0
        while True:
            if start + size > len(order):
                start = 0
            yield order[start : start + size]
            start += size


def step_loss(model, spec: RunSpec, rows, injection: Injection, step: int, scale: float, tap):
    """Forward over the batch's texts in one pass; the loss reports its similarities to ``tap``."""
    from aquin_monitor.losses import info_nce, triplet

    texts = [a for a, _, _ in rows] + [p for _, p, _ in rows]
    if spec.loss == "triplet":
        texts += [n for _, _, n in rows]
    features = model.preprocess(texts)
    embeddings = model(features)["sentence_embedding"]
    parts = list(embeddings.split(len(rows)))
    parts[0] = injection.embeddings(step, parts[0])
    if spec.loss == "triplet":
        return triplet(parts[0], parts[1], parts[2], margin=TRIPLET_MARGIN, distance="cosine", tap=tap)
    return info_nce(parts[0], parts[1], scale=scale, tap=tap)


def train(bench: Bench, spec: RunSpec, keep_trace: bool) -> RunResult:
    """One monitored fine-tune with its failure injected; the alarms the monitor raised."""
    import torch

    from aquin_monitor.capture import ContrastiveTap
    from aquin_monitor.monitor import StepMonitor, host_learning_rates

    torch.manual_seed(spec.seed)
    started = time.perf_counter()
    model = bench.model_for(spec)
    injection = Injection(spec.failure, spec.inject_at, spec.loss, bench.middle_block)
    base_lr = LEARNING_RATES[spec.mode]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=base_lr)
    tap, trace = ContrastiveTap(), TraceSink()
    monitor = StepMonitor([trace], warn=False, background=False, tap=tap, histogram_every=0)
    monitor.start(model, 0)
    batches = bench.batches(spec.seed)
    for step in range(1, spec.steps + 1):
        scale, lr = INFONCE_SCALE, base_lr * schedule(step, bench.args.steps) * injection.lr_factor(step)
        if spec.failure == "collapse" and injection.active(step):
            lr, scale = COLLAPSE[spec.loss]
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = injection.batch(step, next(batches))
        step_loss(model, spec, rows, injection, step, scale, tap).backward()
        injection.gradients(step, model)
        monitor.on_optimizer_step(step, model, learning_rates=host_learning_rates(optimizer.param_groups))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    monitor.close()
    alarms = [{"step": a.step, "kind": a.kind, "layer": a.layer} for a in monitor.alarms]
    return RunResult(spec, alarms, round(time.perf_counter() - started, 2), trace.rows if keep_trace else [])


def first_detection(result: RunResult) -> int | None:
    """Latency (steps after injection) of the first alarm of a kind its failure maps to, within the run."""
    spec = result.spec
    if spec.inject_at is None:
        return None
    hits = [
        a["step"] for a in result.alarms if a["kind"] in FAILURE_ALARMS[spec.failure] and a["step"] >= spec.inject_at
    ]
    return min(hits) - spec.inject_at if hits else None


def true_alarm(alarm: dict, spec: RunSpec) -> bool:
    """An alarm is true when its run's failure maps to its kind and it fired at or after the injection."""
    return (
        spec.inject_at is not None and alarm["kind"] in FAILURE_ALARMS[spec.failure] and alarm["step"] >= spec.inject_at
    )


def score(results: Sequence[RunResult], horizon: int) -> dict[str, Any]:
    """Recall and latency per failure, precision per alarm kind, the healthy runs' quiet share.

    Precision of a kind that never fired is None (no alarm to be wrong), as is a latency with no detection.
    """
    from aquin_monitor.alarms import ALARM_KINDS

    failures: dict[str, Any] = {}
    for failure in FAILURES:
        runs = [r for r in results if r.spec.failure == failure]
        if not runs:
            continue
        latencies = [lat for lat in map(first_detection, runs) if lat is not None and lat <= horizon]
        failures[failure] = {
            "runs": len(runs),
            "detected": len(latencies),
            "recall": len(latencies) / len(runs),
            "median_latency": statistics.median(latencies) if latencies else None,
            "worst_latency": max(latencies) if latencies else None,
            "alarm_kinds": list(FAILURE_ALARMS[failure]),
        }
    kinds: dict[str, Any] = {}
    for kind in ALARM_KINDS:
        raised = [(a, r.spec) for r in results for a in r.alarms if a["kind"] == kind]
        true = sum(true_alarm(a, spec) for a, spec in raised)
        kinds[kind] = {"alarms": len(raised), "true": true, "precision": true / len(raised) if raised else None}
    healthy = [r for r in results if r.spec.failure == "healthy"]
    quiet = sum(not r.alarms for r in healthy)
    return {
        "failures": failures,
        "alarm_kinds": kinds,
        "healthy": {"runs": len(healthy), "quiet": quiet, "quiet_share": quiet / len(healthy) if healthy else None},
    }


#: settings that shape a run (a replay merges only files that agree on them)
MEASURED_SETTINGS = ("model", "steps", "horizon", "batch_size", "seq_len")


def replay_checks(trace: Sequence[dict]) -> list[dict]:
    """The alarms of the host-side checks (:class:`~aquin_monitor.alarms.HostSideChecks`: ``gap_narrowing``,
    ``false_negatives``, ``collapse``, ``plateau``, ``lr_jump``) that the current default thresholds raise on a
    recorded run: the object StepMonitor feeds, fed step by step the same numbers (the trace's ``contrastive/*``
    means, loss and ``optim/lr``; non-finite values were recorded as null and are skipped by the checks either
    way). None of them acts on the training, so a replay equals a rerun."""
    from aquin_monitor.alarms import AlarmConfig, HostSideChecks

    checks = HostSideChecks(AlarmConfig())
    alarms = []
    for row in trace:
        contrastive = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("contrastive/") and v is not None}
        rates = [v for k, v in sorted(row.items()) if k.startswith("optim/lr") and v is not None]
        for alarm in checks.update(row["step"], contrastive, contrastive.get("loss"), rates):
            alarms.append({"step": alarm.step, "kind": alarm.kind, "layer": alarm.layer})
    return alarms


def replayed(paths: Sequence[str], tune: Sequence[int], report: Sequence[int]) -> tuple[list[RunResult], dict]:
    """The runs of result files whose seed is in ``tune`` or ``report`` (their set), replayable alarms recomputed
    (:func:`replay_checks`), and the settings the files were measured with (they must agree but for seeds)."""
    from aquin_monitor.alarms import HostSideChecks

    results, settings = [], None
    for path in paths:
        document = json.loads(Path(path).read_text())
        measured = {k: v for k, v in document["settings"].items() if k in MEASURED_SETTINGS}
        if settings is not None and measured != settings:
            raise SystemExit(f"{path}: measured with {measured}, the files before it with {settings}")
        settings = measured
        for run in document["runs"]:
            seed_set = "tune" if run["seed"] in tune else "report" if run["seed"] in report else None
            if seed_set is None:
                continue
            if not run.get("trace"):
                raise SystemExit(f"{path}: run {run['failure']} seed {run['seed']} has no trace (rerun with --traces)")
            fields = {k: run[k] for k in RunSpec.__dataclass_fields__}
            spec = RunSpec(**{**fields, "seed_set": seed_set})
            kept = [a for a in run["alarms"] if a["kind"] not in HostSideChecks.KINDS]
            alarms = sorted(kept + replay_checks(run["trace"]), key=lambda a: a["step"])
            results.append(RunResult(spec, alarms, run["seconds"], run["trace"]))
    return results, settings or {}


def write_results(path: Path, args: argparse.Namespace, results: Sequence[RunResult], planned: int) -> dict:
    """The JSON of everything measured so far (atomic: a reader never sees half a file)."""
    from aquin_monitor.alarms import AlarmConfig
    from aquin_monitor.atomic import atomic_write_text

    sets = {name: score([r for r in results if r.spec.seed_set == name], args.horizon) for name in ("tune", "report")}
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    document = {
        "settings": settings,
        "alarm_config": asdict(AlarmConfig()),
        "failure_alarms": {k: list(v) for k, v in FAILURE_ALARMS.items()},
        "targets": TARGETS,
        "complete": len(results) == planned,
        "sets": {name: s for name, s in sets.items() if any(r.spec.seed_set == name for r in results)},
        "runs": [
            {
                **asdict(r.spec),
                "alarms": r.alarms,
                "seconds": r.seconds,
                **({"trace": r.trace} if args.traces and r.trace else {}),
            }
            for r in results
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(document, indent=1, allow_nan=False) + "\n")
    return document


def _cell(value: float | None, digits: int = 2) -> str:
    return (
        "–"
        if value is None
        else (f"{value:.{digits}f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}")
    )


def table(document: dict) -> str:
    """The results as Markdown tables, one pair per seed set (the README's table)."""
    lines = []
    for name, s in document["sets"].items():
        lines.append(f"{name} seeds:\n")
        lines.append("| failure | alarm kinds | runs | recall | median latency | worst latency |")
        lines.append("|---|---|---|---|---|---|")
        for failure, f in s["failures"].items():
            lines.append(
                f"| `{failure}` | {', '.join(f['alarm_kinds'])} | {f['runs']} | {f['recall']:.2f} | "
                f"{_cell(f['median_latency'])} | {_cell(f['worst_latency'])} |"
            )
        lines.append("")
        lines.append("| alarm kind | alarms | true | precision |")
        lines.append("|---|---|---|---|")
        for kind, k in s["alarm_kinds"].items():
            lines.append(f"| `{kind}` | {k['alarms']} | {k['true']} | {_cell(k['precision'])} |")
        h = s["healthy"]
        lines.append(f"\nhealthy runs with no alarm: {h['quiet']} of {h['runs']}\n")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.replay:
        merged, measured = replayed(args.replay, args.seeds_tune, args.seeds_report)
        vars(args).update(measured)
        print(table(write_results(out, args, merged, len(merged))))
        print(f"results: {out}")
        return 0
    runs = plan(args)
    bench = Bench(args)
    results: list[RunResult] = []
    for i, spec in enumerate(runs, 1):
        result = train(bench, spec, args.traces)
        results.append(result)
        found = ", ".join(f"{a['kind']}@{a['step']}" for a in result.alarms[:6]) or "none"
        print(
            f"[{i}/{len(runs)}] {spec.seed_set} seed {spec.seed} {spec.failure} ({spec.mode}, {spec.loss}, "
            f"t={spec.inject_at}): alarms {found} ({result.seconds:.0f} s)",
            flush=True,
        )
        document = write_results(out, args, results, len(runs))
    print()
    print(table(document))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
