"""One function per figure of a run: plain data in (rows, arrays, dicts), a matplotlib Figure out.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global figure registry (nothing to close, nothing leaks during a long training run), no window,
and the Agg renderer draws them whatever backend the user's process selected. Nothing here
shows or saves a figure; callers do (the HTML report, a sink, the CLI).

Training timeline (``metrics_rows`` = the objects of ``metrics.jsonl``; ``events`` = those of
``events.jsonl``, each drawn as a vertical marker at its step, coloured by kind):

- :func:`loss_curve`, :func:`contrastive_curve`, :func:`grad_norm_heatmap`

Snapshot figures (arrays of ``snapshots/<step>/arrays.npz``):

- :func:`umap_by_label`, :func:`umap_by_ood`, :func:`anisotropy_histogram`,
  :func:`pca_variance_curve`, :func:`layer_similarity`, :func:`attention_entropy_heatmap`,
  :func:`rank_histogram`, :func:`hard_negative_gap_distribution`

Diff figures (a snapshot against the base model):

- :func:`centroid_drift_arrows`, :func:`similarity_shift`, :func:`rank_changes`

A function given nothing to draw raises :class:`NoDataError` (a :class:`ValueError`), so a caller
can tell "absent" from "drawn"; shapes that do not fit together raise :class:`ValueError`.
Non-finite values (``null`` in JSON) are left out of what is drawn and counted in the title.
User text (labels, alarm kinds, layer names) is drawn as plain text (:data:`PLAIN_TEXT`): no
mathtext, no LaTeX, so a label such as ``$$`` is shown as written and never fails a figure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from . import snapshot_keys as keys
from .metric_registry import ALARM_COLOURS

__all__ = [
    "NoDataError",
    "loss_curve",
    "contrastive_curve",
    "scalar_curves",
    "grad_norm_heatmap",
    "umap_by_label",
    "umap_by_ood",
    "anisotropy_histogram",
    "pca_variance_curve",
    "layer_similarity",
    "attention_entropy_heatmap",
    "rank_histogram",
    "hard_negative_gap_distribution",
    "centroid_drift_arrows",
    "similarity_shift",
    "rank_changes",
    "SnapshotFigure",
    "SNAPSHOT_FIGURES",
    "snapshot_figure_inputs",
]

# Alarm markers take their kind's colour from the registry (ALARM_COLOURS: each registered kind its own);
# a kind outside it (an events file written by something else) is drawn in grey.
_OTHER_ALARM_COLOUR = "#666666"
_WIDE = (9.0, 3.6)
_SQUARE = (6.0, 4.8)
_MAX_LABEL_COLOURS = 20  # tab20; rarer labels share one grey "other"


class NoDataError(ValueError):
    """A figure was asked for with nothing to draw (no rows with its metric, an empty array)."""


# ---------------------------------------------------------------------------------------------
# helpers


#: Text properties of every piece of user text (labels, alarm kinds, layer names) drawn in a figure:
#: no mathtext (a label ``$$`` is two dollar signs, not an empty formula that fails to render) and
#: no LaTeX even when the user's rcParams turn ``text.usetex`` on.
PLAIN_TEXT: dict[str, bool] = {"parse_math": False, "usetex": False}


def _legend(owner: Any, **kwargs: Any) -> Any:
    """``owner.legend(**kwargs)`` (an Axes or a Figure) with its entries drawn as plain text."""
    legend = owner.legend(**kwargs)
    for text in legend.get_texts():
        text.update(PLAIN_TEXT)
    return legend


#: rcParams every figure of ours is drawn under, whatever the user's matplotlibrc says.
def plain_rc() -> Any:
    """The rcParams context our figures draw under, whatever the user's matplotlibrc says (user text is plain
    text, never LaTeX)."""
    import matplotlib

    return matplotlib.rc_context({"text.usetex": False})


class PlainTextFigure(Figure):
    """The Figure class of every figure of ours: drawn, laid out and saved with ``text.usetex`` off
    (:func:`plain_rc`, a local ``matplotlib.rc_context``), every Text artist set to ``usetex=False`` first, so a
    user's global style (usetex on, no LaTeX installed) cannot lose a figure. Every renderer (``savefig``,
    TensorBoard's ``canvas.draw``) goes through :meth:`draw`.

    >>> import io, matplotlib, matplotlib.text
    >>> with matplotlib.rc_context({"text.usetex": True}):
    ...     figure = PlainTextFigure()
    ...     _ = figure.add_subplot().set_title("50% of $x$")
    ...     figure.savefig(io.BytesIO(), format="png")  # a plain Figure would run latex here (and fail without it)
    >>> any(text.get_usetex() for text in figure.axes[0].findobj(matplotlib.text.Text))
    False
    """

    def draw(self, renderer: Any) -> None:
        with plain_rc():
            self._plain_texts()
            super().draw(renderer)

    def savefig(self, *args: Any, **kwargs: Any) -> None:
        with plain_rc():
            self._plain_texts()
            super().savefig(*args, **kwargs)

    def tight_layout(self, *args: Any, **kwargs: Any) -> None:  # measures text: the same rcParams as drawing
        with plain_rc():
            self._plain_texts()
            super().tight_layout(*args, **kwargs)

    def _plain_texts(self) -> None:
        from matplotlib.text import Text

        for text in self.findobj(Text):
            text.set_usetex(False)


def _figure(size: tuple[float, float] = _WIDE) -> tuple[Figure, Any]:
    figure = PlainTextFigure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()


def _number(value: Any) -> float:
    """A JSON value as a float; ``None``, non-numbers and non-finite numbers become NaN."""
    kind = type(value)
    if kind is not float and kind is not int:  # not what json.loads gives for a number
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            return math.nan
    number = float(value)
    return number if math.isfinite(number) else math.nan


def _vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise NoDataError(f"{name} is empty")
    return array


def _finite(values: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """The finite entries and how many were dropped; :class:`NoDataError` when none is finite."""
    mask = np.isfinite(values)
    if not mask.any():
        raise NoDataError(f"{name} has no finite value")
    return values[mask], int((~mask).sum())


def _dropped_note(dropped: int) -> str:
    return f" ({dropped} non-finite left out)" if dropped else ""


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of metric ``key`` over rows that carry an integer step and the key.

    A repeated step (e.g. a resumed run) keeps its last value; ``null`` becomes NaN.
    """
    by_step: dict[int, float] = {}
    for row in rows:
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or key not in row:
            continue
        by_step[step] = _number(row[key])
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def _event_steps(events: Iterable[Mapping[str, Any]] | None) -> dict[str, list[int]]:
    by_kind: dict[str, list[int]] = {}
    for event in events or ():
        step = event.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            continue
        by_kind.setdefault(str(event.get("kind", "alarm")), []).append(step)
    return by_kind


