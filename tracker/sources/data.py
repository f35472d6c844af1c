"""Which dataset a run reads and where from: a study dataset on the Hub, a local file, or built-in.

A dataset left at the task's default that cannot be reached falls back to the built-in sample
dataset, with the reason recorded; a dataset the user named that cannot be loaded is an error.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tracker.errors import DatasetError
from tracker.loading.builtin import BUILTIN_DATASET, builtin_dataset_file
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
    inputs: list[Any]
    targets: list[Any]
    spec: DatasetSpec | None = None
    fallback_reason: str | None = None
    skipped_rows: int = 0  # rows the task could not use (e.g. empty lines), passed over


@dataclass(frozen=True)
class Columns:
    """The user's names for the task's input and target columns (--text-column, --target-column)."""

    input: str | None = None
    target: str | None = None


def load_dataset(task: Task, requested: str | None, n_samples: int, *, hub_reachable: bool,
                 columns: Columns | None = None) -> LoadedDataset:
    """The first ``n_samples`` usable rows of the requested dataset (the task's default when None)."""
    columns = columns or Columns()
    if requested == BUILTIN_DATASET:
        return _builtin(task, n_samples)
    if requested is None:
        spec = task.datasets[task.default_dataset]
        try:
            return _from_hub(task, spec.name, spec, n_samples, hub_reachable, columns)
        except DatasetUnavailable as err:
            return _builtin(task, n_samples, fallback_reason=f"default dataset {spec.name}: {err}")
    if requested in task.datasets:
        return _from_hub(task, requested, task.datasets[requested], n_samples, hub_reachable, columns)
    path = check_dataset_location(task, requested)
    if path is not None:
        return _from_file(task, requested, path, "local", n_samples, columns)
    spec = DatasetSpec(requested, requested, "test")
    return _from_hub(task, requested, spec, n_samples, hub_reachable, columns)


def check_dataset_location(task: Task, requested: str) -> Path | None:
    """The file of a dataset named by path, None for a Hub id; raises for what cannot be a dataset.

    Cheap (no pandas, no network), so that a wrong path is answered before anything heavy starts.
    """
    path = Path(requested).expanduser()
    if path.exists():
        if path.suffix.lower() not in _READERS:
            raise DatasetError(f"cannot read dataset file '{path}': use one of {', '.join(sorted(_READERS))}")
        return path
    if "/" in requested and not requested.startswith((".", "/", "~")) and path.suffix.lower() not in _READERS:
        return None
    raise DatasetError(
        f"dataset '{requested}' not found: it is not one of {task.name}'s datasets "
        f"({', '.join(sorted(task.datasets))}), not an existing file, and not a Hub id; "
        f"use one of those or {BUILTIN_DATASET}"
    )


def _builtin(task: Task, n_samples: int, *, fallback_reason: str | None = None) -> LoadedDataset:
    if fallback_reason:
        logger.warning("%s; using the built-in sample dataset (quality is meaningless)", fallback_reason)
    path = builtin_dataset_file(task)
    loaded = _from_file(task, BUILTIN_DATASET, path, "builtin", n_samples, Columns())
    loaded.fallback_reason = fallback_reason
    return loaded


def _from_file(task: Task, name: str, path: Path, source: DatasetSource, n_samples: int,
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
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return _examples(task, name, source, str(path), rows, list(frame.columns), n_samples,
                     _mapping(task, None, columns), spec=None, base=path.parent)


def _from_hub(task: Task, name: str, spec: DatasetSpec, n_samples: int, hub_reachable: bool,
              columns: Columns) -> LoadedDataset:
    import datasets

    try:
        table = datasets.load_dataset(spec.hub_id, spec.config, split=spec.split)
    except Exception as err:  # datasets raises many kinds (ConnectionError, FileNotFoundError, ...)
        where = "the Hub is unreachable and it is not in the local cache" if not hub_reachable else str(err)
        raise DatasetUnavailable(f"cannot load dataset '{name}' ({spec.hub_id}): {where}") from err
    mapping = _mapping(task, spec, columns)
    if spec.label_names is None and task.target_column and mapping[task.target_column] in table.features:
        names = _class_names(table.features[mapping[task.target_column]])
        spec = dataclasses.replace(spec, label_names=names) if names else spec
    return _examples(task, name, "hub", spec.hub_id, table, list(table.column_names), n_samples,
                     mapping, spec=spec, base=None)


def _class_names(feature: Any) -> tuple[str, ...] | None:
    """The class names of a ClassLabel feature, also one nested in a list or a dict of them."""
    if getattr(feature, "names", None):
        return tuple(feature.names)
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return _class_names(inner)
    if isinstance(feature, dict):
        for value in feature.values():
            names = _class_names(value)
            if names:
                return names
    return None


def _mapping(task: Task, spec: DatasetSpec | None, columns: Columns) -> dict[str, str]:
    """The task's column name -> the dataset's."""
    mapping = {column: column for column in task.columns}
    if spec is not None:
        mapping.update({k: v for k, v in spec.columns.items() if k in mapping})
    if columns.input:
        mapping[task.input_column] = columns.input
    if columns.target and task.target_column:
        mapping[task.target_column] = columns.target
    return mapping


def check_file_columns(task: Task, path: Path, columns: Columns) -> None:
    """The columns a csv, tsv or jsonl file must have, read from its header or first line alone
    (json and parquet files are checked when read)."""
    import csv
    import json

    suffix = path.suffix.lower()
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            if suffix in (".csv", ".tsv"):
                header = next(csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ","), [])
            elif suffix == ".jsonl":
                first = handle.readline()
                header = list(json.loads(first)) if first.strip() else []
            else:
                return
    except (OSError, UnicodeDecodeError, ValueError):
        return  # reading it says what is wrong, with the reader's own words
    if header:
        _check_columns(task, str(path), header, _mapping(task, None, columns))


def _check_columns(task: Task, name: str, available: list[str], mapping: dict[str, str]) -> None:
    for ours, theirs in mapping.items():
        if theirs not in available:
            hint = {task.input_column: "pass --text-column NAME",
                    task.target_column: "pass --target-column NAME"}.get(ours, f"name it '{ours}'")
            raise DatasetError(f"dataset '{name}' has no column '{theirs}' (its columns: "
                               f"{', '.join(available)}); {hint}")


def _examples(task: Task, name: str, source: DatasetSource, location: str, rows: Iterable[dict],
              available: list[str], n_samples: int, mapping: dict[str, str],
              spec: DatasetSpec | None, base: Path | None) -> LoadedDataset:
    _check_columns(task, name, available, mapping)
    inputs: list[Any] = []
    targets: list[Any] = []
    seen = empty = 0
    for row in rows:
        if len(inputs) == n_samples:
            break
        seen += 1
        values = {ours: row[theirs] for ours, theirs in mapping.items()}
        # An empty or NaN input cell is no input: measuring it as "" would cost nothing and count.
        if any(_missing(v) for ours, v in values.items() if ours != task.target_column):
            empty += 1
            continue
        example = task.example(values, base)
        if example is not None:
            inputs.append(example[0])
            targets.append(example[1])
    if not inputs:
        why = (f"its {seen} row(s) are all empty, NaN or unusable in the input column(s)" if seen
               else "it holds no rows at all (a header alone)")
        raise DatasetError(f"dataset '{name}' has no usable rows: {why}; pass a dataset with data in "
                           f"column(s) {', '.join(v for k, v in mapping.items() if k != task.target_column)}")
    if len(inputs) < n_samples:
        usable = f"{len(inputs)} usable rows" + (f" (of {seen}; {empty} empty or NaN)" if seen != len(inputs) else "")
        raise DatasetError(
            f"dataset '{name}' has {usable}, fewer than --n-samples {n_samples}; lower --n-samples"
        )
    return LoadedDataset(name, source, location, inputs, targets, spec, skipped_rows=seen - len(inputs))


def _missing(value: Any) -> bool:
    """A cell with nothing in it: None, a float NaN (pandas' empty cell), or blank text."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()
