"""How many nodes of the SAE page's co-activation network can be clicked at their centre, before and after
the overlap-free layout (issue 24, item 3).

The corpus is the first ``--texts`` SciFact documents of the package's data (all-MiniLM-L6-v2 embeddings via
the embedding cache), the SAE the shipped one. A node's centre is covered when a circle drawn after it (on
top, in the page's drawing order) contains that centre: a click there opens the other node. Before: the page
scaled the spring layout to 640 x 480 with a 24-pixel margin and radius 3 + 9·sqrt(mean / max mean). After:
:func:`aquin_monitor.sae.page.network_drawing`. Geometry only (the real-click check is in tests/test_sae_page.py).

    python scripts/measure_network_clickability.py [--texts 2048]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aquin_monitor.sae.activations import sparse_activations  # noqa: E402
from aquin_monitor.sae.embeddings import embed_corpus  # noqa: E402
from aquin_monitor.sae.model import load_sae  # noqa: E402
from aquin_monitor.sae.network import coactivation_network  # noqa: E402
from aquin_monitor.sae.page import network_drawing  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "aquin_monitor" / "datasets"


def covered(xy: np.ndarray, radius: np.ndarray) -> int:
    """Nodes whose centre lies inside a circle drawn after them."""
    distance = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=2)
    later = np.triu(np.ones_like(distance, dtype=bool), k=1)
    return int(np.any(later & (distance < radius[None, :]), axis=1).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2048)
    args = parser.parse_args()
    with gzip.open(DATA / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for _, line in zip(range(args.texts), handle)]
    sae = load_sae("default")
    network = coactivation_network(sparse_activations(sae, embed_corpus("default", texts, batch_size=64)))
    means = np.array([n.mean_activation for n in network.nodes])
    radius = 3 + 9 * np.sqrt(means / means.max())
    before = 24 + np.array([[n.x, n.y] for n in network.nodes]) * [640 - 48, 480 - 48]
    drawing = network_drawing(network)
    after = np.column_stack([drawing["x"], drawing["y"]])
    n = len(network.nodes)
    print(f"{len(texts)} SciFact texts, shipped SAE: {n} nodes, {len(network.edges)} edges")
    print(f"before: {covered(before, radius)} of {n} node centres covered by another node (canvas 640 x 480)")
    print(
        f"after:  {covered(after, np.array(drawing['r']))} of {n} "
        f"(canvas {drawing['width']:.0f} x {drawing['height']:.0f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