def _mark_alarms(axes: Any, events: Iterable[Mapping[str, Any]] | None) -> None:
    """One dashed vertical line per alarm, one legend entry per kind."""
    for kind, steps in sorted(_event_steps(events).items()):
        colour = ALARM_COLOURS.get(kind, _OTHER_ALARM_COLOUR)
        for index, step in enumerate(sorted(set(steps))):
            axes.axvline(
                step,
                color=colour,
                linestyle="--",
                linewidth=1.0,
                alpha=0.8,
                label=f"alarm: {kind}" if index == 0 else None,
            )


# Same order as aquin_monitor.signals.gradients (embeddings, layer.NN[/lora_X], then the rest),
# without importing torch into a plotting module.
_LAYER_GROUP = re.compile(r"^layer\.(\d+)(?:/(.*))?$")


def _group_sort_key(group: str) -> tuple:
    if group == "embeddings":
        return (0, 0, "", group)
    layer = _LAYER_GROUP.match(group)
    if layer:
        return (1, int(layer.group(1)), layer.group(2) or "", group)
    return (2, 0, "", group)


# ---------------------------------------------------------------------------------------------
# training timeline


def loss_curve(
    metrics_rows: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]] | None = None,
    key: str = "contrastive/loss",
) -> Figure:
    """Training loss ``key`` against the optimizer step, alarms as vertical dashed lines.

    Steps whose loss is ``null`` (non-finite) are gaps in the line and marked with a red ``x``
    on the lower edge of the axes.
    """
    steps, values = _series(metrics_rows, key)
    if steps.size == 0 or not np.isfinite(values).any():
        raise NoDataError(f"no row of metrics.jsonl has a finite {key!r}")
    figure, axes = _figure()
    axes.plot(steps, values, color="#333333", linewidth=1.4, marker="." if steps.size < 60 else None, label=key)
    bad = ~np.isfinite(values)
    if bad.any():
        axes.plot(
            steps[bad],
            np.zeros(int(bad.sum())),
            "x",
            color=ALARM_COLOURS["nan"],
            transform=axes.get_xaxis_transform(),
            clip_on=False,
            label="non-finite loss",
        )
    _mark_alarms(axes, events)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(f"Training loss{_dropped_note(int(bad.sum()))}")
    axes.grid(alpha=0.3)
    _legend(axes, loc="upper right", fontsize=9)
    return figure


