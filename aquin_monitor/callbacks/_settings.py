"""What both trainer callbacks are configured with, and how they build their monitor from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..monitor import AlarmConfig, StepMonitor


@dataclass
class MonitorSettings:
    """Constructor arguments shared by :class:`LightningEmbeddingMonitor` and :class:`TrainerEmbeddingMonitor`."""

    output_dir: str | None = None
    log_every: int = 1
    histogram_every: int = 50
    alarms: AlarmConfig = field(default_factory=AlarmConfig)
    stop_on: Sequence[str] = ()
    strict: bool = False
    snapshots: object | None = None  # a SnapshotRunner
    snapshot_every: int = 1  # every Nth checkpoint save

    def build(self, sinks: Sequence, *, rank_zero: bool) -> StepMonitor:
        from ..sinks import MultiSink

        writers = [MultiSink(list(sinks), strict=self.strict)] if rank_zero and sinks else []
        return StepMonitor(
            writers,
            log_every=self.log_every,
            histogram_every=self.histogram_every,
            alarms=self.alarms,
            stop_on=self.stop_on,
            strict=self.strict,
            warn=rank_zero,
        )


def restore_history(runner, run_dir, step: int) -> bool:
    """On resume, reload the base and latest earlier snapshots from disk so diffs continue; True if found."""
    from ..snapshot import Snapshot, list_snapshots

    folders = [f for f in list_snapshots(run_dir) if int(f.name) <= step]
    if not folders:
        return False
    runner.base = Snapshot.load(folders[0])
    runner.previous = Snapshot.load(folders[-1])
    return True


def find_sentence_transformer(module):
    """The SentenceTransformer inside a LightningModule (or the module itself)."""
    from sentence_transformers import SentenceTransformer

    if isinstance(module, SentenceTransformer):
        return module
    for child in module.modules():
        if isinstance(child, SentenceTransformer):
            return child
    raise ValueError(
        f"snapshots need a SentenceTransformer inside {type(module).__name__}; none found among its submodules"
    )
