"""End-of-run pages (aquin_monitor.callbacks.run_pages): written at the callbacks' train end, not by the
per-step core; the SAE page when the snapshots use an SAE, report.html unless ``report=False``; a page
that fails warns and the run's files stay complete."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sentence_transformers import SentenceTransformer
from test_callback_hf import _train

from aquin_monitor.callbacks import TrainerEmbeddingMonitor
from aquin_monitor.callbacks.run_pages import write_run_pages
from aquin_monitor.sae.model import SparseAutoencoder
from aquin_monitor.snapshot_runner import SnapshotRunner

PROBE = [f"probe sentence {i} about topic {i % 3}" for i in range(12)]


def test_train_end_writes_the_sae_page_and_the_report(tiny_mean_model, tmp_path):
    dimension = SentenceTransformer(tiny_mean_model, device="cpu").get_sentence_embedding_dimension()
    runner = SnapshotRunner(PROBE, umap=False, sae=SparseAutoencoder(dimension, 16, 4))
    _train(
        tiny_mean_model,
        tmp_path / "out",
        callbacks=[TrainerEmbeddingMonitor(str(tmp_path / "run"), snapshots=runner, strict=True)],
        max_steps=2,
    )
    report = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert (tmp_path / "run" / "sae.html").stat().st_size > 1000
    assert 'href="sae.html"' in report  # the report, written after the SAE page, links it


def test_report_false_leaves_the_report_out(tiny_mean_model, tmp_path):
    _train(
        tiny_mean_model,
        tmp_path / "out",
        callbacks=[TrainerEmbeddingMonitor(str(tmp_path / "run"), report=False, strict=True)],
        max_steps=1,
    )
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "report.html").exists() and not (tmp_path / "run" / "sae.html").exists()


def test_pages_only_on_the_writing_rank_and_a_failing_page_warns(tmp_path):
    writer = SimpleNamespace(sinks=[], run_dir=str(tmp_path), snapshots=None)  # a rank that does not write
    write_run_pages(writer, report=True)
    assert list(tmp_path.iterdir()) == []
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    writer = SimpleNamespace(sinks=[object()], run_dir=str(blocked), snapshots=None)
    with pytest.warns(RuntimeWarning, match="writing the HTML report"):
        write_run_pages(writer, report=True)
    with pytest.raises(Exception):  # noqa: B017 - strict re-raises whatever the writer raised
        write_run_pages(writer, report=True, strict=True)
