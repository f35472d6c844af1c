"""Measuring the user's own inference code (a serving loop, an ONNX session, a notebook cell) into
an MLflow run that keeps the same contract as ``tracker run``.

    with tracker.measure(task="classify-tickets", model="my-onnx-model") as m:
        with m.phase("load"):            # optional: measured apart, as the load phase
            session = load()
        for batch in batches:             # everything else in the block is the query phase
            session.run(batch)
            m.count(len(batch))           # outputs, and tokens for generative work
        m.log_quality(accuracy=0.91)      # the first one given is the run's `quality`

The run is a child of the active MLflow run when there is one. It ends FINISHED, or FAILED with
the exception and the energy measured up to it, or KILLED on Ctrl-C; nothing is printed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tracker.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
QUERY = "query model"  # CodeCarbon task names, as in `tracker run` and the paper's records


@dataclass
class Measurement:
    """The open measurement: count outputs, log quality, measure a phase apart. After the block,
    ``metrics`` and ``tags`` hold what was logged."""

    run_id: str
    experiment: str
    outputs: int = 0
    tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    _session: Any = field(default=None, repr=False)

    def count(self, outputs: int = 1, *, tokens: int = 0) -> None:
        """Count outputs produced (and generated tokens, for energy per token)."""
        if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs < 0:
            raise ConfigError(f"count() takes a whole number of outputs >= 0, got {outputs!r}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ConfigError(f"count() takes tokens= as a whole number >= 0, got {tokens!r}")
        self._session.counted(outputs, tokens)
        self.outputs += outputs
        self.tokens += tokens

    def log_quality(self, primary: str | None = None, *, higher_is_better: bool = True, **metrics: float) -> None:
        """Quality metrics by name; ``primary`` (else the first given) is also logged as ``quality``."""
        if not metrics:
            raise ConfigError("log_quality() takes metrics by name, e.g. log_quality(accuracy=0.91)")
        bad = {k: v for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
        if bad:
            raise ConfigError(f"log_quality() takes numbers, got {bad}")
        if primary is not None and primary not in metrics:
            raise ConfigError(f"log_quality(primary='{primary}') names none of the metrics given ({', '.join(metrics)})")
        self._session.quality(primary or self._session.primary or next(iter(metrics)), higher_is_better,
                              {k: float(v) for k, v in metrics.items()})

    def log_params(self, **params: Any) -> None:
        """Settings of the user's code (batch size, precision, threads, ...), as run params."""
        self._session.recorder.log(params=params)

    def phase(self, name: str) -> Any:
        """Measure a part of the block apart (``load``: the load phase); it is left out of the query phase."""
        return self._session.phase(name)


class measure:  # noqa: N801 - used like contextlib.suppress: a context manager and a decorator
    """Measure the code in a ``with`` block, or each call of a decorated function, as one MLflow run.

    Args:
        task: what the code does, e.g. ``"text-classification"`` or a name of your own; the run's
            experiment is named after it unless ``experiment`` is given (or a run is active, whose
            experiment the child run joins).
        model: the model's name or path, as you want it in the run list.
        dataset: the data's name, logged as the run's dataset input.
        experiment: the MLflow experiment.
        country: ISO 3166 alpha-3 code of the grid (default: CodeCarbon's configuration, else USA).
        carbon_intensity: gCO2eq/kWh, instead of the country's mix.
        device: ``"auto"``, ``"cpu"`` or ``"cuda:N"``: the GPU metered alongside CPU and RAM.
        params: settings to log as params (batch size, precision, ...).
        tags: extra tags for the run.
        outputs: for a decorated function, how many outputs a call produced, from its result
            (e.g. ``len``); calls that count nothing themselves count one output otherwise.
    """

    def __init__(self, *, task: str, model: str, dataset: str | None = None, experiment: str | None = None,
                 country: str | None = None, carbon_intensity: float | None = None, device: str = "auto",
                 params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
                 outputs: Callable[[Any], int] | None = None) -> None:
        for name, value in (("task", task), ("model", model)):
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"measure() needs {name}= as a non-empty name, got {value!r}")
        if carbon_intensity is not None and not 0 <= carbon_intensity < math.inf:
            raise ConfigError(f"carbon_intensity must be a finite number >= 0 gCO2eq/kWh, got {carbon_intensity}")
        self._options = dict(task=task, model=model, dataset=dataset, experiment=experiment, country=country,
                             carbon_intensity=carbon_intensity, device=device, params=params or {},
                             tags=tags or {})
        self._outputs = outputs
        self._stack: list[ExitStack] = []

    def __enter__(self) -> Measurement:
        stack = ExitStack()
        measurement = stack.enter_context(_measured(**self._options))
        self._stack.append(stack)
        return measurement

    def __exit__(self, *exc: Any) -> bool:
        return self._stack.pop().__exit__(*exc)

    def __call__(self, function: F) -> F:
        @functools.wraps(function)
        def measured(*args: Any, **kwargs: Any) -> Any:
            with _measured(**self._options) as m:
                result = function(*args, **kwargs)
                if m.outputs == 0:
                    m.count(self._outputs(result) if self._outputs else 1)
                return result

        return measured  # type: ignore[return-value]


