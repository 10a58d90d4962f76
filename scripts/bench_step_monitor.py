#!/usr/bin/env python
"""What does per-step monitoring cost? Step time of an InfoNCE fine-tune with and without it, in one process.

Four variants of the same training step (forward, in-batch InfoNCE, backward, AdamW step), each on its
own identically initialised copy of the model:

  a  unmonitored
  b  aquin-monitor: StepMonitor with a JSONL and a TensorBoard sink, histograms every 50 steps,
     the loss reporting its similarity matrix to the contrastive tap
  c  Lightning's recipe: ``lightning.pytorch.utilities.grad_norm(model, norm_type=2)`` every step,
     each value turned into a Python float and written as a TensorBoard scalar (what ``self.log_dict``
     ends up doing; Lightning's own logging machinery comes on top, so this is a lower bound)
  d  ``wandb.watch(model, log="gradients", log_freq=1)`` in offline mode, one ``run.log`` per step
  e  as b with ``background=False``: on CUDA the host side of each step (alarm statistics, sink writes)
     runs on the training thread at the next step instead of in the worker thread during backward
  h  calibration: a plus 2 ms of busy host work (holding the GIL) between ``backward()`` and the
     optimizer step. Its ratio to a says how much host work shows in the step: ~1 + 2 ms / step when
     the step is bound by Python's kernel launches, ~1 when the device is the bottleneck

The variants are interleaved (each round runs every variant for ``--steps-per-round`` steps, in an
order rotated per round) so that drift of the machine (thermal, other processes) hits them alike.
Reported per variant: the median time per step over all timed steps (CPU: every step timed; CUDA:
blocks of ``--steps-per-round`` steps between two synchronisations, so the monitor's asynchronous host
copy counts as it would in training), its ratio to variant a, the paired ratio (median over rounds of
the ratio to a in the same round, with a 95% bootstrap interval of that median), ``best`` (fastest block over
fastest block of a: interference from other processes only ever adds time), and the host time the monitoring adds
on the training thread:
``in-step`` (between ``backward()`` and ``optimizer.step()``) plus ``loss +`` (the loss call's extra
time when it reports its scores), as ``1 + host / median(a)``. On CPU the in-step time includes the
gradient-norm arithmetic. On a GPU whose step is bound by Python's kernel launches, host time is what
monitoring adds to the step; on a busy machine, where step times swing by tens of percent, the host
figure is the one that resolves a 1% overhead.

CPU (default): the bundled all-MiniLM-L6-v2, batch 32 SciFact claim/abstract pairs, max_seq_length 128.
GPU: ``--device cuda --model bert-base``: a bge-base-sized BERT (12 layers x 768, random init, no
download), batch 128 pairs of 128 random tokens, bf16 autocast.

    python scripts/bench_step_monitor.py                                   # CPU
    python scripts/bench_step_monitor.py --device cuda --model bert-base   # CUDA
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VARIANTS = {
    "a": "unmonitored",
    "b": "aquin-monitor StepMonitor (JSONL + TensorBoard)",
    "c": "Lightning grad_norm + per-step logging",
    "d": "wandb.watch(log='gradients', log_freq=1)",
    "e": "as b, host work on the training thread",
    "h": "a + 2 ms of host work after backward (calibration)",
}
HOST_CALIBRATION_S = 0.002


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--model", choices=["minilm", "bert-base"], default=None, help="default: minilm on CPU, bert-base on CUDA"
    )
    p.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 32 CPU, 128 CUDA)")
    p.add_argument(
        "--seq-len", type=int, default=128, help="max_seq_length (minilm) / random sequence length (bert-base)"
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15 CPU, 8 CUDA)")
    p.add_argument(
        "--steps-per-round", type=int, default=None, help="steps of each variant per round (default 1 CPU, 10 CUDA)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant first (default 2 CPU, 5 CUDA)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--variants", default="abcd", help="which variants to run, e.g. 'ab'")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    defaults = {
        "model": "bert-base" if cuda else "minilm",
        "batch_size": 128 if cuda else 32,
        "rounds": 8 if cuda else 15,
        "steps_per_round": 10 if cuda else 1,
        "warmup": 5 if cuda else 2,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown or "a" not in args.variants:
        p.error(f"--variants must include 'a' (the baseline) and only letters of {''.join(VARIANTS)}")
    for name in ("batch_size", "seq_len", "rounds", "steps_per_round", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------
# models and batches: an encoder maps a feature dict to [B, d] embeddings
# ---------------------------------------------------------------------------------------------


class MeanPooledBert:
    """A randomly initialised BERT-base (bge-base's shape) with mean pooling; no download."""

    def __init__(self, device: str, seed: int):
        import torch
        from transformers import BertConfig, BertModel

        torch.manual_seed(seed)
        config = BertConfig(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=30522
        )
        self.module = BertModel(config, add_pooling_layer=False).to(device)
        self.vocab_size = config.vocab_size

    def __call__(self, module, features):
        hidden = module(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).last_hidden_state
        mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)


