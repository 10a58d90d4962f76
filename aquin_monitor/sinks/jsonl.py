"""Plain files in the run directory, always written: JSON Lines, PNG figures, ``.npz`` embeddings.

Layout of ``run_dir``::

    metrics.jsonl      one object per log_scalars call: {"step": s, "time": unix, **metrics}
    events.jsonl       one object per alarm: {"step", "kind", "layer", "message", "value", "time"}
    snapshots.jsonl    one object per log_summary call: {"step": s, "time": unix, **record}
    evaluations.jsonl  one object per log_evaluation call: the trainer's own evaluation metrics
                       ({"step": s, "time": unix, "eval_loss": ..., ...}), for the report
    histograms.jsonl   one object per histogram: {"step", "time", "tag", "count", "nonfinite",
                       "min", "max", "mean", "std", "quantiles": {"p01": ..., "p99": ...}}
    figures/<tag-slug>/<step>.png
    embeddings/<tag-slug>/<step>.npz   arrays "embeddings" and, when given, "labels"

Every line is serialised in full, then appended with one ``write`` on an ``O_APPEND`` file
descriptor (no user-space buffer), so each line reaches the OS when it is logged and a crash
loses at most the line being written. Non-finite floats are written as ``null`` so every line
is valid JSON. A partial last line left by an earlier crash is cut off when the file is opened
again, so lines never run together.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aquin_monitor.atomic import atomic_path, atomic_write_text
from aquin_monitor.jsonio import JsonlFormatError, iter_jsonl, json_line, read_jsonl, to_jsonable
from aquin_monitor.runlock import RunLock
from aquin_monitor.sinks.base import BaseSink, check_step, finite_values, validate_event

# the JSON helpers live in the neutral aquin_monitor.jsonio; kept importable from here
__all__ = [
    "HISTOGRAM_QUANTILES",
    "JsonlFormatError",
    "JsonlSink",
    "iter_jsonl",
    "json_line",
    "read_jsonl",
    "slug",
    "to_jsonable",
]

logger = logging.getLogger(__name__)

#: Quantiles recorded for each histogram, keyed ``p01`` ... ``p99``.
HISTOGRAM_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

_RESERVED_KEYS = ("step", "time")


def slug(tag: str) -> str:
    """A file-name-safe form of a tag: runs of other characters become ``_``.

    >>> slug("geometry/similarity histogram")
    'geometry_similarity_histogram'
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", tag).strip("._")
    return cleaned or "untitled"


def figure_path(run_dir: str | os.PathLike, tag: str, step: int) -> Path:
    """Where :class:`JsonlSink` saves the figure ``tag`` of ``step``: ``figures/<slug>/<step>.png``."""
    return Path(run_dir) / "figures" / slug(tag) / f"{check_step(step)}.png"


def embeddings_path(run_dir: str | os.PathLike, tag: str, step: int) -> Path:
    """Where :class:`JsonlSink` saves the embeddings ``tag`` of ``step``: ``embeddings/<slug>/<step>.npz``."""
    return Path(run_dir) / "embeddings" / slug(tag) / f"{check_step(step)}.npz"