def contrastive_curve(
    metrics_rows: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]] | None = None
) -> Figure:
    """Mean positive, in-batch negative and hard-negative cosine, the hardest in-batch negative, the gap
    (pos − neg) and the in-batch accuracy per step.

    Series absent from every row (e.g. ``contrastive/hard_neg_sim`` without hard negatives) are
    not drawn; alarms are vertical dashed lines. The accuracy (a fraction, 0 to 1) shares the axis.
    """
    styles = {
        "contrastive/pos_sim": ("positive pairs", "#1a9641", "-"),
        "contrastive/neg_sim": ("in-batch negatives", "#d7191c", "-"),
        "contrastive/hard_neg_sim": ("hard negatives", "#fdae61", "-"),
        "contrastive/hardest_neg_sim": ("hardest in-batch negative", "#7b3294", "--"),
        "contrastive/gap": ("gap (pos − neg)", "#333333", "-."),
        "contrastive/in_batch_acc": ("in-batch accuracy (fraction)", "#2b83ba", ":"),
    }
    figure, axes = _figure()
    drawn = 0
    for key, (label, colour, style) in styles.items():
        steps, values = _series(metrics_rows, key)
        if steps.size and np.isfinite(values).any():
            axes.plot(steps, values, style, color=colour, linewidth=1.4, label=label)
            drawn += 1
    if not drawn:
        raise NoDataError(
            "no row of metrics.jsonl has contrastive/pos_sim, neg_sim, hard_neg_sim, hardest_neg_sim, gap or "
            "in_batch_acc"
        )
    axes.axhline(0.0, color="#999999", linewidth=0.8)
    _mark_alarms(axes, events)
    axes.set_xlabel("step")
    axes.set_ylabel("cosine similarity / accuracy")
    axes.set_title("Contrastive decomposition: positives vs negatives")
    axes.grid(alpha=0.3)
    _legend(axes, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    return figure


def scalar_curves(
    metrics_rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    *,
    title: str,
    ylabel: str,
    log_scale: bool = False,
    events: Sequence[Mapping[str, Any]] | None = None,
) -> Figure:
    """One line per metric of ``keys`` present in some row (e.g. ``optim/lr/group.0``, ``optim/lr/group.1``).

    Args:
        metrics_rows: rows of metrics.jsonl (``{"step": int, metric: value}``).
        keys: the metrics to draw, in legend order; absent ones are skipped.
        title: the axes title.
        ylabel: the y-axis label.
        log_scale: a logarithmic y axis (when every drawn value is positive).
        events: alarms, drawn as vertical dashed lines.

    Returns:
        The figure; :class:`NoDataError` when no key has a finite value.

    >>> figure = scalar_curves([{"step": 1, "optim/lr": 1e-4}, {"step": 2, "optim/lr": 5e-5}], ["optim/lr"],
    ...                        title="Learning rate", ylabel="learning rate")
    >>> [line.get_label() for line in figure.axes[0].get_lines()]
    ['optim/lr']
    """
    figure, axes = _figure()
    drawn, positive = 0, True
    for key in keys:
        steps, values = _series(metrics_rows, key)
        if steps.size and np.isfinite(values).any():
            axes.plot(steps, values, linewidth=1.4, marker="." if steps.size < 60 else None, label=key)
            drawn += 1
            positive = positive and bool(np.all(values[np.isfinite(values)] > 0))
    if not drawn:
        raise NoDataError(f"no row of metrics.jsonl has a finite {', '.join(keys) or 'value'}")
    if log_scale and positive:
        axes.set_yscale("log")
    _mark_alarms(axes, events)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    _legend(axes, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    return figure


def _step_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges halfway between consecutive steps (irregular logging intervals stay honest)."""
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    middles = (steps[1:] + steps[:-1]) / 2.0
    return np.concatenate([[steps[0] - (middles[0] - steps[0])], middles, [steps[-1] + (steps[-1] - middles[-1])]])


def grad_norm_heatmap(
    metrics_rows: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]] | None = None,
    prefix: str = "grad_norm/",
) -> Figure:
    """Gradient norm of every ``grad_norm/<group>`` (rows; ``total`` left out) per step (columns).

    Colour is on a log scale between the smallest positive and the largest finite norm. An exact
    zero (a dead layer) is drawn black, a ``null`` (non-finite) norm white with a red ``x``.
    An alarm whose ``layer`` names a row is ringed at (step, row) in its kind's colour; one
    that names no row (e.g. the loss) is a dashed vertical line.
    """
    groups, steps, grid, logged_null = _grad_norm_grid(metrics_rows, prefix)
    positive = grid[np.isfinite(grid) & (grid > 0)]
    if positive.size == 0 and not np.isfinite(grid).any():
        raise NoDataError("every gradient norm is null")
    vmin, vmax = (positive.min(), positive.max()) if positive.size else (1e-12, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin / 10.0, vmax * 10.0
    # LogNorm masks values <= 0; a dead layer must stay visible, so zeros map to the 'under' colour.
    shown = np.where(grid == 0.0, vmin / 10.0, grid)
    colour_map = _colour_map("viridis", under="black", bad="white")

    height = min(2.0 + 0.28 * len(groups), 14.0)
    figure, axes = _figure((9.0, height))
    x_edges = _step_edges(steps.astype(np.float64))
    y_edges = np.arange(len(groups) + 1) - 0.5
    mesh = axes.pcolormesh(
        x_edges,
        y_edges,
        np.ma.masked_invalid(shown),
        norm=LogNorm(vmin=vmin, vmax=vmax),
        cmap=colour_map,
        shading="flat",
    )
    colourbar = figure.colorbar(mesh, ax=axes, extend="min", pad=0.01)
    colourbar.set_label("gradient L2 norm (black: 0)")
    null_rows, null_columns = np.nonzero(logged_null)
    if null_rows.size:
        axes.plot(steps[null_columns], null_rows, "x", color=ALARM_COLOURS["nan"], markersize=5, label="non-finite")

    row_of = {group: index for index, group in enumerate(groups)}
    unplaced: list[Mapping[str, Any]] = []
    for kind, points in _alarm_cells(events, row_of).items():
        if points:
            xs, ys = zip(*points)
            axes.scatter(
                xs,
                ys,
                s=70,
                facecolors="none",
                edgecolors=ALARM_COLOURS.get(kind, _OTHER_ALARM_COLOUR),
                linewidths=2.0,
                label=f"alarm: {kind}",
                zorder=3,
            )
    for event in events or ():
        layer = _alarm_layer(event.get("layer"))
        if layer not in row_of:
            unplaced.append(event)
    _mark_alarms(axes, unplaced)
    axes.set_yticks(range(len(groups)), groups, fontsize=7 if len(groups) > 20 else 8, **PLAIN_TEXT)
    axes.set_ylim(len(groups) - 0.5, -0.5)
    axes.set_xlabel("step")
    axes.set_title("Gradient norm per layer (log scale)")
    handles, _ = axes.get_legend_handles_labels()
    if handles:
        _legend(figure, loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    return figure


def _grad_norm_grid(
    metrics_rows: Sequence[Mapping[str, Any]], prefix: str
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Groups (rows), steps (columns), the ``[groups, steps]`` norms (NaN: absent or null) and
    where a norm was logged as null/non-finite."""
    groups = sorted(
        {
            key[len(prefix) :]
            for row in metrics_rows
            for key in row
            if key.startswith(prefix) and key != prefix + "total"
        },
        key=_group_sort_key,
    )
    if not groups:
        raise NoDataError(f"no row of metrics.jsonl has a {prefix}<group> key")
    # Only rows that log a gradient norm are columns: snapshot metrics share metrics.jsonl.
    steps = np.array(
        sorted(
            {
                row["step"]
                for row in metrics_rows
                if _is_step(row.get("step")) and any(k.startswith(prefix) for k in row)
            }
        ),
        dtype=np.int64,
    )
    column = {int(step): index for index, step in enumerate(steps)}
    row_of_key = {prefix + group: index for index, group in enumerate(groups)}
    grid = np.full((len(groups), steps.size), np.nan)
    logged_null = np.zeros(grid.shape, dtype=bool)  # logged as null/non-finite, not merely absent
    for row in metrics_rows:
        step = row.get("step")
        where = column.get(step) if _is_step(step) else None
        if where is None:
            continue
        for key, value in row.items():
            index = row_of_key.get(key)
            if index is not None:
                grid[index, where] = number = _number(value)
                logged_null[index, where] = number != number
    return groups, steps, grid, logged_null


def _is_step(step: Any) -> TypeGuard[int]:
    return isinstance(step, int) and not isinstance(step, bool)


def _alarm_layer(layer: Any) -> str | None:
    if not isinstance(layer, str):
        return None
    return layer[len("grad_norm/") :] if layer.startswith("grad_norm/") else layer


def _alarm_cells(events, row_of: Mapping[str, int]) -> dict[str, list[tuple[int, int]]]:
    cells: dict[str, list[tuple[int, int]]] = {}
    for event in events or ():
        layer = _alarm_layer(event.get("layer"))
        if layer is not None and layer in row_of and _is_step(event.get("step")):
            cells.setdefault(str(event.get("kind", "alarm")), []).append((event["step"], row_of[layer]))
    return cells


def _colour_map(name: str, *, under: str | None = None, bad: str | None = None):
    from matplotlib import colormaps

    extremes = {key: value for key, value in (("under", under), ("bad", bad)) if value is not None}
    return colormaps[name].with_extremes(**extremes) if extremes else colormaps[name]


# ---------------------------------------------------------------------------------------------
# snapshot figures


def _points(umap: Any) -> np.ndarray:
    points = np.asarray(umap, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"umap coordinates must have shape [n, 2], got {points.shape}")
    if points.shape[0] == 0:
        raise NoDataError("umap coordinates are empty")
    return points


def umap_by_label(umap: Any, labels: Sequence[Any] | None = None) -> Figure:
    """2-D UMAP of the probe set, one colour per label (the 19 most frequent; the rest grey)."""
    points = _points(umap)
    figure, axes = _figure(_SQUARE)
    if labels is None or len(labels) == 0:
        axes.scatter(points[:, 0], points[:, 1], s=8, color="#2b83ba", alpha=0.8)
        title = "UMAP of the probe set (no labels)"
    else:
        names = np.asarray([str(label) for label in labels])
        if names.shape[0] != points.shape[0]:
            raise ValueError(f"got {names.shape[0]} labels for {points.shape[0]} points")
        unique, counts = np.unique(names, return_counts=True)
        order = unique[np.argsort(-counts, kind="stable")]
        coloured = order if order.size <= _MAX_LABEL_COLOURS else order[: _MAX_LABEL_COLOURS - 1]
        palette = _colour_map("tab20" if coloured.size > 10 else "tab10")
        rest = ~np.isin(names, coloured)
        if rest.any():
            axes.scatter(
                points[rest, 0],
                points[rest, 1],
                s=6,
                color="#bbbbbb",
                alpha=0.6,
                label=f"other ({order.size - coloured.size} labels)",
            )
        for index, label in enumerate(coloured):
            mask = names == label
            axes.scatter(
                points[mask, 0],
                points[mask, 1],
                s=8,
                color=palette(index % palette.N),
                alpha=0.85,
                label=_short(label, 28),
            )
        _legend(axes, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=1.5, frameon=False)
        title = f"UMAP of the probe set by label ({unique.size} labels)"
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    return figure


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def umap_by_ood(umap: Any, ood_score: Any, flagged: Sequence[int] | None = None) -> Figure:
    """2-D UMAP coloured by OOD score (cosine distance to the corpus centroid); ``flagged``
    indices (the inputs over the OOD threshold) are ringed in red."""
    points = _points(umap)
    scores = np.asarray(ood_score, dtype=np.float64)
    if scores.shape != (points.shape[0],):
        raise ValueError(f"ood_score must have shape [{points.shape[0]}], got {scores.shape}")
    figure, axes = _figure(_SQUARE)
    order = np.argsort(np.nan_to_num(scores, nan=-np.inf))  # high scores drawn last, on top
    cloud = axes.scatter(points[order, 0], points[order, 1], c=scores[order], s=8, cmap="magma_r", plotnonfinite=True)
    figure.colorbar(cloud, ax=axes, pad=0.01).set_label("OOD score (cosine distance to centroid)")
    if flagged is not None and len(flagged):
        index = np.asarray([i for i in flagged if 0 <= int(i) < points.shape[0]], dtype=np.int64)
        axes.scatter(
            points[index, 0],
            points[index, 1],
            s=60,
            facecolors="none",
            edgecolors="#d7191c",
            linewidths=1.2,
            label=f"flagged OOD ({index.size})",
        )
        _legend(axes, loc="lower right", fontsize=9)
    axes.set_title("UMAP of the probe set by OOD score")
    axes.set_xticks([])
    axes.set_yticks([])
    return figure


def anisotropy_histogram(
    counts: Any, edges: Any, baseline: Any | None = None, anisotropy: float | None = None
) -> Figure:
    """Fraction of sampled pairs per cosine bin, against the uniform-sphere baseline.

    Bars are ``counts / Σ counts``; ``baseline`` is the expected fraction per bin for
    independent uniform directions in the same dimension (mean 0, std 1/√d). A cloud whose bars
    sit right of the baseline is anisotropic (all embeddings point one way).
    """
    counts = _vector(counts, "pair_hist_counts")
    edges = _vector(edges, "pair_hist_edges")
    if edges.size != counts.size + 1:
        raise ValueError(
            f"pair_hist_edges must have {counts.size + 1} entries for {counts.size} bins, got {edges.size}"
        )
    total = counts.sum()
    if not total > 0:
        raise NoDataError("pair_hist_counts sums to zero")
    figure, axes = _figure()
    axes.stairs(counts / total, edges, fill=True, color="#2b83ba", alpha=0.6, label="probe pairs")
    if baseline is not None:
        baseline = _vector(baseline, "pair_hist_baseline")
        if baseline.size != counts.size:
            raise ValueError(f"pair_hist_baseline must have {counts.size} bins, got {baseline.size}")
        axes.stairs(baseline, edges, color="#333333", linewidth=1.5, label="uniform sphere (isotropic)")
    mean = float(np.sum(counts * (edges[:-1] + edges[1:]) / 2.0) / total)
    axes.axvline(mean, color="#2b83ba", linestyle="--", linewidth=1.0, label=f"binned mean {mean:.3f}")
    title = "Pairwise cosine similarity vs uniform sphere"
    if anisotropy is not None and math.isfinite(_number(anisotropy)):
        title += f" (anisotropy {float(anisotropy):.3f})"
    axes.set_title(title)
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("fraction of pairs")
    axes.set_xlim(edges[0], edges[-1])
    _legend(axes, loc="upper left", fontsize=9)
    axes.grid(alpha=0.3)
    return figure


def pca_variance_curve(cumulative: Any, thresholds: Sequence[float] = (0.90, 0.95, 0.99)) -> Figure:
    """Cumulative explained-variance ratio against the number of PCA components; for each
    threshold t the intrinsic dimension min{k : cumulative[k−1] ≥ t} is marked."""
    cumulative = _vector(cumulative, "pca_cumulative")
    components = np.arange(1, cumulative.size + 1)
    figure, axes = _figure()
    axes.plot(components, cumulative, color="#333333", linewidth=1.6)
    for threshold, colour in zip(thresholds, ("#1a9641", "#fdae61", "#d7191c", "#7b3294")):
        reached = np.nonzero(cumulative >= threshold - 1e-12)[0]
        if reached.size:
            k = int(reached[0]) + 1
            axes.axhline(threshold, color=colour, linestyle=":", linewidth=1.0)
            axes.axvline(k, color=colour, linestyle="--", linewidth=1.0, label=f"{threshold:.0%} at {k} components")
    axes.set_xscale("log" if cumulative.size > 50 else "linear")
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("number of principal components")
    axes.set_ylabel("cumulative explained variance")
    axes.set_title(f"PCA explained variance ({cumulative.size} components)")
    _legend(axes, loc="lower right", fontsize=9)
    axes.grid(alpha=0.3)
    return figure


def layer_similarity(values: Any) -> Figure:
    """Mean pairwise cosine of each layer's pooled hidden state; index 0 is the embedding layer."""
    values = _vector(values, "layer_similarity")
    layers = np.arange(values.size)
    figure, axes = _figure()
    axes.plot(layers, values, marker="o", color="#2b83ba", linewidth=1.6)
    axes.set_xticks(layers, ["emb"] + [str(i) for i in layers[1:]])
    axes.ticklabel_format(axis="y", useOffset=False)  # nearly equal layers: plain values, not "1e-5 + 0.98"
    axes.set_xlabel("layer (emb = embedding output)")
    axes.set_ylabel("mean pairwise cosine")
    axes.set_title("Layer-wise similarity (anisotropy of each layer)")
    axes.grid(alpha=0.3)
    return figure


def attention_entropy_heatmap(
    entropy: Any, flagged_heads: Sequence[Mapping[str, Any]] | None = None, normalized: bool = False
) -> Figure:
    """Attention entropy per layer (rows) and head (columns); ``flagged_heads`` entries
    ``{"layer", "head", "kind"}`` are marked: ``C`` collapsed (entropy near 0), ``U`` uniform
    (near log(len), a "dead" head). ``normalized`` labels the scale as entropy / log(len)."""
    grid = np.asarray(entropy, dtype=np.float64)
    if grid.ndim != 2:
        raise ValueError(f"attention entropy must have shape [layers, heads], got {grid.shape}")
    if grid.size == 0:
        raise NoDataError("attention entropy is empty")
    layers, heads = grid.shape
    figure, axes = _figure((min(3.0 + 0.45 * heads, 10.0), min(2.0 + 0.4 * layers, 9.0)))
    image = axes.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        cmap=_colour_map("cividis", bad="white"),
        vmin=0.0,
        vmax=1.0 if normalized else None,
        interpolation="nearest",
    )
    figure.colorbar(image, ax=axes, pad=0.01).set_label("entropy / log(len)" if normalized else "entropy (nats)")
    for head in flagged_heads or ():
        layer, index = head.get("layer"), head.get("head")
        if not (_is_step(layer) and _is_step(index) and 0 <= layer < layers and 0 <= index < heads):
            continue
        kind = str(head.get("kind", ""))
        axes.text(
            index,
            layer,
            "C" if kind == "collapsed" else "U" if kind == "uniform" else "!",
            ha="center",
            va="center",
            color="#d7191c",
            fontsize=10,
            fontweight="bold",
        )
    axes.set_xticks(range(heads))
    axes.set_yticks(range(layers))
    axes.set_xlabel("head")
    axes.set_ylabel("layer")
    flagged = len(flagged_heads or ())
    axes.set_title(f"Attention entropy per head ({flagged} flagged: C collapsed, U uniform)", fontsize=10)
    return figure


_RANK_BINS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, math.inf))


