"""The pages written once a run's files are complete: the SAE page and the HTML report.

Both trainer callbacks call :func:`write_run_pages` at train end, after
:meth:`~aquin_monitor.monitor.StepMonitor.end` has taken the last snapshot and closed the sinks. The
per-step core (the monitor, the snapshot runner) never writes pages: it only computes and logs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..failsoft import report_failure

if TYPE_CHECKING:
    from ..monitor import StepMonitor
    from ..snapshot_runner import SnapshotRunner

__all__ = ["write_run_pages", "write_sae_page"]


def write_sae_page(runner: SnapshotRunner, run_dir: str | os.PathLike) -> Path | None:
    """The SAE page (browser, co-activation network, diagnostics) of ``runner``'s latest snapshot's probe
    embeddings under its base SAE, as ``<run_dir>/sae.html`` (linked from the report); None when the
    runner has no SAE, no snapshot yet, or an SAE of another dimension."""
    from ..report import SAE_PAGE
    from ..sae.page import analyse_corpus, write_page

    latest = runner.previous
    if runner.sae is None or latest is None or runner.sae.d_in != latest.arrays["embeddings"].shape[1]:
        return None
    browser, network, diagnostics = analyse_corpus(
        runner.sae, latest.arrays["embeddings"], runner.probe.texts, min_support=3
    )
    title = f"SAE features of the probe at step {latest.step} ({latest.model or 'model'})"
    return write_page(Path(run_dir) / SAE_PAGE, browser, network, diagnostics, title=title)


def write_run_pages(monitor: StepMonitor, *, report: bool, strict: bool = False) -> None:
    """After :meth:`StepMonitor.end`: the SAE page (when the snapshots used an SAE) and, if ``report``,
    ``report.html``, on the rank that writes (the one with sinks) and only with a run folder.
    A page that fails warns once (``strict`` re-raises); the run's files are already complete."""
    from ..report import write_report

    if not monitor.sinks or monitor.run_dir is None:
        return
    run_dir = monitor.run_dir
    writers = []
    if monitor.snapshots is not None:
        runner = monitor.snapshots.runner
        writers.append(("the SAE page", lambda: write_sae_page(runner, run_dir)))
    if report:
        writers.append(("the HTML report", lambda: write_report(run_dir)))
    for what, write in writers:
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - the run's files are already complete
            report_failure(f"writing {what}", exc, strict=strict, outcome="is skipped")
