"""The measured run loop: load (measured), warm up (not counted), query (measured, repeated), score.

The query phase is measured ``repeats`` times, and more while its windows cover less than
``min_duration_s`` (optimum-benchmark's rule), each window optionally after waiting for a quiet
machine. A window passes over the batches again (its outputs counted, not scored) until it lasts
``min_window_s``: on a GPU 5 s by default, since NVML's energy counter moves in steps of about
0.1 s (ML.ENERGY and Zeus measure steady windows of seconds). Every batch call is timed for the
latency percentiles. Everything measured is written into a ``RunOutcome`` as soon as it exists,
so that a run that fails or is interrupted half-way still has its energy to log.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tracker.loading.precision import convert
from tracker.measurement.meter import EnergyMeter
from tracker.measurement.outcome import QueryReading, RunOutcome
from tracker.sources.data import LoadedDataset
from tracker.sources.models import ModelChoice
from tracker.sources.multipurpose import ModelKind
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
    min_window_s: float = 0.0  # each window passes over the batches again until it lasts this long
    wait_for_quiet_s: float = 0.0  # before each window, wait up to this long for a quiet machine
    threads: int | None = None  # torch's CPU threads (None: the process's default)
    sort_by_length: bool = False
    attention: str | None = None
    compile: bool = False

    def load_key(self) -> tuple[Any, ...]:
        """What the loaded model depends on: runs with equal keys can share one load."""
        return (self.model.location, self.kind.kind, self.device, self.precision, self.attention, self.compile)

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


Progress = Callable[[int], None]


def execute(plan: RunPlan, meter: EnergyMeter, outcome: RunOutcome, progress: Progress, *,
            kept: dict[tuple[Any, ...], Any] | None = None) -> None:
    """Measure the plan into ``outcome``. ``kept``: models this process keeps loaded between runs
    (by ``RunPlan.load_key``); a run that finds its model there measures no load phase."""
    task, predictor, inputs = plan.task, plan.predictor, plan.dataset.inputs
    set_threads(plan.threads)
    order = length_order(task, inputs) if plan.sort_by_length else list(range(len(inputs)))
    ordered = [inputs[i] for i in order]
    batches = [ordered[i:i + plan.batch_size] for i in range(0, len(ordered), plan.batch_size)]

    loaded = kept.get(plan.load_key()) if kept is not None else None
    outcome.load_shared = loaded is not None
    if loaded is None:
        import_model_code(plan.model.location, plan.task)
        with meter.phase(LOAD_PHASE) as outcome.load:
            loaded = predictor.load_model(plan.model.location, local_only=plan.model.local_only)
            outcome.model_parameters = count_parameters(loaded.model)
            set_attention(loaded.model, plan.attention)
            if not plan.model.runs_as_logged:
                loaded.model = convert(loaded.model, plan.precision, plan.device)
            if plan.compile:
                loaded.model = compile_model(loaded.model)
        if kept is not None:
            kept.clear()  # one model at a time: memory for one
            kept[plan.load_key()] = loaded
    outcome.resolved_settings = task.resolved_settings(loaded, plan.settings) | resolved_knobs(loaded.model)
    inputs_device = "cpu" if plan.precision == "int8" else plan.device

    for i in range(plan.warmup):  # not measured: first calls pay one-off allocation costs
        predictor.predict(loaded, batches[i % len(batches)], plan.settings, inputs_device)

    measured_s = 0.0
    while len(outcome.queries) < plan.repeats or measured_s < plan.min_duration_s:
        if plan.wait_for_quiet_s > 0:
            outcome.quiet_waits.append(meter.wait_for_quiet(plan.wait_for_quiet_s, own_threads=_torch_threads()))
        predictions: list[Any] = []
        with meter.phase(QUERY_PHASE) as reading:
            query = QueryReading(reading)
            outcome.queries.append(query)
            opened, passes = time.perf_counter(), 0
            while passes == 0 or time.perf_counter() - opened < plan.min_window_s:
                for batch in batches:
                    started = time.perf_counter()
                    output = predictor.predict(loaded, batch, plan.settings, inputs_device)
                    meter.synchronize()  # a batch's latency ends when its GPU work does
                    query.batch_latencies_ms.append((time.perf_counter() - started) * 1000)
                    if passes == 0:
                        predictions.extend(output.predictions)
                        progress(len(batch))
                    query.inferences += len(batch)
                    query.generated_tokens += output.generated_tokens
                passes += 1
        measured_s += reading.energy.duration_s if reading.energy else 0.0
        if not outcome.predictions:
            outcome.predictions = unsort(predictions, order)

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


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def set_threads(threads: int | None) -> None:
    """torch's CPU threads for this run; None restores the process's default (a process that
    measures several runs must not carry one run's setting into the next)."""
    import torch

    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()
    torch.set_num_threads(threads or _DEFAULT_THREADS)


_DEFAULT_THREADS: int | None = None


def length_order(task: Task, inputs: list[Any]) -> list[int]:
    """Indices of the inputs from shortest to longest (characters of text), so a batch pads less."""
    from tracker.errors import ConfigError

    lengths = [text_length(value) for value in inputs]
    if any(length is None for length in lengths):
        raise ConfigError(f"--sort-by-length needs text inputs, and {task.name}'s are not text: drop the flag")
    return sorted(range(len(inputs)), key=lambda i: lengths[i])


def text_length(value: Any) -> int | None:
    """Characters of text in an input (a string, or strings in a tuple, list or dict); None if not text."""
    if isinstance(value, str):
        return len(value)
    parts = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else None
    if parts is None:
        return None
    lengths = [text_length(v) for v in parts]
    return None if not lengths or any(n is None for n in lengths) else sum(lengths)  # type: ignore[misc]


def unsort(predictions: list[Any], order: list[int]) -> list[Any]:
    """Predictions made in ``order`` put back in the dataset's order, beside their references."""
    if len(predictions) != len(order):
        return predictions  # a pyfunc model may answer with another count; scoring reports it
    restored: list[Any] = [None] * len(order)
    for position, index in enumerate(order):
        restored[index] = predictions[position]
    return restored


def set_attention(model: Any, attention: str | None) -> None:
    if attention is None:
        return
    from tracker.errors import ConfigError

    if not hasattr(model, "set_attn_implementation"):
        raise ConfigError(f"--attention applies to transformers models; {type(model).__name__} has no "
                          "attention setting: drop the flag")
    model.set_attn_implementation(attention)


def compile_model(model: Any) -> Any:
    """``torch.compile`` in place (``Module.compile``), so generate() and pipelines call the compiled
    forward; compilation happens on the first calls, in the unmeasured warm-up."""
    import torch

    if not isinstance(model, torch.nn.Module):
        from tracker.errors import ConfigError

        raise ConfigError(f"--compile applies to torch modules; {type(model).__name__} is not one: drop the flag")
    model.compile()
    return model


def resolved_knobs(model: Any) -> dict[str, Any]:
    """The knobs in effect, as params: CPU threads, and the attention implementation used."""
    import torch

    knobs: dict[str, Any] = {"threads": torch.get_num_threads()}
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if isinstance(attention, str):
        knobs["attention"] = attention
    return knobs


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
