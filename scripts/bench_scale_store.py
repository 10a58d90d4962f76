"""Benchmark the embedding store at 1,000,000 x 384 against np.save / np.load of the same array.

1. ``aquin-monitor embed``'s pipeline (embed.open_store_for + shard_encoder + fill_store) on the bundled
   all-MiniLM-L6-v2, one process: documents/s on the first ``--texts`` AG News texts shipped in the
   package (these are also the base embeddings below; ``--base-store`` reuses an earlier run's).
2. 1,000,000 rows = the base embeddings tiled, plus Gaussian noise (sd 0.01, from a bank of 65,537 noise
   rows, so row i = base[i mod n] + noise[i mod 65537]: all rows differ), generated block by block:
   written as a store (float32 and float16 shards), then read back by blocks of ``--block-rows``.
   Rows/s, MB/s of the stored bytes, and the peak of memory allocated while doing it (tracemalloc:
   numpy's buffers; a memory map's pages are the OS page cache, not the process's); the read again in
   a fresh process (numpy only) for its peak RSS. The rows are generated into one array first, so that
   the store and the baseline write the same bytes and neither pays for generating them.
3. The same 1,000,000 rows as one array through ``np.save`` / ``np.load`` (the baseline, which must hold
   the whole array), in the same process; ratios store / baseline.

Reads follow writes, so both sides read from the page cache (as a second pass over a corpus would).

    HF_HUB_OFFLINE=1 python scripts/bench_scale_store.py --out /tmp/bench-store
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from aquin_monitor.data import bundled_dataset
from aquin_monitor.embed import fill_store, open_store_for, shard_encoder
from aquin_monitor.rows import iter_blocks
from aquin_monitor.store import EmbeddingStore, write_store

NOISE_ROWS = 65_537  # prime: with any base of fewer rows, no two of the first 1M rows are equal


def measured(work: Callable[[], object]) -> tuple[float, int, object]:
    """(seconds, peak bytes allocated by Python and numpy during ``work``, its result)."""
    tracemalloc.start()
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak, result


def embed_base(out: Path, n_texts: int, batch_size: int) -> tuple[np.ndarray, float]:
    """The first ``n_texts`` AG News texts embedded into a store at ``out``; (rows, documents/s)."""
    from aquin_monitor.encoders import load_model, resolve_model  # torch only for this step

    corpus = out / "agnews.jsonl"
    with open(bundled_dataset("agnews") / "test.jsonl", encoding="utf-8") as source:
        corpus.write_text("".join(itertools.islice(source, n_texts)), encoding="utf-8")
    writer = open_store_for(out / "base", model_location=resolve_model("default"), corpus=corpus, shard_rows=1000)
    model = load_model("default", device="cpu")
    start = time.perf_counter()
    with shard_encoder(model, None, batch_size=batch_size) as encode:
        encoded = fill_store(writer, corpus, encode, show_progress=False)
    rate = encoded / (time.perf_counter() - start) if encoded else float("nan")
    store = EmbeddingStore(out / "base")
    return store.read(0, len(store)), rate


def tiled_blocks(base: np.ndarray, rows: int, block_rows: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``rows`` rows: ``base`` tiled, plus N(0, 0.01²) noise, ``block_rows`` at a time (deterministic)."""
    noise = np.random.default_rng(seed).normal(scale=0.01, size=(NOISE_ROWS, base.shape[1])).astype(np.float32)
    for start in range(0, rows, block_rows):
        index = np.arange(start, min(start + block_rows, rows))
        yield base[index % len(base)] + noise[index % NOISE_ROWS]


STREAMED_READ = """
import sys, time
from aquin_monitor.rows import iter_blocks
from aquin_monitor.store import EmbeddingStore
store = EmbeddingStore(sys.argv[1])
start = time.perf_counter()
total = sum(float(block[:, 0].sum()) for _, block in iter_blocks(store, int(sys.argv[2])))
# VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak across fork + exec on Linux)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(len(store) / (time.perf_counter() - start), int(hwm.split()[1]) / 1e3)
"""


