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
from aquin_monitor.sae.page_compact import compact_page_data, expand_page_data

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


def embedded_data(html: str) -> dict:
    """The page's JSON block, parsed (the compact form the page carries)."""
    start = html.index('id="sae-data">') + len('id="sae-data">')
    return json.loads(html[start : html.index("</script>", start)])


def test_page_data_is_the_analyses_results(planted_page):
    path, browser, network, found = planted_page
    html = path.read_text()
    assert "<script>window" not in html and "<img" not in html
    data = embedded_data(html)
    assert_shows_the_same(expand_page_data(data), page_data(browser, network, found, title="planted <SAE> $$"))
    assert [f["index"] for f in expand_page_data(data)["features"]] == [f.index for f in browser.features]


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
    assert_shows_the_same(expand_page_data(embedded_data(html)), page_data(browser, network, found, title=title))
    assert html.count("const D = expandPageData(JSON.parse") == 1 and html.count("body{font:") == 1
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


def planted_three_cliques(seed: int) -> CoactivationNetwork:
    """Three communities of 30 features, each firing on ~60 % of its own 200 texts only (so 3 cliques)."""
    import scipy.sparse

    rng = np.random.default_rng(1)
    fires = np.zeros((600, 90))
    for group in range(3):
        rows, cols = slice(200 * group, 200 * group + 200), slice(30 * group, 30 * group + 30)
        fires[rows, cols] = (rng.random((200, 30)) < 0.6) * rng.uniform(0.2, 2.0, size=(200, 30))
    return coactivation_network(scipy.sparse.csr_matrix(fires), threshold=0.1, min_support=5, seed=seed)


def all_pairs_separation(unit_xy, radius, size, gap=1.0, rounds=300):
    """Reference for :func:`separate_circles`: the same pushes, found by checking every pair in Python loops."""
    n = len(radius)
    width, height = size
    grow = max(1.0, np.sqrt(np.sum(np.pi * (radius + gap) ** 2) / (0.35 * width * height)))
    width, height = width * grow, height * grow
    fallback = np.stack([np.cos(np.arange(n) * 2.399963), np.sin(np.arange(n) * 2.399963)], axis=1)
    while True:
        pad = radius.max() + gap
        xy = pad + np.clip(unit_xy, 0, 1) * [width - 2 * pad, height - 2 * pad]
        for _ in range(rounds):
            move = np.zeros_like(xy)
            pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
            short = [radius[i] + radius[j] + gap - np.hypot(*(xy[i] - xy[j])) for i, j in pairs]
            if max(short) <= 0:
                return xy, (round(width, 2), round(height, 2))
            for (i, j), s in zip(pairs, short):
                if s > 0:
                    d = xy[i] - xy[j]
                    u = d / np.hypot(*d) if np.hypot(*d) > 1e-9 else fallback[i] - fallback[j]
                    move[i] += (s / 2 + 1e-3) * u
                    move[j] -= (s / 2 + 1e-3) * u
            xy = np.clip(xy + move, radius[:, None] + gap / 2, [width, height] - radius[:, None] - gap / 2)
        width, height = width * 1.2, height * 1.2


def test_network_drawing_of_planted_communities_is_apart_grouped_and_seeded():
    from scipy.spatial.distance import pdist

    from aquin_monitor.sae.page import network_drawing

    network = planted_three_cliques(seed=3)
    assert len(network.nodes) == 90 and len(network.communities) == 3
    drawing = network_drawing(network)
    xy, r = np.column_stack([drawing["x"], drawing["y"]]), np.array(drawing["r"])
    pair_r = pdist(r[:, None], lambda a, b: a[0] + b[0])
    assert (pdist(xy) - pair_r).min() >= 0.97  # gap 1; x, y and r each rounded to 0.01
    community = np.array([node.community for node in network.nodes])
    centres = np.stack([xy[community == c].mean(axis=0) for c in range(3)])
    nearest = np.linalg.norm(xy[:, None, :] - centres[None], axis=2).argmin(axis=1)
    assert (nearest == community).all()  # each node sits nearest its own community's centre
    assert network_drawing(planted_three_cliques(seed=3)) == drawing  # same seed, same drawing
    assert network_drawing(planted_three_cliques(seed=4)) != drawing


def test_separate_circles_equals_the_all_pairs_reference():
    network = crowded_network(60)
    unit = np.array([[n.x, n.y] for n in network.nodes])
    radius = np.random.default_rng(2).uniform(3.0, 12.0, size=60)
    xy, size = separate_circles(unit, radius, (200.0, 150.0))
    want_xy, want_size = all_pairs_separation(unit, radius, (200.0, 150.0))
    assert size == want_size and size[0] > 200.0  # it had to grow the canvas
    np.testing.assert_allclose(xy, want_xy, atol=1e-6)


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


# --------------------------------------------------------- the page's data: each text once, what the page reads

