"""The ``Snapshot`` record of an embedding space, its atomic save/load, and ``diff(a, b)``.

On disk, one folder per snapshot: ``<run>/snapshots/<step>/snapshot.json`` (numbers: ``step``, ``tag``,
``model``, ``metrics`` in the metric vocabulary, small ``details``) and ``arrays.npz`` (embeddings, UMAP
coordinates, histograms, heatmaps...). The folder is written under a temporary name
(``.<step>-tmp-<host>-<pid>-<token>``) and renamed into place, so a crash never leaves half a snapshot.
Re-saving a step moves the old folder to ``.<step>-old`` first; a kill between the two renames is
repaired by :func:`recover_snapshots` (on every open of the run folder: the next save, the next
:func:`list_snapshots`, e.g. on resume, and the report's reader): ``.<step>-old`` is put back, and temp folders of
dead processes are removed. Folders and files get the permissions of the process umask, like every other file the run
writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import snapshot_keys as keys
from .atomic import abandoned_temporary, atomic_directory
from .jsonio import to_jsonable
from .runlock import held_elsewhere
from .signals.drift import drift_summary, first_rank_change
from .signals.two_sample import DRIFT_TEST_MIN_TEXTS, drift_test

logger = logging.getLogger(__name__)

#: The metric families of a snapshot (``geometry/anisotropy``, ``drift/base/cka``, ``sae/fvu``, ...).
SNAPSHOT_FAMILIES = ("geometry", "layers", "attention", "retrieval", "drift", "verdict", "sae")

# A snapshot being written (atomic.temporary_name), one written by mkdtemp (earlier versions), a replaced one
# (atomic.set_aside_name).
_TEMP = re.compile(r"^\.(?P<step>\d+)-tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]+$")
_LEGACY_TEMP = re.compile(r"^\.(?P<step>\d+)-[a-z0-9_]{8}$")
_OLD = re.compile(r"^\.(?P<step>\d+)-old$")


@dataclass(kw_only=True)
class Snapshot:
    """The embedding space of one model at one step, as the probe set sees it; built by keyword.

    Attributes:
        step: the optimizer step (0: the base model).
        tag: ``"base"``, ``"checkpoint"``, ``"eval"`` (a sentence-transformers evaluation) or ``"inspect"``.
        model: the model's name (as the report shows it).
        metrics: numbers in the metric vocabulary (``geometry/anisotropy``, ``drift/base/cka``, ``sae/fvu``;
            each declared in :mod:`aquin_monitor.metric_registry`), written to ``snapshot.json``.
        details: small structured results (flagged inputs and heads, per-category retrieval, SAE movers),
            keyed by the detail names of :mod:`aquin_monitor.snapshot_keys`, written to ``snapshot.json``.
        arrays: the arrays of the figures and diffs, keyed by the array names of
            :mod:`aquin_monitor.snapshot_keys` (``embeddings``, ``pair_hist_counts``, ``sae/frequency``, ...),
            written to ``arrays.npz``.

    >>> snap = Snapshot(step=4, tag="checkpoint", model="m", metrics={"geometry/anisotropy": 0.25})
    >>> snap.step, snap.metrics["geometry/anisotropy"], snap.arrays
    (4, 0.25, {})
    """

    step: int
    tag: str
    model: str
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write ``<run_dir>/snapshots/<step>/`` atomically and return it (see the module docstring)."""
        root = Path(run_dir) / "snapshots"
        root.mkdir(parents=True, exist_ok=True)
        recover_snapshots(run_dir)
        final = root / str(self.step)
        # a new folder beside final (mode 0o777 minus the umask), renamed into place; an old one set aside meanwhile
        with atomic_directory(final) as tmp:
            record = {
                "step": self.step,
                "tag": self.tag,
                "model": self.model,
                "metrics": to_jsonable(self.metrics),
                "details": to_jsonable(self.details),
            }
            (tmp / "snapshot.json").write_text(json.dumps(record, indent=1, allow_nan=False), encoding="utf-8")
            np.savez_compressed(tmp / "arrays.npz", **{k: np.asarray(v) for k, v in self.arrays.items()})  # type: ignore[arg-type]  # numpy stubs read **arrays as allow_pickle
        return final

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Snapshot:
        folder = Path(folder)
        path = folder / "snapshot.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no snapshot here") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        arrays = read_arrays(folder / "arrays.npz") if (folder / "arrays.npz").exists() else {}
        return cls(
            step=int(record["step"]),
            tag=record.get("tag", "checkpoint"),
            model=record.get("model", ""),
            metrics=_floats(record.get("metrics", {})),
            details=record.get("details", {}),
            arrays=arrays,
        )


