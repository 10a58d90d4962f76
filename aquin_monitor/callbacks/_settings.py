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