class _AppendOnlyLines:
    """A file that only ever grows by whole lines, each in one ``os.write`` call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._cut_partial_last_line()

    def _cut_partial_last_line(self) -> None:
        assert self._fd is not None  # opened by __init__ just before
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as handle:
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            # Walk back to the last newline; what follows it is a line a crash cut short.
            end = size
            keep = 0
            while end > 0:
                start = max(0, end - 65536)
                handle.seek(start)
                chunk = handle.read(end - start)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                end = start
        os.truncate(self.path, keep)
        message = (
            f"aquin-monitor: {self.path} ended in a partial line ({size - keep} bytes, left by a crash); it was cut off"
        )
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)

    def write_line(self, line: str) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        data = memoryview(line.encode("utf-8"))
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class JsonlSink(BaseSink):
    """Write monitor output as plain files under ``run_dir`` (see the module docstring for the layout).

    The sink holds the folder's :class:`~aquin_monitor.runlock.RunLock` from creation to :meth:`close`
    (``lock=False``: not), so a second live run writing into the same folder fails at once with
    :class:`~aquin_monitor.runlock.RunFolderLocked` and changes nothing.

    >>> import tempfile
    >>> run_dir = tempfile.mkdtemp()
    >>> sink = JsonlSink(run_dir)
    >>> sink.log_scalars({"contrastive/gap": 0.31, "grad_norm/total": float("inf")}, step=10)
    >>> sink.close()
    >>> [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(f"{run_dir}/metrics.jsonl")]
    [{'step': 10, 'contrastive/gap': 0.31, 'grad_norm/total': None}]
    """

    def __init__(self, run_dir: str | os.PathLike, *, lock: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Claim the folder before touching anything in it: a second live run stops here, having changed nothing.
        self.lock = RunLock(self.run_dir).acquire() if lock else None
        self._files: dict[str, _AppendOnlyLines] = {}
        try:
            self._open_standing_files()
        except BaseException:
            self.close()
            raise

    def _open_standing_files(self) -> None:
        # metrics and events exist from the start: an empty events.jsonl means "no alarm".
        self._file("metrics.jsonl")
        self._file("events.jsonl")

    def _file(self, name: str) -> _AppendOnlyLines:
        if name not in self._files:
            self._files[name] = _AppendOnlyLines(self.run_dir / name)
        return self._files[name]

    def _append(self, name: str, record: Mapping[str, Any]) -> None:
        # Serialise fully before touching the file: a bad value raises here, with nothing written.
        self._file(name).write_line(json_line(record))

    def log_scalars(self, metrics: Mapping[str, float], step: int) -> None:
        self._append("metrics.jsonl", _stamped(metrics, step))

    def log_summary(self, metrics: Mapping[str, Any], step: int) -> None:
        self._append("snapshots.jsonl", _stamped(metrics, step))

    def log_evaluation(self, metrics: Mapping[str, Any], step: int) -> None:
        """The trainer's own evaluation metrics at ``step`` (the files only: the trainer puts them on its
        dashboards)."""
        self._append("evaluations.jsonl", _stamped(metrics, step))

    def log_event(self, event: Mapping[str, Any]) -> None:
        validate_event(event)
        record = {"layer": None, "message": "", "value": None, **event}
        record.setdefault("time", time.time())
        self._append("events.jsonl", record)

    def log_histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        """Append summary statistics of ``values``: count and stats of the finite entries,
        ``nonfinite`` = how many NaN/inf were left out, quantiles by linear interpolation
        (:func:`numpy.quantile`)."""
        step = check_step(step)
        total = int(np.size(values))
        finite = finite_values(values)
        record: dict[str, Any] = {
            "step": step,
            "time": time.time(),
            "tag": tag,
            "count": int(finite.size),
            "nonfinite": total - int(finite.size),
        }
        if finite.size:
            quantiles = np.quantile(finite, HISTOGRAM_QUANTILES)
            record.update(
                min=float(finite.min()),
                max=float(finite.max()),
                mean=float(finite.mean()),
                std=float(finite.std()),
                quantiles={f"p{round(q * 100):02d}": float(v) for q, v in zip(HISTOGRAM_QUANTILES, quantiles)},
            )
        else:
            record.update(min=None, max=None, mean=None, std=None, quantiles=None)
        self._append("histograms.jsonl", record)

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        path = figure_path(self.run_dir, tag, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:  # a reader never sees half a PNG
            figure.savefig(partial, format="png")

    def log_embeddings(
        self,
        tag: str,
        embeddings: np.ndarray,
        labels: Sequence[str] | None,
        step: int,
        texts: Sequence[str] | None = None,
    ) -> None:
        matrix = np.asarray(embeddings)
        if matrix.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D (n, d) array, got shape {matrix.shape}")
        arrays = {"embeddings": matrix}
        if labels is not None:
            if len(labels) != matrix.shape[0]:
                raise ValueError(f"got {len(labels)} labels for {matrix.shape[0]} embeddings")
            arrays["labels"] = np.asarray([str(label) for label in labels], dtype=str)
        path = embeddings_path(self.run_dir, tag, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial, open(partial, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy stubs read **arrays as allow_pickle

    def rewind(self, step: int) -> None:
        """Drop the lines logged after ``step`` (a resumed run replays them), like TensorBoard's ``purge_step``.

        Each file is rewritten to a temporary name and renamed into place, so a crash leaves either the
        old file or the new one. Lines that are not valid JSON are kept as they are.
        """
        step = check_step(step)
        for name in ("metrics.jsonl", "events.jsonl", "snapshots.jsonl", "histograms.jsonl", "evaluations.jsonl"):
            path = self.run_dir / name
            if not path.exists():
                continue
            handle = self._files.pop(name, None)
            if handle is not None:
                handle.close()
            kept = [
                line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if _at_or_before(line, step)
            ]
            atomic_write_text(path, "".join(kept))
        self._open_standing_files()

    def archive_previous_run(self) -> Path | None:
        """Move what an earlier run left in ``run_dir`` to ``run_dir/previous/<time>/``; return that folder.

        A fresh run (step 0, nothing resumed) writing into a folder that holds another run's files would
        interleave the two runs' steps in one ``metrics.jsonl`` and one report. Nothing is deleted:
        every file and folder this project writes there is renamed (same file system, so each move is
        atomic) and a warning names where it went. Returns None when there was nothing to move.
        """
        present = [name for name in RUN_ARTIFACTS if _holds_something(self.run_dir / name)]
        if not present:
            return None
        for handle in self._files.values():
            handle.close()
        self._files = {}
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.run_dir / "previous" / stamp
        suffix = 1
        while target.exists():
            suffix += 1
            target = self.run_dir / "previous" / f"{stamp}-{suffix}"
        target.mkdir(parents=True)
        for name in present:
            os.replace(self.run_dir / name, target / name)
        self._open_standing_files()
        message = f"aquin-monitor: {self.run_dir} held an earlier run's files; moved {', '.join(present)} to {target}"
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return target

    def flush(self) -> None:
        """Nothing to do: every line is handed to the OS when it is logged."""

    def close(self) -> None:
        """Close the files and release the run folder's lock."""
        try:
            for handle in self._files.values():
                handle.close()
        finally:
            if self.lock is not None:
                self.lock.release()


#: What a run leaves in its run directory (moved aside by :meth:`JsonlSink.archive_previous_run`).
RUN_ARTIFACTS = (
    "metrics.jsonl",
    "events.jsonl",
    "snapshots.jsonl",
    "histograms.jsonl",
    "evaluations.jsonl",
    "figures",
    "embeddings",
    "snapshots",
    "report.html",
)


def _holds_something(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.is_file() and path.stat().st_size > 0


def _at_or_before(line: str, step: int) -> bool:
    try:
        logged = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return True
    return not isinstance(logged, int) or logged <= step


def _stamped(metrics: Mapping[str, Any], step: int) -> dict[str, Any]:
    clash = [key for key in _RESERVED_KEYS if key in metrics]
    if clash:
        raise ValueError(f"metric names {clash} are reserved for the record's own step and time")
    return {"step": check_step(step), "time": time.time(), **metrics}
