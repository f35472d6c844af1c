"""What a measured run produced, as the loop writes it: each phase's reading, the inferences and
tokens of each query window, the predictions and the quality. Written as soon as each part
exists, so that a run that fails or is interrupted half-way still has its energy to log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracker.measurement.meter import PhaseReading, QuietWait


@dataclass
class QueryReading:
    reading: PhaseReading
    inferences: int = 0
    generated_tokens: int = 0
    batch_latencies_ms: list[float] = field(default_factory=list)


@dataclass
class RunOutcome:
    load: PhaseReading | None = None
    queries: list[QueryReading] = field(default_factory=list)
    predictions: list[Any] = field(default_factory=list)
    references: list[Any] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)
    quality_unavailable: str | None = None  # why quality could not be computed
    resolved_settings: dict[str, Any] = field(default_factory=dict)  # known once the model is loaded
    load_shared: bool = False  # the model was loaded (and its load measured) by an earlier run of this process
    model_parameters: int | None = None  # as loaded, before any conversion
    quiet_waits: list[QuietWait] = field(default_factory=list)

    @property
    def complete_queries(self) -> list[QueryReading]:
        return [q for q in self.queries if q.reading.energy is not None]
