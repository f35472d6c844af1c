"""Which dataset a run reads and where from: a study dataset on the Hub, a local file, or built-in.

A dataset left at the task's default that cannot be reached falls back to the built-in sample
dataset, with the reason recorded; a dataset the user named that cannot be loaded is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tracker.builtin import BUILTIN_DATASET, builtin_dataset_file
from tracker.errors import DatasetError
from tracker.tasks.base import DatasetSpec, Task

logger = logging.getLogger(__name__)

DatasetSource = Literal["hub", "local", "builtin"]
_READERS = {".csv": "read_csv", ".tsv": "read_csv", ".jsonl": "read_json", ".json": "read_json",
            ".parquet": "read_parquet"}


class DatasetUnavailable(DatasetError):
    """The dataset could not be fetched (as opposed to fetched but unusable)."""


@dataclass
class LoadedDataset:
    name: str  # the `dataset` param: a study name, a path, a Hub id, or builtin
    source: DatasetSource
    location: str
    texts: list[str]
    targets: list[Any]
    spec: DatasetSpec | None = None
    fallback_reason: str | None = None


@dataclass(frozen=True)
class Columns:
    text: str
    target: str


def load_dataset(task: Task, requested: str | None, n_samples: int, *, hub_reachable: bool,
                 columns: Columns | None = None) -> LoadedDataset:
    """The first ``n_samples`` rows of the requested dataset (the task's default when None)."""
    if requested == BUILTIN_DATASET:
        return _builtin(task, n_samples)
    if requested is None:
        spec = task.datasets[task.default_dataset]
        try:
            return _from_hub(spec.name, spec, n_samples, hub_reachable, columns)
        except DatasetUnavailable as err:
            return _builtin(task, n_samples, fallback_reason=f"default dataset {spec.name}: {err}")
    if requested in task.datasets:
        return _from_hub(requested, task.datasets[requested], n_samples, hub_reachable, columns)
    path = Path(requested).expanduser()
    wanted = columns or Columns(task.text_column, task.target_column)
    if path.exists():
        return _from_file(requested, path, "local", n_samples, wanted)
    if "/" in requested and not requested.startswith((".", "/", "~")):
        spec = DatasetSpec(requested, requested, "test", wanted.text, wanted.target)
        return _from_hub(requested, spec, n_samples, hub_reachable, columns)
    raise DatasetError(
        f"dataset '{requested}' not found: it is not one of {task.name}'s datasets "
        f"({', '.join(sorted(task.datasets))}), not an existing file, and not a Hub id; "
        f"use one of those or {BUILTIN_DATASET}"
    )


def _builtin(task: Task, n_samples: int, *, fallback_reason: str | None = None) -> LoadedDataset:
    if fallback_reason:
        logger.warning("%s; using the built-in sample dataset (quality is meaningless)", fallback_reason)
    path = builtin_dataset_file(task.name, task.sample_rows)
    loaded = _from_file(BUILTIN_DATASET, path, "builtin", n_samples,
                        Columns(task.text_column, task.target_column))
    loaded.fallback_reason = fallback_reason
    return loaded


def _from_file(name: str, path: Path, source: DatasetSource, n_samples: int,
               columns: Columns) -> LoadedDataset:
    import pandas as pd

    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(f"cannot read dataset file '{path}': use one of {', '.join(sorted(_READERS))}")
    options: dict[str, Any] = {}
    if path.suffix.lower() == ".jsonl":
        options["lines"] = True
    elif path.suffix.lower() == ".tsv":
        options["sep"] = "\t"
    try:
        frame = getattr(pd, reader)(path, **options)
    except (ValueError, OSError) as err:
        raise DatasetError(f"cannot read dataset file '{path}': {err}") from err
    rows = {column: frame[column].tolist() for column in frame.columns}
    return _select(name, source, str(path), rows, n_samples, columns, spec=None)


def _from_hub(name: str, spec: DatasetSpec, n_samples: int, hub_reachable: bool,
              columns: Columns | None) -> LoadedDataset:
    import datasets

    try:
        table = datasets.load_dataset(spec.hub_id, spec.config, split=spec.split)
    except Exception as err:  # datasets raises many kinds (ConnectionError, FileNotFoundError, ...)
        where = "the Hub is unreachable and it is not in the local cache" if not hub_reachable else str(err)
        raise DatasetUnavailable(f"cannot load dataset '{name}' ({spec.hub_id}): {where}") from err
    table = table.select(range(min(n_samples, len(table))))
    rows = {column: table[column] for column in table.column_names}
    wanted = columns or Columns(spec.text_column, spec.target_column)
    return _select(name, "hub", spec.hub_id, rows, n_samples, wanted, spec=spec)


def _select(name: str, source: DatasetSource, location: str, rows: dict[str, list[Any]],
            n_samples: int, columns: Columns, spec: DatasetSpec | None) -> LoadedDataset:
    for role, column in (("text", columns.text), ("target", columns.target)):
        if column not in rows:
            raise DatasetError(
                f"dataset '{name}' has no column '{column}' (its columns: {', '.join(rows)}); "
                f"pass --{role}-column NAME"
            )
    available = len(rows[columns.text])
    if available < n_samples:
        raise DatasetError(
            f"dataset '{name}' has {available} rows, fewer than --n-samples {n_samples}; lower --n-samples"
        )
    texts = ["" if value is None else str(value) for value in rows[columns.text][:n_samples]]
    return LoadedDataset(name, source, location, texts, list(rows[columns.target][:n_samples]), spec)
