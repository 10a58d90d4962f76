"""A self-contained HTML report of a run directory: one file, opens offline, no script.

What it reads (every piece optional; a missing or broken piece becomes a note in the page)::

    RUN_DIR/metrics.jsonl                     one object per optimizer step ({"step", "time", metric: value})
    RUN_DIR/events.jsonl                      one object per alarm ({"step", "kind", "layer", "message", "value"})
    RUN_DIR/snapshots/<step>/snapshot.json    {"step", "tag": "base"|"checkpoint", "model", "metrics", "details"}
    RUN_DIR/snapshots/<step>/arrays.npz       arrays for the figures (see :mod:`aquin_monitor.plots`)

What it writes: on the first line, the run's retrieval verdict (did retrieval get better from the base
model to the last snapshot: NDCG@10 per query, paired bootstrap interval, queries better / worse, as
:mod:`aquin_monitor.verdict` recorded it; or why there is none and how to give a retrieval set), then a
header (model, steps, alarm counts), a before/after table of the retrieval and
geometry metrics across every snapshot (change against the base, and a one-line meaning of each
metric), the training timeline (loss; positive / negative similarity, hardest negative, gap and
in-batch accuracy; learning rate; total gradient norm; gradient-norm heatmap; alarms table), then
one section per snapshot in step order: its metrics with the change against the base snapshot, its
figures (UMAP layouts aligned to the previous snapshot's, so a point's movement means something),
the diff figures against the base, the inputs flagged out-of-distribution (long texts folded) and
the flagged attention heads. Each figure's caption says what to look for.

Figures are PNG embedded as base64 ``data:`` URIs and the CSS is inline, so the page has no
external reference at all; every piece of text from the run (model names, labels, probe texts,
alarm messages) is HTML-escaped. JSON Lines are read line by line: a line that does not parse is
skipped and named (``file:line``) in the page. The file is written atomically (a temporary file in
the same directory, then :func:`os.replace`), so a reader never sees half a report.

>>> import tempfile
>>> run_dir = tempfile.mkdtemp()
>>> _ = open(f"{run_dir}/metrics.jsonl", "w").write('{"step": 1, "contrastive/loss": 2.0}\\n{"step": 2,\\n')
>>> text = write_report(run_dir).read_text()
>>> "metrics.jsonl:2" in text and "<script" not in text
True
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aquin_monitor import plots
from aquin_monitor import snapshot_keys as keys
from aquin_monitor.atomic import atomic_write_text
from aquin_monitor.jsonio import iter_jsonl
from aquin_monitor.metric_registry import ALARM_COLOURS, metric_meaning
from aquin_monitor.signals.two_sample import drift_test_sentence
from aquin_monitor.snapshot_record import (
    SNAPSHOT_FAMILIES,
    SnapshotView,
    recover_snapshots,
)
from aquin_monitor.verdict import run_verdict

__all__ = [
    "RunDirectoryError",
    "write_report",
    "render_report",
    "read_jsonl_tolerant",
    "load_run",
    "Run",
    "SnapshotView",
    "metric_meaning",
    "align_layouts",
]

REPORT_NAME = "report.html"
#: Resolution of the embedded PNGs: sharp enough on screen, a few tens of KB per figure.
FIGURE_DPI = 90
#: Longest tables (alarms, OOD inputs) show this many rows and say how many were left out.
MAX_TABLE_ROWS = 200

#: Lists longer than this (flagged inputs) start folded.
_OPEN_LIST_ROWS = 10

#: OOD texts longer than this are cut in the table; the whole text unfolds from a ``<details>``.
OOD_TEXT_CHARS = 200

_METRIC_GROUPS = SNAPSHOT_FAMILIES
# metrics.jsonl also carries each snapshot's metrics at its step; these prefixes mark a training step.
_TRAINING_PREFIXES = ("grad_norm/", "contrastive/", "alarm/", "optim/")

#: The metrics the before/after table lists first (then every other retrieval/ and geometry/ metric).
HEADLINE_METRICS = (
    "retrieval/ndcg@10",
    "retrieval/mrr@10",
    "retrieval/recall@1",
    "retrieval/recall@10",
    "retrieval/hard_negative_gap",
    "geometry/anisotropy",
    "geometry/id_pca95",
    "geometry/effective_rank",
    "geometry/alignment",
    "geometry/uniformity",
    "geometry/ood_fraction",
)

#: What to look for in each snapshot figure (by :data:`aquin_monitor.plots.SNAPSHOT_FIGURES` name).
FIGURE_HINTS = {
    "umap_by_label": (
        "labels should form separate clusters; layouts are aligned to the previous snapshot, so a cluster that "
        "moves moved"
    ),
    "umap_by_ood": "flagged points should sit at the edges; a flagged cluster is a topic the probe under-represents",
    "anisotropy_histogram": "a peak far right of the uniform-sphere curve means every text looks alike (anisotropy)",
    "pca_variance": "a curve that saturates after few components means the space uses few directions",
    "layer_similarity": (
        "the last layer should drop well below the earlier ones: that is what contrastive training shapes"
    ),
    "attention_entropy": "cells near 0 are heads stuck on one token; near 1 heads that attend to everything",
    "rank_histogram": "mass in the first bins is good retrieval; a long tail is queries whose document is buried",
    "hard_negative_gap": "queries left of 0 rank a labelled negative above their relevant document",
    "centroid_drift": "long arrows are labels whose region moved since the base model",
    "similarity_shift": "a shift to the right means the space got more anisotropic; to the left, more spread",
    "rank_changes": "points below the diagonal improved; above it got worse",
    "sae_movers": (
        "features the fine-tune made fire more (gained) or less (lost) often on the probe; many lost features is a "
        "space leaving the base dictionary"
    ),
}

#: The training-timeline figures: (caption, what to look for, function of (rows, events)).
_TIMELINE = (
    ("Training loss", "should fall and flatten; a jump lines up with a spike alarm", plots.loss_curve),
    (
        "Positive / negative similarity, hardest negative, gap and in-batch accuracy",
        "the gap (pos − neg) should widen; a hardest negative above the positives is a batch the loss cannot yet "
        "separate",
        plots.contrastive_curve,
    ),
    (
        "Learning rate",
        "the schedule the optimizer followed (warm-up, decay); spikes in other curves often start where it peaks",
        lambda rows, events: plots.scalar_curves(
            rows, _lr_keys(rows), title="Learning rate", ylabel="learning rate", log_scale=True, events=events
        ),
    ),
    (
        "Total gradient norm",
        "steady is healthy; sudden jumps are spikes, a slide to 0 a dying run",
        lambda rows, events: plots.scalar_curves(
            rows, ["grad_norm/total"], title="Total gradient norm", ylabel="L2 norm", log_scale=True, events=events
        ),
    ),
    (
        "Gradient norm per layer and step",
        "dark columns are steps with small updates; an all-dark row is a dead layer",
        plots.grad_norm_heatmap,
    ),
)


#: The SAE page of a run (:func:`aquin_monitor.callbacks.run_pages.write_sae_page`), linked from the report.
SAE_PAGE = "sae.html"


class RunDirectoryError(ValueError):
    """The run directory given to the report does not exist or is not a directory."""


# ---------------------------------------------------------------------------------------------
# reading


def read_jsonl_tolerant(path: str | os.PathLike, name: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a JSON Lines file, skipping what does not parse.

    Returns ``(records, problems)``: every line that is a JSON object, in order, and one message
    ``"<name>:<line>: <what is wrong>"`` per skipped line (``name`` defaults to the file name).
    Blank lines are neither records nor problems. A missing file raises :class:`FileNotFoundError`.
    """
    name = name or Path(path).name
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, _, record, problem in iter_jsonl(path):
        if problem is None:
            records.append(record)
        else:
            problems.append(f"{name}:{number}: {problem}; line skipped")
    return records, problems


