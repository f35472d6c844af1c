"""CodeCarbon records (the standard ``emissions.csv`` layout) into MLflow runs named like measured ones.

One run per record: the model is its ``project_name``, the per-inference figures divide by the
number of inferences the user says each record covers. Records split by phase (CodeCarbon task
rows, with ``task_name``) are matched to their record by ``run_id`` and become the load and query
phases, so that the query-phase figures compare with measured runs. A record without phase rows
covers load and query together; its run says so (``tracker.energy.scope``). Each run carries a key
made from the record's own text, so importing the same records again adds nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tracker.energy import Energy
from tracker.errors import ConfigError
from tracker.meter import PhaseReading
from tracker.runner import LOAD_PHASE, QUERY_PHASE, QueryReading, RunOutcome
from tracker.signals import interrupts_raise
from tracker.summary import run_metrics

logger = logging.getLogger(__name__)

RECORD_COLUMNS = ("project_name", "duration", "emissions", "cpu_energy", "gpu_energy", "ram_energy")
KEY_TAG = "tracker.import.record_key"
SCOPE_QUERY = "query phase"
SCOPE_WHOLE = "whole record: model loading and queries together (no phase records)"
HARDWARE_COLUMNS = ("cpu_model", "cpu_count", "gpu_model", "gpu_count", "ram_total_size", "os",
                    "python_version", "region", "cloud_provider", "cloud_region", "tracking_mode")


@dataclass(frozen=True, kw_only=True)
class ImportConfig:
    files: tuple[Path, ...]
    task: str
    dataset: str
    n_samples: int
    phases: tuple[Path, ...] = ()
    experiment: str | None = None
    model_kind: str | None = None  # task-specific or multi-purpose, when the user knows it

    def __post_init__(self) -> None:
        from tracker.tasks import get_task

        get_task(self.task)  # an unknown task is refused with "did you mean"
        if self.model_kind not in (None, "task-specific", "multi-purpose"):
            raise ConfigError(f"--model-kind takes task-specific or multi-purpose, got '{self.model_kind}'")

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.task


@dataclass
class ImportSummary:
    experiment: str
    imported: list[str] = field(default_factory=list)  # run ids
    already_imported: int = 0
    without_phases: int = 0


def import_records(config: ImportConfig) -> ImportSummary:
    """Import every record of ``config.files``; checks everything before the first run is made."""
    from mlflow import MlflowClient

    from tracker.tracking import check_tracking_server, experiment_id

    records = [(path, row) for path in config.files for row in _read(path, phases=False)]
    phases = _phases_by_run_id(config.phases) if config.phases else {}
    _check_unambiguous(records, phases)

    check_tracking_server()
    client = MlflowClient()
    summary = ImportSummary(config.experiment_name)
    known = _imported_keys(client, experiment_id(client, config.experiment_name))
    with interrupts_raise():  # Ctrl-C ends the record being imported KILLED; those before it stay
        for path, row in records:
            key = record_key(row)
            if key in known:
                summary.already_imported += 1
                continue
            rows = phases.get(row.get("run_id", ""), [])
            summary.without_phases += not rows
            summary.imported.append(_import_one(config, path, row, rows, key))
            known.add(key)
    return summary


def record_key(row: dict[str, str]) -> str:
    """The record's identity: a hash of its own text, whichever file it came from."""
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:32]


def _import_one(config: ImportConfig, path: Path, row: dict[str, str], phase_rows: list[dict[str, str]],
                key: str) -> str:
    from tracker.tracking import recorded_run

    outcome = RunOutcome()
    if phase_rows:
        for phase_row in phase_rows:
            reading = PhaseReading(phase_row["task_name"], _energy(phase_row))
            if _phase_of(phase_row["task_name"]) == "load":
                outcome.load = reading
            else:
                outcome.queries.append(QueryReading(reading, inferences=config.n_samples))
    else:
        outcome.queries.append(QueryReading(PhaseReading("record", _energy(row)), inferences=config.n_samples))
    metrics = run_metrics(outcome, generative=False)
    model = row["project_name"]
    params = {"task": config.task, "model": model, "dataset": config.dataset, "n_samples": config.n_samples}
    if row.get("country_iso_code"):
        params["country_iso_code"] = row["country_iso_code"]
    tags = _tags(config, path, row, phase_rows, key)
    run_name = f"{model.rstrip('/').split('/')[-1]} · {config.dataset} · imported"
    with recorded_run(experiment=config.experiment_name, run_name=run_name, tags=tags,
                      times_ms=_times_ms(row)) as recorder:
        recorder.log(params=params, metrics=metrics)
        recorder.log_text(_as_csv(phase_rows or [row]), "codecarbon/emissions.csv")
    return recorder.run_id


