"""A study: every model x dataset of a definition in experiments/, each as its own measured run.

Each run happens in a child process (``tracker run``), so a model that crashes the interpreter
(SIGILL, a segfault, the OOM killer) fails alone. Combinations that already have a FINISHED run
with the same measured configuration (tag ``tracker.config_key``) and no fallback are skipped
unless ``force``. A run that fails is recorded FAILED with its reason, also when it failed before
``tracker run`` could create it, and the study goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tracker.child import measure_in_child
from tracker.config import RunConfig
from tracker.errors import ConfigError

logger = logging.getLogger(__name__)

Status = Literal["FINISHED", "FAILED", "KILLED", "SKIPPED"]
_DEFINITION_KEYS = {"task", "models", "datasets", "params", "description", "experiment"}


@dataclass(frozen=True)
class Combination:
    config: RunConfig
    label: str  # "model · dataset", for the user


@dataclass
class StudyDefinition:
    name: str
    task: str
    combinations: list[Combination]
    description: str = ""


@dataclass
class Outcome:
    combination: Combination
    status: Status
    run_id: str | None = None
    reason: str = ""
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def load_definition(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyDefinition:
    """Read and validate a study definition (YAML); every combination is checked before any runs.

    The file holds ``task``, ``models`` (Hub ids, paths or built-in names; or mappings with
    ``model``, per-model params and, optionally, the model's own ``datasets``), ``datasets``
    (names the task knows, paths or Hub ids) and ``params`` (any `tracker run` parameter, for
    every run).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study definition '{path}' not found; pass a file such as experiments/summarization.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"study definition '{path}' is not a text file; pass a YAML file such as "
                          "experiments/summarization.yaml") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"study definition '{path}' is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(raw, dict) or "task" not in raw or not raw.get("models"):
        raise ConfigError(f"study definition '{path}' needs 'task' and a list of 'models'")
    unknown = set(raw) - _DEFINITION_KEYS
    if unknown:
        raise ConfigError(f"study definition '{path}': unknown key(s) {', '.join(sorted(unknown))}; "
                          f"use {', '.join(sorted(_DEFINITION_KEYS))}")
    _check_types(path, raw)
    params = dict(raw.get("params") or {}) | dict(overrides or {})
    datasets = raw.get("datasets") or [None]
    combinations = []
    for entry in raw["models"]:
        model_params = dict(entry) if isinstance(entry, dict) else {"model": entry}
        # A model made for one dataset's classes (e.g. a CIFAR-10 classifier) lists its own.
        for dataset in model_params.pop("datasets", None) or datasets:
            values = {"task": raw["task"], "experiment": raw.get("experiment"), "dataset": dataset,
                      **params, **model_params, "progress": False}
            try:
                config = RunConfig.parse(**{k: _text(v) for k, v in values.items()})
            except ConfigError as err:
                raise ConfigError(f"study definition '{path}', model {model_params.get('model')}: {err}") from err
            combinations.append(Combination(config, f"{config.model} · {config.dataset or 'default'}"))
    return StudyDefinition(path.stem, raw["task"], combinations, str(raw.get("description") or ""))


# What each key holds; a string where a list belongs would otherwise run once per character.
_NAME, _NAMES, _MAPPING = "a name (a string)", "a list", "a mapping of run parameters (key: value)"
_KEY_TYPES = {"task": _NAME, "experiment": _NAME, "description": _NAME, "models": _NAMES,
              "datasets": _NAMES, "params": _MAPPING}


def _check_types(path: Path, raw: dict[str, Any]) -> None:
    """One line naming the key whose value has the wrong shape."""
    def wrong(key: str, value: Any) -> ConfigError:
        return ConfigError(f"study definition '{path}': '{key}' must be {_KEY_TYPES[key]}, "
                           f"got {type(value).__name__} {str(value)[:60]!r}")

    shapes = {_NAME: str, _NAMES: list, _MAPPING: dict}
    for key, value in raw.items():
        if value is not None and not isinstance(value, shapes[_KEY_TYPES[key]]):
            raise wrong(key, value)
    for i, entry in enumerate(raw["models"]):
        model = entry.get("model") if isinstance(entry, dict) else entry
        if not isinstance(model, str) or (isinstance(entry, dict) and
                                          not isinstance(entry.get("datasets", []) or [], list)):
            raise ConfigError(f"study definition '{path}': models[{i}] must be a model name or a mapping with "
                              f"'model' (a name) and optionally 'datasets' (a list), got {str(entry)[:60]!r}")
    for i, dataset in enumerate(raw.get("datasets") or []):
        if not isinstance(dataset, str):
            raise ConfigError(f"study definition '{path}': datasets[{i}] must be a dataset name (a string), "
                              f"got {type(dataset).__name__} {str(dataset)[:60]!r}")


def _text(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, bool)) else str(value)


def run_study(definition: StudyDefinition, *, force: bool = False) -> list[Outcome]:
    """Run every combination in turn; never stops early for a failed one."""
    from mlflow import MlflowClient

    client = MlflowClient()
    outcomes = []
    total = len(definition.combinations)
    for number, combination in enumerate(definition.combinations, 1):
        prefix = f"[{number}/{total}] {combination.label}"
        done = None if force else finished_run(client, combination.config)
        if done is not None:
            logger.info("%s: skipped, FINISHED already as run %s (--force to measure again)", prefix, done)
            outcomes.append(Outcome(combination, "SKIPPED", done, "already FINISHED"))
            continue
        logger.info("%s: running", prefix)
        outcome = _run_one(client, definition, combination)
        logger.info("%s: %s in %.0f s%s", prefix, outcome.status, outcome.seconds,
                    f" ({outcome.reason})" if outcome.reason else "")
        outcomes.append(outcome)
    return outcomes


def finished_run(client: Any, config: RunConfig) -> str | None:
    """The id of a FINISHED run of this exact configuration that used what it asked for."""
    experiment = client.get_experiment_by_name(config.experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=(f"tags.`tracker.config_key` = '{config.key()}' and attributes.status = 'FINISHED'"),
        max_results=50)
    return next((r.info.run_id for r in runs if r.data.tags.get("tracker.run.fallback") != "true"), None)


def _run_one(client: Any, definition: StudyDefinition, combination: Combination) -> Outcome:
    result = measure_in_child(client, combination.config, {"tracker.study.name": definition.name})
    metrics = result.run.data.metrics if result.status == "FINISHED" else {}
    return Outcome(combination, result.status, result.run.info.run_id, result.reason,  # type: ignore[arg-type]
                   result.seconds, metrics)
