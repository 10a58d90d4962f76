"""Search at scale: Q queries against N documents through aquin_monitor.search, exact vs approximate.

Documents: real all-MiniLM-L6-v2 embeddings of the shipped banking77 texts (3,080, encoded once and
kept in the embedding cache), tiled to N rows with Gaussian noise (sigma per component, default 0.01:
copies of one text have cosine about 0.96 with each other, so a query's neighbours are not ties),
written to a memory-mapped file and read through a RowSource block by block. Queries: base
embeddings with fresh noise. Prints, measured in this process: build time and queries/s of each index,
the approximate index's recall@10 (its own held-out figure, and against the exact results on the
queries searched exactly), the speed-up over exact, and peak RSS.

Exact search over N documents costs Q·N·d; on a shared 2-core machine it is measured on a subset of
the queries (``--exact-queries``) and its queries/s compared per query.

    python scripts/bench_scale_search.py --docs 1000000 --queries 10000 --exact-queries 1000
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class MemmapRows:
    """A RowSource over a float32 memory-mapped file (rows stay on disk until read)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @property
    def dimension(self) -> int:
        return int(self.array.shape[1])

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.array(self.array[start:stop], dtype=np.float32)


def base_embeddings() -> np.ndarray:
    import json
    from pathlib import Path

    import aquin_monitor
    from aquin_monitor.embedding_cache import encode_cached, model_fingerprint
    from aquin_monitor.encoders import load_model, resolve_model

    path = Path(aquin_monitor.__file__).parent / "datasets" / "banking77" / "test.jsonl"
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    fingerprint = model_fingerprint(resolve_model("default"), None)
    emb, _ = encode_cached(lambda: load_model("default", device="cpu"), fingerprint, texts)
    return np.asarray(emb, dtype=np.float32)


def tiled(base: np.ndarray, n: int, sigma: float, path: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, base.shape[1]))
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        rows = base[np.arange(start, stop) % len(base)]
        out[start:stop] = rows + sigma * rng.standard_normal(rows.shape, dtype=np.float32)
    out.flush()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--exact-queries", type=int, default=1000, help="queries searched exactly (a subset)")
    parser.add_argument("--index", choices=("ivf", "hnsw"), default="ivf")
    parser.add_argument("--sigma", type=float, default=0.01)
    parser.add_argument("--recall-sample", type=int, default=1000)
    args = parser.parse_args()

    from aquin_monitor.search import SearchIndex

    print(f"load average before: {os.getloadavg()}")
    base = base_embeddings()
    rng = np.random.default_rng(1)
    queries = base[rng.integers(len(base), size=args.queries)]
    queries = queries + args.sigma * rng.standard_normal(queries.shape, dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        docs = MemmapRows(tiled(base, args.docs, args.sigma, os.path.join(folder, "docs.npy"), seed=0))
        print(
            f"{args.docs} x {docs.dimension} documents from {len(base)} texts written in "
            f"{time.perf_counter() - started:.1f} s; peak RSS {peak_rss_gib():.2f} GiB"
        )

        approx = SearchIndex(docs, index=args.index, recall_sample=args.recall_sample)
        found = approx.search(queries, 10)
        a = found.report
        approx_qps = a.n_queries / a.search_seconds
        print(a.line())
        print(
            f"{args.index}: build {a.build_seconds:.1f} s, {approx_qps:.0f} queries/s (recall measurement and tuning "
            f"excluded: {a.recall_seconds:.1f} s), peak RSS {peak_rss_gib():.2f} GiB"
        )
        del approx

        subset = queries[: args.exact_queries]
        exact_index = SearchIndex(docs, index="exact")
        exact = exact_index.search(subset, 10)
        e = exact.report
        exact_qps = e.n_queries / e.search_seconds
        print(e.line() + f" (widened lists: {e.widened_queries})")
        pairs = zip(found.indices[: args.exact_queries], exact.indices, strict=True)
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in pairs])
        print(f"exact: build {e.build_seconds:.1f} s, {exact_qps:.1f} queries/s; peak RSS {peak_rss_gib():.2f} GiB")
        print(f"recall@10 of {args.index} vs exact on the {len(subset)} queries searched both ways: {recall:.4f}")
        with_build = (args.queries / exact_qps) / (a.build_seconds + a.search_seconds)
        print(
            f"speed-up of {args.index} over exact (queries/s): {approx_qps / exact_qps:.1f}x; "
            f"counting its build: {with_build:.1f}x for {args.queries} queries"
        )
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
