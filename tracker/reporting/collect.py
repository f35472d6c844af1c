"""The runs a report compares, read from MLflow into one table: a row per FINISHED run with energy."""

from __future__ import annotations

import math
from typing import Any

from tracker.errors import ConfigError
from tracker.execution.remeasure import REMEASURED_BY
from tracker.recording.lifecycle import finished_runs

NOT_RECORDED = ""  # a setting the run does not record (imported records have no batch size)

# Why a FINISHED run is not compared, as the report's pages say it.
LEFT_OUT_SEARCH = "runs of a search (--include-tuning true compares them)"
LEFT_OUT_INCOMPLETE = "runs without a task, a model or an energy figure"
LEFT_OUT_REMEASURED = "contended runs measured again (the quieter measurement is compared)"

RUN_COLUMNS = ["run_id", "experiment", "task", "model", "dataset", "batch_size", "precision", "kind",
               "kwh_per_1k", "g_co2_per_1k", "quality", "quality_metric", "higher_is_better",
               "quality_meaningful", "parameters", "energy_scope", "source", "energy_method", "contended"]


def default_experiments(client: Any) -> list[str]:
    """Every task's experiment that exists."""
    from tracker.tasks import task_names

    return [name for name in task_names() if _live(client.get_experiment_by_name(name))]


def read_runs(client: Any, experiments: list[str], *, include_tuning: bool) -> Any:
    """A DataFrame with RUN_COLUMNS: the FINISHED runs of ``experiments`` that have an energy figure.

    ``attrs["left_out"]`` counts the FINISHED runs left out, by reason.

    Runs of a search (``tracker tune``) explore one model's settings and are left out unless
    ``include_tuning``: the report compares models, as the paper does.
    """
    import pandas as pd

    rows = []
    left_out = {LEFT_OUT_SEARCH: 0, LEFT_OUT_INCOMPLETE: 0, LEFT_OUT_REMEASURED: 0}
    for name in experiments:
        for run in finished_runs(client, live_experiment(client, name).experiment_id):
            if REMEASURED_BY in run.data.tags:
                left_out[LEFT_OUT_REMEASURED] += 1
                continue
            if "tracker.tune.study" in run.data.tags and not include_tuning:
                left_out[LEFT_OUT_SEARCH] += run.data.metrics.get("energy_kwh_per_1k") is not None
                continue
            row = _row(run, name)
            if row is None:
                left_out[LEFT_OUT_INCOMPLETE] += "tracker.tune.role" not in run.data.tags  # a search's parent has none
            else:
                rows.append(row)
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    frame.attrs["datasets_merged"] = _one_name_per_dataset(frame)
    frame.attrs["left_out"] = {reason: n for reason, n in left_out.items() if n}
    return frame


def _one_name_per_dataset(frame: Any) -> list[str]:
    """Spellings of one dataset (squad_v2, squadv2, SQuAD-v2) become its commonest one, so that its
    runs are compared together; returns what was merged, as 'squad_v2 = squadv2'."""
    import re

    key = frame["dataset"].map(lambda name: re.sub(r"[^a-z0-9]", "", str(name).lower()))
    merged, canonical = [], {}
    for name_key, names in frame.groupby(key)["dataset"]:
        counts = names.value_counts()
        canonical[name_key] = counts.index[0]
        if len(counts) > 1:
            merged.append(" = ".join(counts.index))
    if merged:
        frame["dataset"] = key.map(canonical)
    return merged


def live_experiment(client: Any, name: str) -> Any:
    """The experiment called ``name``; one that does not exist (or was deleted) is refused in one line."""
    experiment = client.get_experiment_by_name(name)
    if not _live(experiment):
        from tracker.errors import did_you_mean

        known = [e.name for e in client.search_experiments()]
        raise ConfigError(f"experiment '{name}' does not exist.{did_you_mean(name, known)} "
                          f"Existing: {', '.join(sorted(known)) or 'none'}")
    return experiment


def _row(run: Any, experiment: str) -> dict[str, Any] | None:
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    energy = metrics.get("energy_kwh_per_1k", math.nan)
    if "task" not in params or "model" not in params or not math.isfinite(energy):
        return None
    imported = tags.get("tracker.imported") == "true"
    return {
        "run_id": run.info.run_id, "experiment": experiment, "task": params["task"], "model": params["model"],
        "dataset": params.get("dataset", NOT_RECORDED),
        "batch_size": params.get("batch_size", NOT_RECORDED), "precision": params.get("precision", NOT_RECORDED),
        "kind": tags.get("tracker.model.kind", "unknown"),
        "kwh_per_1k": energy,
        "g_co2_per_1k": metrics.get("emissions_g_per_output", math.nan) * 1000,
        "quality": metrics.get("quality", math.nan),
        "quality_metric": tags.get("tracker.quality.metric", ""),
        "higher_is_better": tags.get("tracker.quality.higher_is_better", "true") == "true",
        "quality_meaningful": tags.get("tracker.quality.meaningful") == "true",
        "parameters": metrics.get("model_parameters", math.nan),
        "energy_scope": tags.get("tracker.energy.scope", "query phase"),
        "contended": tags.get("tracker.measurement.contended") == "true",
        "source": "imported" if imported else "measured",
        "energy_method": (f"imported CodeCarbon {tags.get('tracker.import.codecarbon_version', '?')} record"
                          if imported else _method(tags)),
    }


def _method(tags: dict[str, str]) -> str:
    """How the energy was obtained, in a few words: 'CPU modelled, RAM modelled, GPU absent'."""
    parts = []
    for component in ("cpu", "ram", "gpu"):
        method = tags.get(f"tracker.energy.{component}.method", "unknown:")
        parts.append(f"{component.upper()} {method.split(':')[0]}")
    return ", ".join(parts)


def _live(experiment: Any) -> bool:
    return experiment is not None and experiment.lifecycle_stage == "active"
