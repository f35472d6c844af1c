"""The measured run loop: load (measured), warm up (not counted), query (measured, repeated), score.

Everything measured is written into a ``RunOutcome`` as soon as it exists, so that a run that
fails or is interrupted half-way still has its energy to log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracker.data import LoadedDataset
from tracker.meter import EnergyMeter, PhaseReading
from tracker.models import ModelChoice
from tracker.precision import convert
from tracker.tasks.base import GenerationSettings, Task

logger = logging.getLogger(__name__)

LOAD_PHASE = "load model"  # CodeCarbon task names, as in the paper's own records
QUERY_PHASE = "query model"


@dataclass
class RunPlan:
    """Everything resolved before measuring starts."""

    task: Task
    model: ModelChoice
    dataset: LoadedDataset
    device: str
    precision: str
    batch_size: int
    repeats: int
    warmup: int
    settings: GenerationSettings


@dataclass
class QueryReading:
    reading: PhaseReading
    inferences: int = 0
    generated_tokens: int = 0


@dataclass
class RunOutcome:
    load: PhaseReading | None = None
    queries: list[QueryReading] = field(default_factory=list)
    predictions: list[Any] = field(default_factory=list)
    references: list[Any] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)

    @property
    def complete_queries(self) -> list[QueryReading]:
        return [q for q in self.queries if q.reading.energy is not None]


Progress = Callable[[int], None]


def execute(plan: RunPlan, meter: EnergyMeter, outcome: RunOutcome, progress: Progress) -> None:
    task, texts = plan.task, plan.dataset.texts
    batches = [texts[i:i + plan.batch_size] for i in range(0, len(texts), plan.batch_size)]

    with meter.phase(LOAD_PHASE) as outcome.load:
        loaded = task.load_model(plan.model.location, local_only=plan.model.local_only)
        loaded.model = convert(loaded.model, plan.precision, plan.device)
    inputs_device = "cpu" if plan.precision == "int8" else plan.device

    for i in range(plan.warmup):  # not measured: first calls pay one-off allocation costs
        task.predict(loaded, batches[i % len(batches)], plan.settings, inputs_device)

    for _ in range(plan.repeats):
        predictions: list[Any] = []
        with meter.phase(QUERY_PHASE) as reading:
            query = QueryReading(reading)
            outcome.queries.append(query)
            for batch in batches:
                output = task.predict(loaded, batch, plan.settings, inputs_device)
                predictions.extend(output.predictions)
                query.inferences += len(batch)
                query.generated_tokens += output.generated_tokens
                progress(len(batch))
        if not outcome.predictions:
            outcome.predictions = predictions

    outcome.references = task.references(plan.dataset.targets, plan.dataset.spec)
    outcome.quality = task.score(outcome.predictions, outcome.references)
    outcome.quality["quality"] = outcome.quality[task.primary_metric]
