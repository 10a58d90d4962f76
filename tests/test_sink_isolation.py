"""Issue 16, point 1: one bad label must never silence a run.

User text (probe labels such as ``$$``, alarm kinds, layer names) reaches matplotlib as plain
text, and a sink part that fails (one call kind, one figure) is switched off alone: the scalars
of every later step still reach ``metrics.jsonl``.
"""

from __future__ import annotations

import io
import warnings

import matplotlib
import numpy as np

from aquin_monitor import plots
from aquin_monitor.data import ProbeSet
from aquin_monitor.encoders import load_model
from aquin_monitor.sinks import JsonlSink, MultiSink, SinkWarning, TensorBoardSink, read_jsonl
from aquin_monitor.snapshot_runner import SnapshotRunner

PRICE_TIERS = ["$", "$$", "$$$$", "<script>", "50% off_{sale}", "a\\b & c"]


def _render(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _rendered_strings(figure) -> list[str]:
    from matplotlib.text import Text

    figure.canvas.draw()  # legends and tick labels exist once drawn
    return [text.get_text() for text in figure.findobj(Text)]


def _user_figures():
    labels = [PRICE_TIERS[i % len(PRICE_TIERS)] for i in range(18)]
    points = np.random.default_rng(0).normal(size=(18, 2))
    events = [{"step": 2, "kind": "$$", "layer": "layer.00"}, {"step": 3, "kind": "$x$", "layer": None}]
    rows = [
        {
            "step": s,
            "contrastive/loss": 1.0 / (s + 1),
            "grad_norm/layer.00": 0.5,
            "grad_norm/$$": 0.2,
            "contrastive/gap": 0.1,
        }
        for s in range(5)
    ]
    return {
        "umap": plots.umap_by_label(points, labels),
        "centroids": plots.centroid_drift_arrows(points[:6], points[6:12], PRICE_TIERS),
        "loss": plots.loss_curve(rows, events),
        "contrastive": plots.contrastive_curve(rows, events),
        "heatmap": plots.grad_norm_heatmap(rows, events),
    }


def test_user_labels_are_drawn_as_plain_text():
    figures = _user_figures()
    for name, figure in figures.items():
        assert _render(figure)[:4] == b"\x89PNG", name
    shown = _rendered_strings(figures["umap"])
    assert {"$", "$$", "$$$$", "<script>", "50% off_{sale}"} <= set(shown)  # the legend says what the user wrote
    assert "$$" in _rendered_strings(figures["centroids"])
    assert "alarm: $x$" in _rendered_strings(figures["loss"]) and "alarm: $$" in _rendered_strings(
        figures["contrastive"]
    )
    assert "$$" in _rendered_strings(figures["heatmap"])  # the layer-name tick label


def test_user_text_ignores_a_global_usetex_setting():
    from matplotlib.text import Text

    with matplotlib.rc_context({"text.usetex": True}):
        figures = _user_figures()
    user = {"$", "$$", "$$$$", "alarm: $x$", "alarm: $$"}
    found = [t for f in figures.values() for t in f.findobj(Text) if t.get_text() in user]
    assert len(found) >= len(user)
    assert all(not t.get_usetex() and not t.get_parse_math() for t in found)


class FailingPart:
    """A sink whose figures and embeddings fail (a full disk for one kind of file, a bad figure)."""

    def __init__(self, fail_tags=("snapshot/umap_by_label",)):
        self.fail_tags = set(fail_tags)
        self.figures: list[tuple[str, int]] = []
        self.scalars: list[int] = []
        self.embedding_calls = 0

    def log_scalars(self, metrics, step):
        self.scalars.append(step)

    def log_histogram(self, tag, values, step):
        pass

    def log_event(self, event):
        pass

    def log_figure(self, tag, figure, step):
        if tag in self.fail_tags:
            raise ValueError(f"cannot draw {tag}")
        self.figures.append((tag, step))

    def log_embeddings(self, tag, embeddings, labels, step):
        self.embedding_calls += 1
        raise OSError("No space left on device")

    def log_summary(self, metrics, step):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def test_multisink_switches_off_only_the_failing_figure_and_call_kind():
    part = FailingPart()
    sink = MultiSink([part])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(4):
            sink.log_scalars({"contrastive/gap": 0.1}, step)
            sink.log_figure("snapshot/umap_by_label", object(), step)
            sink.log_figure("snapshot/layer_similarity", object(), step)
            sink.log_embeddings("probe", np.zeros((3, 2)), None, step)
    sink.close()
    messages = [str(w.message) for w in caught if issubclass(w.category, SinkWarning)]
    assert len(messages) == 2  # one per failing part, once each
    assert any("snapshot/umap_by_label" in m and "log_figure" in m for m in messages)
    assert any("log_embeddings" in m and "No space left" in m for m in messages)
    assert part.scalars == [0, 1, 2, 3]  # scalars never stopped
    assert part.figures == [("snapshot/layer_similarity", s) for s in range(4)]  # the other figure neither
    assert part.embedding_calls == 1  # the failing call kind is not retried
    assert sorted(sink.switched_off) == [
        ("FailingPart", "log_embeddings"),
        ("FailingPart", "log_figure snapshot/umap_by_label"),
    ]


PROBE_TEXTS = [f"item {i} costs {i * 7} dollars in tier {i % 3}" for i in range(18)]


def test_dollar_labels_with_umap_keep_metrics_jsonl_complete(tiny_mean_model, tmp_path):
    """The reported case: `$$` labels, UMAP on, snapshots every 4 steps over 8 steps, JSONL + TensorBoard."""
    model = load_model(tiny_mean_model)
    labels = [["$", "$$", "$$$$"][i % 3] for i in range(len(PROBE_TEXTS))]
    probe = ProbeSet(PROBE_TEXTS, labels, [str(i) for i in range(len(PROBE_TEXTS))], "prices")
    runner = SnapshotRunner(probe, umap=True, batch_size=8, max_attention_texts=4)
    sink = MultiSink([JsonlSink(tmp_path), TensorBoardSink(log_dir=tmp_path / "tb")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(9):
            if step % 4 == 0:
                assert (
                    runner.record(
                        model, step, tag="base" if step == 0 else "checkpoint", run_dir=tmp_path, sinks=[sink]
                    )
                    is not None
                )
            sink.log_scalars({"contrastive/loss": 1.0 / (step + 1)}, step)
    sink.close()
    assert not [w for w in caught if issubclass(w.category, SinkWarning)]
    training = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert training == list(range(9))
    assert [r["step"] for r in read_jsonl(tmp_path / "snapshots.jsonl")] == [0, 4, 8]
    for step in (0, 4, 8):
        png = tmp_path / "figures" / "snapshot_umap_by_label" / f"{step}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
    from aquin_monitor.report import write_report

    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert ": not drawn (" not in page  # no figure failed: the report draws them from the same labels
    assert page.count('alt="UMAP by label"') == 3  # snapshots 0, 4 and 8