def read_arrays(
    path: Path, *, skip: tuple[str, ...] = (), problems: list[str] | None = None, label: str = ""
) -> dict[str, np.ndarray]:
    """The arrays of an ``arrays.npz`` (pickles refused), less those named in ``skip``.

    Strict by default (an unreadable file or array raises); given a ``problems`` list, each unreadable
    part is noted there as ``"<label>: ..."`` and left out instead.
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if problems is None:
            raise
        problems.append(f"{label}: could not be read ({exc})")
        return arrays
    with archive:
        for key in archive.files:
            if key in skip:
                continue
            try:
                arrays[key] = archive[key]
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                if problems is None:
                    raise
                problems.append(f"{label}: array {key!r} could not be read ({exc})")
    return arrays


@dataclass
class SnapshotView:
    """One snapshot folder read tolerantly (the report's reader): what could not be read is listed in
    ``problems`` instead of raising; ``step`` is None and ``tag`` ``"unknown"`` when unreadable.
    The raw ``embeddings`` (and the SAE pair embeddings) are not loaded (figures draw from the 2-D projections)."""

    directory: Path
    step: int | None
    tag: str
    model: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def is_base(self) -> bool:
        return self.tag == "base"

    @classmethod
    def read(cls, directory: Path, label: str) -> SnapshotView:
        """Read ``directory``; ``label`` names it in problems (e.g. ``snapshots/4``)."""
        view = cls(
            directory=directory,
            step=int(directory.name) if directory.name.isdigit() else None,
            tag="unknown",
            model=None,
        )
        json_path = directory / "snapshot.json"
        if json_path.is_file():
            try:
                record = json.loads(json_path.read_text(encoding="utf-8"))
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except (OSError, ValueError) as exc:
                view.problems.append(f"{label}/snapshot.json: could not be read ({exc})")
            else:
                view._take_record(record)
        else:
            view.problems.append(f"{label}/snapshot.json is missing")
        arrays_path = directory / "arrays.npz"
        if arrays_path.is_file():
            view.arrays = read_arrays(
                arrays_path,
                skip=(keys.EMBEDDINGS, keys.SAE_PAIR_QUERIES, keys.SAE_PAIR_DOCUMENTS),
                problems=view.problems,
                label=f"{label}/arrays.npz",
            )
        return view

    def _take_record(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            self.step = step
        self.tag = str(record.get("tag", "unknown"))
        self.model = str(record["model"]) if record.get("model") is not None else None
        if isinstance(record.get("metrics"), dict):
            self.metrics = record["metrics"]
        if isinstance(record.get("details"), dict):
            self.details = record["details"]


def recover_snapshots(run_dir: str | os.PathLike) -> list[str]:
    """Repair what a killed save left in ``<run_dir>/snapshots``; return one line per repair.

    - ``.<N>-old`` without ``<N>``: a re-save was killed between its two renames; the old snapshot
      is put back as ``<N>`` (with a warning).
    - ``.<N>-old`` beside ``<N>``: the re-save completed; the old copy is removed.
    - temp folders of processes that are no longer running on this host (and those of earlier
      versions) are removed.

    Nothing is done while another live process holds the run folder's lock (it repairs its own
    folder). Failures (a read-only folder) are logged, never raised.

    Example (a kill left snapshot 4 set aside)::

        >>> import tempfile, warnings
        >>> run_dir = Path(tempfile.mkdtemp())
        >>> _ = Snapshot(step=4, tag="checkpoint", model="m", metrics={"geometry/anisotropy": 0.4}).save(run_dir)
        >>> os.replace(run_dir / "snapshots" / "4", run_dir / "snapshots" / ".4-old")
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     repairs = recover_snapshots(run_dir)
        >>> len(repairs), [p.name for p in list_snapshots(run_dir)]
        (1, ['4'])
    """
    root = Path(run_dir) / "snapshots"
    if not root.is_dir() or held_elsewhere(run_dir):
        return []
    repairs: list[str] = []
    for child in sorted(root.iterdir()):
        try:
            repair = _recover_one(child)
        except OSError as exc:
            logger.warning("aquin-monitor: could not tidy %s: %s", child, exc)
            continue
        if repair:
            repairs.append(repair)
    if repairs:  # one warning for the whole repair, whoever opened the folder (resume, report, inspect --run-dir)
        summary = "; ".join(line.removeprefix("aquin-monitor: ") for line in repairs)
        warnings.warn(f"aquin-monitor: repaired {root} after a killed save: {summary}", RuntimeWarning, stacklevel=2)
    return repairs


def _recover_one(child: Path) -> str | None:
    old = _OLD.match(child.name)
    if old:
        final = child.with_name(old["step"])
        if final.exists():
            shutil.rmtree(child)
            return f"removed {child} (the re-save of snapshot {old['step']} had completed)"
        os.replace(child, final)
        return (
            f"aquin-monitor: snapshot {old['step']} was being re-saved when its process died; "
            f"the earlier one was put back at {final}"
        )
    temp = _TEMP.match(child.name)
    if temp and abandoned_temporary(child.name) is None:
        return None  # another machine's or a live process's write in progress
    if temp or _LEGACY_TEMP.match(child.name):
        shutil.rmtree(child)
        return f"removed {child}, a snapshot left half-written by a process that is no longer running"
    return None


def list_snapshots(run_dir: str | os.PathLike) -> list[Path]:
    """Snapshot folders of a run, by step (after :func:`recover_snapshots` has repaired a killed save)."""
    root = Path(run_dir) / "snapshots"
    if not root.is_dir():
        return []
    recover_snapshots(run_dir)
    found = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / "snapshot.json").exists()]
    return sorted(found, key=lambda p: int(p.name))


def snapshot_tag(run_dir: str | os.PathLike, step: int) -> str | None:
    """The tag (``base``, ``checkpoint``, ``inspect``) of the snapshot saved at ``step``; None if there is
    none. A folder whose record cannot be read counts as ``"unknown"`` (someone else's: not ours to replace).

    >>> import tempfile
    >>> run_dir = tempfile.mkdtemp()
    >>> _ = Snapshot(step=0, tag="base", model="m").save(run_dir)
    >>> snapshot_tag(run_dir, 0), snapshot_tag(run_dir, 4)
    ('base', None)
    """
    path = Path(run_dir) / "snapshots" / str(step) / "snapshot.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    return str(record.get("tag", "checkpoint")) if isinstance(record, dict) else "unknown"


@dataclass
class Diff:
    """What changed from ``before`` to ``after`` (same probe inputs, row for row)."""

    metrics: dict[str, float]
    arrays: dict[str, np.ndarray]
    details: dict[str, Any]


def diff(
    before: Snapshot,
    after: Snapshot,
    *,
    name: str = "base",
    max_pairs: int = 20000,
    seed: int = 0,
    n_permutations: int = 1000,
) -> Diff:
    """Rotation-invariant drift from ``before`` to ``after`` under ``drift/<name>/...``.

    Every number and array comes from one :func:`aquin_monitor.signals.drift.drift_summary` call
    (linear CKA, k-NN overlap, similarity-distribution shift, anisotropy delta, per-label centroid
    shift after orthogonal Procrustes alignment, the composite drift score) and, when both snapshots
    carry retrieval ranks, :func:`aquin_monitor.signals.drift.first_rank_change`; nothing is
    recomputed here. The two-sample test (``drift/<name>/p_value``, ``drift/<name>/mmd2``; probes of at
    least 6 texts) is one :func:`aquin_monitor.signals.two_sample.drift_test` call, its split and
    permutations seeded with ``seed``, its R/A/B sizes in ``details["drift_test"]``. Arrays for the
    figures: the centroids of both spaces on the first two principal axes of ``before``
    (``centroid_base_2d`` / ``centroid_now_2d``), the cosines of the pairs the similarity shift sampled,
    in both spaces (``sim_base_values`` / ``sim_now_values``), and the first relevant ranks before/after.

    Args:
        before: the reference snapshot (base model or previous checkpoint).
        after: the snapshot of the same probe inputs, row for row.
        name: the reference's name in the metric keys.
        max_pairs: pairs sampled for the similarity distribution.
        seed: seed of the pair sampler and of the two-sample test's split and permutations.
        n_permutations: permutations of the two-sample test's p-value (1000: p resolved to 0.001).

    Returns:
        A :class:`Diff` of metrics, figure arrays and per-label details.
    """
    x, y = before.arrays.get(keys.EMBEDDINGS), after.arrays.get(keys.EMBEDDINGS)
    if x is None or y is None:
        raise ValueError("both snapshots need their 'embeddings' array to be diffed")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"snapshots were taken on different probes: {x.shape[0]} vs {y.shape[0]} rows")
    label_array = before.arrays.get(keys.LABELS)
    labels = None if label_array is None or len(label_array) != x.shape[0] else [str(v) for v in label_array]
    summary = drift_summary(x, y, labels, max_pairs=max_pairs, seed=seed)
    prefix = f"drift/{name}"
    metrics = summary.as_metrics(prefix)
    similarity = summary.similarity
    assert similarity.before_cosines is not None and similarity.after_cosines is not None  # drift_summary fills them
    arrays: dict[str, np.ndarray] = {
        "sim_base_values": similarity.before_cosines.astype(np.float32),
        "sim_now_values": similarity.after_cosines.astype(np.float32),
    }
    details: dict[str, Any] = {}
    centroids = summary.centroids
    if centroids is not None:
        names = [str(v) for v in centroids.labels]
        assert centroids.before_2d is not None and centroids.after_2d is not None  # drift_summary fills them
        arrays[keys.CENTROID_BASE_2D] = centroids.before_2d.astype(np.float32)
        arrays[keys.CENTROID_NOW_2D] = centroids.after_2d.astype(np.float32)
        arrays[keys.CENTROID_LABELS] = np.asarray(names)
        details["centroid_shift"] = {c: float(v) for c, v in zip(names, centroids.cosine_distance)}
    rb, ra = before.arrays.get(keys.FIRST_RANK), after.arrays.get(keys.FIRST_RANK)
    if rb is not None and ra is not None and rb.shape == ra.shape:
        arrays[keys.RANK_BEFORE], arrays[keys.RANK_AFTER] = rb, ra
        metrics.update(first_rank_change(rb, ra).as_metrics(prefix))
    for key in ("retrieval/ndcg@10", "retrieval/mrr@10", "retrieval/recall@10", "geometry/anisotropy"):
        if key in before.metrics and key in after.metrics:
            metrics[f"{prefix}/delta/{key.split('/', 1)[1]}"] = after.metrics[key] - before.metrics[key]
    if x.shape[0] >= DRIFT_TEST_MIN_TEXTS:
        test = drift_test(x, y, n_permutations=n_permutations, seed=seed)
        metrics.update(test.as_metrics(prefix))
        details["drift_test"] = {
            "n_reference": test.n_reference,
            "n_before": test.n_before,
            "n_after": test.n_after,
            "n_permutations": test.n_permutations,
            "bandwidth": test.bandwidth,
        }
    return Diff(metrics, arrays, details)


def _floats(metrics: dict) -> dict[str, float]:
    return {k: (math.nan if v is None else float(v)) for k, v in metrics.items()}
