"""``sae browse | diagnose --store`` and ``inspect --store`` over a real embedding store.

The store is written with the store's own writer; every number must equal the in-memory path's on the
same rows, and a store that does not fit the corpus, the model or the SAE is refused in one line (exit 2).
"""

from __future__ import annotations

import json

import pytest
from sae_planted import planted_corpus

from aquin_monitor.cli import main
from aquin_monitor.corpus_geometry import corpus_geometry
from aquin_monitor.rows import ArrayRows
from aquin_monitor.sae.page import analyse_corpus, page_data

store_module = pytest.importorskip("aquin_monitor.store")
embed_module = pytest.importorskip("aquin_monitor.embed")
from aquin_monitor.embedding_cache import model_fingerprint  # noqa: E402  (after the importorskips, as the store it reads)


@pytest.fixture()
def stored(tmp_path):
    """The planted corpus as a JSONL file, its rows as a 3-shard store, the SAE saved, a model folder."""
    sae, x, texts = planted_corpus(960)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"not a real model")
    store = tmp_path / "store"
    store_module.write_store(
        store,
        [x[:500], x[500:]],
        [f"t{i}" for i in range(len(texts))],
        model_fingerprint=model_fingerprint(str(model)),
        corpus_hash=embed_module.corpus_hash(corpus),
        shard_rows=400,
    )
    sae.save(tmp_path / "sae")
    return sae, x, texts, {"corpus": corpus, "model": model, "store": store, "sae": tmp_path / "sae"}


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_browse_over_a_store_equals_browse_over_the_embeddings_in_memory(stored, tmp_path, capsys):
    sae, x, texts, paths = stored
    out = tmp_path / "page.json"
    code, _, err = run(
        [
            "sae",
            "browse",
            str(paths["sae"]),
            "--corpus",
            str(paths["corpus"]),
            "--store",
            str(paths["store"]),
            "--model",
            str(paths["model"]),
            "--json",
            str(out),
            "--html",
            str(tmp_path / "page.html"),
            "--examples",
            "8",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    got = json.loads(out.read_text())
    want = json.loads(json.dumps(page_data(*analyse_corpus(sae, x, texts, examples=8), title=got["title"])))
    assert got == want
    assert (tmp_path / "page.html").read_text().startswith("<!DOCTYPE html>")


def test_diagnose_over_a_store_finds_the_planted_pair(stored, tmp_path, capsys):
    _, _, texts, paths = stored
    code, out, err = run(
        [
            "sae",
            "diagnose",
            str(paths["sae"]),
            "--corpus",
            str(paths["corpus"]),
            "--store",
            str(paths["store"]),
            "--model",
            str(paths["model"]),
            "--json",
            "-",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    found = json.loads(out)
    assert [(p["source"], p["target"]) for p in found["absorption"]] == [(4, 5)]
    assert found["absorption"][0]["examples"] == [texts[4], texts[36], texts[68]]


@pytest.mark.parametrize("break_it", ["corpus", "model", "dimension"])
def test_a_store_that_does_not_fit_is_refused_in_one_line(stored, tmp_path, capsys, break_it):
    _, _, _, paths = stored
    sae_dir = paths["sae"]
    if break_it == "corpus":
        with open(paths["corpus"], "a") as handle:
            handle.write(json.dumps({"id": "extra", "text": "one more"}) + "\n")
        expected = "corpus_hash: the store was written for another corpus file"
    elif break_it == "model":
        (paths["model"] / "weights.bin").write_bytes(b"other weights!!!")  # same size, other bytes
        expected = "model_fingerprint: the store was written by another model"
    else:
        from aquin_monitor.sae.model import SparseAutoencoder

        sae_dir = tmp_path / "other_sae"
        SparseAutoencoder(16, 32, 2).save(sae_dir)
        expected = "dimension: the store holds 48-dimensional rows, the SAE takes 16"
    for verb in ("browse", "diagnose"):
        code, _, err = run(
            [
                "sae",
                verb,
                str(sae_dir),
                "--corpus",
                str(paths["corpus"]),
                "--store",
                str(paths["store"]),
                "--model",
                str(paths["model"]),
                "--no-progress",
            ],
            capsys,
        )
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_inspect_over_a_store_reports_exact_and_sampled_geometry(stored, capsys):
    _, x, _, paths = stored
    code, out, err = run(["inspect", "--store", str(paths["store"]), "--sample-rows", "300", "--json", "-"], capsys)
    assert code == 0, err
    found = json.loads(out)
    want = corpus_geometry(ArrayRows(x), sample_rows=300)
    assert found["metrics"] == pytest.approx(want.as_metrics(), rel=1e-12)
    assert found["details"]["geometry_sampling"]["sample_rows"] == 300 and found["store"]["n_rows"] == len(x)
    code, _, err = run(["inspect", "default", "--store", str(paths["store"]), "--probe", str(paths["corpus"])], capsys)
    assert code == 2 and "give exactly one of --probe FILE and --store DIR" in err
    code, _, err = run(["inspect", str(paths["model"]) + "x", "--store", str(paths["store"])], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