def bert_batches(n_batches: int, batch_size: int, seq_len: int, vocab_size: int, device: str, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        pair = []
        for _side in range(2):
            ids = torch.randint(1000, vocab_size, (batch_size, seq_len), generator=generator)
            ids[:, 0] = 101  # [CLS], as a tokenizer would put it
            pair.append({"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)})
        batches.append(tuple(pair))
    return batches


def minilm_batches(model, n_batches: int, batch_size: int, seed: int):
    """Pre-tokenised SciFact (claim, abstract) pairs, so tokenisation does not dilute the step time."""
    import random

    from aquin_monitor.data import bundled_dataset, read_beir

    train = read_beir(bundled_dataset("scifact"), "train")
    pairs = [(train.queries[q], train.corpus[d]) for q in sorted(train.qrels) for d in sorted(train.qrels[q])]
    random.Random(seed).shuffle(pairs)
    if len(pairs) < n_batches * batch_size:
        pairs = pairs * (n_batches * batch_size // len(pairs) + 1)
    batches = []
    for i in range(n_batches):
        chunk = pairs[i * batch_size : (i + 1) * batch_size]
        batches.append((model.preprocess([q for q, _ in chunk]), model.preprocess([d for _, d in chunk])))
    return batches


def st_encode(module, features):
    return module(dict(features))["sentence_embedding"]


# ---------------------------------------------------------------------------------------------
# the variants
# ---------------------------------------------------------------------------------------------


class Variant:
    """One model copy, its optimizer and what happens between backward and the optimizer step."""

    def __init__(self, key, module, encode, device, bf16, workdir: Path):
        import torch

        from aquin_monitor.capture import ContrastiveTap

        self.key = key
        self.module = module
        self.encode = encode
        self.device = device
        self.bf16 = bf16
        self.optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
        self.step_count = 0
        self.tap = ContrastiveTap()
        self.times: list[float] = []
        self.round_medians: list[float] = []
        self.added: list[float] = []  # host time of the monitoring work between backward and optimizer step
        self.loss_times: list[float] = []  # host time of the loss call (b and e report their scores in it)
        self.close = lambda: None
        if key in "be":
            from aquin_monitor.monitor import StepMonitor
            from aquin_monitor.sinks import JsonlSink, MultiSink, TensorBoardSink

            run_dir = workdir / f"monitor_{key}"
            sinks = MultiSink([JsonlSink(run_dir), TensorBoardSink(log_dir=run_dir / "tensorboard")])
            self.monitor = StepMonitor([sinks], histogram_every=50, tap=self.tap, warn=False, background=key == "b")
            self.close = self.monitor.close
        elif key == "c":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(workdir / "lightning_grad_norm"))
            self.close = self.writer.close
        elif key == "d":
            import wandb

            self.wandb_run = wandb.init(project="aquin-bench", dir=str(workdir), mode="offline")
            self.wandb_run.watch(module, log="gradients", log_freq=1)
            self.close = self.wandb_run.finish

    def step(self, batch) -> None:
        import torch

        from aquin_monitor.losses import info_nce

        self.step_count += 1
        queries, documents = batch
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else _null()
        with autocast:
            q = self.encode(self.module, queries)
            d = self.encode(self.module, documents)
            t_loss = time.perf_counter()
            loss = info_nce(q.float(), d.float(), report=self.key in "be", tap=self.tap)
            self.loss_times.append(time.perf_counter() - t_loss)
        loss.backward()
        t0 = time.perf_counter()
        if self.key in "be":
            self.monitor.on_optimizer_step(self.step_count, self.module)
        elif self.key == "c":
            from lightning.pytorch.utilities import grad_norm

            norms = grad_norm(self.module, norm_type=2)
            # Lightning's logger connector turns each logged tensor into a float, then the logger writes it
            for name, value in norms.items():
                self.writer.add_scalar(name, float(value), self.step_count)
        elif self.key == "d":
            self.wandb_run.log({"step": self.step_count})  # commits the row the gradient hooks filled
        elif self.key == "h":
            end = t0 + HOST_CALIBRATION_S
            while time.perf_counter() < end:
                pass
        if self.key != "a":
            self.added.append(time.perf_counter() - t0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def run(args) -> dict[str, list[float]]:
    import torch

    torch.set_num_threads(args.threads)
    device = args.device
    workdir = Path(tempfile.mkdtemp(prefix="aquin-bench-"))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_DIR", str(workdir))
    os.environ.setdefault("WANDB_SILENT", "true")
    n_batches = 8
    if args.model == "minilm":
        from aquin_monitor.encoders import load_model

        torch.manual_seed(args.seed)
        base = load_model("default", device=device)
        base.max_seq_length = args.seq_len
        batches = minilm_batches(base, n_batches, args.batch_size, args.seed)
        batches = [
            tuple({k: v.to(device) if torch.is_tensor(v) else v for k, v in side.items()} for side in b)
            for b in batches
        ]
        encode = st_encode
        desc = f"all-MiniLM-L6-v2 (6x384), batch {args.batch_size} SciFact pairs, max_seq_length {args.seq_len}"
    else:
        bert = MeanPooledBert(device, args.seed)
        base = bert.module
        batches = bert_batches(n_batches, args.batch_size, args.seq_len, bert.vocab_size, device, args.seed)
        encode = bert
        desc = f"BERT-base (12x768, random init), batch {args.batch_size} pairs x {args.seq_len} random tokens"
    base.train()
    bf16 = device == "cuda"
    variants = [Variant(k, copy.deepcopy(base), encode, device, bf16, workdir) for k in args.variants]
    del base
    n_params = sum(p.numel() for p in variants[0].module.parameters())
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    print(f"model: {desc}; {n_params / 1e6:.1f}M parameters")
    print(
        f"device: {device}{' (' + gpu + ')' if gpu else ''}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, bf16 autocast: {bf16}"
    )
    print(
        f"schedule: {args.warmup} warm-up steps per variant, "
        f"then {args.rounds} rounds x {args.steps_per_round} steps per variant, interleaved"
    )

    batch_index = 0

    def next_batch():
        nonlocal batch_index
        batch_index += 1
        return batches[batch_index % n_batches]

    started = time.perf_counter()
    for v in variants:
        for _ in range(args.warmup):
            v.step(next_batch())
    synchronize(device)
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            synchronize(device)
            if device == "cpu":
                for _ in range(args.steps_per_round):
                    t0 = time.perf_counter()
                    v.step(next_batch())
                    v.times.append(time.perf_counter() - t0)
            else:
                t0 = time.perf_counter()
                for _ in range(args.steps_per_round):
                    v.step(next_batch())
                synchronize(device)
                v.times.append((time.perf_counter() - t0) / args.steps_per_round)
            v.round_medians.append(statistics.median(v.times[-(args.steps_per_round if device == "cpu" else 1) :]))
        print(
            f"  round {r + 1}/{args.rounds}: "
            + ", ".join(f"{v.key} {v.round_medians[-1] * 1e3:.0f} ms" for v in variants),
            flush=True,
        )
    elapsed = time.perf_counter() - started
    for v in variants:
        v.close()
    print(f"timed and warm-up steps took {elapsed:.0f} s; scratch files in {workdir}")
    return {v.key: (v.times, v.added, v.round_medians, v.loss_times) for v in variants}


def bootstrap_median_interval(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the median of ``values`` (percentile method, seeded)."""
    import random

    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return medians[int(0.025 * n)], medians[int(0.975 * n) - 1]


def table(results: dict[str, tuple[list[float], list[float], list[float], list[float]]]) -> str:
    """Median step time and its ratio to variant a, and the host time the monitoring adds.

    The paired ratio is the median over rounds of (this variant's time / a's time in the same round):
    neighbouring measurements share the machine's momentary load, so it drifts less than the ratio of
    the two overall medians.

    The host column (median time between ``backward()`` and ``optimizer.step()`` plus the loss call's
    median extra time, divided by a's median step) is much less sensitive to a busy machine than the
    ratio of two medians. It misses what happens inside backward (wandb's gradient hooks run there).
    """
    base = statistics.median(results["a"][0])
    base_best = min(results["a"][0])
    base_rounds = results["a"][2]
    base_loss = statistics.median(results["a"][3])
    lines = [
        f"{'variant':<52} {'median ms':>10} {'p25-p75 ms':>15} {'ratio to a':>11} {'paired':>7} {'paired 95% CI':>14}"
        f" {'best':>6}"
        f" {'in-step ms':>11} {'loss +ms':>9} {'1 + host/a':>11} {'n':>4}"
    ]
    for key, (values, added, rounds, loss_times) in results.items():
        ratios = [x / y for x, y in zip(rounds, base_rounds)]
        paired = statistics.median(ratios)
        low, high = bootstrap_median_interval(ratios)
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        med = statistics.median(values)
        loss_extra = statistics.median(loss_times) - base_loss
        if added and key != "d":
            extra = statistics.median(added)
            host = f"{extra * 1e3:>11.2f} {loss_extra * 1e3:>9.2f} {1 + (extra + loss_extra) / base:>11.4f}"
        else:
            host = f"{'-':>11} {loss_extra * 1e3:>9.2f} {'-':>11}"
        lines.append(
            f"{key + ' ' + VARIANTS[key]:<52} {med * 1e3:>10.1f} {q[0] * 1e3:>7.1f}-{q[2] * 1e3:<7.1f}"
            f" {med / base:>11.3f}"
            f" {paired:>7.3f} {low:>6.3f}-{high:<7.3f} {min(values) / base_best:>6.3f} {host} {len(values):>4}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device is available", file=sys.stderr)
            return 2
    results = run(args)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
