"""``sae browse`` statistics over 1,000,000 × 384 embeddings in bounded memory, against the dense path.

Rows: all-MiniLM-L6-v2 embeddings of 5,000 shipped texts (2,500 Banking77 train questions, 2,500 AG News
test headlines; from the embedding cache, computed once, not timed), tiled to ``--rows`` rows with
Gaussian noise (σ = ``--noise`` per coordinate) and written once to a raw float32 file (reused when
present), by a child process, so the model's memory never counts here. Row r's text is text r % 5000.
The rows are read back by a :class:`~aquin_monitor.rows.RowSource` that reads the file with
positioned reads (no memory map, so the peak RSS below counts the process's own memory, not the page
cache). The SAE is the shipped one (``load_sae("default")``).

Printed, all in this one process (a shared machine: the ratios are the figures to keep):

1. streamed statistics (:func:`~aquin_monitor.sae.stats.stream_feature_stats`) over all rows: rows/s,
   peak RSS;
2. the rest of the ``sae browse`` analysis from those statistics (labels with the whole corpus as
   background, network, absorption with its examples pass, polysemy; as
   :func:`~aquin_monitor.sae.page.analyse_rows` does it): seconds, peak RSS;
3. the dense path of before (one sparse activation matrix, feature table, ``BᵀB``) on the first
   ``--dense-rows`` rows, and the streamed statistics on the same rows: rows/s of each and their ratio.

    python scripts/bench_scale_stats.py [--rows 1000000] [--dense-rows 50000] [--workdir /tmp/aquin_bench] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import scipy.sparse
import torch

from aquin_monitor.sae.activations import sparse_activations
from aquin_monitor.sae.browser import browser_from_stats
from aquin_monitor.sae.diagnose import diagnose
from aquin_monitor.sae.model import load_sae
from aquin_monitor.sae.network import coactivation_network
from aquin_monitor.sae.stats import activation_blocks, stream_feature_stats

DATA = Path(__file__).resolve().parents[1] / "aquin_monitor" / "datasets"


class FileRows:
    """Rows of a raw float32 ``[n, d]`` file read with positioned reads (a RowSource holding no rows)."""

    def __init__(self, path: Path, dimension: int) -> None:
        self.path, self._dimension = path, dimension
        self._n = path.stat().st_size // (4 * dimension)
        self._fd = os.open(path, os.O_RDONLY)

    @property
    def dimension(self) -> int:
        return self._dimension

    def __len__(self) -> int:
        return self._n

    def read(self, start: int, stop: int) -> np.ndarray:
        width = 4 * self._dimension
        data = os.pread(self._fd, (stop - start) * width, start * width)
        return np.frombuffer(data, dtype=np.float32).reshape(stop - start, self._dimension).copy()


def corpus(per_source: int) -> list[str]:
    texts = []
    for name in ("banking77/train.jsonl", "agnews/test.jsonl"):
        with open(DATA / name, encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for _, line in zip(range(per_source), handle)]
    return texts


def write_rows(path: Path, base: np.ndarray, rows: int, noise: float, seed: int = 0) -> None:
    """``rows`` rows: base row i % len(base) + N(0, noise²), written chunk by chunk (atomic rename)."""
    if path.exists() and path.stat().st_size == rows * base.shape[1] * 4:
        return
    rng = np.random.default_rng(seed)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as handle:
        for start in range(0, rows, 50_000):
            index = np.arange(start, min(start + 50_000, rows)) % len(base)
            block = base[index] + rng.normal(scale=noise, size=(len(index), base.shape[1])).astype(np.float32)
            handle.write(block.astype(np.float32).tobytes())
    os.replace(partial, path)


def peak_rss_mb() -> float:
    """Peak resident memory since the last :func:`reset_peak` (Linux VmHWM; else the process's peak)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Restart the peak-RSS count at the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def prepare(rows: int, noise: float, path: Path) -> None:
    """Embed the shipped texts (cache) and write the tiled rows file, in a child process: the model's
    memory never counts in the measuring process."""
    import subprocess

    code = (
        "import sys; sys.path.insert(0, {root!r}); import numpy as np; from pathlib import Path; "
        "from aquin_monitor.sae.embeddings import embed_corpus; import bench_scale_stats as b; "
        "base = embed_corpus('default', b.corpus(2500), batch_size=64).astype(np.float32); "
        "b.write_rows(Path({path!r}), base, {rows}, {noise})"
    )
    here = Path(__file__).resolve()
    subprocess.run(
        [sys.executable, "-c", code.format(root=str(here.parents[1]), path=str(path), rows=rows, noise=noise)],
        check=True,
        cwd=here.parent,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here.parents[1])])},
    )


