"""The task registry. Adding a task means adding one module here that calls ``register``."""

from __future__ import annotations

from tracker.tasks.registry import get_task, register, task_names

__all__ = ["get_task", "register", "task_names"]

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
