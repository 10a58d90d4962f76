"""Streaming SAE training at scale: samples/s and peak RSS on 1,000,000 × 384 rows, against the in-memory trainer.

The rows: real all-MiniLM-L6-v2 embeddings of the first ``--texts`` shipped texts (the default SAE's
corpus, cached), tiled to ``--rows`` with Gaussian noise of standard deviation ``--noise`` per
coordinate and re-normalised, written once to an ``.npy`` file (memory-mapped for writing, read
back block by block with ``pread``: the training process maps none of it, so its RSS is its own).

Measured in one process:

1. streaming training (:func:`aquin_monitor.sae.train.train_rows`) over the file for ``--epochs``
   epochs: samples/s over the training steps (the first ``--warmup`` steps left out), wall time
   of the whole call (mean pass, held-out evaluation included), and peak RSS after it;
2. the same trainer on a ``--subset`` of the rows held in memory (:class:`~aquin_monitor.rows.ArrayRows`,
   one buffer, as ``train_sae`` on an array): samples/s; the ratio streaming / in-memory.

    HF_HUB_OFFLINE=1 python scripts/bench_scale_sae.py [--rows 1000000] [--threads 2] [--work-dir /tmp/bench]

Prints the machine's load average before and after (on a shared machine the figures scale with the
CPU share this process gets).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch


class NpyFileRows:
    """A :class:`~aquin_monitor.rows.RowSource` over a float32 ``.npy`` file, read with ``os.pread`` (no mapping)."""

    def __init__(self, path: Path) -> None:
        array = np.load(path, mmap_mode="r")
        self.shape, self.offset = array.shape, array.offset
        del array
        self.fd = os.open(path, os.O_RDONLY)

    @property
    def dimension(self) -> int:
        return int(self.shape[1])

    def __len__(self) -> int:
        return int(self.shape[0])

    def read(self, start: int, stop: int) -> np.ndarray:
        width = self.shape[1] * 4
        data = os.pread(self.fd, (stop - start) * width, self.offset + start * width)
        return np.frombuffer(bytearray(data), dtype=np.float32).reshape(stop - start, self.shape[1])


def write_rows(path: Path, n_rows: int, n_texts: int, noise: float, seed: int = 0) -> None:
    """Embed ``n_texts`` shipped texts (cached) and tile them with noise into ``path`` (written once)."""
    from aquin_monitor.sae.embeddings import embed_corpus
    from scripts.train_default_sae import default_corpus

    base = embed_corpus("default", default_corpus()[:n_texts], chunk_size=2048, batch_size=64)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_rows, base.shape[1]))
    for start in range(0, n_rows, 65_536):
        stop = min(start + 65_536, n_rows)
        block = base[rng.integers(0, len(base), stop - start)] + noise * rng.standard_normal(
            (stop - start, base.shape[1])
        )
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    out.flush()
    del out
    os.replace(tmp, path)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _EnoughSteps(Exception):
    """Raised from the step callback to end a timed run after ``--max-steps`` steps."""


def timed_training(source, config, warmup: int, max_steps: int | None = None) -> tuple[float, float, float, int]:
    """``(samples/s after warm-up, samples per CPU second of this process, wall seconds of the whole call, steps)``.

    The CPU-time rate is the one to compare on a machine shared with other jobs (the wall-clock
    rate then scales with the CPU share this process got).
    """
    from aquin_monitor.sae.train import train_rows

    marks: list[tuple[float, float, int]] = []

    def mark(trainer) -> None:
        marks.append((time.perf_counter(), time.process_time(), trainer.seen))
        if max_steps and len(marks) >= max_steps:
            raise _EnoughSteps

    start = time.perf_counter()
    try:
        train_rows(source, config, show_progress=False, on_step=mark)
    except _EnoughSteps:
        pass
    wall = time.perf_counter() - start
    (t0, c0, s0), (t1, c1, s1) = marks[min(warmup, len(marks) - 2)], marks[-1]
    return (s1 - s0) / (t1 - t0), (s1 - s0) / (c1 - c0), wall, len(marks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--texts", type=int, default=4096)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--subset", type=int, default=131_072, help="rows of the in-memory comparison")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop each timed run after N steps (the mean "
        "pass over all rows and the first buffers still happen: peak RSS stays meaningful)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", default="/tmp/aquin-bench-scale-sae")
    args = parser.parse_args()
    from aquin_monitor.rows import ArrayRows
    from aquin_monitor.sae.train import SaeTrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"rows-{args.rows}-{args.texts}.npy"
    if not path.exists():  # in a child process: its page-cache pages would count in this process's peak RSS
        import multiprocessing

        start = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(
            target=write_rows, args=(path, args.rows, args.texts, args.noise)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            print(f"writing {path} failed (exit code {child.exitcode})", file=sys.stderr)
            return 1
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.1f} s")
    print(f"load average before: {os.getloadavg()}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(f"peak RSS before training: {peak_rss_mb():,.0f} MB")
    config = SaeTrainConfig(num_latents=1536, k=32, max_epochs=args.epochs, patience=args.epochs, device=args.device)

    source = NpyFileRows(path)
    rate, cpu_rate, wall, steps = timed_training(source, config, args.warmup, args.max_steps)
    print(
        f"streaming: {rate:,.0f} samples/s ({cpu_rate:,.0f} per CPU second) over {steps} steps "
        f"({len(source):,} rows × {source.dimension}, "
        f"whole call {wall:.1f} s incl. the mean pass over all rows); "
        f"peak RSS {peak_rss_mb():,.0f} MB"
    )

    subset = np.concatenate([source.read(s, min(s + 65_536, args.subset)) for s in range(0, args.subset, 65_536)])
    in_memory, cpu_in_memory, _, steps_memory = timed_training(ArrayRows(subset), config, args.warmup, args.max_steps)
    print(
        f"in memory ({len(subset):,} rows, one buffer): {in_memory:,.0f} samples/s "
        f"({cpu_in_memory:,.0f} per CPU second) "
        f"over {steps_memory} steps"
    )
    print(f"ratio streaming / in-memory: {rate / in_memory:.2f} wall, {cpu_rate / cpu_in_memory:.2f} CPU time")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