def rank_histogram(first_rank: Any) -> Figure:
    """Queries by the 1-based rank of their first relevant document, in bins 1, 2, 3, 4–5, 6–10,
    11–20, 21–50, 51–100, >100; a non-finite or < 1 rank counts as "not found"."""
    ranks = _vector(first_rank, "first_rank")
    found = np.isfinite(ranks) & (ranks >= 1)
    labels, counts = [], []
    for low, high in _RANK_BINS:
        labels.append(str(low) if low == high else f">{low - 1}" if math.isinf(high) else f"{low}–{high}")
        counts.append(int(np.sum(found & (ranks >= low) & (ranks <= high))))
    if not found.all():
        labels.append("not found")
        counts.append(int((~found).sum()))
    figure, axes = _figure()
    colours = ["#1a9641"] + ["#2b83ba"] * 4 + ["#fdae61"] * 4 + ["#d7191c"] * (len(labels) - 9)
    bars = axes.bar(range(len(labels)), counts, color=colours)
    axes.bar_label(bars, fontsize=8)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_xlabel("rank of the first relevant document")
    axes.set_ylabel("queries")
    at_one = counts[0] / ranks.size
    axes.set_title(f"Rank of the first relevant document ({ranks.size} queries, {at_one:.0%} at rank 1)")
    axes.grid(axis="y", alpha=0.3)
    return figure


