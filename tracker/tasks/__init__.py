"""The task registry. Adding a task means adding one module here that calls ``register``."""

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


# Imported for their registration side effect.
from tracker.tasks import (  # noqa: E402,F401
    fill_mask,
    image_classification,
    image_to_text,
    object_detection,
    question_answering,
    sentence_similarity,
    speech_recognition,
    summarization,
    text_classification,
    text_generation,
    text_to_image,
    token_classification,
)
