"""CodeCarbon records (the standard ``emissions.csv`` layout) into MLflow runs named like measured ones.

One run per record: the model is its ``project_name``, the per-inference figures divide by the
number of inferences the user says each record covers. Phase rows (CodeCarbon task rows, with
``task_name``) are matched to their record by ``run_id``: every phase becomes
``phase_<name>_energy_kwh`` and ``phase_<name>_duration_s``, and the load and query phases become
the load and query figures of measured runs. A record without a query phase covers loading and
querying together; its run says so (``tracker.energy.scope``).

A record is identified by its CodeCarbon run_id, project_name and timestamp: importing it again
adds nothing; importing it with other options is counted, and ``replace`` imports it again in place.
Runs are written in chunks (``tracking.write_finished_runs``), not a transaction per call.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracker.errors import ConfigError
from tracker.import_codecarbon.kinds import KindRule, check_kind, kind_of
from tracker.import_codecarbon.records import Row, number, phase_of, phase_slug, read_records, record_id, times_ms
from tracker.measurement.energy import Energy
from tracker.measurement.meter import PhaseReading
from tracker.measurement.outcome import QueryReading, RunOutcome
from tracker.recording.metrics import run_metrics
from tracker.recording.signals import interrupts_raise

logger = logging.getLogger(__name__)

ID_TAG = "tracker.import.record_id"
LEGACY_KEY_TAG = "tracker.import.record_key"  # runs imported before record ids: keyed by the record's text
OPTIONS_TAG = "tracker.import.options"
SCOPE_QUERY = "query phase"
SCOPE_WHOLE = "whole record: model loading and queries together (no query phase record)"
HARDWARE_COLUMNS = ("cpu_model", "cpu_count", "gpu_model", "gpu_count", "ram_total_size", "os",
                    "python_version", "region", "cloud_provider", "cloud_region", "tracking_mode")


@dataclass(frozen=True, kw_only=True)
class ImportConfig:
    files: tuple[Path, ...]  # emissions.csv files or folders of them; phase files among them are phases
    task: str
    dataset: str | None = None  # the dataset every record measured, or:
    dataset_from_file: str | None = None  # a regex on each file's name whose first group names it
    n_samples: int
    phases: tuple[Path, ...] = ()
    experiment: str | None = None
    model_kind: str | None = None  # task-specific or multi-purpose, for records no rule names
    model_kind_map: tuple[KindRule, ...] = ()
    replace: bool = False  # import again, in place, records imported before with other options

    def __post_init__(self) -> None:
        from tracker.tasks import get_task

        get_task(self.task)  # an unknown task is refused with "did you mean"
        check_kind(self.model_kind)
        if (self.dataset is None) == (self.dataset_from_file is None):
            raise ConfigError("name the dataset the records measured with --dataset NAME (e.g. imdb), or with "
                              "--dataset-from-file REGEX to read it from each file's name; one of them, not both")
        if self.dataset is not None and not self.dataset.strip():
            raise ConfigError("--dataset is empty: name the dataset the records measured, e.g. imdb")
        if self.dataset_from_file is not None:
            try:
                re.compile(self.dataset_from_file)
            except re.error as err:
                raise ConfigError(f"--dataset-from-file '{self.dataset_from_file}' is not a regular expression "
                                  f"({err})") from None

    def dataset_of(self, path: Path) -> str:
        """The dataset of a file's records: --dataset, or what --dataset-from-file finds in its name."""
        if self.dataset is not None:
            return self.dataset
        found = re.search(self.dataset_from_file or "", path.name)
        dataset = (found.group(1) if found.groups() else found.group(0)) if found else None
        if not dataset:
            raise ConfigError(f"--dataset-from-file '{self.dataset_from_file}' finds no dataset in the file name "
                              f"'{path.name}': change the pattern, or import that file with --dataset NAME")
        return dataset

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.task


@dataclass
class ImportSummary:
    experiment: str
    imported: list[str] = field(default_factory=list)  # run ids
    already_imported: int = 0  # the same record with the same options, or twice in the files
    other_options: int = 0  # imported before with other options, left as they were
    replaced: int = 0  # imported before with other options, imported again (the old runs deleted)
    without_query_phase: int = 0
    phase_names: set[str] = field(default_factory=set)
    example_difference: str = ""  # one record's options then and now, when other_options


