"""What a run's ``model`` option names, classified once and cheaply (no torch, MLflow or network),
so that a wrong path is answered in about the time of ``--help`` and the model is then resolved
from this classification alone (``tracker.sources.models.resolve_model``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tracker.errors import ModelLoadError
from tracker.loading.builtin import BUILTIN_MODEL, BUILTINS
from tracker.loading.remote_code import TRUST_FLAG, custom_code
from tracker.loading.weights import weights_problem
from tracker.sources.mlflow_models import check_model_uri, is_model_uri

ReferenceKind = Literal["default", "builtin", "builtin-multipurpose", "mlflow", "local", "hub"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelReference:
    text: str | None  # as the user gave it; None: the task's default
    kind: ReferenceKind
    folder: Path | None = None  # a local model's folder, checked and resolved


def classify_model(text: str | None, *, trust_remote_code: bool = False) -> ModelReference:
    """The kind of model ``text`` names: the task's default, a built-in tiny model, a model kept in
    MLflow (models:/, runs:/), a local folder (checked: config.json, its own code, its weights), or
    a Hub id. Raises a one-line ModelLoadError or ConfigError for what cannot be a model."""
    if text is None:
        return ModelReference(None, "default")
    if text == BUILTIN_MODEL:
        return ModelReference(text, "builtin")
    if text in BUILTINS:
        return ModelReference(text, "builtin-multipurpose")
    if is_model_uri(text):
        check_model_uri(text)
        return ModelReference(text, "mlflow")
    folder = check_model_location(text, trust_remote_code=trust_remote_code)
    return ModelReference(text, "local", folder) if folder is not None else ModelReference(text, "hub")


def check_model_location(requested: str, *, trust_remote_code: bool = False) -> Path | None:
    """The resolved local folder of a model, None for a Hub id; raises for what cannot be a model."""
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
