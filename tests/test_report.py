"""HTML report and its figures, on synthetic run directories written in the on-disk run format.

The run directory is built here, by hand, in the documented layout (metrics.jsonl, events.jsonl,
snapshots/<step>/snapshot.json + arrays.npz), so these tests pin the format the report reads and
do not depend on the code that writes snapshots.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from aquin_monitor import plots
from aquin_monitor.report import RunDirectoryError, read_jsonl_tolerant, write_report
from aquin_monitor.signals.geometry import uniform_sphere_cosine_bin_probabilities

N_STEPS = 30
GROUPS = ("embeddings", "layer.00", "layer.01", "layer.02")
DEAD_STEP = 17
GAP_STEP = 25
EVIL_TEXT = '<script>alert("pwned")</script> & more'
BASE_ANISOTROPY = 0.125
CHECKPOINT_ANISOTROPY = 0.375
# Figures with every array present: 5 timeline + 8 per snapshot + 3 diff figures for the checkpoint.
TIMELINE_FIGURES, SNAPSHOT_FIGURES, DIFF_FIGURES = 5, 8, 3
EXPECTED_IMAGES = TIMELINE_FIGURES + SNAPSHOT_FIGURES + (SNAPSHOT_FIGURES + DIFF_FIGURES)


# ---------------------------------------------------------------------------------------------
# synthetic run directory


def _write_jsonl(path: Path, records) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def _metrics_rows(n_steps: int = N_STEPS) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for step in range(1, n_steps + 1):
        norms = {f"grad_norm/{g}": float(rng.uniform(0.5, 2.0) * (i + 1)) for i, g in enumerate(GROUPS)}
        if step == DEAD_STEP:
            norms["grad_norm/layer.01"] = 0.0
        norms["grad_norm/total"] = float(np.sqrt(sum(v * v for v in norms.values())))
        pos, neg = 0.6 + 0.01 * step, 0.2 + 0.012 * step
        row = {
            "step": step,
            "time": 1.7e9 + step,
            **norms,
            "contrastive/pos_sim": pos,
            "contrastive/neg_sim": neg,
            "contrastive/hard_neg_sim": neg + 0.1,
            "contrastive/gap": pos - neg,
            "contrastive/in_batch_acc": 0.8,
            "contrastive/loss": 2.0 / np.sqrt(step),
            "contrastive/hardest_neg_sim": neg + 0.2,
            "optim/lr/group.0": 1e-4 * min(1.0, step / 5),
            "optim/lr/group.1": 1e-5 * min(1.0, step / 5),
        }
        if step == DEAD_STEP:
            row["alarm/dead_layer"] = 1.0
        if step == GAP_STEP:
            row["alarm/gap_narrowing"] = 1.0
        rows.append(row)
    rows[21]["grad_norm/layer.02"] = None  # a non-finite norm is written as null
    del rows[22]["contrastive/hard_neg_sim"]  # any key may be missing on a line
    return rows


EVENTS = [
    {
        "step": DEAD_STEP,
        "kind": "dead_layer",
        "layer": "layer.01",
        "message": "layer.01 gradient is 0 <dead>",
        "value": 0.0,
    },
    {
        "step": GAP_STEP,
        "kind": "gap_narrowing",
        "layer": None,
        "message": "gap fell by 40% while loss fell",
        "value": 0.24,
    },
]


def _snapshot_arrays(rng: np.random.Generator, with_diff: bool) -> dict[str, np.ndarray]:
    n, d, q, layers, heads = 60, 16, 25, 3, 4
    labels = np.array(["sports", "science & tech", "<world>"])[np.arange(n) % 3]
    embeddings = rng.normal(size=(n, d)).astype(np.float32) + 0.5
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    i, j = np.triu_indices(n, k=1)
    edges = np.linspace(-1.0, 1.0, 41)
    counts, _ = np.histogram(np.sum(unit[i] * unit[j], axis=1), bins=edges)
    singular = np.linalg.svd(embeddings - embeddings.mean(0), compute_uv=False)
    entropy = rng.uniform(0.2, 2.0, size=(layers, heads))
    arrays = {
        "embeddings": embeddings,
        "umap": rng.normal(size=(n, 2)).astype(np.float32) + np.arange(n)[:, None] % 3 * 3,
        "labels": labels,
        "ood_score": rng.uniform(0.0, 1.0, size=n).astype(np.float32),
        "pair_hist_counts": counts,
        "pair_hist_edges": edges,
        "pair_hist_baseline": uniform_sphere_cosine_bin_probabilities(edges, d),
        "pca_cumulative": np.cumsum(singular**2) / np.sum(singular**2),
        "layer_similarity": np.array([0.9, 0.5, 0.4, 0.35]),
        "attention_entropy": entropy,
        "attention_entropy_normalized": entropy / np.log(12.0),
        "first_rank": rng.integers(1, 150, size=q),
        "hard_negative_gap": rng.normal(0.05, 0.1, size=q),
    }
    if with_diff:
        arrays.update(
            centroid_base_2d=rng.normal(size=(3, 2)),
            centroid_now_2d=rng.normal(size=(3, 2)),
            centroid_labels=np.array(["sports", "science & tech", "<world>"]),
            sim_base_values=rng.normal(0.1, 0.1, size=500),
            sim_now_values=rng.normal(0.3, 0.1, size=500),
            rank_before=rng.integers(1, 100, size=q),
            rank_after=rng.integers(1, 100, size=q),
        )
    return arrays


def _write_snapshot(run_dir: Path, step: int, tag: str, anisotropy: float, arrays: dict | None) -> Path:
    directory = run_dir / "snapshots" / str(step)
    directory.mkdir(parents=True)
    metrics = {
        "geometry/anisotropy": anisotropy,
        "geometry/id_pca95": 9.0,
        "geometry/effective_rank": 12.5,
        "geometry/uniformity": -2.5,
        "geometry/ood_fraction": 0.05,
        "attention/collapsed_heads": 1.0,
        "retrieval/ndcg@10": 0.5 if tag == "base" else 0.625,
        "retrieval/mrr@10": 0.4,
    }
    if tag != "base":
        metrics.update({"drift/base/cka": 0.9, "drift/base/knn_overlap@10": 0.7, "drift/base/score": 0.2})
    record = {
        "step": step,
        "tag": tag,
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "metrics": metrics,
        "details": {
            "ood_flagged": [
                {"index": 3, "text": EVIL_TEXT, "score": 0.91},
                {"index": 7, "text": "plain text", "score": 0.74},
            ],
            "flagged_heads": [{"layer": 1, "head": 2, "kind": "collapsed", "entropy": 0.01}],
            "retrieval_by_category": {"<cat>": {"retrieval/ndcg@10": 0.5}},
            "rogue_dimensions": [{"dim": 5, "share": 0.4}],
        },
    }
    (directory / "snapshot.json").write_text(json.dumps(record), encoding="utf-8")
    if arrays is not None:
        np.savez(directory / "arrays.npz", **arrays)
    return directory


def build_run(run_dir: Path, *, metrics: bool = True, events: bool = True, snapshots: bool = True) -> Path:
    """A complete synthetic run: 30 logged steps with two alarms, a base snapshot at step 0 and a
    checkpoint snapshot at step 30, every array present."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if metrics:
        # the snapshot runner logs each snapshot's metrics into metrics.jsonl at its step, as well
        snapshot_rows = [
            {"step": 0, "time": 1.7e9, "geometry/anisotropy": BASE_ANISOTROPY},
            {"step": N_STEPS, "time": 1.7e9 + 99, "geometry/anisotropy": CHECKPOINT_ANISOTROPY},
        ]
        _write_jsonl(run_dir / "metrics.jsonl", snapshot_rows[:1] + _metrics_rows() + snapshot_rows[1:])
    if events:
        _write_jsonl(run_dir / "events.jsonl", EVENTS)
    if snapshots:
        rng = np.random.default_rng(1)
        _write_snapshot(run_dir, 0, "base", BASE_ANISOTROPY, _snapshot_arrays(rng, with_diff=False))
        _write_snapshot(run_dir, N_STEPS, "checkpoint", CHECKPOINT_ANISOTROPY, _snapshot_arrays(rng, with_diff=True))
    return run_dir


