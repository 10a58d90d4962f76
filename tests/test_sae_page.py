"""The SAE page (browse --html) and the browse/diagnose CLI: real clicks in headless chromium, hostile text,
one-line errors before any model loads."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sae_planted import planted_corpus

from aquin_monitor import cli, encoders
from aquin_monitor.sae.activations import sparse_activations
from aquin_monitor.sae.browser import browse_features
from aquin_monitor.sae.diagnose import diagnose
from aquin_monitor.sae.model import SparseAutoencoder
from aquin_monitor.sae.network import CoactivationNetwork, Edge, Node, coactivation_network
from aquin_monitor.sae.page import PAGE, PLACEHOLDER, page_data, separate_circles, write_page

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
        items = page.evaluate(
            f"[...document.querySelectorAll('tr.examples[data-feature=\"{first.index}\"] li')]"
            ".map(li => li.textContent)"
        )
        assert items == [f"{e.activation:.3f}: {e.text}" for e in first.examples]
        page.click(f'tr.feature[data-feature="{first.index}"]')
        assert page.evaluate(f"document.querySelector('tr.examples[data-feature=\"{first.index}\"]').hidden") is True
        # the label filter keeps only features whose label holds the typed text
        target = next(f for f in browser.features if f.label)
        page.type_text("#label-filter", target.label[0])
        shown = page.evaluate(
            "[...document.querySelectorAll('#features tr.feature')].filter(r => !r.hidden).map(r => +r.dataset.feature)"
        )
        assert shown == [
            f.index for f in browser.features if any(target.label[0] in t for t in [" ".join(f.label).lower()])
        ]
        # clicking a node lists its neighbours with their co-activation counts
        page.click('circle.node[data-feature="4"]')
        listed = page.evaluate(
            "[...document.querySelectorAll('#neighbour-list tr[data-feature]')]"
            ".map(r => [...r.cells].map(c => c.textContent))"
        )
        edge = next(e for e in network.edges if (e.source, e.target) == (4, 5))
        assert [row[0] for row in listed] == ["5"] and listed[0][2] == str(edge.count) and listed[0][3] == "100.00%"
        # hostile text is shown as text and never ran
        assert page.evaluate("window.pwned === undefined") is True
        assert page.evaluate("document.querySelectorAll('script').length") == 2
        assert page.evaluate("document.querySelectorAll('img').length") == 0
        texts = page.evaluate("[...document.querySelectorAll('#absorption li')].map(li => li.textContent)")
        assert any(t.startswith(HOSTILE) for t in texts), texts
        assert page.evaluate(
            "[...document.querySelectorAll('#merged tr[data-feature]')].map(r => +r.dataset.feature)"
        ) == [9]
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
    code = cli.main(
        [
            "sae",
            "browse",
            str(tiny_sae),
            "--corpus",
            str(corpus),
            "--html",
            str(page),
            "--json",
            str(out),
            "--no-progress",
            "--min-support",
            "3",
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    sae = load_sae(tiny_sae)
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    x = embed_corpus(sae.metadata["model"], texts, show_progress=False)
    model = sae.metadata["model"]
    expected = browse_features(sae, x, texts, encode=lambda p: embed_corpus(model, p, show_progress=False))
    assert [f["index"] for f in data["features"]] == [f.index for f in expected.features]
    assert [f["label"] for f in data["features"]] == [f.label for f in expected.features]
    assert data["labeller"] == "key phrases" and data["label_summary"] == expected.label_summary
    assert data["network"]["min_support"] == 3 and data["diagnostics"]["threshold"] == 0.9
    html = page.read_text()
    assert "<script>window" not in html and html.count("<script") == 2


def test_diagnose_cli_json_on_stdout(tiny_sae, corpus, capsys):
    code = cli.main(["sae", "diagnose", str(tiny_sae), "--corpus", str(corpus), "--json", "-", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert set(data) == {
        "absorption",
        "polysemy",
        "threshold",
        "baseline",
        "silhouette_threshold",
        "min_lift",
        "alpha",
        "pairs_tested",
    }


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
            assert (
                cli.main(["sae", "browse", str(tiny_sae), "--corpus", str(corpus), "--html", str(locked / "p.html")])
                == 2
            )
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
    assert (
        [p["feature"] for p in data["diagnostics"]["merged"]] == [p.feature for p in found.polysemy if p.merged] == [9]
    )


# ------------------------------------------------------------------ issue 24: placeholders as user text, overlaps

#: Every placeholder of the page template, spelled as user text (texts, labels, the title from a file name).
PLACEHOLDER_TEXT = " ".join(f"%{name}%" for name in PLACEHOLDER.findall(PAGE)) + " %DATA%%SCRIPT% %TITLE%%STYLE%"


def test_the_template_has_placeholders_to_attack():
    assert set(PLACEHOLDER.findall(PAGE)) == {"TITLE", "STYLE", "DATA", "SCRIPT"}


@pytest.fixture
def placeholder_page(tmp_path):
    sae, x, texts = planted_corpus(1600)
    texts = [f"{PLACEHOLDER_TEXT} {t}" if i % 2 == 0 else t for i, t in enumerate(texts)]
    z = sparse_activations(sae, x)
    browser = browse_features(sae, x, texts, activations=z)
    for feature in browser.features[::2]:
        feature.label = [PLACEHOLDER_TEXT, *feature.label]
    network = coactivation_network(z, threshold=0.3, min_support=5)
    found = diagnose(z, x, texts, min_support=10)
    title = f"SAE on {PLACEHOLDER_TEXT}.jsonl"
    path = write_page(tmp_path / "page.html", browser, network, found, title=title)
    return path, browser, network, found, title


def test_placeholder_names_in_user_text_stay_text(placeholder_page):
    path, browser, network, found, title = placeholder_page
    html = path.read_text()
    start = html.index('id="sae-data">') + len('id="sae-data">')
    data = json.loads(html[start : html.index("</script>", start)])
    assert data == json.loads(json.dumps(page_data(browser, network, found, title=title)))
    assert html.count("const D = JSON.parse") == 1 and html.count("body{font:") == 1
    assert f"<title>{title}</title>" in html


@pytest.mark.chromium
def test_placeholder_page_works_with_real_clicks(placeholder_page, tmp_path):
    from devtools_pipe import Browser

    path, browser, _, _, title = placeholder_page
    with Browser(tmp_path / "profile") as page:
        page.open(path)
        assert page.evaluate("document.title") == title
        assert page.evaluate("document.getElementById('title').textContent") == title
        for feature in browser.features[:4]:
            page.click(f'tr.feature[data-feature="{feature.index}"]')
            items = page.evaluate(
                f"[...document.querySelectorAll('tr.examples[data-feature=\"{feature.index}\"] li')]"
                ".map(li => li.textContent)"
            )
            assert items == [f"{e.activation:.3f}: {e.text}" for e in feature.examples]
        labelled = browser.features[0]
        cells = page.evaluate(
            f"[...document.querySelector('tr.feature[data-feature=\"{labelled.index}\"]').cells]"
            ".map(c => c.textContent)"
        )
        assert cells[2] == ", ".join(labelled.label) and PLACEHOLDER_TEXT in cells[2]
        page.click('circle.node[data-feature="4"]')
        assert page.evaluate("document.querySelector('#neighbours h3').textContent").startswith("Feature 4: ")
        assert [
            r[0]
            for r in page.evaluate(
                "[...document.querySelectorAll('#neighbour-list tr[data-feature]')]"
                ".map(r => [...r.cells].map(c => c.textContent))"
            )
        ] == ["5"]
        assert page.console_errors() == []


def crowded_network(n: int = 300) -> CoactivationNetwork:
    """``n`` nodes on a few spots (as a spring layout of a dense corpus piles them), largest sizes."""
    rng = np.random.default_rng(0)
    spots = rng.uniform(0.3, 0.7, size=(6, 2))
    nodes = [
        Node(
            i,
            frequency=0.01 + 0.5 * rng.random(),
            mean_activation=float(rng.uniform(0.5, 1.0)),
            community=0,
            x=float(spots[i % 6, 0] + rng.normal(0, 0.005)),
            y=float(spots[i % 6, 1]),
        )
        for i in range(n)
    ]
    nodes[1].x, nodes[1].y = nodes[0].x, nodes[0].y  # two exactly coincident centres
    edges = [Edge(i, i + 1, 5, 0.5, 0.5, 0.5) for i in range(0, n - 1, 2)]
    return CoactivationNetwork(
        n_texts=1000, threshold=0.3, min_support=5, nodes=nodes, edges=edges, communities=[list(range(n))]
    )


def test_no_two_network_nodes_overlap():
    from scipy.spatial.distance import pdist, squareform

    from aquin_monitor.sae.page import network_drawing

    drawing = network_drawing(crowded_network())
    xy, r = np.column_stack([drawing["x"], drawing["y"]]), np.array(drawing["r"])
    gaps = squareform(pdist(xy)) - (r[:, None] + r[None, :])
    np.fill_diagonal(gaps, np.inf)
    assert gaps.min() >= 0.9  # gap 1, positions rounded to 0.01
    assert (xy - r[:, None] >= 0).all() and (xy + r[:, None] <= [drawing["width"], drawing["height"]]).all()
    assert drawing["width"] > 640  # 300 circles of radius up to 12 do not fit 640 x 480 at 35 % cover


def test_separate_circles_leaves_apart_circles_where_they_are():
    unit = np.array([[0.1, 0.1], [0.9, 0.9]])
    xy, size = separate_circles(unit, np.array([3.0, 3.0]), (100.0, 100.0))
    assert size == (100.0, 100.0) and np.allclose(xy, 4.0 + unit * 92.0)


@pytest.mark.chromium
def test_every_network_node_opens_its_own_list(tmp_path):
    from devtools_pipe import Browser

    sae, x, texts = planted_corpus(640)
    browser = browse_features(sae, x, texts)
    network = crowded_network()
    path = write_page(tmp_path / "page.html", browser, network, None, title="crowded")
    with Browser(tmp_path / "profile") as page:
        page.open(path)
        opened = []
        for node in network.nodes:
            page.click(f'circle.node[data-feature="{node.index}"]')
            opened.append(page.evaluate("document.querySelector('#neighbours h3').textContent.split(':')[0]"))
        assert opened == [f"Feature {node.index}" for node in network.nodes]
        assert page.console_errors() == []


@pytest.mark.chromium
def test_long_feature_table_is_paged_and_the_filter_searches_every_page(tmp_path):
    """Issue 25 point 5: the run's sae.html listed every fired feature at once (814,000 px tall)."""
    from devtools_pipe import Browser

    rng = np.random.default_rng(0)
    words = ["cat", "dog", "bank", "card", "money", "science", "cell", "game", "team", "news", "rain", "sun"]
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(400)]
    sae = SparseAutoencoder(16, 256, 8, seed=0)
    x = rng.normal(size=(400, 16)).astype("float32")
    browser = browse_features(sae, x, texts)
    assert len(browser.features) > 60  # three pages at least
    path = write_page(tmp_path / "page.html", browser, title="many features")
    order = [f.index for f in browser.features]
    visible = (
        "[...document.querySelectorAll('#features tr.feature')].filter(r => !r.hidden).map(r => +r.dataset.feature)"
    )
    with Browser(tmp_path / "profile") as page:
        page.open(path)
        assert page.evaluate(visible) == order[:25]
        info = page.evaluate("document.querySelector('#features-pager span').textContent")
        pages = -(-len(order) // 25)
        assert info == f"features 1–25 of {len(order)} (page 1 of {pages})"
        paged = page.evaluate("document.body.scrollHeight")
        page.click("#features-pager button:last-child")  # next
        assert page.evaluate(visible) == order[25:50]
        page.click(f'tr.feature[data-feature="{order[25]}"]')  # a row of page 2 still opens its examples
        assert page.evaluate(f"document.querySelector('tr.examples[data-feature=\"{order[25]}\"]').hidden") is False
        page.click("#features-pager button:first-child")  # previous: page 2's open examples fold away
        assert page.evaluate(visible) == order[:25]
        assert page.evaluate(f"document.querySelector('tr.examples[data-feature=\"{order[25]}\"]').hidden") is True
        word = "bank"
        matching = [f.index for f in browser.features if word in " ".join(f.label).lower()]
        assert 0 < len(matching) < len(order)
        page.type_text("#label-filter", word)
        assert page.evaluate(visible) == matching[:25]  # searched over every page, shown from the first
        assert page.evaluate("document.getElementById('features-pager').hidden") is (len(matching) <= 25)
        everything = page.evaluate(
            "document.querySelectorAll('#features tr.feature').forEach(r => {r.hidden = false;}); "
            "document.body.scrollHeight"
        )
        assert everything > 2 * paged
        assert page.console_errors() == []
