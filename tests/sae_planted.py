"""Planted structures for the SAE analysis tests: a synthetic SAE with known features and a corpus built on it."""

from __future__ import annotations

import numpy as np
import torch

from aquin_monitor.sae.model import SparseAutoencoder

LATENTS, D_IN, K = 32, 48, 3


def planted_sae(d_in: int = D_IN, latents: int = LATENTS, k: int = K) -> SparseAutoencoder:
    """Orthonormal features (encoder = decoder, no biases): on sums of k features, z reads them exactly."""
    sae = SparseAutoencoder(d_in, latents, k, seed=0)
    q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        sae.W_dec.copy_(q[:latents])
        sae.encoder.weight.copy_(q[:latents])
    return sae.eval()


def planted_corpus(n: int = 3200, seed: int = 0):
    """Text i is about topic t = i % 32: x = 2·d_t + two weak random features (weights 0.2–0.6, never
    feature 4). Topic 4's texts also carry feature 5 (x += d_5), so 4 never fires without 5 while 5
    fires alone on topic 5: an absorbed pair. Topic 9's texts carry one of two concepts outside the
    dictionary (1.5 · basis vector 40 or 41, alternating): feature 9 is a merged two-concept feature."""
    sae = planted_sae()
    q, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=torch.Generator().manual_seed(1)))
    basis = q.numpy()
    rng = np.random.default_rng(seed)
    rows, texts = [], []
    for i in range(n):
        topic = i % LATENTS
        noise = rng.choice([f for f in range(LATENTS) if f not in (4, 5, topic)], size=2, replace=False)
        x = 2.0 * basis[topic] + rng.uniform(0.2, 0.6, size=2) @ basis[noise]
        side = (i // LATENTS) % 2
        if topic == 4:
            x = x + basis[5]
        if topic == 9:
            x = x + 1.5 * basis[40 + side]
        rows.append(x)
        texts.append(f"text {i} topic {topic} side {side}")
    return sae, np.array(rows, dtype=np.float32), texts
