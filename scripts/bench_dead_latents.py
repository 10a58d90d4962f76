"""Dead latents on held-out data at the shipped size (d 384, 1,536 latents, k 32) under different dead-latent settings.

The rows: real all-MiniLM-L6-v2 embeddings of the first ``--texts`` texts of the default SAE's
corpus (``scripts/train_default_sae.py``; cached by the embedding cache). For each setting it
trains with :func:`aquin_monitor.sae.train.train_sae` and prints the held-out quality report's
``sae/dead_fraction`` (never fires on the held-out split), ``sae/fvu`` and the epochs run.

    HF_HUB_OFFLINE=1 python scripts/bench_dead_latents.py --setting ours [--texts 26624] [--epochs 20]

Settings: ``ours`` (AuxK 1/32, dead after one epoch, capped at 1M samples: the defaults),
``sparsify`` (AuxK off, as sparsify ships now: its 10M-token threshold then only reports),
``window`` (AuxK 1/32, dead after ``--window`` samples).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=["ours", "sparsify", "window"], required=True)
    parser.add_argument("--texts", type=int, default=26_624)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--window", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    from aquin_monitor.sae.embeddings import embed_corpus
    from aquin_monitor.sae.evaluate import quality_metrics
    from aquin_monitor.sae.train import SaeTrainConfig, train_sae
    from scripts.train_default_sae import default_corpus

    torch.set_num_threads(args.threads)
    x = embed_corpus("default", default_corpus()[: args.texts], chunk_size=2048, batch_size=64, show_progress=False)
    extra = {
        "ours": {},
        "sparsify": {"auxk_coefficient": 0.0, "dead_after": 10_000_000},
        "window": {"dead_after": args.window},
    }[args.setting]
    config = SaeTrainConfig(num_latents=1536, k=32, max_epochs=args.epochs, **extra)
    start = time.perf_counter()
    result = train_sae(x, config, show_progress=False)
    metrics, stats = quality_metrics(result.sae, result.held_out)
    rare = float((stats.frequency < 1e-3).mean())
    print(
        f"{args.setting}: {len(x)} texts, {len(result.held_out)} held out, "
        f"auxk {result.config['auxk_coefficient']:.4g}, "
        f"dead_after {result.config['dead_after']}: held-out dead {metrics['sae/dead_fraction']:.4f}, "
        f"firing on < 0.1% {rare:.4f}, fvu {metrics['sae/fvu']:.4f}, epochs {len(result.history)} "
        f"(best {result.sae.metadata['best_epoch']}), "
        f"training-time dead {result.history[-1]['sae/dead_fraction']:.4f}, "
        f"{time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