@dataclass
class Run:
    """Everything the report shows, read tolerantly from a run directory."""

    directory: Path
    metrics: list[dict[str, Any]] | None  # None: no metrics.jsonl
    events: list[dict[str, Any]] | None  # None: no events.jsonl
    snapshots: list[SnapshotView]
    problems: list[str]
    evaluations: list[dict[str, Any]] | None = None  # None: no evaluations.jsonl (the trainer never evaluated)

    @property
    def training_rows(self) -> list[dict[str, Any]]:
        """Rows of metrics.jsonl logged by training steps (not the snapshot metrics logged there too)."""
        return [row for row in self.metrics or [] if any(key.startswith(_TRAINING_PREFIXES) for key in row)]

    @property
    def base(self) -> SnapshotView | None:
        return next((snapshot for snapshot in self.snapshots if snapshot.is_base), None)

    @property
    def model(self) -> str | None:
        for snapshot in ([self.base] if self.base else []) + self.snapshots:
            if snapshot.model:
                return snapshot.model
        return None


def align_layouts(layouts: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
    """2-D layouts (UMAP) of the same points at successive snapshots, each aligned to the one before.

    UMAP places each snapshot's layout in arbitrary position, rotation and scale; without alignment a
    point's move from one snapshot to the next means nothing. Each layout is mapped by the similarity
    transform (rotation or reflection, uniform scale, translation) that best fits it, in least squares,
    onto the previous aligned layout (orthogonal Procrustes, :func:`scipy.linalg.orthogonal_procrustes`).
    A layout whose shape differs from the previous one (another probe) starts a new chain, as is; None
    (no layout) is kept and skipped.

    >>> base = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> turned = 3.0 * base @ np.array([[0.0, -1.0], [1.0, 0.0]]) + 5.0  # rotated, scaled, shifted
    >>> aligned = align_layouts([base, None, turned])
    >>> bool(np.allclose(aligned[2], base)), aligned[1] is None
    (True, True)
    """
    from scipy.linalg import orthogonal_procrustes

    aligned: list[np.ndarray | None] = []
    previous: np.ndarray | None = None
    for layout in layouts:
        if layout is None:
            aligned.append(None)
            continue
        points = np.asarray(layout, dtype=np.float64)
        if previous is not None and points.shape == previous.shape and points.ndim == 2 and np.all(np.isfinite(points)):
            moving, target = points - points.mean(0), previous - previous.mean(0)
            rotation, singular_sum = orthogonal_procrustes(moving, target)
            norm = float(np.sum(moving * moving))
            scale = singular_sum / norm if norm > 0 else 1.0
            points = scale * moving @ rotation + previous.mean(0)
        aligned.append(points)
        previous = points
    return aligned


def _lr_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``optim/lr`` and ``optim/lr/group.N`` present in ``rows``, groups in numeric order."""
    found = {key for row in rows for key in row if key == "optim/lr" or re.match(r"^optim/lr/group\.\d+$", key)}
    return sorted(found, key=lambda key: (key != "optim/lr", int(key.rsplit(".", 1)[-1]) if "group." in key else 0))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_jsonl_file(run_dir: Path, name: str, problems: list[str]) -> list[dict[str, Any]] | None:
    path = run_dir / name
    if not path.is_file():
        return None
    try:
        records, found = read_jsonl_tolerant(path, name)
    except OSError as exc:
        problems.append(f"{name}: could not be read ({exc})")
        return None
    problems.extend(found)
    kept = []
    for record in records:
        if _is_int(record.get("step")):
            kept.append(record)
        else:
            problems.append(f"{name}: a record without an integer 'step' was skipped: {json.dumps(record)[:120]}")
    return kept


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run directory tolerantly (see the module docstring); raises
    :class:`RunDirectoryError` only when ``run_dir`` is not a directory."""
    directory = Path(run_dir)
    if not directory.is_dir():
        raise RunDirectoryError(f"run directory {str(directory)!r} does not exist or is not a directory")
    recover_snapshots(directory)  # a save killed between its renames left snapshots/.<N>-old: put it back first
    problems: list[str] = []
    metrics = _read_jsonl_file(directory, "metrics.jsonl", problems)
    events = _read_jsonl_file(directory, "events.jsonl", problems)
    evaluations = _read_jsonl_file(directory, "evaluations.jsonl", problems)
    snapshots: list[SnapshotView] = []
    snapshot_root = directory / "snapshots"
    if snapshot_root.is_dir():
        for child in snapshot_root.iterdir():
            if child.is_dir() and not child.name.startswith("."):  # dot-dirs: snapshots being written
                snapshots.append(SnapshotView.read(child, child.relative_to(directory).as_posix()))
    snapshots.sort(key=lambda s: (s.step is None, s.step if s.step is not None else 0, s.directory.name))
    return Run(directory, metrics, events, snapshots, problems, evaluations)


# ---------------------------------------------------------------------------------------------
# HTML pieces


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _format_number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return _escape(value)
    number = float(value)
    if not math.isfinite(number):
        return "n/a"
    if number == int(number) and abs(number) < 1e6:
        return str(int(number))
    return f"{number:.4g}"


def _format_delta(value: Any, base: Any) -> tuple[str, str]:
    """``(text, css class)`` of ``value − base``; empty when either is not a finite number."""
    numbers = []
    for item in (value, base):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(float(item)):
            return "", ""
        numbers.append(float(item))
    delta = numbers[0] - numbers[1]
    if delta == 0:
        return "0", "zero"
    return f"{delta:+.4g}", "up" if delta > 0 else "down"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], css: str = "") -> str:
    """An HTML table; ``headers`` are escaped here, cells must already be HTML."""
    head = "".join(f"<th>{_escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _note(text: str, css: str = "note") -> str:
    return f'<p class="{css}">{_escape(text)}</p>'


def _figure_html(figure: Any, caption: str, hint: str | None = None) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    look_for = f'<span class="hint">Look for: {_escape(hint)}.</span>' if hint else ""
    return (
        f'<figure><img alt="{_escape(caption)}" src="data:image/png;base64,{encoded}">'
        f"<figcaption><b>{_escape(caption)}</b> {look_for}</figcaption></figure>"
    )


def _draw_figures(specs: Sequence[plots.SnapshotFigure], arrays: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(html of drawn figures, notes)``: a figure whose arrays are absent is listed in one note;
    one that fails to draw gets a note with the error, and the rest of the report goes on."""
    drawn, notes, absent = [], [], []
    for spec in specs:
        missing = [key for key in spec.needs if key not in arrays]
        if missing:
            if not any(
                key.startswith("_") for key in missing
            ):  # "_" inputs come from details a run may not have (no SAE)
                absent.append(f"{spec.caption} (needs {', '.join(missing)})")
            continue
        try:
            hint = FIGURE_HINTS.get(spec.name)
            drawn.append(_figure_html(spec.draw(arrays), spec.caption, hint))
        except Exception as exc:  # noqa: BLE001 - one bad array must not cost the whole report
            notes.append(f"{spec.caption}: not drawn ({type(exc).__name__}: {exc})")
    if absent:
        notes.insert(0, "Not in arrays.npz, so not drawn: " + "; ".join(absent) + ".")
    return drawn, notes


def _timeline_figure(
    caption: str, function: Callable[..., Any], *args: Any, hint: str | None = None
) -> tuple[str, str]:
    try:
        return _figure_html(function(*args), caption, hint), ""
    except plots.NoDataError as exc:
        return "", f"{caption}: nothing to draw ({exc})."
    except Exception as exc:  # noqa: BLE001 - see _draw_figures
        return "", f"{caption}: not drawn ({type(exc).__name__}: {exc})."


# ---------------------------------------------------------------------------------------------
# sections


def _header(run: Run) -> str:
    events = run.events if run.events is not None else _alarms_from_metrics(run.training_rows)
    kinds: dict[str, int] = {}
    for event in events:
        kinds[str(event.get("kind", "alarm"))] = kinds.get(str(event.get("kind", "alarm")), 0) + 1
    steps = sorted({row["step"] for row in run.training_rows})
    if steps:
        step_text = f"{len(steps)} logged steps ({steps[0]} – {steps[-1]})"
    else:
        step_text = "no training steps logged"
    badges = (
        "".join(
            f'<span class="badge alarm-{_escape(kind)}">{_escape(kind)}: {count}</span>'
            for kind, count in sorted(kinds.items())
        )
        or '<span class="badge ok">no alarms</span>'
    )
    if run.events is None:
        badges += " (no events.jsonl" + (
            "; counted from alarm/&lt;kind&gt; keys of metrics.jsonl)" if run.training_rows else ": not recorded)"
        )
    facts = [
        ("Model", _escape(run.model or "unknown (no snapshot names it: SnapshotRunner(..., model_name=...) does)")),
        ("Run directory", f"<code>{_escape(run.directory.resolve())}</code>"),
        ("Training", _escape(step_text)),
        (
            "Snapshots",
            _escape(
                f"{len(run.snapshots)}"
                + (f" (steps {', '.join(str(s.step) for s in run.snapshots)})" if run.snapshots else "")
            ),
        ),
        ("Alarms", f"{len(events)} {badges}"),
    ]
    if (run.directory / SAE_PAGE).is_file():  # written at train end when the run's snapshots used an SAE
        facts.append(
            (
                "SAE features",
                f'<a href="{SAE_PAGE}">{SAE_PAGE}</a>: the base SAE\'s features on the probe at the last snapshot '
                "(browser, co-activation network, diagnostics)",
            )
        )
    rows = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in facts)
    return f'<header id="summary"><h1>aquin-monitor report</h1><table class="facts">{rows}</table></header>'


def _verdict_line(run: Run) -> str:
    """The report's first line: the run's retrieval verdict (:func:`aquin_monitor.verdict.run_verdict`), as
    the last snapshot recorded it against the base, with the change since the previous snapshot under it;
    without one, why there is none and how to get one."""
    sentence, direction = run_verdict(run.snapshots)
    css = "none" if direction is None else {1: "better", -1: "worse"}.get(direction, "same")
    since_previous = ""
    for snapshot in reversed(run.snapshots):
        verdicts = snapshot.details.get(keys.VERDICT)
        if isinstance(verdicts, dict) and isinstance(verdicts.get("base"), dict):
            previous = verdicts.get("previous")
            if isinstance(previous, dict) and isinstance(previous.get("sentence"), str):
                since_previous = (
                    f'<p class="verdict-previous">Since the previous snapshot: {_escape(previous["sentence"])}</p>'
                )
            break
    return f'<div id="verdict" class="verdict {css}"><p>{_escape(sentence)}</p>{since_previous}</div>'


def _problems_section(run: Run) -> str:
    problems = list(run.problems)
    for snapshot in run.snapshots:
        problems.extend(snapshot.problems)
    if not problems:
        return ""
    items = "".join(f"<li><code>{_escape(problem)}</code></li>" for problem in problems)
    return (
        '<section id="problems" class="problems"><h2>Problems reading the run</h2>'
        "<p>These parts were skipped; the rest of the report is drawn from what could be read.</p>"
        f"<ul>{items}</ul></section>"
    )


def _alarms_table(events: list[dict[str, Any]]) -> str:
    if not events:
        return _note("No alarm fired.", "note ok")
    ordered = sorted(events, key=lambda e: e["step"])
    rows = [
        (
            _escape(event["step"]),
            f'<span class="badge alarm-{_escape(event.get("kind", ""))}">{_escape(event.get("kind", "?"))}</span>',
            _escape(event.get("layer") if event.get("layer") is not None else "—"),
            _escape(event.get("message", "")),
            _format_number(event.get("value")),
        )
        for event in ordered[:MAX_TABLE_ROWS]
    ]
    extra = _note(f"First {MAX_TABLE_ROWS} of {len(ordered)} alarms shown.") if len(ordered) > MAX_TABLE_ROWS else ""
    return _table(["step", "kind", "layer", "message", "value"], rows, "alarms") + extra


def _alarms_from_metrics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alarms reconstructed from ``alarm/<kind>`` keys, for runs whose events.jsonl is missing."""
    events = []
    for row in rows:
        for key, value in row.items():
            if key.startswith("alarm/") and value:
                events.append(
                    {
                        "step": row["step"],
                        "kind": key[len("alarm/") :],
                        "layer": None,
                        "message": f"{key} in metrics.jsonl (events.jsonl is missing)",
                        "value": None,
                    }
                )
    return events


def _timeline_section(run: Run) -> str:
    parts = ['<section id="timeline"><h2>Training timeline</h2>']
    events = run.events or []
    if run.metrics is None:
        parts.append(
            _note(
                "No metrics.jsonl in this run directory: no training timeline (a run with snapshots only, or one "
                "inspected without training)."
            )
        )
    elif not run.training_rows:
        parts.append(
            _note(
                "metrics.jsonl holds no training step (grad_norm/, contrastive/ or alarm/ keys): no training timeline."
            )
        )
    else:
        drawn = []
        for caption, hint, function in _TIMELINE:
            figure, note = _timeline_figure(caption, function, run.training_rows, events, hint=hint)
            if figure:
                drawn.append(figure)
            else:
                parts.append(_note(note))
        parts.append(f'<div class="figures">{"".join(drawn)}</div>')
    parts.append('<h3 id="alarms">Alarms</h3>')
    if run.events is None:
        if run.metrics:
            fallback = _alarms_from_metrics(run.metrics)
            parts.append(
                _note(
                    "No events.jsonl in this run directory; alarms below come from alarm/<kind> keys of metrics.jsonl."
                )
            )
            parts.append(_alarms_table(fallback))
        else:
            parts.append(_note("No events.jsonl in this run directory."))
    else:
        parts.append(_alarms_table(events))
    parts.append("</section>")
    return "".join(parts)


def _metrics_tables(snapshot: SnapshotView, base: SnapshotView | None) -> str:
    if not snapshot.metrics:
        return _note("This snapshot records no metrics.")
    compare = base is not None and base is not snapshot
    grouped: dict[str, list[str]] = {}
    for name in sorted(snapshot.metrics):
        group = name.split("/", 1)[0]
        grouped.setdefault(group if group in _METRIC_GROUPS else "other", []).append(name)
    tables = []
    for group in (*_METRIC_GROUPS, "other"):
        names = grouped.get(group)
        if not names:
            continue
        against_base = compare and group not in ("drift", "verdict")  # those are measured against a reference
        headers = ["metric", "value"] + (["Δ vs base"] if against_base else [])
        rows = []
        for name in names:
            value = snapshot.metrics[name]
            row = [_metric_cell(name), _format_number(value)]
            if against_base:
                assert base is not None  # compare implies it
                delta, css = _format_delta(value, base.metrics.get(name))
                row.append(f'<span class="delta {css}">{delta or "—"}</span>')
            rows.append(row)
        tables.append(f'<div class="metric-group"><h4>{_escape(group)}</h4>{_table(headers, rows, "metrics")}</div>')
    return f'<div class="metric-groups">{"".join(tables)}</div>'


def _metric_cell(name: str) -> str:
    """A metric's name and, under it, its one-line meaning."""
    meaning = metric_meaning(name)
    return f"<code>{_escape(name)}</code> " + (f'<div class="meaning">{_escape(meaning)}</div>' if meaning else "")


def _ood_text(text: Any) -> str:
    """An OOD input's text, cut to :data:`OOD_TEXT_CHARS` characters; the whole text unfolds below."""
    text = str(text)
    if len(text) <= OOD_TEXT_CHARS:
        return f'<span class="probe">{_escape(text)}</span>'
    return (
        f'<details class="long-text"><summary><span class="probe">{_escape(text[:OOD_TEXT_CHARS].rstrip())}…</span> '
        f'<span class="more">({len(text):,} characters: show all)</span></summary>'
        f'<span class="probe">{_escape(text)}</span></details>'
    )


def _overview_section(run: Run) -> str:
    """The before/after table: headline retrieval and geometry metrics of every snapshot, Δ against the base."""
    parts = ['<section id="overview"><h2>Before / after: every snapshot</h2>']
    if not run.snapshots:
        return "".join(parts) + _note("No snapshots in this run directory: nothing to compare.") + "</section>"
    present = {
        name
        for snapshot in run.snapshots
        for name in snapshot.metrics
        if name.startswith(("retrieval/", "geometry/")) and _is_number(snapshot.metrics[name])
    }
    names = [n for n in HEADLINE_METRICS if n in present] + sorted(present - set(HEADLINE_METRICS))
    if not names:
        return "".join(parts) + _note("The snapshots record no retrieval or geometry metric.") + "</section>"
    base = run.base
    headers = ["metric", "meaning"] + [f"step {s.step if s.step is not None else '?'} ({s.tag})" for s in run.snapshots]
    rows = []
    for name in names:
        row = [f"<code>{_escape(name)}</code>", f'<span class="meaning">{_escape(metric_meaning(name))}</span>']
        for snapshot in run.snapshots:
            value = snapshot.metrics.get(name)
            cell = _format_number(value)
            if base is not None and snapshot is not base:
                delta, css = _format_delta(value, base.metrics.get(name))
                cell += f' <span class="delta {css}">({delta or "—"})</span>'
            row.append(cell)
        rows.append(row)
    caption = (
        "Values at each snapshot; in brackets the change against the base snapshot"
        if base is not None
        else "Values at each snapshot (no snapshot is tagged 'base': no change shown)"
    )
    parts.append(
        f"<p>{_escape(caption)}. Look for retrieval going up while anisotropy goes down; "
        "a retrieval gain with anisotropy rising towards 1 is a space collapsing onto one direction.</p>"
    )
    parts.append(f'<div class="wide">{_table(headers, rows, "metrics overview")}</div></section>')
    return "".join(parts)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _evaluations_section(run: Run) -> str:
    """The trainer's own evaluation metrics (HF's ``eval_*``, Lightning's validation metrics), one row per
    evaluation."""
    if not run.evaluations:
        return ""
    names = sorted(
        {key for row in run.evaluations for key in row if key not in ("step", "time") and _is_number(row[key])}
    )
    if not names:
        return ""
    rows = [
        [_escape(row["step"])] + [_format_number(row.get(name)) for name in names]
        for row in run.evaluations[-MAX_TABLE_ROWS:]
    ]
    left_out = len(run.evaluations) - len(rows)
    parts = [
        '<section id="evaluations"><h2>The trainer\'s own evaluation</h2>',
        "<p>What the trainer's evaluator (sentence-transformers evaluators, <code>eval_loss</code>; Lightning's "
        "validation metrics) reported at each evaluation, as the trainer logged it. Read it beside the snapshots "
        "above: an evaluator score that keeps rising while retrieval on your own probe falls, or anisotropy climbs, "
        "is the evaluator's data being fitted, not the space improving.</p>",
        f'<div class="wide">{_table(["step", *names], rows, "metrics")}</div>',
    ]
    if left_out:
        parts.append(
            _note(
                f"The first {left_out} evaluations are left out (the last {MAX_TABLE_ROWS} are shown); "
                "evaluations.jsonl has them all."
            )
        )
    return "".join(parts) + "</section>"


def _descending_score(item: dict[str, Any]) -> float:
    """Sort key: highest ``score`` first, items without a numeric score last."""
    score = item.get("score")
    return -float(score) if isinstance(score, (int, float)) else math.inf


def _details_html(snapshot: SnapshotView) -> str:
    parts = []
    flagged = [item for item in snapshot.details.get(keys.OOD_FLAGGED) or [] if isinstance(item, dict)]
    parts.append("<h4>Out-of-distribution inputs</h4>")
    if flagged:
        ordered = sorted(flagged, key=_descending_score)
        rows: list[Sequence[str]] = [
            (_escape(item.get("index", "?")), _format_number(item.get("score")), _ood_text(item.get("text", "")))
            for item in ordered[:MAX_TABLE_ROWS]
        ]
        # a long list folds away (plain HTML <details>, no script); a short one stays open
        opened = " open" if len(ordered) <= _OPEN_LIST_ROWS else ""
        parts.append(
            f"<details{opened}><summary>{len(ordered)} inputs flagged, highest OOD score first</summary>"
            + _table(["index", "OOD score", "text"], rows, "ood")
            + "</details>"
        )
        if len(ordered) > MAX_TABLE_ROWS:
            parts.append(_note(f"First {MAX_TABLE_ROWS} of {len(ordered)} flagged inputs shown."))
    else:
        parts.append(
            _note(
                "No input flagged out-of-distribution."
                if "ood_flagged" in snapshot.details
                else "No OOD details recorded."
            )
        )

    heads = [item for item in snapshot.details.get(keys.FLAGGED_HEADS) or [] if isinstance(item, dict)]
    parts.append("<h4>Flagged attention heads</h4>")
    if heads:
        rows = [
            (
                _escape(h.get("layer", "?")),
                _escape(h.get("head", "?")),
                _escape(h.get("kind", "?")),
                _format_number(h.get("entropy")),
            )
            for h in heads
        ]
        parts.append(_table(["layer", "head", "kind", "entropy"], rows, "heads"))
    else:
        parts.append(
            _note(
                "No attention head flagged."
                if "flagged_heads" in snapshot.details
                else "No attention details recorded."
            )
        )

    categories = snapshot.details.get(keys.RETRIEVAL_BY_CATEGORY)
    if isinstance(categories, dict) and categories:
        metric_names = sorted({m for values in categories.values() if isinstance(values, dict) for m in values})
        rows = [
            [_escape(category)] + [_format_number(values.get(m)) for m in metric_names]
            for category, values in sorted(categories.items())
            if isinstance(values, dict)
        ]
        parts.append("<h4>Retrieval by category</h4>" + _table(["category", *metric_names], rows, "metrics"))

    rogue = [item for item in snapshot.details.get(keys.ROGUE_DIMENSIONS) or [] if isinstance(item, dict)]
    if rogue:
        rows = [(_escape(item.get("dim", "?")), _format_number(item.get("share"))) for item in rogue]
        parts.append("<h4>Rogue dimensions</h4>" + _table(["dimension", "share of anisotropy"], rows, "metrics"))
    parts.append(_sae_movers_html(snapshot.details))
    parts.append(_sae_drift_html(snapshot.details))
    return "".join(parts)


#: Gained / lost SAE features shown in a table; the rest of the list folds away under a ``<details>``.
SAE_MOVERS_SHOWN = 5


def _sae_movers_html(details: Mapping[str, Any]) -> str:
    """The base SAE's features that fire more (gained) or less (lost) often than on the base model:
    labelled, with the texts they fire on before → after, the top :data:`SAE_MOVERS_SHOWN` in a table
    and the rest folded. The support filter is :func:`~aquin_monitor.sae.monitoring.feature_movers`'
    (its entries say which); snapshots written before it are shown as they are."""
    parts = []
    for key, title in (
        (keys.SAE_GAINED, "SAE features gained against the base model"),
        (keys.SAE_LOST, "SAE features lost against the base model"),
    ):
        movers = [item for item in details.get(key) or [] if isinstance(item, dict)]
        if not movers:
            continue
        headers = ["feature", "label", "texts it fires on", "mean activation", "top texts"]
        rows = [_sae_mover_row(item) for item in movers]
        parts.append(f"<h4>{_escape(title)}</h4>" + _sae_movers_note(movers[0], len(movers)))
        parts.append(_table(headers, rows[:SAE_MOVERS_SHOWN], "metrics"))
        if len(rows) > SAE_MOVERS_SHOWN:
            parts.append(
                f"<details><summary>{len(rows) - SAE_MOVERS_SHOWN} more, by the size of the change</summary>"
                + _table(headers, rows[SAE_MOVERS_SHOWN:], "metrics")
                + "</details>"
            )
    return "".join(parts)


def _sae_movers_note(first: Mapping[str, Any], count: int) -> str:
    """What the gained/lost list holds: its order and, when recorded, the support filter."""
    text = f"{count} features, largest change in firing frequency first"
    n_texts, support = first.get("n_texts"), first.get("min_support")
    if isinstance(n_texts, int) and isinstance(support, int):
        text += (
            f"; only features firing on at least {support} of the {n_texts} probe texts on their busier side "
            "(max(3, 3 % of the probe): smaller changes are noise)"
        )
    return _note(text + ". Labels: the SAE's c-TF-IDF terms (features.json).")


def _sae_mover_row(item: Mapping[str, Any]) -> tuple[str, ...]:
    before, after, n_texts = item.get("texts_before"), item.get("texts_after"), item.get("n_texts")
    if isinstance(before, int) and isinstance(after, int) and isinstance(n_texts, int):
        support = f"{before} → {after} of {n_texts}"
    else:  # a snapshot written before the counts were recorded: frequencies
        support = f"{_format_number(item.get('frequency_before'))} → {_format_number(item.get('frequency_after'))}"
    return (
        _escape(item.get("feature", "?")),
        _escape(item.get("label") or "—"),
        support,
        f"{_format_number(item.get('mean_activation_before'))} → {_format_number(item.get('mean_activation_after'))}",
        "<br>".join(f'<span class="probe">{_escape(str(text)[:200])}</span>' for text in item.get("top_texts") or []),
    )


def _feature_name(feature: Any, label: Any) -> str:
    """``#12 label`` as HTML: the feature's index and, when the SAE has one, its label (escaped)."""
    name = f"#{_escape(feature)}"
    return name + (f' <span class="probe">{_escape(label)}</span>' if label else "")


def _sae_drift_html(details: Mapping[str, Any]) -> str:
    """The drift against the base read through the base SAE (:mod:`aquin_monitor.sae.drift`): the features
    whose activation moved (q < alpha) and the pairs whose cosine changed most, each split into terms."""
    features = details.get(keys.SAE_DRIFT_FEATURES)
    pairs = details.get(keys.SAE_DRIFT_PAIRS)
    if not isinstance(features, dict) or not isinstance(pairs, dict):
        return ""
    parts = ["<h4>Drift explained by the base SAE</h4>"]
    moved = [item for item in features.get("moved") or [] if isinstance(item, dict)]
    parts.append(
        _note(
            f"{features.get('n_moved', '?')} of {features.get('n_tested', '?')} features tested moved "
            f"(q < {features.get('alpha', '?')}) on {features.get('n_texts', '?')} probe texts; "
            f"test: {features.get('test', '?')}."
        )
    )
    if moved:
        rows = [
            (
                _feature_name(item.get("feature", "?"), item.get("label")),
                _format_number(item.get("mean_delta")),
                f"{_format_number(item.get('firing_before'))} → {_format_number(item.get('firing_after'))}",
                _format_number(item.get("q_value")),
            )
            for item in moved[:MAX_TABLE_ROWS]
        ]
        parts.append(_table(["feature", "mean Δ activation", "firing rate", "q (BH)"], rows, "metrics"))
    listed = [item for item in pairs.get("pairs") or [] if isinstance(item, dict)]
    parts.append(
        _note(
            f"The {len(listed)} {pairs.get('source', '?')} pairs (of {pairs.get('candidates', '?')}) whose cosine "
            f"changed most, each change split exactly: Δcos = Σ Δφ (features) + Δbias + Δerror; "
            f"{pairs.get('note', '')}."
        )
    )
    if listed:
        pair_rows = [_sae_pair_row(item) for item in listed[:MAX_TABLE_ROWS]]
        headers = ["pair", "cos before → after", "Δcos", "features", "bias", "error", "top features"]
        parts.append(_table(headers, pair_rows, "metrics"))
    return "".join(parts)


def _sae_pair_row(item: Mapping[str, Any]) -> Sequence[str]:
    texts = item.get("texts")
    texts = texts if isinstance(texts, list) else []
    terms = [t for t in item.get("terms") or [] if isinstance(t, dict)]
    return (
        "<br>".join(_ood_text(text) for text in texts[:2]),
        f"{_format_number(item.get('cosine_before'))} → {_format_number(item.get('cosine_after'))}",
        _format_number(item.get("delta")),
        _format_number(item.get("feature_delta")),
        _format_number(item.get("bias_delta")),
        f"{_format_number(item.get('error_delta'))} ({_format_number(item.get('error_share'))} of the split)",
        "<br>".join(
            f"{_feature_name(t.get('feature', '?'), t.get('label'))} {_format_number(t.get('delta_phi'))}"
            for t in terms
        ),
    )


def _snapshot_section(
    snapshot: SnapshotView, base: SnapshotView | None, ordinal: int, umap: np.ndarray | None = None
) -> str:
    anchor = f"snapshot-{snapshot.step if snapshot.step is not None else f'x{ordinal}'}"
    title = f"Snapshot at step {snapshot.step if snapshot.step is not None else '?'} ({snapshot.tag})"
    parts = [f'<section class="snapshot" id="{_escape(anchor)}"><h2>{_escape(title)}</h2>']
    if snapshot.model:
        parts.append(f"<p>Model: <code>{_escape(snapshot.model)}</code></p>")
    parts.append("<h3>Metrics</h3>")
    if base is None:
        parts.append(_note("No snapshot is tagged 'base', so no change against the base model is shown."))
    parts.append(_metrics_tables(snapshot, base))

    inputs = plots.snapshot_figure_inputs(snapshot.arrays, snapshot.metrics, snapshot.details)
    if umap is not None:  # aligned to the previous snapshot's layout (align_layouts)
        inputs[keys.UMAP] = umap
    specs = [spec for spec in plots.SNAPSHOT_FIGURES if not spec.diff]
    diff_specs = [spec for spec in plots.SNAPSHOT_FIGURES if spec.diff]
    parts.append("<h3>Figures</h3>")
    if not snapshot.arrays:
        parts.append(_note("No arrays.npz (or no readable array) for this snapshot: no figures."))
    else:
        drawn, notes = _draw_figures(specs, inputs)
        parts.extend(_note(note) for note in notes)
        parts.append(f'<div class="figures">{"".join(drawn)}</div>')

    if not snapshot.is_base:  # the base is what the diffs are measured against
        parts.append("<h3>Diff against the base model</h3>")
        parts.append(_drift_test_html(snapshot))
        if not any(key in snapshot.arrays for spec in diff_specs for key in spec.needs):
            parts.append(_note("No drift arrays in arrays.npz for this snapshot: no diff figures."))
        else:
            drawn, notes = _draw_figures(diff_specs, inputs)
            parts.extend(_note(note) for note in notes)
            parts.append(f'<div class="figures">{"".join(drawn)}</div>')
    parts.append(_details_html(snapshot))
    parts.append("</section>")
    return "".join(parts)


def _drift_test_html(snapshot: SnapshotView) -> str:
    """One plain sentence per two-sample drift test the snapshot logged (against the base, the previous)."""
    lines = []
    for reference, label in (("base", "Against the base model"), ("previous", "Against the previous snapshot")):
        p_value = snapshot.metrics.get(f"drift/{reference}/p_value")
        statistic = snapshot.metrics.get(f"drift/{reference}/mmd2")
        if isinstance(p_value, (int, float)) and isinstance(statistic, (int, float)):
            sentence = drift_test_sentence(float(p_value), float(statistic))
            lines.append(f"<li>{_escape(label)}: {_escape(sentence)}</li>")
    if not lines:
        return ""
    return f'<ul class="drift-test">{"".join(lines)}</ul>' + _note(
        "p: how often re-sampling the probe alone (same model, two random halves) moves the space this much; "
        "its false-alarm rate at 0.05 is calibrated (README, Drift test calibration)."
    )


def _snapshots_section(run: Run) -> str:
    if not run.snapshots:
        return (
            '<section id="snapshots"><h2>Snapshots</h2>'
            + _note(
                "No snapshots in this run directory (snapshots/<step>/snapshot.json): no geometry, retrieval or "
                "diff figures."
            )
            + "</section>"
        )
    base = run.base
    layouts = align_layouts([_layout(snapshot) for snapshot in run.snapshots])
    return "".join(_snapshot_section(snapshot, base, i, layouts[i]) for i, snapshot in enumerate(run.snapshots))


def _layout(snapshot: SnapshotView) -> np.ndarray | None:
    """The snapshot's UMAP coordinates when they are a finite ``[n, 2]`` array, else None (drawn as stored)."""
    umap = snapshot.arrays.get(keys.UMAP)
    if umap is None:
        return None
    try:
        points = np.asarray(umap, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return points if points.ndim == 2 and points.shape[1] == 2 and np.all(np.isfinite(points)) else None


def _contents(run: Run) -> str:
    links = [
        '<a href="#summary">Summary</a>',
        '<a href="#overview">Before / after</a>',
        '<a href="#timeline">Training timeline</a>',
        '<a href="#alarms">Alarms</a>',
    ]
    if run.evaluations:
        links.insert(2, '<a href="#evaluations">Trainer evaluation</a>')
    if run.problems or any(s.problems for s in run.snapshots):
        links.insert(1, '<a href="#problems">Problems</a>')
    for index, snapshot in enumerate(run.snapshots):
        anchor = f"snapshot-{snapshot.step if snapshot.step is not None else f'x{index}'}"
        step = _escape(snapshot.step if snapshot.step is not None else "?")
        links.append(f'<a href="#{_escape(anchor)}">Step {step} ({_escape(snapshot.tag)})</a>')
    if not run.snapshots:
        links.append('<a href="#snapshots">Snapshots</a>')
    return f"<nav>{' · '.join(links)}</nav>"


# An embedded page template (the report's style sheet): left unwrapped, its CSS rules read one per line.
_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1240px;
       padding: 0 20px 40px; color: #222; background: #fff; line-height: 1.4; }
h1 { margin: 18px 0 8px; font-size: 26px; }
h2 { border-bottom: 2px solid #2b83ba; padding-bottom: 4px; margin-top: 36px; }
h3 { margin: 22px 0 8px; color: #2b83ba; }
h4 { margin: 14px 0 6px; }
nav { position: sticky; top: 0; background: #f4f6f8; padding: 6px 10px; border-bottom: 1px solid #ddd; font-size: 14px; z-index: 1; }
nav a { color: #2b83ba; text-decoration: none; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
thead th { background: #f4f6f8; }
table.facts th { background: #f4f6f8; width: 130px; }
table.metrics td:nth-child(n+2) { text-align: right; font-variant-numeric: tabular-nums; }
.metric-groups { display: flex; flex-wrap: wrap; gap: 0 24px; align-items: flex-start; }
.figures { display: flex; flex-wrap: wrap; gap: 12px 24px; align-items: flex-start; }
figure { margin: 8px 0; max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #333; max-width: 810px; }
figcaption .hint { color: #555; }
.meaning { font-size: 11px; color: #666; max-width: 420px; }
.wide { overflow-x: auto; }
table.overview td:nth-child(2) { min-width: 260px; text-align: left; }
table.overview td:nth-child(n+3) { white-space: nowrap; }
details.long-text .more { color: #2b83ba; font-size: 12px; }
details.long-text[open] > summary .probe { display: none; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; font-size: 14px; }
.note.ok { background: #eef8ee; border-left-color: #1a9641; }
.problems { background: #fdecea; border: 1px solid #d7191c; padding: 4px 14px; }
.badge { display: inline-block; padding: 1px 8px; margin: 0 3px; border-radius: 10px; font-size: 12px; background: #666; color: #fff; }
.badge.ok { background: #1a9641; }
.delta.up, .delta.down { font-weight: 600; color: #333; } .delta.zero { color: #888; }
.probe { white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
code { font-size: 12px; }
.verdict { margin: 14px 0 4px; padding: 8px 12px; border-left: 6px solid #888; background: #f4f6f8; font-size: 17px; }
.verdict p { margin: 2px 0; } .verdict .verdict-previous { font-size: 13px; color: #444; }
.verdict.better { border-left-color: #1a9641; background: #eef8ee; }
.verdict.worse { border-left-color: #d7191c; background: #fdecea; }
.verdict.none { border-left-color: #f0b400; background: #fff8e1; }
summary { cursor: pointer; font-size: 14px; margin: 4px 0; }
"""  # noqa: E501
# each registered alarm kind's badge in the colour its figures draw it in (an unregistered kind: the grey badge)
_CSS += "".join(f".badge.alarm-{kind} {{ background: {colour}; }}\n" for kind, colour in ALARM_COLOURS.items())


def render_report(run_dir: str | os.PathLike) -> str:
    """The report of ``run_dir`` as one HTML document (see the module docstring)."""
    run = load_run(run_dir)
    title = f"aquin-monitor report: {run.model or run.directory.name}"
    body = [
        _verdict_line(run),  # the first line: did retrieval get better (issue 25 point 3)
        _contents(run),
        _header(run),
        _problems_section(run),
        _overview_section(run),
        _evaluations_section(run),
        _timeline_section(run),
        _snapshots_section(run),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``), atomically.

    Returns the path written. Raises :class:`RunDirectoryError` when ``run_dir`` is not a
    directory; anything missing or broken inside it is a note in the page, not an error.
    """
    text = render_report(run_dir)
    target = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text, fsync=True)
    return target
