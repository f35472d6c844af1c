"""Which model a run uses and where it comes from: the Hub, a local folder, or the built-in tiny one.

A model left at the task's default that cannot be reached falls back to the built-in tiny model,
with the reason recorded; a model the user named that cannot be loaded is an error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tracker.errors import ModelLoadError
from tracker.loading.builtin import (
    BUILTIN_MODEL,
    BUILTINS,
    build_once,
    builtin_dataset_file,
    read_rows,
    save_tiny_language_model,
)
from tracker.loading.remote_code import TRUST_FLAG, custom_code
from tracker.loading.weights import weights_problem
from tracker.sources.mlflow_models import MlflowModel, is_model_uri, resolve_model_uri
from tracker.tasks.base import Task, texts_of

logger = logging.getLogger(__name__)

ModelSource = Literal["hub", "local", "package", "builtin-tiny", "mlflow"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelChoice:
    name: str  # the `model` param: a Hub id, a path, or builtin-tiny
    location: str  # what from_pretrained reads
    source: ModelSource
    fallback_reason: str | None = None
    mlflow: MlflowModel | None = None  # a model kept in MLflow (models:/, runs:/): where it came from

    @property
    def local_only(self) -> bool:
        return self.source != "hub"


def resolve_model(task: Task, requested: str | None, *, hub_reachable: bool,
                  trust_remote_code: bool = False) -> ModelChoice:
    if requested == BUILTIN_MODEL:
        return builtin_model(task)
    if requested in BUILTINS:
        return builtin_multipurpose(requested)
    if requested is not None and is_model_uri(requested):
        kept = resolve_model_uri(requested)
        if kept.flavor == "transformers":  # the same checks as any folder: its own code, its weights
            check_model_location(kept.folder, trust_remote_code=trust_remote_code)
        return ModelChoice(requested, kept.folder, "mlflow", mlflow=kept)
    if requested is None:
        reason = hub_unavailable_reason(task.default_model, hub_reachable)
        if reason is None:
            return ModelChoice(task.default_model, task.default_model, "hub")
        return offline_default(task, f"default model {task.default_model}: {reason}")
    local = check_model_location(requested, trust_remote_code=trust_remote_code)
    if local is not None:
        return ModelChoice(str(local), str(local), "local")
    reason = hub_unavailable_reason(requested, hub_reachable)
    if reason is not None:
        raise ModelLoadError(f"cannot load model '{requested}': {reason}")
    return ModelChoice(requested, requested, "hub")


def check_model_location(requested: str, *, trust_remote_code: bool = False) -> Path | None:
    """The resolved local folder of a model, None for a Hub id; raises for what cannot be a model.

    Cheap (no torch, no network), so that a wrong path is answered before anything heavy starts.
    """
    path = Path(requested).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model folder '{requested}' has no config.json; pass a folder written by "
                f"save_pretrained, a Hugging Face Hub id, or {BUILTIN_MODEL}"
            )
        code = custom_code(path)
        if code and not trust_remote_code:
            raise ModelLoadError(
                f"model folder '{requested}' ships its own code ({code}), which runs only with "
                f"{TRUST_FLAG}: pass it only if you trust that code")
        problem = weights_problem(path)
        if problem:
            raise ModelLoadError(f"model folder '{requested}': {problem}")
        return path.resolve()
    if requested.startswith((".", "/", "~")) or not _HUB_ID.match(requested):
        raise ModelLoadError(
            f"model path '{requested}' does not exist; pass a folder written by save_pretrained, "
            f"a Hugging Face Hub id, or {BUILTIN_MODEL}"
        )
    return None


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
        # The tokenizer learns the words of the task's own sample data.
        rows = read_rows(builtin_dataset_file(task))
        task.build_tiny_model(folder, rows)

    if fallback_reason:
        logger.warning("%s; using the built-in tiny model (random weights: quality is meaningless)",
                       fallback_reason)
    folder = build_once("models", task.name, build)
    return ModelChoice(BUILTIN_MODEL, str(folder), "builtin-tiny", fallback_reason)


def builtin_multipurpose(name: str) -> ModelChoice:
    """builtin-tiny-seq2seq or builtin-tiny-causal, its tokenizer trained on every prompted task's data."""
    from tracker.tasks import get_task, task_names

    def build(folder: Path) -> None:
        texts: list[str] = []
        for task in (get_task(n) for n in task_names()):
            if task.prompt_template is not None:
                rows = read_rows(builtin_dataset_file(task))
                texts += [task.prompt_template] + texts_of(rows)
        save_tiny_language_model(name, folder, texts)

    return ModelChoice(name, str(build_once("models", name, build)), "builtin-tiny")


def offline_default(task: Task, reason: str) -> ModelChoice:
    """What runs when the default model cannot be reached: the same model from an installed
    package where there is one, else the built-in tiny model."""
    packaged = task.packaged_default()
    if packaged is not None:
        logger.warning("%s; using the same model's weights from the installed package %s",
                       reason, packaged[1])
        return ModelChoice(task.default_model, str(packaged[0]), "package",
                           f"{reason}; loaded the same weights from the package {packaged[1]}")
    return builtin_model(task, fallback_reason=reason)
