"""The measured run loop: load (measured), warm up (not counted), query (measured, repeated), score.

The query phase is measured ``repeats`` times, and more while its windows cover less than
``min_duration_s`` (optimum-benchmark's rule), each window optionally after waiting for a quiet
machine; every batch call is timed for the latency percentiles. Everything measured is written
into a ``RunOutcome`` as soon as it exists, so that a run that fails or is interrupted half-way
still has its energy to log.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tracker.data import LoadedDataset
from tracker.meter import EnergyMeter, PhaseReading, QuietWait
from tracker.models import ModelChoice
from tracker.multipurpose import ModelKind
from tracker.precision import convert
from tracker.tasks.base import BatchOutput, GenerationSettings, LoadedModel, Task

logger = logging.getLogger(__name__)

LOAD_PHASE = "load model"  # CodeCarbon task names, as in the paper's own records
QUERY_PHASE = "query model"


class Predictor(Protocol):
    """What loads a model and runs a batch: the task itself, or a prompted multi-purpose model."""

    def load_model(self, source: str, *, local_only: bool) -> LoadedModel: ...

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput: ...


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
    kind: ModelKind
    min_duration_s: float = 0.0  # measure more windows until they cover this long
    wait_for_quiet_s: float = 0.0  # before each window, wait up to this long for a quiet machine

    @property
    def predictor(self) -> Predictor:
        return self.kind.predictor

    @property
    def generative(self) -> bool:
        """Generating tokens: a generative task, or any task done by a prompted language model."""
        return self.task.generative or self.kind.kind == "multi-purpose"

    def settings_params(self) -> dict[str, Any]:
        names = set(self.task.settings_params)
        if self.kind.kind == "multi-purpose":
            names.add("max_new_tokens")
        return {name: getattr(self.settings, name) for name in sorted(names)}


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
    model_parameters: int | None = None  # as loaded, before any conversion
    quiet_waits: list[QuietWait] = field(default_factory=list)

    @property
    def complete_queries(self) -> list[QueryReading]:
        return [q for q in self.queries if q.reading.energy is not None]


Progress = Callable[[int], None]


def execute(plan: RunPlan, meter: EnergyMeter, outcome: RunOutcome, progress: Progress) -> None:
    task, predictor, inputs = plan.task, plan.predictor, plan.dataset.inputs
    batches = [inputs[i:i + plan.batch_size] for i in range(0, len(inputs), plan.batch_size)]

    import_model_code(plan.model.location, plan.task)
    with meter.phase(LOAD_PHASE) as outcome.load:
        loaded = predictor.load_model(plan.model.location, local_only=plan.model.local_only)
        outcome.model_parameters = count_parameters(loaded.model)
        if plan.model.mlflow is None or plan.model.mlflow.flavor != "pyfunc":  # a pyfunc model runs as logged
            loaded.model = convert(loaded.model, plan.precision, plan.device)
    outcome.resolved_settings = task.resolved_settings(loaded, plan.settings)
    inputs_device = "cpu" if plan.precision == "int8" else plan.device

    for i in range(plan.warmup):  # not measured: first calls pay one-off allocation costs
        predictor.predict(loaded, batches[i % len(batches)], plan.settings, inputs_device)

    measured_s = 0.0
    while len(outcome.queries) < plan.repeats or measured_s < plan.min_duration_s:
        if plan.wait_for_quiet_s > 0:
            outcome.quiet_waits.append(meter.wait_for_quiet(plan.wait_for_quiet_s))
        predictions: list[Any] = []
        with meter.phase(QUERY_PHASE) as reading:
            query = QueryReading(reading)
            outcome.queries.append(query)
            for batch in batches:
                started = time.perf_counter()
                output = predictor.predict(loaded, batch, plan.settings, inputs_device)
                meter.synchronize()  # a batch's latency ends when its GPU work does
                query.batch_latencies_ms.append((time.perf_counter() - started) * 1000)
                predictions.extend(output.predictions)
                query.inferences += len(batch)
                query.generated_tokens += output.generated_tokens
                progress(len(batch))
        measured_s += reading.energy.duration_s if reading.energy else 0.0
        if not outcome.predictions:
            outcome.predictions = predictions

    # Scoring is not measured: it is evaluation, not the inference being costed.
    outcome.references = task.references(plan.dataset.targets, plan.dataset.spec)
    outcome.quality = task.score(outcome.predictions, outcome.references)
    extra, outcome.quality_unavailable = task.model_quality(
        loaded, inputs, outcome.predictions, outcome.references, plan.settings, inputs_device)
    outcome.quality.update(extra)
    outcome.quality["quality"] = outcome.quality.get(task.primary_metric, math.nan)


def import_model_code(location: str, task: Task) -> None:
    """Import the library code a model runs on before its load is measured, as optimum-benchmark
    does: transformers imports a model's module (and torch's machinery with it) on first use, which
    took 4.5 of the 6 seconds the load phase of all-MiniLM-L6-v2 measured here, a cost of this
    process, not of loading the weights."""
    task.import_code()
    config = Path(location) / "config.json"
    if not config.is_file():  # a Hub id: the module is imported with its download, in the load phase
        return
    import transformers

    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError):  # loading reports what is wrong with the file
        return
    for name in architectures:
        getattr(transformers, name, None)


def count_parameters(model: Any) -> int | None:
    """Parameters of a torch module, or of every module of a pipeline (diffusers); None if neither.

    Counted before conversion: int8 dynamic quantization packs weights out of ``parameters()``.
    """
    import torch

    modules = [model] if isinstance(model, torch.nn.Module) else [
        c for c in getattr(model, "components", {}).values() if isinstance(c, torch.nn.Module)]
    if not modules:
        return None
    return sum(p.numel() for module in modules for p in module.parameters())
