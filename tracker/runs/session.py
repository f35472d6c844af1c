"""One measured run, from a validated config to a finished MLflow run.

Everything that can be checked before measuring is checked first (tracking server, country,
device, precision, model and dataset), so bad input leaves no run behind. Once the run exists it
always ends: FINISHED, FAILED with the reason, or KILLED with the energy measured so far.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tracker.errors import ConfigError
from tracker.loading import hub
from tracker.loading.device import resolve_device
from tracker.loading.precision import ensure_supported
from tracker.loading.remote_code import remote_code
from tracker.measurement.carbon import resolve_location
from tracker.measurement.meter import GPU_MIN_WINDOW_S, EnergyMeter
from tracker.measurement.outcome import RunOutcome
from tracker.recording.lifecycle import Heartbeat, RunDataset, RunRecorder, recorded_run
from tracker.recording.store import check_tracking_server
from tracker.recording.metrics import run_metrics
from tracker.recording.provenance import log_records, outcome_tags, version_tags
from tracker.recording.signals import interrupts_raise
from tracker.runs.config import RunConfig
from tracker.runs.loop import RunPlan, execute, length_order
from tracker.runs.result import RunResult
from tracker.sources.data import Columns, LoadedDataset, load_dataset
from tracker.sources.mlflow_models import tag_version
from tracker.sources.models import resolve_model
from tracker.sources.multipurpose import decide_kind
from tracker.sources.reference import ModelReference
from tracker.tasks import get_task
from tracker.tasks.base import GenerationSettings

logger = logging.getLogger(__name__)

PREDICTION_SAMPLE_ROWS = 50
SAMPLE_TEXT_CHARS = 200  # inputs and predictions are cut to this in predictions_sample.csv
COMPILE_WARMUP_BATCHES = 3  # torch.compile: first call, first new shape (measured: 28 s and 15 s, tiny BERT, CPU)


def measure(config: RunConfig, *, reference: ModelReference | None = None, tags: dict[str, str] | None = None,
            kept: dict[tuple[Any, ...], Any] | None = None) -> RunResult:
    """Run, measure and log one task/model/dataset combination; ``tags`` are added to the run.
    ``reference``: the model as ``config.check_inputs`` classified it, where the caller checked
    already; ``kept``: models this process keeps loaded from run to run (``loop.execute``)."""
    if reference is None:  # before MLflow, torch and the Hub probe: a wrong path is answered at once
        reference = config.check_inputs()
    check_tracking_server()
    quiet_libraries()
    location = resolve_location(config.country, config.carbon_intensity)
    plan, plan_tags = _plan(config, reference)  # every check that can fail before the run exists
    tags = plan_tags | (tags or {})
    meter = EnergyMeter(location=location, device=plan.device,
                        tracking_mode=config.tracking_mode)  # type: ignore[arg-type]
    run_name = f"{short_model_name(plan.model.name)} · {plan.dataset.name} · bs{config.batch_size} · {config.precision}"
    # SIGINT/SIGTERM raise from the run's creation on (held during each write), so that one arriving
    # while its params and inputs are written still ends it KILLED rather than leaving it RUNNING.
    with interrupts_raise(), recorded_run(experiment=config.experiment_name, run_name=run_name, tags=tags) as recorder:
        _log_inputs(recorder, config, plan, location.country_iso_code)
        outcome = RunOutcome()
        try:
            with remote_code(config.trust_remote_code), Heartbeat(recorder, _so_far(meter, outcome)), \
                    _progress_bar(config, plan.dataset.name) as progress:
                execute(plan, meter, outcome, progress, kept=kept)
        finally:
            meter.close()
            metrics, logged_tags = _log_outcome(recorder, plan, meter, outcome, log_inputs=config.log_inputs,
                                                note=tags.get("mlflow.note.content", ""))
    if plan.model.mlflow is not None:
        tag_version(recorder.client, plan.model.mlflow, run_id=recorder.run_id, metrics=metrics,
                    quality_metric=plan.task.primary_metric, task=plan.task.name, dataset=plan.dataset.name)
    return RunResult(recorder.run_id, config.experiment_name, metrics, logged_tags, config)


def _plan(config: RunConfig, reference: ModelReference) -> tuple[RunPlan, dict[str, str]]:
    """Everything resolved before measuring (device, precision, model, dataset, settings), and the
    tags that say where each came from."""
    task = get_task(config.task)
    missing = task.missing_requirement()
    if missing:
        raise ConfigError(missing)
    device = resolve_device(config.device)
    precision_probe = ensure_supported(device, config.precision)
    reachable = hub.prepare()
    model = resolve_model(task, reference, hub_reachable=reachable, trust_remote_code=config.trust_remote_code)
    if model.runs_as_logged and config.precision != "fp32":
        raise ConfigError(f"'{config.model}' is a pyfunc model, which runs as it was logged: drop --precision "
                          "(its own code decides it)")
    with remote_code(config.trust_remote_code):
        kind = decide_kind(task, model, config.model_kind)
    dataset = load_dataset(task, config.dataset, config.n_samples, hub_reachable=reachable,
                           columns=Columns(config.text_column, config.target_column))
    settings = GenerationSettings(max_new_tokens=config.max_new_tokens, image_size=config.image_size,
                                  num_inference_steps=config.num_inference_steps,
                                  guidance_scale=config.guidance_scale)
    # A compiled model compiles on its first call and again on the first new shape (then with
    # dynamic shapes): both in the warm-up, not in the measured windows.
    warmup = max(config.warmup, COMPILE_WARMUP_BATCHES) if config.compile else config.warmup
    plan = RunPlan(task=task, model=model, dataset=dataset, device=device, precision=config.precision,
                   batch_size=config.batch_size, repeats=config.repeats, warmup=warmup,
                   settings=settings, kind=kind, min_duration_s=config.min_duration_s,
                   min_window_s=min_window_s(device, config.min_duration_s),
                   wait_for_quiet_s=config.wait_for_quiet, threads=config.threads,
                   sort_by_length=config.sort_by_length, attention=config.attention, compile=config.compile)
    if config.sort_by_length:
        length_order(task, dataset.inputs)  # inputs that are not text are refused before the run exists
    _seed(config.seed)
    tags = _provenance_tags(plan, reachable) | {"tracker.config_key": config.key()}
    if config.trust_remote_code:
        tags["tracker.model.trust_remote_code"] = "true: the model's own code was allowed to run"
    if precision_probe.env:
        tags["tracker.precision.note"] = " ".join(f"{k}={v}" for k, v in precision_probe.env.items())
    return plan, tags


def min_window_s(device: str, min_duration_s: float) -> float:
    """How long each query window lasts at least: on a GPU, --min-duration-s where given, else
    GPU_MIN_WINDOW_S; on a CPU, no minimum (its windows are judged by clock ticks instead)."""
    if not device.startswith("cuda"):
        return 0.0
    return min_duration_s or GPU_MIN_WINDOW_S


def _log_inputs(recorder: RunRecorder, config: RunConfig, plan: RunPlan, country: str) -> None:
    """What the run was asked and what it resolved: params, config.json, the dataset and model inputs."""
    model, dataset = plan.model, plan.dataset
    recorder.log(params=_params(config, plan, country))
    recorder.log_json(config.as_dict() | {"resolved_model": model.location, "resolved_dataset": dataset.location,
                                          "resolved_device": plan.device}, "config.json")
    recorder.log_inputs(datasets=[run_dataset(dataset)],
                        model_ids=[model.mlflow.logged_model_id] if model.mlflow and model.mlflow.logged_model_id
                        else [])


def _so_far(meter: EnergyMeter, outcome: RunOutcome) -> Callable[[], dict[str, float]]:
    """What the heartbeat logs: the query phase's attributed energy and inferences so far (loading excluded)."""
    def so_far() -> dict[str, float]:
        closed = sum(q.reading.energy.total_kwh for q in outcome.complete_queries)
        querying = bool(outcome.queries) and outcome.queries[-1].reading.energy is None
        return {"partial_energy_kwh": closed + ((meter.open_window_kwh() or 0.0) if querying else 0.0),
                "partial_inferences": float(sum(q.inferences for q in outcome.queries))}

    return so_far


