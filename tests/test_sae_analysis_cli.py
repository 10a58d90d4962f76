"""`aquin-monitor sae decompose | contrast | trace | steer | faithfulness | match` on a tiny model.

Numbers are checked against the pure functions fed with embeddings computed here, and against
numpy; bad input exits 2 with one line before any model loads.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from test_sae_cli import one_line_error

from aquin_monitor import cli, encoders
from aquin_monitor.sae.model import SparseAutoencoder

WORDS = ["cat", "dog", "bank", "card", "money", "science", "cell", "game", "team", "news", "the", "a", "is", "on"]
HOSTILE = "$$ <script>alert(1)</script>"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AQUIN_MONITOR_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def texts():
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 8))) for _ in range(120)] + [HOSTILE]


@pytest.fixture
def setup(tiny_mean_model, texts, tmp_path):
    model = encoders.load_model(tiny_mean_model)
    x = encoders.encode(model, texts)
    sae = SparseAutoencoder(32, 48, 4, seed=0, metadata={"model": tiny_mean_model})
    with torch.no_grad():
        sae.b_dec.copy_(torch.as_tensor(x.mean(0)))
    folder = sae.save(tmp_path / "sae")
    labels = [f"label {i}" for i in range(47)] + [HOSTILE]
    (folder / "features.json").write_text(
        json.dumps({"n_texts": 0, "features": [{"id": i, "label": l} for i, l in enumerate(labels)]})
    )
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return {"model": model, "sae": sae.eval(), "folder": str(folder), "corpus": str(corpus), "x": x, "labels": labels}


def run_json(capsys, argv):
    code = cli.main(argv + ["--json", "-", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_decompose_and_contrast(setup, capsys):
    from aquin_monitor.sae.decompose import decompose

    text_a, text_b = "the cat is on the card", HOSTILE
    out = run_json(capsys, ["sae", "decompose", setup["folder"], text_a, "--top", "3"])
    a, b = encoders.encode(setup["model"], [text_a, text_b])
    expected = decompose(setup["sae"], a, top=3, labels=setup["labels"])
    assert [f["feature"] for f in out["features"]] == [f.feature for f in expected.features]
    assert [f["activation"] for f in out["features"]] == pytest.approx(
        [f.activation for f in expected.features], rel=1e-5
    )
    assert out["features"][0]["label"] == setup["labels"][out["features"][0]["feature"]] and out["text"] == text_a

    out = run_json(capsys, ["sae", "contrast", setup["folder"], text_a, text_b])
    cosine = float(a.astype(np.float64) @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert out["cosine"] == pytest.approx(cosine, abs=1e-6)
    assert sum(t["phi"] for t in out["terms"]) + out["bias_term"] + out["error_term"] == pytest.approx(cosine, abs=1e-5)
    assert out["texts"] == [text_a, text_b]

    assert cli.main(["sae", "contrast", setup["folder"], text_a, text_b, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "cos(a, b)" in printed and "error share" in printed


def test_trace_writes_figure(setup, tmp_path, capsys):
    text = "money news on the bank card"
    final = encoders.encode(setup["model"], [text])
    z = setup["sae"].encode(torch.as_tensor(final)).detach()[0]
    feature = int(z.argmax())
    figure = tmp_path / "trace.png"
    out = run_json(capsys, ["sae", "trace", setup["folder"], text, "--feature", str(feature), "--figure", str(figure)])
    assert len(out["activations"]) == 3
    assert out["activations"][-1] == pytest.approx(float(z[feature]), abs=1e-6)
    assert out["classification"] in {"progressive", "late-binding"}
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_steer_on_a_corpus(setup, capsys):
    out = run_json(
        capsys,
        ["sae", "steer", setup["folder"], "the cat", "--feature", "3", "--delta", "0", "--corpus", setup["corpus"]],
    )
    assert [h["doc_id"] for h in out["before"]] == [h["doc_id"] for h in out["after"]]
    q = encoders.encode(setup["model"], ["the cat"])[0]
    scores = setup["x"] @ q / np.linalg.norm(setup["x"], axis=1) / np.linalg.norm(q)
    assert [h["doc_id"] for h in out["before"]] == [f"d{i}" for i in np.argsort(-scores, kind="stable")[:10]]
    out = run_json(
        capsys,
        [
            "sae",
            "steer",
            setup["folder"],
            "the cat",
            "--feature",
            "3",
            "--delta",
            "5",
            "--corpus",
            setup["corpus"],
            "--top",
            "4",
        ],
    )
    assert len(out["after"]) == 4 and out["activation_after"] == pytest.approx(out["activation_before"] + 5)


def test_faithfulness_on_pairs(setup, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"query": f"the {w}", "document": f"a {w} is on the {w}"}) + "\n" for w in WORDS)
    )
    out = run_json(
        capsys, ["sae", "faithfulness", setup["folder"], "--pairs", str(pairs), "--features", "5", "--random", "2"]
    )
    assert len(out["features"]) <= 5 and out["n_queries"] == len(WORDS)
    assert all(f["drop"] == pytest.approx(out["ndcg"] - f["ndcg"]) for f in out["features"])


def test_match_a_permuted_copy(setup, tmp_path, capsys):
    sae = setup["sae"]
    permutation = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    copy = SparseAutoencoder(32, 48, 4, metadata=dict(sae.metadata))
    with torch.no_grad():
        for name in ("W_dec",):
            getattr(copy, name).copy_(getattr(sae, name)[permutation])
        copy.encoder.weight.copy_(sae.encoder.weight[permutation])
        copy.encoder.bias.copy_(sae.encoder.bias[permutation])
        copy.b_dec.copy_(sae.b_dec)
    other = copy.save(tmp_path / "copy")
    out = run_json(capsys, ["sae", "match", setup["folder"], str(other), "--corpus", setup["corpus"]])
    inverse = torch.argsort(permutation)
    assert out["pairs"] and all(p["feature_b"] == int(inverse[p["feature_a"]]) for p in out["pairs"])
    assert all(p["correlation"] == pytest.approx(1.0, abs=1e-6) for p in out["pairs"])


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "argv,parts",
    [
        (["trace", "{sae}", "text", "--feature", "48"], ["cfg.json", "--feature", "48"]),
        (["steer", "{sae}", "q", "--feature", "-1", "--delta", "1", "--corpus", "{corpus}"], ["--feature", "-1"]),
        (["steer", "{sae}", "q", "--feature", "1", "--delta", "nan", "--corpus", "{corpus}"], ["--delta"]),
        (["decompose", "{sae}", "   "], ["TEXT", "empty"]),
        (["contrast", "{missing}", "a", "b"], ["cfg.json", "missing"]),
    ],
)
def test_bad_input_exits_2_before_loading(setup, tmp_path, capsys, no_model_loading, argv, parts):
    argv = [a.format(sae=setup["folder"], corpus=setup["corpus"], missing=str(tmp_path / "nothing")) for a in argv]
    assert cli.main(["sae", *argv, "--no-progress"]) == 2
    one_line_error(capsys, *parts)


def test_malformed_corpus_and_pairs_name_file_and_line(setup, tmp_path, capsys, no_model_loading):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    assert cli.main(["sae", "steer", setup["folder"], "q", "--feature", "1", "--delta", "1", "--corpus", str(bad)]) == 2
    one_line_error(capsys, f"{bad}:2", "text")
    assert cli.main(["sae", "match", setup["folder"], setup["folder"], "--corpus", str(bad)]) == 2
    one_line_error(capsys, f"{bad}:2")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "a", "document": "b"}\n{"query": "a"}\n')
    assert cli.main(["sae", "faithfulness", setup["folder"], "--pairs", str(pairs)]) == 2
    one_line_error(capsys, f"{pairs}:2")


def test_sae_dimension_differs_from_the_model(setup, tmp_path, capsys, no_model_loading, tiny_mean_model):
    wrong = SparseAutoencoder(16, 32, 4, metadata={"model": tiny_mean_model}).save(tmp_path / "wrong")
    assert cli.main(["sae", "decompose", str(wrong), "text"]) == 2
    one_line_error(capsys, "d_in", "16", "32")


def test_output_paths_checked_before_loading(setup, tmp_path, capsys, no_model_loading):
    import os

    assert cli.main(["sae", "decompose", setup["folder"], "text", "--json", str(tmp_path)]) == 2
    one_line_error(capsys, "--json", "is a folder")
    assert cli.main(["sae", "trace", setup["folder"], "text", "--feature", "1", "--figure", str(tmp_path)]) == 2
    one_line_error(capsys, "--figure", "is a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running with permissions that ignore a read-only folder")
        assert cli.main(["sae", "decompose", setup["folder"], "text", "--json", str(locked / "out.json")]) == 2
        one_line_error(capsys, "--json", "not a writable folder")
    finally:
        locked.chmod(0o700)


def test_json_file_written_whole(setup, tmp_path, capsys):
    out = tmp_path / "deep" / "out.json"
    assert cli.main(["sae", "decompose", setup["folder"], "the cat", "--json", str(out), "--no-progress"]) == 0
    assert "bias share" in capsys.readouterr().out
    assert json.loads(out.read_text())["text"] == "the cat"
    assert [p.name for p in out.parent.iterdir()] == ["out.json"]


def test_steer_shows_a_labelled_bar_with_totals_and_no_progress_silences_it(setup, capsys):
    """Issue 25 point 4: `sae steer --beir` encoded 5,183 abstracts for minutes without a word."""
    argv = ["sae", "steer", setup["folder"], "the cat", "--feature", "3", "--delta", "1", "--corpus", setup["corpus"]]
    assert cli.main(argv + ["--batch-size", "8"]) == 0
    err = capsys.readouterr().err
    n = len(setup["x"])
    final = re.findall(rf"Embedding {n} documents: 100%\|[^\r\n]*\| {n}/{n} \[[0-9:]+<[0-9:]+", err)
    assert final, err  # label, count/total and elapsed<remaining (the ETA)
    assert cli.main(argv + ["--no-progress"]) == 0  # (from the cache now: the bar would count at once)
    assert "Embedding" not in capsys.readouterr().err