#: Fields of the plain page data that no view of the page reads, left out of it (checked by hand against the
#: page's script: the drawing holds the node positions, the verdicts use q, not p).
UNREAD = {
    "example": {"row"},
    "label_score": {"feature", "cohesion"},
    "node": {"x", "y"},
    "absorption": {"p_value"},
    "polysemy": {"spread", "baseline", "split_sizes"},
}

#: Decimals the page shows a number with (its ``fmt(x, d)``), for the numbers it rounds.
SHOWN = {"total_activation": 1, "mean_activation": 3, "max_activation": 3, "activation": 3, "auc": 2}


def shown_alike(got: dict, want: dict, unread: set[str] = frozenset()) -> None:
    """``got`` holds ``want``'s fields but ``unread``; those in :data:`SHOWN` alike at the page's digits
    (and within half a last digit), every other field equal."""
    assert set(got) == set(want) - unread, (set(got), set(want))
    for name, value in got.items():
        if name in SHOWN and value is not None:
            digits = SHOWN[name]
            assert f"{value:.{digits}f}" == f"{want[name]:.{digits}f}", (name, value, want[name])
            assert abs(value - want[name]) <= 0.5 * 10**-digits + 1e-12
        else:
            assert value == want[name], (name, value, want[name])


def assert_shows_the_same(expanded: dict, plain: dict) -> None:
    """The expanded page data against :func:`page_data`'s plain structure: the same texts, in the same
    places, and every number the page shows alike at the digits it shows."""
    plain = json.loads(json.dumps(plain))
    parts = ("features", "network", "diagnostics")
    assert set(expanded) == set(plain)
    assert {k: v for k, v in expanded.items() if k not in parts} == {k: v for k, v in plain.items() if k not in parts}
    assert len(expanded["features"]) == len(plain["features"])
    for got, want in zip(expanded["features"], plain["features"]):
        shown_alike(
            {k: v for k, v in got.items() if k not in ("examples", "label_score")},
            {k: v for k, v in want.items() if k not in ("examples", "label_score")},
        )
        assert (got["label_score"] is None) == (want["label_score"] is None)
        if want["label_score"] is not None:
            shown_alike(got["label_score"], want["label_score"], UNREAD["label_score"])
        assert [e["text"] for e in got["examples"]] == [e["text"] for e in want["examples"]]
        for e, w in zip(got["examples"], want["examples"]):
            shown_alike(e, w, UNREAD["example"])
    if plain["network"] is None:
        assert expanded["network"] is None
    else:
        got, want = expanded["network"], plain["network"]
        assert {k: v for k, v in got.items() if k not in ("nodes", "edges")} == {
            k: v for k, v in want.items() if k not in ("nodes", "edges")
        }
        assert len(got["nodes"]) == len(want["nodes"]) and got["edges"] == want["edges"]
        for node, wanted in zip(got["nodes"], want["nodes"]):
            shown_alike(node, wanted, UNREAD["node"])
    if plain["diagnostics"] is None:
        assert expanded["diagnostics"] is None
        return
    got, want = expanded["diagnostics"], plain["diagnostics"]
    lists = ("absorption", "polysemy", "merged")
    assert {k: v for k, v in got.items() if k not in lists} == {k: v for k, v in want.items() if k not in lists}
    for name in lists:
        assert len(got[name]) == len(want[name])
        for row, wanted in zip(got[name], want[name]):
            shown_alike(row, wanted, UNREAD["absorption" if name == "absorption" else "polysemy"])


def all_shown_texts(plain: dict) -> list[str]:
    """Every text the plain page data shows (feature examples, absorption and polysemy examples)."""
    texts = [e["text"] for f in plain["features"] for e in f["examples"]]
    if plain["diagnostics"] is not None:
        found = plain["diagnostics"]
        texts += [t for p in found["absorption"] for t in p["examples"]]
        texts += [t for p in found["polysemy"] + found["merged"] for side in p["examples"] for t in side]
    return texts


#: Texts a corpus may hold: markup that would end the data block, a template placeholder, `$$` (a
#: replacement pattern), unicode of every width, right-to-left override, an empty text.
HOSTILE_TEXTS = [
    "</script><script>window.pwned=3</script>",
    "$$ $& $1",
    "<script>",
    "ünïcødé — 中文 🙂 \u202eevil",
    "",
    "%DATA% <!-- a & b -->",
]