_ACTIVE: list[Measurement] = []


def current() -> Measurement:
    """The innermost open measurement, for code inside a decorated function to count or log quality."""
    if not _ACTIVE:
        raise ConfigError("no measurement is open: call this inside `with tracker.measure(...)` or a "
                         "function decorated with @tracker.measure(...)")
    return _ACTIVE[-1]


class _Session:
    """The meter and the readings of one measurement: the query phase as the segments of the block
    outside named phases, summed into one window."""

    def __init__(self, recorder: Any, meter: Any) -> None:
        from tracker.measurement.outcome import RunOutcome

        self.recorder, self.meter = recorder, meter
        self.outcome = RunOutcome()
        self.segments: list[Any] = []
        self.latencies_ms: list[float] = []
        self.outputs = self.tokens = 0
        self.primary: str | None = None
        self.higher_is_better = True
        self._segment: Any = None
        self._since = 0.0

    def open_query(self) -> None:
        self._segment = self.meter.phase(QUERY)
        self.segments.append(self._segment.__enter__())
        self._since = time.perf_counter()

    def close_query(self, exc: tuple[Any, Any, Any] = (None, None, None)) -> None:
        if self._segment is not None:
            segment, self._segment = self._segment, None
            segment.__exit__(*exc)

    def counted(self, outputs: int, tokens: int) -> None:
        now = time.perf_counter()
        if outputs:
            self.latencies_ms.append((now - self._since) * 1000)
        self._since = now
        self.outputs += outputs
        self.tokens += tokens

    def quality(self, primary: str, higher_is_better: bool, metrics: dict[str, float]) -> None:
        self.primary, self.higher_is_better = primary, higher_is_better
        self.outcome.quality.update(metrics)
        if primary in self.outcome.quality:
            self.outcome.quality["quality"] = self.outcome.quality[primary]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._segment is None:
            raise ConfigError("phases do not nest: close the open one first")
        from tracker.runs.loop import LOAD_PHASE

        self.close_query()
        try:
            with self.meter.phase(LOAD_PHASE if name == "load" else name) as reading:
                yield
        finally:
            if name == "load":
                self.outcome.load = reading
            self.open_query()

    def query_reading(self) -> Any:
        """The query segments as one reading (their energies and windows summed)."""
        from tracker.measurement.meter import PhaseReading
        from tracker.measurement.outcome import QueryReading

        done = [r for r in self.segments if r.energy is not None]
        if not done:
            return None
        reading = PhaseReading(QUERY, energy=_sum(r.energy for r in done), machine=_sum(r.seen for r in done),
                               window=_sum(r.window for r in done if r.window is not None),
                               reason="; ".join(r.reason for r in done if r.reason))
        from tracker.measurement.attribution import contention

        reading.contended = contention(reading.window) if reading.window is not None else None
        return QueryReading(reading, inferences=self.outputs, generated_tokens=self.tokens,
                            batch_latencies_ms=self.latencies_ms)


    def log_outcome(self, *, note: str) -> tuple[dict[str, float], dict[str, str]]:
        """The block's figures and how they were obtained, logged once it is left; returned too."""
        from tracker.recording.metrics import run_metrics
        from tracker.recording.provenance import log_records, outcome_tags

        query = self.query_reading()
        outcome = self.outcome
        outcome.queries = [query] if query is not None else []
        if "quality" not in outcome.quality:
            outcome.quality_unavailable = "no quality was logged: call m.log_quality(name=value) in the block"
        metrics = run_metrics(outcome, generative=self.tokens > 0) | self.meter.gpu_figures()
        tags = outcome_tags(self.meter, outcome, expected_inferences=None, note=note)
        tags["tracker.quality.metric"] = self.primary or "none"
        tags["tracker.quality.higher_is_better"] = str(self.higher_is_better).lower()
        tags.setdefault("tracker.quality.meaningful", "true")
        if self.outputs == 0:
            tags["tracker.measurement.no_outputs"] = (
                "no outputs were counted: call m.count(n) as outputs are produced; per-output figures are NaN")
        self.recorder.log(params={"n_samples": self.outputs}, metrics=metrics, tags=tags)
        log_records(self.recorder, self.meter)
        return metrics, tags


