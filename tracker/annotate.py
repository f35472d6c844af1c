"""Quality and size for runs that lack them: a study's quality table and parameter counts, by model and dataset.

Imported CodeCarbon records hold energy only; the study that made them published its quality
(one figure per model and dataset) and its models' sizes apart. ``tracker annotate`` attaches
them to existing runs, so that energy against quality and against size can be drawn from them.

Quality tables come in two layouts: long (columns model, dataset, metric, value) and the study's
wide one (a ``model`` column, then one column per dataset with its metric in brackets:
``imdb (acc)``, ``squad_v2 (f1, has answer)``). Parameter tables have a model column and a
parameters column (``model_name,num_parameters``). Names that differ between the tables and the
runs are mapped with aliases (THEIRS=OURS, for models and datasets alike).

A run whose quality was measured keeps it: only runs without a quality figure, or with one an
earlier annotation attached, get the table's. Annotated quality is tagged with its file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracker.errors import ConfigError

SOURCE_TAG = "tracker.quality.source"
IMPORTED_FROM = "imported from "
_WIDE_COLUMN = re.compile(r"^\s*(?P<dataset>[^()]+?)\s*\((?P<metric>[^()]+)\)\s*$")


@dataclass(frozen=True, kw_only=True)
class AnnotateConfig:
    quality: Path | None = None
    parameters: Path | None = None
    experiments: tuple[str, ...] = ()  # empty: every task's experiment that exists
    aliases: tuple[tuple[str, str], ...] = ()  # (their name, our name)

    def __post_init__(self) -> None:
        if self.quality is None and self.parameters is None:
            raise ConfigError("tracker annotate needs --quality FILE, --parameters FILE or both")
        for flag, path in (("--quality", self.quality), ("--parameters", self.parameters)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{flag} '{path}' does not exist: name a CSV file")


@dataclass
class AnnotateResult:
    runs: int = 0
    runs_with_quality: int = 0
    runs_with_parameters: int = 0
    kept_measured_quality: int = 0
    models_without_quality: list[str] = field(default_factory=list)
    models_without_parameters: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QualityRow:
    metric: str
    value: float
    metrics: tuple[tuple[str, float], ...]  # every metric the table gives for the model and dataset


def parse_aliases(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        theirs, sep, ours = value.partition("=")
        if not sep or not theirs.strip() or not ours.strip():
            raise ConfigError(f"--alias '{value}' is not THEIRS=OURS (e.g. twitter-roberta-base-sentiment-latest="
                              "cardiffnlp/twitter-roberta-base-sentiment-latest, or squadv2=squad_v2)")
        pairs.append((theirs.strip(), ours.strip()))
    return tuple(pairs)


def read_quality(path: Path, aliases: dict[str, str]) -> dict[tuple[str, str], QualityRow]:
    """(model, dataset): the first metric given for them, as the primary one, and all of them."""
    frame = _csv(path)
    columns = {c.lower().strip(): c for c in frame.columns}
    found: dict[tuple[str, str], list[tuple[str, float]]] = {}
    model_column = columns.get("model") or columns.get("model_name")
    if model_column and {"dataset", "metric", "value"} <= set(columns):
        cells = [(r[model_column], r[columns["dataset"]], r[columns["metric"]], r[columns["value"]], line)
                 for line, r in enumerate(frame.to_dict("records"), start=2)]
    else:
        wide = {c: _WIDE_COLUMN.match(c) for c in frame.columns}
        wide = {c: m for c, m in wide.items() if m}
        if not model_column or not wide:
            raise ConfigError(f"--quality '{path}' is neither a long table (columns model, dataset, metric, value) "
                              "nor the study's wide layout (a model column, then columns like 'imdb (acc)')")
        cells = [(r[model_column], m["dataset"], m["metric"], r[c], line)
                 for line, r in enumerate(frame.to_dict("records"), start=2) for c, m in wide.items()]
    for model, dataset, metric, text, line in cells:
        if not str(text).strip():
            continue  # the wide layout leaves the datasets a model was not scored on empty
        value = _number(text, f"--quality '{path}' line {line}: {metric} of {model} on {dataset}")
        key = (aliases.get(model.strip(), model.strip()), aliases.get(dataset.strip(), dataset.strip()))
        found.setdefault(key, []).append((metric.strip(), value))
    return {key: QualityRow(metrics[0][0], metrics[0][1], tuple(metrics)) for key, metrics in found.items()}


def read_parameters(path: Path, aliases: dict[str, str]) -> dict[str, float]:
    frame = _csv(path)
    model = next((c for c in frame.columns if "model" in c.lower()), None)
    count = next((c for c in frame.columns if "param" in c.lower()), None)
    if model is None or count is None:
        raise ConfigError(f"--parameters '{path}' needs a model column and a parameters column "
                          "(as model_name,num_parameters)")
    sizes = {}
    for line, row in enumerate(frame.to_dict("records"), start=2):
        if str(row[count]).strip():
            name = row[model].strip()
            sizes[aliases.get(name, name)] = _number(row[count], f"--parameters '{path}' line {line}: {name}")
    return sizes


def annotate(config: AnnotateConfig) -> AnnotateResult:
    """Attach the tables' quality and parameter counts to the FINISHED runs of the experiments."""
    from mlflow import MlflowClient

    from tracker.recording.lifecycle import finished_runs, update_runs
    from tracker.recording.store import check_tracking_server
    from tracker.reporting.collect import default_experiments, live_experiment

    aliases = dict(config.aliases)
    quality = read_quality(config.quality, aliases) if config.quality else {}
    sizes = read_parameters(config.parameters, aliases) if config.parameters else {}
    check_tracking_server()
    client = MlflowClient()
    experiments = list(config.experiments) or default_experiments(client)
    result = AnnotateResult()
    tags: dict[str, dict[str, str]] = {}
    metrics: dict[str, dict[str, float]] = {}
    unavailable: dict[str, tuple[str, ...]] = {}  # tags that said why a run had no quality
    no_quality, no_size = set(), set()
    for name in experiments:
        for run in finished_runs(client, live_experiment(client, name).experiment_id):
            model, dataset = run.data.params.get("model"), run.data.params.get("dataset", "")
            if not model:
                continue
            result.runs += 1
            run_id = run.info.run_id
            if config.quality:
                row = _lookup(quality, (model, dataset))
                measured = "quality" in run.data.metrics and not run.data.tags.get(SOURCE_TAG, "").startswith(IMPORTED_FROM)
                if measured:
                    result.kept_measured_quality += 1
                elif row is None:
                    no_quality.add(model)
                else:
                    result.runs_with_quality += 1
                    metrics.setdefault(run_id, {})["quality"] = row.value
                    metrics[run_id].update({_metric_name(m): v for m, v in row.metrics})
                    tags[run_id] = {"tracker.quality.metric": row.metric,
                                    "tracker.quality.higher_is_better": str(_higher_is_better(row.metric)).lower(),
                                    "tracker.quality.meaningful": "true",
                                    SOURCE_TAG: f"{IMPORTED_FROM}{config.quality} (model {model}, dataset {dataset})"}
                    unavailable[run_id] = ("tracker.quality.unavailable", "tracker.quality.reason")
            if config.parameters:
                size = _lookup(sizes, model)
                if size is None:
                    no_size.add(model)
                else:
                    result.runs_with_parameters += 1
                    metrics.setdefault(run_id, {})["model_parameters"] = size
                    tags.setdefault(run_id, {})["tracker.model.parameters_source"] = f"{IMPORTED_FROM}{config.parameters}"
    update_runs(client, tags=tags, metrics=metrics, delete_tags=unavailable)
    result.models_without_quality = sorted(no_quality)
    result.models_without_parameters = sorted(no_size)
    return result


def _higher_is_better(metric: str) -> bool:
    """Error rates, losses and perplexity fall as quality rises; the study's other metrics rise."""
    return re.search(r"wer|cer|error|loss|perplexity|fid", metric, re.IGNORECASE) is None


def _lookup(table: dict[Any, Any], key: Any) -> Any:
    """An exact match, else one that differs only in case."""
    if key in table:
        return table[key]
    folded = {_fold(k): v for k, v in table.items()}
    return folded.get(_fold(key))


def _fold(key: Any) -> Any:
    return tuple(k.casefold() for k in key) if isinstance(key, tuple) else key.casefold()


def _metric_name(metric: str) -> str:
    """'f1, has answer' -> 'f1_has_answer': an MLflow metric name, as the table names it."""
    from tracker.recording.metrics import metric_name_part

    return metric_name_part(metric, "quality_value")


def _number(text: Any, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: '{text}' is not a number; correct it or leave the cell empty") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: '{text}' is not a finite number; correct it or leave the cell empty")
    return value


def _csv(path: Path) -> Any:
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise ConfigError(f"'{path}' is not a CSV file: {err}") from err