def hard_negative_gap_distribution(gaps: Any, bins: int = 40) -> Figure:
    """Per-query hard-negative gap = sim(closest positive) − sim(closest negative); a query left of
    0 ranks a negative above every positive."""
    values, dropped = _finite(_vector(gaps, "hard_negative_gap"), "hard_negative_gap")
    figure, axes = _figure()
    low, high = float(values.min()), float(values.max())
    span = max(abs(low), abs(high), 1e-3)
    edges = np.linspace(min(low, -0.05 * span), max(high, 0.05 * span), bins + 1)
    counts, _ = np.histogram(values, bins=edges)
    axes.stairs(counts, edges, fill=True, color="#2b83ba", alpha=0.7)
    axes.axvline(0.0, color="#d7191c", linewidth=1.2, label="0: negative as close as positive")
    axes.axvline(
        float(np.median(values)),
        color="#333333",
        linestyle="--",
        linewidth=1.0,
        label=f"median {np.median(values):.3f}",
    )
    below = float(np.mean(values < 0))
    axes.set_title(f"Hard-negative gap per query ({below:.0%} below 0){_dropped_note(dropped)}")
    axes.set_xlabel("sim(closest positive) − sim(closest negative)")
    axes.set_ylabel("queries")
    _legend(axes, loc="upper left", fontsize=9)
    axes.grid(alpha=0.3)
    return figure