def run_dataset(dataset: LoadedDataset) -> RunDataset:
    """The rows measured, as an MLflow dataset input: the digest changes when any input or target does."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for value in (*dataset.inputs, *dataset.targets):
        digest.update(_value_bytes(value) + b"\x1f")
    source_type = {"hub": "hugging_face", "local": "local", "builtin": "local"}[dataset.source]
    return RunDataset(name=dataset.name, digest=digest.hexdigest()[:8], source_type=source_type,
                      source=json.dumps({"uri": dataset.location}),
                      profile=json.dumps({"num_rows": len(dataset.inputs)}))


def _value_bytes(value: Any) -> bytes:
    """A row's value as digest input: images and audio arrays by their content, the rest as text."""
    if hasattr(value, "tobytes"):
        return value.tobytes()
    if isinstance(value, (tuple, list)):
        return b"\x1e".join(_value_bytes(v) for v in value)
    if isinstance(value, dict):
        return b"\x1e".join(_value_bytes(v) for v in value.values())
    return str(value).encode()


def quiet_libraries() -> None:
    """Our progress bar is the one that matters; transformers' loading bars are noise."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _seed(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _params(config: RunConfig, plan: RunPlan, country: str) -> dict[str, Any]:
    """The params known before the run: the options' own (``RunConfig.params``) with what was
    resolved in their place; settings resolved at load time are logged after it."""
    params = config.params() | {"model": plan.model.name, "dataset": plan.dataset.name, "device": plan.device,
                                "warmup": plan.warmup, "country_iso_code": country}
    params.update({k: v for k, v in plan.settings_params().items() if v is not None})
    return params


def _provenance_tags(plan: RunPlan, hub_reachable: bool) -> dict[str, str]:
    model, dataset = plan.model, plan.dataset
    fallbacks = [r for r in (model.fallback_reason, dataset.fallback_reason) if r]
    builtin_used = model.source == "builtin-tiny" or dataset.source == "builtin"
    tags = {
        "tracker.model.source": model.source,
        "tracker.model.location": model.location,
        "tracker.model.kind": plan.kind.kind,
        "tracker.model.kind_reason": plan.kind.reason,
        "tracker.quality.metric": plan.task.primary_metric,
        "tracker.quality.higher_is_better": str(plan.task.higher_is_better).lower(),
        "tracker.dataset.source": dataset.source,
        "tracker.dataset.location": dataset.location,
        "tracker.quality.meaningful": str(not builtin_used).lower(),
        "tracker.run.fallback": str(bool(fallbacks)).lower(),
        "tracker.hub.reachable": str(hub_reachable).lower(),
    } | version_tags()
    if dataset.skipped_rows:
        tags["tracker.dataset.skipped_rows"] = str(dataset.skipped_rows)
    if builtin_used:
        tags["tracker.quality.reason"] = ("built-in tiny model with random weights and/or built-in "
                                          "sample data: quality figures are not meaningful")
    if model.fallback_reason:
        tags["tracker.model.fallback_reason"] = model.fallback_reason
    if model.mlflow is not None:
        tags.update(model.mlflow.tags())
    if dataset.fallback_reason:
        tags["tracker.dataset.fallback_reason"] = dataset.fallback_reason
    if fallbacks:
        notice = ("FALLBACK, not the model/dataset asked for: " + "; ".join(fallbacks) + ". Energy is "
                  + "real for what ran" + ("; quality is not meaningful." if builtin_used else "."))
        tags["mlflow.note.content"] = notice
        logger.warning(notice)
    return tags


def _log_outcome(recorder: RunRecorder, plan: RunPlan, meter: EnergyMeter, outcome: RunOutcome, *,
                 note: str, log_inputs: bool) -> tuple[dict[str, float], dict[str, str]]:
    metrics = run_metrics(outcome, generative=plan.generative) | meter.gpu_figures()
    tags = outcome_tags(meter, outcome, expected_inferences=len(plan.dataset.inputs), note=note)
    if outcome.load_shared:
        tags["tracker.load.shared"] = ("the model stayed loaded from an earlier run of this process (a search "
                                       "measures the settings of one load in one process): no load phase here")
    logged = {k for k, v in plan.settings_params().items() if v is not None}
    late = {k: v for k, v in outcome.resolved_settings.items() if k not in logged and v is not None}
    recorder.log(params=late, metrics=metrics, tags=tags)
    log_records(recorder, meter)
    if outcome.predictions:
        recorder.log_text(_prediction_sample(plan, outcome, log_inputs), "predictions_sample.csv")
    return metrics, tags


def _prediction_sample(plan: RunPlan, outcome: RunOutcome, log_inputs: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    references = outcome.references or plan.dataset.targets
    rows = [(plan.task.describe_input(value), prediction, reference) for value, prediction, reference
            in list(zip(plan.dataset.inputs, outcome.predictions, references))[:PREDICTION_SAMPLE_ROWS]]
    columns = slice(0 if log_inputs else 1, 3)  # the input first, unless it is kept out
    writer.writerow(("input", "prediction", "reference")[columns])
    writer.writerows([_short_text(v) for v in row[columns]] for row in rows)
    return out.getvalue()


def _short_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= SAMPLE_TEXT_CHARS else text[:SAMPLE_TEXT_CHARS - 1] + "…"


def short_model_name(model_name: str) -> str:
    """A model's name as run names show it: the last part of a Hub id or a folder's path."""
    return model_name.rstrip("/").split("/")[-1]


@contextmanager
def _progress_bar(config: RunConfig, dataset: str) -> Iterator[Any]:
    from tqdm import tqdm

    total = config.n_samples * config.repeats
    with tqdm(total=total, unit="inference", desc=f"{config.task} · {dataset}", file=sys.stderr,
              disable=not config.progress, dynamic_ncols=True) as bar:
        yield bar.update
