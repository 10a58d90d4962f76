"""The SAE page (browse --html) and the browse/diagnose CLI: real clicks in headless chromium, hostile text,
one-line errors before any model loads."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from aquin_monitor import cli, encoders
from aquin_monitor.sae.activations import sparse_activations
from aquin_monitor.sae.browser import browse_features
from aquin_monitor.sae.diagnose import diagnose
from aquin_monitor.sae.model import SparseAutoencoder
from aquin_monitor.sae.network import coactivation_network
from aquin_monitor.sae.page import page_data, write_page
from sae_planted import planted_corpus

HOSTILE = "<script>window.pwned=1</script> $$ &amp; <img src=x onerror=window.pwned=2>"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AQUIN_MONITOR_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def planted_page(tmp_path):
    sae, x, texts = planted_corpus(1600)
    texts = [f"{HOSTILE} {t}" if i % 64 == 4 else t for i, t in enumerate(texts)]  # some topic-4 texts
    z = sparse_activations(sae, x)
    browser = browse_features(sae, x, texts, activations=z)
    network = coactivation_network(z, threshold=0.3, min_support=5)
    found = diagnose(z, x, texts, min_support=10)
    path = write_page(tmp_path / "page.html", browser, network, found, title="planted <SAE> $$")
    return path, browser, network, found


def test_page_data_is_the_analyses_results(planted_page):
    path, browser, network, found = planted_page
    html = path.read_text()
    assert "<script>window" not in html and "<img" not in html
    start = html.index('id="sae-data">') + len('id="sae-data">')
    data = json.loads(html[start : html.index("</script>", start)])
    assert data == json.loads(json.dumps(page_data(browser, network, found, title="planted <SAE> $$")))
    assert [f["index"] for f in data["features"]] == [f.index for f in browser.features]


@pytest.mark.chromium
def test_page_in_headless_chromium_with_real_clicks(planted_page, tmp_path):
    from devtools_pipe import Browser

    path, browser, network, found = planted_page
    with Browser(tmp_path / "profile") as page:
        page.open(path)
        assert page.evaluate("document.title") == "planted <SAE> $$"
        rows = page.evaluate("[...document.querySelectorAll('#features tr.feature')].map(r => +r.dataset.feature)")
        assert rows == [f.index for f in browser.features]
        # clicking a feature expands its examples, in order, with activations
        first = browser.features[0]
        assert page.evaluate(f"document.querySelector('tr.examples[data-feature=\"{first.index}\"]').hidden") is True
        page.click(f'tr.feature[data-feature="{first.index}"]')
        items = page.evaluate(f"[...document.querySelectorAll('tr.examples[data-feature=\"{first.index}\"] li')].map(li => li.textContent)")
        assert items == [f"{e.activation:.3f}: {e.text}" for e in first.examples]
        page.click(f'tr.feature[data-feature="{first.index}"]')
        assert page.evaluate(f"document.querySelector('tr.examples[data-feature=\"{first.index}\"]').hidden") is True
        # the label filter keeps only features whose label holds the typed text
        target = next(f for f in browser.features if f.label)
        page.type_text("#label-filter", target.label[0])
        shown = page.evaluate("[...document.querySelectorAll('#features tr.feature')].filter(r => !r.hidden).map(r => +r.dataset.feature)")
        assert shown == [f.index for f in browser.features if any(target.label[0] in t for t in [" ".join(f.label).lower()])]
        # clicking a node lists its neighbours with their co-activation counts
        page.click('circle.node[data-feature="4"]')
        listed = page.evaluate("[...document.querySelectorAll('#neighbour-list tr[data-feature]')].map(r => [...r.cells].map(c => c.textContent))")
        edge = next(e for e in network.edges if (e.source, e.target) == (4, 5))
        assert [row[0] for row in listed] == ["5"] and listed[0][2] == str(edge.count) and listed[0][3] == "100.00%"
        # hostile text is shown as text and never ran
        assert page.evaluate("window.pwned === undefined") is True
        assert page.evaluate("document.querySelectorAll('script').length") == 2
        assert page.evaluate("document.querySelectorAll('img').length") == 0
        texts = page.evaluate("[...document.querySelectorAll('#absorption li')].map(li => li.textContent)")
        assert any(t.startswith(HOSTILE) for t in texts), texts
        assert page.evaluate("[...document.querySelectorAll('#merged tr[data-feature]')].map(r => +r.dataset.feature)") == [9]
        assert page.console_errors() == []
        if os.environ.get("AQUIN_SAE_PAGE_SCREENSHOT"):  # for a person to look at
            page.screenshot(tmp_path / "shot.png", full_page=True)
            os.replace(tmp_path / "shot.png", os.environ["AQUIN_SAE_PAGE_SCREENSHOT"])


@pytest.mark.chromium
def test_console_error_check_can_fail(tmp_path):
    from devtools_pipe import Browser

    page_path = tmp_path / "broken.html"
    page_path.write_text("<!DOCTYPE html><html><body><script>undefinedFunction()</script></body></html>")
    with Browser(tmp_path / "profile") as page:
        page.open(page_path)
        assert any("undefinedFunction" in error for error in page.console_errors())


# ------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "bank", "card", "money", "science", "cell", "game", "team", "news", "the", "a"]
    lines = [json.dumps({"text": " ".join(rng.choice(words, size=rng.integers(3, 9)))}) for _ in range(300)]
    lines += [json.dumps({"text": HOSTILE}), json.dumps({"text": "$$"})]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_sae(tiny_mean_model, tmp_path):
    folder = tmp_path / "sae"
    SparseAutoencoder(32, 64, 4, seed=0, metadata={"model": tiny_mean_model}).save(folder)
    return folder


def test_browse_cli_writes_the_page_and_json(tiny_sae, corpus, tmp_path, capsys):
    from aquin_monitor.sae.embeddings import embed_corpus
    from aquin_monitor.sae.model import load_sae

    out, page = tmp_path / "out" / "browse.json", tmp_path / "out" / "page.html"
    code = cli.main(["sae", "browse", str(tiny_sae), "--corpus", str(corpus), "--html", str(page), "--json", str(out),
                     "--no-progress", "--min-support", "3"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    sae = load_sae(tiny_sae)
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    x = embed_corpus(sae.metadata["model"], texts, show_progress=False)
    expected = browse_features(sae, x, texts)
    assert [f["index"] for f in data["features"]] == [f.index for f in expected.features]
    assert [f["label"] for f in data["features"]] == [f.label for f in expected.features]
    assert data["network"]["min_support"] == 3 and data["diagnostics"]["threshold"] == 0.9
    html = page.read_text()
    assert "<script>window" not in html and html.count("<script") == 2


def test_diagnose_cli_json_on_stdout(tiny_sae, corpus, capsys):
    code = cli.main(["sae", "diagnose", str(tiny_sae), "--corpus", str(corpus), "--json", "-", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert set(data) == {"absorption", "polysemy", "threshold", "baseline", "silhouette_threshold"}


def one_line(capsys, *parts):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert all(part in err for part in parts), err


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(encoders, "load_model", refuse)


def test_bad_input_exits_2_before_any_model_loads(tiny_sae, corpus, tmp_path, capsys, no_model_loads, tiny_mean_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    assert cli.main(["sae", "browse", str(tiny_sae), "--corpus", str(bad)]) == 2
    one_line(capsys, f"{bad}:2", "text")

    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert cli.main(["sae", "browse", str(tiny_sae), "--corpus", str(corpus), "--html", str(folder)]) == 2
    one_line(capsys, str(folder), "--html")

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root writes anywhere
            assert cli.main(["sae", "browse", str(tiny_sae), "--corpus", str(corpus), "--html", str(locked / "p.html")]) == 2
            one_line(capsys, "--html", "not writable")
            assert not (locked / "p.html").exists()
    finally:
        locked.chmod(0o700)

    wide = tmp_path / "wide"
    SparseAutoencoder(48, 64, 4, metadata={"model": tiny_mean_model}).save(wide)
    assert cli.main(["sae", "diagnose", str(wide), "--corpus", str(corpus)]) == 2
    one_line(capsys, "cfg.json:1", "d_in", "48")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cfg.json").write_text("{not json")
    assert cli.main(["sae", "diagnose", str(broken), "--corpus", str(corpus)]) == 2
    one_line(capsys, "cfg.json")


def test_page_lists_merged_features_apart(planted_page):
    _, browser, network, found = planted_page
    data = page_data(browser, network, found, polysemy_rows=1)
    assert len(data["diagnostics"]["polysemy"]) == 1
    assert [p["feature"] for p in data["diagnostics"]["merged"]] == [p.feature for p in found.polysemy if p.merged] == [9]