def import_records(config: ImportConfig) -> ImportSummary:
    """Import every record of ``config.files``; checks everything before the first run is made."""
    records = read_records(config.files, config.phases)  # every file checked before MLflow is imported
    datasets = {path: config.dataset_of(path) for path in dict.fromkeys(p for p, _ in records.complete)}
    from mlflow import MlflowClient

    from tracker.recording.lifecycle import experiment_id, finished_runs, write_finished_runs
    from tracker.recording.store import check_tracking_server

    check_tracking_server()
    client = MlflowClient()
    summary = ImportSummary(config.experiment_name)
    known, legacy = {}, {}
    for run in finished_runs(client, experiment_id(client, config.experiment_name)):
        tags = run.data.tags
        if ID_TAG in tags:
            known[tags[ID_TAG]] = (run.info.run_id, tags.get(OPTIONS_TAG, ""))
        elif LEGACY_KEY_TAG in tags:  # the same record: its run_id, model and end (its timestamp)
            legacy[(tags.get("tracker.import.codecarbon_run_id", ""), run.data.params.get("model", ""),
                    run.info.end_time)] = run.info.run_id
    runs, seen = [], set()
    for path, row in records.complete:
        identity = record_id(row)
        if identity in seen:
            summary.already_imported += 1
            continue
        seen.add(identity)
        phase_rows = records.phases.get(row.get("run_id", ""), [])
        kind, kind_reason = kind_of(row["project_name"], config.model_kind_map, config.model_kind)
        options = _options(config, datasets[path], kind, phase_rows)
        replaces = None
        old = legacy.get((row.get("run_id", ""), row["project_name"], (times_ms(row) or (None, None))[1]))
        if identity not in known and old:
            known[identity] = (old, "")  # options unrecorded: never the same as now
        if identity in known:
            old_run, old_options = known[identity]
            if old_options == options:
                summary.already_imported += 1
                continue
            if not config.replace:
                summary.other_options += 1
                summary.example_difference = summary.example_difference or _difference(old_options, options)
                continue
            replaces = old_run
        summary.phase_names |= {r["task_name"] for r in phase_rows}
        run = _run(config, datasets[path], path, row, phase_rows, identity, options, kind, kind_reason)
        if replaces:
            run.replaces = replaces
            run.tags["tracker.import.replaces"] = replaces
        summary.without_query_phase += run.tags["tracker.energy.scope"] == SCOPE_WHOLE
        runs.append(run)
    summary.replaced = sum(run.replaces is not None for run in runs)
    with interrupts_raise():  # Ctrl-C stops between chunks; the chunks written stay, whole
        summary.imported = write_finished_runs(config.experiment_name, runs)
    return summary


def _options(config: ImportConfig, dataset: str, kind: str | None, phase_rows: list[Row]) -> str:
    """What the user chose for a record, as a run records it: a re-import with others is noticed."""
    phases = ", ".join(sorted({r["task_name"] for r in phase_rows})) or "none"
    return (f"task={config.task}; dataset={dataset}; n_samples={config.n_samples}; "
            f"kind={kind or 'unrecorded'}; phases={phases}")


def _difference(then: str, now: str) -> str:
    """'kind: unrecorded -> task-specific', for the options that changed."""
    if not then:
        return "imported by an earlier version of tracker, which recorded no options"
    before = dict(p.split("=", 1) for p in then.split("; ") if "=" in p)
    after = dict(p.split("=", 1) for p in now.split("; ") if "=" in p)
    changed = [f"{k}: {before.get(k, 'unrecorded')} -> {v}" for k, v in after.items() if before.get(k) != v]
    return "; ".join(changed) or f"then '{then}', now '{now}'"


