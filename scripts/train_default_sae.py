"""Build the SAE shipped for the bundled all-MiniLM-L6-v2 (``load_sae("default")``).

Corpus, all from the data shipped in ``aquin_monitor/datasets/`` (several domains): SciFact
abstracts split into sentences (plus titles), Banking77 train + test, AG News test, and the unique
SNLI sentences of the dev and test triplets. SciFact *queries* are left out: they are the
retrieval-kept evaluation's queries. Duplicates are dropped; texts are ordered shortest first
within each domain, domains interleaved, so that a run cut short has embedded the short texts of
every domain (the embedding cache keeps every finished chunk).

Steps: embed (cached, chunked; the slow part), train with :func:`aquin_monitor.sae.train_sae`,
write the folder (``cfg.json``, ``sae.safetensors``, ``features.json``, ``training.jsonl``) into
``aquin_monitor/sae/default/`` and the quality report (``sae eval``) beside it as ``quality.json``
/ ``quality.txt``.

With ``--checkpoint FILE`` the training state is kept after each epoch: a cut run started again with the same
flags continues from it and ends with the SAE of an uninterrupted run.

Usage::

    HF_HUB_OFFLINE=1 python scripts/train_default_sae.py --embed-only        # fill the cache first
    HF_HUB_OFFLINE=1 python scripts/train_default_sae.py [--max-texts N] [--out DIR] [--checkpoint FILE]
    python scripts/train_default_sae.py --max-texts N --write-corpus FILE    # the corpus as JSONL, e.g. for sae eval
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aquin_monitor.data import bundled_dataset  # noqa: E402

# The shipped SAE's settings and corpus size (the first 33 cache chunks of 2,048 texts, the shortest ~80 % of
# each domain); scripts/sweep_default_sae.py compares other settings against them (table in the README).
SHIPPED_TEXTS = 67_584
SHIPPED_NUM_LATENTS = 1536
SHIPPED_K = 32
SHIPPED_AUXK = 1 / 32

# A sentence ends at . ! or ? followed by white space and an upper-case letter, digit or bracket.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def split_sentences(text: str) -> list[str]:
    """Simple regex sentence splitter (good enough for abstracts; abbreviations may split)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def default_corpus(min_chars: int = 25, max_chars: int = 600) -> list[str]:
    """The shipped-data corpus, deduplicated, shortest first within each domain.

    Each domain is sorted by length and the domains are interleaved by rank fraction, so any prefix
    of the list holds the shortest texts of every domain in proportion (a run cut short keeps all
    domains, and encodes the cheap texts first).
    """
    domains: dict[str, list[str]] = {"scifact": [], "banking77": [], "agnews": [], "snli": []}
    with gzip.open(bundled_dataset("scifact") / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            domains["scifact"].append(doc["title"])
            domains["scifact"].extend(split_sentences(doc["text"]))
    for split in ("train", "test"):
        domains["banking77"].extend(r["text"] for r in _jsonl(bundled_dataset("banking77") / f"{split}.jsonl"))
    domains["agnews"].extend(r["text"] for r in _jsonl(bundled_dataset("agnews") / "test.jsonl"))
    for split in ("dev", "test"):
        for r in _jsonl(bundled_dataset("snli_triplets") / f"{split}.jsonl"):
            domains["snli"].extend((r["anchor"], r["positive"], r["negative"]))
    seen: set[str] = set()
    ranked: list[tuple[float, int, str]] = []
    for texts in domains.values():
        unique = []
        for text in (" ".join(t.split()) for t in texts):
            if min_chars <= len(text) <= max_chars and text not in seen:
                seen.add(text)
                unique.append(text)
        unique.sort(key=lambda t: (len(t), t))
        ranked.extend(((i + 0.5) / len(unique), len(t), t) for i, t in enumerate(unique))
    return [t for _, _, t in sorted(ranked)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embed-only", action="store_true", help="only fill the embedding cache")
    parser.add_argument(
        "--max-texts",
        type=int,
        default=SHIPPED_TEXTS,
        help="use the first N texts (default: the shipped SAE's 67,584; 0: all 84,712)",
    )
    parser.add_argument("--out", default=str(ROOT / "aquin_monitor" / "sae" / "default"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-latents", type=int, default=SHIPPED_NUM_LATENTS, help="dictionary size")
    parser.add_argument("--k", type=int, default=SHIPPED_K, help="active features per text")
    parser.add_argument("--auxk-coefficient", type=float, default=SHIPPED_AUXK, help="weight of the AuxK loss")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="training state file, kept after each epoch; a cut run started again with the same flags continues",
    )
    parser.add_argument("--epochs", type=int, default=40, help="maximum epochs (early stopping on held-out FVU)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)"
    )
    parser.add_argument(
        "--max-corpus", type=int, default=1000, help="SciFact documents for retrieval kept (judged + others)"
    )
    parser.add_argument("--log-dir", default=None, help="also stream sae/* per epoch to DIR/metrics.jsonl")
    parser.add_argument(
        "--write-corpus", metavar="FILE", default=None, help="only write the corpus as JSONL ({'text': ...} lines)"
    )
    parser.add_argument(
        "--weights-only",
        action="store_true",
        help="write cfg.json + sae.safetensors only (e.g. a second seed for `sae eval default --second-sae OUT`)",
    )
    parser.add_argument(
        "--record-stability",
        metavar="DIR",
        default=None,
        help="only record the seed stability of the SAE in --out against the replicate in DIR (e.g. one written with "
        "--seed 1 --weights-only) in its quality.json / quality.txt as sae/stability/second_sae",
    )
    parser.add_argument(
        "--features-only",
        action="store_true",
        help="only rewrite features.json of the SAE in --out (top texts, key-phrase and c-TF-IDF labels), e.g. "
        "after the labeller changed",
    )
    args = parser.parse_args(argv)
    if args.record_stability:
        record_stability(Path(args.out), Path(args.record_stability))
        return 0

    from aquin_monitor.sae.embeddings import embed_corpus

    texts = default_corpus()
    if args.max_texts:
        texts = texts[: args.max_texts]
    print(f"{len(texts)} texts", file=sys.stderr)
    if args.write_corpus:
        from aquin_monitor.atomic import atomic_write_text

        atomic_write_text(args.write_corpus, "".join(json.dumps({"text": t}) + "\n" for t in texts))
        return 0
    embeddings = embed_corpus("default", texts, chunk_size=2048, batch_size=64)
    if args.embed_only:
        return 0
    if args.features_only:
        return _rewrite_features(texts, embeddings, Path(args.out))
    if args.weights_only:
        return _train_weights_only(embeddings, args)
    return _train_and_write(texts, embeddings, args)


def train_config(args: argparse.Namespace):
    """The :class:`~aquin_monitor.sae.train.SaeTrainConfig` of the flags (the shipped settings by default)."""
    from aquin_monitor.sae.train import SaeTrainConfig

    return SaeTrainConfig(
        num_latents=args.num_latents,
        k=args.k,
        auxk_coefficient=args.auxk_coefficient,
        seed=args.seed,
        max_epochs=args.epochs,
        checkpoint=args.checkpoint,
        checkpoint_every=10**9,  # once per epoch
    )


def _train_weights_only(embeddings, args) -> int:
    import torch

    from aquin_monitor.sae.train import train_sae

    torch.set_num_threads(args.threads)
    result = train_sae(embeddings, train_config(args), metadata={"model": "sentence-transformers/all-MiniLM-L6-v2"})
    result.sae.save(args.out)
    print(f"wrote {args.out} (best held-out FVU {min(row['sae/fvu'] for row in result.history):.4f})", file=sys.stderr)
    return 0


def _label_encoder(phrases: list[str]):
    from aquin_monitor.sae.embeddings import embed_corpus

    return embed_corpus("default", phrases, chunk_size=4096, show_progress=False)


def _rewrite_features(texts, embeddings, folder: Path) -> int:
    from aquin_monitor.sae.build import write_features
    from aquin_monitor.sae.model import load_sae

    write_features(load_sae(folder), embeddings, texts, folder, encode=_label_encoder)
    print(f"wrote {folder / 'features.json'}", file=sys.stderr)
    return 0


def scifact_retrieval(max_corpus: int) -> dict:
    """SciFact test queries and (judged + other, up to ``max_corpus``) documents, embedded (cached)."""
    from aquin_monitor.data import read_beir
    from aquin_monitor.sae.embeddings import embed_corpus

    data = read_beir(bundled_dataset("scifact"), "test", max_corpus=max_corpus)
    return {
        "queries": embed_corpus("default", data.query_texts(), chunk_size=2048, batch_size=32),
        "documents": embed_corpus("default", data.doc_texts(), chunk_size=256, batch_size=16),
        "relevant": data.positional()[0],
    }


def _train_and_write(texts, embeddings, args) -> int:
    import torch

    from aquin_monitor.sae.build import build_sae_folder
    from aquin_monitor.sinks import JsonlSink

    torch.set_num_threads(args.threads)
    config = train_config(args)
    retrieval = scifact_retrieval(args.max_corpus)
    sink = JsonlSink(args.log_dir) if args.log_dir else None
    result, _ = build_sae_folder(
        embeddings,
        texts,
        args.out,
        model="sentence-transformers/all-MiniLM-L6-v2",
        config=config,
        sinks=[sink] if sink else [],
        retrieval=retrieval,
        label_encode=_label_encoder,
    )
    if sink:
        sink.close()
    add_suite_metrics(Path(args.out), result, retrieval)
    return 0


def add_suite_metrics(folder: Path, result, retrieval: dict) -> dict:
    """Add the research numbers of ``sae eval`` (docs/metrics.md) to the held-out report ``quality.json`` / ``.txt``:
    a rank-k PCA fitted on the held-out rows (FVU, cos, retrieval kept) and k-sparse probing on the shipped
    Banking77 and AG News splits."""
    from aquin_monitor.atomic import atomic_write_text
    from aquin_monitor.sae.build import format_report
    from aquin_monitor.sae.embeddings import embed_corpus
    from aquin_monitor.sae.evaluate import reconstructed_retrieval
    from aquin_monitor.sae.probe_data import shipped_probe_splits
    from aquin_monitor.sae.quality import fit_pca_baseline, probing_report, reconstruction_fit

    report = json.loads((folder / "quality.json").read_text(encoding="utf-8"))
    pca = fit_pca_baseline(result.held_out, result.sae.k)
    fit = reconstruction_fit(result.held_out, pca.reconstruct(result.held_out))
    metrics = {"sae/pca/fvu": fit["fvu"], "sae/pca/cosine": fit["cosine"], "sae/pca/n_components": pca.n_components}
    kept = reconstructed_retrieval(
        pca.reconstruct, retrieval["queries"], retrieval["documents"], retrieval["relevant"], prefix="sae/pca/retrieval"
    )
    metrics.update({name: value for name, value in kept.items() if "/original/" not in name})
    metrics.update(
        probing_report(
            result.sae, shipped_probe_splits(), lambda texts: embed_corpus("default", texts, show_progress=False)
        )
    )
    report["metrics"].update(metrics)
    atomic_write_text(folder / "quality.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(folder / "quality.txt", format_report(report["metrics"]) + "\n")
    return report


def record_stability(folder: Path, replicate: Path) -> float:
    """Write the seed stability of the SAE in ``folder`` against ``replicate`` (the share of its features whose
    Hungarian match by decoder cosine is >= 0.7; docs/metrics.md) into ``folder``'s quality report, where
    ``sae eval`` reads it as ``sae/held_out/stability/second_sae``."""
    from aquin_monitor.atomic import atomic_write_text
    from aquin_monitor.sae.build import format_report
    from aquin_monitor.sae.model import load_sae
    from aquin_monitor.sae.quality import seed_stability

    report = json.loads((folder / "quality.json").read_text(encoding="utf-8"))
    stability = seed_stability(load_sae(folder), load_sae(replicate))
    report["metrics"]["sae/stability/second_sae"] = stability
    atomic_write_text(folder / "quality.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(folder / "quality.txt", format_report(report["metrics"]) + "\n")
    print(f"seed stability {stability:.4f} recorded in {folder / 'quality.json'}", file=sys.stderr)
    return stability


if __name__ == "__main__":
    sys.exit(main())