# ---------------------------------------------------------------------------------------------
# diff figures


def centroid_drift_arrows(base_2d: Any, now_2d: Any, labels: Sequence[Any] | None = None) -> Figure:
    """Per-label centroids of the base model (open circles) and now (filled), an arrow from each
    base centroid to its current position, both in one shared 2-D projection."""
    base = np.asarray(base_2d, dtype=np.float64)
    now = np.asarray(now_2d, dtype=np.float64)
    if base.ndim != 2 or base.shape[1] != 2 or base.shape != now.shape:
        raise ValueError(f"centroids must both have shape [k, 2], got {base.shape} and {now.shape}")
    if base.shape[0] == 0:
        raise NoDataError("no centroids")
    names = [str(label) for label in labels] if labels is not None else [str(i) for i in range(base.shape[0])]
    if len(names) != base.shape[0]:
        raise ValueError(f"got {len(names)} centroid labels for {base.shape[0]} centroids")
    figure, axes = _figure(_SQUARE)
    palette = _colour_map("tab20" if len(names) > 10 else "tab10")
    for index, name in enumerate(names):
        colour = palette(index % palette.N)
        axes.scatter(*base[index], s=40, facecolors="none", edgecolors=colour, linewidths=1.5)
        axes.scatter(*now[index], s=40, color=colour)
        axes.annotate(
            "", xy=now[index], xytext=base[index], arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 1.4}
        )
        axes.annotate(
            _short(name, 18),
            now[index],
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=7,
            color=colour,
            **PLAIN_TEXT,
        )
    axes.margins(0.15)  # room for the labels of centroids on the edge
    shift = np.linalg.norm(now - base, axis=1)
    axes.set_title(f"Centroid drift base → now ({len(names)} labels, mean shift {shift.mean():.3f})", fontsize=10)
    axes.set_xlabel("projection axis 1")
    axes.set_ylabel("projection axis 2")
    axes.grid(alpha=0.3)
    return figure


