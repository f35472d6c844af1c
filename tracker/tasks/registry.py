"""The task registry: each task module registers its class; names are looked up with a suggestion."""

from __future__ import annotations

from tracker.errors import ConfigError, did_you_mean
from tracker.tasks.base import Task

_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    _REGISTRY[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """The task registered under ``name``; a ConfigError with a suggestion otherwise."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        names = task_names()
        raise ConfigError(
            f"unknown task '{name}'.{did_you_mean(name, names)} Known tasks: {', '.join(names)}"
        ) from None
