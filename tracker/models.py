"""Which model a run uses and where it comes from: the Hub, a local folder, or the built-in tiny one.

A model left at the task's default that cannot be reached falls back to the built-in tiny model,
with the reason recorded; a model the user named that cannot be loaded is an error.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tracker.builtin import BUILTIN_MODEL, SAMPLE_ROWS, build_once
from tracker.errors import ModelLoadError
from tracker.tasks.base import Task

logger = logging.getLogger(__name__)

ModelSource = Literal["hub", "local", "builtin-tiny"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelChoice:
    name: str  # the `model` param: a Hub id, a path, or builtin-tiny
    location: str  # what from_pretrained reads
    source: ModelSource
    fallback_reason: str | None = None

    @property
    def local_only(self) -> bool:
        return self.source != "hub"


def resolve_model(task: Task, requested: str | None, *, hub_reachable: bool) -> ModelChoice:
    if requested == BUILTIN_MODEL:
        return builtin_model(task)
    if requested is None:
        reason = hub_unavailable_reason(task.default_model, hub_reachable)
        if reason is None:
            return ModelChoice(task.default_model, task.default_model, "hub")
        return builtin_model(task, fallback_reason=f"default model {task.default_model}: {reason}")
    path = Path(requested).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model folder '{requested}' has no config.json; pass a folder written by "
                f"save_pretrained, a Hugging Face Hub id, or {BUILTIN_MODEL}"
            )
        return ModelChoice(str(path.resolve()), str(path.resolve()), "local")
    if requested.startswith((".", "/", "~")) or not _HUB_ID.match(requested):
        raise ModelLoadError(
            f"model path '{requested}' does not exist; pass a folder written by save_pretrained, "
            f"a Hugging Face Hub id, or {BUILTIN_MODEL}"
        )
    reason = hub_unavailable_reason(requested, hub_reachable)
    if reason is not None:
        raise ModelLoadError(f"cannot load model '{requested}': {reason}")
    return ModelChoice(requested, requested, "hub")


def hub_unavailable_reason(repo_id: str, hub_reachable: bool) -> str | None:
    """None when the model can be loaded (Hub reachable, or config in the local cache)."""
    if hub_reachable:
        return None
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return None
    return "the Hugging Face Hub is unreachable and the model is not in the local cache"


def builtin_model(task: Task, *, fallback_reason: str | None = None) -> ModelChoice:
    def build(folder: Path) -> None:
        rows = task.sample_rows(SAMPLE_ROWS, random.Random(task.name))
        texts = [" ".join(str(v) for v in row.values()) for row in rows]
        task.build_tiny_model(folder, texts)

    if fallback_reason:
        logger.warning("%s; using the built-in tiny model (random weights: quality is meaningless)",
                       fallback_reason)
    folder = build_once("models", task.name, build)
    return ModelChoice(BUILTIN_MODEL, str(folder), "builtin-tiny", fallback_reason)