def similarity_shift(base_values: Any, now_values: Any, bins: int = 50) -> Figure:
    """Distributions of sampled pairwise cosines at the base model and now, on shared bins,
    with their means; a shift right means the space became more anisotropic."""
    base, dropped_base = _finite(_vector(base_values, "sim_base_values"), "sim_base_values")
    now, dropped_now = _finite(_vector(now_values, "sim_now_values"), "sim_now_values")
    low = min(base.min(), now.min())
    high = max(base.max(), now.max())
    if high <= low:
        low, high = low - 0.05, high + 0.05
    edges = np.linspace(low, high, bins + 1)
    figure, axes = _figure()
    for values, label, colour in ((base, "base", "#999999"), (now, "now", "#2b83ba")):
        density, _ = np.histogram(values, bins=edges, density=True)
        axes.stairs(density, edges, fill=True, alpha=0.45, color=colour, label=f"{label} (mean {values.mean():.3f})")
        axes.axvline(values.mean(), color=colour, linestyle="--", linewidth=1.2)
    axes.set_title(f"Similarity distribution shift{_dropped_note(dropped_base + dropped_now)}")
    axes.set_xlabel("cosine similarity of sampled pairs")
    axes.set_ylabel("density")
    _legend(axes, loc="upper left", fontsize=9)
    axes.grid(alpha=0.3)
    return figure


