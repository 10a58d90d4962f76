"""`aquin-monitor sae train | eval` on a tiny model; bad input exits 2 with one line, before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_errors import one_line_error

from aquin_monitor import cli, encoders
from aquin_monitor.sae.label_quality import holds_term
from aquin_monitor.sae.model import SparseAutoencoder, load_sae

WORDS = ["cat", "dog", "bank", "card", "money", "science", "cell", "game", "team", "news", "the", "a", "is", "on"]


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS, size=rng.integers(3, 9)))}) for _ in range(400)]
    lines.append(json.dumps({"text": "$$ <script>alert(1)</script>"}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AQUIN_MONITOR_CACHE", str(tmp_path / "cache"))


def test_train_then_eval(tiny_mean_model, corpus, tmp_path, capsys):
    from aquin_monitor.sae.evaluate import feature_statistics

    out = tmp_path / "sae"
    code = cli.main(
        [
            "sae",
            "train",
            tiny_mean_model,
            "--corpus",
            str(corpus),
            "--out",
            str(out),
            "--num-latents",
            "64",
            "--k",
            "4",
            "--epochs",
            "3",
            "--no-progress",
            "--tensorboard",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert {
        "cfg.json",
        "sae.safetensors",
        "features.json",
        "training.jsonl",
        "quality.json",
        "quality.txt",
        "metrics.jsonl",
        "density.png",
        "training.png",
    } <= {p.name for p in out.iterdir()}
    sae = load_sae(out)
    assert (sae.d_in, sae.num_latents, sae.k) == (32, 64, 4) and sae.metadata["model"] == tiny_mean_model
    features = json.loads((out / "features.json").read_text())["features"]
    assert len(features) == 64
    alive = [f for f in features if f["frequency"] > 0]
    assert alive and all(
        f["top"] and f["top"][0]["activation"] == pytest.approx(f["max_activation"], rel=1e-4) for f in alive
    )
    history = [json.loads(line) for line in (out / "training.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    streamed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["sae/fvu"] for row in streamed] == pytest.approx([row["sae/fvu"] for row in history])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("sae/dead_fraction")] == pytest.approx(
        [row["sae/dead_fraction"] for row in history]
    )
    capsys.readouterr()

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"query": f"the {w}", "document": f"a {w} is on the {w}"}) + "\n" for w in WORDS)
    )
    code = cli.main(
        ["sae", "eval", str(out), "--corpus", str(corpus), "--pairs", str(pairs), "--json", "-", "--no-progress"]
        + ["--no-probe"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    x = encoders.encode(encoders.load_model(tiny_mean_model, device="cpu"), texts)
    stats = feature_statistics(sae, x)
    metrics = result["metrics"]
    assert metrics["sae/fvu"] == pytest.approx(stats.fvu, rel=1e-4)
    assert metrics["sae/dead_fraction"] == pytest.approx(float(np.mean(stats.frequency == 0)))
    assert metrics["sae/l0"] <= 4
    for key in ("sae/retrieval/original/ndcg@10", "sae/retrieval/reconstructed/ndcg@10", "sae/retrieval/kept_ndcg@10"):
        assert key in metrics


def _saved(tmp_path, d_in=32, model="default"):
    sae = SparseAutoencoder(d_in, 16, 2, metadata={"model": model})
    return sae.save(tmp_path / "s")


def test_missing_and_corrupt_cfg(tmp_path, corpus, capsys, no_model_loading):
    assert cli.main(["sae", "eval", str(tmp_path / "nothing"), "--corpus", str(corpus)]) == 2
    one_line_error(capsys, "cfg.json:0:", "missing")
    folder = _saved(tmp_path)
    (folder / "cfg.json").write_text('{\n "d_in": 32,\n "k": }\n')
    assert cli.main(["sae", "eval", str(folder), "--corpus", str(corpus)]) == 2
    one_line_error(capsys, "cfg.json:3:", "not valid JSON")


def test_tensor_shapes_that_disagree_with_cfg(tmp_path, corpus, capsys, no_model_loading):
    folder = _saved(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["num_latents"] = 20
    (folder / "cfg.json").write_text(json.dumps(cfg))
    assert cli.main(["sae", "eval", str(folder), "--corpus", str(corpus)]) == 2
    one_line_error(capsys, "sae.safetensors:0: encoder.weight: shape (16, 32) disagrees with cfg.json")


def test_sae_dimension_differs_from_the_model(tmp_path, tiny_mean_model, corpus, capsys, no_model_loading):
    folder = _saved(tmp_path, d_in=384)
    assert cli.main(["sae", "eval", str(folder), "--model", tiny_mean_model, "--corpus", str(corpus)]) == 2
    one_line_error(capsys, "cfg.json:1: d_in:", "384-dimensional", "outputs 32")


@pytest.mark.parametrize(
    "content, parts",
    [
        ('{"text": "fine"}\n{"text": \n', [":2:", "JSON"]),
        ('{"text": "fine"}\n{"txt": "no text field"}\n', [":2:", "text"]),
        ('{"text": "fine"}\n{"text": 5}\n', [":2:", "text"]),
    ],
)
def test_malformed_corpus_lines(tmp_path, tiny_mean_model, capsys, no_model_loading, content, parts):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert cli.main(["sae", "train", tiny_mean_model, "--corpus", str(bad), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, str(bad), *parts)
    folder = _saved(tmp_path)
    assert cli.main(["sae", "eval", str(folder), "--model", tiny_mean_model, "--corpus", str(bad)]) == 2
    one_line_error(capsys, str(bad), *parts)


def test_out_that_is_a_file(tmp_path, tiny_mean_model, corpus, capsys, no_model_loading):
    target = tmp_path / "taken"
    target.write_text("x")
    assert cli.main(["sae", "train", tiny_mean_model, "--corpus", str(corpus), "--out", str(target)]) == 2
    one_line_error(capsys, "--out", "not a folder")


@pytest.mark.parametrize("labels", ["keyphrases", "ctfidf"])
def test_train_writes_key_phrase_labels_with_the_models_encoder(tiny_mean_model, corpus, tmp_path, monkeypatch, labels):
    from aquin_monitor.sae import browser, keyphrases

    calls = []

    def spy(texts, classes, embeddings, encode, **kwargs):
        phrases = []

        def recording_encode(batch):
            phrases.extend(batch)
            return encode(batch)

        result = keyphrases.keyphrase_labels(texts, classes, embeddings, recording_encode, **kwargs)
        calls.append((result, phrases, encode(["man"])))
        return result

    monkeypatch.setattr(browser, "keyphrase_labels", spy)
    out = tmp_path / "sae"
    flags = ["--num-latents", "32", "--k", "4", "--epochs", "1", "--no-progress", "--labels", labels]
    assert cli.main(["sae", "train", tiny_mean_model, "--corpus", str(corpus), "--out", str(out), *flags]) == 0
    features = json.loads((out / "features.json").read_text())["features"]
    written = [f["label"] for f in features if f["top"]]
    if labels == "ctfidf":
        assert calls == [] and any(written)
        return
    [(result, phrases, man)] = calls
    # the encoder the CLI passed is MODEL's: its vector of "man" is the tiny model's own
    expect = encoders.encode(encoders.load_model(tiny_mean_model, device="cpu"), ["man"])
    assert np.allclose(man, expect, atol=1e-5)
    assert phrases and not any("<" in p or "$" in p for p in phrases)
    assert sorted(written) == sorted(", ".join(label) for label in result)
    for feature in features:
        tops = [t["text"] for t in feature["top"]]
        for term in filter(None, feature["label"].split(", ")):
            # a key phrase is held by 2 of the feature's top texts at least (c-TF-IDF words need not be)
            assert term.endswith("…") or sum(holds_term(text, term) for text in tops) >= 2