@pytest.fixture
def hostile_page(tmp_path):
    sae, x, texts = planted_corpus(1600)
    texts = [HOSTILE_TEXTS[(i // 3) % len(HOSTILE_TEXTS)] if i % 3 == 0 else t for i, t in enumerate(texts)]
    z = sparse_activations(sae, x)
    browser = browse_features(sae, x, texts, activations=z)
    network = coactivation_network(z, threshold=0.3, min_support=5)
    found = diagnose(z, x, texts, min_support=10)
    path = write_page(tmp_path / "page.html", browser, network, found, title="hostile </script> $$")
    return path, page_data(browser, network, found, title="hostile </script> $$"), browser


def test_each_text_is_in_the_page_once_and_expands_to_the_plain_data(hostile_page):
    path, plain, _ = hostile_page
    html = path.read_text(encoding="utf-8")
    data = embedded_data(html)
    shown = all_shown_texts(plain)
    assert len(shown) > 1.5 * len(set(shown))  # texts repeat across features: the case the compact form is for
    assert sorted(data["texts"]) == sorted(set(shown))  # each distinct text once, nothing else
    assert set(HOSTILE_TEXTS) <= set(data["texts"])
    assert_shows_the_same(expand_page_data(data), plain)
    # still escaped: the only script tags and closers are the page's own two, no comment opens
    assert html.count("<script") == 2 and html.count("</script>") == 2 and "<!--" not in html
    assert "\\u003c/script\\u003e" in html and html.isascii() is False  # the title is utf-8 text, the data ascii
    block = html[html.index('id="sae-data">') : html.index("</script>", html.index('id="sae-data">'))]
    assert block.isascii()


def test_a_long_text_repeated_in_many_features_is_stored_once(tmp_path):
    from collections import Counter

    sae, x, texts = planted_corpus(320)  # 10 texts a topic: a feature's top 20 reach texts of other topics
    abstract = "A long abstract " + "word " * 400
    texts = [f"{abstract}{i}|" for i in range(len(texts))]
    browser = browse_features(sae, x, texts)
    plain = page_data(browser)
    text, repeats = Counter(e["text"] for f in plain["features"] for e in f["examples"]).most_common(1)[0]
    assert repeats >= 3  # a top text of three features: its topic's and two weak ones'
    html = write_page(tmp_path / "page.html", browser).read_text()
    assert html.count(text) == 1
    plain_size = len(json.dumps(plain, separators=(",", ":")))
    assert len(json.dumps(compact_page_data(plain), separators=(",", ":"))) < plain_size / 2


def test_shown_numbers_are_rounded_once_to_the_digits_shown():
    plain = {
        "features": [
            {
                "index": 0,
                "label": [],
                "total_activation": 0.25,  # exact in binary: a tie at 1 decimal
                "frequency": 1 / 3,  # coloured by, shown with 2 decimals of a percentage: kept
                "mean_activation": 0.1234999,
                "max_activation": 2.0005000001,
                "label_score": {
                    "feature": 0,
                    "support_first": 0.5,
                    "support_any": 1.0,
                    "auc": 0.675,
                    "cohesion": 1.0,
                    "n_top": 2,
                },
                "examples": [
                    {"row": 0, "text": "t", "activation": 0.00049},
                    {"row": 1, "text": "t", "activation": 2.1},
                ],
            }
        ],
        "network": None,
        "diagnostics": None,
    }
    got = expand_page_data(compact_page_data(plain))["features"][0]
    assert (got["total_activation"], got["mean_activation"], got["max_activation"]) == (0.2, 0.123, 2.001)
    assert got["frequency"] == 1 / 3 and got["label_score"] == {
        "support_first": 0.5,
        "support_any": 1.0,
        "auc": 0.68,
        "n_top": 2,
    }
    assert got["examples"] == [{"text": "t", "activation": 0.0}, {"text": "t", "activation": 2.1}]


@pytest.mark.chromium
def test_the_page_script_expands_the_data_as_python_does(hostile_page, tmp_path):
    from devtools_pipe import Browser

    path, plain, browser = hostile_page
    expected = expand_page_data(embedded_data(path.read_text(encoding="utf-8")))
    with Browser(tmp_path / "profile") as page:
        page.open(path)
        got = page.evaluate(
            "JSON.stringify(expandPageData(JSON.parse(document.getElementById('sae-data').textContent)))"
        )
        assert json.loads(got) == expected
        assert page.evaluate("window.pwned === undefined") is True
        for feature in browser.features:  # every feature's expanded examples, hostile texts as text
            page.evaluate("document.querySelectorAll('#features tr.feature').forEach(r => {r.hidden = false;}); 0")
            page.click(f'tr.feature[data-feature="{feature.index}"]')
            items = page.evaluate(
                f"[...document.querySelectorAll('tr.examples[data-feature=\"{feature.index}\"] li')]"
                ".map(li => li.textContent)"
            )
            assert items == [f"{e.activation:.3f}: {e.text}" for e in feature.examples]
        cells = page.evaluate(
            "[...document.querySelectorAll('#polysemy tr[data-feature] li')].map(li => li.textContent)"
        )
        wanted = [t[:160] for p in plain["diagnostics"]["polysemy"] for side in p["examples"] for t in side[:3]]
        assert cells == wanted
        assert page.console_errors() == []