def _run(config: ImportConfig, dataset: str, path: Path, row: Row, phase_rows: list[Row], identity: str, options: str,
         kind: str | None, kind_reason: str) -> Any:
    from tracker.recording.lifecycle import FinishedRun

    outcome = RunOutcome()
    phase_metrics: dict[str, float] = {}
    for phase_row in phase_rows:
        name, energy = phase_row["task_name"], _energy(phase_row)
        slug = phase_slug(name)
        for figure, value in (("energy_kwh", energy.total_kwh), ("duration_s", energy.duration_s)):
            phase_metrics[f"phase_{slug}_{figure}"] = phase_metrics.get(f"phase_{slug}_{figure}", 0.0) + value
        phase = phase_of(name)
        if phase == "load":
            outcome.load = PhaseReading(name, energy)
        elif phase == "query":
            outcome.queries.append(QueryReading(PhaseReading(name, energy), inferences=config.n_samples))
    scope = SCOPE_QUERY if outcome.queries else SCOPE_WHOLE
    whole = _energy(row)
    if not outcome.queries:
        outcome.queries.append(QueryReading(PhaseReading("record", whole), inferences=config.n_samples))
    metrics = run_metrics(outcome, generative=False) | phase_metrics | {
        "record_energy_kwh": whole.total_kwh, "record_duration_s": whole.duration_s}
    model = row["project_name"]
    params = {"task": config.task, "model": model, "dataset": dataset, "n_samples": config.n_samples}
    if row.get("country_iso_code"):
        params["country_iso_code"] = row["country_iso_code"]
    tags = _tags(path, row, phase_rows, scope) | {ID_TAG: identity, OPTIONS_TAG: options}
    if kind:
        tags |= {"tracker.model.kind": kind, "tracker.model.kind_reason": kind_reason}
    return FinishedRun(run_name=f"{model.rstrip('/').split('/')[-1]} · {dataset} · imported", tags=tags,
                       params=params, metrics=metrics, times_ms=times_ms(row),
                       texts={"codecarbon/emissions.csv": _as_csv([row] + phase_rows)})


def _tags(path: Path, row: Row, phase_rows: list[Row], scope: str) -> dict[str, str]:
    version = row.get("codecarbon_version") or "unknown"
    recorded = f"imported: as recorded by CodeCarbon {version}"
    unknown_method = "the record does not say whether it was measured (RAPL) or modelled (TDP)"
    phases = ", ".join(dict.fromkeys(r["task_name"] for r in phase_rows))
    how = (f" with its phases ({phases})." if scope == SCOPE_QUERY else
           f": its phase rows ({phases}) have no query phase, so its energy covers the whole record." if phase_rows
           else ": no phase records, so its energy covers loading the model too.")
    tags = {
        "tracker.imported": "true",
        "tracker.import.codecarbon_version": version,
        "tracker.import.file": str(path),
        "tracker.energy.scope": scope,
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
        "tracker.quality.unavailable": "imported CodeCarbon record: it holds energy, not quality "
                                       "(tracker annotate attaches a quality table)",
        "tracker.quality.meaningful": "false",
        "tracker.import.record_timestamp": row.get("timestamp", ""),
        "mlflow.note.content": (f"Imported from the CodeCarbon record {row.get('run_id') or '(no run_id)'} in "
                                f"{path.name}, written by CodeCarbon {version}{how}"),
    }
    if row.get("run_id"):
        tags["tracker.import.codecarbon_run_id"] = row["run_id"]
    if phase_rows:
        tags["tracker.import.phase_files"] = ", ".join(sorted({r["_file"] for r in phase_rows}))
        tags["tracker.import.phases"] = phases
    tags.update({f"tracker.hardware.{c}": row[c] for c in HARDWARE_COLUMNS if row.get(c)})
    return tags


def _watts(row: Row, column: str) -> str:
    value = number(row, column)
    return "unrecorded" if math.isnan(value) else f"{value:.1f} W"


def _energy(row: Row) -> Energy:
    return Energy(cpu_kwh=number(row, "cpu_energy"), gpu_kwh=number(row, "gpu_energy"),
                  ram_kwh=number(row, "ram_energy"), emissions_kg=number(row, "emissions"),
                  duration_s=number(row, "duration"))


def _as_csv(rows: list[Row]) -> str:
    """The record and its phase rows as they were read (the complete record first, no task_name)."""
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "_file"))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
