"""Time of the SAE page's network drawing on ``bench_sae_page.py``'s graph: k-d tree pairs against all pairs.

Builds the co-activation network of ``scripts/bench_sae_page.py`` (5,000 Banking77 + 5,000 AG News
texts, cached all-MiniLM-L6-v2 embeddings, the shipped SAE or ``--sae DIR``, threshold 0.3, support
10; not timed), then times :func:`aquin_monitor.sae.page.network_drawing` against the same drawing
made with the former all-pairs separation (``dense_separate_circles`` below: every round an
``[n, n]`` distance matrix), both in this process, best of ``--repeats``. Prints both times, their
ratio, and the largest difference between the two drawings' positions (the algorithm is the same,
so it should be rounding only).

    python scripts/bench_network_drawing.py [--sae default|DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from bench_sae_page import corpus  # noqa: E402

from aquin_monitor.sae import page  # noqa: E402
from aquin_monitor.sae.activations import sparse_activations  # noqa: E402
from aquin_monitor.sae.embeddings import embed_corpus  # noqa: E402
from aquin_monitor.sae.model import load_sae  # noqa: E402
from aquin_monitor.sae.network import CoactivationNetwork, coactivation_network  # noqa: E402


def dense_separate_circles(
    unit_xy: np.ndarray, radius: np.ndarray, size: tuple[float, float], *, gap: float = 1.0, rounds: int = 300
) -> tuple[np.ndarray, tuple[float, float]]:
    """The former ``page.separate_circles``: the same pushes, found among all ``n²`` pairs each round."""
    n = len(radius)
    width, height = float(size[0]), float(size[1])
    covered = float(np.sum(np.pi * (radius + gap) ** 2))
    grow = max(1.0, float(np.sqrt(covered / (0.35 * width * height))))
    width, height = width * grow, height * grow
    angle = np.arange(n) * 2.399963
    fallback = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    need = radius[:, None] + radius[None, :] + gap
    while True:
        pad = float(radius.max()) + gap
        xy = pad + np.clip(unit_xy, 0.0, 1.0) * [width - 2 * pad, height - 2 * pad]
        for _ in range(rounds):
            delta = xy[:, None, :] - xy[None, :, :]
            distance = np.linalg.norm(delta, axis=2)
            overlap = np.triu(need - distance, k=1) > 0
            if not overlap.any():
                return xy, (round(width, 2), round(height, 2))
            direction = np.where(
                distance[..., None] > 1e-9,
                delta / np.maximum(distance, 1e-9)[..., None],
                fallback[:, None, :] - fallback[None, :, :],
            )
            push = np.where(overlap | overlap.T, (need - distance) / 2 + 1e-3, 0.0)[..., None] * direction
            xy = np.clip(xy + push.sum(axis=1), radius[:, None] + gap / 2, [width, height] - radius[:, None] - gap / 2)
        width, height = width * 1.2, height * 1.2


def best_time(network: CoactivationNetwork, repeats: int) -> tuple[float, dict]:
    """Shortest wall-clock time of ``network_drawing`` over ``repeats`` runs, and its drawing."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        drawing = page.network_drawing(network)
        times.append(time.perf_counter() - start)
    return min(times), drawing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", default="default", help="default | SAE folder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = corpus(5_000)
    x = embed_corpus("default", texts, batch_size=64, show_progress=False)
    network = coactivation_network(sparse_activations(load_sae(args.sae), x), threshold=0.3, min_support=10)
    print(f"{len(network.nodes)} nodes, {len(network.edges)} edges; load {os.getloadavg()[0]:.1f}")
    with mock.patch.object(page, "separate_circles", dense_separate_circles):
        before, old = best_time(network, args.repeats)
    after, new = best_time(network, args.repeats)
    shift = max(np.abs(np.subtract(old[axis], new[axis])).max(initial=0.0) for axis in ("x", "y"))
    print(f"all pairs (before): {before:.3f} s, canvas {old['width']} x {old['height']}")
    print(f"k-d tree  (after):  {after:.3f} s, canvas {new['width']} x {new['height']}")
    print(f"ratio before/after: {before / after:.1f}x; largest position difference {shift:.2f} px")
    print(f"load {os.getloadavg()[0]:.1f} (best of {args.repeats}; shared machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
