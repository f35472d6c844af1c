"""Which model a run uses and where it comes from: the Hub, a local folder, or the built-in tiny one.

A model left at the task's default that cannot be reached falls back to the built-in tiny model,
with the reason recorded; a model the user named that cannot be loaded is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tracker.errors import ModelLoadError
from tracker.loading.builtin import BUILTIN_MODEL, build_once, builtin_dataset_file, read_rows, save_tiny_language_model
from tracker.sources.mlflow_models import MlflowModel, resolve_model_uri
from tracker.sources.reference import ModelReference, check_model_location
from tracker.tasks.base import Task, texts_of

logger = logging.getLogger(__name__)

ModelSource = Literal["hub", "local", "package", "builtin-tiny", "mlflow"]


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

    @property
    def runs_as_logged(self) -> bool:
        """An MLflow pyfunc model: run through its own predict, neither converted nor re-batched by us."""
        return self.mlflow is not None and self.mlflow.flavor == "pyfunc"


def resolve_model(task: Task, reference: ModelReference, *, hub_reachable: bool,
                  trust_remote_code: bool = False) -> ModelChoice:
    """The model a classified reference (``classify_model``) names, ready to load: built, fetched
    from MLflow, found locally, or the Hub id (the task's default falls back to the built-in tiny
    model when the Hub cannot be reached)."""
    text = reference.text
    if reference.kind == "builtin":
        return builtin_model(task)
    if reference.kind == "builtin-multipurpose":
        return builtin_multipurpose(text)
    if reference.kind == "mlflow":
        kept = resolve_model_uri(text)
        if kept.flavor == "transformers":  # the same checks as any folder: its own code, its weights
            check_model_location(kept.folder, trust_remote_code=trust_remote_code)
        return ModelChoice(text, kept.folder, "mlflow", mlflow=kept)
    if reference.kind == "local":
        return ModelChoice(str(reference.folder), str(reference.folder), "local")
    requested = text or task.default_model
    reason = hub_unavailable_reason(requested, hub_reachable)
    if reason is None:
        return ModelChoice(requested, requested, "hub")
    if reference.kind == "default":
        return offline_default(task, f"default model {task.default_model}: {reason}")
    raise ModelLoadError(f"cannot load model '{requested}': {reason}")


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