def rank_changes(rank_before: Any, rank_after: Any) -> Figure:
    """Rank of each query's first relevant document at the base model (x) against now (y), both
    log scale; points under the diagonal improved. Pairs with a non-finite or < 1 rank are left out."""
    before = _vector(rank_before, "rank_before")
    after = _vector(rank_after, "rank_after")
    if before.shape != after.shape:
        raise ValueError(f"rank_before and rank_after differ in length: {before.size} vs {after.size}")
    keep = np.isfinite(before) & np.isfinite(after) & (before >= 1) & (after >= 1)
    if not keep.any():
        raise NoDataError("no query has a valid rank before and after")
    before, after = before[keep], after[keep]
    improved, worse = after < before, after > before
    figure, axes = _figure(_SQUARE)
    rng = np.random.default_rng(0)
    # Ranks are integers; a little multiplicative jitter shows how many queries share a point.
    jitter = np.exp(rng.uniform(-0.06, 0.06, size=(2, before.size)))
    for mask, colour, label in (
        (improved, "#1a9641", f"improved ({int(improved.sum())})"),
        (worse, "#d7191c", f"worse ({int(worse.sum())})"),
        (~improved & ~worse, "#999999", f"unchanged ({int((~improved & ~worse).sum())})"),
    ):
        axes.scatter(
            before[mask] * jitter[0, mask], after[mask] * jitter[1, mask], s=12, alpha=0.7, color=colour, label=label
        )
    top = max(before.max(), after.max()) * 1.5
    axes.plot([0.8, top], [0.8, top], color="#333333", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(0.8, top)
    axes.set_ylim(0.8, top)
    axes.set_xlabel("rank at base model")
    axes.set_ylabel("rank now")
    left_out = int((~keep).sum())
    axes.set_title(f"Rank of the first relevant document, base vs now{_dropped_note(left_out)}", fontsize=10)
    _legend(axes, loc="upper left", fontsize=9)
    axes.grid(alpha=0.3, which="both")
    return figure


# ---------------------------------------------------------------------------------------------
# The registry of snapshot figures: dashboards and the HTML report draw the same set


@dataclass(frozen=True)
class SnapshotFigure:
    """One figure of a snapshot: logged as ``snapshot/<name>`` on dashboards, shown under ``caption``
    in the report. ``needs``: the arrays it draws from; ``diff``: it shows a change against the base."""

    name: str
    caption: str
    needs: tuple[str, ...]
    draw: Callable[[Mapping[str, Any]], Figure]
    diff: bool = False


def snapshot_figure_inputs(
    arrays: Mapping[str, Any], metrics: Mapping[str, Any], details: Mapping[str, Any]
) -> dict[str, Any]:
    """The arrays of a snapshot plus the few numbers and details its figures take (keys starting with ``_``).

    >>> inputs = snapshot_figure_inputs(
    ...     {"attention_entropy": 1, "attention_entropy_normalized": 2}, {}, {"ood_flagged": [{"index": 4}]}
    ... )
    >>> inputs["attention_entropy"], inputs["_flagged"]
    (2, [4])
    """
    inputs: dict[str, Any] = dict(arrays)
    # Normalised entropy (÷ log(len)) compares heads over inputs of different lengths; prefer it.
    inputs["_attention_normalized"] = keys.ATTENTION_ENTROPY_NORMALIZED in inputs
    if inputs["_attention_normalized"]:
        inputs[keys.ATTENTION_ENTROPY] = inputs[keys.ATTENTION_ENTROPY_NORMALIZED]
    inputs["_flagged_heads"] = [h for h in details.get(keys.FLAGGED_HEADS) or [] if isinstance(h, dict)]
    ood = [item.get("index") for item in details.get(keys.OOD_FLAGGED) or [] if isinstance(item, dict)]
    inputs["_flagged"] = [i for i in ood if isinstance(i, int) and not isinstance(i, bool)]
    inputs["_anisotropy"] = metrics.get("geometry/anisotropy")
    if details.get(keys.SAE_GAINED) or details.get(keys.SAE_LOST):
        inputs["_sae_movers"] = {"gained": details.get(keys.SAE_GAINED) or [], "lost": details.get(keys.SAE_LOST) or []}
    return inputs


def feature_movers_figure(movers: Mapping[str, Sequence[Mapping[str, Any]]], *, top: int = 8) -> Figure:
    """Features whose firing frequency rose (gained) or fell (lost) most, with their top text.

    Args:
        movers: :func:`aquin_monitor.sae.monitoring.feature_movers` output (a snapshot's ``sae/gained`` and
            ``sae/lost`` details).
        top: bars per side.

    >>> m = {"gained": [{"feature": 3, "frequency_before": 0.0, "frequency_after": 0.2, "top_texts": ["$$ <script>"]}],
    ...      "lost": []}
    >>> fig = feature_movers_figure(m)
    >>> fig.canvas.draw()  # plain text: "$$" does not break rendering
    """
    fig = Figure(figsize=(10, 5))
    for i, side in enumerate(("gained", "lost")):
        ax = fig.add_subplot(1, 2, i + 1)
        rows = list(movers.get(side, []))[:top][::-1]
        deltas = [row["frequency_after"] - row["frequency_before"] for row in rows]
        positions = np.arange(len(rows))
        ax.barh(positions, deltas, color="#55a868" if side == "gained" else "#c44e52")
        ax.set_yticks([])
        # one Text artist per label with parse_math=False (tick labels may be rebuilt at draw time)
        for position, row in zip(positions, rows):
            label = f"#{row['feature']}: " + _short(" ".join(str((row.get("top_texts") or [""])[0]).split()), 45)
            ax.text(
                0.0,
                position + 0.42,
                label,
                fontsize=7,
                va="bottom",
                parse_math=False,
                transform=ax.get_yaxis_transform(),
            )
        ax.set_ylim(-0.6, max(len(rows), 1) - 0.1 + 0.4)
        ax.set_xlabel("change in firing frequency")
        ax.set_title(f"features {side}", parse_math=False)
    fig.tight_layout()
    return fig


SNAPSHOT_FIGURES: tuple[SnapshotFigure, ...] = (
    SnapshotFigure(
        "umap_by_label", "UMAP by label", (keys.UMAP,), lambda a: umap_by_label(a[keys.UMAP], a.get(keys.LABELS))
    ),
    SnapshotFigure(
        "umap_by_ood",
        "UMAP by OOD score",
        (keys.UMAP, keys.OOD_SCORE),
        lambda a: umap_by_ood(a[keys.UMAP], a[keys.OOD_SCORE], a.get("_flagged")),
    ),
    SnapshotFigure(
        "anisotropy_histogram",
        "Pairwise cosine vs uniform sphere",
        (keys.PAIR_HIST_COUNTS, keys.PAIR_HIST_EDGES),
        lambda a: anisotropy_histogram(
            a[keys.PAIR_HIST_COUNTS], a[keys.PAIR_HIST_EDGES], a.get(keys.PAIR_HIST_BASELINE), a.get("_anisotropy")
        ),
    ),
    SnapshotFigure(
        "pca_variance",
        "PCA explained variance",
        (keys.PCA_CUMULATIVE,),
        lambda a: pca_variance_curve(a[keys.PCA_CUMULATIVE]),
    ),
    SnapshotFigure(
        "layer_similarity",
        "Layer-wise similarity",
        (keys.LAYER_SIMILARITY,),
        lambda a: layer_similarity(a[keys.LAYER_SIMILARITY]),
    ),
    SnapshotFigure(
        "attention_entropy",
        "Attention entropy per head",
        (keys.ATTENTION_ENTROPY,),
        lambda a: attention_entropy_heatmap(
            a[keys.ATTENTION_ENTROPY], a.get("_flagged_heads"), normalized=a.get("_attention_normalized", False)
        ),
    ),
    SnapshotFigure(
        "rank_histogram",
        "Rank of the first relevant document",
        (keys.FIRST_RANK,),
        lambda a: rank_histogram(a[keys.FIRST_RANK]),
    ),
    SnapshotFigure(
        "hard_negative_gap",
        "Hard-negative gap per query",
        (keys.HARD_NEGATIVE_GAP,),
        lambda a: hard_negative_gap_distribution(a[keys.HARD_NEGATIVE_GAP]),
    ),
    SnapshotFigure(
        "centroid_drift",
        "Centroid drift base → now",
        (keys.CENTROID_BASE_2D, keys.CENTROID_NOW_2D),
        lambda a: centroid_drift_arrows(a[keys.CENTROID_BASE_2D], a[keys.CENTROID_NOW_2D], a.get(keys.CENTROID_LABELS)),
        diff=True,
    ),
    SnapshotFigure(
        "similarity_shift",
        "Similarity distribution shift",
        (keys.SIM_BASE_VALUES, keys.SIM_NOW_VALUES),
        lambda a: similarity_shift(a[keys.SIM_BASE_VALUES], a[keys.SIM_NOW_VALUES]),
        diff=True,
    ),
    SnapshotFigure(
        "rank_changes",
        "Rank changes base → now",
        (keys.RANK_BEFORE, keys.RANK_AFTER),
        lambda a: rank_changes(a[keys.RANK_BEFORE], a[keys.RANK_AFTER]),
        diff=True,
    ),
    SnapshotFigure(
        "sae_movers",
        "SAE features gained and lost against the base model",
        ("_sae_movers",),
        lambda a: feature_movers_figure(a["_sae_movers"]),
        diff=True,
    ),
)