def _tags(config: ImportConfig, path: Path, row: dict[str, str], phase_rows: list[dict[str, str]],
          key: str) -> dict[str, str]:
    version = row.get("codecarbon_version") or "unknown"
    recorded = f"imported: as recorded by CodeCarbon {version}"
    unknown_method = "the record does not say whether it was measured (RAPL) or modelled (TDP)"
    tags = {
        "tracker.imported": "true",
        "tracker.import.codecarbon_version": version,
        "tracker.import.file": str(path),
        KEY_TAG: key,
        "tracker.energy.scope": SCOPE_QUERY if phase_rows else SCOPE_WHOLE,
        "tracker.energy.meter": "codecarbon (imported record)",
        "tracker.energy.cpu.method": f"{recorded}, {_watts(row, 'cpu_power')} average CPU power; {unknown_method}",
        "tracker.energy.gpu.method": (f"{recorded}, {_watts(row, 'gpu_power')} average GPU power over "
                                      f"{row.get('gpu_count') or 'an unrecorded number of'} GPU(s) "
                                      f"({row.get('gpu_model') or 'model not recorded'}); the record does "
                                      "not say which GPUs the model used"),
        "tracker.energy.ram.method": f"{recorded}, {_watts(row, 'ram_power')} average RAM power "
                                     "(CodeCarbon models RAM power from its size)",
        "tracker.carbon.intensity_source": (f"{recorded}: grid of {row.get('country_name') or '?'} "
                                            f"({row.get('country_iso_code') or '?'}"
                                            + (f", region {row['region']}" if row.get("region") else "") + ")"),
        "tracker.model.source": "imported",
        "tracker.dataset.source": "imported",
        "tracker.quality.unavailable": "imported CodeCarbon record: it holds energy, not quality",
        "tracker.quality.meaningful": "false",
        "mlflow.note.content": (f"Imported from the CodeCarbon record {row.get('run_id') or '(no run_id)'} in "
                                f"{path.name}, written by CodeCarbon {version}"
                                + (" with its load and query phases." if phase_rows else
                                   ": no phase records, so its energy covers loading the model too.")),
    }
    if row.get("run_id"):
        tags["tracker.import.codecarbon_run_id"] = row["run_id"]
    if phase_rows:
        tags["tracker.import.phase_files"] = ", ".join(sorted({r["_file"] for r in phase_rows}))
    if config.model_kind:
        tags["tracker.model.kind"] = config.model_kind
        tags["tracker.model.kind_reason"] = "given with --model-kind at import"
    tags.update({f"tracker.hardware.{c}": row[c] for c in HARDWARE_COLUMNS if row.get(c)})
    return tags


def _watts(row: dict[str, str], column: str) -> str:
    value = _number(row, column)
    return "unrecorded" if math.isnan(value) else f"{value:.1f} W"


def _energy(row: dict[str, str]) -> Energy:
    return Energy(cpu_kwh=_number(row, "cpu_energy"), gpu_kwh=_number(row, "gpu_energy"),
                  ram_kwh=_number(row, "ram_energy"), emissions_kg=_number(row, "emissions"),
                  duration_s=_number(row, "duration"))


def _number(row: dict[str, str], column: str) -> float:
    try:
        return float(row.get(column, ""))
    except ValueError:
        return math.nan


def _times_ms(row: dict[str, str]) -> tuple[int, int] | None:
    """CodeCarbon stamps a record when it stops: the run ended then and began ``duration`` earlier."""
    try:
        end = datetime.fromisoformat(row["timestamp"])
    except (KeyError, ValueError):
        return None
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)  # CodeCarbon 2 wrote local time without a zone
    end_ms = int(end.timestamp() * 1000)
    duration = _number(row, "duration")
    return end_ms - int((0 if math.isnan(duration) else duration) * 1000), end_ms


