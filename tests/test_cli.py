"""The ``aquin-monitor`` command line, run in-process through ``main([...])``.

Every number the CLI prints is checked against an independent path: embeddings from
``SentenceTransformer.encode`` (or the raw transformers model) called here with explicit prompt
strings, then metrics by brute force in numpy, by closed forms, by scikit-learn, by pytrec_eval
or by sentence-transformers' ``InformationRetrievalEvaluator``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aquin_monitor.cli import main
from aquin_monitor.signals.two_sample import drift_test, drift_test_sentence

PROBE = [
    ("a cat sat on the mat", "animal"),
    ("dogs bark loudly at night", "animal"),
    ("a kitten purrs in the sun", "animal"),
    ("puppies play in the park", "animal"),
    ("birds sing in the morning", "animal"),
    ("fish swim in the sea", "animal"),
    ("the stock market fell today", "finance"),
    ("bonds rallied after the news", "finance"),
    ("inflation rose again this year", "finance"),
    ("shares dropped sharply", "finance"),
    ("the central bank raised rates", "finance"),
    ("investors sold their equities", "finance"),
]

# query, relevant document, category, labelled hard negatives
PAIRS = [
    ("what do cats do", "a cat sat on the mat", "animal", ["fish swim in the sea"]),
    ("how do dogs sound", "dogs bark loudly at night", "animal", []),
    ("young cats", "a kitten purrs in the sun", "animal", ["puppies play in the park"]),
    ("market news", "the stock market fell today", "finance", []),
    ("bond prices", "bonds rallied after the news", "finance", ["shares dropped sharply"]),
    ("rate decision", "the central bank raised rates", "finance", []),
    ("rising prices", "inflation rose again this year", "finance", []),
]
EXTRA_DOCUMENTS = ["birds sing in the morning", "investors sold their equities", "the weather is mild"]


# ------------------------------------------------------------------------------------------
# helpers


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@functools.lru_cache(maxsize=None)
def sentence_transformer(path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


def st_encode(path: str, texts, prompt: str | None = None) -> np.ndarray:
    return sentence_transformer(path).encode(list(texts), prompt=prompt, convert_to_numpy=True).astype(np.float64)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_anisotropy(x: np.ndarray) -> float:
    """Mean cosine over all ordered pairs i != j, pair by pair."""
    u = unit(x)
    n = len(u)
    return float(np.mean([u[i] @ u[j] for i in range(n) for j in range(n) if i != j]))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019 via the centred Gram matrices: tr(KcLc) / (||Kc|| ||Lc||)."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l) / (np.linalg.norm(k) * np.linalg.norm(l)))


def reference_drift_score(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """((1 - CKA) + (1 - k-NN overlap) + min(1, W1)) / 3: k-NN sets from scikit-learn (cosine, self
    excluded), W1 by scipy between the cosines of every pair (a small probe: no sampling)."""
    from scipy.stats import wasserstein_distance
    from sklearn.neighbors import NearestNeighbors

    def neighbours(e):
        rows = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(e).kneighbors(e)[1]
        return [set(row.tolist()) - {i} for i, row in enumerate(rows)]

    overlap = np.mean([len(a & b) / k for a, b in zip(neighbours(x), neighbours(y))])
    upper = np.triu_indices(len(x), 1)
    w1 = wasserstein_distance((unit(x) @ unit(x).T)[upper], (unit(y) @ unit(y).T)[upper])
    return float(((1 - linear_cka(x, y)) + (1 - overlap) + min(1.0, w1)) / 3)


def brute_force_retrieval(q: np.ndarray, d: np.ndarray, relevant: list[dict[int, int]], negatives=None):
    """Per-query first rank, recall@k, RR@10, NDCG@10 (trec_eval gains) and hard-negative gap."""
    scores = unit(q) @ unit(d).T
    out = []
    for i, rel in enumerate(relevant):
        order = sorted(range(len(d)), key=lambda j: (-scores[i, j], j))
        rank = {doc: order.index(doc) + 1 for doc in rel}
        first = min(rank.values())
        dcg = sum(g / math.log2(1 + rank[doc]) for doc, g in rel.items() if rank[doc] <= 10)
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(2 + p) for p, g in enumerate(ideal))
        labelled = negatives[i] if negatives and negatives[i] else None
        pool = labelled if labelled else [j for j in range(len(d)) if j not in rel]
        out.append(
            {
                "first_rank": first,
                **{f"recall@{k}": sum(r <= k for r in rank.values()) / len(rel) for k in (1, 5, 10)},
                "mrr@10": 1.0 / first if first <= 10 else 0.0,
                "ndcg@10": dcg / idcg,
                "hard_negative_gap": max(scores[i, j] for j in rel) - max(scores[i, j] for j in pool),
            }
        )
    return out, scores


def mean_of(rows, key):
    return float(np.mean([row[key] for row in rows]))


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def probe_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "probe.jsonl", [{"text": t, "label": l} for t, l in PROBE])


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    records = [{"query": q, "document": doc, "category": c, **({"negative": n} if n else {})} for q, doc, c, n in PAIRS]
    # unjudged documents: one line that only adds them as negatives of an existing query
    records[3]["negative"] = EXTRA_DOCUMENTS
    return write_jsonl(tmp_path / "pairs.jsonl", records)


def pairs_in_file_order():
    """Query texts, document texts and indices in the reader's order (first appearance)."""
    queries = [q for q, *_ in PAIRS]
    documents: list[str] = []
    for i, (_, doc, _, negs) in enumerate(PAIRS):
        for text in [doc, *(EXTRA_DOCUMENTS if i == 3 else negs)]:
            if text not in documents:
                documents.append(text)
    relevant = [{documents.index(doc): 1} for _, doc, _, _ in PAIRS]
    negatives = [
        [documents.index(n) for n in (negs if i != 3 else EXTRA_DOCUMENTS)] for i, (*_, negs) in enumerate(PAIRS)
    ]
    return queries, documents, relevant, negatives


