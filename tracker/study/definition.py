"""A study definition (YAML in experiments/): its task, models, datasets and shared params, read
and checked whole before any run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracker.errors import ConfigError
from tracker.runs.config import RunConfig

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