def _read(path: Path, *, phases: bool) -> list[dict[str, str]]:
    """Rows of one emissions.csv, as text; complete records without task_name, phase rows with it."""
    import pandas as pd

    if not path.is_file():
        raise ConfigError(f"CodeCarbon record file '{path}' does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise ConfigError(f"'{path}' is not a CSV file of CodeCarbon records: {err}") from err
    if phases and "task_name" not in frame.columns:
        raise ConfigError(f"'{path}' passed with --phases has no task_name column: it holds complete "
                          "records, which go as FILES; --phases takes CodeCarbon's per-task rows")
    missing = [c for c in RECORD_COLUMNS + (("run_id",) if phases else ()) if c not in frame.columns]
    if missing:
        raise ConfigError(f"'{path}' is not in CodeCarbon's emissions.csv layout: no column "
                          f"{', '.join(missing)}")
    if not phases and "task_name" in frame.columns:
        raise ConfigError(f"'{path}' holds phase records (a task_name column): pass it with --phases, "
                          "and the complete records (one row per run) as FILES")
    rows = frame.to_dict("records")
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        for column in ("cpu_energy", "gpu_energy", "ram_energy", "emissions", "duration"):
            value = _number(row, column)
            if not (math.isfinite(value) and value >= 0):  # no energy is negative, infinite or missing
                what = "no number" if math.isnan(value) else "an impossible value"
                raise ConfigError(f"'{path}' line {line}: record {row.get('run_id') or row['project_name']} has "
                                  f"{what} in {column} ('{row[column]}'); a finite number >= 0 is needed: "
                                  "correct the record or leave it out")
    return rows


def _phases_by_run_id(paths: tuple[Path, ...]) -> dict[str, list[dict[str, str]]]:
    files = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.csv")))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"--phases '{path}' is neither a file nor a folder")
    if not files:
        raise ConfigError(f"--phases {', '.join(map(str, paths))}: no .csv file found")
    by_run: dict[str, list[dict[str, str]]] = {}
    for file in files:
        for row in _read(file, phases=True):
            if _phase_of(row["task_name"]) is None:
                raise ConfigError(f"'{file}': phase '{row['task_name']}' is neither loading nor querying "
                                  f"(task names containing 'load' or 'query', as '{LOAD_PHASE}' and "
                                  f"'{QUERY_PHASE}')")
            by_run.setdefault(row["run_id"], []).append(row | {"_file": file.name})
    for run_id, rows in by_run.items():
        if sum(_phase_of(r["task_name"]) == "query" for r in rows) == 0:
            raise ConfigError(f"phase records of run {run_id} have no query phase, only "
                              f"{', '.join(r['task_name'] for r in rows)}")
    return by_run


def _phase_of(task_name: str) -> str | None:
    name = task_name.lower()
    return "load" if "load" in name else "query" if "query" in name else None


def _check_unambiguous(records: list[tuple[Path, dict[str, str]]], phases: dict[str, list]) -> None:
    """Phases are matched by run_id: two records with the same run_id could not tell them apart."""
    seen: dict[str, Path] = {}
    for path, row in records:
        run_id = row.get("run_id", "")
        if run_id in phases and run_id in seen:
            raise ConfigError(f"run_id {run_id} appears in two records ({seen[run_id].name}, {path.name}): "
                              "its phase records cannot be matched to one of them")
        seen[run_id] = path


def _imported_keys(client: Any, experiment_id: str) -> set[str]:
    from tracker.tracking import finished_runs

    return {r.data.tags[KEY_TAG] for r in finished_runs(client, experiment_id) if KEY_TAG in r.data.tags}


def _as_csv(rows: list[dict[str, str]]) -> str:
    import pandas as pd

    out = io.StringIO()
    pd.DataFrame([{k: v for k, v in row.items() if k != "_file"} for row in rows]).to_csv(out, index=False)
    return out.getvalue()