def dense_statistics(sae, x: np.ndarray) -> None:
    """The dense path of before: one activation matrix, the CSC feature table (top rows per column), BᵀB."""
    z = sparse_activations(sae, x)
    csc = scipy.sparse.csc_matrix(z)
    for j in range(csc.shape[1]):
        values = csc.data[csc.indptr[j] : csc.indptr[j + 1]]
        rows = csc.indices[csc.indptr[j] : csc.indptr[j + 1]]
        np.lexsort((rows, -values))[:20]
    binary = scipy.sparse.csr_matrix(z, copy=True)
    binary.data = np.ones_like(binary.data, dtype=np.float64)
    (binary.T @ binary).tocsr()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dense-rows", type=int, default=50_000)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--workdir", default="/tmp/aquin_bench_scale")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-analysis", action="store_true", help="statistics only (no labels/network/diagnostics)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = corpus(2500)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"rows_{args.rows}x384.f32"
    if not (path.exists() and path.stat().st_size == args.rows * 384 * 4):
        prepare(args.rows, args.noise, path)
    source = FileRows(path, 384)
    sae = load_sae("default").eval()
    print(
        f"{len(source):,} rows × {source.dimension} ({path.stat().st_size / 2**30:.2f} GiB on disk), "
        f"SAE {sae.num_latents} latents, "
        f"k={sae.k}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; RSS now {peak_rss_mb():.0f} MB "
        "(python, torch, the SAE)"
    )

    reset_peak()
    start = time.perf_counter()
    stats = stream_feature_stats(sae, source, examples=20)
    streamed_seconds = time.perf_counter() - start
    print(
        f"streamed statistics, {len(source):,} rows: {streamed_seconds:.1f} s, "
        f"{len(source) / streamed_seconds:,.0f} rows/s; "
        f"peak RSS {peak_rss_mb():.0f} MB; co-activation pairs {stats.coactivation.nnz:,}; "
        f"alive features {int((stats.counts > 0).sum())}"
    )

    if not args.skip_analysis:
        chunk = 100_000
        background = (
            [texts[r % len(texts)] for r in range(s, min(s + chunk, len(source)))] for s in range(0, len(source), chunk)
        )
        tiled = TiledTexts(texts)
        start = time.perf_counter()
        browser = browser_from_stats(stats, tiled, corpus=background)
        labelled = time.perf_counter() - start
        network = coactivation_network(stats, min_support=10)
        found = diagnose(stats, source, tiled, blocks=activation_blocks(sae, source))
        print(
            f"rest of the browse analysis from those statistics: {time.perf_counter() - start:.1f} s (labels with "
            f"the {len(source):,}-text background {labelled:.1f} s; {len(browser.features)} features, "
            f"{len(network.edges)} "
            f"edges, {len(found.absorption)} absorption pairs, {sum(p.merged for p in found.polysemy)} merged); "
            f"peak RSS since the statistics began {peak_rss_mb():.0f} MB"
        )

    subset = source.read(0, min(args.dense_rows, len(source)))
    reset_peak()
    start = time.perf_counter()
    dense_statistics(sae, subset)
    dense_seconds = time.perf_counter() - start
    dense_peak = peak_rss_mb()
    start = time.perf_counter()
    stream_feature_stats(sae, _Head(source, len(subset)), examples=20)
    subset_streamed = time.perf_counter() - start
    speed_ratio = (len(source) / streamed_seconds) / (len(subset) / dense_seconds)
    print(
        f"{len(subset):,}-row subset: dense {len(subset) / dense_seconds:,.0f} rows/s (peak RSS {dense_peak:.0f} MB, "
        f"its {len(subset):,} rows in memory included), streamed {len(subset) / subset_streamed:,.0f} rows/s; "
        f"streamed / dense speed = {dense_seconds / subset_streamed:.2f} on the same rows; streamed over all "
        f"{len(source):,} rows / dense on {len(subset):,} = {speed_ratio:.2f}"
    )
    return 0


class TiledTexts(dict):
    """Row r's text is texts[r % len(texts)], read when asked (nothing per row is held)."""

    def __init__(self, texts: list[str]) -> None:
        super().__init__()
        self.texts = texts

    def __getitem__(self, row: int) -> str:
        return self.texts[int(row) % len(self.texts)]


class _Head:
    """The first ``n`` rows of a row source."""

    def __init__(self, source, n: int) -> None:
        self.source, self.n = source, n

    @property
    def dimension(self) -> int:
        return self.source.dimension

    def __len__(self) -> int:
        return self.n

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.source.read(start, stop)


if __name__ == "__main__":
    raise SystemExit(main())