def _sum(values: Any) -> Any:
    values = list(values)
    return sum(values[1:], values[0]) if values else None


@contextmanager
def _measured(*, task: str, model: str, dataset: str | None, experiment: str | None, country: str | None,
              carbon_intensity: float | None, device: str, params: dict[str, Any],
              tags: dict[str, str]) -> Iterator[Measurement]:
    import mlflow

    from tracker.loading.device import resolve_device
    from tracker.measurement.carbon import resolve_location
    from tracker.measurement.meter import EnergyMeter
    from tracker.recording.lifecycle import RunDataset, recorded_run
    from tracker.recording.store import check_tracking_server
    from tracker.recording.provenance import version_tags

    check_tracking_server()
    location = resolve_location(country, carbon_intensity)
    device = resolve_device(device)
    active = mlflow.active_run()
    if experiment is None:
        experiment = mlflow.get_experiment(active.info.experiment_id).name if active else task
    key = hashlib.sha256(json.dumps([task, model, dataset, params], sort_keys=True, default=str).encode()).hexdigest()[:16]
    run_tags = {"tracker.api": "measure", "tracker.model.source": "user code", "tracker.model.location": model,
                "tracker.dataset.source": "user code" if dataset else "none",
                "tracker.config_key": key} | version_tags() | tags
    if active is not None:
        run_tags["mlflow.parentRunId"] = active.info.run_id
    meter = EnergyMeter(location=location, device=device)
    name = f"{model.rstrip('/').split('/')[-1]} · {dataset or 'user code'}"
    with recorded_run(experiment=experiment, run_name=name, tags=run_tags) as recorder:
        recorder.log(params={"task": task, "model": model, "dataset": dataset or "none", "device": device,
                             "country_iso_code": location.country_iso_code} | params)
        if dataset:
            recorder.log_inputs(datasets=[RunDataset(name=dataset, digest=hashlib.sha256(dataset.encode()).hexdigest()[:8],
                                                     source_type="code", source=json.dumps({"name": dataset}))])
        session = _Session(recorder, meter)
        measurement = Measurement(recorder.run_id, experiment, _session=session)
        _ACTIVE.append(measurement)
        exc: tuple[Any, Any, Any] = (None, None, None)
        try:
            session.open_query()
            yield measurement
        except BaseException as err:
            exc = (type(err), err, err.__traceback__)
            raise
        finally:
            _ACTIVE.remove(measurement)
            session.close_query(exc)
            meter.close()
            metrics, run_tags_after = session.log_outcome(note=run_tags.get("mlflow.note.content", ""))
            measurement.metrics, measurement.tags = metrics, run_tags | run_tags_after
