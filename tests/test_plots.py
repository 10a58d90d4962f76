"""The figure registry (aquin_monitor.plots): plain data in, a Figure out, with the numbers drawn being the
numbers given. The synthetic run data is the report tests' (tests/test_report.py)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from test_report import DEAD_STEP, EVENTS, GAP_STEP, GROUPS, N_STEPS, _metrics_rows, _snapshot_arrays

from aquin_monitor import plots
from aquin_monitor.signals.geometry import uniform_sphere_cosine_bin_probabilities


def test_loss_curve_draws_the_logged_values():
    rows = _metrics_rows()
    figure = plots.loss_curve(rows, EVENTS)
    assert isinstance(figure, Figure)
    line = figure.axes[0].lines[0]
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, N_STEPS + 1))
    np.testing.assert_allclose(line.get_ydata(), [r["contrastive/loss"] for r in rows])
    vertical = [l for l in figure.axes[0].lines[1:] if l.get_xdata()[0] == l.get_xdata()[1]]
    assert sorted(l.get_xdata()[0] for l in vertical) == [DEAD_STEP, GAP_STEP]


def test_contrastive_curve_skips_absent_series_and_keeps_gaps():
    rows = _metrics_rows()
    for row in rows:
        row.pop("contrastive/hard_neg_sim", None)
    figure = plots.contrastive_curve(rows)
    labels = [l.get_label() for l in figure.axes[0].lines if not l.get_label().startswith("_")]
    assert labels == [
        "positive pairs",
        "in-batch negatives",
        "hardest in-batch negative",
        "gap (pos − neg)",
        "in-batch accuracy (fraction)",
    ]
    lines = {l.get_label(): l for l in figure.axes[0].lines}
    np.testing.assert_allclose(lines["gap (pos − neg)"].get_ydata(), [r["contrastive/gap"] for r in rows])
    np.testing.assert_allclose(
        lines["hardest in-batch negative"].get_ydata(), [r["contrastive/hardest_neg_sim"] for r in rows]
    )
    np.testing.assert_allclose(
        lines["in-batch accuracy (fraction)"].get_ydata(), [r["contrastive/in_batch_acc"] for r in rows]
    )


def test_grad_norm_heatmap_orders_layers_and_marks_dead_and_null_cells():
    rows = [
        {
            "step": 1,
            "grad_norm/head": 1.0,
            "grad_norm/layer.10": 2.0,
            "grad_norm/layer.02": 3.0,
            "grad_norm/layer.00/lora_A": 4.0,
            "grad_norm/embeddings": 5.0,
            "grad_norm/total": 9.0,
        },
        {
            "step": 3,
            "grad_norm/head": 0.0,
            "grad_norm/layer.10": None,
            "grad_norm/layer.02": 3.0,
            "grad_norm/layer.00/lora_A": 4.0,
            "grad_norm/embeddings": 5.0,
            "grad_norm/total": 9.0,
        },
    ]
    events = [{"step": 3, "kind": "dead_layer", "layer": "head"}, {"step": 1, "kind": "spike", "layer": "total"}]
    figure = plots.grad_norm_heatmap(rows, events)
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_yticklabels()] == [
        "embeddings",
        "layer.00/lora_A",
        "layer.02",
        "layer.10",
        "head",
    ]
    mesh = axes.collections[0]
    grid = mesh.get_array()
    assert grid.shape == (5, 2)
    assert grid.mask[3, 1] and not grid.mask[4, 1]  # null is masked (white); 0 is kept ...
    assert grid[4, 1] < mesh.norm.vmin  # ... below the colour range, so drawn in the 'under' colour
    assert mesh.norm.vmin == 1.0 and mesh.norm.vmax == 5.0
    dead = [c for c in axes.collections[1:] if c.get_label() == "alarm: dead_layer"]
    np.testing.assert_array_equal(dead[0].get_offsets(), [[3, 4]])  # at (step 3, row 'head')
    spike_lines = [l for l in axes.lines if l.get_label() == "alarm: spike"]
    assert spike_lines and spike_lines[0].get_xdata()[0] == 1  # 'total' is no row: a vertical line


def test_grad_norm_heatmap_columns_are_training_steps_only():
    rows = [{"step": 0, "geometry/anisotropy": 0.1}] + _metrics_rows()
    mesh = plots.grad_norm_heatmap(rows).axes[0].collections[0]
    assert mesh.get_array().shape == (len(GROUPS), N_STEPS)
    first = [r for r in rows if "grad_norm/embeddings" in r][0]["grad_norm/embeddings"]
    assert mesh.get_array()[0, 0] == pytest.approx(first)


def test_anisotropy_histogram_draws_fractions_and_baseline():
    edges = np.linspace(-1, 1, 5)
    counts = np.array([1, 3, 4, 2])
    baseline = uniform_sphere_cosine_bin_probabilities(edges, 3)  # d=3: uniform on [-1, 1]
    figure = plots.anisotropy_histogram(counts, edges, baseline, anisotropy=0.25)
    axes = figure.axes[0]
    observed, expected = axes.patches
    np.testing.assert_allclose(observed.get_data().values, [0.1, 0.3, 0.4, 0.2])
    np.testing.assert_allclose(expected.get_data().values, [0.25, 0.25, 0.25, 0.25])
    np.testing.assert_array_equal(observed.get_data().edges, edges)
    assert "anisotropy 0.250" in axes.get_title()
    # binned mean = Σ fraction · bin centre = 0.1·(−0.75) + 0.3·(−0.25) + 0.4·0.25 + 0.2·0.75 = 0.1
    assert "binned mean 0.100" in [line.get_label() for line in axes.lines]
    with pytest.raises(ValueError, match="5 entries"):
        plots.anisotropy_histogram(counts, edges[:-1])


def test_pca_variance_curve_marks_intrinsic_dimension():
    cumulative = np.array([0.5, 0.8, 0.91, 0.96, 0.995, 1.0])
    figure = plots.pca_variance_curve(cumulative)
    labels = [l.get_label() for l in figure.axes[0].lines if not l.get_label().startswith("_")]
    assert labels == ["90% at 3 components", "95% at 4 components", "99% at 5 components"]


def test_rank_histogram_bins_by_hand():
    ranks = [1, 1, 2, 4, 5, 7, 30, 101, 500, np.nan]
    figure = plots.rank_histogram(ranks)
    heights = [bar.get_height() for bar in figure.axes[0].patches]
    # bins 1, 2, 3, 4-5, 6-10, 11-20, 21-50, 51-100, >100, not found
    assert heights == [2, 1, 0, 2, 1, 0, 1, 0, 2, 1]
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()][-2:] == [">100", "not found"]
    assert "20% at rank 1" in figure.axes[0].get_title()


def test_hard_negative_gap_counts_queries_below_zero():
    figure = plots.hard_negative_gap_distribution([-0.2, -0.1, 0.1, 0.3, np.nan])
    assert "50% below 0" in figure.axes[0].get_title() and "1 non-finite" in figure.axes[0].get_title()
    assert sum(figure.axes[0].patches[0].get_data().values) == 4


def test_rank_changes_counts_improved_and_worse():
    figure = plots.rank_changes([1, 5, 10, 3, 0], [2, 1, 10, 1, 4])
    labels = sorted(c.get_label() for c in figure.axes[0].collections)
    assert labels == ["improved (2)", "unchanged (1)", "worse (1)"]
    assert figure.axes[0].get_xscale() == "log" and figure.axes[0].get_yscale() == "log"
    assert "1 non-finite left out" in figure.axes[0].get_title()


def test_diff_and_snapshot_figures_accept_plain_arrays():
    rng = np.random.default_rng(3)
    arrays = _snapshot_arrays(rng, with_diff=True)
    figures = [
        plots.umap_by_label(arrays["umap"], arrays["labels"]),
        plots.umap_by_label(arrays["umap"]),
        plots.umap_by_ood(arrays["umap"], arrays["ood_score"], flagged=[3, 7]),
        plots.layer_similarity(arrays["layer_similarity"]),
        plots.attention_entropy_heatmap(arrays["attention_entropy"], [{"layer": 1, "head": 2, "kind": "collapsed"}]),
        plots.centroid_drift_arrows(arrays["centroid_base_2d"], arrays["centroid_now_2d"], arrays["centroid_labels"]),
        plots.similarity_shift(arrays["sim_base_values"], arrays["sim_now_values"]),
    ]
    assert all(isinstance(f, Figure) for f in figures)
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert sorted(legend) == sorted(["sports", "science & tech", "<world>"])
    assert [t.get_text() for t in figures[4].axes[0].texts] == ["C"]
    assert figures[4].axes[0].texts[0].get_position() == (2, 1)
    shift_title = figures[6].axes[0].get_legend().get_texts()
    assert [t.get_text() for t in shift_title] == [
        f"base (mean {arrays['sim_base_values'].mean():.3f})",
        f"now (mean {arrays['sim_now_values'].mean():.3f})",
    ]


def test_figures_refuse_empty_or_mismatched_data():
    with pytest.raises(plots.NoDataError):
        plots.loss_curve([{"step": 1, "grad_norm/total": 1.0}])
    with pytest.raises(plots.NoDataError):
        plots.grad_norm_heatmap([{"step": 1, "grad_norm/total": 1.0}])
    with pytest.raises(plots.NoDataError):
        plots.rank_histogram([])
    with pytest.raises(ValueError, match="3 labels for 2 points"):
        plots.umap_by_label(np.zeros((2, 2)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="differ in length"):
        plots.rank_changes([1, 2], [1])
    with pytest.raises(ValueError, match=r"\[k, 2\]"):
        plots.centroid_drift_arrows(np.zeros((3, 2)), np.zeros((2, 2)))
    assert issubclass(plots.NoDataError, ValueError)


def test_sae_movers_is_a_registered_snapshot_figure_drawn_from_the_details():
    spec = next(s for s in plots.SNAPSHOT_FIGURES if s.name == "sae_movers")
    assert spec.diff
    movers = [{"feature": 7, "frequency_before": 0.1, "frequency_after": 0.4, "top_texts": ["$$ <b>"]}]
    inputs = plots.snapshot_figure_inputs({}, {}, {"sae/gained": movers, "sae/lost": []})
    figure = spec.draw(inputs)
    gained = figure.axes[0].patches
    assert len(gained) == 1 and gained[0].get_width() == pytest.approx(0.3)
    assert "#7: $$ <b>" in [t.get_text() for t in figure.axes[0].texts]
    assert "_sae_movers" not in plots.snapshot_figure_inputs({}, {}, {})  # no movers: the figure is skipped