# ------------------------------------------------------------------------------------------
# --help and argument errors


@pytest.mark.parametrize("command", [None, "inspect", "eval", "diff", "report"])
def test_help_for_every_command(capsys, command):
    argv = ["--help"] if command is None else [command, "--help"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert out.startswith(f"usage: aquin-monitor{'' if command is None else ' ' + command}")
    if command is None:
        assert all(name in out for name in ("inspect", "eval", "diff", "report"))


@pytest.mark.parametrize(
    "argv, complaint",
    [
        ([], "required: COMMAND"),
        (["inspect", "default"], "--probe"),
        (["eval", "default"], "one of the arguments --pairs --beir is required"),
        (["eval", "default", "--pairs", "a.jsonl", "--beir", "dir"], "not allowed with"),
        (["inspect", "default", "--probe", "p.jsonl", "--batch-size", "0"], "positive integer"),
        (["diff", "default", "--probe", "p.jsonl"], "OTHER"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_usage(capsys, argv, complaint):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert complaint in err
    assert "Traceback" not in err and out == ""


# ------------------------------------------------------------------------------------------
# bad input: exit 2, one line naming file, line and field


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def test_bad_probe_line_names_file_line_and_field(capsys, tmp_path, tiny_mean_model):
    probe = tmp_path / "broken-probe.jsonl"
    probe.write_text('{"text": "fine"}\n\n{"txt": "no text field"}\n', encoding="utf-8")
    code, out, err = run(capsys, "inspect", tiny_mean_model, "--probe", probe)
    assert code == 2 and out == ""
    assert_one_line_error(err, f"{probe}:3:", "field 'text'", "missing")


def test_bad_pairs_line_names_file_line_and_field(capsys, tmp_path, tiny_mean_model):
    pairs = write_jsonl(
        tmp_path / "broken-pairs.jsonl",
        [
            {"query": "q", "document": "d"},
            {"query": "q2", "document": "d2", "relevance": "high"},
        ],
    )
    code, _, err = run(capsys, "eval", tiny_mean_model, "--pairs", pairs)
    assert code == 2
    assert_one_line_error(err, f"{pairs}:2:", "field 'relevance'")


def test_bad_beir_qrels_line_names_file_line_and_field(capsys, tmp_path, tiny_mean_model):
    folder = write_beir(tmp_path / "beir")
    qrels = folder / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q1\td1\tone\n")
    code, _, err = run(capsys, "eval", tiny_mean_model, "--beir", folder)
    assert code == 2
    lines = qrels.read_text().splitlines()
    assert_one_line_error(err, f"{qrels}:{len(lines)}:", "field 'score'")


def test_bad_probe_in_diff_and_pairs_in_diff(capsys, tmp_path, tiny_mean_model, probe_file):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"query": "q", "document": 3}\n')
    code, _, err = run(capsys, "diff", tiny_mean_model, tiny_mean_model, "--probe", probe_file, "--pairs", pairs)
    assert code == 2
    assert_one_line_error(err, f"{pairs}:1:", "field 'document'")


def test_missing_model_path_exits_2(capsys, tmp_path, probe_file, pairs_file):
    missing = tmp_path / "no-such-checkpoint"
    for argv in (
        ["inspect", missing, "--probe", probe_file],
        ["eval", missing, "--pairs", pairs_file],
        ["diff", "default", missing, "--probe", probe_file],
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == ""
        assert_one_line_error(err, str(missing), "does not exist")


def test_missing_files_and_unknown_hub_id_exit_2(capsys, tmp_path, tiny_mean_model, tiny_cross_encoder, pairs_file):
    code, _, err = run(capsys, "inspect", tiny_mean_model, "--probe", tmp_path / "absent.jsonl")
    assert code == 2
    assert_one_line_error(err, "absent.jsonl")
    code, _, err = run(capsys, "eval", tiny_mean_model, "--beir", tmp_path / "no-beir")
    assert code == 2
    assert_one_line_error(err, "no-beir")
    code, _, err = run(capsys, "eval", "nobody/no-such-model", "--pairs", pairs_file)
    assert code == 2
    assert_one_line_error(err, "nobody/no-such-model", "offline")
    code, _, err = run(capsys, "eval", tiny_mean_model, "--pairs", pairs_file, "--cross-encoder", tmp_path / "no-ce")
    assert code == 2
    assert_one_line_error(err, "no-ce")
    code, _, err = run(capsys, "report", tmp_path / "no-run")
    assert code == 2
    assert_one_line_error(err, "no-run")


# ------------------------------------------------------------------------------------------
# inspect


def test_inspect_metrics_match_independent_computation(capsys, tmp_path, tiny_mean_model, probe_file):
    import torch
    from scipy.stats import entropy
    from sklearn.decomposition import PCA
    from transformers import AutoModel, AutoTokenizer

    out_json = tmp_path / "out" / "inspect.json"
    code, out, _ = run(
        capsys, "inspect", tiny_mean_model, "--probe", probe_file, "--json", out_json, "--no-umap", "--no-progress"
    )
    assert code == 0
    result = json.loads(out_json.read_text())
    assert result["model"] == tiny_mean_model
    assert result["probe"]["n_texts"] == len(PROBE) and result["probe"]["labels"] == ["animal", "finance"]
    assert "umap" not in result  # --no-umap
    metrics = result["metrics"]
    # the table on stdout lists every metric, one per line: name, value, meaning
    table = dict(line.split()[:2] for line in out.strip().splitlines())
    assert set(table) == set(metrics)
    assert float(table["geometry/anisotropy"]) == pytest.approx(metrics["geometry/anisotropy"], abs=1e-4)

    texts = [t for t, _ in PROBE]
    embeddings = st_encode(tiny_mean_model, texts)
    assert metrics["geometry/anisotropy"] == pytest.approx(brute_force_anisotropy(embeddings), abs=1e-5)
    explained = np.cumsum(PCA().fit(embeddings).explained_variance_ratio_)
    assert metrics["geometry/id_pca95"] == int(np.searchsorted(explained, 0.95) + 1)

    # Layers and attention from the raw transformers model, one text at a time (no padding).
    tokenizer = AutoTokenizer.from_pretrained(tiny_mean_model)
    bert = AutoModel.from_pretrained(tiny_mean_model, attn_implementation="eager").eval()
    pooled, head_entropy = [], []
    with torch.no_grad():
        for text in texts:
            output = bert(**tokenizer(text, return_tensors="pt"), output_hidden_states=True, output_attentions=True)
            pooled.append([h[0].mean(0).numpy() for h in output.hidden_states])
            head_entropy.append(
                [[entropy(a[0, h].numpy(), axis=1).mean() for h in range(a.shape[1])] for a in output.attentions]
            )
    pooled = np.asarray(pooled, dtype=np.float64)  # [n, L+1, hidden]
    for layer in range(pooled.shape[1]):
        assert metrics[f"layers/similarity.{layer:02d}"] == pytest.approx(
            brute_force_anisotropy(pooled[:, layer]), abs=1e-5
        )
    head_entropy = np.asarray(head_entropy)  # [n, L, H]
    assert metrics["attention/entropy_mean"] == pytest.approx(head_entropy.mean(), abs=1e-5)
    for layer in range(head_entropy.shape[1]):
        assert metrics[f"attention/entropy.{layer:02d}"] == pytest.approx(head_entropy[:, layer].mean(), abs=1e-5)

    # OOD: cosine distance to the probe centroid, flagged above the reported threshold
    centroid = unit(embeddings).mean(0)
    distances = 1 - unit(embeddings) @ (centroid / np.linalg.norm(centroid))
    assert metrics["geometry/ood_distance_mean"] == pytest.approx(distances.mean(), abs=1e-5)
    flagged = distances > metrics["geometry/ood_threshold"]
    assert metrics["geometry/ood_fraction"] == pytest.approx(flagged.mean())
    assert sorted(item["index"] for item in result["details"]["ood_flagged"]) == np.flatnonzero(flagged).tolist()


def test_inspect_run_dir_feeds_report(capsys, tmp_path, tiny_mean_model, probe_file):
    from aquin_monitor.snapshot_record import Snapshot

    run_dir = tmp_path / "run"
    code, _, _ = run(
        capsys, "inspect", tiny_mean_model, "--probe", probe_file, "--run-dir", run_dir, "--no-umap", "--no-progress"
    )
    assert code == 0
    snap = Snapshot.load(run_dir / "snapshots" / "0")
    assert snap.tag == "inspect" and snap.arrays["embeddings"].shape == (len(PROBE), 32)
    np.testing.assert_allclose(snap.arrays["embeddings"], st_encode(tiny_mean_model, [t for t, _ in PROBE]), atol=1e-5)

    code, out, _ = run(capsys, "report", run_dir)
    assert code == 0
    assert out.strip() == str(run_dir / "report.html")
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html")


# ------------------------------------------------------------------------------------------
# eval


def test_eval_pairs_with_prompts_categories_and_hard_negatives(capsys, tmp_path, tiny_prompt_model, pairs_file):
    out_json = tmp_path / "eval.json"
    code, out, _ = run(capsys, "eval", tiny_prompt_model, "--pairs", pairs_file, "--json", out_json, "--no-progress")
    assert code == 0
    result = json.loads(out_json.read_text())
    assert result["prompts"] == {"query": "query", "document": "document"}

    queries, documents, relevant, negatives = pairs_in_file_order()
    assert result["data"] == {"source": str(pairs_file), "n_queries": len(queries), "n_documents": len(documents)}
    # The model's saved prompts, passed here as plain strings.
    q = st_encode(tiny_prompt_model, queries, prompt="query: ")
    d = st_encode(tiny_prompt_model, documents, prompt="passage: ")
    assert not np.allclose(q, st_encode(tiny_prompt_model, queries))  # the prompt changes the embeddings
    rows, _ = brute_force_retrieval(q, d, relevant, negatives)

    metrics = result["metrics"]
    for key in ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "hard_negative_gap"):
        assert metrics[f"retrieval/{key}"] == pytest.approx(mean_of(rows, key), abs=1e-6), key
    assert metrics["retrieval/n_queries"] == len(queries)
    assert metrics["retrieval/mean_first_rank"] == pytest.approx(mean_of(rows, "first_rank"))

    categories = [c for _, _, c, _ in PAIRS]
    assert set(result["by_category"]) == {"animal", "finance"}
    for category, values in result["by_category"].items():
        mine = [row for row, c in zip(rows, categories) if c == category]
        assert values["retrieval/n_queries"] == len(mine)
        assert values["retrieval/ndcg@10"] == pytest.approx(mean_of(mine, "ndcg@10"), abs=1e-6)
        assert values["retrieval/mrr@10"] == pytest.approx(mean_of(mine, "mrr@10"), abs=1e-6)

    first = np.array([row["first_rank"] for row in rows])
    hist = result["rank_histogram"]
    assert hist["counts"] == np.histogram(first, bins=hist["edges"])[0].tolist()
    assert sum(hist["counts"]) == len(queries)
    gaps = np.array([row["hard_negative_gap"] for row in rows])
    gap = result["hard_negative_gap"]
    assert gap["n_queries"] == len(queries) and gap["labelled_negatives"] == sum(1 for n in negatives if n)
    assert gap["median"] == pytest.approx(np.median(gaps), abs=1e-6)
    assert gap["fraction_negative"] == pytest.approx(np.mean(gaps < 0))
    assert "retrieval/ndcg@10" in out and "animal" in out and "first relevant rank" in out


def test_eval_pairs_sick_style_repeated_lines_and_categories_per_pair(capsys, tmp_path, tiny_mean_model):
    """SICK-style: pairs labelled one by one, a premise paired with sentences of several labels, lines repeated.
    Overall: each query once against all its relevant documents; per category: each (query, category) row
    against that category's documents; both against a brute-force ranking of embeddings encoded here."""
    lines = [
        ("a man plays a guitar", "a person plays an instrument", "ENTAILMENT"),
        ("a man plays a guitar", "a man is playing music", "NEUTRAL"),
        ("a man plays a guitar", "a person plays an instrument", "ENTAILMENT"),  # repeated: line 3 = line 1
        ("a dog runs in a field", "an animal is running", "ENTAILMENT"),
        ("a dog runs in a field", "a dog sleeps at home", "CONTRADICTION"),
        ("a woman cuts an onion", "someone is cooking", "NEUTRAL"),
        ("a dog runs in a field", "a dog sleeps at home", "CONTRADICTION"),  # repeated: line 7 = line 5
    ]
    path = write_jsonl(tmp_path / "sick.jsonl", [{"query": q, "document": d, "category": c} for q, d, c in lines])
    code, out, err = run(capsys, "eval", tiny_mean_model, "--pairs", path, "--json", "-", "--no-progress")
    assert code == 0, err
    assert "line 3 (same as line 1)" in err and "line 7 (same as line 5)" in err and "warning" in err
    result = json.loads(out)

    queries = list(dict.fromkeys(q for q, _, _ in lines))
    documents = list(dict.fromkeys(d for _, d, _ in lines))
    unique = list(dict.fromkeys(lines))
    q, d = st_encode(tiny_mean_model, queries), st_encode(tiny_mean_model, documents)
    relevant = [{documents.index(doc): 1 for qq, doc, _ in unique if qq == query} for query in queries]
    rows, _ = brute_force_retrieval(q, d, relevant)
    assert result["metrics"]["retrieval/n_queries"] == len(queries) == 3
    assert result["metrics"]["retrieval/ndcg@10"] == pytest.approx(mean_of(rows, "ndcg@10"), abs=1e-6)

    split = sorted({(query, c) for query, _, c in unique}, key=lambda qc: (queries.index(qc[0]), qc[1]))
    split_relevant = [
        {documents.index(doc): 1 for qq, doc, c in unique if qq == query and c == cat} for query, cat in split
    ]
    split_rows, _ = brute_force_retrieval(q[[queries.index(query) for query, _ in split]], d, split_relevant)
    assert set(result["by_category"]) == {"ENTAILMENT", "NEUTRAL", "CONTRADICTION"}
    for category, values in result["by_category"].items():
        mine = [row for row, (_, c) in zip(split_rows, split) if c == category]
        assert values["retrieval/n_queries"] == len(mine)
        assert values["retrieval/ndcg@10"] == pytest.approx(mean_of(mine, "ndcg@10"), abs=1e-6)
        assert values["retrieval/mrr@10"] == pytest.approx(mean_of(mine, "mrr@10"), abs=1e-6)

    # a training snapshot on the same file gives the same per-category figures, and the report shows them
    from aquin_monitor.data import read_pairs
    from aquin_monitor.encoders import load_model
    from aquin_monitor.report import render_report
    from aquin_monitor.snapshot_runner import SnapshotRunner

    snap = SnapshotRunner(retrieval=read_pairs(path), umap=False).take(
        load_model(tiny_mean_model, device="cpu"), 0, tag="base", run_dir=tmp_path / "run"
    )
    assert snap.details["retrieval_by_category"].keys() == result["by_category"].keys()
    for category, values in result["by_category"].items():
        assert snap.details["retrieval_by_category"][category] == pytest.approx(values, abs=1e-6)
    page = render_report(tmp_path / "run")
    table = page.split("<h4>Retrieval by category</h4>", 1)[1].split("</table>", 1)[0]
    assert all(f"<td>{category}</td>" in table for category in ("CONTRADICTION", "ENTAILMENT", "NEUTRAL"))


def test_eval_pairs_conflicting_relevance_exits_2_naming_line_and_field(capsys, tmp_path, tiny_mean_model):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"query": "q", "document": "a", "relevance": 3}, {"query": "q", "document": "a", "relevance": 1}],
    )
    code, out, err = run(capsys, "eval", tiny_mean_model, "--pairs", path, "--no-progress")
    assert code == 2 and out == ""
    assert err.strip() == (
        f"aquin-monitor eval: error: {path}:2: field 'relevance': "
        "conflicting relevance for the same query and document: 1 here, 3 on line 1"
    )


