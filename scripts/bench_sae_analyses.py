"""Time the SAE analyses on the bundled all-MiniLM-L6-v2 with SciFact (cached embeddings).

Measured in one process: decompose, contrast and steer (each on cached embeddings, encoding
excluded), layer tracing (one forward pass included), retrieval faithfulness (100 features ×
SciFact test, 5 random baselines each, and without baseline) and cross-model matching (the SAE
against a permuted copy of itself on the SciFact corpus). Uses the shipped SAE when the package
has one, else trains a small SAE on the SciFact corpus embeddings first (printed). Prints the load
average, since on a shared machine the figures scale with the CPU share this process gets.

    HF_HUB_OFFLINE=1 python scripts/bench_sae_analyses.py [--features 100] [--random 5] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from aquin_monitor.data import bundled_dataset, read_beir  # noqa: E402
from aquin_monitor.sae.decompose import contrast, decompose  # noqa: E402
from aquin_monitor.sae.embeddings import embed_corpus  # noqa: E402
from aquin_monitor.sae.faithfulness import retrieval_faithfulness  # noqa: E402
from aquin_monitor.sae.match import match_features  # noqa: E402
from aquin_monitor.sae.model import SparseAutoencoder, default_sae_path, load_sae  # noqa: E402
from aquin_monitor.sae.steer import steer  # noqa: E402
from aquin_monitor.sae.trace import layer_inputs, trace_feature  # noqa: E402


def best_of(repeat: int, call) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return min(times), result


def the_sae(documents: np.ndarray) -> SparseAutoencoder:
    if (default_sae_path() / "cfg.json").exists():
        print("SAE: the shipped default")
        return load_sae("default")
    from aquin_monitor.sae.train import SaeTrainConfig, train_sae

    start = time.perf_counter()
    result = train_sae(documents, SaeTrainConfig(num_latents=1536, k=16, max_epochs=20, seed=0), show_progress=False)
    print(
        f"SAE: no shipped default here; trained 1536 latents, k=16 on {len(documents)} SciFact documents "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return result.sae.eval()


def permuted(sae: SparseAutoencoder) -> SparseAutoencoder:
    order = torch.randperm(sae.num_latents, generator=torch.Generator().manual_seed(0))
    copy = SparseAutoencoder(sae.d_in, sae.num_latents, sae.k)
    with torch.no_grad():
        copy.encoder.weight.copy_(sae.encoder.weight[order])
        copy.encoder.bias.copy_(sae.encoder.bias[order])
        copy.W_dec.copy_(sae.W_dec[order])
        copy.b_dec.copy_(sae.b_dec)
    return copy.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--random", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")

    data = read_beir(bundled_dataset("scifact"), "test")
    start = time.perf_counter()
    queries = embed_corpus("default", data.query_texts(), show_progress=False)
    documents = embed_corpus("default", data.doc_texts(), chunk_size=256, show_progress=True)
    print(
        f"SciFact test: {len(queries)} queries, {len(documents)} documents, "
        f"embeddings in {time.perf_counter() - start:.1f} s (cache)"
    )
    sae = the_sae(documents)
    relevant, _, _ = data.positional()
    a, b = queries[0], queries[1]

    t, _ = best_of(args.repeat, lambda: decompose(sae, a, top=20))
    print(f"decompose: {t * 1e3:.2f} ms")
    t, split = best_of(args.repeat, lambda: contrast(sae, a, b))
    total = sum(term.phi for term in split.terms) + split.bias_term + split.error_term
    print(
        f"contrast: {t * 1e3:.2f} ms (|Σ terms − cosine| = {abs(total - split.cosine):.2e}, "
        f"error share {split.error_share:.3f})"
    )
    feature = decompose(sae, a, top=1).features[0].feature
    t, _ = best_of(args.repeat, lambda: steer(sae, a, documents, feature, 4.0, top=10))
    print(f"steer over {len(documents)} documents: {t * 1e3:.2f} ms")

    from aquin_monitor.encoders import load_model

    model = load_model("default")
    t, (layers, _) = best_of(1, lambda: layer_inputs(model, [data.query_texts()[0]]))
    t2, traced = best_of(args.repeat, lambda: trace_feature(sae, layers[0], feature))
    print(
        f"trace: forward pass {t * 1e3:.1f} ms, SAE over {len(traced.activations)} layers {t2 * 1e3:.2f} ms "
        f"({traced.classification})"
    )

    t, result = best_of(
        1,
        lambda: retrieval_faithfulness(sae, queries, documents, relevant, features=args.features, n_random=args.random),
    )
    print(
        f"faithfulness, {len(result.features)} features x {args.random} random baselines: {t:.1f} s "
        f"(NDCG@10 {result.ndcg:.4f}, largest drop {result.features[0].drop:+.4f})"
    )
    t, _ = best_of(
        1, lambda: retrieval_faithfulness(sae, queries, documents, relevant, features=args.features, n_random=0)
    )
    print(f"faithfulness, {args.features} features, no baseline: {t:.1f} s")

    t, matched = best_of(1, lambda: match_features(sae, documents, permuted(sae), documents))
    print(
        f"match against a permuted copy on {len(documents)} texts: {t:.2f} s, "
        f"mean matched correlation {matched.quality['mean']:.4f}"
    )
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
