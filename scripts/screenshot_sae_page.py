"""The README's two SAE-page screenshots: one feature expanded, one network node clicked, with their figures.

The page is ``scripts/bench_sae_page.py``'s (the shipped SAE over the MiniLM embeddings of 5,000 Banking77 and
5,000 AG News texts, network edges of NPMI >= 0.3 with support >= 10), written by :func:`analyse_corpus` and
:func:`write_page`. Headless chromium (driven over the DevTools pipe the page tests use, 1280 px wide) clicks
the table's first feature row and the network's best-connected node and captures each view. Prints what the
README paragraph quotes: features firing, network size, the expanded feature and the clicked node with its
neighbours, the absorption pairs and the merged (polysemantic) features.

    python scripts/screenshot_sae_page.py --browser-png docs/sae_page_browser.png \\
        --network-png docs/sae_page_network.png [--sae default] [--keep page.html]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the DevTools-pipe client the page tests use
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aquin_monitor.sae.embeddings import embed_corpus  # noqa: E402
from aquin_monitor.sae.model import load_sae  # noqa: E402
from aquin_monitor.sae.page import analyse_corpus, write_page  # noqa: E402

DATA = ROOT / "aquin_monitor" / "datasets"


def corpus(per_source: int) -> list[str]:
    """The first ``per_source`` Banking77 train questions and AG News test headlines (bench_sae_page's corpus)."""
    import json

    texts: list[str] = []
    for name in ("banking77/train.jsonl", "agnews/test.jsonl"):
        with open(DATA / name, encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for _, line in zip(range(per_source), handle)]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", default="default")
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--browser-png", required=True)
    parser.add_argument("--network-png", required=True)
    parser.add_argument("--keep", metavar="FILE", help="also copy the page here")
    args = parser.parse_args()
    from devtools_pipe import Browser

    texts = corpus(args.texts // 2)
    sae = load_sae(args.sae)
    browser, network, found = analyse_corpus(sae, embed_corpus("default", texts, batch_size=64), texts)
    degree = Counter([e.source for e in network.edges] + [e.target for e in network.edges])
    node = degree.most_common(1)[0][0]
    labels = {f.index: ", ".join(f.label) for f in browser.features}
    frequency = {f.index: f.frequency for f in browser.features}
    print(f"SAE {sae.num_latents} latents, k={sae.k}; {len(texts)} texts; {browser.dead} features never fire")
    print(f"network: {len(network.nodes)} nodes, {len(network.edges)} edges, {len(network.communities)} communities")
    with tempfile.TemporaryDirectory() as tmp:
        page_path = write_page(Path(tmp) / "sae.html", browser, network, found, title="SAE on Banking77 + AG News")
        if args.keep:
            shutil.copyfile(page_path, args.keep)
        with Browser(Path(tmp) / "profile", width=1280) as page:
            page.open(page_path)
            first = int(page.evaluate("+document.querySelector('#features tr.feature:not([hidden])').dataset.feature"))
            page.click(f'tr.feature[data-feature="{first}"]')
            page.screenshot(Path(args.browser_png))
            page.click(f'circle.node[data-feature="{node}"]')
            page.screenshot(Path(args.network_png))
            neighbours = page.evaluate(
                "[...document.querySelectorAll('#neighbour-list tr[data-feature]')]"
                ".map(r => r.innerText.replace(/\\s+/g, ' '))"
            )
            errors = page.console_errors()
    expanded = next(f for f in browser.features if f.index == first)
    print(f"expanded: {first} ({labels[first]}), fires on {expanded.frequency:.2%}; top texts:")
    for example in expanded.examples[:5]:
        print(f"   {example.activation:.3f}  {example.text[:110]}")
    print(f"clicked: {node} ({labels[node]}), fires on {frequency[node]:.2%}, {degree[node]} neighbours:")
    for line in neighbours[:8]:
        print(f"   {line[:150]}")
    flagged = [p for p in found.absorption if p.flagged]
    print(f"absorption: {len(found.absorption)} pairs at P(B|A) >= 0.9, {len(flagged)} flagged")
    for p in found.absorption[:5]:
        print(
            f"   {p.source} ({labels[p.source]}) -> {p.target} ({labels[p.target]}): {p.probability:.2%} of "
            f"{p.support}, P(B) {p.target_frequency:.2%}, lift {p.lift:.1f}, q {p.q_value:.2g}, flagged {p.flagged}"
        )
    merged = sorted((q for q in found.polysemy if q.merged), key=lambda q: -q.silhouette)
    print(f"polysemy: {len(merged)} of {len(found.polysemy)} tested features merged")
    for q in merged[:4]:
        print(f"   {q.feature} ({labels[q.feature]}) sil {q.silhouette:.2f}: {q.examples[0][:1]} | {q.examples[1][:1]}")
    print(f"console errors: {errors or 'none'}")


if __name__ == "__main__":
    main()