def test_eval_model_without_prompts_encodes_plain_text(capsys, tiny_mean_model, pairs_file):
    code, out, _ = run(capsys, "eval", tiny_mean_model, "--pairs", pairs_file, "--json", "-", "--no-progress")
    assert code == 0
    result = json.loads(out)  # --json - : JSON alone on stdout
    assert result["prompts"] == {"query": None, "document": None}
    queries, documents, relevant, negatives = pairs_in_file_order()
    rows, _ = brute_force_retrieval(
        st_encode(tiny_mean_model, queries), st_encode(tiny_mean_model, documents), relevant, negatives
    )
    assert result["metrics"]["retrieval/ndcg@10"] == pytest.approx(mean_of(rows, "ndcg@10"), abs=1e-6)


def test_eval_cross_encoder_reranks_top_k(capsys, tiny_mean_model, tiny_cross_encoder, pairs_file):
    from sentence_transformers import CrossEncoder

    k = 4
    code, out, _ = run(
        capsys,
        "eval",
        tiny_mean_model,
        "--pairs",
        pairs_file,
        "--cross-encoder",
        tiny_cross_encoder,
        "--rerank-k",
        k,
        "--json",
        "-",
        "--no-progress",
    )
    assert code == 0
    result = json.loads(out)
    assert result["rerank"] == {"cross_encoder": tiny_cross_encoder, "k": k}

    queries, documents, relevant, _ = pairs_in_file_order()
    _, scores = brute_force_retrieval(
        st_encode(tiny_mean_model, queries), st_encode(tiny_mean_model, documents), relevant
    )
    cross_encoder = CrossEncoder(tiny_cross_encoder, device="cpu")
    before, after = [], []
    for i, rel in enumerate(relevant):
        candidates = sorted(range(len(documents)), key=lambda j: (-scores[i, j], j))[:k]
        ce_scores = cross_encoder.predict([(queries[i], documents[j]) for j in candidates])
        reranked = [candidates[p] for p in sorted(range(k), key=lambda p: (-ce_scores[p], p))]
        for order, sink in ((candidates, before), (reranked, after)):
            (doc,) = rel
            rank = order.index(doc) + 1 if doc in order else math.inf
            sink.append(
                {
                    "mrr@10": 1 / rank if rank <= 10 else 0.0,
                    "recall@1": float(rank <= 1),
                    "ndcg@10": 1 / math.log2(1 + rank) if rank <= 10 else 0.0,
                }
            )
    metrics = result["metrics"]
    for key in ("mrr@10", "recall@1", "ndcg@10"):
        assert metrics[f"rerank/before/{key}"] == pytest.approx(mean_of(before, key), abs=1e-6), key
        assert metrics[f"rerank/after/{key}"] == pytest.approx(mean_of(after, key), abs=1e-6), key
    assert any(b != a for b, a in zip(before, after))  # the reranker did move something
    # a relevant document outside the top-k counts as not retrieved before and after
    assert metrics["rerank/before/recall@1"] == metrics["retrieval/recall@1"]
    assert all("rerank/after/ndcg@10" in values for values in result["by_category"].values())