class _Collector(HTMLParser):
    """Every start tag with its attributes, and the ids, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def named(self, name):
        return [attrs for tag, attrs in self.tags if tag == name]

    def ids(self):
        return {attrs["id"] for _, attrs in self.tags if "id" in attrs}


def _parse(text: str) -> _Collector:
    collector = _Collector()
    collector.feed(text)
    collector.close()
    return collector


def _section(text: str, anchor: str) -> str:
    start = text.index(f'id="{anchor}"')
    end = text.find("<section", start)
    return text[start : end if end >= 0 else len(text)]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, str]:
    run_dir = build_run(tmp_path_factory.mktemp("run") / "run")
    path = write_report(run_dir)
    return path, path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# the report


def test_report_is_one_self_contained_file(full_report):
    path, text = full_report
    assert path.name == "report.html"
    page = _parse(text)
    references = [attrs.get(name) or "" for _, attrs in page.tags for name in ("src", "href") if name in attrs]
    assert references, "the page should at least link its own sections"
    assert not [r for r in references if r.startswith(("http://", "https://", "//"))]
    assert "http://" not in text and "https://" not in text
    assert all(r.startswith(("#", "data:image/png;base64,")) for r in references)
    assert not page.named("script") and not page.named("link")


def test_report_embeds_every_expected_figure_as_png(full_report):
    _, text = full_report
    images = _parse(text).named("img")
    assert len(images) == EXPECTED_IMAGES == 24
    for image in images:
        payload = base64.b64decode(image["src"].split(",", 1)[1], validate=True)
        assert payload[:8] == b"\x89PNG\r\n\x1a\n"
        assert image["alt"]
    # nothing was skipped for a missing array, nothing failed to draw
    assert "Not in arrays.npz" not in text and "not drawn" not in text and "nothing to draw" not in text


def test_report_has_header_timeline_and_snapshot_sections(full_report):
    _, text = full_report
    page = _parse(text)
    assert {"summary", "timeline", "alarms", "snapshot-0", "snapshot-30"} <= page.ids()
    assert "problems" not in page.ids()
    header = _section(text, "summary")
    assert "sentence-transformers/all-MiniLM-L6-v2" in header
    assert f"{N_STEPS} logged steps (1 – {N_STEPS})" in header
    assert "dead_layer: 1" in header and "gap_narrowing: 1" in header
    assert text.index('id="snapshot-0"') < text.index('id="snapshot-30"')
    assert "Snapshot at step 0 (base)" in text and "Snapshot at step 30 (checkpoint)" in text
    # the diff block is for the checkpoint only
    assert "Diff against the base model" not in _section(text, "snapshot-0")
    assert "Diff against the base model" in _section(text, "snapshot-30")


def test_alarms_table_lists_each_alarm_escaped(full_report):
    _, text = full_report
    alarms = text[text.index('id="alarms"') : text.index('id="snapshot-0"')]
    assert "layer.01 gradient is 0 &lt;dead&gt;" in alarms
    assert "gap fell by 40% while loss fell" in alarms
    rows = [cells for cells in _table_rows(alarms)]
    assert [(r[0], r[2]) for r in rows] == [(str(DEAD_STEP), "layer.01"), (str(GAP_STEP), "—")]


def _table_rows(fragment: str) -> list[list[str]]:
    """Cell texts of each body row of the first table in ``fragment``."""

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell, self.in_body, self.done = [], None, False, False

        def handle_starttag(self, tag, attrs):
            if self.done:
                return
            if tag == "tbody":
                self.in_body = True
            elif tag == "tr" and self.in_body:
                self.rows.append([])
            elif tag == "td" and self.in_body:
                self.cell = ""

        def handle_endtag(self, tag):
            if tag == "td" and self.cell is not None:
                self.rows[-1].append(self.cell.strip())
                self.cell = None
            elif tag == "table" and self.in_body:
                self.done, self.in_body = True, False

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    parser = Rows()
    parser.feed(fragment)
    return parser.rows


def test_user_text_is_escaped(full_report):
    _, text = full_report
    assert EVIL_TEXT not in text
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; more" in text
    assert "&lt;cat&gt;" in text
    assert "<details open><summary>2 inputs flagged, highest OOD score first</summary>" in text
    page = _parse(text)
    assert not page.named("script")
    # the browser-side text is exactly the original string
    assert EVIL_TEXT in "".join(page.text)


def test_metrics_table_shows_change_against_base(full_report):
    _, text = full_report
    checkpoint = _section(text, "snapshot-30")
    rows = {r[0].split(" ", 1)[0]: r[1:] for r in _table_rows(checkpoint[checkpoint.index("<h4>geometry</h4>") :])}
    assert rows["geometry/anisotropy"] == ["0.375", f"{CHECKPOINT_ANISOTROPY - BASE_ANISOTROPY:+.4g}"]
    assert rows["geometry/id_pca95"] == ["9", "0"]
    retrieval = {
        r[0].split(" ", 1)[0]: r[1:] for r in _table_rows(checkpoint[checkpoint.index("<h4>retrieval</h4>") :])
    }
    assert retrieval["retrieval/ndcg@10"] == ["0.625", "+0.125"]
    drift = {r[0].split(" ", 1)[0]: r[1:] for r in _table_rows(checkpoint[checkpoint.index("<h4>drift</h4>") :])}
    assert drift["drift/base/cka"] == ["0.9"]  # drift is already a comparison: no delta column
    base = _section(text, "snapshot-0")
    base_rows = {r[0].split(" ", 1)[0]: r[1:] for r in _table_rows(base[base.index("<h4>geometry</h4>") :])}
    assert base_rows["geometry/anisotropy"] == ["0.125"]


def test_broken_jsonl_line_is_named_and_the_rest_is_drawn(tmp_path):
    run_dir = build_run(tmp_path / "run", snapshots=False)
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 31, "contrastive/loss": \n')  # line 33: a crash cut it short
        handle.write("[1, 2]\n")  # line 34: JSON, but not an object
    text = write_report(run_dir).read_text(encoding="utf-8")
    problems = _section(text, "problems")
    assert "metrics.jsonl:33: invalid JSON" in problems
    assert "metrics.jsonl:34: expected a JSON object, got list" in problems
    assert len(_parse(text).named("img")) == TIMELINE_FIGURES
    assert "No snapshots in this run directory" in text


def test_read_jsonl_tolerant_returns_records_and_problems(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"step": 1}\n\nnot json\n{"step": 2}\n', encoding="utf-8")
    records, problems = read_jsonl_tolerant(path)
    assert records == [{"step": 1}, {"step": 2}]
    assert len(problems) == 1 and problems[0].startswith("events.jsonl:3: invalid JSON")


def test_run_with_only_snapshots_renders_a_note_for_the_timeline(tmp_path):
    run_dir = build_run(tmp_path / "run", metrics=False, events=False)
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "No metrics.jsonl in this run directory" in _section(text, "timeline")
    assert len(_parse(text).named("img")) == SNAPSHOT_FIGURES * 2 + DIFF_FIGURES


def test_empty_run_directory_renders_notes(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "No metrics.jsonl" in text and "No snapshots in this run directory" in text
    assert "No events.jsonl" in text and "no events.jsonl: not recorded" in _section(text, "summary")
    assert not _parse(text).named("img")


def test_missing_arrays_and_broken_snapshot_json_are_notes(tmp_path):
    run_dir = build_run(tmp_path / "run")
    checkpoint = run_dir / "snapshots" / str(N_STEPS)
    arrays = dict(np.load(checkpoint / "arrays.npz"))
    for key in ("umap", "rank_before", "pca_cumulative"):
        del arrays[key]
    arrays["layer_similarity"] = np.zeros((2, 2))  # wrong shape: that one figure fails, the rest is drawn
    np.savez(checkpoint / "arrays.npz", **arrays)
    broken = run_dir / "snapshots" / "40"
    broken.mkdir()
    (broken / "snapshot.json").write_text("{not json", encoding="utf-8")
    text = write_report(run_dir).read_text(encoding="utf-8")
    section = _section(text, "snapshot-30")
    assert "Not in arrays.npz, so not drawn" in section
    assert "UMAP by label (needs umap)" in section and "Rank changes base → now (needs rank_before)" in section
    assert "Layer-wise similarity: not drawn (ValueError" in section
    # UMAP by label, UMAP by OOD, PCA, layer similarity and rank changes are missing from the checkpoint
    assert len(_parse(text).named("img")) == EXPECTED_IMAGES - 5
    assert "snapshots/40/snapshot.json: could not be read" in _section(text, "problems")


def test_events_missing_falls_back_to_alarm_keys_of_metrics(tmp_path):
    run_dir = build_run(tmp_path / "run", events=False, snapshots=False)
    text = write_report(run_dir).read_text(encoding="utf-8")
    alarms = text[text.index('id="alarms"') :]
    assert "No events.jsonl" in alarms
    assert [r[:2] for r in _table_rows(alarms)] == [[str(DEAD_STEP), "dead_layer"], [str(GAP_STEP), "gap_narrowing"]]
    header = _section(text, "summary")
    assert "dead_layer: 1" in header and "counted from alarm/&lt;kind&gt; keys of metrics.jsonl" in header


def test_not_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirectoryError, match="does not exist"):
        write_report(tmp_path / "nope")
    assert issubclass(RunDirectoryError, ValueError)


def test_report_is_written_atomically(tmp_path, monkeypatch):
    run_dir = build_run(tmp_path / "run", snapshots=False)
    out = tmp_path / "out" / "my-report.html"
    assert write_report(run_dir, out) == out
    first = out.read_text(encoding="utf-8")
    assert sorted(p.name for p in out.parent.iterdir()) == ["my-report.html"]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(run_dir, out)
    assert out.read_text(encoding="utf-8") == first  # the old report is intact
    assert sorted(p.name for p in out.parent.iterdir()) == ["my-report.html"]  # no temporary left


# ---------------------------------------------------------------------------------------------
# the browser test: Debian's chromium opens the report offline


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not on PATH: the HTML report browser test needs Debian's chromium. "
            "Install it with `apt-get update && apt-get install -y chromium` (CI does this in .ci/run)."
        )
    return path


def _run_chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(profile)}
    )


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "Uncaught" in line or "ERROR:CONSOLE" in line]


@pytest.mark.chromium
def test_chromium_detects_console_errors_on_a_page_that_has_them(tmp_path):
    """The console-error check below must be able to fail: a page that throws is caught by it."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><p>x</p><script>throw new Error("boom");</script></body></html>')
    result = _run_chromium(page, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert any("boom" in line for line in _console_errors(result.stderr)), result.stderr[-3000:]


@pytest.mark.chromium
def test_report_opens_in_headless_chromium(full_report, tmp_path):
    import matplotlib.image

    path, text = full_report
    screenshot = tmp_path / "report.png"
    result = _run_chromium(
        path,
        tmp_path / "profile",
        "--enable-logging=stderr",
        "--v=0",
        f"--screenshot={screenshot}",
        "--window-size=1280,2000",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not _console_errors(result.stderr), _console_errors(result.stderr)
    pixels = matplotlib.image.imread(screenshot)
    assert pixels.shape[:2] == (2000, 1280)
    rgb = np.round(pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours = np.unique(rgb, axis=0)
    assert len(colours) > 50, f"screenshot looks blank: {len(colours)} distinct colours"
    not_white = np.mean(np.any(rgb < 250, axis=1))
    assert not_white > 0.05, f"screenshot is {1 - not_white:.1%} white"
    keep = os.environ.get("AQUIN_REPORT_SCREENSHOT")
    if keep:  # for a person to look at: AQUIN_REPORT_SCREENSHOT=/tmp/report.png pytest -k chromium
        shutil.copy(screenshot, keep)

    dom = _run_chromium(path, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-3000:]
    loaded = _parse(dom.stdout)
    assert len(loaded.named("img")) == EXPECTED_IMAGES
    assert {"summary", "timeline", "snapshot-0", "snapshot-30"} <= loaded.ids()
    assert not loaded.named("script")


# ---------------------------------------------------------------------------------------------
# issue 15: the story at the top, the timeline, aligned layouts, long texts


def test_before_after_table_is_first_and_compares_every_snapshot_with_the_base(full_report):
    from aquin_monitor.report import metric_meaning

    _, text = full_report
    assert text.index('id="overview"') < text.index('id="timeline"') < text.index('id="snapshot-0"')
    overview = _section(text, "overview")
    rows = {r[0]: r[1:] for r in _table_rows(overview)}
    # headline metrics first, in the documented order, then the other retrieval/ and geometry/ ones
    assert list(rows)[:3] == ["retrieval/ndcg@10", "retrieval/mrr@10", "geometry/anisotropy"]
    assert all(name.startswith(("retrieval/", "geometry/")) for name in rows)
    meaning, base, checkpoint = rows["geometry/anisotropy"]
    assert meaning == metric_meaning("geometry/anisotropy") and "mean cosine" in meaning
    assert base == "0.125" and checkpoint == f"0.375 ({CHECKPOINT_ANISOTROPY - BASE_ANISOTROPY:+.4g})"
    assert rows["retrieval/ndcg@10"][1:] == ["0.5", "0.625 (+0.125)"]
    assert rows["geometry/id_pca95"][1:] == ["9", "9 (0)"]
    assert "step 0 (base)" in overview and "step 30 (checkpoint)" in overview


def test_every_metric_in_the_tables_has_a_meaning(full_report):
    from aquin_monitor.report import metric_meaning

    _, text = full_report
    for anchor in ("snapshot-0", "snapshot-30"):
        section = _section(text, anchor)
        groups = [g for g in ("geometry", "retrieval", "drift", "attention") if f"<h4>{g}</h4>" in section]
        assert len(groups) == (3 if anchor == "snapshot-0" else 4)
        for group in groups:
            for row in _table_rows(section[section.index(f"<h4>{group}</h4>") :]):
                name, _, meaning = row[0].partition(" ")
                assert meaning.strip() and meaning.strip() == metric_meaning(name), name
    assert "the last layer is the one the contrastive objective shaped" in metric_meaning("layers/similarity.05")


def test_timeline_has_learning_rate_and_total_gradient_norm_with_captions(full_report):
    _, text = full_report
    timeline = _section(text, "timeline")
    captions = [c for c in _parse(timeline).text if c.strip()]
    for caption in (
        "Learning rate",
        "Total gradient norm",
        "Positive / negative similarity, hardest negative, gap and in-batch accuracy",
    ):
        assert caption in captions, caption
    assert timeline.count("Look for:") == TIMELINE_FIGURES
    rows = _metrics_rows()
    figure = plots.scalar_curves(
        rows, ["optim/lr/group.0", "optim/lr/group.1", "optim/lr/absent"], title="lr", ylabel="lr", log_scale=True
    )
    lines = {l.get_label(): l for l in figure.axes[0].get_lines()}
    assert set(lines) == {"optim/lr/group.0", "optim/lr/group.1"} and figure.axes[0].get_yscale() == "log"
    np.testing.assert_allclose(lines["optim/lr/group.1"].get_ydata(), [r["optim/lr/group.1"] for r in rows])
    with pytest.raises(plots.NoDataError):
        plots.scalar_curves(rows, ["optim/lr"], title="lr", ylabel="lr")


def test_snapshot_captions_say_what_to_look_for(full_report):
    from aquin_monitor.report import FIGURE_HINTS

    _, text = full_report
    checkpoint = _section(text, "snapshot-30")
    for spec in plots.SNAPSHOT_FIGURES:
        if any(key.startswith("_") for key in spec.needs):  # drawn from details this run has not (the SAE movers)
            assert html_escape(spec.caption) not in checkpoint, spec.name
            continue
        assert f"<b>{html_escape(spec.caption)}</b>" in checkpoint, spec.name
        assert html_escape(FIGURE_HINTS[spec.name]) in checkpoint, spec.name


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_align_layouts_undoes_rotation_scale_and_shift_and_chains():
    from aquin_monitor.report import align_layouts

    rng = np.random.default_rng(3)
    first = rng.normal(size=(40, 2))
    angle = 1.1
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    second = 0.25 * (first @ turn) + np.array([7.0, -3.0])
    mirrored = (first * np.array([-1.0, 1.0])) * 4.0 - 1.0  # a reflection is allowed too
    other_probe = rng.normal(size=(10, 2))
    aligned = align_layouts([first, second, mirrored, other_probe])
    np.testing.assert_allclose(aligned[0], first)
    np.testing.assert_allclose(aligned[1], first, atol=1e-9)
    np.testing.assert_allclose(aligned[2], first, atol=1e-9)
    np.testing.assert_allclose(aligned[3], other_probe)  # another shape starts a new chain, as is
    # a noisy layout: the least-squares fit, checked against the closed form computed here
    noisy = second + rng.normal(scale=0.05, size=second.shape)
    got = align_layouts([first, noisy])[1]
    a, b = first - first.mean(0), noisy - noisy.mean(0)
    u, sigma, vt = np.linalg.svd(b.T @ a)
    expected = (sigma.sum() / np.sum(b * b)) * b @ (u @ vt) + first.mean(0)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_report_draws_each_umap_aligned_to_the_previous_snapshot(tmp_path, monkeypatch):
    run_dir = build_run(tmp_path / "run")
    base_umap = np.load(run_dir / "snapshots" / "0" / "arrays.npz")["umap"].astype(np.float64)
    folder = run_dir / "snapshots" / "30"
    arrays = dict(np.load(folder / "arrays.npz"))
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])
    arrays["umap"] = (2.0 * base_umap @ turn + 10.0).astype(np.float32)
    np.savez(folder / "arrays.npz", **arrays)
    drawn = []
    original = plots.umap_by_label
    monkeypatch.setattr(
        plots, "umap_by_label", lambda umap, labels=None: drawn.append(np.asarray(umap)) or original(umap, labels)
    )
    write_report(run_dir)
    assert len(drawn) == 2
    np.testing.assert_allclose(drawn[1], base_umap, atol=1e-4)  # float32 storage


def test_long_ood_texts_are_cut_and_unfold(tmp_path):
    from aquin_monitor.report import OOD_TEXT_CHARS

    run_dir = build_run(tmp_path / "run", metrics=False, events=False)
    record_path = run_dir / "snapshots" / "30" / "snapshot.json"
    record = json.loads(record_path.read_text())
    long_text = "<b>abstract</b> " + "word " * 200
    record["details"]["ood_flagged"].append({"index": 9, "text": long_text, "score": 0.5})
    record_path.write_text(json.dumps(record))
    text = write_report(run_dir).read_text()
    section = _section(text, "snapshot-30")
    cut = html_escape(long_text[:OOD_TEXT_CHARS].rstrip()) + "…"
    assert f'<details class="long-text"><summary><span class="probe">{cut}</span>' in section
    assert html_escape(long_text) in section  # the whole text, once, inside the fold
    assert section.count(html_escape(long_text)) == 1
    assert f'<span class="probe">{html_escape("plain text")}</span>' in section  # short texts stay whole


# an embedded page script (JS injected into the report page), kept verbatim as one string
MEASURE = """<script>
window.addEventListener("load", () => {
  const images = [...document.querySelectorAll("figure img")].map(i => [i.naturalWidth, i.getBoundingClientRect().width]);
  const folded = [...document.querySelectorAll("details.long-text")].map(d => [d.open, d.lastElementChild.checkVisibility()]);
  const overview = document.getElementById("overview").getBoundingClientRect().top;
  const timeline = document.getElementById("timeline").getBoundingClientRect().top;
  document.body.setAttribute("data-measure", JSON.stringify({images, folded, overview, timeline, width: window.innerWidth}));
});
</script>"""  # noqa: E501


@pytest.mark.chromium
def test_report_at_1400px_shows_figures_at_full_size_and_folds_long_texts(tmp_path):
    """Measured in the browser: a legend drawn at 8-9 pt stays readable only if the figure is not shrunk."""
    run_dir = build_run(tmp_path / "run")
    record_path = run_dir / "snapshots" / "30" / "snapshot.json"
    record = json.loads(record_path.read_text())
    record["details"]["ood_flagged"].append({"index": 9, "text": "long abstract " * 40, "score": 0.5})
    record_path.write_text(json.dumps(record))
    page = tmp_path / "measured.html"
    page.write_text(write_report(run_dir).read_text().replace("</body>", MEASURE + "</body>"))
    result = _run_chromium(
        page, tmp_path / "profile", "--window-size=1400,1000", "--virtual-time-budget=10000", "--dump-dom"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (body,) = [attrs for tag, attrs in _parse(result.stdout).tags if tag == "body"]
    measure = json.loads(body["data-measure"])
    assert measure["width"] == 1400
    assert len(measure["images"]) == EXPECTED_IMAGES
    for natural, shown in measure["images"]:
        assert natural > 0 and shown / natural >= 0.99, (natural, shown)  # no figure scaled down at 1,400 px
    assert measure["folded"] == [[False, False]]  # the long text is folded: its full version is not visible
    assert measure["overview"] < measure["timeline"]


def test_sae_gained_and_lost_tables_are_labelled_supported_and_folded(tmp_path):
    """Issue 25 point 5: unlabelled tables of every moved feature, 4 vs 8 texts of 600 included."""
    from aquin_monitor.report import SAE_MOVERS_SHOWN
    from aquin_monitor.sae.monitoring import SaeSnapshot, feature_movers

    n, features = 600, 40
    before = np.r_[np.zeros(12), np.full(28, 100)].astype(int)
    after = np.r_[np.arange(12) * 10 + 20, np.full(27, 100), 4].astype(int)  # 12 born (20..130 texts), 1 lost
    before[-1], after[-2] = 8, 100  # feature 39: 8 -> 4 texts (below the support), unchanged 38

    def snap(counts):
        return SaeSnapshot({}, counts / n, np.ones(features), np.zeros((features, 1), int), np.ones((features, 1)))

    labels = [f"label {i}" for i in range(features)]
    labels[11] = '$$ <script>alert("x")</script>'
    movers = feature_movers(snap(before), snap(after), [f"t{i}" for i in range(n)], labels=labels)
    assert [e["feature"] for e in movers["gained"]] == list(range(11, -1, -1)) and movers["lost"] == []
    old_format = [{"feature": 3, "frequency_before": 0.5, "frequency_after": 0.25, "top_texts": ["x"]}]
    run_dir = build_run(tmp_path / "run", metrics=False, events=False)
    record_path = run_dir / "snapshots" / "30" / "snapshot.json"
    record = json.loads(record_path.read_text())
    record["details"].update({"sae/gained": movers["gained"], "sae/lost": old_format})
    record_path.write_text(json.dumps(record))
    section = _section(write_report(run_dir).read_text(), "snapshot-30")
    gained = section[section.index("<h4>SAE features gained") : section.index("<h4>SAE features lost")]
    shown = _table_rows(gained)
    assert len(shown) == SAE_MOVERS_SHOWN == 5
    assert shown[0][:3] == ["11", '$$ <script>alert("x")</script>', "0 → 130 of 600"]  # label as text
    assert "<script>alert" not in gained and "at least 18 of the 600 probe texts" in gained
    folded = gained[gained.index("<details>") :]
    assert "7 more" in folded and [row[0] for row in _table_rows(folded)] == [str(i) for i in range(6, -1, -1)]
    lost = section[section.index("<h4>SAE features lost") :]
    assert _table_rows(lost)[0][:3] == ["3", "—", "0.5 → 0.25"]  # a snapshot written before: frequencies
