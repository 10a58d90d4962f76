"""One self-contained interactive HTML page of a SAE over a corpus: browser, network, diagnostics.

The page holds its data as one JSON block and draws everything with inline JavaScript: no network
access (a Content-Security-Policy forbids any fetch), no server, no CDN. The block is
:func:`page_data` in the compact form of :mod:`aquin_monitor.sae.page_compact` (each distinct text
once, referred to by index; only the fields the page reads; shown numbers at the digits shown): a
600-text probe's page is 0.9 MB instead of 14.5 MB. User text (corpus texts,
labels) reaches the page only through ``textContent``, never as markup, and the JSON block escapes
``<``, ``>`` and ``&``, so a text such as ``</script><script>alert(1)</script>`` shows as itself.

Sections:

- **Features**: ranked by total activation, with label, frequency, mean and max activation and
  the top 3 texts; clicking a feature's row expands all its kept examples with activations; a box
  filters the features by label. 25 rows a page (previous / next), and a cell shows at most 3
  texts of at most 160 characters (the whole text in its tooltip), so a page of a thousand features
  over long abstracts stays a few screens tall; every table below is paged the same way.
- **Co-activation network**: an inline SVG, node size = mean activation, colour = frequency
  (log scale), edges = NPMI above the threshold; clicking a node lists its neighbours with their
  co-activation counts and conditional frequencies.
- **Diagnostics**: absorption pairs and the most polysemous features, with example texts.
- **Fit on this corpus** (when given, :func:`~aquin_monitor.sae.quality.corpus_fit`): FVU and cos(x, x̂) on the
  corpus beside the SAE's own held-out figures and a PCA of equal size, and the out-of-domain warning.

Example:

    >>> import numpy as np
    >>> from aquin_monitor.sae.model import SparseAutoencoder
    >>> from aquin_monitor.sae.browser import browse_features
    >>> sae = SparseAutoencoder(4, 8, 2, seed=0)
    >>> browser = browse_features(sae, np.random.default_rng(0).normal(size=(3, 4)), ["a <b>", "c", "d"])
    >>> html = render_page(browser)
    >>> "<b>" in html, html.startswith("<!DOCTYPE html>")
    (False, True)
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from ..atomic import atomic_write_text
from ..rows import ArrayRows, RowSource
from .browser import FeatureBrowser
from .diagnose import Diagnostics
from .network import CoactivationNetwork
from .page_compact import compact_page_data

__all__ = ["analyse_corpus", "analyse_rows", "page_data", "render_page", "render_page_data", "write_page"]


def page_data(
    browser: FeatureBrowser,
    network: CoactivationNetwork | None = None,
    diagnostics: Diagnostics | None = None,
    *,
    title: str = "SAE features",
    polysemy_rows: int = 25,
    merged_rows: int = 50,
    fit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The page's data (JSON-serialisable): the browser, the network and the diagnostics, as they are.

    ``fit``: :func:`~aquin_monitor.sae.quality.corpus_fit`'s result, shown as its ``metrics`` and ``warning``.
    The diagnostics keep the ``polysemy_rows`` features of widest spread and, as ``merged``, the
    ``merged_rows`` flagged features of highest silhouette.
    """
    labels = {f.index: f.label for f in browser.features}
    data: dict[str, Any] = {
        "title": title,
        "n_texts": browser.n_texts,
        "num_latents": browser.num_latents,
        "dead": browser.dead,
        "features": [dataclasses.asdict(f) for f in browser.features],
        "labels": {str(k): v for k, v in labels.items()},
        "labeller": browser.labeller,
        "label_summary": browser.label_summary,
        "network": None,
        "diagnostics": None,
        "fit": None if fit is None else {"metrics": _finite_or_none(fit["metrics"]), "warning": fit["warning"]},
    }
    if network is not None:
        data["network"] = dataclasses.asdict(network)
        data["drawing"] = network_drawing(network)
    if diagnostics is not None:
        found = dataclasses.asdict(diagnostics)
        merged = [p for p in found["polysemy"] if p["merged"]]
        found["merged"] = sorted(merged, key=lambda p: (-p["silhouette"], p["feature"]))[:merged_rows]
        found["polysemy"] = found["polysemy"][:polysemy_rows]
        data["diagnostics"] = found
    return data


