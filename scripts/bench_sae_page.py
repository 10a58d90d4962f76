"""Time of the SAE page (browser + co-activation network + diagnostics + HTML) on a 10k-text corpus.

The corpus is 5,000 Banking77 train questions and 5,000 AG News test headlines from the package's
data; their all-MiniLM-L6-v2 embeddings come from the embedding cache (computed once, not timed).
The SAE is the shipped one (``--sae default``, when the package has it) or a folder; with
``--sae train`` a SAE is trained on these embeddings first (not timed). Prints each stage's
wall-clock time and the total, with the load average (on a shared machine the figures scale with the
CPU share this process gets), and optionally writes the page and a chromium screenshot of it.

    python scripts/bench_sae_page.py [--sae default|train|DIR] [--threads 2] [--html page.html]
        [--screenshot docs/sae_page.png]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from aquin_monitor.sae.activations import sparse_activations  # noqa: E402
from aquin_monitor.sae.browser import browse_features  # noqa: E402
from aquin_monitor.sae.diagnose import diagnose  # noqa: E402
from aquin_monitor.sae.embeddings import embed_corpus  # noqa: E402
from aquin_monitor.sae.model import default_sae_path, load_sae  # noqa: E402
from aquin_monitor.sae.network import coactivation_network  # noqa: E402
from aquin_monitor.sae.page import write_page  # noqa: E402
from aquin_monitor.sae.train import SaeTrainConfig, train_sae  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "aquin_monitor" / "datasets"


def corpus(per_source: int) -> list[str]:
    texts = []
    for name in ("banking77/train.jsonl", "agnews/test.jsonl"):
        with open(DATA / name, encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for _, line in zip(range(per_source), handle)]
    return texts


def screenshot(page: Path, png: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        print("no chromium on PATH: screenshot skipped")
        return
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={profile}",
                "--window-size=1280,2200",
                "--hide-scrollbars",
                f"--screenshot={png.resolve()}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=180,
            env={**os.environ, "HOME": profile},
        )
    print(f"screenshot: {png}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", default="default", help="default | train | SAE folder")
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--html", default=None)
    parser.add_argument("--screenshot", default=None)
    parser.add_argument(
        "--keep-sae", default=None, metavar="DIR", help="save a SAE trained here into DIR (reuse with --sae DIR)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = corpus(args.texts // 2)
    x = embed_corpus("default", texts, batch_size=64)
    if args.sae == "train" or (args.sae == "default" and not (default_sae_path() / "cfg.json").exists()):
        print("training a SAE on these embeddings (not timed; the shipped one is not in this tree)")
        sae = train_sae(
            x, SaeTrainConfig(num_latents=1536, k=32, max_epochs=30), show_progress=False, metadata={"model": "default"}
        ).sae.eval()
        if args.keep_sae:
            sae.save(args.keep_sae)
    else:
        sae = load_sae(args.sae)
    print(
        f"{len(texts)} texts, SAE {sae.num_latents} latents, k={sae.k}, {args.threads} threads, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    times = {}
    start = time.perf_counter()
    z = sparse_activations(sae, x)
    times["activations"] = time.perf_counter() - start
    mark = time.perf_counter()
    browser = browse_features(sae, x, texts, activations=z)
    times["browser + labels"] = time.perf_counter() - mark
    mark = time.perf_counter()
    network = coactivation_network(z, threshold=0.3, min_support=10)
    times["network"] = time.perf_counter() - mark
    mark = time.perf_counter()
    found = diagnose(z, x, texts)
    times["diagnostics"] = time.perf_counter() - mark
    mark = time.perf_counter()
    page = Path(args.html) if args.html else Path(tempfile.mkdtemp()) / "page.html"
    write_page(page, browser, network, found, title=f"SAE on {len(texts)} Banking77 + AG News texts")
    times["page"] = time.perf_counter() - mark
    total = time.perf_counter() - start
    for stage, seconds in times.items():
        print(f"{stage:>18}: {seconds:6.2f} s")
    print(
        f"{'total':>18}: {total:6.2f} s  (target < 30 s on 2 cores); page {page.stat().st_size / 1e6:.1f} MB, "
        f"{len(browser.features)} features, {len(network.nodes)} nodes, {len(network.edges)} edges, "
        f"{len(found.absorption)} absorption pairs, {sum(p.merged for p in found.polysemy)} merged; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    if args.screenshot:
        screenshot(page, Path(args.screenshot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
