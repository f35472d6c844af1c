"""CodeCarbon's ``emissions.csv`` files as released: complete records and the phase rows of the same runs.

A file with a ``task_name`` column holds phase rows (one per CodeCarbon task: "load model",
"query model", and whatever else a study named, e.g. "transfer model to GPU"); a file without it
holds complete records, one run per row. Files and folders may be passed in any mix: each file is
sorted by its own columns. Every row is checked before any run is made.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tracker.errors import ConfigError

RECORD_COLUMNS = ("project_name", "duration", "emissions", "cpu_energy", "gpu_energy", "ram_energy")
NUMBER_COLUMNS = ("cpu_energy", "gpu_energy", "ram_energy", "emissions", "duration")

Row = dict[str, str]


@dataclass
class Records:
    complete: list[tuple[Path, Row]] = field(default_factory=list)  # (file, row) per run
    phases: dict[str, list[Row]] = field(default_factory=dict)  # CodeCarbon run_id: its phase rows


def csv_files(paths: tuple[Path, ...], flag: str) -> list[Path]:
    """The .csv files named, and those directly inside the folders named, in order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.csv"))
            if not found:
                raise ConfigError(f"{flag} '{path}' is a folder without .csv files: name the folder that holds "
                                  "the emissions.csv files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{flag} '{path}' does not exist: name emissions.csv files or folders of them")
    return files


def read_records(files: tuple[Path, ...], phases: tuple[Path, ...]) -> Records:
    """Complete records from FILES, phase rows from FILES and --phases, keyed by CodeCarbon run_id."""
    records = Records()
    named = csv_files(files, "FILES")
    for file in named + csv_files(phases, "--phases"):
        rows, phased = _read(file)
        if phased:
            for row in rows:
                records.phases.setdefault(row["run_id"], []).append(row | {"_file": file.name})
        elif file in named:
            records.complete += [(file, row) for row in rows]
        else:
            raise ConfigError(f"'{file}' passed with --phases holds complete records (no task_name column): "
                              "pass it as FILES; --phases takes CodeCarbon's per-task rows")
    if not records.complete:
        raise ConfigError(f"no complete record in {', '.join(map(str, files))}: only phase rows (task_name). "
                          "Pass the complete records (one row per run, no task_name column) as FILES and the "
                          "phase files with --phases")
    _check_unambiguous(records)
    return records


def record_id(row: Row) -> str:
    """A record's identity: its CodeCarbon run_id, project_name and timestamp, whatever its text
    (a re-saved copy writes numbers differently) and whichever file it came from."""
    identity = "\x1f".join(row.get(c, "").strip() for c in ("run_id", "project_name", "timestamp"))
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def phase_slug(task_name: str) -> str:
    """An MLflow-safe metric name part: 'transfer model to GPU' -> 'transfer_model_to_gpu'."""
    from tracker.recording.metrics import metric_name_part

    return metric_name_part(task_name, "unnamed")


def phase_of(task_name: str) -> str | None:
    """'load' or 'query' for the phases measured runs also have; None for any other."""
    name = task_name.lower()
    return "load" if "load" in name else "query" if "query" in name else None


def number(row: Row, column: str) -> float:
    try:
        return float(row.get(column, ""))
    except ValueError:
        return math.nan


def times_ms(row: Row) -> tuple[int, int] | None:
    """CodeCarbon stamps a record when it stops: the run ended then and began ``duration`` earlier."""
    try:
        end = datetime.fromisoformat(row["timestamp"])
    except (KeyError, ValueError):
        return None
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)  # CodeCarbon 2 wrote local time without a zone
    end_ms = int(end.timestamp() * 1000)
    duration = number(row, "duration")
    return end_ms - int((0 if math.isnan(duration) else duration) * 1000), end_ms


def _read(path: Path) -> tuple[list[Row], bool]:
    """The rows of one emissions.csv as text, and whether they are phase rows (task_name).

    The csv module, not pandas: a study's phase folder holds hundreds of two-row files, which
    pandas reads at about 15 ms each."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"'{path}' is not a CSV file of CodeCarbon records: {err}") from err
    phased = "task_name" in columns
    missing = [c for c in RECORD_COLUMNS + (("run_id",) if phased else ()) if c not in columns]
    if missing:
        raise ConfigError(f"'{path}' is not in CodeCarbon's emissions.csv layout: no column {', '.join(missing)}")
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if None in row or None in row.values():  # more cells than the header, or fewer
            raise ConfigError(f"'{path}' line {line} does not have the header's {len(columns)} fields: correct the file")
        for column in columns:
            row[column] = row[column].strip()
        for column in NUMBER_COLUMNS:
            value = number(row, column)
            if not (math.isfinite(value) and value >= 0):  # no energy is negative, infinite or missing
                what = "no number" if math.isnan(value) else "an impossible value"
                raise ConfigError(f"'{path}' line {line}: record {row.get('run_id') or row['project_name']} has "
                                  f"{what} in {column} ('{row[column]}'); a finite number >= 0 is needed: "
                                  "correct the record or leave it out")
    return rows, phased


def _check_unambiguous(records: Records) -> None:
    """Phases are matched by run_id: two different records with one run_id could not tell them apart."""
    seen: dict[str, tuple[Path, str]] = {}
    for path, row in records.complete:
        run_id = row.get("run_id", "")
        if run_id in records.phases and run_id in seen and seen[run_id][1] != record_id(row):
            raise ConfigError(f"run_id {run_id} appears in two different records ({seen[run_id][0].name}, "
                              f"{path.name}): its phase records cannot be matched to one of them")
        seen[run_id] = (path, record_id(row))