def streamed_read(folder: Path, block_rows: int) -> tuple[float, float]:
    """(rows/s, peak RSS in MB) of reading a whole store by blocks in a fresh process (numpy only, no torch)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", STREAMED_READ, str(folder), str(block_rows)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    rate, rss = map(float, done.stdout.split())
    return rate, rss


def bench(args: argparse.Namespace) -> dict[str, float]:
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-store-"))
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, float] = {}
    if args.base_store:
        base_store = EmbeddingStore(args.base_store)
        base = base_store.read(0, len(base_store))
    else:
        base, figures["embed_docs_per_s"] = embed_base(out, args.texts, args.batch_size)
    rows = args.rows
    figures["rows"], figures["dimension"] = rows, base.shape[1]
    seconds, _, full = measured(lambda: np.concatenate(list(tiled_blocks(base, rows, args.block_rows))))
    figures["generate_rows_per_s"] = rows / seconds  # not part of any figure below: every side writes this array
    for dtype in ("float32", "float16"):
        folder = out / f"store-{dtype}"
        shutil.rmtree(folder, ignore_errors=True)
        mb = rows * full.shape[1] * np.dtype(dtype).itemsize / 1e6
        blocks = (full[i : i + args.block_rows] for i in range(0, rows, args.block_rows))
        seconds, peak, _ = measured(
            lambda blocks=blocks, folder=folder, dtype=dtype: write_store(
                folder,
                blocks,
                None,
                count=rows,
                model_fingerprint="bench",
                corpus_hash="bench",
                dtype=dtype,
                shard_rows=args.shard_rows,
            )
        )
        figures[f"store_{dtype}_write_rows_per_s"] = rows / seconds
        figures[f"store_{dtype}_write_mb_per_s"] = mb / seconds
        figures[f"store_{dtype}_write_alloc_peak_mb"] = peak / 1e6
        store = EmbeddingStore(folder)
        seconds, peak, _ = measured(
            lambda store=store: sum(float(b[:, 0].sum()) for _, b in iter_blocks(store, args.block_rows))
        )
        figures[f"store_{dtype}_read_rows_per_s"] = rows / seconds
        figures[f"store_{dtype}_read_mb_per_s"] = mb / seconds
        figures[f"store_{dtype}_read_alloc_peak_mb"] = peak / 1e6
        rate, rss = streamed_read(folder, args.block_rows)
        figures[f"store_{dtype}_read_fresh_process_rows_per_s"] = rate
        figures[f"store_{dtype}_read_fresh_process_peak_rss_mb"] = rss
    mb = full.nbytes / 1e6
    seconds, _, _ = measured(lambda full=full: np.save(out / "baseline.npy", full))
    figures["npsave_rows_per_s"], figures["npsave_mb_per_s"] = rows / seconds, mb / seconds
    del full
    seconds, peak, loaded = measured(lambda: np.load(out / "baseline.npy"))
    figures["npload_rows_per_s"], figures["npload_mb_per_s"] = rows / seconds, mb / seconds
    figures["npload_alloc_peak_mb"] = peak / 1e6
    del loaded
    figures["peak_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    for dtype in ("float32", "float16"):
        figures[f"ratio_store_{dtype}_write_vs_npsave"] = (
            figures[f"store_{dtype}_write_rows_per_s"] / figures["npsave_rows_per_s"]
        )
        figures[f"ratio_store_{dtype}_read_vs_npload"] = (
            figures[f"store_{dtype}_read_rows_per_s"] / figures["npload_rows_per_s"]
        )
        figures[f"ratio_store_{dtype}_read_alloc_vs_npload"] = (
            figures[f"store_{dtype}_read_alloc_peak_mb"] / figures["npload_alloc_peak_mb"]
        )
    if not args.keep:
        for name in ("store-float32", "store-float16", "baseline.npy"):
            path = out / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="working folder (default: a new temporary one)")
    parser.add_argument("--base-store", help="a store of base embeddings from an earlier run (skips encoding)")
    parser.add_argument("--texts", type=int, default=5000, help="AG News texts embedded for the base (default 5000)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--block-rows", type=int, default=65_536)
    parser.add_argument("--shard-rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--keep", action="store_true", help="keep the 1M-row stores and the baseline file")
    figures = bench(parser.parse_args())
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:,.3f}" if isinstance(value, float) else f"{name:<{width}}  {value:,}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
