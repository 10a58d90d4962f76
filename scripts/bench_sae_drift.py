"""Time the SAE drift explanation (``aquin_monitor.sae.drift.explain_drift``) against encoding its probe.

The demo's probe (``scifact_probe``: SciFact's 300 test queries and 300 documents, every relevant one
included) is encoded by the bundled all-MiniLM-L6-v2 and by a perturbed copy of it (every weight
matrix plus Gaussian noise of ``--noise`` times its own standard deviation: a stand-in checkpoint), timed;
then the explanation of the drift between the two, with the shipped SAE, is timed with the retrieval
set's relevant pairs and with probe pairs. Printed: both times, their ratio to one encoding of the probe,
what the explanation found (features moved, pairs' error shares) and the largest closure
``|Δcos − (Σ Δφ + Δbias + Δerror)|`` over the listed pairs. One process; on a shared machine the times
scale with the CPU share it gets (the load average is printed).

    HF_HUB_OFFLINE=1 python scripts/bench_sae_drift.py [--noise 0.02] [--repeat 3]
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

from aquin_monitor.data import scifact_probe  # noqa: E402
from aquin_monitor.encoders import encode, load_model  # noqa: E402
from aquin_monitor.sae.drift import PairSet, explain_drift, relevant_pairs  # noqa: E402
from aquin_monitor.sae.model import feature_labels, load_sae  # noqa: E402


def timed(call):
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def best_of(repeat: int, call):
    runs = [timed(call) for _ in range(repeat)]
    return min(t for t, _ in runs), runs[-1][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, default=0.02, help="weight noise of the stand-in checkpoint")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many explanation runs")
    args = parser.parse_args()
    probe, retrieval = scifact_probe(n_docs=300, split="test", seed=0)
    model = load_model("default")
    encode_time, before = timed(lambda: encode(model, probe.texts, batch_size=32, show_progress=False))
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.add_(args.noise * parameter.std() * torch.randn_like(parameter))
    after = encode(model, probe.texts, batch_size=32, show_progress=False)
    sae = load_sae("default")
    labels = feature_labels("default", sae.num_latents)
    index = {text: i for i, text in enumerate(probe.texts)}
    positions = relevant_pairs(retrieval.positional()[0])
    q_texts, d_texts = retrieval.query_texts(), retrieval.doc_texts()
    q_rows = [index[q_texts[q]] for q, _ in positions]
    d_rows = [index[d_texts[d]] for _, d in positions]
    texts = [(q_texts[q], d_texts[d]) for q, d in positions]
    pairs = PairSet(before[q_rows], before[d_rows], after[q_rows], after[d_rows], texts, positions)
    with_pairs, explained = best_of(
        args.repeat, lambda: explain_drift(sae, before, after, probe.texts, pairs=pairs, labels=labels)
    )
    probe_pairs, on_probe = best_of(args.repeat, lambda: explain_drift(sae, before, after, probe.texts, labels=labels))
    print(f"load average {os.getloadavg()[0]:.1f}; {len(probe.texts)} probe texts, {len(positions)} relevant pairs")
    print(f"encoding the probe once: {encode_time:.2f} s")
    for name, seconds, result in (("retrieval pairs", with_pairs, explained), ("probe pairs", probe_pairs, on_probe)):
        closure = max(abs(p.delta - (p.feature_delta + p.bias_delta + p.error_delta)) for p in result.pairs)
        print(
            f"explanation with {name}: {seconds:.3f} s = {seconds / encode_time:.3f}x one encoding; "
            f"{result.features.n_moved} of {result.features.n_tested} features moved; "
            f"{len(result.pairs)} pairs of {result.candidate_pairs}, mean error share "
            f"{np.mean([p.error_share for p in result.pairs]):.3f}, largest closure {closure:.1e}"
        )


if __name__ == "__main__":
    main()