def write_beir(folder: Path) -> Path:
    """A graded BEIR folder: titles, a score-0 judgement, an unjudged query, two splits."""
    (folder / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": "d1", "title": "Cats", "text": "a cat sat on the mat"},
        {"_id": "d2", "title": "", "text": "dogs bark loudly at night"},
        {"_id": "d3", "title": "Markets", "text": "the stock market fell today"},
        {"_id": "d4", "title": "Bonds", "text": "bonds rallied after the news"},
        {"_id": "d5", "text": "the central bank raised rates"},
        {"_id": "d6", "title": "Weather", "text": "the weather is mild"},
        {"_id": "d7", "title": "Fish", "text": "fish swim in the sea"},
    ]
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(
        folder / "queries.jsonl",
        [
            {"_id": "q1", "text": "what do pets do"},
            {"_id": "q2", "text": "financial news"},
            {"_id": "q3", "text": "rate decision"},
            {"_id": "q4", "text": "an unjudged query"},
            {"_id": "q5", "text": "sea life"},
        ],
    )
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\nq1\td7\t0\nq2\td3\t2\nq2\td4\t1\nq2\td5\t1\nq3\td5\t1\n"
    )
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq5\td7\t1\nq3\td5\t1\n")
    return folder


def test_eval_beir_graded_matches_pytrec_eval(capsys, tmp_path, tiny_mean_model):
    import pytrec_eval

    folder = write_beir(tmp_path / "beir")
    corpus = {
        r["_id"]: (f"{r['title']} {r['text']}" if r.get("title") else r["text"])
        for r in map(json.loads, (folder / "corpus.jsonl").read_text().splitlines())
    }
    queries = {r["_id"]: r["text"] for r in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())}
    for split, judged in (("test", ["q1", "q2", "q3"]), ("dev", ["q3", "q5"])):
        code, out, _ = run(
            capsys, "eval", tiny_mean_model, "--beir", folder, "--split", split, "--json", "-", "--no-progress"
        )
        assert code == 0
        result = json.loads(out)
        assert result["data"]["n_queries"] == len(judged) and result["data"]["n_documents"] == len(corpus)

        qrels = {}
        for line in (folder / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
            qid, did, score = line.split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
        q = st_encode(tiny_mean_model, [queries[qid] for qid in judged])
        d = st_encode(tiny_mean_model, list(corpus.values()))
        scores = unit(q) @ unit(d).T
        run_ = {qid: {did: float(s) for did, s in zip(corpus, row)} for qid, row in zip(judged, scores)}
        trec = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_5", "recall_10"}).evaluate(run_)
        metrics = result["metrics"]
        assert metrics["retrieval/ndcg@10"] == pytest.approx(
            np.mean([v["ndcg_cut_10"] for v in trec.values()]), abs=1e-6
        )
        assert metrics["retrieval/recall@5"] == pytest.approx(np.mean([v["recall_5"] for v in trec.values()]), abs=1e-6)
        assert metrics["retrieval/recall@10"] == 1.0  # 7 documents: everything is in the top 10
        assert result["by_category"] == {}


# ------------------------------------------------------------------------------------------
# diff


def test_diff_of_a_model_with_itself_is_no_drift(capsys, tmp_path, tiny_mean_model, probe_file, pairs_file):
    out_json = tmp_path / "diff.json"
    code, out, _ = run(
        capsys,
        "diff",
        tiny_mean_model,
        tiny_mean_model,
        "--probe",
        probe_file,
        "--pairs",
        pairs_file,
        "--json",
        out_json,
        "--no-progress",
    )
    assert code == 0
    result = json.loads(out_json.read_text())
    metrics = result["metrics"]
    assert all(key.startswith("drift/") and not key.startswith("drift/base/") for key in metrics)
    assert metrics["drift/cka"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["drift/score"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["drift/knn_overlap@10"] == 1.0
    assert metrics["drift/similarity_wasserstein"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["drift/centroid_shift_cosine_max"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["drift/delta/ndcg@10"] == pytest.approx(0.0, abs=1e-9)
    assert "drift/score" in out
    # the retrieval verdict comes first: every query's NDCG@10 unchanged, so no detectable change
    verdict = result["verdict"]
    assert (verdict["delta"], verdict["ci_low"], verdict["ci_high"], verdict["direction"]) == (0.0, 0.0, 0.0, 0)
    assert verdict["unchanged"] == verdict["queries"] > 0 and verdict["better"] == verdict["worse"] == 0
    assert out.splitlines()[0] == verdict["sentence"]
    opening = f"No detectable change in retrieval from {tiny_mean_model} to {tiny_mean_model}: "
    assert verdict["sentence"].startswith(opening)
    # the two-sample test of a model against itself compares two random halves of the probe: its sentence is printed
    assert 0.0 < metrics["drift/p_value"] <= 1.0
    assert drift_test_sentence(metrics["drift/p_value"], metrics["drift/mmd2"]) in out
    assert result["details"]["drift_test"]["n_permutations"] == 1000


def test_diff_between_two_models_matches_independent_cka(
    capsys, tiny_mean_model, tiny_cls_model, tiny_prompt_model, probe_file, pairs_file
):
    code, out, _ = run(
        capsys, "diff", tiny_mean_model, tiny_cls_model, "--probe", probe_file, "--json", "-", "--no-progress"
    )
    assert code == 0
    result = json.loads(out)
    texts = [t for t, _ in PROBE]
    x, y = st_encode(tiny_mean_model, texts), st_encode(tiny_cls_model, texts)
    metrics = result["metrics"]
    assert metrics["drift/cka"] == pytest.approx(linear_cka(x, y), abs=1e-5)
    assert metrics["drift/cka"] < 0.99
    assert metrics["drift/score"] == pytest.approx(reference_drift_score(x, y), abs=1e-5)
    independent = drift_test(x, y, seed=0)  # the diff's test is this call on the runner's embeddings
    assert metrics["drift/mmd2"] == pytest.approx(independent.statistic, abs=1e-5)
    assert metrics["drift/p_value"] == pytest.approx(independent.p_value, abs=0.005)
    ux, uy = unit(x), unit(y)
    pairs = [(i, j) for i in range(len(x)) for j in range(i + 1, len(x))]
    shift = np.mean([uy[i] @ uy[j] for i, j in pairs]) - np.mean([ux[i] @ ux[j] for i, j in pairs])
    assert metrics["drift/similarity_mean_shift"] == pytest.approx(shift, abs=1e-5)
    assert metrics["drift/anisotropy_delta"] == pytest.approx(
        result["other"]["metrics"]["geometry/anisotropy"] - result["base"]["metrics"]["geometry/anisotropy"], abs=1e-9
    )

    # Same weights, prompts only on the retrieval side: the probe space does not move, ranks do.
    code, out, _ = run(
        capsys,
        "diff",
        tiny_mean_model,
        tiny_prompt_model,
        "--probe",
        probe_file,
        "--pairs",
        pairs_file,
        "--json",
        "-",
        "--no-progress",
    )
    assert code == 0
    result = json.loads(out)
    metrics = result["metrics"]
    assert metrics["drift/cka"] == pytest.approx(1.0, abs=1e-6)
    queries, documents, relevant, negatives = pairs_in_file_order()
    plain, _ = brute_force_retrieval(
        st_encode(tiny_mean_model, queries), st_encode(tiny_mean_model, documents), relevant
    )
    prompted, _ = brute_force_retrieval(
        st_encode(tiny_prompt_model, queries, "query: "), st_encode(tiny_prompt_model, documents, "passage: "), relevant
    )
    change = np.array([b["first_rank"] - a["first_rank"] for a, b in zip(plain, prompted)])
    assert metrics["drift/rank_improved_fraction"] == pytest.approx(np.mean(change < 0))
    assert metrics["drift/rank_worsened_fraction"] == pytest.approx(np.mean(change > 0))
    assert metrics["drift/delta/ndcg@10"] == pytest.approx(
        mean_of(prompted, "ndcg@10") - mean_of(plain, "ndcg@10"), abs=1e-6
    )


def test_diff_applies_the_adapter_to_other_only(capsys, tiny_lora, probe_file):
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    base, adapter = tiny_lora
    code, out, _ = run(
        capsys, "diff", base, base, "--adapter", adapter, "--probe", probe_file, "--json", "-", "--no-progress"
    )
    assert code == 0
    result = json.loads(out)
    texts = [t for t, _ in PROBE]
    x = st_encode(base, texts)
    with_adapter = SentenceTransformer(base, device="cpu")  # the adapter applied by peft itself
    with_adapter[0].auto_model = PeftModel.from_pretrained(with_adapter[0].auto_model, adapter)
    y = with_adapter.encode(texts, convert_to_numpy=True).astype(np.float64)
    assert not np.allclose(x, y, atol=1e-3)  # the adapter moves the embeddings
    assert result["other"]["adapter"] == adapter
    assert result["metrics"]["drift/cka"] == pytest.approx(linear_cka(x, y), abs=1e-5)
    assert result["metrics"]["drift/score"] == pytest.approx(reference_drift_score(x, y), abs=1e-5)


def test_inspect_and_diff_reuse_the_embedding_cache(
    capsys, tmp_path, monkeypatch, tiny_mean_model, tiny_cls_model, probe_file, pairs_file
):
    """A second inspect or diff of the same files and texts loads no model and gives the same numbers;
    diff's retrieval side shares eval's entries; rewriting a model file (not touching it) or --no-cache computes
    again."""
    import shutil

    from aquin_monitor import cli

    monkeypatch.setenv("AQUIN_MONITOR_CACHE", str(tmp_path / "cache"))
    model = shutil.copytree(tiny_mean_model, tmp_path / "model")  # its files get touched below
    loads = []
    load = cli._load_model
    monkeypatch.setattr(
        cli, "_load_model", lambda name, args, adapter: loads.append(Path(name).name) or load(name, args, adapter)
    )

    def inspect(*extra):
        code, out, err = run(
            capsys, "inspect", model, "--probe", probe_file, "--json", "-", "--no-umap", "--no-progress", *extra
        )
        assert code == 0, err
        return json.loads(out)

    first = inspect()
    assert loads == ["model"]
    again = inspect()
    assert loads == ["model"]  # nothing loaded, nothing encoded
    assert again["metrics"] == first["metrics"] and again["details"] == first["details"]
    uncached = inspect("--no-cache")
    assert loads == ["model"] * 2
    assert uncached["metrics"] == pytest.approx(first["metrics"], abs=1e-6)
    assert inspect("--attention-texts", "4")["metrics"].keys() == first["metrics"].keys()
    assert loads == ["model"] * 3  # another attention sample is another entry

    def diff():
        code, out, err = run(
            capsys,
            "diff",
            model,
            tiny_cls_model,
            "--probe",
            probe_file,
            "--pairs",
            pairs_file,
            "--json",
            "-",
            "--no-progress",
        )
        assert code == 0, err
        return json.loads(out)

    loads.clear()
    changed = diff()
    assert loads == ["model", Path(tiny_cls_model).name]  # BASE for its retrieval pairs only (its probe pass is cached)
    assert diff()["metrics"] == changed["metrics"] and loads == ["model", Path(tiny_cls_model).name]
    # the numbers are those of a run without cache
    code, out, _ = run(
        capsys,
        "diff",
        model,
        tiny_cls_model,
        "--probe",
        probe_file,
        "--pairs",
        pairs_file,
        "--json",
        "-",
        "--no-progress",
        "--no-cache",
    )
    assert json.loads(out)["metrics"] == pytest.approx(changed["metrics"], abs=1e-6)
    loads.clear()
    code, _, _ = run(
        capsys, "eval", tiny_cls_model, "--pairs", pairs_file, "--json", tmp_path / "e.json", "--no-progress"
    )
    assert code == 0 and loads == []  # diff's retrieval entries are eval's

    weights = next(p for p in Path(model).rglob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert inspect()["metrics"] == pytest.approx(first["metrics"], abs=1e-6)
    assert loads == []  # a touched checkpoint holds the same weights: the key is their content
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    name = next(n for n in tensors if "word_embeddings" in n)
    save_file({**tensors, name: tensors[name] * 2}, weights, metadata={"format": "pt"})
    assert inspect()["metrics"] != pytest.approx(first["metrics"], abs=1e-6)
    assert loads == ["model"]  # a rewritten checkpoint is embedded again


# ------------------------------------------------------------------------------------------
# the installed console script


def test_console_script_runs_eval(tmp_path, tiny_mean_model, pairs_file, capsys):
    script = Path(sys.executable).with_name("aquin-monitor")
    assert script.is_file(), "run `pip install -e . --no-deps` to install the console script"
    out_json = tmp_path / "script.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        # --no-cache: an earlier test may have cached these embeddings, and this one checks the progress bars
        [str(script), "eval", tiny_mean_model, "--pairs", str(pairs_file), "--json", str(out_json), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    assert (
        "Encoding queries" in completed.stderr and "Encoding documents" in completed.stderr
    )  # labelled progress bars on stderr
    from_script = json.loads(out_json.read_text())
    code, out, _ = run(capsys, "eval", tiny_mean_model, "--pairs", pairs_file, "--json", "-", "--no-progress")
    assert code == 0
    assert from_script["metrics"] == pytest.approx(json.loads(out)["metrics"], abs=1e-6)
    assert "retrieval/ndcg@10" in completed.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "document": ""}\n')
    completed = subprocess.run(
        [str(script), "eval", "default", "--pairs", str(bad)], capture_output=True, text=True, env=env, timeout=600
    )
    assert completed.returncode == 2
    assert_one_line_error(completed.stderr, f"{bad}:1:", "field 'document'", "empty text")


# ------------------------------------------------------------------------------------------
# the real MiniLM


def scifact_subset(folder: Path, n_queries: int = 25, n_other_docs: int = 80) -> Path:
    """The first ``n_queries`` test queries of the bundled SciFact, their relevant documents and
    the first ``n_other_docs`` other documents, as a BEIR folder."""
    import gzip

    from aquin_monitor.data import bundled_dataset

    source = bundled_dataset("scifact")
    lines = (source / "qrels" / "test.tsv").read_text().splitlines()
    judgements = [line.split("\t") for line in lines[1:]]
    keep_queries = list(dict.fromkeys(q for q, _, _ in judgements))[:n_queries]
    kept = [(q, d, s) for q, d, s in judgements if q in keep_queries]
    relevant_docs = {d for _, d, _ in kept}
    (folder / "qrels").mkdir(parents=True)
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in kept)
    )
    queries = [
        line for line in (source / "queries.jsonl").read_text().splitlines() if json.loads(line)["_id"] in keep_queries
    ]
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    docs, others = [], 0
    with gzip.open(source / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            did = json.loads(line)["_id"]
            if did in relevant_docs or others < n_other_docs:
                others += did not in relevant_docs
                docs.append(line)
    (folder / "corpus.jsonl").write_text("".join(docs))
    return folder


@pytest.mark.slow
def test_eval_default_minilm_on_scifact_subset_matches_sentence_transformers(capsys, tmp_path, minilm_path):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    folder = scifact_subset(tmp_path / "scifact-subset")
    code, out, _ = run(capsys, "eval", "default", "--beir", folder, "--json", "-", "--no-progress")
    assert code == 0
    metrics = json.loads(out)["metrics"]

    corpus = {}
    for line in (folder / "corpus.jsonl").read_text().splitlines():
        record = json.loads(line)
        corpus[record["_id"]] = f"{record['title']} {record['text']}" if record.get("title") else record["text"]
    queries = {r["_id"]: r["text"] for r in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())}
    relevant = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        if int(score) > 0:
            relevant.setdefault(qid, set()).add(did)
    evaluator = InformationRetrievalEvaluator(
        queries=queries,
        corpus=corpus,
        relevant_docs=relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[1, 5, 10],
        map_at_k=[10],
        write_csv=False,
        score_functions={"cosine": cos_sim},
    )
    expected = evaluator.compute_all_metrics(sentence_transformer(minilm_path))["cosine"]
    assert metrics["retrieval/n_queries"] == len(queries)
    assert metrics["retrieval/ndcg@10"] == pytest.approx(expected["ndcg@k"][10], abs=1e-4)
    assert metrics["retrieval/mrr@10"] == pytest.approx(expected["mrr@k"][10], abs=1e-4)
    for k in (1, 5, 10):
        assert metrics[f"retrieval/recall@{k}"] == pytest.approx(expected["recall@k"][k], abs=1e-4)
    assert metrics["retrieval/ndcg@10"] > 0.6  # MiniLM on SciFact: ~0.65 on the full corpus


def test_inspect_table_says_what_each_number_means_and_skips_the_unshown_umap(
    capsys, tmp_path, tiny_mean_model, probe_file, monkeypatch
):
    """Issue 25 point 6: the table alone computed a UMAP only --json shows, and printed bare numbers."""
    import aquin_monitor.snapshot_runner
    from aquin_monitor.metric_registry import metric_meaning

    layouts = []
    real_umap = aquin_monitor.snapshot_runner.umap_2d
    monkeypatch.setattr(aquin_monitor.snapshot_runner, "umap_2d", lambda *a: layouts.append(1) or real_umap(*a))
    code, out, _ = run(capsys, "inspect", tiny_mean_model, "--probe", probe_file, "--no-progress", "--no-cache")
    assert code == 0 and layouts == []
    lines = {line.split()[0]: line for line in out.strip().splitlines()}
    assert lines["geometry/anisotropy"].endswith("  " + metric_meaning("geometry/anisotropy"))
    assert metric_meaning("geometry/anisotropy") and all(metric_meaning(name) in line for name, line in lines.items())
    code, out, _ = run(capsys, "inspect", tiny_mean_model, "--probe", probe_file, "--no-progress", "--json", "-")
    assert (
        code == 0 and len(layouts) == 1 and np.asarray(json.loads(out)["umap"]["coordinates"]).shape == (len(PROBE), 2)
    )
    code, _, _ = run(capsys, "inspect", tiny_mean_model, "--probe", probe_file, "--no-progress", "--umap")
    assert code == 0 and len(layouts) == 2  # forced
    code, _, err = run(capsys, "inspect", tiny_mean_model, "--probe", probe_file, "--umap", "--no-umap")
    assert code == 2 and "--umap" in err


@pytest.mark.slow
def test_inspect_default_minilm_with_umap(capsys, tmp_path, minilm_path):
    from aquin_monitor.data import bundled_dataset

    records = [json.loads(line) for line in (bundled_dataset("banking77") / "test.jsonl").read_text().splitlines()[:40]]
    probe = write_jsonl(tmp_path / "banking.jsonl", [{"text": r["text"], "label": r["label"]} for r in records])
    code, out, _ = run(capsys, "inspect", "default", "--probe", probe, "--json", "-", "--no-progress")
    assert code == 0
    result = json.loads(out)
    coordinates = np.asarray(result["umap"]["coordinates"])
    assert coordinates.shape == (40, 2) and np.isfinite(coordinates).all()
    assert result["umap"]["labels"] == [str(r["label"]) for r in records]
    embeddings = st_encode(minilm_path, [r["text"] for r in records])
    assert result["metrics"]["geometry/anisotropy"] == pytest.approx(brute_force_anisotropy(embeddings), abs=1e-5)
    assert result["metrics"]["layers/similarity.06"] == pytest.approx(
        result["metrics"]["geometry/anisotropy"], abs=1e-5
    )


# ------------------------------------------------------------------------------------------
# progress bars


BAR = re.compile(r"\d+%\|")  # tqdm's "NN%|####|" bar


def bar_labels(stderr: str) -> set[str]:
    """The labels (``desc``) of the tqdm bars drawn on stderr (each redraw starts after a carriage return)."""
    return {match.group(1).strip() for match in re.finditer(r"(?:^|\r|\n)([^\r\n|%]*?):\s+\d+%\|", stderr)}


def test_progress_bars_are_labelled_and_no_progress_silences_them(
    capsys, tmp_path, tiny_mean_model, pairs_file, probe_file
):
    # --no-cache: an earlier test may have left these embeddings in the session's cache (no encoding, no bar)
    code, _, err = run(
        capsys, "eval", tiny_mean_model, "--pairs", pairs_file, "--json", tmp_path / "a.json", "--no-cache"
    )
    assert code == 0
    assert {"Encoding queries", "Encoding documents"} <= bar_labels(err), err
    code, _, err = run(
        capsys,
        "inspect",
        tiny_mean_model,
        "--probe",
        probe_file,
        "--json",
        tmp_path / "b.json",
        "--attention-texts",
        "4",
        "--no-cache",
    )
    assert code == 0
    labels = bar_labels(err)
    assert "Loading weights" in labels  # transformers' own bar: --no-progress must silence it too
    assert {"Snapshot: probe forward passes with attentions", "Snapshot: probe forward passes"} <= labels, err
    assert "Snapshot: UMAP 2-D layout of 12 probe texts" in labels, err
    assert "Batches" not in labels  # no unlabelled bar left

    for argv in (
        ["eval", tiny_mean_model, "--pairs", pairs_file, "--json", tmp_path / "c.json", "--no-cache"],
        ["inspect", tiny_mean_model, "--probe", probe_file, "--json", tmp_path / "d.json"],
    ):
        code, _, err = run(capsys, *argv, "--no-progress")
        assert code == 0 and not BAR.search(err), err
    # the same numbers either way (labelled encoding goes chunk by chunk)
    assert json.loads((tmp_path / "a.json").read_text())["metrics"] == pytest.approx(
        json.loads((tmp_path / "c.json").read_text())["metrics"], abs=1e-6
    )


def test_quiet_progress_turns_off_library_bars_and_restores_them():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    from aquin_monitor.progress import quiet_progress

    before = (transformers_logging.is_progress_bar_enabled(), are_progress_bars_disabled())
    with quiet_progress():
        assert not transformers_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    assert (transformers_logging.is_progress_bar_enabled(), are_progress_bars_disabled()) == before
