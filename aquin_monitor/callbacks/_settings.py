"""What both trainer callbacks are configured with, and how they build their monitor from it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..alarms import AlarmConfig
from ..failsoft import report_failure
from ..monitor import StepMonitor

if TYPE_CHECKING:
    from ..sinks.base import Sink
    from ..snapshot_runner import SnapshotRunner


@dataclass(kw_only=True)
class MonitorSettings:
    """Constructor arguments shared by :class:`LightningEmbeddingMonitor` and :class:`TrainerEmbeddingMonitor`.

    Keyword-only: both callbacks pass each setting by name, so a field added here can never shift another.
    """

    output_dir: str | None = None
    log_every: int = 1
    histogram_every: int | None = None  # None: ~20 histograms per run when the length is known, else every 50
    alarms: AlarmConfig = field(default_factory=AlarmConfig)
    stop_on: Sequence[str] = ()
    strict: bool = False
    snapshots: SnapshotRunner | None = None
    snapshot_every: int = 1  # every Nth checkpoint save
    tensor_norms_every: int = 0
    report: bool = True  # report.html in the run folder at train end

    def histogram_steps(self, total_steps: int | float | None) -> int:
        """The histogram interval for a run of ``total_steps`` optimizer steps (None: unknown length):
        the user's ``histogram_every`` if set, else :func:`~aquin_monitor.monitor.default_histogram_every`."""
        from ..monitor import default_histogram_every

        return self.histogram_every if self.histogram_every is not None else default_histogram_every(total_steps)

    def as_config(self) -> dict[str, Any]:
        """The settings as a run config (``aquin_monitor/<name>``), for dashboards that keep one (W&B)."""
        values = {
            "log_every": self.log_every,
            "histogram_every": self.histogram_every,
            "stop_on": list(self.stop_on),
            "snapshots": self.snapshots is not None,
            "snapshot_every": self.snapshot_every,
            "tensor_norms_every": self.tensor_norms_every,
            "alarms": asdict(self.alarms),
        }
        return {f"aquin_monitor/{key}": value for key, value in values.items()}

    def build(
        self,
        sinks: Sequence[Sink],
        *,
        rank_zero: bool,
        run_dir: str,
        grad_prefix: str = "grad_norm/",
        trainer_config: Mapping[str, Any] | None = None,
    ) -> StepMonitor:
        """The monitor of one run: writes (and snapshots) on rank zero only, computes on every rank.
        Sinks that keep a run config (W&B) get these settings and ``trainer_config`` (the trainer's hyperparameters)."""
        from ..sinks.base import MultiSink, as_sink
        from ..snapshot_runner import SnapshotSchedule

        for sink in map(as_sink, sinks):  # a sink without a run config inherits BaseSink's no-op
            try:
                sink.update_config({**(trainer_config or {}), **self.as_config()})
            except Exception as exc:  # noqa: BLE001 - a config is not worth the run's metrics
                report_failure(
                    "sending the run config", exc, strict=self.strict, outcome="is skipped; training goes on"
                )

        writers = [MultiSink(list(sinks), strict=self.strict)] if rank_zero and sinks else []
        schedule = (
            SnapshotSchedule(self.snapshots, self.snapshot_every) if self.snapshots is not None and rank_zero else None
        )
        return StepMonitor(
            writers,
            log_every=self.log_every,
            histogram_every=self.histogram_steps(None),
            tensor_norms_every=self.tensor_norms_every,
            alarms=self.alarms,
            stop_on=self.stop_on,
            strict=self.strict,
            warn=rank_zero,
            grad_prefix=grad_prefix,
            snapshots=schedule,
            run_dir=run_dir,
        )


def open_sinks(makers: Sequence[tuple[str, Callable[[], list[Sink]]]], *, strict: bool) -> list[Sink]:
    """Open each group of sinks; one that cannot be opened (its folder is a file, a read-only disk)
    is warned about and left out, and the run goes on with the others. A run folder that another
    live run holds (:class:`~aquin_monitor.runlock.RunFolderLocked`) is the one error raised."""
    from ..runlock import RunFolderLocked

    sinks: list[Sink] = []
    for what, make in makers:
        try:
            sinks.extend(make())
        except RunFolderLocked:
            raise  # another live run writes there: fail fast, change nothing (README, Reliability)
        except Exception as exc:  # noqa: BLE001 - monitoring must never stop training from starting
            report_failure(f"opening {what}", exc, strict=strict, outcome="is left out of this run; training goes on")
    return sinks


def find_sentence_transformer(module: Any):
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
