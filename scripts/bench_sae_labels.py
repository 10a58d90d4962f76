"""Feature labels before (c-TF-IDF) and after (frames + key phrases), scored without any labelled data.

Two corpora, the shipped SAE (``load_sae("default")``) and its model (all-MiniLM-L6-v2), nothing downloaded:

- ``shipped``: the shipped ``features.json`` (84,712 texts of the bundled data; 5 top texts per feature):
  its labels (c-TF-IDF, as written at training) against key-phrase labels of the same 5 top texts;
  the AUC's negatives are 256 random texts of the training corpus.
- ``unseen``: 2,048 SNLI sentences the SAE never saw (the bundled SNLI dev/test sentences shorter than
  25 characters, which ``scripts/train_default_sae.py`` leaves out; a seeded sample): labels from each
  feature's top 10 texts over this corpus, as ``sae browse`` computes them. Scored on those 10 texts
  (``in-sample``) and, for features with 20 top texts, on texts 11–20, which no label saw (``held-out``).
  The labeller's settings were chosen on the held-out scores of one seeded half of the features (``half A``,
  seed 0) of the k = 32 SAE shipped before the k = 64 one: the rows of the other half (``half B``) are the
  untouched report (and every row of an SAE other than that one).

Scores (:mod:`aquin_monitor.sae.label_quality`): term support (share of top texts holding the label's first
term / any term; "first ≥ half": share of labels whose first term is in at least half of the top texts),
label AUC (label embedding's cosine separates the top texts from random texts) and cohesion. Each row:
median [first quartile, third quartile].

Usage::

    HF_HUB_OFFLINE=1 python scripts/bench_sae_labels.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from aquin_monitor.sae.keyphrases import keyphrase_labels  # noqa: E402
from aquin_monitor.sae.label_quality import score_labels, summarise  # noqa: E402


def unseen_snli(n: int = 2048, seed: int = 0) -> list[str]:
    """``n`` bundled SNLI sentences that the default SAE's corpus left out (shorter than 25 characters)."""
    import train_default_sae

    from aquin_monitor.data import bundled_dataset

    seen = set(train_default_sae.default_corpus())
    sentences: set[str] = set()
    for split in ("dev", "test"):
        with open(bundled_dataset("snli_triplets") / f"{split}.jsonl", encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                sentences.update(" ".join(record[k].split()) for k in ("anchor", "positive", "negative"))
    unseen = sorted(t for t in sentences if t not in seen)
    return sorted(np.random.default_rng(seed).choice(unseen, size=min(n, len(unseen)), replace=False).tolist())


def encoder(model: str = "default"):
    """The model's encoder through the embedding cache (phrases in, ``[n, d]`` out)."""
    from aquin_monitor.sae.embeddings import embed_corpus

    return lambda phrases: embed_corpus(model, list(phrases), chunk_size=4096, show_progress=False)


def feature_halves(features: list[int], seed: int = 0) -> tuple[list[int], list[int]]:
    """The features split in two by a seeded permutation: ``(half A, half B)``; the labeller was tuned on A."""
    order = np.random.default_rng(seed).permutation(np.asarray(features)).tolist()
    return order[: len(order) // 2], order[len(order) // 2 :]


def row(name: str, summary: dict) -> str:
    def cell(key: str, digits: int = 2) -> str:
        if summary.get(f"{key}_median") is None:
            return "-"
        m, q1, q3 = (summary[f"{key}_{part}"] for part in ("median", "q1", "q3"))
        return f"{m:.{digits}f} [{q1:.{digits}f}, {q3:.{digits}f}]"

    return (
        f"| {name} | {summary['n']} | {summary['share_first_term_in_half']:.0%} | {cell('support_first')} "
        f"| {cell('support_any')} | {cell('auc')} | {cell('cohesion', 3)} |"
    )


def unseen_corpus(encode) -> dict[str, dict]:
    """Before/after label scores over the unseen SNLI sentences."""
    from aquin_monitor.rows import ArrayRows
    from aquin_monitor.sae.browser import browser_from_stats
    from aquin_monitor.sae.model import load_sae
    from aquin_monitor.sae.stats import stream_feature_stats

    texts = unseen_snli()
    x = encode(texts)
    sae = load_sae("default")
    stats = stream_feature_stats(sae, ArrayRows(x), examples=20)
    browser = browser_from_stats(stats, texts, examples=20)
    features = [f.index for f in browser.features]
    top10 = {j: stats.top(j)[0][:10].tolist() for j in features}
    held = {j: stats.top(j)[0][10:20].tolist() for j in features if len(stats.top(j)[0]) >= 20}
    before = {f.index: f.label for f in browser.features}
    started = time.perf_counter()
    after_list = keyphrase_labels(texts, [top10[j] for j in features], x, encode)
    seconds = time.perf_counter() - started
    after = dict(zip(features, after_list))
    out = {"n_texts": len(texts), "features": len(features), "keyphrase_seconds": round(seconds, 1)}
    half_a = set(feature_halves(features)[0])
    for name, labels in (("before", before), ("after", after)):
        out[f"{name} in-sample"] = summarise(score_labels(labels, top10, x, texts, encode=encode))
        kept = {j: labels[j] for j in held}
        held_scores = score_labels(kept, held, x, texts, encode=encode)
        out[f"{name} held-out"] = summarise(held_scores)
        for half in ("A", "B"):
            part = [s for s in held_scores if (s.feature in half_a) == (half == "A")]
            out[f"{name} held-out half {half}"] = summarise(part)
    out["examples"] = [
        {"feature": j, "before": before[j], "after": after[j], "top": [texts[r] for r in top10[j][:3]]}
        for j in features[:8]
    ]
    return out


def shipped_features(encode, random_texts: int = 256) -> dict[str, dict]:
    """Before/after label scores of the shipped ``features.json`` (its own 5 top texts per feature)."""
    import train_default_sae

    from aquin_monitor.sae.model import sae_folder

    record = json.loads((sae_folder("default") / "features.json").read_text(encoding="utf-8"))
    listed = [f for f in record["features"] if f["top"]]
    corpus = train_default_sae.default_corpus()
    negatives = np.random.default_rng(0).choice(len(corpus), size=random_texts, replace=False)
    texts = sorted({t["text"] for f in listed for t in f["top"]} | {corpus[i] for i in negatives})
    where = {t: i for i, t in enumerate(texts)}
    x = encode(texts)
    top = {f["id"]: [where[t["text"]] for t in f["top"]] for f in listed}
    random_rows = np.array(sorted(where[corpus[i]] for i in negatives))
    shipped = {f["id"]: f.get("label_ctfidf", f["label"]) for f in listed}  # the c-TF-IDF label, also once relabelled
    before = {j: [t.strip() for t in label.split(",") if t.strip()] for j, label in shipped.items()}
    after = dict(zip(top, keyphrase_labels(texts, list(top.values()), x, encode, negative_rows=random_rows)))
    out = {"n_texts": record["n_texts"], "features": len(listed)}
    for name, labels in (("before", before), ("after", after)):
        scores = score_labels(labels, top, x, texts, encode=encode, random_rows=random_rows)
        out[name] = summarise(scores)
    out["examples"] = [{"feature": j, "before": before[j], "after": after[j]} for j in list(top)[:8]]
    out["labels"] = {j: ", ".join(after[j]) for j in after}
    return out


def relabel_shipped(labels: dict[int, str]) -> None:
    """Write the key-phrase labels into the shipped ``features.json`` (atomically); the c-TF-IDF label it had
    stays as ``label_ctfidf``."""
    from aquin_monitor.atomic import atomic_write_text
    from aquin_monitor.sae.model import sae_folder

    path = sae_folder("default") / "features.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    for feature in record["features"]:
        if feature["id"] in labels:
            feature.setdefault("label_ctfidf", feature["label"])
            feature["label"] = labels[feature["id"]]
    atomic_write_text(path, json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the summaries to this file")
    parser.add_argument(
        "--relabel", action="store_true", help="write the key-phrase labels into the shipped features.json"
    )
    parser.add_argument("--write-unseen", metavar="FILE", default=None, help="only write the unseen corpus as JSONL")
    args = parser.parse_args(argv)
    if args.write_unseen:
        from aquin_monitor.atomic import atomic_write_text

        atomic_write_text(args.write_unseen, "".join(json.dumps({"text": t}) + "\n" for t in unseen_snli()))
        return 0
    encode = encoder()
    unseen = unseen_corpus(encode)
    shipped = shipped_features(encode)
    print(
        "| labels | features | first term in ≥ half | support, first term | support, any term | label AUC | cohesion |"
    )
    print("|---|---|---|---|---|---|---|")
    print(row("shipped features.json, c-TF-IDF (before)", shipped["before"]))
    print(row("shipped features.json, key phrases (after)", shipped["after"]))
    for part in ("in-sample", "held-out", "held-out half A", "held-out half B"):
        print(row(f"unseen SNLI, c-TF-IDF (before), {part}", unseen[f"before {part}"]))
        print(row(f"unseen SNLI, key phrases (after), {part}", unseen[f"after {part}"]))
    print(
        f"key phrases for {unseen['features']} features of {unseen['n_texts']} texts: {unseen['keyphrase_seconds']} s"
    )
    for example in unseen["examples"]:
        print(f"  {example['feature']:>5}  {', '.join(example['before']):<40} -> {', '.join(example['after'])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"unseen": unseen, "shipped": shipped}, indent=1) + "\n")
    if args.relabel:
        relabel_shipped(shipped["labels"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