def _finite_or_none(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """NaN and infinities as None: the page's JSON block allows no non-finite number."""
    return {name: float(value) if np.isfinite(value) else None for name, value in metrics.items()}


def network_drawing(
    network: CoactivationNetwork, *, width: float = 640.0, height: float = 480.0, gap: float = 1.0
) -> dict[str, Any]:
    """Pixel positions and radii of the network's nodes, no two circles overlapping, so every node can be clicked.

    Radius ``r = 3 + 9·sqrt(mean activation / largest mean activation)``; the spring layout's
    ``[0, 1]²`` positions are scaled to the canvas, then :func:`separate_circles` pushes apart any
    two circles closer than ``r_i + r_j + gap`` (growing the canvas when they do not fit).

    Returns:
        ``{"width", "height", "x", "y", "r"}``, the last three one entry per node, in ``network.nodes`` order.
    """
    means = np.array([n.mean_activation for n in network.nodes], dtype=np.float64)
    radius = 3.0 + 9.0 * np.sqrt(means / max(float(means.max(initial=0.0)), 1e-9))
    xy = np.array([[n.x, n.y] for n in network.nodes], dtype=np.float64).reshape(-1, 2)
    xy, size = separate_circles(xy, radius, (width, height), gap=gap)
    return {
        "width": size[0],
        "height": size[1],
        "x": xy[:, 0].round(2).tolist(),
        "y": xy[:, 1].round(2).tolist(),
        "r": radius.round(2).tolist(),
    }


def separate_circles(
    unit_xy: np.ndarray, radius: np.ndarray, size: tuple[float, float], *, gap: float = 1.0, rounds: int = 300
) -> tuple[np.ndarray, tuple[float, float]]:
    """Circle centres in a ``size`` canvas (grown if needed) where ``‖c_i − c_j‖ ≥ r_i + r_j + gap`` for all pairs.

    ``unit_xy`` [n, 2] in ``[0, 1]²`` is scaled to the canvas (a margin of the largest radius); then,
    each round, every overlapping pair is pushed apart along the line of its centres by half its
    overlap each (coincident centres along a fixed angle per node), and centres are clamped inside.
    When ``rounds`` rounds leave an overlap, the canvas grows by 20 % and the pass repeats. The
    canvas starts at least large enough for the circles to cover at most 35 % of it. Only pairs
    closer than ``2·max r + gap`` can overlap; a k-d tree (:class:`scipy.spatial.cKDTree`) finds
    them each round, so a round costs about ``O(n log n)``, not the ``O(n²)`` of all pairs.

    >>> xy, size = separate_circles(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([5.0, 5.0]), (100, 100))
    >>> bool(np.linalg.norm(xy[0] - xy[1]) >= 11), size
    (True, (100.0, 100.0))
    """
    n = len(radius)
    width, height = float(size[0]), float(size[1])
    if n == 0:
        return np.zeros((0, 2)), (width, height)
    covered = float(np.sum(np.pi * (radius + gap) ** 2))
    grow = max(1.0, float(np.sqrt(covered / (0.35 * width * height))))
    width, height = width * grow, height * grow
    angle = np.arange(n) * 2.399963  # golden angle: coincident centres part in different directions
    fallback = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    while True:
        pad = float(radius.max()) + gap
        xy = pad + np.clip(unit_xy, 0.0, 1.0) * [width - 2 * pad, height - 2 * pad]
        for _ in range(rounds):
            move = overlap_push(xy, radius, gap, fallback)
            if move is None:
                return xy, (round(width, 2), round(height, 2))
            xy = np.clip(xy + move, radius[:, None] + gap / 2, [width, height] - radius[:, None] - gap / 2)
        width, height = width * 1.2, height * 1.2


def overlap_push(xy: np.ndarray, radius: np.ndarray, gap: float, fallback: np.ndarray) -> np.ndarray | None:
    """Each centre's move [n, 2] that parts its overlapping pairs, or None when no two circles overlap.

    A pair ``(i, j)`` overlaps when ``s = r_i + r_j + gap − ‖c_i − c_j‖ > 0``; then ``c_i`` moves by
    ``(s/2 + 10⁻³)·u`` and ``c_j`` by the opposite, ``u`` the unit vector from ``c_j`` to ``c_i``
    (``fallback_i − fallback_j`` when the centres coincide); a centre's moves are summed.

    >>> overlap_push(np.array([[0.0, 0.0], [4.0, 0.0]]), np.array([2.0, 3.0]), 1.0, np.eye(2)).round(3)
    array([[-1.001,  0.   ],
           [ 1.001,  0.   ]])
    >>> overlap_push(np.array([[0.0, 0.0], [9.0, 0.0]]), np.array([2.0, 3.0]), 1.0, np.eye(2)) is None
    True
    """
    reach = 2.0 * float(radius.max()) + gap
    i, j = cKDTree(xy).query_pairs(reach, output_type="ndarray").reshape(-1, 2).T
    delta = xy[i] - xy[j]
    distance = np.linalg.norm(delta, axis=1)
    short = radius[i] + radius[j] + gap - distance
    keep = short > 0
    if not keep.any():
        return None
    i, j, delta, distance, short = i[keep], j[keep], delta[keep], distance[keep], short[keep]
    direction = np.where(
        distance[:, None] > 1e-9, delta / np.maximum(distance, 1e-9)[:, None], fallback[i] - fallback[j]
    )
    push = (short / 2 + 1e-3)[:, None] * direction
    n = len(xy)
    return np.stack([np.bincount(i, push[:, a], n) - np.bincount(j, push[:, a], n) for a in (0, 1)], axis=1)


def _script_json(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(
    browser: FeatureBrowser,
    network: CoactivationNetwork | None = None,
    diagnostics: Diagnostics | None = None,
    *,
    title: str = "SAE features",
    fit: Mapping[str, Any] | None = None,
) -> str:
    """The page as one HTML string.

    Args:
        browser: :func:`~aquin_monitor.sae.browser.browse_features`' result.
        network: :func:`~aquin_monitor.sae.network.coactivation_network`' result (section left out if None).
        diagnostics: :func:`~aquin_monitor.sae.diagnose.diagnose`' result (section left out if None).
        title: the page title (escaped).
        fit: :func:`~aquin_monitor.sae.quality.corpus_fit`'s result (section left out if None).

    Returns:
        A complete, self-contained HTML document.
    """
    return render_page_data(page_data(browser, network, diagnostics, title=title, fit=fit))


def render_page_data(data: Mapping[str, Any]) -> str:
    """The page of :func:`page_data`'s plain ``data`` (titled ``data["title"]``), which it carries in the compact
    form of :func:`~aquin_monitor.sae.page_compact.compact_page_data`: each distinct text once."""
    block = _script_json(compact_page_data(data))
    return fill_placeholders(
        PAGE, {"TITLE": html.escape(data["title"]), "STYLE": STYLE, "DATA": block, "SCRIPT": SCRIPT}
    )


#: A placeholder of the page template: ``%NAME%``.
PLACEHOLDER = re.compile(r"%([A-Z]+)%")


def fill_placeholders(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``%NAME%`` replaced by ``values[NAME]`` in ONE pass over the template.

    The inserted values are never scanned again, so user text that happens to spell a placeholder
    (a corpus text ``%SCRIPT%``, a file name ``%DATA%``) stays text. (Chained ``str.replace`` calls
    would substitute the page's script into the data.) Every placeholder must have a value.

    >>> fill_placeholders("<b>%A%</b><i>%B%</i>", {"A": "%B%", "B": "x"})
    '<b>%B%</b><i>x</i>'
    """
    missing = set(PLACEHOLDER.findall(template)) - set(values)
    if missing:
        raise KeyError(f"no value for placeholder(s) {sorted(missing)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def analyse_corpus(
    sae: Any,
    embeddings: np.ndarray,
    texts: Sequence[str],
    *,
    examples: int = 20,
    npmi: float = 0.3,
    threshold: float = 0.9,
    min_support: int = 10,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> tuple[FeatureBrowser, CoactivationNetwork, Diagnostics]:
    """Everything the page shows for ``texts`` (their ``embeddings`` under ``sae``): the feature browser,
    the co-activation network (edges of NPMI ≥ ``npmi``) and the diagnostics (absorption at P(B | A) ≥
    ``threshold``), all from one pass of :func:`~aquin_monitor.sae.stats.stream_feature_stats`;
    ``min_support`` texts at least per pair/edge. :func:`analyse_rows` with the texts in memory."""
    return analyse_rows(
        sae,
        embeddings,
        texts,
        examples=examples,
        npmi=npmi,
        threshold=threshold,
        min_support=min_support,
        encode=encode,
    )


def analyse_rows(
    sae: Any,
    embeddings: np.ndarray | RowSource,
    texts: Sequence[str] | Mapping[int, str],
    *,
    corpus: Iterable[Sequence[str]] | None = None,
    examples: int = 20,
    npmi: float = 0.3,
    threshold: float = 0.9,
    min_support: int = 10,
    block_rows: int = 8192,
    polysemy_top: int = 20,
    encode: Callable[[list[str]], np.ndarray] | None = None,
    min_lift: float = 2.0,
    alpha: float = 0.05,
) -> tuple[FeatureBrowser, CoactivationNetwork, Diagnostics]:
    """The page's browser, network and diagnostics over a corpus of any size, in memory independent of its size.

    Args:
        sae: the SAE.
        embeddings: the corpus embeddings: an array, or a :class:`~aquin_monitor.rows.RowSource` (a store).
        texts: the corpus texts by row; for a corpus not held in memory, a mapping that reads a row's text
            when asked (only the top texts and absorption examples are asked for).
        corpus: the whole corpus as chunks of texts for the labels' background (default: ``[texts]``).
        examples, npmi, threshold, min_support: as :func:`analyse_corpus`.
        block_rows: rows encoded at a time.
        polysemy_top: top texts per feature the polysemy diagnostics measure.
        encode: the model's encoder: labels are key phrases with their AUC (default: c-TF-IDF labels).
        min_lift, alpha: an absorption pair is flagged at lift ≥ ``min_lift`` and BH q ≤ ``alpha``; a merged
            feature's split must beat random sets at p ≤ ``alpha``.
    """
    from .browser import browser_from_stats
    from .diagnose import diagnose
    from .network import coactivation_network
    from .stats import activation_blocks, stream_feature_stats

    source = ArrayRows(embeddings) if isinstance(embeddings, np.ndarray) else embeddings
    stats = stream_feature_stats(sae, source, examples=max(examples, polysemy_top), block_rows=block_rows)
    browser = browser_from_stats(stats, texts, corpus=corpus, examples=examples, embeddings=embeddings, encode=encode)
    network = coactivation_network(stats, threshold=npmi, min_support=min_support)
    found = diagnose(
        stats,
        embeddings,
        texts,
        threshold=threshold,
        min_support=min_support,
        top=polysemy_top,
        blocks=activation_blocks(sae, source, block_rows=block_rows),
        min_lift=min_lift,
        alpha=alpha,
    )
    return browser, network, found


def write_page(
    path: str | os.PathLike,
    browser: FeatureBrowser,
    network: CoactivationNetwork | None = None,
    diagnostics: Diagnostics | None = None,
    *,
    title: str = "SAE features",
    fit: Mapping[str, Any] | None = None,
) -> Path:
    """Write :func:`render_page`'s page to ``path`` atomically (never half-written); returns the path."""
    atomic_write_text(path, render_page(browser, network, diagnostics, title=title, fit=fit))
    return Path(path)


# An embedded page template (the page's HTML skeleton): left unwrapped, splitting it could change the markup.
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<title>%TITLE%</title><style>%STYLE%</style></head>
<body>
<h1 id="title"></h1><p id="summary"></p>
<section id="fit"><h2>Fit on this corpus</h2><p id="fit-warning" class="warning"></p>
<table id="fit-table"><thead><tr><th></th><th>this corpus</th><th>SAE's held-out data</th><th>PCA, same k</th></tr></thead><tbody></tbody></table>
<p id="fit-note"></p></section>
<nav><a href="#browser">Features</a> · <a href="#network">Co-activation network</a> · <a href="#diagnostics">Diagnostics</a></nav>
<section id="browser"><h2>Features</h2>
<p>Ranked by total activation over the corpus. Click a row for more examples.</p><p id="label-note"></p>
<label>Filter by label <input id="label-filter" type="search" placeholder="e.g. card"></label> <span id="shown"></span>
<div class="pager" id="features-pager"></div>
<table id="features"><thead><tr><th>#</th><th>feature</th><th>label</th><th title="top texts holding the label's first term (any term)">label support</th><th title="ROC AUC: the label's embedding separates the top texts from random texts">label AUC</th><th>total</th><th>frequency</th><th>mean</th><th>max</th><th>top texts</th></tr></thead><tbody></tbody></table>
</section>
<section id="network"><h2>Co-activation network</h2><p id="network-note"></p>
<div class="net"><div class="graph-box"><svg id="graph" viewBox="0 0 640 480" width="640" height="480" role="img" aria-label="co-activation network"></svg></div>
<div id="neighbours"><p>Click a node to list its neighbours.</p></div></div></section>
<section id="diagnostics"><h2>Diagnostics</h2><h3>Absorption pairs</h3><p id="absorption-note"></p>
<div class="pager" id="absorption-pager"></div>
<table id="absorption"><thead><tr><th>A</th><th>label A</th><th>B</th><th>label B</th><th>P(B | A)</th><th>P(B)</th><th>lift</th><th>q (BH)</th><th>verdict</th><th>texts with A</th><th>with both</th><th>examples</th></tr></thead><tbody></tbody></table>
<h3>Polysemy</h3><p id="polysemy-note"></p><div class="pager" id="polysemy-pager"></div>
<table id="polysemy"><thead><tr><th>feature</th><th>label</th><th>spread − baseline</th><th>spread z (random sets)</th><th>2-means silhouette</th><th>p (random sets)</th><th>merged?</th><th>side 1</th><th>side 2</th></tr></thead><tbody></tbody></table>
<h3>Merged features (two concepts)</h3><p id="merged-note"></p><div class="pager" id="merged-pager"></div>
<table id="merged"><thead><tr><th>feature</th><th>label</th><th>spread − baseline</th><th>spread z (random sets)</th><th>2-means silhouette</th><th>p (random sets)</th><th>merged?</th><th>side 1</th><th>side 2</th></tr></thead><tbody></tbody></table>
</section>
<script type="application/json" id="sae-data">%DATA%</script>
<script>%SCRIPT%</script>
</body></html>
"""  # noqa: E501

# An embedded page template (the page's style sheet): left unwrapped, its CSS rules read one group per line.
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1300px}
table{border-collapse:collapse;width:100%;margin:.5em 0}th,td{border-bottom:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr.feature{cursor:pointer}tr.feature:hover{background:#f6f9ff}tr.feature.open{background:#eef4ff}
td.num{text-align:right;font-variant-numeric:tabular-nums}ul.texts{margin:0;padding-left:1.1em}
tr.examples td{background:#fafcff}.label{font-weight:600;color:#1a4f8b}
.net{display:flex;gap:1em;align-items:flex-start}.graph-box{overflow:auto;max-width:760px;max-height:640px;flex:none}#graph{border:1px solid #ddd;background:#fff}
circle.node{cursor:pointer;stroke:#333;stroke-width:.6}circle.node.selected{stroke:#d00;stroke-width:2.5}
line.edge{stroke:#999;stroke-opacity:.5}#neighbours{min-width:300px;max-width:560px}
section{margin-top:1.5em}nav a{color:#1a4f8b}.pager{margin:.4em 0}.pager button{margin:0 .4em}.warning{color:#a40000;font-weight:600}#fit-table{width:auto}
"""  # noqa: E501

# An embedded page template (the page's script): left unwrapped, splitting it could change the JavaScript.
SCRIPT = r"""
// the page's data carries each text once and records as column tables (aquin_monitor/sae/page_compact.py);
// this rebuilds the plain records the page draws, as page_compact.expand_page_data does in Python
function expandPageData(C){
  'use strict';
  const T = C.texts, D = Object.assign({}, C);
  function records(table){return table.rows.map(function(row){const o = {}; table.columns.forEach(function(c, i){o[c] = row[i];}); return o;});}
  function texts(ids){return ids.map(i=>T[i]);}
  const SCORE = ['support_first', 'support_any', 'auc', 'n_top'];
  delete D.texts;
  D.features = records(C.features).map(function(f){
    const ids = f.examples[0], values = f.examples[1], s = f.label_score;
    f.examples = ids.map((i, j)=>({text: T[i], activation: values[j]}));
    if(s){f.label_score = {}; SCORE.forEach(function(name, j){f.label_score[name] = s[j];});}
    return f;});
  D.labels = {}; D.features.forEach(function(f){D.labels[String(f.index)] = f.label;});
  if(C.network) D.network = Object.assign({}, C.network, {nodes: records(C.network.nodes), edges: records(C.network.edges)});
  if(C.diagnostics){
    const G = C.diagnostics;
    function sides(rows){return records(rows).map(function(p){p.examples = p.examples.map(texts); return p;});}
    D.diagnostics = Object.assign({}, G, {
      absorption: records(G.absorption).map(function(p){p.examples = texts(p.examples); return p;}),
      polysemy: sides(G.polysemy), merged: sides(G.merged)});
  }
  return D;
}
(function(){
'use strict';
const D = expandPageData(JSON.parse(document.getElementById('sae-data').textContent));
function el(tag, text, cls){const e=document.createElement(tag); if(text!==undefined&&text!==null) e.textContent=String(text); if(cls) e.className=cls; return e;}
function fmt(x, d){return Number(x).toFixed(d===undefined?3:d);}
function pct(x){return (100*x).toFixed(2)+'%';}
function label(f){const l=D.labels[String(f)]; return l&&l.length? l.join(', ') : '—';}
// a table cell lists at most 3 texts of at most SHORT characters each (the whole text in its tooltip; a
// feature row's click shows every example in full): a page of long abstracts stays a page, not a scroll
const SHORT = 160;
function textList(items){const ul=el('ul',undefined,'texts');
  items.slice(0,3).forEach(function(t){const s=String(t), li=el('li', s.length>SHORT? s.slice(0,SHORT).trimEnd()+'…' : s); if(s.length>SHORT) li.title=s; ul.appendChild(li);});
  return ul;}
document.getElementById('title').textContent = D.title;
document.getElementById('summary').textContent = D.n_texts+' texts, '+D.num_latents+' features, '+D.features.length+' fired, '+D.dead+' never fired.';

// ---------------------------------------------------------------- browser
const body = document.querySelector('#features tbody');
D.features.forEach(function(f, rank){
  const tr = el('tr', undefined, 'feature'); tr.dataset.feature = f.index; tr.dataset.label = f.label.join(' ').toLowerCase();
  [rank+1, f.index].forEach(v=>tr.appendChild(el('td', v, 'num')));
  tr.appendChild(el('td', f.label.length? f.label.join(', ') : '—', 'label'));
  const S = f.label_score;
  tr.appendChild(el('td', S? Math.round(S.support_first*S.n_top)+'/'+S.n_top+' (any '+Math.round(S.support_any*S.n_top)+')' : '—', 'num'));
  tr.appendChild(el('td', S&&S.auc!==null? fmt(S.auc,2) : '—', 'num'));
  tr.appendChild(el('td', fmt(f.total_activation,1), 'num')); tr.appendChild(el('td', pct(f.frequency), 'num'));
  tr.appendChild(el('td', fmt(f.mean_activation), 'num')); tr.appendChild(el('td', fmt(f.max_activation), 'num'));
  const top = el('td'); top.appendChild(textList(f.examples.slice(0,3).map(e=>e.text))); tr.appendChild(top);
  const more = el('tr', undefined, 'examples'); more.hidden = true; more.dataset.feature = f.index;
  const cell = el('td'); cell.colSpan = 10; more.appendChild(cell);
  tr.addEventListener('click', function(){
    if(!cell.firstChild){
      cell.appendChild(el('p', f.examples.length+' top texts of feature '+f.index+' (activation: text)'));
      const ol = el('ol'); f.examples.forEach(e=>ol.appendChild(el('li', fmt(e.activation)+': '+e.text))); cell.appendChild(ol);
    }
    more.hidden = !more.hidden; tr.classList.toggle('open', !more.hidden);
  });
  body.appendChild(tr); body.appendChild(more);
});
// a long table shows PAGE rows at a time (the rest hidden, not removed) under previous/next buttons
const PAGE = 25;
function pager(id, what, show){
  const box = document.getElementById(id), prev = el('button', '◀ previous'), next = el('button', 'next ▶'), info = el('span');
  prev.type = next.type = 'button'; box.appendChild(prev); box.appendChild(info); box.appendChild(next);
  let page = 0, rows = [];
  function draw(){
    const pages = Math.max(1, Math.ceil(rows.length/PAGE)); page = Math.max(0, Math.min(page, pages-1));
    rows.forEach((r, i)=>show(r, i >= page*PAGE && i < (page+1)*PAGE));
    info.textContent = what+' '+(rows.length? page*PAGE+1 : 0)+'–'+Math.min(rows.length, (page+1)*PAGE)+' of '+rows.length+' (page '+(page+1)+' of '+pages+')';
    prev.disabled = page === 0; next.disabled = page >= pages-1; box.hidden = rows.length <= PAGE;
  }
  prev.addEventListener('click', ()=>{page--; draw();}); next.addEventListener('click', ()=>{page++; draw();});
  return function(list){rows = list; page = 0; draw();};
}
const filter = document.getElementById('label-filter');
const featurePages = pager('features-pager', 'features', function(tr, visible){
  tr.hidden = !visible; if(!visible){tr.nextElementSibling.hidden = true; tr.classList.remove('open');}
});
function applyFilter(){
  const q = filter.value.trim().toLowerCase(), keep = [];
  body.querySelectorAll('tr.feature').forEach(function(tr){
    if(!q || tr.dataset.label.indexOf(q) >= 0) keep.push(tr);
    else {tr.hidden = true; tr.nextElementSibling.hidden = true; tr.classList.remove('open');}
  });
  featurePages(keep);
  document.getElementById('shown').textContent = keep.length+' of '+D.features.length+' features match';
}
filter.addEventListener('input', applyFilter); applyFilter();
(function(){const L = D.label_summary, note = document.getElementById('label-note');
  let t = 'Labels: '+D.labeller+(D.labeller==='key phrases'? ' (phrases shared by the top texts, or a frame they begin with, chosen so that the model\'s embedding of the label singles them out from random texts)' : ' (top c-TF-IDF terms of the top texts against the corpus)')+'.';
  if(L){ t += ' Over '+L.n+' labels: first term in at least half of the top texts for '+pct(L.share_first_term_in_half)+'; median support of the first term '+pct(L.support_first_median)+' (quartiles '+pct(L.support_first_q1)+'–'+pct(L.support_first_q3)+')';
    if(L.auc_median!==null) t += '; median label AUC '+fmt(L.auc_median,2)+' (quartiles '+fmt(L.auc_q1,2)+'–'+fmt(L.auc_q3,2)+'; 0.5 = chance)';
    t += '; median cohesion of the top texts (mean pairwise cosine minus random texts\') '+fmt(L.cohesion_median)+'.'; }
  note.textContent = t;})();

// ---------------------------------------------------------------- network
const N = D.network, svg = document.getElementById('graph'), NS = 'http://www.w3.org/2000/svg';
const panel = document.getElementById('neighbours');
if(!N){ document.getElementById('network').hidden = true; }
else {
  document.getElementById('network-note').textContent = N.nodes.length+' features, '+N.edges.length+' edges ('+N.normalisation+'; edge when NPMI ≥ '+N.threshold+' on at least '+N.min_support+' shared texts), '+N.communities.length+' communities (Louvain). Size: mean activation; colour: frequency (log scale).';
  const P = D.drawing, pos = {}, radius = {};  // laid out without overlaps: each node's centre is its own
  svg.setAttribute('viewBox', '0 0 '+P.width+' '+P.height); svg.setAttribute('width', P.width); svg.setAttribute('height', P.height);
  N.nodes.forEach((n, i)=>{pos[n.index]=[P.x[i], P.y[i]]; radius[n.index]=P.r[i];});
  const adj = {}; N.nodes.forEach(n=>{adj[n.index]=[];});
  N.edges.forEach(function(e){
    adj[e.source].push({other:e.target, count:e.count, p:e.p_target_given_source, q:e.p_source_given_target, npmi:e.npmi});
    adj[e.target].push({other:e.source, count:e.count, p:e.p_source_given_target, q:e.p_target_given_source, npmi:e.npmi});
    const l = document.createElementNS(NS,'line'); l.setAttribute('class','edge');
    l.setAttribute('x1',pos[e.source][0]); l.setAttribute('y1',pos[e.source][1]); l.setAttribute('x2',pos[e.target][0]); l.setAttribute('y2',pos[e.target][1]);
    l.setAttribute('stroke-width', String(0.5+2*e.npmi)); svg.appendChild(l);
  });
  const freqs = N.nodes.map(n=>Math.log10(n.frequency)); const lo=Math.min.apply(null,freqs), hi=Math.max.apply(null,freqs);
  function colour(f){const t = hi>lo? (Math.log10(f)-lo)/(hi-lo) : 0.5; return 'hsl('+(260-220*t)+',70%,'+(35+25*t)+'%)';}
  function show(n, circle){
    svg.querySelectorAll('circle.selected').forEach(c=>c.classList.remove('selected')); circle.classList.add('selected');
    panel.textContent = '';
    panel.appendChild(el('h3', 'Feature '+n.index+': '+label(n.index)));
    panel.appendChild(el('p', 'fires on '+pct(n.frequency)+' of texts, mean activation '+fmt(n.mean_activation)+', community '+n.community));
    const list = adj[n.index].slice().sort((a,b)=>b.npmi-a.npmi);
    const t = el('table'); t.id = 'neighbour-list'; const h = el('tr');
    ['neighbour','label','texts with both','P(it | this)','P(this | it)','NPMI'].forEach(x=>h.appendChild(el('th',x))); t.appendChild(h);
    list.forEach(function(a){const r = el('tr'); r.dataset.feature = a.other;
      [a.other, label(a.other), a.count, pct(a.p), pct(a.q), fmt(a.npmi)].forEach(x=>r.appendChild(el('td',x))); t.appendChild(r);});
    panel.appendChild(t);
  }
  N.nodes.forEach(function(n){
    const c = document.createElementNS(NS,'circle'); c.setAttribute('class','node'); c.dataset.feature = n.index;
    c.setAttribute('cx',pos[n.index][0]); c.setAttribute('cy',pos[n.index][1]);
    c.setAttribute('r', String(radius[n.index])); c.setAttribute('fill', colour(n.frequency));
    const tip = document.createElementNS(NS,'title'); tip.textContent = 'feature '+n.index+': '+label(n.index); c.appendChild(tip);
    c.addEventListener('click', ()=>show(n, c)); svg.appendChild(c);
  });
}

// ---------------------------------------------------------------- fit on this corpus
const F = D.fit;
if(!F){ document.getElementById('fit').hidden = true; }
else {
  const M = F.metrics, fb = document.querySelector('#fit-table tbody');
  function cell(name){return M[name]===undefined||M[name]===null? '—' : fmt(M[name]);}
  [['FVU', 'sae/fvu', 'sae/held_out/fvu', 'sae/pca/fvu'], ['cos(x, x̂)', 'sae/cosine', 'sae/held_out/cosine', 'sae/pca/cosine']].forEach(function(row){
    const r = el('tr'); r.appendChild(el('th', row[0])); row.slice(1).forEach(n=>r.appendChild(el('td', cell(n), 'num'))); fb.appendChild(r);});
  document.getElementById('fit-warning').textContent = F.warning || '';
  document.getElementById('fit-note').textContent = 'PCA: '+M['sae/pca/n_components']+' principal components fitted on this corpus (the best rank-k linear reconstruction of it). Held-out: the SAE\'s quality.json ('+(M['sae/held_out/fvu']===undefined? 'absent' : 'retrieval kept '+cell('sae/held_out/retrieval/kept_ndcg@10'))+'). Definitions: docs/metrics.md.';
}

// ---------------------------------------------------------------- diagnostics
const G = D.diagnostics;
if(!G){ document.getElementById('diagnostics').hidden = true; }
else {
  const flagged = G.absorption.filter(p=>p.flagged).length;
  document.getElementById('absorption-note').textContent = G.absorption.length+' ordered pairs (A, B) where B fires on at least '+pct(G.threshold)+' of the texts A fires on; '+flagged+' flagged as absorption (lift P(B | A)/P(B) ≥ '+G.min_lift+' and Benjamini–Hochberg q ≤ '+G.alpha+' over '+G.pairs_tested+' pairs tested, one-sided hypergeometric test against B\'s base rate); the other '+(G.absorption.length-flagged)+' are what B\'s base rate explains.';
  const ab = document.querySelector('#absorption tbody'), pairs = [];
  G.absorption.forEach(function(p){const r = el('tr'); r.dataset.flagged = p.flagged? 'yes' : 'no';
    const verdict = p.flagged? 'absorption (lift '+fmt(p.lift,1)+', q '+p.q_value.toExponential(1)+')' : 'base rate (lift '+fmt(p.lift,2)+(p.lift>=G.min_lift? ', q '+p.q_value.toExponential(1) : '')+')';
    [p.source, label(p.source), p.target, label(p.target), pct(p.probability), pct(p.target_frequency), fmt(p.lift,2), p.q_value.toExponential(1), verdict, p.support, p.both].forEach(x=>r.appendChild(el('td',x)));
    const td = el('td'); td.appendChild(textList(p.examples)); r.appendChild(td); ab.appendChild(r); pairs.push(r);});
  pager('absorption-pager', 'pairs', (r, visible)=>{r.hidden = !visible;})(pairs);
  document.getElementById('polysemy-note').textContent = 'Spread: mean pairwise cosine distance of a feature\'s top texts, minus that of random corpus texts ('+fmt(G.baseline)+'); largest first; z: in standard deviations of the spread of random sets of as many corpus texts. Merged: a 2-means split of its top texts with a silhouette of at least '+G.silhouette_threshold+' that random sets of as many texts reach with p ≤ '+G.alpha+' at most.';
  function polysemyRows(selector, rows, pagerId){const tb = document.querySelector(selector), made = [];
    rows.forEach(function(p){const r = el('tr'); r.dataset.feature = p.feature;
      const why = 'silhouette '+fmt(p.silhouette,2)+(p.silhouette>=G.silhouette_threshold? ' ≥ ' : ' < ')+G.silhouette_threshold+', p '+fmt(p.silhouette_p,3)+(p.silhouette_p<=G.alpha? ' ≤ ' : ' > ')+G.alpha;
      [p.feature, label(p.feature), fmt(p.spread_excess), fmt(p.spread_z,1), fmt(p.silhouette), fmt(p.silhouette_p,3), (p.merged? 'yes (' : 'no (')+why+')'].forEach(x=>r.appendChild(el('td',x)));
      p.examples.forEach(function(side){const td = el('td'); td.appendChild(textList(side)); r.appendChild(td);}); tb.appendChild(r); made.push(r);});
    pager(pagerId, 'features', (r, visible)=>{r.hidden = !visible;})(made);}
  polysemyRows('#polysemy tbody', G.polysemy, 'polysemy-pager');
  document.getElementById('merged-note').textContent = G.merged.length+' features (highest silhouette first) whose top texts split into two groups with a silhouette of at least '+G.silhouette_threshold+'; examples of each side.';
  polysemyRows('#merged tbody', G.merged, 'merged-pager');
}
})();
"""  # noqa: E501
